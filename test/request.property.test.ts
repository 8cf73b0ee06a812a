// Property test of the request path, end to end through real loopback
// sockets: whatever a valid client request is (method, request-target bytes,
// end-to-end and hop-by-hop header lines, body framing and bytes, how the
// client splits its writes, pipelining, HTTP/1.0), the origin receives
// exactly the request the proxy should send, byte for byte:
// - the request line: the method and the target as sent (no normalisation of
//   %-escapes, dot segments or queries; an absolute-form target's path), HTTP/1.1;
// - Host first (the client's value, the absolute-form authority, or the
//   backend's host:port when the client sent none or an empty one);
// - the end-to-end lines in the client's order, name case, whitespace and
//   value bytes as received, the last Via with ", 1.1 sticky-proxy" appended;
// - none of the hop-by-hop lines (Connection and the names it lists,
//   Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade, Proxy-Authorization
//   and -Authenticate), nor the client's X-Forwarded-* lines, Expect, its
//   request-id lines, or the '_' names a CGI app would read as one of those;
// - then the proxy's own lines as src/head.ts upstreamHead writes them with
//   the default flags: X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host,
//   Via (when no client Via is kept), x-request-id (the client's first one
//   when sane, else the proxy's 32 hex digits), Transfer-Encoding: chunked
//   for a chunked body; and no Connection line;
// - the body: a Content-Length body byte for byte; a chunked body passed on
//   with its framing unchanged (sizes, extensions, trailers: forward.ts sends
//   the received bytes while its ChunkedReader only finds the end).
// Requests on one client connection go sequentially or pipelined (written
// together before any answer is read); the origin must get them one at a
// time (none before the answer to the one before is written), in order, and
// the client the answers in order, each kept-alive connection ending with a
// probe that must arrive intact too.
//
// The origin is a raw net server that records the exact bytes of each request
// (head and body, delimited by its own reading of the framing) and answers
// with a small fixed response echoing the case id (X-Case, which each request
// carries among its lines); body bytes that already differ from the case's
// end the request at once, so that a lost byte mid-body fails without waiting
// for the deadline. Bodies are generated from (length, seed), so that a
// counterexample prints short.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import type { Socket } from 'node:net';
import fc from 'fast-check';
import { DEFAULT_SESSION_COOKIES } from '../src/config.ts';
import { bytesDiff, Conn, cutsOf, encodeChunked, type Gap, gapsArb, latin1, lengthArb, owsArb, preview, type Setup, twinSetups, requestValueArb, seededBytes, splitAt, trailingOwsArb, writeAll } from './helpers/wire.ts';

const NUM_RUNS = 600;
/** Runs through TLS on both sides (a client to --tls-cert, the proxy to an https:// origin): the other read and write paths. */
const TLS_RUNS = 150;
/** The most one request-answer exchange may take before the property fails. */
const ANSWER_MS = 2000;
/** The client's address as the proxy sees it (X-Forwarded-For). */
const CLIENT_ADDRESS = '127.0.0.1';
/** --request-id-header's default: the name the proxy writes its line with. */
const REQUEST_ID_LINE = 'x-request-id: ';
const CONTINUE = 'HTTP/1.1 100 Continue\r\n\r\n';

// ------------------------------------------------------------------ the case

/** keep: end-to-end, passed as received; via: kept, the last kept one appended to; rid: a request-id line; drop: hop-by-hop or replaced. */
type Role = 'keep' | 'via' | 'rid' | 'drop';

/** One header line: `${name}:${ows1}${value}${ows2}`. */
interface Field {
  role: Role;
  name: string;
  ows1: string;
  value: string;
  ows2: string;
}

type Target =
  | { form: 'origin'; path: string }
  | { form: 'absolute'; scheme: string; authority: string; rest: string }
  /** OPTIONS * (the request's method is OPTIONS whatever `method` says). */
  | { form: 'asterisk' };

type BodyKind = 'none' | 'length' | 'chunked';

interface Body {
  /** 'chunked' on an HTTP/1.0 request is sent with Content-Length instead (RFC 9112 section 6.1); 'none' for a bodiless method unless `anyway`. */
  kind: BodyKind;
  anyway: boolean;
  length: number;
  seed: number;
  /** Which spelling of Content-Length / Transfer-Encoding, and the whitespace before its value. */
  framingName: number;
  framingOws: string;
  /** Leading zeros of the Content-Length value, or of each chunk size. */
  zeros: number;
  /** Chunk boundaries, per mille of the body. */
  chunkCuts: number[];
  chunkExts: string[];
  upperHex: boolean;
  trailers: string[];
}

