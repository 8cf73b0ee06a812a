// Property test of a misbehaving memcached, end to end: the proxy reaches a
// real memcached through a relay on loopback that, on the connections it is
// told to, cuts, resets, stalls or swallows the bytes after a chosen point, in
// either direction, garbles what memcached sends after it, or refuses new
// connections; the rest it passes on, split at random. Whatever memcached's
// side does:
// - every request is answered 200 by a backend, in time (nothing hangs);
// - a session, once learnt, stays on the backend that issued it, through the
//   faults and after them (this instance remembers where each one was);
// - nothing learnt is lost: once the relay is well again, memcached holds
//   every binding learnt during the case, without another request for it
//   (what a store failure kept from it is queued and written);
// - the proxy stays up.
// `--near-cache-ttl 0`: every request with a session asks memcached, so the
// faults meet lookups as well as learns.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { once } from 'node:events';
import fc from 'fast-check';
import { inspect, startMemcached, type Memcached } from './helpers/memcached.ts';
import { backendFlags, startOrigin, type Origin } from './helpers/origins.ts';
import { checkProperty, ProxyUnderTest } from './helpers/wire.ts';
import { get } from './helpers/proxy.ts';
import { waitFor } from './helpers/wait.ts';

const NUM_RUNS = 80;
/** Runs with the store in a piscina worker: the same client, batches crossing threads. */
const WORKER_RUNS = 40;
/** Runs with two servers, keys spread over them, and two event loops, each with its own connections. */
const PAIR_RUNS = 40;
/** A request that takes longer than this hangs: the store deadline is 50 ms. */
const ANSWER_MS = 5000;
/** Time for the proxy to find memcached well again and write what it queued (a server marked down is probed each second). */
const RECOVER_MS = 10_000;

// ------------------------------------------------------------------ the relay

type Kind = 'cut' | 'reset' | 'stall' | 'swallow' | 'garbage';

/** What the relay does to one connection: in direction `dir`, `at` bytes after it is armed, `kind`. */
interface Fault {
  kind: Kind | 'refuse';
  /** 'replies': memcached → proxy; 'requests': proxy → memcached. */
  dir: 'replies' | 'requests';
  at: number;
  /** A stall's length. */
  ms: number;
  /** The garbage written (to the proxy): a frame header with a wrong magic, or bytes that end mid-frame before the stream goes on. */
  garbage: 'magic' | 'torn';
}

const PASS: Fault = { kind: 'cut', dir: 'replies', at: Infinity, ms: 0, garbage: 'magic' };

/** A binary-protocol header whose magic is neither 0x80 nor 0x81. */
const BAD_MAGIC = Buffer.alloc(24);
/** The first 10 bytes of a response header: a frame cut short, then the real stream. */
const TORN = Buffer.from([0x81, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0]);

/** One direction of a relayed connection: counts bytes and applies the fault when it is reached. */
class Leg {
  readonly from: Socket;
  readonly to: Socket;
  fault: Fault = PASS;
  /** Bytes passed since the fault was armed. */
  count = 0;
  swallowing = false;
  /** A stall's held bytes; null when not stalled. */
  held: Buffer[] | null = null;
  timer: NodeJS.Timeout | undefined;
  split: boolean;
  /** The second parts of split writes, and what came after them, for the next turn. */
  later: Buffer[] | null = null;

  constructor(from: Socket, to: Socket, split: boolean) {
    this.from = from;
    this.to = to;
    this.split = split;
    from.on('data', (d: Buffer) => this.data(d));
  }

  arm(f: Fault): void {
    this.fault = f;
    this.count = 0;
  }

  data(d: Buffer): void {
    if (this.swallowing) return;
    if (this.held !== null) {
      this.held.push(d);
      return;
    }
    const f = this.fault;
    const left = f.at - this.count;
    if (left >= d.length) {
      this.count += d.length;
      this.pass(d);
      return;
    }
    this.fault = PASS;
    const before = d.subarray(0, Math.max(0, left));
    const rest = d.subarray(before.length);
    this.count += before.length;
    this.pass(before);
    switch (f.kind) {
      case 'cut':
        this.flushLater();
        this.to.end();
        this.from.destroy();
        break;
      case 'reset':
        this.to.resetAndDestroy();
        this.from.destroy();
        break;
      case 'swallow':
        this.swallowing = true;
        break;
      case 'stall':
        this.held = [rest];
        this.timer = setTimeout(() => this.release(), f.ms);
        break;
      case 'garbage':
        this.pass(f.garbage === 'magic' ? BAD_MAGIC : TORN);
        this.pass(rest);
        break;
    }
  }

