// WebSocket and other HTTP/1.1 upgrades. They are routed with the same
// affinity as plain requests (socket.io-style apps need it) and sent as
// requests; a backend that declines (any answer but 101) answers as usual and
// the client connection stays usable. After a 101 the two sockets are spliced
// both ways with backpressure; a FIN travels as a half-close, and a side cut
// off cuts the other. A tunnel silent both ways for --tunnel-timeout (or
// --tunnel-fin-timeout once half-closed) is closed on both sides, so a peer
// that vanished without a FIN or a reset holds no sockets for good. While a
// bound session's tunnel is open its binding is kept fresh, so a session that
// lives on one WebSocket for hours keeps its backend.
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Backend } from './backends.ts';
import type { ClientConnection } from './client.ts';
import type { Forward } from './forward.ts';
import type { ConnectionUser, UpstreamConnection } from './upstream.ts';

export class Tunnel implements ConnectionUser {
  /** The upgrade request, whose access line waits for the tunnel's end. */
  readonly #request: Forward;
  readonly client: ClientConnection;
  readonly up: UpstreamConnection;
  readonly backend: Backend;
  readonly #refresh: NodeJS.Timeout | undefined;
  #gone = false;
  /** Each side's FIN has reached the other: once both have, each socket closes by itself when its writes are out. */
  #upEnded = false;
  #clientEnded = false;
  /** Bytes through the tunnel: from the client, and to it (the 101 included). */
  #in = 0;
  #out = 0;

  /** `request` became this tunnel, to its backend over `up`; `head` is the 101 for the client, `rest` bytes the backend sent after it. */
  constructor(request: Forward, up: UpstreamConnection, head: Buffer, rest: Buffer | null) {
    this.#request = request;
    const client = this.client = request.client;
    const backend = this.backend = request.backend!;
    const boundKey = request.boundKey;
    this.up = up;
    up.user = this;
    // The silence timeout rides on the backend connection's deadline, moved by every byte either way.
    this.#quiet();
    client.ctx.stats.tunnels++;
    // A backend's FIN is a half-close here: the client may still send (client sockets are half-open already).
    up.socket.allowHalfOpen = true;
    client.cork();
    client.write(head);
    this.#out = head.length;
    if (rest !== null) {
      client.write(rest);
      this.#out += rest.length;
    }
    client.uncork();
    if (boundKey !== '') {
      const ctx = client.ctx;
      const every = Math.max(1000, (ctx.defaultTtl * 1000) / 3);
      this.#refresh = setInterval(() => ctx.affinity.bind(boundKey, backend.name, 'bind'), every);
      this.#refresh.unref();
    }
    // What the client sent after its upgrade request belongs to the new protocol.
    client.startTunnel(this);
  }

  /** True when the backend's socket keeps `chunk` queued (not written whole). */
  fromClient(chunk: Buffer): boolean {
    this.#quiet();
    this.#in += chunk.length;
    this.backend.stats.bytesIn += chunk.length;
    const s = this.up.socket;
    if (!s.write(chunk)) this.client.bodyFlowing(false);
    return s.writableLength !== 0;
  }

  upstreamData(chunk: Buffer): boolean {
    this.#quiet();
    this.#out += chunk.length;
    this.backend.stats.bytesOut += chunk.length;
    if (this.client.write(chunk)) return this.client.flushed;
    this.up.socket.pause();
    return false;
  }

  upstreamDrained(): void {
    this.client.bodyFlowing(true);
  }

  clientDrained(): void {
    this.up.socket.resume();
  }

  /** Half-closes travel through: each side's FIN reaches the other. */
  upstreamEnd(): void {
    this.#upEnded = true;
    this.#quiet();
    halfClose(this.client.socket);
  }

  clientEnd(): void {
    this.#clientEnded = true;
    this.#quiet();
    halfClose(this.up.socket);
  }

  /** A side closed: the other is cut, unless both ended cleanly (then it still delivers what it holds, and closes). */
  upstreamClosed(): void {
    this.#closed(this.#upEnded && this.#clientEnded ? 'ok' : 'upstream closed');
    if (!this.#upEnded || !this.#clientEnded) this.client.destroy();
  }

  clientClosed(): void {
    this.#closed(this.#upEnded && this.#clientEnded ? 'ok' : 'client closed');
    if (!this.#upEnded || !this.#clientEnded) this.up.destroy();
  }

  /** Silent too long: both sides are cut, whatever each has ended. */
  upstreamTimeout(): void {
    const ctx = this.client.ctx;
    ctx.stats.tunnelTimeouts++;
    const halfClosed = this.#upEnded || this.#clientEnded;
    ctx.log.info({ backend: this.backend.name, ms: halfClosed ? this.#limit() : ctx.tunnelTimeoutMs, halfClosed }, 'tunnel timed out');
    this.#closed('tunnel timeout');
    this.up.destroy();
    this.client.destroy();
  }

  /** Restarts the silence timeout. */
  #quiet(): void {
    this.up.waitFor(this.#limit());
  }

  #limit(): number {
    const ctx = this.client.ctx;
    return this.#upEnded || this.#clientEnded ? Math.min(ctx.tunnelTimeoutMs, ctx.tunnelFinTimeoutMs) : ctx.tunnelTimeoutMs;
  }

  /** Once, by whichever end comes first: `term` says which (the access log's). */
  #closed(term: string): void {
    if (this.#gone) return;
    this.#gone = true;
    this.client.ctx.stats.tunnels--;
    clearInterval(this.#refresh);
    this.backend.end();
    this.#request.tunnelEnded(this.#in, this.#out, term);
  }
}

/**
 * Passes a FIN on to `s`. A TLS socket's end() discards records it has
 * received but not yet decrypted: Node's TLSWrap::DoShutdown calls
 * SSL_shutdown twice, and the second call reads the input to wait for the
 * peer's close_notify, throwing application data away. Called from within
 * the socket's own read (a 101 and the tunnel's first bytes in one read, with
 * the client's FIN already in), that loses the bytes behind it; one turn
 * later Node has decrypted and delivered everything it read, and what comes
 * after the shutdown is read as usual.
 */
function halfClose(s: Socket): void {
  if ((s as TLSSocket).encrypted === true) setImmediate(endSocket, s);
  else s.end();
}

function endSocket(s: Socket): void {
  if (!s.destroyed) s.end();
}
