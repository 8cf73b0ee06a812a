// Assembles the proxy from its parts and owns their lifetimes.
import type { AddressInfo } from 'node:net';
import type { IncomingMessage, Server } from 'node:http';
import { Piscina } from 'piscina';
import { Affinity, type BatchRunner } from './affinity.ts';
import { createAcceptor, type ProxyResponse } from './accept.ts';
import { BackendSet } from './backends.ts';
import { createBalancer } from './balance.ts';
import type { AffinityBatch, AffinityAnswer, ResolverSettings } from './batch.ts';
import type { Config } from './config.ts';
import { Resolver, describeStore } from './resolver.ts';
import { embeddedStoreBytes } from './store/embedded.ts';

const WORKER = new URL('../workers/affinity.ts', import.meta.url);

// A worker's batches are mostly waiting on the store, so it works on many at once.
const BATCHES_PER_WORKER = 32;

class PoolRunner implements BatchRunner {
  readonly #pool: Piscina<AffinityBatch, AffinityAnswer>;
  /** Settles once every worker has booted, so no first batch waits on a worker's start-up. */
  readonly ready: Promise<void>;

  constructor(workers: number, settings: ResolverSettings) {
    this.#pool = new Piscina({
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
      this.#pool.on('workerCreate', () => { if (++booted === workers) resolve(); });
      this.#pool.once('error', reject);
    });
  }

  run(batch: AffinityBatch): Promise<AffinityAnswer> {
    return this.#pool.run(batch);
  }

  close(): Promise<void> {
    return this.#pool.destroy();
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

export class StickyProxy {
  readonly config: Config;
  readonly backends: BackendSet;
  readonly affinity: Affinity;
  readonly server: Server<typeof IncomingMessage, typeof ProxyResponse>;
  readonly storeDescription: string;
  readonly #runnerReady: Promise<void>;

  private constructor(config: Config) {
    this.config = config;
    const settings: ResolverSettings = {
      sessionCookies: config.sessionCookies,
      defaultTtl: config.defaultTtl,
      maxTtl: config.maxTtl,
      keyPrefix: config.keyPrefix,
      memcache: config.memcache,
      storeTimeoutMs: config.storeTimeoutMs,
      embedded: config.memcache.length === 0 ? new SharedArrayBuffer(embeddedStoreBytes(config.embeddedMaxEntries)) : null,
    };
    const inline = config.workers === 0 ? new Resolver(settings) : null;
    // Workers open their own store; the main thread only describes it.
    this.storeDescription = inline?.store.description ?? describeStore(settings);
    const runner = inline !== null ? new InlineRunner(inline) : new PoolRunner(config.workers, settings);
    this.backends = new BackendSet(config.backends, config.upstreamConnections);
    this.affinity = new Affinity({
      sessionCookies: config.sessionCookies,
      batchMax: config.batchMax,
      // The store has its own deadline; this one only catches a dead or stuck
      // worker, with room for a busy machine's scheduling delays.
      deadlineMs: config.storeTimeoutMs + 500,
    }, runner);
    this.#runnerReady = runner.ready;
    this.server = createAcceptor({
      affinity: this.affinity,
      backends: this.backends,
      balancer: createBalancer(config.balance, this.backends.list),
    });
  }

  static async start(config: Config): Promise<StickyProxy> {
    const proxy = new StickyProxy(config);
    await proxy.#runnerReady;
    await new Promise<void>((resolve, reject) => {
      proxy.server.once('error', reject);
      proxy.server.listen(config.listenPort, config.listenHost, () => {
        proxy.server.off('error', reject);
        resolve();
      });
    });
    return proxy;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
    });
    await this.affinity.close();
    await this.backends.close();
  }
}
