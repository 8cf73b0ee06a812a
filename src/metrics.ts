// Prometheus metrics. The request path counts in plain numbers (stats.ts);
// a scrape turns each thread's numbers into prom-client's JSON form, asks the
// affinity workers for theirs over a BroadcastChannel, and sums them all with
// prom-client's AggregatorRegistry, so one scrape shows the whole process.
// prom-client itself is loaded only by the thread that serves scrapes.
import { BroadcastChannel, threadId } from 'node:worker_threads';
import type { MetricObjectWithValues, MetricValue, Registry } from 'prom-client';
import type { Backend } from './backends.ts';
import type { Histogram, LoopStats, ResolverStats } from './stats.ts';

const CHANNEL = 'sticky-proxy-metrics';

export type MetricJson = MetricObjectWithValues<MetricValue<string>>;
type Labels = Record<string, string | number>;

/** Builds one thread's metrics in prom-client's JSON form. */
class Sheet {
  readonly out: MetricJson[] = [];

  add(name: string, help: string, type: 'counter' | 'gauge', values: { value: number; labels?: Labels }[], aggregator: 'sum' | 'max' | 'average' = 'sum'): void {
    this.out.push({ name, help, type, values: values.map((v) => ({ value: v.value, labels: v.labels ?? {} })), aggregator } as unknown as MetricJson);
  }

  histogram(name: string, help: string, series: { h: Histogram; labels?: Labels }[]): void {
    const values: MetricValue<string>[] = [];
    for (const { h, labels = {} } of series) {
      let cumulative = 0;
      for (let i = 0; i < h.counts.length; i++) {
        cumulative += h.counts[i];
        values.push({ metricName: `${name}_bucket`, labels: { ...labels, le: i < h.bounds.length ? h.bounds[i] : '+Inf' }, value: cumulative } as MetricValue<string>);
      }
      values.push({ metricName: `${name}_sum`, labels, value: h.sum } as MetricValue<string>);
      values.push({ metricName: `${name}_count`, labels, value: h.count } as MetricValue<string>);
    }
    this.out.push({ name, help, type: 'histogram', values, aggregator: 'sum' } as unknown as MetricJson);
  }
}

/** The resolver's counts (lookups, bindings, store operations), in whichever thread it runs. */
export function resolverMetrics(s: ResolverStats, queue: { queued: number; dropped: number } | null): MetricJson[] {
  const m = new Sheet();
  m.add('sticky_affinity_lookups_total', 'Session lookups by outcome (hit, miss, store_failed); near-cache hits are hits', 'counter', [
    { value: s.hits, labels: { outcome: 'hit' } }, { value: s.misses, labels: { outcome: 'miss' } }, { value: s.failures, labels: { outcome: 'store_failed' } },
  ]);
  m.add('sticky_affinity_bindings_total', 'Bindings written: learn (Set-Cookie), unbind (cleared cookie), bind (moves, open WebSockets), adopt (an unbound id the backend accepted)', 'counter', [
    { value: s.learns, labels: { change: 'learn' } }, { value: s.unbinds, labels: { change: 'unbind' } },
    { value: s.binds, labels: { change: 'bind' } }, { value: s.adopts, labels: { change: 'adopt' } },
  ]);
  m.histogram('sticky_store_operation_seconds', 'Store lookup latency', [{ h: s.storeGet, labels: { op: 'get' } }]);
  m.add('sticky_store_errors_total', 'Store operations that failed, by operation', 'counter', [
    { value: s.getErrors, labels: { op: 'get' } }, { value: s.setErrors, labels: { op: 'set' } }, { value: s.deleteErrors, labels: { op: 'delete' } },
  ]);
  if (queue !== null) {
    m.add('sticky_store_learn_queue', 'Learns kept while memcached is unreachable', 'gauge', [{ value: queue.queued }]);
    m.add('sticky_store_learns_dropped_total', 'Learns dropped: outage queue full, or expired in it', 'counter', [{ value: queue.dropped }]);
  }
  return m.out;
}

const STATES = ['up', 'draining', 'disabled', 'down'] as const;
// Statuses whose series exist from the first scrape, at 0, so an alert's rate()
// sees the first one: the gateway errors per backend, the proxy's own 503.
const PRESET_BACKEND_STATUSES = [502, 503, 504];
const PRESET_NONE_STATUSES = [503];

