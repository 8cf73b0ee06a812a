// What the request path counts, as plain numbers and typed arrays: a request
// costs a few increments, never a label lookup or a bucket walk in a metrics
// library. metrics.ts publishes these at scrape time, summed over threads.

/** Upper bounds (seconds) of the latency histograms' buckets. */
export const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
export const STORE_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25];
/** Up to --queue-timeout's default (5 s) and past it. */
export const QUEUE_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** A histogram as counts per bucket (the last one is +Inf), a sum and a count. */
export class Histogram {
  readonly bounds: readonly number[];
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(bounds: readonly number[]) {
    this.bounds = bounds;
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(v: number): void {
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > b[i]) i++;
    this.counts[i]++;
    this.sum += v;
    this.count++;
  }

  /** Adds another histogram's plain snapshot (the shape postMessage carries). */
  add(o: { counts: ArrayLike<number>; sum: number; count: number }): void {
    for (let i = 0; i < this.counts.length; i++) this.counts[i] += o.counts[i];
    this.sum += o.sum;
    this.count += o.count;
  }
}

/** Per backend (and one for the proxy's own answers). */
export class BackendStats {
  /** Answers by status code. */
  readonly statuses = new Float64Array(600);
  /** Request to response head, seconds. */
  readonly latency = new Histogram(LATENCY_BUCKETS);
  /** Upstream connect time, seconds. */
  readonly connect = new Histogram(LATENCY_BUCKETS);
  bytesIn = 0;
  bytesOut = 0;
  retries = 0;
  connectionErrors = 0;
  ejections = 0;
  healthFailures = 0;
  /** Requests refused because the queue was full or timed out (503). */
  queueRefused = 0;
}

/** What the resolver counts, in whichever thread it runs. */
export class ResolverStats {
  hits = 0;
  misses = 0;
  failures = 0;
  learns = 0;
  unbinds = 0;
  binds = 0;
  adopts = 0;
  getErrors = 0;
  setErrors = 0;
  deleteErrors = 0;
  readonly storeGet = new Histogram(STORE_BUCKETS);
}

/** What one event loop counts. */
export class LoopStats {
  /** Requests routed other than by a binding found in the store. */
  nearHits = 0;
  fallbacks = 0;
  moves = 0;
  stale = 0;
  /** Bound requests answered with a new session id, per backend. */
  readonly replaced = new Map<string, number>();
  /** Client protocol errors answered by the proxy, by status. */
  readonly clientErrors = new Float64Array(600);
  clientAborts = 0;
  connectionsRefused = 0;
  /** Connections closed for a missing, malformed or late PROXY header (--accept-proxy). */
  proxyProtocolErrors = 0;
  /** Open tunnels (upgraded connections), and those closed for silence. */
  tunnels = 0;
  tunnelTimeouts = 0;
  readonly batchSize = new Histogram([1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
  /** For answers of the proxy itself (backend "none"). */
  readonly none = new BackendStats();
}
