// Pure unit tests of the memcache client's building blocks: codec, keys,
// expirations, hash ring. No sockets.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  FrameParser, HEADER_SIZE, MAGIC_REQUEST, MAGIC_RESPONSE, Op, ProtocolError, Status,
  encodeKeyOnly, encodeNoop, encodeStore, encodeTouch, writeHeader, type Frame,
} from '../src/memcache/codec.ts';
import { MAX_KEY_LENGTH, memcacheKey, validatePrefix } from '../src/memcache/keys.ts';
import { MAX_RELATIVE_EXPTIME, exptimeForTtl, isValidExptime } from '../src/memcache/expiry.ts';
import { HashRing } from '../src/memcache/ring.ts';
import { parseAddress } from '../src/memcache/server.ts';

// Every test has its own deadline, so a hang fails fast instead of stalling the run.
const timeout = 20_000;

interface Decoded { magic: number; opcode: number; status: number; opaque: number; extras: Buffer; key: string; value: Buffer }

function snapshot(f: Frame): Decoded {
  return {
    magic: f.magic, opcode: f.opcode, status: f.status, opaque: f.opaque,
    extras: Buffer.from(f.buf.subarray(f.extrasStart, f.keyStart)),
    key: f.buf.toString('latin1', f.keyStart, f.valueStart),
    value: Buffer.from(f.buf.subarray(f.valueStart, f.end)),
  };
}

function parseAll(chunks: Buffer[], magic = MAGIC_REQUEST): Decoded[] {
  const out: Decoded[] = [];
  const p = new FrameParser((f) => out.push(snapshot(f)), magic);
  for (const c of chunks) p.feed(c);
  return out;
}

function sampleRequests(): { bytes: Buffer; expected: Decoded[] } {
  const buf = Buffer.alloc(4096);
  let off = 0;
  off = encodeKeyOnly(buf, off, Op.GETKQ, 1, 'alpha');
  off = encodeTouch(buf, off, Op.GATKQ, 2, 'beta', 3600);
  off = encodeStore(buf, off, Op.SETQ, 3, 'gamma', 0xdeadbeef, 2592001, 'välue', Buffer.byteLength('välue'));
  off = encodeStore(buf, off, Op.SETQ, 4, 'delta', 0, 0, Buffer.from([0, 1, 2]), 3);
  off = encodeKeyOnly(buf, off, Op.DELETEQ, 0xffffffff, 'eps');
  off = encodeTouch(buf, off, Op.TOUCH, 6, 'zeta', 1);
  off = encodeNoop(buf, off, 7);
  const u32 = (...v: number[]): Buffer => { const b = Buffer.alloc(4 * v.length); v.forEach((x, i) => b.writeUInt32BE(x, 4 * i)); return b; };
  const none = Buffer.alloc(0);
  const req = (opcode: number, opaque: number, extras: Buffer, key: string, value: Buffer): Decoded =>
    ({ magic: MAGIC_REQUEST, opcode, status: 0, opaque, extras, key, value });
  return {
    bytes: buf.subarray(0, off),
    expected: [
      req(Op.GETKQ, 1, none, 'alpha', none),
      req(Op.GATKQ, 2, u32(3600), 'beta', none),
      req(Op.SETQ, 3, u32(0xdeadbeef, 2592001), 'gamma', Buffer.from('välue')),
      req(Op.SETQ, 4, u32(0, 0), 'delta', Buffer.from([0, 1, 2])),
      req(Op.DELETEQ, 0xffffffff, none, 'eps', none),
      req(Op.TOUCH, 6, u32(1), 'zeta', none),
      req(Op.NOOP, 7, none, '', none),
    ],
  };
}

test('codec: header layout matches the binary protocol spec', { timeout }, () => {
  const b = Buffer.alloc(64);
  const end = encodeKeyOnly(b, 0, Op.GETKQ, 0x01020304, 'key');
  assert.equal(end, HEADER_SIZE + 3);
  assert.deepEqual(
    [...b.subarray(0, HEADER_SIZE)],
    [0x80, 0x0d, 0, 3, 0, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0],
  );
  assert.equal(b.toString('latin1', HEADER_SIZE, end), 'key');
});

