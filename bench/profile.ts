// npm run bench:profile: where a request's CPU goes, by part (our parsing,
// heads, connection handling, affinity and metrics; Node's streams; V8's
// builtins, collector and compilers; the kernel), in µs per request, for
// sticky-proxy configurations side by side.
//
//   npm run bench:profile -- [--config LABEL=FLAGS]... [--against DIR] [--scenario seed|storm]
//                            [--rounds N] [--seconds S] [--warmup S] [--connections C] [--rate R] [--top N]
//
// Each round starts every configuration fresh, alone on the machine, and
// drives it (closed loop by default: saturation; --rate R for a fixed rate)
// while `perf record` samples the process over the measured window. Node runs
// with --perf-prof, and `perf inject --jit` names its JIT code (see
// bench/lib/perf-report.ts for why not the plain perf map). Each sample's own
// time goes to its part; a part's share of the samples times the CPU per
// request (utime+stime from /proc over the same window) gives its µs per
// request. Cells are medians over the rounds, so the parts need not add up
// to the total exactly.
//
// --config and --against as in bench:paired (MEMCACHED in FLAGS is this run's
// memcached; --threads 1 unless FLAGS say otherwise). Default configs:
// noaff=--no-affinity and memcached=--memcache MEMCACHED. --top N lists our
// N most expensive functions per configuration (default 12; 0: none).
// Needs perf (Debian: linux-perf), as root or with kernel.perf_event_paranoid ≤ 1.
import { parseArgs } from 'node:util';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Job } from './loadgen.ts';
import { drive } from './lib/drive.ts';
import { byPart, ourFunctions, parseReport, PARTS, type Sample } from './lib/perf-report.ts';
import { track, which } from './lib/procs.ts';
import { DEFAULT_PEERS_DIR, startOrigins, type Origins } from './lib/servers.ts';
import { SCENARIOS } from './lib/suite.ts';
import { guard, stderrReporter } from './run.ts';
import { startMemcached, type Memcached } from '../test/helpers/memcached.ts';
import { NODE_FLAGS, ROOT, startProxy } from '../test/helpers/proxy.ts';

const { values: a } = parseArgs({
  options: {
    config: { type: 'string', multiple: true, default: ['noaff=--no-affinity', 'memcached=--memcache MEMCACHED'] },
    against: { type: 'string' },
    scenario: { type: 'string', default: 'seed' },
    rounds: { type: 'string', default: '2' },
    seconds: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '5' },
    connections: { type: 'string', default: '64' },
    rate: { type: 'string', default: '0' },
    top: { type: 'string', default: '12' },
  },
});
const scenario = SCENARIOS.find((s) => s.id === a.scenario && s.bodyBytes === 0 && s.idleConnections === 0);
if (scenario === undefined) throw new Error(`--scenario: one of ${SCENARIOS.filter((s) => s.bodyBytes === 0 && s.idleConnections === 0).map((s) => s.id).join(', ')}`);
const perf = which('perf');
if (perf === null) {
  process.stderr.write('bench:profile: perf is not installed (Debian: apt-get install linux-perf); nothing to profile\n');
  process.exit(1);
}
const rounds = Number(a.rounds);
const seconds = Number(a.seconds);
const warmup = Number(a.warmup);
const top = Number(a.top);
const configs = a.config.map((c) => {
  const eq = c.indexOf('=');
  if (eq <= 0) throw new Error(`--config ${c}: expected LABEL=FLAGS`);
  return { label: c.slice(0, eq), flags: c.slice(eq + 1).split(/\s+/).filter((f) => f !== '') };
});
const trees = [{ root: ROOT, suffix: '' }, ...(a.against === undefined ? [] : [{ root: resolve(a.against), suffix: '@base' }])];
const targets = configs.flatMap((c) => trees.map((t) => ({ label: c.label + t.suffix, flags: c.flags, root: t.root })));

/** One measured run of one target. */
interface Profile {
  usPerRequest: number;
  requestsPerSec: number;
  samples: Sample[];
}

const rep = stderrReporter();
const release = guard((rounds * targets.length * (warmup + seconds + 30) + 120) * 1000);
const dir = mkdtempSync(join(tmpdir(), 'sticky-proxy-profile-'));
let origins: Origins | null = null;
let memcached: Memcached | null = null;

