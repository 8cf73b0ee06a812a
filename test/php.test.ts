// A real PHP application behind the proxy, as a user deploys it: two `php -S`
// instances of a session counter (test/fixtures/php/counter.php), each with
// its own session directory, so a session that lands on the other instance
// starts again at 1. PHP accepts an id it does not know without a Set-Cookie
// (unless session.use_strict_mode, where it answers with a new id), so a lost
// binding is found again only by remembering and adopting. Skipped where php
// is not installed (CI installs php-cli).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, inspect, startMemcached } from './helpers/memcached.ts';
import { get, startProxy, type Jar, type ProxyProcess } from './helpers/proxy.ts';
import { visitOf, type Visit } from './helpers/session-app.ts';
import { waitFor } from './helpers/wait.ts';

const PHP = spawnSync('php', ['--version']).status === 0;
const SKIP = PHP ? false : 'php is not installed (apt-get install -y php-cli)';
const T = { timeout: 45_000, skip: SKIP };
const COUNTER = fileURLToPath(new URL('./fixtures/php/counter.php', import.meta.url));

const dir = mkdtempSync(join(tmpdir(), 'sticky-php-'));
const started: ChildProcess[] = [];

/** `php -S` on a free loopback port with its own session directory. */
async function startPhp(name: string, strict: boolean): Promise<{ name: string; url: string }> {
  const port = await freePort();
  const sessions = mkdtempSync(join(dir, `${name}-`));
  const proc = spawn('php', ['-S', `127.0.0.1:${port}`, '-d', `session.save_path=${sessions}`, '-d', `session.use_strict_mode=${strict ? 1 : 0}`, COUNTER], {
    stdio: 'ignore',
    env: { ...process.env, BACKEND_NAME: name },
  });
  started.push(proc);
  const url = `http://127.0.0.1:${port}`;
  const exited = once(proc, 'exit').then(([code]) => { throw new Error(`php -S for ${name} exited (${code})`); });
  exited.catch(() => {});
  await Promise.race([waitFor(async () => (await get(url)).status === 200, { what: `php -S for ${name} to answer`, timeoutMs: 10_000, intervalMs: 50 }), exited]);
  return { name, url };
}

after(async () => {
  for (const p of started) {
    if (p.exitCode !== null || p.signalCode !== null) continue;
    const exited = once(p, 'exit');
    process.kill(p.pid!, 'SIGTERM');
    await exited;
  }
  rmSync(dir, { recursive: true, force: true });
});

/** One browser with its cookie jar. */
class User {
  readonly jar: Jar = new Map();
  readonly visits: Visit[] = [];

  async visit(url: string): Promise<Visit> {
    const r = await get(url, this.jar);
    const v = visitOf(r.status, r.headers);
    assert.equal(v.status, 200);
    this.visits.push(v);
    return v;
  }
}

/** The counter never started again from visit `from` on: one backend, one id, counts one apart. */
function counts(u: User, from: number, what: string): void {
  const first = u.visits[from];
  u.visits.slice(from).forEach((v, k) => {
    assert.deepEqual([v.backend, v.id, v.count], [first.backend, first.id, first.count + k], `${what}: visit ${from + k} (PHP counters: ${u.visits.map((x) => `${x.backend}:${x.count}`).join(' ')})`);
  });
}

for (const strict of [false, true]) {
  const kind = strict ? 'session.use_strict_mode=1 (an unknown id gets a new one)' : 'PHP\'s defaults (an unknown id is taken as it is)';
  test(`PHP, ${kind}: a session counter never starts again across a memcached restart; behind a new proxy instance it settles within one request`, T, async () => {
    const tag = strict ? 'strict' : 'plain';
    const php = [await startPhp(`${tag}1`, strict), await startPhp(`${tag}2`, strict)];
    const m = await startMemcached();
    const flags = [...php.flatMap((p) => ['--backend', `${p.name}=${p.url}`]), '--memcache', m.address];
    let proxy: ProxyProcess | undefined;
    try {
      proxy = await startProxy(flags);
      const url = proxy.url;
      const users = Array.from({ length: 4 }, () => new User());
      for (const u of users) for (let k = 0; k < 5; k++) await u.visit(url);
      assert.equal(new Set(users.map((u) => u.visits[0].backend)).size, 2, 'sessions on both instances');
      await m.restart();
      // In the reverse order of their start, so that round robin, were it asked, would send each elsewhere.
      for (const u of [...users].reverse()) {
        // Past the near cache's freshness memcached answers "unbound": the visits go on until the binding is back.
        await waitFor(async () => {
          const v = await u.visit(url);
          return (await inspect(m.port, `sp:PHPSESSID:${v.id}`)) !== null;
        }, { what: 'the session bound again in memcached', timeoutMs: 8000, intervalMs: 50 });
        for (let k = 0; k < 10; k++) await u.visit(url);
        counts(u, 0, 'across a memcached restart');
        assert.equal((await inspect(m.port, `sp:PHPSESSID:${u.visits[0].id}`))?.value, u.visits[0].backend, 'bound again where it was');
      }
      // The proxy rolled out again in front of these sessions, with memcached empty once more.
      await proxy.stop();
      await m.restart();
      proxy = await startProxy(flags);
      const next = proxy.url;
      for (const u of users) {
        const from = u.visits.length;
        for (let k = 0; k < 11; k++) await u.visit(next);
        counts(u, from, 'behind a new proxy instance, after its first request');
      }
    } finally {
      await proxy?.stop();
      await m.stop();
    }
  });
}
