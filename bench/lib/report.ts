// Results on disk: one .hgrm percentile distribution per (scenario, target),
// summary.json, results.md, and latency-<scenario>.svg with every target's
// latency-by-percentile curve overlaid (x: 1/(1-percentile) on a log scale, as
// HdrHistogram's plotter draws it).
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { join } from 'node:path';
import type * as hdr from 'hdr-histogram-js';
import { histKey, SCENARIOS, THREAD_COUNTS, type Row, type SuiteResult } from './suite.ts';

export interface Machine {
  cpu: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  loadAverageAtEnd: number[];
  versions: Record<string, string>;
}

/** First match of `re` in what `cmd args` prints on stdout or stderr (nginx -v uses stderr). */
function version(cmd: string, args: string[], re: RegExp): string | null {
  const r = spawnSync(cmd, args, { encoding: 'latin1', timeout: 5000 });
  const m = re.exec(`${r.stdout ?? ''}${r.stderr ?? ''}`);
  return m ? m[1] : null;
}

export function machine(): Machine {
  const versions: Record<string, string> = {};
  const n = version('nginx', ['-v'], /nginx\/(\S+)/);
  if (n) versions.nginx = n;
  const h = version('haproxy', ['-v'], /version (\S+)/);
  if (h) versions.haproxy = h;
  const m = version('memcached', ['-V'], /memcached (\S+)/);
  if (m) versions.memcached = m;
  return {
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
    loadAverageAtEnd: loadavg().map((x) => Math.round(x * 100) / 100),
    versions,
  };
}

export interface Check { what: string; figure: string; goal: string; met: boolean | null }

function row(rows: Row[], scenario: string, target: string): Row | undefined {
  return rows.find((r) => r.scenario === scenario && r.target === target);
}

const pct = (x: number): string => `${(x * 100).toFixed(1)}%`;
const times = (x: number): string => `${x.toFixed(2)}×`;