  /**
   * Passes bytes on, now and then in two writes a turn apart, so that frames
   * arrive torn; bytes that come meanwhile wait behind the second part.
   */
  pass(d: Buffer): void {
    if (d.length === 0 || this.to.destroyed) return;
    if (this.later !== null) {
      this.later.push(d);
      return;
    }
    if (!this.split || d.length < 2) {
      this.to.write(d);
      return;
    }
    const at = (d.length * 7) >> 4 || 1;
    this.to.write(d.subarray(0, at));
    this.later = [d.subarray(at)];
    setImmediate(() => this.flushLater());
  }

  flushLater(): void {
    const later = this.later;
    this.later = null;
    if (later !== null && !this.to.destroyed) for (const d of later) this.to.write(d);
  }

  release(): void {
    clearTimeout(this.timer);
    const held = this.held;
    this.held = null;
    if (held !== null) for (const d of held) this.pass(d);
  }
}

/**
 * A TCP relay to memcached. `arm(plan)` gives the connections open now, then
 * those accepted next, one fault each, in order; `heal()` ends stalls and
 * lets later connections pass. A swallowing connection stays so: its stream
 * is out of step for good, and only the client can give up on it.
 */
class FaultRelay {
  readonly server: Server;
  readonly target: number;
  port = 0;
  plan: Fault[] = [];
  split = false;
  readonly legs = new Map<Socket, { replies: Leg; requests: Leg }>();

  constructor(target: number) {
    this.target = target;
    this.server = createServer((c) => this.#accept(c));
  }

  async listen(): Promise<void> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as { port: number }).port;
  }

  #accept(c: Socket): void {
    const f = this.plan.shift() ?? PASS;
    if (f.kind === 'refuse') {
      c.resetAndDestroy();
      return;
    }
    const s = connect(this.target, '127.0.0.1');
    const pair = { replies: new Leg(s, c, this.split), requests: new Leg(c, s, this.split) };
    this.legs.set(c, pair);
    this.#apply(pair, f);
    const gone = (): void => {
      this.legs.delete(c);
      clearTimeout(pair.replies.timer);
      clearTimeout(pair.requests.timer);
      c.destroy();
      s.destroy();
    };
    c.on('error', gone).on('close', gone);
    s.on('error', gone).on('close', gone);
    // A half-close goes on to the other side.
    c.on('end', () => s.end());
    s.on('end', () => c.end());
  }

  #apply(pair: { replies: Leg; requests: Leg }, f: Fault): void {
    (f.dir === 'replies' ? pair.replies : pair.requests).arm(f);
  }

  arm(plan: Fault[], split: boolean): void {
    this.plan = [...plan];
    this.split = split;
    for (const pair of this.legs.values()) {
      pair.replies.split = pair.requests.split = split;
      const f = this.plan.shift();
      if (f === undefined) break;
      if (f.kind === 'refuse') continue;
      this.#apply(pair, f);
    }
  }

  heal(): void {
    this.plan = [];
    this.split = false;
    for (const pair of this.legs.values()) {
      for (const leg of [pair.replies, pair.requests]) {
        leg.fault = PASS;
        leg.split = false;
        leg.release();
      }
    }
  }

  async close(): Promise<void> {
    for (const c of this.legs.keys()) c.destroy();
    this.server.close();
    await once(this.server, 'close');
  }
}

// ------------------------------------------------------------------ the case

/** One round of requests sent together: each learns a new session or comes back with a known one. */
type Shot = { learn: true } | { learn: false; which: number };

interface Case {
  /** Which of the proxy's memcached servers misbehaves (the others pass everything on). */
  server: number;
  plan: Fault[];
  split: boolean;
  rounds: Shot[][];
}

const faultArb: fc.Arbitrary<Fault> = fc.record({
  kind: fc.constantFrom<Fault['kind']>('cut', 'reset', 'stall', 'stall', 'swallow', 'garbage', 'refuse'),
  dir: fc.constantFrom<Fault['dir']>('replies', 'replies', 'requests'),
  at: fc.oneof(fc.integer({ min: 0, max: 80 }), fc.integer({ min: 0, max: 600 })),
  ms: fc.oneof(fc.integer({ min: 1, max: 80 }), fc.integer({ min: 80, max: 600 })),
  garbage: fc.constantFrom<Fault['garbage']>('magic', 'torn'),
  // Garbage goes to the proxy only: bytes changed on their way to memcached are a corrupt network, which no client can tell from a command.
}).map((f) => (f.kind === 'garbage' ? { ...f, dir: 'replies' as const } : f));
const shotArb: fc.Arbitrary<Shot> = fc.oneof(
  fc.constant<Shot>({ learn: true }),
  fc.nat(1000).map<Shot>((which) => ({ learn: false, which })),
);
const caseArb: fc.Arbitrary<Case> = fc.record({
  server: fc.nat(1),
  plan: fc.array(faultArb, { minLength: 1, maxLength: 3 }),
  split: fc.boolean(),
  rounds: fc.array(fc.array(shotArb, { minLength: 1, maxLength: 4 }), { minLength: 2, maxLength: 6 }),
});

