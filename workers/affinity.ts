// Piscina worker: resolves affinity batches. Each worker owns its own store
// connections (memcached sockets, or a view of the embedded store's shared memory).
import { workerData } from 'piscina';
import { Registry } from 'prom-client';
import type { AffinityAnswer, AffinityBatch, ResolverSettings } from '../src/batch.ts';
import { ResolverMetrics, serveWorkerMetrics } from '../src/metrics.ts';
import { Resolver } from '../src/resolver.ts';

const registry = new Registry();
serveWorkerMetrics(registry);
const resolver = new Resolver(workerData as ResolverSettings, new ResolverMetrics(registry));

export default function resolveBatch(batch: AffinityBatch): Promise<AffinityAnswer> {
  return resolver.run(batch);
}
