// The suite's own origins, for machines without nginx (or with --origin node):
// two session servers in one process that behave like the peers'
// origin-nginx.conf. A request without a PHPSESSID cookie gets a fresh one
// (Max-Age 300); the body is JSON naming the real-server. For the heavier
// scenarios, GET /large answers 1 MiB (starting with the same JSON fields) and
// POST /upload reads the whole body before answering.
// Usage: node bench/origin.ts PORT1 PORT2   (prints "ready" once both listen)
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { randomBytes } from 'node:crypto';

const LARGE = 1 << 20;
const COOKIE = /(?:^|;\s*)PHPSESSID=([^;]*)/;

function largeBody(name: string): Buffer {
  const head = `{"real-server":"${name}","pad":"`;
  const tail = '"}\n';
  return Buffer.from(head + 'x'.repeat(LARGE - head.length - tail.length) + tail, 'latin1');
}

function start(name: string, prefix: string, port: number): Promise<void> {
  const large = largeBody(name);
  // Unique ids as cheaply as nginx's $request_id: a random stem and a counter.
  const stem = randomBytes(8).toString('hex');
  let counter = 0;
  const answer = (req: IncomingMessage, res: ServerResponse): void => {
    const cookie = req.headers.cookie;
    const m = cookie === undefined ? null : COOKIE.exec(cookie);
    const sid = m === null ? '' : m[1];
    const headers: Record<string, string | number> = { 'content-type': 'application/json' };
    if (sid === '') headers['set-cookie'] = `PHPSESSID=${prefix}${stem}${(counter++).toString(16)}; Path=/; Max-Age=300; HttpOnly`;
    if (req.url === '/large') {
      headers['content-length'] = large.length;
      res.writeHead(200, headers);
      res.end(large);
      return;
    }
    const body = `{"real-server":"${name}","session_id":"${sid}"}\n`;
    headers['content-length'] = Buffer.byteLength(body);
    res.writeHead(200, headers);
    res.end(body);
  };
  const server = createServer((req, res) => {
    if (req.method === 'POST' || req.method === 'PUT') {
      req.on('data', () => {});
      req.on('end', () => answer(req, res));
      return;
    }
    req.resume();
    answer(req, res);
  });
  server.keepAliveTimeout = 75_000; // nginx's default keepalive_timeout
  server.maxHeadersCount = 100;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
}

const [p1, p2] = process.argv.slice(2).map(Number);
await Promise.all([start('srv1', 's1', p1), start('srv2', 's2', p2)]);
process.stdout.write('ready\n');
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
