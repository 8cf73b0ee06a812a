// How responses' Set-Cookie headers become bindings, read back from memcached
// over its own text protocol: key format, lifetimes, sliding, clearing.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { inspect, startMemcached, type Memcached } from './helpers/memcached.ts';
import { startOrigin, backendFlags, type Origin } from './helpers/origins.ts';
import { get, startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { waitFor } from './helpers/wait.ts';

// A hang fails its test instead of the whole file.
const T = { timeout: 30_000 };

let origins: Origin[] = [];
let mc: Memcached;
let proxy: ProxyProcess;
const prefix = `sc-${process.pid}:`;

before(async () => {
  origins = [await startOrigin('one'), await startOrigin('two')];
  mc = await startMemcached();
  proxy = await startProxy([...backendFlags(origins), '--memcache', mc.address, '--key-prefix', prefix, '--default-ttl', '3', '--max-ttl', '7200']);
}, T);
after(async () => {
  await proxy.stop();
  await Promise.all(origins.map((o) => o.close()));
  await mc.stop();
}, T);

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

test('key format: prefix, cookie name, raw id; value: the backend name', T, async () => {
  const backend = await respondWith(['connect.sid=s%3Aabc.sig; Path=/; Max-Age=600; HttpOnly']);
  const item = await inspect(mc.port, `${prefix}connect.sid:s%3Aabc.sig`);
  assert.equal(item?.value, backend);
  assert.equal(item?.flags, 0, 'fixed expiry: no sliding TTL in flags');
});

test('several Set-Cookie headers in one response; for one name, the last counts', T, async () => {
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

test('Max-Age wins over Expires; Expires alone is used; both are capped by --max-ttl', T, async () => {
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

test('a cookie without an expiry gets --default-ttl, and use keeps it alive', T, async () => {
  const backend = await respondWith(['ASP.NET_SessionId=slide; path=/; HttpOnly']);
  const key = `${prefix}ASP.NET_SessionId:slide`;
  const item = await inspect(mc.port, key);
  assert.equal(item?.flags, 3, 'flags carry the sliding TTL');
  // 4.5 s of use outlives the 3 s TTL.
  for (let i = 0; i < 9; i++) {
    await sleep(500); // the scenario: a use every 0.5 s
    const r = await get(proxy.url, undefined, { cookie: 'ASP.NET_SessionId=slide' });
    assert.equal(r.headers['x-backend'], backend);
  }
  assert.ok(await inspect(mc.port, key), 'still bound after more than its TTL, thanks to use');
  await waitFor(async () => (await inspect(mc.port, key)) === null, { what: 'the unused binding to expire', timeoutMs: 6000 });
});

const bound = async (id: string): Promise<boolean> => (await inspect(mc.port, `${prefix}PHPSESSID:${id}`)) !== null;

test('a cleared cookie with an empty value unbinds the id the request carried, and only that one', T, async () => {
  const backend = await respondWith(['PHPSESSID=gone1; Max-Age=600']);
  await respondWith(['PHPSESSID=kept1; Max-Age=600']);
  assert.ok(await bound('gone1'));
  const r = await get(proxy.url, undefined, { cookie: 'PHPSESSID=gone1', 'x-set-cookie': JSON.stringify(['PHPSESSID=; Max-Age=0']) });
  assert.equal(r.headers['x-backend'], backend);
  assert.equal(await bound('gone1'), false);
  assert.equal(await bound('kept1'), true);
});

test('a cleared cookie that names an id unbinds that id, whether the request carried none or another', T, async () => {
  for (const id of ['named1', 'named2', 'carried2', 'named3', 'kept3']) await respondWith([`PHPSESSID=${id}; Max-Age=600`]);
  // The request carries no session.
  await respondWith(['PHPSESSID=named1; Max-Age=0']);
  assert.equal(await bound('named1'), false, 'Max-Age=0 naming an id');
  // The request carries another id: both go (the browser drops its cookie by name).
  await respondWith(['PHPSESSID=named2; Expires=Thu, 01 Jan 1970 00:00:00 GMT'], 'PHPSESSID=carried2');
  assert.equal(await bound('named2'), false, 'an Expires in the past naming an id');
  assert.equal(await bound('carried2'), false, 'the id the request carried');
  // The request carries the id it clears.
  await respondWith(['PHPSESSID=named3; Max-Age=-1'], 'PHPSESSID=named3');
  assert.equal(await bound('named3'), false, 'a negative Max-Age');
  assert.equal(await bound('kept3'), true, 'other sessions stay bound');
});

test('ids memcached would reject are hashed into a safe key, and still stick', T, async () => {
  const long = 'x'.repeat(400);
  const backend = await respondWith([`JSESSIONID=${long}; Max-Age=600`]);
  for (let i = 0; i < 4; i++) {
    const r = await get(proxy.url, undefined, { cookie: `JSESSIONID=${long}` });
    assert.equal(r.headers['x-backend'], backend);
  }
});

test('a client cannot create a binding by sending cookies: an id the backend replaces is not bound, nor with --no-adopt one it accepts', T, async () => {
  // The backend answers the client's id with one of its own: only its own is bound.
  const backend = await respondWith(['PHPSESSID=server-made; Max-Age=600'], 'PHPSESSID=client-made');
  assert.equal(await inspect(mc.port, `${prefix}PHPSESSID:client-made`), null);
  assert.equal((await inspect(mc.port, `${prefix}PHPSESSID:server-made`))?.value, backend);
  const strict = await startProxy([...backendFlags(origins), '--memcache', mc.address, '--key-prefix', prefix, '--no-adopt']);
  try {
    const r = await get(strict.url, undefined, { cookie: 'PHPSESSID=client-made-2' });
    assert.equal(r.status, 200);
    assert.equal(await inspect(mc.port, `${prefix}PHPSESSID:client-made-2`), null);
  } finally {
    await strict.stop();
  }
});

test('lifetimes beyond 30 days are sent as absolute times, as memcached reads them', T, async () => {
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
