// Sessions whose binding the proxy no longer has while the session is still
// alive: a binding deleted, naming no backend, or memcached restarted empty,
// a proxy instance that never saw the session, memcached down or frozen under
// load, a cookie that outlives --max-ttl. Behind the proxy are session apps
// of both kinds (test/helpers/session-app.ts): ones that accept any id
// silently (PHP) and ones that replace an unknown id (Tomcat, Django). Each
// app instance keeps its own sessions, so a session that lands where it is
// not known shows it: its counter starts again, or its id changes. Also:
// adoption's rules and its write bound, and the rule for a request carrying
// the session cookie twice.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { inspect, startMemcached, type Memcached } from './helpers/memcached.ts';
import { backendFlags } from './helpers/origins.ts';
import { get, startProxy, type Jar, type ProxyProcess } from './helpers/proxy.ts';
import { startSessionApp, visitOf, type SessionApp, type SessionMode, type Visit } from './helpers/session-app.ts';
import { waitFor, waitForLine } from './helpers/wait.ts';

// A hang fails its test instead of the whole file.
const T = { timeout: 30_000 };

let apps: Record<SessionMode, SessionApp[]>;
let mc: Memcached;
let tests = 0;

before(async () => {
  apps = {
    accept: [await startSessionApp('php1', 'accept'), await startSessionApp('php2', 'accept')],
    replace: [await startSessionApp('java1', 'replace', { cookie: 'JSESSIONID' }), await startSessionApp('java2', 'replace', { cookie: 'JSESSIONID' })],
  };
  mc = await startMemcached();
}, T);
after(async () => {
  await Promise.all([...apps.accept, ...apps.replace].map((a) => a.close()));
  await mc.stop();
}, T);

/** A key prefix of its own for each proxy set-up, so tests sharing a memcached never see each other's bindings. */
function freshPrefix(): string {
  return `lost-${process.pid}-${++tests}:`;
}

/** One browser: a cookie jar, sending its requests one after another. */
class User {
  readonly jar: Jar = new Map();
  readonly cookie: string;
  readonly visits: Visit[] = [];

  constructor(cookie: string) {
    this.cookie = cookie;
  }

  get id(): string { return this.jar.get(this.cookie) ?? ''; }

  async visit(url: string, path = '/'): Promise<Visit> {
    const r = await get(`${url}${path}`, this.jar);
    const v = visitOf(r.status, r.headers);
    this.visits.push(v);
    return v;
  }
}

/** Asserts the visits from `from` on were served by one backend, with one id, and a counter that never started again. */
function unbroken(u: User, from: number, what: string): void {
  const vs = u.visits.slice(from);
  const first = u.visits[from];
  for (let k = 0; k < vs.length; k++) {
    const v = vs[k];
    const where = `${what}: visit ${from + k} of session ${first.id}`;
    assert.equal(v.status, 200, where);
    assert.equal(v.backend, first.backend, `${where} moved from ${first.backend} to ${v.backend}`);
    assert.equal(v.id, first.id, `${where} lost its id (now ${v.id})`);
    assert.equal(v.count, first.count + k, `${where}: the counter on ${v.backend} reads ${v.count}, expected ${first.count + k}`);
  }
}

/** Sends `command` over memcached's text protocol, independently of the proxy's client; the answer once `done` matches it. */
async function memcachedText(port: number, command: string, done: RegExp): Promise<string> {
  const s = connect(port, '127.0.0.1');
  s.write(command);
  let answer = '';
  for await (const chunk of s) {
    answer += chunk.toString('latin1');
    if (done.test(answer)) {
      s.destroy();
      return answer;
    }
  }
  throw new Error(`memcached closed before answering ${command.trim()}`);
}

const deleteKey = (port: number, key: string): Promise<string> => memcachedText(port, `delete ${key}\r\n`, /^(DELETED|NOT_FOUND)\r\n/);
const setKey = (port: number, key: string, value: string): Promise<string> => memcachedText(port, `set ${key} 0 600 ${value.length}\r\n${value}\r\n`, /^STORED\r\n/);

/** memcached's own count of set commands (quiet ones included). */
async function setsCounted(port: number): Promise<number> {
  const stats = await memcachedText(port, 'stats\r\n', /END\r\n$/);
  return Number(/^STAT cmd_set (\d+)\r$/m.exec(stats)![1]);
}

