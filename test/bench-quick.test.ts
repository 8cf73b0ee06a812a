// Keeps the benchmark suite from rotting: `npm run bench -- --quick` must run to
// the end and write a summary with every expected target answering. No speed
// thresholds: this machine's speed is not what is tested.
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

test('npm run bench -- --quick finishes and reports every quick target', { timeout: 180_000 }, async (t) => {
  if (which('memcached') === null) {
    t.skip('memcached is not installed');
    return;
  }
  const out = mkdtempSync(join(tmpdir(), 'bench-quick-test-'));
  try {
    const proc = spawn(process.execPath, ['bench/run.ts', '--quick', '--json', '--out', out, '--no-install', '--duration', '2', '--timeout', '150'], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d) => { stdout += d; });
    proc.stderr.on('data', (d) => { stderr += d; });
    const [code] = await once(proc, 'exit');
    assert.equal(code, 0, `bench exited ${code}\n${stderr}`);

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
