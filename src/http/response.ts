// The response head parser: the status line and the headers a proxy must act
// on (framing, Connection, Set-Cookie, Via), as offsets into the received
// bytes. Backends are trusted to name themselves, not to frame correctly: a
// head that is malformed, or whose framing is ambiguous, is refused (502).
import { Buffer } from 'node:buffer';
import { COLON, CR, HTAB, LF, SP, TOKEN, VALUE, cleanHeaderLine, hasTab, headerLine, lineEnd, lower, parseLength, skipOws, trimOwsEnd } from './syntax.ts';

export const R_OTHER = 0;
export const R_CONTENT_LENGTH = 1;
export const R_TRANSFER_ENCODING = 2;
export const R_CONNECTION = 3;
export const R_SET_COOKIE = 4;
export const R_VIA = 5;
export const R_UPGRADE = 6;
/** Hop-by-hop: Keep-Alive, Proxy-Connection, TE, Trailer, Proxy-Authenticate/-Authorization. */
export const R_DROP = 7;

/** Bodies framed by Content-Length, chunked, or the connection's close; or none. */
export const BODY_NONE = 0;
export const BODY_LENGTH = 1;
export const BODY_CHUNKED = 2;
export const BODY_CLOSE = 3;

export const MAX_RESPONSE_HEAD = 64 * 1024;
export const MAX_RESPONSE_HEADERS = 256;

export class ResponseHead {
  buf: Buffer = Buffer.alloc(0);
  start = 0;
  end = 0;
  status = 0;
  /** HTTP/1.x minor version of the backend. */
  minor = 1;
  /** Where the status line's text after the version starts ("200 OK"), and its end (before CRLF). */
  statusStart = 0;
  statusEnd = 0;
  count = 0;
  readonly lines = new Int32Array(MAX_RESPONSE_HEADERS * 5);
  readonly kinds = new Uint8Array(MAX_RESPONSE_HEADERS);
  contentLength = -1;
  chunked = false;
  connClose = false;
  connKeepAlive = false;
  connTokens: string[] | null = null;
  setCookies = 0;
  lastVia = -1;
  reason = '';

  /** The backend keeps the connection open after this response. */
  get reusable(): boolean {
    return this.minor === 1 ? !this.connClose : this.connKeepAlive && !this.connClose;
  }

  /** How the body is framed, given the request's method (HEAD has no body). */
  framing(requestIsHead: boolean): number {
    const s = this.status;
    if (requestIsHead || s < 200 || s === 204 || s === 304) return BODY_NONE;
    if (this.chunked) return BODY_CHUNKED;
    if (this.contentLength >= 0) return this.contentLength === 0 ? BODY_NONE : BODY_LENGTH;
    return BODY_CLOSE;
  }

  value(i: number): string {
    return this.buf.toString('latin1', this.lines[i * 5 + 2], this.lines[i * 5 + 3]);
  }

  /** True when header i's name, lower-cased, is `name`. */
  named(i: number, name: string): boolean {
    const s = this.lines[i * 5];
    if (this.lines[i * 5 + 1] - s !== name.length) return false;
    for (let k = 0; k < name.length; k++) if (lower(this.buf[s + k]) !== name.charCodeAt(k)) return false;
    return true;
  }
}

/**
 * Parses a response head at buf[start]. Returns the offset past it, 0 when
 * more bytes are needed, or -1 when it is malformed (`head.reason`).
 */
