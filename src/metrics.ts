// Prometheus metrics through prom-client. Every thread keeps its own registry
// (the affinity workers count lookups and store operations where they happen);
// a scrape asks every worker for its metrics over a BroadcastChannel and sums
// them with the main thread's (prom-client's AggregatorRegistry.aggregate), so
// one scrape shows the whole process.
import { BroadcastChannel, threadId } from 'node:worker_threads';
import { AggregatorRegistry, Counter, Gauge, Histogram, Registry, type MetricObjectWithValues, type MetricValue } from 'prom-client';

const CHANNEL = 'sticky-proxy-metrics';
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const STORE_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25];

type MetricsJson = MetricObjectWithValues<MetricValue<string>>[];

/** What the resolver counts, in whichever thread it runs. */
export class ResolverMetrics {
  readonly hits: Counter.Internal;
  readonly misses: Counter.Internal;
  readonly storeFailures: Counter.Internal;
  readonly learns: Counter.Internal;
  readonly unbinds: Counter.Internal;
  readonly binds: Counter.Internal;
  readonly storeGet: Histogram.Internal<string>;
  readonly storeErrors: Counter<'op'>;
  readonly #registers: Registry[];

  constructor(registry: Registry) {
    this.#registers = [registry];
    const lookups = new Counter({ name: 'sticky_affinity_lookups_total', help: 'Session lookups by outcome (hit, miss, store_failed)', labelNames: ['outcome'], registers: [registry] });
    this.hits = lookups.labels('hit');
    this.misses = lookups.labels('miss');
    this.storeFailures = lookups.labels('store_failed');
    const changes = new Counter({ name: 'sticky_affinity_bindings_total', help: 'Bindings written: learnt from Set-Cookie, unbound by a cleared cookie, bound by a move or an open WebSocket', labelNames: ['change'], registers: [registry] });
    this.learns = changes.labels('learn');
    this.unbinds = changes.labels('unbind');
    this.binds = changes.labels('bind');
    const storeOps = new Histogram({ name: 'sticky_store_operation_seconds', help: 'Store lookup latency', labelNames: ['op'], buckets: STORE_BUCKETS, registers: [registry] });
    this.storeGet = storeOps.labels('get');
    this.storeErrors = new Counter({ name: 'sticky_store_errors_total', help: 'Store operations that failed, by operation', labelNames: ['op'], registers: [registry] });
  }

  /** Gauges of the memcached outage queue, read at scrape time. */
  observeQueue(queued: () => number, dropped: () => number): void {
    const registers = this.#registers;
    new Gauge({ name: 'sticky_store_learn_queue', help: 'Learns kept while memcached is unreachable', registers, collect() { this.set(queued()); } });
    new Gauge({ name: 'sticky_store_learns_dropped', help: 'Learns dropped: outage queue full, or expired in it', registers, collect() { this.set(dropped()); } });
  }
}

/** Answers scrapes from the main thread with this worker's metrics. */
export function serveWorkerMetrics(registry: Registry): void {
  const channel = new BroadcastChannel(CHANNEL);
  channel.unref();
  channel.onmessage = (event: unknown) => {
    const msg = (event as { data: { collect?: number } }).data;
    if (msg.collect === undefined) return;
    registry.getMetricsAsJSON().then((metrics) => channel.postMessage({ reply: msg.collect, threadId, metrics }));
  };
}

/** Sums this thread's metrics with those of `workers` worker threads, waiting up to `waitMs` for them. */
export async function scrape(registry: Registry, workers: number, waitMs = 1000): Promise<{ contentType: string; text: string }> {
  const own = await registry.getMetricsAsJSON();
  const parts: MetricsJson[] = [own];
  if (workers > 0) {
    const channel = new BroadcastChannel(CHANNEL);
    const id = Math.random();
    await new Promise<void>((resolve) => {
      const seen = new Set<number>();
      const timer = setTimeout(resolve, waitMs);
      channel.onmessage = (event: unknown) => {
        const msg = (event as { data: { reply?: number; threadId: number; metrics: MetricsJson } }).data;
        if (msg.reply !== id || seen.has(msg.threadId)) return;
        seen.add(msg.threadId);
        parts.push(msg.metrics);
        if (seen.size >= workers) { clearTimeout(timer); resolve(); }
      };
      channel.postMessage({ collect: id });
    });
    channel.close();
  }
  const merged = AggregatorRegistry.aggregate(parts);
  return { contentType: merged.contentType, text: await merged.metrics() };
}

/** The main thread's metrics: requests, latency, routing, workers, backends, clients. */
export class ProxyMetrics {
  readonly registry: Registry;
  readonly requests: Counter<'backend' | 'status'>;
  readonly latency: Histogram;
  readonly fallbacks: Counter.Internal;
  readonly moves: Counter.Internal;
  readonly replaced: Counter<'backend'>;
  readonly batchSize: Histogram;
  readonly #children = new Map<string, Counter.Internal[]>();

  /** Counts an answer; children are cached so the request path hashes no labels. */
  answered(backend: string, status: number, seconds: number): void {
    let byStatus = this.#children.get(backend);
    if (byStatus === undefined) this.#children.set(backend, byStatus = []);
    (byStatus[status] ??= this.requests.labels(backend, String(status))).inc();
    this.latency.observe(seconds);
  }

  constructor(registry: Registry, gauges: {
    queueDepth: () => number;
    utilization: () => number;
    backends: () => { name: string; up: boolean; active: number }[];
    clients: () => number;
  }) {
    this.registry = registry;
    const r = [registry];
    this.requests = new Counter({ name: 'sticky_requests_total', help: 'Requests answered, by backend and status (backend "none" for answers of the proxy itself)', labelNames: ['backend', 'status'], registers: r });
    this.latency = new Histogram({ name: 'sticky_request_duration_seconds', help: 'Time from request to response head', buckets: LATENCY_BUCKETS, registers: r });
    const routing = new Counter({ name: 'sticky_affinity_routes_total', help: 'Requests routed other than by their binding: fallback (store failed, rendezvous hashing), move (bound backend down)', labelNames: ['route'], registers: r });
    this.fallbacks = routing.labels('fallback');
    this.moves = routing.labels('move');
    this.replaced = new Counter({ name: 'sticky_sessions_replaced_total', help: 'Bound requests answered with a new session id: affinity lost, or the app rotated the id', labelNames: ['backend'], registers: r });
    this.batchSize = new Histogram({ name: 'sticky_worker_batch_size', help: 'Operations per affinity batch', buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], registers: r });
    new Gauge({ name: 'sticky_worker_queue_depth', help: 'Affinity batches waiting for a worker', registers: r, aggregator: 'max', collect() { this.set(gauges.queueDepth()); } });
    new Gauge({ name: 'sticky_worker_utilization', help: 'Share of time the affinity workers were busy, 0..1', registers: r, aggregator: 'max', collect() { this.set(gauges.utilization()); } });
    new Gauge({
      name: 'sticky_backend_up', help: 'Backend serves its sessions (1) or is down or disabled (0)', labelNames: ['backend'], registers: r, aggregator: 'max',
      collect() { for (const b of gauges.backends()) this.set({ backend: b.name }, b.up ? 1 : 0); },
    });
    new Gauge({
      name: 'sticky_backend_active_requests', help: 'Requests in flight to each backend', labelNames: ['backend'], registers: r, aggregator: 'max',
      collect() { for (const b of gauges.backends()) this.set({ backend: b.name }, b.active); },
    });
    new Gauge({ name: 'sticky_client_connections', help: 'Open client connections', registers: r, aggregator: 'max', collect() { this.set(gauges.clients()); } });
  }
}
