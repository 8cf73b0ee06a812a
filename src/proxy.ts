// Assembles the proxy from its parts and owns their lifetimes: start-up,
// and a graceful shutdown that lets requests finish and flushes learns.
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Piscina } from 'piscina';
import { Affinity, type BatchRunner } from './affinity.ts';
import { Acceptor } from './accept.ts';
import { BackendSet } from './backends.ts';
import { createBalancer } from './balance.ts';
import type { AffinityBatch, AffinityAnswer, ResolverSettings } from './batch.ts';
import type { Config } from './config.ts';
import type { ProxyContext } from './context.ts';
import { Health } from './health.ts';
import { silent, type Logger } from './log.ts';
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
  readonly backends: BackendSet;
  readonly affinity: Affinity;
  readonly health: Health;
  readonly acceptor: Acceptor;
  readonly ctx: ProxyContext;
  readonly storeDescription: string;
  readonly runner: BatchRunner;

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
    const inline = config.workers === 0 || affinityOff ? new Resolver(settings) : null;
    // Workers open their own store; the main thread only describes it.
    this.storeDescription = affinityOff ? 'none (affinity off)' : inline?.store.description ?? describeStore(settings);
    this.runner = inline !== null ? new InlineRunner(inline) : new PoolRunner(config.workers, settings, log);
    this.backends = new BackendSet(config.backends, config);
    this.affinity = new Affinity({
      sessionCookies: config.sessionCookies,
      batchMax: config.batchMax,
      // The store has its own deadline; this one only catches a dead or stuck
      // worker, with room for a busy machine's scheduling delays.
      deadlineMs: config.storeTimeoutMs + 500,
    }, this.runner);
    this.health = new Health(this.backends, config, log);
    this.ctx = {
      affinity: this.affinity,
      backends: this.backends,
      balancer: createBalancer(config.balance, this.backends.list),
      health: this.health,
      log,
      sessionCookies: config.sessionCookies,
      defaultTtl: config.defaultTtl,
      retries: config.retries,
      closing: false,
      proto: 'http',
      forwarded: config.forwarded,
      rewriteHost: config.rewriteHost,
    };
    this.acceptor = new Acceptor(this.ctx, config);
  }

  static async start(config: Config, log: Logger = silent): Promise<StickyProxy> {
    const proxy = new StickyProxy(config, log);
    await proxy.runner.ready;
    const listener = proxy.acceptor.listener;
    await new Promise<void>((resolve, reject) => {
      listener.once('error', reject);
      listener.listen(config.listenPort, config.listenHost, () => {
        listener.off('error', reject);
        resolve();
      });
    });
    proxy.health.start();
    return proxy;
  }

  /** Fault injection for tests (STICKY_PROXY_TEST_HOOKS=1, SIGUSR2): ends one affinity worker. */
  terminateOneWorker(): void {
    if (this.runner instanceof PoolRunner) void this.runner.pool.threads[0]?.terminate();
  }

  get port(): number {
    return (this.acceptor.listener.address() as AddressInfo).port;
  }

  /**
   * Stops accepting, lets in-flight requests finish (up to timeoutMs), closes
   * idle keep-alive connections, flushes pending learns, and releases everything.
   */
  async close(timeoutMs = 0): Promise<void> {
    this.ctx.closing = true;
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
    await this.affinity.close();
    await this.backends.close();
  }
}
