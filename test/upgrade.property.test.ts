// Property test of protocol upgrades (HTTP 101, WebSocket and others), end to
// end through real loopback sockets: whatever a valid upgrade request is
// (Connection with upgrade among other tokens and in any case, one or two
// Connection lines, the Upgrade protocol list, Sec-WebSocket-Key/-Version,
// hop-by-hop lines it names, random end-to-end lines), and whatever the
// backend answers:
// - the origin gets the request as src/head.ts upstreamHead writes it for an
//   upgrade: the client's end-to-end lines in order and byte for byte, the
//   forwarding lines, then `Connection: upgrade` and `Upgrade: <the client's
//   value>` last; none of the client's Connection, Upgrade or named lines;
// - a 101 (after a 100 or 103 or not: other 1xx are dropped, forward.ts
//   upstreamData) reaches the client as clientHead writes it for a switch: the
//   origin's status text and end-to-end lines in order and case, its Upgrade
//   line kept, its Connection, Keep-Alive, Proxy-Connection and the lines its
//   Connection names dropped, Via appended (to its last Via, else a line of
//   its own), then `Connection: upgrade`; and nothing else;
// - then the tunnel: random binary messages (0 to 70,000 bytes of every byte
//   value, each written in 1 to 4 pieces) both ways, the two sides' writes
//   interleaved in a random order, arrive whole, in order, byte for byte, and
//   nothing more. Tunnel bytes may come in the same write as the 101 head
//   (they reach upgrade.ts as `rest`), and the client's first ones in the same
//   write as its request head, or all of them without waiting for the 101;
// - closing: either side ends (the other gets every byte sent before the end,
//   then the FIN, and may still send: its bytes reach the side that ended,
//   then its own FIN does), or destroys its socket once everything arrived, or
//   in the middle of the exchange (the other side gets a close within the
//   deadline, and what it got is a prefix of what was sent);
// - an upgrade the backend declines (200, 400 or 426 with a Content-Length or
//   chunked body, sometimes with its own Upgrade and Connection: upgrade lines,
//   which are dropped) reaches the client byte for byte as any answer does, and
//   the connection then serves a next request, sent after the answer or
//   pipelined behind the upgrade request.
//
// Bytes a client sends after its upgrade request's head, before the answer:
// the README says nothing of them. client.ts keeps them (#stash) while the
// request is in flight and sends nothing of them upstream: after a 101,
// startTunnel hands them to the tunnel before anything read later; after any
// other answer they are read as the next request. The test follows the code:
// the origin must see nothing after the head before it answered (checked when
// the head arrives), then those bytes first in the tunnel; and a client whose
// upgrade may be declined sends only what may follow as a request (the probe).
//
// Two cases it found failing, both fixed and generated since:
// - a client that ends (or destroys) its connection after its request reached
//   the origin but before the 101 reached it: its FIN went nowhere (client.ts
//   `startTunnel` did not look at `ending`), so the backend connection stayed
//   open for good (tunnels have no deadline);
// - an origin that ends its side while the client still sends: backend
//   sockets are made without allowHalfOpen, so the backend's FIN ended the
//   proxy's side of that socket at once, its close destroyed the client
//   connection, and what the client sent afterwards was lost (a tunnel now
//   makes its backend socket half-open).
//
// The origin is a raw net server that checks nothing itself: it records the
// head it got, answers as scripted and hands its socket to the run. Messages
// are generated from (length, seed), so that a counterexample prints short.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { createHash } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import fc from 'fast-check';
import { bytesDiff, cutsOf, encodeChunked, gap, type Gap, gapsArb, latin1, lengthArb, owsArb, preview, type Setup, twinSetups, readHeads, requestValueArb, responseValueArb, seededBytes, splitAt, trailingOwsArb, writeAll } from './helpers/wire.ts';

const NUM_RUNS = 600;
/** Runs through TLS on both sides (a client to --tls-cert, the proxy to an https:// origin): WebSockets over wss://. */
const TLS_RUNS = 150;
/** The most any one wait (a head, a stream's bytes, a close) may take before the property fails. */
const WAIT_MS = 2000;
/** The client's address as the proxy sees it (X-Forwarded-For). */
const CLIENT_ADDRESS = '127.0.0.1';
const VIA = '1.1 sticky-proxy';
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

// ------------------------------------------------------------------ the case

type Side = 'client' | 'origin';
/** When the client's tunnel bytes go: once it has the 101, the first with the request head, or all without waiting. */
type Start = 'after-101' | 'with-head' | 'eager';
/** end: a half-close; destroy-after: once everything arrived both ways; destroy-mid: after some of its writes. */
type How = 'end' | 'destroy-after' | 'destroy-mid';

/** A header line as sent, and what the proxy does with it. */
interface Line {
  text: string;
  role: 'keep' | 'drop' | 'via';
}

/** One message of the tunnel: its bytes come from (length, seed); cut into 1 to 4 writes at per-mille points. */
interface Message {
  length: number;
  seed: number;
  cuts: number[];
}

