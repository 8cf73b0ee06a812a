// Bodies stream through the proxy with backpressure both ways: large transfers
// in bounded memory, and a slow reader holds the origin back instead of
// filling the proxy's memory.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { startOrigin, type Origin } from './helpers/origins.ts';
import { startMemcached, type Memcached } from './helpers/memcached.ts';
import { startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { waitFor } from './helpers/wait.ts';

// A hang fails its test instead of the whole file.
const T = { timeout: 90_000 };

const MiB = 1024 * 1024;
const chunk = Buffer.alloc(256 * 1024, 'x');
const random = randomBytes(24 * MiB);
let origin: Origin;
let proxy: ProxyProcess;
let written = 0; // bytes the origin has handed to its socket for the current download

before(async () => {
  origin = await startOrigin('big', (req, res) => {
    const url = new URL(req.url!, 'http://x');
    if (req.method === 'POST' && url.pathname === '/hash') {
      // Read slowly, so the proxy's writes upstream back up: its digest says whether every byte came, in order.
      const h = createHash('sha256');
      let since = 0;
      req.on('data', (d: Buffer) => {
        h.update(d);
        since += d.length;
        if (since >= MiB) {
          since = 0;
          req.pause();
          setTimeout(() => req.resume(), 5);
        }
      });
      req.on('end', () => res.end(h.digest('hex')));
      return;
    }
    if (req.method === 'POST') {
      let n = 0;
      req.on('data', (d: Buffer) => { n += d.length; });
      req.on('end', () => res.end(String(n)));
      return;
    }
    if (url.pathname === '/random') {
      // The test's random bytes, in writes of uneven sizes, with a fixed length or chunked.
      const chunked = url.searchParams.has('chunked');
      res.writeHead(200, chunked ? {} : { 'content-length': String(random.length) });
      let at = 0;
      const pump = (): void => {
        while (at < random.length) {
          const end = Math.min(random.length, at + 1 + ((at * 7919) % 200_000));
          const ok = res.write(random.subarray(at, end));
          at = end;
          if (!ok) { res.once('drain', pump); return; }
        }
        res.end();
      };
      pump();
      return;
    }
    let left = Number(url.searchParams.get('bytes'));
    written = 0;
    // /session: the answer sets a session cookie, so the proxy holds it until the learn is stored.
    if (url.pathname === '/session') res.setHeader('set-cookie', 'PHPSESSID=held1; Path=/');
    res.writeHead(200, { 'content-length': String(left) });
    const pump = (): void => {
      while (left > 0) {
        const c = left >= chunk.length ? chunk : chunk.subarray(0, left);
        left -= c.length;
        written += c.length;
        if (!res.write(c)) { res.once('drain', pump); return; }
      }
      res.end();
    };
    pump();
  });
  // One loop: the figures are one data path's memory, not another thread's heap.
  proxy = await startProxy(['--backend', `big=${origin.url}`, '--threads', '1']);
}, T);
after(async () => {
  await proxy.stop();
  await origin.close();
}, T);

test('1 GiB down and 512 MiB up through the proxy, resident memory under 200 MiB', T, async () => {
  const down = await request(`${proxy.url}/?bytes=${1024 * MiB}`);
  let got = 0;
  for await (const d of down.body) got += (d as Buffer).length;
  assert.equal(got, 1024 * MiB);

  const total = 512 * MiB;
  const body = Readable.from((function* () { for (let sent = 0; sent < total; sent += chunk.length) yield chunk; })());
  const up = await request(proxy.url, { method: 'POST', body, headers: { 'content-length': String(total) } });
  assert.equal(await up.body.text(), String(total));

  const peak = proxy.peakRssMiB();
  assert.ok(peak < 200, `peak RSS ${peak.toFixed(1)} MiB`);
});

// Request body chunks are freed as soon as the backend's socket has taken them
// (forward.ts, release): one freed too early would send other bytes, or none.
test('uploads arrive whole and in order through a slow origin: fixed length, chunked, and a request pipelined after one', T, async () => {
  const body = randomBytes(24 * MiB);
  const digest = createHash('sha256').update(body).digest('hex');
  const sock = connect(Number(new URL(proxy.url).port), '127.0.0.1');
  let got = '';
  sock.setEncoding('latin1');
  sock.on('data', (d: string) => { got += d; });
  try {
    await new Promise<void>((resolve) => sock.once('connect', resolve));
    // Writes of uneven sizes, so the proxy's reads start and end anywhere in the body.
    const send = async (b: Buffer): Promise<void> => {
      for (let at = 0, n = 1; at < b.length; n = (n * 7919) % 300_001 + 1) {
        const end = Math.min(b.length, at + n);
        if (!sock.write(b.subarray(at, end))) await new Promise((resolve) => sock.once('drain', resolve));
        at = end;
      }
    };
    await send(Buffer.from(`POST /hash HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n`));
    await send(body);
    const chunked = [Buffer.from('POST /hash HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n')];
    for (let at = 0; at < body.length; at += 3 * MiB + 17) {
      const piece = body.subarray(at, Math.min(body.length, at + 3 * MiB + 17));
      chunked.push(Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n'));
    }
    chunked.push(Buffer.from('0\r\n\r\n'));
    // The last body bytes and the next request's head share writes.
    await send(Buffer.concat([...chunked, Buffer.from('GET /?bytes=5 HTTP/1.1\r\nHost: x\r\n\r\n')]));
    await waitFor(() => got.endsWith('xxxxx'), { what: 'three answers', timeoutMs: 60_000, intervalMs: 20 });
    const digests = got.match(/\r\n\r\n[0-9a-f]{64}/g)?.map((m) => m.slice(4));
    assert.deepEqual(digests, [digest, digest]);
  } finally {
    sock.destroy();
  }
});

// What a backend socket read into is freed once written (upstream.ts,
// onRead): freed too early, the client would get other bytes.
test('answers arrive whole and in order through clients that read in fits: fixed length, chunked, and de-chunked for HTTP/1.0, at once', T, async () => {
  const digest = createHash('sha256').update(random).digest('hex');
  // At once, so memory one answer gives back is soon read into for another.
  await Promise.all(([['/random', '1.1'], ['/random?chunked', '1.1'], ['/random?chunked', '1.0']] as const).map(async ([target, version]) => {
    const sock = connect(Number(new URL(proxy.url).port), '127.0.0.1');
    const parts: Buffer[] = [];
    let fits = 0;
    let ended = false;
    sock.on('data', (d: Buffer) => {
      parts.push(d);
      // The client stops reading for a while at first and for moments later, so the proxy's writes back up.
      if (++fits === 1 || fits % 50 === 0) {
        sock.pause();
        setTimeout(() => sock.resume(), fits === 1 ? 300 : 5);
      }
    });
    sock.on('end', () => { ended = true; });
    try {
      // The proxy closes after the answer: its end is the connection's.
      sock.write(`GET ${target} HTTP/${version}\r\nHost: x\r\nConnection: close\r\n\r\n`);
      await waitFor(() => ended, { what: `the answer to ${target} over HTTP/${version}`, timeoutMs: 60_000, intervalMs: 20 });
      const all = Buffer.concat(parts);
      const head = all.indexOf('\r\n\r\n');
      const chunked = /transfer-encoding: chunked/i.test(all.toString('latin1', 0, head));
      assert.equal(chunked, target.endsWith('chunked') && version === '1.1');
      const body = chunked ? dechunk(all.subarray(head + 4)) : all.subarray(head + 4);
      assert.equal(body.length, random.length, `${target} over HTTP/${version}: length`);
      assert.equal(createHash('sha256').update(body).digest('hex'), digest, `${target} over HTTP/${version}: content`);
    } finally {
      sock.destroy();
    }
  }));
});

function dechunk(b: Buffer): Buffer {
  const out: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = b.indexOf('\r\n', at);
    const size = parseInt(b.toString('latin1', at, eol), 16);
    if (size === 0) return Buffer.concat(out);
    out.push(b.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
}

test('a client that stops reading holds the origin back; memory stays flat', T, async () => {
  const size = 256 * MiB;
  const before = proxy.rssMiB();
  const { port } = new URL(proxy.url);
  const sock = connect(Number(port), '127.0.0.1');
  sock.write(`GET /?bytes=${size} HTTP/1.1\r\nHost: x\r\n\r\n`);
  sock.pause();
  await sleep(3000); // the scenario: long enough for any unbounded buffering to show
  const stalledAt = written;
  const during = proxy.rssMiB();
  assert.ok(stalledAt < 64 * MiB, `origin wrote ${(stalledAt / MiB).toFixed(1)} MiB while the client read nothing`);
  assert.ok(during - before < 64, `RSS grew ${(during - before).toFixed(1)} MiB`);

  let got = 0;
  sock.on('data', (d: Buffer) => { got += d.length; });
  sock.resume();
  try {
    await waitFor(() => got > size, { what: 'the whole body (and its head) once the client reads', timeoutMs: 60_000, intervalMs: 50 });
  } finally {
    sock.destroy();
  }
});

test('an answer held for its learn holds the origin back; it is whole once the learn ends', T, async () => {
  const mc = await startMemcached();
  // The learn waits the whole store timeout on a frozen memcached: that is the hold.
  const held = await startProxy(['--backend', `big=${origin.url}`, '--threads', '1', '--memcache', mc.address, '--store-timeout', '3000']);
  const size = 128 * MiB;
  const sock = connect(Number(new URL(held.url).port), '127.0.0.1');
  let got = 0;
  let head = '';
  sock.on('data', (d: Buffer) => {
    if (got === 0) head = d.toString('latin1', 0, Math.min(d.length, 512));
    got += d.length;
  });
  try {
    await mc.freeze();
    const t0 = Date.now();
    sock.write(`GET /session?bytes=${size} HTTP/1.1\r\nHost: x\r\n\r\n`);
    await sleep(1500); // the scenario: within the hold, long enough for unbounded reading to show
    const stalledAt = written;
    assert.equal(got, 0, 'nothing reaches the client before the learn ends');
    assert.ok(Date.now() - t0 < 3000, 'still within the hold');
    assert.ok(stalledAt < 32 * MiB, `origin wrote ${(stalledAt / MiB).toFixed(1)} MiB while its answer was held`);
    mc.signal('SIGCONT');
    await waitFor(() => got > size, { what: 'the whole body (and its head) once the learn ends', timeoutMs: 60_000, intervalMs: 50 });
    assert.match(head, /^HTTP\/1\.1 200 [^]*set-cookie: PHPSESSID=held1/i);
  } finally {
    sock.destroy();
    await held.stop();
    await mc.stop();
  }
});
