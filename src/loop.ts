// One event loop's request path, whole: its listener (SO_REUSEPORT, so the
// kernel spreads connections over the loops), its client connections, its
// affinity batches and resolver (or its own affinity worker pool), its
// backend connection pools. What the loops must agree on lives in shared
// memory (shared.ts, the near cache, the embedded store). The first loop is
// the process's main thread; the others run the same code in worker threads
// (workers/loop.ts).
import { Buffer } from 'node:buffer';
import { performance } from 'node:perf_hooks';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Piscina } from 'piscina';
import { Acceptor } from './accept.ts';
import { Affinity, type BatchDeadline, type BatchRunner } from './affinity.ts';
import { BackendSet, type SlottedBackend } from './backends.ts';
import { createBalancer } from './balance.ts';
import type { AffinityAnswer, AffinityBatch, ResolverSettings } from './batch.ts';
import { ConfigError, trustList, type Config } from './config.ts';
import type { ProxyContext } from './context.ts';
import { SessionCookieNames } from './cookies.ts';
import { Deadlines } from './deadlines.ts';
import { Health } from './health.ts';
import { AccessLog, type Logger } from './log.ts';
import { loopMetrics, resolverMetrics, workerPoolMetrics, type MetricJson } from './metrics.ts';
import { NearCache } from './near-cache.ts';
import { RequestIds, requestIdHeader } from './request-id.ts';
import { Resolver, describeStore } from './resolver.ts';
import { SharedState, type SharedMemory } from './shared.ts';
import type { SlottedConfig } from './slot-table.ts';
import { LoopStats, ResolverStats } from './stats.ts';
import { EmbeddedStore } from './store/embedded.ts';
import { MemcachedStore } from './store/memcached.ts';
import type { UpstreamOptions } from './upstream.ts';

const WORKER = new URL('../workers/affinity.ts', import.meta.url);

// A worker's batches are mostly waiting on the store, so it works on many at once.
const BATCHES_PER_WORKER = 32;

/** Everything a loop is built from; it crosses to worker threads by structured clone. */
export interface LoopSettings {
  /** Which loop: 0 is the main thread's. */
  index: number;
  /** How many loops the process runs: each backend's connection cap is shared out among them. */
  loops: number;
  config: Config;
  /** The backends with their slots in the shared state (URLs as text: they cross threads). */
  backends: SlottedConfig[];
  /** The port to listen on: the first loop's, once it has one (--listen with port 0). */
  port: number;
  shared: SharedMemory;
  /** The near cache's memory (with memcached), the embedded store's (without). */
  near: SharedArrayBuffer | null;
  embedded: SharedArrayBuffer | null;
  /** The memcached stores' outage counters (store/outage.ts), which the main thread's store watch reports. */
  outageCounters: SharedArrayBuffer | null;
}

/** What a SIGHUP changes in a running loop (src/cli.ts says which flags reload); it crosses to worker threads by structured clone. */
export type LoopReload = Pick<Config,
  | 'logLevel' | 'sessionCookies' | 'cookiePickLast' | 'retries' | 'adopt' | 'forwarded' | 'rewriteHost' | 'trustedProxies'
  | 'clientHeaderTimeoutMs' | 'clientIdleTimeoutMs' | 'clientBodyTimeoutMs' | 'tunnelTimeoutMs' | 'tunnelFinTimeoutMs' | 'maxBodyBytes'
  | 'upstreamConnectTimeoutMs' | 'upstreamHeaderTimeoutMs' | 'upstreamBodyTimeoutMs' | 'upstreamIdleTimeoutMs' | 'queueMax' | 'queueTimeoutMs'
> & {
  /** The certificate and key for new TLS connections; null: unchanged. */
  tls: Config['tls'];
};

/** The reloadable part of `c`; `tls` only when its certificate or key changed. */
export function loopReload(c: Config, tlsChanged: boolean): LoopReload {
  return {
    logLevel: c.logLevel, sessionCookies: c.sessionCookies, cookiePickLast: c.cookiePickLast, retries: c.retries, adopt: c.adopt,
    forwarded: c.forwarded, rewriteHost: c.rewriteHost, trustedProxies: c.trustedProxies,
    clientHeaderTimeoutMs: c.clientHeaderTimeoutMs, clientIdleTimeoutMs: c.clientIdleTimeoutMs, clientBodyTimeoutMs: c.clientBodyTimeoutMs,
    tunnelTimeoutMs: c.tunnelTimeoutMs, tunnelFinTimeoutMs: c.tunnelFinTimeoutMs, maxBodyBytes: c.maxBodyBytes,
    upstreamConnectTimeoutMs: c.upstreamConnectTimeoutMs, upstreamHeaderTimeoutMs: c.upstreamHeaderTimeoutMs, upstreamBodyTimeoutMs: c.upstreamBodyTimeoutMs,
    upstreamIdleTimeoutMs: c.upstreamIdleTimeoutMs, queueMax: c.queueMax, queueTimeoutMs: c.queueTimeoutMs,
    tls: tlsChanged ? c.tls : null,
  };
}