/** One client request as generated. */
interface Req {
  minor: 0 | 1;
  method: string;
  target: Target;
  /** Required on HTTP/1.1; null: none (HTTP/1.0 only). */
  host: Field | null;
  /** End-to-end, Via, request-id and hop-by-hop lines, in order. */
  fields: Field[];
  /** Names listed in Connection besides keep-alive / close (X-Hop and x-other-hop lines are then sent too). */
  connNames: string[];
  /** Where the persistence token goes among them, and where a second Connection line starts. */
  connSplit: number;
  connSep: string;
  /** HTTP/1.1: also say keep-alive when persisting; HTTP/1.0: also say close when not. */
  extraToken: boolean;
  /** HTTP/1.0, not persisting: say both keep-alive and close (close wins: RFC 9112 section 9.3). */
  bothTokens: boolean;
  tokenCase: number;
  hopCase: number;
  expect: string | null;
  body: Body;
  /** Where the test's own lines (Host, framing, X-Case, Connection, listed hops, Expect) go among the fields. */
  at: number[];
  /** Empty lines before the request line (RFC 9112 section 2.2). */
  leadingCrlf: number;
  /** Sequential mode: where the client splits this request's writes, per mille; headCut: also this many bytes from the head's end. */
  writeCuts: number[];
  headCut: number | null;
  gaps: Gap[];
}

/** A request as the client sends it, and what the origin and the client must see. */
interface Built {
  id: number;
  req: Req;
  method: string;
  persist: boolean;
  wire: Buffer;
  /** Offset of the head's end in `wire`. */
  headEnd: number;
  /** The head the origin must get: before + request id + after; id null: the proxy's own (32 hex digits). */
  before: string;
  after: string;
  requestId: string | null;
  /** The body as it must reach the origin (chunked: with its framing). */
  bodyWire: Buffer;
  /** The client may get a 100 Continue before the answer (never on HTTP/1.0). */
  expectContinue: boolean;
  /** The answer the client must get. */
  answer: Buffer;
}

const CL_NAMES = ['Content-Length', 'content-length', 'CONTENT-LENGTH', 'Content-length'];
const TE_NAMES = ['Transfer-Encoding', 'transfer-encoding', 'TRANSFER-ENCODING', 'Transfer-encoding'];
// Names a generated end-to-end line (or trailer) must not have ('_' read as '-'): the proxy acts on them, or the test uses them.
const RESERVED = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'proxy-connection', 'te',
  'trailer', 'upgrade', 'expect', 'cookie', 'user-agent', 'via', 'forwarded', 'x-forwarded-for', 'x-forwarded-proto',
  'x-forwarded-host', 'proxy-authenticate', 'proxy-authorization', 'x-request-id', 'x-case', 'x-hop', 'x-other-hop', 'x-never-sent']);
// Connection cannot remove Host or the body framing (test/http.test.ts): these names stay when listed.
const PROTECTED = new Set(['host', 'content-length', 'transfer-encoding']);
const SESSION_NAMES = new Set(DEFAULT_SESSION_COOKIES.map((n) => n.toLowerCase()));
const BODYLESS = new Set(['GET', 'HEAD', 'DELETE', 'OPTIONS']);

