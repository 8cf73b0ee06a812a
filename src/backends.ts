// The configured backends, each with its own keep-alive connection pool and
// its state: health (active checks), ejection (passive), and the operator's say.
import { Pool } from 'undici';
import type { BackendConfig, Config } from './config.ts';

/** What an operator has set: draining keeps bound sessions but takes no new ones. */
export type AdminState = 'enabled' | 'draining' | 'disabled';

export type UpstreamOptions = Pick<Config, 'upstreamConnections' | 'upstreamConnectTimeoutMs' | 'upstreamHeaderTimeoutMs' | 'upstreamBodyTimeoutMs'>;

export class Backend {
  readonly name: string;
  readonly url: URL;
  readonly weight: number;
  readonly pool: Pool;
  /** Requests in flight to this backend; least-conn and random-two read it. */
  active = 0;
  /** The active health checks' verdict (true when checks are off). */
  healthy = true;
  /** Passively ejected after repeated failures, until its cool-down ends. */
  ejected = false;
  /** Consecutive connect failures or 5xx answers. */
  failures = 0;
  /** Bound requests whose response set a new session id: affinity lost (or the app rotated the id). */
  sessionsReplaced = 0;
  admin: AdminState = 'enabled';
  // Derived from the fields above by refresh(), so the request path reads plain fields.
  /** Serves the sessions bound to it. */
  up = true;
  /** May be picked for a request without a usable binding. */
  takesNew = true;

  constructor(cfg: BackendConfig, opts: UpstreamOptions) {
    this.name = cfg.name;
    this.url = cfg.url;
    this.weight = cfg.weight;
    this.pool = new Pool(cfg.url.origin, {
      connections: opts.upstreamConnections,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      keepAliveMaxTimeout: 600_000,
      connectTimeout: opts.upstreamConnectTimeoutMs,
      headersTimeout: opts.upstreamHeaderTimeoutMs,
      bodyTimeout: opts.upstreamBodyTimeoutMs,
    });
    this.refresh();
  }

  refresh(): void {
    this.up = this.healthy && !this.ejected && this.admin !== 'disabled';
    this.takesNew = this.up && this.admin === 'enabled' && this.weight > 0;
  }

  get state(): 'up' | 'down' | 'draining' | 'disabled' {
    if (this.admin === 'disabled') return 'disabled';
    if (!this.up) return 'down';
    return this.admin === 'draining' ? 'draining' : 'up';
  }
}

export class BackendSet {
  readonly list: Backend[];
  readonly #byName = new Map<string, Backend>();

  constructor(configs: BackendConfig[], opts: UpstreamOptions) {
    this.list = configs.map((c) => new Backend(c, opts));
    for (const b of this.list) this.#byName.set(b.name, b);
  }

  get(name: string): Backend | undefined {
    return this.#byName.get(name);
  }

  async close(): Promise<void> {
    await Promise.all(this.list.map((b) => b.pool.close()));
  }
}
