// Property test of misbehaving backends, end to end through real loopback
// sockets: whatever a backend does wrong (stops in the middle of its status
// line, head or body, by a FIN, a reset or silence; sends a malformed head,
// broken chunked framing, a body longer than its Content-Length, bytes after
// its answer), the proxy stays up and a client is never misled:
// - a complete answer it receives is either the backend's, whole (status and
//   body), or the proxy's own 502 or 504;
// - an answer of the backend's that stops short comes with the connection
//   closed (the client can tell it was cut), and its body so far is a prefix
//   of the backend's;
// - nothing hangs past the upstream timeouts;
// - afterwards a fresh request is served.
// Half the answers set a session cookie; run again with affinity on (and
// memcached), such an answer is held until its learn is stored, while the
// backend goes on to misbehave, and must reach the client as any other.
// `--eject-after 0`: the one backend is never taken out for its faults, so
// that each case and its probe reach it.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import type { Socket } from 'node:net';
import fc from 'fast-check';
import type { TLSSocket } from 'node:tls';
import { startMemcached, type Memcached } from './helpers/memcached.ts';
import { checkProperty, Conn, encodeChunked, latin1, preview, seededBytes, type Setup, twinSetups } from './helpers/wire.ts';

const NUM_RUNS = 250;
/** Runs through TLS on both sides (a client to --tls-cert, the proxy to an https:// origin). */
const TLS_RUNS = 100;
/** Runs with affinity on (memcached), plain and through TLS. */
const AFFINITY_RUNS = 150;
const AFFINITY_TLS_RUNS = 60;
/** The proxy's upstream timeouts in this test: a silent backend is given up on after this long. */
const TIMEOUT_MS = 300;
/** The most one exchange may take: the timeout, the deadlines' tick and a loaded machine's margin. */
const ANSWER_MS = 4000;
const BACKEND_STATUSES = [200, 201, 204, 304, 404, 500] as const;

// ------------------------------------------------------------------ the case

type End = 'fin' | 'reset' | 'silence';

/** What the backend does with the case's request. */
type Fault =
  /** The valid answer's first `at` thousandths, then `end` (999: all but the last byte). */
  | { kind: 'cut'; at: number; end: End }
  /** The whole answer, then `extra` bytes of junk (a body longer than announced, or a second answer), then `end`. */
  | { kind: 'extra'; extra: 'junk' | 'answer'; end: End }
  /** A malformed head, then `end`. */
  | { kind: 'bad-head'; which: number; end: End }
  /** A chunked answer whose framing breaks after `at` thousandths of its body, then `end`. */
  | { kind: 'bad-chunk'; at: number; which: number; end: End };

interface Case {
  /** HEAD, 204 and 304 answers have no body, whatever their framing lines say. */
  method: 'GET' | 'HEAD';
  status: (typeof BACKEND_STATUSES)[number];
  chunked: boolean;
  body: { length: number; seed: number };
  fault: Fault;
  /** The backend's bytes go out in two writes, split here (thousandths). */
  split: number;
  /** The answer sets a session cookie: with affinity on, it is held until memcached has stored its learn. */
  cookie: boolean;
}

const BAD_HEADS = [
  'HTTP/1.1 200\r\n\r\n'.replace(' 200', ' 2OO'),
  'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello',
  'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
  'HTTP/1.1 200 OK\r\nBad Header Line\r\nContent-Length: 2\r\n\r\nok',
  'HTTP/1.1 200 OK\r\nX-Space : y\r\nContent-Length: 2\r\n\r\nok',
  'HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nok',
  'HTTP/1.1 200 OK\nContent-Length: 2\n\nok',
  'HTTP/1.1 200 OK\r\nX-Nul: a\u0000b\r\nContent-Length: 2\r\n\r\nok',
  'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok',
  'HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok',
  'HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 2\r\n\r\nok',
  `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(70_000)}\r\nContent-Length: 2\r\n\r\nok`,
];
const BAD_CHUNKS = ['zz\r\n', '5\r\nhelloXY', 'ffffffffffffffffff\r\n', '5;\r\nhello\r\n', '-1\r\n'];

