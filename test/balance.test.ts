// Balancers over in-memory backends: weights, down backends, load.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Backend } from '../src/backends.ts';
import { LeastConn, RandomTwo, RoundRobin } from '../src/balance.ts';
import { Deadlines } from '../src/deadlines.ts';

const UPSTREAM = { connections: 1, connectTimeoutMs: 1000, idleTimeoutMs: 1000, queueMax: 1, queueTimeoutMs: 1000, ca: null };
const DEADLINES = new Deadlines(100);

function backends(weights: number[]): Backend[] {
  return weights.map((w, i) => new Backend({ name: `b${i}`, url: new URL(`http://127.0.0.1:${1000 + i}`), weight: w }, UPSTREAM, DEADLINES));
}

function tally(pick: () => Backend | null, n: number): Record<string, number> {
  const t: Record<string, number> = {};
  for (let i = 0; i < n; i++) { const b = pick(); const k = b?.name ?? 'none'; t[k] = (t[k] ?? 0) + 1; }
  return t;
}

test('round robin honours weights and interleaves picks', () => {
  const bs = backends([3, 1, 0]);
  const rr = new RoundRobin(bs);
  const seq = Array.from({ length: 8 }, () => rr.pick()!.name);
  assert.deepEqual(tally(() => rr.pick(), 400), { b0: 300, b1: 100 });
  assert.ok(!seq.join(',').includes('b0,b0,b0,b0'), `smooth: ${seq}`);
});

test('round robin skips backends that are down and answers null when none is up', () => {
  const bs = backends([1, 1]);
  const rr = new RoundRobin(bs);
  bs[0].healthy = false; bs[0].refresh();
  assert.deepEqual(tally(() => rr.pick(), 10), { b1: 10 });
  bs[1].healthy = false; bs[1].refresh();
  assert.equal(rr.pick(), null);
});

test('least-conn picks the fewest in flight per weight', () => {
  const bs = backends([1, 2]);
  const lc = new LeastConn(bs);
  bs[0].active = 2;
  bs[1].active = 3; // 1.5 per weight against 2
  assert.equal(lc.pick()!.name, 'b1');
  bs[1].active = 5;
  assert.equal(lc.pick()!.name, 'b0');
  bs[0].active = 0; bs[1].active = 0;
  assert.deepEqual(tally(() => lc.pick(), 10), { b0: 5, b1: 5 }, 'ties go round');
});

test('random-two follows weights when idle and prefers the less loaded', () => {
  const bs = backends([3, 1]);
  const r2 = new RandomTwo(bs);
  // Idle and equal load: the first draw wins, so picks follow the weights.
  const t = tally(() => r2.pick(), 4000);
  assert.ok(t.b0 > 2600 && t.b0 < 3400, JSON.stringify(t));
  bs[0].active = 100;
  const loaded = tally(() => r2.pick(), 100);
  assert.equal(loaded.b1, 100, 'with two candidates the idle one always wins');
  bs[1].healthy = false; bs[1].refresh();
  assert.deepEqual(tally(() => r2.pick(), 10), { b0: 10 });
});
