// The resync's share when clients use the volume (src/core/resync-controller.ts): full
// speed while idle, halved when client latency clearly rises above its baseline, and
// given back step by step while it does not.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ResyncController } from '../../src/core/resync-controller.js';

function controller(): ResyncController {
  return new ResyncController({ minRegions: 4, maxRegions: 256, stepRegions: 8, slackMs: 1, factor: 2, intervalMs: 500 });
}

function interval(c: ResyncController, latencyMs: number, requests = 10): number {
  for (let index = 0; index < requests; index += 1) c.clientDone(latencyMs);
  return c.tick();
}

test('no client requests: the resync may use its maximum', () => {
  const c = controller();
  assert.equal(c.tick(), 256);
  assert.equal(c.limit, 256);
});

test('client latency twice its baseline halves the resync, down to the minimum; steady latency gives it back step by step', () => {
  const c = controller();
  assert.equal(interval(c, 2), 256, 'the first interval sets the baseline');
  assert.equal(interval(c, 5), 128);
  assert.equal(interval(c, 5), 64);
  for (let round = 0; round < 10; round += 1) interval(c, 50);
  assert.equal(c.limit, 4, 'never below the minimum');
  // Latency back near its baseline: +8 per interval.
  assert.equal(interval(c, 2), 12);
  assert.equal(interval(c, 2.5), 20);
  // An idle interval: full speed at once.
  assert.equal(c.tick(), 256);
});

test('within the slack above a small baseline, latency does not count as slowed', () => {
  const c = controller();
  interval(c, 0.1);
  // 0.9 ms is 9 times the baseline, but less than 1 ms above it.
  assert.equal(interval(c, 0.9), 256);
  assert.equal(interval(c, 1.5), 128, 'more than the slack and twice the baseline');
});

test('the baseline follows a workload that became slower for good', () => {
  const c = controller();
  interval(c, 1);
  for (let round = 0; round < 120; round += 1) interval(c, 6);
  // At first 6 ms counts as slowed (the limit fell to the minimum); once the baseline
  // crept up to it (about 90 intervals) it no longer does, and the limit grew again.
  assert.ok(c.limit > 100, `limit ${c.limit} after the baseline caught up`);
  const before = c.limit;
  const after = interval(c, 6);
  assert.equal(after, Math.min(256, before + 8));
});

test('limitAt ends an interval once it has lasted intervalMs, not before, timed from the first question', () => {
  const c = controller();
  assert.equal(c.limitAt(10_000), 256, 'the first question starts the first interval');
  for (let index = 0; index < 10; index += 1) c.clientDone(1);
  assert.equal(c.limitAt(10_499), 256, 'still the first interval');
  for (let index = 0; index < 10; index += 1) c.clientDone(5);
  // The interval ends at 10,500: its mean is 3 ms, the first baseline; the limit grows (at its maximum already).
  assert.equal(c.limitAt(10_500), 256);
  for (let index = 0; index < 10; index += 1) c.clientDone(20);
  assert.equal(c.limitAt(10_999), 256, 'not yet');
  assert.equal(c.limitAt(11_000), 128, 'an interval of 20 ms against a baseline of 3 ms halves it');
  assert.equal(c.limitAt(11_100), 128, 'within the next interval it stays');
});
