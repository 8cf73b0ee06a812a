// memcached you can see: each server going down and coming back is logged
// once per process with its address, sticky_store_server_up follows it,
// /readyz says affinity is degraded (and stays 200), the store's outage is
// logged with the learns it queued and wrote, and a server unreachable or
// unresolvable at start-up is warned about. Real memcached processes, killed
// by their pid and restarted on the same port; the real proxy process.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'undici';
import { freePort, inspect, startMemcached, type Memcached } from './helpers/memcached.ts';
import { startOrigin, backendFlags, type Origin } from './helpers/origins.ts';
import { get, startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { waitFor, waitForLine } from './helpers/wait.ts';

// A hang fails its test instead of the whole file.
const T = { timeout: 60_000 };
// A kill is noticed within a few reconnects, a restart by the next probe (every second).
const NOTICE = { timeoutMs: 10_000 };

let origins: Origin[] = [];
before(async () => {
  origins = [await startOrigin('a'), await startOrigin('b')];
}, T);
after(async () => {
  await Promise.all(origins.map((o) => o.close()));
}, T);

function adminUrl(p: ProxyProcess): string {
  return p.output.find((l) => l.startsWith('admin on '))!.slice('admin on '.length);
}

async function readyz(p: ProxyProcess): Promise<{ status: number; body: { ready: boolean; affinity: string; store?: Record<string, boolean> } }> {
  const r = await request(`${adminUrl(p)}/readyz`);
  return { status: r.statusCode, body: await r.body.json() as { ready: boolean; affinity: string; store?: Record<string, boolean> } };
}

async function metrics(p: ProxyProcess): Promise<string> {
  return (await request(`${adminUrl(p)}/metrics`)).body.text();
}

/** A sample's value, or undefined when the series is absent. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

const upGauge = (server: string): string => `sticky_store_server_up{server="${server}"}`;

/** The proxy's JSON log lines with this message. */
function logged(p: ProxyProcess, msg: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of p.output) {
    if (!line.startsWith('{')) continue;
    const o = JSON.parse(line) as Record<string, unknown>;
    if (o.msg === msg) out.push(o);
  }
  return out;
}

function waitLogged(p: ProxyProcess, msg: string, match: (o: Record<string, unknown>) => boolean = () => true): Promise<Record<string, unknown>> {
  return waitFor(() => logged(p, msg).find(match), { what: `the log line "${msg}"`, ...NOTICE });
}

test('a memcached killed is logged down once, with its address; its gauge drops, /readyz says degraded with 200; back, with the learns it queued written', T, async () => {
  const mc = await startMemcached();
  const prefix = `vis-${Date.now()}:`;
  // Two event loops with an affinity worker each: four memcached clients in the request path, one log line.
  const p = await startProxy([...backendFlags(origins), '--admin', '127.0.0.1:0', '--memcache', mc.address, '--key-prefix', prefix, '--threads', '2', '--workers', '1']);
  try {
    await waitFor(async () => sample(await metrics(p), upGauge(mc.address)) === 1, { what: 'the server up gauge at 1' });
    const ok = await readyz(p);
    assert.equal(ok.status, 200);
    assert.deepEqual(ok.body, { ready: true, affinity: 'ok', store: { [mc.address]: true } });

    await mc.kill();
    const down = await waitLogged(p, 'memcached server down');
    assert.equal(down.server, mc.address);
    assert.equal(down.level, 40, 'at warn');
    await waitLogged(p, 'affinity store down');
    await waitFor(async () => sample(await metrics(p), upGauge(mc.address)) === 0, { what: 'the server up gauge at 0' });
    const degraded = await readyz(p);
    assert.equal(degraded.status, 200, 'backends are up: still ready');
    assert.deepEqual(degraded.body, { ready: true, affinity: 'degraded', store: { [mc.address]: false } });

    // Learns memcached cannot take are queued, and answered meanwhile.
    const ids = ['q1', 'q2', 'q3', 'q4', 'q5'];
    for (const id of ids) {
      const r = await get(p.url, undefined, { 'x-set-cookie': JSON.stringify([`PHPSESSID=${id}; Max-Age=600`]) });
      assert.equal(r.status, 200);
    }
    // Every client had time to notice the outage by now: the line is still one for the process.
    assert.equal(logged(p, 'memcached server down').length, 1, 'one line per process, not one per loop or worker');

    await mc.start(); // the same port
    const back = await waitLogged(p, 'memcached server back');
    assert.equal(back.server, mc.address);
    assert.equal(typeof back.downMs, 'number');
    const storeBack = await waitLogged(p, 'affinity store back');
    assert.equal(storeBack.learnsQueued, ids.length);
    const written = await waitLogged(p, 'affinity store: learns queued during the outage written');
    assert.deepEqual({ q: written.learnsQueued, w: written.learnsWritten, d: written.dropped }, { q: ids.length, w: ids.length, d: 0 });
    for (const id of ids) assert.ok(await inspect(mc.port, `${prefix}PHPSESSID:${id}`) !== null, `${id} written to memcached`);
    await waitFor(async () => sample(await metrics(p), upGauge(mc.address)) === 1, { what: 'the server up gauge back at 1' });
    assert.deepEqual((await readyz(p)).body, { ready: true, affinity: 'ok', store: { [mc.address]: true } });
    assert.equal(logged(p, 'memcached server back').length, 1);
  } finally {
    await p.stop();
    await mc.stop();
  }
});

