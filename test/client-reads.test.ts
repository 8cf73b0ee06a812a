// Plain client sockets read between requests into one scratch buffer per
// event loop, shared by every connection (src/read-regions.ts): whatever of a
// read outlives it must be copied before another connection's read lands in
// the same memory. Each test leaves bytes behind on one connection, makes
// other connections read, and checks that the origin got the left bytes
// intact: a part of a head, a pipelined request, a body that came with its
// head while the request waited for a backend connection, and a tunnel's
// bytes queued for a backend that does not read.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { randomBytes } from 'node:crypto';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { request } from 'undici';
import { startOrigin, type Origin } from './helpers/origins.ts';
import { startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { waitFor } from './helpers/wait.ts';

let origin: Origin;
let held: (() => void)[] = [];
let proxy: ProxyProcess;
let capped: ProxyProcess;

/** Answers what it saw of a request as JSON; /slow waits until released. */
function handler(req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse): void {
  const hash = createHash('sha256');
  let length = 0;
  req.on('data', (d: Buffer) => { hash.update(d); length += d.length; });
  req.on('end', () => {
    const answer = (): void => {
      const body = JSON.stringify({ url: req.url, tag: req.headers['x-tag'] ?? null, length, digest: hash.digest('hex') });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    if (req.url === '/slow') held.push(answer);
    else answer();
  });
}

function adminUrl(p: ProxyProcess): string {
  return p.output.find((l) => l.startsWith('admin on '))!.slice('admin on '.length);
}

async function queued(p: ProxyProcess): Promise<number> {
  const text = await (await request(`${adminUrl(p)}/metrics`)).body.text();
  const m = /^sticky_backend_queue_depth\{backend="o"\} (\d+)$/m.exec(text);
  return m === null ? 0 : Number(m[1]);
}

before(async () => {
  origin = await startOrigin('o', handler);
  proxy = await startProxy(['--backend', `o=${origin.url}`, '--no-affinity', '--threads', '1']);
  // One backend connection: a request behind /slow waits, its body with it.
  capped = await startProxy(['--backend', `o=${origin.url}`, '--no-affinity', '--threads', '1', '--upstream-connections', '1', '--admin', '127.0.0.1:0']);
});
after(async () => {
  for (const release of held) release();
  await proxy.stop();
  await capped.stop();
  await origin.close();
});

/** A raw connection that splits what it receives into answers by Content-Length. */
class Raw {
  readonly socket: Socket;
  readonly answers: { status: number; body: string }[] = [];
  #buf = Buffer.alloc(0);

  constructor(url: string) {
    const u = new URL(url);
    this.socket = connect(Number(u.port), u.hostname);
    this.socket.setNoDelay(true);
    this.socket.on('data', (d: Buffer) => this.#take(d));
  }

  #take(d: Buffer): void {
    this.#buf = Buffer.concat([this.#buf, d]);
    for (;;) {
      const end = this.#buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = this.#buf.toString('latin1', 0, end);
      const length = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? 0);
      if (this.#buf.length < end + 4 + length) return;
      this.answers.push({ status: Number(head.slice(9, 12)), body: this.#buf.toString('latin1', end + 4, end + 4 + length) });
      this.#buf = this.#buf.subarray(end + 4 + length);
    }
  }

  async answer(n: number, what: string): Promise<{ status: number; body: string }> {
    await waitFor(() => this.answers.length >= n, { what, timeoutMs: 10_000 });
    return this.answers[n - 1];
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Other connections' requests, answered: each one's read went into the scratch buffer after the bytes left behind. */
async function otherReads(url: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const r = await request(`${url}/other-${i}`, { headers: { 'x-tag': 'z'.repeat(200 + i) } });
    assert.equal(r.statusCode, 200);
    await r.body.text();
  }
}

test('a head split across reads, with other connections read in between, reaches the origin whole', async () => {
  const a = new Raw(proxy.url);
  try {
    a.socket.write(`GET /split HTTP/1.1\r\nHost: x\r\nX-Tag: ${'t'.repeat(300)}`);
    await otherReads(proxy.url, 3);
    a.socket.write(`${'u'.repeat(20)}\r\n\r\n`);
    const r = await a.answer(1, 'the split request\'s answer');
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body), { url: '/split', tag: `${'t'.repeat(300)}${'u'.repeat(20)}`, length: 0, digest: createHash('sha256').digest('hex') });
  } finally {
    a.close();
  }
});

test('a pipelined request left waiting behind a slow one reaches the origin whole', async () => {
  const a = new Raw(proxy.url);
  try {
    a.socket.write(`GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\nX-Tag: ${'p'.repeat(300)}\r\n\r\n`);
    await waitFor(() => held.length === 1, { what: 'the slow request at the origin', timeoutMs: 10_000 });
    await otherReads(proxy.url, 3);
    held.shift()!();
    assert.equal((await a.answer(1, 'the slow answer')).status, 200);
    const r = await a.answer(2, 'the pipelined request\'s answer');
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body), { url: '/second', tag: 'p'.repeat(300), length: 0, digest: createHash('sha256').digest('hex') });
  } finally {
    a.close();
  }
});

test('body bytes that came with their head survive other reads while the request waits for a backend connection', async () => {
  const slow = new Raw(capped.url);
  const poster = new Raw(capped.url);
  const other = new Raw(capped.url);
  try {
    slow.socket.write('GET /slow HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitFor(() => held.length === 1, { what: 'the slow request holding the one backend connection', timeoutMs: 10_000 });
    const body = Buffer.alloc(3000);
    for (let i = 0; i < body.length; i++) body[i] = (i * 7 + 3) & 0xff;
    poster.socket.write(Buffer.concat([Buffer.from(`POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n`), body]));
    await waitFor(async () => (await queued(capped)) === 1, { what: 'the POST queued for the backend connection', timeoutMs: 10_000 });
    // Another connection's read, into the same scratch buffer, while the POST's body waits.
    other.socket.write(`GET /other HTTP/1.1\r\nHost: x\r\nX-Tag: ${'q'.repeat(3000)}\r\n\r\n`);
    await waitFor(async () => (await queued(capped)) === 2, { what: 'the other request queued too', timeoutMs: 10_000 });
    held.shift()!();
    assert.equal((await slow.answer(1, 'the slow answer')).status, 200);
    const r = await poster.answer(1, 'the POST\'s answer');
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body), { url: '/upload', tag: null, length: body.length, digest: createHash('sha256').update(body).digest('hex') });
    assert.equal((await other.answer(1, 'the other answer')).status, 200);
  } finally {
    slow.close();
    poster.close();
    other.close();
  }
});

