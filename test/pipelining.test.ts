// A client that pipelines requests and does not read its answers must not
// make the proxy buffer answers without bound: once the answers back up, the
// next request waits until the client takes them (as NGINX finishes writing
// an answer before it reads the next request), so what the proxy holds is
// bounded by the socket buffers, not by what the client sends. Before, it went
// on reading and serving, and one such connection grew the proxy's memory by
// about 12 MiB a second until it ran out.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { once } from 'node:events';
import { startOrigin, type Origin } from './helpers/origins.ts';
import { startProxy, type ProxyProcess } from './helpers/proxy.ts';
import { waitFor } from './helpers/wait.ts';

const T = { timeout: 60_000 };
/** Requests the client pipelines: 1.6 MB of them, each answered with 1 KiB, 55 MB of answers in all. */
const REQUESTS = 50_000;
const BODY = 'x'.repeat(1024);

let origin: Origin;
let proxy: ProxyProcess;

before(async () => {
  origin = await startOrigin('a', (req, res) => {
    req.resume();
    res.writeHead(200, { 'content-length': BODY.length, 'x-n': req.url!.slice(1) });
    res.end(BODY);
  });
  proxy = await startProxy(['--backend', `a=${origin.url}`, '--no-affinity', '--threads', '1']);
}, T);
after(async () => {
  await proxy.stop();
  await origin.close();
}, T);

test('a client that pipelines and reads nothing: the proxy stops serving it once its answers back up; then every answer comes, in order', T, async () => {
  const sock = connect(Number(new URL(proxy.url).port), '127.0.0.1');
  await once(sock, 'connect');
  sock.pause();
  const requests: Buffer[] = [];
  for (let i = 0; i < REQUESTS; i++) requests.push(Buffer.from(`GET /${i} HTTP/1.1\r\nHost: a\r\n\r\n`));
  sock.write(Buffer.concat(requests));
  // What reached the origin stops growing, well short of everything sent.
  let seen = -1;
  let since = performance.now();
  await waitFor(() => {
    if (origin.requests !== seen) {
      seen = origin.requests;
      since = performance.now();
      return false;
    }
    return performance.now() - since > 1000;
  }, { what: 'the requests reaching the origin to stop growing', timeoutMs: 30_000 });
  assert.ok(seen < REQUESTS, `the proxy served all ${REQUESTS} requests of a client that read nothing`);

  // The client reads now: every answer, in order, and the connection stays usable.
  let text = '';
  let next = 0;
  sock.setEncoding('latin1');
  sock.resume();
  await new Promise<void>((resolve, reject) => {
    sock.on('error', reject);
    sock.on('data', (d: string) => {
      text += d;
      for (;;) {
        const at = text.indexOf('\r\n\r\n');
        if (at < 0 || text.length < at + 4 + BODY.length) return;
        const n = /\r\nx-n: (\d+)\r\n/i.exec(text.slice(0, at + 2));
        assert.equal(n?.[1], String(next), `answer ${next} in order`);
        text = text.slice(at + 4 + BODY.length);
        if (++next === REQUESTS) resolve();
      }
    });
  });
  assert.equal(text, '');
  assert.equal(origin.requests, REQUESTS);
  sock.destroy();
});
