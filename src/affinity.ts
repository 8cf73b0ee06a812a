// The event loop's side of affinity. A lookup is answered by the near cache
// when it holds a fresh binding; otherwise the lookups and learns of one
// event-loop turn are gathered into one batch, up to --batch-max, and handed
// to the resolver: a worker thread, or the loop itself with --workers 0. One
// message each way per batch.
import { LOOKUP_CODES, emptyBatch, type AffinityAnswer, type AffinityBatch, type BindReason, type LookupOutcome } from './batch.ts';
import type { NearCache } from './near-cache.ts';
import type { LoopStats, ResolverStats } from './stats.ts';
import { monotonicMs } from './clock.ts';
import { readSessionSetCookies, type LearnSink, type SessionCookie, type TtlRules } from './cookies.ts';

/**
 * How long a worker may stay on a batch past its deadline before piscina
 * replaces it. The batch's requests go on at the deadline (by the fallback
 * route); a worker that is only slow (a CPU-starved or throttled thread)
 * still finishes its writes and keeps its connections and outage queue.
 */
const STUCK_AFTER_MS = 5000;

/** Told where a request's session is bound (backend '' unless 'hit'). */
export interface LookupWaiter {
  onAffinity(outcome: LookupOutcome, backend: string, key: string): void;
}

/** Told when a response's session cookies are stored (or the attempt is over). */
export interface LearnWaiter {
  /** `replaced`: the response set a new id for the cookie the request was bound by. */
  onLearned(replaced: boolean): void;
}

/** Runs a batch somewhere: in a worker pool or inline. */
export interface BatchRunner {
  readonly ready: Promise<void>;
  /** `deadline.signal` aborts when the batch is past its deadline: a worker still on it is replaced. */
  run(batch: AffinityBatch, deadline: BatchDeadline): Promise<AffinityAnswer>;
  close(): Promise<void>;
}

/** A batch's deadline, as a signal made only for a runner that asks (the inline runner never does). */
export interface BatchDeadline {
  readonly signal: AbortSignal;
}

export interface AffinityOptions {
  batchMax: number;
  /** Past this a batch's requests are routed without the store; covers a stuck worker. */
  deadlineMs: number;
  /** Sliding lifetime of bindings, seconds: adoptions are written at most once per eighth of it. */
  defaultTtl: number;
  /** The cap on a binding's lifetime, seconds (with defaultTtl, how a Set-Cookie is read). */
  maxTtl: number;
  /** In front of a remote store (memcached); null for the embedded store, which is local already. */
  near: NearCache | null;
  /** The embedded store, read here without a batch: its memory is this process's. */
  local: LocalStore | null;
  stats: LoopStats;
  /** Where lookups answered here are counted. */
  resolverStats: ResolverStats;
}

/** A store this thread can read synchronously, and write (the embedded store). */
export interface LocalStore {
  lookup(key: string): string | null;
  set(key: string, backend: string, ttl: number, sliding: boolean): Promise<void>;
  delete(key: string): Promise<void>;
}

export class Affinity {
  readonly near: NearCache | null;
  readonly #local: LocalStore | null;
  readonly #resolverStats: ResolverStats;
  readonly #batchMax: number;
  readonly #deadlineMs: number;
  readonly #adoptEveryMs: number;
  readonly #rules: TtlRules;
  readonly #runner: BatchRunner;
  readonly #stats: LoopStats;
  #batch: AffinityBatch = emptyBatch();
  #lookups: LookupWaiter[] = [];
  #learns: LearnWaiter[] = [];
  #scheduled = false;
  readonly #inflight = new Set<Flight>();
  readonly #flushNow = (): void => this.#flush();

  constructor(opts: AffinityOptions, runner: BatchRunner) {
    this.near = opts.near;
    this.#local = opts.local;
    this.#resolverStats = opts.resolverStats;
    this.#batchMax = opts.batchMax;
    this.#deadlineMs = opts.deadlineMs;
    this.#adoptEveryMs = (opts.defaultTtl * 1000) / 8;
    this.#rules = { defaultTtl: opts.defaultTtl, maxTtl: opts.maxTtl };
    this.#runner = runner;
    this.#stats = opts.stats;
  }