/** The upgrade request, as generated. */
interface Req {
  target: string;
  hostName: string;
  host: string;
  upgradeName: string;
  upgradeValue: string;
  upgradeOws: [string, string];
  connName: string;
  upgradeToken: string;
  keepAliveToken: string | null;
  /** A hop-by-hop line named in Connection (sent, and dropped); null: none. */
  hop: string | null;
  /** Where the upgrade token goes among the Connection tokens, where a second Connection line starts, and the separator. */
  tokenAt: number;
  connSplit: number;
  connSep: string;
  wsKey: number[] | null;
  wsVersion: boolean;
  fields: string[];
  /** Where the test's own lines go among the fields. */
  at: number[];
  /** Where the client splits its head's writes, per mille, and the gaps between them. */
  writeCuts: number[];
  gaps: Gap[];
}

/** The backend's 101, and the tunnel that follows it. */
interface Switch {
  kind: 'switch';
  reason: string | null;
  upgradeName: string;
  upgradeValue: string;
  /** The origin's Connection line: its upgrade token (null: no Connection line at all), keep-alive, the line it names. */
  connToken: string | null;
  keepAliveToken: boolean;
  hop: string | null;
  keepAlive: boolean;
  proxyConnection: boolean;
  accept: boolean;
  via: string | null;
  fields: string[];
  at: number[];
  interim: string | null;
  /** Where the origin splits what it sends before the tunnel (interim and head), per mille, and the gaps. */
  headCuts: number[];
  headGaps: Gap[];
  /** The origin's first tunnel bytes go in the same write as the end of the 101 head. */
  with101: boolean;
  client: Message[];
  origin: Message[];
  /** Whose write goes next while both have some left: true the client's. */
  order: boolean[];
  gaps: Gap[];
  start: Start;
  closer: Side;
  how: How;
  /** destroy-mid: after how many of its writes (modulo their count + 1) the closer destroys. */
  midAt: number;
}

type Framing = 'length' | 'chunked';

/** The backend declines the upgrade: an ordinary answer; then a probe on the same connection. */
interface Decline {
  kind: 'decline';
  status: number;
  reason: string | null;
  framing: Framing;
  framingCase: number;
  /** The origin's own Upgrade and Connection: upgrade lines (a 426 sends them always); dropped. */
  upgradeLines: boolean;
  keepAlive: boolean;
  via: string | null;
  fields: string[];
  at: number[];
  body: { length: number; seed: number };
  chunkCuts: number[];
  interim: string | null;
  writeCuts: number[];
  gaps: Gap[];
  /** The probe goes in the same write as the upgrade request, or once the answer is in. */
  probe: 'pipelined' | 'after';
}

/** A case as the run sends it, and what each side must get. */
interface Built {
  id: number;
  req: Req;
  answer: Switch | Decline;
  /** The request head as the client sends it, and the head the origin must get: before + a request id + after. */
  head: Buffer;
  upBefore: string;
  upAfter: string;
  /** What the origin sends before any tunnel byte (interim, head), and what the client must get of it. */
  originHead: Buffer;
  clientHead: Buffer;
  /** Declined: the answer's body as framed on the wire. */
  bodyWire: Buffer;
  /** Each side's tunnel writes, and all of them as one stream. */
  clientWrites: Buffer[];
  originWrites: Buffer[];
  clientStream: Buffer;
  originStream: Buffer;
  /** Set by the origin: the head it got, and how many bytes came after it before it answered. */
  arrived: string | null;
  early: number;
  /** The origin's side of the connection, once it answered; and who waits for it. */
  origin: Peer | null;
  waiters: (() => void)[];
}

/** A plain request after a declined upgrade, on the same client connection. */
interface Probe {
  id: number;
  arrived: string | null;
}

const CL_NAMES = ['Content-Length', 'content-length', 'CONTENT-LENGTH'];
const TE_NAMES = ['Transfer-Encoding', 'transfer-encoding', 'TRANSFER-ENCODING'];
// Names a generated end-to-end line must not have ('_' read as '-'): the proxy acts on them, or the test sends them itself.
const RESERVED = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'proxy-connection', 'te',
  'trailer', 'upgrade', 'expect', 'cookie', 'set-cookie', 'user-agent', 'via', 'forwarded', 'x-forwarded-for',
  'x-forwarded-proto', 'x-forwarded-host', 'proxy-authenticate', 'proxy-authorization', 'x-request-id', 'x-case', 'x-hop',
  'http2-settings', 'sec-websocket-key', 'sec-websocket-version', 'sec-websocket-accept']);

const lines = (ls: readonly string[]): string => ls.map((l) => `${l}\r\n`).join('');

