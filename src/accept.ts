// Accepts client connections and starts each request's trip. A plain TCP
// listener sits in front of the HTTP server so the connection cap can answer
// 503 instead of silently dropping; client-side timeouts and malformed
// requests get their 4xx here. The response class carries the request's
// Forward, so the events the proxy listens to go to shared module-level
// functions instead of per-request closures.
import { createServer as createHttpServer, ServerResponse, type IncomingMessage, type Server } from 'node:http';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import type { Config } from './config.ts';
import type { ProxyContext } from './context.ts';
import { Forward } from './forward.ts';
import { Upgrade } from './upgrade.ts';

export class ProxyResponse extends ServerResponse {
  forward: Forward | null = null;
}

function onClose(this: ProxyResponse): void {
  if (!this.writableFinished) this.forward?.clientClosed();
}

function onDrain(this: ProxyResponse): void {
  this.forward?.drained();
}

/**
 * The path to send upstream. An absolute-form target (a client treating us as a
 * forward proxy) is served from our own pool, never followed to its host.
 */
function upstreamPath(url: string): string | null {
  if (url.charCodeAt(0) === 47 /* / */) return url;
  if (url === '*') return url;
  if (!/^https?:\/\//i.test(url)) return null;
  try {
    const u = new URL(url);
    return u.pathname + u.search;
  } catch {
    return null;
  }
}

function rawReply(status: number, reason: string, extra = ''): string {
  return `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Length: 0\r\n${extra}\r\n`;
}

const CLIENT_ERRORS: Record<string, [number, string]> = {
  ERR_HTTP_REQUEST_TIMEOUT: [408, 'Request Timeout'],
  HPE_HEADER_OVERFLOW: [431, 'Request Header Fields Too Large'],
};

export type AcceptOptions = Pick<Config, 'clientHeaderTimeoutMs' | 'clientIdleTimeoutMs' | 'maxConnections' | 'tls'>;

export class Acceptor {
  readonly http: Server<typeof IncomingMessage, typeof ProxyResponse>;
  readonly listener: NetServer;
  /** Open client connections. */
  open = 0;
  readonly #ctx: ProxyContext;
  readonly #max: number;
  readonly #closed = (): void => { this.open--; };

  constructor(ctx: ProxyContext, opts: AcceptOptions) {
    this.#ctx = ctx;
    this.#max = opts.maxConnections;
    this.http = createHttpServer<typeof IncomingMessage, typeof ProxyResponse>({
      ServerResponse: ProxyResponse,
      headersTimeout: opts.clientHeaderTimeoutMs,
      requestTimeout: 0, // uploads may take long; bodies are bounded by backpressure, not time
      keepAliveTimeout: opts.clientIdleTimeoutMs,
      // How often header timeouts are checked; the default (30 s) would let slowloris linger.
      connectionsCheckingInterval: Math.min(1000, Math.ceil(opts.clientHeaderTimeoutMs / 4)),
      insecureHTTPParser: false,
    }, (req, res) => this.#request(req, res));
    this.http.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => this.#clientError(err, socket));
    this.http.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.#upgrade(req, socket, head));
    // With TLS, connections are handed over once their handshake is done.
    this.listener = opts.tls === null
      ? createNetServer({ noDelay: true }, (socket) => this.#connection(socket))
      : createTlsServer({ cert: opts.tls.cert, key: opts.tls.key, noDelay: true }, (socket) => this.#connection(socket));
    // node:http starts tracking connections (header timeouts, closeIdleConnections)
    // when it starts listening; this server gets its sockets from the listener instead.
    this.listener.once('listening', () => this.http.emit('listening'));
  }

  #connection(socket: Socket): void {
    if (this.open >= this.#max) {
      this.#ctx.log.warn({ open: this.open, max: this.#max }, 'connection refused: too many client connections');
      socket.on('error', ignore);
      socket.end(rawReply(503, 'Service Unavailable', 'Retry-After: 1\r\n'));
      return;
    }
    this.open++;
    socket.once('close', this.#closed);
    this.http.emit('connection', socket);
  }

  #request(req: IncomingMessage, res: ProxyResponse): void {
    const path = upstreamPath(req.url ?? '');
    if (path === null) {
      res.shouldKeepAlive = false;
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end('bad request target\n');
      return;
    }
    const forward = new Forward(req, res, this.#ctx, path);
    res.on('close', onClose);
    res.on('drain', onDrain);
    forward.start();
  }

  /** WebSocket and other upgrades: the same affinity, then bytes piped both ways. */
  #upgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const path = upstreamPath(req.url ?? '');
    if (path === null || this.#ctx.closing) {
      socket.on('error', ignore);
      socket.end(rawReply(path === null ? 400 : 503, path === null ? 'Bad Request' : 'Service Unavailable'));
      return;
    }
    new Upgrade(req, socket, head, this.#ctx, path).start();
  }

  /** Malformed or too slow requests: answer the 4xx and close, never forward. */
  #clientError(err: NodeJS.ErrnoException, socket: Socket): void {
    const code = err.code ?? '';
    // A request whose body turned out malformed (a bad chunk size) is already
    // on its way: stop it; the 400 can still go out if its answer has not begun.
    const inFlight = (socket as { _httpMessage?: ProxyResponse | null })._httpMessage;
    if (inFlight != null) inFlight.forward?.clientClosed();
    if (code === 'ECONNRESET' || !socket.writable || (inFlight != null && inFlight.headersSent)) {
      socket.destroy();
      return;
    }
    const [status, reason] = CLIENT_ERRORS[code] ?? [400, 'Bad Request'];
    this.#ctx.log.info({ status, code, remote: socket.remoteAddress }, 'client error');
    socket.end(rawReply(status, reason));
  }
}

function ignore(): void {}