/** The goals (fastPipe and threads issues), each from its scenario; a goal whose figures are missing is left out. */
export function checks(rows: Row[]): Check[] {
  const out: Check[] = [];
  const vs = (scenario: string, ours: string, theirs: string, what: string, goal: number): void => {
    const a = row(rows, scenario, ours);
    const b = row(rows, scenario, theirs);
    if (!a || !b) return;
    const x = a.requestsPerSec / b.requestsPerSec;
    out.push({ what: `${what}: ${ours} vs ${theirs} req/s`, figure: `${times(x)} (${a.requestsPerSec} vs ${b.requestsPerSec})`, goal: `≥ ${goal.toFixed(1)}×`, met: x >= goal });
  };
  const tail = (scenario: string, ours: string, theirs: string, goal: number): void => {
    const a = row(rows, scenario, ours);
    const b = row(rows, scenario, theirs);
    if (!a || !b) return;
    const x = a.p99 / b.p99;
    out.push({ what: `${scenario}: ${ours} vs ${theirs} p99`, figure: `${times(x)} (${a.p99} vs ${b.p99} ms)`, goal: `≤ ${goal.toFixed(1)}×`, met: x <= goal });
  };
  // Default flags (memcached, --workers 0, --threads = the cores) against the peers' HAProxy (nbthread 1).
  vs('seed', 'sp-mc-w0', 'haproxy', 'seed, default flags', 1.0);
  tail('seed', 'sp-mc-w0', 'haproxy', 1.5);
  vs('seed', 'sp-noaff', 'haproxy', 'seed, --no-affinity', 1.1);
  vs('storm', 'sp-mc-w0', 'haproxy', 'new-session storm', 0.9);
  vs('large', 'sp-mc-w0', 'haproxy', '1 MiB responses', 1.0);
  vs('upload', 'sp-mc-w0', 'haproxy', '1 MiB uploads', 1.0);
  // Thread for thread: the same count, pinned alike.
  for (const n of THREAD_COUNTS) {
    vs('seed', `sp-t${n}`, `haproxy-t${n}`, `seed, ${n} thread${n > 1 ? 's' : ''} each`, 1.0);
    if (n === 1) tail('seed', 'sp-t1', 'haproxy-t1', 1.5);
  }
  const s1 = row(rows, 'seed', 'sp-t1');
  const h1 = row(rows, 'seed', 'haproxy-t1');
  for (const n of THREAD_COUNTS.slice(1)) {
    const sn = row(rows, 'seed', `sp-t${n}`);
    const hn = row(rows, 'seed', `haproxy-t${n}`);
    if (!s1 || !h1 || !sn || !hn) continue;
    const ours = sn.requestsPerSec / s1.requestsPerSec;
    const theirs = hn.requestsPerSec / h1.requestsPerSec;
    out.push({ what: `scaling to ${n} threads (ratio to 1 thread)`, figure: `sticky-proxy ${times(ours)}, HAProxy ${times(theirs)}`, goal: '≥ HAProxy\'s', met: ours >= theirs });
  }
  for (const t of ['sp-mc-w0', 'sp-t1']) {
    const c = row(rows, 'conns', t);
    if (c) out.push({ what: `${t} peak RSS with 5,000 idle connections plus the seed load`, figure: `${c.peakRssMiB} MiB`, goal: '≤ 96 MiB', met: c.peakRssMiB <= 96 });
    const idle = rows.find((r) => r.target === t);
    if (idle) out.push({ what: `${t} resident memory just started, memcached connected`, figure: `${idle.startRssMiB} MiB`, goal: '≤ 64 MiB', met: idle.startRssMiB <= 64 });
  }
  const mc = row(rows, 'seed', 'sp-mc-w0');
  const off = row(rows, 'seed', 'sp-noaff');
  if (mc && off) out.push({ what: 'cost of affinity with memcached (req/s vs --no-affinity)', figure: `${pct(1 - mc.requestsPerSec / off.requestsPerSec)} (${mc.requestsPerSec} vs ${off.requestsPerSec})`, goal: '(for reference)', met: null });
  for (const store of ['mc', 'emb']) {
    const sweep = rows.filter((r) => r.scenario === 'seed' && new RegExp(`^sp-${store}-w\\d$`).test(r.target));
    if (sweep.length > 1) {
      const sorted = [...sweep].sort((a, b) => b.requestsPerSec - a.requestsPerSec);
      out.push({ what: `fastest --workers (${store === 'mc' ? 'memcached' : 'embedded'})`, figure: `${sorted[0].target.replace(/.*-w/, '')} (${sorted.map((r) => `w${r.target.replace(/.*-w/, '')} ${r.requestsPerSec}`).join(', ')})`, goal: 'which', met: null });
    }
  }
  return out;
}

const fmt = (n: number): string => n.toLocaleString('en-US');

function errorText(r: Row): string {
  if (r.errors === 0) return '0';
  return `${fmt(r.errors)} (${Object.entries(r.errorKinds).map(([k, v]) => `${k}: ${v}`).join(', ')})`;
}

