// HTTP hygiene through the real proxy: hop-by-hop headers, forwarding headers,
// Host, Expect: 100-continue, bodiless answers, chunked bodies with trailers,
// absolute-form targets, OPTIONS *, paths byte for byte, underscore names,
// pipelining one at a time, upgrades declined, framing both ways, backend
// connection reuse and its limits, broken backend framing.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type Server } from 'node:net';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { Client, request } from 'undici';
import { startOrigin, type Origin } from './helpers/origins.ts';
import { startProxy, type ProxyProcess } from './helpers/proxy.ts';

let echo: Origin;
let proxy: ProxyProcess;

interface Seen { method: string; url: string; headers: string[]; body: string; port: number }
const arrived = new Map<string, number>();
const answered = new Map<string, number>();
/** Resolved when the echo origin has a request for /expect10 (its head; the body may not have come yet). */
let expect10Seen: () => void = () => {};

before(async () => {
  echo = await startOrigin('echo', (req, res) => {
    if (req.url === '/expect10') expect10Seen();
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = req.url!;
      if (url === '/slow') { setTimeout(() => { answered.set(url, Date.now()); res.writeHead(200, { 'content-length': 4 }); res.end('slow'); }, 300); return; }
      if (url === '/length') { res.writeHead(200, { 'content-length': 2 }); res.end('ok'); return; }
      if (url === '/close-after') { res.writeHead(200, { connection: 'close', 'content-length': 2 }); res.end('ok'); return; }
      if (url === '/http10') { res.writeHead(200, { 'content-type': 'text/plain' }); res.write('chunk one,'); res.end('chunk two'); return; }
      if (url === '/no-content') { res.writeHead(204, { 'x-backend': 'echo' }); res.end(); return; }
      if (url === '/not-modified') { res.writeHead(304, { etag: '"v1"' }); res.end(); return; }
      if (url === '/trailers') {
        res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum', connection: 'keep-alive, x-hop', 'x-hop': 'secret', 'keep-alive': 'timeout=5' });
        res.write('part one,');
        res.write('part two');
        res.addTrailers({ 'x-checksum': 'abc123' });
        res.end();
        return;
      }
      arrived.set(url, Date.now());
      const seen: Seen = { method: req.method!, url, headers: req.rawHeaders, body: Buffer.concat(chunks).toString(), port: req.socket.remotePort! };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(seen));
    });
  });
  // One loop: backend connections are reused within a loop.
  proxy = await startProxy(['--backend', `echo=${echo.url}`, '--forwarded', '--threads', '1']);
});
after(async () => {
  await proxy.stop();
  await echo.close();
});

function header(seen: Seen, name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < seen.headers.length; i += 2) if (seen.headers[i].toLowerCase() === name) out.push(seen.headers[i + 1]);
  return out;
}

/** The body of a raw HTTP/1.1 answer, chunked or not. */
function bodyOf(answer: string): string {
  const split = answer.indexOf('\r\n\r\n');
  const headText = answer.slice(0, split);
  let rest = answer.slice(split + 4);
  if (!/transfer-encoding: chunked/i.test(headText)) return rest;
  let body = '';
  for (;;) {
    const eol = rest.indexOf('\r\n');
    const size = parseInt(rest.slice(0, eol), 16);
    if (!size) return body;
    body += rest.slice(eol + 2, eol + 2 + size);
    rest = rest.slice(eol + 4 + size);
  }
}

/** Sends raw bytes on a fresh connection and returns everything the proxy answers until it closes or goes quiet. */
async function raw(bytes: string, quietMs = 500): Promise<string> {
  const { port } = new URL(proxy.url);
  const s = connect(Number(port), '127.0.0.1');
  let got = '';
  s.on('data', (d) => { got += d.toString('latin1'); });
  s.write(bytes);
  await new Promise<void>((resolve) => {
    let timer = setTimeout(resolve, quietMs);
    s.on('data', () => { clearTimeout(timer); timer = setTimeout(resolve, quietMs); });
    s.on('close', () => { clearTimeout(timer); resolve(); });
  });
  s.destroy();
  return got;
}

test('hop-by-hop request headers are removed, with those Connection names; end-to-end ones pass in order and case', async () => {
  const answer = await raw('GET /h HTTP/1.1\r\nHost: app.example\r\nConnection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\n'
    + 'Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\n'
    + 'Upgrade: h2c\r\nX-Custom: One\r\nx-custom: two\r\n\r\n');
  const seen = JSON.parse(bodyOf(answer)) as Seen;
  for (const name of ['x-secret-hop', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'upgrade']) {
    assert.deepEqual(header(seen, name), [], name);
  }
  const names = seen.headers.filter((_, i) => i % 2 === 0);
  assert.ok(names.includes('X-Custom') && names.includes('x-custom'), 'case kept');
  assert.deepEqual(header(seen, 'x-custom'), ['One', 'two']);
});

