// Command-line configuration. Every value is validated before anything starts,
// and an error names the flag it is about, so a bad deployment fails in one line.
// The flags themselves (kinds, ranges, defaults, texts) are in src/flags.ts;
// this file turns their values into the Config and checks what one flag's
// kind cannot: values that depend on each other, and the files they name.
import { closeSync, openSync, readFileSync } from 'node:fs';
import { BlockList, isIP } from 'node:net';
import { availableParallelism } from 'node:os';
import type { X509Certificate } from 'node:crypto';
import { ConfigError, helpText, parseArgv, parseFile, withDefaults, type Given } from './flag-kit.ts';
import { FLAGS, HELP_INTRO, bearerToken, type FlagValues } from './flags.ts';
import type { HostPort } from './hostport.ts';
import { MAX_BACKENDS } from './shared.ts';

export { ConfigError } from './flag-kit.ts';

export type BalanceAlgorithm = FlagValues['balance'];

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
  /** Event loops (--threads), resolved: never 0. */
  threads: number;
  workers: number;
  batchMax: number;
  balance: BalanceAlgorithm;
  defaultTtl: number;
  maxTtl: number;
  keyPrefix: string;
  storeTimeoutMs: number;
  embeddedMaxEntries: number;
  learnQueue: number;
  /** Lifetime of a near-cache answer, ms; 0 asks the store every time. */
  nearCacheTtlMs: number;
  nearCacheEntries: number;
  /** A backend that accepts an unbound session id adopts it. */
  adopt: boolean;
  /** The last of two same-named session cookies counts (Django), not the first. */
  cookiePickLast: boolean;
  upstreamConnections: number;
  upstreamConnectTimeoutMs: number;
  upstreamHeaderTimeoutMs: number;
  upstreamBodyTimeoutMs: number;
  upstreamIdleTimeoutMs: number;
  queueMax: number;
  queueTimeoutMs: number;
  retries: number;
  healthPath: string | null;
  healthIntervalMs: number;
  healthTimeoutMs: number;
  healthRise: number;
  healthFall: number;
  ejectAfter: number;
  ejectCooldownMs: number;
  maxEjectionPercent: number;
  ejectOn500: boolean;
  clientHeaderTimeoutMs: number;
  clientIdleTimeoutMs: number;
  clientBodyTimeoutMs: number;
  tunnelTimeoutMs: number;
  tunnelFinTimeoutMs: number;
  maxHeadBytes: number;
  maxHeaders: number;
  maxUrlBytes: number;
  /** --max-body-size; 0 for none. */
  maxBodyBytes: number;
  maxConnections: number;
  shutdownTimeoutMs: number;
  logLevel: string;
  forwarded: boolean;
  rewriteHost: boolean;
  /** Every connection starts with a PROXY protocol header (--accept-proxy). */
  acceptProxy: boolean;
  /** --trusted-proxy's addresses and CIDR blocks, as written (trustList() makes them a BlockList). */
  trustedProxies: string[];
  /** Where the admin API listens, or null. */
  admin: { host: string; port: number } | null;
  /** The bearer token the admin API asks for (--admin-token, or read from --admin-token-file), or null. */
  adminToken: string | null;
  /** Host names the admin API answers to besides IP addresses and localhost (--admin-host), lower-cased. */
  adminHosts: string[];
  /** The request-target the proxy answers itself on --listen (--monitor-uri), or null. */
  monitorUri: string | null;
  /** The access log: null off, '' stdout, else the file it is appended to (reopened on SIGUSR1). */
  accessLog: string | null;
  /** The header carrying each request's id upstream (--request-id-header), or null for none. */
  requestIdHeader: string | null;
  logFormat: FlagValues['log-format'];
  /** The PEM texts, read and checked to match at configuration time. */
  tls: { cert: string; key: string } | null;
  /** A CA file to trust for https:// backends, besides the system's. */
  backendCa: string | null;
  /** That file's PEM text, read once at configuration time. */
  backendCaPem: string | null;
  /** The --config file, for SIGHUP reloads. */
  configFile: string | null;
}

export const DEFAULT_SESSION_COOKIES = FLAGS['session-cookie'].default as string[];

export const HELP = helpText(FLAGS, HELP_INTRO);

/** What the command line asks for: a text to print, or a configuration to run or only check. */
export type Command =
  | { action: 'help' }
  | { action: 'version' }
  | { action: 'run' | 'check'; config: Config; values: FlagValues };

/** Parses argv (and the --config file it names); throws ConfigError naming the flag. */
export function parseCommand(argv: string[]): Command {
  const cli = parseArgv(FLAGS, argv);
  if (cli.help) return { action: 'help' };
  if (cli.version) return { action: 'version' };
  const file = cli.config == null ? {} : readConfigFile(cli.config);
  // Flags override the file's fields, repeatable ones as a whole.
  const given = { ...file, ...cli };
  const values = withDefaults(FLAGS, given);
  let config: Config;
  try {
    config = build(values, given);
  } catch (err) {
    // A check that failed on a field of the file names the file and the field.
    const field = err instanceof ConfigError ? err.flag.slice(2) as keyof typeof file : null;
    if (field === null || !(field in file) || field in cli) throw err;
    throw new ConfigError('--config', `${cli.config}: field "${field}": ${(err as Error).message.slice(field.length + 4)}`);
  }
  return { action: cli.check ? 'check' : 'run', config, values };
}

