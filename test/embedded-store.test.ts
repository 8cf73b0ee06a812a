// The embedded store: one table in shared memory for every thread, bounded,
// expiring by TTL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { setTimeout as sleep } from 'node:timers/promises';
import { EmbeddedStore, embeddedStoreBytes } from '../src/store/embedded.ts';

function fresh(entries: number): { memory: SharedArrayBuffer; store: EmbeddedStore } {
  const memory = new SharedArrayBuffer(embeddedStoreBytes(entries));
  return { memory, store: new EmbeddedStore(memory) };
}

test('a binding set by one thread is found by another', async () => {
  const { memory, store } = fresh(1024);
  const workers = [0, 1].map(() => new Worker(new URL('./fixtures/embedded-worker.ts', import.meta.url), { workerData: memory }));
  try {
    const ask = async (w: Worker, m: object): Promise<unknown> => { w.postMessage(m); return (await once(w, 'message'))[0]; };
    assert.equal(await ask(workers[0], { op: 'set', key: 'PHPSESSID:t1', backend: 'srv2' }), 'ok');
    assert.equal(await ask(workers[1], { op: 'get', key: 'PHPSESSID:t1' }), 'srv2');
    assert.equal(await store.get('PHPSESSID:t1'), 'srv2', 'and by the main thread');
    await store.set('PHPSESSID:t2', 'srv1', 60, false);
    assert.equal(await ask(workers[0], { op: 'get', key: 'PHPSESSID:t2' }), 'srv1');
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
});

test('set, overwrite, delete', async () => {
  const { store } = fresh(1024);
  assert.equal(await store.get('k'), null);
  await store.set('k', 'a', 60, false);
  await store.set('k', 'bee', 60, false);
  assert.equal(await store.get('k'), 'bee');
  await store.delete('k');
  assert.equal(await store.get('k'), null);
});

test('bounded: a full table evicts instead of growing', async () => {
  const { memory, store } = fresh(64);
  const bytes = memory.byteLength;
  for (let i = 0; i < 5000; i++) await store.set(`k${i}`, 'b', 60 + i, false);
  let found = 0;
  for (let i = 0; i < 5000; i++) if (await store.get(`k${i}`)) found++;
  assert.equal(memory.byteLength, bytes);
  assert.ok(found <= 64 && found > 32, `found ${found}`);
  assert.ok(await store.get('k4999'), 'the newest binding survives');
});

test('bindings expire by TTL; sliding ones are refreshed by use', async () => {
  const { store } = fresh(1024);
  await store.set('fixed', 'a', 1, false);
  await store.set('slide', 'a', 2, true);
  for (let i = 0; i < 6; i++) {
    await sleep(500);
    assert.ok(await store.get('slide'), `sliding binding alive at ${(i + 1) * 0.5}s`);
  }
  assert.equal(await store.get('fixed'), null);
});
