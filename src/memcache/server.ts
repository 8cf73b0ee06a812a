// One memcached server: assembles the tick's operations into a batch, hands
// flushed batches to its connections, and keeps its health: reconnects with
// capped, jittered exponential backoff; after `downAfterFailures` consecutive
// failures it is marked down, its operations fail fast, and a probe (a fresh
// connection that must answer a NOOP) runs every `probeIntervalMs` until one
// succeeds. Those state changes are reported to `onState`, if set.
import { Buffer } from 'node:buffer';
import { performance } from 'node:perf_hooks';
import { Batch, KIND_DELETE, KIND_GET, KIND_SET, KIND_TOUCH, type BatchHost, type Hit } from './batch.ts';
import { HEADER_SIZE, Op, encodeKeyOnly, encodeNoop, encodeStore, encodeTouch } from './codec.ts';
import { Connection, type ConnectionHost } from './connection.ts';
import { MemcacheError } from './errors.ts';
import { parseHostPort } from '../hostport.ts';

export interface ServerOptions {
  timeoutMs: number;
  writeTimeoutMs: number;
  connectTimeoutMs: number;
  connectionsPerServer: number;
  maxBatch: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
  downAfterFailures: number;
  probeIntervalMs: number;
  opaqueStart: number;
  /** Told when the server is first heard, marked down, or back; and of the first failure of a server never heard. */
  onState: ServerStateListener | null;
}

/** `up` false with the cause; a server never heard is reported down at its first failure, not after downAfterFailures. */
export type ServerStateListener = (address: string, up: boolean, cause: MemcacheError | null) => void;

// What was last reported to onState.
const UNKNOWN = 0;
const REPORTED_UP = 1;
const REPORTED_DOWN = 2;

// Batches are encoded back to back into one arena and written as subarrays
// of it, so a batch costs no allocation of its own; a full arena is replaced
// (sockets still hold the old one until written).
const ARENA_SIZE = 256 * 1024;

/** "host:port", with IPv6 hosts in brackets: "[::1]:11211"; throws a RangeError. The proxy's flags use the same parser. */
export function parseAddress(address: string): { host: string; port: number } {
  return parseHostPort(address);
}

export class Server implements BatchHost, ConnectionHost {
  readonly address: string;
  readonly host: string;
  readonly port: number;
  readonly connectTimeoutMs: number;
  private readonly opts: ServerOptions;
  private readonly conns: Connection[] = [];
  private pending: Batch | null = null;
  private flushScheduled = false;
  private arena: Buffer = Buffer.alloc(0);
  private batchStart = 0;
  private pos = 0;
  private nextOpaque: number;
  /** Flushed while no connection had a socket; sent when one opens. */
  private readonly waiting: Batch[] = [];
  private failures = 0;
  /** Set while marked down; every operation is rejected with it. */
  private downError: MemcacheError | null = null;
  private probeTimer: NodeJS.Timeout | null = null;
  private closeError: MemcacheError | null = null;
  private reported = UNKNOWN;

  constructor(address: string, opts: ServerOptions) {
    const { host, port } = parseAddress(address);
    this.address = address;
    this.host = host;
    this.port = port;
    this.opts = opts;
    this.connectTimeoutMs = opts.connectTimeoutMs;
    this.nextOpaque = opts.opaqueStart >>> 0;
    for (let i = 0; i < opts.connectionsPerServer; i++) this.conns.push(new Connection(this));
    for (const c of this.conns) this.openConnection(c);
  }

  get isDown(): boolean { return this.downError !== null; }

  // --- operations -----------------------------------------------------------

  get(opcode: typeof Op.GETKQ | typeof Op.GATKQ, key: string, exptime: number): Promise<Hit | null> {
    if (this.downError !== null) return Promise.reject(this.downError);
    const b = this.batchFor(HEADER_SIZE + 4 + key.length);
    const opaque = (b.base + b.size) >>> 0;
    const start = this.pos - this.batchStart;
    this.pos = opcode === Op.GETKQ
      ? encodeKeyOnly(this.arena, this.pos, opcode, opaque, key)
      : encodeTouch(this.arena, this.pos, opcode, opaque, key, exptime);
    return b.add(KIND_GET, start);
  }