// Message bytes now and then look like HTTP (a 101, a next request): see seededBytes.
const MESSAGE_SPECIALS = ['\r\n', '\r\n\r\n', '0\r\n\r\n', 'HTTP/1.1 101 Switching Protocols\r\n\r\n', 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', '\0\0', '\xff\xfe\x80']
  .map(latin1);
const makeBytes = (length: number, seed: number): Buffer => seededBytes(length, seed, MESSAGE_SPECIALS);

/** A message's writes: an empty message is one empty write. */
function writesOf(m: Message): Buffer[] {
  const bytes = makeBytes(m.length, m.seed);
  return splitAt(bytes, cutsOf(m.cuts, bytes.length));
}

/** Inserts `own` among `fields` at the `at` positions, in order. */
function place<T>(fields: T[], own: T[], at: number[]): T[] {
  const out = [...fields];
  own.forEach((l, i) => out.splice(at[i % at.length] % (out.length + 1), 0, l));
  return out;
}

/** What the client must get of a response head: src/head.ts clientHead (101: its Upgrade kept, `Connection: upgrade` added). */
function clientHeadOf(statusLine: string, ls: Line[], extra: string[]): string {
  const kept = ls.filter((l) => l.role !== 'drop');
  const lastVia = kept.findLastIndex((l) => l.role === 'via');
  let out = `${statusLine}\r\n`;
  kept.forEach((l, i) => { out += i === lastVia ? `${l.text}, ${VIA}\r\n` : `${l.text}\r\n`; });
  if (lastVia < 0) out += `Via: ${VIA}\r\n`;
  return `${out}${lines(extra)}\r\n`;
}

let nextId = 1;
/** The client's scheme (X-Forwarded-Proto): the test's setup. */
let scheme = 'http';
const cases = new Map<number, Built>();
const probes = new Map<number, Probe>();
/** Ids of runs that are over: a failing run's requests may reach the origin later, and are answered and set aside. */
const retired = new Set<number>();

function build(req: Req, answer: Switch | Decline): Built {
  const id = nextId++;
  // The request: the test's own lines among the generated ones.
  const own: Line[] = [{ text: `${req.hostName}: ${req.host}`, role: 'drop' }, { text: `X-Case: ${id}`, role: 'keep' }];
  const tokens: string[] = [];
  if (req.keepAliveToken !== null) tokens.push(req.keepAliveToken);
  if (req.hop !== null) tokens.push(req.hop);
  tokens.splice(req.tokenAt % (tokens.length + 1), 0, req.upgradeToken);
  const split = req.connSplit % tokens.length;
  for (const g of split === 0 ? [tokens] : [tokens.slice(0, split), tokens.slice(split)]) own.push({ text: `${req.connName}: ${g.join(req.connSep)}`, role: 'drop' });
  own.push({ text: `${req.upgradeName}:${req.upgradeOws[0]}${req.upgradeValue}${req.upgradeOws[1]}`, role: 'drop' });
  if (req.hop !== null) own.push({ text: `${req.hop}: hop ${id}`, role: 'drop' });
  if (req.wsKey !== null) own.push({ text: `Sec-WebSocket-Key: ${Buffer.from(req.wsKey).toString('base64')}`, role: 'keep' });
  if (req.wsVersion) own.push({ text: 'Sec-WebSocket-Version: 13', role: 'keep' });
  const all = place(req.fields.map((text): Line => ({ text, role: 'keep' })), own, req.at);
  const head = latin1(`GET ${req.target} HTTP/1.1\r\n${lines(all.map((l) => l.text))}\r\n`);
  // What the origin must get (upstreamHead, default flags, an untrusted client).
  const upBefore = `GET ${req.target} HTTP/1.1\r\nHost: ${req.host}\r\n${lines(all.filter((l) => l.role === 'keep').map((l) => l.text))}`
    + `X-Forwarded-For: ${CLIENT_ADDRESS}\r\nX-Forwarded-Proto: ${scheme}\r\nX-Forwarded-Host: ${req.host}\r\nVia: ${VIA}\r\nx-request-id: `;
  const upAfter = `\r\nConnection: upgrade\r\nUpgrade: ${req.upgradeValue}\r\n\r\n`;

  let originHead: Buffer;
  let clientHead: Buffer;
  let bodyWire: Buffer = Buffer.alloc(0);
  let clientWrites: Buffer[] = [];
  let originWrites: Buffer[] = [];
  if (answer.kind === 'switch') {
    const a = answer;
    const mine: Line[] = [{ text: `${a.upgradeName}: ${a.upgradeValue}`, role: 'keep' }];
    if (a.connToken !== null) {
      const t = [a.connToken];
      if (a.keepAliveToken) t.push('keep-alive');
      if (a.hop !== null) t.push(a.hop);
      mine.push({ text: `Connection: ${t.join(', ')}`, role: 'drop' });
      if (a.hop !== null) mine.push({ text: `${a.hop}: hop`, role: 'drop' });
    }
    if (a.keepAlive) mine.push({ text: 'Keep-Alive: timeout=5', role: 'drop' });
    if (a.proxyConnection) mine.push({ text: 'Proxy-Connection: keep-alive', role: 'drop' });
    if (a.accept) {
      const key = req.wsKey === null ? 'none' : Buffer.from(req.wsKey).toString('base64');
      mine.push({ text: `Sec-WebSocket-Accept: ${createHash('sha1').update(key + WS_GUID).digest('base64')}`, role: 'keep' });
    }
    if (a.via !== null) mine.push({ text: `Via: ${a.via}`, role: 'via' });
    const ls = place(a.fields.map((text): Line => ({ text, role: 'keep' })), mine, a.at);
    const statusLine = `HTTP/1.1 101${a.reason === null ? '' : ` ${a.reason}`}`;
    originHead = latin1(`${a.interim ?? ''}${statusLine}\r\n${lines(ls.map((l) => l.text))}\r\n`);
    clientHead = latin1(clientHeadOf(statusLine, ls, ['Connection: upgrade']));
    clientWrites = a.client.flatMap(writesOf);
    originWrites = a.origin.flatMap(writesOf);
  } else {
    const a = answer;
    const body = makeBytes(a.body.length, a.body.seed);
    bodyWire = a.framing === 'chunked' ? encodeChunked(body, { cuts: a.chunkCuts }) : body;
    const mine: Line[] = [a.framing === 'chunked'
      ? { text: `${TE_NAMES[a.framingCase]}: chunked`, role: 'drop' }
      : { text: `${CL_NAMES[a.framingCase]}: ${body.length}`, role: 'keep' }];
    if (a.upgradeLines) mine.push({ text: `Upgrade: ${req.upgradeValue}`, role: 'drop' }, { text: 'Connection: Upgrade', role: 'drop' });
    if (a.keepAlive) mine.push({ text: 'Keep-Alive: timeout=5, max=100', role: 'drop' });
    if (a.via !== null) mine.push({ text: `Via: ${a.via}`, role: 'via' });
    const ls = place(a.fields.map((text): Line => ({ text, role: 'keep' })), mine, a.at);
    const statusLine = `HTTP/1.1 ${a.status}${a.reason === null ? '' : ` ${a.reason}`}`;
    originHead = latin1(`${a.interim ?? ''}${statusLine}\r\n${lines(ls.map((l) => l.text))}\r\n`);
    clientHead = latin1(clientHeadOf(statusLine, ls, a.framing === 'chunked' ? ['Transfer-Encoding: chunked'] : []));
  }
  const b: Built = {
    id, req, answer, head, upBefore, upAfter, originHead, clientHead, bodyWire, clientWrites, originWrites,
    clientStream: Buffer.concat(clientWrites), originStream: Buffer.concat(originWrites), arrived: null, early: 0, origin: null, waiters: [],
  };
  cases.set(id, b);
  return b;
}

function newProbe(): Probe {
  const p: Probe = { id: nextId++, arrived: null };
  probes.set(p.id, p);
  return p;
}

const probeRequest = (p: Probe): Buffer => latin1(`GET /probe HTTP/1.1\r\nHost: probe.example\r\nX-Case: ${p.id}\r\n\r\n`);
const probeAnswer = (id: number): string => `HTTP/1.1 200 OK\r\nX-Case: ${id}\r\nContent-Length: ${String(id).length}\r\n`;
/** The probe's answer as the client must get it: the origin's, with Via. */
const probeWant = (p: Probe): Buffer => latin1(`${probeAnswer(p.id)}Via: ${VIA}\r\n\r\n${p.id}`);

// ---------------------------------------------------------------- generators

const TOKEN_CHARS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_'.split('');
const nameArb = fc.tuple(fc.constantFrom('X-', 'x-', ''), fc.string({ unit: fc.constantFrom(...TOKEN_CHARS), minLength: 1, maxLength: 12 }))
  .map(([p, n]) => p + n)
  .filter((n) => !RESERVED.has(n.toLowerCase().replace(/_/g, '-')));
// Request lines keep their whitespace as sent (runs of received bytes); response lines are plain.
const reqLineArb = fc.tuple(nameArb, owsArb, requestValueArb, trailingOwsArb).map(([n, o1, v, o2]) => `${n}:${o1}${v}${o2}`);
const resLineArb = fc.tuple(nameArb, responseValueArb).map(([n, v]) => (v === '' ? `${n}:` : `${n}: ${v}`));
const protocolArb = fc.constantFrom('websocket', 'WebSocket', 'h2c', 'test', 'IRC/6.9', 'RTA/x11', 'websocket, foo/2');
const reasonArb = (texts: string[]): fc.Arbitrary<string | null> => fc.option(fc.constantFrom(...texts, '', 'Any  Text ~!'), { nil: null, freq: 6 });
const interimArb = fc.oneof(
  { withCrossShrink: true },
  { weight: 6, arbitrary: fc.constant(null) },
  { weight: 1, arbitrary: fc.constantFrom('HTTP/1.1 100 Continue\r\n\r\n', 'HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n') },
);
const cutsArb = fc.array(fc.integer({ min: 1, max: 999 }), { maxLength: 3 });
const messageArb: fc.Arbitrary<Message> = fc.record({ length: lengthArb, seed: fc.integer({ min: 1, max: 0x7fffffff }), cuts: cutsArb });
const viaArb = fc.option(fc.constantFrom('1.0 fred', '1.1 edge (nginx)', 'HTTP/1.1 a, 1.1 b'), { nil: null, freq: 3 });

const reqArb: fc.Arbitrary<Req> = fc.record({
  target: fc.constantFrom('/ws', '/', '/socket.io/?EIO=4&transport=websocket', '/chat/room%201;v=2', '/a/../b?q=%00'),
  hostName: fc.constantFrom('Host', 'host', 'HOST'),
  host: fc.constantFrom('app.example', 'shop.example:8080', '127.0.0.1:9', '[::1]:81'),
  upgradeName: fc.constantFrom('Upgrade', 'upgrade', 'UPGRADE'),
  upgradeValue: protocolArb,
  upgradeOws: fc.tuple(owsArb, trailingOwsArb),
  connName: fc.constantFrom('Connection', 'connection', 'CONNECTION'),
  upgradeToken: fc.constantFrom('Upgrade', 'upgrade', 'UPGRADE', 'uPgRaDe'),
  keepAliveToken: fc.option(fc.constantFrom('keep-alive', 'Keep-Alive'), { nil: null, freq: 2 }),
  hop: fc.option(fc.constantFrom('X-Hop', 'x-hop', 'HTTP2-Settings'), { nil: null, freq: 2 }),
  tokenAt: fc.nat(3),
  connSplit: fc.nat(3),
  connSep: fc.constantFrom(', ', ',', ' , ', ',, '),
  wsKey: fc.option(fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 16, maxLength: 16 }), { nil: null, freq: 3 }),
  wsVersion: fc.boolean(),
  fields: fc.array(reqLineArb, { maxLength: 8 }),
  at: fc.array(fc.nat(20), { minLength: 1, maxLength: 6 }),
  writeCuts: cutsArb,
  gaps: gapsArb,
});

