// Timeouts without a timer per request: everything that can time out (client
// and backend connections, a backend's wait queue) keeps its own deadline in
// a field, and one interval per event loop expires what is due. Setting a
// deadline is then a field write; the price is a resolution of `tickMs`.
import { performance } from 'node:perf_hooks';

export interface Timed {
  /** performance.now() at which expire() is due; Infinity when nothing is. */
  deadline: number;
  expire(now: number): void;
}

export class Deadlines {
  readonly #entries = new Set<Timed>();
  readonly #tickMs: number;
  #timer: NodeJS.Timeout | undefined;
  readonly #tick = (): void => {
    const now = performance.now();
    for (const t of this.#entries) if (t.deadline <= now) t.expire(now);
  };

  constructor(tickMs: number) {
    this.#tickMs = tickMs;
  }

  add(t: Timed): void {
    this.#entries.add(t);
    if (this.#timer === undefined) {
      this.#timer = setInterval(this.#tick, this.#tickMs);
      this.#timer.unref();
    }
  }

  delete(t: Timed): void {
    this.#entries.delete(t);
    if (this.#entries.size === 0 && this.#timer !== undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#entries.clear();
  }
}
