// Model-based property test of the batched, pipelined memcache client against
// a real memcached. A random program is a sequence of ticks; each tick issues
// 1..20 operations synchronously (one batch, split when it exceeds the small
// maxBatch), and between ticks the program either awaits the tick's results,
// yields one event-loop turn (the batch is written, its replies still in
// flight), or goes straight on (the next tick joins the same batch). With one
// connection memcached applies the ops in issue order, so every result must
// equal what a Map applied in issue order predicts. At the end memjs, the
// reference peer, must read the model's final value under each wire key.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import memjs from 'memjs';
import { startMemcached, type Memcached } from './helpers/memcached.ts';
import { MemcacheClient, memcacheKey, type Hit } from '../src/memcache/client.ts';

const timeout = 120_000;
const unhandled: unknown[] = [];
process.on('unhandledRejection', (err) => unhandled.push(err));

// Plain keys, and keys memcached would reject that keys.ts hashes: space,
// over 250 bytes, non-ASCII, a leading '#'.
const KEYS = ['a', 'b:1', 'has space', 'k'.repeat(300), '#mark', 'ünï'];
const EXPTIME = 86_400; // relative, a day: nothing expires during the test
const MAX_BATCH = 5;
const BIG = 1_000_000; // close to memcached's 1 MiB item limit, still stored

type Val = { len: number; seed: number; flags: number };
type Operation =
  | { op: 'set'; key: number; val: Val }
  | { op: 'get'; key: number }
  | { op: 'gat'; key: number }
  | { op: 'delete'; key: number }
  | { op: 'touch'; key: number };
type Between = 'await' | 'yield' | 'none';
type Tick = { ops: Operation[]; then: Between };

function bytes(v: Val): Buffer {
  const b = Buffer.allocUnsafe(v.len);
  for (let i = 0; i < v.len; i++) b[i] = (v.seed + i * 7 + (i >> 8)) & 0xff;
  return b;
}

const keyArb = fc.integer({ min: 0, max: KEYS.length - 1 });
const valArb: fc.Arbitrary<Val> = fc.record({
  len: fc.oneof(
    { weight: 20, arbitrary: fc.integer({ min: 0, max: 2000 }) },
    { weight: 1, arbitrary: fc.constantFrom(BIG, 64 * 1024) },
  ),
  seed: fc.integer({ min: 0, max: 255 }),
  flags: fc.oneof(fc.constant(0), fc.nat({ max: 0xffffffff })),
});
const opArb: fc.Arbitrary<Operation> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ op: fc.constant('set' as const), key: keyArb, val: valArb }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('get' as const), key: keyArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('gat' as const), key: keyArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('delete' as const), key: keyArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('touch' as const), key: keyArb }) },
);
const tickArb: fc.Arbitrary<Tick> = fc.record({
  ops: fc.array(opArb, { minLength: 1, maxLength: 20, size: 'max' }),
  then: fc.constantFrom<Between>('await', 'yield', 'none'),
});
const programArb = fc.array(tickArb, { minLength: 1, maxLength: 10, size: 'max' });

function describeHit(h: Hit | null): string {
  return h === null ? 'miss' : `hit(len=${h.value.length}, flags=${h.flags})`;
}

let mc: Memcached;
let mj: memjs.Client;
let run = 0;

before(async () => {
  mc = await startMemcached();
  mj = memjs.Client.create(mc.address, { retries: 0, timeout: 5, logger: { log: () => {} } });
}, { timeout });

after(async () => {
  mj?.close();
  await mc?.stop();
  assert.deepEqual(unhandled, []);
}, { timeout });

test('random pipelined programs match a Map model, and memjs agrees', { timeout }, async () => {
  await fc.assert(fc.asyncProperty(programArb, async (program) => {
    const prefix = `m${run++}:`;
    const client = new MemcacheClient({
      servers: [mc.address], keyPrefix: prefix, connectionsPerServer: 1, maxBatch: MAX_BATCH,
      timeoutMs: 2000, writeTimeoutMs: 2000,
    });
    const model = new Map<number, Val>();
    const checks: Promise<void>[] = [];
    let seq = 0;
    const failures: string[] = [];
    const expect = <T>(p: Promise<T>, what: string, ok: (v: T) => string | null): Promise<void> =>
      p.then((v) => { const e = ok(v); if (e !== null) failures.push(`${what}: ${e}`); },
        (err: unknown) => { failures.push(`${what}: rejected ${String(err)}`); });
    try {
      for (const tick of program) {
        const tickChecks: Promise<void>[] = [];
        for (const o of tick.ops) {
          const key = KEYS[o.key];
          const what = `#${seq++} ${o.op}(${o.key})`;
          const cur = model.get(o.key);
          switch (o.op) {
            case 'set':
              model.set(o.key, o.val);
              tickChecks.push(expect(client.set(key, bytes(o.val), EXPTIME, o.val.flags), what,
                (v) => (v === undefined ? null : `resolved ${String(v)}`)));
              break;
            case 'get':
            case 'gat': {
              const p = o.op === 'get' ? client.get(key) : client.gat(key, EXPTIME);
              tickChecks.push(expect(p, what, (h) => {
                if (cur === undefined) return h === null ? null : `expected miss, got ${describeHit(h)}`;
                if (h === null) return `expected hit(len=${cur.len}, flags=${cur.flags}), got miss`;
                if (h.flags !== cur.flags || !h.value.equals(bytes(cur))) {
                  return `expected hit(len=${cur.len}, flags=${cur.flags}, seed=${cur.seed}), got ${describeHit(h)}`;
                }
                return null;
              }));
              break;
            }
            case 'delete':
              model.delete(o.key);
              tickChecks.push(expect(client.delete(key), what, (v) => (v === undefined ? null : `resolved ${String(v)}`)));
              break;
            case 'touch':
              tickChecks.push(expect(client.touch(key, EXPTIME), what,
                (v) => (v === (cur !== undefined) ? null : `expected ${cur !== undefined}, got ${String(v)}`)));
              break;
          }
        }
        checks.push(...tickChecks);
        if (tick.then === 'await') await Promise.all(tickChecks);
        else if (tick.then === 'yield') await new Promise<void>((r) => setImmediate(r));
      }
      await Promise.all(checks);
      assert.deepEqual(failures, []);
      // The reference peer sees the model's final state under each wire key.
      for (let i = 0; i < KEYS.length; i++) {
        const wire = memcacheKey(prefix, KEYS[i]);
        const got = await mj.get(wire);
        const want = model.get(i);
        if (want === undefined) {
          assert.equal(got.value, null, `memjs: ${JSON.stringify(wire)} should be missing`);
        } else {
          assert.ok(got.value !== null && Buffer.from(got.value).equals(bytes(want)), `memjs: value of ${JSON.stringify(wire)}`);
          assert.equal(got.flags?.readUInt32BE(0), want.flags, `memjs: flags of ${JSON.stringify(wire)}`);
        }
      }
      // Free the big items (through memjs: the client under test has been
      // judged) so the 64 MB memcached never evicts during the run.
      for (const k of KEYS) await mj.delete(memcacheKey(prefix, k));
    } finally {
      await client.close();
    }
  }), { numRuns: 400 });
});
