// Property test of misbehaving clients, end to end through real loopback
// sockets: a client that stops in the middle of its request (its head or its
// body, Content-Length or chunked) by a FIN, a reset or silence must never
// get a request completed upstream:
// - the backend never sees the cut request whole, and what it sees of it is a
//   prefix of what the client sent;
// - the client is answered 408 if it went silent, and not at all if it ended
//   or reset its connection: never the backend's answer to a request it did
//   not finish;
// - the backend connection that carried part of it is not used again (the
//   next request on it would be read as the rest of the body), so a fresh
//   request afterwards reaches the backend whole and is answered.
// Whole requests are generated too, and must arrive byte for byte.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import fc from 'fast-check';
import { checkProperty, Conn, encodeChunked, latin1, seededBytes, type Setup, twinSetups } from './helpers/wire.ts';

const NUM_RUNS = 200;
/** Runs through TLS on both sides (a client to --tls-cert, the proxy to an https:// origin). */
const TLS_RUNS = 60;
/** The proxy's client timeouts in this test: a silent client is given up on after this long. */
const TIMEOUT_MS = 300;
const ANSWER_MS = 4000;

type End = 'fin' | 'reset' | 'silence';

interface Case {
  method: 'POST' | 'PUT';
  chunked: boolean;
  body: { length: number; seed: number };
  /** Thousandths of the request the client sends before its end; 1000: all of it (then it waits for the answer). */
  at: number;
  end: End;
  /** The client's bytes go out in two writes, split here (thousandths of what it sends). */
  split: number;
}

const caseArb: fc.Arbitrary<Case> = fc.record({
  method: fc.constantFrom<'POST' | 'PUT'>('POST', 'PUT'),
  chunked: fc.boolean(),
  body: fc.record({ length: fc.oneof(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 40_000 })), seed: fc.integer({ min: 1, max: 0x7fffffff }) }),
  at: fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 0, max: 999 }) }, { weight: 1, arbitrary: fc.constant(1000) }),
  end: fc.constantFrom<End>('fin', 'reset', 'silence'),
  split: fc.integer({ min: 0, max: 1000 }),
});

const SPECIAL = [latin1('\r\n'), latin1('0\r\n\r\n'), latin1('GET / HTTP/1.1\r\n')];

// ------------------------------------------------------------------- origin

/** What the origin got of each case: its body once whole, or that it began. */
const seen = new Map<number, { whole: Buffer | null }>();
/** Requests the origin could not place: a probe read as part of another request's body shows up here as missing. */
let probes = 0;

/** Reads requests off a connection: a head, then its body by its framing; answers each whole one. */
function serve(sock: Socket): void {
  let pending: Buffer = Buffer.alloc(0);
  let current: { id: number; chunked: boolean; left: number; parts: Buffer[] } | null = null;
  sock.on('data', (d: Buffer) => {
    pending = pending.length === 0 ? d : Buffer.concat([pending, d]);
    for (;;) {
      if (current === null) {
        const end = pending.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = pending.toString('latin1', 0, end);
        pending = pending.subarray(end + 4);
        const id = Number(/\r\nx-case: (\d+)/i.exec(head)?.[1] ?? 0);
        if (id === 0) {
          probes++;
          sock.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nprobe');
          continue;
        }
        const cl = /\r\ncontent-length: (\d+)/i.exec(head);
        current = { id, chunked: cl === null, left: cl === null ? 0 : Number(cl[1]), parts: [] };
        seen.set(id, { whole: null });
      }
      const cur: { id: number; chunked: boolean; left: number; parts: Buffer[] } = current;
      if (!cur.chunked) {
        const n = Math.min(cur.left, pending.length);
        cur.parts.push(pending.subarray(0, n));
        pending = pending.subarray(n);
        cur.left -= n;
        if (cur.left > 0) return;
      } else {
        // The chunked body, decoded: size lines, data, and the last-chunk with no trailers.
        const eol = pending.indexOf('\r\n');
        if (eol < 0) return;
        const size = parseInt(pending.toString('latin1', 0, eol), 16);
        if (size === 0) {
          if (pending.length < eol + 4) return;
          pending = pending.subarray(eol + 4);
        } else {
          if (pending.length < eol + 2 + size + 2) return;
          cur.parts.push(pending.subarray(eol + 2, eol + 2 + size));
          pending = pending.subarray(eol + 2 + size + 2);
          continue;
        }
      }
      seen.set(cur.id, { whole: Buffer.concat(cur.parts) });
      sock.write(`HTTP/1.1 200 OK\r\nX-Case: ${cur.id}\r\nContent-Length: 2\r\n\r\nok`);
      current = null;
    }
  });
}

