// Balancers over in-memory backends: weights, down backends, load.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Backend } from '../src/backends.ts';
import { LeastConn, RandomTwo, RoundRobin } from '../src/balance.ts';
import { Deadlines } from '../src/deadlines.ts';
import { SharedState, sharedMemory } from '../src/shared.ts';

const UPSTREAM = { connections: 1, connectTimeoutMs: 1000, idleTimeoutMs: 1000, queueMax: 1, queueTimeoutMs: 1000, ca: null };
const DEADLINES = new Deadlines(100);

let state: SharedState;

function backends(weights: number[]): Backend[] {
  state = new SharedState(sharedMemory(), 0);
  return weights.map((w, i) => {
    state.claim(i, w);
    return new Backend({ name: `b${i}`, url: new URL(`http://127.0.0.1:${1000 + i}`), weight: w, slot: i }, UPSTREAM, DEADLINES, state);
  });
}

/** What failing health checks do: the backend's shared liveness goes down. */
function down(b: Backend): void {
  state.setHealthy(b.slot, false);
}

function tally(pick: () => Backend | null, n: number): Record<string, number> {
  const t: Record<string, number> = {};
  for (let i = 0; i < n; i++) { const b = pick(); const k = b?.name ?? 'none'; t[k] = (t[k] ?? 0) + 1; }
  return t;
}

test('round robin honours weights and interleaves picks', () => {
  const bs = backends([3, 1, 0]);
  const rr = new RoundRobin(bs, () => state.ticket());
  const seq = Array.from({ length: 8 }, () => rr.pick()!.name);
  assert.deepEqual(tally(() => rr.pick(), 400), { b0: 300, b1: 100 });
  assert.ok(!seq.join(',').includes('b0,b0,b0,b0'), `smooth: ${seq}`);
});

test('round robin with large weights: one cycle gives each backend its weight, spread out', () => {
  const weights = [1000, 999, 998, 1];
  const bs = backends(weights);
  const rr = new RoundRobin(bs, () => state.ticket());
  const seq = Array.from({ length: 2998 }, () => rr.pick()!.name);
  const t: Record<string, number> = {};
  for (const name of seq) t[name] = (t[name] ?? 0) + 1;
  assert.deepEqual(t, { b0: 1000, b1: 999, b2: 998, b3: 1 });
  // Three near-equal weights take turns: never one of them three times running.
  for (let i = 2; i < seq.length; i++) assert.ok(!(seq[i] === seq[i - 1] && seq[i] === seq[i - 2]), `${seq[i]} thrice at ${i}`);
});

test('round robin skips backends that are down and answers null when none is up', () => {
  const bs = backends([1, 1]);
  const rr = new RoundRobin(bs, () => state.ticket());
  down(bs[0]);
  assert.deepEqual(tally(() => rr.pick(), 10), { b1: 10 });
  down(bs[1]);
  assert.equal(rr.pick(), null);
});

test('round robin is one rotation for the process: two loops sharing the state take turns', () => {
  const memory = sharedMemory();
  const loops = [0, 1].map((loop) => {
    const s = new SharedState(memory, loop);
    const bs = [0, 1, 2].map((i) => {
      if (loop === 0) s.claim(i, 1);
      return new Backend({ name: `b${i}`, url: new URL(`http://127.0.0.1:${1000 + i}`), weight: 1, slot: i }, UPSTREAM, DEADLINES, s);
    });
    return new RoundRobin(bs, () => s.ticket());
  });
  // Requests alternate between the loops, as the kernel spreads connections:
  // one rotation means no backend twice in a row.
  const picks = Array.from({ length: 6 }, (_, i) => loops[i % 2].pick()!.name);
  for (let i = 1; i < picks.length; i++) assert.notEqual(picks[i], picks[i - 1], picks.join(','));
  assert.equal(new Set(picks.slice(0, 3)).size, 3, picks.join(','));
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
  down(bs[1]);
  assert.deepEqual(tally(() => r2.pick(), 10), { b0: 10 });
});