  set(key: string, value: Buffer | string, valueLen: number, exptime: number, flags: number): Promise<void> {
    if (this.downError !== null) return Promise.reject(this.downError);
    const b = this.batchFor(HEADER_SIZE + 8 + key.length + valueLen);
    const opaque = (b.base + b.size) >>> 0;
    const start = this.pos - this.batchStart;
    this.pos = encodeStore(this.arena, this.pos, Op.SETQ, opaque, key, flags, exptime, value, valueLen);
    return b.add(KIND_SET, start);
  }

  delete(key: string): Promise<void> {
    if (this.downError !== null) return Promise.reject(this.downError);
    const b = this.batchFor(HEADER_SIZE + key.length);
    const start = this.pos - this.batchStart;
    this.pos = encodeKeyOnly(this.arena, this.pos, Op.DELETEQ, (b.base + b.size) >>> 0, key);
    return b.add(KIND_DELETE, start);
  }

  touch(key: string, exptime: number): Promise<boolean> {
    if (this.downError !== null) return Promise.reject(this.downError);
    const b = this.batchFor(HEADER_SIZE + 4 + key.length);
    const start = this.pos - this.batchStart;
    this.pos = encodeTouch(this.arena, this.pos, Op.TOUCH, (b.base + b.size) >>> 0, key, exptime);
    return b.add(KIND_TOUCH, start);
  }