// ---------------------------------------------------------------------- test

/**
 * A proxy, its own relays to the one memcached (each one a server to the
 * proxy, which spreads keys over them), and the sessions learnt through it
 * with the backend that issued each.
 */
interface Rig { relays: FaultRelay[]; proxy: ProxyUnderTest; owners: Map<string, string> }

let mc: Memcached;
let origins: Origin[] = [];
const rigs: Rig[] = [];
let nextSession = 1;

async function rig(servers: number, threads: number, flags: string[]): Promise<Rig> {
  const relays: FaultRelay[] = [];
  for (let i = 0; i < servers; i++) {
    relays.push(new FaultRelay(mc.port));
    await relays[i].listen();
  }
  const memcache = relays.map((r) => `127.0.0.1:${r.port}`).join(',');
  const proxy = await ProxyUnderTest.start(['--threads', String(threads), ...backendFlags(origins), '--memcache', memcache, '--near-cache-ttl', '0', ...flags]);
  const r = { relays, proxy, owners: new Map<string, string>() };
  rigs.push(r);
  return r;
}

before(async () => {
  mc = await startMemcached();
  origins = [await startOrigin('a'), await startOrigin('b'), await startOrigin('c')];
}, { timeout: 30_000 });

after(async () => {
  for (const r of rigs) {
    await r.proxy.stop();
    for (const relay of r.relays) await relay.close();
  }
  await Promise.all(origins.map((o) => o.close()));
  await mc?.stop();
}, { timeout: 30_000 });

/** A request, failed when it is not answered within ANSWER_MS. */
async function send(url: string, headers: Record<string, string>, what: string): Promise<{ status: number; backend: string }> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ANSWER_MS} ms`)), ANSWER_MS); });
  try {
    const r = await Promise.race([get(url, undefined, headers), late]);
    return { status: r.status, backend: String(r.headers['x-backend']) };
  } finally {
    clearTimeout(timer);
  }
}

async function shoot(x: Rig, shot: Shot, learnt: string[], at: string): Promise<void> {
  const url = `http://127.0.0.1:${x.proxy.port}/`;
  if (shot.learn) {
    const id = `f${nextSession++}`;
    const r = await send(url, { 'x-set-cookie': JSON.stringify([`PHPSESSID=${id}; Max-Age=600`]) }, `${at}: learning ${id}`);
    assert.equal(r.status, 200, `${at}: learning ${id} answered ${r.status}`);
    x.owners.set(id, r.backend);
    learnt.push(id);
    return;
  }
  const known = [...x.owners.keys()];
  if (known.length === 0) return;
  const id = known[shot.which % known.length];
  const r = await send(url, { cookie: `theme=x; PHPSESSID=${id}` }, `${at}: session ${id}`);
  assert.equal(r.status, 200, `${at}: session ${id} answered ${r.status}`);
  assert.equal(r.backend, x.owners.get(id), `${at}: session ${id}, issued by ${x.owners.get(id)}, went to ${r.backend}`);
}

async function property(x: Rig, numRuns: number): Promise<void> {
  let n = 0;
  await checkProperty(x.proxy, caseArb, numRuns, async (c) => {
    const relay = x.relays[c.server % x.relays.length];
    const at = `case ${++n} (${x.relays.length > 1 ? `server ${c.server % x.relays.length}: ` : ''}${c.plan.map((f) => `${f.kind} ${f.dir}@${f.at}`).join(', ')}${c.split ? ', split' : ''})`;
    const learnt: string[] = [];
    relay.arm(c.plan, c.split);
    try {
      for (const round of c.rounds) await Promise.all(round.map((shot) => shoot(x, shot, learnt, at)));
    } finally {
      relay.heal();
    }
    // No request for them now: what memcached holds came from the learns themselves, or their queue.
    for (const id of learnt) {
      await waitFor(async () => (await inspect(mc.port, `sp:PHPSESSID:${id}`))?.value === x.owners.get(id),
        { what: `${at}: memcached to hold ${id} → ${x.owners.get(id)}`, timeoutMs: RECOVER_MS, intervalMs: 50 });
    }
  });
}

test('a misbehaving memcached: every request answered by a backend, every session kept on its own, and every binding in memcached once it is well', { timeout: 300_000 }, async () => {
  await property(await rig(1, 1, []), NUM_RUNS);
});

test('the same with the store in an affinity worker (--workers 1)', { timeout: 300_000 }, async () => {
  await property(await rig(1, 1, ['--workers', '1']), WORKER_RUNS);
});

test('the same with two memcached servers, one misbehaving, and two event loops', { timeout: 300_000 }, async () => {
  await property(await rig(2, 2, []), PAIR_RUNS);
});
