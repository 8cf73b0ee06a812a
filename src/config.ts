// Command-line configuration. Every value is validated before anything starts,
// and an error names the flag it is about, so a bad deployment fails in one line.
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

export type BalanceAlgorithm = 'round-robin' | 'least-conn' | 'random-two';

export interface BackendConfig {
  name: string;
  url: URL;
  weight: number;
}

export interface Config {
  listenHost: string;
  listenPort: number;
  backends: BackendConfig[];
  /** Empty when affinity is off. */
  sessionCookies: string[];
  memcache: string[];
  workers: number;
  batchMax: number;
  balance: BalanceAlgorithm;
  defaultTtl: number;
  maxTtl: number;
  keyPrefix: string;
  storeTimeoutMs: number;
  embeddedMaxEntries: number;
  learnQueue: number;
  upstreamConnections: number;
  upstreamConnectTimeoutMs: number;
  upstreamHeaderTimeoutMs: number;
  upstreamBodyTimeoutMs: number;
  retries: number;
  healthPath: string | null;
  healthIntervalMs: number;
  healthTimeoutMs: number;
  healthRise: number;
  healthFall: number;
  ejectAfter: number;
  ejectCooldownMs: number;
  clientHeaderTimeoutMs: number;
  clientIdleTimeoutMs: number;
  maxConnections: number;
  shutdownTimeoutMs: number;
  logLevel: string;
  forwarded: boolean;
  rewriteHost: boolean;
  /** Where the admin API listens, or null. */
  admin: { host: string; port: number } | null;
  accessLog: boolean;
  tls: { cert: string; key: string } | null;
  /** A CA file to trust for https:// backends, besides the system's. */
  backendCa: string | null;
  /** The --config file, for SIGHUP reloads. */
  configFile: string | null;
}

export class ConfigError extends Error {
  readonly flag: string;
  constructor(flag: string, message: string) {
    super(`${flag}: ${message}`);
    this.flag = flag;
  }
}

export const DEFAULT_SESSION_COOKIES = ['connect.sid', 'PHPSESSID', 'JSESSIONID', 'ASP.NET_SessionId'];

// Measured fastest (README, Benchmarks): on this 2-core class of machine the
// main thread's HTTP work is the bottleneck, and a worker's message round trips
// and its own core share cost more than the cookie parsing they take off it.
const DEFAULT_WORKERS = 0;

export const HELP = `Usage: sticky-proxy [flags]

HTTP load balancer that keeps each session on the backend that created it.
Affinity is learnt from the backends' session cookies (Set-Cookie) and kept in
memcached (--memcache) or, without it, in an embedded store local to this process.
With no --backend, a demo starts: two session origins behind the proxy.

  --listen HOST:PORT            where clients connect (default 127.0.0.1:8080)
  --backend NAME=URL[,weight=N] a backend; repeat for each. NAME is [A-Za-z0-9_.-]{1,64},
                                URL is http://host:port, weight 0..1000 (default 1;
                                0 takes bound sessions only)
  --session-cookie NAME         a session cookie to stick on; repeatable
                                (default: ${DEFAULT_SESSION_COOKIES.join(', ')})
  --no-affinity                 plain load balancing: no lookups, no learning, no workers
  --memcache HOST:PORT[,...]    memcached servers holding the bindings (consistent hashing);
                                without it the embedded store is used
  --workers N                   affinity worker threads; 0 runs affinity on the main thread
                                (default ${DEFAULT_WORKERS}; at most 64)
  --batch-max N                 most affinity operations sent to a worker in one batch
                                (default 256)
  --balance ALGO                round-robin | least-conn | random-two (default round-robin)
  --default-ttl SECONDS         binding lifetime for session cookies without an expiry,
                                sliding with use (default 1800)
  --max-ttl SECONDS             cap on any binding's lifetime (default 86400)
  --key-prefix STR              namespace for keys in memcached (default "sp:")
  --store-timeout MS            deadline of a store lookup; past it the request is routed
                                without affinity (default 50)
  --embedded-max-entries N      capacity of the embedded store (default 262144)
  --learn-queue N               learns kept while memcached is unreachable, written once it
                                is back; beyond this they are dropped and counted (default 10000)

 Backends
  --upstream-connections N      most connections to each backend (default 256)
  --upstream-connect-timeout MS connect timeout, answered 504 (default 3000)
  --upstream-header-timeout MS  wait for a response head, answered 504 (default 30000)
  --upstream-body-timeout MS    silence allowed inside a response body (default 60000)
  --retries N                   retries on another backend when the connection fails before
                                any response byte, for idempotent or unsent requests (default 2)
  --health-path PATH            active health checks: GET PATH on each backend (off by default)
  --health-interval MS          between checks (default 2000)
  --health-timeout MS           a check slower than this fails (default 1000)
  --health-rise N               passing checks that bring a backend back (default 2)
  --health-fall N               failing checks that take it out (default 3)
  --eject-after N               consecutive connect failures or 5xx answers that eject a backend
                                passively; 0 disables (default 5)
  --eject-cooldown MS           how long an ejected backend rests (default 10000)

 Clients
  --client-header-timeout MS    time to send a request's headers, else 408 (default 10000)
  --client-idle-timeout MS      idle keep-alive connection lifetime (default 30000)
  --max-connections N           open client connections; beyond it, 503 (default 10000)
  --shutdown-timeout MS         on SIGTERM/SIGINT, how long in-flight requests may finish
                                (default 10000)
  --forwarded                   add an RFC 7239 Forwarded header (X-Forwarded-For, -Proto, -Host
                                and Via are always added)
  --rewrite-host                send the backend's host:port as Host (default: the client's Host)
  --tls-cert FILE, --tls-key FILE  terminate HTTPS on --listen with this PEM certificate and key
  --backend-ca FILE             trust this PEM CA for https:// backends (besides the system's)

 Operations
  --config FILE                 a JSON file holding any of these flags (fields named like the
                                flags, without dashes); flags override it; SIGHUP reloads it
  --admin HOST:PORT             admin API: /metrics, /healthz, /readyz, /backends, and
                                POST /backends/NAME/drain|disable|enable (loopback unless told)
  --access-log                  log every request: method, path, status, backend, affinity, time
  --log-level LEVEL             fatal | error | warn | info | debug | trace | silent (default info)
  -h, --help                    this text
`;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const BACKEND_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
// RFC 6265 token characters: what a cookie name may be.
const COOKIE_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const PREFIX = /^[\x21-\x7e]{0,64}$/;

