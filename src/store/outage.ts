// What the process's memcached stores did with the writes memcached could not
// take, counted in one small SharedArrayBuffer that every store (one per event
// loop or affinity worker) adds to and the store watch (watch.ts, main thread)
// reads: it logs how many learns an outage queued and how many were written
// once memcached was back. Touched only on the outage path, never per request.

const QUEUED = 0;  // learns queued (a replay that fails again is not counted twice)
const WRITTEN = 1; // queued learns written later
const DROPPED = 2; // queued writes dropped: queue full, expired in it, or refused on replay
const PENDING = 3; // writes (learns and unbinds) in every store's queue now
const RETRIED = 4; // queued learns sent again and failed again (memcached still not taking them)
const WORDS = 5;

/** The memory to share between the watch and every store. */
export function outageCountersMemory(): SharedArrayBuffer {
  return new SharedArrayBuffer(WORDS * 4);
}

/** Counts since some earlier snapshot; the words wrap, the differences do not. */
export interface OutageCounts {
  queued: number;
  written: number;
  dropped: number;
  retried: number;
}

export class OutageCounters {
  readonly #w: Int32Array;

  constructor(memory: SharedArrayBuffer) {
    this.#w = new Int32Array(memory);
  }

  /** A write joined a store's queue; `learn` for a set, not an unbind; `again` for a replay's retry. */
  queued(learn: boolean, again: boolean): void {
    if (learn) Atomics.add(this.#w, again ? RETRIED : QUEUED, 1);
    Atomics.add(this.#w, PENDING, 1);
  }

  /** `n` writes are no longer pending: a replay answered or dropped, or a queue dropped at close. */
  dequeued(n: number): void {
    Atomics.sub(this.#w, PENDING, n);
  }

  written(): void {
    Atomics.add(this.#w, WRITTEN, 1);
  }

  dropped(n: number): void {
    Atomics.add(this.#w, DROPPED, n);
  }

  get pending(): number {
    return Atomics.load(this.#w, PENDING);
  }

  snapshot(): OutageCounts {
    return { queued: Atomics.load(this.#w, QUEUED), written: Atomics.load(this.#w, WRITTEN), dropped: Atomics.load(this.#w, DROPPED), retried: Atomics.load(this.#w, RETRIED) };
  }

  /** What happened since `base` (a snapshot). */
  since(base: OutageCounts): OutageCounts {
    const now = this.snapshot();
    return {
      queued: (now.queued - base.queued) | 0, written: (now.written - base.written) | 0,
      dropped: (now.dropped - base.dropped) | 0, retried: (now.retried - base.retried) | 0,
    };
  }
}
