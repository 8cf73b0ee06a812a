// Accepts client connections and starts each request's trip. The response
// class carries the request's Forward, so the few events the proxy listens to
// go to shared module-level functions instead of per-request closures.
import { createServer, ServerResponse, type IncomingMessage, type Server } from 'node:http';
import { Forward, type ProxyContext } from './forward.ts';

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
export function upstreamPath(url: string): string | null {
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

export function createAcceptor(ctx: ProxyContext): Server<typeof IncomingMessage, typeof ProxyResponse> {
  return createServer<typeof IncomingMessage, typeof ProxyResponse>({ ServerResponse: ProxyResponse }, (req, res) => {
    const path = upstreamPath(req.url ?? '');
    if (path === null) {
      res.writeHead(400, { 'content-type': 'text/plain', connection: 'close' });
      res.end('bad request target\n');
      return;
    }
    const forward = new Forward(req, res, ctx, path);
    res.on('close', onClose);
    res.on('drain', onDrain);
    forward.start();
  });
}
