// npm run bench:paired: CPU per request of several targets loaded at the same
// time, for changes smaller than this machine's noise. On a shared 2-core VM a
// single run swings by ±50% from one minute to the next; loading every
// configuration at once, each with its own load generator at the same fixed
// rate, exposes them all to the same interference at the same load (CPU per
// request depends on the load: more requests per wake-up cost less each), and
// the ratio of their CPU per request (utime+stime from /proc over the measured
// window) is steady to a few per cent. Two identical instances measure the
// resolution: add the same config twice.
//
//   npm run bench:paired -- [--config LABEL=FLAGS]... [--node-flags LABEL=FLAGS]... [--env LABEL=NAME=VALUE]...
//                           [--against DIR] [--haproxy]
//                           [--scenario seed|storm] [--rate R] [--rounds N] [--seconds S] [--connections C]
//
// --rate: requests per second offered to each target (default 3000); the sum
//   must stay below what the machine serves, or a target falls behind (said).
//   --rate 0: closed loop, every target saturated at once, each at the rate it
//   reaches; its CPU per request is then that of the saturated regime that
//   `npm run bench` measures, where batches and event-loop turns are larger.
//
// --config: a sticky-proxy configuration; MEMCACHED in FLAGS becomes the address
//   of the memcached this run starts. Every config runs with --threads 1 unless
//   its flags say otherwise. Default: noaff=--no-affinity and
//   memcached=--memcache MEMCACHED.
// --node-flags LABEL=FLAGS: Node and V8 flags for that config instead of the
//   start script's (`--max-semi-space-size=1 --optimize-for-size --liftoff-only --no-node-snapshot`).
// --env LABEL=NAME=VALUE: that config's process also gets NAME=VALUE in its
//   environment (glibc's MALLOC_ARENA_MAX, say).
// --against DIR: every config also runs from another checkout (a `git worktree`
//   of the previous commit, say), labelled LABEL@base.
// --haproxy: HAProxy's stick table, nbthread 1, loaded alongside (peers config).
// Prints, per round, each target's µs of CPU per request, then the median of
// each target's ratio to the first one. The first round only warms up.
import { parseArgs } from 'node:util';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_CONFIGS, checkouts, median, needsMemcached, parseConfigs, plainJob, plainScenario, proxyArgs } from './lib/configs.ts';
import { drive } from './lib/drive.ts';
import { track, which } from './lib/procs.ts';
import { DEFAULT_PEERS_DIR, startHaproxy, startOrigins, type Running } from './lib/servers.ts';
import { guard, stderrReporter } from './run.ts';
import { startMemcached, type Memcached } from '../test/helpers/memcached.ts';
import { startProxy } from '../test/helpers/proxy.ts';

