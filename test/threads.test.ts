// Several event loops on one port (--threads), one truth per process: a
// session learnt through one loop sticks through the others, a drain is seen
// by every loop, /metrics sums them all, a crashed loop is restarted while
// the others' connections go on, and a new process takes over the port
// (SIGUSR2 to the old one) without one failed request under load.
import { test, after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { request } from 'undici';
import { freePort, startMemcached, type Memcached } from './helpers/memcached.ts';
import { backendFlags, startOrigin, type Origin } from './helpers/origins.ts';
import { startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { load } from './helpers/load.ts';
import { waitFor, waitForLine } from './helpers/wait.ts';

let origins: Origin[] = [];
let mc: Memcached;

before(async () => {
  origins = [await startOrigin('a'), await startOrigin('b'), await startOrigin('c')];
  mc = await startMemcached();
});
after(async () => {
  await Promise.all(origins.map((o) => o.close()));
  await mc.stop();
});

interface AccessLine { loop: number; path: string; backend: string; status: number }

function accessLines(p: ProxyProcess): AccessLine[] {
  return p.output.filter((l) => l.includes('"access":true')).map((l) => JSON.parse(l) as AccessLine);
}

/** One request on a fresh connection (so the kernel may hand it to any loop); the backend that answered. */
async function fresh(url: string, path: string, headers: Record<string, string> = {}): Promise<string> {
  const r = await request(`${url}${path}`, { headers: { ...headers, connection: 'close' } });
  await r.body.text();
  assert.equal(r.statusCode, 200);
  return r.headers['x-backend'] as string;
}

for (const store of ['embedded', 'memcached'] as const) {
  test(`${store}: a session learnt through one loop sticks through every other`, { timeout: 60_000 }, async () => {
    const storeFlags = store === 'memcached' ? ['--memcache', mc.address, '--key-prefix', `threads-${Date.now()}:`] : [];
    const p = await startProxy([...backendFlags(origins), '--threads', '4', '--access-log', ...storeFlags]);
    try {
      const owner = await fresh(p.url, '/learn', { 'x-set-cookie': JSON.stringify(['PHPSESSID=t1; Max-Age=600']) });
      for (let i = 0; i < 40; i++) assert.equal(await fresh(p.url, `/again-${i}`, { cookie: 'PHPSESSID=t1' }), owner);
      const lines = await waitFor(() => {
        const l = accessLines(p).filter((a) => a.path.startsWith('/again-'));
        return l.length === 40 ? l : null;
      }, { what: '40 access log lines' });
      const loops = new Set(lines.map((l) => l.loop));
      assert.ok(loops.size >= 2, `answered by loops ${[...loops]}: the kernel should spread 40 connections`);
    } finally {
      await p.stop();
    }
  });
}

test('a drain through the admin API holds for every loop; /metrics sums every loop', { timeout: 60_000 }, async () => {
  const adminPort = await freePort();
  const p = await startProxy([...backendFlags(origins), '--threads', '3', '--access-log', '--admin', `127.0.0.1:${adminPort}`, '--no-affinity']);
  try {
    const drained = await request(`http://127.0.0.1:${adminPort}/backends/a/drain`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-sticky-proxy': '1' } });
    assert.equal(drained.statusCode, 200);
    await drained.body.text();
    const seen = new Set<string>();
    for (let i = 0; i < 30; i++) seen.add(await fresh(p.url, `/d-${i}`));
    assert.deepEqual([...seen].sort(), ['b', 'c'], 'no loop sends new requests to the drained backend');
    const lines = accessLines(p).filter((a) => a.path.startsWith('/d-'));
    assert.ok(new Set(lines.map((l) => l.loop)).size >= 2, 'more than one loop answered');
    const metrics = await (await request(`http://127.0.0.1:${adminPort}/metrics`)).body.text();
    let sum = 0;
    for (const m of metrics.matchAll(/^sticky_requests_total\{backend="(b|c)",status="200"\} (\d+)$/gm)) sum += Number(m[2]);
    assert.equal(sum, 30, 'the scrape sums every loop');
    assert.match(metrics, /^sticky_event_loops 3$/m);
  } finally {
    await p.stop();
  }
});

test('a crashed loop is restarted; the other loops\' connections go on', { timeout: 60_000 }, async () => {
  const p = await startProxy([...backendFlags(origins), '--threads', '2', '--access-log', '--no-affinity'], { STICKY_PROXY_TEST_HOOKS: '1' });
  const sockets: Socket[] = [];
  try {
    const { port } = new URL(p.url);
    // Persistent connections; the access log tells which loop holds each.
    const answers = new Map<number, string>();
    for (let i = 0; i < 16; i++) {
      const s = connect(Number(port), '127.0.0.1');
      s.on('error', () => {});
      s.on('data', (d) => answers.set(i, (answers.get(i) ?? '') + d.toString('latin1')));
      s.write(`GET /conn-${i}/first HTTP/1.1\r\nHost: x\r\n\r\n`);
      sockets.push(s);
    }
    await waitFor(() => accessLines(p).filter((a) => a.path.endsWith('/first')).length === 16, { what: 'a first answer on every connection' });
    const loopOf = new Map(accessLines(p).filter((a) => a.path.endsWith('/first')).map((a) => [Number(/\/conn-(\d+)\//.exec(a.path)![1]), a.loop]));
    assert.ok([...loopOf.values()].includes(0) && [...loopOf.values()].includes(1), 'connections on both loops');
    process.kill(p.pid, 'SIGTTOU'); // test hook: loop 1 throws
    await waitForLine(p.output, (l) => l.includes('starting it again'), { what: 'the restart log line' });
    for (let i = 0; i < 16; i++) sockets[i].write(`GET /conn-${i}/second HTTP/1.1\r\nHost: x\r\n\r\n`);
    await waitFor(() => [...loopOf].every(([i, loop]) => loop === 1 ? sockets[i].destroyed || sockets[i].readableEnded : (answers.get(i) ?? '').split('HTTP/1.1 200').length === 3),
      { what: 'loop 0\'s connections answered twice, loop 1\'s closed' });
    // The restarted loop serves new connections.
    await waitFor(async () => {
      await fresh(p.url, '/after-restart');
      return accessLines(p).some((a) => a.path === '/after-restart' && a.loop === 1);
    }, { what: 'the restarted loop to answer a new connection', timeoutMs: 10_000 });
  } finally {
    for (const s of sockets) s.destroy();
    await p.stop();
  }
});

describe('zero-downtime restart', { timeout: 90_000 }, () => {
  const MIGRATE = '/proc/sys/net/ipv4/tcp_migrate_req';
  let previous = '';
  let canMigrate = false;
  before(() => {
    // Connections queued in the old process's accept backlog move to the new
    // process's listener only with this setting (Linux 5.14+); the README says so.
    try {
      previous = readFileSync(MIGRATE, 'utf8').trim();
      writeFileSync(MIGRATE, '1');
      canMigrate = true;
    } catch {
      canMigrate = false;
    }
  });
  after(() => { if (canMigrate) writeFileSync(MIGRATE, previous); });

  test('a new process on the same port takes over under load (SIGUSR2 to the old one): not one request fails', async (t) => {
    if (!canMigrate) {
      t.skip(`cannot set ${MIGRATE} here (needs root and Linux 5.14+)`);
      return;
    }
    const port = await freePort();
    const flags = [...backendFlags(origins), '--threads', '2', '--memcache', mc.address, '--key-prefix', `handover-${Date.now()}:`];
    const old = await startProxy([...flags, '--listen', `127.0.0.1:${port}`]);
    let next: ProxyProcess | undefined;
    try {
      const url = `http://127.0.0.1:${port}`;
      const running = load(url, { concurrency: 16, durationMs: 5000, shot: (i) => ({ path: `/h-${i}`, headers: { cookie: `PHPSESSID=h${i % 50}` } }) });
      await new Promise((resolve) => setTimeout(resolve, 1000)); // the scenario: load before the switch
      next = await startProxy([...flags, '--listen', `127.0.0.1:${port}`]);
      const exited = old.stop('SIGUSR2');
      const r = await running;
      assert.equal(await exited, 0, 'the old process drained and exited 0');
      assert.equal(r.failed, 0, r.failures.join('; '));
      assert.ok(r.ok > 200, `only ${r.ok} requests`);
      assert.ok(['a', 'b', 'c'].includes(await fresh(url, '/after')), 'the new process serves');
    } finally {
      await old.stop();
      await next?.stop();
    }
  });
});
