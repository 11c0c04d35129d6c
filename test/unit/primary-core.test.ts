// PrimaryCore (src/core/primary-core.ts): the primary's side of a mirrored volume as one
// state machine over MirrorSource, MirrorLedger and the resync plans. These tests drive
// it event by event as MirrorEngine and the simulator do, and check the actions it gives
// and their order: what is written before what is sent, what a drop and a reset write,
// and a resync from RESET_DONE to the peer up to date.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DirtyBitmap } from '../../src/core/dirty-bitmap.js';
import { MirrorLedger, type MirrorRecord } from '../../src/core/mirror-ledger.js';
import type { PeerReady } from '../../src/core/mirror-source.js';
import { PrimaryCore, type PrimaryAction, type ResyncPace } from '../../src/core/primary-core.js';


const sizeBytes = 64 * 1024;
const regionBytes = 4096;
const limits: ResyncPace = { inflightMax: 4, runsMax: 2, runRegionsMax: 2, batchRegionsMax: 100, rateBytesPerSecMax: 0, regionBytes };
const behind: PeerReady = { lastSeq: 0, durableSeq: 0, cpSeq: 0, disk: 'outdated' };

function bitmapOf(...regions: number[]): Buffer {
  const bitmap = new DirtyBitmap(sizeBytes, regionBytes);
  for (const region of regions) bitmap.mark(region * regionBytes, 1);
  return bitmap.encode();
}

/** A core for peers b and c, opened after a clean stop at entry 0 with `record` and b's bitmap file. */
function makeCore(record: MirrorRecord, bBitmap: Buffer | null = null, catchUpBytesMax = 1 << 20, logCatchUp = false): PrimaryCore<string> {
  const ledger = new MirrorLedger({
    peers: ['b', 'c'],
    sizeBytes,
    regionBytes,
    lastSeq: 0,
    recoveredSeq: 0,
    record,
    bitmaps: new Map([['b', bBitmap]]),
    replayed: null,
    intent: null,
    unsyncedGenerationsMax: 4,
  });
  const core = new PrimaryCore<string>(
    { mode: 'sync', strict: false, peers: ['b', 'c'], lastSeq: 0, lagBytesMax: 1 << 20, windowBytesMax: 1 << 20, catchUpBytesMax, resync: true, sizeBytes, logCatchUp },
    ledger,
  );
  core.open();
  return core;
}

function kinds(actions: PrimaryAction<string>[]): string[] {
  return actions.map((action) => (action.kind === 'write-bitmap' ? `write-bitmap ${action.peer}` : action.kind === 'send-entry' ? `send-entry ${action.peer} ${action.entry.seq}` : action.kind));
}

/** Connects b (which needs a resync) and c (up to date), and brings b through RESET to RESET_DONE. */
function resyncingB(bBitmap: Buffer): PrimaryCore<string> {
  const core = makeCore({ cleanStopSeq: 0, resyncNeeded: ['b'], divergedAfter: {} }, bBitmap);
  core.connecting('c');
  assert.deepEqual(kinds(core.connected('c', { ...behind, disk: 'up-to-date' }, () => false)), []);
  core.connecting('b');
  // Its copy is whole but misses writes: a reset that resends only what its bitmap marks.
  const reset = core.connected('b', { ...behind, disk: 'up-to-date' }, () => false);
  assert.deepEqual(reset.at(-1), { kind: 'send-reset', peer: 'b', seq: 0, reportAfter: 0, full: false }, 'a peer that needs a resync is reset, not streamed');
  const done = core.resetDone('b', 0, 0);
  assert.deepEqual(done, [{ kind: 'resync', peer: 'b', namedBytes: 0 }]);
  return core;
}