const switchArb: fc.Arbitrary<Switch> = fc.record({
  kind: fc.constant('switch' as const),
  reason: reasonArb(['Switching Protocols', 'switching protocols']),
  upgradeName: fc.constantFrom('Upgrade', 'upgrade', 'UPGRADE'),
  upgradeValue: protocolArb,
  connToken: fc.option(fc.constantFrom('Upgrade', 'upgrade', 'UPGRADE'), { nil: null, freq: 6 }),
  keepAliveToken: fc.boolean(),
  hop: fc.option(fc.constantFrom('X-Hop', 'x-hop'), { nil: null, freq: 2 }),
  keepAlive: fc.boolean(),
  proxyConnection: fc.boolean(),
  accept: fc.boolean(),
  via: viaArb,
  fields: fc.array(resLineArb, { maxLength: 6 }),
  at: fc.array(fc.nat(20), { minLength: 1, maxLength: 6 }),
  interim: interimArb,
  headCuts: cutsArb,
  headGaps: gapsArb,
  with101: fc.boolean(),
  client: fc.array(messageArb, { maxLength: 4 }),
  origin: fc.array(messageArb, { maxLength: 4 }),
  order: fc.array(fc.boolean(), { minLength: 1, maxLength: 12 }),
  gaps: gapsArb,
  start: fc.constantFrom<Start>('after-101', 'with-head', 'eager'),
  closer: fc.constantFrom<Side>('client', 'origin'),
  how: fc.oneof({ weight: 3, arbitrary: fc.constant<How>('end') }, { weight: 1, arbitrary: fc.constantFrom<How>('destroy-after', 'destroy-mid') }),
  midAt: fc.nat(16),
});

