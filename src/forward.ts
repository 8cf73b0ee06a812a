// One client request's trip through the proxy, as a single object: it waits for
// the affinity answer, asks the balancer when there is no usable binding, sends
// the request through the backend's undici pool, and streams the answer back.
// It is undici's dispatch handler itself, so bodies flow chunk by chunk with
// backpressure both ways and no per-request closures.
import type { IncomingMessage } from 'node:http';
import type { Dispatcher } from 'undici';
import type { LearnWaiter, LookupWaiter } from './affinity.ts';
import type { Backend } from './backends.ts';
import { chooseBackend, type Route } from './balance.ts';
import type { ProxyContext } from './context.ts';
import { requestHeaders, responseHeaders } from './headers.ts';
import { sessionSetCookies } from './learn.ts';
import type { ProxyResponse } from './accept.ts';

type Controller = Dispatcher.DispatchController;
type Trailers = Record<string, string | string[] | undefined>;

// Methods a client may expect to be replayed (RFC 9110 section 9.2.2).
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);
// Failures of the connection itself, where no response byte has been seen.
const CONNECTION_ERRORS = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL',
  'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_CLOSED',
]);
// Of those, the ones where the request cannot have reached the backend.
const NOT_SENT = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'UND_ERR_CONNECT_TIMEOUT']);

/** The headers a request carries to `backend`, as the context's forwarding settings say. */
export function upstreamHeaders(req: IncomingMessage, ctx: ProxyContext, backend: Backend): string[] {
  return requestHeaders(req.rawHeaders, req.socket.remoteAddress ?? '', ctx.proto, ctx.forwarded, ctx.rewriteHost ? backend.url.host : null);
}

export class Forward implements Dispatcher.DispatchHandler, LookupWaiter, LearnWaiter {
  readonly req: IncomingMessage;
  readonly res: ProxyResponse;
  readonly ctx: ProxyContext;
  readonly path: string;
  /** The request's Cookie header, '' when it has none. */
  readonly cookie: string;
  readonly hasBody: boolean;
  backend: Backend | null = null;
  controller: Controller | null = null;
  /** The session's store key when the request carried a bound session. */
  boundKey = '';
  route: Route = 'none';
  readonly t0 = performance.now();
  attempts = 0;
  started = false;
  // A response head held back while its session cookie is being stored, so a
  // client's next request, through any worker or instance, finds the binding.
  heldStatus = 0;
  heldMessage: string | undefined;
  heldHeaders: string[] | null = null;
  heldEnd: Trailers | null = null;
  done = false;

  constructor(req: IncomingMessage, res: ProxyResponse, ctx: ProxyContext, path: string) {
    this.req = req;
    this.res = res;
    this.ctx = ctx;
    this.path = path;
    this.cookie = req.headers.cookie ?? '';
    const h = req.headers;
    this.hasBody = h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0');
    res.forward = this;
  }

  start(): void {
    if (this.ctx.affinity.mayCarrySession(this.req.headers.cookie)) {
      this.ctx.affinity.lookup(this.cookie, this);
    } else {
      this.#dispatch(this.ctx.balancer.pick());
    }
  }

  onAffinity(outcome: number, name: string, key: string): void {
    if (this.done) return;
    this.#dispatch(chooseBackend(this.ctx, outcome, name, key, this.cookie, this));
  }

