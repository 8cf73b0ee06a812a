// One TCP connection to one memcached: writes encoded batches, parses replies
// and routes each to the batch at the head of the in-flight queue (memcached
// answers in order). It owns no policy: the server decides about reconnects,
// backoff and down-marking from what this reports.
import { connect, type Socket } from 'node:net';
import { FrameParser, Op, ProtocolError, type Frame } from './codec.ts';
import type { Batch } from './batch.ts';
import { MemcacheError } from './errors.ts';
import { afterRead, readBuffer } from '../read-regions.ts';

export interface ConnectionHost {
  readonly address: string;
  readonly host: string;
  readonly port: number;
  readonly connectTimeoutMs: number;
  /** Bytes arrived: the server is alive. */
  connAlive(): void;
  /** The connection failed or was closed by the peer (not by destroy()). */
  connLost(conn: Connection, err: MemcacheError): void;
  /** The backoff delay set by reconnectIn() has passed. */
  connRetry(conn: Connection): void;
  /** A batch completed and nothing is left in flight. */
  connIdle(conn: Connection): void;
}

export class Connection {
  private readonly server: ConnectionHost;
  private socket: Socket | null = null;
  private readonly inflight: Batch[] = [];
  private readonly parser = new FrameParser((f) => this.onFrame(f));
  private connectTimer: NodeJS.Timeout | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private received = 0;
  private failedAttempts = 0;

  constructor(server: ConnectionHost) {
    this.server = server;
  }

  /** Has a socket (connecting or connected) that accepts writes. */
  get isOpen(): boolean { return this.socket !== null; }
  get inflightCount(): number { return this.inflight.length; }
  /** Data events received; a batch records it when sent, to tell silence from slowness. */
  get rxCount(): number { return this.received; }
  /** Reconnects scheduled since the server last sent data, for the server's backoff. */
  get attempts(): number { return this.failedAttempts; }

  open(): void {
    this.cancelReconnect();
    // Keepalive lets an idle connection through a dead path be noticed without traffic.
    // Replies are read into regions (read-regions.ts), as backend answers are: no buffer allocated per read.
    const onread = {
      buffer: readBuffer,
      callback: (nread: number, buf: Uint8Array): boolean => {
        const region = buf as Buffer;
        try {
          this.onData(s, nread === region.length ? region : region.subarray(0, nread));
        } finally {
          afterRead(nread, region, true);
        }
        return true;
      },
    };
    const s = connect({ host: this.server.host, port: this.server.port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 30_000, onread });
    this.socket = s;
    this.parser.reset();
    this.connectTimer = setTimeout(onConnectTimeout, this.server.connectTimeoutMs, s);
    s.once('connect', () => this.clearConnectTimer());
    s.on('error', (err: NodeJS.ErrnoException) => this.lost(s, new MemcacheError('closed', err.message, this.server.address, undefined, err.code)));
    s.on('end', () => this.lost(s, new MemcacheError('closed', 'server closed the connection', this.server.address)));
    s.on('close', () => this.lost(s, new MemcacheError('closed', 'connection closed', this.server.address)));
  }

  /** Writes a flushed batch; node queues it while the socket is still connecting. */
  send(batch: Batch): void {
    batch.sentOn(this, this.received);
    this.inflight.push(batch);
    (this.socket as Socket).write(batch.bytes);
  }

  /** True if every batch in flight has already settled (timed out), so closing loses nothing. */
  get settled(): boolean {
    for (const b of this.inflight) if (!b.settled) return false;
    return true;
  }

  /** Reopens after ms; counts as an attempt until data arrives. */
  reconnectIn(ms: number): void {
    this.cancelReconnect();
    this.failedAttempts++;
    this.reconnectTimer = setTimeout(onReconnect, ms, this);
  }

  retry(): void {
    this.reconnectTimer = null;
    this.server.connRetry(this);
  }

  cancelReconnect(): void {
    if (this.reconnectTimer !== null) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
    }
  }

  /** Closes on our initiative: in-flight ops fail with `err` now, and the server is not told. */
  destroy(err: MemcacheError): void {
    this.cancelReconnect();
    const s = this.socket;
    if (s === null) return;
    this.detach(err);
    s.destroy();
  }

  /** Resolves once this connection has no socket (destroyed, lost, or never opened). */
  whenClosed(): Promise<void> {
    const s = this.socket;
    if (s === null) return Promise.resolve();
    return new Promise((resolve) => s.once('close', () => resolve()));
  }

  private lost(s: Socket, err: MemcacheError): void {
    if (s !== this.socket) return; // stale event from a socket already dropped
    this.detach(err);
    s.destroy();
    this.server.connLost(this, err);
  }

  private detach(err: MemcacheError): void {
    this.socket = null;
    this.clearConnectTimer();
    const batches = this.inflight.splice(0);
    for (const b of batches) b.fail(err);
  }

  private clearConnectTimer(): void {
    if (this.connectTimer !== null) {
      clearTimeout(this.connectTimer);
      this.connectTimer = null;
    }
  }

  private onData(s: Socket, chunk: Buffer): void {
    if (s !== this.socket) return;
    this.received++;
    this.failedAttempts = 0;
    this.server.connAlive();
    try {
      this.parser.feed(chunk);
    } catch (err) {
      // A stream we cannot follow can only be resynchronised by a new connection.
      this.lost(s, new MemcacheError('protocol', (err as Error).message, this.server.address));
    }
  }

  private onFrame(f: Frame): void {
    const batch = this.inflight[0];
    if (batch === undefined) throw new ProtocolError(`reply (opaque ${f.opaque}) with nothing in flight`);
    const index = (f.opaque - batch.base) >>> 0; // wraps correctly past 2^32
    const n = batch.size;
    if (index < n) {
      batch.answer(index, f);
    } else if (index === n && f.opcode === Op.NOOP) {
      this.inflight.shift();
      batch.complete();
      if (this.inflight.length === 0) this.server.connIdle(this);
    } else {
      throw new ProtocolError(`unexpected reply: opcode 0x${f.opcode.toString(16)} opaque ${f.opaque}`);
    }
  }
}

// The socket's 'error' handler reports the loss.
function onConnectTimeout(s: Socket): void {
  s.destroy(new Error('connect timeout'));
}

function onReconnect(conn: Connection): void {
  conn.retry();
}
