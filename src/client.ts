// One client connection: it reads request heads with the strict parser,
// starts a Forward for each, feeds it the request body, and answers pipelined
// requests one at a time, in order: bytes after a request wait until its
// answer is complete (reading stops once READ_AHEAD bytes wait). Malformed
// heads get their 4xx and a close, after the answers of the requests before
// them. Its handlers are methods reached through the socket, not closures.
import { Buffer } from 'node:buffer';
import { performance } from 'node:perf_hooks';
import type { Socket } from 'node:net';
import type { ProxyContext } from './context.ts';
import { sessionKeys } from './cookies.ts';
import type { Timed } from './deadlines.ts';
import { Forward, logRefused, type AccessFacts, type RequestFacts } from './forward.ts';
import { upstreamHead, type RequestHeadOptions } from './head.ts';
import { PP_MORE, PP_REASONS, ProxyHeader, parseProxyHeader } from './proxy-protocol.ts';
import { K_COOKIE, RequestHead, parseRequestHead } from './http/request.ts';
import { freeClientRead, isScratch, nextClientRead, readThrough, unshared } from './read-regions.ts';
import { reply } from './replies.ts';
import type { Tunnel } from './upgrade.ts';

interface OwnedSocket extends Socket {
  owner: ClientConnection;
}

const HEAD = 0;
const ACTIVE = 1;
const TUNNEL = 2;
const CLOSING = 3;
/** --accept-proxy: waiting for the PROXY protocol header. */
const PREAMBLE = 4;

// Why reading is paused: the backend is not taking the body yet, enough is
// read ahead, or the client is not taking its answers (no next request
// starts until it does, so pipelined requests cannot pile answers up here).
const PAUSE_BODY = 1;
const PAUSE_AHEAD = 2;
const PAUSE_OUTPUT = 4;
/** Bytes read beyond the request being served before reading stops. */
const READ_AHEAD = 64 * 1024;
/**
 * After the proxy closes its side, what the client still sends is read and
 * dropped for this long, so its unread bytes do not turn the close into a
 * reset that could destroy the answer before the client reads it.
 */
const LINGER_MS = 2000;

// One head is parsed at a time; its facts are taken before the next parse.
let parsed: RequestHead | null = null;
let cookieStarts = new Int32Array(8);
let cookieEnds = new Int32Array(8);
// The upstream head is built at once from these, so one object serves every request.
const headOptions: RequestHeadOptions = { clientAddress: '', proto: 'http', forwarded: false, trusted: false, requestId: null };
// One PROXY header is read at a time; its address is taken at once.
const proxyHeader = new ProxyHeader();

export class ClientConnection implements Timed {
  readonly socket: OwnedSocket;
  readonly ctx: ProxyContext;
  forward: Forward | null = null;
  tunnel: Tunnel | null = null;
  deadline: number;
  /** The client half-closed: answer what it asked, then close. */
  ending = false;
  #state = HEAD;
  /** Received bytes not yet consumed: a partial head, or what follows the request being served. */
  #rest: Buffer | null = null;
  /** How far the partial head in #rest was validated already; -1 for a head not yet seen. */
  #checked = -1;
  #headTimer = false;
  /** When the head being received began (set with #headTimer), for a refused head's access log line. */
  #headAt = 0;
  #pauses = 0;
  #parsing = false;
  #address: string | null = null;
  /** Whether the peer is a --trusted-proxy: 1 or 0; -1 until the first request asks. */
  #trust = -1;
  /** performance.now() when the connection last became idle (a restart closes those idle long enough). */
  idleSince: number;
  /** Something of the read being handled is kept past its callback (a socket reading through onRead): its buffer is not freed. */
  readKept = false;

