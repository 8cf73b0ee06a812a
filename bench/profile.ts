// npm run bench:profile: where a request's CPU goes, by part (our parsing,
// heads, connection handling, affinity and metrics; Node's streams; V8's
// builtins, collector and compilers; the kernel), in µs per request, for
// sticky-proxy configurations side by side.
//
//   npm run bench:profile -- [--config LABEL=FLAGS]... [--against DIR] [--haproxy] [--scenario seed|storm]
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
// noaff=--no-affinity and memcached=--memcache MEMCACHED. --haproxy profiles
// HAProxy's stick table (peers config, nbthread 1) in the same rounds, its own
// code in one row. --top N lists our N most expensive functions per
// configuration (default 12; 0: none).
// Needs perf (Debian: linux-perf), as root or with kernel.perf_event_paranoid ≤ 1.
import { parseArgs } from 'node:util';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_CONFIGS, checkouts, median, needsMemcached, parseConfigs, plainJob, plainScenario, proxyArgs, type Config } from './lib/configs.ts';
import { drive } from './lib/drive.ts';
import { byPart, ourFunctions, parseReport, PARTS, type Sample } from './lib/perf-report.ts';
import { track, which } from './lib/procs.ts';
import { DEFAULT_PEERS_DIR, startHaproxy, startOrigins, type Origins } from './lib/servers.ts';
import { guard, stderrReporter } from './run.ts';
import { startMemcached, type Memcached } from '../test/helpers/memcached.ts';
import { NODE_FLAGS, startProxy } from '../test/helpers/proxy.ts';

const { values: a } = parseArgs({
  options: {
    config: { type: 'string', multiple: true, default: DEFAULT_CONFIGS },
    against: { type: 'string' },
    haproxy: { type: 'boolean', default: false },
    scenario: { type: 'string', default: 'seed' },
    rounds: { type: 'string', default: '2' },
    seconds: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '5' },
    connections: { type: 'string', default: '64' },
    rate: { type: 'string', default: '0' },
    top: { type: 'string', default: '12' },
  },
});
const scenario = plainScenario(a.scenario);
const perf = which('perf');
if (perf === null) {
  process.stderr.write('bench:profile: perf is not installed (Debian: apt-get install linux-perf); nothing to profile\n');
  process.exit(1);
}
const rounds = Number(a.rounds);
const seconds = Number(a.seconds);
const warmup = Number(a.warmup);
const top = Number(a.top);
const configs = parseConfigs(a.config);
/** A sticky-proxy configuration from a checkout, or (config null) HAProxy. */
interface Target {
  label: string;
  config: Config | null;
  root: string;
}
const targets: Target[] = configs.flatMap((c) => checkouts(a.against).map((t) => ({ config: c, label: c.label + t.suffix, root: t.root })));
if (a.haproxy) {
  if (which('haproxy') === null) process.stderr.write('bench:profile: haproxy is not installed: skipped\n');
  else targets.push({ label: 'haproxy', config: null, root: '' });
}

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

/** A started target: where it listens, the process perf samples, whether it writes a jitdump. */
interface Started {
  port: number;
  pid: number;
  jit: boolean;
  stop(): Promise<unknown>;
}

async function start(o: Origins, target: Target, n: number, jitDir: string): Promise<Started> {
  if (target.config === null) {
    const h = await startHaproxy(DEFAULT_PEERS_DIR, jitDir, o, 1);
    return { port: h.port, pid: h.pids()[0], jit: false, stop: h.stop };
  }
  const proxy = await startProxy(
    proxyArgs(target.config, o, memcached?.address ?? null, `profile-${n}:`), {}, target.root,
    // --perf-prof also turns on V8's code log: it goes to the temp dir too, one file for every isolate.
    [...NODE_FLAGS, '--perf-prof', `--perf-prof-path=${jitDir}`, '--interpreted-frames-native-stack', '--no-logfile-per-isolate', `--logfile=${join(jitDir, 'v8.log')}`],
  );
  track(proxy.proc);
  return { port: Number(new URL(proxy.url).port), pid: proxy.pid, jit: true, stop: () => proxy.stop() };
}

/** Starts `target` alone, loads it, and profiles the measured window. */
async function profileOnce(o: Origins, target: Target, n: number): Promise<Profile> {
  const jitDir = mkdtempSync(join(dir, 'jit-'));
  const running = await start(o, target, n, jitDir);
  const raw = join(jitDir, 'perf.raw');
  // perf keeps a copy of every binary it saw (the JIT's too, one per code object) in ~/.debug: here, in the temp dir.
  const env = { ...process.env, HOME: jitDir, PERF_BUILDID_DIR: join(jitDir, '.debug') };
  const rec: { perf: ChildProcess | null } = { perf: null };
  try {
    const job = plainJob(running.port, scenario, { connections: Number(a.connections), warmupMs: warmup * 1000, durationMs: seconds * 1000, rate: Number(a.rate) });
    // -k 1: the monotonic clock that jitdump's records carry, so perf inject can match them.
    const m = await drive(job, { target: () => [running.pid], origins: () => [], store: () => [] }, () => {}, {
      start: () => {
        rec.perf = spawn(perf!, ['record', '-q', '-N', '-k', '1', '-F', '999', '-p', String(running.pid), '-o', raw], { stdio: 'ignore', env });
        track(rec.perf);
      },
      end: () => { rec.perf?.kill('SIGINT'); },
    });
    if (rec.perf === null) throw new Error('the load generator never opened its measured window');
    if (rec.perf.exitCode === null && rec.perf.signalCode === null) await once(rec.perf, 'exit');
    await running.stop(); // the jitdump is complete once the process is gone
    let injected = raw;
    if (running.jit) {
      injected = join(jitDir, 'perf.data');
      const inject = spawnSync(perf!, ['inject', '--jit', '-i', raw, '-o', injected], { cwd: jitDir, encoding: 'utf8', env });
      if (inject.status !== 0) throw new Error(`perf inject: ${inject.stderr.trim()}`);
    }
    const report = spawnSync(perf!, ['report', '-i', injected, '--no-children', '--sort', 'dso,sym', '--stdio'], { cwd: jitDir, encoding: 'utf8', maxBuffer: 64 << 20, env });
    if (report.status !== 0) throw new Error(`perf report: ${report.stderr.trim()}`);
    return { usPerRequest: (m.targetCpu / m.result.requests) * 1e6, requestsPerSec: m.result.requests / m.result.seconds, samples: parseReport(report.stdout) };
  } finally {
    if (rec.perf !== null && rec.perf.exitCode === null && rec.perf.signalCode === null) rec.perf.kill('SIGKILL');
    await running.stop().catch(() => {});
    rmSync(jitDir, { recursive: true, force: true });
  }
}

try {
  const o = await startOrigins(which('nginx') !== null ? 'nginx' : 'node', dir, DEFAULT_PEERS_DIR);
  origins = o;
  rep.log(`origins: ${o.kind} on ports ${o.servers.map((s) => s.port).join(', ')}`);
  if (needsMemcached(configs)) {
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
    ...PARTS.filter((part) => !part.startsWith('HAProxy') || targets.some((t) => t.config === null)).map((part) => `| ${part} | ${targets.map((_, j) => cell(j, (p) => usOf(p, byPart(p.samples).get(part)!))).join(' | ')} |`),
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
