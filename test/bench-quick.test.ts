// Keeps the benchmarks from rotting: `npm run bench -- --quick` and
// `npm run bench:memcache -- --quick` must run to the end and report every
// expected target or pattern. No speed thresholds: this machine's speed is
// not what is tested.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { which } from '../bench/lib/procs.ts';

const ROOT = fileURLToPath(new URL('../', import.meta.url));

interface Summary {
  results: { scenario: string; target: string; requestsPerSec: number; errors: number; errorKinds: Record<string, number> }[];
  skipped: { target: string; reason: string }[];
  failed: { target: string; reason: string }[];
}

/** Runs a benchmark script to its end; fails the test unless it exits 0. */
async function runBench(argv: string[]): Promise<{ stdout: string; stderr: string }> {
  const proc = spawn(process.execPath, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (d) => { stdout += d; });
  proc.stderr.on('data', (d) => { stderr += d; });
  const [code] = await once(proc, 'exit');
  assert.equal(code, 0, `${argv[0]} exited ${code}\n${stderr}`);
  return { stdout, stderr };
}

test('npm run bench -- --quick finishes and reports every quick target', { timeout: 180_000 }, async (t) => {
  if (which('memcached') === null) {
    t.skip('memcached is not installed');
    return;
  }
  const out = mkdtempSync(join(tmpdir(), 'bench-quick-test-'));
  try {
    const { stdout, stderr } = await runBench(['bench/run.ts', '--quick', '--json', '--out', out, '--no-install', '--duration', '2', '--timeout', '150']);

    const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8')) as Summary;
    assert.deepEqual(JSON.parse(stdout.trim().split('\n').pop()!).results, summary.results, 'the --json line is the summary');
    assert.deepEqual(summary.failed, [], stderr);
    const byTarget = new Map(summary.results.filter((r) => r.scenario === 'seed').map((r) => [r.target, r]));
    for (const target of ['origin', 'sp-mc-w0', 'sp-emb-w0', 'sp-noaff']) {
      const r = byTarget.get(target);
      assert.ok(r, `${target} missing from the summary`);
      assert.ok(r.requestsPerSec > 0, `${target}: no requests`);
      if (target !== 'origin') assert.equal(r.errors, 0, `${target}: errors ${JSON.stringify(r.errorKinds)}`);
    }
    for (const f of ['results.md', 'latency-seed.svg', 'seed.sp-mc-w0.hgrm']) assert.ok(readFileSync(join(out, f), 'utf8').length > 0, f);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test('npm run bench:memcache -- --quick --json reports both clients on every pattern, without errors', { timeout: 120_000 }, async (t) => {
  if (which('memcached') === null) {
    t.skip('memcached is not installed');
    return;
  }
  const { stdout } = await runBench(['bench/memcache.ts', '--quick', '--json', '--depths', '1,256']);
  const out = JSON.parse(stdout.trim().split('\n').pop()!) as {
    ours_gets_per_sec: number; memjs_gets_per_sec: number; ratio: number; lanes_ratio: number; large_batches_ratio: number;
    results: { client: string; mode: string; batch: number; depth: number; getsPerSec: number; errors: number; p99: number }[];
  };
  // lanes 1, lanes 256, batches of 256 × 1, batches of 1024 × 4: for each client.
  for (const client of ['ours', 'memjs']) {
    const mine = out.results.filter((r) => r.client === client);
    assert.deepEqual(mine.map((r) => `${r.mode}:${r.batch}x${r.depth}`), ['lanes:1x1', 'lanes:1x256', 'batches:256x256', 'batches:1024x4096'], client);
    for (const r of mine) {
      assert.ok(r.getsPerSec > 0 && r.p99 > 0, `${client} ${r.mode} ${r.depth}: no gets measured`);
      assert.equal(r.errors, 0, `${client} ${r.mode} ${r.depth}: errors`);
    }
  }
  assert.equal(out.ours_gets_per_sec, Math.max(...out.results.filter((r) => r.client === 'ours').map((r) => r.getsPerSec)));
  assert.equal(out.ratio, Number((out.ours_gets_per_sec / out.memjs_gets_per_sec).toFixed(2)));
  for (const k of ['lanes_ratio', 'large_batches_ratio'] as const) assert.ok(out[k] > 0, k);
});
