// A bodiless answer (HEAD, 204, 304) that sets a session cookie: the client
// gets its status, its Set-Cookie and its other headers, and the binding is
// stored, as for any answer.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'undici';
import { inspect, startMemcached, type Memcached } from './helpers/memcached.ts';
import { startOrigin, backendFlags, type Origin } from './helpers/origins.ts';
import { get, startProxy, type ProxyProcess } from './helpers/proxy.ts';

// A hang fails its test instead of the whole file.
const T = { timeout: 20_000 };
const prefix = `bodiless-${process.pid}:`;
let origins: Origin[] = [];
let mc: Memcached;
let proxy: ProxyProcess;

before(async () => {
  // The status comes from the path: /204, /304, else 200; every answer sets the cookie the request names.
  const handler = (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse, o: Origin): void => {
    req.resume();
    const status = req.url === '/204' ? 204 : req.url === '/304' ? 304 : 200;
    const headers: string[] = ['x-backend', o.name, 'etag', '"v1"', 'set-cookie', `PHPSESSID=${req.headers['x-id']}; Path=/; Max-Age=600`];
    if (status === 200) headers.push('content-type', 'text/plain', 'content-length', '5');
    res.writeHead(status, headers);
    res.end(req.method === 'HEAD' || status !== 200 ? undefined : 'hello');
  };
  origins = [await startOrigin('one', handler), await startOrigin('two', handler)];
  mc = await startMemcached();
  proxy = await startProxy([...backendFlags(origins), '--memcache', mc.address, '--key-prefix', prefix]);
}, T);
after(async () => {
  await proxy.stop();
  await Promise.all(origins.map((o) => o.close()));
  await mc.stop();
}, T);

for (const [method, path, status] of [['HEAD', '/', 200], ['GET', '/204', 204], ['GET', '/304', 304]] as const) {
  test(`${method} ${path} answered ${status} with a session cookie: status, headers and binding`, T, async () => {
    const id = `bodiless-${status}-${method}`;
    const r = await request(`${proxy.url}${path}`, { method, headers: { 'x-id': id }, headersTimeout: 5000, bodyTimeout: 5000 });
    assert.equal(await r.body.text(), '');
    assert.equal(r.statusCode, status);
    assert.equal(r.headers['set-cookie'], `PHPSESSID=${id}; Path=/; Max-Age=600`);
    assert.equal(r.headers.etag, '"v1"');
    const backend = r.headers['x-backend'] as string;
    assert.ok(backend === 'one' || backend === 'two', `x-backend ${backend}`);
    assert.equal((await inspect(mc.port, `${prefix}PHPSESSID:${id}`))?.value, backend, 'the binding is stored');
    for (let i = 0; i < 3; i++) {
      const again = await get(proxy.url, undefined, { cookie: `PHPSESSID=${id}`, 'x-id': id });
      assert.equal(again.headers['x-backend'], backend, 'and the session sticks');
    }
  });
}
