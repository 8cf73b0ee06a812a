// Get throughput and latency of our memcached client against memjs: same run,
// same memcached, same keys, the two clients interleaved so that noise from a
// shared machine hits both alike. Usage:
//   node bench/memcache.ts [--quick] [--json] [--depths 1,16,256,4096] [--clients ours,memjs]
// Two ways of keeping `depth` gets in flight, each run at every depth:
// - lanes: `depth` loops, each awaiting its get before issuing the next
//   (one get per await: what memjs is built for);
// - batches: loops that each issue B gets in one tick and await them together
//   with Promise.all, B = min(depth, 256), depth / B loops. This is the proxy's
//   own pattern: the resolver issues one affinity batch (--batch-max, 256 by
//   default) at once and awaits it whole, with several batches in flight.
// Plus 4 loops of 1024 ("large batches": the client's maxBatch).
// With --json the last stdout line is one JSON object.
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
const rounds = args.quick ? 1 : 2; // best round per client and pattern
const PROXY_BATCH = 256; // --batch-max's default
const LARGE = 1024;      // the client's maxBatch
const KEYS = 10_000;
const keys = Array.from({ length: KEYS }, (_, i) => `bench:session:${i.toString(36).padStart(8, '0')}`);
const value = Buffer.alloc(64, 'v');

type Get = (key: string) => Promise<unknown>;
interface Pattern { mode: 'lanes' | 'batches'; size: number; loops: number }
interface Run { ops: number; errors: number; secs: number; hist: hdr.Histogram }
interface Result {
  client: string; mode: string; batch: number; depth: number; getsPerSec: number; errors: number;
  p50: number; p90: number; p99: number; p999: number; max: number;
}

// The WebAssembly histogram records in about 140 ns against the JS one's 170:
// at a million gets/s the harness's own cost is part of what is measured.
await hdr.initWebAssembly();
function histogram(): hdr.Histogram {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3, useWebAssembly: true });
}

/** One lane: await each get before the next; latency per op, in µs. */
async function lane(get: Get, l: number, end: number, run: Run): Promise<void> {
  let i = (l * 7919) % KEYS;
  const hist = run.hist;
  // One clock read per op: a get's completion time is the next one's start.
  for (let start = performance.now(), now = start; now < end; start = now) {
    i = i + 1 === KEYS ? 0 : i + 1;
    try {
      await get(keys[i]);
    } catch {
      run.errors++;
    }
    now = performance.now();
    run.ops++;
    hist.recordValue(Math.max(1, Math.round((now - start) * 1000)));
  }
}

/**
 * One batch loop: `size` gets issued in one tick, each with its own catch (as
 * the resolver does), awaited together. Latency is the batch's: each op's upper bound.
 */
async function batchLoop(get: Get, size: number, l: number, end: number, run: Run): Promise<void> {
  let i = (l * 7919) % KEYS;
  const count = (): void => { run.errors++; };
  const batch: Promise<unknown>[] = new Array(size);
  for (let start = performance.now(), now = start; now < end; start = now) {
    for (let j = 0; j < size; j++) {
      i = i + 1 === KEYS ? 0 : i + 1;
      batch[j] = get(keys[i]).catch(count);
    }
    await Promise.all(batch);
    now = performance.now();
    run.ops += size;
    run.hist.recordValueWithCount(Math.max(1, Math.round((now - start) * 1000)), size);
  }
}

async function measure(get: Get, p: Pattern, ms: number): Promise<Run> {
  const run: Run = { ops: 0, errors: 0, secs: 0, hist: histogram() };
  const t0 = performance.now();
  const end = t0 + ms;
  const loops: Promise<void>[] = [];
  for (let l = 0; l < p.loops; l++) loops.push(p.mode === 'lanes' ? lane(get, l, end, run) : batchLoop(get, p.size, l, end, run));
  await Promise.all(loops);
  run.secs = (performance.now() - t0) / 1000;
  return run;
}

function result(client: string, p: Pattern, r: Run): Result {
  const q = (pct: number): number => r.hist.getValueAtPercentile(pct);
  const x: Result = {
    client, mode: p.mode, batch: p.size, depth: p.size * p.loops, getsPerSec: Math.round(r.ops / r.secs), errors: r.errors,
    p50: q(50), p90: q(90), p99: q(99), p999: q(99.9), max: r.hist.maxValue,
  };
  r.hist.destroy(); // WebAssembly memory is not garbage-collected
  return x;
}

