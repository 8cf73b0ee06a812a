// Two proxy instances sharing memcached, each with its own near cache, keep
// every session on one backend through a backend failure: the move is
// decided by rendezvous hashing, so both instances choose the same new
// backend without talking, and neither cache keeps a session on the old one.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { inspect, startMemcached, type Memcached } from './helpers/memcached.ts';
import { backendFlags, startOriginProcess } from './helpers/origins.ts';
import { get, startProxy, type ProxyProcess } from './helpers/proxy.ts';

let mc: Memcached;
let procs: Awaited<ReturnType<typeof startOriginProcess>>[] = [];
let a: ProxyProcess;
let b: ProxyProcess;
const prefix = `near-${process.pid}:`;
const SESSIONS = 24;

before(async () => {
  mc = await startMemcached();
  procs = [await startOriginProcess('p1'), await startOriginProcess('p2'), await startOriginProcess('p3')];
  const flags = [...backendFlags(procs), '--memcache', mc.address, '--key-prefix', prefix, '--near-cache-ttl', '5000', '--balance', 'random-two'];
  a = await startProxy(flags);
  b = await startProxy(flags);
});
after(async () => {
  await a.stop();
  await b.stop();
  await Promise.all(procs.map((p) => p.kill()));
  await mc.stop();
});

async function via(p: ProxyProcess, session: number): Promise<string> {
  const r = await get(p.url, undefined, { cookie: `PHPSESSID=nc${session}` });
  assert.equal(r.status, 200);
  return r.headers['x-backend'] as string;
}

test('two instances with their own near caches keep each session on one backend through a backend failure', { timeout: 60_000 }, async () => {
  const owners: string[] = [];
  for (let i = 0; i < SESSIONS; i++) {
    const r = await get(a.url, undefined, { 'x-set-cookie': JSON.stringify([`PHPSESSID=nc${i}; Max-Age=600`]) });
    owners.push(r.headers['x-backend'] as string);
  }
  assert.ok(owners.includes('p2'), 'some sessions live on the backend about to fail');
  // Both instances' near caches now hold every binding, fresh for 5 s.
  for (let i = 0; i < SESSIONS; i++) {
    assert.equal(await via(a, i), owners[i]);
    assert.equal(await via(b, i), owners[i]);
  }
  await procs[1].kill();
  const seen = owners.map(() => new Set<string>());
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < SESSIONS; i++) {
      // Alternate which instance sees a moved session first.
      const order = (i + round) % 2 === 0 ? [a, b] : [b, a];
      for (const p of order) seen[i].add(await via(p, i));
    }
  }
  for (let i = 0; i < SESSIONS; i++) {
    assert.equal(seen[i].size, 1, `session ${i} (was on ${owners[i]}) answered by ${[...seen[i]]}`);
    const now = [...seen[i]][0];
    if (owners[i] === 'p2') {
      assert.notEqual(now, 'p2');
      assert.equal((await inspect(mc.port, `${prefix}PHPSESSID:nc${i}`))?.value, now, 'the move is stored');
    } else {
      assert.equal(now, owners[i], 'sessions of live backends stay put');
    }
  }
});
