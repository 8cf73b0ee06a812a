// Pools that cannot be exhausted and uploads that cannot stall them: the
// request-body silence timeout (408, the backend connection freed), the
// per-backend connection cap with its bounded, timed queue (503 with
// Retry-After), idle backend connections closed below the backend's own
// keep-alive, and --max-body-size (413). Real sockets on both sides.
import { test, after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { request } from 'undici';
import { startOrigin, type Origin } from './helpers/origins.ts';
import { startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { waitFor } from './helpers/wait.ts';

let origin: Origin;
/** Requests the origin saw whose connection closed before their body was complete. */
let aborted = 0;
let openSockets = 0;
/** Paths of the requests whose body the origin got whole, and of those it saw begin. */
const completed: string[] = [];
const begun: string[] = [];

before(async () => {
  origin = await startOrigin('o', (req, res) => {
    begun.push(req.url!);
    req.on('aborted', () => { aborted++; });
    req.on('error', () => {});
    req.resume();
    req.on('end', () => { completed.push(req.url!); res.writeHead(200, { 'x-backend': 'o', 'content-length': 2 }); res.end('ok'); });
  });
  origin.server.on('connection', (s: Socket) => {
    openSockets++;
    s.on('close', () => { openSockets--; });
  });
});
after(async () => {
  await origin.close();
});

/** A client that sends a head announcing 100 bytes, then 2, then nothing. */
function stalledUpload(url: string): { socket: Socket; answer: () => string; closed: Promise<void> } {
  const { port } = new URL(url);
  const socket = connect(Number(port), '127.0.0.1');
  let got = '';
  socket.on('data', (d) => { got += d.toString('latin1'); });
  socket.on('error', () => {});
  socket.write('POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab');
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  return { socket, answer: () => got, closed };
}

describe('limits', { timeout: 60_000 }, () => {
  let proxy: ProxyProcess;
  before(async () => {
    // One loop: the connection cap is split between loops, so one connection means one loop.
    proxy = await startProxy(['--backend', `o=${origin.url}`, '--client-body-timeout', '600', '--upstream-connections', '1', '--threads', '1',
      '--queue-timeout', '500', '--upstream-idle-timeout', '700', '--no-affinity']);
  });
  after(async () => { await proxy.stop(); });

  test('a stalled upload gets 408 at the body timeout, and its backend connection is freed', async () => {
    const before = aborted;
    const t0 = Date.now();
    const up = stalledUpload(proxy.url);
    await up.closed;
    const took = Date.now() - t0;
    assert.match(up.answer(), /^HTTP\/1\.1 408 /);
    assert.ok(took >= 500 && took < 3000, `closed after ${took} ms`);
    await waitFor(() => aborted > before, { what: 'the origin to see its upload cut off' });
  });

  test('a full backend: another request waits in the queue, then gets 503 with Retry-After at the queue timeout', async () => {
    const up = stalledUpload(proxy.url); // holds the only connection
    await waitFor(() => openSockets >= 1, { what: 'the upload to reach the origin' });
    const t0 = Date.now();
    const r = await request(proxy.url, { headersTimeout: 5000 });
    const took = Date.now() - t0;
    assert.equal(r.statusCode, 503);
    assert.equal(r.headers['retry-after'], '1');
    await r.body.text();
    assert.ok(took >= 400 && took < 2500, `answered after ${took} ms`);
    await up.closed; // the body timeout frees the connection...
    const ok = await request(proxy.url, { headersTimeout: 5000 });
    assert.equal(ok.statusCode, 200, '...and the next request gets it');
    await ok.body.text();
  });

  test('idle backend connections are closed after --upstream-idle-timeout', async () => {
    const r = await request(proxy.url);
    await r.body.text();
    assert.ok(openSockets >= 1);
    await waitFor(() => openSockets === 0, { what: 'the idle backend connection to close', timeoutMs: 3000 });
  });
});

test('--queue-max 0: a request beyond the connection cap gets 503 at once', { timeout: 30_000 }, async () => {
  const proxy = await startProxy(['--backend', `o=${origin.url}`, '--upstream-connections', '1', '--threads', '1', '--queue-max', '0', '--no-affinity']);
  try {
    const up = stalledUpload(proxy.url);
    await waitFor(() => openSockets >= 1, { what: 'the upload to reach the origin' });
    const t0 = Date.now();
    const r = await request(proxy.url);
    assert.equal(r.statusCode, 503);
    await r.body.text();
    assert.ok(Date.now() - t0 < 1000);
    up.socket.destroy();
  } finally {
    await proxy.stop();
  }
});

/** Writes `text` on a fresh connection and returns all it gets back until the proxy closes it (or `until` matches). */
async function exchange(url: string, text: string, until?: RegExp): Promise<string> {
  const socket = connect(Number(new URL(url).port), '127.0.0.1');
  let got = '';
  socket.on('error', () => {});
  socket.on('data', (d) => { got += d.toString('latin1'); });
  socket.write(text);
  await waitFor(() => socket.destroyed || socket.readableEnded || (until !== undefined && until.test(got)), { what: 'the answer', timeoutMs: 5000 });
  socket.destroy();
  return got;
}

describe('--max-body-size', { timeout: 60_000 }, () => {
  let proxy: ProxyProcess;
  before(async () => {
    proxy = await startProxy(['--backend', `o=${origin.url}`, '--max-body-size', '1000', '--threads', '1', '--no-affinity']);
  });
  after(async () => { await proxy.stop(); });

  test('a Content-Length over it gets 413 before anything reaches the backend, without a 100 Continue', async () => {
    const a = await exchange(proxy.url, 'POST /cl-over HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1001\r\n\r\n');
    assert.match(a, /^HTTP\/1\.1 413 /);
    assert.match(a, /\r\nconnection: close\r\n/i);
    const ok = await exchange(proxy.url, `POST /cl-at HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n${'x'.repeat(1000)}`, /\r\n\r\nok$/);
    assert.match(ok, /^HTTP\/1\.1 200 /, 'a body of exactly the limit passes');
    assert.ok(!begun.includes('/cl-over'), 'the refused request never reached the backend');
  });

  test('a chunked body is refused (413) at the size line that takes it past the limit; the backend never gets it whole', async () => {
    const chunk = (n: number): string => `${n.toString(16)}\r\n${'y'.repeat(n)}\r\n`;
    const ok = await exchange(proxy.url, `POST /chunked-at HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${chunk(600)}${chunk(400)}0\r\n\r\n`, /\r\n\r\nok$/);
    assert.match(ok, /^HTTP\/1\.1 200 /, 'chunks adding up to the limit pass');
    // The first chunk goes upstream before the second is sent: the refusal cuts a body in flight.
    const socket = connect(Number(new URL(proxy.url).port), '127.0.0.1');
    let a = '';
    socket.on('error', () => {});
    socket.on('data', (d) => { a += d.toString('latin1'); });
    socket.write(`POST /chunked-over HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${chunk(600)}`);
    await waitFor(() => begun.includes('/chunked-over'), { what: 'the first chunk at the origin' });
    const abortedBefore = aborted;
    socket.write(`${chunk(401)}0\r\n\r\n`);
    await waitFor(() => socket.readableEnded || socket.destroyed, { what: 'the proxy to close the connection' });
    assert.match(a, /^HTTP\/1\.1 413 /);
    await waitFor(() => aborted > abortedBefore, { what: 'the origin to see the body cut off' });
    assert.ok(!completed.includes('/chunked-over'), 'the backend never got the oversized body whole');
    assert.ok(completed.includes('/chunked-at'));
  });
});

// Whoever stops taking bytes is the one timed: a backend that stops reading an
// upload gets --upstream-body-timeout (504, its fault), a client that stops
// reading its answer gets --client-body-timeout (cut, its fault). Before, each
// was timed by the other side's timeout and blamed on the other side: the
// client got 408 for the backend's stall, and a slow reader was logged as a
// backend gone silent, at the backend's timeout.
describe('the side that stops taking bytes is the one timed', { timeout: 60_000 }, () => {
  let proxy: ProxyProcess;
  let stuck: import('node:net').Server;
  let big: Origin;
  let bigClosed = 0;
  before(async () => {
    // Reads a request's head, then nothing more.
    const { createServer } = await import('node:net');
    stuck = createServer((s) => { s.once('data', () => s.pause()); s.on('error', () => {}); });
    await new Promise<void>((resolve) => stuck.listen(0, '127.0.0.1', resolve));
    big = await startOrigin('big', (req, res) => { req.resume(); res.end(Buffer.alloc(32 * 1024 * 1024, 120)); });
    big.server.on('connection', (s: Socket) => s.on('close', () => { bigClosed++; }));
    const stuckUrl = `http://127.0.0.1:${(stuck.address() as import('node:net').AddressInfo).port}`;
    // Each timeout far from the other, so which one fired shows.
    proxy = await startProxy(['--backend', `stuck=${stuckUrl},weight=1`, '--backend', `big=${big.url},weight=1`, '--threads', '1', '--no-affinity',
      '--balance', 'round-robin', '--retries', '0', '--client-body-timeout', '1000', '--upstream-body-timeout', '2500', '--access-log']);
  });
  after(async () => {
    await proxy.stop();
    stuck.close();
    await big.close();
  });

  /** A request on a fresh connection to the backend named, by round robin over the two: the first goes to `stuck`. */
  function open(): Socket {
    return connect(Number(new URL(proxy.url).port), '127.0.0.1');
  }

  test('a backend that stops reading an upload: 504 at --upstream-body-timeout, logged as the backend\'s timeout', async () => {
    const socket = open();
    let got = '';
    socket.on('data', (d) => { got += d.toString('latin1'); });
    socket.on('error', () => {});
    socket.write('POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n');
    // Body as fast as the proxy takes it, until the stuck backend's buffers fill and the proxy stops reading.
    const chunk = Buffer.alloc(64 * 1024, 97);
    const pump = (): void => { while (!socket.destroyed && socket.write(chunk)); };
    socket.on('drain', pump);
    pump();
    await waitFor(() => got.includes('\r\n\r\n'), { what: 'an answer', timeoutMs: 10_000 });
    socket.destroy();
    assert.match(got, /^HTTP\/1\.1 504 /, 'the backend stopped taking the body: its timeout, not the client\'s 408');
    await waitFor(() => proxy.output.some((l) => l.includes('"path":"/up"') && l.includes('"term":"upstream timeout"')), { what: 'the access log line blaming the backend' });
  });

  test('a client that stops reading its answer: cut at --client-body-timeout, logged as the client\'s', async () => {
    const socket = open(); // round robin: this one goes to `big`
    socket.on('error', () => {});
    const closedBefore = bigClosed;
    socket.pause(); // reads nothing of the 32 MiB
    socket.write('GET /down HTTP/1.1\r\nHost: x\r\n\r\n');
    // The backend's connection is dropped with the client's; at --upstream-body-timeout, or never, before.
    await waitFor(() => bigClosed > closedBefore, { what: 'the backend connection given up with the client', timeoutMs: 10_000 });
    await waitFor(() => proxy.output.some((l) => l.includes('"path":"/down"') && l.includes('"term":"client timeout"')), { what: 'the access log line blaming the client' });
    assert.ok(proxy.output.some((l) => l.includes('client stopped taking its answer')));
    assert.ok(!proxy.output.some((l) => l.includes('backend went silent')), 'not blamed on the backend');
    socket.destroy();
  });
});
