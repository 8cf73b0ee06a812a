// The embedded store: a fixed-size hash table in a SharedArrayBuffer, so every
// worker thread (and the main thread with --workers 0) sees the same bindings
// without a round trip. It is set-associative like a CPU cache: a key may live
// in one of WAYS slots of its bucket, and a full bucket evicts the binding
// closest to expiry. Memory is bounded by construction; nothing is resized.
import { hash } from 'node:crypto';
import type { AffinityStore } from './store.ts';

const WAYS = 8;
const NAME_BYTES = 64;
// Slot words: 0-3 key digest, 4 expiry, 5 sliding TTL (0 = fixed), 6 name length, 7.. name bytes.
const EXPIRY = 4;
const SLIDING = 5;
const NAME_LEN = 6;
const NAME = 7;
const SLOT_WORDS = NAME + NAME_BYTES / 4;
// Expiries are seconds since 2025-01-01, which fit an Int32 for decades.
const EPOCH = 1735689600;

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000) - EPOCH;
}

/** Bytes of shared memory needed for maxEntries bindings. */
export function embeddedStoreBytes(maxEntries: number): number {
  const buckets = bucketCount(maxEntries);
  return (buckets + buckets * WAYS * SLOT_WORDS) * 4;
}

function bucketCount(maxEntries: number): number {
  let n = 1;
  while (n * WAYS < maxEntries) n <<= 1;
  return n;
}

export class EmbeddedStore implements AffinityStore {
  readonly description: string;
  readonly #locks: Int32Array;
  readonly #slots: Int32Array;
  readonly #bytes: Uint8Array;
  readonly #mask: number;

  /** Every thread wraps the same SharedArrayBuffer, made by embeddedStoreBytes(). */
  constructor(memory: SharedArrayBuffer) {
    const words = memory.byteLength / 4;
    const buckets = words / (1 + WAYS * SLOT_WORDS);
    if (!Number.isInteger(buckets) || (buckets & (buckets - 1)) !== 0) throw new Error('embedded store memory has the wrong size');
    this.#locks = new Int32Array(memory, 0, buckets);
    this.#slots = new Int32Array(memory, buckets * 4);
    this.#bytes = new Uint8Array(memory, buckets * 4);
    this.#mask = buckets - 1;
    this.description = `embedded (${buckets * WAYS} entries, shared by this process's threads; affinity is local to this instance)`;
  }

  get(key: string): Promise<string | null> {
    const d = digest(key);
    const bucket = d[0] & this.#mask;
    this.#lock(bucket);
    try {
      const slot = this.#find(bucket, d, nowSeconds());
      if (slot < 0) return Promise.resolve(null);
      const s = this.#slots;
      const sliding = s[slot + SLIDING];
      if (sliding > 0) s[slot + EXPIRY] = nowSeconds() + sliding;
      const start = (slot + NAME) * 4;
      const name = String.fromCharCode.apply(null, this.#bytes.subarray(start, start + s[slot + NAME_LEN]) as unknown as number[]);
      return Promise.resolve(name);
    } finally {
      this.#unlock(bucket);
    }
  }

  set(key: string, backend: string, ttl: number, sliding: boolean): Promise<void> {
    if (backend.length > NAME_BYTES) return Promise.reject(new Error('backend name too long for the embedded store'));
    const d = digest(key);
    const bucket = d[0] & this.#mask;
    const now = nowSeconds();
    this.#lock(bucket);
    try {
      let slot = this.#find(bucket, d, now);
      if (slot < 0) slot = this.#victim(bucket, now);
      const s = this.#slots;
      s[slot] = d[0]; s[slot + 1] = d[1]; s[slot + 2] = d[2]; s[slot + 3] = d[3];
      s[slot + EXPIRY] = now + ttl;
      s[slot + SLIDING] = sliding ? ttl : 0;
      s[slot + NAME_LEN] = backend.length;
      const start = (slot + NAME) * 4;
      for (let i = 0; i < backend.length; i++) this.#bytes[start + i] = backend.charCodeAt(i);
    } finally {
      this.#unlock(bucket);
    }
    return Promise.resolve();
  }

  delete(key: string): Promise<void> {
    const d = digest(key);
    const bucket = d[0] & this.#mask;
    this.#lock(bucket);
    try {
      const slot = this.#find(bucket, d, nowSeconds());
      if (slot >= 0) this.#slots.fill(0, slot, slot + SLOT_WORDS);
    } finally {
      this.#unlock(bucket);
    }
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  /** Index of the live slot holding digest d, or -1. */
  #find(bucket: number, d: Int32Array, now: number): number {
    const s = this.#slots;
    for (let w = 0, slot = bucket * WAYS * SLOT_WORDS; w < WAYS; w++, slot += SLOT_WORDS) {
      if (s[slot] === d[0] && s[slot + 1] === d[1] && s[slot + 2] === d[2] && s[slot + 3] === d[3]) {
        return s[slot + EXPIRY] > now ? slot : -1;
      }
    }
    return -1;
  }

  /** A free or expired slot, else the one closest to expiry. */
  #victim(bucket: number, now: number): number {
    const s = this.#slots;
    let best = bucket * WAYS * SLOT_WORDS;
    for (let w = 0, slot = best; w < WAYS; w++, slot += SLOT_WORDS) {
      if (s[slot + 3] === 0 || s[slot + EXPIRY] <= now) return slot;
      if (s[slot + EXPIRY] < s[best + EXPIRY]) best = slot;
    }
    return best;
  }

  // Critical sections are a few dozen word accesses, so a spin lock is cheaper
  // than parking; Atomics also orders the plain accesses made under it.
  #lock(bucket: number): void {
    while (Atomics.compareExchange(this.#locks, bucket, 0, 1) !== 0);
  }

  #unlock(bucket: number): void {
    Atomics.store(this.#locks, bucket, 0);
  }
}

/** A 128-bit digest of the key; word 3 is never 0, which marks a free slot. */
// Reused: a digest is consumed before the next one is taken.
const scratch = new Int32Array(4);
function digest(key: string): Int32Array {
  const b = hash('sha256', key, 'buffer');
  scratch[0] = b.readInt32LE(0);
  scratch[1] = b.readInt32LE(4);
  scratch[2] = b.readInt32LE(8);
  scratch[3] = b.readInt32LE(12) | 1;
  return scratch;
}
