// Get throughput and latency of our memcached client against memjs: same run,
// same memcached, same keys, the two clients interleaved so that noise from a
// shared machine hits both alike. Usage:
//   node bench/memcache.ts [--quick] [--json] [--depths 1,16,256,4096] [--clients ours,memjs]
// With --json the last stdout line is one JSON object (best depth of each client).
import { parseArgs } from 'node:util';
import memjs from 'memjs';
import * as hdr from 'hdr-histogram-js';
import { startMemcached } from '../test/helpers/memcached.ts';
import { MemcacheClient } from '../src/memcache/client.ts';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    depths: { type: 'string', default: '1,16,256,4096' },
    clients: { type: 'string', default: 'ours,memjs' },
  },
});
const depths = args.depths.split(',').map(Number);
const clients = args.clients.split(',');
const warmupMs = args.quick ? 100 : 300;
const runMs = args.quick ? 400 : 1500;
const rounds = args.quick ? 1 : 2; // best round per client and depth
const WAVE = 1024;
const WAVES = 4;
const KEYS = 10_000;
const keys = Array.from({ length: KEYS }, (_, i) => `bench:session:${i.toString(36).padStart(8, '0')}`);
const value = Buffer.alloc(64, 'v');

type Get = (key: string) => Promise<unknown>;
interface Run { ops: number; errors: number; secs: number; hist: hdr.Histogram }
interface Result { client: string; mode: string; depth: number; getsPerSec: number; errors: number; p50: number; p90: number; p99: number; p999: number; max: number }

function histogram(): hdr.Histogram {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 });
}

/** `depth` lanes, each awaiting its get before issuing the next (the proxy's pattern); latency in µs. */
async function lanes(get: Get, depth: number, ms: number): Promise<Run> {
  const hist = histogram();
  let ops = 0;
  let errors = 0;
  const t0 = performance.now();
  const end = t0 + ms;
  const lane = async (l: number): Promise<void> => {
    let i = (l * 7919) % KEYS;
    // One clock read per op: a get's completion time is the next one's start.
    for (let start = performance.now(), now = start; now < end; start = now) {
      i = i + 1 === KEYS ? 0 : i + 1;
      try {
        await get(keys[i]);
      } catch {
        errors++;
      }
      now = performance.now();
      ops++;
      hist.recordValue(Math.max(1, Math.round((now - start) * 1000)));
    }
  };
  await Promise.all(Array.from({ length: depth }, (_, l) => lane(l)));
  return { ops, errors, secs: (performance.now() - t0) / 1000, hist };
}

/**
 * WAVES concurrent loops, each issuing WAVE gets in one tick and awaiting them
 * all: large batches by construction. Latency is the wave's (each op's upper bound).
 */
async function waves(get: Get, ms: number): Promise<Run> {
  const hist = histogram();
  let ops = 0;
  let errors = 0;
  const t0 = performance.now();
  const end = t0 + ms;
  const count = (): void => { errors++; };
  const loop = async (w: number): Promise<void> => {
    let i = (w * 7919) % KEYS;
    const batch: Promise<unknown>[] = new Array(WAVE);
    for (let start = performance.now(), now = start; now < end; start = now) {
      for (let j = 0; j < WAVE; j++) {
        i = i + 1 === KEYS ? 0 : i + 1;
        batch[j] = get(keys[i]).catch(count);
      }
      await Promise.all(batch);
      now = performance.now();
      ops += WAVE;
      hist.recordValueWithCount(Math.max(1, Math.round((now - start) * 1000)), WAVE);
    }
  };
  await Promise.all(Array.from({ length: WAVES }, (_, w) => loop(w)));
  return { ops, errors, secs: (performance.now() - t0) / 1000, hist };
}

function result(client: string, mode: string, depth: number, r: Run): Result {
  const q = (p: number): number => r.hist.getValueAtPercentile(p);
  return {
    client, mode, depth, getsPerSec: Math.round(r.ops / r.secs), errors: r.errors,
    p50: q(50), p90: q(90), p99: q(99), p999: q(99.9), max: r.hist.maxValue,
  };
}

function print(x: Result): void {
  console.log(
    `${x.client.padEnd(5)} ${x.mode.padEnd(5)} depth ${String(x.depth).padStart(4)}: ${String(x.getsPerSec).padStart(8)} gets/s` +
    `  p50 ${x.p50}µs p90 ${x.p90}µs p99 ${x.p99}µs p99.9 ${x.p999}µs max ${x.max}µs` +
    (x.errors > 0 ? `  errors ${x.errors}` : ''),
  );
}

const mc = await startMemcached(['-t', '1']);
const ours = new MemcacheClient({ servers: [mc.address], timeoutMs: 2000 });
const theirs = memjs.Client.create(mc.address, { retries: 0, timeout: 2, logger: { log: () => {} } });
const gets: Record<string, Get> = { ours: (k) => ours.get(k), memjs: (k) => theirs.get(k) };
const results: Result[] = [];
try {
  await Promise.all(keys.map((k) => ours.set(k, value, 0)));
  console.log(`memcached ${mc.address} (1 thread), ${KEYS} keys of ${value.length} B, one connection per client, best of ${rounds} × ${runMs} ms`);
  const configs = [...depths.map((d) => ({ mode: 'lanes', depth: d })), { mode: 'waves', depth: WAVE * WAVES }];
  for (const { mode, depth } of configs) {
    const best = new Map<string, Result>();
    for (let round = 0; round < rounds; round++) {
      for (const c of clients) {
        const run = (ms: number): Promise<Run> => (mode === 'lanes' ? lanes(gets[c], depth, ms) : waves(gets[c], ms));
        await run(warmupMs);
        const r = result(c, mode, depth, await run(runMs));
        if ((best.get(c)?.getsPerSec ?? -1) < r.getsPerSec) best.set(c, r);
      }
    }
    for (const r of best.values()) { print(r); results.push(r); }
  }
  const top = (c: string, mode: string): Result | undefined =>
    results.filter((r) => r.client === c && r.mode === mode).reduce<Result | undefined>((a, b) => (a === undefined || b.getsPerSec > a.getsPerSec ? b : a), undefined);
  const o = top('ours', 'lanes');
  const m = top('memjs', 'lanes');
  if (o !== undefined && m !== undefined) {
    console.log(`best (lanes): ours ${o.getsPerSec}/s at depth ${o.depth}, memjs ${m.getsPerSec}/s at depth ${m.depth}: ${(o.getsPerSec / m.getsPerSec).toFixed(2)}x`);
  }
  const ow = top('ours', 'waves');
  const mw = top('memjs', 'waves');
  if (ow !== undefined && mw !== undefined) {
    console.log(`waves of ${WAVE}: ours ${ow.getsPerSec}/s, memjs ${mw.getsPerSec}/s: ${(ow.getsPerSec / mw.getsPerSec).toFixed(2)}x`);
  }
  if (args.json) {
    console.log(JSON.stringify({
      ours_gets_per_sec: o?.getsPerSec ?? null, memjs_gets_per_sec: m?.getsPerSec ?? null,
      ratio: o && m ? Number((o.getsPerSec / m.getsPerSec).toFixed(2)) : null,
      ours_best_depth: o?.depth ?? null, memjs_best_depth: m?.depth ?? null,
      ours_waves_gets_per_sec: ow?.getsPerSec ?? null, memjs_waves_gets_per_sec: mw?.getsPerSec ?? null,
      results,
    }));
  }
} finally {
  theirs.close();
  await ours.close();
  await mc.stop();
}
