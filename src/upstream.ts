// Connections to one backend: our own pool of kept-alive raw sockets (net, or
// tls for https:// backends). At most --upstream-connections are open; beyond
// that, requests wait in a bounded queue for at most --queue-timeout, then get
// a 503. A socket goes back to the pool only after its response was read
// completely (the request's owner decides), and idle sockets close after
// --upstream-idle-timeout, below a backend's own keep-alive timeout.
import { performance } from 'node:perf_hooks';
import { isIP, connect as netConnect, type Socket } from 'node:net';
import type { Deadlines, Timed } from './deadlines.ts';
import { afterRead, freeRead, readBuffer } from './read-regions.ts';
import { Histogram, QUEUE_BUCKETS } from './stats.ts';

export interface UpstreamOptions {
  /** Most open connections to the backend. */
  connections: number;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  /** Most requests waiting for a connection, and how long each may wait. */
  queueMax: number;
  queueTimeoutMs: number;
  /** PEM CA to trust for https:// backends, besides the system's. */
  ca: string | null;
}

/** Whoever uses an open connection: a request, or a tunnel after an upgrade. */
export interface ConnectionUser {
  /** True when nothing of `chunk` is kept (all of it was written, or dropped): its memory may be freed. */
  upstreamData(chunk: Buffer): boolean;
  /** The backend half-closed (FIN). */
  upstreamEnd(): void;
  /** The socket closed while in use; `code` is its error's code, '' for a plain close. */
  upstreamClosed(code: string): void;
  upstreamDrained(): void;
  /** The deadline set with waitFor() passed. */
  upstreamTimeout(): void;
}

/** A request waiting for a connection from the pool. */
export interface PoolWaiter extends ConnectionUser {
  /** A connection is ready for the request. */
  onUpstream(conn: UpstreamConnection): void;
  /** No connection: a connect failure (its code), 'QUEUE_FULL', 'QUEUE_TIMEOUT' or 'CLOSED'. */
  onUpstreamFailed(code: string): void;
  /** Set when the request was abandoned while it waited. */
  readonly gone: boolean;
}

const CONNECTING = 0;
const IDLE = 1;
const BUSY = 2;
const CLOSED = 3;

interface OwnedSocket extends Socket {
  owner: UpstreamConnection;
}

export class UpstreamConnection implements Timed {
  readonly socket: OwnedSocket;
  readonly pool: UpstreamPool;
  user: ConnectionUser | null = null;
  /** The request that caused this connection, told if connecting fails. */
  opener: PoolWaiter | null;
  state = CONNECTING;
  /** Requests served before the current one: a reused socket may have been closed by the backend meanwhile. */
  uses = 0;
  deadline: number;
  /** performance.now() when the connection was asked for, and when it was ready. */
  readonly openedAt: number;
  connectedAt = 0;
  /** Some read of the socket's current region is still referred to (held, queued, or part of a head): it is left to the collector. */
  regionKept = false;
  #code = '';

  constructor(pool: UpstreamPool, socket: Socket, opener: PoolWaiter, now: number) {
    this.pool = pool;
    this.opener = opener;
    this.openedAt = now;
    this.deadline = now + pool.opts.connectTimeoutMs;
    this.socket = socket as OwnedSocket;
    this.socket.owner = this;
    socket.setNoDelay(true);
    socket.on(pool.tls ? 'secureConnect' : 'connect', onConnect);
    // A plain socket reads through `onread` (read-regions.ts); a TLS socket's reads are its decryptions.
    if (pool.tls) socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.on('drain', onDrain);
  }

  get reused(): boolean {
    return this.uses > 0;
  }

  /** Starts (or restarts) the silence timeout of a response head or body. */
  waitFor(ms: number): void {
    this.deadline = performance.now() + ms;
  }

  /** No timeout while the request's own side (its upload) sets the pace. */
  noDeadline(): void {
    this.deadline = Infinity;
  }

  expire(now: number): void {
    this.deadline = Infinity;
    if (this.state === CONNECTING) {
      this.#code = 'ETIMEDOUT';
      this.socket.destroy();
    } else if (this.state === IDLE) {
      this.socket.destroy();
    } else if (this.state === BUSY) {
      this.user?.upstreamTimeout();
    }
    void now;
  }

  /** The request is done with this socket: back to the pool if it can be reused, else closed. */
  release(reusable: boolean): void {
    this.user = null;
    if (!reusable || this.state !== BUSY || this.pool.closing) {
      this.destroy();
      return;
    }
    this.uses++;
    // A learn or a slow client may have paused it; an idle socket must see the backend's close.
    this.socket.resume();
    this.pool.idle(this);
  }

