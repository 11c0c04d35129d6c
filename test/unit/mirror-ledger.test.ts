// MirrorLedger (src/core/mirror-ledger.ts): what a primary records of what each peer may
// lack, and what it asks to be written. Driven here with a hand-set view of the mirror's
// core; the simulator (test/sim) drives it with the real MirrorSource over many seeds.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DirtyBitmap } from '../../src/core/dirty-bitmap.js';
import { MirrorLedger, encodeMirrorRecord, parseMirrorRecord, type LedgerAction, type LedgerOpening, type LedgerSource, type MirrorRecord } from '../../src/core/mirror-ledger.js';
import type { PeerStatus } from '../../src/core/mirror-source.js';

const KiB = 1024;
const sizeBytes = 64 * KiB;
const regionBytes = 4 * KiB;

type Status = Pick<PeerStatus, 'durableSeq' | 'syncedSeq' | 'replication' | 'disk' | 'resyncNeeded'>;

/** A view of the mirror's core whose answers the test sets. */
class FakeSource implements LedgerSource {
  lastSeq = 0;
  readonly statuses = new Map<string, Status & { inSync: boolean; divergedAfter: number | null; bitmapFrom: number | null }>();

  constructor(peers: string[]) {
    for (const id of peers) this.statuses.set(id, { durableSeq: 0, syncedSeq: 0, replication: 'streaming', disk: 'up-to-date', resyncNeeded: false, inSync: true, divergedAfter: null, bitmapFrom: null });
  }

  set(id: string, change: Partial<Status & { inSync: boolean; divergedAfter: number | null; bitmapFrom: number | null }>): void {
    const status = this.statuses.get(id);
    assert.ok(status !== undefined);
    Object.assign(status, change);
  }

  isInSync(id: string): boolean {
    return this.statuses.get(id)?.inSync ?? false;
  }

  peerStatus(id: string): Status {
    const status = this.statuses.get(id);
    assert.ok(status !== undefined);
    return status;
  }

  divergedAfter(id: string): number | null {
    return this.statuses.get(id)?.divergedAfter ?? null;
  }

  bitmapFrom(id: string): number | null {
    return this.statuses.get(id)?.bitmapFrom ?? null;
  }
}

function opening(change: Partial<LedgerOpening> = {}): LedgerOpening {
  return {
    peers: ['b', 'c'],
    sizeBytes,
    regionBytes,
    lastSeq: 0,
    recoveredSeq: 0,
    record: null,
    bitmaps: new Map(),
    replayed: null,
    intent: null,
    unsyncedGenerationsMax: 4,
    ...change,
  };
}

function bitmapOf(...regions: number[]): DirtyBitmap {
  const bitmap = new DirtyBitmap(sizeBytes, regionBytes);
  for (const region of regions) bitmap.mark(region * regionBytes, 1);
  return bitmap;
}

function dirty(bitmap: DirtyBitmap): number[] {
  const out: number[] = [];
  for (let region = bitmap.nextDirty(0); region !== -1; region = bitmap.nextDirty(region + 1)) out.push(region);
  return out;
}

/** The bitmap written for each peer by these actions (the last one wins), as dirty regions. */
function written(actions: LedgerAction[]): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  for (const action of actions) if (action.kind === 'write-bitmap') out[action.peer] = dirty(action.bitmap);
  return out;
}

function records(actions: LedgerAction[]): MirrorRecord[] {
  return actions.flatMap((action) => (action.kind === 'write-record' ? [action.record] : []));
}

/** The ledger follows `source`, whose peers that stream up to date then count as in sync (as their sessions' first ACK says). */
function attach(ledger: MirrorLedger, source: FakeSource): void {
  ledger.attach(source);
  for (const id of source.statuses.keys()) ledger.clearIfCurrent(id);
}

