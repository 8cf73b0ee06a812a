// PROXY protocol v1 and v2 on the listener (--accept-proxy), also in front
// of TLS (--tls-cert), and trusted proxies (--trusted-proxy): the parser on
// its own, table-driven, then the real proxy on raw sockets, with an origin
// that says which X-Forwarded-For it was sent.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  PP_BAD_V1, PP_BAD_V2, PP_MORE, PP_NOT_PROXY, PP_TOO_LONG, ProxyHeader, V2_MAX_LENGTH, parseProxyHeader,
} from '../src/proxy-protocol.ts';
import { runCli, startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { waitFor, waitForLine } from './helpers/wait.ts';

const T = { timeout: 60_000 };

// --- the parser -------------------------------------------------------------------

const SIG = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];

/** A version 2 header: command (0 LOCAL, 1 PROXY), family/transport byte, address block, TLVs. */
function v2(command: number, fam: number, addresses: number[], tlvs: number[] = [], length?: number): Buffer {
  const len = length ?? addresses.length + tlvs.length;
  return Buffer.from([...SIG, 0x20 | command, fam, len >> 8, len & 0xff, ...addresses, ...tlvs]);
}

const IPV4_BLOCK = [203, 0, 113, 7, 10, 0, 0, 1, 0xdc, 0x05, 0x01, 0xbb]; // 203.0.113.7:56325 -> 10.0.0.1:443
const IPV6_BLOCK = [0x20, 0x01, 0x0d, 0xb8, ...Array(11).fill(0), 0x42, ...Array(15).fill(0), 1, 0x30, 0x39, 0x00, 0x50]; // [2001:db8::42]:12345 -> [::1]:80
const TLVS = [0x01, 0x00, 0x02, 0x68, 0x32, /* ALPN "h2" */ 0x04, 0x00, 0x00 /* NOOP, empty */];

