// The memcache client when things go wrong: memcached killed, restarted,
// frozen; and, through a tiny raw TCP server on loopback, peers that close
// cleanly, reset, or stop halfway through a reply. Every operation must
// settle (within its deadline) and nothing may be left running.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import { once } from 'node:events';
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { freePort, startMemcached, type Memcached } from './helpers/memcached.ts';
import { MemcacheClient, type MemcacheError } from '../src/memcache/client.ts';
import { MemcachedStore } from '../src/store/memcached.ts';
import { FrameParser, HEADER_SIZE, MAGIC_REQUEST, MAGIC_RESPONSE, Op, writeHeader } from '../src/memcache/codec.ts';

// Every test and hook has its own deadline, so a hang fails fast instead of stalling the run.
const timeout = 20_000;
const unhandled: unknown[] = [];
process.on('unhandledRejection', (err) => unhandled.push(err));

const cleanup: Array<() => Promise<void>> = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
  assert.deepEqual(unhandled, []);
}, { timeout });

async function memcached(): Promise<Memcached> {
  const m = await startMemcached();
  cleanup.push(() => m.stop());
  return m;
}

function client(opts: Partial<ConstructorParameters<typeof MemcacheClient>[0]> & { servers: string[] }): MemcacheClient {
  const c = new MemcacheClient(opts);
  cleanup.push(() => c.close());
  return c;
}

/** Settles every promise; returns each outcome as a value or an error code, and the time taken. */
async function settleAll(ps: Promise<unknown>[]): Promise<{ outcomes: unknown[]; ms: number }> {
  const t0 = performance.now();
  const r = await Promise.allSettled(ps);
  return {
    ms: performance.now() - t0,
    outcomes: r.map((x) => (x.status === 'fulfilled' ? x.value : (x.reason as MemcacheError).code)),
  };
}

