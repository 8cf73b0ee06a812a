// Property tests of the PROXY header parser against Node's own address
// parsing (net.isIPv4, net.isIPv6, SocketAddress), the oracle for what an
// address is and how it is written: the address a header carries becomes the
// client's in X-Forwarded-For and the access log, next to addresses Node
// wrote for clients that connect directly, so one client must read the same
// either way, and text Node would not read as an address must be refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { isIPv4, isIPv6, SocketAddress } from 'node:net';
import fc from 'fast-check';
import { PP_MORE, ProxyHeader, parseProxyHeader } from '../src/proxy-protocol.ts';

const SIG = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
const RUNS = 3000;

/** How Node writes an address: the form a directly connected client's has. */
function nodeForm(text: string): string {
  return SocketAddress.parse(text.includes(':') ? `[${text}]:1` : `${text}:1`)!.address;
}

function parse(header: Buffer): { r: number; out: ProxyHeader } {
  const out = new ProxyHeader();
  return { r: parseProxyHeader(header, 0, header.length, out), out };
}

function v1(family: 4 | 6, src: string, dst: string, sport: number, dport: number): Buffer {
  return Buffer.from(`PROXY TCP${family} ${src} ${dst} ${sport} ${dport}\r\n`, 'latin1');
}

// ------------------------------------------------------------ addresses as text

/** 16 bytes with runs of zero groups often, and IPv4-mapped and -compatible ones. */
const ipv6Bytes = fc.oneof(
  fc.uint8Array({ minLength: 16, maxLength: 16 }),
  fc.array(fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 })
    .map((groups) => Uint8Array.from(groups.flatMap((g) => [g >> 8, g & 0xff]))),
  fc.uint8Array({ minLength: 4, maxLength: 4 }).chain((v4) => fc.constantFrom(
    Uint8Array.from([...Array(10).fill(0), 0xff, 0xff, ...v4]),
    Uint8Array.from([...Array(12).fill(0), ...v4]),
  )),
);

/** One of the valid ways to write `a`: full or compressed at any run of zeros, upper or lower case, groups padded or not, the last 32 bits dotted or not. */
function ipv6Text(a: Uint8Array, style: { compress: number; upper: boolean; pad: boolean; dotted: boolean }): string {
  const groups = Array.from({ length: 8 }, (_, g) => (a[g * 2] << 8) | a[g * 2 + 1]);
  const hex = (g: number): string => {
    const s = g.toString(16);
    return style.pad ? s.padStart(4, '0') : s;
  };
  let parts = groups.map(hex);
  if (style.dotted) parts = [...parts.slice(0, 6), `${a[12]}.${a[13]}.${a[14]}.${a[15]}`];
  // Zero runs (of whole groups, before any dotted tail) that "::" may stand for.
  const runs: [number, number][] = [];
  const limit = style.dotted ? 6 : 8;
  for (let g = 0; g < limit;) {
    if (groups[g] !== 0) { g++; continue; }
    let e = g;
    while (e < limit && groups[e] === 0) e++;
    runs.push([g, e]);
    g = e;
  }
  let text: string;
  if (runs.length > 0 && style.compress > 0) {
    const [s, e] = runs[style.compress % runs.length];
    text = `${parts.slice(0, s).join(':')}::${parts.slice(e).join(':')}`;
  } else {
    text = parts.join(':');
  }
  return style.upper ? text.toUpperCase() : text;
}

const styleArb = fc.record({ compress: fc.nat(4), upper: fc.boolean(), pad: fc.boolean(), dotted: fc.boolean() });

test('v1 TCP6: an address written any valid way is read as Node reads it, and written as Node writes it', () => {
  fc.assert(fc.property(ipv6Bytes, styleArb, fc.integer({ min: 0, max: 65535 }), (a, style, port) => {
    const text = ipv6Text(a, style);
    assert.ok(isIPv6(text), `the generator wrote ${text}, which Node does not read`);
    const { r, out } = parse(v1(6, text, '::1', port, 443));
    assert.ok(r > 0, `${text} refused (${r})`);
    assert.equal(out.address, nodeForm(text), text);
    assert.equal(out.port, port);
  }), { numRuns: RUNS });
});

test('v2 TCP6 and TCP4: the address bytes are written as Node writes them', () => {
  fc.assert(fc.property(ipv6Bytes, fc.uint8Array({ minLength: 4, maxLength: 4 }), fc.integer({ min: 0, max: 65535 }), (a6, a4, port) => {
    const six = parse(Buffer.from([...SIG, 0x21, 0x21, 0, 36, ...a6, ...Array(16).fill(0), port >> 8, port & 0xff, 0, 80]));
    assert.equal(six.r, 52);
    assert.equal(six.out.address, nodeForm(ipv6Text(a6, { compress: 0, upper: false, pad: false, dotted: false })));
    const four = parse(Buffer.from([...SIG, 0x21, 0x11, 0, 12, ...a4, 10, 0, 0, 1, port >> 8, port & 0xff, 0, 80]));
    assert.equal(four.r, 28);
    assert.equal(four.out.address, nodeForm(Array.from(a4).join('.')));
  }), { numRuns: RUNS });
});

