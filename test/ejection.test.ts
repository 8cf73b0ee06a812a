// Passive ejection decided by several event loops at once (the shared state's
// eject, as Health.failure calls it): loops that see their backends fail at
// the same moment must not together take the pool's last backend that is up,
// nor more than --max-ejection-percent of it. Worker threads stand for the
// loops, each ejecting its own backend in the same instant, round after round.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { LIVE_EJECTED, LIVE_UP, SharedState, sharedMemory } from '../src/shared.ts';

const ROUNDS = 3000;
const FIXTURE = new URL('./fixtures/ejector.ts', import.meta.url);

async function race(backends: number, loops: number, maxPercent: number): Promise<number[]> {
  const memory = sharedMemory();
  const state = new SharedState(memory, 0);
  const slots = Array.from({ length: backends }, (_, i) => i);
  const control = new SharedArrayBuffer(12);
  const c = new Int32Array(control);
  const workers = Array.from({ length: loops }, (_, k) => new Worker(FIXTURE, {
    workerData: { memory, control, slot: k % backends, slots, maxPercent, loop: k + 1 },
  }));
  // Ejected backends after each round.
  const out: number[] = [];
  try {
    await Promise.all(workers.map((w) => once(w, 'online')));
    for (let round = 0; round < ROUNDS; round++) {
      for (const s of slots) state.claim(s, 1);
      Atomics.store(c, 1, 0);
      Atomics.add(c, 0, 1);
      while (Atomics.load(c, 1) < loops) Atomics.wait(c, 1, Atomics.load(c, 1), 1000);
      out.push(slots.filter((s) => state.liveness(s) === LIVE_EJECTED).length);
      assert.ok(slots.every((s) => [LIVE_UP, LIVE_EJECTED].includes(state.liveness(s))));
    }
  } finally {
    Atomics.store(c, 2, 1);
    await Promise.all(workers.map((w) => once(w, 'exit')));
  }
  return out;
}

test('two loops ejecting the two backends of a pool at once leave one up, every time', { timeout: 60_000 }, async () => {
  const ejected = await race(2, 2, 100);
  assert.equal(Math.max(...ejected), 1, `both backends ejected in ${ejected.filter((n) => n === 2).length} of ${ROUNDS} rounds`);
});

test('two loops ejecting two of three backends at once take at most --max-ejection-percent (50): one', { timeout: 60_000 }, async () => {
  const ejected = await race(3, 2, 50);
  assert.equal(Math.max(...ejected), 1, `two of three ejected in ${ejected.filter((n) => n > 1).length} of ${ROUNDS} rounds`);
  assert.ok(ejected.every((n) => n === 1), 'one may always go');
});