/** One event loop's counts: requests, routing, backends, clients. */
export function loopMetrics(l: LoopStats, backends: readonly Backend[], clients: number): MetricJson[] {
  const m = new Sheet();
  const requests: { value: number; labels: Labels }[] = [];
  const series = (pick: (b: Backend) => number) => backends.map((b) => ({ value: pick(b), labels: { backend: b.name } }));
  for (const [name, st, preset] of [...backends.map((b) => [b.name, b.stats, PRESET_BACKEND_STATUSES] as const), ['none', l.none, PRESET_NONE_STATUSES] as const]) {
    for (let status = 100; status < 600; status++) {
      if (st.statuses[status] > 0 || preset.includes(status)) requests.push({ value: st.statuses[status], labels: { backend: name, status } });
    }
  }
  m.add('sticky_requests_total', 'Requests answered, by backend and status (backend "none" for answers of the proxy itself)', 'counter', requests);
  m.histogram('sticky_request_duration_seconds', 'Time from request to response head, by backend', backends.map((b) => ({ h: b.stats.latency, labels: { backend: b.name } })));
  m.histogram('sticky_backend_connect_seconds', 'Time to connect to a backend', backends.map((b) => ({ h: b.stats.connect, labels: { backend: b.name } })));
  m.add('sticky_backend_bytes_in_total', 'Request body bytes sent to each backend', 'counter', series((b) => b.stats.bytesIn));
  m.add('sticky_backend_bytes_out_total', 'Response bytes sent to clients from each backend', 'counter', series((b) => b.stats.bytesOut));
  m.add('sticky_backend_retries_total', 'Requests retried elsewhere after a connection to this backend failed', 'counter', series((b) => b.stats.retries));
  m.add('sticky_backend_connection_errors_total', 'Connections to each backend that failed before a response', 'counter', series((b) => b.stats.connectionErrors));
  m.add('sticky_backend_ejections_total', 'Passive ejections of each backend', 'counter', series((b) => b.stats.ejections));
  m.add('sticky_backend_health_check_failures_total', 'Failed active health checks', 'counter', series((b) => b.stats.healthFailures));
  m.add('sticky_backend_queue_refused_total', 'Requests refused (503) because a backend\'s wait queue was full or timed out', 'counter', series((b) => b.stats.queueRefused));
  m.add('sticky_backend_queue_depth', 'Requests waiting for a connection to each backend (a new one, or a free one past the cap)', 'gauge', series((b) => b.pool.queued), 'sum');
  m.histogram('sticky_backend_queue_wait_seconds', 'Time requests waited in each backend\'s queue for a connection (a new one, or a free one past the cap)', backends.map((b) => ({ h: b.pool.waited, labels: { backend: b.name } })));
  m.add('sticky_backend_up', 'Backend serves its sessions (1) or is down or disabled (0)', 'gauge', series((b) => (b.up ? 1 : 0)), 'max');
  m.add('sticky_backend_state', 'Backend state, one series per state set to 1', 'gauge',
    backends.flatMap((b) => STATES.map((s) => ({ value: b.state === s ? 1 : 0, labels: { backend: b.name, state: s } }))), 'max');
  m.add('sticky_backend_active_requests', 'Requests in flight to each backend', 'gauge', series((b) => b.active), 'sum');
  m.add('sticky_affinity_routes_total', 'Requests routed other than by a binding: fallback (store failed, rendezvous hashing), move (bound backend down), stale (by the near cache\'s memory)', 'counter', [
    { value: l.fallbacks, labels: { route: 'fallback' } }, { value: l.moves, labels: { route: 'move' } }, { value: l.stale, labels: { route: 'stale' } },
  ]);
  m.add('sticky_affinity_lookups_total', 'Session lookups by outcome (hit, miss, store_failed); near-cache hits are hits', 'counter', [{ value: l.nearHits, labels: { outcome: 'hit' } }]);
  m.add('sticky_near_cache_hits_total', 'Lookups answered by the near cache without the store', 'counter', [{ value: l.nearHits }]);
  m.add('sticky_sessions_replaced_total', 'Bound requests answered with a new session id: affinity lost, or the app rotated the id', 'counter',
    backends.map((b) => ({ value: l.replaced.get(b.name) ?? 0, labels: { backend: b.name } })));
  m.add('sticky_client_errors_total', 'Requests refused by the proxy, by status (400, 408, 413, 414, 431, 501, 505)', 'counter',
    [400, 408, 413, 414, 431, 501, 505].map((status) => ({ value: l.clientErrors[status], labels: { status } })));
  m.add('sticky_client_aborts_total', 'Requests whose client went away before the answer was complete', 'counter', [{ value: l.clientAborts }]);
  m.add('sticky_client_connections', 'Open client connections', 'gauge', [{ value: clients }]);
  m.add('sticky_client_connections_refused_total', 'Connections refused over --max-connections', 'counter', [{ value: l.connectionsRefused }]);
  m.add('sticky_tunnels', 'Open tunnels: upgraded connections (WebSocket) piped both ways', 'gauge', [{ value: l.tunnels }]);
  m.add('sticky_tunnel_timeouts_total', 'Tunnels closed on both sides for silence (--tunnel-timeout, --tunnel-fin-timeout)', 'counter', [{ value: l.tunnelTimeouts }]);
  m.add('sticky_proxy_protocol_errors_total', 'Connections closed for a missing, malformed or late PROXY protocol header (--accept-proxy)', 'counter', [{ value: l.proxyProtocolErrors }]);
  m.histogram('sticky_worker_batch_size', 'Operations per affinity batch', [{ h: l.batchSize }]);
  return m.out;
}

