// Tunnels' silence timeouts, on real sockets: an upgraded connection that
// carries bytes either way stays open past --tunnel-timeout; one silent for
// that long is closed on both sides; once either side has half-closed, the
// shorter --tunnel-fin-timeout applies (HAProxy's `timeout tunnel` and
// `timeout client-fin`). A tunnel's access line is written when it closes,
// with its bytes both ways, its whole time and how it ended.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { waitFor, waitForLine } from './helpers/wait.ts';
import { Conn, RawOrigin } from './helpers/wire.ts';

const T = { timeout: 30_000 };
const TUNNEL_MS = 1200;
const FIN_MS = 300;

/** The origin's side of each tunnel, in the order they opened, with when it closed (performance.now(); 0 while open). */
const tunnels: { sock: Socket; ended: boolean; closedAt: number }[] = [];
let origin: RawOrigin;
let proxy: ProxyProcess;
let port: number;

before(async () => {
  // Answers an upgrade with a 101 and then only listens: what it sends is the test's to script.
  origin = await RawOrigin.start((sock) => {
    let head = '';
    const onData = (d: Buffer): void => {
      head += d.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      sock.off('data', onData);
      const t = { sock, ended: false, closedAt: 0 };
      tunnels.push(t);
      sock.on('data', () => {});
      sock.on('end', () => { t.ended = true; });
      sock.on('close', () => { t.closedAt = performance.now(); });
      sock.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    };
    sock.on('data', onData);
  }, { allowHalfOpen: true }); // a client's FIN leaves the backend's side open, as a server that still has things to say
  proxy = await startProxy(['--backend', `o=http://127.0.0.1:${origin.port}`, '--threads', '1', '--no-affinity', '--admin', '127.0.0.1:0', '--access-log',
    '--tunnel-timeout', String(TUNNEL_MS), '--tunnel-fin-timeout', String(FIN_MS)]);
  port = Number(new URL(proxy.url).port);
}, T);
after(async () => {
  for (const s of Conn.open) s.destroy();
  await proxy.stop();
  await origin.close();
}, T);

/** An upgraded connection through the proxy: the client's Conn and the origin's side. */
async function open(path: string): Promise<{ c: Conn; up: (typeof tunnels)[number]; headLength: number }> {
  const n = tunnels.length;
  const c = new Conn(port);
  c.sock.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`);
  while (c.buf.indexOf('\r\n\r\n') < 0) await c.more(Date.now() + 5000, 'the 101 head');
  const headLength = c.buf.indexOf('\r\n\r\n') + 4;
  c.take(headLength);
  const up = await waitFor(() => tunnels[n], { what: 'the tunnel at the origin' });
  return { c, up, headLength };
}

interface AccessLine { path: string; status: number; bytesIn: number; bytesOut: number; ms: number; term: string }

/** The access line of the request for `path`, once written. */
async function accessLine(path: string): Promise<AccessLine> {
  const line = await waitForLine(proxy.output, (l) => l.includes('"access":true') && l.includes(`"path":"${path}"`), { what: `the access line of ${path}` });
  return JSON.parse(line) as AccessLine;
}

/**
 * Waits until the proxy has closed its side of the origin's socket: the
 * origin writes until the proxy's kernel refuses (a reset). Called once the
 * client's side is closed, so a write that still got through would not keep
 * the tunnel alive.
 */
async function cutAtOrigin(up: (typeof tunnels)[number]): Promise<void> {
  await waitFor(() => {
    if (up.closedAt === 0) up.sock.write('x');
    return up.closedAt;
  }, { what: "the origin's side refused by the proxy", timeoutMs: 5000, intervalMs: 50 });
}

/** A metric's value from the admin API's /metrics. */
async function metric(name: string): Promise<number> {
  const admin = proxy.output.find((l) => l.startsWith('admin on '))!.slice('admin on '.length);
  const text = await (await request(`${admin}/metrics`)).body.text();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  assert.ok(m, `${name} in /metrics`);
  return Number(m[1]);
}

function closedAt(c: Conn): Promise<number> {
  return c.sock.closed ? Promise.resolve(performance.now()) : once(c.sock, 'close').then(() => performance.now());
}

test('bytes either way keep a tunnel open past --tunnel-timeout; silence closes both sides after it', T, async () => {
  const { c, up, headLength } = await open('/idle');
  assert.equal(await metric('sticky_tunnels'), 1);
  const clientClosed = closedAt(c);
  // 1.6 s of the client's bytes only, then 1.6 s of the backend's only: each way resets the timeout.
  for (let i = 0; i < 8; i++) { c.sock.write('c'); await sleep(200); } // the scenario: bytes at a pace below the timeout
  for (let i = 0; i < 8; i++) { up.sock.write('b'); await sleep(200); }
  assert.ok(!c.ended && up.closedAt === 0, 'open while bytes flow, 3.2 s in, with a 1.2 s timeout');
  await waitFor(() => c.buf.length === 8, { what: "the backend's bytes at the client" });
  const quietFrom = performance.now();
  const clientAt = await clientClosed;
  await cutAtOrigin(up);
  assert.ok(clientAt - quietFrom >= TUNNEL_MS - 250, `closed ${Math.round(clientAt - quietFrom)} ms into the silence, not before --tunnel-timeout`);
  await waitForLine(proxy.output, (l) => l.includes('tunnel timed out') && l.includes('"halfClosed":false'), { what: 'the timeout logged' });
  assert.equal(await metric('sticky_tunnels'), 0);
  assert.equal(await metric('sticky_tunnel_timeouts_total'), 1);
  const a = await accessLine('/idle');
  assert.deepEqual([a.status, a.bytesIn, a.bytesOut, a.term], [101, 8, headLength + 8, 'tunnel timeout'], 'the access line: the 101, the bytes both ways');
  assert.ok(a.ms >= 3200 + TUNNEL_MS - 250, `its time is the tunnel's whole life (${a.ms} ms)`);
});

test('once the client has half-closed, --tunnel-fin-timeout closes a silent tunnel', T, async () => {
  const { c, up } = await open('/half-closed');
  const clientClosed = closedAt(c);
  c.sock.end();
  await waitFor(() => up.ended, { what: "the client's FIN at the origin" });
  const finAt = performance.now();
  const clientAt = await clientClosed;
  await cutAtOrigin(up);
  assert.ok(clientAt - finAt < TUNNEL_MS - 200, `closed ${Math.round(clientAt - finAt)} ms after the FIN: the shorter fin timeout held`);
  await waitForLine(proxy.output, (l) => l.includes('tunnel timed out') && l.includes('"halfClosed":true'), { what: 'the half-closed timeout logged' });
});

test('a tunnel both sides end cleanly is logged "ok" when it closes', T, async () => {
  const { c, up, headLength } = await open('/clean');
  c.sock.write('hello');
  up.sock.write('world!');
  while (c.buf.length < 6) await c.more(Date.now() + 5000, "the origin's bytes");
  const clientClosed = closedAt(c);
  c.sock.end();
  await waitFor(() => up.ended, { what: "the client's FIN at the origin" });
  up.sock.end();
  await clientClosed;
  const a = await accessLine('/clean');
  assert.deepEqual([a.status, a.bytesIn, a.bytesOut, a.term], [101, 5, headLength + 6, 'ok']);
});
