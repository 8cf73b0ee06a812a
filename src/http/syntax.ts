// Byte classes of HTTP/1.1 (RFC 9110 section 5.6, RFC 9112), as lookup tables
// so the parsers test a byte with one indexed load.
import { Buffer } from 'node:buffer';

/** tchar: the bytes of a token (method, header name, chunk extension name). */
export const TOKEN = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~") TOKEN[c.charCodeAt(0)] = 1;
for (let c = 0x30; c <= 0x39; c++) TOKEN[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) TOKEN[c] = 1;
for (let c = 0x61; c <= 0x7a; c++) TOKEN[c] = 1;

/** field-value bytes: HTAB, SP, VCHAR, obs-text. Everything else (CTL, NUL, DEL, CR, LF) is refused. */
export const VALUE = new Uint8Array(256);
VALUE[0x09] = 1;
for (let c = 0x20; c <= 0x7e; c++) VALUE[c] = 1;
for (let c = 0x80; c <= 0xff; c++) VALUE[c] = 1;

/** request-target bytes: visible ASCII only (no space, no CTL, no obs-text). */
export const TARGET = new Uint8Array(256);
for (let c = 0x21; c <= 0x7e; c++) TARGET[c] = 1;

/** Hex digit values, -1 for anything else. */
export const HEX = new Int8Array(256).fill(-1);
for (let c = 0; c <= 9; c++) HEX[0x30 + c] = c;
for (let c = 0; c < 6; c++) { HEX[0x41 + c] = 10 + c; HEX[0x61 + c] = 10 + c; }

export const CR = 13;
export const LF = 10;
export const SP = 32;
export const HTAB = 9;
export const COLON = 58;

/** ASCII lower case of a byte. */
export function lower(c: number): number {
  return c >= 0x41 && c <= 0x5a ? c | 0x20 : c;
}

/** True when buf[start, start+name.length) equals `name` (lower case ASCII) ignoring case. */
export function equalsLower(buf: Uint8Array, start: number, end: number, name: Uint8Array): boolean {
  if (end - start !== name.length) return false;
  for (let i = 0; i < name.length; i++) if (lower(buf[start + i]) !== name[i]) return false;
  return true;
}

/** Bytes of an ASCII string, for comparisons against received bytes. */
export function ascii(s: string): Buffer {
  return Buffer.from(s, 'latin1');
}

/**
 * Where the line at buf[pos] ends: the offset of its LF when every byte before
 * its CR is a field-value byte and CR LF ends it before `limit`; -1 otherwise
 * (a bad byte, a bare CR or LF, or no end yet), for the caller's exact check.
 * A loop over the bytes a header's validation reads anyway: cheaper than
 * Buffer#indexOf's call into C++ for lines this short.
 */
export function lineEnd(buf: Uint8Array, pos: number, limit: number): number {
  let k = pos;
  while (k < limit && VALUE[buf[k]] === 1) k++;
  return k + 1 < limit && buf[k] === CR && buf[k + 1] === LF ? k + 1 : -1;
}

/** What the last cleanHeaderLine found: where the name ends (its colon), and whether the name holds '_'. */
export const headerLine = { nameEnd: 0, underscore: false };

/**
 * A header line at buf[pos] read once, the common case: a token name, a
 * colon, then field-value bytes to CR LF before `limit`. Returns the offset
 * of its LF (the name's end and '_' in `headerLine`), or -1 when the line is
 * not clean or not whole: the caller's careful path then says why.
 */
export function cleanHeaderLine(buf: Uint8Array, pos: number, limit: number): number {
  let i = pos;
  let underscore = false;
  while (i < limit && TOKEN[buf[i]] === 1) {
    if (buf[i] === 95) underscore = true;
    i++;
  }
  if (i === pos || buf[i] !== COLON) return -1;
  headerLine.nameEnd = i;
  headerLine.underscore = underscore;
  return lineEnd(buf, i + 1, limit);
}

/** Skips optional whitespace (SP, HTAB) forwards. */
export function skipOws(buf: Uint8Array, i: number, end: number): number {
  while (i < end && (buf[i] === SP || buf[i] === HTAB)) i++;
  return i;
}

/** Skips optional whitespace backwards: returns the end of the trimmed range. */
export function trimOwsEnd(buf: Uint8Array, start: number, end: number): number {
  while (end > start && (buf[end - 1] === SP || buf[end - 1] === HTAB)) end--;
  return end;
}

/**
 * True when buf[start, end) holds an HTAB. llhttp does not read a trailing
 * HTAB as whitespace in Content-Length, Transfer-Encoding and Connection
 * (it refuses the length, and reads `chunked<TAB>` as not chunked and
 * `close<TAB>` as not close), so the parsers refuse it there rather than
 * frame a message differently from a peer built on it.
 */
export function hasTab(buf: Uint8Array, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (buf[i] === HTAB) return true;
  return false;
}

/**
 * A decimal Content-Length: digits only, no sign, no list. -1 when invalid;
 * -2 when over 15 digits after leading zeros, beyond what a double counts
 * exactly (2^53).
 */
export function parseLength(buf: Uint8Array, start: number, end: number): number {
  if (start === end) return -1;
  // 1*DIGIT allows leading zeros (RFC 9110 section 8.6), as llhttp does.
  while (end - start > 1 && buf[start] === 0x30) start++;
  let n = 0;
  for (let i = start; i < end; i++) {
    const d = buf[i] - 0x30;
    if (d < 0 || d > 9) return -1;
    n = n * 10 + d;
  }
  return end - start > 15 ? -2 : n;
}
