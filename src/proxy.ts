// The process: it runs --threads event loops (the first on the main thread,
// the others in worker threads, all listening on one address with
// SO_REUSEPORT), owns what they share (shared.ts, the near cache, the
// embedded store) and the backend slots, and everything that is one per
// process: the admin API, active health checks, SIGHUP reloads, a graceful
// shutdown or hand-over, and restarting a loop that crashed.
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { Worker } from 'node:worker_threads';
import { ConfigError, type BackendConfig, type Config } from './config.ts';
import type { Logger } from './log.ts';
import { Loop, type LoopReload, type LoopSettings } from './loop.ts';
import type { AffinityReadiness } from './admin.ts';
import { processRegistry, scrape, storeServerMetrics, type MetricJson } from './metrics.ts';
import { nearCacheBytes } from './near-cache.ts';
import { MAX_BACKENDS, MAX_LOOPS, SharedState, sharedMemory, type SharedMemory } from './shared.ts';
import { SlotTable } from './slot-table.ts';
import { embeddedStoreBytes } from './store/embedded.ts';
import { outageCountersMemory } from './store/outage.ts';
import { StoreWatch } from './store/watch.ts';
import { VERSION } from './version.ts';

const LOOP = new URL('../workers/loop.ts', import.meta.url);
/** How long a scrape waits for a loop's or a worker's metrics. */
const SCRAPE_WAIT_MS = 1000;

/** Messages the main thread sends a loop thread, and what a loop thread answers. */
export type ToLoop =
  | { type: 'backends'; backends: LoopSettings['backends']; generation: number }
  | { type: 'reload'; settings: LoopReload }
  | { type: 'metrics'; id: number }
  | { type: 'close'; timeoutMs: number; graceMs: number }
  | { type: 'terminate-worker' }
  | { type: 'reopen-logs' }
  | { type: 'crash' };
export type FromLoop =
  | { type: 'ready' }
  | { type: 'applied'; generation: number }
  | { type: 'metrics'; id: number; parts: MetricJson[][] }
  | { type: 'closed' }
  | { type: 'failed'; flag: string; message: string };

/** A loop in a worker thread, as the main thread sees it. */
class LoopThread {
  readonly index: number;
  worker: Worker;
  closing = false;
  /** The newest backend list (its generation) this loop has applied. */
  applied: number;

  constructor(index: number, worker: Worker, applied: number) {
    this.index = index;
    this.worker = worker;
    this.applied = applied;
  }

  send(m: ToLoop): void {
    this.worker.postMessage(m);
  }
}

export class StickyProxy {
  readonly config: Config;
  readonly log: Logger;
  readonly memory: SharedMemory;
  readonly state: SharedState;
  readonly loop: Loop;
  readonly threads: LoopThread[] = [];
  readonly storeDescription: string;
  admin: Server | null = null;
  /** The memcached servers' health, logged and reported once for the process; null without memcached. */
  storeWatch: StoreWatch | null = null;
  listening = false;
  closing = false;
  /** Loops restarted after a crash. */
  restarts = 0;
  readonly #settings: Omit<LoopSettings, 'index'>;
  readonly #slots: SlotTable;
  #scrapeId = 0;
  readonly #scrapes = new Map<number, (parts: MetricJson[][]) => void>();

  private constructor(config: Config, log: Logger, memory: SharedMemory, loop: Loop, settings: Omit<LoopSettings, 'index'>, slots: SlotTable) {
    this.config = config;
    this.log = log;
    this.memory = memory;
    this.state = loop.state;
    this.loop = loop;
    this.#settings = settings;
    this.#slots = slots;
    this.storeDescription = loop.storeDescription;
  }

