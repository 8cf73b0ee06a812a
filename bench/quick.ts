// npm run bench:quick: the quick affinity benchmark. Throughput and latency of
// sticky-proxy with affinity on (memcached store), off (--no-affinity) and with
// the embedded store, same run, same origins, same load generator; seed
// scenario (95% returning sessions). Prints a small table.
// Flags: --duration S (default 3), --warmup S (1), --connections N (64), --json.
import { parseArgs } from 'node:util';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guard, stderrReporter } from './run.ts';
import { runSuite } from './lib/suite.ts';
import { DEFAULT_PEERS_DIR } from './lib/servers.ts';

const { values: a } = parseArgs({
  options: {
    duration: { type: 'string', default: '3' },
    warmup: { type: 'string', default: '1' },
    connections: { type: 'string', default: '64' },
    json: { type: 'boolean', default: false },
  },
});
const rep = stderrReporter();
const release = guard(120_000);
const res = await runSuite({
  scenarios: ['seed'],
  targets: ['sp-mc-w0', 'sp-noaff', 'sp-emb-w0'],
  connections: Number(a.connections),
  idleConnections: 0,
  idlePingMs: 0,
  warmupMs: Number(a.warmup) * 1000,
  durationMs: Number(a.duration) * 1000,
  rate: 0,
  origin: 'auto',
  peersDir: DEFAULT_PEERS_DIR,
  install: false,
  httpProxyCache: join(tmpdir(), 'sticky-proxy-bench-deps'),
  log: rep.log,
  progress: rep.progress,
});
release();
const names: Record<string, string> = { 'sp-mc-w0': 'affinity on, memcached', 'sp-noaff': 'affinity off (--no-affinity)', 'sp-emb-w0': 'affinity on, embedded store' };
if (a.json) {
  process.stdout.write(`${JSON.stringify(res.rows.map((r) => ({ target: r.target, requestsPerSec: r.requestsPerSec, p50: r.p50, p99: r.p99, errors: r.errors })))}\n`);
} else {
  const off = res.rows.find((r) => r.target === 'sp-noaff');
  const out = ['| sticky-proxy | req/s | vs off | p50 ms | p99 ms | errors |', '|---|---:|---:|---:|---:|---:|'];
  for (const r of res.rows) {
    const vs = off ? `${((r.requestsPerSec / off.requestsPerSec) * 100).toFixed(0)}%` : '–';
    out.push(`| ${names[r.target]} | ${r.requestsPerSec.toLocaleString('en-US')} | ${vs} | ${r.p50} | ${r.p99} | ${r.errors} |`);
  }
  for (const f of res.failed) out.push(`| ${names[f.target]} | failed: ${f.reason} |||||`);
  for (const s of res.skipped) out.push(`| ${names[s.target]} | skipped: ${s.reason} |||||`);
  process.stdout.write(`${out.join('\n')}\n`);
}
if (res.rows.length === 0) process.exitCode = 1;
