// Assembles the proxy from its parts and owns their lifetimes: start-up,
// reloads of the backend list, and a graceful shutdown that lets requests
// finish and flushes learns.
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Piscina } from 'piscina';
import { Affinity, type BatchRunner } from './affinity.ts';
import { Acceptor } from './accept.ts';
import { BackendSet } from './backends.ts';
import { createBalancer } from './balance.ts';
import type { AffinityBatch, AffinityAnswer, ResolverSettings } from './batch.ts';
import { ConfigError, type BackendConfig, type Config } from './config.ts';
import type { ProxyContext } from './context.ts';
import { SessionCookieNames } from './cookies.ts';
import { Deadlines } from './deadlines.ts';
import { Health } from './health.ts';
import { silent, type Logger } from './log.ts';
import { loopMetrics, processRegistry, resolverMetrics, scrape, type MetricJson } from './metrics.ts';
import { NearCache } from './near-cache.ts';
import { Resolver, describeStore } from './resolver.ts';
import { LoopStats, ResolverStats } from './stats.ts';
import { MemcachedStore } from './store/memcached.ts';
import { EmbeddedStore, embeddedStoreBytes } from './store/embedded.ts';
import { VERSION } from './version.ts';

const WORKER = new URL('../workers/affinity.ts', import.meta.url);

// A worker's batches are mostly waiting on the store, so it works on many at once.
const BATCHES_PER_WORKER = 32;


