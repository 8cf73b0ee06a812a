// The configured backends, each with its own keep-alive connection pool (per
// event loop) and its state, shared by every loop of the process (shared.ts):
// liveness (one state: up, failing its health checks, or ejected), the
// operator's say (enabled, draining, disabled) and its weight.
import type { BackendConfig } from './config.ts';
import type { Deadlines } from './deadlines.ts';
import type { BackendSlots } from './near-cache.ts';
import { ADMIN_DISABLED, ADMIN_DRAINING, ADMIN_ENABLED, LIVE_UP, type SharedState } from './shared.ts';
import { BackendStats } from './stats.ts';
import { UpstreamPool, type UpstreamOptions } from './upstream.ts';

/** What an operator has set: draining keeps bound sessions but takes no new ones. */
export type AdminState = 'enabled' | 'draining' | 'disabled';
const ADMIN_STATES: AdminState[] = ['enabled', 'draining', 'disabled'];
const ADMIN_CODES: Record<AdminState, number> = { enabled: ADMIN_ENABLED, draining: ADMIN_DRAINING, disabled: ADMIN_DISABLED };

/** A backend as the main thread hands it to every loop: with its slot in the shared state. */
export interface SlottedBackend extends BackendConfig {
  slot: number;
}

export class Backend {
  readonly name: string;
  readonly url: URL;
  /** Its slot in the process's shared state. */
  readonly slot: number;
  readonly pool: UpstreamPool;
  /** host:port, the Host header --rewrite-host sends. */
  readonly hostHeader: string;
  readonly stats = new BackendStats();
  /** Set when a reload removed it. */
  removed = false;
  /** This loop's requests in flight to it; least-conn and random-two read it. */
  active = 0;
  readonly #state: SharedState;

  constructor(cfg: SlottedBackend, opts: UpstreamOptions, deadlines: Deadlines, state: SharedState) {
    this.name = cfg.name;
    this.url = cfg.url;
    this.slot = cfg.slot;
    this.hostHeader = cfg.url.host;
    this.pool = new UpstreamPool(cfg.url, opts, deadlines);
    this.#state = state;
  }

  get weight(): number {
    return this.#state.weight(this.slot);
  }

  set weight(w: number) {
    this.#state.setWeight(this.slot, w);
  }

  get admin(): AdminState {
    return ADMIN_STATES[this.#state.admin(this.slot)];
  }

  set admin(a: AdminState) {
    this.#state.setAdmin(this.slot, ADMIN_CODES[a]);
  }

  /** Serves the sessions bound to it: live and not disabled. */
  get up(): boolean {
    return this.#state.up(this.slot);
  }

  /** May be picked for a request without a usable binding: up, enabled, weight above 0. */
  get takesNew(): boolean {
    const s = this.#state;
    return s.liveness(this.slot) === LIVE_UP && s.admin(this.slot) === ADMIN_ENABLED && s.weight(this.slot) > 0;
  }

  get state(): 'up' | 'down' | 'draining' | 'disabled' {
    const admin = this.#state.admin(this.slot);
    if (admin === ADMIN_DISABLED) return 'disabled';
    if (this.#state.liveness(this.slot) !== LIVE_UP) return 'down';
    return admin === ADMIN_DRAINING ? 'draining' : 'up';
  }

  /** Requests in flight to it across every loop. */
  get activeEverywhere(): number {
    return this.#state.active(this.slot);
  }

  /** A request starts (or ends) being served by it. */
  begin(): void {
    this.active++;
    this.#state.inFlight(this.slot, 1);
  }

  end(): void {
    this.active--;
    this.#state.inFlight(this.slot, -1);
  }
}

export class BackendSet implements BackendSlots {
  /** Shared with the balancer; a reload changes it in place. */
  readonly list: Backend[];
  readonly #byName = new Map<string, Backend>();
  /** Names by slot, removed ones included until their slot is reused (never, within a process). */
  readonly #names: string[] = [];
  readonly #opts: UpstreamOptions;
  readonly #deadlines: Deadlines;
  readonly #state: SharedState;

  constructor(configs: SlottedBackend[], opts: UpstreamOptions, deadlines: Deadlines, state: SharedState) {
    this.#opts = opts;
    this.#deadlines = deadlines;
    this.#state = state;
    this.list = configs.map((c) => new Backend(c, opts, deadlines, state));
    for (const b of this.list) this.#add(b);
  }

  #add(b: Backend): void {
    this.#byName.set(b.name, b);
    this.#names[b.slot] = b.name;
  }

  /**
   * Makes the set match `configs` without dropping a connection: new backends
   * are added; removed ones (or ones whose URL changed, which get a new slot)
   * leave the rotation while their pools finish what is in flight. Weights
   * live in the shared state: the main thread sets them.
   */
  apply(configs: SlottedBackend[]): { added: Backend[]; removed: Backend[] } {
    const added: Backend[] = [];
    const removed: Backend[] = [];
    const wanted = new Map(configs.map((c) => [c.name, c]));
    for (const b of [...this.list]) {
      const c = wanted.get(b.name);
      if (c !== undefined && c.slot === b.slot) continue;
      this.list.splice(this.list.indexOf(b), 1);
      this.#byName.delete(b.name);
      b.removed = true;
      removed.push(b);
      b.pool.close(); // graceful: requests in flight complete
    }
    for (const c of configs) {
      if (this.#byName.has(c.name)) continue;
      const b = new Backend(c, this.#opts, this.#deadlines, this.#state);
      this.list.push(b);
      this.#add(b);
      added.push(b);
    }
    return { added, removed };
  }

  get(name: string): Backend | undefined {
    return this.#byName.get(name);
  }

  slotOf(name: string): number {
    return this.#byName.get(name)?.slot ?? -1;
  }

  /** '' for a slot whose backend left: what the near cache remembers of it is ignored. */
  nameOf(slot: number): string {
    const name = this.#names[slot] ?? '';
    return this.#byName.get(name)?.slot === slot ? name : '';
  }

  /** Closes idle connections; busy ones close once their request is done. */
  close(): void {
    for (const b of this.list) b.pool.close();
  }
}
