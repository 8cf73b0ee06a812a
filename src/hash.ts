// The one non-cryptographic string hash of the project: memcached placement
// (src/memcache/ring.ts) and the fallback route (rendezvous in balance.ts) both
// use it, so each instance and every client agrees on where a key goes. Cheap
// enough for a per-request path, unlike a crypto digest. Changing any constant
// here moves keys between memcached servers and sessions between backends.

export const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

/** One FNV-1a step: folds x (a code unit, a byte or a whole word) into h. Signed. */
export function fnvStep(h: number, x: number): number {
  return Math.imul(h ^ x, FNV_PRIME);
}

/** 32-bit FNV-1a over the UTF-16 code units of s, starting from seed. Unsigned. */
export function fnv1a(s: string, seed: number = FNV_OFFSET): number {
  let h = seed | 0;
  for (let i = 0; i < s.length; i++) h = fnvStep(h, s.charCodeAt(i));
  return h >>> 0;
}

// A second FNV-1a-style lane (another odd multiplier and offset), for the
// fingerprints that need more bits than one hash: the near cache's (two
// lanes) and the embedded store's digest (four). Local to this process's
// memory, so changing them moves nothing between instances.
export const LANE2_PRIME = 0x2c1b3c6d;
export const LANE2_OFFSET = 0x297a2d39;

/** murmur3's fmix32 finaliser: spreads FNV's weak low bits over the whole word. Unsigned. */
export function fmix32(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** fmix32(fnv1a(s)): FNV alone clusters similar short strings ("host-1", "host-2"). */
export function hash32(s: string): number {
  return fmix32(fnv1a(s));
}
