// The loop's request ids: 32 lower-case hex digits, a fixed random prefix and
// a counter stepped in place, hex digit by digit. Written into a head or
// taken as text for the access log, they come in order and never repeat.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { REQUEST_ID_LENGTH, RequestIds } from '../src/request-id.ts';

test('ids count up in hex through every carry, whether written or taken as text', () => {
  const ids = new RequestIds();
  const out = Buffer.alloc(REQUEST_ID_LENGTH + 4);
  let prefix = '';
  // 0x1100 ids: every digit of the last three rolls from 9 to a and from f to 0.
  for (let n = 0; n < 0x1100; n++) {
    let id: string;
    if (n % 2 === 0) {
      assert.equal(ids.write(out, 2), REQUEST_ID_LENGTH);
      id = out.toString('latin1', 2, 2 + REQUEST_ID_LENGTH);
    } else {
      id = ids.next();
    }
    assert.match(id, /^[0-9a-f]{32}$/);
    if (n === 0) prefix = id.slice(0, 20);
    assert.equal(id.slice(0, 20), prefix, 'one prefix per loop');
    assert.equal(parseInt(id.slice(20), 16), n, `id ${n} counts on from the one before`);
  }
  assert.equal(out[0], 0, 'nothing written before the id');
  assert.equal(out[REQUEST_ID_LENGTH + 2], 0, 'nothing written after it');
});

test('two loops draw different prefixes', () => {
  assert.notEqual(new RequestIds().next().slice(0, 20), new RequestIds().next().slice(0, 20));
});