const endArb = fc.constantFrom<End>('fin', 'reset', 'silence');
const caseArb: fc.Arbitrary<Case> = fc.record({
  method: fc.constantFrom<'GET' | 'HEAD'>('GET', 'GET', 'GET', 'HEAD'),
  status: fc.constantFrom(...BACKEND_STATUSES),
  chunked: fc.boolean(),
  body: fc.record({ length: fc.oneof(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 40_000 })), seed: fc.integer({ min: 1, max: 0x7fffffff }) }),
  fault: fc.oneof(
    { weight: 4, arbitrary: fc.record({ kind: fc.constant('cut' as const), at: fc.integer({ min: 0, max: 999 }), end: endArb }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('extra' as const), extra: fc.constantFrom<'junk' | 'answer'>('junk', 'answer'), end: endArb }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('bad-head' as const), which: fc.nat(BAD_HEADS.length - 1), end: endArb }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('bad-chunk' as const), at: fc.integer({ min: 0, max: 1000 }), which: fc.nat(BAD_CHUNKS.length - 1), end: endArb }) },
  ),
  split: fc.integer({ min: 0, max: 1000 }),
  cookie: fc.boolean(),
});

interface Built {
  id: number;
  c: Case;
  body: Buffer;
  /** What the backend writes, all of it, before its end. */
  wire: Buffer;
  /** The answer the backend meant, whole and valid: the client may get all of it; null when there is none (a malformed head). */
  meant: { status: number; body: Buffer } | null;
  /** Whether what the backend writes includes that whole answer (then the client must get it). */
  whole: boolean;
  /** Where the backend's first write ends (bytes of `wire`). */
  splitAt: number;
}

const SPECIAL = [latin1('\r\n'), latin1('0\r\n\r\n'), latin1('HTTP/1.1 ')];
let nextId = 1;
const cases = new Map<number, Built>();

function build(c: Case): Built {
  const id = nextId++;
  const body = seededBytes(c.body.length, c.body.seed, SPECIAL);
  const framed = (b: Buffer): Buffer => (c.chunked ? encodeChunked(b, { cuts: [333, 667] }) : b);
  const bodiless = c.method === 'HEAD' || c.status === 204 || c.status === 304;
  // A 204 has no framing line (RFC 9110 section 8.6); a 304 or an answer to HEAD says what a GET's would be.
  const framing = c.status === 204 ? '' : c.chunked ? 'Transfer-Encoding: chunked\r\n' : `Content-Length: ${body.length}\r\n`;
  const cookie = c.cookie ? `Set-Cookie: PHPSESSID=s${id}; Path=/\r\n` : '';
  const head = `HTTP/1.1 ${c.status} X\r\nX-Case: ${id}\r\n${cookie}${framing}\r\n`;
  const answer = bodiless ? latin1(head) : Buffer.concat([latin1(head), framed(body)]);
  const f = c.fault;
  let wire: Buffer;
  const answerEnd = answer.length;
  let meant: Built['meant'] = { status: c.status, body: bodiless ? Buffer.alloc(0) : body };
  let whole = false;
  if (f.kind === 'cut') {
    wire = answer.subarray(0, Math.floor((f.at * answer.length) / 1000));
  } else if (f.kind === 'extra') {
    const more = f.extra === 'junk' ? latin1('JUNK AFTER THE ANSWER') : latin1('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno');
    wire = Buffer.concat([answer, more]);
    // A reset may discard what the proxy's kernel had received and not yet handed over.
    whole = f.end !== 'reset';
  } else if (f.kind === 'bad-head') {
    wire = latin1(BAD_HEADS[f.which]);
    meant = null;
  } else if (bodiless) {
    // Chunks after a bodiless answer are bytes past it: the answer is whole.
    wire = Buffer.concat([answer, encodeChunked(body, { cuts: [500] }).subarray(0, 8), latin1(BAD_CHUNKS[f.which])]);
    whole = f.end !== 'reset';
  } else {
    // The body's chunks up to `at`, then a broken size line or chunk.
    const sent = c.chunked ? body.subarray(0, Math.floor((f.at * body.length) / 1000)) : Buffer.alloc(0);
    const good = c.chunked ? framed(sent) : Buffer.alloc(0);
    // The broken chunk's own data before its framing fails (BAD_CHUNKS[1]) is passed on like any other.
    meant = { status: c.status, body: Buffer.concat([sent, latin1(f.which === 1 ? 'hello' : '')]) };
    const chunkedHead = `HTTP/1.1 ${c.status} X\r\nX-Case: ${id}\r\nTransfer-Encoding: chunked\r\n\r\n`;
    // The good part's last-chunk (0\r\n\r\n) is dropped: the broken chunk comes instead.
    wire = Buffer.concat([latin1(chunkedHead), good.subarray(0, good.length - 5), latin1(BAD_CHUNKS[f.which])]);
  }
  let splitAt = Math.floor((c.split * wire.length) / 1000);
  // Bytes after a whole answer go in the same write as its last byte. Sent
  // later, no proxy can tell them from the answer to the next request on a
  // reused connection (sent before they arrive): a race of the backend's
  // making. An idle connection that receives them is closed.
  if (whole) splitAt = Math.min(splitAt, answerEnd - 1);
  const b: Built = { id, c, body, wire, meant, whole, splitAt };
  cases.set(id, b);
  return b;
}

