// Piscina worker: resolves affinity batches. Each worker owns its own store
// connections (memcached sockets, or a view of the embedded store's shared memory).
import { workerData } from 'piscina';
import type { AffinityAnswer, AffinityBatch, ResolverSettings } from '../src/batch.ts';
import { resolverMetrics, serveWorkerMetrics } from '../src/metrics.ts';
import { Resolver } from '../src/resolver.ts';
import { ResolverStats } from '../src/stats.ts';
import { MemcachedStore } from '../src/store/memcached.ts';

const stats = new ResolverStats();
const resolver = new Resolver(workerData as ResolverSettings, stats);
const store = resolver.store;
serveWorkerMetrics(() => resolverMetrics(stats, store instanceof MemcachedStore ? { queued: store.queued, dropped: store.dropped } : null));

// Test hook (STICKY_PROXY_TEST_HOOKS=1 only): a batch holding this session id
// keeps the worker busy for 10 s, as a stuck worker would be (the batch-deadline test).
const STUCK = process.env.STICKY_PROXY_TEST_HOOKS === '1' ? 'sticky-proxy-test-stuck-worker' : null;

export default function resolveBatch(batch: AffinityBatch): Promise<AffinityAnswer> {
  if (STUCK !== null && JSON.stringify(batch).includes(STUCK)) for (const end = Date.now() + 10_000; Date.now() < end;);
  return resolver.run(batch);
}
