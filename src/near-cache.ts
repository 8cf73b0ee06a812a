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
// BUCKET_BYTES, each starting on a cache line, so a lookup reads one bucket's
// header line and then only the way whose tag matches, all within one or two
// pages. A bucket's header holds, for each of its WAYS ways, 32-bit words:
//   tag: a second hash of the key, odd (0 marks a free way)
//   key length (Latin-1 bytes, at most KEY_BYTES; longer keys are not kept)
//   backend: its slot in the process's backend registry
//   seal: the key's hash folded with the three words above, written last, so
//     a way torn by a thread that died mid-write, or read while it is being
//     written, reads as free
// then each way: three doubles (fresh until, remembered until, and when an
// adoption of the key may next be written; Date.now() milliseconds) and the
// key's bytes.
//
// Writers lock the bucket (src/shared-lock.ts); readers do not. A read checks
// the way's seal against what it read, so one that races a write sees the
// old binding, the new one, or none (a miss, which asks memcached): never a
// mix. The key's own hash, needed to find the bucket, is the seal's start, so
// the check costs three steps once the key bytes compared equal.
import { fmix32, fnv1a, fnvStep } from './hash.ts';
import { lock, unlock } from './shared-lock.ts';

const WAYS = 4;
const KEY_BYTES = 128;
const LINE = 64;
// Header words, each a run of WAYS (one per way).
const TAG = 0;
const KEY_LEN = WAYS;
const BACKEND = 2 * WAYS;
const SEAL = 3 * WAYS;
// A way: its three times (doubles), then its key.
const FRESH = 0;
const UNTIL = 1;
const ADOPT = 2;
const KEY = 24;
const WAY_BYTES = 160; // KEY + KEY_BYTES, rounded up to keep the doubles 8-byte aligned
const BUCKET_BYTES = LINE + WAYS * WAY_BYTES; // 11 cache lines

/** The way tag: independent of the bucket index (both come from one FNV-1a hash), odd, signed as Int32Array holds it. */
function tagOf(h: number): number {
  return fmix32(h ^ 0x9e3779b9) | 1;
}

/** The seal of a way holding a key of hash `h` (fnv1a) and length `length`, with `tag` and backend `ref`. */
function sealOf(h: number, tag: number, length: number, ref: number): number {
  return fmix32(fnvStep(fnvStep(fnvStep(h, tag), length), ref)) | 0;
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
  readonly #bytes: Uint8Array;
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
    this.#bytes = new Uint8Array(memory, 0, end);
    this.#times = new Float64Array(memory, 0, end / 8);
    this.#mask = b - 1;
    this.#freshMs = freshMs;
    this.#rememberMs = rememberMs;
    this.#backends = backends;
  }

  /** True when `key` is remembered at `now`; the answer is in backend, freshUntil, adoptAfter. */
  get(key: string, now: number): boolean {
    if (key.length > KEY_BYTES) return false;
    const h = fnv1a(key);
    const at = this.#base + (fmix32(h) & this.#mask) * BUCKET_BYTES;
    const w = this.#find(at, tagOf(h), key, h);
    if (w < 0) return false;
    const hw = at / 4 + w;
    const t = (at + LINE + w * WAY_BYTES) / 8;
    const words = this.#words;
    const backend = words[hw + BACKEND];
    const freshUntil = this.#times[t + FRESH];
    const adoptAfter = this.#times[t + ADOPT];
    // Checked again: a writer may have reused the way since #find checked it.
    if (!(this.#times[t + UNTIL] > now) || words[hw + SEAL] !== sealOf(h, words[hw + TAG], key.length, backend)) return false;
    this.freshUntil = freshUntil;
    this.adoptAfter = adoptAfter;
    this.backend = this.#backends.nameOf(backend);
    return this.backend !== '';
  }

  /** Remembers that `key` is bound to `backend`, fresh from `now`; `adoptAfter` 0 keeps the entry's own. */
  set(key: string, backend: string, now: number, adoptAfter = 0): void {
    const ref = this.#backends.slotOf(backend);
    if (key.length > KEY_BYTES || ref < 0) return;
    const h = fnv1a(key);
    const tag = tagOf(h);
    const bucket = fmix32(h) & this.#mask;
    const at = this.#base + bucket * BUCKET_BYTES;
    const words = this.#words;
    const times = this.#times;
    const token = lock(this.#locks, bucket);
    let w = this.#find(at, tag, key, h);
    const fresh = w < 0;
    if (fresh) w = this.#victim(at, now);
    const hw = at / 4 + w;
    const way = at + LINE + w * WAY_BYTES;
    const t = way / 8;
    // A reader racing this write fails the seal check until the seal, last, is written.
    Atomics.store(words, hw + SEAL, 0);
    words[hw + TAG] = tag;
    words[hw + KEY_LEN] = key.length;
    words[hw + BACKEND] = ref;
    const k = way + KEY;
    for (let i = 0; i < key.length; i++) this.#bytes[k + i] = key.charCodeAt(i);
    times[t + FRESH] = now + this.#freshMs;
    times[t + UNTIL] = now + this.#rememberMs;
    if (adoptAfter > 0 || fresh) times[t + ADOPT] = adoptAfter;
    // Atomics orders the way's writes before the seal for readers on any CPU.
    Atomics.store(words, hw + SEAL, sealOf(h, tag, key.length, ref));
    unlock(this.#locks, bucket, token);
  }

  delete(key: string): void {
    if (key.length > KEY_BYTES) return;
    const h = fnv1a(key);
    const bucket = fmix32(h) & this.#mask;
    const at = this.#base + bucket * BUCKET_BYTES;
    const token = lock(this.#locks, bucket);
    const w = this.#find(at, tagOf(h), key, h);
    if (w >= 0) this.#words[at / 4 + w + TAG] = 0;
    unlock(this.#locks, bucket, token);
  }

  /** The intact way of the bucket at byte `at` holding `key` (of hash `h`), or -1. */
  #find(at: number, tag: number, key: string, h: number): number {
    const words = this.#words;
    const bytes = this.#bytes;
    const hw = at / 4;
    for (let w = 0; w < WAYS; w++) {
      if (words[hw + TAG + w] !== tag || words[hw + KEY_LEN + w] !== key.length) continue;
      const k = at + LINE + w * WAY_BYTES + KEY;
      let i = 0;
      while (i < key.length && bytes[k + i] === key.charCodeAt(i)) i++;
      if (i === key.length && words[hw + SEAL + w] === sealOf(h, tag, key.length, words[hw + BACKEND + w])) return w;
    }
    return -1;
  }

  /**
   * A free or forgotten way, else the one remembered for the shortest time. A
   * way torn by a thread that died mid-write reads as free to lookups and
   * goes by its time like any other: checking every way's seal here would
   * hash four keys per eviction, and evictions are every learn's once the
   * cache is full.
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
