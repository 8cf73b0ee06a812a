// Heads rewritten as bytes, at the proxy boundary. Header lines pass through
// in their order and case, copied as runs of the received bytes; hop-by-hop
// headers (Connection and the names it lists, Keep-Alive, Proxy-Connection,
// TE, Trailer, Upgrade outside upgrades, Proxy-Authenticate/-Authorization)
// are dropped both ways; framing is written by the proxy itself; the
// forwarding headers (X-Forwarded-For/-Proto/-Host, Via, Forwarded) and the
// request id are added. Each head is built in one Buffer.
import { Buffer } from 'node:buffer';
import {
  ABSOLUTE_FORM, K_CONNECTION, K_CONTENT_LENGTH, K_COOKIE, K_DROP, K_EXPECT, K_FORWARDED, K_HOST, K_OTHER,
  K_TRANSFER_ENCODING, K_UPGRADE, K_USER_AGENT, K_VIA, K_X_FORWARDED_FOR, type RequestHead,
} from './http/request.ts';
import { REQUEST_ID_LENGTH, saneId, type RequestIdHeader } from './request-id.ts';
import { R_CONNECTION, R_CONTENT_LENGTH, R_DROP, R_TRANSFER_ENCODING, R_UPGRADE, R_VIA, type ResponseHead } from './http/response.ts';

export const VIA = '1.1 sticky-proxy';
const VIA_LINE = `Via: ${VIA}\r\n`;
const VIA_APPENDED = `, ${VIA}\r\n`;
/** Below this many bytes a run is copied byte by byte: Buffer#copy's call and view cost more. */
const SHORT_RUN = 48;

/** Copies src[s, e) into out at p; returns the bytes copied. */
function put(out: Buffer, p: number, src: Buffer, s: number, e: number): number {
  const n = e - s;
  if (n >= SHORT_RUN) return src.copy(out, p, s, e);
  for (let i = 0; i < n; i++) out[p + i] = src[s + i];
  return n;
}

/** Writes a Latin-1 string into out at p (text that varies, and is short: no call into C++); returns its length. */
function text(out: Buffer, p: number, s: string): number {
  for (let i = 0; i < s.length; i++) out[p + i] = s.charCodeAt(i);
  return s.length;
}

/** The heads' fixed text, encoded once: TypedArray#set copies it for a third of what a loop over its characters costs. */
const HTTP_HOST = Buffer.from(' HTTP/1.1\r\nHost: ', 'latin1');
const XFF = Buffer.from('X-Forwarded-For: ', 'latin1');
const XFP = Buffer.from('X-Forwarded-Proto: ', 'latin1');
const XFH = Buffer.from('X-Forwarded-Host: ', 'latin1');
const VIA_LINE_BYTES = Buffer.from(VIA_LINE, 'latin1');
const VIA_APPENDED_BYTES = Buffer.from(VIA_APPENDED, 'latin1');
const CHUNKED_LINE = Buffer.from('Transfer-Encoding: chunked\r\n', 'latin1');
const STATUS_START = Buffer.from('HTTP/1.1 ', 'latin1');
const CONNECTION_UPGRADE = Buffer.from('Connection: upgrade\r\n', 'latin1');
const CONNECTION_CLOSE = Buffer.from('Connection: close\r\n', 'latin1');
const CONNECTION_KEEP_ALIVE = Buffer.from('Connection: keep-alive\r\n', 'latin1');

/** Copies all of `b` into out at p; returns its length. */
function bytes(out: Buffer, p: number, b: Uint8Array): number {
  out.set(b, p);
  return b.length;
}

/** Writes CR LF into out at p; returns 2. */
function crlf(out: Buffer, p: number): number {
  out[p] = 13;
  out[p + 1] = 10;
  return 2;
}

/** What a request head needs from its connection and the proxy's settings. */
export interface RequestHeadOptions {
  /** The client's address, as X-Forwarded-For and Forwarded carry it. */
  clientAddress: string;
  /** 'http' or 'https': how the client reached us. */
  proto: string;
  forwarded: boolean;
  /**
   * The peer is a --trusted-proxy: its X-Forwarded-For (and Forwarded, with
   * --forwarded) is kept and appended to. Otherwise those lines are dropped and
   * the proxy's own replace them, so a client cannot forge its address.
   */
  trusted: boolean;
  /** --request-id-header; null or absent: no id is sent. */
  requestId?: RequestIdHeader | null;
}

