// SIGHUP reloads what can change without a restart, in every event loop: the
// log level, timeouts (the tunnels' too), the session cookie names and the TLS
// certificate (for new connections); it says in one line what it applied, and
// in another what changed but needs a restart (not applied). Two loops, many
// connections: the kernel spreads them over both.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type TLSSocket } from 'node:tls';
import { startOrigin, type Origin } from './helpers/origins.ts';
import { startProxy } from './helpers/proxy.ts';
import { waitFor, waitForLine } from './helpers/wait.ts';
import { Conn, RawOrigin } from './helpers/wire.ts';

const dir = mkdtempSync(join(tmpdir(), 'sticky-reload-'));
const f = (name: string): string => join(dir, name);
after(() => rmSync(dir, { recursive: true, force: true }));

/** A self-signed certificate for 127.0.0.1 named `cn`, written to `pem`/`key`. */
function certificate(cn: string, pem: string, key: string): void {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', `/CN=${cn}`, '-keyout', key, '-out', pem], { stdio: 'ignore' });
}

/** Connections made at once, so both loops get some (SO_REUSEPORT spreads them by their ports). */
const CONNECTIONS = 16;

interface Exchange {
  /** The certificate's CN the connection was served with. */
  cn: string;
  /** Everything the proxy sent before it closed. */
  answer: string;
  /** How long the proxy kept the connection after its last byte arrived, ms. */
  heldMs: number;
}

/** One TLS connection: sends `request`, reads until the proxy closes it (or `closeAfterMs`, then we close). */
function exchange(port: number, request: string, closeAfterMs = 10_000): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    const socket: TLSSocket = connect({ port, host: '127.0.0.1', rejectUnauthorized: false, servername: 'localhost' });
    let answer = '';
    let last = 0;
    let cn = '';
    const timer = setTimeout(() => socket.destroy(), closeAfterMs);
    socket.on('secureConnect', () => {
      cn = String(socket.getPeerCertificate().subject?.CN ?? '');
      socket.write(request);
    });
    socket.on('data', (d: Buffer) => { answer += d.toString('latin1'); last = performance.now(); });
    socket.on('error', reject);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ cn, answer, heldMs: performance.now() - last });
    });
  });
}

const many = <T>(fn: () => Promise<T>): Promise<T[]> => Promise.all(Array.from({ length: CONNECTIONS }, fn));

const backendOf = (answer: string): string => /x-backend: (\w+)/i.exec(answer)?.[1] ?? `none in ${JSON.stringify(answer)}`;