describe('MirrorLedger', () => {
  test('a first start is clean: nothing to resync, nothing marked, the record and every bitmap written before the first write', () => {
    const ledger = new MirrorLedger(opening());
    assert.equal(ledger.clean, true);
    assert.deepEqual(ledger.resyncNeeded, []);
    assert.deepEqual(ledger.warnings, []);
    const actions = ledger.attach(new FakeSource(['b', 'c']));
    assert.equal(actions[0]?.kind, 'write-record', 'the record goes first');
    assert.deepEqual(records(actions), [{ cleanStopSeq: null, resyncNeeded: [], divergedAfter: {} }]);
    assert.deepEqual(written(actions), { b: [], c: [] });
  });

  test('a clean stop keeps the bitmaps and the peers that need a resync', () => {
    const record: MirrorRecord = { cleanStopSeq: 40, resyncNeeded: ['c', 'gone'], divergedAfter: {} };
    const ledger = new MirrorLedger(opening({ lastSeq: 40, recoveredSeq: 40, record, bitmaps: new Map([['c', bitmapOf(3, 5).encode()]]), replayed: bitmapOf(9), intent: { extents: bitmapOf(10), readable: true } }));
    assert.equal(ledger.clean, true);
    assert.deepEqual(ledger.resyncNeeded, ['c'], 'a peer no longer in the volume is left out');
    // Replayed regions and the intent record count only after an unclean stop.
    assert.deepEqual(dirty(ledger.bitmap('b')), []);
    assert.deepEqual(dirty(ledger.bitmap('c')), [3, 5]);
  });

  test('an unclean stop: every peer needs a resync, divergedAfter is the recovered entry, and the replayed regions and the intent record are marked', () => {
    const record: MirrorRecord = { cleanStopSeq: null, resyncNeeded: [], divergedAfter: { b: 12 } };
    // The intent record's extents are larger than the regions: one extent covers regions 8..11.
    const extents = new DirtyBitmap(sizeBytes, 4 * regionBytes);
    extents.mark(2 * 4 * regionBytes, 1);
    const ledger = new MirrorLedger(opening({ lastSeq: 31, recoveredSeq: 30, record, bitmaps: new Map([['b', bitmapOf(1).encode()]]), replayed: bitmapOf(4), intent: { extents, readable: true } }));
    assert.equal(ledger.clean, false);
    assert.deepEqual(ledger.resyncNeeded, ['b', 'c']);
    // The lower of what was kept and the last entry recovered (not the start's CP marker, 31).
    assert.deepEqual(ledger.divergedAfter, { b: 12, c: 30 });
    assert.deepEqual(dirty(ledger.bitmap('b')), [1, 4, 8, 9, 10, 11]);
    // c has no bitmap file and needs a resync: nothing is known of it, so all of it.
    assert.equal(ledger.bitmap('c').dirtyRegions, sizeBytes / regionBytes);
    assert.match(ledger.warnings.map((warning) => warning.message).join('\n'), /did not stop cleanly/);
  });

  test('a bitmap file that cannot be read marks every region, with a warning naming the peer', () => {
    const damaged = bitmapOf(2).encode();
    damaged.writeUInt8(damaged.readUInt8(damaged.length - 1) ^ 0xff, damaged.length - 1);
    const record: MirrorRecord = { cleanStopSeq: 7, resyncNeeded: [], divergedAfter: {} };
    const ledger = new MirrorLedger(opening({ lastSeq: 7, recoveredSeq: 7, record, bitmaps: new Map([['b', damaged]]) }));
    assert.equal(ledger.bitmap('b').dirtyRegions, sizeBytes / regionBytes);
    assert.equal(ledger.bitmap('c').dirtyRegions, 0, 'no file and no resync needed: nothing lacking');
    assert.deepEqual(ledger.warnings, [{ message: 'dirty bitmap unreadable: every region counts as out of sync', fields: { peer: 'b' } }]);
  });

  test('an unreadable write-intent record after an unclean stop is said', () => {
    const all = new DirtyBitmap(sizeBytes, regionBytes);
    all.markAll();
    const ledger = new MirrorLedger(opening({ lastSeq: 3, recoveredSeq: 3, record: { cleanStopSeq: null, resyncNeeded: [], divergedAfter: {} }, intent: { extents: all, readable: false } }));
    assert.ok(ledger.warnings.some((warning) => /write-intent record unreadable/.test(warning.message)));
    assert.equal(ledger.bitmap('b').dirtyRegions, sizeBytes / regionBytes);
  });

  test('an entry placed marks peers that do not get it now; a peer in sync keeps it in its file until it has made it durable', () => {
    const source = new FakeSource(['b', 'c']);
    const ledger = new MirrorLedger(opening());
    ledger.attach(source);
    source.set('c', { inSync: false, replication: 'disconnected', disk: 'outdated' });
    source.lastSeq = 5;
    ledger.placed(2 * regionBytes, regionBytes);
    assert.deepEqual(dirty(ledger.bitmap('b')), [], 'in memory, b lacks nothing');
    assert.deepEqual(dirty(ledger.bitmap('c')), [2]);
    // A CP marker changes no region.
    ledger.placed(0, 0);
    // b has made nothing durable: its file marks region 2 (should this node crash).
    assert.deepEqual(written(ledger.persist()), { b: [2], c: [2] });
    // Still not durable: written again with the mark.
    assert.deepEqual(written(ledger.persist()), { b: [2] });
    source.set('b', { durableSeq: 5 });
    // Durable now: rewritten once without it, then left alone.
    assert.deepEqual(written(ledger.persist()), { b: [] });
    assert.deepEqual(written(ledger.persist()), {});
  });

  test('generations past the bound merge into the oldest kept: nothing is forgotten', () => {
    const source = new FakeSource(['b']);
    const ledger = new MirrorLedger(opening({ peers: ['b'], unsyncedGenerationsMax: 2 }));
    ledger.attach(source);
    for (let region = 0; region < 6; region += 1) {
      source.lastSeq += 1;
      ledger.placed(region * regionBytes, 1);
      ledger.persist();
    }
    assert.deepEqual(written(ledger.persist()), { b: [0, 1, 2, 3, 4, 5] });
    // Durable through the generation holding regions 0..4 (merged) but not 5.
    source.set('b', { syncedSeq: 5 });
    assert.deepEqual(written(ledger.persist()), { b: [5] });
  });

  test('a dropped peer: what it lost or everything is marked and written at once, and the record says it needs a resync', () => {
    const source = new FakeSource(['b', 'c']);
    const ledger = new MirrorLedger(opening());
    attach(ledger, source);
    source.set('b', { inSync: false, replication: 'disconnected', disk: 'outdated', resyncNeeded: true });
    const actions = ledger.peerDropped('b', false, [
      { offset: 0, lengthBytes: regionBytes + 1 },
      { offset: 7 * regionBytes, lengthBytes: 0 },
    ]);
    assert.deepEqual(written(actions).b, [0, 1]);
    assert.deepEqual(records(actions), [{ cleanStopSeq: null, resyncNeeded: ['b'], divergedAfter: {} }]);
    // Said once.
    assert.deepEqual(records(ledger.needsResync('b')), []);
    source.set('c', { inSync: false, replication: 'disconnected', disk: 'outdated', resyncNeeded: false });
    const full = ledger.peerDropped('c', true, []);
    assert.equal(written(full).c?.length, sizeBytes / regionBytes);
    assert.deepEqual(records(full), [], 'c can catch up: no resync recorded');
  });

  test('a reply that leaves while a peer is not in sync is recorded first, from the entry after its last durable; the mark goes once it is up to date', () => {
    const source = new FakeSource(['b', 'c']);
    const ledger = new MirrorLedger(opening());
    attach(ledger, source);
    assert.deepEqual(ledger.replying(), [], 'every peer in sync: nothing to record');
    source.set('b', { inSync: false, replication: 'disconnected', disk: 'outdated', durableSeq: 5 });
    assert.deepEqual(records(ledger.replying()), [{ cleanStopSeq: null, resyncNeeded: [], divergedAfter: {}, ackedAlone: { b: 6 } }]);
    assert.deepEqual(ledger.replying(), [], 'said once');
    // b made more durable before it went: the earlier mark stays.
    source.set('b', { durableSeq: 20 });
    assert.deepEqual(ledger.replying(), []);
    assert.equal(ledger.ackedAlone('b'), 6);
    source.set('c', { inSync: false, replication: 'catching-up', disk: 'outdated', durableSeq: 9 });
    assert.deepEqual(records(ledger.replying())[0]?.ackedAlone, { b: 6, c: 10 });
    // b back up to date: its mark goes, written at once, once.
    source.set('b', { inSync: true, replication: 'streaming', disk: 'up-to-date' });
    assert.deepEqual(records(ledger.clearIfCurrent('b')), [{ cleanStopSeq: null, resyncNeeded: [], divergedAfter: {}, ackedAlone: { c: 10 } }]);
    assert.equal(ledger.ackedAlone('b'), null);
    assert.deepEqual(ledger.clearIfCurrent('b'), []);
  });

  test('the ackedAlone marks outlive an unclean stop and a clean one', () => {
    const record: MirrorRecord = { cleanStopSeq: null, resyncNeeded: [], divergedAfter: {}, ackedAlone: { b: 12 } };
    const ledger = new MirrorLedger(opening({ lastSeq: 31, recoveredSeq: 30, record }));
    assert.equal(ledger.ackedAlone('b'), 12, 'an unclean stop keeps what was recorded: those replies left');
    const source = new FakeSource(['b', 'c']);
    source.lastSeq = 31;
    assert.deepEqual(records(ledger.attach(source))[0]?.ackedAlone, { b: 12 });
    const text = encodeMirrorRecord(records(ledger.cleanStop(31, []))[0] ?? assert.fail());
    assert.deepEqual(parseMirrorRecord(Buffer.from(text)).ackedAlone, { b: 12 });
    // A mark that is not an entry number is dropped.
    assert.deepEqual(parseMirrorRecord(Buffer.from('{"cleanStopSeq":1,"resyncNeeded":[],"divergedAfter":{},"ackedAlone":{"b":0,"c":"x","d":3}}')).ackedAlone, { d: 3 });
  });

  test('a peer is cleared only once it streams and is up to date', () => {
    const source = new FakeSource(['b']);
    const ledger = new MirrorLedger(opening({ peers: ['b'] }));
    ledger.attach(source);
    ledger.lacks('b', 0, regionBytes);
    source.set('b', { replication: 'catching-up', disk: 'outdated' });
    ledger.clearIfCurrent('b');
    assert.deepEqual(dirty(ledger.bitmap('b')), [0]);
    source.set('b', { replication: 'streaming', disk: 'inconsistent' });
    ledger.clearIfCurrent('b');
    assert.deepEqual(dirty(ledger.bitmap('b')), [0]);
    source.set('b', { replication: 'streaming', disk: 'up-to-date' });
    ledger.clearIfCurrent('b');
    assert.deepEqual(dirty(ledger.bitmap('b')), []);
    assert.deepEqual(written(ledger.persist()), { b: [] });
  });

  test('a resync clears a region once the peer has made its entry durable, and the next persist writes it', () => {
    const source = new FakeSource(['b']);
    const ledger = new MirrorLedger(opening({ peers: ['b'] }));
    ledger.attach(source);
    source.set('b', { inSync: false, replication: 'disconnected', disk: 'outdated' });
    ledger.lacks('b', 3 * regionBytes, 2 * regionBytes);
    ledger.persist();
    source.set('b', { inSync: true, replication: 'resyncing', disk: 'inconsistent' });
    const plan = ledger.resyncPlan('b');
    const runs = plan.plan({ inflightMax: 8, runsMax: 4, runRegionsMax: 1, batchRegionsMax: 8 });
    assert.deepEqual(runs, [[3], [4]]);
    plan.logged(10, [3]);
    plan.logged(11, [4]);
    assert.deepEqual(written(ledger.persist()), {}, 'nothing durable on the peer yet');
    plan.durableThrough(10);
    assert.deepEqual(dirty(ledger.bitmap('b')), [4]);
    assert.deepEqual(written(ledger.persist()), { b: [4] });
    plan.durableThrough(11);
    assert.equal(plan.idle(), 'done');
    source.set('b', { resyncNeeded: false });
    assert.deepEqual(written(ledger.resyncDone('b')), { b: [] });
  });

  test('a reset: in full, every region is marked and written before the RESET goes; the record names the peer', () => {
    const source = new FakeSource(['b']);
    const ledger = new MirrorLedger(opening({ peers: ['b'] }));
    ledger.attach(source);
    const actions = ledger.resetPeer('b', true);
    assert.equal(written(actions).b?.length, sizeBytes / regionBytes);
    assert.deepEqual(records(actions).at(-1)?.resyncNeeded, ['b']);
    assert.deepEqual(records(ledger.resyncDone('b')).at(-1)?.resyncNeeded, []);
  });

  test('DIVERGED marks what the peer names; the record forgets divergedAfter once the core has', () => {
    const source = new FakeSource(['b', 'c']);
    const ledger = new MirrorLedger(opening({ lastSeq: 9, recoveredSeq: 8, record: { cleanStopSeq: null, resyncNeeded: [], divergedAfter: {} } }));
    assert.deepEqual(ledger.divergedAfter, { b: 8, c: 8 });
    source.set('b', { divergedAfter: 8 });
    source.set('c', { divergedAfter: 8 });
    attach(ledger, source);
    assert.equal(ledger.diverged('b', false, [{ offset: 6 * regionBytes, lengthBytes: 10 }]), 10);
    assert.deepEqual(written(ledger.beforeResetDone()).b?.includes(6), true, "the named regions are durable before the core forgets where b's history was cut");
    source.set('b', { divergedAfter: null });
    assert.deepEqual(records(ledger.afterResetDone('b')), [{ cleanStopSeq: null, resyncNeeded: ['b', 'c'], divergedAfter: { c: 8 } }]);
    assert.deepEqual(records(ledger.afterResetDone('b')), [], 'said once');
    assert.equal(ledger.diverged('c', true, []), sizeBytes);
    assert.equal(ledger.bitmap('c').dirtyRegions, sizeBytes / regionBytes);
  });

  test('verify finding a region different marks it, writes it and records the resync', () => {
    const source = new FakeSource(['b']);
    const ledger = new MirrorLedger(opening({ peers: ['b'] }));
    attach(ledger, source);
    source.set('b', { replication: 'resyncing', disk: 'inconsistent' });
    const actions = ledger.outOfSync('b', 5 * regionBytes, regionBytes);
    assert.deepEqual(written(actions), { b: [5] });
    assert.deepEqual(records(actions), [{ cleanStopSeq: null, resyncNeeded: ['b'], divergedAfter: {} }]);
  });

  test('a clean stop is recorded last, and the next start at that entry is clean', () => {
    const source = new FakeSource(['b', 'c']);
    const ledger = new MirrorLedger(opening());
    attach(ledger, source);
    source.lastSeq = 3;
    ledger.placed(0, regionBytes);
    ledger.persist();
    source.set('b', { durableSeq: 3 });
    source.set('c', { durableSeq: 3, divergedAfter: 2 });
    const actions = ledger.cleanStop(3, ['c']);
    assert.equal(actions.at(-1)?.kind, 'write-record');
    assert.deepEqual(written(actions), { b: [], c: [] }, 'the peers have it durable: the files no longer mark it');
    const record = records(actions).at(-1) ?? null;
    assert.deepEqual(record, { cleanStopSeq: 3, resyncNeeded: ['c'], divergedAfter: { c: 2 } });
    const text = encodeMirrorRecord(record ?? { cleanStopSeq: null, resyncNeeded: [], divergedAfter: {} });
    const again = new MirrorLedger(opening({ lastSeq: 3, recoveredSeq: 3, record: parseMirrorRecord(Buffer.from(text)) }));
    assert.equal(again.clean, true);
    assert.deepEqual(again.resyncNeeded, ['c']);
    // Started at another entry (the log moved on without this record): not clean.
    assert.equal(new MirrorLedger(opening({ lastSeq: 4, recoveredSeq: 4, record: parseMirrorRecord(Buffer.from(text)) })).clean, false);
  });

  test('a state file that cannot be parsed reads as an unclean stop; bad fields are dropped', () => {
    assert.deepEqual(parseMirrorRecord(Buffer.from('{"cleanStopSeq": 4, "resyn')), { cleanStopSeq: null, resyncNeeded: [], divergedAfter: {} });
    assert.deepEqual(parseMirrorRecord(Buffer.from('{"cleanStopSeq": "4", "resyncNeeded": ["b", 3], "divergedAfter": {"b": -1, "c": 7, "d": 1.5}}')), {
      cleanStopSeq: null,
      resyncNeeded: ['b'],
      divergedAfter: { c: 7 },
    });
  });
});
