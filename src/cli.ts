// Entry point: `sticky-proxy [flags]`, or the demo when no backend is given.
import { readFileSync } from 'node:fs';
import { flushCompileCache } from 'node:module';
import { ConfigError, HELP, parseCommand, type Command, type Config } from './config.ts';
import type { DemoOrigin } from './demo.ts';
import { FLAGS, type FlagName, type FlagValues } from './flags.ts';
import { createLogger } from './log.ts';
import { StickyProxy } from './proxy.ts';

// How SIGHUP applies each flag whose table entry says `reload: true`.
/**
 * On a hand-over (SIGUSR2), an idle keep-alive connection is closed only once
 * idle this long: a client about to send on it is answered (with Connection:
 * close) rather than cut, and reconnects to the new process.
 */
const HANDOVER_GRACE_MS = 1000;

const APPLY: { [K in FlagName]?: (proxy: StickyProxy, next: Config) => void } = {
  backend: (proxy, next) => proxy.applyBackends(next.backends),
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
  process.on('SIGHUP', () => reload(proxy, values, demo.length > 0));
  if (process.env.STICKY_PROXY_TEST_HOOKS === '1') {
    // Fault injection for tests: SIGTTIN ends an affinity worker, SIGTTOU crashes the second event loop.
    process.on('SIGTTIN', () => proxy.terminateOneWorker());
    process.on('SIGTTOU', () => proxy.crashLoop());
  }
  // Every module a start needs is loaded now: write the compile cache (bin/sticky-proxy.js) so the next start strips nothing.
  flushCompileCache();
}


/**
 * SIGHUP: re-reads the flags and the --config file and applies the changed
 * flags the table marks reloadable; it says which changes wait for a restart.
 * A file that does not validate changes nothing.
 */
function reload(proxy: StickyProxy, running: FlagValues, demo: boolean): void {
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
  const changed = (Object.keys(FLAGS) as FlagName[]).filter((k) => !FLAGS[k].cliOnly && JSON.stringify(values[k]) !== JSON.stringify(running[k]));
  const applied = changed.filter((k) => FLAGS[k].reload);
  const waiting = changed.filter((k) => !FLAGS[k].reload);
  for (const k of applied) {
    APPLY[k]!(proxy, next);
    (running as Record<FlagName, unknown>)[k] = values[k];
  }
  if (applied.length > 0) log.info({ flags: applied.map((k) => `--${k}`) }, 'SIGHUP: applied');
  if (waiting.length > 0) log.warn({ flags: waiting.map((k) => `--${k}`) }, 'SIGHUP: these settings take effect at the next restart');
}

await main();
