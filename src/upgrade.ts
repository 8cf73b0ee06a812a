// WebSocket and other HTTP/1.1 upgrades. They are routed with the same
// affinity as plain requests (socket.io-style apps need it), then the two
// sockets are piped both ways with backpressure; either side closing closes
// the other. While a bound session's connection is open its binding is kept
// fresh, so a session that lives on one WebSocket for hours keeps its backend.
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import type { Dispatcher } from 'undici';
import type { LookupWaiter } from './affinity.ts';
import type { Backend } from './backends.ts';
import { chooseBackend, type Route } from './balance.ts';
import type { ProxyContext } from './context.ts';
import { endToEnd, rawToStrings } from './headers.ts';
import { upstreamHeaders } from './forward.ts';

type Controller = Dispatcher.DispatchController;

function head(status: number, message: string, headers: readonly string[]): string {
  let s = `HTTP/1.1 ${status} ${message}\r\n`;
  for (let i = 0; i < headers.length; i += 2) s += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return `${s}\r\n`;
}

export class Upgrade implements Dispatcher.DispatchHandler, LookupWaiter {
  readonly req: IncomingMessage;
  readonly client: Socket;
  readonly head: Buffer;
  readonly ctx: ProxyContext;
  readonly path: string;
  readonly cookie: string;
  boundKey = '';
  route: Route = 'none';
  backend: Backend | null = null;
  upstream: Duplex | null = null;
  refresh: NodeJS.Timeout | undefined;
  closed = false;

  constructor(req: IncomingMessage, client: Socket, head: Buffer, ctx: ProxyContext, path: string) {
    this.req = req;
    this.client = client;
    this.head = head;
    this.ctx = ctx;
    this.path = path;
    this.cookie = req.headers.cookie ?? '';
    client.on('error', () => this.#close());
    client.on('close', () => this.#close());
  }

  start(): void {
    if (this.ctx.affinity.mayCarrySession(this.req.headers.cookie)) this.ctx.affinity.lookup(this.cookie, this);
    else this.#dispatch(this.ctx.balancer.pick());
  }

  onAffinity(outcome: number, name: string, key: string): void {
    if (!this.closed) this.#dispatch(chooseBackend(this.ctx, outcome, name, key, this.cookie, this));
  }

  #dispatch(backend: Backend | null): void {
    if (backend === null) {
      this.#refuse(503, 'Service Unavailable');
      return;
    }
    this.backend = backend;
    backend.active++;
    backend.pool.dispatch({
      path: this.path,
      method: this.req.method as Dispatcher.HttpMethod,
      // undici writes Connection: upgrade and Upgrade: <protocol> itself.
      headers: upstreamHeaders(this.req, this.ctx, backend),
      upgrade: this.req.headers.upgrade ?? 'websocket',
    }, this);
  }

  onRequestStart(controller: Controller): void {
    if (this.closed) controller.abort(new Error('client went away'));
  }

  onRequestUpgrade(controller: Controller, statusCode: number, _parsed: unknown, upstream: Duplex): void {
    if (this.closed) {
      upstream.destroy();
      return;
    }
    this.upstream = upstream;
    upstream.on('error', () => this.#close());
    upstream.on('close', () => this.#close());
    // The upgrade's own Connection and Upgrade headers must reach the client.
    const headers = rawToStrings(controller.rawHeaders as Buffer[]);
    this.client.write(head(statusCode, 'Switching Protocols', headers));
    if (this.head.length > 0) upstream.write(this.head);
    this.client.pipe(upstream);
    upstream.pipe(this.client);
    if (this.boundKey !== '') {
      const every = Math.max(1000, (this.ctx.defaultTtl * 1000) / 3);
      this.refresh = setInterval(() => this.ctx.affinity.bind(this.boundKey, this.backend!.name), every);
      this.refresh.unref();
    }
  }

  // The backend declined the upgrade: its answer is relayed, delimited by close.
  onResponseStart(controller: Controller, statusCode: number, _parsed: unknown, statusMessage?: string): void {
    if (statusCode < 200) return;
    const headers = endToEnd(rawToStrings(controller.rawHeaders as Buffer[]));
    headers.push('Connection', 'close');
    this.client.write(head(statusCode, statusMessage ?? '', headers));
  }

  onResponseData(controller: Controller, chunk: Buffer): void {
    if (!this.client.write(chunk)) {
      controller.pause();
      this.client.once('drain', () => controller.resume());
    }
  }

  onResponseEnd(): void {
    this.client.end();
    this.#release();
  }

  onResponseError(_controller: Controller, err: Error): void {
    const code = (err as { code?: string }).code ?? '';
    this.ctx.log.warn({ backend: this.backend?.name, code }, 'upgrade failed');
    if (this.upstream === null) this.#refuse(502, 'Bad Gateway');
    else this.#close();
  }

  #refuse(status: number, reason: string): void {
    this.#release();
    if (this.client.writable) this.client.end(`HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  }

  #close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.refresh);
    this.client.destroy();
    this.upstream?.destroy();
    this.#release();
  }

  #release(): void {
    if (this.backend !== null) {
      this.backend.active--;
      this.backend = null;
    }
  }
}