  destroy(): void {
    this.user = null;
    this.socket.destroy();
  }

  connected(): void {
    if (this.state !== CONNECTING) return;
    this.connectedAt = performance.now();
    this.opener = null;
    this.pool.connected(this);
  }

  closed(): void {
    const state = this.state;
    this.state = CLOSED;
    this.pool.gone(this, state === CONNECTING ? this.#code || 'ECONNRESET' : '');
    const user = this.user;
    this.user = null;
    if (user !== null) user.upstreamClosed(this.#code);
  }

  failed(err: NodeJS.ErrnoException): void {
    if (this.#code === '') this.#code = err.code ?? 'ECONNRESET';
  }
}

function onConnect(this: OwnedSocket): void {
  this.owner.connected();
}

/** True when nothing of `chunk` is kept. */
function deliver(socket: OwnedSocket, chunk: Buffer): boolean {
  const user = socket.owner.user;
  if (user !== null) return user.upstreamData(chunk);
  socket.destroy(); // bytes nobody asked for: the connection is not sound
  return true;
}

/** A TLS socket's read: Node's own buffer, freed once written. */
function onData(this: OwnedSocket, chunk: Buffer): void {
  if (deliver(this, chunk)) freeRead(chunk);
}

/** A plain socket's read: buf[0, nread) is the data, a view that stays valid. */
function onRead(this: OwnedSocket, nread: number, buf: Uint8Array): boolean {
  const region = buf as Buffer;
  const c = this.owner;
  let taken = false;
  try {
    taken = deliver(this, nread === region.length ? region : region.subarray(0, nread));
  } finally {
    if (!taken) c.regionKept = true;
    // A used-up region whose every read was written is read into again, or freed.
    if (afterRead(nread, region, c.regionKept)) c.regionKept = false;
  }
  return true;
}

const READ_INTO = { buffer: readBuffer, callback: onRead };

function onEnd(this: OwnedSocket): void {
  const c = this.owner;
  if (c.user !== null) c.user.upstreamEnd();
  else this.destroy();
}

function onError(this: OwnedSocket, err: NodeJS.ErrnoException): void {
  this.owner.failed(err);
}

function onClose(this: OwnedSocket): void {
  this.owner.closed();
}

function onDrain(this: OwnedSocket): void {
  this.owner.user?.upstreamDrained();
}

export class UpstreamPool implements Timed {
  readonly opts: UpstreamOptions;
  readonly host: string;
  readonly port: number;
  readonly tls: boolean;
  /** The name sent as SNI; '' for an address, which SNI cannot carry. */
  readonly servername: string;
  /** Open connections, idle, busy or connecting. */
  open = 0;
  /** Requests waiting for a connection, oldest first, with when each began to wait. */
  readonly #waiting: PoolWaiter[] = [];
  readonly #since: number[] = [];
  readonly #idle: UpstreamConnection[] = [];
  /** Seconds each request spent in the queue, however it left it; published at scrape. */
  readonly waited = new Histogram(QUEUE_BUCKETS);
  /** Connections on their way, each opened for a waiter. */
  #connecting = 0;
  readonly #deadlines: Deadlines;
  deadline = Infinity;
  closing = false;

  constructor(url: URL, opts: UpstreamOptions, deadlines: Deadlines) {
    this.opts = opts;
    this.tls = url.protocol === 'https:';
    this.host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    this.port = url.port === '' ? (this.tls ? 443 : 80) : Number(url.port);
    // SNI names a host, never an address (RFC 6066 section 3); the certificate is still checked against the address.
    this.servername = isIP(this.host) === 0 ? this.host : '';
    this.#deadlines = deadlines;
  }

  get queued(): number {
    return this.#waiting.length;
  }

  /** host:port, for the access log. */
  get address(): string {
    return this.host.includes(':') ? `[${this.host}]:${this.port}` : `${this.host}:${this.port}`;
  }

  get idleCount(): number {
    return this.#idle.length;
  }

  /** Gives `user` a connection now, soon, or tells it why not. */
  acquire(user: PoolWaiter): void {
    const idle = this.#idle.pop();
    if (idle !== undefined) {
      idle.state = BUSY;
      idle.user = user;
      idle.deadline = Infinity;
      user.onUpstream(idle);
      return;
    }
    if (this.#waiting.length >= this.opts.queueMax && this.open >= this.opts.connections) {
      user.onUpstreamFailed('QUEUE_FULL');
      return;
    }
    this.#waiting.push(user);
    this.#since.push(performance.now());
    this.#refill();
  }

  /** A connection that just connected: serve the oldest waiter, or rest. */
  connected(conn: UpstreamConnection): void {
    this.#connecting--;
    this.ready(conn);
  }

  /** A connection that is free: serve the oldest waiter, or rest. */
  ready(conn: UpstreamConnection): void {
    while (this.#waiting.length > 0) {
      const user = this.#waiting.shift()!;
      this.#left(this.#since.shift()!, performance.now());
      if (user.gone) continue;
      conn.state = BUSY;
      conn.user = user;
      conn.deadline = Infinity;
      this.#armQueue();
      user.onUpstream(conn);
      return;
    }
    this.#armQueue();
    this.idle(conn);
  }

  idle(conn: UpstreamConnection): void {
    if (this.#waiting.length > 0) {
      this.ready(conn);
      return;
    }
    conn.state = IDLE;
    conn.deadline = performance.now() + this.opts.idleTimeoutMs;
    this.#idle.push(conn);
  }

  /** A connection closed; `connectError` is set when it never connected. */
  gone(conn: UpstreamConnection, connectError: string): void {
    this.open--;
    this.#deadlines.delete(conn);
    const i = this.#idle.indexOf(conn);
    if (i >= 0) this.#idle.splice(i, 1);
    if (connectError !== '') {
      this.#connecting--;
      // The request that caused the connection is told; if another socket
      // served it meanwhile, the oldest request without a connection of its own is.
      let w = conn.opener === null ? -1 : this.#waiting.indexOf(conn.opener);
      if (w < 0 && this.#waiting.length > this.#connecting) w = 0;
      conn.opener = null;
      if (w >= 0) {
        const user = this.#waiting[w];
        this.#waiting.splice(w, 1);
        this.#left(this.#since[w], performance.now());
        this.#since.splice(w, 1);
        user.onUpstreamFailed(connectError);
      }
    }
    this.#refill();
  }

  /** Waiters without a connection of their own on the way get one, within the cap. */
  #refill(): void {
    this.#armQueue();
    while (!this.closing && this.#waiting.length > this.#connecting && this.open < this.opts.connections) {
      this.#connect(this.#waiting[this.#connecting]);
    }
  }

  /** Queue timeout: the oldest waiters past it get a 503. */
  expire(now: number): void {
    const limit = now - this.opts.queueTimeoutMs;
    while (this.#since.length > 0 && this.#since[0] <= limit) {
      const user = this.#waiting.shift()!;
      this.#left(this.#since.shift()!, now);
      if (!user.gone) user.onUpstreamFailed('QUEUE_TIMEOUT');
    }
    this.#armQueue();
  }

  /** A request left the queue, served or not: its time in it is counted. */
  #left(since: number, now: number): void {
    this.waited.observe((now - since) / 1000);
  }

  #armQueue(): void {
    // Drop waiters that left, so the queue's head is a live one.
    while (this.#waiting.length > 0 && this.#waiting[0].gone) {
      this.#waiting.shift();
      this.#left(this.#since.shift()!, performance.now());
    }
    if (this.#waiting.length > 0) {
      this.deadline = this.#since[0] + this.opts.queueTimeoutMs;
      this.#deadlines.add(this);
    } else if (this.deadline !== Infinity) {
      this.deadline = Infinity;
      this.#deadlines.delete(this);
    }
  }

  #connect(opener: PoolWaiter): void {
    this.open++;
    this.#connecting++;
    const socket = this.tls
      // node:tls is loaded only for https:// backends.
      ? process.getBuiltinModule('node:tls').connect({ host: this.host, port: this.port, servername: this.servername || undefined, ca: this.opts.ca ?? undefined, ALPNProtocols: ['http/1.1'] })
      : netConnect({ host: this.host, port: this.port, onread: READ_INTO });
    const conn = new UpstreamConnection(this, socket, opener, performance.now());
    this.#deadlines.add(conn);
  }

  /** Closes idle connections and refuses waiters; busy ones finish their request, then close. */
  close(): void {
    this.closing = true;
    for (const c of this.#idle.splice(0)) c.destroy();
    for (const u of this.#waiting.splice(0)) if (!u.gone) u.onUpstreamFailed('CLOSED');
    this.#since.length = 0;
    this.#armQueue();
  }
}