/** Starts `target` alone, loads it, and profiles the measured window. */
async function profileOnce(o: Origins, target: (typeof targets)[number], n: number): Promise<Profile> {
  const jitDir = mkdtempSync(join(dir, 'jit-'));
  const backends = o.servers.flatMap((s) => ['--backend', `${s.name}=http://127.0.0.1:${s.port}`]);
  const flags = target.flags.map((f) => (f === 'MEMCACHED' ? memcached!.address : f));
  const threads = flags.includes('--threads') ? [] : ['--threads', '1'];
  const proxy = await startProxy(
    [...backends, '--log-level', 'warn', '--key-prefix', `profile-${n}:`, ...threads, ...flags], {}, target.root,
    // --perf-prof also turns on V8's code log: it goes to the temp dir too, one file for every isolate.
    [...NODE_FLAGS, '--perf-prof', `--perf-prof-path=${jitDir}`, '--interpreted-frames-native-stack', '--no-logfile-per-isolate', `--logfile=${join(jitDir, 'v8.log')}`],
  );
  track(proxy.proc);
  const raw = join(jitDir, 'perf.raw');
  const rec: { perf: ChildProcess | null } = { perf: null };
  try {
    const job: Job = {
      port: Number(new URL(proxy.url).port), connections: Number(a.connections), idleConnections: 0, idlePingMs: 0,
      warmupMs: warmup * 1000, durationMs: seconds * 1000, rate: Number(a.rate),
      newShare: scenario!.newShare, method: scenario!.method, paths: scenario!.paths, bodyBytes: 0,
      cookieName: 'PHPSESSID', maxSessions: 20_000, requestTimeoutMs: 10_000, progressMs: 1000,
    };
    // -k 1: the monotonic clock that jitdump's records carry, so perf inject can match them.
    const m = await drive(job, { target: () => [proxy.pid], origins: () => [], store: () => [] }, () => {}, {
      start: () => {
        rec.perf = spawn(perf!, ['record', '-q', '-k', '1', '-F', '999', '-p', String(proxy.pid), '-o', raw], { stdio: 'ignore' });
        track(rec.perf);
      },
      end: () => { rec.perf?.kill('SIGINT'); },
    });
    if (rec.perf === null) throw new Error('the load generator never opened its measured window');
    if (rec.perf.exitCode === null && rec.perf.signalCode === null) await once(rec.perf, 'exit');
    await proxy.stop(); // the jitdump is complete once the process is gone
    const injected = join(jitDir, 'perf.data');
    const inject = spawnSync(perf!, ['inject', '--jit', '-i', raw, '-o', injected], { cwd: jitDir, encoding: 'utf8' });
    if (inject.status !== 0) throw new Error(`perf inject: ${inject.stderr.trim()}`);
    const report = spawnSync(perf!, ['report', '-i', injected, '--no-children', '--sort', 'dso,sym', '--stdio'], { cwd: jitDir, encoding: 'utf8', maxBuffer: 64 << 20 });
    if (report.status !== 0) throw new Error(`perf report: ${report.stderr.trim()}`);
    return { usPerRequest: (m.targetCpu / m.result.requests) * 1e6, requestsPerSec: m.result.requests / m.result.seconds, samples: parseReport(report.stdout) };
  } finally {
    if (rec.perf !== null && rec.perf.exitCode === null && rec.perf.signalCode === null) rec.perf.kill('SIGKILL');
    await proxy.stop().catch(() => {});
    rmSync(jitDir, { recursive: true, force: true });
  }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

try {
  const o = await startOrigins(which('nginx') !== null ? 'nginx' : 'node', dir, DEFAULT_PEERS_DIR);
  origins = o;
  rep.log(`origins: ${o.kind} on ports ${o.servers.map((s) => s.port).join(', ')}`);
  if (configs.some((c) => c.flags.includes('MEMCACHED'))) {
    memcached = await startMemcached();
    if (memcached.proc) track(memcached.proc);
  }
  const runs: Profile[][] = targets.map(() => []);
  let n = 0;
  for (let r = 1; r <= rounds; r++) {
    for (let j = 0; j < targets.length; j++) {
      rep.progress(`round ${r}/${rounds}: ${targets[j].label}`);
      runs[j].push(await profileOnce(o, targets[j], n++));
    }
  }
  rep.progress(null);

  const cell = (j: number, f: (p: Profile) => number, digits = 2): string => median(runs[j].map(f)).toFixed(digits);
  // µs per request of `share` per cent of one run's samples.
  const usOf = (p: Profile, share: number): number => (share / 100) * p.usPerRequest;
  const load = Number(a.rate) > 0 ? `fixed rate ${a.rate} req/s` : 'closed loop';
  const out = [
    `${scenario.id}, ${load}, ${a.connections} connections; each configuration alone and fresh, ${rounds} round(s) of ${warmup} s warm-up + ${seconds} s profiled; medians of the rounds`,
    '',
    `| µs of CPU per request | ${targets.map((t) => t.label).join(' | ')} |`,
    `|---|${targets.map(() => '---:').join('|')}|`,
    `| req/s | ${targets.map((_, j) => Math.round(median(runs[j].map((p) => p.requestsPerSec))).toLocaleString('en-US')).join(' | ')} |`,
    ...PARTS.map((part) => `| ${part} | ${targets.map((_, j) => cell(j, (p) => usOf(p, byPart(p.samples).get(part)!))).join(' | ')} |`),
    `| **total** (CPU from /proc) | ${targets.map((_, j) => `**${cell(j, (p) => p.usPerRequest, 1)}**`).join(' | ')} |`,
  ];
  if (top > 0) {
    const names = new Set<string>();
    for (const rs of runs) for (const p of rs) for (const [f] of ourFunctions(p.samples).slice(0, top)) names.add(f);
    const fnUs = (p: Profile, f: string): number => usOf(p, ourFunctions(p.samples).find(([g]) => g === f)?.[1] ?? 0);
    const rows = [...names].map((f) => ({ f, us: targets.map((_, j) => median(runs[j].map((p) => fnUs(p, f)))) }));
    rows.sort((x, y) => Math.max(...y.us) - Math.max(...x.us));
    out.push('', `Our functions, own time (the ${top} most expensive of each run):`, '',
      `| µs per request | ${targets.map((t) => t.label).join(' | ')} |`, `|---|${targets.map(() => '---:').join('|')}|`,
      ...rows.map((row) => `| \`${row.f}\` | ${row.us.map((u) => u.toFixed(2)).join(' | ')} |`));
  }
  process.stdout.write(`${out.join('\n')}\n`);
} finally {
  await memcached?.stop().catch(() => {});
  await origins?.stop().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
  release();
}
