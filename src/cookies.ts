// Session ids out of Cookie headers (a byte scan of the request head; a long
// Cookie header without a session cookie name costs one search) and Set-Cookie
// headers (through the `cookie` package, in the resolver). Values are kept
// exactly as on the wire (no URL-decoding), and split and trimmed the same
// way on both sides, so the id read from a request matches the id learnt from
// a response byte for byte.
import { Buffer } from 'node:buffer';
import { parseSetCookie } from 'cookie';

const RAW = { decode: (s: string) => s };

/** The store key of one session: the cookie name and the id as sent. */
export function sessionKey(cookieName: string, id: string): string {
  return `${cookieName}:${id}`;
}

/** The configured session cookie names, ready for scanning request bytes. */
export class SessionCookieNames {
  readonly names: readonly string[];
  readonly bytes: readonly Buffer[];
  /** When a request carries one name twice: false, the first counts (PHP, Express, servlets); true, the last (Django). */
  readonly pickLast: boolean;

  // Per name, "<name>:" followed by room for an id: a key is made with one copy
  // and one decode, a flat string (a template literal makes a cons string, which
  // every later hash and comparison of the key pays to walk).
  readonly #keyBufs: Buffer[];

  constructor(names: readonly string[], pickLast = false) {
    this.names = names;
    this.bytes = names.map((n) => Buffer.from(n, 'latin1'));
    this.pickLast = pickLast;
    this.#keyBufs = names.map((n) => keyBuffer(n, 64));
  }

  /** sessionKey(names[n], id) for the id buf[s, e), as latin1. */
  key(n: number, buf: Buffer, s: number, e: number): string {
    const p = this.bytes[n].length + 1;
    let kb = this.#keyBufs[n];
    if (kb.length < p + e - s) kb = this.#keyBufs[n] = keyBuffer(this.names[n], e - s);
    buf.copy(kb, p, s, e);
    return kb.toString('latin1', 0, p + e - s);
  }
}

function keyBuffer(name: string, idBytes: number): Buffer {
  const b = Buffer.allocUnsafe(name.length + 1 + idBytes);
  b.write(`${name}:`, 'latin1');
  return b;
}

// Per scan, the id range found for each configured name; reused across scans.
let found = new Int32Array(16);

// Above this many Cookie bytes, a request is first searched for the names
// (memchr-fast, in C++) before it is split; below, splitting in JS costs less
// than the calls into C++ that the search takes.
const SEARCH_FIRST = 256;

/**
 * Session ids in Cookie header values buf[starts[k], ends[k]), as store keys
 * in configured order, joined by '\n' (a byte no header value holds); '' when
 * there is none. Pairs are split as the `cookie` package splits them: on ';',
 * at the first '=', trimmed of spaces and tabs, values kept as sent.
 */
export function sessionKeys(buf: Buffer, starts: ArrayLike<number>, ends: ArrayLike<number>, lines: number, names: SessionCookieNames): string {
  const count = names.bytes.length;
  let bytes = 0;
  for (let k = 0; k < lines; k++) bytes += ends[k] - starts[k];
  if (bytes > SEARCH_FIRST && !mentionsAny(buf, starts, ends, lines, names)) return '';
  if (found.length < count * 2) found = new Int32Array(count * 2);
  // A loop, not fill(): TypedArray#fill with a range is a call into V8's C++.
  for (let n = 0; n < count * 2; n++) found[n] = -1;
  let any = false;
  for (let k = 0; k < lines; k++) {
    const end = ends[k];
    let i = starts[k];
    while (i < end) {
      let semi = i;
      while (semi < end && buf[semi] !== 59 /* ; */) semi++;
      let eq = i;
      while (eq < semi && buf[eq] !== 61 /* = */) eq++;
      if (eq < semi) {
        const ns = trimStart(buf, i, eq);
        const ne = trimEnd(buf, ns, eq);
        for (let n = 0; n < count; n++) {
          const name = names.bytes[n];
          if (ne - ns !== name.length || (!names.pickLast && found[n * 2] >= 0)) continue;
          let m = 0;
          while (m < name.length && buf[ns + m] === name[m]) m++;
          if (m !== name.length) continue;
          const vs = trimStart(buf, eq + 1, semi);
          const ve = trimEnd(buf, vs, semi);
          // An empty value carries no session (the cookie package reads it the same way).
          if (ve > vs) { found[n * 2] = vs; found[n * 2 + 1] = ve; any = true; }
          break;
        }
      }
      i = semi + 1;
    }
  }
  if (!any) return '';
  let keys = '';
  for (let n = 0; n < count; n++) {
    if (found[n * 2] < 0) continue;
    const key = names.key(n, buf, found[n * 2], found[n * 2 + 1]);
    keys = keys === '' ? key : `${keys}\n${key}`;
  }
  return keys;
}

