// What every event loop of the process shares, in SharedArrayBuffers, so a
// change made or seen by any loop holds for all of them at once: each
// backend's liveness, the operator's say and weight (one slot per backend,
// assigned by the main thread and never reused within a process); the open
// client connections of each loop (the process-wide --max-connections) and
// each loop's requests in flight per backend (one view in /backends). A loop
// writes only its own counters; the state words are written with Atomics.
// Reads that take one word are plain loads, as the counters' are: an aligned
// 32-bit word is read whole (x86-64, AArch64), and a read a moment old routes
// one request as a read a moment earlier would. They run for every request
// (the balancer's pick, a binding's backend is up), where Atomics.load, a
// call into a V8 builtin, costs ~10 ns against ~2.
import { lock, unlock } from './shared-lock.ts';
import { monotonicMs } from './clock.ts';

export const MAX_LOOPS = 64;
export const MAX_BACKENDS = 256;

/** A backend's liveness, one state: up, failing its health checks, or passively ejected. */
export const LIVE_UP = 0;
export const LIVE_DOWN = 1;
export const LIVE_EJECTED = 2;

/** What the operator has set. */
export const ADMIN_ENABLED = 0;
export const ADMIN_DRAINING = 1;
export const ADMIN_DISABLED = 2;

// Per backend slot, Int32 words: liveness, admin, weight, consecutive failures, in use.
const LIVENESS = 0;
const ADMIN = 1;
const WEIGHT = 2;
const FAILURES = 3;
const IN_USE = 4;
const WORDS = 8;

/** The buffers a loop needs to join the process's shared state; they cross to worker threads as they are. */
export interface SharedMemory {
  backends: SharedArrayBuffer;
  counters: SharedArrayBuffer;
}

export function sharedMemory(): SharedMemory {
  return {
    // Int32 words per slot, then one double per slot: the end of an ejection (monotonicMs()).
    backends: new SharedArrayBuffer(MAX_BACKENDS * WORDS * 4 + MAX_BACKENDS * 8),
    // Per loop: open client connections; then per loop and backend slot: requests
    // in flight; then round robin's ticket and the ejections' lock.
    counters: new SharedArrayBuffer(MAX_LOOPS * 4 + MAX_LOOPS * MAX_BACKENDS * 4 + 8),
  };
}

export class SharedState {
  readonly #words: Int32Array;
  readonly #ejectedUntil: Float64Array;
  readonly #open: Int32Array;
  readonly #active: Int32Array;
  readonly #ticket: Int32Array;
  readonly #ejections: Int32Array;
  /** This loop's index: its own counters are written without atomics. */
  readonly loop: number;
  /** How many loops the process runs: the per-loop counters summed. */
  readonly #loops: number;

  constructor(memory: SharedMemory, loop: number, loops = MAX_LOOPS) {
    this.#words = new Int32Array(memory.backends, 0, MAX_BACKENDS * WORDS);
    this.#ejectedUntil = new Float64Array(memory.backends, MAX_BACKENDS * WORDS * 4, MAX_BACKENDS);
    this.#open = new Int32Array(memory.counters, 0, MAX_LOOPS);
    this.#active = new Int32Array(memory.counters, MAX_LOOPS * 4, MAX_LOOPS * MAX_BACKENDS);
    this.#ticket = new Int32Array(memory.counters, MAX_LOOPS * 4 + MAX_LOOPS * MAX_BACKENDS * 4, 1);
    this.#ejections = new Int32Array(memory.counters, MAX_LOOPS * 4 + MAX_LOOPS * MAX_BACKENDS * 4 + 4, 1);
    this.loop = loop;
    this.#loops = loops;
  }

  // ---------------------------------------------------------------- backends

  /** The main thread gives a new backend its slot: up, enabled, with its weight. */
  claim(slot: number, weight: number): void {
    const w = this.#words;
    const b = slot * WORDS;
    Atomics.store(w, b + LIVENESS, LIVE_UP);
    Atomics.store(w, b + ADMIN, ADMIN_ENABLED);
    Atomics.store(w, b + WEIGHT, weight);
    Atomics.store(w, b + FAILURES, 0);
    Atomics.store(w, b + IN_USE, 1);
  }

