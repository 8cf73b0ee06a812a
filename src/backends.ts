// The configured backends, each with its own keep-alive connection pool.
import { Pool } from 'undici';
import type { BackendConfig } from './config.ts';

export class Backend {
  readonly name: string;
  readonly url: URL;
  readonly weight: number;
  readonly pool: Pool;
  /** Requests in flight to this backend; least-conn and random-two read it. */
  active = 0;
  up = true;

  constructor(cfg: BackendConfig, connections: number) {
    this.name = cfg.name;
    this.url = cfg.url;
    this.weight = cfg.weight;
    this.pool = new Pool(cfg.url.origin, {
      connections,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      keepAliveMaxTimeout: 600_000,
      connectTimeout: 5_000,
      headersTimeout: 60_000,
      bodyTimeout: 60_000,
    });
  }
}

export class BackendSet {
  readonly list: Backend[];
  readonly #byName = new Map<string, Backend>();

  constructor(configs: BackendConfig[], connections: number) {
    this.list = configs.map((c) => new Backend(c, connections));
    for (const b of this.list) this.#byName.set(b.name, b);
  }

  /** The named backend if it is configured and up; a binding never routes outside the pool. */
  usable(name: string): Backend | undefined {
    const b = this.#byName.get(name);
    return b !== undefined && b.up ? b : undefined;
  }

  async close(): Promise<void> {
    await Promise.all(this.list.map((b) => b.pool.close()));
  }
}
