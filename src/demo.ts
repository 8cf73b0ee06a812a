// The demo: two origins that behave like the seed article's Express session
// servers (srv1, srv2), so `npm start` shows affinity with nothing else set up.
import { createServer, type Server } from 'node:http';
import { randomBytes, createHmac } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { parseCookie } from 'cookie';

const LIFETIME_MS = 300_000;
const SECRET = randomBytes(16);

export interface DemoOrigin {
  name: string;
  url: string;
  server: Server;
  close(): Promise<void>;
}

/** Like express-session: the cookie is `s:<id>.<signature>`, URL-encoded, with an Expires. */
export async function startDemoOrigin(name: string, host = '127.0.0.1', port = 0): Promise<DemoOrigin> {
  const sessions = new Map<string, number>(); // id -> expiry (ms)
  const server = createServer((req, res) => {
    const now = Date.now();
    const raw = parseCookie(req.headers.cookie ?? '')['connect.sid'];
    let id = raw?.startsWith('s:') ? raw.slice(2, raw.lastIndexOf('.')) : undefined;
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (id === undefined || raw !== signed(id) || (sessions.get(id) ?? 0) < now) {
      id = randomBytes(24).toString('base64url');
      sessions.set(id, now + LIFETIME_MS);
      headers['set-cookie'] = `connect.sid=${encodeURIComponent(signed(id))}; Path=/; Expires=${new Date(now + LIFETIME_MS).toUTCString()}; HttpOnly`;
    }
    if (sessions.size > 100_000) sessions.clear(); // a demo, not a session store
    const body = JSON.stringify({ 'real-server': name, name: 'connect.sid', session_id: id, expires: LIFETIME_MS });
    res.writeHead(200, headers);
    res.end(`${body}\n`);
    req.resume();
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(port, host, resolve));
  const addr = server.address() as AddressInfo;
  return {
    name,
    url: `http://${host}:${addr.port}`,
    server,
    close: () => new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections(); }),
  };
}

function signed(id: string): string {
  return `s:${id}.${createHmac('sha256', SECRET).update(id).digest('base64url').slice(0, 27)}`;
}
