// The admin listener: a status page, metrics, liveness and readiness, the
// backends and their state, drain/disable/enable and runtime weights. Bound to
// loopback unless told otherwise; with --admin-token, everything but the
// probes needs the bearer token. A bad request gets its 4xx and never reaches
// past its own handler: one bad admin request must not take traffic down.
import { Buffer } from 'node:buffer';
import { createServer, type IncomingMessage, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AdminState, Backend, BackendSet } from './backends.ts';
import { MAX_WEIGHT } from './flags.ts';
import type { Logger } from './log.ts';
import { lookupsFromMetrics, renderStatusPage, type BackendView } from './status-page.ts';
import { VERSION } from './version.ts';

export interface AdminDeps {
  backends: BackendSet;
  /** The Prometheus text of the whole process. */
  metrics: () => Promise<{ contentType: string; text: string }>;
  /** True once the proxy listens. */
  listening: () => boolean;
  /** Said by /readyz beside `ready`, which it does not change. */
  affinity: () => AffinityReadiness;
  log: Logger;
  /** The bearer token every endpoint but /healthz and /readyz needs; null: none. */
  token: string | null;
  /** Names the API may be reached by besides IP addresses and localhost (--admin-host), lower-cased. */
  hosts: readonly string[];
}

/** `degraded` while a memcached server is down: affinity is partial, the proxy still serves. */
export interface AffinityReadiness {
  affinity: 'ok' | 'degraded' | 'off';
  /** Each memcached server, true while it answers. */
  store?: Record<string, boolean>;
}

const ACTIONS: Record<string, AdminState> = { drain: 'draining', disable: 'disabled', enable: 'enabled' };
const BACKEND_ACTION = /^\/backends\/([^/]+)\/(drain|disable|enable|weight)$/;
/** The weight endpoint's body is `{"weight": N}`: anything much longer is not one. */
const BODY_LIMIT = 4096;
/** A slow client cannot hold an admin connection past this. */
const REQUEST_TIMEOUT_MS = 10_000;
const PAGE_REFRESH_S = 5;
const CROSS_SITE = 'cross-site request refused: send Content-Type: application/json, an X-Requested-With header (any value) or an Authorization header';
// The page loads nothing and runs nothing; it may not be framed (clickjacking).
const PAGE_HEADERS: OutgoingHttpHeaders = {
  'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
};

/** An answer other than 200, thrown from anywhere in a handler. */
class HttpError extends Error {
  readonly status: number;
  readonly headers: OutgoingHttpHeaders;
  constructor(status: number, message: string, headers: OutgoingHttpHeaders = {}) {
    super(message);
    this.status = status;
    this.headers = headers;
  }
}

function send(res: ServerResponse, status: number, body: unknown, type = 'application/json', headers: OutgoingHttpHeaders = {}): void {
  const text = typeof body === 'string' ? body : `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, { ...headers, 'content-type': type, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function view(b: Backend): BackendView {
  return { name: b.name, url: b.url.origin, weight: b.weight, state: b.state, active: b.activeEverywhere };
}

/**
 * Whether a request shows the bearer token. Both sides are hashed first, so
 * timingSafeEqual compares equal lengths and the time taken says nothing of
 * the token, not even its length.
 */
function bearerCheck(token: string): (req: IncomingMessage) => boolean {
  // node:crypto is loaded only when a token is configured, as for TLS.
  const { createHash, timingSafeEqual } = process.getBuiltinModule('node:crypto');
  const digest = (s: string): Buffer => createHash('sha256').update(s).digest();
  const want = digest(token);
  return (req) => {
    const m = /^Bearer +(\S+) *$/i.exec(req.headers.authorization ?? '');
    return m !== null && timingSafeEqual(digest(m[1]), want);
  };
}

/**
 * A page on another site can make a browser POST here without asking first
 * (no CORS preflight) only with "simple" headers: no Authorization, no
 * X-Requested-With, and a form's or text/plain Content-Type. Requiring one of
 * those leaves such a request nothing it can send that is accepted.
 */
function notCrossSite(req: IncomingMessage): boolean {
  const h = req.headers;
  if (h.authorization !== undefined || h['x-requested-with'] !== undefined) return true;
  return (h['content-type'] ?? '').split(';')[0].trim().toLowerCase() === 'application/json';
}

/**
 * DNS rebinding: a page from evil.example re-resolves its own name to
 * 127.0.0.1 and is then same-origin with the admin API, so the cross-site rule
 * cannot stop it; but its requests still say `Host: evil.example`. An IP
 * address or localhost cannot be rebound; other names must be listed.
 */
function knownHost(req: IncomingMessage, hosts: readonly string[]): boolean {
  const h = (req.headers.host ?? '').toLowerCase();
  const name = h.startsWith('[') ? h.slice(0, h.indexOf(']') + 1) : h.replace(/:\d*$/, '');
  if (name === '' || name === 'localhost' || name.startsWith('[') || /^[0-9.]+$/.test(name)) return true;
  return hosts.includes(name.endsWith('.') ? name.slice(0, -1) : name);
}

/** The request body as text, up to `limit` bytes (413 beyond). */
function readBody(req: IncomingMessage, limit: number): Promise<string> {
  if (Number(req.headers['content-length'] ?? 0) > limit) return Promise.reject(new HttpError(413, `body over ${limit} bytes`));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) reject(new HttpError(413, `body over ${limit} bytes`));
      else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** `{"weight": N}` with N a whole number from 0 to MAX_WEIGHT; 400 naming what is wrong. */
function parseWeight(body: string): number {
  let doc: unknown;
  try {
    doc = JSON.parse(body);
  } catch (err) {
    throw new HttpError(400, `body is not JSON (${(err as Error).message}); send {"weight": N}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new HttpError(400, 'expected a JSON object: {"weight": N}');
  const extra = Object.keys(doc).find((k) => k !== 'weight');
  if (extra !== undefined) throw new HttpError(400, `unknown field ${JSON.stringify(extra)}; send {"weight": N}`);
  if (!('weight' in doc)) throw new HttpError(400, 'missing field "weight"; send {"weight": N}');
  const w = doc.weight;
  if (typeof w !== 'number' || !Number.isInteger(w) || w < 0 || w > MAX_WEIGHT) {
    throw new HttpError(400, `weight must be a whole number from 0 to ${MAX_WEIGHT}, got ${JSON.stringify(w)}`);
  }
  return w;
}

