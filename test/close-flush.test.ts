// Closing an event loop's affinity flushes the learns of the current turn and
// waits for them: the learns a drain leaves behind reach memcached before the
// process exits. From the wire this cannot be told apart from the next turn's
// flush, so it is checked here, on the module, against a real memcached.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { Affinity, type BatchRunner } from '../src/affinity.ts';
import { Resolver } from '../src/resolver.ts';
import { LoopStats, ResolverStats } from '../src/stats.ts';
import { inspect, startMemcached, type Memcached } from './helpers/memcached.ts';

let mc: Memcached;
before(async () => { mc = await startMemcached(); });
after(async () => { await mc.stop(); });

test('close() sends the learns queued in this turn and waits for memcached to store them', { timeout: 20_000 }, async () => {
  const prefix = `close-flush-${process.pid}:`;
  const resolverStats = new ResolverStats();
  const resolver = new Resolver({
    sessionCookies: ['PHPSESSID'], defaultTtl: 300, maxTtl: 86_400, keyPrefix: prefix, memcache: [mc.address],
    storeTimeoutMs: 2000, learnQueue: 1000, outageCounters: null, embedded: null,
  }, resolverStats);
  const runner: BatchRunner = { ready: Promise.resolve(), run: (b) => resolver.run(b), close: () => resolver.close() };
  const affinity = new Affinity({ batchMax: 64, deadlineMs: 5000, defaultTtl: 300, maxTtl: 300, near: null, local: null, stats: new LoopStats(), resolverStats }, runner);
  let learned = false;
  // Queued, then closed in the same turn: only close() can send it.
  affinity.learn('srv1', ['PHPSESSID=closing-turn; Max-Age=600'], '', '', { onLearned: () => { learned = true; } });
  await affinity.close();
  assert.ok(learned, 'the learn settled before close() resolved');
  assert.equal((await inspect(mc.port, `${prefix}PHPSESSID:closing-turn`))?.value, 'srv1');
});