export function markdown(res: SuiteResult, m: Machine): string {
  const lines: string[] = [];
  const o = res.options;
  lines.push(`# sticky-proxy benchmark, ${res.date}`, '');
  lines.push(`Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, Linux ${m.kernel}, Node ${m.node}${Object.entries(m.versions).map(([k, v]) => `, ${k} ${v}`).join('')}; load average at the end ${m.loadAverageAtEnd.join(' ')}.`);
  const t = res.proxyTree;
  lines.push(`sticky-proxy: working tree at ${t.head}${t.dirtyFiles > 0 ? ` with ${t.dirtyFiles} uncommitted file(s) under src/ and workers/` : ''}` +
    `${t.changedDuringRun ? '; **src/ or workers/ changed during the run, so sticky-proxy figures may come from different versions**' : ''}.`);
  lines.push(`Origins: ${res.origin}. One load generator (bench/loadgen.ts, one Node process) for every target; ${o.connections} connections, ` +
    `${o.rate > 0 ? `fixed rate ${fmt(o.rate)} req/s (latency from the intended send time)` : 'closed loop'}; warm-up ${o.warmupMs / 1000} s, measured ${o.durationMs / 1000} s per target and scenario; every target started fresh for each scenario.`);
  lines.push('', 'Latencies in ms. CPU: the target\'s processes in the measured window, 100% = one core (origin, generator and memcached CPU for context); all µs/req: the CPU of every one of them per request, by whose inverse two targets\' rates go on a machine they share. Affinity misses: answers to a learnt session that came from another real-server than the one that set the cookie.', '');
  for (const s of SCENARIOS) {
    const rows = res.rows.filter((r) => r.scenario === s.id);
    if (rows.length === 0) continue;
    lines.push(`## ${s.title}`, '');
    const idle = s.idleConnections > 0;
    lines.push(`| target | req/s | p50 | p90 | p99 | p99.9 | max | errors | affinity misses | peak RSS MiB | start RSS MiB | CPU % | origin CPU % | generator CPU % | memcached CPU % | all µs/req${idle ? ' | idle conns open at end (reopened)' : ''} |`);
    lines.push(`|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:${idle ? '|---:' : ''}|`);
    for (const r of rows) {
      const miss = r.affinityChecked > 0 ? `${((r.affinityMisses / r.affinityChecked) * 100).toFixed(1)}%` : '–';
      lines.push(`| ${r.target} | ${fmt(r.requestsPerSec)} | ${r.p50} | ${r.p90} | ${r.p99} | ${r.p999} | ${r.max} | ${errorText(r)} | ${miss} | ${r.target === 'origin' ? '–' : r.peakRssMiB} | ${r.target === 'origin' ? '–' : r.startRssMiB} | ${r.cpuPercent} | ${r.originCpuPercent} | ${r.generatorCpuPercent} | ${r.storeCpuPercent ?? '–'} | ${r.allCpuMicrosPerRequest}${idle ? ` | ${fmt(r.idleOpenAtEnd)} (${fmt(r.idleReopened)})` : ''} |`);
    }
    const failed = res.failed.filter((f) => f.scenario === s.id);
    for (const f of failed) lines.push(`| ${f.target} | failed: ${f.reason.replace(/\|/g, '\\|')} ||||||||||||||||`);
    lines.push('', `![latency by percentile](latency-${s.id}.svg)`, '');
  }
  const c = checks(res.rows);
  if (c.length > 0) {
    lines.push('## Against the goals', '', '| what | figure | goal | met |', '|---|---|---|---|');
    for (const x of c) lines.push(`| ${x.what} | ${x.figure} | ${x.goal} | ${x.met === null ? '–' : x.met ? 'yes' : 'no'} |`);
    lines.push('');
  }
  if (res.skipped.length > 0) {
    lines.push('## Skipped', '');
    for (const s of res.skipped) lines.push(`- ${s.target}: ${s.reason}`);
    lines.push('');
  }
  lines.push('Targets:', '');
  const seen = new Set<string>();
  for (const r of res.rows) if (!seen.has(r.target)) { seen.add(r.target); lines.push(`- ${r.target}: ${r.label}`); }
  lines.push('');
  return lines.join('\n');
}

// ---------------------------------------------------------------- SVG

const COLOURS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f', '#393b79', '#637939', '#843c39', '#000000'];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function niceStep(max: number, ticks: number): number {
  const raw = max / ticks;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

