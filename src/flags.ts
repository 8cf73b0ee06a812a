// Every flag, once: its kind (type, range, allowed values), default, whether
// it repeats, whether SIGHUP applies it, its section and its text. The parser,
// the --config file's schema (sticky-proxy.schema.json), --help and the
// README's flag tables are all generated from this table (src/flag-kit.ts);
// src/config.ts turns the values into the Config and checks what spans flags.
// Adding a flag is one entry here, then `npm run generate`.
import { isIP } from 'node:net';
import type { BackendConfig } from './config.ts';
import { ConfigError, hostPort, hostPortList, int, many, one, oneOf, opt, path, sw, text, type Kind, type Values } from './flag-kit.ts';
import { MAX_BACKENDS } from './shared.ts';

const BACKEND_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
/** The highest --backend weight, which the admin API's weight endpoint also takes. */
export const MAX_WEIGHT = 1000;

/** NAME=URL[,weight=N]: a backend's name (what memcached stores), its origin and its weight. */
function backend(): Kind<BackendConfig> {
  return {
    expect: 'NAME=URL[,weight=N]', arg: 'NAME=URL[,weight=N]',
    schema: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,64}=https?://' },
    parse(raw, flag) {
      const eq = raw.indexOf('=');
      if (eq <= 0) throw new ConfigError(flag, `expected NAME=URL[,weight=N], got "${raw}"`);
      const name = raw.slice(0, eq);
      if (!BACKEND_NAME.test(name)) throw new ConfigError(flag, `invalid name "${name}" (letters, digits, _ . - ; at most 64)`);
      const [urlText, ...opts] = raw.slice(eq + 1).split(',');
      let url: URL;
      try {
        url = new URL(urlText);
      } catch {
        throw new ConfigError(flag, `invalid URL "${urlText}" for ${name}`);
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError(flag, `URL of ${name} must be http:// or https://`);
      if (url.pathname !== '/' || url.search || url.hash || url.username) throw new ConfigError(flag, `URL of ${name} must be an origin (scheme://host:port), got "${urlText}"`);
      let weight = 1;
      for (const o of opts) {
        const m = /^weight=(.*)$/.exec(o);
        if (!m) throw new ConfigError(flag, `unknown option "${o}" for ${name} (only weight=N)`);
        weight = Number(m[1]);
        if (!/^\d+$/.test(m[1]) || weight > MAX_WEIGHT) throw new ConfigError(flag, `weight of ${name} must be a whole number from 0 to ${MAX_WEIGHT}, got "${m[1]}"`);
      }
      return { name, url, weight };
    },
  };
}

// RFC 6750 b64token: what an Authorization: Bearer header can carry.
const BEARER_TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;
const BEARER_EXPECT = 'a bearer token (letters, digits, - . _ ~ + /, then optional =)';

/** A bearer token; unlike text(), a bad one is not echoed: it is a secret, or nearly one. */
export function bearerToken(): Kind<string> {
  return {
    expect: BEARER_EXPECT, arg: 'TOKEN',
    schema: { type: 'string', pattern: BEARER_TOKEN.source },
    parse(raw, flag) {
      if (!BEARER_TOKEN.test(raw)) throw new ConfigError(flag, `expected ${BEARER_EXPECT}`);
      return raw;
    },
  };
}
/** An IPv4 or IPv6 address, or a CIDR block of either: what BlockList takes (a text as written; src/config.ts builds the list). */
function cidr(): Kind<string> {
  const expect = 'an IPv4 or IPv6 address or CIDR block (10.0.0.0/8, 2001:db8::/32)';
  return {
    expect, arg: 'CIDR',
    schema: { type: 'string', pattern: '^[0-9A-Fa-f.:]+(?:/[0-9]{1,3})?$' },
    parse(raw, flag) {
      const slash = raw.indexOf('/');
      const address = slash < 0 ? raw : raw.slice(0, slash);
      const family = isIP(address);
      const prefix = slash < 0 ? null : raw.slice(slash + 1);
      if (family === 0 || (prefix !== null && (!/^\d{1,3}$/.test(prefix) || Number(prefix) > (family === 4 ? 32 : 128)))) {
        throw new ConfigError(flag, `expected ${expect}, got "${raw}"`);
      }
      return raw;
    },
  };
}

// The headers the proxy writes, drops or acts on itself: a request id under one of these names would clash with them.
const PROXY_HEADERS = new Set([
  'host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'expect',
  'cookie', 'user-agent', 'via', 'forwarded', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'proxy-authenticate', 'proxy-authorization',
]);