/** Where the Host value sits in a built upstream head, for --rewrite-host; and the request id, for the access log. */
export interface BuiltHead {
  bytes: Buffer;
  hostStart: number;
  hostEnd: number;
  /** The request id's value in `bytes`; both 0 when none is sent. */
  idStart: number;
  idEnd: number;
}

/** The Upgrade field's protocols: several lines are one list (RFC 9110 section 5.3), empty elements left out. */
function upgradeList(h: RequestHead): string {
  let list = '';
  for (let i = 0; i < h.count; i++) {
    if (h.kinds[i] !== K_UPGRADE) continue;
    const v = h.value(i);
    if (v !== '') list = list === '' ? v : `${list}, ${v}`;
  }
  return list;
}

/**
 * The head sent upstream for `h`: HTTP/1.1 request line, end-to-end headers as
 * received, Host first (the absolute-form authority replaces the client's
 * Host), then X-Forwarded-*, Via, Forwarded, framing and the upgrade's own
 * Connection/Upgrade. `upgrade` keeps the Upgrade header (a protocol switch).
 */
export function upstreamHead(h: RequestHead, o: RequestHeadOptions, upgrade: boolean): BuiltHead {
  const buf = h.buf;
  const L = h.lines;
  const absolute = h.form === ABSOLUTE_FORM;
  const pathStart = h.pathStart;
  // An absolute-form target without a path (http://a.b?q) asks for "/".
  const emptyPath = absolute && (pathStart === h.targetEnd || buf[pathStart] !== 47);
  // Host: the absolute-form authority wins over any Host header (RFC 9112 section 3.2.2).
  const hostStart = absolute ? h.authorityStart : h.host >= 0 ? L[h.host * 5 + 2] : 0;
  const hostEnd = absolute ? h.authorityEnd : h.host >= 0 ? L[h.host * 5 + 3] : 0;
  const hostLength = hostEnd - hostStart;

  // A list header named in Connection is dropped: the proxy then writes its own line.
  const trusted = o.trusted;
  const lastXff = trusted && h.lastXff >= 0 && keep(h, h.lastXff) ? h.lastXff : -1;
  const lastVia = h.lastVia >= 0 && keep(h, h.lastVia) ? h.lastVia : -1;
  const lastForwarded = trusted && o.forwarded && h.lastForwarded >= 0 && keep(h, h.lastForwarded) ? h.lastForwarded : -1;
  // An untrusted peer's forwarding claims go: every X-Forwarded-For line, and Forwarded where we write our own.
  const forged = trusted ? -1 : K_X_FORWARDED_FOR;
  const forgedForwarded = trusted || !o.forwarded ? -1 : K_FORWARDED;
  // The client's request-id lines are dropped; the first one's value is sent on when it is sane, else a new id.
  const rid = o.requestId ?? null;
  let clientId = -1;

  // Size first, then one allocation.
  let size = h.method.length + 1 + (h.targetEnd - pathStart) + (emptyPath ? 1 : 0) + 11;
  size += 8 + (hostEnd - hostStart);
  for (let i = 0; i < h.count; i++) {
    if (rid !== null && isRequestId(h, i, rid.lower)) {
      if (clientId === -1) clientId = saneId(buf, L[i * 5 + 2], L[i * 5 + 3]) ? i : -2;
      continue;
    }
    if (keep(h, i) && h.kinds[i] !== forged && h.kinds[i] !== forgedForwarded) size += L[i * 5 + 4] - L[i * 5];
  }
  if (rid !== null) size += rid.line.length + (clientId >= 0 ? L[clientId * 5 + 3] - L[clientId * 5 + 2] : REQUEST_ID_LENGTH) + 2;
  size += lastXff >= 0 ? 2 + o.clientAddress.length : 17 + o.clientAddress.length + 2;
  size += 19 + o.proto.length + 2;
  if (hostLength > 0) size += 18 + hostLength + 2;
  size += lastVia >= 0 ? 2 + VIA.length : 5 + VIA.length + 2;
  let forwarded = '';
  if (o.forwarded) {
    const node = o.clientAddress.includes(':') ? `"[${o.clientAddress}]"` : o.clientAddress;
    forwarded = `for=${node};proto=${o.proto}${hostLength > 0 ? `;host="${unquotable(buf.toString('latin1', hostStart, hostEnd))}"` : ''}`;
    size += lastForwarded >= 0 ? 2 + forwarded.length : 11 + forwarded.length + 2;
  }
  if (h.chunked) size += 28;
  let upgradeValue = '';
  if (upgrade && h.upgrade >= 0) {
    upgradeValue = upgradeList(h);
    size += 21 + 9 + upgradeValue.length + 2;
  }
  size += 2;

  const out = Buffer.allocUnsafe(size);
  let p = text(out, 0, h.method);
  out[p++] = 32;
  if (emptyPath) out[p++] = 47;
  p += put(out, p, buf, pathStart, h.targetEnd);
  p += bytes(out, p, HTTP_HOST);
  const builtHostStart = p;
  p += put(out, p, buf, hostStart, hostEnd);
  const builtHostEnd = p;
  p += crlf(out, p);
  // Kept lines are copied as runs of consecutive received lines.
  let run = -1;
  let runEnd = -1;
  for (let i = 0; i < h.count; i++) {
    const ls = L[i * 5];
    const le = L[i * 5 + 4];
    const kept = keep(h, i) && h.kinds[i] !== forged && h.kinds[i] !== forgedForwarded && (rid === null || !isRequestId(h, i, rid.lower));
    const append = i === lastXff || i === lastVia || i === lastForwarded;
    if (!kept || append) {
      if (run >= 0) { p += put(out, p, buf, run, runEnd); run = -1; }
      if (!append) continue;
      // The last line of a list header gets our element appended.
      p += put(out, p, buf, ls, L[i * 5 + 3]);
      p += text(out, p, ', ');
      p += text(out, p, i === lastXff ? o.clientAddress : i === lastVia ? VIA : forwarded);
      p += crlf(out, p);
      continue;
    }
    if (run < 0) run = ls;
    else if (runEnd !== ls) { p += put(out, p, buf, run, runEnd); run = ls; }
    runEnd = le;
  }
  if (run >= 0) p += put(out, p, buf, run, runEnd);
  if (lastXff < 0) {
    p += bytes(out, p, XFF);
    p += text(out, p, o.clientAddress);
    p += crlf(out, p);
  }
  p += bytes(out, p, XFP);
  p += text(out, p, o.proto);
  p += crlf(out, p);
  if (hostLength > 0) {
    p += bytes(out, p, XFH);
    p += put(out, p, buf, hostStart, hostEnd);
    p += crlf(out, p);
  }
  if (lastVia < 0) p += bytes(out, p, VIA_LINE_BYTES);
  if (o.forwarded && lastForwarded < 0) p += out.write(`Forwarded: ${forwarded}\r\n`, p, 'latin1');
  let idStart = 0;
  let idEnd = 0;
  if (rid !== null) {
    p += bytes(out, p, rid.line);
    idStart = p;
    p += clientId >= 0 ? buf.copy(out, p, L[clientId * 5 + 2], L[clientId * 5 + 3]) : rid.ids.write(out, p);
    idEnd = p;
    p += crlf(out, p);
  }
  if (h.chunked) p += bytes(out, p, CHUNKED_LINE);
  if (upgradeValue !== '') p += out.write(`Connection: upgrade\r\nUpgrade: ${upgradeValue}\r\n`, p, 'latin1');
  p += crlf(out, p);
  return { bytes: p === size ? out : out.subarray(0, p), hostStart: builtHostStart, hostEnd: builtHostEnd, idStart, idEnd };
}