  release(slot: number): void {
    Atomics.store(this.#words, slot * WORDS + IN_USE, 0);
  }

  inUse(slot: number): boolean {
    return Atomics.load(this.#words, slot * WORDS + IN_USE) === 1;
  }

  /** The slot's liveness; an ejection past its cool-down ends here, once (compare-exchange). */
  liveness(slot: number): number {
    const w = this.#words;
    const live = w[slot * WORDS + LIVENESS];
    if (live !== LIVE_EJECTED || monotonicMs() < this.#ejectedUntil[slot]) return live;
    if (Atomics.compareExchange(w, slot * WORDS + LIVENESS, LIVE_EJECTED, LIVE_UP) === LIVE_EJECTED) {
      Atomics.store(w, slot * WORDS + FAILURES, 0);
      this.onReturn?.(slot);
    }
    return Atomics.load(w, slot * WORDS + LIVENESS);
  }

  /** Told (in the loop that saw it) when an ejected backend's cool-down ended. */
  onReturn: ((slot: number) => void) | null = null;

  /** Health checks' verdict: down takes a backend out, whether ejected or not; up brings a down one back. */
  setHealthy(slot: number, healthy: boolean): void {
    const i = slot * WORDS + LIVENESS;
    if (healthy) Atomics.compareExchange(this.#words, i, LIVE_DOWN, LIVE_UP);
    else Atomics.store(this.#words, i, LIVE_DOWN);
  }

  /**
   * Ejects backend `slot` until `until` (monotonicMs()), unless that would take
   * the last of `slots` (the pool) that is up, or more than `maxPercent` of
   * them (one may always go); true when it did, false too when it was not up
   * (another loop got there first). One ejection is decided at a time in the
   * process (a lock): two loops counting at once could each see room for one
   * more and together take the pool's last backend, or past its percentage.
   */
  eject(slot: number, slots: readonly number[], until: number, maxPercent: number): boolean {
    const token = lock(this.#ejections, 0);
    let done = false;
    if (this.#mayEject(slot, slots, maxPercent)) {
      this.#ejectedUntil[slot] = until;
      done = Atomics.compareExchange(this.#words, slot * WORDS + LIVENESS, LIVE_UP, LIVE_EJECTED) === LIVE_UP;
    }
    unlock(this.#ejections, 0, token);
    return done;
  }

  /** Whether the pool can spare `slot`: it is not the last one up, and one more ejected stays within `maxPercent` (or is the first). */
  #mayEject(slot: number, slots: readonly number[], maxPercent: number): boolean {
    let up = 0;
    let ejected = 0;
    for (const s of slots) {
      if (this.up(s)) up++;
      else if (this.liveness(s) === LIVE_EJECTED) ejected++;
    }
    if (this.up(slot) && up <= 1) return false;
    return ejected === 0 || (ejected + 1) * 100 <= maxPercent * slots.length;
  }

  /** Serves traffic: live and not disabled by the operator. */
  up(slot: number): boolean {
    return this.liveness(slot) === LIVE_UP && this.admin(slot) !== ADMIN_DISABLED;
  }

  /** Counts a failure; returns the consecutive failures so far, across loops. */
  failed(slot: number): number {
    return Atomics.add(this.#words, slot * WORDS + FAILURES, 1) + 1;
  }

  succeeded(slot: number): void {
    if (this.#words[slot * WORDS + FAILURES] !== 0) Atomics.store(this.#words, slot * WORDS + FAILURES, 0);
  }

  admin(slot: number): number {
    return this.#words[slot * WORDS + ADMIN];
  }

  setAdmin(slot: number, state: number): void {
    Atomics.store(this.#words, slot * WORDS + ADMIN, state);
  }

  weight(slot: number): number {
    return this.#words[slot * WORDS + WEIGHT];
  }

  setWeight(slot: number, weight: number): void {
    Atomics.store(this.#words, slot * WORDS + WEIGHT, weight);
  }

  // ---------------------------------------------------------------- counters

  /**
   * Counts a client connection this loop accepted, unless the process has
   * `max` open already. This loop's count goes up before the sum is read,
   * both with atomics, so two loops taking the last place at once may both
   * refuse it, but never both get it: the cap is never passed.
   */
  admit(max: number): boolean {
    const open = this.#open;
    Atomics.add(open, this.loop, 1);
    let n = 0;
    for (let i = 0; i < this.#loops; i++) n += Atomics.load(open, i);
    if (n <= max) return true;
    Atomics.sub(open, this.loop, 1);
    return false;
  }

  /** One of this loop's client connections closed. */
  connectionClosed(): void {
    this.#open[this.loop]--;
  }

  /** Open client connections of the whole process. */
  get openConnections(): number {
    let n = 0;
    for (let i = 0; i < this.#loops; i++) n += this.#open[i];
    return n;
  }

  /** This loop's requests in flight to a backend changed by `delta`. */
  inFlight(slot: number, delta: number): void {
    this.#active[this.loop * MAX_BACKENDS + slot] += delta;
  }

  /** Requests in flight to a backend, across loops. */
  active(slot: number): number {
    let n = 0;
    for (let i = 0; i < this.#loops; i++) n += this.#active[i * MAX_BACKENDS + slot];
    return n;
  }

  /** The process's next round robin turn, whichever loop asks: one rotation, not one per loop. */
  ticket(): number {
    return Atomics.add(this.#ticket, 0, 1) >>> 0;
  }

  /** A loop that died leaves its counters behind: they are cleared before its successor starts. */
  clearLoop(loop: number): void {
    this.#open[loop] = 0;
    this.#active.fill(0, loop * MAX_BACKENDS, (loop + 1) * MAX_BACKENDS);
  }
}
