// One request's trip through the proxy, as a single object over one context,
// in named phases (as Pingora's ProxyHttp has them):
//   start       affinity lookup, or straight to the balancer without a session cookie
//   onAffinity  route: bound, moved, remembered, fallback or balanced
//   dispatch    a connection from the backend's pool (or a wait in its queue)
//   onUpstream  the head, then the body, go out; 100 Continue when asked
//   responseHead  framing, the learn (the head is held until stored), adoption
//   responseBody  bytes stream to the client as views of what was received
//   finish      the connection goes back to the pool, the access log line
// Bodies flow both ways with backpressure: a full client pauses the backend's
// socket, a full backend pauses the client's. Failures before any response
// byte may be retried on another backend; after one, the client sees a cut.
import { Buffer } from 'node:buffer';
import { performance } from 'node:perf_hooks';
import type { LearnWaiter, LookupWaiter } from './affinity.ts';
import type { Backend } from './backends.ts';
import type { LookupOutcome } from './batch.ts';
import type { ClientConnection } from './client.ts';
import type { ProxyContext } from './context.ts';
import type { Logger } from './log.ts';
import { CLIENT_CLOSE, CLIENT_KEEP, CLIENT_KEEP_10, clientHead, withHost, type BuiltHead } from './head.ts';
import { ChunkedReader, type ChunkSink } from './http/chunked.ts';
import { BODY_CHUNKED, BODY_CLOSE, BODY_LENGTH, BODY_NONE, ResponseHead, parseResponseHead } from './http/response.ts';
import { sessionSetCookies, setsCookie } from './learn.ts';
import { CONTINUE, reply } from './replies.ts';
import { rendezvous } from './balance.ts';
import { freeRead, unshared } from './read-regions.ts';
import { route, type Route, type Routed } from './route.ts';
import { Tunnel } from './upgrade.ts';
import type { PoolWaiter, UpstreamConnection } from './upstream.ts';

// Connect failures where the request cannot have reached the backend: any method may be retried.
const NOT_SENT = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN']);

const RES_HEAD = 0;
const RES_BODY = 1;
const RES_DONE = 2;
/** Body bytes held while a learn is stored before the backend's socket is paused. */
const HOLD_MAX = 64 * 1024;
/**
 * Held body bytes up to this are copied: a view would keep the backend
 * socket's whole read region from being read into again once it is used up,
 * and under the seed load nearly every region would hold some learn's view
 * (a new region allocated every few dozen answers).
 */
const HOLD_COPY_MAX = 4 * 1024;

// One parsed response head at a time: it is consumed before the next is parsed.
const RES = new ResponseHead();

/** What the request's head told, kept after the parser moved on. */
export interface RequestFacts {
  method: string;
  idempotent: boolean;
  isHead: boolean;
  /** HTTP/1.x minor version of the client. */
  minor: number;
  keepAlive: boolean;
  /** A protocol switch (Upgrade with Connection: upgrade). */
  upgrade: boolean;
  expectContinue: boolean;
  /** The session keys the request carries ('\n'-joined), '' when none. */
  keys: string;
  /** Request body: -1 none, else its Content-Length; chunked wins when set. */
  contentLength: number;
  chunked: boolean;
  /** The request-target is --monitor-uri: the proxy answers it. */
  monitor: boolean;
}

