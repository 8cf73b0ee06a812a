// The memcache client against a real memcached: batching semantics, keys,
// expirations, placement over several servers, interop with memjs.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import memjs from 'memjs';
import { startMemcached, type Memcached } from './helpers/memcached.ts';
import { MemcacheClient, MemcacheError, memcacheKey } from '../src/memcache/client.ts';

// Every test and hook has its own deadline, so a hang fails fast instead of stalling the run.
const timeout = 20_000;
const unhandled: unknown[] = [];
process.on('unhandledRejection', (err) => unhandled.push(err));

let mc: Memcached;
let client: MemcacheClient;
const extra: Memcached[] = [];

before(async () => {
  mc = await startMemcached();
  client = new MemcacheClient({ servers: [mc.address], keyPrefix: 't:', timeoutMs: 2000, writeTimeoutMs: 2000 });
}, { timeout });

after(async () => {
  await client.close();
  await Promise.all([mc, ...extra].map((m) => m.stop()));
  assert.deepEqual(unhandled, []);
}, { timeout });

test('hits and misses mixed in one batch', { timeout }, async () => {
  await Promise.all(Array.from({ length: 50 }, (_, i) => client.set(`mix:${i}`, `v${i}`, 0, i)));
  // Issued in one tick: one batch of GETKQs closed by one NOOP.
  const got = await Promise.all(Array.from({ length: 100 }, (_, i) => client.get(`mix:${i}`)));
  got.forEach((hit, i) => {
    if (i < 50) assert.deepEqual(hit, { value: Buffer.from(`v${i}`), flags: i });
    else assert.equal(hit, null);
  });
});

test('set, get, gat, touch, delete semantics', { timeout }, async () => {
  await client.set('sem', Buffer.from([1, 2, 3]), 0, 0xffffffff);
  assert.deepEqual(await client.get('sem'), { value: Buffer.from([1, 2, 3]), flags: 0xffffffff });
  assert.deepEqual(await client.gat('sem', 100), { value: Buffer.from([1, 2, 3]), flags: 0xffffffff });
  assert.equal(await client.gat('sem:none', 100), null);
  assert.equal(await client.touch('sem', 100), true);
  assert.equal(await client.touch('sem:none', 100), false);
  await client.delete('sem');
  await client.delete('sem'); // not found counts as success
  assert.equal(await client.get('sem'), null);
  await client.set('sem:empty', '', 0);
  assert.deepEqual(await client.get('sem:empty'), { value: Buffer.alloc(0), flags: 0 });
  await client.set('sem:utf8', 'sœur', 0);
  assert.equal((await client.get('sem:utf8'))?.value.toString(), 'sœur');
});

test('invalid and over-long keys in the middle of a batch: the others still answer', { timeout }, async () => {
  const keys = ['ok:1', 'k'.repeat(300), 'has space', 'ctl\x01', 'del\x7f', 'ünïcode', '', '#x', 'ok:2'];
  await Promise.all(keys.map((k, i) => client.set(k, `value ${i}`, 0)));
  const got = await Promise.all(keys.map((k) => client.get(k)));
  assert.deepEqual(got.map((h) => h?.value.toString()), keys.map((_, i) => `value ${i}`));
  // The stored key is the mapped one: visible under that name.
  const raw = new MemcacheClient({ servers: [mc.address] });
  try {
    assert.equal((await raw.get(memcacheKey('t:', 'has space')))?.value.toString(), 'value 2');
    assert.equal((await raw.get('t:ok:1'))?.value.toString(), 'value 0');
  } finally {
    await raw.close();
  }
});

test('a server error for one op (value too large) does not disturb its batch', { timeout }, async () => {
  const results = await Promise.allSettled([
    client.set('big:a', 'a', 0),
    client.set('big:huge', Buffer.alloc(2 * 1024 * 1024), 0),
    client.set('big:b', 'b', 0),
    client.get('big:a'),
  ]);
  assert.equal(results[0].status, 'fulfilled');
  assert.equal(results[2].status, 'fulfilled');
  assert.equal(results[1].status, 'rejected');
  const err = (results[1] as PromiseRejectedResult).reason as MemcacheError;
  assert.equal(err.code, 'server');
  assert.equal(err.status, 0x03);
  assert.equal((await client.get('big:b'))?.value.toString(), 'b');
});

test('many ops beyond maxBatch, over two connections', { timeout }, async () => {
  const c = new MemcacheClient({ servers: [mc.address], maxBatch: 64, connectionsPerServer: 2, timeoutMs: 5000, writeTimeoutMs: 5000 });
  try {
    await Promise.all(Array.from({ length: 3000 }, (_, i) => c.set(`many:${i}`, String(i), 0)));
    const got = await Promise.all(Array.from({ length: 3000 }, (_, i) => c.get(`many:${i}`)));
    got.forEach((h, i) => assert.equal(h?.value.toString(), String(i)));
  } finally {
    await c.close();
  }
});

test('opaque wrap-around past 2^32', { timeout }, async () => {
  const c = new MemcacheClient({ servers: [mc.address], opaqueStart: 2 ** 32 - 25, timeoutMs: 5000 });
  try {
    await Promise.all(Array.from({ length: 40 }, (_, i) => c.set(`wrap:${i}`, `w${i}`, 0)));
    for (let round = 0; round < 3; round++) {
      const got = await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 3 === 0 ? c.get(`wrap:none:${i}`) : c.get(`wrap:${i}`))));
      got.forEach((h, i) => assert.equal(h?.value.toString(), i % 3 === 0 ? undefined : `w${i}`));
    }
  } finally {
    await c.close();
  }
});

