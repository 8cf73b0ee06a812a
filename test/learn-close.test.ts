// An answer that sets a session cookie is held until its learn is stored. A
// backend may close its connection right after the answer, as `php -S` does
// (its body ends with the connection) or any app sending Connection: close:
// the whole answer and the close can arrive before memcached acknowledges the
// learn. The client must still get the answer, and the session be bound.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { once } from 'node:events';
import { inspect, startMemcached, type Memcached } from './helpers/memcached.ts';
import { get, startProxy, type ProxyProcess } from './helpers/proxy.ts';

const T = { timeout: 30_000 };

let mc: Memcached;
let server: Server;
let proxy: ProxyProcess;
let served = 0;
const sockets = new Set<Socket>();
const prefix = `close-${process.pid}:`;

before(async () => {
  mc = await startMemcached();
  // Answers each request in one write and closes at once: the head, the body and the FIN arrive together.
  server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    s.once('data', (d) => {
      const id = `c${++served}`;
      const body = `{"id":"${id}"}`;
      const framing = d.toString('latin1').startsWith('GET /length') ? `Content-Length: ${body.length}\r\nConnection: close\r\n` : 'Connection: close\r\n';
      s.end(`HTTP/1.1 200 OK\r\nSet-Cookie: PHPSESSID=${id}; path=/\r\nX-Session: ${id}\r\n${framing}\r\n${body}`);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  proxy = await startProxy(['--backend', `php=${url}`, '--memcache', mc.address, '--key-prefix', prefix]);
}, T);
after(async () => {
  await proxy.stop();
  for (const s of sockets) s.destroy();
  server.close();
  await mc.stop();
}, T);

for (const [framing, path] of [['a body that ends with the connection', '/'], ['Content-Length and Connection: close', '/length']] as const) {
  test(`an answer setting a session cookie, then the backend's close (${framing}): the client gets it whole, and the session is bound`, T, async () => {
    for (let k = 0; k < 20; k++) {
      const r = await get(`${proxy.url}${path}`);
      assert.equal(r.status, 200, `answer ${k}: ${r.body}`);
      const id = r.headers['x-session'] as string;
      assert.equal(r.body, `{"id":"${id}"}`);
      assert.equal((await inspect(mc.port, `${prefix}PHPSESSID:${id}`))?.value, 'php');
    }
  });
}
