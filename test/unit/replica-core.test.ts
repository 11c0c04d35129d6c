// ReplicaCore (src/core/replica-core.ts): one volume on one node, whatever its role. These
// tests check what it decides itself (whether a client's change is taken: a secondary
// refuses it, a strict volume's primary refuses it while a replica does not stream; how an
// epoch met on the wire stands to its own), that each role starts only its own mirror
// part, once, and the role changes: a promotion to a newer epoch with nothing of the old
// primary's session under way, a demotion with nothing running; and how a source's claim
// to be the primary of an epoch is judged (followed, current, or refused with why).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AssertionError } from '../../src/lib/assert.js';
import { MirrorLedger } from '../../src/core/mirror-ledger.js';
import type { PrimaryCoreOptions } from '../../src/core/primary-core.js';
import { ReplicaCore } from '../../src/core/replica-core.js';
import { EpochHistory } from '../../src/core/epoch-history.js';

const initial = EpochHistory.initial('a');

/** A history in `epoch`, its primaries a, b, a, ... from entries 1, 11, 21, ... */
function inEpoch(epoch: number): EpochHistory {
  let history = initial;
  for (let next = 1; next <= epoch; next += 1) history = history.begin(next % 2 === 1 ? 'b' : 'a', next * 10 + 1);
  return history;
}

const sizeBytes = 64 * 1024;

function ledger(): MirrorLedger {
  return new MirrorLedger({
    peers: ['b'],
    sizeBytes,
    regionBytes: 4096,
    lastSeq: 0,
    recoveredSeq: 0,
    record: { cleanStopSeq: 0, resyncNeeded: [], divergedAfter: {} },
    bitmaps: new Map(),
    replayed: null,
    intent: null,
    unsyncedGenerationsMax: 4,
  });
}

function primaryOptions(strict: boolean): PrimaryCoreOptions {
  return { mode: 'sync', strict, peers: ['b'], lastSeq: 0, lagBytesMax: 1 << 20, windowBytesMax: 1 << 20, catchUpBytesMax: 1 << 20, resync: true, sizeBytes };
}

