// The operations surface through the real proxy process: admin API with drain,
// disable and enable; metrics summed across worker threads; the configuration
// file and SIGHUP reload under load; the access log; TLS on both sides.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { connect } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { startMemcached, type Memcached } from './helpers/memcached.ts';
import { startOrigin, backendFlags, type Origin } from './helpers/origins.ts';
import { get, runCli, startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { load } from './helpers/load.ts';
import { waitFor, waitForLine } from './helpers/wait.ts';

// A hang fails its test instead of the whole file.
const T = { timeout: 30_000 };

let origins: Origin[] = [];
let mc: Memcached;
const dir = mkdtempSync(join(tmpdir(), 'sticky-ops-'));

before(async () => {
  origins = [await startOrigin('a'), await startOrigin('b'), await startOrigin('c')];
  mc = await startMemcached();
}, T);
after(async () => {
  await Promise.all(origins.map((o) => o.close()));
  await mc.stop();
}, T);

function adminUrl(p: ProxyProcess): string {
  const line = p.output.find((l) => l.startsWith('admin on '))!;
  return line.slice('admin on '.length);
}

async function admin(p: ProxyProcess, method: 'GET' | 'POST', path: string): Promise<{ status: number; body: string }> {
  // The admin API refuses a POST a browser could send cross-site: this header shows it is not one.
  const r = await request(`${adminUrl(p)}${path}`, { method, headers: { 'x-requested-with': 'test' } });
  return { status: r.statusCode, body: await r.body.text() };
}

async function learn(url: string, id: string): Promise<string> {
  const r = await get(url, undefined, { 'x-set-cookie': JSON.stringify([`PHPSESSID=${id}; Max-Age=600`]) });
  return r.headers['x-backend'] as string;
}

async function backendOf(url: string, id?: string): Promise<string> {
  const r = await get(url, undefined, id === undefined ? {} : { cookie: `PHPSESSID=${id}` });
  assert.equal(r.status, 200);
  return r.headers['x-backend'] as string;
}

test('drain keeps bound sessions and sends new ones elsewhere; disable moves them; enable restores', T, async () => {
  const p = await startProxy([...backendFlags(origins.slice(0, 2)), '--admin', '127.0.0.1:0', '--memcache', mc.address, '--key-prefix', `drain-${Date.now()}:`]);
  try {
    const owners = new Map<string, string>();
    for (let i = 0; i < 6; i++) owners.set(`d${i}`, await learn(p.url, `d${i}`));
    const onA = [...owners].filter(([, b]) => b === 'a').map(([id]) => id);
    assert.ok(onA.length > 0);

    assert.equal((await admin(p, 'POST', '/backends/a/drain')).status, 200);
    const listed = JSON.parse((await admin(p, 'GET', '/backends')).body) as { name: string; state: string; weight: number; url: string; active: number }[];
    assert.deepEqual(listed.map((b) => [b.name, b.state]), [['a', 'draining'], ['b', 'up']]);
    for (const id of onA) assert.equal(await backendOf(p.url, id), 'a', 'bound sessions survive a drain');
    for (let i = 0; i < 4; i++) assert.equal(await learn(p.url, `new${i}`), 'b', 'new sessions go elsewhere');

    assert.equal((await admin(p, 'POST', '/backends/a/disable')).status, 200);
    for (const id of onA) {
      assert.equal(await backendOf(p.url, id), 'b', 'a disabled backend gets no traffic');
      assert.equal(await backendOf(p.url, id), 'b', 'and its sessions stick where they moved');
    }
    assert.equal((await admin(p, 'POST', '/backends/a/enable')).status, 200);
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) seen.add(await backendOf(p.url));
    assert.deepEqual(seen, new Set(['a', 'b']));
    assert.equal((await admin(p, 'POST', '/backends/nope/drain')).status, 404);
    assert.equal((await admin(p, 'GET', '/healthz')).status, 200);
    assert.equal((await admin(p, 'GET', '/readyz')).status, 200);
  } finally {
    await p.stop();
  }
});

test('/readyz is 503 while no backend is up', T, async () => {
  const p = await startProxy([...backendFlags(origins.slice(0, 1)), '--admin', '127.0.0.1:0']);
  try {
    await admin(p, 'POST', '/backends/a/disable');
    assert.equal((await admin(p, 'GET', '/readyz')).status, 503);
    assert.equal((await get(p.url)).status, 503);
  } finally {
    await p.stop();
  }
});

