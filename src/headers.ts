// Header hygiene at the proxy boundary. Headers stay as flat raw
// [name, value, name, value...] lists in their original case and order, so
// repeated headers such as Set-Cookie pass through separately and untouched.
// Hop-by-hop headers, which describe one connection, are dropped; the
// forwarding headers (X-Forwarded-*, Forwarded, Via) are added.

// RFC 9110 section 7.6.1 plus the legacy ones proxies still meet. Expect is
// answered by this proxy's own server (100-continue), so it never travels on.
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect',
]);

const VIA = '1.1 sticky-proxy';

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

/** Response headers for the client: end-to-end ones, plus Via. */
export function responseHeaders(raw: readonly (Buffer | string)[]): string[] {
  const out = endToEnd(rawToStrings(raw));
  appendList(out, 'via', VIA);
  return out;
}

/**
 * Request headers for the backend: end-to-end ones, X-Forwarded-For appended
 * with the client's address, X-Forwarded-Proto (how the client reached us)
 * and -Host set, Via appended, an RFC 7239 Forwarded header when `forwarded`,
 * and Host replaced by `host` unless it is null.
 */
export function requestHeaders(raw: readonly string[], remote: string, proto: string, forwarded: boolean, host: string | null): string[] {
  const out = endToEnd(raw);
  let clientHost = '';
  for (let i = 0; i < out.length; i += 2) {
    const lower = out[i].toLowerCase();
    if (lower === 'host') {
      clientHost = out[i + 1];
      if (host !== null) out[i + 1] = host;
    } else if (lower === 'x-forwarded-proto' || lower === 'x-forwarded-host') {
      // Set by the edge, not trusted from the client.
      out.splice(i, 2);
      i -= 2;
    }
  }
  appendList(out, 'x-forwarded-for', remote);
  out.push('x-forwarded-proto', proto);
  if (clientHost !== '') out.push('x-forwarded-host', clientHost);
  if (forwarded) {
    const node = remote.includes(':') ? `"[${remote}]"` : remote;
    const hostParam = clientHost !== '' ? `;host="${clientHost.replace(/["\\]/g, '')}"` : '';
    appendList(out, 'forwarded', `for=${node};proto=${proto}${hostParam}`);
  }
  appendList(out, 'via', VIA);
  return out;
}

/** Appends to a comma-separated list header (its last line), adding it when absent. */
function appendList(out: string[], lowerName: string, value: string): void {
  for (let i = out.length - 2; i >= 0; i -= 2) {
    if (out[i].length === lowerName.length && out[i].toLowerCase() === lowerName) {
      out[i + 1] = `${out[i + 1]}, ${value}`;
      return;
    }
  }
  out.push(lowerName, value);
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