const CASES: { name: string; input: string | Buffer; result: number | 'whole'; address?: string; port?: number }[] = [
  { name: 'v1 TCP4', input: 'PROXY TCP4 192.0.2.10 10.0.0.1 56324 443\r\n', result: 'whole', address: '192.0.2.10', port: 56324 },
  { name: 'v1 TCP6', input: 'PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 1 65535\r\n', result: 'whole', address: '2001:db8::1', port: 1 },
  { name: 'v1 TCP6, IPv4-mapped', input: 'PROXY TCP6 ::ffff:192.0.2.1 ::1 80 80\r\n', result: 'whole', address: '::ffff:192.0.2.1', port: 80 },
  { name: 'v1 UNKNOWN', input: 'PROXY UNKNOWN\r\n', result: 'whole', address: '' },
  { name: 'v1 UNKNOWN with addresses', input: 'PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n', result: 'whole', address: '' },
  { name: 'v1 longest (107 bytes)', input: 'PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n', result: 'whole', address: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', port: 65535 },
  { name: 'v1 incomplete', input: 'PROXY TCP4 192.0.2.10 10.0.0.1 5632', result: PP_MORE },
  { name: 'v1 prefix so far', input: 'PRO', result: PP_MORE },
  { name: 'HTTP instead', input: 'GET / HTTP/1.1\r\n', result: PP_NOT_PROXY },
  { name: 'PROXY misspelt', input: 'PROXI TCP4', result: PP_NOT_PROXY },
  { name: 'v1 bare LF', input: 'PROXY TCP4 192.0.2.10 10.0.0.1 1 2\n', result: PP_BAD_V1 },
  { name: 'v1 unknown protocol', input: 'PROXY UDP4 192.0.2.10 10.0.0.1 1 2\r\n', result: PP_BAD_V1 },
  { name: 'v1 IPv6 under TCP4', input: 'PROXY TCP4 ::1 ::1 1 2\r\n', result: PP_BAD_V1 },
  { name: 'v1 octet over 255', input: 'PROXY TCP4 192.0.2.256 10.0.0.1 1 2\r\n', result: PP_BAD_V1 },
  { name: 'v1 leading zero', input: 'PROXY TCP4 192.0.2.010 10.0.0.1 1 2\r\n', result: PP_BAD_V1 },
  { name: 'v1 port over 65535', input: 'PROXY TCP4 192.0.2.1 10.0.0.1 65536 2\r\n', result: PP_BAD_V1 },
  { name: 'v1 missing port', input: 'PROXY TCP4 192.0.2.1 10.0.0.1 1\r\n', result: PP_BAD_V1 },
  { name: 'v1 double space', input: 'PROXY TCP4  192.0.2.1 10.0.0.1 1 2\r\n', result: PP_BAD_V1 },
  { name: 'v1 two "::"', input: 'PROXY TCP6 1::2::3 ::1 1 2\r\n', result: PP_BAD_V1 },
  { name: 'v1 nine groups', input: 'PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n', result: PP_BAD_V1 },
  { name: 'v1 no CRLF within 107 bytes', input: `PROXY UNKNOWN ${'x'.repeat(100)}`, result: PP_TOO_LONG },
  { name: 'v2 PROXY TCP4', input: v2(1, 0x11, IPV4_BLOCK), result: 'whole', address: '203.0.113.7', port: 56325 },
  { name: 'v2 PROXY TCP4 with TLVs', input: v2(1, 0x11, IPV4_BLOCK, TLVS), result: 'whole', address: '203.0.113.7', port: 56325 },
  { name: 'v2 PROXY TCP6', input: v2(1, 0x21, IPV6_BLOCK), result: 'whole', address: '2001:db8::42', port: 12345 },
  { name: 'v2 LOCAL keeps the socket address', input: v2(0, 0x11, IPV4_BLOCK), result: 'whole', address: '' },
  { name: 'v2 LOCAL UNSPEC', input: v2(0, 0x00, []), result: 'whole', address: '' },
  { name: 'v2 PROXY UNIX keeps the socket address', input: v2(1, 0x31, Array(216).fill(0)), result: 'whole', address: '' },
  { name: 'v2 header incomplete', input: v2(1, 0x11, IPV4_BLOCK).subarray(0, 20), result: PP_MORE },
  { name: 'v2 signature so far', input: Buffer.from(SIG.slice(0, 5)), result: PP_MORE },
  { name: 'v2 bad signature', input: Buffer.from([...SIG.slice(0, 11), 0x0b]), result: PP_NOT_PROXY },
  { name: 'v2 version 3', input: Buffer.from([...SIG, 0x31, 0x11, 0, 12, ...IPV4_BLOCK]), result: PP_BAD_V2 },
  { name: 'v2 command 2', input: Buffer.from([...SIG, 0x22, 0x11, 0, 12, ...IPV4_BLOCK]), result: PP_BAD_V2 },
  { name: 'v2 family 4', input: v2(1, 0x41, IPV4_BLOCK), result: PP_BAD_V2 },
  { name: 'v2 TCP4 block too short', input: v2(1, 0x11, IPV4_BLOCK.slice(0, 8)), result: PP_BAD_V2 },
  { name: 'v2 TLV past the block', input: v2(1, 0x11, IPV4_BLOCK, [0x01, 0x00, 0x09, 0x68]), result: PP_BAD_V2 },
  { name: 'v2 length over the cap', input: v2(1, 0x11, IPV4_BLOCK, [], V2_MAX_LENGTH + 1), result: PP_TOO_LONG },
];

test('the parser: each version, family and command, and what is refused', () => {
  for (const c of CASES) {
    const buf = typeof c.input === 'string' ? Buffer.from(c.input, 'latin1') : c.input;
    const out = new ProxyHeader();
    out.address = 'unset';
    const r = parseProxyHeader(buf, 0, buf.length, out);
    assert.equal(r, c.result === 'whole' ? buf.length : c.result, c.name);
    if (c.result !== 'whole') continue;
    assert.equal(out.address, c.address, c.name);
    if (c.port !== undefined) assert.equal(out.port, c.port, c.name);
  }
});

test('the parser reads a header arriving a byte at a time, and stops at its end', () => {
  for (const header of [Buffer.from('PROXY TCP4 192.0.2.10 10.0.0.1 56324 443\r\n'), v2(1, 0x21, IPV6_BLOCK, TLVS)]) {
    const stream = Buffer.concat([header, Buffer.from('GET / HTTP/1.1\r\n\r\n')]);
    const out = new ProxyHeader();
    for (let n = 1; n < header.length; n++) assert.equal(parseProxyHeader(stream, 0, n, out), PP_MORE, `${n} bytes`);
    assert.equal(parseProxyHeader(stream, 0, stream.length, out), header.length);
    assert.ok(out.address === '192.0.2.10' || out.address === '2001:db8::42');
  }
});

// --- the proxy ----------------------------------------------------------------------

let origin: Server;
let originUrl: string;

before(async () => {
  // Answers with the X-Forwarded-For (and Forwarded) lines it was sent, as JSON.
  origin = createServer((req, res) => {
    const lines: string[] = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      if (/^(x-forwarded-for|forwarded)$/i.test(req.rawHeaders[i])) lines.push(`${req.rawHeaders[i].toLowerCase()}: ${req.rawHeaders[i + 1]}`);
    }
    const body = JSON.stringify(lines);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  originUrl = `http://127.0.0.1:${(origin.address() as AddressInfo).port}`;
});
after(() => new Promise<void>((resolve) => { origin.close(() => resolve()); origin.closeAllConnections(); }));

/** Sends `parts` on one raw connection (each awaited as written) and collects everything until the proxy closes it. */
async function exchange(p: ProxyProcess, parts: (string | Buffer)[], paceMs = 0): Promise<string> {
  const { port } = new URL(p.url);
  const socket = connect(Number(port), '127.0.0.1');
  socket.setNoDelay(true);
  const chunks: Buffer[] = [];
  socket.on('data', (d: Buffer) => chunks.push(d));
  let cut = false;
  // A connection the proxy never closes fails the test, rather than hanging it.
  const timer = setTimeout(() => { cut = true; socket.destroy(); }, 10_000);
  const closed = new Promise<void>((resolve) => socket.once('close', () => { clearTimeout(timer); resolve(); }));
  socket.on('error', () => {}); // a reset is a close too
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  for (const part of parts) {
    await new Promise<void>((resolve) => socket.write(part, () => resolve()));
    // Pacing, so each part leaves in its own TCP segment (not a wait for a condition).
    if (paceMs > 0) await sleep(paceMs);
  }
  await closed;
  if (cut) throw new Error('the proxy did not close the connection within 10 s');
  return Buffer.concat(chunks).toString('latin1');
}

const REQUEST = 'GET /who HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n';

/** The forwarding lines the origin got, from a whole answer. */
function seen(answer: string): string[] {
  assert.match(answer, /^HTTP\/1\.1 200 /, answer);
  return JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as string[];
}

async function protocolErrors(p: ProxyProcess): Promise<number> {
  const admin = /admin on (http:\/\/\S+)/.exec(p.output.join('\n'))![1];
  const text = await (await fetch(`${admin}/metrics`)).text();
  return Number(/^sticky_proxy_protocol_errors_total (\d+)/m.exec(text)?.[1] ?? NaN);
}

test('--accept-proxy: the PROXY header\'s address is the client\'s, in X-Forwarded-For and the access log, over every loop', T, async () => {
  const p = await startProxy(['--backend', `o=${originUrl}`, '--accept-proxy', '--threads', '2', '--access-log', '--admin', '127.0.0.1:0']);
  try {
    // Several connections, so both loops take some.
    for (let i = 0; i < 6; i++) {
      assert.deepEqual(seen(await exchange(p, [`PROXY TCP4 192.0.2.${i + 1} 10.0.0.1 40000 80\r\n${REQUEST}`])), [`x-forwarded-for: 192.0.2.${i + 1}`]);
    }
    assert.deepEqual(seen(await exchange(p, [`PROXY TCP6 2001:db8:0::7 ::1 40000 80\r\n${REQUEST}`])), ['x-forwarded-for: 2001:db8::7']);
    assert.deepEqual(seen(await exchange(p, [Buffer.concat([v2(1, 0x11, IPV4_BLOCK, TLVS), Buffer.from(REQUEST)])])), ['x-forwarded-for: 203.0.113.7']);
    assert.deepEqual(seen(await exchange(p, [Buffer.concat([v2(1, 0x21, IPV6_BLOCK), Buffer.from(REQUEST)])])), ['x-forwarded-for: 2001:db8::42']);
    // LOCAL (the balancer's own health check) and UNKNOWN keep the socket's address.
    assert.deepEqual(seen(await exchange(p, [Buffer.concat([v2(0, 0x00, []), Buffer.from(REQUEST)])])), ['x-forwarded-for: 127.0.0.1']);
    assert.deepEqual(seen(await exchange(p, [`PROXY UNKNOWN\r\n${REQUEST}`])), ['x-forwarded-for: 127.0.0.1']);
    // Split across TCP segments: inside "PROXY", inside an address, between header and request.
    assert.deepEqual(seen(await exchange(p, ['PRO', 'XY TCP4 198.51', '.100.9 10.0.0.1 40000 80\r', '\n', REQUEST], 20)), ['x-forwarded-for: 198.51.100.9']);
    const v2h = v2(1, 0x11, IPV4_BLOCK, TLVS);
    assert.deepEqual(seen(await exchange(p, [v2h.subarray(0, 7), v2h.subarray(7, 15), v2h.subarray(15, 22), v2h.subarray(22), REQUEST], 20)), ['x-forwarded-for: 203.0.113.7']);
    await waitForLine(p.output, (l) => l.includes('"access":true') && l.includes('"client":"2001:db8::42"'), { what: 'the access log naming the PROXY header\'s client' });
    assert.equal(await protocolErrors(p), 0);
  } finally {
    await p.stop();
  }
});

test('--accept-proxy: no header, a malformed one, or one too slow closes the connection unanswered, and is counted', T, async () => {
  const p = await startProxy(['--backend', `o=${originUrl}`, '--accept-proxy', '--threads', '2', '--admin', '127.0.0.1:0', '--client-header-timeout', '300']);
  try {
    assert.equal(await exchange(p, [REQUEST]), '', 'a plain request');
    assert.equal(await exchange(p, ['PROXY TCP4 192.0.2.300 10.0.0.1 1 2\r\n', REQUEST]), '', 'a bad address');
    assert.equal(await exchange(p, [Buffer.concat([v2(1, 0x11, IPV4_BLOCK, [0x01, 0x00, 0x09]), Buffer.from(REQUEST)])]), '', 'a truncated TLV');
    assert.equal(await exchange(p, [`PROXY UNKNOWN ${'x'.repeat(120)}\r\n`]), '', 'over 107 bytes');
    assert.equal(await exchange(p, ['PROXY TCP4 192.0.2.1']), '', 'cut at the header timeout');
    await waitFor(async () => (await protocolErrors(p)) === 5, { what: 'five PROXY protocol errors counted' });
    assert.ok(p.output.some((l) => l.includes('PROXY protocol error') && l.includes('PROXY header timeout')));
  } finally {
    await p.stop();
  }
});

test('--trusted-proxy: a trusted peer\'s X-Forwarded-For is kept and appended to; anyone else\'s is replaced', T, async () => {
  const p = await startProxy(['--backend', `o=${originUrl}`, '--accept-proxy', '--forwarded', '--threads', '2',
    '--trusted-proxy', '10.0.0.0/8', '--trusted-proxy', '2001:db8:aa::/48', '--trusted-proxy', '192.0.2.1']);
  try {
    const claims = 'GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nX-Forwarded-For: 198.51.100.8\r\nForwarded: for=198.51.100.7\r\nConnection: close\r\n\r\n';
    for (const peer of ['TCP4 10.1.2.3', 'TCP6 2001:db8:aa:1::5', 'TCP4 192.0.2.1']) {
      const address = peer.slice(5);
      const lines = seen(await exchange(p, [`PROXY ${peer} ${address.includes(':') ? '::1' : '10.0.0.1'} 40000 80\r\n${claims}`]));
      assert.deepEqual(lines, [
        'x-forwarded-for: 198.51.100.7',
        `x-forwarded-for: 198.51.100.8, ${address}`,
        `forwarded: for=198.51.100.7, for=${address.includes(':') ? `"[${address}]"` : address};proto=http;host="x"`,
      ], peer);
    }
    for (const peer of ['TCP4 11.0.0.1', 'TCP6 2001:db8:ab::5', 'TCP4 192.0.2.2']) {
      const address = peer.slice(5);
      const lines = seen(await exchange(p, [`PROXY ${peer} ${address.includes(':') ? '::1' : '10.0.0.1'} 40000 80\r\n${claims}`]));
      assert.deepEqual(lines, [
        `x-forwarded-for: ${address}`,
        `forwarded: for=${address.includes(':') ? `"[${address}]"` : address};proto=http;host="x"`,
      ], peer);
    }
  } finally {
    await p.stop();
  }
});

test('--trusted-proxy without --accept-proxy trusts the socket\'s peer; a bad one is refused at start', T, async () => {
  const p = await startProxy(['--backend', `o=${originUrl}`, '--trusted-proxy', '127.0.0.0/8']);
  try {
    const lines = seen(await exchange(p, ['GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nConnection: close\r\n\r\n']));
    assert.deepEqual(lines, ['x-forwarded-for: 198.51.100.7, 127.0.0.1']);
  } finally {
    await p.stop();
  }
  for (const bad of ['10.0.0.0/33', 'fe80::/129', '10.0.0', 'localhost']) {
    const r = await runCli(['--backend', `o=${originUrl}`, '--trusted-proxy', bad, '--check']);
    assert.equal(r.code, 2, bad);
    assert.equal(r.stderr, `sticky-proxy: --trusted-proxy: expected an IPv4 or IPv6 address or CIDR block (10.0.0.0/8, 2001:db8::/32), got "${bad}"\n`);
  }
});

// --- in front of TLS ----------------------------------------------------------------

const dir = mkdtempSync(join(tmpdir(), 'sticky-pp-tls-'));
const f = (name: string): string => join(dir, name);
after(() => rmSync(dir, { recursive: true, force: true }));

/** A self-signed certificate named `cn`, written to `<file>.pem` and `<file>.key`. */
function certificate(cn: string, file: string): void {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', `/CN=${cn}`, '-keyout', f(`${file}.key`), '-out', f(`${file}.pem`)], { stdio: 'ignore' });
}

/**
 * A TLS client behind a balancer: `header` in clear on the TCP connection,
 * then the handshake and REQUEST. `together`: the header and the ClientHello
 * leave in one write (one TCP segment), so the proxy reads the start of the
 * handshake with the header; otherwise the header goes alone first.
 * `halfClose`: the client ends its side after the request. Collects
 * the decrypted answer until the proxy closes; `cn` is the certificate's CN.
 */
async function tlsExchange(p: ProxyProcess, header: string | Buffer, together: boolean, halfClose = false): Promise<{ answer: string; cn: string }> {
  const raw = connect(Number(new URL(p.url).port), '127.0.0.1');
  raw.setNoDelay(true);
  raw.on('error', () => {});
  await new Promise<void>((resolve) => raw.once('connect', () => resolve()));
  let carrier: Socket | Duplex = raw;
  if (together) {
    // The TLS client writes through this stream, whose first write carries the header in front.
    let first: Buffer | null = Buffer.from(header);
    const d = new Duplex({
      write(chunk: Buffer, _enc, done) {
        const out = first === null ? chunk : Buffer.concat([first, chunk]);
        first = null;
        raw.write(out, done);
      },
      final(done) { raw.end(); done(); },
      read() {},
    });
    raw.on('data', (b: Buffer) => d.push(b));
    raw.on('end', () => d.push(null));
    raw.on('close', () => d.destroy());
    carrier = d;
  } else {
    await new Promise<void>((resolve) => raw.write(header, () => resolve()));
    // Pacing, so the handshake leaves in a later TCP segment (not a wait for a condition).
    await sleep(20);
  }
  const secure = tlsConnect({ socket: carrier as Duplex, rejectUnauthorized: false, servername: 'localhost' });
  let answer = '';
  let cn = '';
  const timer = setTimeout(() => secure.destroy(new Error('the proxy did not close the connection within 10 s')), 10_000);
  try {
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => {
        cn = String(secure.getPeerCertificate().subject?.CN ?? '');
        if (halfClose) secure.end(REQUEST);
        else secure.write(REQUEST);
      });
      secure.on('data', (b: Buffer) => { answer += b.toString('latin1'); });
      secure.once('error', reject);
      secure.once('close', () => resolve());
    });
  } finally {
    clearTimeout(timer);
    raw.destroy();
  }
  return { answer, cn };
}