export class Forward implements LookupWaiter, LearnWaiter, PoolWaiter, ChunkSink, Routed {
  readonly client: ClientConnection;
  readonly ctx: ProxyContext;
  readonly head: BuiltHead;
  readonly req: RequestFacts;
  readonly t0 = performance.now();
  /** What the access log says of the request; null when it is off. */
  readonly facts: AccessFacts | null;
  // Request body.
  #bodyLeft: number;
  #chunks: ChunkedReader | null;
  bodyDone: boolean;
  #pending: Buffer[] | null = null;
  #bodySent = false;
  // Routing.
  boundKey = '';
  route: Route = 'none';
  backend: Backend | null = null;
  #attempts = 0;
  #released = true;
  #staleRetried = false;
  upstream: UpstreamConnection | null = null;
  // Response.
  #res = RES_HEAD;
  #resBuf: Buffer | null = null;
  #resBytes = 0;
  #framing = BODY_NONE;
  #resLeft = 0;
  #resChunks: ChunkedReader | null = null;
  #dechunk = false;
  #reusable = false;
  /** The client is not taking the answer: the backend is paused, and a timeout now is the client's. */
  #clientStalled = false;
  status = 0;
  /** The answer's head went out to the client. */
  started = false;
  /**
   * While a backend's read that brought a head is handled: its bytes before
   * the body (the backend's head, parsed), which the client's head may take
   * (#room, in #roomBuf), -1 when no body bytes came with the head; and the
   * length of the client's head placed there, not yet written (#placed).
   */
  #room = -1;
  #roomBuf: Buffer | null = null;
  #placed = 0;
  #corked = false;
  /** The head and body views held while a learn is stored. */
  #held: Buffer[] | null = null;
  /** Body bytes among them. */
  #heldBytes = 0;
  /** Some held bytes are a view of what the backend sent (not copied). */
  #heldViews = false;
  #keepClient = true;
  #learning = false;
  // Accounting, for the access log and metrics.
  bytesIn = 0;
  bytesOut = 0;
  tHead = 0;
  /** Time to connect to the backend, -1 before a connection; 0 for a kept-alive one. */
  connectMs = -1;
  retries = 0;
  termination = '';
  done = false;
  gone = false;

  constructor(client: ClientConnection, head: BuiltHead, req: RequestFacts, facts: AccessFacts | null) {
    this.client = client;
    this.ctx = client.ctx;
    this.head = head;
    this.req = req;
    this.facts = facts;
    this.#chunks = req.chunked ? new ChunkedReader() : null;
    this.#bodyLeft = req.chunked ? 0 : Math.max(0, req.contentLength);
    this.bodyDone = !req.chunked && this.#bodyLeft === 0;
  }

  // ------------------------------------------------------------------ routing

  start(): void {
    if (this.req.monitor) {
      this.#answer(this.ctx.backends.list.some((b) => b.up) ? 200 : 503, 'monitor-uri');
      return;
    }
    if (this.req.keys === '') this.#dispatch(this.ctx.balancer.pick());
    else this.ctx.affinity.lookup(this.req.keys, this);
  }

  onAffinity(outcome: LookupOutcome, backend: string, key: string): void {
    if (this.done) return;
    this.#dispatch(route(this.ctx, outcome, backend, key || firstKey(this.req.keys), this));
  }

