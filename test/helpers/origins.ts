// Real HTTP origins for tests. A scriptable origin names itself in `x-backend`
// and sends back the Set-Cookie headers the request asks for in
// `x-set-cookie` (a JSON array), so a test controls exactly what is learnt.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { spawn } from 'node:child_process';
import { once } from 'node:events';

export interface Origin {
  name: string;
  url: string;
  server: Server;
  requests: number;
  close(): Promise<void>;
}

export type OriginHandler = (req: IncomingMessage, res: ServerResponse, origin: Origin) => void;

/** Names itself in X-Backend and its body, and sets the cookies an X-Set-Cookie header (a JSON list) asks for. */
export function scripted(req: IncomingMessage, res: ServerResponse, origin: Origin): void {
  const headers: [string, string][] = [['x-backend', origin.name], ['content-type', 'text/plain']];
  const asked = req.headers['x-set-cookie'];
  if (typeof asked === 'string') for (const c of JSON.parse(asked) as string[]) headers.push(['set-cookie', c]);
  req.resume();
  req.on('end', () => {
    res.writeHead(200, headers.flat());
    res.end(origin.name);
  });
}

export async function startOrigin(name: string, handler: OriginHandler = scripted): Promise<Origin> {
  const origin: Origin = {
    name,
    url: '',
    server: createServer((req, res) => { origin.requests++; handler(req, res, origin); }),
    requests: 0,
    close: () => new Promise<void>((resolve) => { origin.server.close(() => resolve()); origin.server.closeAllConnections(); }),
  };
  await new Promise<void>((resolve) => origin.server.listen(0, '127.0.0.1', resolve));
  origin.url = `http://127.0.0.1:${(origin.server.address() as AddressInfo).port}`;
  return origin;
}

export function backendFlags(origins: { name: string; url: string }[]): string[] {
  return origins.flatMap((o) => ['--backend', `${o.name}=${o.url}`]);
}

/** A scriptable origin in a child process: it can be killed with SIGKILL. */
export async function startOriginProcess(name: string): Promise<{ name: string; url: string; kill: () => Promise<void> }> {
  const proc = spawn(process.execPath, [new URL('../fixtures/origin-process.ts', import.meta.url).pathname, name], { stdio: ['ignore', 'pipe', 'inherit'] });
  const [line] = await once(proc.stdout!, 'data') as [Buffer];
  const port = /port (\d+)/.exec(line.toString())![1];
  return {
    name,
    url: `http://127.0.0.1:${port}`,
    kill: async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = once(proc, 'exit');
      process.kill(proc.pid!, 'SIGKILL');
      await exited;
    },
  };
}
