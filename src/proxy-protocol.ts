// The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2)
// that an L4 balancer sends first on each connection, carrying the address of
// the client it accepted (--accept-proxy). Both versions are taken, told
// apart by their first byte. Pure and incremental: the caller hands in what
// it has received so far and learns whether the header is complete, needs
// more bytes, or is malformed; no regular expression, no allocation but the
// address text of a complete header.

/** Most bytes of a version 1 header, CRLF included (the specification's bound). */
export const V1_MAX = 107;
/** Most bytes of a version 2 header's address block and TLVs: a few KB, whatever the length field claims. */
export const V2_MAX_LENGTH = 4096;

/** parseProxyHeader's answer when the header is not complete yet. */
export const PP_MORE = 0;
// Its answers (negative) when the bytes are not a PROXY header.
export const PP_NOT_PROXY = -1;
export const PP_BAD_V1 = -2;
export const PP_BAD_V2 = -3;
export const PP_TOO_LONG = -4;

/** Why a header was refused, by the negated answer: the reason logged. */
export const PP_REASONS = ['', 'no PROXY header', 'malformed PROXY v1 header', 'malformed PROXY v2 header', 'PROXY header too long'];

/** What a complete header says; one per connection, filled by parseProxyHeader. */
export class ProxyHeader {
  /** 1 or 2. */
  version = 0;
  /**
   * The client's address as text (IPv6 in its RFC 5952 form), or '' when the
   * header carries none to use: a v2 LOCAL command (the balancer's own health
   * check), UNKNOWN, UNSPEC or a UNIX socket. The socket's own address stands then.
   */
  address = '';
  port = 0;
}

// Version 2's fixed 12-byte signature.
const V2_SIGNATURE = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
const V1_PREFIX = [0x50, 0x52, 0x4f, 0x58, 0x59, 0x20]; // "PROXY "

// Byte classes of version 1's fields.
const DIGIT = 1;
const HEX = 2;
const CLASS = new Uint8Array(256);
for (let c = 0x30; c <= 0x39; c++) CLASS[c] = DIGIT | HEX;
for (let c = 0x41; c <= 0x46; c++) CLASS[c] = HEX;
for (let c = 0x61; c <= 0x66; c++) CLASS[c] = HEX;

// Reused between headers: the 16 bytes of the address being read.
const ADDR = new Uint8Array(16);

/**
 * Reads a PROXY header from buf[start, end). Returns the header's length once
 * it is complete (`out` filled), PP_MORE while it may still be one, or a
 * negative PP_* code as soon as it cannot be one (or exceeds its bound).
 */
export function parseProxyHeader(buf: Uint8Array, start: number, end: number, out: ProxyHeader): number {
  if (end <= start) return PP_MORE;
  const first = buf[start];
  if (first === 0x50) return parseV1(buf, start, end, out);
  if (first === 0x0d) return parseV2(buf, start, end, out);
  return PP_NOT_PROXY;
}

function parseV1(buf: Uint8Array, start: number, end: number, out: ProxyHeader): number {
  const n = end - start;
  // The prefix is checked as it arrives, so garbage fails at once.
  for (let i = 0; i < V1_PREFIX.length && i < n; i++) if (buf[start + i] !== V1_PREFIX[i]) return PP_NOT_PROXY;
  const limit = start + Math.min(n, V1_MAX);
  let lf = -1;
  for (let i = start + V1_PREFIX.length; i < limit; i++) {
    if (buf[i] === 0x0a) { lf = i; break; }
  }
  if (lf < 0) return n >= V1_MAX ? PP_TOO_LONG : PP_MORE;
  if (buf[lf - 1] !== 0x0d) return PP_BAD_V1;
  const lineEnd = lf - 1;
  let p = start + V1_PREFIX.length;
  // "TCP4 " | "TCP6 " | "UNKNOWN"
  if (match(buf, p, lineEnd, 'UNKNOWN') && (p + 7 === lineEnd || buf[p + 7] === 0x20)) {
    // Whatever follows UNKNOWN is to be ignored; the socket's address stands.
    out.version = 1;
    out.address = '';
    out.port = 0;
    return lf + 1 - start;
  }
  let family: number;
  if (match(buf, p, lineEnd, 'TCP4 ')) family = 4;
  else if (match(buf, p, lineEnd, 'TCP6 ')) family = 6;
  else return PP_BAD_V1;
  p += 5;
  const srcStart = p;
  const srcEnd = field(buf, p, lineEnd);
  if (srcEnd < 0 || !(family === 4 ? ipv4Text(buf, srcStart, srcEnd) : ipv6Text(buf, srcStart, srcEnd))) return PP_BAD_V1;
  p = srcEnd + 1;
  const dstEnd = field(buf, p, lineEnd);
  // The destination is checked too: a header that is wrong anywhere is refused.
  if (dstEnd < 0 || !(family === 4 ? ipv4Text(buf, p, dstEnd) : ipv6Text(buf, p, dstEnd))) return PP_BAD_V1;
  p = dstEnd + 1;
  const sportEnd = field(buf, p, lineEnd);
  const sport = sportEnd < 0 ? -1 : portText(buf, p, sportEnd);
  if (sport < 0) return PP_BAD_V1;
  p = sportEnd + 1;
  if (portText(buf, p, lineEnd) < 0) return PP_BAD_V1;
  // The source address, parsed again now that the destination no longer needs ADDR.
  if (family === 4) ipv4Text(buf, srcStart, srcEnd);
  else ipv6Text(buf, srcStart, srcEnd);
  out.version = 1;
  out.address = family === 4 ? ipv4String(ADDR) : ipv6String(ADDR);
  out.port = sport;
  return lf + 1 - start;
}

