// Routing is a function of the request sequence alone, whatever the worker
// count; bindings never route outside the pool; an unreachable backend is a 502.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { startMemcached, type Memcached } from './helpers/memcached.ts';
import { startOrigin, backendFlags, type Origin } from './helpers/origins.ts';
import { get, startProxy, type Jar } from './helpers/proxy.ts';
import { freePort } from './helpers/memcached.ts';
import { MemcacheClient } from '../src/memcache/client.ts';

// A hang fails its test instead of the whole file.
const T = { timeout: 30_000 };

let origins: Origin[] = [];
let mc: Memcached;

before(async () => {
  origins = [await startOrigin('a'), await startOrigin('b'), await startOrigin('c')];
  mc = await startMemcached();
}, T);
after(async () => {
  await Promise.all(origins.map((o) => o.close()));
  await mc.stop();
}, T);

/** A fixed script of new and returning sessions; returns the backend of each request. */
async function script(url: string): Promise<string[]> {
  const jars: Jar[] = [];
  const seen: string[] = [];
  for (let i = 0; i < 60; i++) {
    let jar: Jar;
    let headers: Record<string, string> = {};
    if (i % 3 === 0 || jars.length === 0) {
      jar = new Map();
      jars.push(jar);
      headers = { 'x-set-cookie': JSON.stringify([`JSESSIONID=s${i}-${url}; Path=/; Max-Age=600`]) };
    } else {
      jar = jars[(i * 7) % jars.length];
    }
    const r = await get(url, jar, headers);
    assert.equal(r.status, 200);
    seen.push(r.headers['x-backend'] as string);
  }
  return seen;
}

for (const store of ['embedded', 'memcached'] as const) {
  test(`--workers 0 and --workers 3 route identically (${store})`, T, async () => {
    const runs: string[][] = [];
    for (const workers of ['0', '3']) {
      const storeFlags = store === 'memcached' ? ['--memcache', mc.address, '--key-prefix', `w${workers}-${Date.now()}:`] : [];
      const flags = [
        '--backend', `a=${origins[0].url},weight=2`, '--backend', `b=${origins[1].url}`, '--backend', `c=${origins[2].url}`,
        // A generous store deadline (the batch deadline is this + 500 ms): on a loaded machine the first
        // batches can wait seconds on workers still loading, and a batch past its deadline loses affinity.
        '--workers', workers, '--store-timeout', '5000', ...storeFlags,
      ];
      const proxy = await startProxy(flags);
      try {
        runs.push(await script(proxy.url));
      } finally {
        await proxy.stop();
      }
    }
    assert.deepEqual(runs[0], runs[1]);
    // Weights are honoured: a gets twice the new sessions of b or c.
    const newOnes = runs[0].filter((_, i) => i % 3 === 0);
    assert.equal(newOnes.filter((n) => n === 'a').length, 10);
  });
}

test('a binding that names no configured backend is ignored', T, async () => {
  const prefix = `unknown-${Date.now()}:`;
  const client = new MemcacheClient({ servers: [mc.address], keyPrefix: prefix });
  await client.set('PHPSESSID:forged', 'elsewhere', 300);
  await client.set('PHPSESSID:known', 'c', 300);
  await client.close();
  // --no-adopt: otherwise the first backend to answer would adopt the id, replacing the forged binding.
  const proxy = await startProxy([...backendFlags(origins), '--memcache', mc.address, '--key-prefix', prefix, '--no-adopt']);
  try {
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++) {
      const r = await get(proxy.url, new Map([['PHPSESSID', 'forged']]));
      assert.equal(r.status, 200);
      seen.add(r.headers['x-backend'] as string);
    }
    assert.equal(seen.size, 3, 'the balancer spreads it over the pool');
    const known = await get(proxy.url, new Map([['PHPSESSID', 'known']]));
    assert.equal(known.headers['x-backend'], 'c');
  } finally {
    await proxy.stop();
  }
});

test('a backend that cannot be reached answers 502, and the proxy keeps serving', T, async () => {
  const dead = `http://127.0.0.1:${await freePort()}`;
  const proxy = await startProxy(['--backend', `dead=${dead}`, '--workers', '0']);
  try {
    for (let i = 0; i < 3; i++) assert.equal((await get(proxy.url)).status, 502);
  } finally {
    assert.equal(await proxy.stop(), 0);
  }
});
