// The write log as a replica's log (LogOptions.replica) and the LocalVolume calls that
// store a primary's entries (replicate, applyLoggedThrough), over real log files in a
// temporary directory and MemoryDisks. A replica's log holds the entries its primary
// sends, under the primary's sequence numbers; it never adds entries of its own, not even
// CP markers. In logship mode (deferApply) entries wait in the log and reach the volume
// only when the primary's consistency point is applied.
//
// Checked is what a user of the replica would notice: the bytes read back from its volume
// (before and after applying, after a crash and recovery), the entries read back from its
// log with the primary's fields and payload, the sequence number it continues at, and the
// consistency point recorded in its superblock. Last, the primary's tap (onPlaced): every
// entry a primary appends reaches the mirror once, in order, ready to send.
//
// A crash is modelled with DurableDisk: the volume bytes as of its last sync are what a
// restarted node finds; the log files are kept as written.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { IoActivity } from '../../src/io/file-io.js';
import { MemoryDisk } from '../../src/io/memory-disk.js';
import { AssertionError } from '../../src/lib/assert.js';
import { Logger } from '../../src/lib/log.js';
import { applyEntry } from '../../src/storage/apply-entry.js';
import { LocalVolume } from '../../src/storage/local-volume.js';
import {
  decodeEntryHeader,
  encodeEntryHeader,
  EntryFlag,
  EntryType,
  payloadMatches,
  type EntryHeader,
} from '../../src/protocol/log-entry.js';
import { WriteLog, type EntryStamp, type LogGeometry, type LogOptions, type RecoveryReport } from '../../src/storage/write-log.js';

/** The next entry's stamp, as a primary's core would give it (these tests drive the log alone). */
function nextStamp(log: WriteLog): EntryStamp {
  return { seq: log.lastSeq + 1, epoch: 0 };
}
import { baseSeed, Prng } from './prng.js';
import { pattern, scratchDirs } from '../helpers/test-data.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SEED = baseSeed(0x5e_9c_0001);
const ZERO_CHUNK_BYTES = 3000;
const VOLUME_BYTES = 256 * KiB;
const VOLUME_UUID = '3c1d9e7a-55b2-4f08-9d6e-7a2b4c1e0f93';
/** The replica's own volume id; the primary's entries carry another (SOURCE.volumeId). */
const VOLUME_ID = 7;
const GEOMETRY: LogGeometry = { partitionBytes: 1 * MiB, partitions: 2 };
/** What the primary's own log put in the fields a replica replaces with its own. */
const SOURCE = { logId: 0xabcd_ef01, volumeId: 0x1234_5678, generation: 5, epoch: 3 };

const freshDir = scratchDirs('blockmirror-replica-log-');


/** A MemoryDisk that remembers what a crash would leave: its bytes as of the last sync. */
class DurableDisk extends MemoryDisk {
  readonly durable: Buffer;

  constructor(sizeBytes: number, initial?: Buffer) {
    super(sizeBytes);
    this.durable = Buffer.alloc(sizeBytes);
    if (initial !== undefined) {
      initial.copy(this.durable);
      void this.write(initial, 0);
    }
  }

  override async sync(): Promise<void> {
    await super.sync();
    await this.read(this.durable, 0);
  }

  /** The disk a node restarted after a crash finds. */
  afterCrash(): DurableDisk {
    return new DurableDisk(this.sizeBytes, this.durable);
  }
}

async function readAll(disk: MemoryDisk): Promise<Buffer> {
  const out = Buffer.alloc(disk.sizeBytes);
  await disk.read(out, 0);
  return out;
}

function superblockCpSeq(dir: string): number {
  const superblock = JSON.parse(fs.readFileSync(path.join(dir, 'superblock.json'), 'utf8')) as { cpSeq: number };
  return superblock.cpSeq;
}

// ---------------------------------------------------------------------------------------
// Entries as the primary sends them, and what they make of a volume.

interface SourceEntry {
  header: EntryHeader;
  payload: Buffer;
}

type SourceOp =
  | { type: 'write'; offset: number; payload: Buffer }
  | { type: 'zeroes'; offset: number; lengthBytes: number; noHole: boolean }
  | { type: 'trim'; offset: number; lengthBytes: number }
  | { type: 'cp'; cpSeq: number };