// ------------------------------------------------------------------- origin

const PROBE_ANSWER = latin1('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nprobe');

function serve(sock: Socket): void {
  let pending = Buffer.alloc(0);
  sock.on('data', (d: Buffer) => {
    pending = Buffer.concat([pending, d]);
    for (;;) {
      const end = pending.indexOf('\r\n\r\n');
      if (end < 0) return;
      const line = pending.toString('latin1', 0, pending.indexOf('\r\n'));
      pending = pending.subarray(end + 4);
      const m = /^(?:GET|HEAD) \/case\/(\d+) /.exec(line);
      const b = m === null ? undefined : cases.get(Number(m[1]));
      if (b === undefined) {
        sock.write(PROBE_ANSWER);
        continue;
      }
      // The scripted bytes in two writes, then the scripted end; nothing more is read on this connection.
      sock.removeAllListeners('data');
      sock.on('data', () => {});
      const at = b.splitAt;
      sock.write(b.wire.subarray(0, at));
      setImmediate(() => {
        if (sock.destroyed) return;
        sock.write(b.wire.subarray(at));
        const e = b.c.fault.end;
        if (e === 'fin') sock.end();
        // A TLS socket has no reset of its own: it is cut without its close_notify, once its writes are out.
        else if (e === 'reset') sock.write(Buffer.alloc(0), () => ((sock as TLSSocket).encrypted === true ? sock.destroy() : sock.resetAndDestroy()));
        // 'silence': the proxy's timeout ends it.
      });
      return;
    }
  });
}

// -------------------------------------------------------------------- client

interface Got {
  status: number;
  /** The answer is complete by its own framing. */
  complete: boolean;
  body: Buffer;
  closed: boolean;
}

/** Reads one answer off `c` until it is complete by its framing, or the connection closes; `head`: the request was a HEAD. */
async function readAnswer(c: Conn, deadline: number, what: string, head = false): Promise<Got | null> {
  while (c.buf.indexOf('\r\n\r\n') < 0) {
    if (c.ended) return null;
    await c.more(deadline, what).catch((err: Error) => { if (!c.ended) throw err; });
  }
  const end = c.buf.indexOf('\r\n\r\n');
  const text = c.buf.toString('latin1', 0, end);
  const status = Number(/^HTTP\/1\.1 (\d{3}) /.exec(text)?.[1] ?? 0);
  assert.ok(status > 0, `${what}: a status line the client can read: ${preview(c.buf)}`);
  const cl = /\r\ncontent-length: *(\d+)/i.exec(text);
  const chunked = /\r\ntransfer-encoding: *chunked/i.test(text);
  c.take(end + 4);
  if (head || status === 204 || status === 304) return { status, complete: true, body: Buffer.alloc(0), closed: c.ended };
  let body: Buffer = Buffer.alloc(0);
  if (cl !== null) {
    const n = Number(cl[1]);
    while (c.buf.length < n && !c.ended) await c.more(deadline, what).catch((err: Error) => { if (!c.ended) throw err; });
    body = c.take(Math.min(n, c.buf.length));
    return { status, complete: body.length === n, body, closed: c.ended };
  }
  assert.ok(chunked, `${what}: the proxy framed its answer (${text.split('\r\n').join(' | ')})`);
  const parts: Buffer[] = [];
  for (;;) {
    let eol: number;
    while ((eol = c.buf.indexOf('\r\n')) < 0) {
      if (c.ended) return { status, complete: false, body: Buffer.concat(parts), closed: true };
      await c.more(deadline, what).catch((err: Error) => { if (!c.ended) throw err; });
    }
    const size = parseInt(c.buf.toString('latin1', 0, eol).split(';')[0], 16);
    assert.ok(Number.isFinite(size), `${what}: a chunk size the client can read`);
    while (c.buf.length < eol + 2 + size + 2) {
      if (c.ended) {
        parts.push(c.buf.subarray(eol + 2, Math.min(c.buf.length, eol + 2 + size)));
        return { status, complete: false, body: Buffer.concat(parts), closed: true };
      }
      await c.more(deadline, what).catch((err: Error) => { if (!c.ended) throw err; });
    }
    if (size === 0) {
      c.take(eol + 4);
      return { status, complete: true, body: Buffer.concat(parts), closed: c.ended };
    }
    parts.push(Buffer.from(c.buf.subarray(eol + 2, eol + 2 + size)));
    c.take(eol + 2 + size + 2);
  }
}

