// Consistent hashing, ketama-style: each server owns POINTS_PER_SERVER points
// on a 32-bit ring, placed by hashing "<address>-<i>"; a key belongs to the
// first point at or after hash(key), wrapping around. Adding or removing one
// of N servers only moves the keys of the arcs it gains or loses, about 1/N.
// A server is identified by its address string exactly as configured, so every
// client given the same list agrees on placement.

import { hash32 } from '../hash.ts';

const POINTS_PER_SERVER = 160;

export class HashRing {
  private readonly points: Uint32Array;
  private readonly owners: Uint16Array;
  readonly size: number;

  constructor(addresses: readonly string[]) {
    if (addresses.length === 0) throw new RangeError('no servers');
    if (addresses.length > 0xffff) throw new RangeError('too many servers');
    this.size = addresses.length;
    const all: Array<[number, number]> = [];
    addresses.forEach((addr, idx) => {
      for (let i = 0; i < POINTS_PER_SERVER; i++) all.push([hash32(`${addr}-${i}`), idx]);
    });
    // Ties (rare) are broken by server index so placement is deterministic.
    all.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    this.points = Uint32Array.from(all, (p) => p[0]);
    this.owners = Uint16Array.from(all, (p) => p[1]);
  }

  /** Index (into the constructor's list) of the server owning `key`. */
  lookup(key: string): number {
    if (this.size === 1) return 0;
    const h = hash32(key);
    const points = this.points;
    let lo = 0;
    let hi = points.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (points[mid] < h) lo = mid + 1;
      else hi = mid;
    }
    return this.owners[lo === points.length ? 0 : lo];
  }
}
