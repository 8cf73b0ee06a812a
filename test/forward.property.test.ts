// Property test of the response path, end to end through real loopback
// sockets: whatever a backend answers (status, framing, end-to-end and
// hop-by-hop header lines, body bytes, how its writes are split), the client
// gets that answer byte for byte, less the hop-by-hop lines and plus only the
// proxy's own Via / framing / Connection lines; and the next answer on a
// kept-alive connection is whole too. It guards forward.ts's zero-copy head
// placement (#responseHead writes the client's head over the backend's in
// the receive buffer when it fits, #outFrom sends head and body as one view),
// the corked path, the held path of answers that set a session cookie, and
// the de-chunking for HTTP/1.0 clients.
//
// The origin is a raw net server that writes exactly the scripted bytes, in
// the scripted segments; the client is a raw socket with a small strict
// response reader. Bodies are generated from (length, seed), so that a
// counterexample prints short.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import type { Socket } from 'node:net';
import fc from 'fast-check';
import { bytesDiff, Conn, cutsOf, encodeChunked, type Gap, gapsArb, latin1, lengthArb, preview, type Setup, twinSetups, readHeads, responseValueArb, seededBytes, splitAt, writeAll } from './helpers/wire.ts';

const NUM_RUNS = 300;
/** Runs through TLS on both sides (a client to --tls-cert, the proxy to an https:// origin): the other read and write paths. */
const TLS_RUNS = 100;
/** The most one request-answer exchange may take before the property fails. */
const ANSWER_MS = 2000;
const VIA_LINE = 'Via: 1.1 sticky-proxy';
const STATUS_START = Buffer.from('HTTP/1.1 ', 'latin1');

// ------------------------------------------------------------------ the case

type Framing = 'length' | 'chunked' | 'close';
type ConnectionHop = 'none' | 'keep-alive' | 'keep-alive+hop' | 'close' | 'close+hop';
type ClientKind = 'HTTP/1.1' | 'HTTP/1.0' | 'HTTP/1.0 keep-alive';

/** One scripted backend answer (and the request's method). */
interface Answer {
  method: 'GET' | 'HEAD';
  status: number;
  /** The status line's text after the code; null: none, not even the space. */
  reason: string | null;
  /** Ignored for 204 and 304 (no framing header, except a Content-Length on a 304 when 'length'). */
  framing: Framing;
  /** Which spelling of Content-Length / Transfer-Encoding. */
  framingCase: number;
  framingAt: number;
  /** End-to-end header lines, in order. */
  headers: string[];
  /** Set-Cookie: PHPSESSID=<id>: the proxy holds the answer until the binding is stored. */
  sessionId: string | null;
  themeCookie: boolean;
  cookiesAt: number;
  /** The Connection line (close: the origin closes after the answer); +hop: it names X-Hop, whose line is sent too. */
  connection: ConnectionHop;
  hopName: string;
  hopPad: number;
  /** A Keep-Alive line padded with this many bytes; null: none. */
  keepAlivePad: number | null;
  /** Where the hop-by-hop lines go among the others. */
  hopsAt: number[];
  body: { length: number; seed: number };
  /** Chunk boundaries, per mille of the body. */
  chunkCuts: number[];
  chunkExts: string[];
  upperHex: boolean;
  trailers: string[];
  /** An interim 1xx answer sent before this one (the proxy drops it: the client asked for none). */
  interim: string | null;
  /** Where the origin splits its writes, per mille of all it sends; headCut: also this many bytes past the head. */
  writeCuts: number[];
  headCut: number | null;
  gaps: Gap[];
}

/** An answer as the origin sends it, and what the client must see of it. */
interface Built {
  id: number;
  answer: Answer;
  segments: Buffer[];
  closeAfter: boolean;
  statusLine: string;
  /** End-to-end lines, in the origin's order. */
  e2e: string[];
  /** Lower-case names of the hop-by-hop lines the origin sent. */
  hopNames: string[];
  /** The answer has a body for this request: not HEAD, 204, 304. */
  bodyful: boolean;
  framing: Framing | 'none';
  /** The body's bytes (de-chunked); empty when not bodyful. */
  body: Buffer;
  /** The body as framed on the wire (chunked: with its framing); empty when not bodyful. */
  bodyWire: Buffer;
  trailers: string[];
  /** The method the origin got the request with. */
  arrived: string | null;
}