/** A sample of the proxy's /metrics (needs --admin); 0 when the series is absent. */
async function metric(p: ProxyProcess, series: string): Promise<number> {
  const admin = p.output.find((l) => l.startsWith('admin on '))!.slice('admin on '.length);
  const text = await (await request(`${admin}/metrics`)).body.text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

function proxyFlags(mode: SessionMode, m: Memcached, prefix: string): string[] {
  return [...backendFlags(apps[mode]), '--memcache', m.address, '--key-prefix', prefix];
}

/** Starts `count` sessions through `url`: a first visit that sets the cookie, and a second one that must stick. */
async function startSessions(url: string, mode: SessionMode, count: number): Promise<User[]> {
  const users = Array.from({ length: count }, () => new User(apps[mode][0].cookie));
  for (const u of users) {
    const first = await u.visit(url);
    assert.ok(first.issued, 'a request without the cookie starts a session with Set-Cookie');
    const second = await u.visit(url);
    assert.equal(second.backend, first.backend);
    assert.equal(second.count, 2);
  }
  return users;
}

for (const mode of ['accept', 'replace'] as const) {
  // A value naming no configured backend: another fleet's name, or a reply garbled on its way.
  for (const loss of ['deleted', 'memcached restarted empty', 'naming no backend'] as const) {
    test(`${mode} apps, binding ${loss}: the instance that served the session keeps it where it was, binds it again by adoption, and it stays there for 20 more`, T, async () => {
      const m = await startMemcached();
      const prefix = freshPrefix();
      const proxy = await startProxy(proxyFlags(mode, m, prefix));
      try {
        const users = await startSessions(proxy.url, mode, 3);
        const keyOf = (u: User): string => `${prefix}${u.cookie}:${u.id}`;
        for (const u of users) assert.equal((await inspect(m.port, keyOf(u)))?.value, u.visits[0].backend, 'learnt from Set-Cookie');
        if (loss === 'deleted') for (const u of users) assert.match(await deleteKey(m.port, keyOf(u)), /^DELETED/);
        else if (loss === 'naming no backend') for (const u of users) assert.match(await setKey(m.port, keyOf(u), 'retired'), /^STORED/);
        else await m.restart();
        for (const u of users) {
          const from = u.visits.length - 1;
          // Past the near cache's freshness memcached answers "unbound"; the visits go on until the binding is back.
          await waitFor(async () => {
            await u.visit(proxy.url);
            return (await inspect(m.port, keyOf(u)))?.value === u.visits[0].backend;
          }, { what: `session ${u.id} bound again in memcached`, timeoutMs: 8000, intervalMs: 50 });
          for (let k = 0; k < 20; k++) await u.visit(proxy.url);
          unbroken(u, from, `binding ${loss}`);
          assert.equal((await inspect(m.port, keyOf(u)))?.value, u.visits[0].backend, 'bound again where it was');
        }
      } finally {
        await proxy.stop();
        await m.stop();
      }
    });
  }

  test(`${mode} apps, an instance that never saw the sessions and no binding left (memcached restarted empty): each session settles within one request and stays for 20 more`, T, async () => {
    const m = await startMemcached();
    const prefix = freshPrefix();
    const old = await startProxy(proxyFlags(mode, m, prefix));
    const users = await startSessions(old.url, mode, 4);
    await old.stop();
    // The proxy rolled out in front of live sessions whose bindings are gone.
    await m.restart();
    const proxy = await startProxy(proxyFlags(mode, m, prefix));
    try {
      for (const u of users) {
        const from = u.visits.length;
        const first = await u.visit(proxy.url);
        assert.equal(first.status, 200);
        if (mode === 'replace' && first.backend !== u.visits[0].backend) assert.ok(first.issued, 'an app that does not know the id replaces it');
        for (let k = 0; k < 20; k++) await u.visit(proxy.url);
        unbroken(u, from, 'after the first request through the new instance');
      }
    } finally {
      await proxy.stop();
      await m.stop();
    }
  });
}

/** Users visiting, each one request after another, paced, until stop(); what failed on the way is in `errors`. */
function keepVisiting(runs: { url: string; user: User }[]): { stop: () => Promise<void>; errors: string[] } {
  let going = true;
  const errors: string[] = [];
  const loops = runs.map(async ({ url, user }) => {
    while (going) {
      try {
        await user.visit(url);
      } catch (err) {
        errors.push(`${user.id}: ${(err as Error).message}`);
      }
      await sleep(25); // pacing: a bounded load of about 40 requests a second per session
    }
  });
  return {
    errors,
    stop: async () => {
      going = false;
      await Promise.all(loops);
    },
  };
}

for (const fault of ['killed with kill -9, then started again empty', 'frozen with SIGSTOP, then SIGCONT'] as const) {
  test(`memcached ${fault}, a 5 s outage under load: every session of both app kinds stays on one backend and keeps its id and state; sessions started during the outage too; nothing moves when it is back; the outage logged at warn`, { timeout: 45_000 }, async () => {
    const m = await startMemcached();
    const prefix = freshPrefix();
    const proxies = { accept: await startProxy(proxyFlags('accept', m, prefix)), replace: await startProxy(proxyFlags('replace', m, prefix)) };
    const runs: { url: string; user: User; mode: SessionMode }[] = [];
    const newcomers: { url: string; user: User; mode: SessionMode }[] = [];
    const loads: ReturnType<typeof keepVisiting>[] = [];
    try {
      for (const mode of ['accept', 'replace'] as const) {
        for (const user of await startSessions(proxies[mode].url, mode, 6)) runs.push({ url: proxies[mode].url, user, mode });
      }
      loads.push(keepVisiting(runs));
      await waitFor(() => runs.every((r) => r.user.visits.length >= 6), { what: 'load with memcached up', timeoutMs: 10_000 });
      if (fault.startsWith('killed')) await m.kill();
      else await m.freeze();
      // Sessions started while memcached cannot take their learns.
      for (const mode of ['accept', 'replace'] as const) {
        for (let k = 0; k < 2; k++) newcomers.push({ url: proxies[mode].url, user: new User(apps[mode][0].cookie), mode });
      }
      loads.push(keepVisiting(newcomers));
      // And sessions of one request, gone before memcached is back: only the outage queue can store their learns.
      const passing = await Promise.all((['accept', 'replace', 'accept', 'replace'] as const).map(async (mode) => {
        const user = new User(apps[mode][0].cookie);
        assert.ok((await user.visit(proxies[mode].url)).issued);
        return { user, mode };
      }));
      const outage = runs.map((r) => r.user.visits.length);
      await sleep(5000); // the scenario: a 5 s outage under load
      if (fault.startsWith('killed')) await m.start();
      else m.signal('SIGCONT');
      const back = runs.map((r) => r.user.visits.length);
      await waitFor(() => runs.every((r, i) => r.user.visits.length >= back[i] + 20), { what: '20 more visits of each session with memcached back', timeoutMs: 10_000 });
      const all = [...runs, ...newcomers, ...passing];
      assert.deepEqual(loads.flatMap((l) => l.errors), [], 'no failed request');
      for (const r of all) unbroken(r.user, 0, `${r.mode} app, memcached ${fault}`);
      runs.forEach((r, i) => assert.ok(back[i] - outage[i] >= 20, `${r.user.id} was served during the outage (${back[i] - outage[i]} visits)`));
      // Memcached holds every binding again, where the session is: learns and adoptions made during the outage
      // are written from the queue, and bindings a restart lost are adopted again (the load goes on meanwhile).
      for (const r of all) {
        await waitFor(async () => (await inspect(m.port, `${prefix}${r.user.cookie}:${r.user.id}`))?.value === r.user.visits[0].backend,
          { what: `the binding of ${r.mode} session ${r.user.id} in memcached`, timeoutMs: 5000, intervalMs: 100 });
      }
      await Promise.all(loads.map((l) => l.stop()));
      assert.deepEqual(loads.flatMap((l) => l.errors), [], 'no failed request');
      for (const r of all) unbroken(r.user, 0, `${r.mode} app, memcached ${fault}, to the end`);
      // Each instance said so at warn: the store down, back, and the learns its outage queued, all written.
      for (const p of Object.values(proxies)) {
        const said = (msg: string): Promise<Record<string, number>> => waitForLine(p.output, (l) => l.includes(`"msg":"${msg}"`), { what: `"${msg}" logged` })
          .then((l) => JSON.parse(l) as Record<string, number>);
        assert.equal((await said('affinity store down')).level, 40);
        assert.equal((await said('affinity store back')).level, 40);
        const written = await said('affinity store: learns queued during the outage written');
        assert.equal(written.level, 40);
        assert.ok(written.learnsQueued > 0 && written.learnsWritten > 0, JSON.stringify(written));
        assert.deepEqual([written.dropped, written.stillQueued], [0, 0], JSON.stringify(written));
        // A queued learn waits while memcached is known to be down: at most the tries before it was marked down fail
        // again (re-sent every 250 ms, the 5 s outage made it some twenty times each, a loop stall each time).
        assert.ok(written.learnsRetried <= written.learnsQueued, JSON.stringify(written));
      }
    } finally {
      await Promise.all(loads.map((l) => l.stop()));
      await Promise.all([proxies.accept.stop(), proxies.replace.stop()]);
      await m.stop();
    }
  });
}

test('--max-ttl 4 and a cookie that lives 14 days (Django): an active session keeps its backend for 10 s, its binding sliding at the cap; once idle, it expires at the cap', T, async () => {
  const django = [
    await startSessionApp('django1', 'replace', { cookie: 'sessionid', pick: 'last', attributes: 'Max-Age=1209600; Path=/; HttpOnly' }),
    await startSessionApp('django2', 'replace', { cookie: 'sessionid', pick: 'last', attributes: 'Max-Age=1209600; Path=/; HttpOnly' }),
  ];
  const prefix = freshPrefix();
  const flags = [...backendFlags(django), '--memcache', mc.address, '--key-prefix', prefix, '--max-ttl', '4', '--default-ttl', '4', '--admin', '127.0.0.1:0'];
  const proxy = await startProxy(flags);
  let other: ProxyProcess | undefined;
  try {
    const u = new User('sessionid');
    await u.visit(proxy.url);
    const key = `${prefix}sessionid:${u.id}`;
    const learnt = await inspect(mc.port, key);
    assert.equal(learnt?.flags, 4, 'bound with a TTL sliding at the cap');
    const end = Date.now() + 10_000;
    while (Date.now() < end) {
      await u.visit(proxy.url);
      await sleep(100); // pacing: an active user
    }
    unbroken(u, 0, 'an active session past --max-ttl');
    // The binding was never lost: every lookup memcached answered was a hit.
    assert.equal(await metric(proxy, 'sticky_affinity_lookups_total{outcome="miss"}'), 0, 'the binding expired in memcached while the session was active');
    const kept = await inspect(mc.port, key);
    assert.equal(kept?.value, u.visits[0].backend);
    assert.ok(kept!.ttl > 0 && kept!.ttl <= 4, `remaining TTL ${kept!.ttl}`);
    // An instance that never saw the session finds it where it is.
    other = await startProxy(flags);
    const from = u.visits.length - 1;
    for (let k = 0; k < 3; k++) await u.visit(other.url);
    unbroken(u, from, 'through another instance');
    await waitFor(async () => (await inspect(mc.port, key)) === null, { what: 'the idle binding to expire at the cap', timeoutMs: 8000, intervalMs: 200 });
  } finally {
    await proxy.stop();
    await other?.stop();
    await Promise.all(django.map((d) => d.close()));
  }
});

test('adoption: an unbound id answered 2xx or 3xx without a new one is bound to the backend that answered, counted as adopt, and sticks', T, async () => {
  const prefix = freshPrefix();
  const proxy = await startProxy([...proxyFlags('accept', mc, prefix), '--admin', '127.0.0.1:0']);
  try {
    for (const [id, path, status] of [['client-made-1', '/', 200], ['client-made-2', '/status/302', 302]] as const) {
      const u = new User('PHPSESSID');
      u.jar.set('PHPSESSID', id);
      const first = await u.visit(proxy.url, path);
      assert.equal(first.status, status);
      assert.ok(!first.issued, 'the app accepted the id');
      await waitFor(async () => (await inspect(mc.port, `${prefix}PHPSESSID:${id}`))?.value === first.backend, { what: `${id} adopted` });
      for (let k = 0; k < 6; k++) await u.visit(proxy.url);
      unbroken(u, 1, 'an adopted session');
      assert.equal(u.visits.at(-1)!.backend, first.backend);
    }
    const adopted = await inspect(mc.port, `${prefix}PHPSESSID:client-made-1`);
    assert.equal(adopted?.flags, 1800, 'with the sliding default TTL');
    assert.equal(await metric(proxy, 'sticky_affinity_bindings_total{change="adopt"}'), 2);
    assert.equal(await metric(proxy, 'sticky_affinity_bindings_total{change="learn"}'), 0);
  } finally {
    await proxy.stop();
  }
});

test('adoption: no binding from a 4xx or 5xx answer, nor from one that sets a new id; --no-adopt: only Set-Cookie binds', T, async () => {
  const prefix = freshPrefix();
  // One event loop: the learn used as a marker below is stored after any earlier write of the same loop.
  const accept = await startProxy([...proxyFlags('accept', mc, prefix), '--threads', '1', '--admin', '127.0.0.1:0']);
  const replace = await startProxy([...proxyFlags('replace', mc, prefix), '--threads', '1', '--admin', '127.0.0.1:0']);
  const strict = await startProxy([...proxyFlags('accept', mc, `${prefix}strict:`), '--threads', '1', '--no-adopt']);
  try {
    /** A new session's learn: its answer is held until stored, so writes the loop made before it are done. */
    const marker = async (url: string, cookie: string): Promise<void> => { assert.ok((await new User(cookie).visit(url)).issued); };
    for (const [id, status] of [['refused-404', 404], ['refused-500', 500]] as const) {
      const u = new User('PHPSESSID');
      u.jar.set('PHPSESSID', id);
      assert.equal((await u.visit(accept.url, `/status/${status}`)).status, status);
    }
    await marker(accept.url, 'PHPSESSID');
    for (const id of ['refused-404', 'refused-500']) assert.equal(await inspect(mc.port, `${prefix}PHPSESSID:${id}`), null, `${id} was adopted`);
    assert.equal(await metric(accept, 'sticky_affinity_bindings_total{change="adopt"}'), 0);
    // The app does not know the id and answers with its own: only its own is bound (the answer waits for it).
    const u = new User('JSESSIONID');
    u.jar.set('JSESSIONID', 'replaced-by-app');
    const v = await u.visit(replace.url);
    assert.ok(v.issued && v.id !== 'replaced-by-app');
    assert.equal(await inspect(mc.port, `${prefix}JSESSIONID:replaced-by-app`), null, 'the id the app replaced was adopted');
    assert.equal((await inspect(mc.port, `${prefix}JSESSIONID:${v.id}`))?.value, v.backend);
    assert.equal(await metric(replace, 'sticky_affinity_bindings_total{change="adopt"}'), 0);
    // --no-adopt: an accepted id stays unbound and goes through the balancer; a Set-Cookie still binds.
    const s = new User('PHPSESSID');
    s.jar.set('PHPSESSID', 'never-adopted');
    for (let k = 0; k < 4; k++) assert.equal((await s.visit(strict.url)).status, 200);
    await marker(strict.url, 'PHPSESSID');
    assert.equal(await inspect(mc.port, `${prefix}strict:PHPSESSID:never-adopted`), null);
    assert.deepEqual(new Set(s.visits.map((x) => x.backend)), new Set(['php1', 'php2']), 'round robin, as before adoption existed');
    const bound = await startSessions(strict.url, 'accept', 1);
    for (let k = 0; k < 4; k++) await bound[0].visit(strict.url);
    unbroken(bound[0], 0, 'a session bound by Set-Cookie under --no-adopt');
  } finally {
    await Promise.all([accept.stop(), replace.stop(), strict.stop()]);
  }
});

test('adoption writes at most once per id per eighth of the TTL on one instance: an id whose binding keeps vanishing is written once; a flood of forged ids costs one write each', T, async () => {
  const m = await startMemcached();
  const prefix = freshPrefix();
  // TTL 80 s: one adoption write per id per 10 s. --near-cache-ttl 0: every request asks memcached.
  const proxy = await startProxy([...proxyFlags('accept', m, prefix), '--threads', '1', '--default-ttl', '80', '--near-cache-ttl', '0', '--admin', '127.0.0.1:0']);
  try {
    const sets0 = await setsCounted(m.port);
    const u = new User('PHPSESSID');
    u.jar.set('PHPSESSID', 'vanishing');
    const key = `${prefix}PHPSESSID:vanishing`;
    const first = await u.visit(proxy.url);
    await waitFor(async () => (await inspect(m.port, key))?.value === first.backend, { what: 'the first adoption' });
    for (let k = 0; k < 5; k++) {
      // Deleted once; not written again since.
      assert.match(await deleteKey(m.port, key), k === 0 ? /^DELETED/ : /^NOT_FOUND/);
      await u.visit(proxy.url);
    }
    unbroken(u, 0, 'an adopted session whose binding keeps vanishing');
    const flood = 30;
    for (let k = 0; k < 3; k++) {
      await Promise.all(Array.from({ length: flood }, async (_, i) => {
        const f = new User('PHPSESSID');
        f.jar.set('PHPSESSID', `forged-${i}`);
        assert.equal((await f.visit(proxy.url)).status, 200);
      }));
    }
    // A new session's learn, held until stored: the writes made before it are done.
    assert.ok((await new User('PHPSESSID').visit(proxy.url)).issued);
    assert.equal(await setsCounted(m.port) - sets0, 1 + flood + 1, 'set commands: one adoption of the vanishing id, one per forged id, the marker\'s learn');
    assert.equal(await metric(proxy, 'sticky_affinity_bindings_total{change="adopt"}'), 1 + flood);
    assert.equal(await inspect(m.port, key), null, 'no second write within the eighth of the TTL');
  } finally {
    await proxy.stop();
    await m.stop();
  }
});

test('the session cookie twice in a request: the first non-empty one counts by default; --cookie-pick last routes by the last, as Django reads it', T, async () => {
  const prefix = freshPrefix();
  const first = await startProxy(proxyFlags('accept', mc, prefix));
  const last = await startProxy([...proxyFlags('accept', mc, prefix), '--cookie-pick', 'last']);
  const django = [
    await startSessionApp('django1', 'replace', { cookie: 'sessionid', pick: 'last' }),
    await startSessionApp('django2', 'replace', { cookie: 'sessionid', pick: 'last' }),
  ];
  const djangoProxy = await startProxy([...backendFlags(django), '--memcache', mc.address, '--key-prefix', prefix, '--cookie-pick', 'last']);
  try {
    await setKey(mc.port, `${prefix}PHPSESSID:twin-a`, 'php1');
    await setKey(mc.port, `${prefix}PHPSESSID:twin-b`, 'php2');
    const backendOf = async (url: string, cookie: string | string[]): Promise<string> => {
      const r = await request(url, { headers: { cookie } });
      await r.body.dump();
      assert.equal(r.statusCode, 200);
      return r.headers['x-backend'] as string;
    };
    for (let k = 0; k < 3; k++) {
      assert.equal(await backendOf(first.url, 'PHPSESSID=twin-a; PHPSESSID=twin-b'), 'php1');
      assert.equal(await backendOf(first.url, ['PHPSESSID=twin-a', 'PHPSESSID=twin-b']), 'php1', 'two Cookie header lines, the same rule');
      assert.equal(await backendOf(first.url, 'PHPSESSID=; PHPSESSID=twin-b'), 'php2', 'an empty value carries no session');
      assert.equal(await backendOf(last.url, 'PHPSESSID=twin-a; PHPSESSID=twin-b'), 'php2');
      assert.equal(await backendOf(last.url, ['PHPSESSID=twin-a', 'PHPSESSID=twin-b']), 'php2');
      assert.equal(await backendOf(last.url, 'PHPSESSID=twin-a; PHPSESSID='), 'php1', 'an empty value carries no session');
    }
    // A Django user with a stale sessionid (a parent domain's, say) before the current one.
    const u = new User('sessionid');
    const v = await u.visit(djangoProxy.url);
    await setKey(mc.port, `${prefix}sessionid:stale`, v.backend === 'django1' ? 'django2' : 'django1');
    const jarless = async (): Promise<Visit> => {
      const r = await request(djangoProxy.url, { headers: { cookie: `sessionid=stale; sessionid=${v.id}` } });
      await r.body.dump();
      const visit = visitOf(r.statusCode, r.headers);
      u.visits.push(visit);
      return visit;
    };
    for (let k = 0; k < 6; k++) await jarless();
    unbroken(u, 0, 'a Django session behind --cookie-pick last');
  } finally {
    await Promise.all([first.stop(), last.stop(), djangoProxy.stop()]);
    await Promise.all(django.map((d) => d.close()));
  }
});
