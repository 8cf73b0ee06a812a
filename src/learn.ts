// What a response teaches: its Set-Cookie headers that may set a session
// cookie, found by a cheap test of each Set-Cookie line's name. The resolver
// parses them (lifetimes, clearing); a response that sets no session cookie
// costs nothing more.
import { R_SET_COOKIE, type ResponseHead } from './http/response.ts';
import type { SessionCookieNames } from './cookies.ts';

/** The Set-Cookie values that may set a session cookie, or null when none do. */
export function sessionSetCookies(r: ResponseHead, names: SessionCookieNames): string[] | null {
  if (r.setCookies === 0) return null;
  let found: string[] | null = null;
  const buf = r.buf;
  for (let i = 0; i < r.count; i++) {
    if (r.kinds[i] !== R_SET_COOKIE) continue;
    const vs = r.lines[i * 5 + 2];
    const ve = r.lines[i * 5 + 3];
    if (setsName(buf, vs, ve, names) >= 0) (found ??= []).push(buf.toString('latin1', vs, ve));
  }
  return found;
}

/** True when the response sets cookie `name` (the request's session cookie): then the app did not adopt the id it got. */
export function setsCookie(r: ResponseHead, names: SessionCookieNames, index: number): boolean {
  const buf = r.buf;
  for (let i = 0; i < r.count; i++) {
    if (r.kinds[i] === R_SET_COOKIE && setsName(buf, r.lines[i * 5 + 2], r.lines[i * 5 + 3], names) === index) return true;
  }
  return false;
}

/** Index of the configured name a Set-Cookie value sets ("name=" after optional spaces), or -1. */
function setsName(buf: Buffer, vs: number, ve: number, names: SessionCookieNames): number {
  let s = vs;
  while (s < ve && (buf[s] === 32 || buf[s] === 9)) s++;
  for (let n = 0; n < names.bytes.length; n++) {
    const name = names.bytes[n];
    if (ve - s <= name.length) continue;
    let m = 0;
    while (m < name.length && buf[s + m] === name[m]) m++;
    if (m !== name.length) continue;
    let e = s + m;
    while (e < ve && (buf[e] === 32 || buf[e] === 9)) e++;
    if (buf[e] === 61 /* = */) return n;
  }
  return -1;
}