describe('ReplicaCore', () => {
  test('a secondary refuses clients\' changes with ERR_NOT_PRIMARY, and numbers nothing itself', () => {
    const core = new ReplicaCore<string>({ lastSeq: 5, role: 'secondary', history: initial });
    assert.equal(core.refusal()?.code, 'ERR_NOT_PRIMARY');
    assert.match(core.refusal()?.reason ?? '', /secondary/);
    assert.throws(() => core.local.assignSeq(), AssertionError);
    core.local.acceptSeq(6);
    assert.equal(core.local.lastSeq, 6);
  });

  test('a primary takes changes; mirrored and strict, it refuses them while its replica does not stream, and takes them again once it does', () => {
    const plain = new ReplicaCore<string>({ lastSeq: 0, role: 'primary', history: initial });
    assert.equal(plain.refusal(), null, 'a local volume');
    plain.mirror(primaryOptions(false), ledger()).open();
    assert.equal(plain.refusal(), null, 'not strict: a missing replica does not stop writes');

    const strict = new ReplicaCore<string>({ lastSeq: 0, role: 'primary', history: initial });
    const mirror = strict.mirror(primaryOptions(true), ledger());
    mirror.open();
    const refusal = strict.refusal();
    assert.equal(refusal?.code, 'ERR_REPLICA_UNAVAILABLE');
    assert.match(refusal?.reason ?? '', /replica b .*strict/);
    mirror.connecting('b');
    mirror.connected('b', { lastSeq: 0, durableSeq: 0, cpSeq: 0, disk: 'up-to-date' }, () => false);
    assert.equal(mirror.peerStatus('b').replication, 'streaming');
    assert.equal(strict.refusal(), null);
    mirror.disconnected('b', 'link lost');
    assert.equal(strict.refusal()?.code, 'ERR_REPLICA_UNAVAILABLE');
  });

  test('each role starts only its own mirror part, and only once', () => {
    const primary = new ReplicaCore<string>({ lastSeq: 0, role: 'primary', history: initial });
    assert.equal(primary.primary, null);
    assert.throws(() => primary.follow({ mode: 'sync', lastSeq: 0, windowBytesMax: 1 << 20 }), AssertionError);
    const part = primary.mirror(primaryOptions(false), ledger());
    assert.equal(primary.primary, part);
    assert.throws(() => primary.mirror(primaryOptions(false), ledger()), AssertionError);

    const secondary = new ReplicaCore<string>({ lastSeq: 0, role: 'secondary', history: initial });
    assert.throws(() => secondary.mirror(primaryOptions(false), ledger()), AssertionError);
    const follower = secondary.follow({ mode: 'sync', lastSeq: 0, windowBytesMax: 1 << 20 });
    assert.equal(secondary.secondary, follower);
    assert.throws(() => secondary.follow({ mode: 'sync', lastSeq: 0, windowBytesMax: 1 << 20 }), AssertionError);
  });

  test('a promotion: the next epoch, from the entry after the copy\'s last, once the secondary has nothing under way', () => {
    const core = new ReplicaCore<string>({ lastSeq: 0, role: 'secondary', history: initial });
    const follower = core.follow({ mode: 'sync', lastSeq: 0, windowBytesMax: 1 << 20 });
    follower.sessionStarted(1);
    assert.deepEqual(
      follower.entry(1, 100, 'e1').map((action) => action.kind),
      ['store'],
    );
    core.local.acceptSeq(1);
    const promoted = core.promotion('b');
    assert.deepEqual(promoted.current, { epoch: 1, primary: 'b', firstSeq: 2 });
    assert.equal(core.epoch, 0, 'promotion() only says what the history would be');
    assert.throws(() => core.promote(promoted), AssertionError, 'a store of the old primary\'s session is under way');
    follower.stored(1, null);
    follower.sessionEnded();
    assert.throws(() => core.promote(initial), AssertionError, 'not a newer epoch');
    assert.throws(() => core.promote(initial.begin('b', 5)), AssertionError, 'not from the entry after its last');
    assert.throws(() => core.promote(EpochHistory.initial('c').begin('b', 2)), AssertionError, 'a history that does not extend its own');
    core.promote(promoted);
    assert.equal(core.role, 'primary');
    assert.equal(core.epoch, 1);
    assert.equal(core.history, promoted);
    assert.equal(core.secondary, null);
    assert.equal(core.refusal(), null);
    assert.equal(core.local.assignSeq(), 2);
    assert.throws(() => core.promotion('b'), AssertionError, 'a primary is not promoted');
    core.mirror(primaryOptions(false), ledger());
    assert.notEqual(core.primary, null);
  });

  test('a demotion: with nothing running, in its own epoch or fenced by a newer one; the copy then refuses clients and follows', () => {
    const core = new ReplicaCore<string>({ lastSeq: 10, role: 'primary', history: inEpoch(2) });
    core.mirror(primaryOptions(false), ledger());
    const write = core.local.enter(0, 4096);
    assert.throws(() => core.demote(), AssertionError, 'a write is running');
    core.local.finished(write.id);
    assert.throws(() => core.demote(inEpoch(1)), AssertionError, 'an older epoch');
    core.demote(inEpoch(3));
    assert.equal(core.role, 'secondary');
    assert.equal(core.epoch, 3);
    assert.equal(core.primary, null);
    assert.equal(core.refusal()?.code, 'ERR_NOT_PRIMARY');
    core.follow({ mode: 'sync', lastSeq: 10, windowBytesMax: 1 << 20 });
    core.local.acceptSeq(11);

    const byCommand = new ReplicaCore<string>({ lastSeq: 4, role: 'primary', history: inEpoch(2) });
    byCommand.demote();
    assert.equal(byCommand.epoch, 2, 'a demotion by command keeps the epoch');
    assert.equal(byCommand.role, 'secondary');
  });

  test('a secondary learns a newer history only, with nothing of a session under way', () => {
    const core = new ReplicaCore<string>({ lastSeq: 3, role: 'secondary', history: inEpoch(1) });
    const follower = core.follow({ mode: 'sync', lastSeq: 3, windowBytesMax: 1 << 20 });
    follower.sessionStarted(1);
    follower.entry(4, 100, 'e4');
    core.local.acceptSeq(4);
    assert.throws(() => core.learn(inEpoch(2)), AssertionError, 'a store is under way');
    follower.stored(4, null);
    follower.sessionEnded();
    assert.throws(() => core.learn(inEpoch(1)), AssertionError, 'not newer');
    core.learn(inEpoch(2));
    assert.equal(core.epoch, 2);
    assert.equal(core.role, 'secondary');
    assert.equal(core.history.current.primary, 'a');
    const primary = new ReplicaCore<string>({ lastSeq: 0, role: 'primary', history: initial });
    assert.throws(() => primary.learn(inEpoch(1)), AssertionError, 'a primary is fenced by demote, not taught');
  });

  test('an epoch met on the wire is older, current or newer than the one the copy knows', () => {
    const core = new ReplicaCore<string>({ lastSeq: 0, role: 'secondary', history: inEpoch(4) });
    assert.equal(core.epochVerdict(3), 'older');
    assert.equal(core.epochVerdict(4), 'current');
    assert.equal(core.epochVerdict(5), 'newer');
  });

  test('judging a source: its own epoch\'s primary is current, a newer epoch that holds this copy\'s is followed, everything else is refused with why', () => {
    // b follows a in epoch 1 (a promoted again at entry 11).
    const history = inEpoch(1).begin('a', 21);
    const follower = new ReplicaCore<string>({ lastSeq: 25, role: 'secondary', history });
    follower.follow({ mode: 'sync', lastSeq: 25, windowBytesMax: 1 << 20 });
    const wire = (starts: EpochHistory): { epoch: number; primary: string; firstSeq: number }[] => starts.last(16);
    assert.deepEqual(follower.judgeSource('a', wire(history)), { kind: 'current' });
    const newer = history.begin('c', 31);
    const followed = follower.judgeSource('c', newer.last(2));
    assert.equal(followed.kind, 'newer');
    assert.deepEqual(followed.kind === 'newer' ? followed.history.starts : null, newer.starts, 'a history cut on the wire is joined to what the copy knew');
    const known = history.current;
    assert.deepEqual(follower.judgeSource('b', wire(inEpoch(1))), { kind: 'stale', known });
    assert.deepEqual(follower.judgeSource('c', wire(inEpoch(1).begin('c', 21))), { kind: 'not-its-primary', known });
    assert.deepEqual(follower.judgeSource('a', wire(inEpoch(1).begin('a', 22))), { kind: 'not-its-primary', known }, 'same epoch and primary, another start: not the same epoch');
    assert.deepEqual(follower.judgeSource('c', wire(inEpoch(1).begin('c', 21).begin('c', 30))), { kind: 'separate-ways', known });
    assert.deepEqual(follower.judgeSource('c', wire(newer).slice(0, 1).concat({ epoch: 9, primary: 'a', firstSeq: 40 })), { kind: 'names-another', primary: 'a' });
    const impossible = follower.judgeSource('c', [{ epoch: 3, primary: 'c', firstSeq: 5 }, { epoch: 2, primary: 'c', firstSeq: 9 }]);
    assert.equal(impossible.kind, 'impossible');
    // A copy that is the primary (or stepped down as it) follows no one in its own epoch.
    const primary = new ReplicaCore<string>({ lastSeq: 25, role: 'primary', history });
    assert.deepEqual(primary.judgeSource('a', wire(history)), { kind: 'primary-here', known });
    assert.equal(primary.judgeSource('c', newer.last(16)).kind, 'newer', 'a newer epoch fences it');
  });
});
