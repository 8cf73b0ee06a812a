// The request head parser: strict HTTP/1.1 (RFC 9112) on Buffers, with no
// header object. It validates every byte of the head, records each header
// line as offsets into the received bytes, and classifies the few headers the
// proxy acts on. Where RFC 9112 allows a choice, it refuses: the README's
// "HTTP correctness" section lists each refusal and its status.
//
// Parsing is synchronous and finishes before the next connection's turn, so
// one module-level RequestHead holds the result; the caller takes what it
// needs (it builds the upstream head at once) before parsing again.
import { Buffer } from 'node:buffer';
import { COLON, CR, HTAB, LF, SP, TARGET, TOKEN, VALUE, ascii, cleanHeaderLine, hasTab, headerLine, lineEnd, lower, parseLength, skipOws, trimOwsEnd } from './syntax.ts';

/** Header kinds the proxy acts on. */
export const K_OTHER = 0;
export const K_HOST = 1;
export const K_CONTENT_LENGTH = 2;
export const K_TRANSFER_ENCODING = 3;
export const K_CONNECTION = 4;
export const K_COOKIE = 5;
export const K_UPGRADE = 6;
/** Hop-by-hop, or replaced by the proxy: never forwarded. */
export const K_DROP = 7;
export const K_X_FORWARDED_FOR = 8;
export const K_FORWARDED = 9;
export const K_VIA = 10;
export const K_USER_AGENT = 11;
export const K_EXPECT = 12;

/** Request-target forms (RFC 9112 section 3.2). */
export const ORIGIN_FORM = 0;
export const ABSOLUTE_FORM = 1;
export const ASTERISK_FORM = 2;