class PoolRunner implements BatchRunner {
  readonly pool: Piscina<AffinityBatch, AffinityAnswer>;
  /** Settles once every worker has booted, so no first batch waits on a worker's start-up. */
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
    this.ready = new Promise((resolve, reject) => {
      let booted = 0;
      this.pool.on('workerCreate', () => { if (++booted === workers) resolve(); });
      this.pool.once('error', reject);
    });
    // Piscina replaces a worker that dies; its batches are routed by the fallback.
    this.pool.on('workerDestroy', () => log.warn('affinity worker ended; the pool replaces it'));
    this.pool.on('error', (err: Error) => log.error({ err: err.message }, 'affinity worker failed'));
  }

  run(batch: AffinityBatch, signal: AbortSignal): Promise<AffinityAnswer> {
    // Aborting a running task makes piscina terminate and replace its worker.
    return this.pool.run(batch, { signal });
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

function embeddedMemory(config: Config): SharedArrayBuffer | null {
  // With affinity off no batch is ever sent; the smallest table keeps the seam uniform.
  if (config.sessionCookies.length === 0) return new SharedArrayBuffer(embeddedStoreBytes(1));
  return config.memcache.length === 0 ? new SharedArrayBuffer(embeddedStoreBytes(config.embeddedMaxEntries)) : null;
}

export class StickyProxy {
  readonly config: Config;
  readonly log: Logger;
  readonly backends: BackendSet;
  readonly affinity: Affinity;
  readonly health: Health;
  readonly acceptor: Acceptor;
  readonly ctx: ProxyContext;
  readonly storeDescription: string;
  readonly runner: BatchRunner;
  readonly stats = new LoopStats();
  readonly resolverStats: ResolverStats;
  readonly deadlines: Deadlines;
  admin: Server | null = null;
  listening = false;

  private constructor(config: Config, log: Logger, settings: ResolverSettings, runner: BatchRunner, resolverStats: ResolverStats) {
    this.config = config;
    this.log = log;
    this.runner = runner;
    this.resolverStats = resolverStats;
    const affinityOff = config.sessionCookies.length === 0;
    this.storeDescription = affinityOff ? 'none (affinity off)' : runner instanceof InlineRunner ? runner.resolver.store.description : describeStore(settings);
    // The coarsest resolution that still honours the shortest timeout closely.
    const shortest = Math.min(config.clientHeaderTimeoutMs, config.upstreamHeaderTimeoutMs, config.upstreamConnectTimeoutMs, config.queueTimeoutMs);
    this.deadlines = new Deadlines(Math.max(10, Math.min(250, Math.floor(shortest / 4))));
    this.backends = new BackendSet(config.backends, {
      connections: config.upstreamConnections,
      connectTimeoutMs: config.upstreamConnectTimeoutMs,
      idleTimeoutMs: config.upstreamIdleTimeoutMs,
      queueMax: config.queueMax,
      queueTimeoutMs: config.queueTimeoutMs,
      ca: config.backendCaPem,
    }, this.deadlines);
    // A near cache only helps in front of a remote store; the embedded one is local memory already.
    const near = config.memcache.length > 0 && !affinityOff
      ? new NearCache(config.nearCacheEntries, config.nearCacheTtlMs, config.defaultTtl * 1000)
      : null;
    this.affinity = new Affinity({
      batchMax: config.batchMax,
      // The store has its own deadline; this one only catches a dead or stuck
      // worker, with room for a busy machine's scheduling delays.
      deadlineMs: config.storeTimeoutMs + 500,
      defaultTtl: config.defaultTtl,
      near,
      local: settings.embedded === null || affinityOff ? null : new EmbeddedStore(settings.embedded),
      stats: this.stats,
      resolverStats: this.resolverStats,
    }, runner);
    this.health = new Health(this.backends, { ...config, ca: config.backendCaPem }, log);
    this.ctx = {
      affinity: this.affinity,
      backends: this.backends,
      balancer: createBalancer(config.balance, this.backends.list),
      stats: this.stats,
      health: this.health,
      log,
      access: config.accessLog ? log.child({ access: true }) : null,
      names: new SessionCookieNames(config.sessionCookies, config.cookiePickLast),
      defaultTtl: config.defaultTtl,
      retries: config.retries,
      adopt: config.adopt,
      closing: false,
      proto: config.tls === null ? 'http' : 'https',
      forwarded: config.forwarded,
      rewriteHost: config.rewriteHost,
      limits: { maxHeadBytes: config.maxHeadBytes, maxHeaders: config.maxHeaders, maxUrlBytes: config.maxUrlBytes },
      deadlines: this.deadlines,
      clientHeaderTimeoutMs: config.clientHeaderTimeoutMs,
      clientIdleTimeoutMs: config.clientIdleTimeoutMs,
      clientBodyTimeoutMs: config.clientBodyTimeoutMs,
      upstreamHeaderTimeoutMs: config.upstreamHeaderTimeoutMs,
      upstreamBodyTimeoutMs: config.upstreamBodyTimeoutMs,
      clients: new Set(),
    };
    this.acceptor = new Acceptor(this.ctx, config);
  }

  static async start(config: Config, log: Logger = silent): Promise<StickyProxy> {
    const settings: ResolverSettings = {
      sessionCookies: config.sessionCookies,
      defaultTtl: config.defaultTtl,
      maxTtl: config.maxTtl,
      keyPrefix: config.keyPrefix,
      memcache: config.memcache,
      storeTimeoutMs: config.storeTimeoutMs,
      learnQueue: config.learnQueue,
      embedded: embeddedMemory(config),
    };
    const resolverStats = new ResolverStats();
    const inline = config.workers === 0 || config.sessionCookies.length === 0;
    // piscina is loaded only when there are workers to run.
    const runner = inline
      ? new InlineRunner(new Resolver(settings, resolverStats))
      : new PoolRunner((await import('piscina')).Piscina, config.workers, settings, log);
    const proxy = new StickyProxy(config, log, settings, runner, resolverStats);
    await proxy.runner.ready;
    await listen('--listen', proxy.acceptor.listener, config.listenPort, config.listenHost);
    if (config.admin !== null) {
      // prom-client is loaded only when the admin API serves metrics.
      const base = await processRegistry(VERSION);
      // The admin API (and node:http for it) is loaded only when configured.
      const { createAdmin } = await import('./admin.ts');
      proxy.admin = createAdmin({
        backends: proxy.backends,
        metrics: () => scrape(proxy.#metricParts(), inline ? 0 : config.workers, base),
        listening: () => proxy.listening,
        log,
      });
      await listen('--admin', proxy.admin, config.admin.port, config.admin.host);
    }
    proxy.health.start();
    proxy.listening = true;
    return proxy;
  }

  #metricParts(): MetricJson[][] {
    const store = this.runner instanceof InlineRunner ? this.runner.resolver.store : null;
    return [
      loopMetrics(this.stats, this.backends.list, this.ctx.clients.size),
      // Lookups answered on this thread (inline, or the embedded store read directly) are counted here too.
      resolverMetrics(this.resolverStats, store instanceof MemcachedStore ? { queued: store.queued, dropped: store.dropped } : null),
    ];
  }

  get port(): number {
    return (this.acceptor.listener.address() as AddressInfo).port;
  }

  get adminPort(): number | null {
    return this.admin === null ? null : (this.admin.address() as AddressInfo).port;
  }

  /** Applies a new backend list (a SIGHUP reload) without dropping a connection. */
  applyBackends(configs: BackendConfig[]): void {
    const { added, removed, reweighted } = this.backends.apply(configs);
    for (const b of added) this.health.watch(b);
    this.log.info({ added: added.map((b) => b.name), removed: removed.map((b) => b.name), reweighted: reweighted.map((b) => b.name) }, 'backends reloaded');
  }

  /** Fault injection for tests (STICKY_PROXY_TEST_HOOKS=1, SIGUSR2): ends one affinity worker. */
  terminateOneWorker(): void {
    if (this.runner instanceof PoolRunner) void this.runner.pool.threads[0]?.terminate();
  }

  /**
   * Stops accepting, lets in-flight requests finish (up to timeoutMs) with
   * Connection: close, closes idle keep-alive connections, flushes pending
   * learns, and releases everything.
   */
  async close(timeoutMs = 0): Promise<void> {
    const ctx = this.ctx;
    ctx.closing = true;
    this.listening = false;
    this.acceptor.listener.close();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const c of ctx.clients) if (c.idle) c.destroy();
      if (ctx.clients.size === 0 || Date.now() >= deadline) break;
      await sleep(25);
    }
    if (ctx.clients.size > 0) {
      this.log.warn({ open: ctx.clients.size }, 'shutdown timeout: closing connections with requests in flight');
      for (const c of ctx.clients) c.destroy();
    }
    this.health.stop();
    this.admin?.close();
    this.admin?.closeAllConnections();
    await this.affinity.close();
    this.backends.close();
    this.deadlines.stop();
  }
}

/** Listens, or rejects with a ConfigError naming the flag whose address could not be bound. */
function listen(flag: string, server: { listen(port: number, host: string, cb: () => void): unknown; once(e: 'error', f: (err: Error) => void): unknown; off(e: 'error', f: (err: Error) => void): unknown }, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const fail = (err: NodeJS.ErrnoException): void => reject(new ConfigError(flag, `cannot listen on ${host.includes(':') ? `[${host}]` : host}:${port} (${err.code ?? err.message})`));
    server.once('error', fail);
    server.listen(port, host, () => {
      server.off('error', fail);
      resolve();
    });
  });
}
