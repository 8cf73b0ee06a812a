// Get throughput and latency of our memcached client against memjs, same run,
// same memcached, same keys. Usage:
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
const warmupMs = args.quick ? 150 : 400;
const runMs = args.quick ? 500 : 2500;
const KEYS = 10_000;
const keys = Array.from({ length: KEYS }, (_, i) => `bench:session:${i.toString(36).padStart(8, '0')}`);
const value = Buffer.alloc(64, 'v');

type Get = (key: string) => Promise<unknown>;
interface Result { client: string; depth: number; getsPerSec: number; errors: number; p50: number; p90: number; p99: number; p999: number; max: number }

/** `depth` lanes, each issuing its next get when the last settles; latency in µs. */
function measure(get: Get, depth: number, ms: number, hist: hdr.Histogram | null): Promise<{ ops: number; errors: number; secs: number }> {
  return new Promise((resolve) => {
    let ops = 0;
    let errors = 0;
    let live = depth;
    const t0 = performance.now();
    const end = t0 + ms;
    for (let l = 0; l < depth; l++) {
      let i = (l * 7919) % KEYS;
      let start = 0;
      // One clock read per op: a get's completion time is the next one's start.
      const issue = (now: number): void => {
        start = now;
        i = i + 1 === KEYS ? 0 : i + 1;
        get(keys[i]).then(ok, fail);
      };
      const settle = (): void => {
        const now = performance.now();
        ops++;
        hist?.recordValue(Math.max(1, Math.round((now - start) * 1000)));
        if (now < end) issue(now);
        else if (--live === 0) resolve({ ops, errors, secs: (now - t0) / 1000 });
      };
      const ok = (): void => settle();
      const fail = (): void => { errors++; settle(); };
      issue(performance.now());
    }
  });
}

async function bench(client: string, get: Get): Promise<Result[]> {
  const out: Result[] = [];
  for (const depth of depths) {
    await measure(get, depth, warmupMs, null);
    const hist = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 });
    const r = await measure(get, depth, runMs, hist);
    const q = (p: number): number => hist.getValueAtPercentile(p);
    out.push({
      client, depth, getsPerSec: Math.round(r.ops / r.secs), errors: r.errors,
      p50: q(50), p90: q(90), p99: q(99), p999: q(99.9), max: hist.maxValue,
    });
    const x = out[out.length - 1];
    console.log(
      `${client.padEnd(5)} depth ${String(depth).padStart(4)}: ${String(x.getsPerSec).padStart(8)} gets/s` +
      `  p50 ${x.p50}µs p90 ${x.p90}µs p99 ${x.p99}µs p99.9 ${x.p999}µs max ${x.max}µs` +
      (x.errors > 0 ? `  errors ${x.errors}` : ''),
    );
  }
  return out;
}

const mc = await startMemcached(['-t', '1']);
const ours = new MemcacheClient({ servers: [mc.address], timeoutMs: 2000 });
const theirs = memjs.Client.create(mc.address, { retries: 0, timeout: 2, logger: { log: () => {} } });
try {
  await Promise.all(keys.map((k) => ours.set(k, value, 0)));
  console.log(`memcached ${mc.address} (1 thread), ${KEYS} keys of ${value.length} B, ${runMs} ms per depth`);
  const results = [
    ...(clients.includes('ours') ? await bench('ours', (k) => ours.get(k)) : []),
    ...(clients.includes('memjs') ? await bench('memjs', (k) => theirs.get(k)) : []),
  ];
  const best = (c: string): Result | undefined => results.filter((r) => r.client === c).reduce<Result | undefined>((a, b) => (a === undefined || b.getsPerSec > a.getsPerSec ? b : a), undefined);
  const o = best('ours');
  const m = best('memjs');
  if (o !== undefined && m !== undefined) report(o, m, results);
} finally {
  theirs.close();
  await ours.close();
  await mc.stop();
}

function report(o: Result, m: Result, results: Result[]): void {
  console.log(`best: ours ${o.getsPerSec}/s (depth ${o.depth}), memjs ${m.getsPerSec}/s (depth ${m.depth}), ratio ${(o.getsPerSec / m.getsPerSec).toFixed(2)}x`);
  if (args.json) {
    console.log(JSON.stringify({
      ours_gets_per_sec: o.getsPerSec, memjs_gets_per_sec: m.getsPerSec,
      ratio: Number((o.getsPerSec / m.getsPerSec).toFixed(2)),
      ours_best_depth: o.depth, memjs_best_depth: m.depth, results,
    }));
  }
}
