// The access log an operator can use, through the real proxy process: the
// request id (sent upstream, kept from a sane client, replaced otherwise,
// off on request), the proxy's own 400, 408 and 431 logged, the log written
// to a file whatever --log-level says and reopened on SIGUSR1 by every event
// loop (logrotate), and --log-format pretty's ISO times.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, renameSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { startOrigin, type Origin } from './helpers/origins.ts';
import { runCli, startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { waitFor } from './helpers/wait.ts';

// A hang fails its test instead of the whole file.
const T = { timeout: 30_000 };
const HEX_ID = /^[0-9a-f]{32}$/;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

interface AccessLine {
  id: string;
  client: string;
  method: string | null;
  host: string | null;
  path: string | null;
  status: number;
  backend: string;
  term: string;
  bytesIn: number;
  bytesOut: number;
  reason?: string;
  loop: number;
  time: number | string;
  level: number | string;
}

let origin: Origin;
const dir = mkdtempSync(join(tmpdir(), 'sticky-access-'));

before(async () => {
  // Answers with every request-id-like header line it received, as raw name/value pairs.
  origin = await startOrigin('echo', (req, res) => {
    const lines: [string, string][] = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      if (/^x[-_](request|trace)[-_]id$/i.test(req.rawHeaders[i])) lines.push([req.rawHeaders[i], req.rawHeaders[i + 1]]);
    }
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(lines));
    });
  });
}, T);
after(async () => {
  await origin.close();
}, T);

function accessLines(lines: readonly string[]): AccessLine[] {
  return lines.filter((l) => l.includes('"access":true')).map((l) => JSON.parse(l) as AccessLine);
}

/** GET through the proxy; the request-id lines the origin saw. */
async function idsSeen(p: ProxyProcess, path: string, headers: Record<string, string> = {}): Promise<[string, string][]> {
  const r = await request(`${p.url}${path}`, { headers });
  assert.equal(r.statusCode, 200);
  return await r.body.json() as [string, string][];
}

/** The access line of `path`, once written. */
function lineOf(p: ProxyProcess, path: string): Promise<AccessLine> {
  return waitFor(() => accessLines(p.output).find((a) => a.path === path), { what: `the access log line of ${path}` });
}

/** Sends raw bytes on a fresh connection; what comes back until the proxy closes it. */
function raw(p: ProxyProcess, bytes: string): Promise<string> {
  const { hostname, port } = new URL(p.url);
  return new Promise((resolve, reject) => {
    const s = connect(Number(port), hostname);
    let got = '';
    s.setEncoding('latin1');
    s.on('data', (d: string) => { got += d; });
    s.on('close', () => resolve(got));
    s.on('error', reject);
    s.write(bytes);
  });
}

test('a request id goes upstream and into the access log: generated, a sane client id kept, a bad one replaced', T, async () => {
  const p = await startProxy(['--backend', `echo=${origin.url}`, '--access-log']);
  try {
    const fresh = await idsSeen(p, '/fresh');
    assert.equal(fresh.length, 1, 'one id line upstream');
    assert.equal(fresh[0][0].toLowerCase(), 'x-request-id');
    assert.match(fresh[0][1], HEX_ID);
    assert.equal((await lineOf(p, '/fresh')).id, fresh[0][1], 'the log says the id the backend got');

    const next = await idsSeen(p, '/next');
    assert.notEqual(next[0][1], fresh[0][1], 'each request its own id');

    const kept = await idsSeen(p, '/kept', { 'X-Request-Id': 'client-trace:42/ab' });
    assert.deepEqual(kept.map(([, v]) => v), ['client-trace:42/ab'], 'a sane client id is kept, once');
    assert.equal((await lineOf(p, '/kept')).id, 'client-trace:42/ab');

    for (const [path, bad] of [['/spaced', 'has a space'], ['/long', 'x'.repeat(201)], ['/latin', 'caf\u00e9']] as const) {
      const seen = await idsSeen(p, path, { 'x-request-id': bad });
      assert.equal(seen.length, 1, `${path}: one id line upstream`);
      assert.match(seen[0][1], HEX_ID, `${path}: replaced by the proxy's id`);
      assert.equal((await lineOf(p, path)).id, seen[0][1]);
    }
    // A 200-character id is still sane. A CGI-style X_Request_Id (an app reads it as X-Request-Id) is the
    // client's id: it goes up under the header's own name, so the backend never sees two.
    const longest = 'y'.repeat(200);
    assert.deepEqual((await idsSeen(p, '/longest', { 'x-request-id': longest })).map(([, v]) => v), [longest]);
    assert.deepEqual(await idsSeen(p, '/underscore', { 'X_Request_Id': 'cgi-style' }), [['x-request-id', 'cgi-style']]);
    const two = await idsSeen(p, '/two', { 'X_Request_Id': 'has space', 'X-Request-Id': 'second' });
    assert.equal(two.length, 1, 'one id line upstream');
    assert.match(two[0][1], HEX_ID, 'the first id line counts: a bad one is replaced');
  } finally {
    await p.stop();
  }
});