async function until(what: string, cond: () => Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const answers = (c: MemcacheClient, key: string) => async (): Promise<boolean> => {
  try { await c.get(key); return true; } catch { return false; }
};

// --- a raw peer speaking just enough binary protocol ------------------------

interface Req { opcode: number; opaque: number; key: string; value: string }

/** A reply; a GETK hit carries its key, as memcached's do. */
function response(opcode: number, opaque: number, status = 0, value = '', flags = 0, key = ''): Buffer {
  const extLen = opcode === Op.NOOP ? 0 : 4;
  const b = Buffer.alloc(HEADER_SIZE + extLen + key.length + value.length);
  writeHeader(b, 0, MAGIC_RESPONSE, opcode, key.length, extLen, status, extLen + key.length + value.length, opaque);
  if (extLen) b.writeUInt32BE(flags, HEADER_SIZE);
  b.write(key, HEADER_SIZE + extLen, 'latin1');
  b.write(value, HEADER_SIZE + extLen + key.length, 'latin1');
  return b;
}

/** A loopback server; `onRequest` sees each decoded request of each connection. */
async function rawPeer(onRequest: (sock: Socket, req: Req, seen: Req[]) => void): Promise<{ address: string; seen: Req[] }> {
  const seen: Req[] = [];
  const sockets = new Set<Socket>();
  const srv: NetServer = createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    const mine: Req[] = [];
    const parser = new FrameParser((f) => {
      const req = { opcode: f.opcode, opaque: f.opaque, key: f.buf.toString('latin1', f.keyStart, f.valueStart), value: f.buf.toString('latin1', f.valueStart, f.end) };
      seen.push(req);
      mine.push(req);
      onRequest(sock, req, mine);
    }, MAGIC_REQUEST);
    sock.on('data', (d) => { if (!sock.destroyed) parser.feed(d); });
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  cleanup.push(async () => {
    for (const s of sockets) s.destroy();
    srv.close();
    await once(srv, 'close');
  });
  return { address: `127.0.0.1:${(srv.address() as { port: number }).port}`, seen };
}

/** Answers NOOPs (so every quiet get is a miss); `onGet` may do something else for gets. */
function noopAnswerer(onGet?: (sock: Socket, req: Req, seen: Req[]) => void) {
  return (sock: Socket, req: Req, seen: Req[]): void => {
    if (req.opcode === Op.NOOP) {
      if (!sock.destroyed) sock.write(response(Op.NOOP, req.opaque));
    } else onGet?.(sock, req, seen);
  };
}

const longDeadlines = { timeoutMs: 5000, writeTimeoutMs: 5000 };

test('batching on the wire: one tick of gets is GETKQs closed by one NOOP, split at maxBatch', { timeout }, async () => {
  const peer = await rawPeer(noopAnswerer());
  const c = client({ servers: [peer.address], maxBatch: 30, ...longDeadlines });
  await until('handshake', async () => peer.seen.length > 0, 2000);
  peer.seen.length = 0;
  const { outcomes } = await settleAll(Array.from({ length: 100 }, (_, i) => c.get(`k${i}`)));
  assert.deepEqual(outcomes, Array(100).fill(null));
  const ops = peer.seen.map((r) => r.opcode);
  assert.equal(ops.filter((o) => o === Op.GETKQ).length, 100);
  assert.equal(ops.filter((o) => o === Op.NOOP).length, 4); // 30 + 30 + 30 + 10
  assert.equal(ops[ops.length - 1], Op.NOOP);
  assert.deepEqual(peer.seen.filter((r) => r.opcode === Op.GETKQ).map((r) => r.key), Array.from({ length: 100 }, (_, i) => `k${i}`));
});

test('a peer that closes cleanly mid-batch: answered ops resolve, the rest fail at once', { timeout }, async () => {
  const peer = await rawPeer(noopAnswerer((sock, req, seen) => {
    if (seen.filter((r) => r.opcode === Op.GETKQ).length === 1) sock.write(response(Op.GETKQ, req.opaque, 0, 'first', 3, req.key));
    else if (req.key === 'k4') sock.end(); // FIN after reading half the batch
  }));
  const c = client({ servers: [peer.address], ...longDeadlines });
  const { outcomes, ms } = await settleAll(Array.from({ length: 10 }, (_, i) => c.get(`k${i}`)));
  assert.deepEqual(outcomes[0], { value: Buffer.from('first'), flags: 3 });
  assert.deepEqual(outcomes.slice(1), Array(9).fill('closed'));
  assert.ok(ms < 2000, `settled after ${ms} ms with a 5000 ms deadline`);
});

for (const ending of ['silence', 'FIN', 'RST'] as const) {
  test(`half a reply, then ${ending}: every op settles`, { timeout }, async () => {
    const peer = await rawPeer(noopAnswerer((sock, req) => {
      if (req.key !== 'k0') return;
      const hit = response(Op.GETKQ, req.opaque, 0, 'x'.repeat(100), 0, req.key);
      sock.write(hit.subarray(0, 60));
      if (ending === 'FIN') setTimeout(() => sock.end(), 50);
      if (ending === 'RST') setTimeout(() => sock.resetAndDestroy(), 50);
    }));
    const timeoutMs = ending === 'silence' ? 300 : 5000;
    const c = client({ servers: [peer.address], timeoutMs, writeTimeoutMs: timeoutMs });
    await until('connected', answers(c, 'warmup'), 2000);
    const { outcomes, ms } = await settleAll([c.get('k0'), c.get('k1'), c.set('k2', 'v', 0), c.touch('k3', 1)]);
    if (ending === 'silence') {
      assert.deepEqual(outcomes, Array(4).fill('timeout'));
      assert.ok(ms >= timeoutMs - 5 && ms < timeoutMs + 1500, `settled after ${ms} ms`);
    } else {
      assert.deepEqual(outcomes, Array(4).fill('closed'));
      assert.ok(ms < 2000, `settled after ${ms} ms with a 5000 ms deadline`);
    }
  });
}

test('a peer sending garbage: protocol error, then a fresh connection', { timeout }, async () => {
  let garbage = true;
  const peer = await rawPeer(noopAnswerer((sock, req) => {
    if (garbage && req.key === 'bad') { garbage = false; sock.write('SERVER_ERROR nonsense\r\n'); }
  }));
  const c = client({ servers: [peer.address], ...longDeadlines });
  const { outcomes } = await settleAll([c.get('bad'), c.get('other')]);
  assert.deepEqual(outcomes, ['protocol', 'protocol']);
  await until('reconnected', answers(c, 'again'), 3000);
});

// A stream out of step (a byte lost or garbled on the way) can put a frame
// with a pending op's opaque where that op's reply should be. Taken as the
// answer, it would route a session by another key's value.
for (const wrong of ['a hit for another key', 'another opcode for a get', 'a hit for a set'] as const) {
  test(`a reply that is not its op's (${wrong}): protocol error for the batch, then a fresh connection`, { timeout }, async () => {
    let once = true;
    const peer = await rawPeer(noopAnswerer((sock, req) => {
      if (!once) {
        if (req.opcode === Op.GETKQ) sock.write(response(Op.GETKQ, req.opaque, 0, 'b1', 0, req.key));
        return;
      }
      once = false;
      if (wrong === 'a hit for another key') sock.write(response(Op.GETKQ, req.opaque, 0, 'b1', 0, 'other'));
      else if (wrong === 'another opcode for a get') sock.write(response(Op.SETQ, req.opaque, 0));
      else sock.write(response(Op.GETKQ, req.opaque, 0, 'b1', 0, req.key));
    }));
    const c = client({ servers: [peer.address], ...longDeadlines });
    await until('connected', async () => peer.seen.length > 0, 2000);
    const first = wrong === 'a hit for a set' ? c.set('k0', 'v', 0) : c.get('k0');
    const { outcomes } = await settleAll([first, c.get('k1')]);
    assert.deepEqual(outcomes, ['protocol', 'protocol']);
    await until('reconnected', async () => (await c.get('k2').catch(() => null))?.value.toString() === 'b1', 3000);
  });
}

test('the proxy\'s store: a write whose connection was lost to a protocol error is queued and written again', { timeout }, async () => {
  // Whether memcached applied it is unknown: the client gave up on the stream,
  // and closing a socket with unread bytes resets it, which can discard requests
  // the server had not read yet.
  let garbled = false;
  const peer = await rawPeer(noopAnswerer((sock, req) => {
    if (req.opcode === Op.SETQ && !garbled) {
      garbled = true;
      sock.write(Buffer.alloc(HEADER_SIZE)); // a frame with magic 0
    }
  }));
  const store = new MemcachedStore({ servers: [peer.address], keyPrefix: '', timeoutMs: 2000, learnQueue: 10, outageCounters: null });
  cleanup.push(() => store.close());
  await until('connected', async () => peer.seen.length > 0, 2000);
  await store.set('PHPSESSID:s1', 'b1', 600, false);
  await until('the write sent again', async () => peer.seen.filter((r) => r.opcode === Op.SETQ).length === 2, 5000);
  assert.equal(store.dropped, 0);
});

test('the proxy\'s store: a queued write is not replayed over a newer write of its key', { timeout }, async () => {
  // A learn lost with its connection is queued; the session moves (its backend
  // went down) and the move is written at once; the replay of the old learn
  // would then put the session back where it no longer is, for every instance.
  let cut = false;
  const peer = await rawPeer(noopAnswerer((sock, req) => {
    if (req.opcode === Op.SETQ && !cut) {
      cut = true;
      sock.destroy();
    }
  }));
  const store = new MemcachedStore({ servers: [peer.address], keyPrefix: '', timeoutMs: 2000, learnQueue: 10, outageCounters: null });
  cleanup.push(() => store.close());
  await until('connected', async () => peer.seen.length > 0, 2000);
  const lost = Date.now();
  await store.set('PHPSESSID:s1', 'b1', 600, true); // queued: its connection closed under it
  // Written once the client has reconnected, before the replay (every 250 ms) comes.
  await store.set('PHPSESSID:s1', 'b2', 600, true);
  const moved = Date.now();
  assert.ok(moved - lost < 250, `the move was written ${moved - lost} ms after the loss: the replay may have come first`);
  await until('the replay\'s time passed', async () => Date.now() - lost > 1000, 2000);
  const writes = peer.seen.filter((r) => r.opcode === Op.SETQ && r.key === 'PHPSESSID:s1').map((r) => r.value);
  assert.equal(writes.at(-1), 'b2', `writes of the key, in order: ${writes.join(', ')}`);
});

test('memcached killed with kill -9 mid-batch: every op settles at once; restarted: the client reconnects by itself', { timeout }, async () => {
  const mc = await memcached();
  const c = client({ servers: [mc.address], ...longDeadlines, probeIntervalMs: 100 });
  await c.set('kill:seed', 'v', 0);
  await mc.freeze(); // hold the batch in flight
  const settled = settleAll(Array.from({ length: 500 }, (_, i) => (i % 2 ? c.get(`kill:${i}`) : c.set(`kill:${i}`, 'x'.repeat(1000), 0))));
  await sleep(100);
  const killedAt = performance.now();
  await mc.kill();
  const { outcomes } = await settled;
  const ms = performance.now() - killedAt;
  assert.deepEqual(new Set(outcomes), new Set(['closed']));
  assert.ok(ms < 3000, `settled ${ms} ms after the kill, with a 5000 ms deadline`);

  await mc.start();
  await until('reconnect', answers(c, 'kill:seed'), 8000);
  await c.set('kill:after', 'back', 0);
  assert.equal((await c.get('kill:after'))?.value.toString(), 'back');
});

test('memcached frozen with SIGSTOP: deadlines fire, the server is marked down, service resumes after SIGCONT', { timeout }, async () => {
  const mc = await memcached();
  const c = client({ servers: [mc.address], timeoutMs: 150, writeTimeoutMs: 300, connectTimeoutMs: 300, probeIntervalMs: 100, downAfterFailures: 3 });
  await c.set('frozen', 'v', 0);
  await mc.freeze();
  try {
    const { outcomes, ms } = await settleAll([c.get('frozen'), c.set('frozen:w', 'w', 0)]);
    assert.deepEqual(outcomes, ['timeout', 'timeout']);
    assert.ok(ms < 300 + 1500, `settled after ${ms} ms`);
    // Silent deadlines count as failures: soon the server is down and ops fail fast.
    await until('down', async () => (await settleAll([c.get('frozen')])).outcomes[0] === 'down', 5000);
    assert.equal(c.isDown('frozen'), true);
  } finally {
    mc.signal('SIGCONT');
  }
  await until('recovery', answers(c, 'frozen'), 8000);
  assert.equal((await c.get('frozen'))?.value.toString(), 'v');
  assert.equal(c.isDown('frozen'), false);
});

test('down-marking: refused connections mark the server down, ops fail fast, a probe brings it back', { timeout }, async () => {
  const mc = await memcached();
  const c = client({ servers: [mc.address], ...longDeadlines, backoffBaseMs: 20, probeIntervalMs: 100, downAfterFailures: 3 });
  await c.set('down:k', 'v', 0);
  await mc.kill();
  await until('down', async () => c.isDown('down:k'), 5000);
  const { outcomes, ms } = await settleAll([c.get('down:k'), c.set('down:k', 'w', 0), c.delete('down:k'), c.touch('down:k', 5)]);
  assert.deepEqual(outcomes, Array(4).fill('down'));
  assert.ok(ms < 1000, `failed after ${ms} ms with a 5000 ms deadline`);
  await mc.start();
  await until('probe finds it back', async () => !c.isDown('down:k'), 5000);
  await c.set('down:k', 'again', 0);
  assert.equal((await c.get('down:k'))?.value.toString(), 'again');
});

test('close() ends every socket and timer: a process using the client exits by itself', { timeout }, async () => {
  const mc = await memcached();
  const dead = `127.0.0.1:${await freePort()}`; // nothing listens: reconnects, then probes
  const clientUrl = new URL('../src/memcache/client.ts', import.meta.url).href;
  const script = `
    import { MemcacheClient } from ${JSON.stringify(clientUrl)};
    const c = new MemcacheClient({ servers: [${JSON.stringify(mc.address)}, ${JSON.stringify(dead)}], probeIntervalMs: 50, backoffBaseMs: 10 });
    const keys = Array.from({ length: 200 }, (_, i) => 'exit:' + i);
    await Promise.allSettled(keys.map((k) => c.set(k, 'v', 0)));
    await new Promise((r) => setTimeout(r, 300));
    const got = await Promise.allSettled(keys.map((k) => c.get(k)));
    // Settled-handlers first: a key on the dead server rejects at once, while close() is awaited.
    const pending = Promise.allSettled([c.get('exit:0'), c.set('exit:x', 'y', 0)]);
    await c.close();
    await pending;
    console.log(JSON.stringify(got.map((g) => g.status === 'fulfilled' ? 'ok' : g.reason.code)));
  `;
  const child = spawn(process.execPath, ['--input-type=module-typescript', '-e', script], {
    cwd: fileURLToPath(new URL('..', import.meta.url)), stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  const [code, signal] = await once(child, 'exit');
  clearTimeout(killer);
  assert.equal(signal, null, 'the child had to be killed: something kept it alive after close()');
  assert.equal(code, 0, err);
  const outcomes = JSON.parse(out.trim()) as string[];
  assert.ok(outcomes.includes('ok') && outcomes.includes('down'), out);
});