export function svg(title: string, curves: { name: string; h: hdr.Histogram }[]): string {
  const W = 980, H = 560, L = 70, R = 300, T = 50, B = 60;
  const pw = W - L - R, ph = H - T - B;
  const maxNines = Math.max(1, ...curves.map((c) => Math.log10(Math.max(10, c.h.totalCount))));
  const xmax = Math.min(6, Math.ceil(maxNines));
  const pts = curves.map((c) => {
    const end = Math.min(xmax, Math.log10(Math.max(10, c.h.totalCount)));
    const out: [number, number][] = [];
    for (let i = 0; i <= 400; i++) {
      const x = (end * i) / 400;
      const p = 100 * (1 - 10 ** -x);
      out.push([x, c.h.getValueAtPercentile(Math.min(p, 100)) / 1000]);
    }
    out.push([end, c.h.maxValue / 1000]);
    return out;
  });
  const ymaxRaw = Math.max(0.001, ...pts.flat().map(([, y]) => y));
  const step = niceStep(ymaxRaw, 6);
  const ymax = Math.ceil(ymaxRaw / step) * step;
  const sx = (x: number): number => L + (x / xmax) * pw;
  const sy = (y: number): number => T + ph - (y / ymax) * ph;
  const o: string[] = [];
  o.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  o.push(`<rect width="${W}" height="${H}" fill="#fff"/>`);
  o.push(`<text x="${L}" y="28" font-size="15" font-weight="bold">${esc(title)}</text>`);
  for (let y = 0; y <= ymax + step / 2; y += step) {
    const Y = sy(y).toFixed(1);
    o.push(`<line x1="${L}" x2="${L + pw}" y1="${Y}" y2="${Y}" stroke="#e5e5e5"/>`);
    o.push(`<text x="${L - 6}" y="${Y}" text-anchor="end" dominant-baseline="middle">${+y.toFixed(3)}</text>`);
  }
  for (let k = 0; k <= xmax; k++) {
    const X = sx(k).toFixed(1);
    const label = k === 0 ? '0%' : `${(100 - 100 / 10 ** k).toFixed(Math.max(0, k - 2))}%`;
    o.push(`<line x1="${X}" x2="${X}" y1="${T}" y2="${T + ph}" stroke="#e5e5e5"/>`);
    o.push(`<text x="${X}" y="${T + ph + 18}" text-anchor="middle">${label}</text>`);
  }
  o.push(`<rect x="${L}" y="${T}" width="${pw}" height="${ph}" fill="none" stroke="#444"/>`);
  o.push(`<text x="${L + pw / 2}" y="${H - 18}" text-anchor="middle">percentile (log scale of 1/(1-percentile))</text>`);
  o.push(`<text transform="translate(18 ${T + ph / 2}) rotate(-90)" text-anchor="middle">latency (ms)</text>`);
  curves.forEach((c, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const d = pts[i].map(([x, y], j) => `${j === 0 ? 'M' : 'L'}${sx(x).toFixed(1)} ${sy(y).toFixed(1)}`).join('');
    o.push(`<path d="${d}" fill="none" stroke="${colour}" stroke-width="1.6"/>`);
    const ly = T + 10 + i * 20;
    o.push(`<line x1="${L + pw + 16}" x2="${L + pw + 40}" y1="${ly}" y2="${ly}" stroke="${colour}" stroke-width="3"/>`);
    o.push(`<text x="${L + pw + 46}" y="${ly}" dominant-baseline="middle">${esc(c.name)}</text>`);
  });
  o.push('</svg>');
  return `${o.join('\n')}\n`;
}

/** Writes every file; returns their paths. */
export function writeResults(res: SuiteResult, outDir: string, m: Machine): string[] {
  mkdirSync(outDir, { recursive: true });
  const files: string[] = [];
  const put = (name: string, text: string): void => {
    const f = join(outDir, name);
    writeFileSync(f, text);
    files.push(f);
  };
  for (const r of res.rows) {
    const h = res.histograms.get(histKey(r.scenario, r.target));
    // Values are recorded in µs; the distribution is written in ms.
    if (h) put(`${r.scenario}.${r.target}.hgrm`, h.outputPercentileDistribution(5, 1000));
  }
  for (const s of SCENARIOS) {
    const rows = res.rows.filter((r) => r.scenario === s.id);
    if (rows.length === 0) continue;
    const curves = rows.map((r) => ({ name: `${r.target}  ${fmt(r.requestsPerSec)} req/s`, h: res.histograms.get(histKey(s.id, r.target))! }));
    put(`latency-${s.id}.svg`, svg(`${s.title}: latency by percentile`, curves));
  }
  put('results.md', markdown(res, m));
  put('summary.json', `${JSON.stringify(summary(res, m), null, 2)}\n`);
  return files;
}

export function summary(res: SuiteResult, m: Machine): object {
  return { date: res.date, machine: m, proxyTree: res.proxyTree, origin: res.origin, options: res.options, results: res.rows, checks: checks(res.rows), skipped: res.skipped, failed: res.failed };
}