test('--request-id-header names the header; "" sends none, and the access log still has an id', T, async () => {
  const named = await startProxy(['--backend', `echo=${origin.url}`, '--request-id-header', 'X-Trace-Id']);
  const off = await startProxy(['--backend', `echo=${origin.url}`, '--request-id-header=', '--access-log']);
  try {
    const seen = await idsSeen(named, '/named');
    assert.deepEqual(seen.map(([n]) => n), ['X-Trace-Id']);
    assert.match(seen[0][1], HEX_ID);

    assert.deepEqual(await idsSeen(off, '/off'), [], 'no id header upstream');
    assert.match((await lineOf(off, '/off')).id, HEX_ID);
  } finally {
    await Promise.all([named.stop(), off.stop()]);
  }
  const refused = await runCli(['--backend', `echo=${origin.url}`, '--request-id-header', 'Cookie', '--check']);
  assert.equal(refused.code, 2);
  assert.equal(refused.stderr, 'sticky-proxy: --request-id-header: "Cookie" is a header the proxy sets or acts on itself\n');
});

test('the proxy\'s own 400, 408 and 431 are in the access log, with what was read of the request', T, async () => {
  // One loop: the request parsed meanwhile below must be parsed by the slow head's loop.
  const p = await startProxy(['--backend', `echo=${origin.url}`, '--threads', '1', '--access-log', '--max-headers', '4', '--client-header-timeout', '300', '--client-body-timeout', '300']);
  try {
    const bad = await raw(p, 'GET /bad-header?token=secret HTTP/1.1\r\nHost: shop.example\r\nBad Name: x\r\n\r\n');
    assert.match(bad, /^HTTP\/1\.1 400 /);
    const many = await raw(p, `GET /too-many HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: probe/1\r\n${'X-A: 1\r\n'.repeat(5)}\r\n`);
    assert.match(many, /^HTTP\/1\.1 431 /);
    // Another request is parsed while the slow head waits: its 408 line must still tell its own request line.
    const slow = raw(p, 'GET /slow-head HTTP/1.1\r\nHost: shop.example\r\n');
    await idsSeen(p, '/meanwhile');
    assert.match(await slow, /^HTTP\/1\.1 408 /);
    const body = await raw(p, 'POST /slow-body HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 10\r\n\r\nab');
    assert.match(body, /^HTTP\/1\.1 408 /);
    const garbage = await raw(p, 'NOT HTTP AT ALL\r\n\r\n');
    assert.match(garbage, /^HTTP\/1\.1 400 /);

    const lines = await waitFor(() => {
      const l = accessLines(p.output);
      return l.length === 6 ? l : null;
    }, { what: 'six access log lines' });
    const byPath = (path: string | null, status: number): AccessLine => {
      const l = lines.find((a) => a.path === path && a.status === status);
      assert.ok(l, `a line for ${path} with ${status} in ${JSON.stringify(lines)}`);
      return l;
    };
    const l400 = byPath('/bad-header', 400);
    assert.deepEqual([l400.method, l400.host, l400.backend, l400.term], ['GET', 'shop.example', 'none', 'client protocol error']);
    assert.equal(l400.reason, 'whitespace before colon');
    const l431 = byPath('/too-many', 431);
    assert.deepEqual([l431.method, l431.term, l431.reason], ['GET', 'client protocol error', 'too many headers']);
    const l408 = byPath('/slow-head', 408);
    assert.deepEqual([l408.method, l408.host, l408.term], ['GET', 'shop.example', 'client timeout']);
    const body408 = byPath('/slow-body', 408);
    assert.deepEqual([body408.method, body408.term, body408.bytesIn], ['POST', 'client timeout', 2]);
    for (const a of [l400, l431, l408, body408]) assert.ok(a.bytesOut > 0, 'the answer\'s bytes are counted');
    const l = byPath(null, 400);
    assert.equal(l.method, null, 'no request line was read');
    for (const a of lines) {
      assert.match(a.id, HEX_ID);
      assert.equal(a.client, '127.0.0.1');
    }
    assert.ok(!p.output.some((o) => o.includes('secret')), 'the query string is not logged');
  } finally {
    await p.stop();
  }
});

