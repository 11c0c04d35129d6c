// IndexedQueue against a plain array doing the same operations (seeded): what is read by
// position, shifted and sliced must be the same, across many compactions.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IndexedQueue } from '../../src/lib/indexed-queue.js';
import { baseSeed, Prng } from './prng.js';

const SEED = baseSeed(0x1d9e_0001);

test('IndexedQueue behaves as an array with push, shift, positional reads and slice (seeded)', () => {
  const random = new Prng(SEED);
  const queue = new IndexedQueue<number>();
  const model: number[] = [];
  let next = 0;
  for (let step = 0; step < 50_000; step += 1) {
    // Phases of growth and of draining, so that the queue grows past the compaction
    // threshold and is compacted on the way down, many times.
    const draining = Math.floor(step / 2500) % 2 === 1;
    const roll = random.below(100);
    if (roll < (draining ? 25 : 72)) {
      for (let count = random.between(1, 40); count > 0; count -= 1) {
        queue.push(next);
        model.push(next);
        next += 1;
      }
    } else if (roll < 97) {
      for (let count = random.between(1, 40); count > 0; count -= 1) assert.equal(queue.shift(), model.shift(), `seed ${SEED} step ${step}`);
    } else {
      const from = random.below(model.length + 2);
      assert.deepEqual(queue.slice(from), model.slice(from), `seed ${SEED} step ${step}: slice(${from})`);
    }
    assert.equal(queue.length, model.length);
    const probe = random.between(-2, model.length + 2);
    assert.equal(queue.at(probe), probe < 0 ? undefined : model[probe], `seed ${SEED} step ${step}: at(${probe})`);
  }
  assert.ok(next > 10_000, `the queue saw ${next} elements`);
  assert.ok(queue.compactions >= 5, `the queue was compacted ${queue.compactions} times`);
});

test('an empty IndexedQueue shifts undefined and reads nothing', () => {
  const queue = new IndexedQueue<string>();
  assert.equal(queue.shift(), undefined);
  assert.equal(queue.at(0), undefined);
  assert.deepEqual(queue.slice(0), []);
  queue.push('a');
  assert.equal(queue.at(0), 'a');
  assert.equal(queue.shift(), 'a');
  assert.equal(queue.length, 0);
  assert.equal(queue.at(-1), undefined, 'a shifted element is gone');
});
