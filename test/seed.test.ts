// The seed article's curl session, end to end through the real proxy process,
// with each store; and affinity shared by two instances through memcached.
import { test, after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startDemoOrigin, type DemoOrigin } from '../src/demo.ts';
import { startMemcached, type Memcached } from './helpers/memcached.ts';
import { backendFlags } from './helpers/origins.ts';
import { get, startProxy, type Jar, type ProxyProcess } from './helpers/proxy.ts';

// A hang fails its test instead of the whole file.
const T = { timeout: 30_000 };
// A generous store deadline (the batch deadline is this + 500 ms): on a loaded machine the first
// batches can wait seconds on workers still loading, and a batch past its deadline loses affinity.
const STORE_TIMEOUT = ['--store-timeout', '5000'];

let srv: DemoOrigin[] = [];
let mc: Memcached;

before(async () => {
  srv = [await startDemoOrigin('srv1'), await startDemoOrigin('srv2')];
  mc = await startMemcached();
}, T);
after(async () => {
  await Promise.all(srv.map((o) => o.close()));
  await mc.stop();
}, T);

interface SeedReply { 'real-server': string; session_id: string }

async function curl(url: string, jar?: Jar): Promise<SeedReply> {
  const r = await get(url, jar);
  assert.equal(r.status, 200);
  return JSON.parse(r.body) as SeedReply;
}

for (const store of ['embedded', 'memcached'] as const) {
  describe(`seed curl session, ${store} store`, () => {
    let proxy: ProxyProcess;
    before(async () => {
      const storeFlags = store === 'memcached' ? ['--memcache', mc.address, '--key-prefix', `seed-${Date.now()}:`] : [];
      proxy = await startProxy([...backendFlags(srv), ...storeFlags, ...STORE_TIMEOUT, '--workers', '2']);
    }, T);
    after(async () => { assert.equal(await proxy.stop(), 0); }, T);

    test('start-up line names the store', T, () => {
      const line = proxy.output.find((l) => l.startsWith('store: '))!;
      assert.match(line, store === 'memcached' ? /memcached/ : /embedded.*local to this instance/);
    });

    test('curl -c jar, then curl -b jar: same real-server and session every time', T, async () => {
      for (let client = 0; client < 4; client++) {
        const jar: Jar = new Map();
        const first = await curl(proxy.url, jar);
        assert.ok(jar.get('connect.sid'), 'the first answer sets the session cookie');
        for (let i = 0; i < 6; i++) {
          const again = await curl(proxy.url, jar);
          assert.equal(again['real-server'], first['real-server']);
          assert.equal(again.session_id, first.session_id);
        }
      }
    });

    test('without a session cookie, requests are spread round robin', T, async () => {
      const seen: string[] = [];
      for (let i = 0; i < 6; i++) seen.push((await curl(proxy.url))['real-server']);
      for (let i = 1; i < seen.length; i++) assert.notEqual(seen[i], seen[i - 1], seen.join(','));
    });
  });
}

test('two instances sharing one memcached: a session learnt on A sticks on B', T, async () => {
  const flags = [...backendFlags(srv), '--memcache', mc.address, '--key-prefix', `shared-${Date.now()}:`, ...STORE_TIMEOUT];
  const a = await startProxy([...flags, '--workers', '1']);
  const b = await startProxy([...flags, '--workers', '2']);
  try {
    for (let client = 0; client < 6; client++) {
      const jar: Jar = new Map();
      const first = await curl(a.url, jar);
      for (let i = 0; i < 4; i++) {
        const onB = await curl(b.url, jar);
        assert.equal(onB['real-server'], first['real-server']);
        assert.equal(onB.session_id, first.session_id);
      }
    }
  } finally {
    await a.stop();
    await b.stop();
  }
});