class PoolRunner implements BatchRunner {
  readonly pool: Piscina<AffinityBatch, AffinityAnswer>;
  readonly ready: Promise<void>;

  constructor(PiscinaClass: typeof Piscina, workers: number, settings: ResolverSettings, log: Logger) {
    this.pool = new PiscinaClass({
      filename: WORKER.href,
      minThreads: workers,
      maxThreads: workers,
      idleTimeout: Infinity,
      concurrentTasksPerWorker: BATCHES_PER_WORKER,
      // 'sync' would block an idle worker in Atomics.wait, freezing the event
      // loop that owns its memcached sockets.
      atomics: 'disabled',
      workerData: settings,
    });
    // Piscina calls a worker ready before its module has loaded: an empty
    // batch on each one settles only once they can all answer, so no first
    // request's batch waits on a worker's start-up (and past its deadline).
    const empty: AffinityBatch = { lookups: [], learnBackends: [], learnSetCookies: [], learnSent: [], learnBound: [], bindKeys: [], bindBackends: [], bindAdopt: [] };
    this.ready = Promise.all(Array.from({ length: workers }, () => this.pool.run(empty))).then(() => undefined);
    // Piscina replaces a worker that dies; its batches are routed by the fallback.
    this.pool.on('workerDestroy', () => log.warn('affinity worker ended; the pool replaces it'));
    this.pool.on('error', (err: Error) => log.error({ err: err.message }, 'affinity worker failed'));
  }

  run(batch: AffinityBatch, deadline: BatchDeadline): Promise<AffinityAnswer> {
    // Aborting a running task makes piscina terminate and replace its worker.
    return this.pool.run(batch, { signal: deadline.signal });
  }

  close(): Promise<void> {
    return this.pool.destroy();
  }
}

class InlineRunner implements BatchRunner {
  readonly resolver: Resolver;
  readonly ready = Promise.resolve();

  constructor(resolver: Resolver) {
    this.resolver = resolver;
  }

  run(batch: AffinityBatch): Promise<AffinityAnswer> {
    return this.resolver.run(batch);
  }

  close(): Promise<void> {
    return this.resolver.close();
  }
}

export class Loop {
  readonly index: number;
  readonly config: Config;
  readonly log: Logger;
  readonly state: SharedState;
  readonly backends: BackendSet;
  readonly affinity: Affinity;
  /** Bindings remembered in front of memcached, shared by every loop; null without memcached. */
  readonly near: NearCache | null;
  readonly health: Health;
  readonly acceptor: Acceptor;
  readonly ctx: ProxyContext;
  readonly runner: BatchRunner;
  readonly stats = new LoopStats();
  readonly resolverStats: ResolverStats;
  readonly deadlines: Deadlines;
  readonly storeDescription: string;
  /** Every backend pool's options, one object: a reload changes its timeouts in place. */
  readonly #upstream: UpstreamOptions;
  /** --access-log's writer, or null. */
  readonly accessLog: AccessLog | null;