/** Parses argv (and the --config file it names); throws ConfigError naming the flag. Returns null when --help or --version was asked. */
export function parseConfig(argv: string[]): Config | null {
  const c = parseCommand(argv);
  return 'config' in c ? c.config : null;
}

/**
 * The configuration file: a JSON object whose fields are the flags' names
 * without dashes ("backend": ["srv1=http://10.0.0.11:3000,weight=2"],
 * "workers": 2, "access-log": true...), checked against the schema generated
 * from the flags and then by each flag's own rules; errors name the file and the field.
 */
function readConfigFile(file: string): Given<typeof FLAGS> {
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ConfigError('--config', `${file}: ${(err as Error).message}`);
  }
  return parseFile(FLAGS, doc, file);
}

/** A file a flag names, read now, so a wrong path fails at start, naming its flag. */
function readText(flag: string, file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(flag, `cannot read "${file}" (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

/** --access-log's file, opened for appending now (as `nginx -t` opens its logs), so a wrong path or mode fails at start, naming the flag. */
function accessLog(file: string | null): string | null {
  if (file === null || file === '') return file;
  try {
    closeSync(openSync(file, 'a'));
  } catch (err) {
    throw new ConfigError('--access-log', `cannot open "${file}" for appending (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  return file;
}

/** The admin token, given or read once from its file; checked as the flag's own value would be. */
function adminToken(v: FlagValues): string | null {
  const given = v['admin-token'];
  const file = v['admin-token-file'];
  if (given !== null && file !== null) throw new ConfigError('--admin-token-file', 'conflicts with --admin-token');
  if ((given !== null || file !== null) && v.admin === null) throw new ConfigError(given !== null ? '--admin-token' : '--admin-token-file', 'needs --admin');
  if (file === null) return given;
  const token = readText('--admin-token-file', file).trim();
  if (token === '') throw new ConfigError('--admin-token-file', `"${file}" is empty`);
  if (token.includes('\n')) throw new ConfigError('--admin-token-file', `"${file}" must hold one line, the token`);
  return bearerToken().parse(token, '--admin-token-file');
}

/** The certificate and key, parsed, and the key checked to be the certificate's, as the listener will need. */
function loadTls(certFile: string, keyFile: string): { cert: string; key: string } {
  const cert = readText('--tls-cert', certFile);
  // node:crypto is loaded only when TLS is configured: it costs memory the proxy otherwise does not need.
  const { X509Certificate, createPrivateKey } = process.getBuiltinModule('node:crypto');
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch {
    throw new ConfigError('--tls-cert', `"${certFile}" holds no PEM certificate`);
  }
  const key = readText('--tls-key', keyFile);
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError('--tls-key', `"${keyFile}" holds no usable PEM private key${code === 'ERR_MISSING_PASSPHRASE' ? ' (it is encrypted; give an unencrypted key)' : ''}`);
  }
  if (!x509.checkPrivateKey(privateKey)) throw new ConfigError('--tls-key', `"${keyFile}" is not the key of the certificate in "${certFile}"`);
  return { cert, key };
}

/** A CA file or bundle: every certificate in it must parse. */
function loadCa(file: string): string {
  const pem = readText('--backend-ca', file);
  const { X509Certificate } = process.getBuiltinModule('node:crypto');
  const certs = pem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [];
  if (certs.length === 0) throw new ConfigError('--backend-ca', `"${file}" holds no PEM certificate`);
  certs.forEach((c, i) => {
    try {
      new X509Certificate(c);
    } catch {
      throw new ConfigError('--backend-ca', `certificate ${i + 1} in "${file}" does not parse`);
    }
  });
  return pem;
}

function build(v: FlagValues, given: Given<typeof FLAGS>): Config {
  const backends = v.backend;
  // One slot each in the process's shared state (shared.ts).
  if (backends.length > MAX_BACKENDS) throw new ConfigError('--backend', `${backends.length} backends; at most ${MAX_BACKENDS}`);
  const seen = new Set<string>();
  for (const b of backends) {
    if (seen.has(b.name)) throw new ConfigError('--backend', `duplicate name "${b.name}"`);
    seen.add(b.name);
  }
  if (backends.length > 0 && backends.every((b) => b.weight === 0)) {
    throw new ConfigError('--backend', 'at least one backend needs a weight above 0');
  }
  if (v['no-affinity'] && given['session-cookie'] !== undefined) throw new ConfigError('--no-affinity', 'conflicts with --session-cookie');
  if (v['default-ttl'] > v['max-ttl']) throw new ConfigError('--default-ttl', `${v['default-ttl']} exceeds --max-ttl ${v['max-ttl']}`);
  const certFile = v['tls-cert'];
  const keyFile = v['tls-key'];
  if ((certFile === null) !== (keyFile === null)) throw new ConfigError(certFile === null ? '--tls-key' : '--tls-cert', 'needs --tls-cert and --tls-key together');
  const listen: HostPort = v.listen;

  return {
    listenHost: listen.host,
    listenPort: listen.port,
    backends,
    sessionCookies: v['no-affinity'] ? [] : v['session-cookie'],
    memcache: v.memcache ?? [],
    threads: v.threads === 0 ? usableCores() : v.threads,
    workers: v.workers,
    batchMax: v['batch-max'],
    balance: v.balance,
    defaultTtl: v['default-ttl'],
    maxTtl: v['max-ttl'],
    keyPrefix: v['key-prefix'],
    storeTimeoutMs: v['store-timeout'],
    embeddedMaxEntries: v['embedded-max-entries'],
    learnQueue: v['learn-queue'],
    nearCacheTtlMs: v['near-cache-ttl'],
    nearCacheEntries: v['near-cache-entries'],
    adopt: !v['no-adopt'],
    cookiePickLast: v['cookie-pick'] === 'last',
    upstreamConnections: v['upstream-connections'],
    upstreamConnectTimeoutMs: v['upstream-connect-timeout'],
    upstreamHeaderTimeoutMs: v['upstream-header-timeout'],
    upstreamBodyTimeoutMs: v['upstream-body-timeout'],
    upstreamIdleTimeoutMs: v['upstream-idle-timeout'],
    queueMax: v['queue-max'],
    queueTimeoutMs: v['queue-timeout'],
    retries: v.retries,
    healthPath: v['health-path'],
    healthIntervalMs: v['health-interval'],
    healthTimeoutMs: v['health-timeout'],
    healthRise: v['health-rise'],
    healthFall: v['health-fall'],
    ejectAfter: v['eject-after'],
    ejectCooldownMs: v['eject-cooldown'],
    maxEjectionPercent: v['max-ejection-percent'],
    ejectOn500: v['eject-on-500'],
    clientHeaderTimeoutMs: v['client-header-timeout'],
    clientIdleTimeoutMs: v['client-idle-timeout'],
    clientBodyTimeoutMs: v['client-body-timeout'],
    tunnelTimeoutMs: v['tunnel-timeout'],
    tunnelFinTimeoutMs: v['tunnel-fin-timeout'],
    maxHeadBytes: v['max-head-size'],
    maxHeaders: v['max-headers'],
    maxUrlBytes: v['max-url-length'],
    maxBodyBytes: v['max-body-size'],
    maxConnections: v['max-connections'],
    shutdownTimeoutMs: v['shutdown-timeout'],
    logLevel: v['log-level'],
    forwarded: v.forwarded,
    rewriteHost: v['rewrite-host'],
    acceptProxy: v['accept-proxy'],
    trustedProxies: v['trusted-proxy'],
    admin: v.admin,
    adminToken: adminToken(v),
    adminHosts: v['admin-host'].map((h) => h.toLowerCase()),
    monitorUri: v['monitor-uri'],
    accessLog: accessLog(v['access-log']),
    requestIdHeader: v['request-id-header'] === '' ? null : v['request-id-header'],
    logFormat: v['log-format'],
    tls: certFile !== null && keyFile !== null ? loadTls(certFile, keyFile) : null,
    backendCa: v['backend-ca'],
    backendCaPem: v['backend-ca'] === null ? null : loadCa(v['backend-ca']),
    configFile: v.config,
  };
}

/**
 * The cores this process may use: its CPU affinity mask (what
 * availableParallelism reads), capped by a cgroup CPU quota when one is set
 * (a container's --cpus), which the affinity mask does not show.
 */
export function usableCores(): number {
  let cores = availableParallelism();
  try {
    // cgroup v2: "max 100000" or "<quota> <period>".
    const [quota, period] = readFileSync('/sys/fs/cgroup/cpu.max', 'utf8').trim().split(/\s+/);
    if (quota !== 'max') cores = Math.min(cores, Math.max(1, Math.ceil(Number(quota) / Number(period))));
  } catch {
    // No cgroup v2 quota readable: the affinity mask stands.
  }
  return Math.min(cores, 64);
}

/** --trusted-proxy's list as node:net's BlockList (one per event loop), or null when none is given: nobody's X-Forwarded-For is kept. */
export function trustList(cidrs: readonly string[]): BlockList | null {
  if (cidrs.length === 0) return null;
  const list = new BlockList();
  for (const c of cidrs) {
    const slash = c.indexOf('/');
    const address = slash < 0 ? c : c.slice(0, slash);
    const type = isIP(address) === 4 ? 'ipv4' : 'ipv6';
    if (slash < 0) list.addAddress(address, type);
    else list.addSubnet(address, Number(c.slice(slash + 1)), type);
  }
  return list;
}
