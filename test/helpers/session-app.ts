// A session application as real frameworks behave, for tests of lost
// bindings. Each instance keeps its own sessions (a counter per id), as two
// app servers that do not share session storage do, so a test sees when a
// session lands on a backend that does not know it: its counter starts again.
//   accept   PHP's way: an id the app does not know is taken as it is, and
//            the app never sends Set-Cookie for an id it was sent.
//   replace  Tomcat's and Django's way (and PHP's with use_strict_mode): an
//            unknown id is answered with a new one through Set-Cookie.
// Either way a request without the cookie starts a session with Set-Cookie.
// GET /status/NNN answers with that status, after the same session handling.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';

export type SessionMode = 'accept' | 'replace';

export interface SessionAppOptions {
  /** The session cookie's name; PHPSESSID unless told. */
  cookie?: string;
  /** Which one the app reads when the request carries the cookie twice (PHP: first, Django: last). */
  pick?: 'first' | 'last';
  /** Attributes of the Set-Cookie it sends, after the value ('Path=/; HttpOnly' unless told). */
  attributes?: string;
}

export interface SessionApp {
  readonly name: string;
  readonly mode: SessionMode;
  readonly cookie: string;
  url: string;
  /** Session id -> requests it made here. */
  readonly sessions: Map<string, number>;
  requests: number;
  close(): Promise<void>;
}

/** What one answer of a session app says. */
export interface Visit {
  status: number;
  backend: string;
  id: string;
  /** The session's requests on that backend, this one included. */
  count: number;
  /** The answer set a session cookie. */
  issued: boolean;
}

/** The value of cookie `name` in a Cookie header, the first or the last occurrence; '' when absent. */
function readCookie(header: string | undefined, name: string, pick: 'first' | 'last'): string {
  if (header === undefined) return '';
  let found = '';
  for (const pair of header.split(';')) {
    const eq = pair.indexOf('=');
    if (eq < 0 || pair.slice(0, eq).trim() !== name) continue;
    found = pair.slice(eq + 1).trim();
    if (pick === 'first' && found !== '') return found;
  }
  return found;
}

export async function startSessionApp(name: string, mode: SessionMode, opts: SessionAppOptions = {}): Promise<SessionApp> {
  const cookie = opts.cookie ?? 'PHPSESSID';
  const pick = opts.pick ?? 'first';
  const attributes = opts.attributes ?? 'Path=/; HttpOnly';
  const sessions = new Map<string, number>();
  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    app.requests++;
    // Node joins several Cookie header lines with '; ', in their order.
    let id = readCookie(req.headers.cookie, cookie, pick);
    let issued = false;
    if (id === '' || (mode === 'replace' && !sessions.has(id))) {
      id = `${name}-${randomBytes(9).toString('base64url')}`;
      issued = true;
    }
    const count = (sessions.get(id) ?? 0) + 1;
    sessions.set(id, count);
    const asked = /^\/status\/(\d{3})$/.exec(req.url ?? '');
    const status = asked === null ? 200 : Number(asked[1]);
    const headers: string[] = ['x-backend', name, 'x-session', id, 'x-count', String(count), 'content-type', 'application/json'];
    if (issued) headers.push('set-cookie', `${cookie}=${id}; ${attributes}`);
    if (status >= 300 && status < 400) headers.push('location', '/');
    req.resume();
    req.on('end', () => {
      res.writeHead(status, headers);
      res.end(JSON.stringify({ backend: name, id, count }));
    });
  };
  const server: Server = createServer(handle);
  const app: SessionApp = {
    name,
    mode,
    cookie,
    url: '',
    sessions,
    requests: 0,
    close: () => new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections(); }),
  };
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  app.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return app;
}

/** Reads a session app's answer headers. */
export function visitOf(status: number, headers: Record<string, string | string[] | undefined>): Visit {
  return {
    status,
    backend: headers['x-backend'] as string,
    id: headers['x-session'] as string,
    count: Number(headers['x-count']),
    issued: headers['set-cookie'] !== undefined,
  };
}
