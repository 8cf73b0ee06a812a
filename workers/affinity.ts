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

// Test hooks (STICKY_PROXY_TEST_HOOKS=1 only): a batch holding one of these
// strings keeps the worker busy for 10 s, as a stuck worker would be, or for
// 2 s, as a slow one (CPU-starved) would be (the batch-deadline tests).
const HOOKS = process.env.STICKY_PROXY_TEST_HOOKS === '1';
const STUCK = 'sticky-proxy-test-stuck-worker';
const SLOW = 'sticky-proxy-test-slow-worker';

export default function resolveBatch(batch: AffinityBatch): Promise<AffinityAnswer> {
  if (HOOKS) {
    const text = JSON.stringify(batch);
    const busyMs = text.includes(STUCK) ? 10_000 : text.includes(SLOW) ? 2000 : 0;
    for (const end = Date.now() + busyMs; Date.now() < end;);
  }
  return resolver.run(batch);
}