/** The built head with another Host value (--rewrite-host: the backend's host:port). */
export function withHost(head: BuiltHead, host: string): Buffer {
  const b = head.bytes;
  const out = Buffer.allocUnsafe(b.length - (head.hostEnd - head.hostStart) + host.length);
  let p = b.copy(out, 0, 0, head.hostStart);
  p += out.write(host, p, 'latin1');
  b.copy(out, p, head.hostEnd);
  return out;
}

/** A Host value made safe inside a quoted-string: quotes and backslashes dropped. */
function unquotable(host: string): string {
  let out = '';
  for (let i = 0; i < host.length; i++) {
    const c = host.charCodeAt(i);
    if (c !== 34 && c !== 92) out += host[i];
  }
  return out;
}

/** Header i is the request-id header: an unclassified name equal to `lower` ignoring case, '_' read as '-'. */
function isRequestId(h: RequestHead, i: number, lower: string): boolean {
  if (h.kinds[i] !== K_OTHER) return false;
  const s = h.lines[i * 5];
  if (h.lines[i * 5 + 1] - s !== lower.length) return false;
  const buf = h.buf;
  for (let k = 0; k < lower.length; k++) {
    let c = buf[s + k];
    if (c === 95) c = 45;
    else if (c >= 65 && c <= 90) c += 32;
    if (c !== lower.charCodeAt(k)) return false;
  }
  return true;
}

