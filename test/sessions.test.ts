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
import { waitFor, waitForLine } from './helpers/wait.ts';

// A hang fails its test instead of the whole file.
const T = { timeout: 30_000 };

let mc: Memcached;
let servers: Server[] = [];
const upgraded = new Set<Socket>();
let proxy: ProxyProcess;
const prefix = `life-${process.pid}:`;

/** Sends a WebSocket upgrade on a fresh connection; resolves with the socket and the answer's head once it is in. */
async function upgrade(port: number, cookie?: string): Promise<{ socket: Socket; head: string }> {
  const socket = connect(port, '127.0.0.1');
  let head = '';
  socket.on('data', (d) => { head += d; });
  socket.write('GET /socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n'
    + `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${cookie === undefined ? '' : `Cookie: ${cookie}\r\n`}\r\n`);
  while (!head.includes('\r\n\r\n')) await once(socket, 'data');
  socket.removeAllListeners('data');
  return { socket, head };
}

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
}, T);
after(async () => {
  await proxy.stop();
  for (const s of servers) { s.closeAllConnections(); s.close(); }
  await mc.stop();
}, T);

async function learn(cookie: string, cookieHeader?: string): Promise<string> {
  const headers: Record<string, string> = { 'x-set-cookie': JSON.stringify([cookie]) };
  if (cookieHeader) headers.cookie = cookieHeader;
  const r = await get(proxy.url, undefined, headers);
  return r.headers['x-backend'] as string;
}

test('a WebSocket lands on the session backend, pipes both ways, and keeps its binding fresh past the default TTL', T, async () => {
  const owner = await learn('connect.sid=ws1');
  const port = Number(new URL(proxy.url).port);
  const { socket: s, head } = await upgrade(port, 'connect.sid=ws1');
  assert.match(head, /^HTTP\/1\.1 101 /);
  assert.match(head, /Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=/);
  assert.match(head, new RegExp(`X-Backend: ${owner}`));
  let got = '';
  s.on('data', (d) => { got += d; });
  s.write('ping');
  while (!got.includes('ping')) await once(s, 'data');
  assert.equal(got, `${owner}:ping`);
  // 3 s TTL, 4.5 s open: the open socket keeps the binding.
  await sleep(4500); // the scenario: the socket stays open past the binding's TTL
  assert.equal((await inspect(mc.port, `${prefix}connect.sid:ws1`))?.value, owner, 'binding alive while the socket is open');
  s.destroy();
});

test('upgrades without a session go through the balancer: two in a row land on both backends', T, async () => {
  const port = Number(new URL(proxy.url).port);
  const seen = new Set<string>();
  for (let i = 0; i < 2; i++) {
    const { socket, head } = await upgrade(port);
    socket.destroy();
    assert.match(head, /^HTTP\/1\.1 101 /);
    seen.add(/X-Backend: (\S+)/.exec(head)![1]);
  }
  assert.deepEqual([...seen].sort(), ['w1', 'w2']);
});

test('either side closing a WebSocket closes the other', T, async () => {
  const { socket: s } = await upgrade(Number(new URL(proxy.url).port));
  await waitFor(() => upgraded.size > 0, { what: 'the upgrade at the origin' });
  for (const u of upgraded) u.destroy(); // the backend side goes away
  await waitFor(() => s.destroyed, { what: 'the client side to close', timeoutMs: 3000 });
});

test('rotation: a bound request answered with a new id binds the new id to the same backend, and is counted', T, async () => {
  const owner = await learn('PHPSESSID=before-login; Max-Age=600');
  const after = await learn('PHPSESSID=after-login; Max-Age=600', 'PHPSESSID=before-login');
  assert.equal(after, owner);
  assert.equal((await inspect(mc.port, `${prefix}PHPSESSID:after-login`))?.value, owner);
  for (let i = 0; i < 4; i++) assert.equal((await get(proxy.url, undefined, { cookie: 'PHPSESSID=after-login' })).headers['x-backend'], owner);
  await waitForLine(proxy.output, (l) => l.includes('session replaced') && l.includes(`"backend":"${owner}"`), { what: 'the replaced session logged at debug level' });
  assert.ok(!proxy.output.some((l) => l.includes('before-login') || l.includes('after-login')), 'no session id in the logs');
});

test('clearing the cookie removes the binding', T, async () => {
  await learn('JSESSIONID=clear-me; Max-Age=600');
  assert.ok(await inspect(mc.port, `${prefix}JSESSIONID:clear-me`));
  await learn('JSESSIONID=; Max-Age=0', 'JSESSIONID=clear-me');
  assert.equal(await inspect(mc.port, `${prefix}JSESSIONID:clear-me`), null);
});