  static async start(config: Config, log: Logger): Promise<StickyProxy> {
    if (config.threads > MAX_LOOPS) throw new ConfigError('--threads', `at most ${MAX_LOOPS}`);
    const memory = sharedMemory();
    const state = new SharedState(memory, 0, config.threads);
    const slots = new SlotTable(state);
    const backends = slots.initial(config.backends);
    const affinityOn = config.sessionCookies.length > 0;
    const settings: Omit<LoopSettings, 'index'> = {
      loops: config.threads,
      // Config's backends hold URLs, which do not cross threads: the loops take `backends`.
      config: { ...config, backends: [] },
      backends,
      port: config.listenPort,
      shared: memory,
      near: affinityOn && config.memcache.length > 0 ? new SharedArrayBuffer(nearCacheBytes(config.nearCacheEntries)) : null,
      // With affinity off nothing is ever looked up; the smallest table keeps the resolver's seam uniform.
      embedded: config.memcache.length === 0 || !affinityOn ? new SharedArrayBuffer(embeddedStoreBytes(affinityOn ? config.embeddedMaxEntries : 1)) : null,
      outageCounters: affinityOn && config.memcache.length > 0 ? outageCountersMemory() : null,
    };
    // Every loop's log lines say which loop wrote them.
    const loop = await Loop.start({ ...settings, index: 0 }, log.child({ loop: 0 }));
    // The other loops bind the port the first one got (--listen with port 0).
    settings.port = loop.port;
    const proxy = new StickyProxy(config, log, memory, loop, settings, slots);
    if (settings.outageCounters !== null) proxy.storeWatch = new StoreWatch(config.memcache, log, settings.outageCounters);
    try {
      await Promise.all(Array.from({ length: config.threads - 1 }, (_, i) => proxy.#startThread(i + 1)));
    } catch (err) {
      await proxy.close(0);
      throw err;
    }
    if (config.admin !== null) {
      // prom-client, the admin API and node:http are loaded only when the admin API is configured.
      const base = await processRegistry(VERSION);
      const { createAdmin } = await import('./admin.ts');
      proxy.admin = createAdmin({
        backends: loop.backends,
        metrics: () => proxy.#metrics(base),
        listening: () => proxy.listening,
        affinity: () => proxy.#affinityReadiness(),
        log,
        token: config.adminToken,
        hosts: config.adminHosts,
      });
      await listen('--admin', proxy.admin, config.admin.port, config.admin.host);
    }
    // Active health checks run here only; their verdict is shared with every loop.
    loop.health.start();
    proxy.listening = true;
    return proxy;
  }

  get port(): number {
    return this.loop.port;
  }

  get adminPort(): number | null {
    return this.admin === null ? null : (this.admin.address() as AddressInfo).port;
  }

  /** Starts loop `index` in a worker thread; resolves once it listens. */
  #startThread(index: number): Promise<void> {
    const worker = new Worker(LOOP, { workerData: { ...this.#settings, index } satisfies LoopSettings });
    // It starts with the current backend list.
    const t = new LoopThread(index, worker, this.#slots.generation);
    this.threads[index - 1] = t;
    return new Promise<void>((resolve, reject) => {
      let ready = false;
      worker.on('message', (m: FromLoop) => {
        if (m.type === 'ready') {
          ready = true;
          resolve();
        } else if (m.type === 'failed') {
          reject(new ConfigError(m.flag, m.message));
        } else if (m.type === 'metrics') {
          this.#scrapes.get(m.id)?.([...m.parts]);
        } else if (m.type === 'applied') {
          t.applied = m.generation;
        }
      });
      worker.on('error', (err: Error) => {
        if (!ready) reject(err);
        else this.log.error({ loop: index, err: err.message }, 'event loop thread failed');
      });
      worker.on('exit', (code) => {
        if (!ready || t.closing || this.closing) return;
        // Its connections are lost; the other loops' are not. Its counters go with it.
        this.restarts++;
        this.state.clearLoop(index);
        this.log.error({ loop: index, code, restarts: this.restarts }, 'event loop thread ended; starting it again');
        this.#startThread(index).catch((err: Error) => this.log.error({ loop: index, err: err.message }, 'event loop thread could not start again'));
      });
    });
  }

  /**
   * Applies a new backend list (a SIGHUP reload) in every loop, without
   * dropping a connection; false, with nothing changed, when the process has
   * too few backend slots left for it (removed backends still serving
   * requests hold theirs).
   */
  applyBackends(configs: BackendConfig[]): boolean {
    let applied = this.#slots.generation;
    for (const t of this.threads) if (!t.closing && t.applied < applied) applied = t.applied;
    const changes = this.#slots.apply(configs, applied, (slot) => this.loop.forgetBackend(slot));
    if (changes === null) {
      this.log.error({ max: MAX_BACKENDS }, 'reload: too few backend slots free (removed backends still serving requests hold theirs); the backends were not changed');
      return false;
    }
    const { list, added, removed, reweighted } = changes;
    const generation = this.#slots.generation;
    this.#settings.backends = list;
    this.loop.applyBackends(list);
    for (const t of this.threads) t.send({ type: 'backends', backends: list, generation });
    this.log.info({ added, removed, reweighted }, 'backends reloaded');
    return true;
  }

  /** Applies a SIGHUP's reloadable settings in every loop; a loop restarted later starts with them too. */
  applySettings(r: LoopReload): void {
    this.log.level = r.logLevel;
    const { tls, ...rest } = r;
    Object.assign(this.#settings.config, rest);
    if (tls !== null) this.#settings.config.tls = tls;
    this.loop.reload(r);
    for (const t of this.threads) t.send({ type: 'reload', settings: r });
  }

  /** SIGUSR1: every loop opens its access log file again (logrotate). */
  reopenLogs(): void {
    this.loop.reopenLogs();
    for (const t of this.threads) t.send({ type: 'reopen-logs' });
  }

  /** Every loop's metrics and every affinity worker's, summed. */
  async #metrics(base: Parameters<typeof scrape>[2]): Promise<{ contentType: string; text: string }> {
    const id = ++this.#scrapeId;
    const parts: MetricJson[][] = [...this.loop.metricParts()];
    const live = this.threads.filter((t) => !t.closing);
    if (live.length > 0) {
      await new Promise<void>((resolve) => {
        let answered = 0;
        const timer = setTimeout(resolve, SCRAPE_WAIT_MS);
        this.#scrapes.set(id, (p) => {
          parts.push(...p);
          if (++answered === live.length) { clearTimeout(timer); resolve(); }
        });
        for (const t of live) t.send({ type: 'metrics', id });
      });
      this.#scrapes.delete(id);
    }
    parts.push(this.#processMetrics());
    if (this.storeWatch !== null) parts.push(storeServerMetrics(this.storeWatch.up));
    const workers = this.config.sessionCookies.length > 0 ? this.config.workers * this.config.threads : 0;
    return scrape(parts, workers, base, SCRAPE_WAIT_MS);
  }

  #affinityReadiness(): AffinityReadiness {
    if (this.config.sessionCookies.length === 0) return { affinity: 'off' };
    const w = this.storeWatch;
    if (w === null) return { affinity: 'ok' }; // the embedded store cannot be down
    return { affinity: w.healthy ? 'ok' : 'degraded', store: Object.fromEntries(w.up) };
  }

  #processMetrics(): MetricJson[] {
    return [
      { name: 'sticky_event_loops', help: 'Event loops serving requests (--threads)', type: 'gauge', values: [{ value: this.config.threads, labels: {} }], aggregator: 'max' },
      { name: 'sticky_event_loop_restarts_total', help: 'Event loop threads restarted after a crash', type: 'counter', values: [{ value: this.restarts, labels: {} }], aggregator: 'sum' },
    ] as unknown as MetricJson[];
  }

  /** Fault injection for tests (STICKY_PROXY_TEST_HOOKS=1): ends one affinity worker of the first loop. */
  terminateOneWorker(): void {
    this.loop.terminateOneWorker();
  }

  /** Fault injection for tests (STICKY_PROXY_TEST_HOOKS=1): the second loop throws, as a bug would. */
  crashLoop(): void {
    this.threads[0]?.send({ type: 'crash' });
  }

  /**
   * Stops accepting in every loop, lets in-flight requests finish (up to
   * timeoutMs) with Connection: close, closes idle keep-alive connections
   * (with `graceMs`, only those idle that long: a hand-over to a new process),
   * flushes pending learns, and releases everything.
   */
  async close(timeoutMs = 0, graceMs = 0): Promise<void> {
    this.closing = true;
    this.listening = false;
    const threads = this.threads.map((t) => new Promise<void>((resolve) => {
      t.closing = true;
      t.worker.once('exit', () => resolve());
      t.send({ type: 'close', timeoutMs, graceMs });
    }));
    await Promise.all([this.loop.close(timeoutMs, graceMs), ...threads]);
    this.admin?.close();
    this.admin?.closeAllConnections();
    await this.storeWatch?.close();
  }
}

/** Listens, or rejects with a ConfigError naming the flag whose address could not be bound. */
function listen(flag: string, server: Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const fail = (err: NodeJS.ErrnoException): void => reject(new ConfigError(flag, `cannot listen on ${host.includes(':') ? `[${host}]` : host}:${port} (${err.code ?? err.message})`));
    server.once('error', fail);
    server.listen(port, host, () => {
      server.off('error', fail);
      resolve();
    });
  });
}