/** Whether any configured name occurs in the Cookie values at all. */
function mentionsAny(buf: Buffer, starts: ArrayLike<number>, ends: ArrayLike<number>, lines: number, names: SessionCookieNames): boolean {
  for (let k = 0; k < lines; k++) {
    for (let n = 0; n < names.bytes.length; n++) {
      const at = buf.indexOf(names.bytes[n], starts[k]);
      if (at >= 0 && at < ends[k]) return true;
    }
  }
  return false;
}

function trimStart(buf: Buffer, i: number, end: number): number {
  while (i < end && (buf[i] === 32 || buf[i] === 9)) i++;
  return i;
}

function trimEnd(buf: Buffer, start: number, end: number): number {
  while (end > start && (buf[end - 1] === 32 || buf[end - 1] === 9)) end--;
  return end;
}

/** Store keys of the configured session cookies in a Cookie header string, in configured order. */
export function requestSessionKeys(cookieHeader: string, names: readonly string[]): string[] {
  const b = Buffer.from(cookieHeader, 'latin1');
  const keys = sessionKeys(b, [0], [b.length], 1, new SessionCookieNames(names));
  return keys === '' ? [] : keys.split('\n');
}

/** What a session Set-Cookie asks of the store. */
export interface SessionCookie {
  name: string;
  id: string;
  /** Seconds the binding lives; 0 means the cookie is being cleared. */
  ttl: number;
  /** True for a cookie without an expiry: its binding slides with use. */
  sliding: boolean;
}

export interface TtlRules {
  defaultTtl: number;
  maxTtl: number;
}

/** Told what a response's session Set-Cookie values do: an id bound, or one forgotten. */
export interface LearnSink {
  bindId(key: string, sc: SessionCookie): void;
  unbindId(key: string): void;
}

/**
 * Tells `sink` what one response's session Set-Cookie values (`values`,
 * already picked by name) do: each id set is bound; a clearing cookie
 * forgets the id the client sent (`sent`: the request's '\n'-joined keys;
 * apps clear with an empty value) and the id it names, if another. When one
 * name is set by several values, the last one counts.
 */
export function readSessionSetCookies(values: readonly string[], sent: string, rules: TtlRules, nowMs: number, sink: LearnSink): void {
  if (values.length === 1) {
    // The common case: one session cookie, no Map for it.
    const sc = sessionSetCookie(values[0], null, rules, nowMs);
    if (sc !== null) applySessionCookie(sc, sent, sink);
    return;
  }
  const last = new Map<string, SessionCookie>();
  for (const value of values) {
    const sc = sessionSetCookie(value, null, rules, nowMs);
    if (sc !== null) last.set(sc.name, sc);
  }
  for (const sc of last.values()) applySessionCookie(sc, sent, sink);
}

function applySessionCookie(sc: SessionCookie, sent: string, sink: LearnSink): void {
  if (sc.ttl > 0) {
    sink.bindId(sessionKey(sc.name, sc.id), sc);
    return;
  }
  const sentKey = keyFor(sent, sc.name);
  if (sentKey !== '') sink.unbindId(sentKey);
  const named = sc.id === '' ? '' : sessionKey(sc.name, sc.id);
  if (named !== '' && named !== sentKey) sink.unbindId(named);
}

/** The key for cookie `name` among '\n'-joined keys, or ''. */
function keyFor(keys: string, name: string): string {
  if (keys === '') return '';
  for (const k of keys.split('\n')) if (k.startsWith(name) && k.charCodeAt(name.length) === 58) return k;
  return '';
}

/**
 * Reads one Set-Cookie value. Returns null when it sets no configured session
 * cookie (`names` null: the caller picked the value by name already). Max-Age wins over Expires; no expiry means a sliding default TTL;
 * a lifetime beyond maxTtl slides at maxTtl; Max-Age<=0 or a past Expires clears.
 */
export function sessionSetCookie(value: string, names: readonly string[] | null, rules: TtlRules, nowMs: number): SessionCookie | null {
  const sc = parseSetCookie(value, RAW);
  if (names !== null && !names.includes(sc.name)) return null;
  const id = sc.value ?? '';
  let ttl: number;
  let sliding = false;
  if (sc.maxAge !== undefined) {
    ttl = sc.maxAge;
  } else if (sc.expires !== undefined) {
    ttl = Math.ceil((sc.expires.getTime() - nowMs) / 1000);
  } else {
    ttl = rules.defaultTtl;
    sliding = true;
  }
  if (ttl <= 0 || id === '') return { name: sc.name, id, ttl: 0, sliding: false };
  // A cookie that outlives the cap keeps its binding while it is used: the
  // binding slides at the cap (refreshed on use), so an active session keeps
  // its backend for as long as its cookie lives, and an idle one expires at the cap.
  if (ttl > rules.maxTtl) return { name: sc.name, id, ttl: rules.maxTtl, sliding: true };
  return { name: sc.name, id, ttl, sliding };
}
