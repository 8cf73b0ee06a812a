// Header hygiene at the proxy boundary. Headers stay as flat raw
// [name, value, name, value...] lists in their original case and order, so
// repeated headers such as Set-Cookie pass through separately and untouched;
// only hop-by-hop headers, which describe one connection, are dropped.

// RFC 9110 section 7.6.1 plus the legacy ones proxies still meet. Expect is
// answered by this proxy's own server (100-continue), so it never travels on.
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect',
]);

/** Lower-cased names listed in Connection headers: hop-by-hop too. */
function connectionTokens(raw: readonly string[]): string[] | null {
  let tokens: string[] | null = null;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i].length === 10 && raw[i].toLowerCase() === 'connection') {
      for (const t of raw[i + 1].split(',')) {
        const name = t.trim().toLowerCase();
        if (name !== '') (tokens ??= []).push(name);
      }
    }
  }
  return tokens;
}

/** The end-to-end headers of a flat raw list. */
export function endToEnd(raw: readonly string[]): string[] {
  const named = connectionTokens(raw);
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i].toLowerCase();
    if (HOP_BY_HOP.has(lower) || (named !== null && named.includes(lower))) continue;
    out.push(raw[i], raw[i + 1]);
  }
  return out;
}

/** undici hands response headers over as Buffers; HTTP header bytes are latin1. */
export function rawToStrings(raw: readonly (Buffer | string)[]): string[] {
  const out = new Array<string>(raw.length);
  for (let i = 0; i < raw.length; i++) {
    const v = raw[i];
    out[i] = typeof v === 'string' ? v : v.toString('latin1');
  }
  return out;
}
