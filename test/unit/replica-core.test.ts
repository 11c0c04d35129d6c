// ReplicaCore (src/core/replica-core.ts): one volume on one node, whatever its role. These
// tests check what it decides itself (whether a client's change is taken: a secondary
// refuses it, a strict volume's primary refuses it while a replica does not stream) and
// that each role starts only its own mirror part, once.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AssertionError } from '../../src/lib/assert.js';
import { MirrorLedger } from '../../src/core/mirror-ledger.js';
import type { PrimaryCoreOptions } from '../../src/core/primary-core.js';
import { ReplicaCore } from '../../src/core/replica-core.js';

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
    const core = new ReplicaCore<string>({ lastSeq: 5, role: 'secondary', epoch: 0 });
    assert.equal(core.refusal()?.code, 'ERR_NOT_PRIMARY');
    assert.match(core.refusal()?.reason ?? '', /secondary/);
    assert.throws(() => core.local.assignSeq(), AssertionError);
    core.local.acceptSeq(6);
    assert.equal(core.local.lastSeq, 6);
  });

  test('a primary takes changes; mirrored and strict, it refuses them while its replica does not stream, and takes them again once it does', () => {
    const plain = new ReplicaCore<string>({ lastSeq: 0, role: 'primary', epoch: 0 });
    assert.equal(plain.refusal(), null, 'a local volume');
    plain.mirror(primaryOptions(false), ledger()).open();
    assert.equal(plain.refusal(), null, 'not strict: a missing replica does not stop writes');

    const strict = new ReplicaCore<string>({ lastSeq: 0, role: 'primary', epoch: 0 });
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
    const primary = new ReplicaCore<string>({ lastSeq: 0, role: 'primary', epoch: 0 });
    assert.equal(primary.primary, null);
    assert.throws(() => primary.follow({ mode: 'sync', lastSeq: 0, windowBytesMax: 1 << 20 }), AssertionError);
    const part = primary.mirror(primaryOptions(false), ledger());
    assert.equal(primary.primary, part);
    assert.throws(() => primary.mirror(primaryOptions(false), ledger()), AssertionError);

    const secondary = new ReplicaCore<string>({ lastSeq: 0, role: 'secondary', epoch: 0 });
    assert.throws(() => secondary.mirror(primaryOptions(false), ledger()), AssertionError);
    const follower = secondary.follow({ mode: 'sync', lastSeq: 0, windowBytesMax: 1 << 20 });
    assert.equal(secondary.secondary, follower);
    assert.throws(() => secondary.follow({ mode: 'sync', lastSeq: 0, windowBytesMax: 1 << 20 }), AssertionError);
  });
});