test('--accept-proxy with --tls-cert: the header comes in clear before the handshake, and its address is the client\'s', T, async () => {
  certificate('pp-one', 'front');
  const p = await startProxy(['--backend', `o=${originUrl}`, '--accept-proxy', '--tls-cert', f('front.pem'), '--tls-key', f('front.key'),
    '--threads', '2', '--access-log', '--admin', '127.0.0.1:0']);
  try {
    for (const together of [false, true]) {
      const how = together ? 'with the ClientHello' : 'alone';
      for (let i = 0; i < 4; i++) {
        const r = await tlsExchange(p, `PROXY TCP4 192.0.2.${i + 1} 10.0.0.1 40000 443\r\n`, together);
        assert.equal(r.cn, 'pp-one', how);
        assert.deepEqual(seen(r.answer), [`x-forwarded-for: 192.0.2.${i + 1}`], how);
      }
      assert.deepEqual(seen((await tlsExchange(p, `PROXY TCP6 2001:db8:0::7 ::1 40000 443\r\n`, together)).answer), ['x-forwarded-for: 2001:db8::7'], how);
      assert.deepEqual(seen((await tlsExchange(p, v2(1, 0x11, IPV4_BLOCK, TLVS), together)).answer), ['x-forwarded-for: 203.0.113.7'], how);
      assert.deepEqual(seen((await tlsExchange(p, v2(1, 0x21, IPV6_BLOCK), together)).answer), ['x-forwarded-for: 2001:db8::42'], how);
      // LOCAL keeps the socket's address.
      assert.deepEqual(seen((await tlsExchange(p, v2(0, 0x00, []), together)).answer), ['x-forwarded-for: 127.0.0.1'], how);
    }
    await waitForLine(p.output, (l) => l.includes('"access":true') && l.includes('"client":"2001:db8::42"'), { what: 'the access log naming the PROXY header\'s client' });
    assert.equal(await protocolErrors(p), 0);
    // A client that shuts down its side after the request still gets the answer.
    assert.deepEqual(seen((await tlsExchange(p, 'PROXY TCP4 192.0.2.9 10.0.0.1 40000 443\r\n', true, true)).answer), ['x-forwarded-for: 192.0.2.9']);

    // SIGHUP: a certificate renewed in place serves the connections made from then on.
    certificate('pp-two', 'front');
    process.kill(p.pid, 'SIGHUP');
    await waitForLine(p.output, (l) => l.includes('"msg":"SIGHUP: applied"') && l.includes('--tls-cert'), { what: 'the certificate reloaded' });
    for (let i = 0; i < 4; i++) {
      const r = await tlsExchange(p, v2(1, 0x11, IPV4_BLOCK), i % 2 === 0);
      assert.equal(r.cn, 'pp-two');
      assert.deepEqual(seen(r.answer), ['x-forwarded-for: 203.0.113.7']);
    }
    // --check takes the combination.
    const check = await runCli(['--backend', `o=${originUrl}`, '--accept-proxy', '--tls-cert', f('front.pem'), '--tls-key', f('front.key'), '--check']);
    assert.equal(check.code, 0, check.stderr);
  } finally {
    await p.stop();
  }
});