// Body bytes now and then look like HTTP framing (and a next request): see seededBytes.
const BODY_SPECIALS = ['\r\n', '\r\n\r\n', '0\r\n\r\n', 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', '\0\0', '\xff\xfe\x80'].map(latin1);

function mixCase(s: string, how: number): string {
  return how % 3 === 1 ? s.toLowerCase() : how % 3 === 2 ? s.toUpperCase() : s;
}

const fieldLine = (f: Field): string => `${f.name}:${f.ows1}${f.value}${f.ows2}`;

let nextId = 1;
const cases = new Map<number, Built>();
/**
 * Cases of runs that are over. A failing run's requests may still reach the
 * origin after its client connection is gone (bytes already in the proxy's
 * hands): they are answered and set aside, not taken for the next run's.
 */
const retired = new Set<number>();
/** The origin's "host:port", which the proxy sends as Host when the client gave none, and the client's scheme: the test's setup. */
let backendHost = '';
let scheme = 'http';

function build(req: Req, persist: boolean): Built {
  const id = nextId++;
  const asterisk = req.target.form === 'asterisk';
  const method = asterisk ? 'OPTIONS' : req.method;
  const targetText = req.target.form === 'origin' ? req.target.path
    : req.target.form === 'absolute' ? `${req.target.scheme}${req.target.authority}${req.target.rest}` : '*';
  const upstreamTarget = req.target.form === 'absolute'
    ? (req.target.rest.startsWith('/') ? req.target.rest : `/${req.target.rest}`)
    : targetText;

  let kind: BodyKind = req.body.kind;
  if (BODYLESS.has(method) && !req.body.anyway) kind = 'none';
  if (kind === 'chunked' && req.minor === 0) kind = 'length';
  const content = kind === 'none' ? Buffer.alloc(0) : seededBytes(req.body.length, req.body.seed, BODY_SPECIALS);
  const { chunkCuts, chunkExts, upperHex, zeros, trailers } = req.body;
  const bodyWire = kind === 'chunked' ? encodeChunked(content, { cuts: chunkCuts, exts: chunkExts, upperHex, zeros, trailers }) : content;

  // The test's own lines, inserted among the generated ones.
  const own: Field[] = [];
  if (req.host !== null) own.push(req.host);
  if (kind === 'length') {
    own.push({ role: 'keep', name: CL_NAMES[req.body.framingName], ows1: req.body.framingOws, value: '0'.repeat(req.body.zeros) + content.length, ows2: '' });
  } else if (kind === 'chunked') {
    own.push({ role: 'drop', name: TE_NAMES[req.body.framingName], ows1: req.body.framingOws, value: 'chunked', ows2: '' });
  }
  own.push({ role: 'keep', name: 'X-Case', ows1: ' ', value: String(id), ows2: '' });
  // Connection: the persistence tokens, and the names it lists.
  const keepToken = mixCase('keep-alive', req.tokenCase);
  const closeToken = mixCase('close', req.tokenCase + 1);
  const persistTokens: string[] = [];
  if (req.minor === 1) {
    if (!persist) persistTokens.push(closeToken);
    else if (req.extraToken) persistTokens.push(keepToken);
  } else if (persist) {
    persistTokens.push(keepToken);
  } else {
    if (req.extraToken) persistTokens.push(closeToken);
    if (req.bothTokens) persistTokens.push(keepToken, closeToken);
  }
  const tokens = [...req.connNames];
  tokens.splice(req.connSplit % (tokens.length + 1), 0, ...persistTokens);
  if (tokens.length > 0) {
    const split = req.connSplit % tokens.length;
    const groups = split === 0 ? [tokens] : [tokens.slice(0, split), tokens.slice(split)];
    for (const g of groups) own.push({ role: 'drop', name: mixCase('Connection', req.tokenCase), ows1: ' ', value: g.join(req.connSep), ows2: '' });
  }
  for (const n of req.connNames) {
    if (n.toLowerCase() === 'x-hop' || n.toLowerCase() === 'x-other-hop') own.push({ role: 'drop', name: mixCase(n, req.hopCase), ows1: ' ', value: `hop ${id}`, ows2: '' });
  }
  // HTTP/1.0 too: its expectation is ignored (RFC 9110 section 10.1.1), and the line dropped all the same.
  if (req.expect !== null) own.push({ role: 'drop', name: mixCase('Expect', req.hopCase), ows1: ' ', value: req.expect!, ows2: '' });

  const lines = [...req.fields];
  own.forEach((f, i) => lines.splice(req.at[i % req.at.length] % (lines.length + 1), 0, f));
  const head = `${method} ${targetText} HTTP/1.${req.minor}\r\n${lines.map((f) => `${fieldLine(f)}\r\n`).join('')}\r\n`;
  const wire = Buffer.concat([latin1('\r\n'.repeat(req.leadingCrlf)), latin1(head), bodyWire]);

  // What the origin must get (src/head.ts upstreamHead, default flags, an untrusted client).
  const listed = new Set(req.connNames.map((n) => n.toLowerCase()).filter((n) => !PROTECTED.has(n)));
  const hostValue = req.target.form === 'absolute' ? req.target.authority : req.host !== null ? req.host.value : '';
  const kept = lines.filter((f) => f !== req.host && (f.role === 'keep' || f.role === 'via') && !listed.has(f.name.toLowerCase()));
  const lastVia = kept.findLastIndex((f) => f.role === 'via');
  const firstRid = lines.find((f) => f.role === 'rid');
  const clientId = firstRid !== undefined && /^[\x21-\x7e]{1,200}$/.test(firstRid.value) ? firstRid.value : null;
  let before = `${method} ${upstreamTarget} HTTP/1.1\r\nHost: ${hostValue === '' ? backendHost : hostValue}\r\n`;
  kept.forEach((f, i) => { before += i === lastVia ? `${f.name}:${f.ows1}${f.value}, 1.1 sticky-proxy\r\n` : `${fieldLine(f)}\r\n`; });
  before += `X-Forwarded-For: ${CLIENT_ADDRESS}\r\nX-Forwarded-Proto: ${scheme}\r\n`;
  if (hostValue !== '') before += `X-Forwarded-Host: ${hostValue}\r\n`;
  if (lastVia < 0) before += 'Via: 1.1 sticky-proxy\r\n';
  before += REQUEST_ID_LINE;
  const after = `\r\n${kind === 'chunked' ? 'Transfer-Encoding: chunked\r\n' : ''}\r\n`;

  // The origin answers with X-Case and the id as its body; the proxy adds Via and says how the connection goes on.
  const idText = String(id);
  const connection = !persist ? 'Connection: close\r\n' : req.minor === 0 ? 'Connection: keep-alive\r\n' : '';
  const answer = latin1(`HTTP/1.1 200 OK\r\nX-Case: ${id}\r\nContent-Length: ${idText.length}\r\nVia: 1.1 sticky-proxy\r\n${connection}\r\n${method === 'HEAD' ? '' : idText}`);

  const b: Built = {
    id, req, method, persist, wire, headEnd: req.leadingCrlf * 2 + head.length, before, after, requestId: clientId, bodyWire,
    expectContinue: req.expect !== null && req.minor === 1 && bodyWire.length > 0, answer,
  };
  cases.set(id, b);
  return b;
}

/** A plain request sent after the last one on a connection that stays open: nothing of the last may leak into it. */
const PROBE: Req = {
  minor: 1, method: 'GET', target: { form: 'origin', path: '/probe' },
  host: { role: 'drop', name: 'Host', ows1: ' ', value: 'probe.example', ows2: '' },
  fields: [{ role: 'keep', name: 'X-Probe', ows1: ' ', value: 'yes', ows2: '' }],
  connNames: [], connSplit: 0, connSep: ', ', extraToken: false, bothTokens: false, tokenCase: 0, hopCase: 0, expect: null,
  body: { kind: 'none', anyway: false, length: 0, seed: 1, framingName: 0, framingOws: ' ', zeros: 0, chunkCuts: [], chunkExts: [], upperHex: false, trailers: [] },
  at: [0], leadingCrlf: 0, writeCuts: [], headCut: null, gaps: ['same'],
};

// ---------------------------------------------------------------- generators

const TCHARS = "!#$%&'*+-.^_`|~".split('');
const ALNUM = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'.split('');
const nameArb = fc.tuple(
  fc.constantFrom('X-', 'x-', ''),
  fc.string({ unit: fc.oneof({ weight: 12, arbitrary: fc.constantFrom(...ALNUM, '-', '_') }, { weight: 1, arbitrary: fc.constantFrom(...TCHARS) }), minLength: 1, maxLength: 12 }),
).map(([p, n]) => p + n).filter((n) => !RESERVED.has(n.toLowerCase().replace(/_/g, '-')));

const fieldOf = (role: Role, names: fc.Arbitrary<string>, values: fc.Arbitrary<string>): fc.Arbitrary<Field> =>
  fc.record({ role: fc.constant(role), name: names, ows1: owsArb, value: values, ows2: trailingOwsArb });

const cookiePairArb = fc.tuple(
  fc.string({ unit: fc.constantFrom(...'abcdefxyz_-'.split('')), minLength: 1, maxLength: 8 }).filter((n) => !SESSION_NAMES.has(n.toLowerCase())),
  fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789%-_.'.split('')), maxLength: 12 }),
).map(([n, v]) => `${n}=${v}`);
const saneIdArb = fc.string({ unit: fc.integer({ min: 0x21, max: 0x7e }).map((c) => String.fromCharCode(c)), minLength: 1, maxLength: 40 });
const ridValueArb = fc.oneof(
  { weight: 3, arbitrary: saneIdArb },
  { weight: 1, arbitrary: fc.constant('r'.repeat(200)) },
  // Not kept: a space or obs-text in it, empty, or over 200 characters.
  { weight: 2, arbitrary: fc.constantFrom('two words', 'caf\xe9', '', 'r'.repeat(201)) },
);
// Always dropped: hop-by-hop, the forwarding headers the proxy writes itself, and '_' spellings of guarded names.
const HOPS: [string, string][] = [
  ['Keep-Alive', 'timeout=5, max=100'], ['Proxy-Connection', 'keep-alive'], ['TE', 'trailers'], ['te', 'trailers, deflate;q=0.5'],
  ['Trailer', 'X-Sum'], ['Upgrade', 'h2c'], ['Upgrade', 'websocket'], ['Proxy-Authorization', 'Basic eA=='],
  ['Proxy-Authenticate', 'Basic realm="x"'], ['X-Forwarded-For', '203.0.113.9'], ['x-forwarded-for', '10.0.0.1, 10.0.0.2'],
  ['X-Forwarded-Proto', 'https'], ['X-Forwarded-Host', 'evil.example'], ['X_Forwarded_For', '6.6.6.6'], ['X_Forwarded_Proto', 'https'],
  ['X_Forwarded_Host', 'evil.example'], ['Transfer_Encoding', 'chunked'], ['Content_Length', '9'], ['Keep_Alive', '1'],
  ['Proxy_Connection', 'keep-alive'], ['Proxy_Authorization', 'Basic eA=='],
];
const fieldArb: fc.Arbitrary<Field> = fc.oneof(
  { weight: 10, arbitrary: fieldOf('keep', nameArb, requestValueArb) },
  { weight: 1, arbitrary: fieldOf('keep', fc.constantFrom('Cookie', 'cookie'), fc.array(cookiePairArb, { minLength: 1, maxLength: 3 }).map((p) => p.join('; '))) },
  { weight: 1, arbitrary: fieldOf('keep', fc.constantFrom('User-Agent', 'user-agent', 'User_Agent'), fc.constantFrom('curl/8.5.0', 'Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101', 'x')) },
  { weight: 1, arbitrary: fieldOf('keep', fc.constantFrom('Forwarded', 'forwarded'), fc.constantFrom('for=192.0.2.60;proto=https;by=203.0.113.43', 'for="[2001:db8::1]"')) },
  { weight: 2, arbitrary: fieldOf('via', fc.constantFrom('Via', 'via', 'VIA'), fc.constantFrom('1.0 fred', '1.1 p.example (Apache/1.1)', 'HTTP/1.1 edge, 1.1 mid')) },
  { weight: 2, arbitrary: fieldOf('rid', fc.constantFrom('X-Request-Id', 'x-request-id', 'X-REQUEST-ID', 'X_Request_Id'), ridValueArb) },
  {
    weight: 4,
    arbitrary: fc.tuple(fc.constantFrom(...HOPS), fc.nat(2), owsArb, trailingOwsArb)
      .map(([[name, value], how, ows1, ows2]): Field => ({ role: 'drop', name: mixCase(name, how), ows1, value, ows2 })),
  },
);

// Request-target characters of RFC 3986: unreserved, sub-delims, ':' and '@', and %-escapes of any byte.
const PCHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@".split('');
const pctArb = fc.tuple(fc.integer({ min: 0, max: 255 }), fc.boolean())
  .map(([b, up]) => `%${up ? b.toString(16).padStart(2, '0').toUpperCase() : b.toString(16).padStart(2, '0')}`);
const segmentArb = fc.oneof(
  { weight: 6, arbitrary: fc.string({ unit: fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...PCHARS) }, { weight: 1, arbitrary: pctArb }), maxLength: 10 }) },
  { weight: 2, arbitrary: fc.constantFrom('..', '.', '', '%2e%2e', '%2E.', '%2F', '%00', '%25', ';v=1') },
);
const queryArb = fc.option(
  fc.string({ unit: fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...PCHARS, '/', '?') }, { weight: 1, arbitrary: pctArb }), maxLength: 20 }).map((q) => `?${q}`),
  { nil: null, freq: 2 },
);
const pathArb = fc.tuple(fc.array(segmentArb, { maxLength: 5 }), queryArb).map(([s, q]) => `/${s.join('/')}${q ?? ''}`);
const targetArb: fc.Arbitrary<Target> = fc.oneof(
  { weight: 12, arbitrary: pathArb.map((path): Target => ({ form: 'origin', path })) },
  {
    weight: 2,
    arbitrary: fc.record({
      form: fc.constant('absolute' as const),
      scheme: fc.constantFrom('http://', 'HTTP://', 'https://', 'Http://'),
      authority: fc.constantFrom('shop.example:81', 'a.example', 'A.EXAMPLE', '127.0.0.1:8080', '[::1]:81'),
      rest: fc.oneof({ weight: 3, arbitrary: pathArb }, { weight: 1, arbitrary: fc.constantFrom('', '?', '?q=1') }),
    }),
  },
  { weight: 1, arbitrary: fc.constant<Target>({ form: 'asterisk' }) },
);
const hostArb = fieldOf('drop', fc.constantFrom('Host', 'host', 'HOST'),
  fc.oneof({ weight: 8, arbitrary: fc.constantFrom('app.example', 'shop.example:8080', 'EXAMPLE.org', '127.0.0.1:9', '[::1]:81', 'xn--bcher-kva.example') }, { weight: 1, arbitrary: fc.constant('') }));
