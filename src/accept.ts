// Accepts client connections: a TCP (or TLS) listener, the connection cap
// (the process's, across every loop; beyond it a 503 instead of a silent
// drop), and a ClientConnection for each connection let in. Half-open connections are allowed so a client that sends
// its request and then shuts down its side still gets the answer.
import { createServer as createNetServer, type Server, type Socket } from 'node:net';
import { ClientConnection } from './client.ts';
import type { ProxyContext } from './context.ts';
import { reply } from './replies.ts';

export interface AcceptOptions {
  maxConnections: number;
  tls: { cert: string; key: string } | null;
}

export class Acceptor {
  readonly listener: Server;
  readonly #ctx: ProxyContext;
  readonly #max: number;

  constructor(ctx: ProxyContext, opts: AcceptOptions) {
    this.#ctx = ctx;
    this.#max = opts.maxConnections;
    const accept = (socket: Socket): void => this.#connection(socket);
    this.listener = opts.tls === null
      ? createNetServer({ noDelay: true, allowHalfOpen: true }, accept)
      // node:tls is loaded only when the listener terminates TLS.
      : process.getBuiltinModule('node:tls').createServer({ cert: opts.tls.cert, key: opts.tls.key, noDelay: true, allowHalfOpen: true }, accept);
  }

  #connection(socket: Socket): void {
    const open = this.#ctx.state.openConnections;
    if (open >= this.#max) {
      this.#ctx.stats.connectionsRefused++;
      this.#ctx.log.warn({ open, max: this.#max }, 'connection refused: too many client connections');
      socket.on('error', ignore);
      socket.end(reply(503, true));
      return;
    }
    new ClientConnection(socket, this.#ctx);
  }
}

function ignore(): void {}
