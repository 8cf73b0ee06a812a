// WebSocket and other HTTP/1.1 upgrades. They are routed with the same
// affinity as plain requests (socket.io-style apps need it) and sent as
// requests; a backend that declines (any answer but 101) answers as usual and
// the client connection stays usable. After a 101 the two sockets are spliced
// both ways with backpressure; a FIN travels as a half-close, and a side cut
// off cuts the other. While a
// bound session's tunnel is open its binding is kept fresh, so a session that
// lives on one WebSocket for hours keeps its backend.
import type { Backend } from './backends.ts';
import type { ClientConnection } from './client.ts';
import type { ConnectionUser, UpstreamConnection } from './upstream.ts';

export class Tunnel implements ConnectionUser {
  readonly client: ClientConnection;
  readonly up: UpstreamConnection;
  readonly backend: Backend;
  readonly #refresh: NodeJS.Timeout | undefined;
  #gone = false;
  /** Each side's FIN has reached the other: once both have, each socket closes by itself when its writes are out. */
  #upEnded = false;
  #clientEnded = false;

  /** `head` is the 101 for the client; `rest`, bytes the backend sent after it. */
  constructor(client: ClientConnection, up: UpstreamConnection, backend: Backend, boundKey: string, head: Buffer, rest: Buffer | null) {
    this.client = client;
    this.up = up;
    this.backend = backend;
    up.user = this;
    up.noDeadline();
    // A backend's FIN is a half-close here: the client may still send (client sockets are half-open already).
    up.socket.allowHalfOpen = true;
    client.cork();
    client.write(head);
    if (rest !== null) client.write(rest);
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
    this.backend.stats.bytesIn += chunk.length;
    const s = this.up.socket;
    if (!s.write(chunk)) this.client.bodyFlowing(false);
    return s.writableLength !== 0;
  }

  upstreamData(chunk: Buffer): boolean {
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
    this.client.shutdownWrite();
  }

  clientEnd(): void {
    this.#clientEnded = true;
    this.up.socket.end();
  }

  /** A side closed: the other is cut, unless both ended cleanly (then it still delivers what it holds, and closes). */
  upstreamClosed(): void {
    this.#closed();
    if (!this.#upEnded || !this.#clientEnded) this.client.destroy();
  }

  clientClosed(): void {
    this.#closed();
    if (!this.#upEnded || !this.#clientEnded) this.up.destroy();
  }

  /** Tunnels have no deadline of their own; one set elsewhere ends the tunnel. */
  upstreamTimeout(): void {
    this.clientClosed();
    this.client.destroy();
  }

  #closed(): void {
    if (this.#gone) return;
    this.#gone = true;
    clearInterval(this.#refresh);
    this.backend.end();
  }
}
