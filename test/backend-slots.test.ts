// Each backend has a slot in the process's shared state; a reload that adds a
// backend, or moves one to another address, gives it a free one. The slots a
// reload frees are given again once no loop can use them for the backend that
// left, so a process whose list keeps changing (service discovery through
// SIGHUP) never runs out of them, and a session remembered for the backend
// that left never follows its slot to the next one.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startMemcached, type Memcached } from './helpers/memcached.ts';
import { startOrigin, type Origin } from './helpers/origins.ts';
import { get, startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { waitFor } from './helpers/wait.ts';

const T = { timeout: 90_000 };
const dir = mkdtempSync(join(tmpdir(), 'sticky-slots-'));
let origins: Origin[] = [];
let mc: Memcached;

before(async () => {
  origins = [await startOrigin('a'), await startOrigin('b'), await startOrigin('c')];
  mc = await startMemcached();
}, T);
after(async () => {
  await Promise.all(origins.map((o) => o.close()));
  await mc.stop();
  rmSync(dir, { recursive: true, force: true });
}, T);

const reloaded = (p: ProxyProcess): number => p.output.filter((l) => l.includes('"msg":"backends reloaded"')).length;

/** Writes the backend list to `file`, sends SIGHUP, and waits until the proxy says it applied it. */
async function reload(p: ProxyProcess, file: string, backends: string[]): Promise<void> {
  const before = reloaded(p);
  writeFileSync(file, JSON.stringify({ backend: backends, memcache: `127.0.0.1:${mc.port}` }));
  process.kill(p.pid, 'SIGHUP');
  await waitFor(() => {
    const refused = p.output.find((l) => l.includes('too few backend slots'));
    if (refused !== undefined) throw new Error(`reload refused: ${refused}`);
    return reloaded(p) > before;
  }, { what: `reload ${before + 1} applied` });
}

test('a backend moved to another address 300 times by SIGHUP, with two loops: every reload is applied', T, async () => {
  const file = join(dir, 'moves.json');
  writeFileSync(file, JSON.stringify({ backend: [`x=${origins[0].url}`], memcache: `127.0.0.1:${mc.port}` }));
  const p = await startProxy(['--config', file, '--threads', '2']);
  try {
    // Each move takes a fresh slot: past 256 of them, only reuse keeps reloads working.
    for (let i = 1; i <= 300; i++) {
      await reload(p, file, [`x=${origins[i % 2].url}`]);
      if (i % 100 === 0) {
        // Many connections at once, so both loops answer some.
        const answers = await Promise.all(Array.from({ length: 24 }, () => get(p.url)));
        for (const r of answers) assert.equal(r.headers['x-backend'], origins[i % 2].name, `after ${i} moves`);
      }
    }
  } finally {
    await p.stop();
  }
});

test('a slot given to another backend: a session remembered for the backend that left does not follow it there', T, async () => {
  const file = join(dir, 'reuse.json');
  const [a, b, c] = origins;
  writeFileSync(file, JSON.stringify({ backend: [`old=${a.url}`, `other=${b.url},weight=0`], memcache: `127.0.0.1:${mc.port}` }));
  // One loop applies a reload at once, so the second reload is sure to give `old`'s slot to `fresh`;
  // a near-cache lifetime of a minute keeps the session's binding fresh there throughout.
  const p = await startProxy(['--config', file, '--threads', '1', '--near-cache-ttl', '60000']);
  try {
    const learnt = await get(p.url, undefined, { 'x-set-cookie': JSON.stringify(['PHPSESSID=s1; Max-Age=600']) });
    assert.equal(learnt.headers['x-backend'], 'a');
    assert.equal((await get(p.url, undefined, { cookie: 'PHPSESSID=s1' })).headers['x-backend'], 'a');
    await reload(p, file, [`other=${b.url}`]);
    // `fresh` takes no new sessions (weight 0): only a binding could send a request there.
    await reload(p, file, [`other=${b.url}`, `fresh=${c.url},weight=0`]);
    const r = await get(p.url, undefined, { cookie: 'PHPSESSID=s1' });
    assert.equal(r.headers['x-backend'], 'b', 'the session of a removed backend goes through the balancer, not to its slot\'s new backend');
  } finally {
    await p.stop();
  }
});

test('a removed backend\'s request still in flight keeps its slot until it ends: the slot\'s next backend is not charged with it', T, async () => {
  const file = join(dir, 'inflight.json');
  let release = (): void => {};
  const held = new Promise<void>((resolve) => { release = resolve; });
  // It never answers: once released, it cuts the connection, a failure the proxy counts against it.
  const slow = await startOrigin('slow', (req) => {
    req.resume();
    void held.then(() => req.socket.destroy());
  });
  const b = origins[1];
  writeFileSync(file, JSON.stringify({ backend: [`slow=${slow.url}`, `other=${b.url},weight=0`], memcache: `127.0.0.1:${mc.port}` }));
  const p = await startProxy(['--config', file, '--threads', '1', '--admin', '127.0.0.1:0', '--eject-after', '1', '--max-ejection-percent', '100']);
  try {
    const admin = p.output.find((l) => l.startsWith('admin on '))!.slice('admin on '.length);
    const view = async (name: string): Promise<{ state: string; active: number } | undefined> => {
      const list = JSON.parse((await get(`${admin}/backends`)).body) as { name: string; state: string; active: number }[];
      return list.find((x) => x.name === name);
    };
    const pending = get(p.url);
    await waitFor(() => slow.requests === 1, { what: 'the request at the slow backend' });
    await reload(p, file, [`other=${b.url}`]);
    await reload(p, file, [`other=${b.url}`, `fresh=${origins[2].url}`]);
    assert.deepEqual(await view('fresh'), { name: 'fresh', url: origins[2].url, weight: 1, state: 'up', active: 0 });
    release();
    // Retried on a backend of the new list.
    assert.equal((await pending).status, 200);
    assert.deepEqual(await view('fresh'), { name: 'fresh', url: origins[2].url, weight: 1, state: 'up', active: 0 }, 'the removed backend\'s failure is not counted against the slot\'s next backend');
  } finally {
    await p.stop();
    await slow.close();
  }
});
