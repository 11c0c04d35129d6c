// EpochHistory (src/core/epoch-history.ts): which node was the volume's primary in each
// epoch, from which entry on. Checked here: how a history grows and what it refuses; where
// two copies part (compareCopies) in the cases failover meets (a copy behind, an old
// primary that went on after a promotion, a follower of the new primary, two nodes
// promoted to the same epoch number), then against the entries themselves over seeded
// random forks, promotions and writes; and the file's text, a damaged one refused with
// what is wrong with it.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { compareCopies, EpochHistory, encodeEpochHistory, parseEpochHistory, type EpochStart } from '../../src/core/epoch-history.js';
import { baseSeed, Prng } from './prng.js';

const SEED = baseSeed(0xe90c_0016);

describe('EpochHistory', () => {
  test('a volume starts in epoch 0 with the cluster file\'s primary; each promotion begins the next epoch', () => {
    const first = EpochHistory.initial('a');
    assert.deepEqual(first.current, { epoch: 0, primary: 'a', firstSeq: 1 });
    const second = first.begin('b', 101);
    assert.deepEqual(second.current, { epoch: 1, primary: 'b', firstSeq: 101 });
    assert.deepEqual(first.current, { epoch: 0, primary: 'a', firstSeq: 1 }, 'begin makes a new history');
    assert.equal(second.epochOf(100).epoch, 0);
    assert.equal(second.epochOf(101).epoch, 1);
    assert.equal(second.epochOf(5000).primary, 'b');
    // A promotion right after another: an epoch with no entries.
    const third = second.begin('c', 101);
    assert.equal(third.epochOf(101).primary, 'c');
    assert.ok(first.isPrefixOf(third) && second.isPrefixOf(third) && !third.isPrefixOf(second));
    // A copy that learned epochs it holds no entries of (it holds 1..99): promoted, its epoch
    // starts at 100, and the epochs from 101 are not in its line; its number is above theirs.
    const behind = third.begin('a', 100);
    assert.deepEqual(behind.starts, [{ epoch: 0, primary: 'a', firstSeq: 1 }, { epoch: 3, primary: 'a', firstSeq: 100 }]);
    assert.equal(compareCopies({ history: behind, lastSeq: 120 }, { history: third, lastSeq: 130 }).sharedSeq, 99);
  });

  test('where two copies part', () => {
    const atStart = EpochHistory.initial('a');
    const promoted = atStart.begin('b', 101);
    // One history, one copy behind the other: it lacks entries, holds none differently.
    assert.deepEqual(compareCopies({ history: atStart, lastSeq: 80 }, { history: atStart, lastSeq: 100 }), { sharedSeq: 80, aPast: 0, bPast: 20 });
    // The old primary went on to 150 in epoch 0 after b began epoch 1 at 101 and wrote to 130.
    assert.deepEqual(compareCopies({ history: atStart, lastSeq: 150 }, { history: promoted, lastSeq: 130 }), { sharedSeq: 100, aPast: 50, bPast: 30 });
    // The old primary had stopped at 100: it only lacks the new epoch's entries.
    assert.deepEqual(compareCopies({ history: atStart, lastSeq: 100 }, { history: promoted, lastSeq: 130 }), { sharedSeq: 100, aPast: 0, bPast: 30 });
    // A follower of the new primary holds its history: behind it, nothing differs.
    assert.deepEqual(compareCopies({ history: promoted, lastSeq: 120 }, { history: promoted, lastSeq: 130 }), { sharedSeq: 120, aPast: 0, bPast: 10 });
    // Two nodes each promoted to epoch 1 (no coordinator stopped them): their entries from 101 differ.
    const otherPromotion = atStart.begin('c', 101);
    assert.deepEqual(compareCopies({ history: otherPromotion, lastSeq: 140 }, { history: promoted, lastSeq: 130 }), { sharedSeq: 100, aPast: 40, bPast: 30 });
    // The same, with the second promotion later than the first.
    const laterPromotion = atStart.begin('c', 111);
    assert.deepEqual(compareCopies({ history: laterPromotion, lastSeq: 140 }, { history: promoted, lastSeq: 130 }), { sharedSeq: 100, aPast: 40, bPast: 30 });
  });

  test('a primary that starts again after a crash restarts its epoch: a copy of its new entries and one of the lost ones part there', () => {
    const before = EpochHistory.initial('a').begin('b', 101);
    const restarted = before.restart(121);
    assert.deepEqual(restarted.current, { epoch: 1, primary: 'b', firstSeq: 121, restart: 1 });
    assert.deepEqual(restarted.origin, { epoch: 1, primary: 'b', firstSeq: 101 });
    assert.equal(restarted.epochOf(120).restart, undefined);
    assert.equal(restarted.epochOf(121).restart, 1);
    // Lost entries 121..130 held elsewhere, new ones 121..125 here: they part after 120.
    assert.deepEqual(compareCopies({ history: restarted, lastSeq: 125 }, { history: before, lastSeq: 130 }), { sharedSeq: 120, aPast: 5, bPast: 10 });
    // Restarted twice at one entry (it recovered nothing of the first restart): still told apart.
    const twice = restarted.restart(121);
    assert.deepEqual(compareCopies({ history: twice, lastSeq: 125 }, { history: restarted, lastSeq: 125 }).sharedSeq, 120);
    assert.ok(before.restartedIn(restarted) && restarted.restartedIn(twice) && !restarted.restartedIn(before));
    // A copy in the epoch's first start knows the restarted history's epoch (it follows it as newer), and the other way round.
    assert.ok(before.knowsEpochOf(restarted) && restarted.knowsEpochOf(before));
    assert.throws(() => before.restart(50), /before epoch 1 began/);
    // After a crash: only the primary of the history restarts, and only with entries of its epoch.
    assert.deepEqual(before.restartAfterCrash('b', 120)?.starts, restarted.starts);
    assert.equal(before.restartAfterCrash('a', 120), null, 'not its epoch');
    assert.equal(before.restartAfterCrash('b', 99), null, 'it holds nothing of its epoch');
    assert.equal(before.stepDown().restartAfterCrash('b', 120), null, 'it stepped down');
    assert.equal(before.restartAfterCrash('b', 100)?.current.firstSeq, 101, 'none of its entries yet: restarted at its start');
  });

  test('compareCopies agrees with the entries themselves over seeded random forks, promotions and writes', () => {
    const random = new Prng(SEED);
    let parted = 0;
    for (let scenario = 0; scenario < 400; scenario += 1) {
      // A copy is its history and its entries, each entry named by the epoch it was numbered in.
      interface Copy {
        node: string;
        history: EpochHistory;
        entries: string[];
      }
      const key = (start: EpochStart): string => `${start.epoch}/${start.primary}/${start.firstSeq}/${start.restart ?? 0}`;
      const copies: Copy[] = [{ node: 'n0', history: EpochHistory.initial('n0'), entries: [] }];
      for (let step = 0; step < 12; step += 1) {
        const copy = random.pick(copies);
        const choice = random.below(4);
        if (choice === 0 && copies.length < 5) {
          // A new copy that received a prefix of this one (its history as far as that goes).
          const kept = random.below(copy.entries.length + 1);
          const starts = copy.history.starts.filter((start) => start.firstSeq <= Math.max(kept, 1));
          copies.push({ node: `n${copies.length}`, history: EpochHistory.of(starts), entries: copy.entries.slice(0, kept) });
        } else if (choice === 1) {
          copy.history = copy.history.begin(copy.node, copy.entries.length + 1);
        } else if (choice === 3 && copy.history.current.primary === copy.node) {
          // The primary crashes, losing a tail of its epoch's entries, and restarts its epoch after what it kept.
          const kept = random.between(copy.history.current.firstSeq - 1, copy.entries.length);
          copy.entries = copy.entries.slice(0, kept);
          copy.history = copy.history.restart(kept + 1);
        } else if (copy.history.current.primary === copy.node) {
          const epoch = key(copy.history.current);
          for (let count = random.between(1, 20); count > 0; count -= 1) copy.entries.push(epoch);
        }
      }
      for (const a of copies) {
        for (const b of copies) {
          let shared = 0;
          while (shared < a.entries.length && shared < b.entries.length && a.entries[shared] === b.entries[shared]) shared += 1;
          const compared = compareCopies({ history: a.history, lastSeq: a.entries.length }, { history: b.history, lastSeq: b.entries.length });
          const where = `seed ${SEED} scenario ${scenario}: ${a.node} (${JSON.stringify(a.history.starts)}, ${a.entries.length}) against ${b.node} (${JSON.stringify(b.history.starts)}, ${b.entries.length})`;
          assert.deepEqual(compared, { sharedSeq: shared, aPast: a.entries.length - shared, bPast: b.entries.length - shared }, where);
          if (compared.aPast > 0 && compared.bPast > 0) parted += 1;
        }
      }
    }
    assert.ok(parted > 100, `only ${parted} pairs had parted: the scenarios do not reach the interesting case`);
  });

  test('the file: its text reads back; a damaged or impossible one is refused with what is wrong', () => {
    const history = EpochHistory.initial('a').begin('b', 101).begin('a', 250).restart(260).restart(260);
    const back = parseEpochHistory(Buffer.from(encodeEpochHistory(history)));
    assert.ok(back instanceof EpochHistory);
    assert.deepEqual(back.starts, history.starts);
    assert.deepEqual(back.current, { epoch: 2, primary: 'a', firstSeq: 260, restart: 2 });
    const problem = (text: string): string => {
      const parsed = parseEpochHistory(Buffer.from(text));
      assert.ok(!(parsed instanceof EpochHistory), `${text} was taken`);
      return parsed.problem;
    };
    assert.match(problem('{"epochs": [{"epoch": 0, "primary": "a", "firstSeq": 1}'), /not JSON/);
    assert.match(problem('{"epoch": 0}'), /no list of epochs/);
    assert.match(problem('{"epochs": []}'), /names no epoch/);
    assert.match(problem('{"epochs": [{"epoch": 0, "primary": "", "firstSeq": 1}]}'), /epoch 0 names no primary/);
    assert.match(problem('{"epochs": [{"epoch": 0, "primary": "a", "firstSeq": 0}]}'), /epoch 0 starts at 0/);
    assert.match(problem('{"epochs": [{"epoch": -1, "primary": "a", "firstSeq": 1}]}'), /epoch -1 is not a number/);
    assert.match(problem('{"epochs": [{"epoch": 1, "primary": "a", "firstSeq": 1}, {"epoch": 1, "primary": "b", "firstSeq": 5}]}'), /epoch 1 starts twice, not as a restart by its primary/);
    assert.match(problem('{"epochs": [{"epoch": 1, "primary": "a", "firstSeq": 1, "restart": 2}, {"epoch": 1, "primary": "a", "firstSeq": 5, "restart": 1}]}'), /epoch 1 starts twice/);
    assert.match(problem('{"epochs": [{"epoch": 1, "primary": "a", "firstSeq": 1, "restart": -1}]}'), /epoch 1 has restart count -1/);
    assert.match(problem('{"epochs": [{"epoch": 2, "primary": "a", "firstSeq": 1}, {"epoch": 1, "primary": "a", "firstSeq": 5}]}'), /epoch 1 follows epoch 2/);
    assert.match(problem('{"epochs": [{"epoch": 0, "primary": "a", "firstSeq": 9}, {"epoch": 1, "primary": "b", "firstSeq": 5}]}'), /epoch 1 starts at 5, before epoch 0 \(9\)/);
    assert.match(problem('{"epochs": [null]}'), /epoch undefined is not a number/);
  });
});