describe('PrimaryCore', () => {
  test('an entry goes to the peers that stream; one that does not is marked for it, in memory and in its file', () => {
    const core = makeCore({ cleanStopSeq: 0, resyncNeeded: [], divergedAfter: {} });
    core.connecting('b');
    core.connected('b', { ...behind, disk: 'up-to-date' }, () => false);
    const actions = core.placed({ seq: 1, bytes: 4160, offset: 5 * regionBytes, lengthBytes: 4096, frame: 'e1' });
    assert.deepEqual(kinds(actions), ['send-entry b 1']);
    assert.equal(core.bitmap('b').dirtyRegions, 0);
    assert.deepEqual(core.bitmap('c').isDirty(5), true, 'c is away: region 5 is marked for it');
  });

  test('a resync: runs of the dirty regions are logged, the peer is asked to make them durable, and it ends up to date with the files saying so', () => {
    const core = resyncingB(bitmapOf(2, 3, 9));
    assert.equal(core.peerStatus('b').replication, 'resyncing');
    const first = core.resyncNext('b', limits, 0);
    assert.deepEqual(first, { kind: 'log', runs: [[2, 3], [9]] });
    // The runs are logged as entries 1 and 2 (with live writes, through placed()).
    for (const [index, run] of [[2, 3], [9]].entries()) {
      const seq = index + 1;
      assert.deepEqual(kinds(core.placed({ seq, bytes: 100, offset: (run[0] ?? 0) * regionBytes, lengthBytes: run.length * regionBytes, frame: `r${seq}` })), [`send-entry b ${seq}`, `send-entry c ${seq}`]);
      core.resyncLogged('b', seq, run);
    }
    const wait = core.resyncNext('b', limits, 0);
    assert.equal(wait.kind, 'wait');
    assert.deepEqual(wait.kind === 'wait' ? wait.actions : [], [{ kind: 'send-flush', peer: 'b', seq: 2 }], 'asked for the last entry sent');
    core.acked('b', 2, 0);
    core.flushed('b', 1, 0);
    // Entry 1 durable: regions 2 and 3 clear; 9 still in flight.
    assert.equal(core.resyncNext('b', limits, 0).kind, 'wait');
    assert.deepEqual(core.bitmap('b').isDirty(2) || core.bitmap('b').isDirty(3), false);
    assert.equal(core.bitmap('b').isDirty(9), true);
    core.flushed('b', 2, 0);
    const done = core.resyncNext('b', limits, 0);
    assert.equal(done.kind, 'done');
    const actions = done.kind === 'done' ? done.actions : [];
    assert.deepEqual(
      actions.flatMap((action) => (action.kind === 'write-record' ? [action.record.resyncNeeded] : [])),
      [[]],
      'the record no longer says b needs a resync',
    );
    assert.deepEqual(
      actions.flatMap((action) => (action.kind === 'write-bitmap' && action.peer === 'b' ? [action.bitmap.dirtyRegions] : [])),
      [0],
      "b's file is written empty",
    );
    assert.deepEqual({ replication: core.peerStatus('b').replication, disk: core.peerStatus('b').disk }, { replication: 'streaming', disk: 'up-to-date' });
    assert.deepEqual(core.resyncNext('b', limits, 0), { kind: 'stopped' }, 'nothing more to do');
  });

  test('a paced resync sends no faster than its rate: runs planned early wait for their time, and go first', () => {
    const core = resyncingB(bitmapOf(1, 2, 3, 4));
    // 4096-byte regions at 8192 bytes per second: one region every half second, a run at a time.
    const pace: ResyncPace = { ...limits, runsMax: 1, runRegionsMax: 1, rateBytesPerSecMax: 8192 };
    const logged: { atMs: number; run: number[] }[] = [];
    let seq = 0;
    for (let nowMs = 1000; nowMs <= 3000 && logged.length < 4; nowMs += 100) {
      const step = core.resyncNext('b', pace, nowMs);
      if (step.kind === 'pause') {
        assert.ok(step.untilMs > nowMs);
        continue;
      }
      assert.equal(step.kind, 'log', JSON.stringify(step));
      for (const run of step.kind === 'log' ? step.runs : []) {
        seq += 1;
        core.placed({ seq, bytes: 100, offset: (run[0] ?? 0) * regionBytes, lengthBytes: run.length * regionBytes, frame: `r${seq}` });
        core.resyncLogged('b', seq, run);
        logged.push({ atMs: nowMs, run });
      }
    }
    assert.deepEqual(
      logged.map((entry) => entry.run),
      [[1], [2], [3], [4]],
    );
    assert.deepEqual(
      logged.map((entry) => entry.atMs),
      [1000, 1500, 2000, 2500],
      'one region (4096 bytes) per half second from the first turn',
    );
  });

  test('a resync whose peer goes away stops, and its late entries are not taken for a new one', () => {
    const core = resyncingB(bitmapOf(4));
    assert.equal(core.resyncNext('b', limits, 0).kind, 'log');
    core.disconnected('b', 'links cut');
    core.resyncLogged('b', 1, [4]);
    assert.deepEqual(core.resyncNext('b', limits, 0), { kind: 'stopped' });
    assert.equal(core.bitmap('b').isDirty(4), true, 'the region stays dirty: nothing was made durable');
  });

  test('DIVERGED is taken only between RESET and RESET_DONE and only inside the volume; the bytes named come with the resync', () => {
    const core = makeCore({ cleanStopSeq: 0, resyncNeeded: ['b'], divergedAfter: {} }, bitmapOf(1));
    core.connecting('c');
    core.connected('c', { ...behind, disk: 'up-to-date' }, () => false);
    assert.deepEqual(core.diverged('c', false, [{ offset: 0, lengthBytes: 512 }]), [{ kind: 'protocol-error', peer: 'c', reason: 'DIVERGED out of turn' }]);
    core.connecting('b');
    core.connected('b', { ...behind, disk: 'up-to-date' }, () => false);
    assert.equal(core.bitmap('b').isDirty(7), false);
    assert.deepEqual(core.diverged('b', false, [{ offset: sizeBytes - 512, lengthBytes: 1024 }]), [{ kind: 'protocol-error', peer: 'b', reason: 'DIVERGED extent outside the volume' }]);
    assert.deepEqual(core.diverged('b', false, [{ offset: 7 * regionBytes, lengthBytes: 512 }]), []);
    assert.equal(core.bitmap('b').isDirty(7), true);
    const done = core.resetDone('b', 0, 0);
    // The named region is durable here before the core forgets where b's history was cut.
    assert.deepEqual(kinds(done), ['write-bitmap b', 'resync']);
    assert.deepEqual(done.at(-1), { kind: 'resync', peer: 'b', namedBytes: 512 });
  });

  test('a peer dropped with entries it had not made durable: marks are written, the rest is read back, then it is dropped', () => {
    // Nothing is kept in memory for a peer that goes away: what b had not made durable is read back from the log.
    const core = makeCore({ cleanStopSeq: 0, resyncNeeded: [], divergedAfter: {} }, null, 0);
    core.connecting('b');
    core.connected('b', { ...behind, disk: 'up-to-date' }, () => false);
    core.placed({ seq: 1, bytes: 100, offset: 3 * regionBytes, lengthBytes: 512, frame: 'e1' });
    core.acked('b', 1, 0);
    // A reply that breaks the protocol (an ACK past what was sent) drops b.
    const actions = core.acked('b', 5, 0);
    assert.deepEqual(kinds(actions), ['write-bitmap c', 'read-unsynced', 'peer-dropped', 'release'], 'c (away) has region 3 written; b is read back before it is dropped');
    assert.deepEqual(actions[1], { kind: 'read-unsynced', peer: 'b', fromSeq: 1, toSeq: 1 });
    // The next reply leaves without b (and c, never connected): recorded first.
    const replying = core.replying();
    assert.deepEqual(replying.map((action) => (action.kind === 'write-record' ? action.record.ackedAlone : null)), [{ b: 1, c: 1 }]);
    assert.equal(core.bitmap('b').dirtyRegions, 0, 'not marked until read back');
    const read = core.unsyncedRead('b', [{ offset: 3 * regionBytes, lengthBytes: 512 }]);
    assert.deepEqual(
      read.flatMap((action) => (action.kind === 'write-bitmap' && action.peer === 'b' ? [action.bitmap.isDirty(3) && action.bitmap.dirtyRegions === 1] : [])),
      [true],
    );
    core.unsyncedRead('b', null);
    assert.equal(core.bitmap('b').dirtyRegions, sizeBytes / regionBytes, 'entries that cannot be read back: every region');
  });

  test('verify: a region found different is marked and recorded; repair starts a resync of it', () => {
    const core = makeCore({ cleanStopSeq: 0, resyncNeeded: [], divergedAfter: {} });
    core.connecting('b');
    core.connected('b', { ...behind, disk: 'up-to-date' }, () => false);
    const actions = core.outOfSync('b', 6 * regionBytes, regionBytes);
    assert.deepEqual(kinds(actions), ['write-bitmap b', 'write-record']);
    assert.equal(core.peerStatus('b').disk, 'inconsistent');
    assert.equal(core.repair('b'), true);
    assert.deepEqual(core.resyncNext('b', limits, 0), { kind: 'log', runs: [[6]] });
    assert.equal(core.repair('c'), false, 'c is not streaming');
  });

  test('an empty copy (a replaced disk) is reset in full, unless every write since entry 1 was marked for it', () => {
    // b was in sync until it went; its disk comes back empty, while the log no longer holds entry 1.
    const replaced = makeCore({ cleanStopSeq: 0, resyncNeeded: [], divergedAfter: {} });
    for (let seq = 1; seq <= 3; seq += 1) replaced.placed({ seq, bytes: 100, offset: 0, lengthBytes: 512, frame: `e${seq}` });
    replaced.checkpoint(3);
    replaced.connecting('b');
    const reset = replaced.connected('b', { ...behind, disk: 'up-to-date', empty: true }, () => false).find((action) => action.kind === 'send-reset');
    assert.deepEqual(reset, { kind: 'send-reset', peer: 'b', seq: 3, reportAfter: 3, full: true });
    // b never held an entry: every write since the first was marked for it, which its bitmap names.
    const late = makeCore({ cleanStopSeq: 0, resyncNeeded: [], divergedAfter: {}, ackedAlone: { b: 1 } }, bitmapOf(0));
    for (let seq = 1; seq <= 3; seq += 1) late.placed({ seq, bytes: 100, offset: 0, lengthBytes: 512, frame: `e${seq}` });
    late.checkpoint(3);
    late.connecting('b');
    const partial = late.connected('b', { ...behind, disk: 'up-to-date', empty: true }, () => false).find((action) => action.kind === 'send-reset');
    assert.equal(partial?.kind === 'send-reset' ? partial.full : null, false);
  });

  test('a clean stop writes the bitmaps, then the record naming the stop and the peers that still need a resync', () => {
    const core = makeCore({ cleanStopSeq: 0, resyncNeeded: ['b'], divergedAfter: {} }, bitmapOf(1));
    const actions = core.cleanStop(0);
    const last = actions.at(-1);
    assert.equal(last?.kind, 'write-record');
    assert.deepEqual(last?.kind === 'write-record' ? last.record : null, { cleanStopSeq: 0, resyncNeeded: ['b'], divergedAfter: {} });
  });
});

