// The configured backends, each with its own keep-alive connection pool and
// its state: health (active checks), ejection (passive), and the operator's say.
import type { BackendConfig } from './config.ts';
import type { Deadlines } from './deadlines.ts';
import { BackendStats } from './stats.ts';
import { UpstreamPool, type UpstreamOptions } from './upstream.ts';

/** What an operator has set: draining keeps bound sessions but takes no new ones. */
export type AdminState = 'enabled' | 'draining' | 'disabled';

export class Backend {
  readonly name: string;
  readonly url: URL;
  weight: number;
  readonly pool: UpstreamPool;
  /** host:port, the Host header --rewrite-host sends. */
  readonly hostHeader: string;
  readonly stats = new BackendStats();
  /** Smooth round robin's running weight. */
  rrCurrent = 0;
  /** Set when a reload removed it: its health checks stop. */
  removed = false;
  /** Requests in flight to this backend; least-conn and random-two read it. */
  active = 0;
  /** The active health checks' verdict (true when checks are off). */
  healthy = true;
  /** Passively ejected after repeated failures, until its cool-down ends. */
  ejected = false;
  /** Consecutive connect failures or 5xx answers. */
  failures = 0;
  admin: AdminState = 'enabled';
  // Derived from the fields above by refresh(), so the request path reads plain fields.
  /** Serves the sessions bound to it. */
  up = true;
  /** May be picked for a request without a usable binding. */
  takesNew = true;

  constructor(cfg: BackendConfig, opts: UpstreamOptions, deadlines: Deadlines) {
    this.name = cfg.name;
    this.url = cfg.url;
    this.weight = cfg.weight;
    this.hostHeader = cfg.url.host;
    this.pool = new UpstreamPool(cfg.url, opts, deadlines);
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
  /** Shared with the balancer; a reload changes it in place. */
  readonly list: Backend[];
  readonly #byName = new Map<string, Backend>();
  readonly #opts: UpstreamOptions;
  readonly #deadlines: Deadlines;

  constructor(configs: BackendConfig[], opts: UpstreamOptions, deadlines: Deadlines) {
    this.#opts = opts;
    this.#deadlines = deadlines;
    this.list = configs.map((c) => new Backend(c, opts, deadlines));
    for (const b of this.list) this.#byName.set(b.name, b);
  }

  /**
   * Makes the set match `configs` without dropping a connection: new backends
   * are added, weights changed in place, and removed ones (or ones whose URL
   * changed) leave the rotation while their pools finish what is in flight.
   */
  apply(configs: BackendConfig[]): { added: Backend[]; removed: Backend[]; reweighted: Backend[] } {
    const added: Backend[] = [];
    const removed: Backend[] = [];
    const reweighted: Backend[] = [];
    const wanted = new Map(configs.map((c) => [c.name, c]));
    for (const b of [...this.list]) {
      const c = wanted.get(b.name);
      if (c !== undefined && c.url.origin === b.url.origin) {
        if (c.weight !== b.weight) {
          b.weight = c.weight;
          b.refresh();
          reweighted.push(b);
        }
        continue;
      }
      this.list.splice(this.list.indexOf(b), 1);
      this.#byName.delete(b.name);
      b.removed = true;
      removed.push(b);
      b.pool.close(); // graceful: requests in flight complete
    }
    for (const c of configs) {
      if (this.#byName.has(c.name)) continue;
      const b = new Backend(c, this.#opts, this.#deadlines);
      this.list.push(b);
      this.#byName.set(b.name, b);
      added.push(b);
    }
    return { added, removed, reweighted };
  }

  get(name: string): Backend | undefined {
    return this.#byName.get(name);
  }

  /** Closes idle connections; busy ones close once their request is done. */
  close(): void {
    for (const b of this.list) b.pool.close();
  }
}
