// Every failure of a dependency costs at most affinity, never a client
// request: memcached killed or frozen, a backend killed or unhealthy, an
// affinity worker killed, a shutdown under load, a slowloris client.
// Each test is bounded and stops everything it started.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { inspect, startMemcached, type Memcached } from './helpers/memcached.ts';
import { startOrigin, startOriginProcess, backendFlags, type Origin } from './helpers/origins.ts';
import { get, startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { load, type Shot } from './helpers/load.ts';

let origins: Origin[] = [];
let mc: Memcached;

before(async () => {
  origins = [await startOrigin('a'), await startOrigin('b')];
  mc = await startMemcached();
});
after(async () => {
  await Promise.all(origins.map((o) => o.close()));
  await mc.stop();
});

/** Binds `count` sessions through the proxy; returns the backend of each. */
async function learnSessions(url: string, tag: string, count: number): Promise<string[]> {
  const owners: string[] = [];
  for (let i = 0; i < count; i++) {
    const r = await get(url, undefined, { 'x-set-cookie': JSON.stringify([`PHPSESSID=${tag}${i}; Max-Age=600`]) });
    assert.equal(r.status, 200);
    owners.push(r.headers['x-backend'] as string);
  }
  return owners;
}

function sessionShot(tag: string, count: number): (i: number) => Shot {
  return (i) => ({ headers: { cookie: `theme=x; PHPSESSID=${tag}${i % count}` } });
}

async function sticks(url: string, cookie: string, times = 4): Promise<string> {
  const seen = new Set<string>();
  for (let i = 0; i < times; i++) {
    const r = await get(url, undefined, { cookie });
    assert.equal(r.status, 200);
    seen.add(r.headers['x-backend'] as string);
  }
  assert.equal(seen.size, 1, `${cookie} went to ${[...seen]}`);
  return [...seen][0];
}

test('memcached killed with kill -9 under load, then restarted: no failed request; sessions learnt and sticky again', async () => {
  const m = await startMemcached();
  const proxy = await startProxy([...backendFlags(origins), '--memcache', m.address, '--workers', '2']);
  try {
    await learnSessions(proxy.url, 'k', 20);
    const running = load(proxy.url, { concurrency: 16, durationMs: 4000, shot: sessionShot('k', 20) });
    await sleep(1000);
    await m.kill();
    await sleep(300);
    // Learnt during the outage: kept in the queue, written once memcached is back.
    const [duringOwner] = await learnSessions(proxy.url, 'during-outage', 1);
    await sleep(1200);
    await m.start();
    const r = await running;
    assert.equal(r.failed, 0, r.failures.join('; '));
    assert.ok(r.ok > 100, `only ${r.ok} requests`);
    await sleep(1500); // reconnection: backoff and probe
    assert.equal((await inspect(m.port, 'sp:PHPSESSID:during-outage0'))?.value, duringOwner, 'the outage queue was written');
    const [owner] = await learnSessions(proxy.url, 'after-restart', 1);
    assert.equal(await sticks(proxy.url, 'PHPSESSID=after-restart0'), owner);
  } finally {
    await proxy.stop();
    await m.stop();
  }
});

test('memcached frozen with SIGSTOP for 3 s under load: no failed request, none slower than the store deadline plus a margin', async () => {
  const m = await startMemcached();
  const storeTimeout = 100;
  const proxy = await startProxy([...backendFlags(origins), '--memcache', m.address, '--store-timeout', String(storeTimeout)]);
  try {
    await learnSessions(proxy.url, 'f', 20);
    const shot = sessionShot('f', 20);
    // Some requests set new sessions during the freeze: their learns must not hold answers either.
    const running = load(proxy.url, {
      concurrency: 8,
      durationMs: 5000,
      shot: (i) => (i % 10 === 0 ? { headers: { 'x-set-cookie': JSON.stringify([`PHPSESSID=new${i}; Max-Age=600`]) } } : shot(i)),
    });
    await sleep(1000);
    m.signal('SIGSTOP');
    await sleep(3000);
    m.signal('SIGCONT');
    const r = await running;
    assert.equal(r.failed, 0, r.failures.join('; '));
    assert.ok(r.maxMs < storeTimeout + 400, `slowest request took ${r.maxMs.toFixed(0)} ms`);
  } finally {
    await proxy.stop();
    await m.stop();
  }
});

test('a backend killed under GET load: no failed request; its sessions move and stick to their new backend', async () => {
  const procs = [await startOriginProcess('p1'), await startOriginProcess('p2'), await startOriginProcess('p3')];
  const proxy = await startProxy([...backendFlags(procs), '--memcache', mc.address, '--key-prefix', `kill-${Date.now()}:`]);
  try {
    const owners = await learnSessions(proxy.url, 'b', 30);
    const running = load(proxy.url, { concurrency: 16, durationMs: 3000, shot: sessionShot('b', 30) });
    await sleep(1000);
    await procs[1].kill();
    const r = await running;
    assert.equal(r.failed, 0, r.failures.join('; '));
    for (let i = 0; i < 30; i++) {
      const now = await sticks(proxy.url, `PHPSESSID=b${i}`);
      if (owners[i] === 'p2') assert.notEqual(now, 'p2');
      else assert.equal(now, owners[i], 'sessions of the live backends stay put');
    }
  } finally {
    await proxy.stop();
    await Promise.all(procs.map((p) => p.kill()));
  }
});

test('health checks: a backend answering 500 on the health path leaves the rotation and comes back once healthy', async () => {
  let healthy = true;
  const sick = await startOrigin('sick', (req, res, o) => {
    if (req.url === '/health') { res.writeHead(healthy ? 200 : 500); res.end(); return; }
    res.writeHead(200, { 'x-backend': o.name });
    res.end();
  });
  const proxy = await startProxy([...backendFlags([origins[0], sick]), '--health-path', '/health', '--health-interval', '100', '--health-rise', '2', '--health-fall', '2', '--no-affinity']);
  const spread = async (): Promise<Set<string>> => {
    const seen = new Set<string>();
    for (let i = 0; i < 10; i++) seen.add((await get(proxy.url)).headers['x-backend'] as string);
    return seen;
  };
  try {
    assert.deepEqual(await spread(), new Set(['a', 'sick']));
    healthy = false;
    await sleep(600);
    assert.deepEqual(await spread(), new Set(['a']));
    healthy = true;
    await sleep(600);
    assert.deepEqual(await spread(), new Set(['a', 'sick']));
  } finally {
    await proxy.stop();
    await sick.close();
  }
});

test('an affinity worker killed under load: no failed request', async () => {
  const proxy = await startProxy([...backendFlags(origins), '--memcache', mc.address, '--workers', '2', '--key-prefix', `wk-${Date.now()}:`], { STICKY_PROXY_TEST_HOOKS: '1' });
  try {
    await learnSessions(proxy.url, 'w', 20);
    const running = load(proxy.url, { concurrency: 16, durationMs: 3000, shot: sessionShot('w', 20) });
    for (let k = 0; k < 3; k++) {
      await sleep(700);
      process.kill(proxy.pid, 'SIGUSR2');
    }
    const r = await running;
    assert.equal(r.failed, 0, r.failures.join('; '));
    assert.ok(proxy.output.some((l) => l.includes('affinity worker ended')), 'a worker did end');
    await sticks(proxy.url, 'PHPSESSID=w3');
  } finally {
    await proxy.stop();
  }
});

test('SIGTERM with 20 slow requests in flight: all 20 complete, and the process exits 0', async () => {
  const slow = await startOrigin('slow', (_req, res) => { setTimeout(() => { res.writeHead(200); res.end('done'); }, 1500); });
  const proxy = await startProxy(['--backend', `slow=${slow.url}`]);
  try {
    const inflight = Array.from({ length: 20 }, async () => {
      const r = await request(proxy.url, { headersTimeout: 10_000 });
      return [r.statusCode, await r.body.text()];
    });
    await sleep(400);
    const exit = proxy.stop();
    const replies = await Promise.all(inflight);
    for (const r of replies) assert.deepEqual(r, [200, 'done']);
    assert.equal(await exit, 0);
    await assert.rejects(request(proxy.url), 'no longer accepting');
  } finally {
    await proxy.stop();
    await slow.close();
  }
});

test('slowloris: headers at a byte a second are cut off at the header timeout with 408; others are served meanwhile', async () => {
  const proxy: ProxyProcess = await startProxy([...backendFlags(origins), '--client-header-timeout', '1500']);
  try {
    const { port } = new URL(proxy.url);
    const sock = connect(Number(port), '127.0.0.1');
    let answer = '';
    sock.on('data', (d) => { answer += d; });
    const closed = new Promise<number>((resolve) => sock.on('close', () => resolve(Date.now())));
    const started = Date.now();
    const header = 'GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ' + 'y'.repeat(100);
    let i = 0;
    const drip = setInterval(() => { if (!sock.destroyed) sock.write(header[i++ % header.length]); }, 1000);
    try {
      for (let k = 0; k < 5; k++) {
        const t = Date.now();
        assert.equal((await get(proxy.url)).status, 200);
        assert.ok(Date.now() - t < 1000, 'others are not held up');
        await sleep(200);
      }
      const end = await closed;
      assert.match(answer, /^HTTP\/1\.1 408 /);
      assert.ok(end - started < 4500, `cut after ${end - started} ms`);
    } finally {
      clearInterval(drip);
      sock.destroy();
    }
  } finally {
    await proxy.stop();
  }
});

test('limits and upstream timeouts answer with their status: 503 over the connection cap, 504 for a silent backend', async () => {
  const silent = await startOrigin('silent', () => { /* never answers */ });
  const proxy = await startProxy(['--backend', `silent=${silent.url}`, '--max-connections', '3', '--upstream-header-timeout', '300', '--retries', '0']);
  try {
    const r = await get(proxy.url);
    assert.equal(r.status, 504);
    const { port } = new URL(proxy.url);
    const socks = [0, 1, 2].map(() => connect(Number(port), '127.0.0.1'));
    await sleep(200);
    const extra = connect(Number(port), '127.0.0.1');
    let answer = '';
    extra.on('data', (d) => { answer += d; });
    await new Promise((resolve) => extra.on('close', resolve));
    assert.match(answer, /^HTTP\/1\.1 503 /);
    assert.match(answer, /Retry-After: 1/);
    for (const s of socks) s.destroy();
  } finally {
    await proxy.stop();
    await silent.close();
  }
});