const trailerArb = fc.tuple(nameArb, owsArb, requestValueArb).map(([n, o, v]) => `${n}:${o}${v}`);
const bodyArb: fc.Arbitrary<Body> = fc.record({
  kind: fc.oneof({ weight: 2, arbitrary: fc.constant<BodyKind>('none') }, { weight: 4, arbitrary: fc.constant<BodyKind>('length') }, { weight: 3, arbitrary: fc.constant<BodyKind>('chunked') }),
  anyway: fc.oneof({ weight: 6, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  length: lengthArb,
  seed: fc.integer({ min: 1, max: 0x7fffffff }),
  framingName: fc.nat(3),
  framingOws: fc.constantFrom(' ', ''),
  zeros: fc.oneof({ weight: 6, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 3 }) }),
  chunkCuts: fc.array(fc.integer({ min: 1, max: 999 }), { maxLength: 6 }),
  chunkExts: fc.array(fc.constantFrom('', ';a=b', ';ext', ';q="x y"', ';A=1;b', ';e="a\\"b"'), { maxLength: 3 }),
  upperHex: fc.boolean(),
  trailers: fc.oneof({ weight: 3, arbitrary: fc.constant<string[]>([]) }, { weight: 1, arbitrary: fc.array(trailerArb, { minLength: 1, maxLength: 3 }) }),
});

