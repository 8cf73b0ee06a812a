// The near cache's shared table: readers take no lock, so a read racing a
// write must see the old binding, the new one, or none, never a mix of two;
// and with a fresh lifetime of 0, a racing write never makes an entry fresh.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { NearCache, nearCacheBytes } from '../src/near-cache.ts';
import type { WriterData } from './fixtures/near-cache-writer.ts';
import { waitFor } from './helpers/wait.ts';

test('a read racing writes in another thread never answers another key\'s backend', { timeout: 30_000 }, async () => {
  // 16 entries (4 buckets of 4 ways) and 200 keys of one length: every set
  // evicts, so slots are rewritten with other keys under the readers' eyes.
  const entries = 16;
  const backends = ['srv0', 'srv1', 'srv2'];
  const keys = Array.from({ length: 200 }, (_, i) => `PHPSESSID:${String(i).padStart(4, '0')}${'x'.repeat(60)}`);
  const data: WriterData = { memory: new SharedArrayBuffer(nearCacheBytes(entries)), entries, keys, backends, ops: new SharedArrayBuffer(4) };
  const slots = { slotOf: (n: string) => backends.indexOf(n), nameOf: (i: number) => backends[i] ?? '' };
  const cache = new NearCache(data.memory, entries, 60_000, 60_000, slots);
  const writers = [new Worker(new URL('./fixtures/near-cache-writer.ts', import.meta.url), { workerData: data })];
  try {
    const ops = new Int32Array(data.ops);
    await waitFor(() => Atomics.load(ops, 0) > 10_000, { what: 'the writer to be running', timeoutMs: 10_000 });
    let hits = 0;
    const wrong: string[] = [];
    const end = Date.now() + 1500;
    while (Date.now() < end && wrong.length < 5) {
      for (let i = 0; i < keys.length; i++) {
        if (!cache.get(keys[i], Date.now())) continue;
        hits++;
        if (cache.backend !== backends[i % 3]) wrong.push(`key ${i}: ${cache.backend}`);
      }
    }
    assert.deepEqual(wrong, []);
    // Not vacuous: reads found bindings while the writer ran.
    assert.ok(hits > 1000, `${hits} hits`);
    assert.ok(Atomics.load(ops, 0) > 100_000, `${Atomics.load(ops, 0)} writes`);
  } finally {
    await Promise.all(writers.map((w) => w.terminate()));
  }
});

test('with --near-cache-ttl 0 nothing is fresh, even an entry another thread wrote after the lookup read its clock', () => {
  const backends = ['srv0', 'srv1'];
  const slots = { slotOf: (n: string) => backends.indexOf(n), nameOf: (i: number) => backends[i] ?? '' };
  const cache = new NearCache(new SharedArrayBuffer(nearCacheBytes(64)), 64, 0, 60_000, slots);
  const now = Date.now();
  // Written by another loop a few milliseconds after this lookup's `now` was read.
  cache.set('PHPSESSID:late', 'srv1', now + 5);
  assert.ok(cache.get('PHPSESSID:late', now), 'remembered (it serves while memcached is down)');
  assert.equal(cache.backend, 'srv1');
  assert.ok(!(cache.freshUntil > now), `not fresh: fresh until ${cache.freshUntil}, now ${now}`);
});