describe('PrimaryCore: log retention', () => {
  test('a partition stays while an in-sync peer has no CP covering it, while it is read back, and for a peer away only within the retention', () => {
    // Entries a peer lacks may be read back from the log files (log.retentionMax > 0).
    const core = makeCore({ cleanStopSeq: 0, resyncNeeded: [], divergedAfter: {} }, null, 1 << 20, true);
    for (const id of ['b', 'c']) {
      core.connecting(id);
      core.connected(id, { ...behind, disk: 'up-to-date' }, () => false);
    }
    const place = (from: number, to: number): void => {
      for (let seq = from; seq <= to; seq += 1) core.placed({ seq, bytes: 100, offset: 0, lengthBytes: 512, frame: `e${seq}` });
    };
    place(1, 10);
    const first = { lastSeq: 10, behind: 1 };
    assert.deepEqual(core.retention(first, null, 2), { keep: true, released: [] }, 'no peer has taken a CP covering it');
    for (const id of ['b', 'c']) {
      core.acked(id, 10, 0);
      core.flushed(id, 10, 0);
    }
    core.checkpoint(10);
    core.synced('b', 10, 0);
    assert.deepEqual(core.retention(first, null, 2), { keep: true, released: [] }, 'c has not taken the CP yet');
    core.synced('c', 10, 0);
    assert.deepEqual(core.retention(first, null, 2), { keep: false, released: [] }, 'both peers took a CP covering it');
    assert.deepEqual(core.retention(first, 7, 2), { keep: true, released: [] }, 'entries from 7 on are being read back');
    assert.deepEqual(core.retention(first, 11, 2), { keep: false, released: [] }, 'a read-back of later entries does not need it');

    // b goes away: what it lacks from 11 on stays in the log as long as the retention allows.
    core.disconnected('b', 'link lost');
    assert.equal(core.logNeed('b'), 11);
    assert.equal(core.logNeed('c'), null, 'c is in sync');
    place(11, 20);
    core.checkpoint(20);
    core.synced('c', 20, 0);
    const second = { lastSeq: 20, behind: 2 };
    assert.deepEqual(core.retention(second, null, 2), { keep: true, released: [] }, 'b lacks it, within the retention');
    assert.deepEqual(core.retention({ ...second, behind: 3 }, null, 2), { keep: false, released: ['b'] }, 'beyond the retention: b needs a resync');
    assert.deepEqual(core.retention({ lastSeq: 10, behind: 3 }, null, 2), { keep: false, released: [] }, 'b has every entry through 10');
  });
});