const CL_NAMES = ['Content-Length', 'content-length', 'CONTENT-length'];
const TE_NAMES = ['Transfer-Encoding', 'transfer-encoding', 'TRANSFER-ENCODING'];
// Names a generated end-to-end line (or trailer) must not have: the proxy acts on them, or the test sends them itself.
const RESERVED = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade',
  'content-length', 'via', 'set-cookie', 'x-hop', 'proxy-authenticate', 'proxy-authorization']);
// Lines the proxy may add to a client head (clientHead in src/head.ts): Via, its own framing, the connection's fate.
const PROXY_ADDED = new Set(['via', 'transfer-encoding', 'connection']);

// Body bytes now and then look like HTTP framing (and a status line): see seededBytes.
const BODY_SPECIALS = ['\r\n', '\r\n\r\n', '0\r\n\r\n', 'HTTP/1.1 200 OK\r\n', '\0\0', '\xff\xfe\x80'].map(latin1);

let nextId = 1;
const cases = new Map<number, Built>();

function build(a: Answer): Built {
  const id = nextId++;
  const noBody = a.status === 204 || a.status === 304;
  const framing: Framing | 'none' = noBody ? 'none' : a.framing;
  const content = seededBytes(a.body.length, a.body.seed, BODY_SPECIALS);
  const e2e = [...a.headers];
  const cookies: string[] = [];
  if (a.sessionId !== null) cookies.push(`Set-Cookie: PHPSESSID=${a.sessionId}; Path=/`);
  if (a.themeCookie) cookies.push('Set-Cookie: theme=x');
  e2e.splice(a.cookiesAt % (e2e.length + 1), 0, ...cookies);
  if (framing === 'length' || (a.status === 304 && a.framing === 'length')) {
    e2e.splice(a.framingAt % (e2e.length + 1), 0, `${CL_NAMES[a.framingCase]}: ${content.length}`);
  }
  const hop: string[] = [];
  const hopNames: string[] = [];
  if (framing === 'chunked') {
    hop.push(`${TE_NAMES[a.framingCase]}: chunked`);
    hopNames.push('transfer-encoding');
  }
  const closing = framing === 'close' || a.connection.startsWith('close');
  const listed = a.connection.endsWith('+hop');
  if (a.connection !== 'none' || closing) {
    hop.push(`Connection: ${closing ? 'close' : 'keep-alive'}${listed ? ', X-Hop' : ''}`);
    hopNames.push('connection');
  }
  if (listed) {
    hop.push(`${a.hopName}: v${'h'.repeat(a.hopPad)}`);
    hopNames.push('x-hop');
  }
  if (a.keepAlivePad !== null) {
    hop.push(`Keep-Alive: timeout=5, max=1000${a.keepAlivePad > 0 ? `, pad=${'p'.repeat(a.keepAlivePad)}` : ''}`);
    hopNames.push('keep-alive');
  }
  const lines = [...e2e];
  hop.forEach((line, i) => lines.splice(a.hopsAt[i % a.hopsAt.length] % (lines.length + 1), 0, line));
  const statusLine = `HTTP/1.1 ${a.status}${a.reason === null ? '' : ` ${a.reason}`}`;
  const head = latin1(`${statusLine}\r\n${lines.map((l) => `${l}\r\n`).join('')}\r\n`);
  const bodyful = a.method === 'GET' && framing !== 'none';
  const bodyWire = !bodyful ? Buffer.alloc(0)
    : framing === 'chunked' ? encodeChunked(content, { cuts: a.chunkCuts, exts: a.chunkExts, upperHex: a.upperHex, trailers: a.trailers })
    : content;
  const interim = latin1(a.interim ?? '');
  const wire = Buffer.concat([interim, head, bodyWire]);
  const points = cutsOf(a.writeCuts, wire.length);
  const headEnd = interim.length + head.length + (a.headCut ?? 0);
  if (a.headCut !== null && headEnd < wire.length && !points.includes(headEnd)) {
    points.push(headEnd);
    points.sort((x, y) => x - y);
  }
  const segments = splitAt(wire, points);
  const b: Built = {
    id, answer: a, segments, closeAfter: closing, statusLine, e2e, hopNames, bodyful, framing,
    body: bodyful ? content : Buffer.alloc(0), bodyWire, trailers: framing === 'chunked' && bodyful ? a.trailers : [], arrived: null,
  };
  cases.set(id, b);
  return b;
}

