// How responses' Set-Cookie headers become bindings, read back from memcached
// over its own text protocol: key format, lifetimes, sliding, clearing.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { inspect, startMemcached, type Memcached } from './helpers/memcached.ts';
import { startOrigin, backendFlags, type Origin } from './helpers/origins.ts';
import { get, startProxy, type ProxyProcess } from './helpers/proxy.ts';

let origins: Origin[] = [];
let mc: Memcached;
let proxy: ProxyProcess;
const prefix = `sc-${process.pid}:`;

before(async () => {
  origins = [await startOrigin('one'), await startOrigin('two')];
  mc = await startMemcached();
  proxy = await startProxy([...backendFlags(origins), '--memcache', mc.address, '--key-prefix', prefix, '--default-ttl', '3', '--max-ttl', '7200']);
});
after(async () => {
  await proxy.stop();
  await Promise.all(origins.map((o) => o.close()));
  await mc.stop();
});

/** Asks the origin to answer with these Set-Cookie headers; returns the backend that answered. */
async function respondWith(setCookies: string[], cookie?: string): Promise<string> {
  const headers: Record<string, string> = { 'x-set-cookie': JSON.stringify(setCookies) };
  if (cookie) headers.cookie = cookie;
  const r = await get(proxy.url, undefined, headers);
  assert.equal(r.status, 200);
  assert.deepEqual(r.headers['set-cookie'] ?? [], setCookies.length === 1 ? setCookies[0] : setCookies.length ? setCookies : [],
    'Set-Cookie headers reach the client separately and unchanged');
  return r.headers['x-backend'] as string;
}

test('key format: prefix, cookie name, raw id; value: the backend name', async () => {
  const backend = await respondWith(['connect.sid=s%3Aabc.sig; Path=/; Max-Age=600; HttpOnly']);
  const item = await inspect(mc.port, `${prefix}connect.sid:s%3Aabc.sig`);
  assert.equal(item?.value, backend);
  assert.equal(item?.flags, 0, 'fixed expiry: no sliding TTL in flags');
});

test('several Set-Cookie headers in one response; for one name, the last counts', async () => {
  await respondWith([
    'theme=dark; Path=/',
    'PHPSESSID=first; Max-Age=600',
    'JSESSIONID=j1; Max-Age=600',
    'PHPSESSID=second; Max-Age=600',
  ]);
  assert.equal(await inspect(mc.port, `${prefix}PHPSESSID:first`), null);
  assert.ok(await inspect(mc.port, `${prefix}PHPSESSID:second`));
  assert.ok(await inspect(mc.port, `${prefix}JSESSIONID:j1`));
  assert.equal(await inspect(mc.port, `${prefix}theme:dark`), null);
});

test('Max-Age wins over Expires; Expires alone is used; both are capped by --max-ttl', async () => {
  const soon = new Date(Date.now() + 100_000).toUTCString();
  await respondWith([`PHPSESSID=maxage; Expires=${soon}; Max-Age=1000`]);
  await respondWith([`PHPSESSID=expires; Expires=${soon}`]);
  await respondWith(['PHPSESSID=capped; Max-Age=999999']);
  const m = await inspect(mc.port, `${prefix}PHPSESSID:maxage`);
  const e = await inspect(mc.port, `${prefix}PHPSESSID:expires`);
  const c = await inspect(mc.port, `${prefix}PHPSESSID:capped`);
  assert.ok(m!.ttl > 990 && m!.ttl <= 1000, `max-age ttl ${m!.ttl}`);
  assert.ok(e!.ttl > 90 && e!.ttl <= 101, `expires ttl ${e!.ttl}`);
  assert.ok(c!.ttl > 7190 && c!.ttl <= 7200, `capped ttl ${c!.ttl}`);
});

test('a cookie without an expiry gets --default-ttl, and use keeps it alive', async () => {
  const backend = await respondWith(['ASP.NET_SessionId=slide; path=/; HttpOnly']);
  const key = `${prefix}ASP.NET_SessionId:slide`;
  const item = await inspect(mc.port, key);
  assert.equal(item?.flags, 3, 'flags carry the sliding TTL');
  // 4.5 s of use outlives the 3 s TTL.
  for (let i = 0; i < 9; i++) {
    await sleep(500);
    const r = await get(proxy.url, undefined, { cookie: 'ASP.NET_SessionId=slide' });
    assert.equal(r.headers['x-backend'], backend);
  }
  assert.ok(await inspect(mc.port, key), 'still bound after more than its TTL, thanks to use');
  await sleep(3500);
  assert.equal(await inspect(mc.port, key), null, 'gone once unused for its TTL');
});

test('a cleared cookie removes the binding: Max-Age=0, or an Expires in the past', async () => {
  const backend = await respondWith(['PHPSESSID=gone1; Max-Age=600']);
  await respondWith(['PHPSESSID=gone2; Max-Age=600']);
  assert.ok(await inspect(mc.port, `${prefix}PHPSESSID:gone1`));
  const r = await get(proxy.url, undefined, { cookie: 'PHPSESSID=gone1', 'x-set-cookie': JSON.stringify(['PHPSESSID=; Max-Age=0']) });
  assert.equal(r.headers['x-backend'], backend);
  assert.equal(await inspect(mc.port, `${prefix}PHPSESSID:gone1`), null);
  await respondWith(['PHPSESSID=gone2; Expires=Thu, 01 Jan 1970 00:00:00 GMT'], 'PHPSESSID=gone2');
  assert.equal(await inspect(mc.port, `${prefix}PHPSESSID:gone2`), null);
});

test('ids memcached would reject are hashed into a safe key, and still stick', async () => {
  const long = 'x'.repeat(400);
  const backend = await respondWith([`JSESSIONID=${long}; Max-Age=600`]);
  for (let i = 0; i < 4; i++) {
    const r = await get(proxy.url, undefined, { cookie: `JSESSIONID=${long}` });
    assert.equal(r.headers['x-backend'], backend);
  }
});

test('a client cannot create a binding by sending cookies', async () => {
  await get(proxy.url, undefined, { cookie: 'PHPSESSID=client-made' });
  assert.equal(await inspect(mc.port, `${prefix}PHPSESSID:client-made`), null);
});

test('lifetimes beyond 30 days are sent as absolute times, as memcached reads them', async () => {
  const long = await startProxy([...backendFlags(origins), '--memcache', mc.address, '--key-prefix', prefix, '--max-ttl', String(90 * 86400)]);
  try {
    const r = await get(long.url, undefined, { 'x-set-cookie': JSON.stringify([`PHPSESSID=longlived; Max-Age=${60 * 86400}`]) });
    assert.equal(r.status, 200);
    const item = await inspect(mc.port, `${prefix}PHPSESSID:longlived`);
    assert.ok(item !== null, 'not expired at once');
    assert.ok(Math.abs(item.ttl - 60 * 86400) < 10, `ttl ${item.ttl}`);
  } finally {
    await long.stop();
  }
});
