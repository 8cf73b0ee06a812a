// The embedded store: one table in shared memory for every thread, bounded,
// expiring by TTL, and safe from a thread that dies inside it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { setTimeout as sleep } from 'node:timers/promises';
import { EmbeddedStore, embeddedStoreBytes } from '../src/store/embedded.ts';
import type { Message, SweepResult } from './fixtures/embedded-worker.ts';

// Store calls are synchronous: a lock that never frees would freeze this file
// for good if the test's own thread made them. So the calls that could hang run
// in a worker, and the test awaits it with a deadline; the per-test timeout
// backs that up.
const timeout = 30_000;
const WAYS = 8; // slots per bucket, as embedded.ts documents

function fresh(entries: number): { memory: SharedArrayBuffer; store: EmbeddedStore } {
  const memory = new SharedArrayBuffer(embeddedStoreBytes(entries));
  return { memory, store: new EmbeddedStore(memory) };
}

function worker(memory: SharedArrayBuffer): Worker {
  return new Worker(new URL('./fixtures/embedded-worker.ts', import.meta.url), { workerData: memory });
}

/** The worker's next message, or a failure naming `what` after ms. */
async function ask<T>(w: Worker, m: Message, what: string, ms = 10_000): Promise<T> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), ms);
  try {
    w.postMessage(m);
    return (await once(w, 'message', { signal: ac.signal }))[0] as T;
  } catch (err) {
    if (!ac.signal.aborted) throw err;
    await w.terminate();
    throw new Error(`${what}: no answer within ${ms} ms (a store call is stuck on a lock)`);
  } finally {
    clearTimeout(timer);
  }
}

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(1);
  }
}

test('a binding set by one thread is found by another', { timeout }, async () => {
  const { memory, store } = fresh(1024);
  const workers = [worker(memory), worker(memory)];
  try {
    assert.equal(await ask(workers[0], { op: 'set', key: 'PHPSESSID:t1', backend: 'srv2' }, 'set'), 'ok');
    assert.equal(await ask(workers[1], { op: 'get', key: 'PHPSESSID:t1' }, 'get'), 'srv2');
    assert.equal(await store.get('PHPSESSID:t1'), 'srv2', 'and by the main thread');
    await store.set('PHPSESSID:t2', 'srv1', 60, false);
    assert.equal(await ask(workers[0], { op: 'get', key: 'PHPSESSID:t2' }, 'get'), 'srv1');
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
});

test('set, overwrite, delete', { timeout }, async () => {
  const { store } = fresh(1024);
  assert.equal(await store.get('k'), null);
  await store.set('k', 'a', 60, false);
  await store.set('k', 'bee', 60, false);
  assert.equal(await store.get('k'), 'bee');
  await store.delete('k');
  assert.equal(await store.get('k'), null);
});

test('a lookup answers its own backend name, among more names alike than a thread keeps (64)', { timeout }, async () => {
  const { store } = fresh(4096);
  // Names of one length differing in one byte, first, middle or last, and
  // more of them than the thread keeps: an answer must never be a kept name
  // that only looks alike.
  const names: string[] = [];
  for (let i = 0; i < 150; i++) {
    const n = String(i).padStart(3, '0');
    names.push(i % 3 === 0 ? `${n}-backend` : i % 3 === 1 ? `backend-${n}` : `back${n}end`);
  }
  for (let i = 0; i < names.length; i++) await store.set(`PHPSESSID:k${i}`, names[i], 60, false);
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < names.length; i++) assert.equal(store.lookup(`PHPSESSID:k${i}`), names[i], `key ${i}, round ${round}`);
  }
});