  private constructor(s: LoopSettings, log: Logger, settings: ResolverSettings, runner: BatchRunner, resolverStats: ResolverStats) {
    const config = s.config;
    this.index = s.index;
    this.config = config;
    this.log = log;
    this.runner = runner;
    this.resolverStats = resolverStats;
    this.state = new SharedState(s.shared, s.index, s.loops);
    const affinityOff = config.sessionCookies.length === 0;
    this.storeDescription = affinityOff ? 'none (affinity off)' : describeStore(settings);
    // The coarsest resolution that still honours the shortest timeout closely.
    const shortest = Math.min(config.clientHeaderTimeoutMs, config.upstreamHeaderTimeoutMs, config.upstreamConnectTimeoutMs, config.queueTimeoutMs, config.tunnelFinTimeoutMs);
    this.deadlines = new Deadlines(Math.max(10, Math.min(250, Math.floor(shortest / 4))));
    this.#upstream = {
      // The cap is the process's: each loop gets its share.
      connections: Math.max(1, Math.ceil(config.upstreamConnections / s.loops)),
      connectTimeoutMs: config.upstreamConnectTimeoutMs,
      idleTimeoutMs: config.upstreamIdleTimeoutMs,
      queueMax: config.queueMax,
      queueTimeoutMs: config.queueTimeoutMs,
      ca: config.backendCaPem,
    };
    this.backends = new BackendSet(slotted(s.backends), this.#upstream, this.deadlines, this.state);
    const near = this.near = s.near === null || affinityOff
      ? null
      : new NearCache(s.near, config.nearCacheEntries, config.nearCacheTtlMs, config.defaultTtl * 1000, this.backends);
    this.affinity = new Affinity({
      batchMax: config.batchMax,
      // The store has its own deadline; this one only catches a dead or stuck
      // worker, with room for a busy machine's scheduling delays.
      deadlineMs: config.storeTimeoutMs + 500,
      defaultTtl: config.defaultTtl,
      maxTtl: config.maxTtl,
      near,
      // The embedded store is this process's memory: read in place, without a batch.
      local: s.embedded === null || affinityOff ? null : new EmbeddedStore(s.embedded),
      stats: this.stats,
      resolverStats,
    }, runner);
    this.health = new Health(this.backends, { ...config, ca: config.backendCaPem }, log, this.state);
    this.accessLog = config.accessLog === null ? null : new AccessLog(config.accessLog, config.logFormat, s.index, log);
    const ids = new RequestIds();
    this.ctx = {
      affinity: this.affinity,
      backends: this.backends,
      balancer: createBalancer(config.balance, this.backends.list, () => this.state.ticket()),
      stats: this.stats,
      health: this.health,
      state: this.state,
      log,
      access: this.accessLog?.logger ?? null,
      ids,
      requestId: config.requestIdHeader === null ? null : requestIdHeader(config.requestIdHeader, ids),
      names: new SessionCookieNames(config.sessionCookies, config.cookiePickLast),
      defaultTtl: config.defaultTtl,
      retries: config.retries,
      adopt: config.adopt,
      closing: false,
      proto: config.tls === null ? 'http' : 'https',
      forwarded: config.forwarded,
      rewriteHost: config.rewriteHost,
      acceptProxy: config.acceptProxy,
      trusted: trustList(config.trustedProxies),
      monitorUri: config.monitorUri === null ? null : Buffer.from(config.monitorUri, 'latin1'),
      limits: { maxHeadBytes: config.maxHeadBytes, maxHeaders: config.maxHeaders, maxUrlBytes: config.maxUrlBytes },
      maxBodyBytes: bodyLimit(config.maxBodyBytes),
      deadlines: this.deadlines,
      clientHeaderTimeoutMs: config.clientHeaderTimeoutMs,
      clientIdleTimeoutMs: config.clientIdleTimeoutMs,
      clientBodyTimeoutMs: config.clientBodyTimeoutMs,
      tunnelTimeoutMs: config.tunnelTimeoutMs,
      tunnelFinTimeoutMs: config.tunnelFinTimeoutMs,
      upstreamHeaderTimeoutMs: config.upstreamHeaderTimeoutMs,
      upstreamBodyTimeoutMs: config.upstreamBodyTimeoutMs,
      clients: new Set(),
    };
    this.acceptor = new Acceptor(this.ctx, config);
  }

  /** Builds the loop and starts listening. */
  static async start(s: LoopSettings, log: Logger): Promise<Loop> {
    const config = s.config;
    const affinityOff = config.sessionCookies.length === 0;
    const settings: ResolverSettings = {
      sessionCookies: config.sessionCookies,
      defaultTtl: config.defaultTtl,
      maxTtl: config.maxTtl,
      keyPrefix: config.keyPrefix,
      // With affinity off nothing reaches the store: no memcached connection is opened.
      memcache: affinityOff ? [] : config.memcache,
      storeTimeoutMs: config.storeTimeoutMs,
      learnQueue: config.learnQueue,
      outageCounters: s.outageCounters,
      embedded: s.embedded,
    };
    const resolverStats = new ResolverStats();
    const inline = config.workers === 0 || affinityOff;
    // piscina is loaded only when there are workers to run.
    const runner = inline
      ? new InlineRunner(new Resolver(settings, resolverStats))
      : new PoolRunner((await import('piscina')).Piscina, config.workers, settings, log);
    const loop = new Loop(s, log, settings, runner, resolverStats);
    await runner.ready;
    await listen(loop.acceptor.listener, s.port, config.listenHost);
    return loop;
  }

  get port(): number {
    return (this.acceptor.listener.address() as AddressInfo).port;
  }

  /** This loop's metrics, in prom-client's JSON form. */
  metricParts(): MetricJson[][] {
    const store = this.runner instanceof InlineRunner ? this.runner.resolver.store : null;
    return [
      loopMetrics(this.stats, this.backends.list, this.ctx.clients.size),
      // Lookups answered on this thread (inline, or the embedded store read directly) are counted here too.
      resolverMetrics(this.resolverStats, store instanceof MemcachedStore ? { queued: store.queued, dropped: store.dropped } : null),
      ...(this.runner instanceof PoolRunner ? [workerPoolMetrics(this.runner.pool)] : []),
    ];
  }

  /** The main thread is about to give backend slot `slot` to another backend: what the near cache remembers of it goes. */
  forgetBackend(slot: number): void {
    this.near?.forgetBackend(slot);
  }

