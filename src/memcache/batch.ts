// A batch: the operations one server received in one tick, encoded back to
// back and closed by a NOOP. Ops are numbered by opaque from `base`, so a reply
// finds its op by subtraction (mod 2^32) instead of a map lookup. memcached
// answers in order, so once the NOOP's reply arrives every quiet op that has
// not answered is known: a read missed, a write succeeded.
import { Buffer } from 'node:buffer';
import { performance } from 'node:perf_hooks';
import { HEADER_SIZE, ProtocolError, Status, encodeNoop, get32, statusName, type Frame } from './codec.ts';
import type { Connection } from './connection.ts';
import { MemcacheError } from './errors.ts';

export interface Hit { value: Buffer; flags: number }

export const KIND_GET = 0;    // GETKQ/GATKQ: no reply = miss
export const KIND_SET = 1;    // SETQ: no reply = stored
export const KIND_DELETE = 2; // DELETEQ: no reply or not-found = deleted
export const KIND_TOUCH = 3;  // TOUCH: always replies
export type OpKind = typeof KIND_GET | typeof KIND_SET | typeof KIND_DELETE | typeof KIND_TOUCH;

type Settle = (value: unknown) => void;
type Reject = (err: Error) => void;

/** What a batch reports to the server that owns it. */
export interface BatchHost {
  readonly address: string;
  batchExpired(batch: Batch): void;
}

// A batch owns its state: the server that builds it and the connection that
// carries it tell it what happened through its methods and read it through
// its getters.
export class Batch {
  private readonly host: BatchHost;
  /** Opaque of the first op; the closing NOOP carries base + size. */
  readonly base: number;
  private readonly readTimeoutMs: number;
  private readonly writeTimeoutMs: number;
  // Per op, by index: kind, and the promise's callbacks (null once settled).
  // Parallel arrays and one shared executor save an object and a closure per op.
  private readonly kinds: OpKind[] = [];
  /** Where each op's request starts in `wire`: its reply must echo that opcode (and a hit, that key). */
  private readonly starts: number[] = [];
  private readonly resolves: (Settle | null)[] = [];
  private readonly rejects: (Reject | null)[] = [];
  private readonly capture = (resolve: Settle, reject: Reject): void => {
    this.resolves.push(resolve);
    this.rejects.push(reject);
  };
  /** Encoded requests + NOOP, once flushed. */
  private wire: Buffer | null = null;
  private readDeadline = 0;  // performance.now() ms, 0 = no read in this batch
  private writeDeadline = 0;
  private unsettled = 0;
  /** Connection it was written to and that connection's receive count then (to tell silence from slowness). */
  private conn: Connection | null = null;
  private rxMark = 0;
  private timer: NodeJS.Timeout | null = null;

  /** Deadlines run from the first op of each class: every op of a batch is issued in one tick. */
  constructor(host: BatchHost, base: number, readTimeoutMs: number, writeTimeoutMs: number) {
    this.host = host;
    this.base = base;
    this.readTimeoutMs = readTimeoutMs;
    this.writeTimeoutMs = writeTimeoutMs;
  }

  /**
   * A batch of no op whose NOOP must be answered within timeoutMs, sent first
   * on a new connection: only an answer proves the server is serving, not
   * merely accepting (a SIGSTOPped memcached still completes TCP handshakes).
   */
  static hello(host: BatchHost, opaque: number, timeoutMs: number): Batch {
    const b = new Batch(host, opaque, timeoutMs, 0);
    const bytes = Buffer.allocUnsafe(HEADER_SIZE);
    encodeNoop(bytes, 0, b.noopOpaque);
    const now = performance.now();
    b.readDeadline = now + timeoutMs;
    b.flushed(bytes, now);
    return b;
  }

  get size(): number { return this.kinds.length; }
  get noopOpaque(): number { return (this.base + this.kinds.length) >>> 0; }
  /** Every op has its answer (or its error). */
  get settled(): boolean { return this.unsettled === 0; }
  /** What to write, once flushed. */
  get bytes(): Buffer { return this.wire as Buffer; }
  /** The connection it was written to, or null while unsent. */
  get connection(): Connection | null { return this.conn; }
  /** Written to a connection that is still open and has received nothing since: silent, not merely slow. */
  get unheard(): boolean {
    const c = this.conn;
    return c !== null && c.isOpen && c.rxCount === this.rxMark;
  }

  /** Queues one op; its bytes were encoded by the caller, `start` bytes into the batch. */
  add<T>(kind: OpKind, start: number): Promise<T> {
    if (kind === KIND_GET) {
      if (this.readDeadline === 0) this.readDeadline = performance.now() + this.readTimeoutMs;
    } else if (this.writeDeadline === 0) {
      this.writeDeadline = performance.now() + this.writeTimeoutMs;
    }
    this.kinds.push(kind);
    this.starts.push(start);
    this.unsettled++;
    return new Promise<T>(this.capture as (resolve: (value: T) => void, reject: Reject) => void);
  }

  /** The batch is closed: `bytes` (its ops and NOOP) is what goes out, and its deadline timer starts. */
  flushed(bytes: Buffer, now: number): void {
    this.wire = bytes;
    this.arm(now);
  }

  /** Written to `conn`, whose receive count was then `rxCount`. */
  sentOn(conn: Connection, rxCount: number): void {
    this.conn = conn;
    this.rxMark = rxCount;
  }