/** One event loop's affinity worker pool (piscina), with --workers N. */
export function workerPoolMetrics(pool: { readonly utilization: number; readonly queueSize: number }): MetricJson[] {
  const m = new Sheet();
  m.add('sticky_worker_utilization_ratio', 'Affinity workers\' busy time over their capacity since start (piscina\'s utilization), averaged over the event loops\' pools', 'gauge', [{ value: pool.utilization }], 'average');
  m.add('sticky_worker_queue_depth', 'Affinity batches waiting for a free worker', 'gauge', [{ value: pool.queueSize }]);
  return m.out;
}

/** The store watch's view of each memcached server (main thread only, so never summed with another). */
export function storeServerMetrics(up: ReadonlyMap<string, boolean>): MetricJson[] {
  const m = new Sheet();
  m.add('sticky_store_server_up', 'memcached server answers (1) or is down or not yet heard (0)', 'gauge',
    [...up].map(([server, u]) => ({ value: u ? 1 : 0, labels: { server } })), 'max');
  return m.out;
}

/** An affinity worker: answers scrapes from its event loop with its metrics. */
export function serveWorkerMetrics(collect: () => MetricJson[]): void {
  const channel = new BroadcastChannel(CHANNEL);
  channel.unref();
  channel.onmessage = (event: unknown) => {
    const msg = (event as { data: { collect?: number } }).data;
    if (msg.collect !== undefined) channel.postMessage({ reply: msg.collect, threadId, metrics: collect() });
  };
}

/** Metrics of `workers` worker threads, waiting up to `waitMs` for them. */
async function fromWorkers(workers: number, waitMs: number): Promise<MetricJson[][]> {
  const parts: MetricJson[][] = [];
  if (workers === 0) return parts;
  const channel = new BroadcastChannel(CHANNEL);
  const id = Math.random();
  await new Promise<void>((resolve) => {
    const seen = new Set<number>();
    const timer = setTimeout(resolve, waitMs);
    channel.onmessage = (event: unknown) => {
      const msg = (event as { data: { reply?: number; threadId: number; metrics: MetricJson[] } }).data;
      if (msg.reply !== id || seen.has(msg.threadId)) return;
      seen.add(msg.threadId);
      parts.push(msg.metrics);
      if (seen.size >= workers) { clearTimeout(timer); resolve(); }
    };
    channel.postMessage({ collect: id });
  });
  channel.close();
  return parts;
}

/**
 * The scrape: `own` (this thread's parts), the workers' metrics, and the
 * process metrics of `base` (prom-client's defaults and build info), summed.
 */
export async function scrape(own: MetricJson[][], workers: number, base: Registry, waitMs = 1000): Promise<{ contentType: string; text: string }> {
  const { AggregatorRegistry } = await import('prom-client');
  const parts = [await base.getMetricsAsJSON(), ...own, ...await fromWorkers(workers, waitMs)];
  const merged = AggregatorRegistry.aggregate(parts as never);
  return { contentType: merged.contentType, text: await merged.metrics() };
}

/** prom-client's process and runtime metrics (RSS, CPU, event-loop lag...) and a build-info metric. */
export async function processRegistry(version: string): Promise<Registry> {
  const { Registry: R, Gauge, collectDefaultMetrics } = await import('prom-client');
  const registry = new R();
  collectDefaultMetrics({ register: registry });
  new Gauge({ name: 'sticky_build_info', help: 'Version of sticky-proxy and of Node.js, as labels', labelNames: ['version', 'node'], registers: [registry] })
    .set({ version, node: process.version }, 1);
  return registry;
}