const label = (x: { mode: string; batch: number; depth: number }): string =>
  x.mode === 'lanes' ? `lanes ${x.depth}` : `batches of ${x.batch} × ${x.depth / x.batch}`;

function print(x: Result): void {
  console.log(
    `${x.client.padEnd(5)} ${label(x).padEnd(22)} depth ${String(x.depth).padStart(4)}: ${String(x.getsPerSec).padStart(8)} gets/s` +
    `  p50 ${x.p50}µs p90 ${x.p90}µs p99 ${x.p99}µs p99.9 ${x.p999}µs max ${x.max}µs` +
    (x.errors > 0 ? `  errors ${x.errors}` : ''),
  );
}

const patterns: Pattern[] = [];
for (const d of depths) {
  patterns.push({ mode: 'lanes', size: 1, loops: d });
  const size = Math.min(d, PROXY_BATCH);
  if (size > 1 && d % size === 0) patterns.push({ mode: 'batches', size, loops: d / size });
}
patterns.push({ mode: 'batches', size: LARGE, loops: 4 });

const mc = await startMemcached(['-t', '1']);
const ours = new MemcacheClient({ servers: [mc.address], timeoutMs: 2000 });
const theirs = memjs.Client.create(mc.address, { retries: 0, timeout: 2, logger: { log: () => {} } });
const gets: Record<string, Get> = { ours: (k) => ours.get(k), memjs: (k) => theirs.get(k) };
const results: Result[] = [];
try {
  await Promise.all(keys.map((k) => ours.set(k, value, 0)));
  console.log(`memcached ${mc.address} (1 thread), ${KEYS} keys of ${value.length} B, one connection per client, best of ${rounds} × ${runMs} ms`);
  for (const p of patterns) {
    const best = new Map<string, Result>();
    for (let round = 0; round < rounds; round++) {
      for (const c of clients) {
        (await measure(gets[c], p, warmupMs)).hist.destroy();
        const r = result(c, p, await measure(gets[c], p, runMs));
        if ((best.get(c)?.getsPerSec ?? -1) < r.getsPerSec) best.set(c, r);
      }
    }
    for (const r of best.values()) { print(r); results.push(r); }
  }
  const top = (c: string, keep: (r: Result) => boolean): Result | undefined =>
    results.filter((r) => r.client === c && keep(r)).reduce<Result | undefined>((a, b) => (a === undefined || b.getsPerSec > a.getsPerSec ? b : a), undefined);
  const line = (what: string, o: Result | undefined, m: Result | undefined): number | null => {
    if (o === undefined || m === undefined) return null;
    const ratio = o.getsPerSec / m.getsPerSec;
    console.log(`${what}: ours ${o.getsPerSec}/s (${label(o)}), memjs ${m.getsPerSec}/s (${label(m)}): ${ratio.toFixed(2)}x`);
    return Number(ratio.toFixed(2));
  };
  const any = (): boolean => true;
  const lanes = (r: Result): boolean => r.mode === 'lanes';
  const large = (r: Result): boolean => r.batch === LARGE;
  const [o, m] = [top('ours', any), top('memjs', any)];
  const [ol, ml] = [top('ours', lanes), top('memjs', lanes)];
  const [og, mg] = [top('ours', large), top('memjs', large)];
  const ratio = line('best of each', o, m);
  const lanesRatio = line('best lanes', ol, ml);
  const largeRatio = line(`batches of ${LARGE}`, og, mg);
  if (args.json) {
    console.log(JSON.stringify({
      ours_gets_per_sec: o?.getsPerSec ?? null, memjs_gets_per_sec: m?.getsPerSec ?? null, ratio,
      ours_best: o === undefined ? null : label(o), memjs_best: m === undefined ? null : label(m),
      ours_lanes_gets_per_sec: ol?.getsPerSec ?? null, memjs_lanes_gets_per_sec: ml?.getsPerSec ?? null, lanes_ratio: lanesRatio,
      ours_large_batches_gets_per_sec: og?.getsPerSec ?? null, memjs_large_batches_gets_per_sec: mg?.getsPerSec ?? null, large_batches_ratio: largeRatio,
      results,
    }));
  }
} finally {
  theirs.close();
  await ours.close();
  await mc.stop();
}
