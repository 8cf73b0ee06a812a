// Session ids out of Cookie and Set-Cookie headers, through the `cookie`
// package. Values are kept exactly as on the wire (no URL-decoding), so the id
// read from a request matches the id learnt from a response byte for byte.
import { parseCookie, parseSetCookie } from 'cookie';

const RAW = { decode: (s: string) => s };

/** The store key of one session: the cookie name and the id as sent. */
export function sessionKey(cookieName: string, id: string): string {
  return `${cookieName}:${id}`;
}

/** Store keys of the configured session cookies present in a Cookie header, in configured order. */
export function requestSessionKeys(cookieHeader: string, names: readonly string[]): string[] {
  const out: string[] = [];
  if (cookieHeader === '') return out;
  const jar = parseCookie(cookieHeader, RAW);
  for (const name of names) {
    const id = jar[name];
    if (id) out.push(sessionKey(name, id));
  }
  return out;
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

/**
 * Reads one Set-Cookie value. Returns null when it sets no configured session
 * cookie. Max-Age wins over Expires; no expiry means a sliding default TTL;
 * everything is capped by maxTtl; Max-Age<=0 or a past Expires clears.
 */
export function sessionSetCookie(value: string, names: readonly string[], rules: TtlRules, nowMs: number): SessionCookie | null {
  const sc = parseSetCookie(value, RAW);
  if (!names.includes(sc.name)) return null;
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
  return { name: sc.name, id, ttl: Math.min(ttl, rules.maxTtl), sliding };
}