/** A plain answer sent after the last one on a connection that stays open: nothing of the last may leak into it. */
const PROBE: Answer = {
  method: 'GET', status: 200, reason: 'OK', framing: 'length', framingCase: 0, framingAt: 0, headers: ['X-Probe: yes'],
  sessionId: null, themeCookie: false, cookiesAt: 0, connection: 'none', hopName: 'X-Hop', hopPad: 0, keepAlivePad: null,
  hopsAt: [0], body: { length: 37, seed: 7 }, chunkCuts: [], chunkExts: [], upperHex: false, trailers: [], interim: null,
  writeCuts: [], headCut: null, gaps: ['same'],
};

// ---------------------------------------------------------------- generators

const TOKEN_CHARS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_'.split('');
const nameArb = fc.tuple(fc.constantFrom('X-', 'x-', ''), fc.string({ unit: fc.constantFrom(...TOKEN_CHARS), minLength: 1, maxLength: 12 }))
  .map(([p, n]) => p + n)
  .filter((n) => !RESERVED.has(n.toLowerCase()));
const lineArb = fc.tuple(nameArb, responseValueArb).map(([n, v]) => (v === '' ? `${n}:` : `${n}: ${v}`));
const idArb = fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789'.split('')), minLength: 8, maxLength: 32 });

const answerArb: fc.Arbitrary<Answer> = fc.record({
  method: fc.oneof({ weight: 5, arbitrary: fc.constant('GET' as const) }, { weight: 1, arbitrary: fc.constant('HEAD' as const) }),
  status: fc.oneof({ weight: 6, arbitrary: fc.constantFrom(200, 201, 404, 500) }, { weight: 1, arbitrary: fc.constantFrom(204, 304) }),
  reason: fc.option(fc.constantFrom('OK', 'Created', 'Not Found', 'Internal Server Error', 'No Content', 'Not Modified', '', 'Any  Text ~!'), { nil: null, freq: 6 }),
  framing: fc.constantFrom<Framing>('length', 'chunked', 'close'),
  framingCase: fc.integer({ min: 0, max: 2 }),
  framingAt: fc.nat(20),
  headers: fc.array(lineArb, { maxLength: 8 }),
  sessionId: fc.oneof({ weight: 1, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: idArb }),
  themeCookie: fc.boolean(),
  cookiesAt: fc.nat(20),
  connection: fc.oneof(
    { weight: 2, arbitrary: fc.constant<ConnectionHop>('none') },
    { weight: 3, arbitrary: fc.constant<ConnectionHop>('keep-alive') },
    { weight: 2, arbitrary: fc.constant<ConnectionHop>('keep-alive+hop') },
    { weight: 1, arbitrary: fc.constantFrom<ConnectionHop>('close', 'close+hop') },
  ),
  hopName: fc.constantFrom('X-Hop', 'x-hop', 'X-HOP'),
  hopPad: fc.nat(120),
  keepAlivePad: fc.option(fc.nat(120), { nil: null, freq: 3 }),
  hopsAt: fc.array(fc.nat(20), { minLength: 1, maxLength: 4 }),
  body: fc.record({ length: lengthArb, seed: fc.integer({ min: 1, max: 0x7fffffff }) }),
  chunkCuts: fc.array(fc.integer({ min: 1, max: 999 }), { maxLength: 6 }),
  chunkExts: fc.array(fc.constantFrom('', ';a=b', ';ext', ';q="x y"', ';A=1;b'), { maxLength: 3 }),
  upperHex: fc.boolean(),
  trailers: fc.array(lineArb, { maxLength: 2 }),
  interim: fc.oneof(
    { weight: 8, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fc.constantFrom('HTTP/1.1 100 Continue\r\n\r\n', 'HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n') },
  ),
  writeCuts: fc.array(fc.integer({ min: 1, max: 999 }), { maxLength: 3 }),
  // Right after the head, or a few body bytes (a chunk size line's start) past it.
  headCut: fc.option(fc.nat(6), { nil: null, freq: 2 }),
  gaps: gapsArb,
});

