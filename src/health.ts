// Backend health: active checks (GET --health-path, with rise and fall
// thresholds, off unless configured) and passive ejection after consecutive
// connect failures or 5xx answers, with a cool-down.
import type { Backend, BackendSet } from './backends.ts';
import type { Config } from './config.ts';
import type { Logger } from './log.ts';

export type HealthOptions = Pick<Config, 'healthPath' | 'healthIntervalMs' | 'healthTimeoutMs' | 'healthRise' | 'healthFall' | 'ejectAfter' | 'ejectCooldownMs'>;

export class Health {
  readonly #backends: BackendSet;
  readonly #opts: HealthOptions;
  readonly #log: Logger;
  readonly #timers = new Set<NodeJS.Timeout>();
  #stopped = false;

  constructor(backends: BackendSet, opts: HealthOptions, log: Logger) {
    this.#backends = backends;
    this.#opts = opts;
    this.#log = log;
  }

  start(): void {
    for (const b of this.#backends.list) this.watch(b);
  }

  /** Starts active checks of a backend (one added by a reload, too); they stop once it is removed. */
  watch(b: Backend): void {
    if (this.#opts.healthPath !== null) this.#schedule(() => this.#check(b, 0, 0), 0);
  }

  stop(): void {
    this.#stopped = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
  }

  /** A connection to the backend failed, or it answered 5xx. */
  failure(b: Backend, reason: string): void {
    if (this.#opts.ejectAfter === 0 || b.ejected) return;
    if (++b.failures < this.#opts.ejectAfter) return;
    b.ejected = true;
    b.refresh();
    this.#log.warn({ backend: b.name, reason, failures: b.failures, cooldownMs: this.#opts.ejectCooldownMs }, 'backend ejected');
    this.#schedule(() => {
      b.ejected = false;
      b.failures = 0;
      b.refresh();
      this.#log.info({ backend: b.name }, 'backend back from ejection');
    }, this.#opts.ejectCooldownMs);
  }

  success(b: Backend): void {
    b.failures = 0;
  }

  async #check(b: Backend, passes: number, fails: number): Promise<void> {
    const o = this.#opts;
    let ok = false;
    try {
      const res = await b.pool.request({
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
    if (this.#stopped || b.removed) return;
    if (ok) { passes++; fails = 0; } else { fails++; passes = 0; }
    if (!b.healthy && passes >= o.healthRise) {
      b.healthy = true;
      b.refresh();
      this.#log.info({ backend: b.name }, 'backend healthy');
    } else if (b.healthy && fails >= o.healthFall) {
      b.healthy = false;
      b.refresh();
      this.#log.warn({ backend: b.name, path: o.healthPath }, 'backend failed its health checks');
    }
    this.#schedule(() => this.#check(b, passes, fails), o.healthIntervalMs);
  }

  #schedule(fn: () => void, ms: number): void {
    if (this.#stopped) return;
    const t = setTimeout(() => { this.#timers.delete(t); fn(); }, ms);
    t.unref();
    this.#timers.add(t);
  }
}
