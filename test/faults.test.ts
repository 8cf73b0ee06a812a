// Every failure of a dependency costs at most affinity, never a client
// request: memcached killed or frozen, a backend killed, failing or unhealthy,
// an affinity worker killed or stuck, a shutdown under load, a slowloris
// client. Each test is bounded and stops everything it started. Everything is
// observed on the wire: statuses, headers, which origin answered (x-backend)
// or saw a request, what memcached holds, the proxy's log lines.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { freePort, inspect, startMemcached, type Memcached } from './helpers/memcached.ts';
import { startOrigin, startOriginProcess, backendFlags, type Origin, type OriginHandler } from './helpers/origins.ts';
import { get, startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { backendsBySession, load, type Shot } from './helpers/load.ts';
import { waitFor, waitForLine } from './helpers/wait.ts';
import { MemcacheClient } from '../src/memcache/client.ts';

// A hang fails its test instead of the whole file.
const T = { timeout: 30_000 };

let origins: Origin[] = [];
let third: Origin;
let mc: Memcached;

before(async () => {
  origins = [await startOrigin('a'), await startOrigin('b')];
  third = await startOrigin('c');
  mc = await startMemcached();
}, T);
after(async () => {
  await Promise.all([...origins, third].map((o) => o.close()));
  await mc.stop();
}, T);

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

/**
 * Sessions no instance has seen, sent while the store cannot answer: each lands
 * on one backend, the same through every instance. The first request through
 * an instance is placed by rendezvous hashing, which every instance computes
 * alike; an instance may remember the placement for the next ones.
 */
async function fallbackAgrees(urls: string[], tag: string, count: number): Promise<void> {
  await Promise.all(Array.from({ length: count }, async (_, s) => {
    const seen: string[] = [];
    for (let k = 0; k < 2; k++) {
      for (const url of urls) {
        const r = await get(url, undefined, { cookie: `PHPSESSID=${tag}${s}` });
        assert.equal(r.status, 200);
        seen.push(r.headers['x-backend'] as string);
      }
    }
    assert.equal(new Set(seen).size, 1, `${tag}${s} went to ${seen} (through ${urls.length} instances)`);
  }));
}

/** Every session was served in the window, each by one backend only. */
function oneBackendEach(bySession: Map<string, Set<string>>, sessions: number, what: string): void {
  assert.equal(bySession.size, sessions, `every session was served ${what}`);
  for (const [session, seen] of bySession) assert.equal(seen.size, 1, `${session} ${what} went to ${[...seen]}`);
}

test('memcached killed with kill -9 under load, then restarted: no failed request; each session on one backend during the outage, the same through two instances; learnt and sticky again', T, async () => {
  const m = await startMemcached();
  const proxy = await startProxy([...backendFlags(origins), '--memcache', m.address, '--workers', '2']);
  const other = await startProxy([...backendFlags(origins), '--memcache', m.address]);
  try {
    await learnSessions(proxy.url, 'k', 20);
    const running = load(proxy.url, { concurrency: 16, durationMs: 4000, shot: sessionShot('k', 20) });
    await sleep(1000); // the scenario: load with memcached up first
    await m.kill();
    const down = Date.now();
    // Learnt during the outage: kept in the queue, written once memcached is back.
    const [duringOwner] = await learnSessions(proxy.url, 'during-outage', 1);
    await fallbackAgrees([proxy.url, other.url], 'unseen-k', 20);
    await sleep(1000); // the scenario: the outage goes on under load
    const up = Date.now();
    await m.start();
    const r = await running;
    assert.equal(r.failed, 0, r.failures.join('; '));
    assert.ok(r.ok > 100, `only ${r.ok} requests`);
    // Sessions this instance knew keep their backend through the outage: it remembers where they were.
    oneBackendEach(backendsBySession(r, (i) => `k${i % 20}`, down, up), 20, 'during the outage');
    await waitFor(async () => (await inspect(m.port, 'sp:PHPSESSID:during-outage0'))?.value === duringOwner,
      { what: 'the outage queue written to the restarted memcached', timeoutMs: 8000 });
    const [owner] = await learnSessions(proxy.url, 'after-restart', 1);
    assert.equal(await sticks(proxy.url, 'PHPSESSID=after-restart0'), owner);
  } finally {
    await proxy.stop();
    await other.stop();
    await m.stop();
  }
});

test('two memcached servers down, then one back: the learns queued for it are written, those for the other wait untouched until it is back too', T, async () => {
  const [a, b] = [await startMemcached(), await startMemcached()];
  const proxy = await startProxy([...backendFlags(origins), '--memcache', `${a.address},${b.address}`, '--threads', '1']);
  // Where each key lives, as the proxy's client places it (the same ring, the same default prefix).
  const ring = new MemcacheClient({ servers: [a.address, b.address], keyPrefix: 'sp:' });
  try {
    await a.kill();
    await b.kill();
    await waitForLine(proxy.output, (l) => l.includes('"msg":"affinity store down"'), { what: 'the store down' });
    const owners = await learnSessions(proxy.url, 'split', 16);
    const on = (m: Memcached): number[] => owners.flatMap((_, i) => (ring.serverFor(`PHPSESSID:split${i}`) === m.address ? [i] : []));
    assert.ok(on(a).length > 0 && on(b).length > 0, 'learns for both servers');
    await a.start();
    for (const i of on(a)) {
      await waitFor(async () => (await inspect(a.port, `sp:PHPSESSID:split${i}`))?.value === owners[i], { what: `split${i} written to the server back`, timeoutMs: 8000 });
    }
    await sleep(1000); // the scenario: b stays down while a serves
    await b.start();
    for (const i of on(b)) {
      await waitFor(async () => (await inspect(b.port, `sp:PHPSESSID:split${i}`))?.value === owners[i], { what: `split${i} written once its server is back`, timeoutMs: 8000 });
    }
    const line = await waitForLine(proxy.output, (l) => l.includes('"msg":"affinity store: learns queued during the outage written"'), { what: 'the outage report' });
    const report = JSON.parse(line) as Record<string, number>;
    // Re-sent every 250 ms, b's learns would have failed again some four times each in that second.
    assert.ok(report.learnsQueued === owners.length && report.learnsRetried <= report.learnsQueued, line);
  } finally {
    await ring.close();
    await proxy.stop();
    await a.stop();
    await b.stop();
  }
});

test('memcached frozen with SIGSTOP for 3 s under load: no failed request, none slower than the store deadline plus a margin, each session on one backend, the same through two instances', T, async () => {
  const m = await startMemcached();
  const storeTimeout = 100;
  const flags = [...backendFlags(origins), '--memcache', m.address, '--store-timeout', String(storeTimeout)];
  const proxy = await startProxy(flags);
  const other = await startProxy(flags);
  try {
    await learnSessions(proxy.url, 'f', 20);
    const shot = sessionShot('f', 20);
    // Some requests set new sessions during the freeze: their learns must not hold answers either.
    const isNew = (i: number): boolean => i % 7 === 0;
    const running = load(proxy.url, {
      concurrency: 8,
      durationMs: 5000,
      shot: (i) => (isNew(i) ? { headers: { 'x-set-cookie': JSON.stringify([`PHPSESSID=new${i}; Max-Age=600`]) } } : shot(i)),
    });
    await sleep(1000); // the scenario: load with memcached up first
    await m.freeze();
    const frozen = Date.now();
    await fallbackAgrees([proxy.url, other.url], 'unseen-f', 20);
    await sleep(Math.max(0, frozen + 3000 - Date.now())); // the scenario: frozen for 3 s under load
    const thawed = Date.now();
    m.signal('SIGCONT');
    const r = await running;
    assert.equal(r.failed, 0, r.failures.join('; '));
    assert.ok(r.maxMs < storeTimeout + 400, `slowest request took ${r.maxMs.toFixed(0)} ms`);
    oneBackendEach(backendsBySession(r, (i) => (isNew(i) ? null : `f${i % 20}`), frozen, thawed), 20, 'while memcached was frozen');
  } finally {
    await proxy.stop();
    await other.stop();
    await m.stop();
  }
});

test('a backend killed under GET load: no failed request; its sessions move, are rebound in memcached, and stick to their new backend', T, async () => {
  const procs = [await startOriginProcess('p1'), await startOriginProcess('p2'), await startOriginProcess('p3')];
  const prefix = `kill-${Date.now()}:`;
  const proxy = await startProxy([...backendFlags(procs), '--memcache', mc.address, '--key-prefix', prefix]);
  try {
    const owners = await learnSessions(proxy.url, 'b', 30);
    assert.ok(owners.includes('p2'));
    const running = load(proxy.url, { concurrency: 16, durationMs: 3000, shot: sessionShot('b', 30) });
    await sleep(1000); // the scenario: load with every backend up first
    await procs[1].kill();
    const r = await running;
    assert.equal(r.failed, 0, r.failures.join('; '));
    for (let i = 0; i < 30; i++) {
      const now = await sticks(proxy.url, `PHPSESSID=b${i}`);
      if (owners[i] === 'p2') {
        assert.notEqual(now, 'p2');
        assert.equal((await inspect(mc.port, `${prefix}PHPSESSID:b${i}`))?.value, now, 'the binding follows the move');
      } else {
        assert.equal(now, owners[i], 'sessions of the live backends stay put');
      }
    }
  } finally {
    await proxy.stop();
    await Promise.all(procs.map((p) => p.kill()));
  }
});

test('a session whose backend is disabled moves, with three backends: rebound in memcached to where it went, and stays there', T, async () => {
  const prefix = `move-${Date.now()}:`;
  const p = await startProxy([...backendFlags([...origins, third]), '--admin', '127.0.0.1:0', '--memcache', mc.address, '--key-prefix', prefix]);
  try {
    const [owner] = await learnSessions(p.url, 'mv', 1);
    const admin = p.output.find((l) => l.startsWith('admin on '))!.slice('admin on '.length);
    assert.equal((await request(`${admin}/backends/${owner}/disable`, { method: 'POST', headers: { 'x-requested-with': 'test' } })).statusCode, 200);
    const moved = await sticks(p.url, 'PHPSESSID=mv0', 1);
    assert.notEqual(moved, owner);
    await waitFor(async () => (await inspect(mc.port, `${prefix}PHPSESSID:mv0`))?.value === moved, { what: `the binding rebound to ${moved}` });
    // Two backends remain: without the new binding, the balancer would alternate between them.
    assert.equal(await sticks(p.url, 'PHPSESSID=mv0', 6), moved);
  } finally {
    await p.stop();
  }
});

/** An origin that records the x-id of every request it sees, then answers with `answer`. */
function recording(seen: string[], answer: OriginHandler): OriginHandler {
  return (req, res, o) => {
    seen.push(`${req.method} ${req.headers['x-id']}`);
    answer(req, res, o);
  };
}
/** Reads the whole request, then drops the connection without a response byte. */
const dies: OriginHandler = (req) => { req.resume(); req.on('end', () => req.socket.destroy()); };
const answers: OriginHandler = (req, res, o) => { req.resume(); req.on('end', () => { res.writeHead(200, { 'x-backend': o.name }); res.end(); }); };

test('retries: a request whose connection fails after it was sent is retried on another backend only when idempotent, and never once its body was read', T, async () => {
  const diedOn: string[] = [];
  const servedBy: string[] = [];
  const dying = await startOrigin('dying', recording(diedOn, dies));
  const live = await startOrigin('live', recording(servedBy, answers));
  const p = await startProxy(['--backend', `dying=${dying.url}`, '--backend', `live=${live.url}`, '--no-affinity', '--eject-after', '0']);
  try {
    const kinds = [['GET', 'g', undefined], ['POST', 'p', 'a body the backend reads'], ['PUT', 'u', 'a body the backend reads'], ['POST', 'e', undefined]] as const;
    // Each kind until one has reached the dying backend first: round robin gets it there within two.
    for (const [method, tag, body] of kinds) {
      for (let i = 0; i < 4 && !diedOn.some((s) => s.startsWith(`${method} ${tag}`)); i++) {
        const id = `${tag}${i}`;
        const r = await request(p.url, { method, body, headers: { 'x-id': id }, headersTimeout: 5000, bodyTimeout: 5000 });
        await r.body.dump();
        const died = diedOn.includes(`${method} ${id}`);
        const served = servedBy.includes(`${method} ${id}`);
        if (died && method === 'GET') {
          assert.ok(served && r.statusCode === 200, `${method} ${id}: idempotent and no body: retried (${r.statusCode})`);
        } else if (died) {
          // It reached the backend: a POST must not run twice; a body that was read cannot be replayed.
          assert.ok(!served && r.statusCode === 502, `${method} ${id}: not retried, 502 (${r.statusCode}, served elsewhere: ${served})`);
        } else {
          assert.ok(served && r.statusCode === 200, `${method} ${id}: served (${r.statusCode})`);
        }
      }
      assert.ok(diedOn.some((s) => s.startsWith(`${method} ${tag}`)), `some ${method} ${tag}… reached the dying backend`);
    }
  } finally {
    await p.stop();
    await dying.close();
    await live.close();
  }
});

test('retries: a POST whose connection was refused is retried, since it never reached a backend', T, async () => {
  const servedBy: string[] = [];
  const live = await startOrigin('live', recording(servedBy, answers));
  const refused = `http://127.0.0.1:${await freePort()}`;
  const p = await startProxy(['--backend', `refused=${refused}`, '--backend', `live=${live.url}`, '--no-affinity', '--eject-after', '0']);
  try {
    // Round robin sends one of every two to the refusing backend first.
    for (let i = 0; i < 4; i++) {
      const r = await request(p.url, { method: 'POST', body: 'a body', headers: { 'x-id': `r${i}` }, headersTimeout: 5000, bodyTimeout: 5000 });
      await r.body.dump();
      assert.equal(r.statusCode, 200, `POST r${i}`);
    }
    assert.deepEqual(servedBy, ['POST r0', 'POST r1', 'POST r2', 'POST r3']);
  } finally {
    await p.stop();
    await live.close();
  }
});

test('--retries N: a GET tries at most N + 1 backends', T, async () => {
  const seen: string[] = [];
  const d1 = await startOrigin('d1', recording(seen, dies));
  const d2 = await startOrigin('d2', recording(seen, dies));
  const live = await startOrigin('live', recording(seen, answers));
  try {
    // A fresh round robin tries d1, then d2, then live.
    for (const [retries, status] of [[0, 502], [1, 502], [2, 200]] as const) {
      seen.length = 0;
      const p = await startProxy([...backendFlags([d1, d2, live]), '--no-affinity', '--retries', String(retries)]);
      try {
        const r = await request(p.url, { headers: { 'x-id': `r${retries}` }, headersTimeout: 5000, bodyTimeout: 5000 });
        await r.body.dump();
        assert.equal(r.statusCode, status, `--retries ${retries}`);
        assert.equal(seen.length, retries + 1, `--retries ${retries}: attempts ${seen.join(', ')}`);
      } finally {
        await p.stop();
      }
    }
  } finally {
    await Promise.all([d1, d2, live].map((o) => o.close()));
  }
});

test('passive ejection: after --eject-after 502 answers a backend rests for --eject-cooldown, then comes back', T, async () => {
  let failing = true;
  const flaky = await startOrigin('flaky', (req, res, o) => { req.resume(); res.writeHead(failing ? 502 : 200, { 'x-backend': o.name }); res.end(); });
  const cooldown = 3000;
  const p = await startProxy(['--backend', `a=${origins[0].url}`, '--backend', `flaky=${flaky.url}`, '--no-affinity', '--eject-after', '2', '--eject-cooldown', String(cooldown)]);
  try {
    await waitFor(async () => { await get(p.url); return flaky.requests >= 2; }, { what: 'two answers from flaky' });
    const ejected = Date.now();
    failing = false; // repaired, but resting until its cool-down ends
    const seen = new Set<string>();
    for (let i = 0; i < 8; i++) seen.add((await get(p.url)).headers['x-backend'] as string);
    assert.ok(Date.now() - ejected < cooldown, 'checked within the cool-down');
    assert.deepEqual(seen, new Set(['a']), 'an ejected backend gets no requests');
    assert.equal(flaky.requests, 2);
    await waitFor(async () => (await get(p.url)).headers['x-backend'] === 'flaky', { what: 'flaky back after its cool-down', timeoutMs: cooldown + 5000 });
    assert.ok(Date.now() - ejected >= cooldown - 100, 'not before the cool-down');
  } finally {
    await p.stop();
    await flaky.close();
  }
});

test('an app that answers 500 on one path: no ejection by default; with --eject-on-500 at most --max-ejection-percent of the pool, and other paths keep being served', T, async () => {
  const broken = (name: string): Promise<Origin> => startOrigin(name, (req, res, o) => {
    req.resume();
    res.writeHead(req.url === '/broken' ? 500 : 200, { 'x-backend': o.name });
    res.end();
  });
  const pool = [await broken('p1'), await broken('p2'), await broken('p3')];
  const states = async (admin: string): Promise<string[]> =>
    ((await (await request(`${admin}/backends`)).body.json()) as { state: string }[]).map((b) => b.state);
  try {
    for (const extra of [[], ['--eject-on-500']]) {
      const p = await startProxy([...backendFlags(pool), '--no-affinity', '--eject-after', '2', '--eject-cooldown', '60000', '--admin', '127.0.0.1:0', ...extra]);
      const admin = p.output.find((l) => l.startsWith('admin on '))!.slice('admin on '.length);
      try {
        for (let i = 0; i < 30; i++) assert.equal((await get(`${p.url}/broken`)).status, 500, 'the app\'s 500 passes through');
        const down = (await states(admin)).filter((s) => s === 'down').length;
        if (extra.length === 0) assert.equal(down, 0, 'an app\'s 500 ejects nothing by default');
        else assert.equal(down, 1, 'with --eject-on-500, at most 50% of three: one backend');
        // A fresh client on another path is served, never the proxy's own 503.
        const seen = new Set<string>();
        for (let i = 0; i < 6; i++) {
          const r = await get(`${p.url}/ok`);
          assert.equal(r.status, 200);
          seen.add(r.headers['x-backend'] as string);
        }
        assert.equal(seen.size, 3 - down, `served by ${[...seen]}`);
      } finally {
        await p.stop();
      }
    }
  } finally {
    await Promise.all(pool.map((o) => o.close()));
  }
});

test('passive ejection of a killed backend: refused connections eject it (requests retried elsewhere), and it is back in the pool after the cool-down', T, async () => {
  const dead = await startOriginProcess('dead');
  const p = await startProxy(['--backend', `a=${origins[0].url}`, ...backendFlags([dead]), '--no-affinity', '--eject-after', '2', '--eject-cooldown', '1500', '--admin', '127.0.0.1:0']);
  const admin = p.output.find((l) => l.startsWith('admin on '))!.slice('admin on '.length);
  const stateOfDead = async (): Promise<string> => {
    const list = await (await request(`${admin}/backends`)).body.json() as { name: string; state: string }[];
    return list.find((b) => b.name === 'dead')!.state;
  };
  try {
    await dead.kill();
    for (let i = 0; i < 4; i++) assert.equal((await get(p.url)).headers['x-backend'], 'a', 'retried on the live backend');
    assert.equal(await stateOfDead(), 'down', 'ejected after two failed connections');
    await waitFor(async () => (await stateOfDead()) === 'up', { what: 'the cool-down to end', timeoutMs: 6000 });
  } finally {
    await p.stop();
    await dead.kill();
  }
});

test('health checks: a backend answering 500 on the health path leaves the rotation and comes back once healthy', T, async () => {
  let healthy = true;
  const sick = await startOrigin('sick', (req, res, o) => {
    if (req.url === '/health') { res.writeHead(healthy ? 200 : 500); res.end(); return; }
    res.writeHead(200, { 'x-backend': o.name });
    res.end();
  });
  const proxy = await startProxy([...backendFlags([origins[0], sick]), '--health-path', '/health', '--health-interval', '100', '--health-rise', '2', '--health-fall', '2', '--no-affinity']);
  const spread = async (): Promise<string> => {
    const seen = new Set<string>();
    for (let i = 0; i < 10; i++) seen.add((await get(proxy.url)).headers['x-backend'] as string);
    return [...seen].sort().join(',');
  };
  try {
    assert.equal(await spread(), 'a,sick');
    healthy = false;
    await waitFor(async () => (await spread()) === 'a', { what: 'sick out of the rotation' });
    assert.equal(await spread(), 'a', 'and it stays out');
    healthy = true;
    await waitFor(async () => (await spread()) === 'a,sick', { what: 'sick back in the rotation' });
  } finally {
    await proxy.stop();
    await sick.close();
  }
});

test('an affinity worker killed under load: no failed request', T, async () => {
  const proxy = await startProxy([...backendFlags(origins), '--memcache', mc.address, '--workers', '2', '--key-prefix', `wk-${Date.now()}:`], { STICKY_PROXY_TEST_HOOKS: '1' });
  try {
    await learnSessions(proxy.url, 'w', 20);
    const running = load(proxy.url, { concurrency: 16, durationMs: 3000, shot: sessionShot('w', 20) });
    for (let k = 0; k < 3; k++) {
      await sleep(700); // the scenario: a worker killed every 0.7 s under load
      process.kill(proxy.pid, 'SIGTTIN');
    }
    const r = await running;
    assert.equal(r.failed, 0, r.failures.join('; '));
    assert.ok(proxy.output.some((l) => l.includes('affinity worker ended')), 'a worker did end');
    await sticks(proxy.url, 'PHPSESSID=w3');
  } finally {
    await proxy.stop();
  }
});

/** How each request in the proxy's access log (--access-log, to stdout) was routed, in order. */
function accessRoutes(proxy: ProxyProcess): string[] {
  return proxy.output.filter((l) => l.includes('"access":true')).map((l) => /"affinity":"(\w+)"/.exec(l)?.[1] ?? '');
}

// The worker's test hook (workers/affinity.ts) keeps it busy for 10 s on a batch holding this cookie.
const STUCK = 'PHPSESSID=sticky-proxy-test-stuck-worker';

test('a stuck affinity worker (--workers 1): requests with a session cookie are answered within the batch deadline, by the fallback route', T, async () => {
  const storeTimeout = 100;
  const proxy = await startProxy([...backendFlags(origins), '--memcache', mc.address, '--workers', '1', '--threads', '1', '--store-timeout', String(storeTimeout), '--key-prefix', `stuck-${Date.now()}:`, '--access-log'], { STICKY_PROXY_TEST_HOOKS: '1' });
  try {
    assert.equal((await get(proxy.url, undefined, { cookie: 'PHPSESSID=warm-up' })).status, 200, 'the worker has started');
    const stuck = get(proxy.url, undefined, { cookie: STUCK });
    await sleep(150); // the scenario: the stuck batch reaches the only worker first
    // Sessions this instance never saw: only the store, through the stuck worker, could place them.
    const timed = async (i: number): Promise<[number, number]> => {
      const t0 = Date.now();
      const r = await get(proxy.url, undefined, { cookie: `PHPSESSID=unseen-s${i}` });
      return [r.status, Date.now() - t0];
    };
    const replies = await Promise.all([0, 1, 2, 3, 4, 5].map(timed));
    // The deadline is the store timeout + 500 ms; the worker stays stuck for 10 s.
    for (const [status, ms] of replies) {
      assert.equal(status, 200);
      assert.ok(ms < storeTimeout + 500 + 2000, `answered after ${ms} ms`);
    }
    assert.equal((await stuck).status, 200);
    // The stuck batch is routed by the fallback. The six behind it are too, or,
    // when the worker replaced at the deadline starts fast enough (a warm
    // compile cache), answered by it as misses; either way within the deadline.
    // The first line is the warm-up's, answered before the others were sent.
    const routes = (): string[] => accessRoutes(proxy).slice(1);
    await waitFor(() => routes().length === 7, { what: 'seven access log lines' });
    assert.ok(routes().includes('fallback'), `the stuck batch by the fallback route: ${routes()}`);
    assert.ok(routes().every((r) => r === 'fallback' || r === 'miss'), `${routes()}`);
  } finally {
    await proxy.stop();
  }
});

test('a slow affinity worker (--workers 1): a learn past the batch deadline lets its response go on, its session sticks here at once, and the worker, not replaced, still writes it', T, async () => {
  const prefix = `slow-${Date.now()}:`;
  const proxy = await startProxy([...backendFlags(origins), '--memcache', mc.address, '--workers', '1', '--threads', '1', '--store-timeout', '100', '--key-prefix', prefix, '--access-log'], { STICKY_PROXY_TEST_HOOKS: '1' });
  try {
    assert.equal((await get(proxy.url, undefined, { cookie: 'PHPSESSID=warm-up' })).status, 200, 'the worker has started');
    // The worker's test hook spends 2 s on a batch holding this id: past the deadline (600 ms), short of being taken for stuck.
    const id = 'sticky-proxy-test-slow-worker-1';
    const first = await get(proxy.url, undefined, { 'x-set-cookie': JSON.stringify([`PHPSESSID=${id}; Max-Age=600`]) });
    assert.equal(first.status, 200);
    const owner = first.headers['x-backend'] as string;
    const again = await get(proxy.url, undefined, { cookie: `PHPSESSID=${id}` });
    assert.equal(again.headers['x-backend'], owner, 'the session stays where it was issued');
    // From the near cache, fresh or remembered; not rendezvous hashing, which knows nothing of it.
    await waitFor(() => accessRoutes(proxy).length === 3, { what: 'three access log lines' });
    assert.match(accessRoutes(proxy)[2], /^(hit|stale)$/);
    await waitFor(async () => (await inspect(mc.port, `${prefix}PHPSESSID:${id}`))?.value === owner, { what: 'the slow worker to write the binding', timeoutMs: 10_000 });
    assert.ok(!proxy.output.some((l) => l.includes('affinity worker ended')), 'the slow worker was not replaced');
  } finally {
    await proxy.stop();
  }
});

test('a slow affinity worker with the embedded store (--workers 1): a learn past the batch deadline is written by the loop, and the session sticks at once', T, async () => {
  const proxy = await startProxy([...backendFlags(origins), '--workers', '1', '--threads', '1', '--store-timeout', '100', '--access-log'], { STICKY_PROXY_TEST_HOOKS: '1' });
  try {
    assert.equal((await get(proxy.url, undefined, { cookie: 'PHPSESSID=warm-up' })).status, 200, 'the worker has started');
    // Past the deadline (600 ms) the response goes on while the worker spends 2 s on the batch.
    const id = 'sticky-proxy-test-slow-worker-2';
    const first = await get(proxy.url, undefined, { 'x-set-cookie': JSON.stringify([`PHPSESSID=${id}; Max-Age=600`]) });
    const owner = first.headers['x-backend'] as string;
    // The loop reads the embedded store itself: no batch, so the busy worker is not asked.
    for (let i = 0; i < 4; i++) assert.equal((await get(proxy.url, undefined, { cookie: `PHPSESSID=${id}` })).headers['x-backend'], owner, `request ${i}`);
    await waitFor(() => accessRoutes(proxy).length === 6, { what: 'six access log lines' });
    assert.deepEqual(accessRoutes(proxy).slice(2), ['hit', 'hit', 'hit', 'hit']);
  } finally {
    await proxy.stop();
  }
});

test('SIGTERM with 20 slow requests in flight: all 20 complete with Connection: close, and the process exits 0', T, async () => {
  const slow = await startOrigin('slow', (_req, res) => { setTimeout(() => { res.writeHead(200); res.end('done'); }, 1000); });
  const proxy = await startProxy(['--backend', `slow=${slow.url}`]);
  try {
    const inflight = Array.from({ length: 20 }, async () => {
      const r = await request(proxy.url, { headersTimeout: 10_000 });
      return [r.statusCode, r.headers.connection, await r.body.text()];
    });
    await waitFor(() => slow.requests === 20, { what: '20 requests at the origin' });
    const exit = proxy.stop();
    const replies = await Promise.all(inflight);
    for (const r of replies) assert.deepEqual(r, [200, 'close', 'done'], 'answered while draining: the connection closes after it');
    assert.equal(await exit, 0);
    await assert.rejects(request(proxy.url), 'no longer accepting');
  } finally {
    await proxy.stop();
    await slow.close();
  }
});

test('SIGTERM while an answer that sets a session cookie is in flight: the client gets it, and memcached holds the binding afterwards', T, async () => {
  const prefix = `term-${Date.now()}:`;
  const slow = await startOrigin('slowlearn', (req, res) => {
    req.resume();
    setTimeout(() => { res.writeHead(200, { 'set-cookie': 'PHPSESSID=at-shutdown; Max-Age=600' }); res.end('done'); }, 800);
  });
  const proxy = await startProxy(['--backend', `slowlearn=${slow.url}`, '--memcache', mc.address, '--key-prefix', prefix, '--workers', '1']);
  try {
    const inflight = request(proxy.url, { headersTimeout: 10_000 });
    await waitFor(() => slow.requests === 1, { what: 'the request at the origin' });
    const exit = proxy.stop();
    const r = await inflight;
    assert.equal(r.statusCode, 200);
    assert.equal(r.headers['set-cookie'], 'PHPSESSID=at-shutdown; Max-Age=600');
    assert.equal(await r.body.text(), 'done');
    assert.equal(await exit, 0);
    assert.equal((await inspect(mc.port, `${prefix}PHPSESSID:at-shutdown`))?.value, 'slowlearn');
  } finally {
    await proxy.stop();
    await slow.close();
  }
});

test('slowloris: headers at a byte a second are cut off at the header timeout with 408; others are served meanwhile', T, async () => {
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
        await sleep(200); // the scenario: other clients keep coming while the slow one drips
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

test('limits and upstream timeouts answer with their status: 503 over the connection cap, 504 for a silent backend', T, async () => {
  const silent = await startOrigin('silent', () => { /* never answers */ });
  const proxy = await startProxy(['--backend', `silent=${silent.url}`, '--max-connections', '3', '--upstream-header-timeout', '300', '--retries', '0', '--admin', '127.0.0.1:0']);
  const admin = proxy.output.find((l) => l.startsWith('admin on '))!.slice('admin on '.length);
  try {
    const r = await get(proxy.url);
    assert.equal(r.status, 504);
    const { port } = new URL(proxy.url);
    const socks = [0, 1, 2].map(() => connect(Number(port), '127.0.0.1'));
    await waitFor(async () => /^sticky_client_connections 3$/m.test(await (await request(`${admin}/metrics`)).body.text()), { what: 'three client connections open' });
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