/** True when buf[p, end) starts with the ASCII text `s`. */
function match(buf: Uint8Array, p: number, end: number, s: string): boolean {
  if (end - p < s.length) return false;
  for (let i = 0; i < s.length; i++) if (buf[p + i] !== s.charCodeAt(i)) return false;
  return true;
}

/** The end of a space-terminated field starting at p (not empty), or -1. */
function field(buf: Uint8Array, p: number, end: number): number {
  let i = p;
  while (i < end && buf[i] !== 0x20) i++;
  return i === p || i >= end ? -1 : i;
}

/** A decimal port 0-65535 in buf[p, end), no sign, no leading zero; -1 if not. */
function portText(buf: Uint8Array, p: number, end: number): number {
  const len = end - p;
  if (len < 1 || len > 5 || (len > 1 && buf[p] === 0x30)) return -1;
  let v = 0;
  for (let i = p; i < end; i++) {
    if ((CLASS[buf[i]] & DIGIT) === 0) return -1;
    v = v * 10 + buf[i] - 0x30;
  }
  return v <= 65535 ? v : -1;
}

/** Dotted-quad IPv4 (no leading zeros) from buf[p, end) into ADDR[at..at+4); false if not one. */
function ipv4Text(buf: Uint8Array, p: number, end: number, at = 0): boolean {
  let octet = 0;
  let digits = 0;
  let v = 0;
  for (let i = p; i < end; i++) {
    const c = buf[i];
    if (c === 0x2e) {
      if (digits === 0 || octet === 3) return false;
      ADDR[at + octet++] = v;
      v = 0;
      digits = 0;
    } else if ((CLASS[c] & DIGIT) !== 0) {
      if (digits > 0 && v === 0) return false; // a leading zero: octal to some parsers, refused
      v = v * 10 + c - 0x30;
      if (++digits > 3 || v > 255) return false;
    } else {
      return false;
    }
  }
  if (digits === 0 || octet !== 3) return false;
  ADDR[at + 3] = v;
  return true;
}

/** Textual IPv6 (RFC 4291 section 2.2, with an optional dotted IPv4 tail) from buf[p, end) into ADDR; false if not one. */
function ipv6Text(buf: Uint8Array, p: number, end: number): boolean {
  if (end - p < 2 || end - p > 45) return false;
  let groups = 0; // 16-bit groups written
  let gap = -1; // the group index where "::" stands
  let i = p;
  if (buf[i] === 0x3a) {
    if (buf[i + 1] !== 0x3a) return false;
    gap = 0;
    i += 2;
    if (i === end) { ADDR.fill(0); return true; }
  }
  for (;;) {
    // One group: 1-4 hex digits, or a dotted IPv4 as the last two groups.
    const gs = i;
    let v = 0;
    while (i < end && i - gs < 5 && (CLASS[buf[i]] & HEX) !== 0) {
      v = (v << 4) | hexValue(buf[i]);
      i++;
    }
    if (i < end && buf[i] === 0x2e) {
      if (groups > 6 || !ipv4Text(buf, gs, end, groups * 2)) return false;
      groups += 2;
      i = end;
      break;
    }
    if (i === gs || i - gs > 4 || groups === 8) return false;
    ADDR[groups * 2] = v >> 8;
    ADDR[groups * 2 + 1] = v & 0xff;
    groups++;
    if (i === end) break;
    if (buf[i] !== 0x3a) return false;
    i++;
    if (i < end && buf[i] === 0x3a) {
      if (gap >= 0) return false; // "::" twice
      gap = groups;
      i++;
      if (i === end) break;
    } else if (i === end) {
      return false; // a trailing single colon
    }
  }
  if (gap < 0) return groups === 8;
  if (groups > 7) return false; // "::" must stand for at least one group
  // Shift the groups after the gap to the end, zeros between.
  const tail = (groups - gap) * 2;
  for (let k = 0; k < tail; k++) ADDR[15 - k] = ADDR[gap * 2 + tail - 1 - k];
  for (let k = gap * 2; k < 16 - tail; k++) ADDR[k] = 0;
  return true;
}