  /** `proxied`: with TLS, the PROXY header was read before the handshake (src/accept.ts); its address, '' for none. */
  constructor(socket: Socket, ctx: ProxyContext, proxied: string | null = null) {
    this.ctx = ctx;
    this.socket = socket as OwnedSocket;
    this.socket.owner = this;
    // A connection that says nothing is cut at the header timeout.
    this.idleSince = performance.now();
    this.deadline = this.idleSince + ctx.clientHeaderTimeoutMs;
    // A plain socket is accepted paused to read through onRead (read-regions.ts); a TLS socket's reads are its decryptions.
    if (socket.readableFlowing !== false) {
      socket.on('data', onData);
    } else if (!readThrough(this.socket, onRead)) {
      socket.on('data', onData);
      socket.resume();
    }
    socket.on('end', onEnd);
    socket.on('close', onClose);
    socket.on('error', onError);
    socket.on('drain', onDrain);
    // The PROXY header must come first, within the header timeout; without --accept-proxy this is one test per connection.
    if (ctx.acceptProxy) {
      if (proxied === null) this.#state = PREAMBLE;
      else if (proxied !== '') this.#address = proxied;
    }
    ctx.clients.add(this);
    ctx.deadlines.add(this);
    // Counted already: the acceptor admitted it (SharedState.admit).
  }

  get address(): string {
    return this.#address ??= this.socket.remoteAddress ?? '';
  }

  /** The peer (after a PROXY header) is a --trusted-proxy; decided once per connection. */
  get trusted(): boolean {
    if (this.#trust < 0) {
      const list = this.ctx.trusted;
      const a = this.address;
      this.#trust = list !== null && list.check(a, a.includes(':') ? 'ipv6' : 'ipv4') ? 1 : 0;
    }
    return this.#trust === 1;
  }

  /** True while the client takes what is written without buffering beyond its high-water mark. */
  get canWrite(): boolean {
    return !this.socket.writableNeedDrain;
  }

  /** Everything written so far is in the kernel's hands: no view of it is queued here. */
  get flushed(): boolean {
    return this.socket.writableLength === 0;
  }

  /** Reads now are a request body's or a tunnel's: a stream of them goes into buffers of its own, forwarded as views. */
  get streaming(): boolean {
    return this.#state === TUNNEL || (this.#state === ACTIVE && this.forward !== null && !this.forward.bodyDone);
  }

  /** `b`, which outlives the read that brought it: a copy when it is a view of the shared scratch buffer. */
  keep(b: Buffer): Buffer {
    if (isScratch(b)) return Buffer.from(b);
    this.readKept = true;
    return b;
  }