/** Entry `seq` as the primary's log encoded it and the replica's peer link decoded it. */
function sourceEntry(seq: number, op: SourceOp): SourceEntry {
  const common = { ...SOURCE, seq, durableSeq: seq - 1 };
  let encoded: Buffer;
  let payload: Buffer = Buffer.alloc(0);
  switch (op.type) {
    case 'write':
      payload = op.payload;
      encoded = encodeEntryHeader({ ...common, type: EntryType.WRITE, flags: 0, offset: op.offset, lengthBytes: payload.length }, [payload]);
      break;
    case 'zeroes':
      encoded = encodeEntryHeader(
        { ...common, type: EntryType.ZEROES, flags: op.noHole ? EntryFlag.NO_HOLE : 0, offset: op.offset, lengthBytes: op.lengthBytes },
        [],
      );
      break;
    case 'trim':
      encoded = encodeEntryHeader({ ...common, type: EntryType.TRIM, flags: 0, offset: op.offset, lengthBytes: op.lengthBytes }, []);
      break;
    case 'cp':
      encoded = encodeEntryHeader({ ...common, type: EntryType.CONSISTENCY_POINT, flags: 0, offset: op.cpSeq, lengthBytes: 0 }, []);
      break;
  }
  const header = decodeEntryHeader(encoded);
  assert.ok(typeof header !== 'string', `source header ${seq} does not decode: ${String(header)}`);
  return { header, payload };
}

/** Entries 1..n of a primary, one per op. */
function sourceEntries(ops: SourceOp[]): SourceEntry[] {
  return ops.map((op, index) => sourceEntry(index + 1, op));
}

/** The volume after applying `entries` in order to `start` (zeroes when not given). */
function model(entries: readonly SourceEntry[], start = Buffer.alloc(VOLUME_BYTES)): Buffer {
  const image = Buffer.from(start);
  for (const { header, payload } of entries) {
    if (header.type === EntryType.WRITE) payload.copy(image, header.offset);
    else if (header.type !== EntryType.CONSISTENCY_POINT) image.fill(0, header.offset, header.offset + header.lengthBytes);
  }
  return image;
}

function assertSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: size`);
  if (actual.equals(expected)) return;
  let at = 0;
  while (at < actual.length && actual[at] === expected[at]) at += 1;
  assert.fail(`${what}: first difference at byte ${at} (0x${(actual[at] ?? 0).toString(16)}, expected 0x${(expected[at] ?? 0).toString(16)})`);
}

/** The fields of an entry the primary chose, which the replica's copy must carry unchanged. */
function sourceFields(header: EntryHeader): Partial<EntryHeader> {
  const { type, flags, seq, offset, lengthBytes, payloadBytes, payloadCrc, epoch } = header;
  return { type, flags, seq, offset, lengthBytes, payloadBytes, payloadCrc, epoch };
}

// ---------------------------------------------------------------------------------------
// A replica volume over a real log.

interface Replica {
  dir: string;
  disk: DurableDisk;
  log: WriteLog;
  volume: LocalVolume;
  recovery: RecoveryReport;
  /** Sequence numbers recovery handed to `apply`, in order. */
  replayed: number[];
}

async function openReplica(dir: string, disk: DurableDisk, deferApply: boolean): Promise<Replica> {
  const replayed: number[] = [];
  const { log, recovery } = await WriteLog.open(
    {
      dir,
      geometry: GEOMETRY,
      volumeUuid: VOLUME_UUID,
      volumeId: VOLUME_ID,
      activity: new IoActivity(),
      inlineWriteBytesMax: 64 * KiB,
      log: new Logger({ write: () => undefined }, 'debug'),
      onCheckpointWanted: () => undefined,
      replica: { deferApply },
    },
    async (header, payload) => {
      replayed.push(header.seq);
      await applyEntry(disk, header, payload, ZERO_CHUNK_BYTES);
    },
  );
  return { dir, disk, log, volume: new LocalVolume('v1', disk, log, ZERO_CHUNK_BYTES, 'secondary'), recovery, replayed };
}

/** Stores entries as a replica target does: in sequence order, without waiting between them. */
async function replicateAll(replica: Replica, entries: readonly SourceEntry[], apply: boolean): Promise<void> {
  await Promise.all(entries.map(({ header, payload }) => replica.volume.replicate(header, payload, apply)));
}

/** A crash: the log files stay as written, the volume keeps only what it synced. */
async function crashAndReopen(replica: Replica, deferApply: boolean): Promise<Replica> {
  replica.log.close();
  return openReplica(replica.dir, replica.disk.afterCrash(), deferApply);
}

/** Overlapping writes, zeroes and a trim, then a CP entry of the primary, then more writes. */
function mixedOps(random: Prng): SourceOp[] {
  return [
    { type: 'write', offset: 0, payload: pattern(8 * KiB, 1) },
    { type: 'write', offset: 4 * KiB, payload: pattern(8 * KiB, 2) },
    { type: 'zeroes', offset: 6 * KiB, lengthBytes: 3 * KiB, noHole: true },
    { type: 'write', offset: 100, payload: random.bytes(1000) },
    { type: 'cp', cpSeq: 4 },
    { type: 'write', offset: 64 * KiB, payload: pattern(16 * KiB, 3) },
    { type: 'trim', offset: 68 * KiB, lengthBytes: 8 * KiB },
    { type: 'write', offset: 5 * KiB, payload: pattern(2 * KiB, 4) },
  ];
}

// ---------------------------------------------------------------------------------------

describe('replica write log', () => {
  test('takes entries under the primary\'s sequence numbers and refuses anything else', async () => {
    const replica = await openReplica(freshDir(), new DurableDisk(VOLUME_BYTES), false);
    try {
      const entries = sourceEntries([
        { type: 'write', offset: 0, payload: pattern(4 * KiB, 1) },
        { type: 'write', offset: 8 * KiB, payload: pattern(4 * KiB, 2) },
        { type: 'zeroes', offset: 2 * KiB, lengthBytes: 1 * KiB, noHole: false },
      ]);
      assert.equal(replica.log.lastSeq, 0);
      for (const { header, payload } of entries) {
        const stored = replica.volume.replicate(header, payload, true);
        assert.equal(replica.log.lastSeq, header.seq, 'the replica takes the primary\'s sequence number');
        await stored;
      }
      assertSameBytes(await readAll(replica.disk), model(entries), 'volume');
      const skip = sourceEntry(5, { type: 'write', offset: 0, payload: pattern(512, 9) });
      assert.throws(() => replica.log.appendReplica(skip.header, skip.payload), AssertionError, 'a gap in the sequence');
      const again = entries[1];
      assert.ok(again !== undefined);
      assert.throws(() => replica.log.appendReplica(again.header, again.payload), AssertionError, 'an entry twice');
      assert.throws(
        () => replica.log.append(nextStamp(replica.log), EntryType.WRITE, { offset: 0, lengthBytes: 512, flags: 0 }, [pattern(512, 9)]),
        AssertionError,
        'a replica never makes entries of its own',
      );
      await assert.rejects(
        replica.volume.write([pattern(512, 9)], 0, true),
        (error: unknown) => (error as { code?: string }).code === 'ERR_NOT_PRIMARY',
        "a client's write to a secondary's copy is refused",
      );
      assertSameBytes(await readAll(replica.disk), model(entries), 'volume after the refusals');
      assert.equal(replica.log.lastSeq, 3, 'refused entries take no sequence number');
      // And the next one in sequence is still taken, under its own number.
      const next = sourceEntry(4, { type: 'write', offset: 12 * KiB, payload: pattern(4 * KiB, 4) });
      const appended = replica.log.appendReplica(next.header, next.payload);
      assert.equal(appended.seq, 4);
      assert.equal(replica.log.lastSeq, 4);
      await appended.written;
      replica.log.applied(appended.seq);
      assert.equal(replica.log.appliedThrough, 4);
    } finally {
      await replica.volume.close();
    }
  });

  test('a primary log refuses appendReplica', async () => {
    const { log } = await WriteLog.open(
      {
        dir: freshDir(),
        geometry: GEOMETRY,
        volumeUuid: VOLUME_UUID,
        volumeId: VOLUME_ID,
        activity: new IoActivity(),
        inlineWriteBytesMax: 64 * KiB,
        log: new Logger({ write: () => undefined }, 'debug'),
        onCheckpointWanted: () => undefined,
      },
      () => Promise.resolve(),
    );
    try {
      const entry = sourceEntry(1, { type: 'write', offset: 0, payload: pattern(512, 1) });
      assert.throws(() => log.appendReplica(entry.header, entry.payload), AssertionError);
      assert.equal(log.lastSeq, 0);
    } finally {
      log.close();
    }
  });

  test('a checkpoint adds no CP marker of its own; the superblock records the applied mark; a CP entry from the primary is stored like any other', async () => {
    /** Two writes, the primary's CP entry covering them, and a third write. */
    const withCpAfterTwo = (): ReturnType<typeof sourceEntries> =>
      sourceEntries([
        { type: 'write', offset: 0, payload: pattern(4 * KiB, 1) },
        { type: 'write', offset: 4 * KiB, payload: pattern(4 * KiB, 2) },
        { type: 'cp', cpSeq: 2 },
        { type: 'write', offset: 8 * KiB, payload: pattern(4 * KiB, 3) },
      ]);
    // Sync mode: every entry is applied as it is stored.
    const sync = await openReplica(freshDir(), new DurableDisk(VOLUME_BYTES), false);
    try {
      const entries = withCpAfterTwo();
      await replicateAll(sync, entries, true);
      assert.equal(sync.log.lastSeq, 4, 'the primary\'s CP entry takes its sequence number');
      assert.equal(sync.log.appliedThrough, 4);
      await sync.volume.checkpoint();
      assert.equal(sync.log.lastSeq, 4, 'no CP marker appended');
      assert.equal(sync.log.status().cpSeq, 4);
      assert.equal(superblockCpSeq(sync.dir), 4);
      assertSameBytes(sync.disk.durable, model(entries), 'volume made durable by the checkpoint');
      // The next entry from the primary is seq 5, as it would be without the checkpoint.
      const fifth = sourceEntry(5, { type: 'write', offset: 12 * KiB, payload: pattern(4 * KiB, 5) });
      await sync.volume.replicate(fifth.header, fifth.payload, true);
      assert.equal(sync.log.lastSeq, 5);
      await sync.volume.checkpoint();
      assert.equal(sync.log.lastSeq, 5);
      assert.equal(superblockCpSeq(sync.dir), 5);
    } finally {
      await sync.volume.close();
    }

    // Logship: the checkpoint covers only what has been applied.
    const logship = await openReplica(freshDir(), new DurableDisk(VOLUME_BYTES), true);
    try {
      const entries = withCpAfterTwo();
      await replicateAll(logship, entries, false);
      await logship.volume.applyLoggedThrough(2);
      await logship.volume.checkpoint();
      assert.equal(logship.log.lastSeq, 4, 'no CP marker appended');
      assert.equal(logship.log.appliedThrough, 2);
      assert.equal(superblockCpSeq(logship.dir), 2, 'the superblock records the applied mark, not the last entry');
      assertSameBytes(logship.disk.durable, model(entries.slice(0, 2)), 'volume as of the CP');
      const cpEntry = await logship.log.readEntry(3);
      assert.deepEqual(sourceFields(cpEntry.header), sourceFields(entries[2]?.header ?? assert.fail()));
      assert.equal(cpEntry.header.type, EntryType.CONSISTENCY_POINT);
      assert.equal(cpEntry.header.offset, 2, 'the primary\'s CP sequence number');
      assert.equal(cpEntry.payload.length, 0);
    } finally {
      await logship.volume.close();
    }
  });

  test('sync mode: after a crash, recovery replays the stored entries onto the volume and the log continues at the same seq', async () => {
    const random = new Prng(SEED);
    const first = await openReplica(freshDir(), new DurableDisk(VOLUME_BYTES), false);
    const entries = sourceEntries(mixedOps(random));
    await replicateAll(first, entries, true);
    assertSameBytes(await readAll(first.disk), model(entries), 'volume before the crash');
    // A FLUSH from the primary makes the entries durable in the log; the volume is never synced.
    await first.log.syncTo(first.log.lastSeq);
    assert.equal(first.disk.syncCount, 0);

    const second = await crashAndReopen(first, false);
    try {
      assert.ok((await readAll(first.disk.afterCrash())).every((byte) => byte === 0), 'the crash lost every volume write');
      assert.deepEqual(second.replayed, entries.map((entry) => entry.header.seq), 'every entry replayed, in order');
      assert.equal(second.recovery.lastSeq, entries.length);
      assertSameBytes(await readAll(second.disk), model(entries), `volume after recovery (seed ${SEED})`);
      assert.equal(second.log.lastSeq, entries.length);
      assert.equal(second.log.appliedThrough, entries.length);

      // The primary's next entry follows on; a repeat of the last one is refused.
      const last = entries[entries.length - 1];
      assert.ok(last !== undefined);
      assert.throws(() => second.log.appendReplica(last.header, last.payload), AssertionError);
      const next = sourceEntry(entries.length + 1, { type: 'write', offset: 200 * KiB, payload: pattern(4 * KiB, 9) });
      await second.volume.replicate(next.header, next.payload, true);
      assert.equal(second.log.lastSeq, entries.length + 1);
      await second.volume.checkpoint();
      assert.equal(superblockCpSeq(second.dir), entries.length + 1);
    } finally {
      await second.volume.close();
    }

    // After that CP nothing is left to replay, and the bytes are still all there.
    const third = await openReplica(second.dir, second.disk.afterCrash(), false);
    try {
      assert.deepEqual(third.replayed, []);
      assert.equal(third.log.lastSeq, entries.length + 1);
      const next = sourceEntry(entries.length + 1, { type: 'write', offset: 200 * KiB, payload: pattern(4 * KiB, 9) });
      assertSameBytes(await readAll(third.disk), model([...entries, next]), 'volume after the CP and a restart');
    } finally {
      await third.volume.close();
    }
  });

  test('logship: entries wait in the log, read back exactly, and reach the volume only through applyLoggedThrough', async () => {
    const random = new Prng(SEED + 1);
    const entries = sourceEntries(mixedOps(random));
    const replica = await openReplica(freshDir(), new DurableDisk(VOLUME_BYTES), true);
    let reopened: Replica | null = null;
    try {
      await replicateAll(replica, entries, false);
      assert.equal(replica.log.lastSeq, entries.length);
      assert.equal(replica.log.appliedThrough, 0);
      assert.ok((await readAll(replica.disk)).every((byte) => byte === 0), 'nothing applied yet: the volume reads back zeroes');

      for (const entry of entries) {
        const back = await replica.log.readEntry(entry.header.seq);
        assert.deepEqual(sourceFields(back.header), sourceFields(entry.header), `entry ${entry.header.seq} header`);
        assert.ok(back.payload.equals(entry.payload), `entry ${entry.header.seq} payload`);
      }

      // Entries 1..4 overlap (4 KiB..8 KiB by 1 and 2, 6..9 KiB zeroed, 100..1100 by 4).
      const applyThrough = 4;
      await replica.volume.applyLoggedThrough(applyThrough);
      assert.equal(replica.log.appliedThrough, applyThrough);
      const asOfCp = model(entries.slice(0, applyThrough));
      assertSameBytes(await readAll(replica.disk), asOfCp, `volume after applying 1..${applyThrough}`);
      await replica.volume.checkpoint();
      assert.equal(superblockCpSeq(replica.dir), applyThrough, 'the CP covers the applied entries only');
      assert.equal(replica.log.lastSeq, entries.length);

      // A crash: the volume holds what the CP made durable; recovery applies nothing.
      reopened = await crashAndReopen(replica, true);
      assert.deepEqual(reopened.replayed, [], 'recovery of a logship log applies nothing');
      assert.equal(reopened.recovery.cpSeq, applyThrough);
      assert.equal(reopened.recovery.lastSeq, entries.length);
      assert.equal(reopened.log.lastSeq, entries.length);
      assert.equal(reopened.log.appliedThrough, applyThrough);
      assertSameBytes(await readAll(reopened.disk), asOfCp, 'volume after recovery: still as of the CP');
      for (const entry of entries.slice(applyThrough)) {
        const back = await reopened.log.readEntry(entry.header.seq);
        assert.deepEqual(sourceFields(back.header), sourceFields(entry.header), `entry ${entry.header.seq} header after recovery`);
        assert.ok(back.payload.equals(entry.payload), `entry ${entry.header.seq} payload after recovery`);
      }
      await reopened.volume.applyLoggedThrough(entries.length);
      assert.equal(reopened.log.appliedThrough, entries.length);
      assertSameBytes(await readAll(reopened.disk), model(entries), `volume after applying every entry (seed ${SEED + 1})`);
      // More entries from the primary follow on.
      const next = sourceEntry(entries.length + 1, { type: 'write', offset: 200 * KiB, payload: pattern(4 * KiB, 9) });
      await reopened.volume.replicate(next.header, next.payload, false);
      assert.equal(reopened.log.lastSeq, entries.length + 1);
      assertSameBytes(await readAll(reopened.disk), model(entries), 'the new entry waits in the log');
    } finally {
      await (reopened ?? replica).volume.close();
    }
  });

  test('logship: applyLoggedThrough applies overlapping writes in sequence order, the later one winning', async () => {
    const replica = await openReplica(freshDir(), new DurableDisk(VOLUME_BYTES), true);
    try {
      // Ten writes to the same 4 KiB, each shifted by 100 bytes: only sequence order gives the model.
      const entries = sourceEntries(
        Array.from({ length: 10 }, (_, index): SourceOp => ({ type: 'write', offset: index * 100, payload: pattern(4 * KiB, index + 1) })),
      );
      await replicateAll(replica, entries, false);
      for (let through = 1; through <= entries.length; through += 3) {
        await replica.volume.applyLoggedThrough(through);
        assert.equal(replica.log.appliedThrough, through);
        assertSameBytes(await readAll(replica.disk), model(entries.slice(0, through)), `after applying 1..${through}`);
      }
      // Asking again for what is applied changes nothing.
      await replica.volume.applyLoggedThrough(4);
      assertSameBytes(await readAll(replica.disk), model(entries.slice(0, 10)), 'after applying all');
    } finally {
      await replica.volume.close();
    }
  });
});

test(
  'logship: entries recovered after a CP survive a later CP that covers only some of them, and a second restart',
  async () => {
    const entries = sourceEntries(
      Array.from({ length: 6 }, (_, index): SourceOp => ({ type: 'write', offset: index * 8 * KiB, payload: pattern(4 * KiB, index + 1) })),
    );
    const replica = await openReplica(freshDir(), new DurableDisk(VOLUME_BYTES), true);
    await replicateAll(replica, entries, false);
    await replica.log.syncTo(entries.length);
    await replica.volume.applyLoggedThrough(2);
    await replica.volume.checkpoint();
    // Restart: entries 3..6 are in the log, written by the first session.
    const second = await crashAndReopen(replica, true);
    let third: Replica | null = null;
    try {
      assert.equal(second.log.lastSeq, 6);
      // The primary's next CP is at 4: entries 5 and 6 stay in the log for a later one.
      await second.volume.applyLoggedThrough(4);
      await second.volume.checkpoint();
      assert.equal(superblockCpSeq(second.dir), 4);
      third = await crashAndReopen(second, true);
      assert.equal(third.recovery.lastSeq, 6, 'entries 5 and 6 were acknowledged to the primary and must still be in the log');
      assert.equal(third.log.lastSeq, 6);
      await third.volume.applyLoggedThrough(6);
      assertSameBytes(await readAll(third.disk), model(entries), 'volume after applying every entry');
    } finally {
      await (third ?? second).volume.close();
    }
  },
);

test(
  'logship: a replica that stored more entries after a restart, then took a CP covering only some recovered ones, opens again',
  async () => {
    const entries = sourceEntries(
      Array.from({ length: 7 }, (_, index): SourceOp => ({ type: 'write', offset: index * 8 * KiB, payload: pattern(4 * KiB, index + 1) })),
    );
    const replica = await openReplica(freshDir(), new DurableDisk(VOLUME_BYTES), true);
    await replicateAll(replica, entries.slice(0, 6), false);
    await replica.log.syncTo(6);
    await replica.volume.applyLoggedThrough(2);
    await replica.volume.checkpoint();
    const second = await crashAndReopen(replica, true);
    let third: Replica | null = null;
    try {
      const seventh = entries[6];
      assert.ok(seventh !== undefined);
      await second.volume.replicate(seventh.header, seventh.payload, false);
      await second.log.syncTo(7);
      await second.volume.applyLoggedThrough(4);
      await second.volume.checkpoint();
      third = await crashAndReopen(second, true);
      assert.equal(third.log.lastSeq, 7);
      await third.volume.applyLoggedThrough(7);
      assertSameBytes(await readAll(third.disk), model(entries), 'volume after applying every entry');
    } finally {
      await (third ?? second).volume.close();
    }
  },
);

// ---------------------------------------------------------------------------------------

/** A primary's log (no replica mode) in a fresh directory, with the CP requests given. */
function primaryLogOptions(geometry: LogGeometry, onCheckpointWanted: () => void): LogOptions {
  return {
    dir: freshDir(),
    geometry,
    volumeUuid: VOLUME_UUID,
    volumeId: VOLUME_ID,
    activity: new IoActivity(),
    inlineWriteBytesMax: 64 * KiB,
    log: new Logger({ write: () => undefined }, 'debug'),
    onCheckpointWanted,
  };
}

describe('the tap of a primary log', () => {
  test('reports every entry once, in sequence order, with a header that decodes to it and its payload (through partition wraps and CPs)', async () => {
    const random = new Prng(SEED + 2);
    const placed: { seq: number; header: Buffer; payload: Buffer; offset: number; type: EntryType }[] = [];
    const checkpoints: Promise<void>[] = [];
    let log: WriteLog | null = null;
    // Small partitions, so the appends below go round the log several times and wait for CPs.
    const options = primaryLogOptions({ partitionBytes: 64 * KiB, partitions: 2 }, () => {
      setImmediate(() => {
        const open: WriteLog | null = log;
        if (open !== null) checkpoints.push(open.checkpoint(() => nextStamp(open), () => Promise.resolve()));
      });
    });
    const opened = await WriteLog.open(options, () => Promise.resolve());
    log = opened.log;
    log.tap((seq, header, payload, { offset, type, lengthBytes }) => {
      // The header and payload are the caller's buffers: keep copies.
      placed.push({ seq, header: Buffer.from(header), payload: Buffer.concat(payload), offset, type });
      const decoded = decodeEntryHeader(header);
      assert.ok(typeof decoded !== 'string' && decoded.lengthBytes === lengthBytes, 'the tap reports the entry\'s length');
    });
    assert.throws(() => opened.log.tap(() => undefined), AssertionError, 'one tap per log');
    try {
      const appended = new Map<number, { type: EntryType; offset: number; payload: Buffer }>();
      const written: Promise<void>[] = [];
      const appendOne = (type: EntryType, offset: number, lengthBytes: number, payload: Buffer[]): void => {
        assert.ok(log !== null);
        const entry = log.append(nextStamp(log), type, { offset, lengthBytes, flags: 0 }, payload);
        appended.set(entry.seq, { type, offset, payload: Buffer.concat(payload) });
        const current = log;
        written.push(entry.written.then(() => current.applied(entry.seq)));
      };
      for (let round = 0; round < 6; round += 1) {
        for (let index = 0; index < 40; index += 1) {
          const kind = random.below(5);
          const offset = random.below(256) * 512;
          if (kind === 0) appendOne(EntryType.ZEROES, offset, random.between(1, 64) * 512, []);
          else {
            const length = random.between(1, 16) * 512;
            const data = random.bytes(length);
            const cut = random.below(length + 1);
            appendOne(EntryType.WRITE, offset, length, [data.subarray(0, cut), data.subarray(cut)]);
          }
        }
        await Promise.all(written);
        // A CP between rounds: its marker goes through the tap too.
        await log.checkpoint(() => nextStamp(log), () => Promise.resolve());
      }
      await Promise.all(written);
      await Promise.all(checkpoints);

      const lastSeq = log.lastSeq;
      assert.ok(log.status().checkpoints >= 6, 'the appends went round the log');
      assert.deepEqual(
        placed.map((entry) => entry.seq),
        Array.from({ length: lastSeq }, (_, index) => index + 1),
        `every entry placed exactly once, in sequence order (seed ${SEED + 2})`,
      );
      let markers = 0;
      for (const entry of placed) {
        const header = decodeEntryHeader(entry.header);
        assert.ok(typeof header !== 'string', `entry ${entry.seq}: header does not decode (${String(header)})`);
        assert.equal(header.seq, entry.seq);
        assert.equal(header.type, entry.type);
        assert.equal(header.offset, entry.offset);
        assert.equal(header.volumeId, VOLUME_ID);
        assert.ok(payloadMatches(header, entry.payload), `entry ${entry.seq}: the payload matches its header's CRC`);
        const mine = appended.get(entry.seq);
        if (mine === undefined) {
          // Not appended by the test: a CP marker of checkpoint().
          markers += 1;
          assert.equal(header.type, EntryType.CONSISTENCY_POINT, `entry ${entry.seq}`);
          assert.equal(entry.payload.length, 0);
          assert.ok(header.offset < entry.seq, 'a CP marker names an earlier entry');
          continue;
        }
        assert.equal(header.type, mine.type, `entry ${entry.seq} type`);
        assert.equal(header.offset, mine.offset, `entry ${entry.seq} offset`);
        assert.ok(entry.payload.equals(mine.payload), `entry ${entry.seq} payload bytes`);
      }
      assert.equal(appended.size + markers, lastSeq);
      assert.ok(markers >= 6, `${markers} CP markers reported`);
    } finally {
      log.close();
    }
  });
});

