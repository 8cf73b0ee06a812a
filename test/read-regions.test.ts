// Where a backend socket's next read lands (src/read-regions.ts): on in the
// same region while it has room; once it is used up, at its start again if
// nothing read into it is referred to any more, else in a new region, so
// bytes something still holds (a queued write, a held answer) are never read
// over.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { afterRead, readBuffer } from '../src/read-regions.ts';

/** A socket's fresh region, read into until less than a short read's room is left. */
function usedUp(kept: boolean): { region: Buffer; reused: boolean } {
  const region = readBuffer(); // no next buffer pending: a new socket's fresh region
  region.write('held', 0, 'latin1');
  assert.equal(afterRead(4, region, kept), false);
  const rest = readBuffer();
  assert.equal(rest.buffer, region.buffer, 'the rest of the same region');
  assert.equal(rest.byteOffset, 4);
  assert.equal(afterRead(rest.length - 100, rest, kept), true, 'used up');
  const next = readBuffer();
  return { region, reused: next.buffer === region.buffer && next.byteOffset === 0 };
}

test('a used-up region that nothing refers to is read into again from its start', () => {
  assert.equal(usedUp(false).reused, true);
});

test('a used-up region that something still refers to is never read into again', () => {
  const { region, reused } = usedUp(true);
  assert.equal(reused, false);
  assert.equal(region.toString('latin1', 0, 4), 'held');
});

test('a read that fills its buffer is a stream: the next read gets a large region of its own', () => {
  const region = readBuffer();
  assert.equal(afterRead(region.length, region, false), true);
  const next = readBuffer();
  assert.notEqual(next.buffer, region.buffer);
  assert.equal(next.length, 64 * 1024);
});
