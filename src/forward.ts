// One client request's trip through the proxy, as a single object: it waits for
// the affinity answer, asks the balancer when there is no usable binding, sends
// the request through the backend's undici pool, and streams the answer back.
// It is undici's dispatch handler itself, so bodies flow chunk by chunk with
// backpressure both ways and no per-request closures.
import type { IncomingMessage } from 'node:http';
import type { Dispatcher } from 'undici';
import { HIT } from './batch.ts';
import type { Affinity, LearnWaiter, LookupWaiter } from './affinity.ts';
import type { Backend, BackendSet } from './backends.ts';
import type { Balancer } from './balance.ts';
import { endToEnd, rawToStrings } from './headers.ts';
import { sessionSetCookies } from './learn.ts';
import type { ProxyResponse } from './accept.ts';

export interface ProxyContext {
  affinity: Affinity;
  backends: BackendSet;
  balancer: Balancer;
}

type Controller = Dispatcher.DispatchController;

export class Forward implements Dispatcher.DispatchHandler, LookupWaiter, LearnWaiter {
  readonly req: IncomingMessage;
  readonly res: ProxyResponse;
  readonly ctx: ProxyContext;
  readonly path: string;
  /** The request's Cookie header, '' when it has none. */
  readonly cookie: string;
  backend: Backend | null = null;
  controller: Controller | null = null;
  // A response head held back while its session cookie is being stored, so a
  // client's next request, through any worker or instance, finds the binding.
  heldStatus = 0;
  heldMessage: string | undefined;
  heldHeaders: string[] | null = null;
  heldEnd: Record<string, string | string[] | undefined> | null = null;
  done = false;

  constructor(req: IncomingMessage, res: ProxyResponse, ctx: ProxyContext, path: string) {
    this.req = req;
    this.res = res;
    this.ctx = ctx;
    this.path = path;
    this.cookie = req.headers.cookie ?? '';
    res.forward = this;
  }

  start(): void {
    if (this.ctx.affinity.mayCarrySession(this.req.headers.cookie)) {
      this.ctx.affinity.lookup(this.cookie, this);
    } else {
      this.#dispatch(this.ctx.balancer.pick());
    }
  }

  onAffinity(outcome: number, backend: string, _key: string): void {
    if (this.done) return;
    const bound = outcome === HIT ? this.ctx.backends.usable(backend) : undefined;
    this.#dispatch(bound ?? this.ctx.balancer.pick());
  }

  #dispatch(backend: Backend | null): void {
    if (backend === null) {
      this.#fail(503, 'no backend available', true);
      return;
    }
    this.backend = backend;
    backend.active++;
    const req = this.req;
    const headers = req.headers;
    const hasBody = headers['transfer-encoding'] !== undefined || (headers['content-length'] !== undefined && headers['content-length'] !== '0');
    backend.pool.dispatch({
      path: this.path,
      method: req.method as Dispatcher.HttpMethod,
      headers: endToEnd(req.rawHeaders),
      body: hasBody ? req : null,
    }, this);
  }

  onRequestStart(controller: Controller): void {
    this.controller = controller;
    if (this.done) controller.abort(new Error('client went away'));
  }

  onResponseStart(controller: Controller, statusCode: number, _parsed: unknown, statusMessage?: string): void {
    if (statusCode < 200) return; // 1xx are hop-by-hop news; the final answer follows
    const headers = endToEnd(rawToStrings(controller.rawHeaders as Buffer[]));
    const setCookies = sessionSetCookies(headers, this.ctx.affinity);
    if (setCookies === null) {
      this.res.writeHead(statusCode, statusMessage, headers);
      return;
    }
    this.heldStatus = statusCode;
    this.heldMessage = statusMessage;
    this.heldHeaders = headers;
    controller.pause();
    this.ctx.affinity.learn(this.backend!.name, setCookies, this.cookie, this);
  }

  onLearned(): void {
    if (this.heldHeaders === null || this.done) return;
    this.#releaseHead();
    if (this.heldEnd !== null) this.#end(this.heldEnd);
    else this.controller!.resume();
  }

  onResponseData(controller: Controller, chunk: Buffer): void {
    // Body bytes never wait for a learn: the head goes out before them.
    if (this.heldHeaders !== null) this.#releaseHead();
    if (!this.res.write(chunk)) controller.pause();
  }

  onResponseEnd(_controller: Controller, trailers: Record<string, string | string[] | undefined>): void {
    if (this.heldHeaders !== null) {
      this.heldEnd = trailers; // a bodiless answer (HEAD, 204, 304): end once the head is out
      return;
    }
    this.#end(trailers);
  }

  onResponseError(_controller: Controller, err: Error): void {
    this.#release();
    if (this.done) return;
    if (!this.res.headersSent) {
      const code = (err as { code?: string }).code;
      const timeout = code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_HEADERS_TIMEOUT';
      this.#fail(timeout ? 504 : 502, timeout ? 'backend timed out' : 'backend unreachable', false);
    } else {
      // Part of the answer is out: the client must see it cut, not complete.
      this.done = true;
      this.res.destroy(err);
    }
  }

  /** The client went away before the answer was complete. */
  clientClosed(): void {
    if (this.done) return;
    this.done = true;
    this.controller?.abort(new Error('client went away'));
  }

  /** The client can take more body. */
  drained(): void {
    if (!this.done && this.controller?.paused) this.controller.resume();
  }

  #releaseHead(): void {
    this.res.writeHead(this.heldStatus, this.heldMessage, this.heldHeaders!);
    this.heldHeaders = null;
  }

  #end(trailers: Record<string, string | string[] | undefined>): void {
    this.#release();
    this.done = true;
    const names = Object.keys(trailers);
    if (names.length > 0) this.res.addTrailers(trailers as Record<string, string>);
    this.res.end();
  }

  #release(): void {
    if (this.backend !== null) {
      this.backend.active--;
      this.backend = null;
    }
  }

  #fail(status: number, reason: string, retryAfter: boolean): void {
    this.done = true;
    const res = this.res;
    const body = `${reason}\n`;
    const headers: string[] = ['content-type', 'text/plain', 'content-length', String(body.length)];
    if (retryAfter) headers.push('retry-after', '1');
    res.writeHead(status, headers);
    res.end(body);
  }
}
