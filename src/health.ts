// Backend health: active checks (GET --health-path, with rise and fall
// thresholds, off unless configured; through undici, which the data path does
// not use; run by the main thread's loop alone) and passive ejection after
// consecutive connection failures or gateway answers, with a cool-down, seen
// by any loop. Both write the backend's one shared liveness state, so every
// loop routes by the same verdict. Ejection never takes the last backend that
// is up, nor more than --max-ejection-percent of the pool.
import type { Dispatcher } from 'undici';
import type { Backend, BackendSet } from './backends.ts';
import type { Config } from './config.ts';
import type { Logger } from './log.ts';
import { LIVE_UP, type SharedState } from './shared.ts';
import { monotonicMs } from './clock.ts';

export type HealthOptions = Pick<Config, 'healthPath' | 'healthIntervalMs' | 'healthTimeoutMs' | 'healthRise' | 'healthFall' | 'ejectAfter' | 'ejectCooldownMs' | 'maxEjectionPercent' | 'ejectOn500'> & {
  /** PEM CA for https:// backends' checks. */
  ca: string | null;
};

export class Health {
  readonly #backends: BackendSet;
  readonly #opts: HealthOptions;
  readonly #log: Logger;
  readonly #timers = new Set<NodeJS.Timeout>();
  #stopped = false;
  #agent: Promise<Dispatcher> | null = null;

  readonly #state: SharedState;

  constructor(backends: BackendSet, opts: HealthOptions, log: Logger, state: SharedState) {
    this.#backends = backends;
    this.#opts = opts;
    this.#log = log;
    this.#state = state;
    state.onReturn = (slot) => this.#log.info({ backend: backends.nameOf(slot) }, 'backend back from ejection');
  }

  start(): void {
    for (const b of this.#backends.list) this.watch(b);
  }

  /** Starts active checks of a backend (one added by a reload, too); they stop once it is removed. */
  watch(b: Backend): void {
    if (this.#opts.healthPath !== null) this.#schedule(() => this.#check(b, true, 0, 0), 0);
  }

  stop(): void {
    this.#stopped = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    void this.#agent?.then((a) => a.close());
  }

  /** A connection to the backend failed, it timed out, or it answered 5xx (`appError`: a 500 of the app itself). */
  failure(b: Backend, reason: string, appError: boolean): void {
    const o = this.#opts;
    const state = this.#state;
    if (o.ejectAfter === 0 || (appError && !o.ejectOn500) || state.liveness(b.slot) !== LIVE_UP) return;
    const failures = state.failed(b.slot);
    if (failures < o.ejectAfter) return;
    // The last one up stays (a struggling backend beats none), and at most --max-ejection-percent go.
    const slots = this.#backends.list.map(slotOf);
    if (!state.eject(b.slot, slots, monotonicMs() + o.ejectCooldownMs, o.maxEjectionPercent)) return;
    b.stats.ejections++;
    this.#log.warn({ backend: b.name, reason, failures, cooldownMs: o.ejectCooldownMs }, 'backend ejected');
  }

  success(b: Backend): void {
    this.#state.succeeded(b.slot);
  }

  /** One check; `healthy` is the verdict so far (a backend starts healthy), passes and fails the runs of each. */
  async #check(b: Backend, healthy: boolean, passes: number, fails: number): Promise<void> {
    const o = this.#opts;
    let ok = false;
    try {
      const dispatcher = await this.#dispatcher();
      const res = await dispatcher.request({
        origin: b.url.origin,
        path: o.healthPath!,
        method: 'GET',
        headers: { 'user-agent': 'sticky-proxy-health' },
        headersTimeout: o.healthTimeoutMs,
        bodyTimeout: o.healthTimeoutMs,
        signal: AbortSignal.timeout(o.healthTimeoutMs),
      });
      await res.body.dump();
      ok = res.statusCode >= 200 && res.statusCode < 400;
    } catch {
      ok = false;
    }
    if (!ok) b.stats.healthFailures++;
    if (this.#stopped || b.removed) return;
    if (ok) { passes++; fails = 0; } else { fails++; passes = 0; }
    if (!healthy && passes >= o.healthRise) {
      healthy = true;
      this.#state.setHealthy(b.slot, true);
      this.#log.info({ backend: b.name }, 'backend healthy');
    } else if (healthy && fails >= o.healthFall) {
      healthy = false;
      this.#state.setHealthy(b.slot, false);
      this.#log.warn({ backend: b.name, path: o.healthPath }, 'backend failed its health checks');
    }
    this.#schedule(() => this.#check(b, healthy, passes, fails), o.healthIntervalMs);
  }

  /** undici is loaded only when checks are on: the request path does not need it. */
  #dispatcher(): Promise<Dispatcher> {
    return this.#agent ??= import('undici').then(({ Agent }) => new Agent({ connect: this.#opts.ca === null ? undefined : { ca: this.#opts.ca } }));
  }

  #schedule(fn: () => void, ms: number): void {
    if (this.#stopped) return;
    const t = setTimeout(() => { this.#timers.delete(t); fn(); }, ms);
    t.unref();
    this.#timers.add(t);
  }
}

function slotOf(b: Backend): number {
  return b.slot;
}