test('codec: encode/decode round trip', { timeout }, () => {
  const { bytes, expected } = sampleRequests();
  assert.deepEqual(parseAll([bytes]), expected);
});

test('codec: incremental parse gives the same frames split at every byte boundary', { timeout }, () => {
  const { bytes, expected } = sampleRequests();
  for (let i = 0; i <= bytes.length; i++) {
    assert.deepEqual(parseAll([bytes.subarray(0, i), bytes.subarray(i)]), expected, `split at ${i}`);
  }
  // And one byte at a time.
  assert.deepEqual(parseAll([...bytes].map((x) => Buffer.from([x]))), expected);
});

test('codec: random splits of random responses (property)', { timeout }, () => {
  const frame = fc.record({
    opcode: fc.constantFrom(Op.GETKQ, Op.GATKQ, Op.NOOP, Op.TOUCH),
    status: fc.constantFrom(Status.OK, Status.KEY_NOT_FOUND, Status.OUT_OF_MEMORY),
    opaque: fc.nat({ max: 0xffffffff }),
    flags: fc.nat({ max: 0xffffffff }),
    key: fc.stringMatching(/^[!-~]{0,20}$/),
    value: fc.uint8Array({ maxLength: 300, size: 'max' }),
  });
  fc.assert(fc.property(fc.array(frame, { minLength: 1, maxLength: 8 }), fc.array(fc.nat(), { maxLength: 6 }), (frames, cuts) => {
    const parts: Buffer[] = [];
    for (const f of frames) {
      const body = 4 + f.key.length + f.value.length;
      const b = Buffer.alloc(HEADER_SIZE + body);
      writeHeader(b, 0, MAGIC_RESPONSE, f.opcode, f.key.length, 4, f.status, body, f.opaque);
      b.writeUInt32BE(f.flags, HEADER_SIZE);
      b.write(f.key, HEADER_SIZE + 4, 'latin1');
      Buffer.from(f.value).copy(b, HEADER_SIZE + 4 + f.key.length);
      parts.push(b);
    }
    const all = Buffer.concat(parts);
    const points = [...new Set(cuts.map((c) => c % (all.length + 1)))].sort((a, b) => a - b);
    const chunks: Buffer[] = [];
    let prev = 0;
    for (const p of [...points, all.length]) { chunks.push(all.subarray(prev, p)); prev = p; }
    const got = parseAll(chunks, MAGIC_RESPONSE);
    assert.equal(got.length, frames.length);
    got.forEach((g, i) => {
      assert.equal(g.opaque, frames[i].opaque);
      assert.equal(g.status, frames[i].status);
      assert.equal(g.extras.readUInt32BE(0), frames[i].flags);
      assert.equal(g.key, frames[i].key);
      assert.deepEqual(g.value, Buffer.from(frames[i].value));
    });
  }));
});

test('codec: a bad magic byte is a protocol error', { timeout }, () => {
  const p = new FrameParser(() => {});
  assert.throws(() => p.feed(Buffer.from('VALUE foo 0 3\r\nbar\r\nEND\r\n')), ProtocolError);
});

test('keys: valid keys pass through with the prefix', { timeout }, () => {
  assert.equal(memcacheKey('', 'session:abc'), 'session:abc');
  assert.equal(memcacheKey('sp:', 'session:abc'), 'sp:session:abc');
  assert.equal(memcacheKey('', 'k'.repeat(MAX_KEY_LENGTH)), 'k'.repeat(MAX_KEY_LENGTH));
});

