// A bounded local memory of recent bindings, in front of memcached, shared by
// every event loop of the process (a SharedArrayBuffer), so what one loop
// learns, moves or unbinds holds for all of them at once. An entry is fresh
// for a short lifetime (--near-cache-ttl): within it a lookup is answered
// here, so a hot session costs at most one memcached round trip per lifetime
// per instance. Past it, the entry is still remembered (for the default TTL)
// and routes its session while memcached cannot answer, as HTTP's
// stale-if-error does, or when memcached lost the binding.
//
// Layout: lock words (one per bucket, src/shared-lock.ts), then slots of
// SLOT_WORDS 32-bit words, WAYS per bucket:
//   0  tag: a second hash of the key, odd (0 marks a free slot)
//   1  key length (Latin-1 bytes, at most KEY_BYTES; longer keys are not kept)
//   2  backend: its slot in the process's backend registry
//   3  seal: the key's hash folded with words 0-2, written last, so a slot
//      torn by a thread that died mid-write, or read while it is being
//      written, reads as free
//   4.. the key bytes
// then, per slot, three doubles: fresh until, remembered until, and when an
// adoption of the key may next be written (Date.now() milliseconds).
//
// Writers lock the bucket (src/shared-lock.ts); readers do not. A read checks
// the slot's seal against what it read, so one that races a write sees the
// old binding, the new one, or none (a miss, which asks memcached): never a
// mix. The key's own hash, needed to find the bucket, is the seal's start, so
// the check costs three steps once the key bytes compared equal.
import { FNV_OFFSET, fmix32, fnv1a, fnvStep } from './hash.ts';
import { lock, unlock } from './shared-lock.ts';

const WAYS = 4;
const KEY_BYTES = 128;
const TAG = 0;
const KEY_LEN = 1;
const BACKEND = 2;
const SEAL = 3;
const KEY = 4;
const SLOT_WORDS = KEY + KEY_BYTES / 4;
const FRESH = 0;
const UNTIL = 1;
const ADOPT = 2;

/** The slot tag: independent of the bucket index (both come from one FNV-1a hash), odd, signed as Int32Array holds it. */
function tagOf(h: number): number {
  return fmix32(h ^ 0x9e3779b9) | 1;
}

/** The seal of a slot holding a key of hash `h` (fnv1a) and length `length`, with `tag` and backend `ref`. */
function sealOf(h: number, tag: number, length: number, ref: number): number {
  return fmix32(fnvStep(fnvStep(fnvStep(h, tag), length), ref)) | 0;
}

function buckets(entries: number): number {
  let n = 1;
  while (n * WAYS < entries) n <<= 1;
  return n;
}

/** Bytes of shared memory for a near cache of `entries` bindings. */
export function nearCacheBytes(entries: number): number {
  const b = buckets(entries);
  const words = b + b * WAYS * SLOT_WORDS;
  // The doubles start 8-byte aligned.
  return Math.ceil(words / 2) * 8 + b * WAYS * 3 * 8;
}

/** Backend names by registry slot: how the cache stores a backend in one word. */
export interface BackendSlots {
  slotOf(name: string): number;
  nameOf(slot: number): string;
}