  #dispatch(backend: Backend | null): void {
    if (backend === null) {
      this.#fail(503, 'no backend available', 'none');
      return;
    }
    this.backend = backend;
    this.attempts++;
    backend.active++;
    backend.pool.dispatch({
      path: this.path,
      method: this.req.method as Dispatcher.HttpMethod,
      headers: upstreamHeaders(this.req, this.ctx, backend),
      body: this.hasBody ? this.req : null,
    }, this);
  }

  onRequestStart(controller: Controller): void {
    this.controller = controller;
    if (this.done) controller.abort(new Error('client went away'));
  }

  onResponseStart(controller: Controller, statusCode: number, _parsed: unknown, statusMessage?: string): void {
    if (statusCode < 200) return; // 1xx are hop-by-hop news; the final answer follows
    this.started = true;
    const backend = this.backend!;
    if (statusCode >= 500) this.ctx.health.failure(backend, `status ${statusCode}`);
    else this.ctx.health.success(backend);
    if (this.ctx.closing) this.res.shouldKeepAlive = false;
    this.#answered(backend.name, statusCode);
    const headers = responseHeaders(controller.rawHeaders as Buffer[]);
    const setCookies = sessionSetCookies(headers, this.ctx.affinity);
    if (setCookies === null) {
      this.res.writeHead(statusCode, statusMessage, headers);
      return;
    }
    this.heldStatus = statusCode;
    this.heldMessage = statusMessage;
    this.heldHeaders = headers;
    controller.pause();
    this.ctx.affinity.learn(backend.name, setCookies, this.cookie, this.boundKey, this);
  }

  onLearned(replaced: boolean): void {
    if (replaced && this.backend !== null) {
      this.ctx.metrics.replaced.inc({ backend: this.backend.name });
      this.ctx.log.debug({ backend: this.backend.name }, 'session replaced: a bound request was answered with a new session id');
    }
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

  onResponseEnd(_controller: Controller, trailers: Trailers): void {
    if (this.heldHeaders !== null) {
      this.heldEnd = trailers; // a bodiless answer (HEAD, 204, 304): end once the head is out
      return;
    }
    this.#end(trailers);
  }

  onResponseError(_controller: Controller, err: Error): void {
    const backend = this.backend!;
    this.#release();
    if (this.done) return;
    const code = (err as { code?: string }).code ?? '';
    const connectionFailed = !this.started && CONNECTION_ERRORS.has(code);
    if (connectionFailed) this.ctx.health.failure(backend, code);
    if (connectionFailed && this.#mayRetry(code)) {
      const next = this.#another(backend);
      if (next !== null) {
        this.ctx.log.warn({ backend: backend.name, retryOn: next.name, code, method: this.req.method }, 'backend connection failed; retrying');
        if (this.boundKey !== '') this.ctx.affinity.bind(this.boundKey, next.name);
        this.#dispatch(next);
        return;
      }
    }
    if (!this.res.headersSent) {
      const timeout = code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_HEADERS_TIMEOUT';
      this.ctx.log.warn({ backend: backend.name, code, status: timeout ? 504 : 502 }, timeout ? 'backend timed out' : 'backend failed');
      this.#fail(timeout ? 504 : 502, timeout ? 'backend timed out' : 'bad gateway', backend.name);
    } else {
      // Part of the answer is out: the client must see it cut, not complete.
      this.ctx.log.warn({ backend: backend.name, code }, 'backend failed mid-response; client connection cut');
      this.done = true;
      this.res.destroy(err);
    }
  }

  /** Never after a response started; a body that began to flow cannot be replayed. */
  #mayRetry(code: string): boolean {
    if (this.attempts > this.ctx.retries) return false;
    if (this.hasBody && this.req.readableDidRead) return false;
    return IDEMPOTENT.has(this.req.method!) || NOT_SENT.has(code);
  }

  #another(failed: Backend): Backend | null {
    for (let i = 0; i < this.ctx.backends.list.length; i++) {
      const b = this.ctx.balancer.pick();
      if (b === null) return null;
      if (b !== failed) return b;
    }
    return null;
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

  #end(trailers: Trailers): void {
    this.#release();
    this.done = true;
    for (const _ in trailers) {
      this.res.addTrailers(trailers as Record<string, string>);
      break;
    }
    this.res.end();
  }

  #release(): void {
    if (this.backend !== null) {
      this.backend.active--;
      this.backend = null;
    }
  }

  #answered(backend: string, status: number): void {
    const seconds = (performance.now() - this.t0) / 1000;
    this.ctx.metrics.answered(backend, status, seconds);
    const access = this.ctx.access;
    if (access !== null) {
      // The path without query or ;parameters: session ids travel there too (;jsessionid=).
      const end = this.path.search(/[?;]/);
      access.info({ method: this.req.method, path: end < 0 ? this.path : this.path.slice(0, end), status, backend, affinity: this.route, ms: Math.round(seconds * 1e4) / 10 });
    }
  }

  #fail(status: number, reason: string, backend: string): void {
    this.#answered(backend, status);
    this.done = true;
    const res = this.res;
    const body = `${reason}\n`;
    const headers: string[] = ['content-type', 'text/plain', 'content-length', String(body.length)];
    if (status === 503) headers.push('retry-after', '1');
    if (this.ctx.closing) res.shouldKeepAlive = false;
    res.writeHead(status, headers);
    res.end(body);
  }
}