const declineArb: fc.Arbitrary<Decline> = fc.record({
  kind: fc.constant('decline' as const),
  status: fc.constantFrom(200, 400, 426),
  reason: reasonArb(['OK', 'Bad Request', 'Upgrade Required']),
  framing: fc.constantFrom<Framing>('length', 'chunked'),
  framingCase: fc.nat(2),
  upgradeLines: fc.boolean(),
  keepAlive: fc.boolean(),
  via: viaArb,
  fields: fc.array(resLineArb, { maxLength: 6 }),
  at: fc.array(fc.nat(20), { minLength: 1, maxLength: 6 }),
  body: fc.record({ length: lengthArb, seed: fc.integer({ min: 1, max: 0x7fffffff }) }),
  chunkCuts: fc.array(fc.integer({ min: 1, max: 999 }), { maxLength: 4 }),
  interim: interimArb,
  writeCuts: cutsArb,
  gaps: gapsArb,
  probe: fc.constantFrom<'pipelined' | 'after'>('pipelined', 'after'),
}).map((d) => (d.status === 426 ? { ...d, upgradeLines: true } : d));

const scenarioArb = fc.record({
  req: reqArb,
  answer: fc.oneof({ weight: 4, arbitrary: switchArb }, { weight: 1, arbitrary: declineArb }),
});

// ---------------------------------------------------------------------- peers

const sockets = new Set<Socket>();

/**
 * One end of a connection as the test sees it: every byte that arrived (kept
 * whole), whether the FIN came, whether the socket closed. Any number of waits.
 */
class Peer {
  readonly sock: Socket;
  readonly name: string;
  buf: Buffer = Buffer.alloc(0);
  /** Bytes of buf already found equal to what was expected. */
  checked = 0;
  fin = false;
  closed = false;
  error = '';
  #wakes: (() => void)[] = [];

  constructor(sock: Socket, name: string, first: Buffer | null) {
    this.sock = sock;
    this.name = name;
    sockets.add(sock);
    if (first !== null) this.buf = first;
    sock.on('end', () => {
      this.fin = true;
      this.#notify();
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      this.error ||= err.code ?? err.message;
      this.#notify();
    });
    sock.on('close', () => {
      sockets.delete(sock);
      this.closed = true;
      this.#notify();
    });
  }

  push(d: Buffer): void {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    this.#notify();
  }

  /** The FIN came, or the socket is gone. */
  get ended(): boolean {
    return this.fin || this.closed;
  }