  #dispatch(b: Backend | null): void {
    if (b === null) {
      this.#answer(503, 'no backend available');
      return;
    }
    this.backend = b;
    this.#attempts++;
    this.#released = false;
    b.begin();
    b.pool.acquire(this);
  }

  // ------------------------------------------------------------------ request

  onUpstream(conn: UpstreamConnection): void {
    this.upstream = conn;
    const b = this.backend!;
    if (conn.uses === 0) {
      this.connectMs = conn.connectedAt - conn.openedAt;
      b.stats.connect.observe(this.connectMs / 1000);
    } else {
      this.connectMs = 0;
    }
    const head = this.head;
    let bytes = head.bytes;
    if (this.ctx.rewriteHost || head.hostEnd === head.hostStart) bytes = withHost(head, b.hostHeader);
    const sock = conn.socket;
    const pending = this.#pending;
    // A client waiting on Expect: 100-continue sends its body once told to.
    if (this.req.expectContinue && !this.bodyDone && pending === null && !this.started) this.client.write(CONTINUE);
    if (pending === null) {
      sock.write(bytes);
    } else {
      sock.cork();
      sock.write(bytes);
      for (let i = 0; i < pending.length; i++) sock.write(pending[i]);
      sock.uncork();
      this.#pending = null;
      this.#bodySent = true;
    }
    if (this.bodyDone) conn.waitFor(this.ctx.upstreamHeaderTimeoutMs);
    else conn.noDeadline();
    this.client.bodyFlowing(true);
  }

  /**
   * Request body bytes buf[s, e). Returns where the body ends within them (e
   * when it goes on), or -1 when it was refused: its chunked framing is
   * malformed (400), or its chunks outgrow --max-body-size (413).
   */
  clientBody(buf: Buffer, s: number, e: number): number {
    let end: number;
    const chunks = this.#chunks;
    if (chunks !== null) {
      end = chunks.feed(buf, s, e);
      if (end < 0) {
        this.#refuseBody(400, 'malformed chunked body');
        return -1;
      }
      // Refused at the size line that outgrows the limit, before any of that chunk goes upstream.
      if (chunks.total > this.ctx.maxBodyBytes) {
        this.#refuseBody(413, 'request body over --max-body-size');
        return -1;
      }
      if (chunks.done) this.bodyDone = true;
    } else {
      end = Math.min(e, s + this.#bodyLeft);
      this.#bodyLeft -= end - s;
      if (this.#bodyLeft === 0) this.bodyDone = true;
    }
    if (end > s) this.#sendBody(end - s === buf.length ? buf : buf.subarray(s, end));
    if (this.bodyDone && this.upstream !== null && this.#res === RES_HEAD) this.upstream.waitFor(this.ctx.upstreamHeaderTimeoutMs);
    return end;
  }

  #sendBody(view: Buffer): void {
    this.bytesIn += view.length;
    // Bytes in the client's shared scratch buffer (a small or slow body's) are copied: the next read overwrites them.
    view = unshared(view);
    const up = this.upstream;
    if (up !== null) {
      this.#bodySent = true;
      const s = up.socket;
      const flowing = s.write(view);
      // Written whole: its read buffer is freed now, not at some later collection.
      if (s.writableLength === 0) freeRead(view);
      else this.client.readKept = true;
      if (!flowing) {
        this.client.bodyFlowing(false);
        // A backend that stops taking the body before it answers: its timeout, not the client's (504).
        if (this.#res === RES_HEAD && !this.bodyDone) up.waitFor(this.ctx.upstreamBodyTimeoutMs);
      }
    } else {
      (this.#pending ??= []).push(view);
      this.client.readKept = true;
      this.client.bodyFlowing(false);
    }
  }

  upstreamDrained(): void {
    if (this.done) return;
    if (!this.bodyDone && this.#res === RES_HEAD) this.upstream?.noDeadline();
    this.client.bodyFlowing(true);
  }

  /** The request body is refused (malformed, or too large): nothing more goes upstream. */
  #refuseBody(status: number, why: string): void {
    if (this.done) return;
    this.ctx.log.info({ status, reason: why, remote: this.client.address }, 'client error');
    this.ctx.stats.clientErrors[status]++;
    this.termination = 'client protocol error';
    if (!this.started && this.#held === null) {
      this.#abandon();
      this.#answer(status, why, true);
    } else {
      this.client.destroy();
    }
  }

  /** The client stopped sending its body (the body-silence timeout): 408, and the upstream connection is freed. */
  bodyTimedOut(): void {
    if (this.done) return;
    this.termination = 'client timeout';
    this.ctx.stats.clientErrors[408]++;
    if (!this.started && this.#held === null) {
      this.#abandon();
      this.#answer(408, 'request body timeout', true);
    } else {
      this.client.destroy();
    }
  }

  // ----------------------------------------------------------------- response

  /** True when nothing of `chunk` is kept: what was not dropped is in the kernel's hands (its memory may be freed). */
  upstreamData(chunk: Buffer): boolean {
    if (this.done) return true;
    this.#resBytes += chunk.length;
    if (this.#res === RES_BODY) {
      this.#responseBody(chunk, 0, chunk.length);
      return this.#nothingKept();
    }
    if (this.#res !== RES_HEAD) {
      this.#reusable = false; // bytes past the response: the connection is not sound
      return true;
    }
    let buf = chunk;
    let base = 0; // where `chunk` starts within `buf`
    if (this.#resBuf !== null) {
      // A head split across reads: only head bytes are copied, once.
      base = this.#resBuf.length;
      buf = Buffer.concat([this.#resBuf, chunk]);
      this.#resBuf = null;
    }
    let start = 0;
    for (;;) {
      const r = parseResponseHead(RES, buf, start, buf.length);
      if (r === 0) {
        this.#resBuf = start === 0 ? buf : buf.subarray(start);
        return false;
      }
      if (r < 0) {
        this.#brokenResponse(RES.reason);
        return false;
      }
      if (RES.status >= 200) {
        start = r;
        break;
      }
      if (RES.status === 101) {
        if (!this.req.upgrade) {
          this.#brokenResponse('101 to a request that asked no upgrade');
          return false;
        }
        this.#switchProtocols(buf, r);
        return false;
      }
      start = r; // other 1xx are news for this hop only
    }
    // The head and the body bytes that came with it leave in one write: one
    // view, the client's head written over the backend's just before the
    // body, when it fits there (#responseHead); else both, corked.
    const more = start < buf.length;
    this.#room = !more ? -1 : base === 0 ? start : 0;
    this.#roomBuf = chunk;
    this.#responseHead(more);
    // Body bytes that came with the head are views of the received chunk, not
    // copies: a head split across reads ends in this one, so they all lie in it.
    if (more && !this.done) this.#responseBody(chunk, start - base, chunk.length);
    this.#flushPlaced();
    this.#room = -1;
    this.#roomBuf = null;
    if (this.#corked) {
      this.#corked = false;
      this.client.uncork();
    }
    return this.#nothingKept();
  }

  /** No view of what the backend sent is held for a learn or queued for the client. */
  #nothingKept(): boolean {
    return (this.#held === null || !this.#heldViews) && this.client.flushed;
  }

  /** `more`: bytes came after the head in the same read (the body's, or past a bodiless answer). */
  #responseHead(more: boolean): void {
    const b = this.backend!;
    const up = this.upstream!;
    const ctx = this.ctx;
    const status = RES.status;
    this.status = status;
    this.tHead = performance.now();
    this.#framing = RES.framing(this.req.isHead);
    this.#reusable = RES.reusable;
    // Gateway answers count against the backend; an app's own 500 only where the operator says so.
    if (status === 502 || status === 503 || status === 504) ctx.health.failure(b, `status ${status}`, false);
    else if (status === 500) ctx.health.failure(b, 'status 500', true);
    else ctx.health.success(b);
    b.stats.statuses[status < 600 ? status : 599]++;
    b.stats.latency.observe((this.tHead - this.t0) / 1000);
    const req = this.req;
    // The client connection goes on only when both sides allow it and the framing tells where the answer ends.
    let mode = req.minor === 1 ? CLIENT_KEEP : CLIENT_KEEP_10;
    if (!req.keepAlive || ctx.closing || this.#framing === BODY_CLOSE || !this.bodyDone || this.client.ending) mode = CLIENT_CLOSE;
    if (req.minor === 0 && this.#framing === BODY_CHUNKED) {
      this.#dechunk = true;
      mode = CLIENT_CLOSE;
    }
    this.#keepClient = mode !== CLIENT_CLOSE;
    const chunkedOut = this.#framing === BODY_CHUNKED && !this.#dechunk;
    if (this.#framing === BODY_CHUNKED) this.#resChunks = new ChunkedReader();
    else if (this.#framing === BODY_LENGTH) this.#resLeft = RES.contentLength;
    const out = clientHead(RES, chunkedOut, mode);
    this.#res = this.#framing === BODY_NONE ? RES_DONE : RES_BODY;
    const setCookies = sessionSetCookies(RES, ctx.names);
    if (req.keys !== '' && ctx.adopt && this.boundKey === '' && status >= 200 && status < 400) this.#adopt(b);
    if (setCookies !== null) {
      // The head waits until its session is stored, so the client's next
      // request finds the binding through any loop, worker or instance.
      this.#held = [out];
      this.#heldBytes = 0;
      this.#heldViews = false;
      this.#learning = true;
      ctx.affinity.learn(b.name, setCookies, req.keys, this.boundKey, this);
    } else if (out.length <= this.#room && this.#res === RES_BODY) {
      // The backend's head is read: its bytes take the client's, written with the body that follows them.
      this.#roomBuf!.set(out, this.#room - out.length);
      this.#placed = out.length;
      this.started = true;
    } else {
      if (this.#room >= 0) {
        this.#corked = true;
        this.client.cork();
      }
      this.#out(out);
    }
    if (this.#res === RES_DONE) {
      // Bytes past a bodiless answer: the connection is out of step with its requests.
      if (more) this.#reusable = false;
      this.#complete();
    } else {
      this.#waitBody();
    }
  }

  /** The backend accepted a session id it was sent without a binding: bind it there. */
  #adopt(b: Backend): void {
    const names = this.ctx.names;
    const key = firstKey(this.req.keys);
    const colon = key.indexOf(':');
    const index = names.names.indexOf(key.slice(0, colon));
    // A new id for that cookie means the app did not accept the one it got.
    if (index >= 0 && !setsCookie(RES, names, index)) this.ctx.affinity.bind(key, b.name, 'adopt');
  }

  #responseBody(buf: Buffer, s: number, e: number): void {
    switch (this.#framing) {
      case BODY_LENGTH: {
        const n = Math.min(this.#resLeft, e - s);
        this.#outFrom(buf, s, s + n);
        this.#resLeft -= n;
        if (s + n < e) this.#reusable = false;
        if (this.#resLeft === 0) this.#complete();
        else this.#waitBody();
        return;
      }
      case BODY_CHUNKED: {
        const r = this.#resChunks!.feed(buf, s, e, this.#dechunk ? this : null);
        if (r < 0) {
          this.#brokenResponse(`bad chunked body: ${this.#resChunks!.error}`);
          return;
        }
        if (!this.#dechunk && r > s) this.#outFrom(buf, s, r);
        if (this.#resChunks!.done) {
          if (r < e) this.#reusable = false;
          this.#complete();
        } else {
          this.#waitBody();
        }
        return;
      }
      case BODY_CLOSE:
        this.#outFrom(buf, s, e);
        this.#waitBody();
        return;
      default:
        if (e > s) this.#reusable = false;
    }
  }

  /**
   * The answer's next bytes: within the backend's silence timeout, or, while
   * the client is not taking what it was sent (the backend paused), within the
   * client's: then the wait is the client's doing.
   */
  #waitBody(): void {
    this.upstream!.waitFor(this.#clientStalled ? this.ctx.clientBodyTimeoutMs : this.ctx.upstreamBodyTimeoutMs);
  }

  /** Chunk data for an HTTP/1.0 client, which gets the body without chunked framing. */
  chunkData(buf: Buffer, start: number, end: number): void {
    this.#out(buf.subarray(start, end));
  }

  /** Body bytes buf[s, e) as #out takes them: with a head placed just before them, one view of both, made once. */
  #outFrom(buf: Buffer, s: number, e: number): void {
    const placed = this.#placed;
    if (placed > 0 && buf === this.#roomBuf && s === this.#room) {
      this.#placed = 0;
      this.#write(Buffer.from(buf.buffer, buf.byteOffset + s - placed, placed + e - s));
      return;
    }
    this.#out(s === 0 && e === buf.length ? buf : buf.subarray(s, e));
  }

  /** Writes to the client, or holds while a learn is stored; a full client pauses the backend. */
  #out(view: Buffer): void {
    if (this.#held !== null) {
      if (this.#heldBytes + view.length <= HOLD_COPY_MAX) {
        const held = this.#held;
        if (held.length === 1 && this.#heldBytes === 0) {
          // The head and the first body bytes in one buffer, released in one write.
          const head = held[0];
          const both = Buffer.allocUnsafe(head.length + view.length);
          both.set(head, 0);
          both.set(view, head.length);
          held[0] = both;
        } else {
          held.push(Buffer.from(view));
        }
      } else {
        this.#held.push(view);
        this.#heldViews = true;
      }
      // Most answers that set a session end in the read that brought their
      // head: the backend is paused only for one that goes on, at a bound.
      this.#heldBytes += view.length;
      if (this.#heldBytes >= HOLD_MAX) this.upstream?.socket.pause();
      return;
    }
    const placed = this.#placed;
    if (placed > 0) {
      // Bytes that do not follow the placed head (a chunked body's data,
      // dechunked for HTTP/1.0): the head, then they and the rest of this
      // read's, corked until upstreamData is done with it.
      this.#placed = 0;
      this.#corked = true;
      this.client.cork();
      this.#write(this.#roomBuf!.subarray(this.#room - placed, this.#room));
    }
    this.#write(view);
  }

  #write(view: Buffer): void {
    this.started = true;
    this.bytesOut += view.length;
    if (this.client.write(view)) return;
    const up = this.upstream;
    if (up === null) return;
    up.socket.pause();
    this.#clientStalled = true;
    up.waitFor(this.ctx.clientBodyTimeoutMs);
  }

  /** A placed head that no body bytes followed goes out alone (unless the exchange was cut meanwhile). */
  #flushPlaced(): void {
    const placed = this.#placed;
    if (placed === 0) return;
    this.#placed = 0;
    if (!this.done) this.#write(this.#roomBuf!.subarray(this.#room - placed, this.#room));
  }

  /** The client can take more. */
  clientDrained(): void {
    if (this.done) return;
    const up = this.upstream;
    if (this.#clientStalled) {
      this.#clientStalled = false;
      if (this.#res === RES_BODY && up !== null) up.waitFor(this.ctx.upstreamBodyTimeoutMs);
    }
    if (this.#held === null && up !== null) up.socket.resume();
  }

  onLearned(replaced: boolean): void {
    const b = this.backend;
    if (replaced && b !== null) {
      const r = this.ctx.stats.replaced;
      r.set(b.name, (r.get(b.name) ?? 0) + 1);
      this.ctx.log.debug({ backend: b.name }, 'session replaced: a bound request was answered with a new session id');
    }
    this.#learning = false;
    const held = this.#held;
    if (held === null || this.done) return;
    this.#held = null;
    if (held.length === 1) {
      this.#out(held[0]);
    } else {
      this.client.cork();
      for (let i = 0; i < held.length; i++) this.#out(held[i]);
      this.client.uncork();
    }
    if (this.#res === RES_DONE) this.#finish();
    else if (this.client.canWrite) this.upstream?.socket.resume();
  }

  #complete(): void {
    this.#res = RES_DONE;
    if (!this.#learning) this.#finish();
  }

  /** The answer is complete: the connection goes back to the pool, the client's goes on. */
  #finish(): void {
    if (this.done) return;
    this.#flushPlaced();
    this.done = true;
    const up = this.upstream;
    this.upstream = null;
    if (up !== null) up.release(this.#reusable && this.bodyDone && this.#framing !== BODY_CLOSE);
    this.#release();
    this.#log();
    this.client.forwardDone(this, this.#keepClient);
  }

  // ------------------------------------------------------------------- faults

  upstreamEnd(): void {
    // A close-delimited body ends here; anything else is cut short, and the close that follows says so.
    if (this.#res === RES_BODY && this.#framing === BODY_CLOSE) {
      this.#reusable = false;
      this.#complete();
    }
  }

  upstreamClosed(code: string): void {
    if (this.done) return;
    const up = this.upstream;
    this.upstream = null;
    // An answer already complete (held while its learn is stored, say) is whole; a close-delimited body ends here.
    if (this.#res === RES_DONE || (this.#res === RES_BODY && this.#framing === BODY_CLOSE)) {
      this.#reusable = false;
      this.#complete();
      return;
    }
    const b = this.backend!;
    if (this.#res === RES_HEAD && this.#resBytes === 0) {
      // No response byte: the connection failed under the request.
      const reused = up !== null && up.reused;
      b.stats.connectionErrors++;
      if (reused && !this.#staleRetried && this.req.idempotent && !this.#bodySent) {
        // A kept-alive socket the backend had closed meanwhile: once more, on a fresh one.
        this.#staleRetried = true;
        b.pool.acquire(this);
        return;
      }
      this.ctx.health.failure(b, code || 'connection closed', false);
      this.#retryOrFail(code || 'ECONNRESET', false);
      return;
    }
    this.#brokenResponse(code || 'connection closed mid-response');
  }

  onUpstreamFailed(code: string): void {
    if (this.done) return;
    const b = this.backend!;
    if (code === 'QUEUE_FULL' || code === 'QUEUE_TIMEOUT' || code === 'CLOSED') {
      b.stats.queueRefused++;
      this.ctx.log.warn({ backend: b.name, reason: code }, 'backend queue: request refused');
      this.#release();
      this.#answer(503, code === 'QUEUE_TIMEOUT' ? 'queue timeout' : 'backend busy');
      return;
    }
    b.stats.connectionErrors++;
    this.ctx.health.failure(b, code, false);
    this.#retryOrFail(code, true);
  }

  upstreamTimeout(): void {
    if (this.done) return;
    const b = this.backend!;
    if (this.#res === RES_HEAD && !this.started) {
      this.ctx.log.warn({ backend: b.name, status: 504 }, 'backend timed out');
      this.ctx.health.failure(b, 'timeout', false);
      this.termination = 'upstream timeout';
      this.#abandon();
      this.#answer(504, 'backend timed out');
      return;
    }
    if (this.#clientStalled) {
      // The backend was paused: the client took nothing of its answer for --client-body-timeout.
      this.termination = 'client timeout';
      this.ctx.log.info({ backend: b.name, remote: this.client.address }, 'client stopped taking its answer; connection cut');
      this.#abandon();
      this.#cut();
      return;
    }
    this.termination = 'upstream timeout';
    this.ctx.log.warn({ backend: b.name }, 'backend went silent mid-response; client connection cut');
    this.#abandon();
    this.#cut();
  }

  /** Retries on another backend when allowed, else 502 (504 for a connect timeout). */
  #retryOrFail(code: string, connectFailed: boolean): void {
    const b = this.backend!;
    this.#release();
    // A body that began to flow cannot be replayed; a request the backend may have received is replayed only if idempotent.
    const mayRetry = this.#attempts <= this.ctx.retries && !this.#bodySent && !this.started
      && (this.req.idempotent || (connectFailed && NOT_SENT.has(code)));
    if (mayRetry) {
      const next = this.#another(b);
      if (next !== null) {
        this.retries++;
        b.stats.retries++;
        this.ctx.log.warn({ backend: b.name, retryOn: next.name, code, method: this.req.method }, 'backend connection failed; retrying');
        if (this.boundKey !== '') this.ctx.affinity.bind(this.boundKey, next.name, 'bind');
        this.#dispatch(next);
        return;
      }
    }
    const timeout = code === 'ETIMEDOUT';
    this.termination = timeout ? 'upstream timeout' : 'upstream failed';
    this.ctx.log.warn({ backend: b.name, code, status: timeout ? 504 : 502 }, timeout ? 'backend timed out' : 'backend failed');
    this.#answer(timeout ? 504 : 502, timeout ? 'backend timed out' : 'bad gateway');
  }

  /** Where a retry goes: a session to the backend every instance would move it to; anything else to the balancer. */
  #another(failed: Backend): Backend | null {
    const key = this.boundKey || firstKey(this.req.keys);
    if (key !== '') return rendezvous(key, this.ctx.backends.list, failed);
    const n = this.ctx.backends.list.length;
    for (let i = 0; i < n; i++) {
      const b = this.ctx.balancer.pick();
      if (b === null) return null;
      if (b !== failed) return b;
    }
    return null;
  }

  /** A malformed or cut response: 502 if the client has seen nothing yet, else a cut. */
  #brokenResponse(why: string): void {
    const b = this.backend!;
    this.ctx.health.failure(b, why, false);
    this.termination = 'upstream protocol error';
    this.#abandon();
    if (!this.started) {
      this.ctx.log.warn({ backend: b.name, reason: why, status: 502 }, 'backend answer malformed');
      this.#held = null;
      this.#answer(502, 'bad gateway');
    } else {
      // Part of the answer is out: the client must see it cut, not complete.
      this.ctx.log.warn({ backend: b.name, reason: why }, 'backend failed mid-response; client connection cut');
      this.#cut();
    }
  }

  #switchProtocols(buf: Buffer, headEnd: number): void {
    const up = this.upstream!;
    this.status = 101;
    this.tHead = performance.now();
    this.started = true;
    this.done = true;
    this.upstream = null;
    const out = clientHead(RES, false, CLIENT_KEEP);
    const rest = headEnd < buf.length ? buf.subarray(headEnd) : null;
    // The tunnel keeps the backend's active count until it closes.
    this.#released = true;
    this.backend!.stats.statuses[101]++;
    // Its access line is written when the tunnel closes, with the tunnel's bytes and time (tunnelEnded).
    new Tunnel(this, up, out, rest);
  }

  /** The tunnel this request became has closed: its access line, with what went through it. */
  tunnelEnded(bytesIn: number, bytesOut: number, term: string): void {
    this.bytesIn += bytesIn;
    this.bytesOut += bytesOut;
    this.termination = term;
    this.#log();
  }

  /** The client went away before the answer was complete. */
  abort(): void {
    if (this.done) return;
    this.gone = true;
    this.termination = this.termination || 'client aborted';
    this.ctx.stats.clientAborts++;
    this.#abandon();
    this.done = true;
    this.#release();
    this.#log();
  }

  /** Drops the upstream connection: it is in an unknown state. */
  #abandon(): void {
    this.gone = true;
    const up = this.upstream;
    this.upstream = null;
    if (up !== null) up.destroy();
    this.#held = null;
  }

  #cut(): void {
    this.done = true;
    this.#release();
    this.#log();
    this.client.destroy();
  }

  /** The backend no longer serves this request (once per dispatch). */
  #release(): void {
    if (this.#released || this.backend === null) return;
    this.#released = true;
    const b = this.backend;
    b.end();
    b.stats.bytesIn += this.bytesIn;
    b.stats.bytesOut += this.bytesOut;
  }

  /** The proxy's own answer (502, 503, 504, 400, 408) when the client has seen nothing of one. */
  #answer(status: number, reason: string, close = false): void {
    this.#release();
    this.done = true;
    this.status = status;
    this.tHead = performance.now();
    const keep = !close && this.bodyDone && this.req.keepAlive && !this.ctx.closing && !this.client.ending;
    const stats = this.backend === null || status === 400 || status === 408 ? this.ctx.stats.none : this.backend.stats;
    stats.statuses[status]++;
    if (this.termination === '') this.termination = reason;
    const answer = reply(status, !keep, this.req.isHead);
    this.bytesOut += answer.length;
    this.client.write(answer);
    this.started = true;
    this.#log();
    this.client.forwardDone(this, keep);
  }

  /** The access log line, written at completion (or abort). */
  #log(): void {
    const access = this.ctx.access;
    const f = this.facts;
    if (access === null || f === null) return;
    const now = performance.now();
    const up = this.backend;
    access.info({
      id: f.id,
      client: this.client.address,
      method: this.req.method,
      host: f.host,
      path: f.path,
      status: this.status,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      ms: round(now - this.t0),
      headMs: this.tHead === 0 ? null : round(this.tHead - this.t0),
      connectMs: this.connectMs < 0 ? null : round(this.connectMs),
      backend: up === null ? 'none' : up.name,
      addr: up === null ? null : up.pool.address,
      affinity: this.route,
      retries: this.retries,
      term: this.termination || 'ok',
      ua: f.userAgent,
    });
  }
}

/** What the access log keeps of a request, taken from its head while it was at hand. */
export interface AccessFacts {
  /** The request id: the one sent upstream, else a new one. */
  id: string;
  host: string;
  /** The path without query or ;parameters: session ids travel there too (;jsessionid=). */
  path: string;
  userAgent: string;
}

/**
 * The access log line of a head the proxy refused (400, 408, 431, 414, 501,
 * 505): the fields of every line, with what is known of a request that never
 * began; `method` and `facts` are null when its request line was not read.
 */
export function logRefused(access: Logger, id: string, client: string, method: string | null, facts: AccessFacts | null, status: number, ms: number, bytesOut: number, term: string, reason: string): void {
  access.info({
    id,
    client,
    method,
    host: facts === null ? null : facts.host,
    path: facts === null ? null : facts.path,
    status,
    bytesIn: 0,
    bytesOut,
    ms: round(ms),
    headMs: null,
    connectMs: null,
    backend: 'none',
    addr: null,
    affinity: 'none',
    retries: 0,
    term,
    ua: facts === null ? null : facts.userAgent,
    reason,
  });
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}

function firstKey(keys: string): string {
  const nl = keys.indexOf('\n');
  return nl < 0 ? keys : keys.slice(0, nl);
}