const reqArb: fc.Arbitrary<Req> = fc.record({
  minor: fc.oneof({ weight: 4, arbitrary: fc.constant<0 | 1>(1) }, { weight: 1, arbitrary: fc.constant<0 | 1>(0) }),
  method: fc.oneof(
    { weight: 4, arbitrary: fc.constant('GET') },
    { weight: 1, arbitrary: fc.constant('HEAD') },
    { weight: 4, arbitrary: fc.constantFrom('POST', 'PUT', 'PATCH') },
    { weight: 1, arbitrary: fc.constantFrom('DELETE', 'OPTIONS', 'PROPFIND', 'M-SEARCH', 'QUERY', 'REPORT', 'MKCOL', 'PURGE', 'SEARCH', 'UNLOCK') },
  ),
  target: targetArb,
  host: fc.option(hostArb, { nil: null, freq: 4 }),
  fields: fc.array(fieldArb, { maxLength: 12 }),
  connNames: fc.oneof(
    { weight: 2, arbitrary: fc.constant<string[]>([]) },
    { weight: 1, arbitrary: fc.uniqueArray(fc.constantFrom<string>('X-Hop', 'x-other-hop', 'Host', 'Content-Length', 'Transfer-Encoding', 'Via', 'User-Agent', 'Forwarded', 'X-Never-Sent'), { minLength: 1, maxLength: 4 }) },
  ),
  connSplit: fc.nat(5),
  connSep: fc.constantFrom(', ', ',', ' , ', ',, '),
  extraToken: fc.boolean(),
  bothTokens: fc.boolean(),
  tokenCase: fc.nat(2),
  hopCase: fc.nat(2),
  expect: fc.oneof({ weight: 4, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.constantFrom('100-continue', '100-Continue') }),
  body: bodyArb,
  at: fc.array(fc.nat(20), { minLength: 1, maxLength: 6 }),
  leadingCrlf: fc.oneof({ weight: 12, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 2 }) }),
  writeCuts: fc.array(fc.integer({ min: 1, max: 999 }), { maxLength: 3 }),
  // Right at the head's end (a body that comes later: 100 Continue when Expect asks), or a few bytes either side.
  headCut: fc.oneof({ weight: 3, arbitrary: fc.constant(null) }, { weight: 2, arbitrary: fc.constant(0) }, { weight: 2, arbitrary: fc.integer({ min: -3, max: 6 }) }),
  gaps: gapsArb,
}).map((r) => (r.minor === 1 && r.host === null ? { ...r, host: PROBE.host } : r));

