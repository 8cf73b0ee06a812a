// npm run bench [-- flags]: every target side by side, every scenario, one run.
// See bench/README.md. Logs and the progress line go to stderr; the Markdown
// table (or, with --json, the summary as one JSON line) to stdout.
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { killAll } from './lib/procs.ts';
import { machine, markdown, summary, writeResults } from './lib/report.ts';
import { DEFAULT_TARGETS, QUICK_TARGETS, SCENARIOS, resolveTargets, runSuite, type Options } from './lib/suite.ts';
import { DEFAULT_PEERS_DIR } from './lib/servers.ts';

export const USAGE = `Usage: npm run bench -- [flags]

  --quick                 a ~20 s subset: ${QUICK_TARGETS.join(', ')}; seed scenario
  --scenarios a,b         of ${SCENARIOS.map((s) => s.id).join(', ')} (default: all)
  --targets a,b           target ids, * allowed (sp-mc-*); default: per scenario
  --duration S            measured seconds per target and scenario (default 5; quick 3)
  --warmup S              warm-up seconds before measuring (default 1.5; quick 1)
  --connections N         active keep-alive connections (default 64)
  --idle-connections N    idle connections of the conns scenario (default 5000)
  --idle-ping S           each idle connection sends a request every S s (default 4; 0: never)
  --rate R                fixed rate of R req/s, latency from intended send times (default: closed loop)
  --origin KIND           auto | nginx | node (default auto: nginx when installed)
  --peers DIR             the peers' configurations (default ${DEFAULT_PEERS_DIR})
  --out DIR               where results go (default bench/results, quick: bench/results/quick)
  --no-install            do not npm-install http-proxy@1.18.1 for the node-http-proxy peer
  --timeout S             hard limit on the whole run (default 900; quick 150)
  --json                  print the summary as one JSON line instead of the Markdown table
  -h, --help
`;

export interface Cli { opts: Options; outDir: string; json: boolean; timeoutMs: number }

export function parseCli(argv: string[], log: (s: string) => void, progress: (s: string | null) => void): Cli | null {
  const { values: a } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      scenarios: { type: 'string' },
      targets: { type: 'string' },
      duration: { type: 'string' },
      warmup: { type: 'string' },
      connections: { type: 'string', default: '64' },
      'idle-connections': { type: 'string', default: '5000' },
      'idle-ping': { type: 'string', default: '4' },
      rate: { type: 'string', default: '0' },
      origin: { type: 'string', default: 'auto' },
      peers: { type: 'string', default: DEFAULT_PEERS_DIR },
      out: { type: 'string' },
      'no-install': { type: 'boolean', default: false },
      timeout: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (a.help) return null;
  const num = (flag: string, raw: string | undefined, def: number, min = 0): number => {
    if (raw === undefined) return def;
    const n = Number(raw);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${flag}: expected a number ≥ ${min}, got "${raw}"`);
    return n;
  };
  if (!['auto', 'nginx', 'node'].includes(a.origin)) throw new Error(`--origin: auto, nginx or node, not "${a.origin}"`);
  const quick = a.quick;
  const scenarios = a.scenarios?.split(',').filter(Boolean) ?? (quick ? ['seed'] : SCENARIOS.map((s) => s.id));
  const targets = a.targets !== undefined ? resolveTargets(a.targets.split(',').filter(Boolean)) : quick ? QUICK_TARGETS : null;
  const opts: Options = {
    scenarios,
    targets,
    connections: num('connections', a.connections, 64, 1),
    idleConnections: num('idle-connections', a['idle-connections'], 5000),
    idlePingMs: num('idle-ping', a['idle-ping'], 4) * 1000,
    warmupMs: num('warmup', a.warmup, quick ? 1 : 1.5) * 1000,
    durationMs: num('duration', a.duration, quick ? 3 : 5, 0.1) * 1000,
    rate: num('rate', a.rate, 0),
    origin: a.origin as Options['origin'],
    peersDir: a.peers,
    install: !a['no-install'],
    httpProxyCache: join(tmpdir(), 'sticky-proxy-bench-deps'),
    log,
    progress,
  };
  const outDir = a.out ?? fileURLToPath(new URL(quick ? './results/quick/' : './results/', import.meta.url));
  return { opts, outDir, json: a.json, timeoutMs: num('timeout', a.timeout, quick ? 150 : 900, 1) * 1000 };
}

/** Log lines and a progress line on stderr (rewritten in place on a terminal). */
export function stderrReporter(): { log: (s: string) => void; progress: (s: string | null) => void } {
  const tty = process.stderr.isTTY === true;
  let shown = false;
  let last = 0;
  return {
    log: (s) => {
      if (shown) { process.stderr.write('\r\x1b[2K'); shown = false; }
      process.stderr.write(`${s}\n`);
    },
    progress: (s) => {
      if (s === null) {
        if (shown) process.stderr.write('\r\x1b[2K');
        shown = false;
        return;
      }
      if (tty) { process.stderr.write(`\r\x1b[2K${s.slice(0, (process.stderr.columns ?? 120) - 1)}`); shown = true; return; }
      // Not a terminal: a line every few seconds is enough to show life.
      if (Date.now() - last >= 3000) { last = Date.now(); process.stderr.write(`  ${s}\n`); }
    },
  };
}

/** Exits the process on the hard time limit or a signal, after killing every child. */
export function guard(timeoutMs: number): () => void {
  process.on('exit', killAll);
  const bail = (code: number, why: string): void => {
    process.stderr.write(`\nbench: ${why}; stopping everything\n`);
    killAll();
    process.exit(code);
  };
  const onInt = (): void => bail(130, 'interrupted');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onInt);
  const timer = setTimeout(() => bail(3, `hard time limit of ${timeoutMs / 1000} s reached`), timeoutMs);
  return () => {
    clearTimeout(timer);
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onInt);
  };
}

async function main(): Promise<void> {
  const rep = stderrReporter();
  let cli: Cli | null;
  try {
    cli = parseCli(process.argv.slice(2), rep.log, rep.progress);
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n${USAGE}`);
    process.exit(2);
  }
  if (cli === null) { process.stdout.write(USAGE); return; }
  const { opts } = cli;
  const runs = opts.scenarios.reduce((n, s) => n + (opts.targets ?? DEFAULT_TARGETS[s] ?? []).length, 0);
  rep.log(`bench: ${opts.scenarios.join(', ')} × ${runs} runs of ${opts.warmupMs / 1000} s warm-up + ${opts.durationMs / 1000} s; ` +
    `about ${Math.ceil((runs * (opts.warmupMs + opts.durationMs + 1500)) / 60_000)} min; hard limit ${cli.timeoutMs / 1000} s`);
  const release = guard(cli.timeoutMs);
  const res = await runSuite(opts);
  release();
  const m = machine();
  const files = writeResults(res, cli.outDir, m);
  rep.log(`results: ${files.length} files in ${cli.outDir}`);
  if (cli.json) process.stdout.write(`${JSON.stringify(summary(res, m))}\n`);
  else process.stdout.write(markdown(res, m));
  if (res.rows.length === 0) process.exitCode = 1;
}

if (import.meta.main) await main();