  /** A reload's backend list (slots assigned by the main thread). */
  applyBackends(backends: LoopSettings['backends']): void {
    const { added } = this.backends.apply(slotted(backends));
    if (this.index === 0) for (const b of added) this.health.watch(b);
  }

  /**
   * A SIGHUP's settings: they hold for what starts from now on (a request's
   * next timeout, a new connection's certificate and trust); what is already
   * counting keeps its deadline.
   */
  reload(r: LoopReload): void {
    const ctx = this.ctx;
    this.log.level = r.logLevel;
    // Affinity itself is not switched on or off here (--no-affinity waits for a restart).
    if (ctx.names.names.length > 0 && r.sessionCookies.length > 0) ctx.names = new SessionCookieNames(r.sessionCookies, r.cookiePickLast);
    ctx.retries = r.retries;
    ctx.adopt = r.adopt;
    ctx.forwarded = r.forwarded;
    ctx.rewriteHost = r.rewriteHost;
    ctx.trusted = trustList(r.trustedProxies);
    ctx.clientHeaderTimeoutMs = r.clientHeaderTimeoutMs;
    ctx.clientIdleTimeoutMs = r.clientIdleTimeoutMs;
    ctx.clientBodyTimeoutMs = r.clientBodyTimeoutMs;
    ctx.tunnelTimeoutMs = r.tunnelTimeoutMs;
    ctx.tunnelFinTimeoutMs = r.tunnelFinTimeoutMs;
    ctx.maxBodyBytes = bodyLimit(r.maxBodyBytes);
    ctx.upstreamHeaderTimeoutMs = r.upstreamHeaderTimeoutMs;
    ctx.upstreamBodyTimeoutMs = r.upstreamBodyTimeoutMs;
    const u = this.#upstream;
    u.connectTimeoutMs = r.upstreamConnectTimeoutMs;
    u.idleTimeoutMs = r.upstreamIdleTimeoutMs;
    u.queueMax = r.queueMax;
    u.queueTimeoutMs = r.queueTimeoutMs;
    if (r.tls !== null) this.acceptor.setCertificate(r.tls);
  }

  /** SIGUSR1: the access log file is opened again at its path (logrotate moved the old one away). */
  reopenLogs(): void {
    this.accessLog?.reopen();
  }

  /** Fault injection for tests: ends one of this loop's affinity workers. */
  terminateOneWorker(): void {
    if (this.runner instanceof PoolRunner) void this.runner.pool.threads[0]?.terminate();
  }

  /**
   * Stops accepting, lets in-flight requests finish (up to timeoutMs) with
   * Connection: close, and flushes pending learns. Idle keep-alive
   * connections close at once; with `graceMs` (a restart handing over to a
   * new process) only once idle that long, so a client about to send on one
   * is answered (with Connection: close) instead of cut.
   */
  async close(timeoutMs: number, graceMs = 0): Promise<void> {
    const ctx = this.ctx;
    ctx.closing = true;
    this.acceptor.listener.close();
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const now = performance.now();
      for (const c of ctx.clients) if (c.idle && now - c.idleSince >= graceMs) c.destroy();
      if (ctx.clients.size === 0 || performance.now() >= deadline) break;
      await sleep(25);
    }
    if (ctx.clients.size > 0) {
      this.log.warn({ open: ctx.clients.size }, 'shutdown timeout: closing connections with requests in flight');
      for (const c of ctx.clients) c.destroy();
    }
    this.health.stop();
    await this.affinity.close();
    this.backends.close();
    this.deadlines.stop();
  }
}

function slotted(list: LoopSettings['backends']): SlottedBackend[] {
  return list.map((b) => ({ name: b.name, url: new URL(b.url), weight: b.weight, slot: b.slot }));
}

/**
 * Listens with SO_REUSEPORT: every loop of this process binds the same
 * address, and so can a new process taking over (zero-downtime restarts).
 * Rejects with a ConfigError naming --listen when the address cannot be bound.
 */
function listen(server: { listen(o: { port: number; host: string; reusePort: boolean }, cb: () => void): unknown; once(e: 'error', f: (err: Error) => void): unknown; off(e: 'error', f: (err: Error) => void): unknown }, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const fail = (err: NodeJS.ErrnoException): void => reject(new ConfigError('--listen', `cannot listen on ${host.includes(':') ? `[${host}]` : host}:${port} (${err.code ?? err.message})`));
    server.once('error', fail);
    server.listen({ port, host, reusePort: true }, () => {
      server.off('error', fail);
      resolve();
    });
  });
}

/** --max-body-size as the context keeps it: 0 (none) is Infinity, so that the check is one comparison. */
function bodyLimit(bytes: number): number {
  return bytes === 0 ? Infinity : bytes;
}
