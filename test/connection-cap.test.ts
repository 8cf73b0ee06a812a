// --max-connections is one cap for the whole process: event loops accepting
// at the same moment, on their own cores, never take more places than it
// leaves. Real threads (test/fixtures/admitter.ts) race for the last place.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { SharedState, sharedMemory } from '../src/shared.ts';

const ROUNDS = 3000;
const FIXTURE = new URL('./fixtures/admitter.ts', import.meta.url);

test('two loops taking the last place under --max-connections at once: never both get it', { timeout: 60_000 }, async () => {
  const memory = sharedMemory();
  const loops = 2;
  const max = 5;
  // The main thread's loop holds all but one place.
  const state = new SharedState(memory, 0);
  for (let i = 0; i < max - 1; i++) assert.ok(state.admit(max));
  const control = new SharedArrayBuffer(16);
  const c = new Int32Array(control);
  const workers = Array.from({ length: loops }, (_, k) => new Worker(FIXTURE, { workerData: { memory, control, max, loop: k + 1 } }));
  const admitted: number[] = [];
  try {
    await Promise.all(workers.map((w) => once(w, 'online')));
    for (let round = 0; round < ROUNDS; round++) {
      for (let k = 1; k <= loops; k++) state.clearLoop(k);
      Atomics.store(c, 1, 0);
      Atomics.store(c, 3, 0);
      Atomics.add(c, 0, 1);
      while (Atomics.load(c, 1) < loops) Atomics.wait(c, 1, Atomics.load(c, 1), 1000);
      admitted.push(Atomics.load(c, 3));
      assert.ok(state.openConnections <= max);
    }
  } finally {
    Atomics.store(c, 2, 1);
    await Promise.all(workers.map((w) => once(w, 'exit')));
  }
  assert.equal(Math.max(...admitted), 1, `both admitted past the cap in ${admitted.filter((n) => n === 2).length} of ${ROUNDS} rounds`);
  assert.ok(admitted.filter((n) => n === 1).length > ROUNDS / 2, `the place is taken in most rounds: ${admitted.filter((n) => n === 1).length} of ${ROUNDS}`);
});