  /** The open batch, with room for `bytes` more plus its closing NOOP. */
  private batchFor(bytes: number): Batch {
    let b = this.pending;
    if (b !== null && b.size >= this.opts.maxBatch) {
      this.flush();
      b = null;
    }
    if (b === null) {
      b = this.pending = new Batch(this, this.nextOpaque, this.opts.timeoutMs, this.opts.writeTimeoutMs);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        process.nextTick(flushTick, this);
      }
    }
    this.reserve(bytes + HEADER_SIZE);
    return b;
  }

  private reserve(n: number): void {
    if (this.arena.length - this.pos >= n) return;
    const used = this.pos - this.batchStart;
    const next = Buffer.allocUnsafe(Math.max(ARENA_SIZE, 2 * (used + n)));
    this.arena.copy(next, 0, this.batchStart, this.pos);
    this.arena = next;
    this.batchStart = 0;
    this.pos = used;
  }

  /** Closes the open batch with its NOOP and sends it. */
  flush(): void {
    this.flushScheduled = false;
    const b = this.pending;
    if (b === null) return;
    this.pending = null;
    const noop = b.noopOpaque;
    this.pos = encodeNoop(this.arena, this.pos, noop);
    b.flushed(this.arena.subarray(this.batchStart, this.pos), performance.now());
    this.batchStart = this.pos;
    this.nextOpaque = (noop + 1) >>> 0;
    this.dispatch(b);
  }

  private dispatch(b: Batch): void {
    let best: Connection | null = null;
    for (const c of this.conns) {
      if (c.isOpen && (best === null || c.inflightCount < best.inflightCount)) best = c;
    }
    if (best !== null) best.send(b);
    else if (this.closeError !== null) b.fail(this.closeError);
    else this.waiting.push(b); // reconnecting: it goes out when a socket opens, or times out
  }

  // --- connections and health -------------------------------------------------

  private openConnection(c: Connection): void {
    c.open();
    c.send(Batch.hello(this, this.nextOpaque, this.opts.connectTimeoutMs));
    this.nextOpaque = (this.nextOpaque + 1) >>> 0;
    for (const b of this.waiting.splice(0)) if (!b.settled) c.send(b);
  }

  connAlive(): void {
    this.failures = 0;
    if (this.downError !== null) this.markUp();
    if (this.reported !== REPORTED_UP) this.report(REPORTED_UP, null);
  }

  /**
   * A NOOP on an open connection, answered within timeoutMs or counted as a
   * failure: an idle client notices a frozen server, not only a closed one.
   */
  ping(): void {
    if (this.downError !== null || this.closeError !== null) return;
    for (const c of this.conns) {
      if (!c.isOpen) continue;
      c.send(Batch.hello(this, this.nextOpaque, this.opts.timeoutMs));
      this.nextOpaque = (this.nextOpaque + 1) >>> 0;
      return;
    }
  }

  private report(state: number, cause: MemcacheError | null): void {
    this.reported = state;
    this.opts.onState?.(this.address, state === REPORTED_UP, cause);
  }

  connLost(c: Connection, err: MemcacheError): void {
    if (this.closeError !== null) return;
    this.failure(err);
    if (this.downError !== null) this.scheduleProbe();
    else c.reconnectIn(this.backoff(c.attempts));
  }

  connRetry(c: Connection): void {
    if (this.closeError === null && this.downError === null) this.openConnection(c);
  }

  connIdle(c: Connection): void {
    if (this.closeError !== null) c.destroy(this.closeError);
  }

  batchExpired(b: Batch): void {
    const c = b.connection;
    if (c === null) {
      // Never sent: drop it once nothing in it is waiting any more.
      const i = this.waiting.indexOf(b);
      if (b.settled && i >= 0) this.waiting.splice(i, 1);
      return;
    }
    if (this.closeError !== null) {
      if (c.settled) c.destroy(this.closeError);
      return;
    }
    if (!b.unheard) return; // slow but talking, or already gone
    const err = new MemcacheError('timeout', 'server silent past deadline', this.address);
    if (this.downError !== null) {
      c.destroy(err); // the probe connected but got no answer
      this.scheduleProbe();
    } else {
      this.failure(err);
    }
  }

  /** Equal jitter: half the capped exponential delay fixed, half random, so reconnects spread out. */
  private backoff(attempt: number): number {
    const d = Math.min(this.opts.backoffMaxMs, this.opts.backoffBaseMs * 2 ** Math.min(attempt, 30));
    return d / 2 + Math.random() * (d / 2);
  }

  private failure(cause: MemcacheError): void {
    this.failures++;
    if (this.downError === null && this.failures >= this.opts.downAfterFailures) this.markDown(cause);
    // A server never heard is reported at once: unreachable from the start.
    else if (this.reported === UNKNOWN) this.report(REPORTED_DOWN, cause);
  }

  private markDown(cause: MemcacheError): void {
    const err = new MemcacheError('down', `marked down after ${this.failures} consecutive failures (last: ${cause.message})`, this.address);
    this.downError = err;
    this.failPending(err);
    for (const c of this.conns) c.destroy(err);
    this.scheduleProbe();
    if (this.reported !== REPORTED_DOWN) this.report(REPORTED_DOWN, cause);
  }

  private markUp(): void {
    this.downError = null;
    this.failures = 0;
    for (const c of this.conns) if (!c.isOpen) this.openConnection(c);
  }

  private scheduleProbe(): void {
    if (this.probeTimer === null && this.closeError === null) {
      this.probeTimer = setTimeout(onProbe, this.opts.probeIntervalMs, this);
    }
  }

  probe(): void {
    this.probeTimer = null;
    if (this.downError !== null && this.closeError === null) this.openConnection(this.conns[0]);
  }

  private failPending(err: MemcacheError): void {
    if (this.pending !== null) {
      this.pending.fail(err);
      this.pending = null;
      this.pos = this.batchStart; // discard its bytes
    }
    for (const b of this.waiting.splice(0)) b.fail(err);
  }

  /**
   * Sends what was issued, lets in-flight operations finish (each is bounded
   * by its deadline), then closes every socket and clears every timer.
   */
  async close(err: MemcacheError): Promise<void> {
    this.closeError = err;
    if (this.probeTimer !== null) {
      clearTimeout(this.probeTimer);
      this.probeTimer = null;
    }
    this.flush();
    this.failPending(err);
    for (const c of this.conns) {
      c.cancelReconnect();
      if (c.settled) c.destroy(err);
    }
    await Promise.all(this.conns.map((c) => c.whenClosed()));
  }
}

function flushTick(s: Server): void {
  s.flush();
}

function onProbe(s: Server): void {
  s.probe();
}
