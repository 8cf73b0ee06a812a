// Entry point: `sticky-proxy [flags]`, or the demo when no backend is given.
import { readFileSync } from 'node:fs';
import { flushCompileCache } from 'node:module';
import { ConfigError, HELP, parseCommand, type Command, type Config } from './config.ts';
import type { DemoOrigin } from './demo.ts';
import { FLAGS, type FlagName, type FlagValues } from './flags.ts';
import { createLogger } from './log.ts';
import { loopReload } from './loop.ts';
import { StickyProxy } from './proxy.ts';

// How SIGHUP applies each flag whose table entry says `reload: true`.
/**
 * On a hand-over (SIGUSR2), an idle keep-alive connection is closed only once
 * idle this long: a client about to send on it is answered (with Connection:
 * close) rather than cut, and reconnects to the new process.
 */
const HANDOVER_GRACE_MS = 1000;

const APPLY: { [K in FlagName]?: 'backends' | 'settings' } = {
  backend: 'backends',
  // The rest go to every loop as one LoopReload (src/loop.ts).
  'log-level': 'settings',
  'session-cookie': 'settings',
  'cookie-pick': 'settings',
  'no-adopt': 'settings',
  'upstream-connect-timeout': 'settings',
  'upstream-header-timeout': 'settings',
  'upstream-body-timeout': 'settings',
  'upstream-idle-timeout': 'settings',
  'queue-max': 'settings',
  'queue-timeout': 'settings',
  retries: 'settings',
  'client-header-timeout': 'settings',
  'client-idle-timeout': 'settings',
  'client-body-timeout': 'settings',
  'max-body-size': 'settings',
  'tunnel-timeout': 'settings',
  'tunnel-fin-timeout': 'settings',
  forwarded: 'settings',
  'rewrite-host': 'settings',
  'trusted-proxy': 'settings',
  'tls-cert': 'settings',
  'tls-key': 'settings',
};
for (const k of Object.keys(FLAGS) as FlagName[]) {
  if (FLAGS[k].reload && APPLY[k] === undefined) throw new Error(`--${k} is marked reloadable but SIGHUP has no way to apply it`);
}

/** Prints a configuration error as its one line and exits 2. */
function refuse(err: ConfigError): never {
  process.stderr.write(`sticky-proxy: ${err.message}\n`);
  process.exit(2);
}

async function main(): Promise<void> {
  let command: Command;
  try {
    command = parseCommand(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    refuse(err);
  }
  if (command.action === 'help') {
    process.stdout.write(HELP);
    return;
  }
  if (command.action === 'version') {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
    process.stdout.write(`sticky-proxy ${pkg.version}\n`);
    return;
  }
  if (command.action === 'check') {
    process.stdout.write('sticky-proxy: configuration OK\n');
    return;
  }
  const { config, values } = command;
  const log = createLogger(config.logLevel, config.logFormat);
  // SIGUSR1 (logrotate's postrotate) opens the access log file again in every loop, once started. Listening from
  // the start also keeps Node from opening its inspector on it.
  let reopen = (): void => {};
  process.on('SIGUSR1', () => reopen());

  const demo: DemoOrigin[] = [];
  if (config.backends.length === 0) {
    // The demo (and node:http for its origins) is loaded only when it runs.
    const { startDemoOrigin } = await import('./demo.ts');
    demo.push(await startDemoOrigin('srv1'), await startDemoOrigin('srv2'));
    config.backends = demo.map((o) => ({ name: o.name, url: new URL(o.url), weight: 1 }));
  }

  let proxy: StickyProxy;
  try {
    proxy = await StickyProxy.start(config, log);
  } catch (err) {
    // A listener that cannot bind says which flag's address it was.
    if (err instanceof ConfigError) refuse(err);
    process.stderr.write(`sticky-proxy: cannot start: ${(err as Error).message}\n`);
    process.exit(1);
  }
  // Before the start-up lines: whoever reads them may send SIGHUP at once.
  const running = { values, tls: config.tls };
  process.on('SIGHUP', () => reload(proxy, running, demo.length > 0));
  const url = `${config.tls === null ? 'http' : 'https'}://${config.listenHost.includes(':') ? `[${config.listenHost}]` : config.listenHost}:${proxy.port}`;
  log.info({ url, store: proxy.storeDescription, threads: config.threads, workers: config.workers, backends: config.backends.length }, 'listening');
  console.log(`sticky-proxy listening on ${url}`);
  console.log(`backends: ${config.backends.map((b) => `${b.name}=${b.url.origin} (weight ${b.weight})`).join(', ')}`);
  if (proxy.adminPort !== null) console.log(`admin on http://${config.admin!.host}:${proxy.adminPort}`);
  console.log(`store: ${proxy.storeDescription}; threads: ${config.threads}; workers: ${config.workers}; balance: ${config.balance}`);
  if (demo.length > 0) {
    console.log(`\ndemo: two session origins (srv1, srv2) behind the proxy. Try:`);
    console.log(`  curl -c cookie.jar ${url}      # a new session, on some real-server`);
    console.log(`  curl -b cookie.jar ${url}      # the same real-server and session, every time`);
    console.log(`  curl ${url}                    # no cookie: round robin`);
    console.log('Ctrl-C stops everything.');
  }

  let stopping = false;
  /**
   * SIGTERM/SIGINT: drain and exit. SIGUSR2: the same for a hand-over to a
   * new process already listening on --listen (SO_REUSEPORT): idle keep-alive
   * connections are given a moment to send one more request first.
   */
  const stop = (signal: string, graceMs: number): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal, timeoutMs: config.shutdownTimeoutMs }, signal === 'SIGUSR2' ? 'handing over: no longer accepting, draining' : 'shutting down');
    Promise.all([proxy.close(config.shutdownTimeoutMs, graceMs), ...demo.map((o) => o.close())]).then(
      () => { log.info('stopped'); log.flush(); process.exitCode = 0; setImmediate(() => process.exit(0)); },
      (err: Error) => { log.error({ err: err.message }, 'shutdown failed'); log.flush(); process.exit(1); },
    );
  };
  process.on('SIGINT', () => stop('SIGINT', 0));
  process.on('SIGTERM', () => stop('SIGTERM', 0));
  process.on('SIGUSR2', () => stop('SIGUSR2', HANDOVER_GRACE_MS));
  const accessFile = config.accessLog;
  if (accessFile !== null && accessFile !== '') {
    reopen = (): void => {
      log.info({ file: accessFile }, 'SIGUSR1: reopening the access log');
      proxy.reopenLogs();
    };
  }
  if (process.env.STICKY_PROXY_TEST_HOOKS === '1') {
    // Fault injection for tests: SIGTTIN ends an affinity worker, SIGTTOU crashes the second event loop.
    process.on('SIGTTIN', () => proxy.terminateOneWorker());
    process.on('SIGTTOU', () => proxy.crashLoop());
  }
  // Every module a start needs is loaded now: write the compile cache (bin/sticky-proxy.js) so the next start strips nothing.
  flushCompileCache();
}


