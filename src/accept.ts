// Accepts client connections: a TCP (or TLS) listener, the connection cap
// (the process's, across every loop; beyond it a 503 instead of a silent
// drop), and a ClientConnection for each connection let in. Half-open connections are allowed so a client that sends
// its request and then shuts down its side still gets the answer.
import { Buffer } from 'node:buffer';
import { createServer as createNetServer, type Server, type Socket } from 'node:net';
import type { SecureContext, Server as TlsServer } from 'node:tls';
import { ClientConnection } from './client.ts';
import type { ProxyContext } from './context.ts';
import { PP_MORE, PP_REASONS, ProxyHeader, parseProxyHeader } from './proxy-protocol.ts';
import { reply } from './replies.ts';

export interface AcceptOptions {
  maxConnections: number;
  tls: { cert: string; key: string } | null;
}

export class Acceptor {
  readonly listener: Server;
  readonly #ctx: ProxyContext;
  readonly #max: number;
  /**
   * --accept-proxy with TLS: the listener is plain TCP, since the PROXY header
   * comes in clear before the handshake; TLS starts after it, with this context.
   */
  #secure: SecureContext | null = null;

  constructor(ctx: ProxyContext, opts: AcceptOptions) {
    this.#ctx = ctx;
    this.#max = opts.maxConnections;
    const accept = (socket: Socket): void => this.#connection(socket, null);
    if (opts.tls === null) {
      // Accepted paused: ClientConnection sets up the socket's reads (read-regions.ts) before any.
      this.listener = createNetServer({ noDelay: true, allowHalfOpen: true, pauseOnConnect: true }, accept);
      return;
    }
    // node:tls is loaded only when the listener terminates TLS.
    const tls = process.getBuiltinModule('node:tls');
    if (!ctx.acceptProxy) {
      this.listener = tls.createServer({ cert: opts.tls.cert, key: opts.tls.key, noDelay: true, allowHalfOpen: true }, accept);
      return;
    }
    this.#secure = tls.createSecureContext({ cert: opts.tls.cert, key: opts.tls.key });
    this.listener = createNetServer({ noDelay: true, allowHalfOpen: true }, (socket) => this.#preamble(socket));
  }

  /** A SIGHUP's certificate, for the connections accepted from now on. */
  setCertificate(tls: { cert: string; key: string }): void {
    if (this.#secure === null) (this.listener as TlsServer).setSecureContext({ cert: tls.cert, key: tls.key });
    else this.#secure = process.getBuiltinModule('node:tls').createSecureContext({ cert: tls.cert, key: tls.key });
  }

  /**
   * --accept-proxy with TLS: reads the PROXY header off the TCP socket, within
   * the header timeout, then starts TLS on the bytes after it (the
   * ClientHello). No valid header: closed and counted, as without TLS.
   */
  #preamble(raw: Socket): void {
    const ctx = this.#ctx;
    const header = new ProxyHeader();
    let buf: Buffer | null = null;
    const refuse = (reason: string): void => {
      clearTimeout(timer);
      ctx.stats.proxyProtocolErrors++;
      ctx.log.info({ reason, remote: raw.remoteAddress }, 'PROXY protocol error');
      raw.destroy();
    };
    const timer = setTimeout(refuse, ctx.clientHeaderTimeoutMs, 'PROXY header timeout');
    const read = (chunk: Buffer): void => {
      // The parser bounds the header (107 bytes for v1, 16 + 4096 for v2): buf cannot grow past that.
      buf = buf === null ? chunk : Buffer.concat([buf, chunk]);
      const n = parseProxyHeader(buf, 0, buf.length, header);
      if (n === PP_MORE) return;
      if (n < 0) {
        refuse(PP_REASONS[-n]);
        return;
      }
      clearTimeout(timer);
      raw.pause();
      raw.off('data', read);
      raw.off('end', ended);
      raw.off('close', closed);
      // What follows the header is the start of the handshake: TLS reads it from the socket's buffer.
      if (n < buf.length) raw.unshift(buf.subarray(n));
      const socket = new (process.getBuiltinModule('node:tls').TLSSocket)(raw, { isServer: true, secureContext: this.#secure! });
      // LOCAL, UNKNOWN, UNSPEC and UNIX carry no address to use: the socket's stands.
      this.#connection(socket, header.address);
    };
    // A client gone before its header is not a protocol error (nor is it without TLS).
    const ended = (): void => {
      clearTimeout(timer);
      raw.destroy();
    };
    const closed = (): void => clearTimeout(timer);
    raw.on('data', read);
    raw.on('end', ended);
    raw.on('close', closed);
    raw.on('error', ignore);
  }

  /** `proxied`: the address of a PROXY header read before TLS ('' for none), or null. */
  #connection(socket: Socket, proxied: string | null): void {
    if (!this.#ctx.state.admit(this.#max)) {
      this.#ctx.stats.connectionsRefused++;
      this.#ctx.log.warn({ open: this.#ctx.state.openConnections, max: this.#max }, 'connection refused: too many client connections');
      socket.on('error', ignore);
      socket.resume();
      socket.end(reply(503, true));
      return;
    }
    new ClientConnection(socket, this.#ctx, proxied);
  }
}

function ignore(): void {}