function hexValue(c: number): number {
  return c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x57;
}

function parseV2(buf: Uint8Array, start: number, end: number, out: ProxyHeader): number {
  const n = end - start;
  for (let i = 0; i < V2_SIGNATURE.length && i < n; i++) if (buf[start + i] !== V2_SIGNATURE[i]) return PP_NOT_PROXY;
  if (n < 16) return PP_MORE;
  const verCmd = buf[start + 12];
  const fam = buf[start + 13];
  const length = (buf[start + 14] << 8) | buf[start + 15];
  if (verCmd >> 4 !== 2) return PP_BAD_V2;
  const command = verCmd & 0x0f;
  if (command > 1) return PP_BAD_V2;
  if (length > V2_MAX_LENGTH) return PP_TOO_LONG;
  // The address block each family needs: IPv4 12 bytes, IPv6 36, UNIX 216.
  const family = fam >> 4;
  const transport = fam & 0x0f;
  if (family > 3 || transport > 2 || (family === 0) !== (transport === 0)) return PP_BAD_V2;
  const need = family === 1 ? 12 : family === 2 ? 36 : family === 3 ? 216 : 0;
  if (length < need) return PP_BAD_V2;
  if (n < 16 + length) return PP_MORE;
  // TLVs (type, 16-bit length, value) must exactly fill what follows the addresses.
  let t = start + 16 + need;
  const blockEnd = start + 16 + length;
  while (t < blockEnd) {
    if (blockEnd - t < 3) return PP_BAD_V2;
    t += 3 + ((buf[t + 1] << 8) | buf[t + 2]);
  }
  if (t !== blockEnd) return PP_BAD_V2;
  out.version = 2;
  out.address = '';
  out.port = 0;
  // LOCAL (the balancer's own connection, a health check) and UNSPEC or UNIX keep the socket's address.
  if (command === 1 && (family === 1 || family === 2)) {
    const a = start + 16;
    if (family === 1) {
      for (let k = 0; k < 4; k++) ADDR[k] = buf[a + k];
      out.address = ipv4String(ADDR);
      out.port = (buf[a + 8] << 8) | buf[a + 9];
    } else {
      for (let k = 0; k < 16; k++) ADDR[k] = buf[a + k];
      out.address = ipv6String(ADDR);
      out.port = (buf[a + 32] << 8) | buf[a + 33];
    }
  }
  return 16 + length;
}

function ipv4String(a: Uint8Array): string {
  return `${a[0]}.${a[1]}.${a[2]}.${a[3]}`;
}

/**
 * RFC 5952: lower case, no leading zeros, the longest run (2+) of zero groups
 * as "::", the first if tied; the last 32 bits dotted where Node (libuv's
 * inet_ntop) writes them so, for a socket's own address: one client reads the
 * same whether it connected directly or through the balancer.
 */
function ipv6String(a: Uint8Array): string {
  let bestAt = -1;
  let bestLen = 1;
  for (let g = 0; g < 8;) {
    if (a[g * 2] !== 0 || a[g * 2 + 1] !== 0) { g++; continue; }
    let e = g;
    while (e < 8 && a[e * 2] === 0 && a[e * 2 + 1] === 0) e++;
    if (e - g > bestLen) { bestAt = g; bestLen = e - g; }
    g = e;
  }
  let s = '';
  for (let g = 0; g < 8; g++) {
    if (g === bestAt) {
      s += g === 0 ? '::' : ':';
      g += bestLen - 1;
      continue;
    }
    s += ((a[g * 2] << 8) | a[g * 2 + 1]).toString(16);
    if (g < 7) s += ':';
  }
  // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d, its seventh group not zero) addresses.
  if (bestAt === 0 && bestLen === 5 && a[10] === 0xff && a[11] === 0xff) return `::ffff:${a[12]}.${a[13]}.${a[14]}.${a[15]}`;
  if (bestAt === 0 && bestLen === 6) return `::${a[12]}.${a[13]}.${a[14]}.${a[15]}`;
  return s;
}
