// A bounded local memory of recent bindings, in front of memcached, shared by
// every event loop of the process (a SharedArrayBuffer), so what one loop
// learns, moves or unbinds holds for all of them at once. An entry is fresh
// for a short lifetime (--near-cache-ttl): within it a lookup is answered
// here, so a hot session costs at most one memcached round trip per lifetime
// per instance. Past it, the entry is still remembered (for the default TTL)
// and routes its session while memcached cannot answer, as HTTP's
// stale-if-error does, or when memcached lost the binding.
//
// Layout: lock words (one per bucket, src/shared-lock.ts), then buckets of
// BUCKET_BYTES, each starting on a cache line. A way keeps the key's 64-bit
// fingerprint, not the key: two independent 32-bit hashes computed in one
// pass (the first also picks the bucket). The table is then 48 bytes an entry
// where it was 176 with the key's bytes (3 MiB against 11.5 MiB at the
// default 65,536 entries, all of it resident once sessions fill it), and a
// lookup reads two cache lines and compares no bytes. Two keys that share a
// fingerprint would share a binding: with 63 bits compared (the tag's low bit
// is spent on marking a way used), the odds that a lookup takes another key's
// way are about 2^-61 (four ways a bucket). memcached, which keeps the whole key,
// stays the truth; a wrong answer from here would route one session's
// requests, for at most the fresh lifetime, where another's go.
//
// A bucket's first line holds, for each of its WAYS ways, 32-bit words:
//   tag: from the first hash, odd (0 marks a free way)
//   fingerprint: the second hash
//   backend: its slot in the process's backend registry
//   seal: the first hash folded with the three words above, written last, so
//     a way torn by a thread that died mid-write, or read while it is being
//     written, reads as free
// then, per way, three doubles (fresh until, remembered until, and when an
// adoption of the key may next be written; monotonicMs() milliseconds, clock.ts).
//
// Writers lock the bucket (src/shared-lock.ts); readers do not. A read checks
// the way's seal against what it read, so one that races a write sees the
// old binding, the new one, or none (a miss, which asks memcached): never a
// mix.
import { fmix32, fnvStep, FNV_OFFSET, LANE2_OFFSET, LANE2_PRIME } from './hash.ts';
import { lock, unlock } from './shared-lock.ts';

const WAYS = 4;
const LINE = 64;
// Header words, each a run of WAYS (one per way).
const TAG = 0;
const PRINT = WAYS;
const BACKEND = 2 * WAYS;
const SEAL = 3 * WAYS;
// A way's three times (doubles), after the header line.
const FRESH = 0;
const UNTIL = 1;
const ADOPT = 2;
const WAY_BYTES = 24;
const BUCKET_BYTES = 3 * LINE; // the header line, 96 bytes of times, padding to a line

// The second hash: FNV-1a's step with another odd multiplier and offset
// (hash.ts's second lane), in the same loop as the first, finished with
// fmix32. Independent enough of the first for keys that are random ids;
// neither is a secret, and a forged collision needs the victim's session id,
// which is worth more than a misroute. The last key hashed is left in h1 and
// h2 (no object per lookup).
let h1 = 0;
let h2 = 0;

function hashKey(key: string): void {
  let a = FNV_OFFSET | 0;
  let b = LANE2_OFFSET;
  for (let i = 0; i < key.length; i++) {
    const c = key.charCodeAt(i);
    a = fnvStep(a, c);
    b = Math.imul(b ^ c, LANE2_PRIME);
  }
  h1 = a >>> 0;
  h2 = fmix32(b) | 0;
}

/** The way tag: independent of the bucket index (both come from the first hash), odd, signed as Int32Array holds it. */
function tagOf(h: number): number {
  return fmix32(h ^ 0x9e3779b9) | 1;
}

/** The seal of a way holding a key of first hash `h`, with `tag`, fingerprint `print` and backend `ref`. */
function sealOf(h: number, tag: number, print: number, ref: number): number {
  return fmix32(fnvStep(fnvStep(fnvStep(h, tag), print), ref)) | 0;
}

function buckets(entries: number): number {
  let n = 1;
  while (n * WAYS < entries) n <<= 1;
  return n;
}

/** Where the buckets start: after the lock words, on a cache line. */
function bucketsAt(b: number): number {
  return Math.ceil((b * 4) / LINE) * LINE;
}

/** Bytes of shared memory for a near cache of `entries` bindings. */
export function nearCacheBytes(entries: number): number {
  const b = buckets(entries);
  return bucketsAt(b) + b * BUCKET_BYTES;
}

/** Backend names by registry slot: how the cache stores a backend in one word. */
export interface BackendSlots {
  slotOf(name: string): number;
  nameOf(slot: number): string;
}

export class NearCache {
  readonly #locks: Int32Array;
  readonly #words: Int32Array;
  readonly #times: Float64Array;
  readonly #base: number;
  readonly #mask: number;
  readonly #freshMs: number;
  readonly #rememberMs: number;
  readonly #backends: BackendSlots;
  // The last lookup's answer, valid until the next call (no object per lookup).
  backend = '';
  freshUntil = 0;
  adoptAfter = 0;

  /** `freshMs` 0: never answer without the store; entries still serve as memory. */
  constructor(memory: SharedArrayBuffer, entries: number, freshMs: number, rememberMs: number, backends: BackendSlots) {
    const b = buckets(entries);
    this.#locks = new Int32Array(memory, 0, b);
    this.#base = bucketsAt(b);
    const end = this.#base + b * BUCKET_BYTES;
    this.#words = new Int32Array(memory, 0, end / 4);
    this.#times = new Float64Array(memory, 0, end / 8);
    this.#mask = b - 1;
    this.#freshMs = freshMs;
    this.#rememberMs = rememberMs;
    this.#backends = backends;
  }