describe('reading entries back from a primary log (catch-up of a peer that was away)', () => {
  test('readRange returns retained entries exactly as the tap saw them, across partitions; released ones are refused', async () => {
    const random = new Prng(SEED + 3);
    const placed = new Map<number, { header: Buffer; payload: Buffer }>();
    let log: WriteLog | null = null;
    // The retainer keeps partitions with entries from `keepFrom` on, at most two before the active one.
    let keepFrom = 1;
    const options = primaryLogOptions(
      { partitionBytes: 64 * KiB, partitions: 4 },
      () =>
        setImmediate(() => {
          const open: WriteLog | null = log;
          if (open !== null) void open.checkpoint(() => nextStamp(open), () => Promise.resolve()).catch(() => undefined);
        }),
    );
    const opened = await WriteLog.open(options, () => Promise.resolve());
    log = opened.log;
    const current = log;
    current.tap((seq, header, payload) => placed.set(seq, { header: Buffer.from(header), payload: Buffer.concat(payload) }));
    current.addRetainer((partition) => partition.lastSeq >= keepFrom && partition.activeGeneration - partition.generation <= 2);
    try {
      const appendSome = async (count: number): Promise<void> => {
        const written: Promise<void>[] = [];
        for (let index = 0; index < count; index += 1) {
          const data = random.bytes(random.between(1, 8) * 512);
          const entry = current.append(nextStamp(current), EntryType.WRITE, { offset: random.below(256) * 512, lengthBytes: data.length, flags: 0 }, [data]);
          written.push(entry.written.then(() => current.applied(entry.seq)));
        }
        await Promise.all(written);
        await current.checkpoint(() => nextStamp(current), () => Promise.resolve());
      };
      await appendSome(30);
      keepFrom = current.lastSeq - 5;
      // About 1.5 partitions more: the entries from keepFrom stay, within the two partitions kept.
      await appendSome(40);
      assert.equal(current.holdsFrom(keepFrom), true);
      const read: number[] = [];
      for await (const entry of current.readRange(keepFrom, current.lastSeq)) {
        const tap = placed.get(entry.seq);
        assert.ok(tap !== undefined);
        assert.ok(entry.header.equals(tap.header), `entry ${entry.seq}: the header as placed`);
        assert.ok(entry.payload.equals(tap.payload), `entry ${entry.seq}: the payload as placed`);
        read.push(entry.seq);
      }
      assert.deepEqual(read, Array.from({ length: current.lastSeq - keepFrom + 1 }, (_, index) => keepFrom + index));
      // Far more than the retention: the partitions holding keepFrom are let go and reused.
      await appendSome(200);
      assert.equal(current.holdsFrom(keepFrom), false);
      await assert.rejects(async () => {
        for await (const entry of current.readRange(keepFrom, keepFrom + 1)) assert.fail(`entry ${entry.seq} read from a released partition`);
      }, /no longer in/);
      assert.equal(current.holdsFrom(current.lastSeq), true);
    } finally {
      current.close();
    }
  });
});
