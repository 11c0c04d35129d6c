// VolumeCore (src/core/volume-core.ts), the local side of one volume: which node takes
// changes, the numbers entries get, the order of operations on overlapping ranges, and
// the holds. Pure, so driven directly: the seeded model at the end runs operations in
// every order the core allows and checks that the image it builds is the one applying
// the changes one by one in sequence order gives.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { copyState, VolumeCore } from '../../src/core/volume-core.js';
import { AssertionError } from '../../src/lib/assert.js';
import { baseSeed, Prng } from './prng.js';

const SEED = baseSeed(0x0c0e_0001);

describe('VolumeCore: numbers and roles', () => {
  test('a primary numbers entries one after another from the last one its log holds, and takes changes', () => {
    const core = new VolumeCore({ lastSeq: 41, role: 'primary', epoch: 0 });
    assert.equal(core.refusal(), null);
    assert.deepEqual([core.assignSeq(), core.assignSeq(), core.assignSeq()], [42, 43, 44]);
    assert.equal(core.lastSeq, 44);
    assert.throws(() => core.acceptSeq(45), AssertionError, "a primary takes no other node's numbers");
  });

  test("a secondary refuses clients' changes and takes its primary's numbers only in order", () => {
    const core = new VolumeCore({ lastSeq: 7, role: 'secondary', epoch: 0 });
    assert.match(core.refusal() ?? '', /secondary copy/);
    assert.throws(() => core.assignSeq(), AssertionError);
    core.acceptSeq(8);
    assert.throws(() => core.acceptSeq(10), AssertionError, 'a gap');
    assert.throws(() => core.acceptSeq(8), AssertionError, 'a repeat');
    assert.equal(core.lastSeq, 8);
    core.restartAt(100);
    core.acceptSeq(101);
    assert.equal(core.lastSeq, 101);
  });

  test('a log is not restarted while operations run', () => {
    const core = new VolumeCore({ lastSeq: 0, role: 'secondary', epoch: 0 });
    const { id } = core.enter(0, 10);
    assert.throws(() => core.restartAt(5), AssertionError);
    core.finished(id);
    core.restartAt(5);
  });
});

describe('VolumeCore: order of operations', () => {
  test('ranges that do not overlap run at once, adjacent ones too', () => {
    const core = new VolumeCore({ lastSeq: 0, role: 'primary', epoch: 0 });
    const a = core.enter(0, 10);
    const b = core.enter(10, 20);
    assert.deepEqual([a.ready, b.ready], [true, true]);
    assert.equal(core.running, 2);
    assert.deepEqual(core.finished(b.id), []);
    assert.deepEqual(core.finished(a.id), []);
    assert.equal(core.running, 0);
  });

  test('an overlapping operation waits for every earlier one it overlaps, and is named when it may run', () => {
    const core = new VolumeCore({ lastSeq: 0, role: 'primary', epoch: 0 });
    const a = core.enter(0, 100);
    const b = core.enter(50, 150); // overlaps a
    const c = core.enter(140, 200); // overlaps b only
    const d = core.enter(300, 400); // overlaps nothing
    const e = core.enter(0, 400); // overlaps all of them
    assert.deepEqual([a.ready, b.ready, c.ready, d.ready, e.ready], [true, false, false, true, false]);
    assert.throws(() => core.finished(c.id), AssertionError, 'c cannot have run yet');
    assert.deepEqual(core.finished(d.id), []);
    assert.deepEqual(core.finished(a.id), [b.id]);
    assert.deepEqual(core.finished(b.id), [c.id]);
    assert.deepEqual(core.finished(c.id), [e.id]);
    assert.deepEqual(core.finished(e.id), []);
    assert.throws(() => core.finished(e.id), AssertionError, 'finished twice');
    assert.equal(core.running, 0);
  });

  test('changes run in any order the core allows leave the image that applying them one by one in sequence order leaves (seeded)', () => {
    for (let round = 0; round < 40; round += 1) {
      const seed = SEED + round;
      const random = new Prng(seed);
      const core = new VolumeCore({ lastSeq: 0, role: 'primary', epoch: 0 });
      const size = 512;
      const image = Buffer.alloc(size);
      const expected = Buffer.alloc(size);
      const ranges = new Map<number, { start: number; end: number; seq: number }>();
      const runnable: number[] = [];
      const running = new Set<number>();
      let entered = 0;
      while (entered < 200 || runnable.length > 0 || running.size > 0) {
        const choice = random.below(3);
        if (choice === 0 && entered < 200) {
          entered += 1;
          const start = random.below(size);
          const end = random.between(start + 1, Math.min(size, start + 96));
          const seq = core.assignSeq();
          expected.fill(seq & 0xff, start, end);
          const { id, ready } = core.enter(start, end);
          ranges.set(id, { start, end, seq });
          if (ready) runnable.push(id);
        } else if (choice === 1 && runnable.length > 0) {
          // Starts one that may run: nothing overlapping it may be running.
          const id = runnable.splice(random.below(runnable.length), 1)[0] as number;
          const mine = ranges.get(id);
          assert.ok(mine !== undefined);
          for (const other of running) {
            const theirs = ranges.get(other);
            assert.ok(theirs === undefined || theirs.end <= mine.start || mine.end <= theirs.start, `seed ${seed}: overlapping operations ran together`);
          }
          running.add(id);
        } else if (running.size > 0) {
          // Finishes one of those running, in any order.
          const id = [...running][random.below(running.size)] as number;
          running.delete(id);
          const mine = ranges.get(id);
          assert.ok(mine !== undefined);
          image.fill(mine.seq & 0xff, mine.start, mine.end);
          runnable.push(...core.finished(id));
        }
      }
      assert.equal(core.running, 0);
      assert.ok(image.equals(expected), `seed ${seed}: the image differs from the changes applied in sequence order`);
    }
  });
});

describe('VolumeCore: holds', () => {
  test('a hold names itself to changes that touch its range until it is released; holds never overlap', () => {
    const core = new VolumeCore({ lastSeq: 0, role: 'primary', epoch: 0 });
    const hold = core.hold(4096, 8192);
    assert.equal(core.heldBy(0, 4096), null, 'adjacent');
    assert.equal(core.heldBy(8000, 9000), hold);
    assert.equal(core.heldBy(0, 1 << 20), hold);
    assert.throws(() => core.hold(8191, 8192), AssertionError);
    const other = core.hold(8192, 12288);
    assert.notEqual(other, hold);
    core.release(hold);
    assert.equal(core.heldBy(4096, 8192), null);
    assert.equal(core.heldBy(4096, 8193), other);
    assert.throws(() => core.release(hold), AssertionError, 'released twice');
    core.release(other);
  });
});

describe('copyState: what a node says its copy is', () => {
  test('failed first, then inconsistent while a log made anew waits for its full resync, then current or outdated', () => {
    assert.equal(copyState({ failed: true, needsFullResync: true, streaming: true }), 'failed');
    assert.equal(copyState({ failed: false, needsFullResync: true, streaming: true }), 'inconsistent');
    assert.equal(copyState({ failed: false, needsFullResync: true, streaming: null }), 'inconsistent');
    assert.equal(copyState({ failed: false, needsFullResync: false, streaming: null }), 'up-to-date', "a primary's own copy");
    assert.equal(copyState({ failed: false, needsFullResync: false, streaming: true }), 'up-to-date', 'a secondary its primary streams to');
    assert.equal(copyState({ failed: false, needsFullResync: false, streaming: false }), 'outdated', 'a secondary without its primary');
  });
});
