// The wall clock may be stepped under a running proxy (NTP at boot, a VM
// resumed, an operator's `date -s`). The times the loops share run on the
// monotonic clock (src/clock.ts), so a step changes none of them: an ejected
// backend comes back after its cool-down, a near-cache entry stops being
// fresh after its lifetime, and an embedded binding lives its TTL. Node's
// mocked Date steps the wall clock here; the monotonic clock goes on.
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import { Affinity, type BatchRunner } from '../src/affinity.ts';
import { BackendSet } from '../src/backends.ts';
import type { AffinityAnswer, AffinityBatch, LookupOutcome } from '../src/batch.ts';
import { Deadlines } from '../src/deadlines.ts';
import { Health } from '../src/health.ts';
import { createLogger } from '../src/log.ts';
import { NearCache, nearCacheBytes } from '../src/near-cache.ts';
import { SharedState, sharedMemory } from '../src/shared.ts';
import { LoopStats, ResolverStats } from '../src/stats.ts';
import { EmbeddedStore, embeddedStoreBytes } from '../src/store/embedded.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { performance } from 'node:perf_hooks';

const HOUR = 3_600_000;

/** Polls `condition` for up to `ms` on the monotonic clock (waitFor's deadline reads Date, which is mocked here). */
async function within(ms: number, what: string, condition: () => boolean): Promise<void> {
  const end = performance.now() + ms;
  while (!condition()) {
    if (performance.now() > end) throw new Error(`not within ${ms} ms: ${what}`);
    await sleep(20);
  }
}

/** Runs `fn` with Date mocked, starting at the real time; `step` moves the wall clock by `ms`. */
async function withWallClock(fn: (step: (ms: number) => void) => Promise<void> | void): Promise<void> {
  mock.timers.enable({ apis: ['Date'], now: Date.now() });
  try {
    await fn((ms) => mock.timers.setTime(Date.now() + ms));
  } finally {
    mock.timers.reset();
  }
}

function backends(): { set: BackendSet; state: SharedState } {
  const state = new SharedState(sharedMemory(), 0);
  state.claim(0, 1);
  state.claim(1, 1);
  const deadlines = new Deadlines(50);
  const opts = { connections: 1, connectTimeoutMs: 1000, idleTimeoutMs: 1000, queueMax: 1, queueTimeoutMs: 1000, ca: null };
  const set = new BackendSet([0, 1].map((slot) => ({ name: `b${slot}`, url: new URL(`http://127.0.0.1:${1000 + slot}`), weight: 1, slot })), opts, deadlines, state);
  return { set, state };
}

test('an ejected backend comes back after its cool-down, though the wall clock was stepped back an hour', async () => {
  const { set, state } = backends();
  const health = new Health(set, {
    healthPath: null, healthIntervalMs: 1000, healthTimeoutMs: 1000, healthRise: 1, healthFall: 1,
    ejectAfter: 1, ejectCooldownMs: 100, maxEjectionPercent: 100, ejectOn500: false, ca: null,
  }, createLogger('silent'), state);
  const b = set.list[0];
  await withWallClock(async (step) => {
    health.failure(b, 'test', false);
    assert.equal(b.state, 'down', 'ejected');
    step(-HOUR);
    await within(3000, 'the backend back after its 100 ms cool-down', () => b.up);
  });
});

test('a near-cache entry is fresh for its lifetime, not for as long as the wall clock was stepped back', async () => {
  const near = new NearCache(new SharedArrayBuffer(nearCacheBytes(16)), 16, 100, 60_000, { slotOf: (n) => (n === 'b0' ? 0 : -1), nameOf: (s) => (s === 0 ? 'b0' : '') });
  const batches: AffinityBatch[] = [];
  const runner: BatchRunner = {
    ready: Promise.resolve(),
    run(batch: AffinityBatch): Promise<AffinityAnswer> {
      batches.push(batch);
      const n = batch.lookups.length;
      return Promise.resolve({ outcomes: new Uint8Array(n), backends: new Array<string>(n).fill(''), keys: batch.lookups.slice(), replaced: new Uint8Array(0), learnt: [], cleared: [] });
    },
    close: () => Promise.resolve(),
  };
  const affinity = new Affinity({ batchMax: 16, deadlineMs: 1000, defaultTtl: 600, maxTtl: 600, near, local: null, stats: new LoopStats(), resolverStats: new ResolverStats() }, runner);
  const answers: LookupOutcome[] = [];
  const waiter = { onAffinity: (outcome: LookupOutcome) => { answers.push(outcome); } };
  await withWallClock(async (step) => {
    affinity.bind('PHPSESSID:s1', 'b0', 'bind');
    affinity.lookup('PHPSESSID:s1', waiter);
    assert.deepEqual(answers, ['hit'], 'fresh at once: answered by the near cache');
    step(-HOUR);
    // Past the 100 ms lifetime, the lookup asks the store.
    await within(3000, 'the entry no longer fresh', () => {
      answers.length = 0;
      affinity.lookup('PHPSESSID:s1', waiter);
      return answers.length === 0;
    });
  });
});

test('an embedded binding lives its TTL, though the wall clock was stepped a day forward', async () => {
  const store = new EmbeddedStore(new SharedArrayBuffer(embeddedStoreBytes(64)));
  await withWallClock(async (step) => {
    await store.set('PHPSESSID:s1', 'b0', 600, false);
    step(24 * HOUR);
    assert.equal(store.lookup('PHPSESSID:s1'), 'b0');
  });
});