async function waitClosed(c: Conn, deadline: number, what: string): Promise<void> {
  while (!c.ended) await c.more(deadline, what).catch((err: Error) => { if (!c.ended) throw err; });
}

// ---------------------------------------------------------------------- test

const FLAGS = ['--no-affinity', '--eject-after', '0', '--upstream-header-timeout', String(TIMEOUT_MS), '--upstream-body-timeout', String(TIMEOUT_MS)];
const twins = twinSetups(serve, {}, FLAGS);
// Affinity on, with memcached: an answer that sets a session cookie waits for its learn's round trip while the backend goes on misbehaving.
const AFFINITY_FLAGS = FLAGS.filter((f) => f !== '--no-affinity');
let mc: Memcached;
before(async () => {
  mc = await startMemcached();
  AFFINITY_FLAGS.push('--memcache', mc.address);
});
const learning = twinSetups(serve, {}, AFFINITY_FLAGS);
after(() => mc?.stop());

async function property(setup: Setup, numRuns: number): Promise<void> {
  const proxy = setup.proxy;
  await checkProperty(proxy, caseArb, numRuns, async (c) => {
    const b = build(c);
    const at = `case ${b.id} (${c.method} ${c.status}, ${c.fault.kind}, ${c.fault.end})`;
    const conn = new Conn(proxy.port, setup.secure);
    try {
      conn.sock.write(`${c.method} /case/${b.id} HTTP/1.1\r\nHost: x\r\n\r\n`);
      const deadline = Date.now() + ANSWER_MS;
      const got = await readAnswer(conn, deadline, `${at}: the answer`, c.method === 'HEAD');
      if (got === null) {
        // Closed without a head: only allowed for an answer the client could not have had whole.
        assert.ok(!b.whole, `${at}: the connection closed without the backend's whole answer`);
      } else if (got.status === 502 || got.status === 504) {
        assert.ok(got.complete, `${at}: the proxy's own ${got.status} came whole`);
        assert.ok(!b.whole, `${at}: a ${got.status} for an answer the backend sent whole`);
      } else {
        assert.ok(b.meant !== null && got.status === b.meant.status, `${at}: status ${got.status}, the backend meant ${b.meant?.status ?? 'nothing valid'}`);
        const want = b.meant.body;
        if (got.complete) {
          assert.ok(got.body.equals(want), `${at}: a complete answer whose body is not the backend's (${got.body.length} bytes, meant ${want.length})`);
        } else {
          assert.ok(want.subarray(0, got.body.length).equals(got.body), `${at}: a cut answer whose body is not a prefix of the backend's`);
          await waitClosed(conn, deadline, `${at}: the close after a cut answer`);
        }
        if (b.whole) assert.ok(got.complete, `${at}: the backend's whole answer reached the client whole`);
      }
      // The proxy is up and serves the next request.
      const probe = new Conn(proxy.port, setup.secure);
      try {
        probe.sock.write('GET /probe HTTP/1.1\r\nHost: x\r\n\r\n');
        const p = await readAnswer(probe, Date.now() + ANSWER_MS, `${at}: the probe after it`);
        assert.ok(p !== null && p.status === 200 && p.body.toString() === 'probe', `${at}: the probe after it was served`);
      } finally {
        probe.sock.destroy();
      }
    } finally {
      conn.sock.destroy();
      cases.delete(b.id);
    }
  });
}

test('misbehaving backends: the proxy stays up, and a client gets the whole answer, the proxy\'s 502 or 504, or a cut it can tell', { timeout: 110_000 }, async () => {
  await property(twins.plain, NUM_RUNS);
});

test('the same through TLS on both sides: a client to --tls-cert, the proxy to an https:// origin', { timeout: 110_000 }, async () => {
  await property(twins.secure, TLS_RUNS);
});

test('with affinity on: an answer that sets a session cookie, held for its learn, reaches the client as any other', { timeout: 110_000 }, async () => {
  await property(learning.plain, AFFINITY_RUNS);
});

test('the same through TLS on both sides', { timeout: 110_000 }, async () => {
  await property(learning.secure, AFFINITY_TLS_RUNS);
});
