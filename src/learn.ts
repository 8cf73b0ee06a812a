// What a response teaches: its Set-Cookie headers that may set a session
// cookie. The resolver parses them; here only a cheap scan decides whether a
// response needs a learn at all.
import type { Affinity } from './affinity.ts';

/** The Set-Cookie values that may set a session cookie, or null when none do. */
export function sessionSetCookies(headers: readonly string[], affinity: Affinity): string[] | null {
  let found: string[] | null = null;
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i];
    if (name.length === 10 && name.toLowerCase() === 'set-cookie' && affinity.setsSession(headers[i + 1])) {
      (found ??= []).push(headers[i + 1]);
    }
  }
  return found;
}
