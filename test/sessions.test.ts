// The session lifecycle through the real proxy and memcached: WebSocket
// upgrades with affinity and a binding kept fresh while open, rotation,
// clearing, and counting of bound sessions answered with a new id.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { inspect, startMemcached, type Memcached } from './helpers/memcached.ts';
import { get, startProxy, type ProxyProcess } from './helpers/proxy.ts';

let mc: Memcached;
let servers: Server[] = [];
const upgraded = new Set<Socket>();
let proxy: ProxyProcess;
const prefix = `life-${process.pid}:`;

/** An origin that sets cookies on request (x-set-cookie) and accepts WebSocket upgrades, echoing bytes prefixed with its name. */
async function wsOrigin(name: string): Promise<{ name: string; url: string }> {
  const server = createServer((req, res) => {
    const headers: string[] = ['x-backend', name];
    const asked = req.headers['x-set-cookie'];
    if (typeof asked === 'string') for (const c of JSON.parse(asked) as string[]) headers.push('set-cookie', c);
    res.writeHead(200, headers);
    res.end(name);
  });
  server.on('upgrade', (req, socket: Socket) => {
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\nX-Backend: ${name}\r\n\r\n`);
    upgraded.add(socket);
    socket.on('close', () => upgraded.delete(socket));
    socket.on('data', (d) => socket.write(`${name}:${d}`));
    socket.on('error', () => {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  servers.push(server);
  return { name, url: `http://127.0.0.1:${(server.address() as { port: number }).port}` };
}

before(async () => {
  mc = await startMemcached();
  const origins = [await wsOrigin('w1'), await wsOrigin('w2')];
  proxy = await startProxy([...origins.flatMap((o) => ['--backend', `${o.name}=${o.url}`]), '--memcache', mc.address, '--key-prefix', prefix, '--default-ttl', '3', '--log-level', 'debug']);
});
after(async () => {
  await proxy.stop();
  for (const s of servers) { s.closeAllConnections(); s.close(); }
  await mc.stop();
});

async function learn(cookie: string, cookieHeader?: string): Promise<string> {
  const headers: Record<string, string> = { 'x-set-cookie': JSON.stringify([cookie]) };
  if (cookieHeader) headers.cookie = cookieHeader;
  const r = await get(proxy.url, undefined, headers);
  return r.headers['x-backend'] as string;
}

test('a WebSocket lands on the session backend, pipes both ways, and keeps its binding fresh past the default TTL', async () => {
  const owner = await learn('connect.sid=ws1');
  const other = owner === 'w1' ? 'w2' : 'w1';
  const { port } = new URL(proxy.url);
  const s = connect(Number(port), '127.0.0.1');
  let got = '';
  s.on('data', (d) => { got += d; });
  s.write('GET /socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n'
    + 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: connect.sid=ws1\r\n\r\n');
  while (!got.includes('\r\n\r\n')) await once(s, 'data');
  assert.match(got, /^HTTP\/1\.1 101 /);
  assert.match(got, /Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=/);
  assert.match(got, new RegExp(`X-Backend: ${owner}`));
  got = '';
  s.write('ping');
  while (!got.includes('ping')) await once(s, 'data');
  assert.equal(got, `${owner}:ping`);
  // 3 s TTL, 4.5 s open: the open socket keeps the binding.
  await sleep(4500);
  assert.equal((await inspect(mc.port, `${prefix}connect.sid:ws1`))?.value, owner, 'binding alive while the socket is open');
  // A session without a binding: the upgrade goes through the balancer.
  s.destroy();
  const plain = connect(Number(port), '127.0.0.1');
  let answer = '';
  plain.on('data', (d) => { answer += d; });
  plain.write('GET /socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n');
  while (!answer.includes('\r\n\r\n')) await once(plain, 'data');
  assert.match(answer, /^HTTP\/1\.1 101 /);
  plain.destroy();
  void other;
});

test('either side closing a WebSocket closes the other', async () => {
  const { port } = new URL(proxy.url);
  const s = connect(Number(port), '127.0.0.1');
  s.write('GET /socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n');
  await once(s, 'data');
  const closed = once(s, 'close');
  while (upgraded.size === 0) await sleep(10);
  for (const u of upgraded) u.destroy(); // the backend side goes away
  await Promise.race([closed, sleep(3000).then(() => { throw new Error('client side still open'); })]);
});

test('rotation: a bound request answered with a new id binds the new id to the same backend, and is counted', async () => {
  const owner = await learn('PHPSESSID=before-login; Max-Age=600');
  const after = await learn('PHPSESSID=after-login; Max-Age=600', 'PHPSESSID=before-login');
  assert.equal(after, owner);
  assert.equal((await inspect(mc.port, `${prefix}PHPSESSID:after-login`))?.value, owner);
  for (let i = 0; i < 4; i++) assert.equal((await get(proxy.url, undefined, { cookie: 'PHPSESSID=after-login' })).headers['x-backend'], owner);
  await sleep(200);
  assert.ok(proxy.output.some((l) => l.includes('session replaced') && l.includes(`"backend":"${owner}"`)), 'logged at debug level');
  assert.ok(!proxy.output.some((l) => l.includes('before-login') || l.includes('after-login')), 'no session id in the logs');
});

test('clearing the cookie removes the binding', async () => {
  await learn('JSESSIONID=clear-me; Max-Age=600');
  assert.ok(await inspect(mc.port, `${prefix}JSESSIONID:clear-me`));
  await learn('JSESSIONID=; Max-Age=0', 'JSESSIONID=clear-me');
  assert.equal(await inspect(mc.port, `${prefix}JSESSIONID:clear-me`), null);
});
