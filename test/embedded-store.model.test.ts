// Model-based property test of the embedded store (src/store/embedded.ts), the
// store without --memcache: random programs of sets (fixed or sliding
// lifetimes), deletes and lookups, with the clock (Node's mocked Date, given
// to the store as its clock) moving on between them, against a Map that applies memcached's rules: an item
// lives until its expiry, and a lookup of a sliding one moves its expiry to
// now + its TTL. A lookup may miss a key its bucket had to give up (eight
// ways), but what it answers must be the key's own live binding; with at
// most eight keys nothing is evicted, and every lookup answers exactly what
// the model says.
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { EmbeddedStore, embeddedStoreBytes } from '../src/store/embedded.ts';

const NAMES = ['a', 'backend-2', 'c'.repeat(64)];
const START = Date.UTC(2026, 0, 1);

type Op =
  | { op: 'set'; key: number; backend: number; ttl: number; sliding: boolean }
  | { op: 'delete'; key: number }
  | { op: 'get'; key: number }
  | { op: 'wait'; ms: number };

/** `maxTtl` and `waits` (its weight): short lives and many waits for expiry at the edges, long lives and few for full buckets. */
/** The session key an operation names. */
function keyOf(o: Op): string {
  return `PHPSESSID:s${'key' in o ? o.key : 0}`;
}

/** Where a failure happened: the operation and the clock, for the message. */
function where(i: number, o: Op, elapsedMs: number): string {
  return `op ${i} (${JSON.stringify(o)}) at +${elapsedMs} ms`;
}

function opArb(keys: number, maxTtl = 5, waits = 2): fc.Arbitrary<Op> {
  const key = fc.nat(keys - 1);
  return fc.oneof(
    { weight: 4, arbitrary: fc.record({ op: fc.constant('set' as const), key, backend: fc.nat(NAMES.length - 1), ttl: fc.integer({ min: 1, max: maxTtl }), sliding: fc.boolean() }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('delete' as const), key }) },
    { weight: 4, arbitrary: fc.record({ op: fc.constant('get' as const), key }) },
    { weight: waits, arbitrary: fc.record({ op: fc.constant('wait' as const), ms: fc.oneof(fc.integer({ min: 0, max: 2500 }), fc.constantFrom(1000, 999, 1001)) }) },
  );
}

interface Entry { backend: string; expiry: number; sliding: number }

function run(ops: Op[], entries: number, exact: boolean): void {
  mock.timers.enable({ apis: ['Date'], now: START });
  try {
    const store = new EmbeddedStore(new SharedArrayBuffer(embeddedStoreBytes(entries)), () => Math.floor(Date.now() / 1000));
    const model = new Map<number, Entry>();
    // The store counts whole seconds, as memcached does.
    const now = (): number => Math.floor(Date.now() / 1000);
    for (const [i, o] of ops.entries()) {
      const key = keyOf(o);
      const at = where(i, o, Date.now() - START);
      if (o.op === 'wait') {
        mock.timers.tick(o.ms);
      } else if (o.op === 'set') {
        void store.set(key, NAMES[o.backend], o.ttl, o.sliding);
        model.set(o.key, { backend: NAMES[o.backend], expiry: now() + o.ttl, sliding: o.sliding ? o.ttl : 0 });
      } else if (o.op === 'delete') {
        void store.delete(key);
        model.delete(o.key);
      } else {
        const want = model.get(o.key);
        const alive = want !== undefined && want.expiry > now();
        const got = store.lookup(key);
        if (got !== null) {
          assert.ok(alive, `${at}: answered ${got} for a key ${want === undefined ? 'deleted or never set' : 'expired'}`);
          assert.equal(got, want.backend, `${at}: the backend`);
        } else if (exact) {
          assert.ok(!alive, `${at}: missed a key bound to ${want?.backend}`);
        }
        // A lookup that finds a sliding binding moves its expiry on; a miss leaves the model's entry to expire.
        if (got !== null && want !== undefined && want.sliding > 0) want.expiry = now() + want.sliding;
      }
    }
  } finally {
    mock.timers.reset();
  }
}

/**
 * One bucket (eight entries): the model keeps its eight ways in order, as
 * the store documents its policy: a key already in a way stays there; a new
 * one takes the first free or expired way, else the first of those closest
 * to expiry. Every lookup then answers exactly what the model says,
 * evictions included.
 */
function runOneBucket(ops: Op[]): void {
  mock.timers.enable({ apis: ['Date'], now: START });
  try {
    const store = new EmbeddedStore(new SharedArrayBuffer(embeddedStoreBytes(8)), () => Math.floor(Date.now() / 1000));
    const ways: ({ key: number } & Entry | null)[] = Array(8).fill(null);
    const now = (): number => Math.floor(Date.now() / 1000);
    for (const [i, o] of ops.entries()) {
      const key = keyOf(o);
      const at = where(i, o, Date.now() - START);
      if (o.op === 'wait') {
        mock.timers.tick(o.ms);
        continue;
      }
      const w = ways.findIndex((x) => x !== null && x.key === o.key);
      if (o.op === 'set') {
        void store.set(key, NAMES[o.backend], o.ttl, o.sliding);
        let v = w;
        if (v < 0) {
          v = ways.findIndex((x) => x === null || x.expiry <= now());
          if (v < 0) v = ways.reduce((best, x, k) => (x!.expiry < ways[best]!.expiry ? k : best), 0);
        }
        ways[v] = { key: o.key, backend: NAMES[o.backend], expiry: now() + o.ttl, sliding: o.sliding ? o.ttl : 0 };
      } else if (o.op === 'delete') {
        void store.delete(key);
        if (w >= 0) ways[w] = null;
      } else {
        const want = w < 0 ? null : ways[w];
        const alive = want !== null && want.expiry > now();
        const got = store.lookup(key);
        assert.equal(got, alive ? want!.backend : null, `${at}: the model's ways: ${JSON.stringify(ways)}`);
        if (alive && want!.sliding > 0) want!.expiry = now() + want!.sliding;
      }
    }
  } finally {
    mock.timers.reset();
  }
}

test('embedded store, one bucket and sixteen keys: evictions follow the documented policy, and every lookup answers the model exactly', () => {
  fc.assert(fc.property(fc.oneof(fc.array(opArb(16), { maxLength: 150, size: 'max' }), fc.array(opArb(16, 30, 1), { maxLength: 150, size: 'max' })), (ops) => {
    runOneBucket(ops);
  }), { numRuns: 1000 });
});

test('embedded store, at most eight keys (nothing evicted): every lookup answers the model exactly', () => {
  fc.assert(fc.property(fc.array(opArb(8), { maxLength: 80, size: 'max' }), fc.constantFrom(1, 8, 64), (ops, entries) => {
    run(ops, entries, true);
  }), { numRuns: 1000 });
});

test('embedded store, many keys in a few buckets: a lookup may miss an evicted key, never answer another binding', () => {
  fc.assert(fc.property(fc.array(opArb(60), { maxLength: 200, size: 'max' }), fc.constantFrom(8, 16, 32), (ops, entries) => {
    run(ops, entries, false);
  }), { numRuns: 500 });
});
