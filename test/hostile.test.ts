// Hostile input on raw sockets. Every form RFC 9112 leaves ambiguous is
// refused with 400 (501 for a transfer coding we do not implement, 505 for an
// HTTP version we do not speak) and the connection closed, and the origin
// never sees what was smuggled behind it; oversized heads get 431 and 414; a
// flood of garbage leaves the process serving with flat memory.
import { test, after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { startOrigin, type Origin } from './helpers/origins.ts';
import { get, startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { waitFor } from './helpers/wait.ts';

let origin: Origin;
let proxy: ProxyProcess;
const seenPaths: string[] = [];

before(async () => {
  origin = await startOrigin('o', (req, res) => {
    seenPaths.push(req.url!);
    req.resume();
    req.on('end', () => { res.writeHead(200, { 'x-backend': 'o', 'content-length': 2 }); res.end('ok'); });
    req.on('error', () => {});
  });
  proxy = await startProxy(['--backend', `o=${origin.url}`]);
});
after(async () => {
  await proxy.stop();
  await origin.close();
});

/** Sends raw bytes; resolves with what came back once the proxy closes the connection (or 3 s pass). */
async function send(bytes: string | Buffer): Promise<{ answer: string; closed: boolean }> {
  const { port } = new URL(proxy.url);
  const s = connect(Number(port), '127.0.0.1');
  let answer = '';
  s.on('data', (d) => { answer += d.toString('latin1'); });
  s.on('error', () => {});
  s.write(bytes);
  const closed = await Promise.race([
    new Promise<boolean>((resolve) => s.on('close', () => resolve(true))),
    sleep(3000).then(() => false),
  ]);
  s.destroy();
  return { answer, closed };
}

/**
 * Proves nothing more reaches the origin: a sentinel request on a fresh
 * connection arrives, and nothing smuggled came before it.
 */
async function originSawNoSmuggling(): Promise<void> {
  const sentinel = `/sentinel-${Math.random()}`;
  assert.equal((await get(`${proxy.url}${sentinel}`)).status, 200);
  await waitFor(() => seenPaths.includes(sentinel), { what: 'the sentinel at the origin' });
  assert.ok(!seenPaths.some((p) => p.startsWith('/smuggled')), `the origin saw ${seenPaths.join(', ')}`);
}

const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n';
const POST = 'POST /front HTTP/1.1\r\nHost: x\r\n';
const CHUNKED = `${POST}Transfer-Encoding: chunked\r\n\r\n`;
const forms: [string, string, number][] = [
  ['Content-Length with Transfer-Encoding', `${POST}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['Transfer-Encoding with Content-Length', `${POST}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['duplicate Content-Length', `${POST}Content-Length: 0\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`, 400],
  ['duplicate identical Content-Length', `${POST}Content-Length: ${SMUGGLED.length}\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`, 400],
  ['Content-Length as a list', `${POST}Content-Length: 0, ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`, 400],
  ['Content-Length with a sign', `${POST}Content-Length: +${SMUGGLED.length}\r\n\r\n${SMUGGLED}`, 400],
  ['unknown Transfer-Encoding (xchunked)', `${POST}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n${SMUGGLED}`, 501],
  ['a coding before chunked (gzip, chunked)', `${POST}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`, 501],
  ['chunked not last (chunked, identity)', `${POST}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['Transfer-Encoding twice', `${POST}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['empty Transfer-Encoding', `${POST}Transfer-Encoding: \r\n\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['Transfer-Encoding on HTTP/1.0', `POST /front HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['whitespace before the colon', `${POST}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['line folding (obs-fold) of Transfer-Encoding', `${POST}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['line folding of any header', `GET /front HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n\tb\r\n\r\n${SMUGGLED}`, 400],
  ['invalid token character in a name', `GET /front HTTP/1.1\r\nHost: x\r\nX@Y: z\r\n\r\n${SMUGGLED}`, 400],
  ['control character in a name', `GET /front HTTP/1.1\r\nHost: x\r\nX\x01Y: z\r\n\r\n${SMUGGLED}`, 400],
  ['NUL in a value', `GET /front HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n${SMUGGLED}`, 400],
  ['CTL in a value', `GET /front HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n${SMUGGLED}`, 400],
  ['DEL in a value', `GET /front HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n${SMUGGLED}`, 400],
  ['bare CR in a value', `GET /front HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n${SMUGGLED}`, 400],
  ['bare LF line endings', `GET /front HTTP/1.1\nHost: x\n\n${SMUGGLED}`, 400],
  ['bare LF ending one header', `GET /front HTTP/1.1\r\nHost: x\nX: y\r\n\r\n${SMUGGLED}`, 400],
  ['missing Host on HTTP/1.1', `GET /front HTTP/1.1\r\nX: y\r\n\r\n${SMUGGLED}`, 400],
  ['duplicate Host', `GET /front HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n${SMUGGLED}`, 400],
  ['negative chunk size', `${CHUNKED}-5\r\nhello\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['chunk size with junk', `${CHUNKED}4 x\r\nabcd\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['chunk size of 2^64-1', `${CHUNKED}ffffffffffffffff\r\nabcd\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['overflowing chunk size', `${CHUNKED}10000000000000000\r\nabcd\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['chunk longer than its size', `${CHUNKED}2\r\nabcd\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['oversized chunk extensions', `${CHUNKED}4;${'e'.repeat(2000)}\r\nabcd\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['empty chunk extension', `${CHUNKED}4;\r\nabcd\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['bare LF after a chunk size', `${CHUNKED}4\nabcd\r\n0\r\n\r\n${SMUGGLED}`, 400],
  ['space in the request line', `GET  /front HTTP/1.1\r\nHost: x\r\n\r\n${SMUGGLED}`, 400],
  ['a method llhttp does not know', `FOO /front HTTP/1.1\r\nHost: x\r\n\r\n${SMUGGLED}`, 501],
  ['HTTP/2.0 request line', `GET /front HTTP/2.0\r\nHost: x\r\n\r\n${SMUGGLED}`, 505],
  ['HTTP/1.2 request line', `GET /front HTTP/1.2\r\nHost: x\r\n\r\n${SMUGGLED}`, 505],
  ['a request-target that is not a path', `GET front HTTP/1.1\r\nHost: x\r\n\r\n${SMUGGLED}`, 400],
  ['userinfo in an absolute-form target', `GET http://u@x/front HTTP/1.1\r\nHost: x\r\n\r\n${SMUGGLED}`, 400],
  ['a target with non-ASCII bytes', `GET /caf\xe9 HTTP/1.1\r\nHost: x\r\n\r\n${SMUGGLED}`, 400],
  ['CONNECT', `CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n${SMUGGLED}`, 501],
];

describe('refused forms', { timeout: 120_000 }, () => {
  for (const [name, bytes, status] of forms) {
    test(`${status}: ${name}`, async () => {
      const { answer, closed } = await send(Buffer.from(bytes, 'latin1'));
      assert.match(answer, new RegExp(`^HTTP/1\\.1 ${status} `), `answer: ${JSON.stringify(answer.slice(0, 80))}`);
      assert.match(answer, /\r\nConnection: close\r\n/);
      assert.ok(closed, 'the connection is closed');
      await originSawNoSmuggling();
    });
  }
});

describe('limits and pipelining', { timeout: 60_000 }, () => {
  test('oversized headers get 431', async () => {
    const { answer, closed } = await send(`GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`);
    assert.match(answer, /^HTTP\/1\.1 431 /);
    assert.ok(closed);
  });

  test('too many header lines get 431', async () => {
    const many = Array.from({ length: 150 }, (_, i) => `X-H${i}: v\r\n`).join('');
    const { answer, closed } = await send(`GET / HTTP/1.1\r\nHost: x\r\n${many}\r\n`);
    assert.match(answer, /^HTTP\/1\.1 431 /);
    assert.ok(closed);
  });

  test('a request-target that is too long gets 414', async () => {
    const { answer, closed } = await send(`GET /${'a'.repeat(9000)} HTTP/1.1\r\nHost: x\r\n\r\n`);
    assert.match(answer, /^HTTP\/1\.1 414 /);
    assert.ok(closed);
  });

  test('a valid request followed by bad bytes: its own answer first, then the 400 and the close', async () => {
    seenPaths.length = 0;
    const { answer, closed } = await send(`GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n${SMUGGLED}`);
    assert.match(answer, /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nokHTTP\/1\.1 400 /);
    assert.ok(closed);
    await originSawNoSmuggling();
    assert.ok(seenPaths.includes('/first'));
    assert.ok(!seenPaths.includes('/second'));
  });

  test('a valid pipelined request is answered in order after the first', async () => {
    const { port } = new URL(proxy.url);
    const s = connect(Number(port), '127.0.0.1');
    let got = '';
    s.on('data', (d) => { got += d.toString('latin1'); });
    s.write('GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\nGET /p3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    await new Promise((resolve) => s.on('close', resolve));
    assert.equal(got.match(/HTTP\/1\.1 200 OK/g)?.length, 3, got);
  });
});

test('garbage on many connections: the process keeps serving, with flat memory', { timeout: 60_000 }, async () => {
  assert.equal((await get(proxy.url)).status, 200);
  const before = proxy.rssMiB();
  const { port } = new URL(proxy.url);
  const junk = Buffer.alloc(16 * 1024);
  for (let round = 0; round < 5; round++) {
    const socks = Array.from({ length: 200 }, () => {
      const s = connect(Number(port), '127.0.0.1');
      s.on('error', () => {});
      s.resume();
      for (let i = 0; i < junk.length; i++) junk[i] = Math.floor(Math.random() * 256);
      s.write(junk);
      s.write('\r\n\r\n\x00\x01GET / HTTP/1.1\r\nHost: x\r\n\r\n');
      return s;
    });
    // Every connection is answered (400) and closed by the proxy.
    await waitFor(() => socks.every((s) => s.closed || s.readableEnded), { what: 'the proxy to close every garbage connection', timeoutMs: 10_000 });
    for (const s of socks) s.destroy();
  }
  const r = await get(proxy.url);
  assert.equal(r.status, 200);
  const grown = proxy.rssMiB() - before;
  assert.ok(grown < 50, `RSS grew ${grown.toFixed(1)} MiB`);
});
