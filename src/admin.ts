// The admin listener: metrics, liveness and readiness, the backends and
// their state, and drain/disable/enable. Bound to loopback unless told otherwise.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AdminState, BackendSet } from './backends.ts';
import type { Logger } from './log.ts';

export interface AdminDeps {
  backends: BackendSet;
  /** The Prometheus text of the whole process. */
  metrics: () => Promise<{ contentType: string; text: string }>;
  /** True once the proxy listens. */
  listening: () => boolean;
  /** Said by /readyz beside `ready`, which it does not change. */
  affinity: () => AffinityReadiness;
  log: Logger;
}

/** `degraded` while a memcached server is down: affinity is partial, the proxy still serves. */
export interface AffinityReadiness {
  affinity: 'ok' | 'degraded' | 'off';
  /** Each memcached server, true while it answers. */
  store?: Record<string, boolean>;
}

const ACTIONS: Record<string, AdminState> = { drain: 'draining', disable: 'disabled', enable: 'enabled' };

function send(res: ServerResponse, status: number, body: unknown, type = 'application/json'): void {
  const text = typeof body === 'string' ? body : `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export function createAdmin(deps: AdminDeps): Server {
  const describe = () => deps.backends.list.map((b) => ({
    name: b.name, url: b.url.origin, weight: b.weight, state: b.state, active: b.activeEverywhere,
  }));
  return createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    const url = new URL(req.url ?? '/', 'http://admin');
    const path = url.pathname;
    if (req.method === 'GET' && path === '/metrics') {
      deps.metrics().then(
        (m) => send(res, 200, m.text, m.contentType),
        (err: Error) => send(res, 500, { error: err.message }),
      );
      return;
    }
    if (req.method === 'GET' && path === '/healthz') return send(res, 200, { status: 'ok' });
    if (req.method === 'GET' && path === '/readyz') {
      const ready = deps.listening() && deps.backends.list.some((b) => b.up);
      return send(res, ready ? 200 : 503, { ready, ...deps.affinity() });
    }
    if (req.method === 'GET' && path === '/backends') return send(res, 200, describe());
    const m = /^\/backends\/([^/]+)\/(drain|disable|enable)$/.exec(path);
    if (m !== null) {
      if (req.method !== 'POST') return send(res, 405, { error: 'use POST' });
      const b = deps.backends.get(decodeURIComponent(m[1]));
      if (b === undefined) return send(res, 404, { error: `no backend named ${m[1]}` });
      b.admin = ACTIONS[m[2]]; // shared: every event loop sees it at once
      deps.log.info({ backend: b.name, state: b.state }, `backend ${m[2]}`);
      return send(res, 200, { name: b.name, state: b.state });
    }
    send(res, 404, { error: 'not found' });
  });
}