/** A header name (an RFC 9110 token) the proxy does not otherwise handle, or "" for none. */
function requestIdHeader(): Kind<string> {
  const expect = 'a header name (letters, digits and !#$%&\'*+-.^_`|~; at most 64), or "" for none';
  return {
    expect, arg: 'NAME',
    schema: { type: 'string', pattern: '^[!#$%&\'*+\\-.^_`|~0-9A-Za-z]{0,64}$' },
    parse(raw, flag) {
      if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]{0,64}$/.test(raw)) throw new ConfigError(flag, `expected ${expect}, got "${raw}"`);
      if (PROXY_HEADERS.has(raw.toLowerCase().replace(/_/g, '-'))) throw new ConfigError(flag, `"${raw}" is a header the proxy sets or acts on itself`);
      return raw;
    },
  };
}

// RFC 6265 token characters: what a cookie name may be.
const COOKIE_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const DAY = 86400;
const HOUR_MS = 3_600_000;

export const FLAGS = {
  // Routing and affinity
  listen: one(hostPort({ listen: true }), {
    section: 'Routing and affinity', default: '127.0.0.1:8080',
    help: 'where clients connect (`[::1]:8080` for IPv6; port 0 picks a free one)',
  }),
  backend: many(backend(), {
    section: 'Routing and affinity', default: [], shownDefault: 'demo', reload: true,
    help: 'a backend. NAME is `[A-Za-z0-9_.-]{1,64}` and is what memcached stores; URL is an origin (`http://host:port` or `https://…`); weight 0–1000, default 1. Weight 0 serves only sessions already bound to it. At most ' + MAX_BACKENDS + ' backends. With no backend, the demo starts: two session origins behind the proxy.',
  }),
  'session-cookie': many(text('NAME', COOKIE_NAME, 'a cookie name (RFC 6265 token)'), {
    section: 'Routing and affinity', default: ['connect.sid', 'PHPSESSID', 'JSESSIONID', 'ASP.NET_SessionId', 'sessionid'], reload: true,
    help: 'a session cookie to stick on; the first bound one in this order wins. The defaults cover Express (`connect.sid`), PHP, Java servlets (Tomcat, Jetty), ASP.NET and Django (`sessionid`); name others, such as `laravel_session` or `ci_session`, with this flag',
  }),
  'no-affinity': sw({
    section: 'Routing and affinity',
    help: 'plain load balancing: no lookups, no learning, no workers',
  }),
  memcache: opt(hostPortList(), {
    section: 'Routing and affinity', shownDefault: 'none: embedded store',
    help: 'memcached servers holding the bindings, consistent-hashed; without it the embedded store, local to this process, is used',
  }),
  threads: one(int(0, 64), {
    section: 'Routing and affinity', default: 0, shownDefault: 'the cores this process may use',
    help: 'event loops, each running the whole request path on its own connections, all listening on `--listen` (SO_REUSEPORT); the first is the main thread, the others worker threads. `0`: as many as the cores this process may use (its CPU affinity and cgroup quota). See [Threads](#threads)',
  }),
  workers: one(int(0, 256), {
    section: 'Routing and affinity', default: 0,
    help: 'affinity worker threads per event loop; `0` runs affinity on the event loop itself (the fastest here, see [Benchmarks](#benchmarks)). Routing is identical for any N.',
  }),
  'batch-max': one(int(1, 65536), {
    section: 'Routing and affinity', default: 256,
    help: 'most lookups + learns in one batch to the resolver',
  }),
  balance: one(oneOf(['round-robin', 'least-conn', 'random-two']), {
    section: 'Routing and affinity', default: 'round-robin',
    help: 'how requests without a bound session are spread (`round-robin` is smooth weighted)',
  }),
  'default-ttl': one(int(1, 365 * DAY, 'SECONDS'), {
    section: 'Routing and affinity', default: 1800,
    help: 'lifetime of a binding whose cookie has no expiry; sliding with use',
  }),
  'max-ttl': one(int(1, 365 * DAY, 'SECONDS'), {
    section: 'Routing and affinity', default: DAY,
    help: 'cap on every binding\'s lifetime',
  }),
  'key-prefix': one(text('STR', /^[\x21-\x7e]{0,64}$/, 'at most 64 printable ASCII characters without spaces'), {
    section: 'Routing and affinity', default: 'sp:',
    help: 'namespace of the keys in memcached',
  }),
  'store-timeout': one(int(1, 60_000, 'MS'), {
    section: 'Routing and affinity', default: 50,
    help: 'deadline of a store operation; past it the request takes the fallback route (see [Faults](#faults))',
  }),
  'embedded-max-entries': one(int(64, 1 << 26), {
    section: 'Routing and affinity', default: 262144,
    help: 'capacity of the embedded store',
  }),
  'learn-queue': one(int(0, 10_000_000), {
    section: 'Routing and affinity', default: 10000,
    help: 'learns kept (per thread) while memcached is unreachable, written once it is back; beyond, they are dropped and counted',
  }),
  'near-cache-ttl': one(int(0, 60_000, 'MS'), {
    section: 'Routing and affinity', default: 1000,
    help: 'how long a binding read from memcached (or learnt here) is used without asking memcached again; `0`: ask every time. Past it, the binding is still remembered, to route its session while memcached cannot answer or has lost it',
  }),
  'near-cache-entries': one(int(16, 10_000_000), {
    section: 'Routing and affinity', default: 65536,
    help: 'bindings the near cache remembers (one table per process, shared by every event loop)',
  }),
  'no-adopt': sw({
    section: 'Routing and affinity', reload: true,
    help: 'only Set-Cookie binds: a backend that accepts a session id it was sent without a binding (answers 2xx or 3xx without a new id) does not adopt it',
  }),
  'cookie-pick': one(oneOf(['first', 'last']), {
    section: 'Routing and affinity', default: 'first', reload: true,
    help: 'which one counts when a request carries a session cookie twice: `first` (PHP, Express, Java servlets, ASP.NET) or `last` (Django)',
  }),

  // Backends
  'upstream-connections': one(int(1, 65536), {
    section: 'Backends', default: 256,
    help: 'most connections to each backend from the whole process, split evenly between the `--threads` loops (at least one each)',
  }),
  'upstream-connect-timeout': one(int(1, 600_000, 'MS'), {
    section: 'Backends', default: 3000, reload: true,
    help: 'connect timeout to a backend (504)',
  }),
  'upstream-header-timeout': one(int(1, HOUR_MS, 'MS'), {
    section: 'Backends', default: 30000, reload: true,
    help: 'wait for a backend\'s response head (504)',
  }),
  'upstream-body-timeout': one(int(1, HOUR_MS, 'MS'), {
    section: 'Backends', default: 60000, reload: true,
    help: 'silence allowed inside a response body (the client\'s answer is cut), and how long a backend may take none of a request body before it answers (504). A client that is not taking its answer is timed by `--client-body-timeout` instead',
  }),
  'upstream-idle-timeout': one(int(1, HOUR_MS, 'MS'), {
    section: 'Backends', default: 4000, reload: true,
    help: 'kept-alive backend connections idle longer than this are closed; keep it below the backends\' own keep-alive timeout (Node\'s is 5 s)',
  }),
  'queue-max': one(int(0, 1_000_000), {
    section: 'Backends', default: 1024, reload: true,
    help: 'requests that may wait, in each loop, for a connection to one backend once its share of `--upstream-connections` is open; beyond, 503 with `Retry-After`',
  }),
  'queue-timeout': one(int(1, HOUR_MS, 'MS'), {
    section: 'Backends', default: 5000, reload: true,
    help: 'longest a request waits for a connection to its backend; then 503 with `Retry-After`',
  }),
  'backend-ca': opt(path(), {
    section: 'Backends',
    help: 'a PEM CA (or bundle) to trust for `https://` backends, besides the system\'s',
  }),
  retries: one(int(0, 10), {
    section: 'Backends', default: 2, reload: true,
    help: 'retries on another backend when the connection fails before any response byte, for idempotent or unsent requests (see [Faults](#faults))',
  }),
  'health-path': opt(text('PATH', /^\/[\x21-\x7e]*$/, 'a path starting with /'), {
    section: 'Backends', shownDefault: 'off',
    help: 'active health checks: `GET PATH` on each backend',
  }),
  'health-interval': one(int(10, HOUR_MS, 'MS'), {
    section: 'Backends', default: 2000,
    help: 'period of the health checks',
  }),
  'health-timeout': one(int(1, 600_000, 'MS'), {
    section: 'Backends', default: 1000,
    help: 'a health check slower than this fails',
  }),
  'health-rise': one(int(1, 100), {
    section: 'Backends', default: 2,
    help: 'passing checks that bring a backend back',
  }),
  'health-fall': one(int(1, 100), {
    section: 'Backends', default: 3,
    help: 'failing checks that take it out',
  }),
  'eject-after': one(int(0, 1000), {
    section: 'Backends', default: 5,
    help: 'consecutive connection failures, timeouts or gateway answers (502, 503, 504) that eject a backend passively (`0`: never)',
  }),
  'eject-cooldown': one(int(1, HOUR_MS, 'MS'), {
    section: 'Backends', default: 10000,
    help: 'how long an ejected backend rests',
  }),
  'max-ejection-percent': one(int(0, 100), {
    section: 'Backends', default: 50,
    help: 'most of the pool passive ejection takes out at once, in percent; one backend may always go, never the last one up',
  }),
  'eject-on-500': sw({
    section: 'Backends',
    help: 'an app\'s own 500 counts toward passive ejection (by default only connection failures, timeouts and 502, 503, 504 do)',
  }),

  // Clients
  'client-header-timeout': one(int(100, HOUR_MS, 'MS'), {
    section: 'Clients', default: 10000, reload: true,
    help: 'time a client has to send its request headers (408)',
  }),
  'client-idle-timeout': one(int(1, HOUR_MS, 'MS'), {
    section: 'Clients', default: 30000, reload: true,
    help: 'idle keep-alive client connections are closed after this',
  }),
  'client-body-timeout': one(int(100, HOUR_MS, 'MS'), {
    section: 'Clients', default: 30000, reload: true,
    help: 'silence allowed inside a request body: past it, 408 (if the answer has not begun), the connection is closed and its backend connection freed; also how long a client may take none of its answer (the connection is cut). A backend that is not taking the body is timed by `--upstream-body-timeout` instead',
  }),
  'tunnel-timeout': one(int(1000, 7 * DAY * 1000, 'MS'), {
    section: 'Clients', default: HOUR_MS, reload: true,
    help: 'an upgraded connection (WebSocket) with no byte either way for this long is closed on both sides (as HAProxy\'s `timeout tunnel`)',
  }),
  'tunnel-fin-timeout': one(int(100, HOUR_MS, 'MS'), {
    section: 'Clients', default: 30000, reload: true,
    help: 'the same silence limit once either side of a tunnel has half-closed (sent its FIN), if shorter (as HAProxy\'s `timeout client-fin`)',
  }),
  'max-head-size': one(int(1024, 1 << 20, 'BYTES'), {
    section: 'Clients', default: 16384,
    help: 'most bytes of a request\'s head (request line and headers); beyond, 431',
  }),
  'max-headers': one(int(1, 1000), {
    section: 'Clients', default: 100,
    help: 'most header lines in a request; beyond, 431',
  }),
  'max-url-length': one(int(16, 1 << 20, 'BYTES'), {
    section: 'Clients', default: 8192,
    help: 'most bytes of a request-target; beyond, 414',
  }),
  'max-body-size': one(int(0, Number.MAX_SAFE_INTEGER, 'BYTES'), {
    section: 'Clients', default: 0, reload: true,
    help: 'most bytes of a request body (`0`: no limit), as NGINX\'s `client_max_body_size`: a larger Content-Length is answered 413 before anything is sent to a backend; a chunked body is refused (413) as soon as a chunk size line takes it past the limit, and the request is not completed upstream',
  }),
  'max-connections': one(int(1, 10_000_000), {
    section: 'Clients', default: 10000,
    help: 'open client connections; beyond, 503 with `Retry-After`',
  }),
  'shutdown-timeout': one(int(0, HOUR_MS, 'MS'), {
    section: 'Clients', default: 10000,
    help: 'on SIGTERM/SIGINT, how long in-flight requests may finish',
  }),
  forwarded: sw({
    section: 'Clients', reload: true,
    help: 'add an RFC 7239 `Forwarded` header (X-Forwarded-For, -Proto, -Host and Via are always set)',
  }),
  'rewrite-host': sw({
    section: 'Clients', reload: true,
    help: 'send the backend\'s `host:port` as `Host` (default: the client\'s `Host` unchanged)',
  }),
  'accept-proxy': sw({
    section: 'Clients',
    help: 'every connection to `--listen` begins with a PROXY protocol header, version 1 or 2 (as HAProxy\'s `accept-proxy`), from an L4 balancer: its address becomes the client\'s. With `--tls-cert` it comes in clear, before the TLS handshake. A connection without a valid header is closed (see [Security](#security))',
  }),
  'trusted-proxy': many(cidr(), {
    section: 'Clients', default: [], shownDefault: 'none', reload: true,
    help: 'a proxy (address or CIDR block, IPv4 or IPv6) whose `X-Forwarded-For` is kept and appended to; from any other client it is replaced by the client\'s address (see [Security](#security))',
  }),
  'tls-cert': opt(path(), {
    section: 'Clients', reload: true,
    help: 'terminate HTTPS on `--listen` with this PEM certificate (chain); needs `--tls-key`',
  }),
  'tls-key': opt(path(), {
    section: 'Clients', reload: true,
    help: 'the PEM private key of `--tls-cert`; checked to match it at start',
  }),

  // Operations
  config: opt(path(), {
    section: 'Operations', cliOnly: true,
    help: 'a JSON file of flags (fields named like the flags, without dashes; schema: `sticky-proxy.schema.json`); flags override it; SIGHUP re-reads it',
  }),
  admin: opt(hostPort({ listen: true }), {
    section: 'Operations', shownDefault: 'off',
    help: 'the admin API: a status page at `/`, `/metrics`, `/healthz`, `/readyz`, `/backends`, and `POST /backends/NAME/drain|disable|enable|weight` (see [Admin API](#admin-api))',
  }),
  'admin-host': many(text('NAME', /^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$/, 'a DNS name'), {
    section: 'Operations', default: [], shownDefault: 'none',
    help: 'a name the admin API may be reached by besides an IP address and `localhost`: a request whose `Host` names anything else gets a 421 unless it carries the `--admin-token`, so a web page cannot reach the admin API through DNS rebinding',
  }),
  'admin-token': opt(bearerToken(), {
    section: 'Operations', shownDefault: 'none',
    help: 'every admin endpoint but `/healthz` and `/readyz` needs `Authorization: Bearer TOKEN`; prefer `--admin-token-file`, which keeps it out of the process list',
  }),
  'admin-token-file': opt(path(), {
    section: 'Operations',
    help: 'as `--admin-token`, the token read once at start from this file (one line; surrounding whitespace ignored)',
  }),
  'monitor-uri': opt(text('PATH', /^\/[\x21-\x7e]*$/, 'a path starting with /'), {
    section: 'Operations', shownDefault: 'off',
    help: 'a request for exactly this path on `--listen` is answered by the proxy itself, never forwarded: 200 while a backend is up, else 503 (as HAProxy\'s `monitor-uri`), for an L4 balancer\'s health check',
  }),
  'access-log': opt(text('FILE', /^[^\0]*$/, 'a file path'), {
    section: 'Operations', shownDefault: 'off', optionalValue: true,
    help: 'one JSON line per request, at its end, whatever `--log-level` says: client, method, host, path, status, bytes, times, backend, affinity, retries, termination, user agent and request id (see [Logs](#logs)). Alone, to stdout; `--access-log=FILE` appends to FILE, reopened on SIGUSR1 (logrotate)',
  }),
  'request-id-header': one(requestIdHeader(), {
    section: 'Operations', default: 'x-request-id',
    help: 'the header that carries each request\'s id to the backend (the access log\'s `id`): the client\'s own value is kept when it is at most 200 visible ASCII characters, otherwise the proxy\'s id replaces it. `""` sends none',
  }),
  'log-format': one(oneOf(['json', 'pretty']), {
    section: 'Operations', default: 'json',
    help: 'the logs\' and the access log\'s form: `json` has the time in epoch milliseconds and numeric levels; `pretty`, the same JSON lines with an ISO 8601 time (UTC) and level names, for reading',
  }),
  'log-level': one(oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']), {
    section: 'Operations', default: 'info', reload: true,
    help: 'the least severe level logged (the access log is not affected)',
  }),
  check: sw({
    section: 'Operations', cliOnly: true,
    help: 'check the flags, the `--config` file and the TLS files (the key matches the certificate), print `configuration OK` and exit 0, or the error and exit 2; starts nothing',
  }),
  version: sw({
    section: 'Operations', cliOnly: true,
    help: 'print the version and exit',
  }),
  help: sw({
    section: 'Operations', cliOnly: true, short: 'h',
    help: 'print every flag and exit',
  }),
};

export type FlagName = keyof typeof FLAGS;
export type FlagValues = Values<typeof FLAGS>;

export const HELP_INTRO = `Usage: sticky-proxy [flags]

HTTP load balancer that keeps each session on the backend that created it.
Affinity is learnt from the backends' session cookies (Set-Cookie) and kept in
memcached (--memcache) or, without it, in an embedded store local to this process.
With no --backend, a demo starts: two session origins behind the proxy.
`;

export const SCHEMA_TITLE = 'sticky-proxy configuration';
export const SCHEMA_DESCRIPTION = 'The --config file of sticky-proxy: fields are the flags\' names without dashes; generated from src/flags.ts by npm run generate.';
