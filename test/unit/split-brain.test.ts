// Finding a split brain and deciding it (src/core/split-brain.ts): a copy is in split brain
// with another when following it would overwrite entries this copy's node numbered as a
// primary past their shared entry that it may have acknowledged: in sync mode from its
// ledger's `ackedAlone` mark for the node that forked away, in async and logship modes
// always. A crashed primary's unacknowledged tail is not one; each policy picks the same
// loser from either side's figures, and a tie leaves the copies apart.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EpochHistory } from '../../src/core/epoch-history.js';
import { decideSplitBrain, splitBrainBetween, type SplitBrain, type SplitBrainCopy } from '../../src/core/split-brain.js';

const epoch0 = EpochHistory.initial('a');
/** b promoted after entry 100 (epoch 1), a's history still epoch 0. */
const bHistory = epoch0.begin('b', 101);

function copyA(change: Partial<SplitBrainCopy> & { alone?: Record<string, number> } = {}): SplitBrainCopy {
  const alone = change.alone ?? {};
  return { node: 'a', history: epoch0, lastSeq: 120, mode: 'sync', ackedAloneFrom: (peer) => alone[peer] ?? null, ...change };
}

test('a sync primary that kept b in sync until it crashed has acknowledged nothing past the fork: no split brain', () => {
  assert.equal(splitBrainBetween(copyA(), { node: 'b', history: bHistory, lastSeq: 150 }), null);
  // Its mark for another peer (c was away) says nothing about b.
  assert.equal(splitBrainBetween(copyA({ alone: { c: 50 } }), { node: 'b', history: bHistory, lastSeq: 150 }), null);
});

test('a sync primary that acknowledged without b past the fork is in split brain, counting only entries from its mark on', () => {
  const found = splitBrainBetween(copyA({ alone: { b: 111 } }), { node: 'b', history: bHistory, lastSeq: 150 });
  assert.deepEqual(found, { sharedSeq: 100, hereEntries: 10, otherEntries: 50, hereEpoch: 0, otherEpoch: 1 });
  // A mark before the fork counts every entry past it; one after its last entry, none.
  assert.equal(splitBrainBetween(copyA({ alone: { b: 40 } }), { node: 'b', history: bHistory, lastSeq: 150 })?.hereEntries, 20);
  assert.equal(splitBrainBetween(copyA({ alone: { b: 121 } }), { node: 'b', history: bHistory, lastSeq: 150 }), null);
  // b promoted and wrote nothing: still a split brain (following b would lose a's writes).
  assert.equal(splitBrainBetween(copyA({ alone: { b: 101 } }), { node: 'b', history: bHistory, lastSeq: 100 })?.otherEntries, 0);
});

test('in async and logship modes every entry past the fork may have been acknowledged', () => {
  for (const mode of ['async', 'logship'] as const) {
    assert.equal(splitBrainBetween(copyA({ mode }), { node: 'b', history: bHistory, lastSeq: 101 })?.hereEntries, 20, mode);
  }
});

test('a copy with nothing past the shared entry, or whose entries past it another node numbered, is not in split brain', () => {
  assert.equal(splitBrainBetween(copyA({ lastSeq: 100, alone: { b: 1 } }), { node: 'b', history: bHistory, lastSeq: 150 }), null);
  // c is a secondary of a: its entries past the fork are a's, not c's own.
  assert.equal(splitBrainBetween(copyA({ node: 'c', alone: { b: 1 } }), { node: 'b', history: bHistory, lastSeq: 150 }), null);
  // The same history (b is a's secondary that knows a's epoch): nothing parts.
  assert.equal(splitBrainBetween(copyA({ alone: { b: 1 } }), { node: 'b', history: epoch0, lastSeq: 90 }), null);
});

test('the fork is found from the histories even when the other line went on through more epochs', () => {
  // b took over after 100 (epoch 1), then c after 130 (epoch 2): a's mark for b (the node that forked away) counts.
  const line = bHistory.begin('c', 131);
  const found = splitBrainBetween(copyA({ alone: { b: 105, c: 1 } }), { node: 'c', history: line, lastSeq: 140 });
  assert.deepEqual(found, { sharedSeq: 100, hereEntries: 16, otherEntries: 40, hereEpoch: 0, otherEpoch: 1 });
});

test('a winner promoted again above the loser keeps the epoch its split writes were made in, so a policy decides the same again', () => {
  // a won and took writes again in epoch 2 from entry 121; b (epoch 1) is the one compared now.
  const aAgain = epoch0.begin('a', 121, 1);
  assert.equal(aAgain.current.epoch, 2);
  const found = splitBrainBetween({ node: 'b', history: bHistory, lastSeq: 150, mode: 'sync', ackedAloneFrom: () => 101 }, { node: 'a', history: aAgain, lastSeq: 125 });
  assert.deepEqual(found, { sharedSeq: 100, hereEntries: 50, otherEntries: 25, hereEpoch: 1, otherEpoch: 0 });
  assert.equal(decideSplitBrain('discard-younger-primary', found ?? assert.fail()), 'discard-here');
  // And from a's side, with its writes in epoch 2 after the ones of epoch 0.
  const fromA = splitBrainBetween({ node: 'a', history: aAgain, lastSeq: 125, mode: 'sync', ackedAloneFrom: () => 101 }, { node: 'b', history: bHistory, lastSeq: 150 });
  assert.deepEqual(fromA, { sharedSeq: 100, hereEntries: 25, otherEntries: 50, hereEpoch: 0, otherEpoch: 1 });
});

test('each policy, from either side, names the same loser; a tie leaves the copies apart', () => {
  const a: SplitBrain = { sharedSeq: 100, hereEntries: 10, otherEntries: 50, hereEpoch: 0, otherEpoch: 1 };
  const b: SplitBrain = { sharedSeq: 100, hereEntries: 50, otherEntries: 10, hereEpoch: 1, otherEpoch: 0 };
  const mirror = { disconnect: 'disconnect', 'discard-here': 'discard-other', 'discard-other': 'discard-here' } as const;
  const cases = [
    ['disconnect', a, 'disconnect'],
    ['discard-younger-primary', a, 'discard-other'],
    ['discard-least-changes', a, 'discard-here'],
    ['discard-zero-changes', a, 'disconnect'],
    ['discard-zero-changes', { ...a, otherEntries: 0 }, 'discard-other'],
    ['discard-least-changes', { ...a, otherEntries: 10 }, 'disconnect'],
    ['discard-younger-primary', { ...a, otherEpoch: 0 }, 'disconnect'],
  ] as const;
  for (const [policy, found, decision] of cases) {
    assert.equal(decideSplitBrain(policy, found), decision, `${policy} ${JSON.stringify(found)}`);
    const other: SplitBrain = { ...found, hereEntries: found.otherEntries, otherEntries: found.hereEntries, hereEpoch: found.otherEpoch, otherEpoch: found.hereEpoch };
    assert.equal(decideSplitBrain(policy, other), mirror[decision], `${policy} from the other side`);
  }
  assert.equal(decideSplitBrain('discard-least-changes', b), 'discard-other');
});