/** The value of a sample line in Prometheus text; a missing line fails the test. */
function sample(text: string, line: string): number {
  const m = text.split('\n').find((l) => l.startsWith(`${line} `));
  assert.ok(m !== undefined, `no sample ${line}`);
  return Number(m.slice(line.length + 1));
}

test('a metrics scrape parses and its counters move with traffic, summed across worker threads', T, async () => {
  // A generous store deadline (the batch deadline is this + 500 ms): on a loaded machine the first
  // batches can wait seconds on workers still loading, and a batch past its deadline loses affinity.
  // --near-cache-ttl 0: every lookup goes to the workers and memcached, so it is their counts that are summed.
  const p = await startProxy([...backendFlags(origins.slice(0, 2)), '--admin', '127.0.0.1:0', '--workers', '3', '--memcache', mc.address, '--key-prefix', `met-${Date.now()}:`, '--store-timeout', '5000', '--near-cache-ttl', '0']);
  try {
    for (let i = 0; i < 10; i++) await learn(p.url, `m${i}`);
    // Concurrent requests spread batches over the three workers.
    const r = await load(p.url, { concurrency: 12, durationMs: 1000, shot: (i) => ({ headers: { cookie: `PHPSESSID=m${i % 10}` } }) });
    assert.equal(r.failed, 0);
    // Three idle client connections, open while the scrape is taken.
    const idle = [0, 1, 2].map(() => connect(Number(new URL(p.url).port), '127.0.0.1'));
    const text = await waitFor(async () => {
      const t = (await admin(p, 'GET', '/metrics')).body;
      return sample(t, 'sticky_client_connections') >= 3 ? t : null;
    }, { what: 'sticky_client_connections to count three open connections' });
    for (const s of idle) s.destroy();
    for (const line of text.split('\n')) {
      if (line === '' || line.startsWith('#')) continue;
      assert.match(line, /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? ([-+]?[0-9.]+(e[-+]?[0-9]+)?|NaN|[-+]Inf)$/, line);
    }
    const hits = sample(text, 'sticky_affinity_lookups_total{outcome="hit"}');
    const lookups = text.split('\n').filter((l) => l.startsWith('sticky_affinity_lookups_total')).join('; ');
    assert.equal(hits, r.ok, `every lookup of every worker is counted once (${lookups})`);
    assert.equal(sample(text, 'sticky_affinity_bindings_total{change="learn"}'), 10);
    const answered = sample(text, 'sticky_requests_total{backend="a",status="200"}') + sample(text, 'sticky_requests_total{backend="b",status="200"}');
    assert.equal(answered, r.ok + 10);
    const timed = sample(text, 'sticky_request_duration_seconds_count{backend="a"}') + sample(text, 'sticky_request_duration_seconds_count{backend="b"}');
    assert.equal(timed, r.ok + 10);
    const gets = sample(text, 'sticky_store_operation_seconds_count{op="get"}');
    assert.ok(gets >= r.ok, `store gets ${gets} against ${r.ok} requests (${lookups})`);
    assert.equal(sample(text, 'sticky_backend_up{backend="a"}'), 1);
    // Every lookup (one per load request) and every learn went through a batch.
    assert.equal(sample(text, 'sticky_worker_batch_size_sum'), r.ok + 10);
    assert.ok(sample(text, 'sticky_worker_batch_size_count') > 0);
  } finally {
    await p.stop();
  }
});

test('the configuration file: flags override it, and errors name the file field', T, async () => {
  const file = join(dir, 'bad.json');
  writeFileSync(file, JSON.stringify({ backend: ['a=http://127.0.0.1:1'], workers: 'many' }));
  const bad = await runCli(['--config', file]);
  assert.equal(bad.code, 2);
  assert.equal(bad.stderr.trim().split('\n').length, 1);
  assert.match(bad.stderr, /--config: .*bad\.json: field "workers": expected a whole number/);
  writeFileSync(file, JSON.stringify({ backends: [] }));
  assert.match((await runCli(['--config', file])).stderr, /unknown field "backends"/);

  const good = join(dir, 'good.json');
  writeFileSync(good, JSON.stringify({ backend: [`a=${origins[0].url}`], balance: 'least-conn', 'access-log': true }));
  const p = await startProxy(['--config', good, '--balance', 'random-two']);
  try {
    assert.ok(p.output.some((l) => l.includes('balance: random-two')), 'the flag overrides the file');
    assert.equal(await backendOf(p.url), 'a');
  } finally {
    await p.stop();
  }
});