  get state(): string {
    return `${this.name}: ${this.buf.length} bytes in${this.fin ? ', FIN' : ''}${this.closed ? ', closed' : ''}${this.error === '' ? '' : `, ${this.error}`}`;
  }

  #notify(): void {
    const w = this.#wakes;
    this.#wakes = [];
    for (const f of w) f();
  }

  /** Waits for more bytes or an end; fails past the deadline. */
  async more(deadline: number, what: string): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#wakes = this.#wakes.filter((f) => f !== wake);
        reject(new Error(`timed out waiting for ${what} (${this.state})`));
      }, Math.max(1, deadline - Date.now()));
      const wake = (): void => {
        clearTimeout(timer);
        resolve();
      };
      this.#wakes.push(wake);
    });
  }

  /** Writes unless this side is gone (a write after the peer's reset fails quietly: the close tells). */
  write(b: Buffer): void {
    if (!this.sock.destroyed && this.sock.writable) this.sock.write(b);
  }

  /**
   * The half-close. A TLS peer ends one turn later, as the proxy does
   * (src/upgrade.ts halfClose): Node's TLS end() discards records read but
   * not yet decrypted, and this may run in a microtask of the socket's own read.
   */
  end(): void {
    if ((this.sock as TLSSocket).encrypted === true) setImmediate(() => this.sock.end());
    else this.sock.end();
  }

  /**
   * The cut, after what was written is sent: a plain socket's writes are in
   * the kernel already, a TLS socket's are encrypted and handed on
   * asynchronously, and destroyed at once it would lose them.
   */
  destroy(): void {
    if ((this.sock as TLSSocket).encrypted === true && this.sock.writable) this.sock.write(Buffer.alloc(0), () => this.sock.destroy());
    else this.sock.destroy();
  }
}

/** Fails when what `p` got differs from the start of `want`, or runs past it; a head that differs says which lines. */
function check(p: Peer, want: Buffer, what: string, headLength: number): void {
  const n = Math.min(p.buf.length, want.length);
  if (n > p.checked) {
    if (!p.buf.subarray(p.checked, n).equals(want.subarray(p.checked, n))) {
      const got = p.buf.toString('latin1', 0, headLength);
      if (headLength > 0 && p.buf.length >= headLength && got !== want.toString('latin1', 0, headLength)) {
        assert.deepEqual(got.split('\r\n'), want.toString('latin1', 0, headLength).split('\r\n'), `${what}: the head the ${p.name} got`);
      }
      assert.fail(`${what}: the ${p.name} got other bytes: ${bytesDiff(p.buf, want, p.checked)}`);
    }
    p.checked = n;
  }
  if (p.buf.length > want.length) assert.fail(`${what}: the ${p.name} got ${p.buf.length - want.length} bytes too many: ${preview(p.buf.subarray(want.length))}`);
}

/** Waits until `p` got want[0, upTo), byte for byte (fails at the first that differs, and when it closes short). */
async function receive(p: Peer, want: Buffer, upTo: number, deadline: number, what: string, headLength = 0): Promise<void> {
  for (;;) {
    check(p, want, what, headLength);
    if (p.buf.length >= upTo) return;
    if (p.ended) assert.fail(`${what}: the ${p.name}'s connection closed after ${p.buf.length} of ${upTo} bytes (${p.state})`);
    await p.more(deadline, `${what}: ${upTo} bytes at the ${p.name}`);
  }
}

/** Waits until `p` got all of `want` and then its end: the FIN when `fin`, else the FIN or the close. */
async function receiveAll(p: Peer, want: Buffer, fin: boolean, deadline: number, what: string, headLength = 0): Promise<void> {
  await receive(p, want, want.length, deadline, what, headLength);
  while (!(fin ? p.fin : p.ended)) {
    if (fin && p.closed) assert.fail(`${what}: the ${p.name}'s connection closed without a FIN (${p.state})`);
    await p.more(deadline, `${what}: the ${fin ? 'FIN' : 'close'} at the ${p.name}`);
    check(p, want, what, headLength);
  }
  check(p, want, what, headLength);
}

/** Waits for the FIN or the close at `p`, whatever arrives meanwhile. */
async function closedAt(p: Peer, deadline: number, what: string): Promise<void> {
  while (!p.ended) await p.more(deadline, `${what}: the close at the ${p.name}`);
}

// -------------------------------------------------------------------- origin

const strays: string[] = [];

