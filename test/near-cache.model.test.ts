// Model-based property test of the near cache (src/near-cache.ts), the shared
// table every event loop routes by: random programs of sets (with and without
// an adoption time), deletes and lookups, with the clock moving on between
// them, and the forgetting of every binding to one backend (its slot is
// about to be given to another), against a Map of what each key was last told. A lookup may miss a key
// the table had to evict (a bucket holds four), but what it answers must be
// the key's own last binding, with its fresh and remembered times and its
// adoption time: never a deleted, overwritten, expired or other key's one.
// With at most four keys nothing can be evicted, so there every lookup must
// answer exactly what the model says.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { NearCache, nearCacheBytes, type BackendSlots } from '../src/near-cache.ts';

const NAMES = ['alpha', 'beta', 'gamma'];
const SLOTS: BackendSlots = {
  slotOf: (name) => NAMES.indexOf(name),
  nameOf: (slot) => NAMES[slot] ?? '',
};
const FRESH_MS = 1000;
const REMEMBER_MS = 5000;

type Op =
  | { op: 'set'; key: number; backend: number; adopt: number }
  | { op: 'delete'; key: number }
  | { op: 'get'; key: number }
  | { op: 'forget'; backend: number }
  | { op: 'wait'; ms: number };

/** What the model knows of a key: its binding and times; `adopt` may be either of two values (see below). */
interface Entry { backend: string; fresh: number; until: number; adopt: number[] }

/** The session key an operation names. */
function keyOf(o: Op): string {
  return `PHPSESSID:s${'key' in o ? o.key : 0}`;
}

/** Where a failure happened: the operation and the clock, for the message. */
function where(i: number, o: Op, elapsedMs: number): string {
  return `op ${i} (${JSON.stringify(o)}) at +${elapsedMs} ms`;
}

function opArb(keys: number): fc.Arbitrary<Op> {
  const key = fc.nat(keys - 1);
  return fc.oneof(
    { weight: 4, arbitrary: fc.record({ op: fc.constant('set' as const), key, backend: fc.nat(NAMES.length - 1), adopt: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 10_000 })) }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('delete' as const), key }) },
    { weight: 4, arbitrary: fc.record({ op: fc.constant('get' as const), key }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('forget' as const), backend: fc.nat(NAMES.length - 1) }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('wait' as const), ms: fc.oneof(fc.integer({ min: 0, max: 1500 }), fc.constantFrom(FRESH_MS, REMEMBER_MS, REMEMBER_MS - 1)) }) },
  );
}

function run(ops: Op[], keys: number, entries: number, freshMs: number, exact: boolean): void {
  const cache = new NearCache(new SharedArrayBuffer(nearCacheBytes(entries)), entries, freshMs, REMEMBER_MS, SLOTS);
  const model = new Map<number, Entry>();
  let now = 1_000_000;
  for (const [i, o] of ops.entries()) {
    const key = keyOf(o);
    const at = where(i, o, now - 1_000_000);
    if (o.op === 'wait') {
      now += o.ms;
    } else if (o.op === 'set') {
      cache.set(key, NAMES[o.backend], now, o.adopt);
      const old = model.get(o.key);
      // A new way takes the given adoption time, a way still holding the key keeps its own unless one is given. An
      // expired way may have been reused for another key or be found again, and outside exact runs a live one may
      // have been evicted: where either may have happened, either value is allowed.
      let adopt: number[];
      if (o.adopt > 0 || old === undefined) adopt = [o.adopt];
      else if (old.until > now && exact) adopt = old.adopt;
      else adopt = [...old.adopt, 0];
      model.set(o.key, { backend: NAMES[o.backend], fresh: freshMs === 0 ? 0 : now + freshMs, until: now + REMEMBER_MS, adopt });
    } else if (o.op === 'delete') {
      cache.delete(key);
      model.delete(o.key);
    } else if (o.op === 'forget') {
      cache.forgetBackend(o.backend);
      for (const [k, e] of model) if (e.backend === NAMES[o.backend]) model.delete(k);
    } else {
      const want = model.get(o.key);
      const alive = want !== undefined && want.until > now;
      const found = cache.get(key, now);
      if (found) {
        assert.ok(alive, `${at}: answered ${cache.backend} for a key ${want === undefined ? 'deleted or never set' : 'expired'}`);
        assert.equal(cache.backend, want.backend, `${at}: the backend`);
        assert.equal(cache.freshUntil, want.fresh, `${at}: fresh until`);
        assert.ok(want.adopt.includes(cache.adoptAfter), `${at}: adoption time ${cache.adoptAfter}, expected one of ${want.adopt}`);
      } else if (exact) {
        assert.ok(!alive, `${at}: missed a key bound to ${want?.backend} until +${(want?.until ?? 0) - 1_000_000} ms`);
      }
    }
  }
}