test('SIGHUP changes the log level, a timeout, a limit, the session cookie and the certificate in every loop, and says so', { timeout: 90_000 }, async () => {
  const [a, b]: Origin[] = [await startOrigin('a'), await startOrigin('b')];
  after(() => Promise.all([a.close(), b.close()]));
  certificate('reload-one', f('cert.pem'), f('key.pem'));
  const file = f('config.json');
  const settings = {
    backend: [`a=${a.url}`, `b=${b.url}`],
    'session-cookie': ['first_sid'],
    'log-level': 'warn',
    'client-idle-timeout': 60_000,
    'key-prefix': 'one:',
    'tls-cert': f('cert.pem'),
    'tls-key': f('key.pem'),
  };
  writeFileSync(file, JSON.stringify(settings));
  const p = await startProxy(['--config', file, '--threads', '2']);
  try {
    const port = Number(new URL(p.url).port);
    const close = (head: string): string => `GET / HTTP/1.1\r\nHost: x\r\n${head}Connection: close\r\n\r\n`;
    // Before: the first certificate; a session cookie the proxy does not know is not sticky.
    const before = await many(() => exchange(port, close('')));
    assert.deepEqual(new Set(before.map((e) => e.cn)), new Set(['reload-one']));
    await exchange(port, close('x-set-cookie: ["second_sid=early"]\r\n'));
    const unknown = new Set((await many(() => exchange(port, close('Cookie: second_sid=early\r\n')))).map((e) => backendOf(e.answer)));
    assert.deepEqual(unknown, new Set(['a', 'b']), 'second_sid is not a session cookie yet: round robin');
    const upload = 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world';
    for (const e of await many(() => exchange(port, upload))) assert.match(e.answer, /^HTTP\/1\.1 200 /, 'no body limit yet');

    // The reload: a renewed certificate at the same paths, and new values.
    certificate('reload-two', f('cert.pem'), f('key.pem'));
    writeFileSync(file, JSON.stringify({ ...settings, 'session-cookie': ['second_sid'], 'log-level': 'info', 'client-idle-timeout': 300, 'max-body-size': 10, 'key-prefix': 'two:' }));
    process.kill(p.pid, 'SIGHUP');
    const applied = JSON.parse(await waitForLine(p.output, (l) => l.includes('"msg":"SIGHUP: applied"'), { what: 'the applied line' })) as { flags: string[] };
    assert.deepEqual(applied.flags.sort(), ['--client-idle-timeout', '--log-level', '--max-body-size', '--session-cookie', '--tls-cert', '--tls-key']);
    const restart = JSON.parse(await waitForLine(p.output, (l) => l.includes('need a restart'), { what: 'the needs-a-restart line' })) as { flags: string[]; msg: string };
    assert.deepEqual(restart.flags, ['--key-prefix']);
    assert.equal(restart.msg, 'SIGHUP: changed, but these need a restart; not applied');

    // The certificate: every new connection, whichever loop takes it, gets the new one.
    const after1 = await many(() => exchange(port, close('')));
    assert.deepEqual(new Set(after1.map((e) => e.cn)), new Set(['reload-two']));

    // The log level: info lines ("client error", for a malformed request) now come from both loops.
    await many(() => exchange(port, 'NOT HTTP\r\n\r\n'));
    const errors = (): string[] => p.output.filter((l) => l.includes('"msg":"client error"'));
    await waitFor(() => errors().length >= CONNECTIONS, { what: `${CONNECTIONS} client error lines at info` });
    assert.equal(errors().length, CONNECTIONS, 'none logged before the reload, at warn');
    assert.deepEqual(new Set(errors().map((l) => (JSON.parse(l) as { loop: number }).loop)), new Set([0, 1]));

    // The body limit: an 11-byte upload is refused now, whichever loop takes it.
    for (const e of await many(() => exchange(port, upload))) assert.match(e.answer, /^HTTP\/1\.1 413 /, 'over --max-body-size 10');

    // The idle timeout: kept-alive connections are closed some 300 ms after their answer, not 60 s.
    const idle = await many(() => exchange(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', 20_000));
    for (const e of idle) {
      assert.match(e.answer, /^HTTP\/1\.1 200 /);
      assert.ok(e.heldMs < 10_000, `closed by the proxy after ${Math.round(e.heldMs)} ms idle`);
    }

    // The session cookie: second_sid is learnt now, and sticks, in both loops.
    const learnt = backendOf((await exchange(port, close('x-set-cookie: ["second_sid=late"]\r\n'))).answer);
    const sticky = (await many(() => exchange(port, close('Cookie: second_sid=late\r\n')))).map((e) => backendOf(e.answer));
    assert.deepEqual(new Set(sticky), new Set([learnt]));
  } finally {
    await p.stop();
  }
});

/** An upgrade through the proxy, answered 101: the client's side, the head read. */
async function tunnel(port: number): Promise<Conn> {
  const c = new Conn(port);
  c.sock.write('GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
  const deadline = Date.now() + 5000;
  while (c.buf.indexOf('\r\n\r\n') < 0) await c.more(deadline, 'the 101 head');
  assert.match(c.buf.toString('latin1'), /^HTTP\/1\.1 101 /);
  return c;
}

test('SIGHUP changes the tunnel timeouts in every loop', { timeout: 60_000 }, async () => {
  // Answers an upgrade with a 101 and then only listens; a client's FIN leaves its side open, so only a timeout ends a tunnel.
  const origin = await RawOrigin.start((sock) => {
    let head = '';
    const onData = (d: Buffer): void => {
      head += d.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      sock.off('data', onData);
      sock.on('data', () => {});
      sock.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    };
    sock.on('data', onData);
  }, { allowHalfOpen: true });
  after(() => origin.close());
  const file = f('tunnels.json');
  // Both timeouts far past the waits below: a tunnel closes in time only with the reloaded value.
  const settings = { backend: [`o=http://127.0.0.1:${origin.port}`], 'log-level': 'info', 'tunnel-timeout': 60_000, 'tunnel-fin-timeout': 60_000 };
  writeFileSync(file, JSON.stringify(settings));
  const p = await startProxy(['--config', file, '--threads', '2']);
  try {
    const port = Number(new URL(p.url).port);
    const reload = async (changes: object): Promise<string[]> => {
      const done = p.output.filter((l) => l.includes('"msg":"SIGHUP: applied"')).length;
      writeFileSync(file, JSON.stringify({ ...settings, ...changes }));
      process.kill(p.pid, 'SIGHUP');
      const line = await waitFor(() => p.output.filter((l) => l.includes('"msg":"SIGHUP: applied"'))[done], { what: 'the applied line' });
      return (JSON.parse(line) as { flags: string[] }).flags;
    };
    interface TimedOut { loop: number; ms: number }
    const timedOut = (halfClosed: boolean): TimedOut[] => p.output
      .filter((l) => l.includes('"msg":"tunnel timed out"') && l.includes(`"halfClosed":${halfClosed}`))
      .map((l) => JSON.parse(l) as TimedOut);
    /** Waits until the proxy has closed every one of `conns`, and as many tunnels have timed out; the loops they timed out in. */
    const closedByTimeout = async (conns: Conn[], halfClosed: boolean, ms: number): Promise<Set<number>> => {
      await waitFor(() => conns.every((c) => c.ended), { what: `the proxy closing ${conns.length} silent tunnels`, timeoutMs: 15_000 });
      await waitFor(() => timedOut(halfClosed).length >= conns.length, { what: `${conns.length} tunnel timeouts logged` });
      const lines = timedOut(halfClosed);
      assert.equal(lines.length, conns.length, 'one timeout per tunnel');
      assert.deepEqual(new Set(lines.map((l) => l.ms)), new Set([ms]));
      return new Set(lines.map((l) => l.loop));
    };

    // The fin timeout first, with the tunnel timeout still long: half-closed tunnels close after 300 ms of silence.
    assert.deepEqual(await reload({ 'tunnel-fin-timeout': 300 }), ['--tunnel-fin-timeout']);
    const halfClosed = await many(() => tunnel(port));
    for (const c of halfClosed) c.sock.end();
    assert.deepEqual(await closedByTimeout(halfClosed, true, 300), new Set([0, 1]));

    // Then the tunnel timeout (its least, 1 s): tunnels silent both ways close too.
    assert.deepEqual(await reload({ 'tunnel-fin-timeout': 300, 'tunnel-timeout': 1000 }), ['--tunnel-timeout']);
    const idle = await many(() => tunnel(port));
    assert.deepEqual(await closedByTimeout(idle, false, 1000), new Set([0, 1]));
  } finally {
    for (const s of Conn.open) s.destroy();
    await p.stop();
  }
});

test('SIGHUP with a file that does not validate, or that turns TLS off, changes nothing it cannot', { timeout: 60_000 }, async () => {
  const a = await startOrigin('a');
  after(() => a.close());
  certificate('kept', f('kept.pem'), f('kept.key'));
  const file = f('tls-off.json');
  const settings = { backend: [`a=${a.url}`], 'tls-cert': f('kept.pem'), 'tls-key': f('kept.key') };
  writeFileSync(file, JSON.stringify(settings));
  const p = await startProxy(['--config', file, '--threads', '2']);
  try {
    const port = Number(new URL(p.url).port);
    writeFileSync(file, JSON.stringify({ ...settings, 'tls-cert': f('missing.pem') }));
    process.kill(p.pid, 'SIGHUP');
    await waitForLine(p.output, (l) => l.includes('configuration rejected') && l.includes('missing.pem'), { what: 'the rejected reload' });
    const { 'tls-cert': _, 'tls-key': __, ...plain } = settings;
    writeFileSync(file, JSON.stringify(plain));
    process.kill(p.pid, 'SIGHUP');
    const restart = JSON.parse(await waitForLine(p.output, (l) => l.includes('need a restart'), { what: 'the needs-a-restart line' })) as { flags: string[] };
    assert.deepEqual(restart.flags, ['--tls-cert', '--tls-key']);
    const still = await many(() => exchange(port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
    assert.deepEqual(new Set(still.map((e) => e.cn)), new Set(['kept']));
  } finally {
    await p.stop();
  }
});