const scenarioArb = fc.record({
  /** Written together before any answer is read, or one exchange at a time. */
  pipelined: fc.boolean(),
  requests: fc.array(reqArb, { minLength: 1, maxLength: 3 }),
  /** The last request keeps the connection open (then the probe follows); the others always do. */
  lastPersists: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
  /** Pipelined: where the client splits the whole stream, per mille. */
  streamCuts: fc.array(fc.integer({ min: 1, max: 999 }), { maxLength: 3 }),
  streamGaps: gapsArb,
});

// -------------------------------------------------------------------- origin

interface Arrival {
  /** The X-Case value; null when absent. */
  id: number | null;
  head: Buffer;
  body: Buffer;
  /** Which origin connection brought it. */
  conn: number;
}

/** Every request the origin read, in order (cleared by each run). */
const arrivals: Arrival[] = [];
const strays: string[] = [];
/** Cases the origin read and has not answered yet; and requests that arrived meanwhile (the proxy must send one at a time). */
const unanswered: number[] = [];
const overlaps: string[] = [];
let originConns = 0;

/** Where a chunked body starting at buf[p] ends: -1 when more bytes are needed, -2 when its framing is broken. */
function chunkedEnd(buf: Buffer, p: number): number {
  for (;;) {
    const eol = buf.indexOf('\r\n', p);
    if (eol < 0) return -1;
    const m = /^([0-9a-fA-F]+)(;.*)?$/s.exec(buf.toString('latin1', p, eol));
    if (m === null) return -2;
    const size = parseInt(m[1], 16);
    p = eol + 2;
    if (size === 0) {
      for (;;) {
        const te = buf.indexOf('\r\n', p);
        if (te < 0) return -1;
        if (te === p) return p + 2; // the empty line after the trailers
        p = te + 2;
      }
    }
    if (buf.length < p + size + 2) return -1;
    if (buf[p + size] !== 13 || buf[p + size + 1] !== 10) return -2;
    p += size + 2;
  }
}

