// Hostile input on raw sockets: request smuggling forms are refused with 400
// and the connection closed, never forwarded; oversized headers get 431; a
// flood of garbage leaves the process serving with flat memory.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { startOrigin, type Origin } from './helpers/origins.ts';
import { get, startProxy, type ProxyProcess } from './helpers/proxy.ts';

let origin: Origin;
let proxy: ProxyProcess;
const seenPaths: string[] = [];

before(async () => {
  origin = await startOrigin('o', (req, res) => {
    seenPaths.push(req.url!);
    req.resume();
    req.on('end', () => { res.writeHead(200, { 'x-backend': 'o' }); res.end('ok'); });
    req.on('error', () => {});
  });
  proxy = await startProxy(['--backend', `o=${origin.url}`]);
});
after(async () => {
  await proxy.stop();
  await origin.close();
});

/** Sends raw bytes; resolves with what came back once the proxy closes the connection (or 3 s pass). */
async function send(bytes: string): Promise<{ answer: string; closed: boolean }> {
  const { port } = new URL(proxy.url);
  const s = connect(Number(port), '127.0.0.1');
  let answer = '';
  s.on('data', (d) => { answer += d.toString('latin1'); });
  s.on('error', () => {});
  s.write(bytes);
  const closed = await Promise.race([
    new Promise<boolean>((resolve) => s.on('close', () => resolve(true))),
    sleep(3000).then(() => false),
  ]);
  s.destroy();
  return { answer, closed };
}

const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n';
const forms: [string, string][] = [
  ['Content-Length with Transfer-Encoding', `POST /front HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`],
  ['duplicate Content-Length', `POST /front HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`],
  ['differing duplicate Content-Length in one line', `POST /front HTTP/1.1\r\nHost: x\r\nContent-Length: 0, ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`],
  ['obfuscated Transfer-Encoding (xchunked)', `POST /front HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n${SMUGGLED}`],
  ['obfuscated Transfer-Encoding (space before colon)', `POST /front HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`],
  ['obfuscated Transfer-Encoding (chunked, identity)', `POST /front HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${SMUGGLED}`],
  ['obfuscated Transfer-Encoding (line folding)', `POST /front HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`],
  ['invalid chunk size', `POST /front HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n${SMUGGLED}`],
  ['chunk size with junk', `POST /front HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4 x\r\nabcd\r\n0\r\n\r\n${SMUGGLED}`],
];

for (const [name, bytes] of forms) {
  test(`smuggling refused: ${name}`, async () => {
    seenPaths.length = 0;
    const { answer, closed } = await send(bytes);
    assert.match(answer, /^HTTP\/1\.1 400 /, `answer: ${JSON.stringify(answer.slice(0, 80))}`);
    assert.ok(closed, 'the connection is closed');
    await sleep(100);
    assert.ok(!seenPaths.includes('/smuggled'), `the origin saw ${seenPaths}`);
  });
}

test('oversized headers get 431', async () => {
  const { answer, closed } = await send(`GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`);
  assert.match(answer, /^HTTP\/1\.1 431 /);
  assert.ok(closed);
});

test('garbage on many connections: the process keeps serving, with flat memory', async () => {
  assert.equal((await get(proxy.url)).status, 200);
  const before = proxy.rssMiB();
  const { port } = new URL(proxy.url);
  const junk = Buffer.alloc(16 * 1024);
  for (let round = 0; round < 5; round++) {
    const socks = Array.from({ length: 200 }, () => {
      const s = connect(Number(port), '127.0.0.1');
      s.on('error', () => {});
      for (let i = 0; i < junk.length; i++) junk[i] = Math.floor(Math.random() * 256);
      s.write(junk);
      s.write('\r\n\r\n\x00\x01GET / HTTP/1.1\r\nHost: x\r\n\r\n');
      return s;
    });
    await sleep(300);
    for (const s of socks) s.destroy();
  }
  await sleep(300);
  const r = await get(proxy.url);
  assert.equal(r.status, 200);
  const grown = proxy.rssMiB() - before;
  assert.ok(grown < 50, `RSS grew ${grown.toFixed(1)} MiB`);
});