  /** True while no request is in flight (shutdown closes such connections at once). */
  get idle(): boolean {
    return (this.#state === HEAD || this.#state === PREAMBLE) && this.#rest === null;
  }

  write(b: Buffer): boolean {
    if (this.socket.destroyed) return true;
    return this.socket.write(b);
  }

  cork(): void {
    this.socket.cork();
  }

  uncork(): void {
    this.socket.uncork();
  }

  /** Closes after what is written, lingering a little to drain what the client still sends. */
  end(): void {
    if (this.#state === CLOSING) return;
    this.#state = CLOSING;
    this.#rest = null;
    this.deadline = performance.now() + LINGER_MS;
    this.#pause(PAUSE_BODY | PAUSE_AHEAD | PAUSE_OUTPUT, false);
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Whether the request body may flow from the client now (false: the backend is full or not there yet). */
  bodyFlowing(flowing: boolean): void {
    this.#pause(PAUSE_BODY, !flowing);
    // The body's silence is the client's only while the backend takes it: one
    // that does not is timed on the backend's side (Forward).
    const f = this.forward;
    if (this.#state !== ACTIVE || f === null || f.bodyDone) return;
    this.deadline = flowing ? performance.now() + this.ctx.clientBodyTimeoutMs : Infinity;
  }

  #pause(reason: number, on: boolean): void {
    const before = this.#pauses;
    this.#pauses = on ? before | reason : before & ~reason;
    if (before === 0 && this.#pauses !== 0) this.socket.pause();
    else if (before !== 0 && this.#pauses === 0) this.socket.resume();
  }

  data(chunk: Buffer): void {
    const state = this.#state;
    if (state === TUNNEL) {
      // A read in the scratch buffer is copied; one into the socket's own buffer is freed unless queued.
      if (this.tunnel!.fromClient(unshared(chunk))) this.readKept = true;
      return;
    }
    if (state === CLOSING) return;
    const f = this.forward;
    if (f !== null) {
      if (!f.bodyDone && !f.done) {
        this.deadline = performance.now() + this.ctx.clientBodyTimeoutMs;
        const end = f.clientBody(chunk, 0, chunk.length);
        if (end < 0) return;
        if (f.bodyDone) this.deadline = Infinity;
        if (end < chunk.length) this.#stash(chunk.subarray(end));
      } else {
        this.#stash(chunk);
      }
      return;
    }
    if (state === PREAMBLE) {
      this.#preamble(chunk);
      return;
    }
    if ((this.#pauses & PAUSE_OUTPUT) !== 0) {
      // A read that was on its way when reading paused: kept for drained().
      this.#stash(chunk);
      return;
    }
    let buf = chunk;
    if (this.#rest !== null) {
      // Only a partial head is ever kept here while no request is in flight.
      buf = Buffer.concat([this.#rest, chunk]);
      this.#rest = null;
    }
    this.#parse(buf);
  }

  /** --accept-proxy: the PROXY header (its address becomes the client's), then the first request's bytes. */
  #preamble(chunk: Buffer): void {
    const buf = this.#rest === null ? chunk : Buffer.concat([this.#rest, chunk]);
    this.#rest = null;
    // The parser bounds the header (107 bytes for v1, 16 + 4096 for v2): #rest cannot grow past that.
    const n = parseProxyHeader(buf, 0, buf.length, proxyHeader);
    if (n === PP_MORE) {
      this.#rest = this.keep(buf);
      return;
    }
    if (n < 0) {
      this.#refuseProxy(PP_REASONS[-n]);
      return;
    }
    // LOCAL, UNKNOWN, UNSPEC and UNIX carry no address to use: the socket's stands.
    if (proxyHeader.address !== '') this.#address = proxyHeader.address;
    this.#state = HEAD;
    if (n < buf.length) this.#parse(buf.subarray(n));
  }

  /** No valid PROXY header: closed without an answer, as HAProxy does, and counted. */
  #refuseProxy(reason: string): void {
    const ctx = this.ctx;
    ctx.stats.proxyProtocolErrors++;
    ctx.log.info({ reason, remote: this.socket.remoteAddress }, 'PROXY protocol error');
    this.#rest = null;
    this.#state = CLOSING;
    this.socket.destroy();
  }

  #stash(b: Buffer): void {
    this.#rest = this.#rest === null ? this.keep(b) : Buffer.concat([this.#rest, b]);
    if (this.#rest.length >= READ_AHEAD) this.#pause(PAUSE_AHEAD, true);
  }

  /** Parses and starts requests from buf, one at a time. */
  #parse(buf: Buffer): void {
    const ctx = this.ctx;
    this.#parsing = true;
    try {
      let start = 0;
      while (start < buf.length && this.#state === HEAD) {
        const h = parsed ??= new RequestHead(ctx.limits.maxHeaders);
        const r = parseRequestHead(h, buf, start, buf.length, ctx.limits, this.#checked);
        if (r === 0) {
          this.#rest = this.keep(start === 0 ? buf : buf.subarray(start));
          this.#checked = h.validEnd - start;
          if (!this.#headTimer) {
            this.#headTimer = true;
            this.#headAt = performance.now();
            this.deadline = this.#headAt + ctx.clientHeaderTimeoutMs;
          }
          return;
        }
        if (r < 0) {
          this.#refuse(-r, h.reason);
          return;
        }
        this.#checked = -1;
        this.#headTimer = false;
        if (h.contentLength > ctx.maxBodyBytes) {
          this.#refuse(413, 'request body over --max-body-size');
          return;
        }
        const f = this.#begin(h);
        this.forward = f;
        this.#state = ACTIVE;
        start = r;
        if (!f.bodyDone) {
          this.deadline = performance.now() + ctx.clientBodyTimeoutMs;
          const end = f.clientBody(buf, start, buf.length);
          if (end < 0) return;
          start = end;
        }
        this.deadline = f.bodyDone ? Infinity : this.deadline;
        if (start < buf.length) this.#stash(buf.subarray(start));
        f.start();
        if (this.forward !== null || this.#state !== HEAD || (this.#pauses & PAUSE_OUTPUT) !== 0) return;
        // Answered at once (a 503, say): go on with what follows.
        if (this.#rest === null) return;
        buf = this.#rest;
        this.#rest = null;
        start = 0;
      }
    } finally {
      this.#parsing = false;
    }
  }

  /** The parsed head becomes a Forward: facts kept, upstream head built, session keys found. */
  #begin(h: RequestHead): Forward {
    const ctx = this.ctx;
    let keys = '';
    if (h.cookies > 0 && ctx.names.bytes.length > 0) {
      if (cookieStarts.length < h.cookies) {
        cookieStarts = new Int32Array(h.cookies);
        cookieEnds = new Int32Array(h.cookies);
      }
      let n = 0;
      for (let i = 0; i < h.count; i++) {
        if (h.kinds[i] !== K_COOKIE) continue;
        cookieStarts[n] = h.lines[i * 5 + 2];
        cookieEnds[n++] = h.lines[i * 5 + 3];
      }
      keys = sessionKeys(h.buf, cookieStarts, cookieEnds, n, ctx.names);
    }
    const upgrade = h.upgrade >= 0 && h.connUpgrade;
    const req: RequestFacts = {
      method: h.method,
      idempotent: h.idempotent,
      isHead: h.isHead,
      minor: h.minor,
      keepAlive: h.keepAlive,
      upgrade,
      expectContinue: h.expectContinue,
      keys,
      contentLength: h.contentLength,
      chunked: h.chunked,
      // One comparison when --monitor-uri is off.
      monitor: ctx.monitorUri !== null && h.buf.compare(ctx.monitorUri, 0, ctx.monitorUri.length, h.pathStart, h.targetEnd) === 0,
    };
    const o = headOptions;
    o.clientAddress = this.address;
    o.proto = ctx.proto;
    o.forwarded = ctx.forwarded;
    o.trusted = this.trusted;
    o.requestId = ctx.requestId;
    const built = upstreamHead(h, o, upgrade);
    // The id the backend was sent, else (no --request-id-header) one for the log alone; none is made while the access log is off.
    return new Forward(this, built, req, ctx.access === null
      ? null
      : accessFacts(h, built.idEnd > built.idStart ? built.bytes.toString('latin1', built.idStart, built.idEnd) : ctx.ids.next()));
  }

  /** The Forward is over; `keep`: the connection goes on to the next request. */
  forwardDone(f: Forward, keep: boolean): void {
    if (this.forward !== f) return;
    this.forward = null;
    if (!keep || this.ctx.closing) {
      this.end();
      return;
    }
    this.#state = HEAD;
    this.#pause(PAUSE_BODY | PAUSE_AHEAD, false);
    this.idleSince = performance.now();
    if (!this.canWrite) {
      // The answers written are not being taken: the next request waits for
      // the drain (drained()), as long as an idle connection may.
      this.#pause(PAUSE_OUTPUT, true);
      this.deadline = this.idleSince + this.ctx.clientIdleTimeoutMs;
      return;
    }
    this.deadline = this.idleSince + this.#betweenMs();
    if (this.#parsing) return; // the parse loop that started it goes on
    this.#next();
  }

  /** How long the connection may wait between requests: idle, or with part of the next head read. */
  #betweenMs(): number {
    return this.#rest === null ? this.ctx.clientIdleTimeoutMs : this.ctx.clientHeaderTimeoutMs;
  }

  /** Between requests: the next one, read ahead already, or the close the client asked for. */
  #next(): void {
    const rest = this.#rest;
    if (rest !== null) {
      this.#rest = null;
      this.#parse(rest);
    } else if (this.ending) {
      this.end();
    }
  }

  startTunnel(t: Tunnel): void {
    this.forward = null;
    this.tunnel = t;
    this.#state = TUNNEL;
    this.deadline = Infinity;
    this.#pause(PAUSE_BODY | PAUSE_AHEAD, false);
    const rest = this.#rest;
    this.#rest = null;
    if (rest !== null) t.fromClient(rest);
    // The client's FIN came while the upgrade was being answered: it goes on to the backend.
    if (this.ending) t.clientEnd();
  }

  /** A malformed or oversized head: its status, and the connection closes. */
  #refuse(status: number, reason: string): void {
    const ctx = this.ctx;
    ctx.stats.clientErrors[status]++;
    ctx.stats.none.statuses[status]++;
    ctx.log.info({ status, reason, remote: this.address }, 'client error');
    const answer = reply(status, true);
    if (ctx.access !== null) this.#logRefused(status, reason, answer.length);
    this.#rest = null;
    this.write(answer);
    this.end();
  }

  /** A refused head's access log line, with what its parse read: the request line, Host and User-Agent where they came. */
  #logRefused(status: number, reason: string, bytesOut: number): void {
    const ctx = this.ctx;
    const h = parsed ??= new RequestHead(ctx.limits.maxHeaders);
    // A head that timed out was left incomplete (in #rest), not refused: parsing it once more says how far it got.
    // Otherwise the parse that refused it has just run. Either way its request line was read when it has a path.
    if (status === 408) parseRequestHead(h, this.#rest!, 0, this.#rest!.length, ctx.limits);
    const known = h.pathStart >= 0;
    const id = ctx.ids.next();
    const term = status === 408 ? 'client timeout' : 'client protocol error';
    const ms = this.#headTimer ? performance.now() - this.#headAt : 0;
    logRefused(ctx.access!, id, this.address, known ? h.method : null, known ? accessFacts(h, id) : null, status, ms, bytesOut, term, reason);
  }

  expire(now: number): void {
    this.deadline = Infinity;
    if (this.#state === CLOSING) {
      this.socket.destroy();
      return;
    }
    if (this.#state === PREAMBLE) {
      this.#refuseProxy('PROXY header timeout');
      return;
    }
    if (this.#state === HEAD) {
      if (this.#headTimer) this.#refuse(408, 'request head timeout');
      else this.socket.destroy(); // idle keep-alive, or nothing ever sent
      return;
    }
    const f = this.forward;
    if (this.#state === ACTIVE && f !== null && !f.bodyDone) f.bodyTimedOut();
    void now;
  }

  ended(): void {
    this.ending = true;
    if (this.#state === CLOSING) {
      this.socket.destroy();
      return;
    }
    if (this.#state === TUNNEL) {
      this.tunnel!.clientEnd();
      return;
    }
    const f = this.forward;
    if (f !== null && !f.bodyDone) {
      // The body was cut short: nothing sound can come of this request.
      this.socket.destroy();
      return;
    }
    // Waiting for the client to take its answers: the requests it sent before its FIN are served first (drained()).
    if (f === null && (this.#pauses & PAUSE_OUTPUT) === 0) this.end();
  }

  closed(): void {
    this.#state = CLOSING;
    this.deadline = Infinity;
    if (this.ctx.clients.delete(this)) this.ctx.state.connectionClosed();
    this.ctx.deadlines.delete(this);
    const f = this.forward;
    this.forward = null;
    if (f !== null) f.abort();
    this.tunnel?.clientClosed();
  }

  drained(): void {
    if (this.tunnel !== null) {
      this.tunnel.clientDrained();
    } else if (this.forward !== null) {
      this.forward.clientDrained();
    } else if (this.#state === HEAD && (this.#pauses & PAUSE_OUTPUT) !== 0) {
      this.#pause(PAUSE_OUTPUT, false);
      this.deadline = performance.now() + this.#betweenMs();
      this.#next();
    }
  }
}

function accessFacts(h: RequestHead, id: string): AccessFacts {
  const buf = h.buf;
  let end = h.pathStart;
  while (end < h.targetEnd && buf[end] !== 63 /* ? */ && buf[end] !== 59 /* ; */) end++;
  return {
    id,
    host: h.host >= 0 ? h.value(h.host) : h.form === 1 ? buf.toString('latin1', h.authorityStart, h.authorityEnd) : '',
    path: buf.toString('latin1', h.pathStart, end) || '/',
    userAgent: h.userAgent >= 0 ? h.value(h.userAgent) : '',
  };
}

function onData(this: OwnedSocket, chunk: Buffer): void {
  this.owner.data(chunk);
}

/** A plain socket's read: buf[0, nread), in the shared scratch buffer or the socket's own (then freed unless kept). */
function onRead(this: OwnedSocket, nread: number, buf: Uint8Array): boolean {
  const c = this.owner;
  const b = buf as Buffer;
  const filled = nread === b.length;
  c.readKept = false;
  try {
    c.data(filled ? b : b.subarray(0, nread));
  } finally {
    if (!c.readKept) freeClientRead(b);
    nextClientRead(b, c.streaming, filled);
  }
  return true;
}

function onEnd(this: OwnedSocket): void {
  this.owner.ended();
}

function onClose(this: OwnedSocket): void {
  this.owner.closed();
}

function onError(): void {
  // The close that follows ends the connection's requests.
}

function onDrain(this: OwnedSocket): void {
  this.owner.drained();
}
