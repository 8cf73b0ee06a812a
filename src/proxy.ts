// Assembles the proxy from its parts and owns their lifetimes: start-up,
// reloads of the backend list, and a graceful shutdown that lets requests
// finish and flushes learns.
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { Piscina } from 'piscina';
import { Registry } from 'prom-client';
import { Affinity, type BatchRunner } from './affinity.ts';
import { Acceptor } from './accept.ts';
import { createAdmin } from './admin.ts';
import { BackendSet } from './backends.ts';
import { createBalancer } from './balance.ts';
import type { AffinityBatch, AffinityAnswer, ResolverSettings } from './batch.ts';
import { ConfigError, type BackendConfig, type Config } from './config.ts';
import type { ProxyContext } from './context.ts';
import { Health } from './health.ts';
import { silent, type Logger } from './log.ts';
import { ProxyMetrics, ResolverMetrics } from './metrics.ts';
import { Resolver, describeStore } from './resolver.ts';
import { embeddedStoreBytes } from './store/embedded.ts';

const WORKER = new URL('../workers/affinity.ts', import.meta.url);

// A worker's batches are mostly waiting on the store, so it works on many at once.
const BATCHES_PER_WORKER = 32;

class PoolRunner implements BatchRunner {
  readonly pool: Piscina<AffinityBatch, AffinityAnswer>;
  /** Settles once every worker has booted, so no first batch waits on a worker's start-up. */
  readonly ready: Promise<void>;

  constructor(workers: number, settings: ResolverSettings, log: Logger) {
    this.pool = new Piscina({
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
  readonly #resolver: Resolver;
  readonly ready = Promise.resolve();

  constructor(resolver: Resolver) {
    this.#resolver = resolver;
  }

  run(batch: AffinityBatch): Promise<AffinityAnswer> {
    return this.#resolver.run(batch);
  }

  close(): Promise<void> {
    return this.#resolver.close();
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
  readonly registry = new Registry();
  readonly backends: BackendSet;
  readonly affinity: Affinity;
  readonly health: Health;
  readonly acceptor: Acceptor;
  readonly ctx: ProxyContext;
  readonly storeDescription: string;
  readonly runner: BatchRunner;
  readonly admin: Server | null;
  listening = false;

  private constructor(config: Config, log: Logger) {
    this.config = config;
    this.log = log;
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
    const affinityOff = config.sessionCookies.length === 0;
    const inline = config.workers === 0 || affinityOff ? new Resolver(settings, new ResolverMetrics(this.registry)) : null;
    // Workers open their own store; the main thread only describes it.
    this.storeDescription = affinityOff ? 'none (affinity off)' : inline?.store.description ?? describeStore(settings);
    const pool = inline === null ? new PoolRunner(config.workers, settings, log) : null;
    this.runner = pool ?? new InlineRunner(inline!);
    this.backends = new BackendSet(config.backends, { ...config, ca: config.backendCaPem });
    const metrics = new ProxyMetrics(this.registry, {
      queueDepth: () => pool?.pool.queueSize ?? 0,
      utilization: () => pool?.pool.utilization ?? 0,
      backends: () => this.backends.list,
      clients: () => this.acceptor.open,
    });
    this.affinity = new Affinity({
      sessionCookies: config.sessionCookies,
      batchMax: config.batchMax,
      // The store has its own deadline; this one only catches a dead or stuck
      // worker, with room for a busy machine's scheduling delays.
      deadlineMs: config.storeTimeoutMs + 500,
      onBatch: (size) => metrics.batchSize.observe(size),
    }, this.runner);
    this.health = new Health(this.backends, config, log);
    this.ctx = {
      affinity: this.affinity,
      backends: this.backends,
      balancer: createBalancer(config.balance, this.backends.list),
      health: this.health,
      log,
      metrics,
      access: config.accessLog ? log.child({ access: true }) : null,
      sessionCookies: config.sessionCookies,
      defaultTtl: config.defaultTtl,
      retries: config.retries,
      closing: false,
      proto: config.tls === null ? 'http' : 'https',
      forwarded: config.forwarded,
      rewriteHost: config.rewriteHost,
    };
    this.acceptor = new Acceptor(this.ctx, config);
    this.admin = config.admin === null ? null : createAdmin({
      backends: this.backends,
      registry: this.registry,
      workers: pool === null ? 0 : config.workers,
      listening: () => this.listening,
      log,
    });
  }

  static async start(config: Config, log: Logger = silent): Promise<StickyProxy> {
    const proxy = new StickyProxy(config, log);
    await proxy.runner.ready;
    await listen('--listen', proxy.acceptor.listener, config.listenPort, config.listenHost);
    if (proxy.admin !== null && config.admin !== null) await listen('--admin', proxy.admin, config.admin.port, config.admin.host);
    proxy.health.start();
    proxy.listening = true;
    return proxy;
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
   * Stops accepting, lets in-flight requests finish (up to timeoutMs), closes
   * idle keep-alive connections, flushes pending learns, and releases everything.
   */
  async close(timeoutMs = 0): Promise<void> {
    this.ctx.closing = true;
    this.listening = false;
    this.acceptor.listener.close();
    const http = this.acceptor.http;
    const deadline = Date.now() + timeoutMs;
    while (this.acceptor.open > 0 && Date.now() < deadline) {
      http.closeIdleConnections();
      await sleep(25);
    }
    if (this.acceptor.open > 0) {
      this.log.warn({ open: this.acceptor.open }, 'shutdown timeout: closing connections with requests in flight');
      http.closeAllConnections();
    }
    this.health.stop();
    this.admin?.close();
    this.admin?.closeAllConnections();
    await this.affinity.close();
    await this.backends.close();
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