/** Reads each request's head and body (framed as its head says) and answers it. */
function serve(sock: Socket): void {
  const conn = ++originConns;
  let pending: Buffer = Buffer.alloc(0);
  sock.on('data', (d: Buffer) => {
    pending = pending.length === 0 ? d : Buffer.concat([pending, d]);
    for (;;) {
      const end = pending.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = pending.subarray(0, end + 4);
      const lines = head.toString('latin1', 0, end).split('\r\n');
      const requestLine = lines.shift()!;
      let length = 0;
      let chunked = false;
      let id: number | null = null;
      let broken = '';
      for (const line of lines) {
        const colon = line.indexOf(':');
        const name = line.slice(0, colon).toLowerCase();
        const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
        if (colon <= 0) broken = `a header line without a name: ${JSON.stringify(line)}`;
        else if (name === 'content-length') {
          if (!/^\d+$/.test(value)) broken = `Content-Length ${JSON.stringify(value)}`;
          length = Number(value);
        } else if (name === 'transfer-encoding') chunked = true;
        else if (name === 'x-case' && /^\d+$/.test(value)) id = Number(value);
      }
      let bodyEnd = end + 4 + length;
      if (chunked) {
        bodyEnd = chunkedEnd(pending, end + 4);
        if (bodyEnd === -2) broken = 'broken chunked framing';
      }
      const b = id === null ? undefined : cases.get(id);
      if (b !== undefined) {
        // Body bytes that already differ from the case's end the request here (answered, and this connection closed),
        // so that a lost or changed byte fails at once, not at the deadline.
        const got = pending.subarray(end + 4, bodyEnd >= 0 ? Math.min(bodyEnd, pending.length) : pending.length);
        if (!got.equals(b.bodyWire.subarray(0, got.length))) {
          arrivals.push({ id: b.id, head: Buffer.from(head), body: Buffer.from(got), conn });
          sock.removeAllListeners('data');
          sock.end(`HTTP/1.1 200 OK\r\nX-Case: ${b.id}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
          return;
        }
      }
      if (broken === '' && (bodyEnd < 0 || pending.length < bodyEnd)) return;
      if (broken === '' && id !== null && retired.has(id)) {
        pending = pending.subarray(bodyEnd);
        sock.write(`HTTP/1.1 200 OK\r\nX-Case: ${id}\r\nContent-Length: 0\r\n\r\n`);
        continue;
      }
      if (broken !== '' || b === undefined) {
        strays.push(`${JSON.stringify(requestLine)} (X-Case ${id}${broken === '' ? '' : `, ${broken}`}): ${preview(pending)}`);
        sock.destroy();
        return;
      }
      if (unanswered.length > 0) overlaps.push(`case ${b.id} arrived while case ${unanswered.join(', ')} was not answered yet`);
      arrivals.push({ id: b.id, head: Buffer.from(head), body: Buffer.from(pending.subarray(end + 4, bodyEnd)), conn });
      pending = pending.subarray(bodyEnd);
      const text = String(b.id);
      const isHead = requestLine.startsWith('HEAD ');
      // Answered on the next turn of the loop: a request the proxy sends before this answer is through shows as an overlap.
      unanswered.push(b.id);
      setImmediate(() => {
        unanswered.splice(unanswered.indexOf(b.id), 1);
        if (!sock.destroyed) sock.write(`HTTP/1.1 200 OK\r\nX-Case: ${b.id}\r\nContent-Length: ${text.length}\r\n\r\n${isHead ? '' : text}`);
      });
    }
  });
}

// -------------------------------------------------------------------- client

/** Writes `bytes` in pieces cut at `points` (any: those inside it count, once), with the gaps between them. */
async function writeSplit(c: Conn, bytes: Buffer, points: number[], gaps: Gap[]): Promise<void> {
  const inside = [...new Set(points.filter((p) => p > 0 && p < bytes.length))].sort((a, b) => a - b);
  await writeAll(c.sock, splitAt(bytes, inside), gaps);
}

/** The points where a request is split: its per-mille cuts, and one near its head's end. */
function requestCuts(b: Built): number[] {
  const points = cutsOf(b.req.writeCuts, b.wire.length);
  if (b.req.headCut !== null) points.push(b.headEnd + b.req.headCut);
  return points;
}

/** Proxy ids seen so far: each must be new. */
const proxyIds = new Set<string>();

/** Checks the request the origin got for `b`: its head and body, byte for byte. */
function checkArrival(b: Built, at: string): void {
  const got = arrivals.filter((a) => a.id === b.id);
  assert.equal(got.length, 1, `${at}: the origin got the request once`);
  const head = got[0].head.toString('latin1');
  let id = b.requestId;
  if (id === null) {
    // The proxy's own id, wherever its line is (a head that differs elsewhere still shows only where it differs).
    id = /\r\nx-request-id: ([0-9a-f]{32})\r\n/.exec(head)?.[1] ?? '';
    if (id !== '') {
      assert.ok(!proxyIds.has(id), `${at}: request id ${id} used twice`);
      proxyIds.add(id);
    }
  }
  const want = b.before + id + b.after;
  if (head !== want) assert.deepEqual(head.split('\r\n'), want.split('\r\n'), `${at}: the head the origin got`);
  if (!got[0].body.equals(b.bodyWire)) assert.fail(`${at}: the body the origin got differs: ${bytesDiff(got[0].body, b.bodyWire)}`);
}

/** Reads the answer to `b` on `c` and checks it, and the request the origin got for it. */
async function checkAnswer(c: Conn, b: Built, label: string): Promise<void> {
  const deadline = Date.now() + ANSWER_MS;
  const at = `${label} (HTTP/1.${b.req.minor} ${b.method}, case ${b.id})`;
  try {
    if (b.expectContinue) {
      // The proxy sends 100 Continue when the body is not all there by the time the backend connection is ready: it may, or not.
      const cont = latin1(CONTINUE);
      while (c.buf.length < 12 && cont.subarray(0, c.buf.length).equals(c.buf)) await c.more(deadline, `${at}: the answer`);
      if (c.buf.subarray(0, 12).equals(cont.subarray(0, 12))) await c.expect(cont, deadline, `${at}: 100 Continue`);
    }
    await c.expect(b.answer, deadline, `${at}: the answer`);
  } catch (err) {
    // A request that reached the origin wrong is the story: say that first.
    if (arrivals.some((a) => a.id === b.id)) checkArrival(b, at);
    const arrived = arrivals.map((a) => a.id).join(', ');
    throw new Error(`${(err as Error).message}\n  origin got cases [${arrived}]${strays.length > 0 ? `; strays: ${strays.join(' | ')}` : ''}`, { cause: err });
  }
  checkArrival(b, at);
}

/** After an answer that closes: the proxy closes, with nothing more. */
async function checkClosed(c: Conn, b: Built): Promise<void> {
  const deadline = Date.now() + ANSWER_MS;
  while (!c.ended) await c.more(deadline, `case ${b.id}: the proxy to close the connection`);
  assert.equal(c.buf.length, 0, `case ${b.id}: bytes after the answer before the close: ${preview(c.buf)}`);
}

// ---------------------------------------------------------------------- test

const twins = twinSetups(serve, {});

async function property(setup: Setup, numRuns: number): Promise<void> {
  const proxy = setup.proxy;
  backendHost = `127.0.0.1:${setup.origin.port}`;
  scheme = setup.secure ? 'https' : 'http';
  await fc.assert(fc.asyncProperty(scenarioArb, async ({ pipelined, requests, lastPersists, streamCuts, streamGaps }) => {
    await proxy.ready();
    arrivals.length = 0;
    strays.length = 0;
    overlaps.length = 0;
    const built = requests.map((r, i) => build(r, i < requests.length - 1 || lastPersists));
    const c = new Conn(proxy.port, setup.secure);
    try {
      const last = built[built.length - 1];
      if (pipelined) {
        const stream = Buffer.concat(built.map((b) => b.wire));
        await writeSplit(c, stream, cutsOf(streamCuts, stream.length), streamGaps);
        for (const [i, b] of built.entries()) await checkAnswer(c, b, `pipelined request ${i + 1} of ${built.length}`);
      } else {
        for (const [i, b] of built.entries()) {
          await writeSplit(c, b.wire, requestCuts(b), b.req.gaps);
          await checkAnswer(c, b, `request ${i + 1} of ${built.length}`);
        }
      }
      if (last.persist) {
        const probe = build(PROBE, true);
        built.push(probe);
        await writeSplit(c, probe.wire, [], ['same']);
        await checkAnswer(c, probe, 'the probe after the last request');
      } else {
        await checkClosed(c, last);
      }
      // One at a time, in order: nothing else reached the origin.
      assert.deepEqual(arrivals.map((a) => a.id), built.map((b) => b.id), 'the requests the origin got, in order');
      assert.deepEqual(overlaps, [], 'requests sent upstream before the answer to the one before');
      assert.deepEqual(strays, [], 'requests the origin could not place');
    } catch (err) {
      throw await proxy.explain(err);
    } finally {
      c.sock.destroy();
      for (const b of built) {
        cases.delete(b.id);
        retired.add(b.id);
      }
    }
  }), {
    numRuns,
    // A failure that shows as a timeout (body bytes lost) costs ANSWER_MS per shrinking step: stop shrinking in time to report it.
    interruptAfterTimeLimit: 70_000,
    markInterruptAsFailure: true,
  });
  assert.deepEqual(proxy.crashes, [], 'the proxy exited');
}

test('client requests reach the origin byte for byte: request lines, heads, bodies, framing, pipelining, HTTP/1.0', { timeout: 110_000 }, async () => {
  await property(twins.plain, NUM_RUNS);
});

test('the same through TLS on both sides: a client to --tls-cert, the proxy to an https:// origin', { timeout: 110_000 }, async () => {
  await property(twins.secure, TLS_RUNS);
});
