// A spin lock in a SharedArrayBuffer word that a dying thread cannot leave
// held for ever: the tables shared by every thread of the process (the
// embedded store, the near cache) take one per bucket.
import { performance } from 'node:perf_hooks';
import { threadId } from 'node:worker_threads';

// Lock words hold 0 or a token unique to one acquisition (a tag for this
// thread, and a counter), so a waiter seeing the same token for STEAL_MS knows
// one holder has kept the lock that long. Critical sections are a few dozen
// word accesses that allocate nothing, so that holder is dead (a terminated
// worker) or descheduled for far longer than a time slice; the waiter takes the
// lock over with a compare-exchange (one waiter wins). Should the holder be
// alive after all, its writes can at worst break a slot's seal: one binding
// lost, never a wrong one. The clock is read once per SPINS_PER_CLOCK spins,
// and only once the lock was found taken.
const STEAL_MS = 20;
const SPINS_PER_CLOCK = 1024;
const THREAD_TAG = (((threadId % 2047) + 1) << 20) | 0;
let acquisitions = 0;

export function lock(locks: Int32Array, bucket: number): number {
  acquisitions = (acquisitions + 1) & 0xfffff;
  const token = THREAD_TAG | acquisitions;
  const holder = Atomics.compareExchange(locks, bucket, 0, token);
  return holder === 0 ? token : lockContended(locks, bucket, token, holder);
}

function lockContended(locks: Int32Array, bucket: number, token: number, holder: number): number {
  let since = -1; // when `holder` was first seen holding it, once the clock was read
  for (let spins = 1; ; spins++) {
    const seen = Atomics.load(locks, bucket);
    if (seen === 0) {
      if (Atomics.compareExchange(locks, bucket, 0, token) === 0) return token;
    } else if (seen !== holder) {
      holder = seen;
      since = -1;
    } else if (spins % SPINS_PER_CLOCK === 0) {
      const t = performance.now();
      if (since < 0) since = t;
      else if (t - since >= STEAL_MS && Atomics.compareExchange(locks, bucket, holder, token) === holder) return token;
    }
  }
}

// Atomics also orders the plain accesses made under the lock. The exchange
// fails only when a waiter took the lock over; it is theirs to release then.
export function unlock(locks: Int32Array, bucket: number, token: number): void {
  Atomics.compareExchange(locks, bucket, token, 0);
}