  /** Looks up `keys` ('\n'-joined session keys); the answer may come at once, from the near cache or the embedded store. */
  lookup(keys: string, waiter: LookupWaiter): void {
    if (this.#local !== null) {
      this.#lookupLocal(this.#local, keys, waiter);
      return;
    }
    const near = this.near;
    if (near !== null) {
      const now = monotonicMs();
      let k = 0;
      for (;;) {
        const nl = keys.indexOf('\n', k);
        const key = nl < 0 ? (k === 0 ? keys : keys.slice(k)) : keys.slice(k, nl);
        if (near.get(key, now) && near.freshUntil > now) {
          this.#stats.nearHits++;
          waiter.onAffinity('hit', near.backend, key);
          return;
        }
        if (nl < 0) break;
        k = nl + 1;
      }
    }
    this.#batch.lookups.push(keys);
    this.#lookups.push(waiter);
    this.#schedule();
  }

  /** The first configured cookie whose id is bound wins. */
  #lookupLocal(local: LocalStore, keys: string, waiter: LookupWaiter): void {
    const s = this.#resolverStats;
    let k = 0;
    for (;;) {
      const nl = keys.indexOf('\n', k);
      const key = nl < 0 ? (k === 0 ? keys : keys.slice(k)) : keys.slice(k, nl);
      const backend = local.lookup(key);
      if (backend !== null) {
        s.hits++;
        waiter.onAffinity('hit', backend, key);
        return;
      }
      if (nl < 0) break;
      k = nl + 1;
    }
    s.misses++;
    waiter.onAffinity('miss', '', '');
  }

  /** Where this instance last knew `key` to be bound, fresh or not ('' if nowhere). */
  remembered(key: string): string {
    const near = this.near;
    return near !== null && near.get(key, monotonicMs()) ? near.backend : '';
  }

  /**
   * Binds a session to a backend with the sliding default TTL: a session whose
   * backend could not serve it moves to where it is sent, an open WebSocket
   * keeps its session's binding fresh, and a backend that accepted an unbound
   * id adopts it (at most once per eighth of the TTL per key).
   */
  bind(key: string, backend: string, reason: BindReason): void {
    const near = this.near;
    if (near !== null) {
      const now = monotonicMs();
      const adopt = reason === 'adopt';
      if (adopt && near.get(key, now) && near.backend === backend && near.adoptAfter > now) return;
      near.set(key, backend, now, adopt ? now + this.#adoptEveryMs : 0);
    }
    this.#batch.bindKeys.push(key);
    this.#batch.bindBackends.push(backend);
    this.#batch.bindAdopt.push(reason === 'adopt' ? 1 : 0);
    this.#schedule();
  }

  /** Stores what a response's session Set-Cookie values teach; `sent` and `bound` are the request's keys. */
  learn(backend: string, setCookies: string[], sent: string, bound: string, waiter: LearnWaiter): void {
    this.#batch.learnBackends.push(backend);
    this.#batch.learnSetCookies.push(setCookies);
    this.#batch.learnSent.push(sent);
    this.#batch.learnBound.push(bound);
    this.#learns.push(waiter);
    this.#schedule();
  }

  /** Sends what is pending, waits for every batch in flight, then stops the runner. */
  async close(): Promise<void> {
    this.#flush();
    while (this.#inflight.size > 0) await Promise.race(Array.from(this.#inflight, settledOf));
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
    this.#stats.batchSize.observe(size);
    const batch = this.#batch;
    const flight = new Flight(this.#lookups, this.#learns, batch, this.#rules, this.near, this.#local, this.#inflight);
    this.#batch = emptyBatch();
    this.#lookups = [];
    this.#learns = [];
    flight.timer = setTimeout(flight.expire, this.#deadlineMs);
    this.#inflight.add(flight);
    flight.settled = this.#runner.run(batch, flight).then(flight.answer, flight.failed);
  }
}

function settledOf(f: Flight): Promise<void> {
  return f.settled;
}

/**
 * One batch on its way: settles its waiters once, by answer, failure or
 * deadline. Its handlers are bound once per batch; the abort signal is made
 * only if the runner asks for it.
 */
class Flight implements BatchDeadline {
  readonly lookups: LookupWaiter[];
  readonly learns: LearnWaiter[];
  readonly batch: AffinityBatch;
  readonly rules: TtlRules;
  readonly near: NearCache | null;
  readonly local: LocalStore | null;
  /** The affinity's batches in flight: this one leaves when its runner settles. */
  readonly inflight: Set<Flight>;
  settled!: Promise<void>;
  timer: NodeJS.Timeout | undefined;
  #abort: AbortController | null = null;
  done = false;

  constructor(lookups: LookupWaiter[], learns: LearnWaiter[], batch: AffinityBatch, rules: TtlRules, near: NearCache | null, local: LocalStore | null, inflight: Set<Flight>) {
    this.lookups = lookups;
    this.learns = learns;
    this.batch = batch;
    this.rules = rules;
    this.near = near;
    this.local = local;
    this.inflight = inflight;
  }

  get signal(): AbortSignal {
    return (this.#abort ??= new AbortController()).signal;
  }

  readonly answer = (a: AffinityAnswer): void => {
    this.inflight.delete(this);
    if (this.#finish()) return;
    const near = this.near;
    if (near !== null) {
      const now = monotonicMs();
      for (let i = 0; i < a.outcomes.length; i++) if (a.outcomes[i] === 1) near.set(a.keys[i], a.backends[i], now);
      // Learns and unbinds reach the near cache before their answers reach the client.
      for (let j = 0; j < a.learnt.length; j++) {
        const learnt = a.learnt[j];
        // Most responses set one session cookie: no array for them.
        if (learnt.indexOf('\n') < 0) {
          if (learnt !== '') near.set(learnt, this.batch.learnBackends[j], now);
        } else {
          for (const key of learnt.split('\n')) near.set(key, this.batch.learnBackends[j], now);
        }
        if (a.cleared[j] !== '') for (const key of a.cleared[j].split('\n')) near.delete(key);
      }
    }
    for (let i = 0; i < this.lookups.length; i++) this.lookups[i].onAffinity(LOOKUP_CODES[a.outcomes[i]], a.backends[i], a.keys[i]);
    for (let j = 0; j < this.learns.length; j++) this.learns[j].onLearned(a.replaced[j] === 1);
  };

  /** The runner failed the batch. */
  readonly failed = (): void => {
    this.inflight.delete(this);
    this.#fail();
  };

  readonly expire = (): void => {
    this.timer = undefined;
    if (!this.#fail() || this.#abort === null) return;
    // The worker still on it may be slow, not stuck: its answer is no longer
    // awaited, but its writes are worth finishing.
    this.timer = setTimeout(this.stuck, STUCK_AFTER_MS);
  };

  /** Aborting a task still running makes piscina terminate and replace its worker. */
  readonly stuck = (): void => {
    this.timer = undefined;
    this.#abort!.abort();
  };

  /** Settles the waiters without an answer; false when already settled. */
  #fail(): boolean {
    if (this.#finish()) return false;
    if (this.learns.length > 0 && (this.near !== null || this.local !== null)) this.#learnHere();
    for (const w of this.lookups) w.onAffinity('failed', '', '');
    for (const w of this.learns) w.onLearned(false);
    return true;
  }

  /**
   * Without the answer, what the learns' Set-Cookie values say is written
   * here, before their responses go on: into the near cache, so a session
   * issued meanwhile sticks to this instance even if memcached never got it;
   * or into the embedded store, whose memory this loop shares with the
   * worker that was to write it (the worker, if only slow, writes the same).
   */
  #learnHere(): void {
    const b = this.batch;
    const sink = new LearnHere(this.near, this.local, monotonicMs());
    for (let j = 0; j < b.learnBackends.length; j++) {
      sink.backend = b.learnBackends[j];
      readSessionSetCookies(b.learnSetCookies[j], b.learnSent[j], this.rules, Date.now(), sink);
    }
  }

  /** True when already settled. Stops the deadline or the stuck timer. */
  #finish(): boolean {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.done) return true;
    this.done = true;
    return false;
  }
}

/** Writes what a learn's Set-Cookie values say where this loop can (a batch that got no answer). */
class LearnHere implements LearnSink {
  readonly near: NearCache | null;
  readonly local: LocalStore | null;
  readonly now: number;
  backend = '';

  constructor(near: NearCache | null, local: LocalStore | null, now: number) {
    this.near = near;
    this.local = local;
    this.now = now;
  }

  bindId(key: string, sc: SessionCookie): void {
    this.near?.set(key, this.backend, this.now);
    // Refused only for a name the store cannot hold, which no configured backend has.
    this.local?.set(key, this.backend, sc.ttl, sc.sliding).catch(ignore);
  }

  unbindId(key: string): void {
    this.near?.delete(key);
    this.local?.delete(key).catch(ignore);
  }
}

function ignore(): void {}