export function parseResponseHead(head: ResponseHead, buf: Buffer, start: number, end: number): number {
  head.buf = buf;
  head.start = start;
  head.count = 0;
  head.contentLength = -1;
  head.chunked = false;
  head.connClose = false;
  head.connKeepAlive = false;
  head.connTokens = null;
  head.setCookies = 0;
  head.lastVia = -1;
  head.reason = '';
  const limitEnd = Math.min(end, start + MAX_RESPONSE_HEAD);
  let lf = lineEnd(buf, start, limitEnd);
  const cleanStatus = lf >= 0;
  if (!cleanStatus) {
    lf = buf.indexOf(LF, start);
    if (lf < 0 || lf >= limitEnd) return more(head, start, end);
  }
  if (lf - 1 < start || buf[lf - 1] !== CR) return bad(head, lf === start ? 'CR or LF before the status line' : 'bare LF in status line');
  // HTTP/1.x SP 3DIGIT SP reason
  const e = lf - 1;
  if (e - start < 12 || buf[start] !== 72 || buf[start + 1] !== 84 || buf[start + 2] !== 84 || buf[start + 3] !== 80
    || buf[start + 4] !== 47 || buf[start + 6] !== 46 || buf[start + 8] !== SP) {
    return bad(head, buf[start] === CR ? 'CR or LF before the status line' : 'invalid status line');
  }
  const major = buf[start + 5] - 48;
  const minor = buf[start + 7] - 48;
  if (major < 0 || major > 9 || minor < 0 || minor > 9) return bad(head, 'invalid HTTP version');
  if (major !== 1 || minor > 1) return bad(head, 'HTTP version not supported');
  head.minor = minor;
  let status = 0;
  for (let k = start + 9; k < start + 12; k++) {
    const d = buf[k] - 48;
    if (d < 0 || d > 9) return bad(head, 'invalid status code');
    status = status * 10 + d;
  }
  if (status < 100) return bad(head, 'status code below 100');
  if (e > start + 12 && buf[start + 12] !== SP) return bad(head, buf[start + 12] === CR ? 'bare CR in the status line' : 'invalid status line');
  if (!cleanStatus) for (let k = start + 13; k < e; k++) if (VALUE[buf[k]] === 0) return bad(head, 'invalid reason phrase');
  head.status = status;
  head.statusStart = start + 9;
  head.statusEnd = e;
  let pos = lf + 1;
  let teSeen = false;
  for (;;) {
    if (pos >= limitEnd) return more(head, start, end);
    const c = buf[pos];
    if (c === CR) {
      if (pos + 1 >= end) return more(head, start, end);
      if (buf[pos + 1] !== LF) return bad(head, 'bare CR');
      pos += 2;
      break;
    }
    if (c === SP || c === HTAB) return bad(head, 'obsolete line folding');
    // A clean line (the common case) is read once: its name through the
    // token table, then its value to CR LF. Any other line is read again
    // below, byte by byte, for its exact refusal.
    lf = cleanHeaderLine(buf, pos, limitEnd);
    const clean = lf >= 0;
    let nameEnd = headerLine.nameEnd;
    if (!clean) {
      lf = buf.indexOf(LF, pos);
      if (lf < 0 || lf >= limitEnd) return more(head, start, end);
      if (buf[lf - 1] !== CR) return bad(head, 'bare LF');
      let i = pos;
      while (i < lf - 1 && TOKEN[buf[i]] === 1) i++;
      if (i === pos || buf[i] !== COLON) return bad(head, 'invalid header name');
      nameEnd = i;
    }
    const eol = lf - 1;
    const vs = skipOws(buf, nameEnd + 1, eol);
    if (!clean) for (let k = vs; k < eol; k++) if (VALUE[buf[k]] === 0) return bad(head, 'control character in header value');
    const ve = trimOwsEnd(buf, vs, eol);
    const n = head.count;
    if (n === MAX_RESPONSE_HEADERS) return bad(head, 'too many headers');
    const L = n * 5;
    head.lines[L] = pos;
    head.lines[L + 1] = nameEnd;
    head.lines[L + 2] = vs;
    head.lines[L + 3] = ve;
    head.lines[L + 4] = lf + 1;
    const kind = classify(buf, pos, nameEnd);
    head.kinds[n] = kind;
    head.count = n + 1;
    switch (kind) {
      case R_CONTENT_LENGTH: {
        const len = parseLength(buf, vs, ve);
        if (len === -2) return bad(head, 'Content-Length too large');
        if (len < 0 || head.contentLength >= 0 || hasTab(buf, ve, eol)) return bad(head, 'invalid Content-Length');
        head.contentLength = len;
        break;
      }
      case R_TRANSFER_ENCODING:
        if (teSeen || ve - vs !== 7 || !equalsText(buf, vs, 'chunked') || hasTab(buf, ve, eol)) return bad(head, 'unsupported Transfer-Encoding');
        teSeen = true;
        break;
      case R_CONNECTION:
        if (hasTab(buf, vs, eol)) return bad(head, 'invalid Connection');
        connection(head, buf, vs, ve);
        break;
      case R_SET_COOKIE:
        head.setCookies++;
        break;
      case R_VIA:
        head.lastVia = n;
        break;
    }
    pos = lf + 1;
  }
  if (teSeen && head.contentLength >= 0) return bad(head, 'Content-Length with Transfer-Encoding');
  head.chunked = teSeen;
  head.end = pos;
  return pos;
}

function more(head: ResponseHead, start: number, end: number): number {
  return end - start >= MAX_RESPONSE_HEAD ? bad(head, 'response head too large') : 0;
}

function bad(head: ResponseHead, reason: string): number {
  head.reason = reason;
  return -1;
}

function connection(head: ResponseHead, buf: Buffer, s: number, e: number): void {
  let i = s;
  while (i < e) {
    i = skipOws(buf, i, e);
    const ts = i;
    while (i < e && buf[i] !== 44) i++;
    const te = trimOwsEnd(buf, ts, i);
    i++;
    const len = te - ts;
    if (len === 0) continue;
    if (len === 5 && equalsText(buf, ts, 'close')) head.connClose = true;
    else if (len === 10 && equalsText(buf, ts, 'keep-alive')) head.connKeepAlive = true;
    else (head.connTokens ??= []).push(buf.toString('latin1', ts, te).toLowerCase());
  }
}

function equalsText(buf: Buffer, s: number, lowerText: string): boolean {
  for (let k = 0; k < lowerText.length; k++) if (lower(buf[s + k]) !== lowerText.charCodeAt(k)) return false;
  return true;
}

function classify(buf: Buffer, s: number, e: number): number {
  switch (e - s) {
    case 2: return equalsText(buf, s, 'te') ? R_DROP : R_OTHER;
    case 3: return equalsText(buf, s, 'via') ? R_VIA : R_OTHER;
    case 7:
      if (equalsText(buf, s, 'upgrade')) return R_UPGRADE;
      return equalsText(buf, s, 'trailer') ? R_DROP : R_OTHER;
    case 10:
      if (equalsText(buf, s, 'set-cookie')) return R_SET_COOKIE;
      if (equalsText(buf, s, 'connection')) return R_CONNECTION;
      return equalsText(buf, s, 'keep-alive') ? R_DROP : R_OTHER;
    case 14: return equalsText(buf, s, 'content-length') ? R_CONTENT_LENGTH : R_OTHER;
    case 16: return equalsText(buf, s, 'proxy-connection') ? R_DROP : R_OTHER;
    case 17: return equalsText(buf, s, 'transfer-encoding') ? R_TRANSFER_ENCODING : R_OTHER;
    case 18: return equalsText(buf, s, 'proxy-authenticate') ? R_DROP : R_OTHER;
    case 19: return equalsText(buf, s, 'proxy-authorization') ? R_DROP : R_OTHER;
    default: return R_OTHER;
  }
}