test('a tunnel\'s bytes queued for a backend that stops reading arrive whole while another tunnel streams', { timeout: 60_000 }, async () => {
  // A raw origin: it switches protocols; the first tunnel reads nothing until
  // told, then answers the digest of what it got; the others count and drop.
  const total = 24 * 1024 * 1024;
  let resume: () => void = () => {};
  const reading = new Promise<void>((r) => { resume = r; });
  let tunnels = 0;
  let dropped = 0;
  const server: Server = createServer((s) => {
    const first = tunnels++ === 0;
    let head = Buffer.alloc(0);
    const onHead = (d: Buffer): void => {
      head = Buffer.concat([head, d]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      s.off('data', onHead);
      s.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n');
      if (!first) {
        dropped += head.length - end - 4;
        s.on('data', (c: Buffer) => { dropped += c.length; });
        return;
      }
      s.pause();
      const hash = createHash('sha256');
      let got = head.length - end - 4;
      hash.update(head.subarray(end + 4));
      void reading.then(() => {
        s.on('data', (c: Buffer) => {
          hash.update(c);
          got += c.length;
          if (got === total) s.end(hash.digest('hex'));
        });
        s.resume();
      });
    };
    s.on('data', onHead);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const p = await startProxy(['--backend', `t=http://127.0.0.1:${(server.address() as AddressInfo).port}`, '--no-affinity', '--threads', '1']);
  const port = Number(new URL(p.url).port);
  const open = async (c: Socket): Promise<{ answer: Buffer }> => {
    const got = { answer: Buffer.alloc(0) };
    c.on('data', (d: Buffer) => { got.answer = Buffer.concat([got.answer, d]); });
    c.write('GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n');
    await waitFor(() => got.answer.includes('\r\n\r\n'), { what: 'the 101', timeoutMs: 10_000 });
    assert.match(got.answer.toString('latin1'), /^HTTP\/1\.1 101 /);
    got.answer = Buffer.alloc(0);
    return got;
  };
  const a = connect(port, '127.0.0.1');
  const b = connect(port, '127.0.0.1');
  try {
    const got = await open(a);
    const data = randomBytes(total);
    // Written in pieces, so the proxy reads many times while the backend does not read.
    for (let off = 0; off < total; off += 48 * 1024) a.write(data.subarray(off, off + 48 * 1024));
    // Another tunnel streams meanwhile: the proxy reads it into buffers that must not be the queued ones.
    await open(b);
    const other = randomBytes(16 * 1024 * 1024);
    b.write(other);
    await waitFor(() => dropped === other.length, { what: 'the other tunnel\'s bytes at the origin', timeoutMs: 20_000 });
    resume();
    await waitFor(() => got.answer.length === 64, { what: 'the origin\'s digest', timeoutMs: 20_000 });
    assert.equal(got.answer.toString('latin1'), createHash('sha256').update(data).digest('hex'));
  } finally {
    a.destroy();
    b.destroy();
    await p.stop();
    await new Promise<void>((r) => server.close(() => r()));
  }
});
