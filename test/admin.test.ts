// The admin API against the real proxy process: bad requests answered, not
// crashing it; the bearer token; the cross-site rule for POSTs; runtime
// weights shared by every event loop; the HTML status page (in a real headless
// chromium where installed); and --monitor-uri on the traffic port.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { get as httpGet, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { request } from 'undici';
import { escapeHtml, lookupsFromMetrics, renderStatusPage } from '../src/status-page.ts';
import { backendFlags, scripted, startOrigin, type Origin } from './helpers/origins.ts';
import { ROOT, runCli, startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { waitForLine } from './helpers/wait.ts';

// A hang fails its test instead of the whole file.
const T = { timeout: 30_000 };
const TOKEN = 's3cr3t-Token_42';
const MONITOR = '/_monitor';
const OUTPUT = join(ROOT, 'test', 'output');

const dir = mkdtempSync(join(tmpdir(), 'sticky-admin-'));
let origins: Origin[] = [];
/** "backend path" of every request an origin received. */
const seen: string[] = [];
/** With --admin-token-file and --monitor-uri. */
let guarded: ProxyProcess;
/** No token, no monitor URI. */
let open: ProxyProcess;

// An origin that records what reaches it, names itself, and sets the cookies asked for.
function app(req: IncomingMessage, res: ServerResponse, origin: Origin): void {
  seen.push(`${origin.name} ${req.url}`);
  scripted(req, res, origin);
}

function adminUrl(p: ProxyProcess): string {
  return p.output.find((l) => l.startsWith('admin on '))!.slice('admin on '.length);
}

interface Answer { status: number; headers: Record<string, string | string[] | undefined>; body: string }

async function call(p: ProxyProcess, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<Answer> {
  const r = await request(`${adminUrl(p)}${path}`, { method: method as 'GET', headers, body });
  return { status: r.statusCode, headers: r.headers, body: await r.body.text() };
}

const bearer = { authorization: `Bearer ${TOKEN}` };
const xhr = { 'x-requested-with': 'test' };

/** One request on its own connection, so --threads loops all get some (SO_REUSEPORT spreads connections). */
function fresh(url: string, headers: Record<string, string> = {}): Promise<{ status: number; backend: string; body: string }> {
  return new Promise((resolve, reject) => {
    httpGet(url, { agent: false, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode!, backend: String(res.headers['x-backend'] ?? ''), body }));
    }).on('error', reject);
  });
}

/** Raw bytes on a socket: for request-targets an HTTP client library would not send as written. */
function raw(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => s.end(text));
    let got = '';
    s.setEncoding('latin1');
    s.on('data', (d: string) => { got += d; });
    s.on('end', () => resolve(got));
    s.on('error', reject);
  });
}

function port(url: string): number {
  return Number(new URL(url).port);
}

before(async () => {
  origins = [await startOrigin('a', app), await startOrigin('b', app)];
  const tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, `  ${TOKEN}\n`); // as an editor leaves it: trimmed
  guarded = await startProxy([...backendFlags(origins), '--admin', '127.0.0.1:0', '--threads', '2',
    '--admin-token-file', tokenFile, '--monitor-uri', MONITOR]);
  open = await startProxy([...backendFlags(origins), '--admin', '127.0.0.1:0', '--threads', '2']);
}, T);

after(async () => {
  await guarded?.stop();
  await open?.stop();
  await Promise.all(origins.map((o) => o.close()));
}, T);

test('a malformed percent-encoding in a backend name is a 400, and the proxy goes on', T, async () => {
  for (const p of [open, guarded]) {
    const answer = await raw(port(adminUrl(p)), `POST /backends/%E0%A4%A/drain HTTP/1.1\r\nHost: localhost\r\nX-Requested-With: t\r\nAuthorization: Bearer ${TOKEN}\r\nConnection: close\r\n\r\n`);
    assert.match(answer, /^HTTP\/1\.1 400 /, answer);
    assert.match(answer, /malformed percent-encoding/);
    const undecodable = await raw(port(adminUrl(p)), `POST /backends/%ZZ/weight HTTP/1.1\r\nHost: localhost\r\nX-Requested-With: t\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{"weight": 2}`);
    assert.match(undecodable, /^HTTP\/1\.1 400 /, undecodable);
    // Still running, still serving: the admin API and the traffic port.
    assert.equal(p.proc.exitCode, null);
    assert.equal((await call(p, 'GET', '/healthz')).status, 200);
    assert.equal((await fresh(`${p.url}/after`)).status, 200);
  }
});