/** Reads a PEM file now, so a wrong path fails at start, naming its flag. */
function pem(flag: string, file: string): string {
  try {
    const text = readFileSync(file, 'utf8');
    if (!text.includes('-----BEGIN ')) throw new Error('not a PEM file');
    return text;
  } catch (err) {
    throw new ConfigError(flag, `cannot use "${file}": ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

function int(flag: string, raw: string | undefined, def: number, min: number, max: number): number {
  if (raw === undefined) return def;
  if (!/^\d+$/.test(raw)) throw new ConfigError(flag, `expected a whole number, got "${raw}"`);
  const n = Number(raw);
  if (n < min || n > max) throw new ConfigError(flag, `must be between ${min} and ${max}, got ${n}`);
  return n;
}

function parseHostPort(flag: string, raw: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+)):(\d{1,5})$/.exec(raw);
  if (!m) throw new ConfigError(flag, `expected HOST:PORT, got "${raw}"`);
  const port = Number(m[3]);
  if (port > 65535) throw new ConfigError(flag, `port out of range in "${raw}"`);
  return { host: m[1] ?? m[2], port };
}

function parseBackend(raw: string): BackendConfig {
  const flag = '--backend';
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
  if (url.pathname !== '/' || url.search || url.username) throw new ConfigError(flag, `URL of ${name} must be an origin (scheme://host:port), got "${urlText}"`);
  let weight = 1;
  for (const opt of opts) {
    const m = /^weight=(\d+)$/.exec(opt);
    if (!m) throw new ConfigError(flag, `unknown option "${opt}" for ${name} (only weight=N)`);
    weight = int(flag, m[1], 1, 0, 1000);
  }
  return { name, url, weight };
}

const OPTIONS = {
  config: { type: 'string' },
  listen: { type: 'string' },
  backend: { type: 'string', multiple: true },
  'session-cookie': { type: 'string', multiple: true },
  'no-affinity': { type: 'boolean' },
  memcache: { type: 'string' },
  workers: { type: 'string' },
  'batch-max': { type: 'string' },
  balance: { type: 'string' },
  'default-ttl': { type: 'string' },
  'max-ttl': { type: 'string' },
  'key-prefix': { type: 'string' },
  'store-timeout': { type: 'string' },
  'embedded-max-entries': { type: 'string' },
  'learn-queue': { type: 'string' },
  'upstream-connections': { type: 'string' },
  'upstream-connect-timeout': { type: 'string' },
  'upstream-header-timeout': { type: 'string' },
  'upstream-body-timeout': { type: 'string' },
  'backend-ca': { type: 'string' },
  retries: { type: 'string' },
  'health-path': { type: 'string' },
  'health-interval': { type: 'string' },
  'health-timeout': { type: 'string' },
  'health-rise': { type: 'string' },
  'health-fall': { type: 'string' },
  'eject-after': { type: 'string' },
  'eject-cooldown': { type: 'string' },
  'client-header-timeout': { type: 'string' },
  'client-idle-timeout': { type: 'string' },
  'max-connections': { type: 'string' },
  'shutdown-timeout': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  admin: { type: 'string' },
  'access-log': { type: 'boolean' },
  'log-level': { type: 'string' },
  forwarded: { type: 'boolean' },
  'rewrite-host': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; strict: true; allowPositionals: false }>>['values'];

function parseFlags(argv: string[]): Values {
  try {
    return parseArgs({ args: argv, strict: true, allowPositionals: false, options: OPTIONS }).values;
  } catch (err) {
    const msg = (err as Error).message.split('\n')[0];
    const flag = /'(-[^' ]+)/.exec(msg)?.[1] ?? 'arguments';
    throw new ConfigError(flag, msg);
  }
}

/**
 * The configuration file: a JSON object whose fields are the flags' names
 * without dashes ("backend": ["srv1=http://10.0.0.11:3000,weight=2"],
 * "workers": 2, "access-log": true...). Every field is checked by the same
 * rules as its flag, and errors name the file and the field.
 */
function readConfigFile(file: string): Values {
  const where = `${file}`;
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ConfigError('--config', `${where}: ${(err as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new ConfigError('--config', `${where}: expected a JSON object`);
  const argv: string[] = [];
  for (const [field, value] of Object.entries(doc)) {
    const spec = (OPTIONS as Record<string, { type: string; multiple?: boolean }>)[field];
    if (spec === undefined || field === 'config' || field === 'help') throw new ConfigError('--config', `${where}: unknown field "${field}"`);
    const wrong = (what: string): never => { throw new ConfigError('--config', `${where}: field "${field}" must be ${what}`); };
    if (spec.type === 'boolean') {
      if (typeof value !== 'boolean') wrong('true or false');
      if (value) argv.push(`--${field}`);
      continue;
    }
    const items = spec.multiple ? (Array.isArray(value) ? value : wrong('an array')) : [value];
    for (const item of items as unknown[]) {
      if (typeof item !== 'string' && typeof item !== 'number') wrong(spec.multiple ? 'an array of strings' : 'a string or a number');
      argv.push(`--${field}=${item}`);
    }
  }
  const values = parseFlags(argv);
  try {
    build(values);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw new ConfigError('--config', `${where}: field "${err.flag.replace(/^--/, '')}": ${err.message.slice(err.flag.length + 2)}`);
  }
  return values;
}

/** Parses argv (and the --config file it names); throws ConfigError naming the flag. Returns null when --help was asked. */
export function parseConfig(argv: string[]): Config | null {
  const cli = parseFlags(argv);
  if (cli.help) return null;
  // Flags override the file's fields, repeatable ones as a whole.
  const values = cli.config === undefined ? cli : { ...readConfigFile(cli.config), ...cli };
  return build(values);
}

function build(values: Values): Config {

  const listen = parseHostPort('--listen', values.listen ?? '127.0.0.1:8080');

  const backends = (values.backend ?? []).map(parseBackend);
  const seen = new Set<string>();
  for (const b of backends) {
    if (seen.has(b.name)) throw new ConfigError('--backend', `duplicate name "${b.name}"`);
    seen.add(b.name);
  }
  if (backends.length > 0 && backends.every((b) => b.weight === 0)) {
    throw new ConfigError('--backend', 'at least one backend needs a weight above 0');
  }

  if (values['no-affinity'] && values['session-cookie']) throw new ConfigError('--no-affinity', 'conflicts with --session-cookie');
  const sessionCookies = values['no-affinity'] ? [] : values['session-cookie'] ?? DEFAULT_SESSION_COOKIES;
  for (const c of sessionCookies) {
    if (!COOKIE_NAME.test(c)) throw new ConfigError('--session-cookie', `invalid cookie name "${c}"`);
  }

  const memcache = values.memcache === undefined ? [] : values.memcache.split(',');
  for (const s of memcache) parseHostPort('--memcache', s);

  const balance = values.balance ?? 'round-robin';
  if (balance !== 'round-robin' && balance !== 'least-conn' && balance !== 'random-two') {
    throw new ConfigError('--balance', `expected round-robin, least-conn or random-two, got "${balance}"`);
  }

  const maxTtl = int('--max-ttl', values['max-ttl'], 86400, 1, 365 * 86400);
  const defaultTtl = int('--default-ttl', values['default-ttl'], 1800, 1, 365 * 86400);
  if (defaultTtl > maxTtl) throw new ConfigError('--default-ttl', `${defaultTtl} exceeds --max-ttl ${maxTtl}`);

  const keyPrefix = values['key-prefix'] ?? 'sp:';
  if (!PREFIX.test(keyPrefix)) throw new ConfigError('--key-prefix', 'must be at most 64 printable ASCII characters without spaces');

  const healthPath = values['health-path'] ?? null;
  if (healthPath !== null && !/^\/[\x21-\x7e]*$/.test(healthPath)) throw new ConfigError('--health-path', `must be a path starting with /, got "${healthPath}"`);
  const admin = values.admin === undefined ? null : parseHostPort('--admin', values.admin);
  const certFile = values['tls-cert'];
  const keyFile = values['tls-key'];
  if ((certFile === undefined) !== (keyFile === undefined)) throw new ConfigError(certFile === undefined ? '--tls-key' : '--tls-cert', 'needs --tls-cert and --tls-key together');
  const tls = certFile !== undefined && keyFile !== undefined ? { cert: pem('--tls-cert', certFile), key: pem('--tls-key', keyFile) } : null;
  if (values['backend-ca'] !== undefined) pem('--backend-ca', values['backend-ca']);
  const logLevel = values['log-level'] ?? 'info';
  if (!LOG_LEVELS.includes(logLevel)) throw new ConfigError('--log-level', `expected one of ${LOG_LEVELS.join(', ')}, got "${logLevel}"`);

  return {
    listenHost: listen.host,
    listenPort: listen.port,
    backends,
    sessionCookies,
    memcache,
    workers: int('--workers', values.workers, DEFAULT_WORKERS, 0, Math.max(64, availableParallelism())),
    batchMax: int('--batch-max', values['batch-max'], 256, 1, 65536),
    balance,
    defaultTtl,
    maxTtl,
    keyPrefix,
    storeTimeoutMs: int('--store-timeout', values['store-timeout'], 50, 1, 60000),
    embeddedMaxEntries: int('--embedded-max-entries', values['embedded-max-entries'], 262144, 64, 1 << 26),
    learnQueue: int('--learn-queue', values['learn-queue'], 10000, 0, 10_000_000),
    upstreamConnections: int('--upstream-connections', values['upstream-connections'], 256, 1, 65536),
    upstreamConnectTimeoutMs: int('--upstream-connect-timeout', values['upstream-connect-timeout'], 3000, 1, 600_000),
    upstreamHeaderTimeoutMs: int('--upstream-header-timeout', values['upstream-header-timeout'], 30000, 1, 3_600_000),
    upstreamBodyTimeoutMs: int('--upstream-body-timeout', values['upstream-body-timeout'], 60000, 1, 3_600_000),
    retries: int('--retries', values.retries, 2, 0, 10),
    healthPath,
    healthIntervalMs: int('--health-interval', values['health-interval'], 2000, 10, 3_600_000),
    healthTimeoutMs: int('--health-timeout', values['health-timeout'], 1000, 1, 600_000),
    healthRise: int('--health-rise', values['health-rise'], 2, 1, 100),
    healthFall: int('--health-fall', values['health-fall'], 3, 1, 100),
    ejectAfter: int('--eject-after', values['eject-after'], 5, 0, 1000),
    ejectCooldownMs: int('--eject-cooldown', values['eject-cooldown'], 10000, 1, 3_600_000),
    clientHeaderTimeoutMs: int('--client-header-timeout', values['client-header-timeout'], 10000, 100, 3_600_000),
    clientIdleTimeoutMs: int('--client-idle-timeout', values['client-idle-timeout'], 30000, 1, 3_600_000),
    maxConnections: int('--max-connections', values['max-connections'], 10000, 1, 10_000_000),
    shutdownTimeoutMs: int('--shutdown-timeout', values['shutdown-timeout'], 10000, 0, 3_600_000),
    logLevel,
    forwarded: values.forwarded ?? false,
    rewriteHost: values['rewrite-host'] ?? false,
    admin,
    accessLog: values['access-log'] ?? false,
    tls,
    backendCa: values['backend-ca'] ?? null,
    configFile: values.config ?? null,
  };
}