test('X-Forwarded-For and Forwarded from an untrusted client replaced, -Proto and -Host set, Via appended; Host passes unchanged', async () => {
  const r = await request(`${proxy.url}/fwd`, { headers: { host: 'shop.example', 'x-forwarded-for': '203.0.113.9', 'x-forwarded-proto': 'https', via: '1.0 edge', forwarded: 'for=203.0.113.9' } });
  const seen = await r.body.json() as Seen;
  assert.deepEqual(header(seen, 'host'), ['shop.example']);
  // No --trusted-proxy: the client's own claims are not passed on (test/proxy-protocol.test.ts covers trusted peers).
  assert.deepEqual(header(seen, 'x-forwarded-for'), ['127.0.0.1']);
  assert.deepEqual(header(seen, 'x-forwarded-proto'), ['http'], 'the client cannot claim https');
  assert.deepEqual(header(seen, 'x-forwarded-host'), ['shop.example']);
  assert.deepEqual(header(seen, 'via'), ['1.0 edge, 1.1 sticky-proxy']);
  assert.deepEqual(header(seen, 'forwarded'), ['for=127.0.0.1;proto=http;host="shop.example"']);
  assert.equal(r.headers.via, '1.1 sticky-proxy', 'Via on the response too');
});

test('--rewrite-host sends the backend host as Host', async () => {
  const p = await startProxy(['--backend', `echo=${echo.url}`, '--rewrite-host']);
  try {
    const seen = await (await request(`${p.url}/h`, { headers: { host: 'shop.example' } })).body.json() as Seen;
    assert.deepEqual(header(seen, 'host'), [new URL(echo.url).host]);
    assert.deepEqual(header(seen, 'x-forwarded-host'), ['shop.example']);
  } finally {
    await p.stop();
  }
});