export function createAdmin(deps: AdminDeps): Server {
  const authorized = deps.token === null ? null : bearerCheck(deps.token);

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let path: string;
    try {
      path = new URL(req.url ?? '/', 'http://admin').pathname;
    } catch {
      throw new HttpError(400, 'malformed request-target');
    }
    const get = req.method === 'GET' || req.method === 'HEAD';
    // The probes stay open: a load balancer or an orchestrator asks them without a token.
    if (get && path === '/healthz') return send(res, 200, { status: 'ok' });
    if (get && path === '/readyz') {
      const ready = deps.listening() && deps.backends.list.some((b) => b.up);
      return send(res, ready ? 200 : 503, { ready, ...deps.affinity() });
    }
    const bearer = authorized !== null && authorized(req);
    if (!bearer && !knownHost(req, deps.hosts)) {
      throw new HttpError(421, `Host ${JSON.stringify(req.headers.host)} is not an address, localhost or an --admin-host name`);
    }
    if (authorized !== null && !bearer) {
      const error = req.headers.authorization === undefined ? '' : ', error="invalid_token"';
      throw new HttpError(401, 'needs Authorization: Bearer TOKEN (--admin-token)', { 'www-authenticate': `Bearer realm="sticky-proxy admin"${error}` });
    }
    if (req.method === 'POST' && !notCrossSite(req)) throw new HttpError(403, CROSS_SITE);
    if (get && path === '/') {
      const readiness = deps.affinity();
      const page = renderStatusPage({
        backends: deps.backends.list.map(view),
        lookups: readiness.affinity === 'off' ? null : lookupsFromMetrics((await deps.metrics()).text),
        affinity: readiness.affinity,
        store: readiness.store,
        version: VERSION,
        refreshSeconds: PAGE_REFRESH_S,
      });
      return send(res, 200, page, 'text/html; charset=utf-8', PAGE_HEADERS);
    }
    if (get && path === '/metrics') {
      const m = await deps.metrics();
      return send(res, 200, m.text, m.contentType);
    }
    if (get && path === '/backends') return send(res, 200, deps.backends.list.map(view));
    const m = BACKEND_ACTION.exec(path);
    if (m === null) throw new HttpError(404, 'not found');
    if (req.method !== 'POST') throw new HttpError(405, 'use POST', { allow: 'POST' });
    let name: string;
    try {
      name = decodeURIComponent(m[1]);
    } catch {
      throw new HttpError(400, `malformed percent-encoding in backend name ${JSON.stringify(m[1])}`);
    }
    const b = deps.backends.get(name);
    if (b === undefined) throw new HttpError(404, `no backend named ${JSON.stringify(name)}`);
    if (m[2] === 'weight') {
      const weight = parseWeight(await readBody(req, BODY_LIMIT));
      if (weight === 0 && deps.backends.list.every((o) => o === b || o.weight === 0)) {
        throw new HttpError(409, 'at least one backend needs a weight above 0');
      }
      const was = b.weight;
      b.weight = weight; // shared: every event loop's balancer sees it at its next pick
      deps.log.info({ backend: b.name, weight, was }, 'backend weight set');
      return send(res, 200, view(b));
    }
    b.admin = ACTIONS[m[2]]; // shared: every event loop sees it at once
    deps.log.info({ backend: b.name, state: b.state }, `backend ${m[2]}`);
    return send(res, 200, { name: b.name, state: b.state });
  }

  // A body no handler reads is discarded by node:http once the answer is sent.
  return createServer({ requestTimeout: REQUEST_TIMEOUT_MS }, (req: IncomingMessage, res: ServerResponse) => {
    handle(req, res).catch((err: unknown) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      if (err instanceof HttpError) {
        // No Connection: close, even for a 413: closing on a client still sending its body would reset
        // the connection under the answer; node:http reads and drops the rest (bounded by REQUEST_TIMEOUT_MS).
        send(res, err.status, { error: err.message }, 'application/json', err.headers);
        return;
      }
      deps.log.error({ err: (err as Error).message, path: req.url }, 'admin request failed');
      send(res, 500, { error: 'internal error' });
    });
  });
}