export class NearCache {
  readonly #locks: Int32Array;
  readonly #slots: Int32Array;
  readonly #bytes: Uint8Array;
  readonly #times: Float64Array;
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
    const words = b + b * WAYS * SLOT_WORDS;
    this.#locks = new Int32Array(memory, 0, b);
    this.#slots = new Int32Array(memory, b * 4, b * WAYS * SLOT_WORDS);
    this.#bytes = new Uint8Array(memory, b * 4, b * WAYS * SLOT_WORDS * 4);
    this.#times = new Float64Array(memory, Math.ceil(words / 2) * 8, b * WAYS * 3);
    this.#mask = b - 1;
    this.#freshMs = freshMs;
    this.#rememberMs = rememberMs;
    this.#backends = backends;
  }

  /** True when `key` is remembered at `now`; the answer is in backend, freshUntil, adoptAfter. */
  get(key: string, now: number): boolean {
    if (key.length > KEY_BYTES) return false;
    const h = fnv1a(key);
    const slot = this.#find(fmix32(h) & this.#mask, tagOf(h), key, h);
    if (slot < 0) return false;
    const t = (slot / SLOT_WORDS) * 3;
    const backend = this.#slots[slot + BACKEND];
    const freshUntil = this.#times[t + FRESH];
    const adoptAfter = this.#times[t + ADOPT];
    // Checked again: a writer may have reused the slot since #find checked it.
    if (!(this.#times[t + UNTIL] > now) || this.#slots[slot + SEAL] !== sealOf(h, this.#slots[slot + TAG], key.length, backend)) return false;
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
    const s = this.#slots;
    const times = this.#times;
    const token = lock(this.#locks, bucket);
    let slot = this.#find(bucket, tag, key, h);
    const fresh = slot < 0;
    if (fresh) slot = this.#victim(bucket, now);
    const t = (slot / SLOT_WORDS) * 3;
    // A reader racing this write fails the seal check until the seal, last, is written.
    Atomics.store(s, slot + SEAL, 0);
    s[slot + TAG] = tag;
    s[slot + KEY_LEN] = key.length;
    s[slot + BACKEND] = ref;
    const at = (slot + KEY) * 4;
    for (let i = 0; i < key.length; i++) this.#bytes[at + i] = key.charCodeAt(i);
    times[t + FRESH] = now + this.#freshMs;
    times[t + UNTIL] = now + this.#rememberMs;
    if (adoptAfter > 0 || fresh) times[t + ADOPT] = adoptAfter;
    // Atomics orders the slot's writes before the seal for readers on any CPU.
    Atomics.store(s, slot + SEAL, sealOf(h, tag, key.length, ref));
    unlock(this.#locks, bucket, token);
  }

  delete(key: string): void {
    if (key.length > KEY_BYTES) return;
    const h = fnv1a(key);
    const bucket = fmix32(h) & this.#mask;
    const token = lock(this.#locks, bucket);
    const slot = this.#find(bucket, tagOf(h), key, h);
    if (slot >= 0) this.#slots[slot + TAG] = 0;
    unlock(this.#locks, bucket, token);
  }

  /** The intact slot holding `key` (of hash `h`), or -1. */
  #find(bucket: number, tag: number, key: string, h: number): number {
    const s = this.#slots;
    const bytes = this.#bytes;
    for (let w = 0, slot = bucket * WAYS * SLOT_WORDS; w < WAYS; w++, slot += SLOT_WORDS) {
      if (s[slot + TAG] !== tag || s[slot + KEY_LEN] !== key.length) continue;
      const at = (slot + KEY) * 4;
      let i = 0;
      while (i < key.length && bytes[at + i] === key.charCodeAt(i)) i++;
      if (i === key.length && s[slot + SEAL] === sealOf(h, tag, key.length, s[slot + BACKEND])) return slot;
    }
    return -1;
  }

  /** A free or forgotten slot, else the one remembered for the shortest time. */
  #victim(bucket: number, now: number): number {
    const s = this.#slots;
    const times = this.#times;
    let best = bucket * WAYS * SLOT_WORDS;
    for (let w = 0, slot = best; w < WAYS; w++, slot += SLOT_WORDS) {
      const until = times[(slot / SLOT_WORDS) * 3 + UNTIL];
      if (s[slot + TAG] === 0 || until <= now || !this.#intact(slot)) return slot;
      if (until < times[(best / SLOT_WORDS) * 3 + UNTIL]) best = slot;
    }
    return best;
  }

  #intact(slot: number): boolean {
    const s = this.#slots;
    const n = s[slot + KEY_LEN];
    if (n < 0 || n > KEY_BYTES) return false;
    let h = FNV_OFFSET | 0;
    for (let i = 0, at = (slot + KEY) * 4; i < n; i++) h = fnvStep(h, this.#bytes[at + i]);
    return sealOf(h >>> 0, s[slot + TAG], n, s[slot + BACKEND]) === s[slot + SEAL];
  }
}
