// Property tests of Cookie and Set-Cookie handling with arbitrary input: it
// never throws, finds the right id, and always yields a key memcached accepts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { requestSessionKeys, sessionKey, sessionSetCookie } from '../src/cookies.ts';
import { memcacheKey } from '../src/memcache/keys.ts';
import { DEFAULT_SESSION_COOKIES } from '../src/config.ts';

const names = DEFAULT_SESSION_COOKIES;
const rules = { defaultTtl: 1800, maxTtl: 86400 };
// Cookie-octets (RFC 6265): what a well-behaved server puts in an id.
const cookieOctet = fc.constantFrom(...'!#$%&\'()*+-./0123456789:<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxyz{|}~'.split(''));
const id = fc.string({ unit: cookieOctet, minLength: 1, maxLength: 300, size: 'max' });
const anyText = fc.string({ unit: 'binary', maxLength: 500, size: 'max' });
const otherCookie = fc.tuple(fc.string({ unit: fc.constantFrom(...'abcdefxyz_'.split('')), minLength: 1, maxLength: 8 }), id)
  .map(([n, v]) => `${n}=${v}`);

test('Cookie headers of arbitrary bytes never throw, and give keys memcached accepts', () => {
  fc.assert(fc.property(anyText, (header) => {
    for (const key of requestSessionKeys(header, names)) {
      const k = memcacheKey('sp:', key);
      assert.ok(k.length <= 250);
      assert.match(k, /^[\x21-\x7e]+$/);
    }
  }), { numRuns: 2000 });
});

test('the session id is found among other cookies, exactly as sent', () => {
  fc.assert(fc.property(fc.array(otherCookie, { maxLength: 5 }), fc.array(otherCookie, { maxLength: 5 }), fc.constantFrom(...names), id, (before, after, name, value) => {
    const header = [...before, `${name}=${value}`, ...after].join('; ');
    const keys = requestSessionKeys(header, [name]);
    const expected = value.length >= 2 && value.startsWith('"') && value.endsWith('"') ? value.slice(1, -1) : value;
    assert.deepEqual(keys, expected === '' ? [] : [sessionKey(name, expected)]);
  }), { numRuns: 2000 });
});

test('Set-Cookie values of arbitrary bytes never throw; lifetimes stay within bounds', () => {
  fc.assert(fc.property(anyText, fc.constantFrom(...names), (tail, name) => {
    for (const value of [tail, `${name}=${tail}`, `${name}=x; ${tail}`]) {
      const sc = sessionSetCookie(value, names, rules, Date.now());
      if (sc === null) continue;
      assert.ok(sc.ttl >= 0 && sc.ttl <= rules.maxTtl, `ttl ${sc.ttl}`);
      // Sliding: a cookie without an expiry (the default TTL), or one that outlives the cap (at the cap).
      if (sc.sliding) assert.ok(sc.ttl === rules.defaultTtl || sc.ttl === rules.maxTtl, `sliding ttl ${sc.ttl}`);
    }
  }), { numRuns: 2000 });
});

test('Max-Age wins over Expires, whatever their values', () => {
  fc.assert(fc.property(fc.integer({ min: -1000, max: 200000 }), fc.integer({ min: -1000, max: 200000 }), id, (maxAge, expiresIn, value) => {
    const now = Date.now();
    const expires = new Date(now + expiresIn * 1000).toUTCString();
    const sc = sessionSetCookie(`PHPSESSID=${value}; Expires=${expires}; Max-Age=${maxAge}`, names, rules, now)!;
    const expected = value.startsWith('"') && value.endsWith('"') && value.length >= 2 ? value.slice(1, -1) : value;
    if (maxAge <= 0 || expected === '') assert.equal(sc.ttl, 0);
    else assert.equal(sc.ttl, Math.min(maxAge, rules.maxTtl));
  }), { numRuns: 1000 });
});
