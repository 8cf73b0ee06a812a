// The benchmark suite: scenarios × targets, one load generator for all, one
// run. Each (scenario, target) pair gets a freshly started target, so its peak
// RSS and CPU belong to that scenario alone. Origins and memcached live for the
// whole run. Used by bench/run.ts (npm run bench) and bench/quick.ts.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type * as hdr from 'hdr-histogram-js';
import { startMemcached, type Memcached } from '../../test/helpers/memcached.ts';
import type { Job } from '../loadgen.ts';
import { drive, type ProgressSink } from './drive.ts';
import { killAll, peakRssMiB, pin, rssMiB, track, which } from './procs.ts';
import {
  ensureHttpProxy, startHaproxy, startHttpProxy, startNginxHash, startOrigins, startSticky,
  LARGE_BYTES, type Origins, type Running,
} from './servers.ts';

export interface ScenarioDef {
  id: string;
  title: string;
  newShare: number;
  method: 'GET' | 'POST';
  paths: string[];
  bodyBytes: number;
  idleConnections: number;
}

export const SCENARIOS: ScenarioDef[] = [
  { id: 'seed', title: 'seed: 95% returning sessions, 5% new', newShare: 0.05, method: 'GET', paths: ['/', '/cart', '/account'], bodyBytes: 0, idleConnections: 0 },
  { id: 'storm', title: 'new-session storm: 100% new sessions', newShare: 1, method: 'GET', paths: ['/', '/cart', '/account'], bodyBytes: 0, idleConnections: 0 },
  { id: 'large', title: 'large responses: 1 MiB each (GET /large)', newShare: 0.05, method: 'GET', paths: ['/large'], bodyBytes: 0, idleConnections: 0 },
  { id: 'upload', title: 'uploads: 1 MiB POST /upload', newShare: 0.05, method: 'POST', paths: ['/upload'], bodyBytes: LARGE_BYTES, idleConnections: 0 },
  { id: 'conns', title: 'many connections: 5,000 idle keep-alive connections plus the seed load', newShare: 0.05, method: 'GET', paths: ['/', '/cart', '/account'], bodyBytes: 0, idleConnections: 5000 },
];

type Needs = 'memcached' | 'haproxy' | 'nginx' | 'http-proxy' | null;

export interface TargetDef {
  id: string;
  label: string;
  /** A sticky-proxy configuration (or another balancer), not the origin itself. */
  proxy: boolean;
  needs: Needs;
  /** CPUs its processes are pinned to (taskset), for the thread curve; none: unpinned. */
  cpus?: string;
  start(env: Env): Promise<Running>;
}

interface Env {
  origins: Origins;
  memcache: string | null;
  peersDir: string;
  dir: string;
  httpProxyPath: string | null;
}

function sticky(id: string, label: string, store: 'memcached' | 'embedded' | 'none', workers: number, threads: number | null = null): TargetDef {
  return {
    id,
    label,
    proxy: true,
    needs: store === 'memcached' ? 'memcached' : null,
    start: (env) => startSticky(env.origins, { memcache: store === 'memcached' ? env.memcache : null, workers, affinity: store !== 'none', threads }),
  };
}

/** The thread curve: N threads pinned to the first min(N, cores) CPUs, for sticky-proxy and HAProxy alike. */
export const THREAD_COUNTS = [1, 2, 4];
const CORES = availableParallelism();
const cpusFor = (n: number): string => (Math.min(n, CORES) === 1 ? '0' : `0-${Math.min(n, CORES) - 1}`);

export const TARGETS: TargetDef[] = [
  {
    id: 'origin', label: 'origin directly (srv1, the ceiling)', proxy: false, needs: null,
    start: async (env) => ({ port: env.origins.servers[0].port, pids: () => env.origins.pids(), stop: async () => {} }),
  },
  ...[0, 1, 2, 4].map((w) => sticky(`sp-mc-w${w}`, `sticky-proxy, memcached, --workers ${w}`, 'memcached', w)),
  ...[0, 1, 2, 4].map((w) => sticky(`sp-emb-w${w}`, `sticky-proxy, embedded store, --workers ${w}`, 'embedded', w)),
  sticky('sp-noaff', 'sticky-proxy --no-affinity', 'none', 0),
  { id: 'haproxy', label: 'HAProxy stick table', proxy: true, needs: 'haproxy', start: (env) => startHaproxy(env.peersDir, env.dir, env.origins) },
  ...THREAD_COUNTS.map((n): TargetDef => ({ ...sticky(`sp-t${n}`, `sticky-proxy, memcached, --threads ${n}, pinned to CPUs ${cpusFor(n)}`, 'memcached', 0, n), cpus: cpusFor(n) })),
  ...THREAD_COUNTS.map((n): TargetDef => ({
    id: `haproxy-t${n}`, label: `HAProxy stick table, nbthread ${n}, pinned to CPUs ${cpusFor(n)}`, proxy: true, needs: 'haproxy', cpus: cpusFor(n),
    start: (env) => startHaproxy(env.peersDir, env.dir, env.origins, n),
  })),
  { id: 'nginx-hash', label: 'NGINX hash on cookie', proxy: true, needs: 'nginx', start: (env) => startNginxHash(env.peersDir, env.dir, env.origins) },
  {
    id: 'http-proxy', label: 'node-http-proxy + Map affinity', proxy: true, needs: 'http-proxy',
    start: (env) => startHttpProxy(env.peersDir, env.dir, env.origins, env.httpProxyPath!),
  },
];