const scenarioArb = fc.record({
  client: fc.oneof(
    { weight: 3, arbitrary: fc.constant<ClientKind>('HTTP/1.1') },
    { weight: 2, arbitrary: fc.constant<ClientKind>('HTTP/1.0') },
    { weight: 2, arbitrary: fc.constant<ClientKind>('HTTP/1.0 keep-alive') },
  ),
  answers: fc.array(answerArb, { minLength: 1, maxLength: 3 }),
});

// -------------------------------------------------------------------- origin

const strays: string[] = [];

/** Answers each request head (requests here have no body) with its case's bytes, in its segments. */
function serve(sock: Socket): void {
  readHeads(sock, async (head) => {
    const m = /^(GET|HEAD) \/case\/(\d+) HTTP\/1\.1\r\n/.exec(head);
    const b = m === null ? undefined : cases.get(Number(m[2]));
    if (m === null || b === undefined) {
      strays.push(head.slice(0, head.indexOf('\r\n')));
      sock.destroy();
      return false;
    }
    b.arrived = m[1];
    await writeAll(sock, b.segments, b.answer.gaps);
    if (sock.destroyed) return false;
    if (b.closeAfter) {
      sock.end();
      return false;
    }
    return true;
  });
}

// -------------------------------------------------------------------- client

interface Got {
  statusLine: string;
  status: number;
  /** Header lines as received, without CRLF. */
  lines: string[];
  /** [name, value] pairs, name case kept. */
  headers: [string, string][];
  framing: Framing | 'none';
  body: Buffer;
  /** Chunked: the body as framed, as received. */
  raw: Buffer;
  trailers: string[];
}