/**
 * SIGHUP: re-reads the flags, the --config file and the TLS files, applies
 * the changed flags the table marks reloadable in every loop, and says in one
 * line which it applied, in another which need a restart (those are not
 * applied). A file that does not validate changes nothing.
 */
function reload(proxy: StickyProxy, running: { values: FlagValues; tls: Config['tls'] }, demo: boolean): void {
  const log = proxy.log;
  if (demo) {
    log.warn('SIGHUP: the demo has nothing to reload');
    return;
  }
  let command: Command;
  try {
    command = parseCommand(process.argv.slice(2));
  } catch (err) {
    log.error({ err: (err as Error).message }, 'SIGHUP: configuration rejected; nothing changed');
    return;
  }
  if (!('config' in command) || command.config.backends.length === 0) {
    log.error('SIGHUP: the new configuration has no backend; nothing changed');
    return;
  }
  const { config: next, values } = command;
  const changed = (Object.keys(FLAGS) as FlagName[]).filter((k) => !FLAGS[k].cliOnly && JSON.stringify(values[k]) !== JSON.stringify(running.values[k]));
  // A certificate renewed in place keeps its path: what counts is what the files hold.
  const tls = running.tls;
  if (tls !== null && next.tls !== null) {
    if (next.tls.cert !== tls.cert && !changed.includes('tls-cert')) changed.push('tls-cert');
    if (next.tls.key !== tls.key && !changed.includes('tls-key')) changed.push('tls-key');
  }
  // Turning TLS on or off changes the listener itself.
  const listenerChanged = (tls === null) !== (next.tls === null);
  const reloads = (k: FlagName): boolean => FLAGS[k].reload === true && !(listenerChanged && (k === 'tls-cert' || k === 'tls-key'));
  let applied = changed.filter(reloads);
  const waiting = changed.filter((k) => !reloads(k));
  // Backends that could not be given slots stay as they were, and count as
  // not yet applied: the next SIGHUP tries the same file again.
  if (applied.some((k) => APPLY[k] === 'backends') && !proxy.applyBackends(next.backends)) {
    applied = applied.filter((k) => APPLY[k] !== 'backends');
  }
  const apply = (): void => {
    if (applied.some((k) => APPLY[k] === 'settings')) {
      proxy.applySettings(loopReload(next, applied.includes('tls-cert') || applied.includes('tls-key')));
      if (!listenerChanged) running.tls = next.tls;
    }
    for (const k of applied) (running.values as Record<FlagName, unknown>)[k] = values[k];
  };
  const say = (): void => {
    if (applied.length > 0) log.info({ flags: applied.map((k) => `--${k}`) }, 'SIGHUP: applied');
  };
  // The line saying what was applied is written under whichever of the old and the new --log-level shows it.
  if (log.isLevelEnabled('info')) { say(); apply(); } else { apply(); say(); }
  if (waiting.length > 0) log.warn({ flags: waiting.map((k) => `--${k}`) }, 'SIGHUP: changed, but these need a restart; not applied');
  if (changed.length === 0) log.info('SIGHUP: nothing changed');
}

await main();