/**
 * One bucket (four entries): the model keeps its four ways in order, as the
 * cache documents its policy: a key already in a way stays there; a new one
 * takes the first free or forgotten way, else the way remembered for the
 * shortest time. Every lookup then answers exactly what the model says,
 * evictions included. The clock moves on at each set, so no two ways are
 * remembered until the same instant.
 */
function runOneBucket(ops: Op[], freshMs: number): void {
  const cache = new NearCache(new SharedArrayBuffer(nearCacheBytes(4)), 4, freshMs, REMEMBER_MS, SLOTS);
  const ways: ({ key: number } & Entry | null)[] = [null, null, null, null];
  let now = 1_000_000;
  for (const [i, o] of ops.entries()) {
    const key = keyOf(o);
    const at = where(i, o, now - 1_000_000);
    if (o.op === 'wait') {
      now += o.ms;
      continue;
    }
    if (o.op === 'forget') {
      // The ways it frees are free again, first in line for the next new key.
      cache.forgetBackend(o.backend);
      for (let v = 0; v < ways.length; v++) if (ways[v]?.backend === NAMES[o.backend]) ways[v] = null;
      continue;
    }
    const w = ways.findIndex((x) => x !== null && x.key === o.key);
    if (o.op === 'set') {
      now += 1;
      cache.set(key, NAMES[o.backend], now, o.adopt);
      let v = w;
      if (v < 0) {
        v = ways.findIndex((x) => x === null || !(x.until > now));
        if (v < 0) v = ways.reduce((best, x, k) => (x!.until < ways[best]!.until ? k : best), 0);
      }
      const adopt = o.adopt > 0 || w < 0 ? o.adopt : ways[w]!.adopt[0];
      ways[v] = { key: o.key, backend: NAMES[o.backend], fresh: freshMs === 0 ? 0 : now + freshMs, until: now + REMEMBER_MS, adopt: [adopt] };
    } else if (o.op === 'delete') {
      cache.delete(key);
      if (w >= 0) ways[w] = null;
    } else {
      const want = w < 0 ? null : ways[w];
      const alive = want !== null && want.until > now;
      const found = cache.get(key, now);
      assert.equal(found, alive, `${at}: ${found ? `answered ${cache.backend}` : 'missed'}; the model's ways: ${JSON.stringify(ways)}`);
      if (found) {
        assert.equal(cache.backend, want!.backend, `${at}: the backend`);
        assert.equal(cache.freshUntil, want!.fresh, `${at}: fresh until`);
        assert.equal(cache.adoptAfter, want!.adopt[0], `${at}: adoption time`);
      }
    }
  }
}

test('near cache, one bucket and eight keys: evictions follow the documented policy, and every lookup answers the model exactly', () => {
  fc.assert(fc.property(fc.array(opArb(8), { maxLength: 120, size: 'max' }), fc.constantFrom(FRESH_MS, 0), (ops, freshMs) => {
    runOneBucket(ops, freshMs);
  }), { numRuns: 2000 });
});

test('near cache, at most four keys (nothing evicted): every lookup answers the model exactly', () => {
  fc.assert(fc.property(fc.array(opArb(4), { maxLength: 80, size: 'max' }), fc.constantFrom(FRESH_MS, 0), fc.constantFrom(1, 4, 64), (ops, freshMs, entries) => {
    run(ops, 4, entries, freshMs, true);
  }), { numRuns: 2000 });
});

test('near cache, many keys in a few buckets: a lookup may miss an evicted key, never answer another binding', () => {
  fc.assert(fc.property(fc.array(opArb(40), { maxLength: 200, size: 'max' }), fc.constantFrom(FRESH_MS, 0), fc.constantFrom(4, 8, 16), (ops, freshMs, entries) => {
    run(ops, 40, entries, freshMs, false);
  }), { numRuns: 1000 });
});