  /** Starts the batch's single timer, for its earliest deadline. */
  private arm(now: number): void {
    const next = this.nextDeadline();
    if (next === 0) return;
    this.timer = setTimeout(onTimer, Math.max(0, Math.ceil(next - now)), this);
  }

  private nextDeadline(): number {
    const r = this.readDeadline;
    const w = this.writeDeadline;
    if (r === 0) return w;
    if (w === 0) return r;
    return r < w ? r : w;
  }

  /** A reply for op `index` of this batch. */
  answer(index: number, f: Frame): void {
    // A stream out of step (a byte lost or garbled on the way) can put a frame
    // with this op's opaque where its reply should be: taken as the answer, a
    // lookup would route by another key's value. memcached echoes the opcode,
    // and a GETK hit carries its key.
    const wire = this.wire as Buffer;
    const at = this.starts[index];
    if (f.opcode !== wire[at + 1]) throw new ProtocolError(`reply opcode 0x${f.opcode.toString(16)} to request opcode 0x${wire[at + 1].toString(16)}`);
    if (this.resolves[index] === null) return; // already timed out
    const status = f.status;
    switch (this.kinds[index]) {
      case KIND_GET:
        if (status === Status.OK) {
          if (!sameKey(wire, at, f)) throw new ProtocolError('a hit for another key');
          const flags = f.extLen >= 4 ? get32(f.buf, f.extrasStart) : 0;
          const start = f.valueStart;
          // A view, not a copy: socket chunks are never reused, so it stays valid;
          // it does keep its chunk alive while held (the proxy decodes it at once).
          const value = f.buf.subarray(start, f.end);
          return this.resolveOp(index, { value, flags } satisfies Hit);
        }
        if (status === Status.KEY_NOT_FOUND) return this.resolveOp(index, null);
        break;
      case KIND_SET:
        if (status === Status.OK) return this.resolveOp(index, undefined);
        break;
      case KIND_DELETE:
        if (status === Status.OK || status === Status.KEY_NOT_FOUND) return this.resolveOp(index, undefined);
        break;
      case KIND_TOUCH:
        if (status === Status.OK) return this.resolveOp(index, true);
        if (status === Status.KEY_NOT_FOUND) return this.resolveOp(index, false);
        break;
    }
    this.rejectOp(index, new MemcacheError('server', `${statusName(status)} (opcode 0x${f.opcode.toString(16)})`, this.host.address, status));
  }

  /** The NOOP answered: every quiet op still open got its implicit answer. */
  complete(): void {
    this.clearTimer();
    if (this.unsettled === 0) return;
    let protocolError: MemcacheError | null = null;
    for (let i = 0; i < this.kinds.length; i++) {
      if (this.resolves[i] === null) continue;
      const kind = this.kinds[i];
      if (kind === KIND_GET) this.resolveOp(i, null);
      else if (kind === KIND_TOUCH) this.rejectOp(i, protocolError ??= new MemcacheError('protocol', 'TOUCH got no reply before NOOP', this.host.address));
      else this.resolveOp(i, undefined);
    }
  }

  /** Rejects every op still open. One error instance serves the whole batch. */
  fail(err: MemcacheError): void {
    this.clearTimer();
    if (this.unsettled === 0) return;
    for (let i = 0; i < this.kinds.length; i++) if (this.rejects[i] !== null) this.rejectOp(i, err);
  }

  /** The timer fired: ops whose deadline passed fail, and the server hears of it. */
  timedOut(): void {
    this.expire(performance.now());
    this.host.batchExpired(this);
  }

  /** Rejects ops whose deadline passed, re-arms for the rest. */
  private expire(now: number): void {
    this.timer = null;
    // setTimeout rounds to whole ms; allow 1 ms so a deadline is never re-armed for nothing.
    const readsDue = this.readDeadline !== 0 && this.readDeadline <= now + 1;
    const writesDue = this.writeDeadline !== 0 && this.writeDeadline <= now + 1;
    let err: MemcacheError | null = null;
    for (let i = 0; i < this.kinds.length; i++) {
      // Reads (get/gat) use the lookup deadline; everything else the write deadline.
      if (this.rejects[i] === null || !(this.kinds[i] === KIND_GET ? readsDue : writesDue)) continue;
      this.rejectOp(i, err ??= new MemcacheError('timeout', 'no reply within deadline', this.host.address));
    }
    if (readsDue) this.readDeadline = 0;
    if (writesDue) this.writeDeadline = 0;
    if (this.unsettled > 0) this.arm(now);
  }

  private clearTimer(): void {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  private resolveOp(i: number, value: unknown): void {
    const resolve = this.resolves[i] as Settle;
    this.resolves[i] = this.rejects[i] = null;
    this.unsettled--;
    resolve(value);
  }

  private rejectOp(i: number, err: Error): void {
    const reject = this.rejects[i] as Reject;
    this.resolves[i] = this.rejects[i] = null;
    this.unsettled--;
    reject(err);
  }
}

/** Whether reply `f` carries the key of the request at `at` in `wire`. */
function sameKey(wire: Buffer, at: number, f: Frame): boolean {
  const len = (wire[at + 2] << 8) | wire[at + 3];
  if (f.keyLen !== len) return false;
  const k = at + HEADER_SIZE + wire[at + 4];
  const buf = f.buf;
  const s = f.keyStart;
  for (let i = 0; i < len; i++) if (buf[s + i] !== wire[k + i]) return false;
  return true;
}

function onTimer(batch: Batch): void {
  batch.timedOut();
}