test('a server unreachable at start-up, and one whose name does not resolve, are warned about at once', T, async () => {
  const closed = `127.0.0.1:${await freePort()}`;
  const unresolvable = 'sticky-proxy-test.invalid:11211';
  const p = await startProxy([...backendFlags(origins), '--admin', '127.0.0.1:0', '--memcache', `${closed},${unresolvable}`]);
  try {
    const refused = await waitLogged(p, 'memcached server unreachable at start-up');
    assert.equal(refused.server, closed);
    assert.equal(refused.level, 40);
    assert.equal(refused.code, 'ECONNREFUSED');
    const unknown = await waitLogged(p, 'memcached server name does not resolve');
    assert.equal(unknown.server, unresolvable);
    assert.equal(logged(p, 'memcached server unreachable at start-up').length, 1, 'the name error is not called unreachable');
    const r = await readyz(p);
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { ready: true, affinity: 'degraded', store: { [closed]: false, [unresolvable]: false } });
    const text = await metrics(p);
    assert.equal(sample(text, upGauge(closed)), 0);
    assert.equal(sample(text, upGauge(unresolvable)), 0);
    // The proxy serves all the same.
    assert.equal((await get(p.url)).status, 200);
  } finally {
    await p.stop();
  }
});

test('with two servers and one killed, only that one is marked down', T, async () => {
  const [mc1, mc2] = [await startMemcached(), await startMemcached()];
  const p = await startProxy([...backendFlags(origins), '--admin', '127.0.0.1:0', '--memcache', `${mc1.address},${mc2.address}`]);
  try {
    await waitFor(async () => {
      const t = await metrics(p);
      return sample(t, upGauge(mc1.address)) === 1 && sample(t, upGauge(mc2.address)) === 1;
    }, { what: 'both servers up' });
    await mc2.kill();
    const down = await waitLogged(p, 'memcached server down');
    assert.equal(down.server, mc2.address);
    const store = await waitLogged(p, 'affinity store degraded');
    assert.deepEqual(store.serversDown, [mc2.address]);
    const r = await readyz(p);
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { ready: true, affinity: 'degraded', store: { [mc1.address]: true, [mc2.address]: false } });
    const text = await metrics(p);
    assert.equal(sample(text, upGauge(mc1.address)), 1);
    assert.equal(sample(text, upGauge(mc2.address)), 0);
    assert.deepEqual(logged(p, 'memcached server down').map((o) => o.server), [mc2.address]);
    assert.equal(logged(p, 'affinity store down').length, 0, 'one server of two: degraded, not down');
  } finally {
    await p.stop();
    await mc1.stop();
    await mc2.stop();
  }
});

test('a frozen memcached (SIGSTOP) is marked down by the watch\'s pings without any traffic, and back after SIGCONT', T, async () => {
  const mc = await startMemcached();
  const p = await startProxy([...backendFlags(origins), '--admin', '127.0.0.1:0', '--memcache', mc.address]);
  try {
    await waitFor(async () => sample(await metrics(p), upGauge(mc.address)) === 1, { what: 'the server up gauge at 1' });
    await mc.freeze();
    const down = await waitLogged(p, 'memcached server down');
    assert.equal(down.server, mc.address);
    assert.equal((await readyz(p)).body.affinity, 'degraded');
    mc.signal('SIGCONT');
    assert.equal((await waitLogged(p, 'memcached server back')).server, mc.address);
    assert.equal((await readyz(p)).body.affinity, 'ok');
  } finally {
    await p.stop();
    await mc.stop();
  }
});

test('metrics an operator alerts on: server up, worker utilization, backend queue wait, zeroed error series, process and build info', T, async () => {
  const mc = await startMemcached();
  const p = await startProxy([...backendFlags(origins), '--admin', '127.0.0.1:0', '--memcache', mc.address, '--threads', '1', '--workers', '1']);
  try {
    // Each request that found no idle connection waited in the queue for a new one.
    for (let i = 0; i < 4; i++) assert.equal((await get(p.url, undefined, { cookie: `PHPSESSID=m${i}` })).status, 200);
    const text = await waitFor(async () => {
      const t = await metrics(p);
      return sample(t, upGauge(mc.address)) === 1 ? t : null;
    }, { what: 'the server up gauge at 1' });
    const util = sample(text, 'sticky_worker_utilization_ratio');
    assert.ok(util !== undefined && util >= 0 && util <= 1, `utilization ${util}`);
    assert.equal(sample(text, 'sticky_worker_queue_depth'), 0);
    assert.ok(text.includes('# TYPE sticky_worker_utilization_ratio gauge'));
    assert.ok(text.includes('# TYPE sticky_backend_queue_wait_seconds histogram'));
    const waited = (sample(text, 'sticky_backend_queue_wait_seconds_count{backend="a"}') ?? 0) + (sample(text, 'sticky_backend_queue_wait_seconds_count{backend="b"}') ?? 0);
    assert.ok(waited >= 1, `requests that waited for a connection: ${waited}`);
    assert.equal(sample(text, 'sticky_backend_queue_depth{backend="a"}'), 0);
    for (const b of ['a', 'b']) for (const s of [502, 503, 504]) assert.equal(sample(text, `sticky_requests_total{backend="${b}",status="${s}"}`), 0, `${b} ${s} pre-set`);
    assert.equal(sample(text, 'sticky_requests_total{backend="none",status="503"}'), 0);
    for (const s of [400, 408, 431]) assert.equal(sample(text, `sticky_client_errors_total{status="${s}"}`), 0, `client error ${s} pre-set`);
    assert.equal(sample(text, 'sticky_store_learns_dropped_total'), 0);
    assert.ok((sample(text, 'process_resident_memory_bytes') ?? 0) > 0);
    assert.ok(sample(text, 'process_cpu_seconds_total') !== undefined);
    assert.ok(sample(text, 'nodejs_eventloop_lag_seconds') !== undefined);
    assert.match(text, /^sticky_build_info\{version="[^"]+",node="v\d+[^"]*"\} 1$/m);
  } finally {
    await p.stop();
    await mc.stop();
  }
});