test('invalid exptime or flags reject before sending', { timeout }, async () => {
  await assert.rejects(client.set('x', 'y', -1), { code: 'invalid' });
  await assert.rejects(client.set('x', 'y', 0, 2 ** 32), { code: 'invalid' });
  await assert.rejects(client.touch('x', 1.5), { code: 'invalid' });
});

test('expiry (relative and absolute) and interop with memjs', { timeout }, async () => {
  const mj = memjs.Client.create(mc.address, { retries: 0, logger: { log: () => {} } });
  const plain = new MemcacheClient({ servers: [mc.address], timeoutMs: 2000 });
  try {
    const now = Math.floor(Date.now() / 1000);
    await Promise.all([
      plain.set('exp:rel', 'r', 2),
      plain.set('exp:abs', 'a', now + 2),    // > 30 days: absolute Unix time
      plain.set('exp:past', 'p', now - 60),  // absolute, already past
      plain.set('exp:never', 'n', 0),
      plain.set('exp:slide', 's', 2),
      plain.set('exp:touched', 't', 2),
      plain.set('interop:ours', 'from ours', 2, 7),
    ]);
    await mj.set('interop:memjs', 'from memjs', { expires: 2 });
    await mj.set('interop:memjs:abs', 'abs from memjs', { expires: now + 2 });

    assert.equal((await plain.get('exp:rel'))?.value.toString(), 'r');
    assert.equal((await plain.get('exp:abs'))?.value.toString(), 'a');
    assert.equal(await plain.get('exp:past'), null);
    assert.deepEqual(await plain.gat('exp:slide', 3600), { value: Buffer.from('s'), flags: 0 });
    assert.equal(await plain.touch('exp:touched', now + 3600), true);
    // memjs reads what we wrote, flags included.
    const fromOurs = await mj.get('interop:ours');
    assert.equal(fromOurs.value?.toString(), 'from ours');
    assert.equal(fromOurs.flags?.readUInt32BE(0), 7);
    // We read what memjs wrote (memjs always writes flags 0).
    assert.deepEqual(await plain.get('interop:memjs'), { value: Buffer.from('from memjs'), flags: 0 });
    assert.equal((await plain.get('interop:memjs:abs'))?.value.toString(), 'abs from memjs');

    await sleep(3200); // memcached's clock ticks in whole seconds
    const after = await Promise.all(
      ['exp:rel', 'exp:abs', 'exp:never', 'exp:slide', 'exp:touched', 'interop:ours', 'interop:memjs', 'interop:memjs:abs'].map((k) => plain.get(k)),
    );
    assert.deepEqual(after.map((h) => h?.value.toString() ?? null), [null, null, 'n', 's', 't', null, null, null]);
    assert.equal((await mj.get('interop:ours')).value, null);
  } finally {
    mj.close();
    await plain.close();
  }
});

test('key distribution over three servers, and what moves when one is removed', { timeout }, async () => {
  const more = await Promise.all([startMemcached(), startMemcached()]);
  extra.push(...more);
  const addrs = [mc.address, more[0].address, more[1].address];
  const keys = Array.from({ length: 3000 }, (_, i) => `dist:${i}`);
  const three = new MemcacheClient({ servers: addrs, timeoutMs: 5000, writeTimeoutMs: 5000 });
  const single = addrs.map((a) => new MemcacheClient({ servers: [a], timeoutMs: 5000 }));
  const two = new MemcacheClient({ servers: [addrs[0], addrs[2]], timeoutMs: 5000 });
  try {
    await Promise.all(keys.map((k) => three.set(k, k, 0)));
    // Each key is on exactly one server, the one serverFor() names.
    const where = await Promise.all(keys.map(async (k) => {
      const found = await Promise.all(single.map((s) => s.get(k)));
      const on = found.flatMap((h, i) => (h === null ? [] : [addrs[i]]));
      assert.deepEqual(on, [three.serverFor(k)]);
      return on[0];
    }));
    for (const a of addrs) {
      const share = where.filter((w) => w === a).length / keys.length;
      assert.ok(share > 0.2 && share < 0.47, `${a} holds ${share}`);
    }
    // Remove the middle server: exactly its keys miss; the rest still hit.
    const got = await Promise.all(keys.map((k) => two.get(k)));
    let moved = 0;
    got.forEach((h, i) => {
      if (where[i] === addrs[1]) { assert.equal(h, null); moved++; } else assert.equal(h?.value.toString(), keys[i]);
    });
    assert.ok(moved / keys.length > 0.2 && moved / keys.length < 0.47, `moved ${moved}`);
  } finally {
    await Promise.all([three, two, ...single].map((c) => c.close()));
  }
});

test('close() settles issued ops, then rejects new ones', { timeout }, async () => {
  const c = new MemcacheClient({ servers: [mc.address], timeoutMs: 2000 });
  const pending = [c.set('close:a', '1', 0), c.get('close:a')];
  await c.close();
  const settled = await Promise.allSettled(pending);
  assert.deepEqual(settled.map((s) => s.status), ['fulfilled', 'fulfilled']);
  await assert.rejects(c.get('close:a'), (e: MemcacheError) => e instanceof MemcacheError && e.code === 'closed');
  await c.close(); // idempotent
});