function keep(h: RequestHead, i: number): boolean {
  switch (h.kinds[i]) {
    case K_OTHER:
    case K_COOKIE:
    case K_USER_AGENT:
    case K_CONTENT_LENGTH:
    case K_X_FORWARDED_FOR:
    case K_VIA:
    case K_FORWARDED:
      return h.connTokens === null || !named(h, i, h.connTokens);
    case K_HOST: // written first, by the proxy
    case K_TRANSFER_ENCODING: // re-framed
    case K_CONNECTION:
    case K_DROP:
    case K_EXPECT: // answered by the proxy itself
    case K_UPGRADE: // written by the proxy for an upgrade
    default:
      return false;
  }
}

function named(h: RequestHead | ResponseHead, i: number, tokens: string[]): boolean {
  for (let t = 0; t < tokens.length; t++) if (h.named(i, tokens[t])) return true;
  return false;
}

/** How the client connection goes on after this answer. */
export const CLIENT_KEEP = 0;
/** An HTTP/1.0 client that asked for keep-alive. */
export const CLIENT_KEEP_10 = 1;
export const CLIENT_CLOSE = 2;

/**
 * The head sent to the client for a backend's response: HTTP/1.1 status line
 * with the backend's status text, end-to-end headers as received, Via
 * appended, the framing the proxy sends (`chunked` true: chunked), and the
 * client connection's fate. A 101 keeps its Connection and Upgrade.
 */
export function clientHead(r: ResponseHead, chunked: boolean, connection: number): Buffer {
  const buf = r.buf;
  const L = r.lines;
  const switching = r.status === 101;
  let size = 9 + (r.statusEnd - r.statusStart) + 2;
  for (let i = 0; i < r.count; i++) if (keepResponse(r, i, switching)) size += L[i * 5 + 4] - L[i * 5];
  const lastVia = r.lastVia >= 0 && keepResponse(r, r.lastVia, switching) ? r.lastVia : -1;
  size += lastVia >= 0 ? 2 + VIA.length : 5 + VIA.length + 2;
  if (chunked) size += 28;
  if (switching) size += 21;
  else if (connection === CLIENT_CLOSE) size += 19;
  else if (connection === CLIENT_KEEP_10) size += 24;
  size += 2;
  const out = Buffer.allocUnsafe(size);
  let p = bytes(out, 0, STATUS_START);
  p += put(out, p, buf, r.statusStart, r.statusEnd);
  p += crlf(out, p);
  let run = -1;
  let runEnd = -1;
  for (let i = 0; i < r.count; i++) {
    const ls = L[i * 5];
    const le = L[i * 5 + 4];
    const kept = keepResponse(r, i, switching);
    const via = i === lastVia;
    if (via || !kept) {
      if (run >= 0) { p += put(out, p, buf, run, runEnd); run = -1; }
      if (!via) continue;
      p += put(out, p, buf, ls, L[i * 5 + 3]);
      p += bytes(out, p, VIA_APPENDED_BYTES);
      continue;
    }
    if (run < 0) run = ls;
    else if (runEnd !== ls) { p += put(out, p, buf, run, runEnd); run = ls; }
    runEnd = le;
  }
  if (run >= 0) p += put(out, p, buf, run, runEnd);
  if (lastVia < 0) p += bytes(out, p, VIA_LINE_BYTES);
  if (chunked) p += bytes(out, p, CHUNKED_LINE);
  if (switching) p += bytes(out, p, CONNECTION_UPGRADE);
  else if (connection === CLIENT_CLOSE) p += bytes(out, p, CONNECTION_CLOSE);
  else if (connection === CLIENT_KEEP_10) p += bytes(out, p, CONNECTION_KEEP_ALIVE);
  p += crlf(out, p);
  return p === size ? out : out.subarray(0, p);
}

function keepResponse(r: ResponseHead, i: number, switching: boolean): boolean {
  switch (r.kinds[i]) {
    case R_CONNECTION:
    case R_DROP:
    case R_TRANSFER_ENCODING:
      return false;
    case R_UPGRADE:
      return switching;
    case R_CONTENT_LENGTH:
    case R_VIA:
    default:
      return r.connTokens === null || !named(r, i, r.connTokens);
  }
}