const ALL = TARGETS.map((t) => t.id);
const CURVE = TARGETS.filter((t) => t.cpus !== undefined).map((t) => t.id);
const CORE = ['origin', 'sp-mc-w0', 'sp-emb-w0', 'sp-noaff', 'haproxy', 'nginx-hash', 'http-proxy'];
/** Default targets per scenario: the --workers sweep where affinity work matters most, the thread curve on seed. */
export const DEFAULT_TARGETS: Record<string, string[]> = { seed: ALL, storm: ALL.filter((t) => !CURVE.includes(t)), large: CORE, upload: CORE, conns: CORE };
export const QUICK_TARGETS = ['origin', 'sp-mc-w0', 'sp-emb-w0', 'sp-noaff'];

export interface Options {
  scenarios: string[];
  /** null: each scenario's defaults. */
  targets: string[] | null;
  connections: number;
  idleConnections: number;
  idlePingMs: number;
  warmupMs: number;
  durationMs: number;
  rate: number;
  origin: 'auto' | 'nginx' | 'node';
  peersDir: string;
  install: boolean;
  httpProxyCache: string;
  log: (line: string) => void;
  progress: (line: string | null) => void;
}

export interface Row {
  scenario: string;
  target: string;
  label: string;
  requestsPerSec: number;
  requests: number;
  /** Milliseconds. */
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
  errors: number;
  errorKinds: Record<string, number>;
  affinityChecked: number;
  affinityMisses: number;
  sessionsLearnt: number;
  /** Target's processes: peak RSS (VmHWM) over its life, CPU in the measured window (100 = one core). */
  peakRssMiB: number;
  /** Resident memory once started, before any load (sticky-proxy: with memcached connected). */
  startRssMiB: number;
  cpuPercent: number;
  originCpuPercent: number;
  generatorCpuPercent: number;
  /** memcached's CPU in the window, for a target that uses it; null otherwise. */
  storeCpuPercent: number | null;
  /**
   * µs of CPU per request over every process the run starts (target,
   * origins, generator, memcached): on a machine they share, the rates of two
   * targets go by the inverse of this more than by their own CPU.
   */
  allCpuMicrosPerRequest: number;
  idleOpenAtEnd: number;
  idleReopened: number;
  idleRequests: number;
  seconds: number;
}

/** A started target settles (workers warm, memcached connected) before its idle memory is read. */
const START_SETTLE_MS = 1000;

export interface Failure { scenario: string; target: string; reason: string }

/** Which sticky-proxy was measured: the working tree, which others may be editing during a run. */
export interface ProxyTree {
  head: string;
  /** Uncommitted changes under src/ and workers/ when the run started. */
  dirtyFiles: number;
  /** A file under src/ or workers/ changed while the run went on: its figures may mix versions. */
  changedDuringRun: boolean;
}

const ROOT = new URL('../../', import.meta.url);

function newestSource(): number {
  let newest = 0;
  for (const d of ['src', 'workers']) {
    const dir = new URL(`${d}/`, ROOT);
    for (const f of readdirSync(dir, { recursive: true }) as string[]) {
      try { newest = Math.max(newest, statSync(new URL(f, dir)).mtimeMs); } catch { /* gone */ }
    }
  }
  return newest;
}