// ---------------------------------------------------------------------- test

const FLAGS = ['--no-affinity', '--client-header-timeout', String(TIMEOUT_MS), '--client-body-timeout', String(TIMEOUT_MS)];
const twins = twinSetups(serve, {}, FLAGS);

let nextId = 1;

async function property(setup: Setup, numRuns: number): Promise<void> {
  const proxy = setup.proxy;
  await checkProperty(proxy, caseArb, numRuns, async (c) => {
    const id = nextId++;
    const at = `case ${id} (${c.method} ${c.chunked ? 'chunked' : 'length'} ${c.body.length}, ${c.at}‰, ${c.end})`;
    const body = seededBytes(c.body.length, c.body.seed, SPECIAL);
    const head = `${c.method} /case HTTP/1.1\r\nHost: x\r\nX-Case: ${id}\r\n${c.chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${body.length}`}\r\n\r\n`;
    const request = Buffer.concat([latin1(head), c.chunked ? encodeChunked(body, { cuts: [250, 750] }) : body]);
    const sent = request.subarray(0, Math.floor((c.at * request.length) / 1000));
    const whole = sent.length === request.length;
    const conn = new Conn(proxy.port, setup.secure);
    try {
      const split = Math.floor((c.split * sent.length) / 1000);
      conn.sock.write(sent.subarray(0, split));
      await new Promise((resolve) => setImmediate(resolve));
      conn.sock.write(sent.subarray(split));
      const deadline = Date.now() + ANSWER_MS;
      if (whole) {
        // A whole request: answered by the backend, which got the body byte for byte.
        while (conn.buf.indexOf('\r\n\r\nok') < 0) await conn.more(deadline, `${at}: the answer`);
        assert.match(conn.buf.toString('latin1'), /^HTTP\/1\.1 200 /, `${at}: the backend's answer`);
        const got = seen.get(id)?.whole;
        assert.ok(got !== null && got !== undefined && got.equals(body), `${at}: the body at the backend, byte for byte`);
      } else {
        if (c.end === 'fin') conn.sock.end();
        else if (c.end === 'reset') {
          if ((conn.sock as TLSSocket).encrypted === true) conn.sock.destroy();
          else conn.sock.resetAndDestroy();
        }
        // The proxy closes the connection: at once for a FIN or a reset, at its timeout for silence.
        while (!conn.ended) await conn.more(deadline, `${at}: the proxy to close the connection`).catch((err: Error) => { if (!conn.ended) throw err; });
        const answer = conn.buf.toString('latin1');
        // A client that ended or reset its connection is not answered; a silent one gets a 408 once it has begun a request.
        const want = c.end === 'silence' && sent.length > 0 ? /^HTTP\/1\.1 408 [^]*\r\n\r\nRequest Timeout\n$/ : /^$/;
        assert.match(answer, want, `${at}: what the client got`);
        assert.equal(seen.get(id)?.whole ?? null, null, `${at}: the backend got the cut request whole`);
      }
      // A fresh request reaches the backend as a request of its own, and is answered.
      const before = probes;
      const probe = new Conn(proxy.port, setup.secure);
      try {
        probe.sock.write('GET /probe HTTP/1.1\r\nHost: x\r\n\r\n');
        const pd = Date.now() + ANSWER_MS;
        while (probe.buf.indexOf('\r\n\r\nprobe') < 0) await probe.more(pd, `${at}: the probe after it`);
        assert.ok(probes > before, `${at}: the probe reached the backend as a request`);
      } finally {
        probe.sock.destroy();
      }
    } finally {
      conn.sock.destroy();
      seen.delete(id);
    }
  });
}

test('misbehaving clients: a request cut short is never completed upstream, and its backend connection is not used again', { timeout: 110_000 }, async () => {
  await property(twins.plain, NUM_RUNS);
});

test('the same through TLS on both sides: a client to --tls-cert, the proxy to an https:// origin', { timeout: 110_000 }, async () => {
  await property(twins.secure, TLS_RUNS);
});
