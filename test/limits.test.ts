// Pools that cannot be exhausted and uploads that cannot stall them: the
// request-body silence timeout (408, the backend connection freed), the
// per-backend connection cap with its bounded, timed queue (503 with
// Retry-After), and idle backend connections closed below the backend's own
// keep-alive. Real sockets on both sides.
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

before(async () => {
  origin = await startOrigin('o', (req, res) => {
    req.on('aborted', () => { aborted++; });
    req.on('error', () => {});
    req.resume();
    req.on('end', () => { res.writeHead(200, { 'x-backend': 'o', 'content-length': 2 }); res.end('ok'); });
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
