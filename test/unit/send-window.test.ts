// SendWindow (src/core/send-window.ts): the window of a catch-up from the log files.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SendWindow } from '../../src/core/send-window.js';

test('entries go while the unacknowledged bytes stay within the window; acknowledgements make room', () => {
  const window = new SendWindow(1000);
  assert.equal(window.fits(400), true);
  window.sent(1, 400);
  window.sent(2, 400);
  assert.equal(window.fits(300), false, '800 + 300 is past 1000');
  assert.equal(window.fits(200), true);
  window.acked(1);
  assert.equal(window.bytes, 400);
  assert.equal(window.fits(600), true);
  window.acked(5);
  assert.equal(window.bytes, 0);
});

test('an entry larger than the window goes alone, and only alone', () => {
  const window = new SendWindow(1000);
  assert.equal(window.fits(5000), true, 'nothing on its way');
  window.sent(1, 5000);
  assert.equal(window.fits(1), false);
  window.acked(1);
  assert.equal(window.fits(1), true);
});

test('entries are sent in sequence order', () => {
  const window = new SendWindow(1000);
  window.sent(3, 10);
  assert.throws(() => window.sent(3, 10), /in order/);
  assert.throws(() => new SendWindow(0), /window size/);
});
