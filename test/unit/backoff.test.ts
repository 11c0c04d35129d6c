// Backoff (src/core/backoff.ts): the delays between reconnect attempts.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Backoff } from '../../src/core/backoff.js';

test('delays double from the minimum up to the maximum, and stay there; a reset starts over', () => {
  const backoff = new Backoff(100, 1000);
  assert.deepEqual(
    Array.from({ length: 7 }, () => backoff.next()),
    [100, 200, 400, 800, 1000, 1000, 1000],
  );
  // However long it failed, one reset brings it back to the minimum.
  for (let attempt = 0; attempt < 10_000; attempt += 1) assert.equal(backoff.next(), 1000);
  backoff.reset();
  assert.deepEqual([backoff.next(), backoff.next()], [100, 200]);
});

test('bounds that make no sense are refused', () => {
  assert.throws(() => new Backoff(0, 10), /back-off bounds/);
  assert.throws(() => new Backoff(100, 10), /back-off bounds/);
});