/** Reads request heads; answers a case's upgrade request as scripted (then the socket is the tunnel's), and probes. */
function serve(sock: Socket): void {
  readHeads(sock, async (head, rest) => {
    const m = /\r\nX-Case: (\d+)\r\n/.exec(head);
    const id = m === null ? -1 : Number(m[1]);
    const probe = probes.get(id);
    if (probe !== undefined || retired.has(id)) {
      if (probe !== undefined) probe.arrived = head;
      sock.write(`${probeAnswer(id)}\r\n${id}`);
      return true;
    }
    const b = cases.get(id);
    if (b === undefined) {
      strays.push(head.slice(0, head.indexOf('\r\n')));
      sock.destroy();
      return false;
    }
    b.arrived = head;
    b.early = rest.length;
    if (b.answer.kind === 'decline') {
      const a = b.answer;
      const wire = Buffer.concat([b.originHead, b.bodyWire]);
      await writeAll(sock, splitAt(wire, cutsOf(a.writeCuts, wire.length)), a.gaps);
      return !sock.destroyed;
    }
    // A switch: the rest of this connection is the tunnel's (no more heads are read).
    const a = b.answer;
    const t = new Peer(sock, 'origin', rest.length === 0 ? null : Buffer.from(rest));
    sock.removeAllListeners('data');
    sock.on('data', (d: Buffer) => t.push(d));
    const segments = splitAt(b.originHead, cutsOf(a.headCuts, b.originHead.length));
    if (a.with101 && b.originWrites.length > 0) segments[segments.length - 1] = Buffer.concat([segments[segments.length - 1], b.originWrites[0]]);
    await writeAll(sock, segments, a.headGaps);
    b.origin = t;
    for (const w of b.waiters.splice(0)) w();
    return false;
  });
}