function proxyTree(): ProxyTree {
  const git = (...args: string[]): string => {
    try { return execFileSync('git', args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim(); } catch { return ''; }
  };
  return { head: git('rev-parse', '--short', 'HEAD') || 'unknown', dirtyFiles: git('status', '--porcelain', '--', 'src', 'workers').split('\n').filter(Boolean).length, changedDuringRun: false };
}

export interface SuiteResult {
  date: string;
  proxyTree: ProxyTree;
  origin: string;
  options: Omit<Options, 'log' | 'progress'>;
  rows: Row[];
  histograms: Map<string, hdr.Histogram>;
  skipped: { target: string; reason: string }[];
  failed: Failure[];
}

export function histKey(scenario: string, target: string): string {
  return `${scenario}.${target}`;
}

/** Expands `sp-mc-*` style patterns; unknown names are an error. */
export function resolveTargets(list: string[]): string[] {
  const out: string[] = [];
  for (const name of list) {
    const re = new RegExp(`^${name.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
    const hits = ALL.filter((id) => re.test(id));
    if (hits.length === 0) throw new Error(`unknown target "${name}" (known: ${ALL.join(', ')})`);
    for (const h of hits) if (!out.includes(h)) out.push(h);
  }
  return out;
}

function ms(us: number): number {
  return Math.round(us) / 1000;
}

export async function runSuite(opts: Options): Promise<SuiteResult> {
  const dir = mkdtempSync(join(tmpdir(), 'sticky-proxy-bench-'));
  const { log: _log, progress: _progress, ...options } = opts;
  const tree = proxyTree();
  const sourceAtStart = newestSource();
  const result: SuiteResult = { date: new Date().toISOString(), proxyTree: tree, origin: '', options, rows: [], histograms: new Map(), skipped: [], failed: [] };
  const scenarios = opts.scenarios.map((id) => {
    const s = SCENARIOS.find((x) => x.id === id);
    if (!s) throw new Error(`unknown scenario "${id}" (known: ${SCENARIOS.map((x) => x.id).join(', ')})`);
    return s;
  });
  const plan = scenarios.map((s) => ({ s, targets: opts.targets ?? DEFAULT_TARGETS[s.id] }));
  const wanted = new Set(plan.flatMap((p) => p.targets));

  let origins: Origins | null = null;
  let memcached: Memcached | null = null;
  try {
    // What is installed decides what runs; a missing piece skips its targets.
    const hasNginx = which('nginx') !== null;
    // The peers' configurations live beside the checkout (../shared/peers); a clone without them runs our own.
    const hasPeers = existsSync(join(opts.peersDir, 'origin-nginx.conf'));
    const originKind = opts.origin === 'auto' ? (hasNginx && hasPeers ? 'nginx' : 'node') : opts.origin;
    if (originKind === 'nginx' && !hasNginx) throw new Error('--origin nginx: nginx is not installed');
    if (originKind === 'nginx' && !hasPeers) throw new Error(`--origin nginx: no peer configurations in ${opts.peersDir}`);
    origins = await startOrigins(originKind, dir, opts.peersDir);
    result.origin = originKind === 'nginx' ? 'nginx (peers/origin-nginx.conf)' : 'bench/origin.ts (Node)';
    opts.log(`origins: ${result.origin} on ports ${origins.servers.map((s) => s.port).join(', ')}`);

    const unavailable = new Map<Needs, string>();
    if ([...wanted].some((t) => TARGETS.find((x) => x.id === t)!.needs === 'memcached')) {
      if (which('memcached') === null) unavailable.set('memcached', 'memcached is not installed');
      else {
        memcached = await startMemcached();
        if (memcached.proc) track(memcached.proc);
        opts.log(`memcached on ${memcached.address}`);
      }
    }
    if (which('haproxy') === null) unavailable.set('haproxy', 'haproxy is not installed');
    if (!hasNginx) unavailable.set('nginx', 'nginx is not installed');
    if (!hasPeers) {
      for (const peer of ['haproxy', 'nginx', 'http-proxy'] as const) unavailable.set(peer, `no peer configurations in ${opts.peersDir}`);
    }
    let httpProxyPath: string | null = null;
    if (wanted.has('http-proxy') && hasPeers) {
      const r = await ensureHttpProxy(opts.httpProxyCache, opts.install);
      if ('skip' in r) unavailable.set('http-proxy', r.skip);
      else httpProxyPath = r.nodePath;
    }
    for (const t of wanted) {
      const needs = TARGETS.find((x) => x.id === t)!.needs;
      const why = unavailable.get(needs);
      if (why !== undefined) {
        result.skipped.push({ target: t, reason: why });
        opts.log(`skipping ${t}: ${why}`);
      }
    }
    const env: Env = { origins, memcache: memcached?.address ?? null, peersDir: opts.peersDir, dir, httpProxyPath };

    const runs = plan.flatMap(({ s, targets }) => targets.filter((t) => !result.skipped.some((k) => k.target === t)).map((t) => ({ s, t: TARGETS.find((x) => x.id === t)! })));
    let n = 0;
    for (const { s, t } of runs) {
      n++;
      const tag = `[${n}/${runs.length}] ${s.id} · ${t.id}`;
      let target: Running | null = null;
      try {
        target = await t.start(env);
        if (t.cpus !== undefined) pin(target.pids(), t.cpus);
        await sleep(START_SETTLE_MS);
        const startRss = rssMiB(target.pids());
        const job: Job = {
          port: target.port,
          connections: opts.connections,
          idleConnections: s.idleConnections > 0 ? opts.idleConnections : 0,
          idlePingMs: opts.idlePingMs,
          warmupMs: opts.warmupMs,
          durationMs: opts.durationMs,
          rate: opts.rate,
          newShare: s.newShare,
          method: s.method,
          paths: s.paths,
          bodyBytes: s.bodyBytes,
          cookieName: 'PHPSESSID',
          maxSessions: 20_000,
          requestTimeoutMs: 10_000,
          progressMs: 1000,
        };
        const running = target;
        const sink: ProgressSink = (p) => {
          const what = p.phase === 'connect' ? `opening idle connections: ${p.requests} open` : `${p.phase} ${(p.elapsedMs / 1000).toFixed(0)}/${(p.totalMs / 1000).toFixed(0)} s · ${p.requests.toLocaleString('en-US')} req/s · ${p.errors} errors`;
          opts.progress(`${tag} · ${what}`);
        };
        const usesStore = t.needs === 'memcached' && memcached?.pid !== undefined;
        const m = await drive(job, { target: () => running.pids(), origins: () => origins!.pids(), store: () => (usesStore ? [memcached!.pid!] : []) }, sink);
        const peak = peakRssMiB(target.pids());
        const r = m.result;
        const h = m.histogram;
        const errors = Object.values(r.errors).reduce((a, b) => a + b, 0);
        const row: Row = {
          scenario: s.id,
          target: t.id,
          label: t.label,
          requestsPerSec: Math.round(r.requests / r.seconds),
          requests: r.requests,
          p50: ms(h.getValueAtPercentile(50)),
          p90: ms(h.getValueAtPercentile(90)),
          p99: ms(h.getValueAtPercentile(99)),
          p999: ms(h.getValueAtPercentile(99.9)),
          max: ms(h.maxValue),
          errors,
          errorKinds: r.errors,
          affinityChecked: r.affinityChecked,
          affinityMisses: r.affinityMisses,
          sessionsLearnt: r.sessionsLearnt,
          peakRssMiB: Math.round(peak * 10) / 10,
          startRssMiB: Math.round(startRss * 10) / 10,
          cpuPercent: Math.round((m.targetCpu / r.seconds) * 100),
          originCpuPercent: Math.round((m.originCpu / r.seconds) * 100),
          generatorCpuPercent: Math.round((r.cpuSeconds / r.seconds) * 100),
          storeCpuPercent: usesStore ? Math.round((m.storeCpu / r.seconds) * 100) : null,
          allCpuMicrosPerRequest: r.requests > 0 ? Math.round(((t.proxy ? m.targetCpu : 0) + m.originCpu + r.cpuSeconds + m.storeCpu) * 1e7 / r.requests) / 10 : 0,
          idleOpenAtEnd: r.idleOpenAtEnd,
          idleReopened: r.idleReopened,
          idleRequests: r.idleRequests,
          seconds: r.seconds,
        };
        if (!t.proxy) row.cpuPercent = row.originCpuPercent; // the origin is the target
        result.rows.push(row);
        result.histograms.set(histKey(s.id, t.id), h);
        opts.progress(null);
        opts.log(`${tag}: ${row.requestsPerSec.toLocaleString('en-US')} req/s, p50 ${row.p50} ms, p99 ${row.p99} ms, max ${row.max} ms, ${errors} errors${t.proxy ? `, peak RSS ${row.peakRssMiB} MiB, CPU ${row.cpuPercent}%` : ''}`);
      } catch (err) {
        opts.progress(null);
        const reason = (err as Error).message.split('\n')[0];
        result.failed.push({ scenario: s.id, target: t.id, reason });
        opts.log(`${tag}: FAILED: ${reason}`);
      } finally {
        await target?.stop().catch(() => {});
      }
    }
  } finally {
    await memcached?.stop().catch(() => {});
    await origins?.stop().catch(() => {});
    killAll();
    rmSync(dir, { recursive: true, force: true });
  }
  tree.changedDuringRun = newestSource() > sourceAtStart;
  if (tree.changedDuringRun) opts.log('note: src/ or workers/ changed during the run; sticky-proxy figures may mix versions');
  return result;
}