test('with a token, every endpoint but the probes needs Authorization: Bearer', T, async () => {
  for (const [method, path] of [['GET', '/'], ['GET', '/backends'], ['GET', '/metrics'], ['POST', '/backends/a/drain'], ['POST', '/backends/a/weight'], ['GET', '/nope']]) {
    const none = await call(guarded, method, path, xhr);
    assert.equal(none.status, 401, `${method} ${path} without a token`);
    assert.match(String(none.headers['www-authenticate']), /^Bearer realm=/);
    const wrong = await call(guarded, method, path, { ...xhr, authorization: `Bearer ${TOKEN}x` });
    assert.equal(wrong.status, 401, `${method} ${path} with a wrong token`);
    assert.match(String(wrong.headers['www-authenticate']), /error="invalid_token"/);
    const basic = await call(guarded, method, path, { ...xhr, authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}` });
    assert.equal(basic.status, 401, `${method} ${path} with Basic`);
  }
  assert.equal((await call(guarded, 'GET', '/backends', bearer)).status, 200);
  assert.equal((await call(guarded, 'GET', '/backends', { authorization: `bearer ${TOKEN}` })).status, 200, 'the scheme is case-insensitive');
  assert.equal((await call(guarded, 'GET', '/metrics', bearer)).status, 200);
  assert.equal((await call(guarded, 'GET', '/', bearer)).status, 200);
  // Nothing changed while unauthorized.
  const listed = JSON.parse((await call(guarded, 'GET', '/backends', bearer)).body) as { state: string; weight: number }[];
  assert.deepEqual(listed.map((b) => [b.state, b.weight]), [['up', 1], ['up', 1]]);
  // The probes answer anyone: an orchestrator asks them without a token.
  assert.equal((await call(guarded, 'GET', '/healthz')).status, 200);
  assert.equal((await call(guarded, 'GET', '/readyz')).status, 200);
});

test('--admin-token on the command line works as the file does', T, async () => {
  const p = await startProxy([...backendFlags(origins.slice(0, 1)), '--admin', '127.0.0.1:0', '--threads', '1', '--admin-token', TOKEN]);
  try {
    assert.equal((await call(p, 'GET', '/backends')).status, 401);
    assert.equal((await call(p, 'GET', '/backends', bearer)).status, 200);
  } finally {
    await p.stop();
  }
});

test('token configuration errors name their flag, and do not echo the token', T, async () => {
  const b = backendFlags(origins.slice(0, 1));
  const empty = join(dir, 'empty');
  writeFileSync(empty, ' \n');
  const twoLines = join(dir, 'two');
  writeFileSync(twoLines, 'one\ntwo\n');
  const cases: [string[], RegExp][] = [
    [['--admin-token-file', join(dir, 'missing')], /^sticky-proxy: --admin-token-file: cannot read ".*missing" \(ENOENT\)$/],
    [['--admin-token-file', empty], /^sticky-proxy: --admin-token-file: ".*empty" is empty$/],
    [['--admin-token-file', twoLines], /^sticky-proxy: --admin-token-file: ".*two" must hold one line, the token$/],
    [['--admin-token', 'has space'], /^sticky-proxy: --admin-token: expected a bearer token/],
    [['--admin-token', TOKEN, '--admin-token-file', empty], /^sticky-proxy: --admin-token-file: conflicts with --admin-token$/],
  ];
  for (const [args, re] of cases) {
    const r = await runCli([...b, '--admin', '127.0.0.1:0', ...args, '--check']);
    assert.equal(r.code, 2, args.join(' '));
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], re);
    assert.doesNotMatch(r.stderr, /has space/);
  }
  const noAdmin = await runCli([...b, '--admin-token', TOKEN, '--check']);
  assert.equal(noAdmin.code, 2);
  assert.match(noAdmin.stderr.trim(), /^sticky-proxy: --admin-token: needs --admin$/);
});

test('a POST a browser could send cross-site is refused, saying what to send', T, async () => {
  for (const type of [undefined, 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x']) {
    const r = await call(open, 'POST', '/backends/a/drain', type === undefined ? {} : { 'content-type': type });
    assert.equal(r.status, 403, `Content-Type ${type}`);
    const { error } = JSON.parse(r.body) as { error: string };
    assert.match(error, /Content-Type: application\/json/);
    assert.match(error, /X-Requested-With/);
  }
  const state = async (): Promise<string> => (JSON.parse((await call(open, 'GET', '/backends')).body) as { state: string }[])[0].state;
  assert.equal(await state(), 'up', 'a refused POST changes nothing');
  // Each of the three ways through.
  assert.equal((await call(open, 'POST', '/backends/a/drain', { 'content-type': 'application/json; charset=utf-8' })).status, 200);
  assert.equal(await state(), 'draining');
  assert.equal((await call(open, 'POST', '/backends/a/disable', xhr)).status, 200);
  assert.equal(await state(), 'disabled');
  assert.equal((await call(open, 'POST', '/backends/a/enable', { authorization: 'Bearer anything' })).status, 200);
  assert.equal(await state(), 'up');
  // GETs need nothing: they change nothing.
  assert.equal((await call(open, 'GET', '/backends')).status, 200);
});

test('DNS rebinding: a Host that is not an address, localhost or an --admin-host name gets a 421 unless it shows the token', T, async () => {
  const url = adminUrl(open);
  const at = port(url);
  const json = { 'content-type': 'application/json' };
  // A page rebound to 127.0.0.1 is same-origin: it can send JSON, but its Host is still its own name.
  for (const path of ['/backends', '/', '/metrics']) assert.equal((await fresh(`${url}${path}`, { host: `evil.example:${at}` })).status, 421, path);
  const post = await call(open, 'POST', '/backends/a/drain', { ...json, host: `evil.example:${at}` });
  assert.equal(post.status, 421);
  assert.match(post.body, /--admin-host/);
  assert.equal((JSON.parse((await call(open, 'GET', '/backends')).body) as { state: string }[])[0].state, 'up', 'the refused POST changed nothing');
  // The probes answer whatever the Host: orchestrators name pods and services freely.
  assert.equal((await fresh(`${url}/healthz`, { host: 'evil.example' })).status, 200);
  for (const host of [`localhost:${at}`, `LOCALHOST`, `127.0.0.1:${at}`, `[::1]:${at}`]) assert.equal((await fresh(`${url}/backends`, { host })).status, 200, host);
  // With the token, the Host does not matter: a rebinding page cannot know it.
  const g = adminUrl(guarded);
  assert.equal((await fresh(`${g}/backends`, { host: 'evil.example', ...bearer })).status, 200);
  assert.equal((await fresh(`${g}/backends`, { host: 'evil.example' })).status, 421);
  // Names the operator lists are let in, in any case and with a trailing dot.
  const named = await startProxy([...backendFlags(origins.slice(0, 1)), '--admin', '127.0.0.1:0', '--threads', '1', '--admin-host', 'Admin.Example']);
  try {
    const n = adminUrl(named);
    assert.equal((await fresh(`${n}/backends`, { host: `admin.example:${port(n)}` })).status, 200);
    assert.equal((await fresh(`${n}/backends`, { host: 'ADMIN.EXAMPLE.' })).status, 200);
    assert.equal((await fresh(`${n}/backends`, { host: 'other.example' })).status, 421);
  } finally {
    await named.stop();
  }
});

test('POST /backends/NAME/weight sets the weight every event loop balances by', T, async () => {
  const set = (name: string, body: string, headers: Record<string, string> = xhr) => call(open, 'POST', `/backends/${name}/weight`, headers, body);
  const r = await set('a', '{"weight": 3}', { 'content-type': 'application/json' });
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(JSON.parse(r.body), { name: 'a', url: origins[0].url, weight: 3, state: 'up', active: 0 });
  await waitForLine(open.output, (l) => l.includes('"msg":"backend weight set"') && l.includes('"backend":"a"') && l.includes('"weight":3') && l.includes('"was":1'), { what: 'the weight change logged' });
  const listed = JSON.parse((await call(open, 'GET', '/backends')).body) as { name: string; weight: number }[];
  assert.deepEqual(listed.map((b) => [b.name, b.weight]), [['a', 3], ['b', 1]]);
  // Both loops take their turns from one shared ticket: 40 picks are 10 whole cycles of a, a, a, b
  // only if both loops balance by the new weight.
  const counts: Record<string, number> = { a: 0, b: 0 };
  for (let i = 0; i < 40; i++) counts[(await fresh(`${open.url}/w${i}`)).backend]++;
  assert.deepEqual(counts, { a: 30, b: 10 });

  const bad: [string, number, RegExp][] = [
    ['{"weight": 1001}', 400, /whole number from 0 to 1000, got 1001/],
    ['{"weight": -1}', 400, /got -1/],
    ['{"weight": 1.5}', 400, /got 1\.5/],
    ['{"weight": "2"}', 400, /got "2"/],
    ['{"weight": null}', 400, /got null/],
    ['{}', 400, /missing field "weight"/],
    ['{"weight": 2, "name": "a"}', 400, /unknown field "name"/],
    ['[2]', 400, /expected a JSON object/],
    ['weight=2', 400, /body is not JSON/],
    ['', 400, /body is not JSON/],
    [`{"weight": 2, "pad": "${'x'.repeat(5000)}"}`, 413, /body over 4096 bytes/],
  ];
  for (const [body, status, re] of bad) {
    const b = await set('a', body);
    assert.equal(b.status, status, body.slice(0, 40));
    assert.match((JSON.parse(b.body) as { error: string }).error, re);
  }
  // Without a Content-Length (chunked), the limit holds as the body arrives.
  const chunked = await request(`${adminUrl(open)}/backends/a/weight`, { method: 'POST', headers: xhr, body: Readable.from([Buffer.from('{"weight": 2, "pad": "'), Buffer.alloc(5000, 'x'), Buffer.from('"}')]) });
  assert.equal(chunked.statusCode, 413, await chunked.body.text());
  assert.equal((await set('nope', '{"weight": 2}')).status, 404);
  assert.equal((await call(open, 'GET', '/backends/a/weight')).status, 405);
  // A refused change changes nothing.
  assert.equal((JSON.parse((await call(open, 'GET', '/backends')).body) as { weight: number }[])[0].weight, 3);
  // Weight 0 keeps only bound sessions; the last backend taking new ones cannot be set to 0.
  assert.equal((await set('b', '{"weight": 0}')).status, 200);
  const last = await set('a', '{"weight": 0}');
  assert.equal(last.status, 409);
  assert.match(last.body, /at least one backend needs a weight above 0/);
  assert.equal((await set('a', '{"weight": 1}')).status, 200);
  assert.equal((await set('b', '{"weight": 1}')).status, 200);
});

test('any error in a handler is an answer: unknown paths, wrong methods, malformed targets', T, async () => {
  assert.equal((await call(open, 'GET', '/backends/a/drain')).status, 405);
  assert.equal((await call(open, 'DELETE', '/backends')).status, 404);
  assert.equal((await call(open, 'GET', '/nope')).status, 404);
  const absolute = await raw(port(adminUrl(open)), 'GET http://[ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.match(absolute, /^HTTP\/1\.1 400 /, absolute);
  assert.equal((await call(open, 'GET', '/healthz')).status, 200);
});

test('the status page renders escaped HTML from what it is given', () => {
  const html = renderStatusPage({
    backends: [{ name: '<script>alert(1)</script>', url: 'http://x/"><img src=x>', weight: 2, state: 'up', active: 7 }],
    lookups: { hit: 3, miss: 1, storeFailed: 0 },
    affinity: 'ok',
    version: '1.0.0',
    refreshSeconds: 5,
  });
  assert.doesNotMatch(html, /<script>|<img/);
  assert.match(html, /&lt;script&gt;alert\(1\)&lt;\/script&gt;/);
  assert.match(html, /75\.0% \(3 hits, 1 misses, 0 store failures\)/);
  assert.equal(escapeHtml(`<a href="x">'&'</a>`), '&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;');
  assert.deepEqual(lookupsFromMetrics('# HELP x\nsticky_affinity_lookups_total{outcome="hit"} 12\nsticky_affinity_lookups_total{outcome="miss"} 4\nsticky_affinity_lookups_total{outcome="store_failed"} 1\nsticky_affinity_lookups_total_x{outcome="hit"} 99\n'),
    { hit: 12, miss: 4, storeFailed: 1 });
});

test('GET / shows the backends and the affinity hit rate of the whole process', T, async () => {
  const before = await call(guarded, 'GET', '/', bearer);
  assert.match(before.body, /no lookups yet/);
  // One session learnt, then found three times; one unknown id: a miss. 3 of 4 lookups hit.
  const learnt = await fresh(`${guarded.url}/login`, { 'x-set-cookie': JSON.stringify(['connect.sid=hr1; Path=/']) });
  for (let i = 0; i < 3; i++) assert.equal((await fresh(`${guarded.url}/cart`, { cookie: 'connect.sid=hr1' })).backend, learnt.backend);
  await fresh(`${guarded.url}/cart`, { cookie: 'connect.sid=unknown-id' });
  const page = await call(guarded, 'GET', '/', bearer);
  assert.equal(page.status, 200);
  assert.match(String(page.headers['content-type']), /^text\/html; charset=utf-8$/);
  assert.match(String(page.headers['content-security-policy']), /default-src 'none'/);
  assert.match(page.body, /<td>a<\/td>/);
  assert.match(page.body, /<td>b<\/td>/);
  assert.match(page.body, /75\.0% \(3 hits, 1 misses, 0 store failures\)/);
});

/** Debian's chromium (or chromium-browser), or null where neither runs. */
function findChromium(): string | null {
  for (const bin of ['chromium', 'chromium-browser']) {
    const r = spawnSync(bin, ['--version'], { encoding: 'utf8' });
    if (r.status === 0) return bin;
  }
  return null;
}
const chromium = findChromium();

test('the status page in a headless chromium: the DOM has every backend and its state; a screenshot', {
  ...T, skip: chromium === null ? 'chromium is not installed (apt-get install chromium)' : false,
}, async (t) => {
  // Some affinity traffic, so the page has a hit rate to show.
  await fresh(`${open.url}/login`, { 'x-set-cookie': JSON.stringify(['connect.sid=shot1; Path=/']) });
  await fresh(`${open.url}/cart`, { cookie: 'connect.sid=shot1' });
  assert.equal((await call(open, 'POST', '/backends/b/drain', xhr)).status, 200);
  try {
    const run = promisify(execFile);
    const args = ['--headless', '--no-sandbox', '--disable-gpu', `--user-data-dir=${join(dir, 'chromium')}`];
    const url = `${adminUrl(open)}/`;
    const { stdout: dom } = await run(chromium!, [...args, '--dump-dom', url], { timeout: 20_000, maxBuffer: 1 << 24 });
    const rows = [...dom.matchAll(/<tr><td>([^<]*)<\/td><td>([^<]*)<\/td><td class="state (\w+)">(\w+)<\/td>/g)].map((m) => [m[1], m[2], m[4]]);
    assert.deepEqual(rows, [['a', origins[0].url, 'up'], ['b', origins[1].url, 'draining']], dom);
    assert.match(dom, /<strong id="hit-rate">100\.0% \(1 hits, 0 misses, 0 store failures\)<\/strong>/);
    mkdirSync(OUTPUT, { recursive: true });
    const shot = join(OUTPUT, 'admin-status-page.png');
    await run(chromium!, [...args, `--screenshot=${shot}`, '--window-size=1200,800', url], { timeout: 20_000 });
    assert.ok(statSync(shot).size > 1000, 'the screenshot has content');
    t.diagnostic(`screenshot: ${shot}`);
    console.log(`status page screenshot: ${shot}`);
  } finally {
    await call(open, 'POST', '/backends/b/enable', xhr);
  }
});

test('--monitor-uri is answered by the proxy on the traffic port, never forwarded', T, async () => {
  const mark = seen.length;
  const ok = await fresh(`${guarded.url}${MONITOR}`);
  assert.equal(ok.status, 200);
  assert.equal(ok.body, 'OK\n');
  assert.equal(ok.backend, '', 'no backend answered');
  const head = await request(`${guarded.url}${MONITOR}`, { method: 'HEAD' });
  await head.body.text();
  assert.equal(head.statusCode, 200);
  // Only the exact request-target: another path, or a query, goes to a backend.
  assert.equal((await fresh(`${guarded.url}/other`)).status, 200);
  assert.equal((await fresh(`${guarded.url}${MONITOR}x`)).status, 200);
  assert.deepEqual(seen.slice(mark).map((s) => s.split(' ')[1]), ['/other', `${MONITOR}x`]);
  // 503 while no backend is up.
  for (const b of ['a', 'b']) assert.equal((await call(guarded, 'POST', `/backends/${b}/disable`, bearer)).status, 200);
  try {
    assert.equal((await fresh(`${guarded.url}${MONITOR}`)).status, 503);
  } finally {
    for (const b of ['a', 'b']) await call(guarded, 'POST', `/backends/${b}/enable`, bearer);
  }
  assert.equal((await fresh(`${guarded.url}${MONITOR}`)).status, 200);
  assert.equal(seen.slice(mark).filter((s) => s.endsWith(` ${MONITOR}`)).length, 0, 'the origins never saw the monitor URI');
  // Without the flag, the same path is an ordinary request.
  assert.equal((await fresh(`${open.url}${MONITOR}`)).status, 200);
  assert.equal(seen.filter((s) => s.endsWith(` ${MONITOR}`)).length, 1);
});
