// The event loop's own HTTP work per request, in nanoseconds: the request
// head parsed (parseRequestHead) and the head sent upstream built from it
// (upstreamHead, with the default x-request-id), then the backend's response
// head parsed (parseResponseHead) and the head sent to the client built
// (clientHead). The heads are the seed's: the bench's request with its
// session cookie, and nginx's answer, one in twenty with Set-Cookie. Also
// what a slowloris client costs the parser: a 15 KiB head sent a byte at a
// time, parsed again at every byte as the proxy does (ms for all of it).
// What the socket benchmarks cannot resolve: this is ~2 µs of a request's
// ~25, and two identical proxies differ by ±3–6% there. Usage:
//   node bench/heads.ts [--against DIR] [--rounds N]
// --against DIR: another checkout (say `git worktree add /tmp/base HEAD~`),
// measured in the same run, its rounds alternating with this tree's.
import { Buffer } from 'node:buffer';
import { median, microRun, nsPerCall } from './lib/micro.ts';

const { trees, rounds } = microRun();
const N = 1000;
const OPS = 400_000;

// As the generator sends them and nginx answers, each at an offset in one
// large read buffer, as the proxy reads them.
const requests: { buf: Buffer; start: number; end: number }[] = [];
const responses: { buf: Buffer; start: number; end: number }[] = [];
const reads = Buffer.alloc(N * 512);
for (let i = 0; i < N; i++) {
  const id = (i.toString(16) + 'f3a9c1d27b8e4605a1c3e5f7b9d2').slice(0, 26);
  const path = ['/', '/cart', '/account'][i % 3];
  const req = `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nCookie: theme=dark; PHPSESSID=${id}; _ga=GA1.2.3\r\n\r\n`;
  const cookie = i % 20 === 0 ? `Set-Cookie: PHPSESSID=${id}; Path=/; Max-Age=300; HttpOnly\r\n` : '';
  const res = `HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 16:08:24 GMT\r\nContent-Type: application/json\r\nContent-Length: 39\r\nConnection: keep-alive\r\n${cookie}\r\n`;
  const at = i * 512;
  reads.write(req, at, 'latin1');
  reads.write(res, at + 256, 'latin1');
  requests.push({ buf: reads, start: at, end: at + req.length });
  responses.push({ buf: reads, start: at + 256, end: at + 256 + res.length });
}

interface Subject {
  label: string;
  request(i: number): number;
  upstream(i: number): number;
  response(i: number): number;
  client(i: number): number;
  /** ms to take the slow head a byte at a time. */
  trickled(): number;
}

// Many 100-byte header lines, up to just below the default 16 KiB head limit.
let slowText = 'GET / HTTP/1.1\r\nHost: a\r\n';
while (slowText.length < 15_000) slowText += `X-Pad-${slowText.length}: ${'v'.repeat(90)}\r\n`;
const slowHead = Buffer.from(`${slowText}\r\n`, 'latin1');

async function subject(root: string, label: string): Promise<Subject> {
  const { RequestHead, parseRequestHead } = await import(`${root}/src/http/request.ts`);
  const { ResponseHead, parseResponseHead } = await import(`${root}/src/http/response.ts`);
  const { upstreamHead, clientHead, CLIENT_KEEP } = await import(`${root}/src/head.ts`);
  const { RequestIds, requestIdHeader } = await import(`${root}/src/request-id.ts`);
  const limits = { maxHeadBytes: 16384, maxHeaders: 100, maxUrlBytes: 8192 };
  const h = new RequestHead(limits.maxHeaders);
  const r = new ResponseHead();
  const options = { clientAddress: '127.0.0.1', proto: 'http', forwarded: false, trusted: false, requestId: requestIdHeader('x-request-id', new RequestIds()) };
  const request = (i: number): number => {
    const q = requests[i];
    const n = parseRequestHead(h, q.buf, q.start, q.end, limits);
    if (n <= 0) throw new Error(`request ${i} not parsed: ${h.reason}`);
    return n;
  };
  const response = (i: number): number => {
    const s = responses[i];
    const n = parseResponseHead(r, s.buf, s.start, s.end);
    if (n <= 0) throw new Error(`response ${i} not parsed: ${r.reason}`);
    return n;
  };
  return {
    label,
    request,
    upstream: (i) => request(i) + upstreamHead(h, options, false).bytes.length,
    response,
    client: (i) => response(i) + clientHead(r, false, CLIENT_KEEP).length,
    trickled(): number {
      const many = new RequestHead(400);
      const slowLimits = { ...limits, maxHeaders: 400 };
      const t = process.hrtime.bigint();
      // As ClientConnection does: -1 for a head not yet seen, then how far it was validated.
      let checked = -1;
      for (let end = 1; end <= slowHead.length; end++) {
        const n = parseRequestHead(many, slowHead, 0, end, slowLimits, checked);
        if (n < 0) throw new Error(`slow head refused: ${many.reason}`);
        if (n > 0) break;
        checked = many.validEnd;
      }
      return Number(process.hrtime.bigint() - t) / 1e6;
    },
  };
}

const time = (f: (i: number) => number): number => nsPerCall(f, OPS, N);

const subjects = await Promise.all(trees.map((t, i) => subject(t, i === 0 ? 'this tree' : t)));
const results = subjects.map(() => ({ request: [] as number[], upstream: [] as number[], response: [] as number[], client: [] as number[], trickled: [] as number[] }));
for (let r = 0; r < rounds; r++) {
  subjects.forEach((sub, j) => {
    results[j].request.push(time(sub.request));
    results[j].upstream.push(time(sub.upstream));
    results[j].response.push(time(sub.response));
    results[j].client.push(time(sub.client));
    results[j].trickled.push(sub.trickled());
  });
}
console.log('| tree | request parsed, ns | + upstream head built, ns | built alone, ns | response parsed, ns | + client head built, ns | built alone, ns | all four, ns | 15 KiB head a byte at a time, ms |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
subjects.forEach((sub, j) => {
  const q = median(results[j].request);
  const u = median(results[j].upstream);
  const s = median(results[j].response);
  const c = median(results[j].client);
  console.log(`| ${sub.label} | ${q.toFixed(0)} | ${u.toFixed(0)} | ${(u - q).toFixed(0)} | ${s.toFixed(0)} | ${c.toFixed(0)} | ${(c - s).toFixed(0)} | ${(u + c).toFixed(0)} | ${median(results[j].trickled).toFixed(1)} |`);
});
console.log(`\nmedians of ${rounds} rounds of ${OPS} requests over ${N} heads; node ${process.version}`);