// ------------------------------------------------------------ text that may not be an address

const v6Chars = fc.string({ unit: fc.constantFrom(...'0123456789abcdefABCDEF:.'.split(''), '0', ':', ':'), minLength: 1, maxLength: 45, size: 'max' });
const v4Chars = fc.string({ unit: fc.constantFrom(...'0123456789.'.split(''), '.', '1', '25'), minLength: 1, maxLength: 20, size: 'max' });

/** `text` with one character inserted, removed or replaced: the edges of what is an address. */
function edited(text: fc.Arbitrary<string>, chars: string): fc.Arbitrary<string> {
  return fc.tuple(text, fc.nat(), fc.constantFrom('insert', 'remove', 'replace'), fc.constantFrom(...chars.split(''))).map(([t, at, op, c]) => {
    const i = at % (t.length + 1);
    if (op === 'insert') return t.slice(0, i) + c + t.slice(i);
    if (op === 'remove') return t.slice(0, i) + t.slice(i + 1);
    return t.slice(0, i) + c + t.slice(i + 1);
  }).filter((t) => t.length > 0);
}
const validV6 = fc.tuple(ipv6Bytes, styleArb).map(([a, s]) => ipv6Text(a, s));
const validV4 = fc.uint8Array({ minLength: 4, maxLength: 4 }).map((a) => Array.from(a).join('.'));

test('v1: text is taken as a source address exactly when Node reads it as one of the header\'s family', () => {
  fc.assert(fc.property(fc.oneof(v6Chars, validV6, edited(validV6, '0123456789abcdefgABCDEF:.% ')), (text) => {
    const { r, out } = parse(v1(6, text, '::1', 1, 2));
    // A zone ("%eth0"), which Node takes, names an interface of the sender's host: no address to pass on.
    const address = isIPv6(text) && !text.includes('%');
    assert.equal(r > 0, address, `${JSON.stringify(text)}: parser ${r}, Node ${isIPv6(text)}`);
    if (r > 0) assert.equal(out.address, nodeForm(text));
  }), { numRuns: RUNS });
  fc.assert(fc.property(fc.oneof(v4Chars, edited(validV4, '0123456789.a: ')), (text) => {
    const { r, out } = parse(v1(4, text, '10.0.0.1', 1, 2));
    assert.equal(r > 0, isIPv4(text), `${JSON.stringify(text)}: parser ${r}, Node ${isIPv4(text)}`);
    if (r > 0) assert.equal(out.address, text);
  }), { numRuns: RUNS });
});

// ------------------------------------------------------------ incremental reading

const tlvArb = fc.array(fc.tuple(fc.integer({ min: 0, max: 255 }), fc.uint8Array({ maxLength: 40, size: 'max' })), { maxLength: 4 })
  .map((tlvs) => tlvs.flatMap(([type, value]) => [type, value.length >> 8, value.length & 0xff, ...value]));
const headerArb: fc.Arbitrary<Buffer> = fc.oneof(
  fc.tuple(ipv6Bytes, styleArb, fc.integer({ min: 0, max: 65535 })).map(([a, s, p]) => v1(6, ipv6Text(a, s), '::1', p, 80)),
  fc.tuple(fc.uint8Array({ minLength: 4, maxLength: 4 }), fc.integer({ min: 0, max: 65535 })).map(([a, p]) => v1(4, Array.from(a).join('.'), '10.0.0.1', p, 80)),
  fc.tuple(fc.constantFrom(0x11, 0x12, 0x21, 0x22), fc.constantFrom(0x20, 0x21), tlvArb).map(([fam, cmd, tlvs]) => {
    const block = Array((fam >> 4) === 1 ? 12 : 36).fill(7);
    const len = block.length + tlvs.length;
    return Buffer.from([...SIG, cmd, fam, len >> 8, len & 0xff, ...block, ...tlvs]);
  }),
);

test('a header arriving in any pieces: every prefix asks for more, and the whole stops at its end, whatever follows', () => {
  fc.assert(fc.property(headerArb, fc.uint8Array({ maxLength: 30 }), (header, after) => {
    const stream = Buffer.concat([header, after]);
    const out = new ProxyHeader();
    for (let n = 0; n < header.length; n++) assert.equal(parseProxyHeader(stream, 0, n, out), PP_MORE, `${n} of ${header.length} bytes`);
    assert.equal(parseProxyHeader(stream, 0, stream.length, out), header.length);
  }), { numRuns: 1000 });
});
