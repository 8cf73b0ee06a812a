// The embedded store: a fixed-size hash table in a SharedArrayBuffer, so every
// worker thread (and the main thread with --workers 0) sees the same bindings
// without a round trip. It is set-associative like a CPU cache: a key may live
// in one of WAYS slots of its bucket, and a full bucket evicts the binding
// closest to expiry. Memory is bounded by construction; nothing is resized.
//
// Layout, in 32-bit words (platform byte order):
//   [0, buckets)       one lock word per bucket: 0 when free, else the token of
//                      the acquisition holding it (see src/shared-lock.ts)
//   then buckets × WAYS slots of SLOT_WORDS words, bucket b's at b·WAYS·SLOT_WORDS:
//     0-3  key digest (128 bits, see digest(); word 3 is odd, 0 marks a free slot)
//     4    expiry, seconds since EPOCH
//     5    sliding TTL in seconds, 0 for a fixed expiry
//     6    name length in bytes (at most NAME_BYTES)
//     7    seal: a hash of words 0-6 and the name, written with them
//     8..  the name, one Latin-1 byte per character, NAME_BYTES bytes
//
// A thread can die inside a critical section (a worker terminated mid-write),
// leaving its bucket locked and a slot half-written. The lock cannot hang the
// others: its holder is identified, and a waiter that sees one holder keep it
// for STEAL_MS takes it over. The half-written slot cannot be read as a
// binding: a slot counts only if its seal matches its contents, and a writer
// seals the values it means to write, so any mix of old and new words, in any
// order, fails (short of a 2^-32 hash collision) and reads as a free slot.
import { FNV_OFFSET, LANE2_OFFSET, LANE2_PRIME, fmix32, fnvStep } from '../hash.ts';
import { lock, unlock } from '../shared-lock.ts';
import type { AffinityStore } from './store.ts';
import { monotonicMs } from '../clock.ts';