test('--access-log=FILE is written whatever --log-level says, and every loop reopens it on SIGUSR1', T, async () => {
  const file = join(dir, 'access.log');
  const rotated = join(dir, 'access.log.1');
  const p = await startProxy(['--backend', `echo=${origin.url}`, `--access-log=${file}`, '--log-level', 'error', '--threads', '2']);
  const read = (f: string): AccessLine[] => (existsSync(f) ? accessLines(readFileSync(f, 'utf8').split('\n')) : []);
  // Fresh connections until both loops have written one (the kernel spreads them over the loops).
  let n = 0;
  const fromBothLoops = async (f: string, prefix: string): Promise<boolean> => {
    const loops = new Set(read(f).filter((a) => a.path!.startsWith(prefix)).map((a) => a.loop));
    if (loops.size === 2) return true;
    await request(`${p.url}${prefix}${n++}`, { reset: true }).then((r) => r.body.dump());
    return false;
  };
  try {
    await waitFor(() => fromBothLoops(file, '/before-'), { what: 'lines of both loops in the access log file', timeoutMs: 10_000 });
    assert.ok(!accessLines(p.output).length, 'no access line on stdout or stderr');
    assert.ok(!p.output.some((l) => l.includes('"level":30')), '--log-level error holds for the main log');

    renameSync(file, rotated);
    process.kill(p.pid, 'SIGUSR1');
    await waitFor(() => fromBothLoops(file, '/after-'), { what: 'lines of both loops in a new file at the same path', timeoutMs: 10_000 });
    assert.ok(read(file).every((a) => a.path!.startsWith('/after-')), 'the new file holds only what came after the rotation');
    assert.ok(read(rotated).some((a) => a.path!.startsWith('/before-')));
  } finally {
    await p.stop();
  }
  // A file that cannot be opened fails the start (and --check) in one line naming the flag.
  const missing = join(dir, 'no-such-dir', 'access.log');
  const refused = await runCli(['--backend', `echo=${origin.url}`, `--access-log=${missing}`, '--check']);
  assert.equal(refused.code, 2);
  assert.equal(refused.stderr, `sticky-proxy: --access-log: cannot open "${missing}" for appending (ENOENT)\n`);
});

test('--log-format pretty writes ISO times and level names, in the access log and the main log; json, epoch milliseconds', T, async () => {
  const pretty = await startProxy(['--backend', `echo=${origin.url}`, '--access-log', '--log-format', 'pretty']);
  const json = await startProxy(['--backend', `echo=${origin.url}`, '--access-log']);
  try {
    await idsSeen(pretty, '/pretty');
    const a = await lineOf(pretty, '/pretty');
    assert.match(String(a.time), ISO_TIME);
    assert.equal(a.level, 'info');
    const listening = JSON.parse(pretty.output.find((l) => l.includes('"msg":"listening"'))!) as { time: string; level: string };
    assert.match(listening.time, ISO_TIME);
    assert.equal(listening.level, 'info');

    await idsSeen(json, '/json');
    const j = await lineOf(json, '/json');
    assert.equal(typeof j.time, 'number');
    assert.equal(j.level, 30);
  } finally {
    await Promise.all([pretty.stop(), json.stop()]);
  }
});
