// Entry point: `sticky-proxy [flags]`, or the demo when no backend is given.
import { ConfigError, HELP, parseConfig, type Config } from './config.ts';
import { startDemoOrigin, type DemoOrigin } from './demo.ts';
import { createLogger } from './log.ts';
import { StickyProxy } from './proxy.ts';

async function main(): Promise<void> {
  let config: Config | null;
  try {
    config = parseConfig(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`sticky-proxy: ${err.message}\n`);
    process.exit(2);
  }
  if (config === null) {
    process.stdout.write(HELP);
    return;
  }
  const log = createLogger(config.logLevel);

  const demo: DemoOrigin[] = [];
  if (config.backends.length === 0) {
    demo.push(await startDemoOrigin('srv1'), await startDemoOrigin('srv2'));
    config.backends = demo.map((o) => ({ name: o.name, url: new URL(o.url), weight: 1 }));
  }

  let proxy: StickyProxy;
  try {
    proxy = await StickyProxy.start(config, log);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    process.stderr.write(`sticky-proxy: --listen: cannot listen on ${config.listenHost}:${config.listenPort} (${e.code ?? e.message})\n`);
    process.exit(2);
  }
  const url = `${config.tls === null ? 'http' : 'https'}://${config.listenHost.includes(':') ? `[${config.listenHost}]` : config.listenHost}:${proxy.port}`;
  log.info({ url, store: proxy.storeDescription, workers: config.workers, backends: config.backends.length }, 'listening');
  console.log(`sticky-proxy listening on ${url}`);
  console.log(`backends: ${config.backends.map((b) => `${b.name}=${b.url.origin} (weight ${b.weight})`).join(', ')}`);
  if (proxy.adminPort !== null) console.log(`admin on http://${config.admin!.host}:${proxy.adminPort}`);
  console.log(`store: ${proxy.storeDescription}; workers: ${config.workers}; balance: ${config.balance}`);
  if (demo.length > 0) {
    console.log(`\ndemo: two session origins (srv1, srv2) behind the proxy. Try:`);
    console.log(`  curl -c cookie.jar ${url}      # a new session, on some real-server`);
    console.log(`  curl -b cookie.jar ${url}      # the same real-server and session, every time`);
    console.log(`  curl ${url}                    # no cookie: round robin`);
    console.log('Ctrl-C stops everything.');
  }

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal, timeoutMs: config.shutdownTimeoutMs }, 'shutting down');
    Promise.all([proxy.close(config.shutdownTimeoutMs), ...demo.map((o) => o.close())]).then(
      () => { log.info('stopped'); log.flush(); process.exitCode = 0; setImmediate(() => process.exit(0)); },
      (err: Error) => { log.error({ err: err.message }, 'shutdown failed'); log.flush(); process.exit(1); },
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.on('SIGHUP', () => reload(proxy, config, demo.length > 0));
  if (process.env.STICKY_PROXY_TEST_HOOKS === '1') process.on('SIGUSR2', () => proxy.terminateOneWorker());
}

/**
 * SIGHUP: re-reads the flags and the --config file and applies the backend
 * list. Other settings need a restart; a reload that changes them says so. A
 * file that does not validate changes nothing.
 */
function reload(proxy: StickyProxy, running: Config, demo: boolean): void {
  const log = proxy.log;
  if (demo) {
    log.warn('SIGHUP: the demo has nothing to reload');
    return;
  }
  let next: Config | null;
  try {
    next = parseConfig(process.argv.slice(2));
  } catch (err) {
    log.error({ err: (err as Error).message }, 'SIGHUP: configuration rejected; nothing changed');
    return;
  }
  if (next === null || next.backends.length === 0) {
    log.error('SIGHUP: the new configuration has no backend; nothing changed');
    return;
  }
  proxy.applyBackends(next.backends);
  const ignored = Object.keys(next).filter((k) => k !== 'backends' && JSON.stringify(next[k as keyof Config]) !== JSON.stringify(running[k as keyof Config]));
  if (ignored.length > 0) log.warn({ settings: ignored }, 'SIGHUP: these settings take effect at the next restart');
}

await main();