  /** True when `key` is remembered at `now`; the answer is in backend, freshUntil, adoptAfter. */
  get(key: string, now: number): boolean {
    hashKey(key);
    const h = h1;
    const at = this.#base + (fmix32(h) & this.#mask) * BUCKET_BYTES;
    const w = this.#find(at, tagOf(h), h2, h);
    if (w < 0) return false;
    const hw = at / 4 + w;
    const t = (at + LINE + w * WAY_BYTES) / 8;
    const words = this.#words;
    const backend = words[hw + BACKEND];
    const freshUntil = this.#times[t + FRESH];
    const adoptAfter = this.#times[t + ADOPT];
    // Checked again: a writer may have reused the way since #find checked it.
    if (!(this.#times[t + UNTIL] > now) || words[hw + SEAL] !== sealOf(h, words[hw + TAG], words[hw + PRINT], backend)) return false;
    this.freshUntil = freshUntil;
    this.adoptAfter = adoptAfter;
    this.backend = this.#backends.nameOf(backend);
    return this.backend !== '';
  }

  /** Remembers that `key` is bound to `backend`, fresh from `now`; `adoptAfter` 0 keeps the entry's own. */
  set(key: string, backend: string, now: number, adoptAfter = 0): void {
    const ref = this.#backends.slotOf(backend);
    if (ref < 0) return;
    hashKey(key);
    const h = h1;
    const print = h2;
    const tag = tagOf(h);
    const bucket = fmix32(h) & this.#mask;
    const at = this.#base + bucket * BUCKET_BYTES;
    const words = this.#words;
    const times = this.#times;
    const token = lock(this.#locks, bucket);
    let w = this.#find(at, tag, print, h);
    const fresh = w < 0;
    if (fresh) w = this.#victim(at, now);
    const hw = at / 4 + w;
    const t = (at + LINE + w * WAY_BYTES) / 8;
    // A reader racing this write fails the seal check until the seal, last, is written.
    Atomics.store(words, hw + SEAL, 0);
    words[hw + TAG] = tag;
    words[hw + PRINT] = print;
    words[hw + BACKEND] = ref;
    // A fresh lifetime of 0 writes no fresh time at all: `now + 0` would be
    // fresh to a lookup in another loop that read its clock a moment earlier.
    times[t + FRESH] = this.#freshMs === 0 ? 0 : now + this.#freshMs;
    times[t + UNTIL] = now + this.#rememberMs;
    if (adoptAfter > 0 || fresh) times[t + ADOPT] = adoptAfter;
    // Atomics orders the way's writes before the seal for readers on any CPU.
    Atomics.store(words, hw + SEAL, sealOf(h, tag, print, ref));
    unlock(this.#locks, bucket, token);
  }

  delete(key: string): void {
    hashKey(key);
    const h = h1;
    const bucket = fmix32(h) & this.#mask;
    const at = this.#base + bucket * BUCKET_BYTES;
    const token = lock(this.#locks, bucket);
    const w = this.#find(at, tagOf(h), h2, h);
    if (w >= 0) this.#words[at / 4 + w + TAG] = 0;
    unlock(this.#locks, bucket, token);
  }

  /**
   * Forgets every binding to the backend in slot `ref`, which is about to be
   * given to another backend. No loop writes `ref` any more (none has its
   * backend), so only the ways that hold it now need clearing; a lookup
   * racing the clearing fails its seal check, as it would racing a delete.
   */
  forgetBackend(ref: number): void {
    const words = this.#words;
    for (let bucket = 0; bucket <= this.#mask; bucket++) {
      const hw = (this.#base + bucket * BUCKET_BYTES) / 4;
      for (let w = 0; w < WAYS; w++) {
        if (words[hw + TAG + w] === 0 || words[hw + BACKEND + w] !== ref) continue;
        const token = lock(this.#locks, bucket);
        if (words[hw + BACKEND + w] === ref) words[hw + TAG + w] = 0;
        unlock(this.#locks, bucket, token);
      }
    }
  }

  /** The intact way of the bucket at byte `at` holding the key of first hash `h` and fingerprint `print`, or -1. */
  #find(at: number, tag: number, print: number, h: number): number {
    const words = this.#words;
    const hw = at / 4;
    for (let w = 0; w < WAYS; w++) {
      if (words[hw + TAG + w] !== tag || words[hw + PRINT + w] !== print) continue;
      if (words[hw + SEAL + w] === sealOf(h, tag, print, words[hw + BACKEND + w])) return w;
    }
    return -1;
  }

  /**
   * A free or forgotten way, else the one remembered for the shortest time. A
   * way torn by a thread that died mid-write reads as free to lookups and
   * goes by its time like any other: a seal starts from its key's hash, so
   * only a lookup of that key can check it.
   */
  #victim(at: number, now: number): number {
    const words = this.#words;
    const times = this.#times;
    const hw = at / 4;
    let best = 0;
    let bestUntil = Infinity;
    for (let w = 0; w < WAYS; w++) {
      const until = times[(at + LINE + w * WAY_BYTES) / 8 + UNTIL];
      if (words[hw + TAG + w] === 0 || !(until > now)) return w;
      if (until < bestUntil) {
        best = w;
        bestUntil = until;
      }
    }
    return best;
  }
}