test('Expect: 100-continue: the client gets 100 Continue, then the body flows', async () => {
  const { port } = new URL(proxy.url);
  const s = connect(Number(port), '127.0.0.1');
  let got = '';
  s.on('data', (d) => { got += d; });
  s.write('POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
  while (!got.includes('100 Continue')) await once(s, 'data');
  assert.ok(!got.includes('200 OK'), 'nothing before the body');
  s.write('hello');
  while (!got.includes('"body":"hello"')) await once(s, 'data');
  s.destroy();
  assert.match(got, /HTTP\/1\.1 200 OK/);
});

test('Expect: 100-continue from an HTTP/1.0 client is ignored: no 1xx, the body is read as it comes', async () => {
  const seen = new Promise<void>((resolve) => { expect10Seen = resolve; });
  const { port } = new URL(proxy.url);
  const s = connect(Number(port), '127.0.0.1');
  let got = '';
  s.on('data', (d) => { got += d; });
  s.write('POST /expect10 HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
  // The backend has the head: a 100 Continue would have been written by now.
  await seen;
  s.write('hello');
  await once(s, 'close');
  assert.match(got, /^HTTP\/1\.1 200 OK\r\n/);
  assert.doesNotMatch(got, /100 Continue/);
  assert.match(got, /"body":"hello"/);
});

test('an HTTP/1.0 client saying both keep-alive and close is closed after its answer', async () => {
  // An answer framed by its length, which a kept-alive HTTP/1.0 connection could go on after.
  const answer = await raw('GET /length HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n');
  assert.match(answer, /^HTTP\/1\.1 200 /);
  assert.match(answer, /\r\nConnection: close\r\n/);
});

test('HEAD, 204 and 304 are answered without a body, and the connection stays usable', async () => {
  const client = new Client(proxy.url);
  try {
    for (const [method, path, status] of [['HEAD', '/h', 200], ['GET', '/no-content', 204], ['GET', '/not-modified', 304], ['GET', '/h', 200]] as const) {
      const r = await client.request({ method, path });
      const body = await r.body.text();
      assert.equal(r.statusCode, status, `${method} ${path}`);
      if (status !== 200 || method === 'HEAD') assert.equal(body, '', `${method} ${path} has no body`);
    }
  } finally {
    await client.close();
  }
});

test('chunked bodies stream both ways and trailers survive; hop-by-hop response headers are dropped', async () => {
  const up = await request(`${proxy.url}/chunked`, {
    method: 'POST',
    body: Readable.from((function* () { yield 'a'.repeat(1000); yield 'b'.repeat(1000); })()),
  });
  const seen = await up.body.json() as Seen;
  assert.equal(seen.body, 'a'.repeat(1000) + 'b'.repeat(1000));
  // Re-framed by the proxy: chunked while it streams, or a Content-Length when
  // the whole body had already arrived (undici counts a finished stream).
  const framing = [...header(seen, 'transfer-encoding'), ...header(seen, 'content-length')];
  assert.ok(framing[0] === 'chunked' || framing[0] === '2000', `framing: ${framing}`);

  const down = await request(`${proxy.url}/trailers`, { headers: { te: 'trailers' } });
  assert.equal(await down.body.text(), 'part one,part two');
  assert.equal(down.headers['x-hop'], undefined);
  assert.notEqual(down.headers['keep-alive'], 'timeout=5', "the backend's Keep-Alive is not the client's");
  assert.deepEqual(down.trailers, { 'x-checksum': 'abc123' });
});

test('an absolute-form target is served from the pool, never followed to its host', async () => {
  const answer = await raw('GET http://evil.example:9/steal?x=1 HTTP/1.1\r\nHost: evil.example:9\r\n\r\n');
  const seen = JSON.parse(bodyOf(answer)) as Seen;
  assert.equal(seen.url, '/steal?x=1');
});

test('a backend answer with broken framing gives a 502 and the client connection stays sound', async () => {
  let broken: Server | undefined;
  broken = createServer((s) => {
    s.once('data', (d) => {
      if (d.toString().startsWith('GET /bad')) s.end('HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nxx');
      else s.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok');
    });
  });
  broken.listen(0, '127.0.0.1');
  await once(broken, 'listening');
  const port = (broken.address() as { port: number }).port;
  const p = await startProxy(['--backend', `broken=http://127.0.0.1:${port}`, '--retries', '0']);
  const client = new Client(p.url);
  try {
    const bad = await client.request({ method: 'GET', path: '/bad' });
    await bad.body.text();
    assert.equal(bad.statusCode, 502);
    const good = await client.request({ method: 'GET', path: '/good' });
    assert.equal(good.statusCode, 200);
    assert.equal(await good.body.text(), 'ok');
  } finally {
    await client.close();
    await p.stop();
    broken.close();
  }
});

test('absolute-form: its authority becomes the Host sent upstream, and its path passes byte for byte', async () => {
  const answer = await raw('GET http://shop.example:81/public/%2e%2e/p?x=1 HTTP/1.1\r\nHost: other.example\r\n\r\n');
  const seen = JSON.parse(bodyOf(answer)) as Seen;
  assert.equal(seen.url, '/public/%2e%2e/p?x=1');
  assert.deepEqual(header(seen, 'host'), ['shop.example:81']);
  assert.deepEqual(header(seen, 'x-forwarded-host'), ['shop.example:81']);
  const origin = JSON.parse(bodyOf(await raw('GET /a/../b//c/%2E HTTP/1.1\r\nHost: x\r\n\r\n'))) as Seen;
  assert.equal(origin.url, '/a/../b//c/%2E', 'origin-form is not normalised either');
});

test('Connection cannot remove Host or the body framing', async () => {
  const answer = await raw('POST /conn HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\nConnection: close, Host, Content-Length, X-Gone\r\nX-Gone: 1\r\n\r\nhello');
  const seen = JSON.parse(bodyOf(answer)) as Seen;
  assert.deepEqual(header(seen, 'host'), ['shop.example']);
  assert.equal(seen.body, 'hello');
  assert.deepEqual(header(seen, 'x-gone'), []);
});

test('OPTIONS * is forwarded', async () => {
  const seen = JSON.parse(bodyOf(await raw('OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n'))) as Seen;
  assert.equal(seen.method, 'OPTIONS');
  assert.equal(seen.url, '*');
});

test('names with "_" that a CGI app reads as a guarded header are dropped; other names with "_" pass', async () => {
  const seen = JSON.parse(bodyOf(await raw('GET /u HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Proto: https\r\nTransfer_Encoding: chunked\r\nContent_Length: 9\r\nX_Custom: kept\r\n\r\n'))) as Seen;
  const names = seen.headers.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
  for (const gone of ['x_forwarded_for', 'x_forwarded_proto', 'transfer_encoding', 'content_length']) assert.ok(!names.includes(gone), gone);
  assert.deepEqual(header(seen, 'x_custom'), ['kept']);
  assert.deepEqual(header(seen, 'x-forwarded-for'), ['127.0.0.1']);
});

test('pipelined requests go upstream one at a time, in order', async () => {
  const answer = await raw('GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /after-slow HTTP/1.1\r\nHost: x\r\n\r\n', 800);
  assert.equal(answer.match(/HTTP\/1\.1 200 OK/g)?.length, 2);
  assert.ok(answer.indexOf('slow') < answer.indexOf('/after-slow'), 'answers in order');
  assert.ok(arrived.get('/after-slow')! >= answered.get('/slow')!, 'the second reached the origin only once the first was answered');
});

test('an upgrade the backend declines answers as usual, and the connection serves the next request', async () => {
  const answer = await raw('POST /declined HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 4\r\n\r\nbodyGET /next HTTP/1.1\r\nHost: x\r\n\r\n');
  const replies = answer.split(/(?=HTTP\/1\.1 )/);
  assert.equal(replies.length, 2, answer);
  const first = JSON.parse(bodyOf(replies[0])) as Seen;
  assert.equal(first.body, 'body', 'the upgrade request\'s body is sent as its body');
  assert.deepEqual(header(first, 'upgrade'), ['websocket']);
  assert.equal((JSON.parse(bodyOf(replies[1])) as Seen).url, '/next');
});

test('an upgrade request with several Upgrade lines: the backend gets them all, as one list in their order', async () => {
  const answer = await raw('GET /two-upgrades HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: upgrade\r\nUpgrade: websocket, foo/2\r\n\r\n');
  assert.deepEqual(header(JSON.parse(bodyOf(answer)) as Seen, 'upgrade'), ['h2c, websocket, foo/2']);
});

test('an HTTP/1.0 client gets a chunked answer without chunked framing, delimited by close', async () => {
  const answer = await raw('GET /http10 HTTP/1.0\r\n\r\n');
  assert.match(answer, /^HTTP\/1\.1 200 /);
  assert.doesNotMatch(answer, /transfer-encoding/i);
  assert.match(answer, /Connection: close/);
  assert.equal(answer.slice(answer.indexOf('\r\n\r\n') + 4), 'chunk one,chunk two');
});

test('bytes after a bodiless answer, in the same write: the client gets the answer, and that backend connection is never used again', async () => {
  // Each request is answered with the connection's number in X-Conn; /junk also with a second answer behind a bodiless one.
  let conns = 0;
  const raw = createServer((s) => {
    const n = ++conns;
    let pending = '';
    s.on('data', (d) => {
      pending += d.toString('latin1');
      let end: number;
      while ((end = pending.indexOf('\r\n\r\n')) >= 0) {
        const junk = pending.startsWith('GET /junk') || pending.startsWith('HEAD /junk');
        const status = pending.startsWith('GET /junk-204') ? '204 No Content' : '200 OK';
        pending = pending.slice(end + 4);
        const bodiless = status.startsWith('204') ? '' : 'Content-Length: 0\r\n';
        s.write(`HTTP/1.1 ${status}\r\nX-Conn: ${n}\r\n${bodiless}\r\n${junk ? 'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil' : ''}`);
      }
    });
  });
  raw.listen(0, '127.0.0.1');
  await once(raw, 'listening');
  const p = await startProxy(['--backend', `raw=http://127.0.0.1:${(raw.address() as { port: number }).port}`, '--threads', '1', '--no-affinity']);
  const client = new Client(p.url, { pipelining: 0 });
  try {
    for (const [method, path] of [['GET', '/junk'], ['GET', '/junk-204'], ['HEAD', '/junk']] as const) {
      const r = await client.request({ method, path });
      assert.equal(await r.body.text(), '', `${method} ${path}: the bodiless answer, without what followed it`);
      const junkConn = r.headers['x-conn'];
      const next = await client.request({ method: 'GET', path: '/next' });
      await next.body.text();
      assert.notEqual(next.headers['x-conn'], junkConn, `${method} ${path}: the next request went on another backend connection`);
    }
  } finally {
    await client.close();
    await p.stop();
    raw.close();
  }
});

test('kept-alive backend connections are reused, never after Connection: close', async () => {
  const client = new Client(proxy.url, { pipelining: 0 });
  try {
    const ports: number[] = [];
    for (let i = 0; i < 3; i++) ports.push((await (await client.request({ method: 'GET', path: '/reuse' })).body.json() as Seen).port);
    assert.equal(new Set(ports).size, 1, 'one backend connection for three requests');
    await (await client.request({ method: 'GET', path: '/close-after' })).body.text();
    const after = (await (await client.request({ method: 'GET', path: '/reuse' })).body.json() as Seen).port;
    assert.notEqual(after, ports[0], 'a connection the backend closed is not reused');
  } finally {
    await client.close();
  }
});