test('SIGHUP reloads the file: backends added and removed while load runs, with no failed request', T, async () => {
  const file = join(dir, 'reload.json');
  writeFileSync(file, JSON.stringify({ backend: [`a=${origins[0].url}`, `b=${origins[1].url}`], 'no-affinity': true }));
  const p = await startProxy(['--config', file]);
  try {
    const running = load(p.url, { concurrency: 8, durationMs: 2500, shot: () => ({}) });
    await sleep(600); // the scenario: the reload comes while the load runs
    writeFileSync(file, JSON.stringify({ backend: [`b=${origins[1].url}`, `c=${origins[2].url},weight=2`], 'no-affinity': true }));
    process.kill(p.pid, 'SIGHUP');
    const r = await running;
    assert.equal(r.failed, 0, r.failures.join('; '));
    // Alone now, 9 picks of smooth round robin over b (weight 1) and c (2).
    const after = new Map<string, number>();
    for (let i = 0; i < 9; i++) { const b = await backendOf(p.url); after.set(b, (after.get(b) ?? 0) + 1); }
    assert.equal(after.get('b'), 3);
    assert.equal(after.get('c'), 6);
    assert.ok(p.output.some((l) => l.includes('backends reloaded') && l.includes('"added":["c"]') && l.includes('"removed":["a"]')));
    // A file that does not validate changes nothing.
    writeFileSync(file, '{ not json');
    process.kill(p.pid, 'SIGHUP');
    await waitForLine(p.output, (l) => l.includes('configuration rejected'), { what: 'the rejected reload logged' });
    assert.ok(['b', 'c'].includes(await backendOf(p.url)));
  } finally {
    await p.stop();
  }
});

test('the access log has method, path, status, backend, affinity and duration, and no cookie or session id', T, async () => {
  const p = await startProxy([...backendFlags(origins.slice(0, 1)), '--access-log']);
  try {
    await learn(p.url, 'secret-session-id');
    await get(`${p.url}/cart;jsessionid=secret-in-path?token=secret-in-query`, undefined, { cookie: 'PHPSESSID=secret-session-id' });
    const access = (): string[] => p.output.filter((l) => l.includes('"access":true'));
    await waitFor(() => access().length >= 2, { what: 'two access log lines' });
    const lines = access().map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(lines.length, 2);
    const { method, path, status, backend, affinity, ms } = lines[1];
    assert.deepEqual({ method, path, status, backend, affinity }, { method: 'GET', path: '/cart', status: 200, backend: 'a', affinity: 'hit' });
    assert.equal(typeof ms, 'number');
    assert.ok(!p.output.some((l) => l.includes('secret')), 'nothing sensitive logged');
  } finally {
    await p.stop();
  }
});

test('HTTPS on the listener and to a backend, with certificates made by the test', T, async () => {
  const openssl = (...args: string[]): void => { execFileSync('openssl', args, { stdio: 'ignore' }); };
  const f = (n: string): string => join(dir, n);
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=test-ca', '-keyout', f('ca.key'), '-out', f('ca.pem'));
  writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  for (const name of ['front', 'back']) {
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`));
    openssl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '1', '-extfile', f('ext.cnf'), '-out', f(`${name}.pem`));
  }
  const backend = createHttpsServer({ cert: readFileSync(f('back.pem')), key: readFileSync(f('back.key')) }, (req, res) => {
    const sni = (req.socket as TLSSocket).servername;
    res.writeHead(200, { 'x-backend': 'tls', 'x-seen-proto': String(req.headers['x-forwarded-proto']), 'x-seen-sni': typeof sni === 'string' ? sni : 'none' });
    res.end('secure');
  });
  backend.listen(0, '127.0.0.1');
  await once(backend, 'listening');
  const port = (backend.address() as { port: number }).port;
  const p = await startProxy(['--backend', `tls=https://127.0.0.1:${port}`, '--backend-ca', f('ca.pem'), '--tls-cert', f('front.pem'), '--tls-key', f('front.key')]);
  const agent = new Agent({ connect: { ca: readFileSync(f('ca.pem')) } });
  try {
    assert.ok(p.url.startsWith('https://'));
    const r = await request(p.url, { dispatcher: agent });
    assert.equal(r.statusCode, 200);
    assert.equal(await r.body.text(), 'secure');
    assert.equal(r.headers['x-seen-proto'], 'https');
    // RFC 6066 names no IP address in SNI (Node warns, DEP0123, when asked to): the certificate is checked against the IP.
    assert.equal(r.headers['x-seen-sni'], 'none');
    assert.ok(!p.output.some((l) => l.includes('DEP0123')), `no warning: ${p.output.filter((l) => l.includes('Warning')).join(' | ')}`);
  } finally {
    await agent.close();
    await p.stop();
    backend.closeAllConnections();
    backend.close();
  }
});