test('bounded: far more keys than entries keep exactly its capacity, evicting the closest to expiry', { timeout }, async () => {
  const { store } = fresh(64);
  const n = 5000;
  // Later keys live longer, so each bucket keeps its newest WAYS keys.
  for (let i = 0; i < n; i++) await store.set(`k${i}`, `b${i}`, 60 + i, false);
  let found = 0;
  for (let i = 0; i < n; i++) {
    const got = await store.get(`k${i}`);
    if (got === null) continue;
    assert.equal(got, `b${i}`);
    found++;
  }
  // 5000 keys over 8 buckets fill every slot, and a table that grew or kept
  // another copy would hold more.
  assert.equal(found, 64);
  // The last WAYS keys are the newest in whatever buckets they fell in.
  for (let i = n - WAYS; i < n; i++) assert.equal(await store.get(`k${i}`), `b${i}`, `k${i}`);
});

test('bindings expire by TTL; sliding ones are refreshed by use', { timeout }, async () => {
  const { store } = fresh(1024);
  await store.set('fixed', 'a', 1, false);
  await store.set('slide', 'a', 2, true);
  for (let i = 0; i < 6; i++) {
    await sleep(500);
    assert.ok(await store.get('slide'), `sliding binding alive at ${(i + 1) * 0.5}s`);
  }
  assert.equal(await store.get('fixed'), null);
});

test('a thread that died holding every lock and halfway through rewriting names blocks nothing and leaks no torn name', { timeout }, async () => {
  const entries = 512; // 64 buckets: 64 keys fit without eviction
  const buckets = entries / WAYS;
  const { memory, store } = fresh(entries);
  const keys = Array.from({ length: 64 }, (_, i) => `JSESSIONID:${i}`);
  const names = keys.map((_, i) => `srv-${String(i).padStart(2, '0')}-abcdefghij`);
  for (let i = 0; i < keys.length; i++) await store.set(keys[i], names[i], 600, i % 3 === 0);
  const torn = new Set(keys.filter((_, i) => i % 2 === 0));
  const dying = worker(memory);
  assert.equal(await ask(dying, { op: 'wreck', buckets, tear: names.filter((_, i) => torn.has(keys[i])) }, 'wreck'), 'wrecked');
  await dying.terminate();

  const prober = worker(memory);
  try {
    const r = await ask<SweepResult>(prober, { op: 'sweep', keys }, 'get/set/delete on every bucket after the holder died');
    keys.forEach((k, i) => {
      assert.equal(r.answers[i], torn.has(k) ? null : names[i], `${k}${torn.has(k) ? ' (torn)' : ''}`);
      assert.ok(r.roundTrips[i], `${k}: set, get, delete`);
    });
  } finally {
    await prober.terminate();
  }
});

test('workers terminated in the middle of writes leave no stuck lock and no torn binding', { timeout: 60_000 }, async () => {
  const { memory } = fresh(64); // 8 buckets, so writes collide constantly
  const keys = Array.from({ length: 500 }, (_, i) => `connect.sid:s%3A${i}`);
  // Lengths vary, so a slot mixing two bindings' words shows as a wrong name.
  const names = keys.map((_, i) => `n${i}-${'abcdefghijklmnopqrstuvwxyz0123456789'.slice(0, i % 37)}`);
  const prober = worker(memory);
  try {
    for (let round = 0; round < 40; round++) {
      const progress = new SharedArrayBuffer(4);
      const counter = new Int32Array(progress);
      const hammer = worker(memory);
      hammer.postMessage({ op: 'hammer', keys, names, progress } satisfies Message);
      const target = 2000 + Math.floor(Math.random() * 20_000);
      await until(() => Atomics.load(counter, 0) >= target, `the hammer's ${target} operations`);
      await hammer.terminate();

      const r = await ask<SweepResult>(prober, { op: 'sweep', keys }, `round ${round}: get/set/delete on every bucket`);
      keys.forEach((k, i) => {
        if (r.answers[i] !== null) assert.equal(r.answers[i], names[i], `round ${round}: ${k}`);
        assert.ok(r.roundTrips[i], `round ${round}: ${k}: set, get, delete`);
      });
    }
  } finally {
    await prober.terminate();
  }
});