/** The origin's side of a case's tunnel, once it has sent its 101. */
async function originOf(b: Built, deadline: number): Promise<Peer> {
  while (b.origin === null) {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for the upgrade request at the origin${b.arrived === null ? '' : ' to be answered'}`)),
        Math.max(1, deadline - Date.now()));
      b.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  return b.origin;
}

/** The request head the origin got for `b`, against upstreamHead's (any 32-hex-digit request id of the proxy's). */
function checkArrival(b: Built, at: string): void {
  assert.ok(b.arrived !== null, `${at}: the origin never got the upgrade request`);
  const id = /\r\nx-request-id: ([0-9a-f]{32})\r\n/.exec(b.arrived)?.[1] ?? '<none>';
  const want = b.upBefore + id + b.upAfter;
  if (b.arrived !== want) assert.deepEqual(b.arrived.split('\r\n'), want.split('\r\n'), `${at}: the request head the origin got`);
  assert.equal(b.early, 0, `${at}: bytes after the upgrade request's head reached the origin before its answer`);
}

// -------------------------------------------------------------------- client

function newClient(port: number, secure: boolean): Peer {
  const sock = secure
    // tls.connect takes net's allowHalfOpen too, though its types do not say so.
    ? tlsConnect({ port, host: '127.0.0.1', allowHalfOpen: true, rejectUnauthorized: false } as ConnectionOptions)
    : connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  const p = new Peer(sock, 'client', null);
  sock.on('data', (d: Buffer) => p.push(d));
  return p;
}

/** Sends the request head, cut at its per-mille points; `extra` goes in the same write as its last piece. */
async function sendHead(c: Peer, b: Built, extra: Buffer | null): Promise<void> {
  const pieces = splitAt(b.head, cutsOf(b.req.writeCuts, b.head.length));
  if (extra !== null) pieces[pieces.length - 1] = Buffer.concat([pieces[pieces.length - 1], extra]);
  await writeAll(c.sock, pieces, b.req.gaps);
}

async function runDecline(c: Peer, b: Built, a: Decline): Promise<void> {
  const probe = newProbe();
  const want = Buffer.concat([b.clientHead, b.bodyWire, probeWant(probe)]);
  const answerEnd = b.clientHead.length + b.bodyWire.length;
  const at = `declined upgrade (case ${b.id}, ${a.status}, probe ${a.probe})`;
  try {
    await sendHead(c, b, a.probe === 'pipelined' ? probeRequest(probe) : null);
    await receive(c, want, answerEnd, Date.now() + WAIT_MS, `${at}: the answer`, b.clientHead.length);
    if (a.probe === 'after') c.write(probeRequest(probe));
    await receive(c, want, want.length, Date.now() + WAIT_MS, `${at}: the probe's answer`, b.clientHead.length);
  } catch (err) {
    // A request that reached the origin wrong is the story: say that first.
    if (b.arrived !== null) checkArrival(b, at);
    throw err;
  }
  checkArrival(b, at);
  assert.ok(probe.arrived !== null && probe.arrived.startsWith('GET /probe HTTP/1.1\r\n'), `${at}: the probe at the origin: ${probe.arrived}`);
  assert.ok(!c.ended, `${at}: the client connection closed after the probe (${c.state})`);
  probes.delete(probe.id);
  retired.add(probe.id);
}

async function runSwitch(c: Peer, b: Built, a: Switch): Promise<void> {
  const at = `upgrade (case ${b.id}, ${a.start}, ${a.closer} ${a.how})`;
  // The client gets the 101 head, then the origin's stream; the origin (after the head) the client's.
  const clientWant = Buffer.concat([b.clientHead, b.originStream]);
  const originWant = b.clientStream;
  const headLength = b.clientHead.length;
  const cw = [...b.clientWrites];
  const first = a.start === 'with-head' && cw.length > 0 ? cw.shift()! : null;
  await sendHead(c, b, first);
  const see101 = async (): Promise<void> => {
    try {
      await receive(c, clientWant, headLength, Date.now() + WAIT_MS, `${at}: the 101`, headLength);
    } catch (err) {
      if (b.arrived !== null) checkArrival(b, at);
      throw err;
    }
  };
  if (a.start !== 'eager') await see101();
  // An eager client writes on without waiting for the origin's answer; the origin's writes wait for it.
  let originPeer: Peer | null = null;
  const originSide = async (): Promise<Peer> => {
    if (originPeer === null) {
      originPeer = await originOf(b, Date.now() + WAIT_MS);
      checkArrival(b, at);
    }
    return originPeer;
  };
  if (a.start !== 'eager') await originSide();
  const ow = a.with101 ? b.originWrites.slice(1) : b.originWrites; // less what the origin sent with its 101
  const peer = async (side: Side): Promise<Peer> => (side === 'client' ? c : originSide());
  const writes = (side: Side): Buffer[] => (side === 'client' ? cw : ow);
  // The closer's action comes after its last write (end), or after midAt of them (destroy-mid).
  const inLoop = a.how === 'destroy-mid' || a.how === 'end';
  const closeAfter = a.how === 'destroy-mid' ? a.midAt % (writes(a.closer).length + 1) : writes(a.closer).length;
  let closed = false;
  const closeNow = async (): Promise<void> => {
    closed = true;
    // A client closes once its request reached the origin (an eager one, maybe before the 101 reached it).
    if (a.closer === 'client') await originSide();
    const x = await peer(a.closer);
    if (a.how === 'end') x.end();
    else x.destroy();
  };
  const done = { client: 0, origin: 0 };
  if (inLoop && closeAfter === 0) await closeNow();
  for (let k = 0; done.client < cw.length || done.origin < ow.length; k++) {
    const side: Side = done.client < cw.length && (done.origin >= ow.length || a.order[k % a.order.length]) ? 'client' : 'origin';
    if (k > 0) {
      const wait = gap(a.gaps[(k - 1) % a.gaps.length]);
      if (wait !== null) await wait;
    }
    // A side that destroyed its socket writes no more.
    if (!(closed && side === a.closer)) (await peer(side)).write(writes(side)[done[side]]);
    done[side]++;
    if (inLoop && !closed && side === a.closer && done[side] === closeAfter) await closeNow();
  }
  const origin = await originSide();
  const X = a.closer === 'client' ? c : origin;
  const Y = a.closer === 'client' ? origin : c;

  if (a.how === 'destroy-mid') {
    // Something of each stream may be lost: what arrived is a prefix, and the other side sees the close.
    await closedAt(Y, Date.now() + WAIT_MS, at);
    check(Y, a.closer === 'client' ? originWant : clientWant, at, Y === c ? headLength : 0);
    check(X, a.closer === 'client' ? clientWant : originWant, at, X === c ? headLength : 0);
    return;
  }
  if (a.how === 'destroy-after') {
    await receive(origin, originWant, originWant.length, Date.now() + WAIT_MS, `${at}: the client's stream`);
    await receive(c, clientWant, clientWant.length, Date.now() + WAIT_MS, `${at}: the origin's stream`, headLength);
    X.destroy();
    await closedAt(Y, Date.now() + WAIT_MS, `${at}: after the ${a.closer} destroyed its socket`);
    return;
  }
  // A half-close: the other side gets all that was sent before it, then the FIN; then it ends too.
  await receiveAll(Y, a.closer === 'client' ? originWant : clientWant, true, Date.now() + WAIT_MS, `${at}: the ${a.closer}'s stream and its FIN`, Y === c ? headLength : 0);
  Y.end();
  await receiveAll(X, a.closer === 'client' ? clientWant : originWant, true, Date.now() + WAIT_MS, `${at}: the ${a.closer === 'client' ? 'origin' : 'client'}'s stream and its FIN`, X === c ? headLength : 0);
}

// ---------------------------------------------------------------------- test

const twins = twinSetups(serve, { allowHalfOpen: true }, [], () => sockets);

async function property(setup: Setup, numRuns: number): Promise<void> {
  const proxy = setup.proxy;
  scheme = setup.secure ? 'https' : 'http';
  await fc.assert(fc.asyncProperty(scenarioArb, async ({ req, answer }) => {
    await proxy.ready();
    const b = build(req, answer);
    const c = newClient(proxy.port, setup.secure);
    try {
      if (answer.kind === 'decline') await runDecline(c, b, answer);
      else await runSwitch(c, b, answer);
    } catch (err) {
      throw await proxy.explain(err);
    } finally {
      c.sock.destroy();
      b.origin?.sock.destroy();
      cases.delete(b.id);
      retired.add(b.id);
    }
  }), {
    numRuns,
    // A failure that shows as a timeout (bytes or a close lost) costs WAIT_MS per shrinking step: stop shrinking in time to report it.
    interruptAfterTimeLimit: 70_000,
    markInterruptAsFailure: true,
  });
  assert.deepEqual(strays, [], 'requests the origin did not expect');
  assert.deepEqual(proxy.crashes, [], 'the proxy exited');
}

test('upgrades end to end: the request and the 101 byte for byte, a tunnel both ways, closes, declined upgrades', { timeout: 110_000 }, async () => {
  await property(twins.plain, NUM_RUNS);
});

test('the same through TLS on both sides (wss:// to an https:// origin)', { timeout: 110_000 }, async () => {
  await property(twins.secure, TLS_RUNS);
});