/** Reads one answer: the head to CRLFCRLF, then the body as the head frames it (RFC 9112 section 6.3). */
async function readAnswer(c: Conn, isHead: boolean, deadline: number): Promise<Got> {
  let end: number;
  while ((end = c.buf.indexOf('\r\n\r\n')) < 0) {
    // Bytes that cannot begin an answer fail now, not at the deadline.
    const n = Math.min(c.buf.length, STATUS_START.length);
    if (!c.buf.subarray(0, n).equals(STATUS_START.subarray(0, n))) assert.fail(`an answer that does not start with HTTP/1.1: ${preview(c.buf)}`);
    await c.more(deadline, 'the head');
  }
  const text = c.take(end + 4).toString('latin1');
  const lines = text.slice(0, -4).split('\r\n');
  const statusLine = lines.shift()!;
  const m = /^HTTP\/1\.1 (\d{3})(?: [\x20-\x7e]*)?$/.exec(statusLine);
  assert.ok(m !== null, `invalid status line ${JSON.stringify(statusLine)}`);
  const status = Number(m[1]);
  const headers: [string, string][] = lines.map((line) => {
    const lm = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(.*?)[ \t]*$/.exec(line);
    assert.ok(lm !== null, `invalid header line ${JSON.stringify(line)}`);
    return [lm[1], lm[2]];
  });
  const values = (name: string): string[] => headers.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v);
  const te = values('transfer-encoding');
  const cl = values('content-length');
  let framing: Framing | 'none';
  if (isHead || status === 204 || status === 304 || status < 200) framing = 'none';
  else if (te.length > 0) {
    assert.deepEqual(te, ['chunked'], 'Transfer-Encoding');
    assert.deepEqual(cl, [], 'Content-Length with Transfer-Encoding');
    framing = 'chunked';
  } else if (cl.length > 0) {
    assert.equal(cl.length, 1, 'one Content-Length');
    assert.match(cl[0], /^\d+$/);
    framing = 'length';
  } else framing = 'close';

  let body: Buffer = Buffer.alloc(0);
  let raw: Buffer = Buffer.alloc(0);
  const trailers: string[] = [];
  if (framing === 'length') {
    body = await c.bytes(Number(cl[0]), deadline, 'the Content-Length body');
  } else if (framing === 'close') {
    while (!c.ended) await c.more(deadline, 'the close that ends the body');
    body = c.take(c.buf.length);
  } else if (framing === 'chunked') {
    const data: Buffer[] = [];
    const rawParts: Buffer[] = [];
    for (;;) {
      const sizeLine = await c.line(deadline, 'a chunk size line');
      rawParts.push(sizeLine);
      const sm = /^([0-9a-fA-F]+)(;[^\r\n]*)?\r\n$/.exec(sizeLine.toString('latin1'));
      assert.ok(sm !== null, `invalid chunk size line ${preview(sizeLine)}`);
      const size = parseInt(sm[1], 16);
      if (size === 0) break;
      const chunk = await c.bytes(size + 2, deadline, 'chunk data');
      assert.equal(chunk.toString('latin1', size), '\r\n', 'CRLF after chunk data');
      rawParts.push(chunk);
      data.push(chunk.subarray(0, size));
    }
    for (;;) {
      const tl = await c.line(deadline, 'a trailer line');
      rawParts.push(tl);
      if (tl.length === 2) break;
      trailers.push(tl.toString('latin1', 0, tl.length - 2));
    }
    body = Buffer.concat(data);
    raw = Buffer.concat(rawParts);
  }
  return { statusLine, status, lines, headers, framing, body, raw, trailers };
}

/**
 * Sends the request for `b` on `c` and checks the answer. Returns whether the
 * connection stays open (after checking that the proxy closed it if not).
 */