const { values: a } = parseArgs({
  options: {
    config: { type: 'string', multiple: true, default: DEFAULT_CONFIGS },
    'node-flags': { type: 'string', multiple: true, default: [] },
    env: { type: 'string', multiple: true, default: [] },
    against: { type: 'string' },
    haproxy: { type: 'boolean', default: false },
    scenario: { type: 'string', default: 'seed' },
    rounds: { type: 'string', default: '6' },
    seconds: { type: 'string', default: '4' },
    connections: { type: 'string', default: '32' },
    rate: { type: 'string', default: '3000' },
  },
});
const scenario = plainScenario(a.scenario);
const rounds = Number(a.rounds);
const configs = parseConfigs(a.config);
// --node-flags LABEL=FLAGS: that config runs under these Node and V8 flags instead of the start script's.
const nodeFlags = new Map(a['node-flags'].map((c) => {
  const eq = c.indexOf('=');
  if (eq <= 0 || !configs.some((k) => k.label === c.slice(0, eq))) throw new Error(`--node-flags ${c}: expected LABEL=FLAGS for a --config LABEL`);
  return [c.slice(0, eq), c.slice(eq + 1).split(/\s+/).filter((f) => f !== '')] as const;
}));
// --env LABEL=NAME=VALUE: added to that config's environment.
const envs = new Map<string, Record<string, string>>();
for (const e of a.env) {
  const m = /^([^=]+)=([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(e);
  if (m === null || !configs.some((k) => k.label === m[1])) throw new Error(`--env ${e}: expected LABEL=NAME=VALUE for a --config LABEL`);
  envs.set(m[1], { ...envs.get(m[1]), [m[2]]: m[3] });
}
const trees = checkouts(a.against);

const rep = stderrReporter();
// Start-up, the rounds, and room to stop.
const release = guard((rounds * (Number(a.seconds) + 3) + 120) * 1000);
const dir = mkdtempSync(join(tmpdir(), 'sticky-proxy-paired-'));
const targets: { label: string; run: Running }[] = [];
let origins: Running | null = null;
let memcached: Memcached | null = null;
try {
  const hasNginx = which('nginx') !== null;
  const o = await startOrigins(hasNginx ? 'nginx' : 'node', dir, DEFAULT_PEERS_DIR);
  origins = o;
  rep.log(`origins: ${o.kind} on ports ${o.servers.map((s) => s.port).join(', ')}`);
  if (needsMemcached(configs)) {
    memcached = await startMemcached();
    if (memcached.proc) track(memcached.proc);
  }
  for (const c of configs) {
    for (const t of trees) {
      const p = await startProxy(proxyArgs(c, o, memcached?.address ?? null, `paired-${targets.length}:`), envs.get(c.label) ?? {}, t.root, nodeFlags.get(c.label));
      track(p.proc);
      targets.push({ label: c.label + t.suffix, run: { port: Number(new URL(p.url).port), pids: () => [p.pid], stop: async () => { await p.stop(); } } });
    }
  }
  if (a.haproxy) {
    if (which('haproxy') === null) rep.log('haproxy is not installed: skipped');
    else targets.push({ label: 'haproxy', run: await startHaproxy(DEFAULT_PEERS_DIR, dir, o, 1) });
  }

  // Every generator of a round starts at the same moment, once all of them are up: a generator
  // that began later would go on alone at the end of its window, at a lighter load than the others'.
  const job = (port: number, startAt: number) => plainJob(port, scenario, { connections: Number(a.connections), warmupMs: 500, durationMs: Number(a.seconds) * 1000, rate: Number(a.rate), startAt });
  const perRound: number[][] = [];
  const rates: number[][] = [];
  for (let r = 0; r <= rounds; r++) {
    rep.progress(r === 0 ? 'warm-up round' : `round ${r}/${rounds}`);
    const startAt = Date.now() + 1000;
    const ms = await Promise.all(targets.map((t) => drive(job(t.run.port, startAt), { target: () => t.run.pids(), origins: () => [], store: () => [] }, () => {})));
    if (r === 0) continue;
    perRound.push(ms.map((m) => (m.targetCpu / m.result.requests) * 1e6));
    rates.push(ms.map((m) => m.result.requests / m.result.seconds));
  }
  rep.progress(null);

  const out = [
    `${scenario.id}, ${targets.length} targets loaded at once, ${a.connections} connections each, ${rounds} rounds of ${a.seconds} s`,
    '',
    `| round | ${targets.map((t) => t.label).join(' | ')} |`,
    `|---|${targets.map(() => '---:').join('|')}|`,
    ...perRound.map((row, i) => `| ${i + 1} | ${row.map((us) => us.toFixed(1)).join(' | ')} |`),
    `| median µs CPU per request | ${targets.map((_, j) => median(perRound.map((row) => row[j])).toFixed(1)).join(' | ')} |`,
    `| median ratio to ${targets[0].label} | ${targets.map((_, j) => median(perRound.map((row) => row[j] / row[0])).toFixed(3)).join(' | ')} |`,
    `| median req/s | ${targets.map((_, j) => Math.round(median(rates.map((row) => row[j]))).toLocaleString('en-US')).join(' | ')} |`,
  ];
  // A target that falls behind its rate runs at another load than the others, and CPU per request depends on the load.
  // Closed loop (rate 0) has no rate to fall behind.
  const behind = targets.filter((_, j) => median(rates.map((row) => row[j])) < 0.97 * Number(a.rate));
  if (behind.length > 0) out.push('', `Not comparable: ${behind.map((t) => t.label).join(', ')} fell behind ${a.rate} req/s (the machine is saturated); lower --rate or load fewer targets.`);
  process.stdout.write(`${out.join('\n')}\n`);
} finally {
  for (const t of targets) await t.run.stop().catch(() => {});
  await memcached?.stop().catch(() => {});
  await origins?.stop().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
  release();
}