// The methods llhttp (Node's and undici's parser) knows; any other token is
// answered 501, so nothing reaches a backend that its own parser may reject.
// PRI is not among them: llhttp takes it only as the HTTP/2 preface.
const METHODS = [
  'DELETE', 'GET', 'HEAD', 'POST', 'PUT', 'CONNECT', 'OPTIONS', 'TRACE', 'COPY', 'LOCK', 'MKCOL', 'MOVE',
  'PROPFIND', 'PROPPATCH', 'SEARCH', 'UNLOCK', 'BIND', 'REBIND', 'UNBIND', 'ACL', 'REPORT', 'MKACTIVITY',
  'CHECKOUT', 'MERGE', 'M-SEARCH', 'NOTIFY', 'SUBSCRIBE', 'UNSUBSCRIBE', 'PATCH', 'PURGE', 'MKCALENDAR',
  'LINK', 'UNLINK', 'SOURCE', 'QUERY',
];
const METHOD_BYTES = METHODS.map(ascii);
/** Methods a client may expect to be replayed (RFC 9110 section 9.2.2), by index into METHODS. */
const IDEMPOTENT = METHODS.map((m) => ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE'].includes(m));
const SAFE = METHODS.map((m) => ['GET', 'HEAD', 'OPTIONS', 'TRACE'].includes(m));

export interface HeadLimits {
  /** Bytes of the whole head (request line and headers): 431 beyond. */
  maxHeadBytes: number;
  /** Header lines: 431 beyond. */
  maxHeaders: number;
  /** Bytes of the request-target: 414 beyond. */
  maxUrlBytes: number;
}

/** Headers named in Connection that must reach the backend all the same. */
const PROTECTED = new Set(['host', 'content-length', 'transfer-encoding', 'cookie']);

/** The parsed head. Offsets are into `buf`. Header i's line is lines[5i..5i+4]: start, name end, value start, value end, line end. */
export class RequestHead {
  buf: Buffer = Buffer.alloc(0);
  start = 0;
  end = 0;
  method = '';
  idempotent = false;
  safe = false;
  isHead = false;
  targetStart = 0;
  targetEnd = 0;
  form = ORIGIN_FORM;
  /** Absolute-form: the authority, which becomes Host; and where the path starts. */
  authorityStart = 0;
  authorityEnd = 0;
  pathStart = 0;
  /** HTTP/1.x minor version. */
  minor = 1;
  count = 0;
  lines: Int32Array;
  kinds: Uint8Array;
  /** -1 when absent. */
  contentLength = -1;
  chunked = false;
  host = -1;
  userAgent = -1;
  /** Last X-Forwarded-For, Via and Forwarded lines: the proxy appends to them. */
  lastXff = -1;
  lastVia = -1;
  lastForwarded = -1;
  cookies = 0;
  upgrade = -1;
  connClose = false;
  connKeepAlive = false;
  connUpgrade = false;
  expectContinue = false;
  /** Other names listed in Connection (lower case), dropped too. */
  connTokens: string[] | null = null;
  /** Why the head was refused. */
  reason = '';
  /** When more bytes are needed: the bytes before this offset are validated already. */
  validEnd = 0;

  constructor(maxHeaders: number) {
    this.lines = new Int32Array(maxHeaders * 5);
    this.kinds = new Uint8Array(maxHeaders);
  }

  /** The client keeps the connection open after this exchange, as far as it says ("close" wins over "keep-alive": RFC 9112 §9.3). */
  get keepAlive(): boolean {
    return this.minor === 1 ? !this.connClose : this.connKeepAlive && !this.connClose;
  }

  get hasBody(): boolean {
    return this.chunked || this.contentLength > 0;
  }

  /** Header i's value, as latin1 text. */
  value(i: number): string {
    return this.buf.toString('latin1', this.lines[i * 5 + 2], this.lines[i * 5 + 3]);
  }

  /** True when header i's lower-cased name is one of `names`. */
  named(i: number, name: string): boolean {
    const s = this.lines[i * 5];
    const e = this.lines[i * 5 + 1];
    if (e - s !== name.length) return false;
    for (let k = 0; k < name.length; k++) if (lower(this.buf[s + k]) !== name.charCodeAt(k)) return false;
    return true;
  }
}

/**
 * Parses a request head starting at buf[start]. Returns the offset just past
 * the head when it is complete, 0 when more bytes are needed, or minus the
 * status to answer (400, 414, 431, 501, 505) with `head.reason` set.
 * `checked`: -1 for bytes seen the first time; for a head parsed again as
 * more of it arrives, how far earlier calls already validated it.
 */
export function parseRequestHead(head: RequestHead, buf: Buffer, start: number, end: number, limits: HeadLimits, checked = -1): number {
  head.buf = buf;
  head.start = start;
  head.count = 0;
  head.contentLength = -1;
  head.chunked = false;
  head.host = -1;
  head.userAgent = -1;
  head.lastXff = -1;
  head.lastVia = -1;
  head.lastForwarded = -1;
  head.cookies = 0;
  head.upgrade = -1;
  head.connClose = false;
  head.connKeepAlive = false;
  head.connUpgrade = false;
  head.expectContinue = false;
  head.connTokens = null;
  head.reason = '';
  // Set once the request line is read: a refused head's access log line tells whether it had one.
  head.pathStart = -1;

  // An empty line before the request line is ignored (RFC 9112 section 2.2).
  let pos = start;
  while (end - pos >= 2 && buf[pos] === CR && buf[pos + 1] === LF) pos += 2;
  head.start = pos;
  const limitEnd = Math.min(end, pos + limits.maxHeadBytes);

  // Request line: method SP request-target SP HTTP-version CRLF.
  // A head parsed again (it arrives in pieces) takes the careful path for
  // every line: a memchr search for its end, and no second read of what was
  // validated, so a head sent a byte at a time costs what it always did.
  const again = checked >= 0;
  let lf = again ? -1 : lineEnd(buf, pos, limitEnd);
  if (lf < 0) {
    lf = buf.indexOf(LF, pos);
    if (lf < 0 || lf >= limitEnd) return incomplete(head, pos, end, limits, pos);
  }
  if (buf[lf - 1] !== CR || lf - 1 < pos) {
    if (lf === pos) return fail(head, 400, 'CR or LF before the request line');
    // llhttp reads a line with one space as HTTP/0.9, which may end in LF alone.
    return fail(head, 400, spaces(buf, pos, lf) < 2 ? 'missing HTTP version' : 'bare LF');
  }
  const r = requestLine(head, buf, pos, lf - 1, limits);
  if (r !== 0) return r;
  pos = lf + 1;

  let chunkedSeen = false;
  let teSeen = false;
  for (;;) {
    if (pos >= limitEnd) return incomplete(head, head.start, end, limits, pos);
    const c = buf[pos];
    if (c === CR) {
      if (pos + 1 >= end) return incomplete(head, head.start, end, limits, pos);
      if (buf[pos + 1] !== LF) return fail(head, 400, 'bare CR');
      pos += 2;
      break;
    }
    if (c === SP || c === HTAB) return fail(head, 400, 'obsolete line folding');
    // field-name ":" OWS field-value OWS. A clean line (the common case) is
    // read once: its name through the token table, then its value to CR LF.
    // Any other line, or any in a head parsed again, takes the path below: a
    // search for its end, then a check byte by byte for its exact refusal.
    lf = again ? -1 : cleanHeaderLine(buf, pos, limitEnd);
    const clean = lf >= 0;
    let nameEnd = headerLine.nameEnd;
    let underscore = headerLine.underscore;
    if (!clean) {
      lf = buf.indexOf(LF, pos);
      if (lf < 0 || lf >= limitEnd) return incomplete(head, head.start, end, limits, pos);
      if (buf[lf - 1] !== CR) return fail(head, 400, 'bare LF');
      let i = pos;
      underscore = false;
      while (i < lf - 1 && TOKEN[buf[i]] === 1) {
        if (buf[i] === 95) underscore = true;
        i++;
      }
      if (i === pos) return fail(head, 400, 'empty header name');
      if (buf[i] !== COLON) return fail(head, 400, i < lf - 1 && (buf[i] === SP || buf[i] === HTAB) ? 'whitespace before colon' : 'invalid header name');
      nameEnd = i;
    }
    const eol = lf - 1;
    const vs = skipOws(buf, nameEnd + 1, eol);
    if (!clean) {
      for (let k = Math.max(vs, checked); k < eol; k++) {
        if (VALUE[buf[k]] === 0) return fail(head, 400, buf[k] === CR ? 'bare CR' : 'control character in header value');
      }
    }
    const ve = trimOwsEnd(buf, vs, eol);
    const n = head.count;
    if (n === head.kinds.length || n >= limits.maxHeaders) return fail(head, 431, 'too many headers');
    const L = n * 5;
    head.lines[L] = pos;
    head.lines[L + 1] = nameEnd;
    head.lines[L + 2] = vs;
    head.lines[L + 3] = ve;
    head.lines[L + 4] = lf + 1;
    let kind = classify(buf, pos, nameEnd, underscore);
    // A name with '_' that a CGI/WSGI/Rack app would read as a header the
    // proxy sets or guards (X_Forwarded_For, Transfer_Encoding...) is dropped.
    if (underscore && kind !== K_OTHER && kind !== K_COOKIE && kind !== K_USER_AGENT) kind = K_DROP;
    head.kinds[n] = kind;
    head.count = n + 1;
    switch (kind) {
      case K_HOST:
        if (head.host >= 0) return fail(head, 400, 'duplicate Host');
        for (let k = vs; k < ve; k++) if (buf[k] === SP || buf[k] === HTAB || buf[k] === 44) return fail(head, 400, 'invalid Host');
        head.host = n;
        break;
      case K_CONTENT_LENGTH:
        if (head.contentLength >= 0) return fail(head, 400, 'duplicate Content-Length');
        head.contentLength = parseLength(buf, vs, ve);
        if (head.contentLength === -2) return fail(head, 400, 'Content-Length too large');
        if (head.contentLength < 0 || hasTab(buf, ve, eol)) return fail(head, 400, 'invalid Content-Length');
        break;
      case K_TRANSFER_ENCODING: {
        if (teSeen) return fail(head, 400, 'duplicate Transfer-Encoding');
        teSeen = true;
        const t = transferCoding(buf, vs, ve);
        if (t === 400 || hasTab(buf, ve, eol)) return fail(head, 400, 'invalid Transfer-Encoding');
        if (t === 501) return fail(head, 501, 'unsupported Transfer-Encoding');
        chunkedSeen = true;
        break;
      }
      case K_CONNECTION:
        if (!connection(head, buf, vs, ve) || hasTab(buf, ve, eol)) return fail(head, 400, 'invalid Connection');
        break;
      case K_COOKIE:
        head.cookies++;
        break;
      case K_UPGRADE:
        head.upgrade = n;
        break;
      case K_EXPECT:
        // An HTTP/1.0 client's expectation is ignored, and it never gets a 1xx (RFC 9110 §10.1.1, §15.2).
        if (head.minor === 1 && ve - vs === 12 && lowerEquals(buf, vs, '100-continue')) head.expectContinue = true;
        break;
      case K_X_FORWARDED_FOR:
        head.lastXff = n;
        break;
      case K_VIA:
        head.lastVia = n;
        break;
      case K_FORWARDED:
        head.lastForwarded = n;
        break;
      case K_USER_AGENT:
        head.userAgent = n;
        break;
    }
    pos = lf + 1;
  }

  if (pos - head.start > limits.maxHeadBytes) return fail(head, 431, 'request head too large');
  if (teSeen && head.contentLength >= 0) return fail(head, 400, 'Content-Length with Transfer-Encoding');
  if (teSeen && head.minor === 0) return fail(head, 400, 'Transfer-Encoding on HTTP/1.0');
  head.chunked = chunkedSeen;
  if (head.minor === 1 && head.host < 0) return fail(head, 400, 'missing Host');
  head.end = pos;
  return pos;
}

/** Spaces in buf[s, e). */
function spaces(buf: Buffer, s: number, e: number): number {
  let n = 0;
  for (let i = s; i < e; i++) if (buf[i] === SP) n++;
  return n;
}

function incomplete(head: RequestHead, start: number, end: number, limits: HeadLimits, validEnd: number): number {
  if (end - start >= limits.maxHeadBytes) return fail(head, 431, 'request head too large');
  head.validEnd = validEnd;
  return 0;
}

function fail(head: RequestHead, status: number, reason: string): number {
  head.reason = reason;
  return -status;
}

function requestLine(head: RequestHead, buf: Buffer, s: number, e: number, limits: HeadLimits): number {
  let i = s;
  while (i < e && TOKEN[buf[i]] === 1) i++;
  if (i === s || buf[i] !== SP) return fail(head, 400, buf[s] === CR ? 'CR or LF before the request line' : 'invalid method');
  const methodEnd = i;
  const ts = ++i;
  while (i < e && TARGET[buf[i]] === 1) i++;
  if (i - ts > limits.maxUrlBytes) return fail(head, 414, 'request-target too long');
  if (i === ts || buf[i] !== SP) {
    if (i === e) return fail(head, 400, 'missing HTTP version');
    return fail(head, 400, i === ts && buf[i] === SP ? 'extra whitespace in the request line' : 'invalid request-target');
  }
  head.targetStart = ts;
  head.targetEnd = i;
  i++;
  // HTTP-version = "HTTP/" DIGIT "." DIGIT
  if (e - i !== 8 || buf[i] !== 72 || buf[i + 1] !== 84 || buf[i + 2] !== 84 || buf[i + 3] !== 80 || buf[i + 4] !== 47 || buf[i + 6] !== 46) {
    return fail(head, 400, buf[i] === SP ? 'extra whitespace in the request line' : 'invalid HTTP version');
  }
  const major = buf[i + 5] - 48;
  const minor = buf[i + 7] - 48;
  if (major < 0 || major > 9 || minor < 0 || minor > 9) return fail(head, 400, 'invalid HTTP version');
  if (major !== 1 || minor > 1) return fail(head, 505, 'HTTP version not supported');
  head.minor = minor;
  // Looked up once the line is known to be HTTP/1.x: llhttp takes a line with no version as HTTP/0.9, whatever its method.
  const m = knownMethod(buf, s, methodEnd);
  if (m < 0) return fail(head, 501, 'unknown method');
  const method = METHODS[m];
  head.method = method;
  head.idempotent = IDEMPOTENT[m];
  head.safe = SAFE[m];
  head.isHead = method === 'HEAD';
  if (method === 'CONNECT') return fail(head, 501, 'CONNECT is not supported: this is a reverse proxy');
  return target(head, buf, ts, head.targetEnd);
}

/** The method's index in METHODS, or -1. */
function knownMethod(buf: Buffer, s: number, e: number): number {
  const len = e - s;
  for (let m = 0; m < METHOD_BYTES.length; m++) {
    const b = METHOD_BYTES[m];
    if (b.length !== len) continue;
    let k = 0;
    while (k < len && buf[s + k] === b[k]) k++;
    if (k === len) return m;
  }
  return -1;
}

/** Origin-form, absolute-form (http/https only, no userinfo) or "*" for OPTIONS. */
function target(head: RequestHead, buf: Buffer, s: number, e: number): number {
  if (buf[s] === 47 /* / */) {
    head.form = ORIGIN_FORM;
    head.pathStart = s;
    return 0;
  }
  if (e - s === 1 && buf[s] === 42 /* * */) {
    if (head.method !== 'OPTIONS') return fail(head, 400, 'asterisk-form is only for OPTIONS');
    head.form = ASTERISK_FORM;
    head.pathStart = s;
    return 0;
  }
  let a: number;
  if (lowerEquals(buf, s, 'http://')) a = s + 7;
  else if (lowerEquals(buf, s, 'https://')) a = s + 8;
  else return fail(head, 400, 'request-target is neither a path nor an http(s) URL');
  let p = a;
  while (p < e && buf[p] !== 47 && buf[p] !== 63 /* ? */ && buf[p] !== 35 /* # */) {
    if (buf[p] === 64 /* @ */) return fail(head, 400, 'userinfo in request-target');
    p++;
  }
  if (p === a) return fail(head, 400, 'empty authority in request-target');
  head.form = ABSOLUTE_FORM;
  head.authorityStart = a;
  head.authorityEnd = p;
  head.pathStart = p;
  return 0;
}

/**
 * 0 for exactly "chunked"; 501 for a coding we do not implement (gzip,
 * chunked); 400 for an empty or malformed value, or chunked anywhere but last
 * (chunked, identity).
 */
function transferCoding(buf: Buffer, s: number, e: number): number {
  if (e - s === 7 && lowerEquals(buf, s, 'chunked')) return 0;
  if (s === e) return 400;
  let i = s;
  let elements = 0;
  while (i < e) {
    i = skipOws(buf, i, e);
    const ts = i;
    while (i < e && TOKEN[buf[i]] === 1) i++;
    const te = i;
    i = skipOws(buf, i, e);
    if (te === ts || (i < e && buf[i] !== 44)) return 400;
    i++;
    elements++;
    // chunked must be the final coding, once.
    if (te - ts === 7 && lowerEquals(buf, ts, 'chunked') && i < e) return 400;
  }
  return elements === 0 ? 400 : 501;
}

/** Reads a Connection value: close, keep-alive, upgrade, and names to drop. */
function connection(head: RequestHead, buf: Buffer, s: number, e: number): boolean {
  let i = s;
  while (i < e) {
    i = skipOws(buf, i, e);
    const ts = i;
    while (i < e && TOKEN[buf[i]] === 1) i++;
    const te = i;
    while (i < e && buf[i] === SP) i++;
    // An HTAB after a token: see hasTab.
    if (i < e && buf[i] !== 44) return false;
    i++;
    if (te === ts) continue;
    const len = te - ts;
    if (len === 5 && lowerEquals(buf, ts, 'close')) head.connClose = true;
    else if (len === 10 && lowerEquals(buf, ts, 'keep-alive')) head.connKeepAlive = true;
    else if (len === 7 && lowerEquals(buf, ts, 'upgrade')) head.connUpgrade = true;
    else {
      const name = buf.toString('latin1', ts, te).toLowerCase();
      if (!PROTECTED.has(name)) (head.connTokens ??= []).push(name);
    }
  }
  return true;
}

/** True when buf at s starts with `lowerText` (lower case ASCII), ignoring case. */
function lowerEquals(buf: Buffer, s: number, lowerText: string): boolean {
  if (s + lowerText.length > buf.length) return false;
  for (let k = 0; k < lowerText.length; k++) if (lower(buf[s + k]) !== lowerText.charCodeAt(k)) return false;
  return true;
}

/** Like lowerEquals, reading '_' as '-' (how CGI-style apps see header names). */
function nameEquals(buf: Buffer, s: number, lowerText: string, underscore: boolean): boolean {
  if (!underscore) return lowerEquals(buf, s, lowerText);
  for (let k = 0; k < lowerText.length; k++) {
    const c = buf[s + k];
    if ((c === 95 ? 45 : lower(c)) !== lowerText.charCodeAt(k)) return false;
  }
  return true;
}

function classify(buf: Buffer, s: number, e: number, u: boolean): number {
  switch (e - s) {
    case 2: return nameEquals(buf, s, 'te', u) ? K_DROP : K_OTHER;
    case 3: return nameEquals(buf, s, 'via', u) ? K_VIA : K_OTHER;
    case 4: return nameEquals(buf, s, 'host', u) ? K_HOST : K_OTHER;
    case 6:
      if (nameEquals(buf, s, 'cookie', u)) return K_COOKIE;
      return nameEquals(buf, s, 'expect', u) ? K_EXPECT : K_OTHER;
    case 7:
      if (nameEquals(buf, s, 'upgrade', u)) return K_UPGRADE;
      return nameEquals(buf, s, 'trailer', u) ? K_DROP : K_OTHER;
    case 9: return nameEquals(buf, s, 'forwarded', u) ? K_FORWARDED : K_OTHER;
    case 10:
      if (nameEquals(buf, s, 'connection', u)) return K_CONNECTION;
      if (nameEquals(buf, s, 'user-agent', u)) return K_USER_AGENT;
      return nameEquals(buf, s, 'keep-alive', u) ? K_DROP : K_OTHER;
    case 14: return nameEquals(buf, s, 'content-length', u) ? K_CONTENT_LENGTH : K_OTHER;
    case 15: return nameEquals(buf, s, 'x-forwarded-for', u) ? K_X_FORWARDED_FOR : K_OTHER;
    case 16: return nameEquals(buf, s, 'x-forwarded-host', u) || nameEquals(buf, s, 'proxy-connection', u) ? K_DROP : K_OTHER;
    case 17:
      if (nameEquals(buf, s, 'transfer-encoding', u)) return K_TRANSFER_ENCODING;
      return nameEquals(buf, s, 'x-forwarded-proto', u) ? K_DROP : K_OTHER;
    case 18: return nameEquals(buf, s, 'proxy-authenticate', u) ? K_DROP : K_OTHER;
    case 19: return nameEquals(buf, s, 'proxy-authorization', u) ? K_DROP : K_OTHER;
    default: return K_OTHER;
  }
}