async function exchange(c: Conn, b: Built, kind: ClientKind, label: string): Promise<boolean> {
  const deadline = Date.now() + ANSWER_MS;
  const minor = kind === 'HTTP/1.1' ? 1 : 0;
  const keepAsked = kind !== 'HTTP/1.0';
  c.sock.write(`${b.answer.method} /case/${b.id} HTTP/1.${minor}\r\nHost: origin.test\r\n${kind === 'HTTP/1.0 keep-alive' ? 'Connection: keep-alive\r\n' : ''}\r\n`);
  const at = `${label} (${kind} ${b.answer.method}, case ${b.id})`;
  let got: Got;
  try {
    got = await readAnswer(c, b.answer.method === 'HEAD', deadline);
  } catch (err) {
    throw new Error(`${at}: ${(err as Error).message}`);
  }
  assert.equal(b.arrived, b.answer.method, `${at}: the origin got the request`);
  assert.equal(got.statusLine, b.statusLine, `${at}: status line`);

  // Head: the origin's end-to-end lines, in order and byte for byte; of the rest, only the proxy's own lines.
  const framing = b.bodyful ? b.framing : 'none';
  const keep = keepAsked && framing !== 'close' && !(minor === 0 && framing === 'chunked');
  // No hop-by-hop line of the origin's (Keep-Alive, X-Hop named by its Connection, its Connection and Transfer-Encoding lines).
  for (const [name, value] of got.headers) {
    const lower = name.toLowerCase();
    if (!PROXY_ADDED.has(lower)) assert.ok(!b.hopNames.includes(lower), `${at}: hop-by-hop ${name} reached the client`);
    if (lower === 'connection') assert.ok(value === 'close' || value === 'keep-alive', `${at}: the origin's Connection reached the client: ${value}`);
    if (lower === 'transfer-encoding') assert.equal(value, 'chunked', `${at}: Transfer-Encoding`);
  }
  const passed = got.lines.filter((_, i) => !PROXY_ADDED.has(got.headers[i][0].toLowerCase()));
  assert.deepEqual(passed, b.e2e, `${at}: end-to-end header lines`);
  const added = got.lines.filter((_, i) => PROXY_ADDED.has(got.headers[i][0].toLowerCase()));
  const wantAdded = [VIA_LINE];
  if (framing === 'chunked' && minor === 1) wantAdded.push('Transfer-Encoding: chunked');
  if (!keep) wantAdded.push('Connection: close');
  else if (minor === 0) wantAdded.push('Connection: keep-alive');
  assert.deepEqual(added, wantAdded, `${at}: the proxy's own header lines`);
  // An HTTP/1.0 client gets a chunked body de-chunked, ended by the close.
  const wantClientFraming = framing === 'chunked' && minor === 0 ? 'close' : framing;
  assert.equal(got.framing, wantClientFraming, `${at}: framing of the client's answer`);

  // Body: exactly the origin's, and for a chunked one passed on, its framing, extensions and trailers as sent.
  if (!got.body.equals(b.body)) assert.fail(`${at}: body differs: ${bytesDiff(got.body, b.body)}`);
  if (got.framing === 'chunked') {
    assert.deepEqual(got.trailers, b.trailers, `${at}: trailers`);
    if (!got.raw.equals(b.bodyWire)) assert.fail(`${at}: chunked framing differs: ${bytesDiff(got.raw, b.bodyWire)}`);
  }

  if (!keep) {
    while (!c.ended) await c.more(deadline, `${at}: the proxy to close the connection`);
    assert.equal(c.buf.length, 0, `${at}: bytes after the answer before the close: ${preview(c.buf)}`);
    return false;
  }
  assert.equal(c.buf.length, 0, `${at}: bytes after the answer: ${preview(c.buf)}`);
  return true;
}

// ---------------------------------------------------------------------- test

const twins = twinSetups(serve, {});

async function property(setup: Setup, numRuns: number): Promise<void> {
  const proxy = setup.proxy;
  await fc.assert(fc.asyncProperty(scenarioArb, async ({ client, answers }) => {
    await proxy.ready();
    const conns: Conn[] = [];
    const built: Built[] = [];
    try {
      let conn: Conn | null = null;
      for (let i = 0; i < answers.length; i++) {
        const b = build(answers[i]);
        built.push(b);
        if (conn === null) conns.push(conn = new Conn(proxy.port, setup.secure));
        if (!await exchange(conn, b, client, `answer ${i + 1} of ${answers.length}`)) conn = null;
      }
      if (conn !== null) {
        const probe = build(PROBE);
        built.push(probe);
        await exchange(conn, probe, client, 'the probe after the last answer');
      }
    } catch (err) {
      throw await proxy.explain(err);
    } finally {
      for (const c of conns) c.sock.destroy();
      for (const b of built) cases.delete(b.id);
    }
  }), {
    numRuns,
    // A failure that shows as a timeout (body bytes lost) costs ANSWER_MS per shrinking step: stop shrinking in time to report it.
    interruptAfterTimeLimit: 70_000,
    markInterruptAsFailure: true,
  });
  assert.deepEqual(strays, [], 'requests the origin did not expect');
  assert.deepEqual(proxy.crashes, [], 'the proxy exited');
}

test('backend answers reach the client byte for byte: heads, bodies, framing, kept-alive connections', { timeout: 110_000 }, async () => {
  await property(twins.plain, NUM_RUNS);
});

test('the same through TLS on both sides: a client to --tls-cert, the proxy to an https:// origin', { timeout: 110_000 }, async () => {
  await property(twins.secure, TLS_RUNS);
});