test('--accept-proxy with --tls-cert: TLS without a header, a late header, or garbage after one is closed; the proxy goes on', T, async () => {
  certificate('pp-bad', 'bad');
  const p = await startProxy(['--backend', `o=${originUrl}`, '--accept-proxy', '--tls-cert', f('bad.pem'), '--tls-key', f('bad.key'),
    '--threads', '2', '--admin', '127.0.0.1:0', '--client-header-timeout', '300']);
  try {
    // A TLS client straight to the proxy: its ClientHello is not a PROXY header.
    const direct = tlsConnect({ port: Number(new URL(p.url).port), host: '127.0.0.1', rejectUnauthorized: false, servername: 'localhost' });
    const failed = await new Promise<Error | null>((resolve) => {
      direct.once('secureConnect', () => resolve(null));
      direct.once('error', resolve);
    });
    direct.destroy();
    assert.ok(failed !== null, 'the handshake without a PROXY header fails');
    assert.equal(await exchange(p, ['PROXY TCP4 192.0.2.300 10.0.0.1 1 2\r\n']), '', 'a bad address');
    assert.equal(await exchange(p, ['PROXY TCP4 192.0.2.1']), '', 'cut at the header timeout');
    await waitFor(async () => (await protocolErrors(p)) === 3, { what: 'three PROXY protocol errors counted' });
    assert.ok(p.output.some((l) => l.includes('PROXY protocol error') && l.includes('no PROXY header')));
    assert.ok(p.output.some((l) => l.includes('PROXY protocol error') && l.includes('PROXY header timeout')));

    // A valid header, then not TLS: plain HTTP, or bytes of nothing; each closed, with at most a TLS alert.
    const unanswered = (answer: string, what: string): void => assert.ok(answer === '' || answer.startsWith('\x15\x03'), `${what}: ${JSON.stringify(answer)}`);
    unanswered(await exchange(p, [`PROXY TCP4 192.0.2.1 10.0.0.1 40000 443\r\n${REQUEST}`]), 'plain HTTP after the header');
    unanswered(await exchange(p, ['PROXY TCP4 192.0.2.1 10.0.0.1 40000 443\r\n', Buffer.from([0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3])], 20), 'a broken ClientHello');
    unanswered(await exchange(p, [Buffer.concat([v2(1, 0x11, IPV4_BLOCK), Buffer.alloc(64, 0xab)])]), 'garbage after a v2 header');
    // A header, then silence: the handshake is held to the header timeout too.
    assert.equal(await exchange(p, ['PROXY TCP4 192.0.2.1 10.0.0.1 40000 443\r\n']), '', 'no handshake after the header');
    // Still serving, and none of that was a PROXY protocol error.
    assert.deepEqual(seen((await tlsExchange(p, 'PROXY TCP4 198.51.100.9 10.0.0.1 40000 443\r\n', true)).answer), ['x-forwarded-for: 198.51.100.9']);
    assert.equal(await protocolErrors(p), 3);
  } finally {
    await p.stop();
  }
});