test('keys: keys memcached would reject are hashed, deterministically and distinctly', { timeout }, () => {
  const bad = ['k'.repeat(251), 'has space', 'tab\t', 'nl\n', 'ctl\x01', 'del\x7f', 'ünïcode', '日本', '', '#starts-with-hash'];
  const mapped = bad.map((k) => memcacheKey('p:', k));
  for (const [i, m] of mapped.entries()) {
    assert.match(m, /^p:#[A-Za-z0-9_-]{43}$/, `key ${JSON.stringify(bad[i])}`);
    assert.equal(memcacheKey('p:', bad[i]), m);
  }
  assert.equal(new Set(mapped).size, bad.length);
  // A valid key that would exceed the limit only once prefixed is hashed too.
  assert.match(memcacheKey('pre:', 'k'.repeat(248)), /^pre:#/);
});

test('keys: prefixes that cannot start a valid key are refused', { timeout }, () => {
  assert.throws(() => validatePrefix('a b'));
  assert.throws(() => validatePrefix('x'.repeat(207)));
  validatePrefix('x'.repeat(206));
  assert.equal(memcacheKey('x'.repeat(206), '\u0000').length, MAX_KEY_LENGTH);
});

test('expiry: relative up to 30 days, absolute beyond', { timeout }, () => {
  assert.equal(MAX_RELATIVE_EXPTIME, 2592000);
  const now = 1_700_000_000_000;
  assert.equal(exptimeForTtl(60, now), 60);
  assert.equal(exptimeForTtl(2592000, now), 2592000);
  assert.equal(exptimeForTtl(2592001, now), 1_700_000_000 + 2592001);
  assert.equal(exptimeForTtl(0.2, now), 1);
  assert.throws(() => exptimeForTtl(0, now));
  assert.ok(isValidExptime(0) && isValidExptime(0xffffffff));
  assert.ok(!isValidExptime(-1) && !isValidExptime(1.5) && !isValidExptime(2 ** 32) && !isValidExptime(NaN));
});

test('ring: keys spread evenly; removing or adding a server moves about 1/N, only where needed', { timeout }, () => {
  const servers = ['10.0.0.1:11211', '10.0.0.2:11211', '10.0.0.3:11211'];
  const keys = Array.from({ length: 30000 }, (_, i) => `session:${i}`);
  const three = new HashRing(servers);
  const placed = keys.map((k) => servers[three.lookup(k)]);
  for (const s of servers) {
    const share = placed.filter((p) => p === s).length / keys.length;
    assert.ok(share > 0.25 && share < 0.42, `${s} holds ${share}`);
  }
  const two = new HashRing([servers[0], servers[2]]);
  let moved = 0;
  keys.forEach((k, i) => {
    const now = [servers[0], servers[2]][two.lookup(k)];
    if (now !== placed[i]) {
      moved++;
      assert.equal(placed[i], servers[1], 'only keys of the removed server move');
    }
  });
  assert.ok(moved / keys.length > 0.25 && moved / keys.length < 0.42, `moved ${moved}`);

  const four = new HashRing([...servers, '10.0.0.4:11211']);
  let gained = 0;
  keys.forEach((k, i) => {
    const now = [...servers, '10.0.0.4:11211'][four.lookup(k)];
    if (now !== placed[i]) {
      gained++;
      assert.equal(now, '10.0.0.4:11211', 'keys only move to the new server');
    }
  });
  assert.ok(gained / keys.length > 0.17 && gained / keys.length < 0.33, `gained ${gained}`);
});

test('server addresses: host:port, IPv6 in brackets', { timeout }, () => {
  assert.deepEqual(parseAddress('127.0.0.1:11211'), { host: '127.0.0.1', port: 11211 });
  assert.deepEqual(parseAddress('cache.internal:1'), { host: 'cache.internal', port: 1 });
  assert.deepEqual(parseAddress('[::1]:11211'), { host: '::1', port: 11211 });
  for (const bad of ['::1:11211', 'host', 'host:0', 'host:65536', '[::1]', ':11211']) {
    assert.throws(() => parseAddress(bad), RangeError, bad);
  }
});
