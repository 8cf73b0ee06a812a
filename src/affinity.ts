// Main-thread side of affinity. Lookups (request Cookie headers) and learns
// (response Set-Cookie headers) of one event-loop turn are gathered into one
// batch, up to --batch-max, and handed to the resolver: a worker thread, or the
// main thread itself with --workers 0. One message each way per batch.
import { STORE_FAILED, emptyBatch, type AffinityAnswer, type AffinityBatch } from './batch.ts';

/** Told where a request's session is bound (backend '' when it is not). */
export interface LookupWaiter {
  onAffinity(outcome: number, backend: string, key: string): void;
}

/** Told when a response's session cookies are stored (or the attempt is over). */
export interface LearnWaiter {
  /** `replaced`: the response set a new id for the cookie the request was bound by. */
  onLearned(replaced: boolean): void;
}

/** Runs a batch somewhere: in a worker pool or inline. */
export interface BatchRunner {
  readonly ready: Promise<void>;
  /** An aborted signal means the batch is past its deadline: a worker still on it is replaced. */
  run(batch: AffinityBatch, signal: AbortSignal): Promise<AffinityAnswer>;
  close(): Promise<void>;
}

export interface AffinityOptions {
  sessionCookies: readonly string[];
  batchMax: number;
  /** Past this a batch's requests are routed without affinity; covers a stuck worker. */
  deadlineMs: number;
  /** Told each batch's size (a metric). */
  onBatch: (size: number) => void;
}

export class Affinity {
  readonly #names: readonly string[];
  readonly #batchMax: number;
  readonly #deadlineMs: number;
  readonly #runner: BatchRunner;
  readonly #onBatch: (size: number) => void;
  #batch: AffinityBatch = emptyBatch();
  #lookups: LookupWaiter[] = [];
  #learns: LearnWaiter[] = [];
  #scheduled = false;
  readonly #inflight = new Set<Promise<void>>();
  readonly #flushNow = () => this.#flush();

  constructor(opts: AffinityOptions, runner: BatchRunner) {
    this.#names = opts.sessionCookies;
    this.#batchMax = opts.batchMax;
    this.#deadlineMs = opts.deadlineMs;
    this.#runner = runner;
    this.#onBatch = opts.onBatch;
  }

  /**
   * A substring test, so a request without a session cookie costs no parsing
   * and never waits on a worker. False positives are settled by the resolver.
   */
  mayCarrySession(cookie: string | undefined): cookie is string {
    if (cookie === undefined) return false;
    for (let i = 0; i < this.#names.length; i++) if (cookie.includes(this.#names[i])) return true;
    return false;
  }

  /** True when one of these Set-Cookie values may name a session cookie. */
  setsSession(setCookie: string): boolean {
    for (let i = 0; i < this.#names.length; i++) if (setCookie.includes(this.#names[i])) return true;
    return false;
  }

  lookup(cookie: string, waiter: LookupWaiter): void {
    this.#batch.cookies.push(cookie);
    this.#lookups.push(waiter);
    this.#schedule();
  }

  /**
   * Binds a session to a backend with the sliding default TTL: a session whose
   * backend could not serve it moves to the one that did, and an open
   * WebSocket keeps its session's binding fresh.
   */
  bind(key: string, backend: string): void {
    this.#batch.bindKeys.push(key);
    this.#batch.bindBackends.push(backend);
    this.#schedule();
  }

  learn(backend: string, setCookies: string[], requestCookie: string, boundKey: string, waiter: LearnWaiter): void {
    this.#batch.learnBackends.push(backend);
    this.#batch.learnSetCookies.push(setCookies);
    this.#batch.learnCookies.push(requestCookie);
    this.#batch.learnBound.push(boundKey);
    this.#learns.push(waiter);
    this.#schedule();
  }

  /** Sends what is pending, waits for every batch in flight, then stops the runner. */
  async close(): Promise<void> {
    this.#flush();
    while (this.#inflight.size > 0) await Promise.race(this.#inflight);
    await this.#runner.close();
  }

  #size(): number {
    return this.#lookups.length + this.#learns.length + this.#batch.bindKeys.length;
  }

  #schedule(): void {
    if (this.#size() >= this.#batchMax) {
      this.#flush();
    } else if (!this.#scheduled) {
      this.#scheduled = true;
      // setImmediate runs after the poll phase: every request parsed in this
      // turn of the loop joins the batch.
      setImmediate(this.#flushNow);
    }
  }

  #flush(): void {
    this.#scheduled = false;
    const size = this.#size();
    if (size === 0) return;
    this.#onBatch(size);
    const flight = new Flight(this.#lookups, this.#learns);
    const batch = this.#batch;
    this.#batch = emptyBatch();
    this.#lookups = [];
    this.#learns = [];
    flight.timer = setTimeout(flight.expire, this.#deadlineMs);
    const settled = this.#runner.run(batch, flight.abort.signal).then(flight.answer, flight.fail);
    this.#inflight.add(settled);
    const forget = (): void => { this.#inflight.delete(settled); };
    settled.then(forget, forget);
  }
}

/** One batch on its way: settles its waiters once, by answer, failure or deadline. */
class Flight {
  readonly lookups: LookupWaiter[];
  readonly learns: LearnWaiter[];
  timer: NodeJS.Timeout | undefined;
  readonly abort = new AbortController();
  done = false;

  constructor(lookups: LookupWaiter[], learns: LearnWaiter[]) {
    this.lookups = lookups;
    this.learns = learns;
  }

  readonly answer = (a: AffinityAnswer): void => {
    if (this.#finish()) return;
    for (let i = 0; i < this.lookups.length; i++) this.lookups[i].onAffinity(a.outcomes[i], a.backends[i], a.keys[i]);
    for (let j = 0; j < this.learns.length; j++) this.learns[j].onLearned(a.replaced[j] === 1);
  };

  readonly fail = (): void => {
    if (this.#finish()) return;
    for (const w of this.lookups) w.onAffinity(STORE_FAILED, '', '');
    for (const w of this.learns) w.onLearned(false);
  };

  readonly expire = (): void => {
    this.timer = undefined;
    this.fail();
    this.abort.abort();
  };

  /** True when already settled. */
  #finish(): boolean {
    if (this.done) return true;
    this.done = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    return false;
  }
}