const WAYS = 8;
const NAME_BYTES = 64;
const EXPIRY = 4;
const SLIDING = 5;
const NAME_LEN = 6;
const SEAL = 7;
const NAME = 8;
const SLOT_WORDS = NAME + NAME_BYTES / 4;
/** Expiries are whole seconds of the process's monotonic clock (clock.ts), which fit an Int32 for decades of uptime. */
function monotonicSeconds(): number {
  return Math.floor(monotonicMs() / 1000);
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
  readonly #now: () => number;

  /** Every thread wraps the same SharedArrayBuffer, made by embeddedStoreBytes(); `now` is in seconds (tests give their own). */
  constructor(memory: SharedArrayBuffer, now: () => number = monotonicSeconds) {
    this.#now = now;
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
    return Promise.resolve(this.lookup(key));
  }

  /** The backend `key` is bound to, or null; synchronous, as the memory is this process's. */
  lookup(key: string): string | null {
    const d = digest(key);
    const bucket = d[0] & this.#mask;
    const now = this.#now();
    const s = this.#slots;
    const bytes = this.#bytes;
    let len = -1;
    const token = lock(this.#locks, bucket);
    // The first intact, live slot with this digest. Only a thread that died
    // mid-write leaves an intact copy behind a broken one, so a broken match
    // does not end the search.
    for (let w = 0, slot = bucket * WAYS * SLOT_WORDS; w < WAYS; w++, slot += SLOT_WORDS) {
      if (s[slot] !== d[0] || s[slot + 1] !== d[1] || s[slot + 2] !== d[2] || s[slot + 3] !== d[3]) continue;
      const n = s[slot + NAME_LEN];
      if (n < 0 || n > NAME_BYTES) continue;
      // The seal is checked while the name is copied out, so the string is
      // made after unlocking: nothing under the lock allocates (no GC pause).
      let h = sealHead(d, s[slot + SLIDING], n);
      for (let i = 0, at = (slot + NAME) * 4; i < n; i++) {
        const c = bytes[at + i];
        nameScratch[i] = c;
        h = fnvStep(h, c);
      }
      const expiry = s[slot + EXPIRY];
      if ((fmix32(fnvStep(h, expiry)) | 0) !== s[slot + SEAL] || expiry <= now) continue;
      const sliding = s[slot + SLIDING];
      if (sliding > 0) {
        const next = now + sliding;
        s[slot + EXPIRY] = next;
        s[slot + SEAL] = fmix32(fnvStep(h, next));
      }
      len = n;
      break;
    }
    unlock(this.#locks, bucket, token);
    if (len < 0) return null;
    return foundName(len);
  }

  set(key: string, backend: string, ttl: number, sliding: boolean): Promise<void> {
    if (backend.length > NAME_BYTES) return Promise.reject(new Error('backend name too long for the embedded store'));
    const d = digest(key);
    const bucket = d[0] & this.#mask;
    const now = this.#now();
    const expiry = now + ttl;
    const slidingTtl = sliding ? ttl : 0;
    // Sealed before locking: the seal is of what this call means to write.
    let h = sealHead(d, slidingTtl, backend.length);
    for (let i = 0; i < backend.length; i++) {
      const c = backend.charCodeAt(i);
      if (c > 0xff) return Promise.reject(new Error('backend name not Latin-1, which the embedded store cannot hold'));
      h = fnvStep(h, c);
    }
    const seal = fmix32(fnvStep(h, expiry)) | 0;
    const token = lock(this.#locks, bucket);
    let slot = this.#find(bucket, d);
    if (slot < 0) slot = this.#victim(bucket, now);
    const s = this.#slots;
    s[slot] = d[0]; s[slot + 1] = d[1]; s[slot + 2] = d[2]; s[slot + 3] = d[3];
    s[slot + EXPIRY] = expiry;
    s[slot + SLIDING] = slidingTtl;
    s[slot + NAME_LEN] = backend.length;
    const start = (slot + NAME) * 4;
    for (let i = 0; i < backend.length; i++) this.#bytes[start + i] = backend.charCodeAt(i);
    s[slot + SEAL] = seal;
    unlock(this.#locks, bucket, token);
    return Promise.resolve();
  }

  delete(key: string): Promise<void> {
    const d = digest(key);
    const bucket = d[0] & this.#mask;
    const s = this.#slots;
    const token = lock(this.#locks, bucket);
    // Every copy: a dead writer may have left a second one.
    for (let w = 0, slot = bucket * WAYS * SLOT_WORDS; w < WAYS; w++, slot += SLOT_WORDS) {
      if (s[slot] === d[0] && s[slot + 1] === d[1] && s[slot + 2] === d[2] && s[slot + 3] === d[3]) s.fill(0, slot, slot + SLOT_WORDS);
    }
    unlock(this.#locks, bucket, token);
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  /** Index of the first slot holding digest d, whatever its state, or -1: set overwrites it. */
  #find(bucket: number, d: Int32Array): number {
    const s = this.#slots;
    for (let w = 0, slot = bucket * WAYS * SLOT_WORDS; w < WAYS; w++, slot += SLOT_WORDS) {
      if (s[slot] === d[0] && s[slot + 1] === d[1] && s[slot + 2] === d[2] && s[slot + 3] === d[3]) return slot;
    }
    return -1;
  }

  /** A free, expired or broken slot, else the one closest to expiry. */
  #victim(bucket: number, now: number): number {
    const s = this.#slots;
    let best = bucket * WAYS * SLOT_WORDS;
    for (let w = 0, slot = best; w < WAYS; w++, slot += SLOT_WORDS) {
      if (s[slot + 3] === 0 || s[slot + EXPIRY] <= now || !this.#intact(slot)) return slot;
      if (s[slot + EXPIRY] < s[best + EXPIRY]) best = slot;
    }
    return best;
  }

  /** Whether the slot's seal matches its contents. */
  #intact(slot: number): boolean {
    const s = this.#slots;
    const n = s[slot + NAME_LEN];
    if (n < 0 || n > NAME_BYTES) return false;
    let h = FNV_OFFSET;
    for (let i = 0; i < 4; i++) h = fnvStep(h, s[slot + i]);
    h = fnvStep(h, s[slot + SLIDING]);
    h = fnvStep(h, n);
    for (let i = 0, at = (slot + NAME) * 4; i < n; i++) h = fnvStep(h, this.#bytes[at + i]);
    return (fmix32(fnvStep(h, s[slot + EXPIRY])) | 0) === s[slot + SEAL];
  }
}

// The seal: FNV-1a over the digest words, sliding TTL, name length, name bytes
// and, last, the expiry (so a sliding refresh re-seals from the running hash),
// then fmix32. It guards against torn writes, not against an adversary.
function sealHead(d: Int32Array, slidingTtl: number, nameLength: number): number {
  let h = FNV_OFFSET;
  h = fnvStep(h, d[0]);
  h = fnvStep(h, d[1]);
  h = fnvStep(h, d[2]);
  h = fnvStep(h, d[3]);
  h = fnvStep(h, slidingTtl);
  return fnvStep(h, nameLength);
}

// The key's digest: four 32-bit lanes of the FNV-1a step, each with its own
// offset and odd multiplier (the first two are hash.ts's, as the near
// cache's), taken in one pass over the key's code units, then chained
// through fmix32 so every word depends on all four lanes. It was
// sha256's first 16 bytes: a call into C++ and a Buffer per lookup and per
// learn; a lookup took 1.8–1.9 µs with it and takes about 0.2 µs now (`npm
// run bench:affinity`). What the digest must give is that two live keys never
// share one: for keys that are not crafted the odds are about 2^-128 a pair,
// as with sha256's 128 bits. An adversary who knows a victim's session id
// could craft a key with its digest here, but that id is worth more to them
// than a binding; a crafted key can crowd a bucket either way, as the bucket
// is only a few bits of the digest, whichever hash made it.
const P2 = 0x9e3779b1;
const P3 = 0x85ebca6b;
const O2 = 0x5bd1e995;
const O3 = 0x27d4eb2f;

/** A 128-bit digest of the key; word 3 is never 0, which marks a free slot. */
// Reused: a digest is consumed before the next one is taken.
const scratch = new Int32Array(4);
function digest(key: string): Int32Array {
  let a = FNV_OFFSET | 0;
  let b = LANE2_OFFSET;
  let c = O2;
  let d = O3;
  for (let i = 0; i < key.length; i++) {
    const x = key.charCodeAt(i);
    a = fnvStep(a, x);
    b = Math.imul(b ^ x, LANE2_PRIME);
    c = Math.imul(c ^ x, P2);
    d = Math.imul(d ^ x, P3);
  }
  const w0 = fmix32(a ^ key.length);
  const w1 = fmix32(b ^ w0);
  const w2 = fmix32(c ^ w1);
  scratch[0] = w0 | 0;
  scratch[1] = w1 | 0;
  scratch[2] = w2 | 0;
  scratch[3] = fmix32(d ^ w2) | 1;
  return scratch;
}

// A found name is copied here under the lock and made a string after it.
const nameScratch = new Uint8Array(NAME_BYTES);

// Names this thread has made strings of: a lookup answers with one of them
// instead of a new string, as a process has few backends. Bounded, as names
// written by another configuration of backends (before a reload) may linger.
const NAMES_KEPT = 64;
const names: string[] = [];
let nextName = 0;

/** nameScratch[0, len) as a string, the same one each time while it is kept. */
function foundName(len: number): string {
  for (let k = 0; k < names.length; k++) {
    const name = names[k];
    if (name.length !== len) continue;
    let i = 0;
    while (i < len && name.charCodeAt(i) === nameScratch[i]) i++;
    if (i === len) return name;
  }
  const name = String.fromCharCode.apply(null, nameScratch.subarray(0, len) as unknown as number[]);
  if (names.length < NAMES_KEPT) names.push(name);
  else names[nextName++ % NAMES_KEPT] = name;
  return name;
}
