// LocalVolume: one volume as a real write log (in a temporary directory) in front of a
// Disk (a MemoryDisk, or a subclass that misbehaves on purpose). Checked is what a client
// of the volume can notice: bytes read back, zeroes and holes, when a FUA write or a
// flush is answered relative to the log's durability, how many log syncs a burst of
// flushes costs, that overlapping writes land in the order they were sent even when the
// disk finishes them out of order, that the log makes room through consistency points,
// that a disk error fails the volume, and that replaying the log rebuilds the same bytes.
// Then the pieces LocalVolume is built from: slicePayload and applyEntry (its VolumeCore
// has its own test, volume-core.test.ts).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { describe, test } from 'node:test';
import type { Disk, DiskExtent } from '../../src/io/disk.js';
import { IoActivity } from '../../src/io/file-io.js';
import { MemoryDisk } from '../../src/io/memory-disk.js';
import { AssertionError } from '../../src/lib/assert.js';
import { Logger } from '../../src/lib/log.js';
import { alignedEntryBytes, encodeEntryHeader, decodeEntryHeader, EntryFlag, EntryType, type EntryHeader } from '../../src/protocol/log-entry.js';
import { applyEntry, slicePayload } from '../../src/storage/apply-entry.js';
import { LocalVolume, VolumeFailedError, type IntentRecord } from '../../src/storage/local-volume.js';
import { LogCorruptError, WriteLog, type LogGeometry } from '../../src/storage/write-log.js';
import { baseSeed, Prng } from './prng.js';
import { pattern, scratchDirs } from '../helpers/test-data.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 4096;
const SEED = baseSeed(0x10ca_1001);
const ZERO_CHUNK_BYTES = 3000;
const VOLUME_UUID = '9b7e2c55-1f0a-4d3b-8c6e-0a1b2c3d4e5f';

const freshDir = scratchDirs('blockmirror-volume-');


function isZero(buffer: Buffer): boolean {
  return buffer.every((byte) => byte === 0);
}

function layout(extents: DiskExtent[]): [string, number][] {
  return extents.map((extent) => [extent.hole ? 'hole' : 'data', extent.lengthBytes]);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

// ---------------------------------------------------------------------------------------
// Disks that misbehave on purpose.

/** A MemoryDisk whose file system can neither punch holes nor zero ranges. */
class NoFallocateDisk extends MemoryDisk {
  override punchHole(): Promise<boolean> {
    return Promise.resolve(false);
  }

  override zeroRange(): Promise<boolean> {
    return Promise.resolve(false);
  }

  override canZeroFast(): boolean {
    return false;
  }
}

/**
 * A disk that finishes writes in the reverse of the order they were started: the k-th
 * write waits (count - k) × stepMs before its bytes land.
 */
class ReverseOrderDisk extends MemoryDisk {
  readonly completed: number[] = [];
  private started = 0;

  constructor(
    sizeBytes: number,
    private readonly count: number,
    private readonly stepMs: number,
  ) {
    super(sizeBytes);
  }

  override async writev(buffers: readonly Buffer[], offset: number): Promise<void> {
    const index = this.started;
    this.started += 1;
    await sleep(Math.max(0, this.count - index) * this.stepMs);
    await super.writev(buffers, offset);
    this.completed.push(index);
  }
}

/** A MemoryDisk that remembers what a crash would leave: its bytes as of the last sync. */
class DurableDisk extends MemoryDisk {
  readonly durable: Buffer;

  constructor(sizeBytes: number) {
    super(sizeBytes);
    this.durable = Buffer.alloc(sizeBytes);
  }

  override async sync(): Promise<void> {
    await super.sync();
    await this.read(this.durable, 0);
  }
}

function eio(syscall: string): Error {
  return Object.assign(new Error(`EIO: i/o error, ${syscall}`), { code: 'EIO', errno: -5 });
}

/** A disk whose writes fail with EIO once `failing` is set, and its syncs once `syncFailing` is. */
class FailingDisk extends MemoryDisk {
  failing = false;
  syncFailing = false;

  override writev(buffers: readonly Buffer[], offset: number): Promise<void> {
    if (this.failing) return Promise.reject(eio('write'));
    return super.writev(buffers, offset);
  }

  override sync(): Promise<void> {
    if (this.syncFailing) return Promise.reject(eio('fdatasync'));
    return super.sync();
  }
}

// ---------------------------------------------------------------------------------------
// A volume over a real write log.

interface Setup<D extends Disk> {
  volume: LocalVolume;
  log: WriteLog;
  disk: D;
  dir: string;
  lines: string[];
  checkpointsWanted: { count: number };
  /** Checkpoints asked for by the log and not finished yet (autoCheckpoint). */
  checkpointsRunning: { count: number };
  checkpointErrors: unknown[];
}

interface VolumeChoices {
  partitions?: number;
  /** Take a checkpoint whenever the log asks for one, as the node does. */
  autoCheckpoint?: boolean;
  dir?: string;
}

async function openVolume<D extends Disk>(disk: D, choices: VolumeChoices = {}): Promise<Setup<D>> {
  const dir = choices.dir ?? freshDir();
  const lines: string[] = [];
  const checkpointsWanted = { count: 0 };
  const checkpointErrors: unknown[] = [];
  const checkpointsRunning = { count: 0 };
  let volume: LocalVolume | undefined;
  const geometry: LogGeometry = { partitionBytes: 1 * MiB, partitions: choices.partitions ?? 2 };
  const { log } = await WriteLog.open(
    {
      dir,
      geometry,
      volumeUuid: VOLUME_UUID,
      volumeId: 1,
      activity: new IoActivity(),
      inlineWriteBytesMax: 64 * KiB,
      log: new Logger({ write: (line) => lines.push(line) }, 'debug'),
      onCheckpointWanted: () => {
        checkpointsWanted.count += 1;
        if (choices.autoCheckpoint !== true) return;
        checkpointsRunning.count += 1;
        setImmediate(() => {
          const running = volume?.checkpoint() ?? Promise.resolve();
          running.catch((error: unknown) => checkpointErrors.push(error)).finally(() => (checkpointsRunning.count -= 1));
        });
      },
    },
    (header, payload) => applyEntry(disk, header, payload, ZERO_CHUNK_BYTES),
  );
  volume = new LocalVolume('vol0', disk, log, ZERO_CHUNK_BYTES, 'primary');
  return { volume, log, disk, dir, lines, checkpointsWanted, checkpointsRunning, checkpointErrors };
}

async function withVolume<D extends Disk>(
  disk: D,
  choices: VolumeChoices,
  body: (setup: Setup<D>) => Promise<void>,
): Promise<void> {
  const setup = await openVolume(disk, choices);
  try {
    await body(setup);
  } finally {
    await setup.volume.close();
  }
}

/** Two writes (to blocks 0 and 1), each replied to and followed by a flush: the volume expects a flush after the next write. */
async function learnFlushPattern(volume: LocalVolume, log: WriteLog): Promise<void> {
  for (let index = 0; index < 2; index += 1) {
    await volume.write([pattern(4096, index)], index * 4096, false);
    volume.replied();
    await volume.flush();
  }
  assert.equal(log.status().syncsAhead, 0, 'synced ahead while the pattern was being learnt');
}

async function fill(volume: LocalVolume): Promise<Buffer> {
  const data = pattern(volume.sizeBytes, 7);
  await volume.write([data], 0, false);
  return data;
}

// ---------------------------------------------------------------------------------------

describe('LocalVolume', () => {
  test('writes read back, at unaligned offsets and from several slices (seeded, against a model)', async () => {
    const random = new Prng(SEED);
    await withVolume(new MemoryDisk(256 * KiB), {}, async ({ volume, log }) => {
      assert.equal(volume.sizeBytes, 256 * KiB);
      assert.equal(volume.failed, false);
      await volume.write([Buffer.from('hel'), Buffer.from('lo')], 4095, false);
      assert.equal((await volume.read(4095, 5)).toString(), 'hello');
      assert.equal(log.lastSeq, 1, 'one write, one log entry');
      const model = Buffer.alloc(volume.sizeBytes);
      model.write('hello', 4095);
      let bytes = 5;
      for (let step = 0; step < 100; step += 1) {
        const length = random.between(1, 3 * BLOCK);
        const offset = random.below(volume.sizeBytes - length + 1);
        const data = random.bytes(length);
        const cut = random.below(length + 1);
        await volume.write([data.subarray(0, cut), data.subarray(cut)], offset, random.chance(0.2));
        data.copy(model, offset);
        bytes += length;
      }
      assert.ok((await volume.read(0, volume.sizeBytes)).equals(model), `seed ${SEED}`);
      const into = Buffer.alloc(100);
      await volume.readInto(into, 1000);
      assert.ok(into.equals(model.subarray(1000, 1100)));
      assert.equal(volume.stats.writeOps, 101);
      assert.equal(volume.stats.writeBytes, bytes);
      assert.equal(volume.stats.readOps, 3);
      assert.equal(volume.stats.readBytes, 5 + volume.sizeBytes + 100);
      assert.equal(volume.stats.errors, 0);
    });
  });

  test('a FUA write is answered only once the log is durable up to it; the image is not synced', async () => {
    await withVolume(new MemoryDisk(256 * KiB), {}, async ({ volume, log, disk }) => {
      await volume.write([pattern(1000, 1)], 0, false);
      const plain = log.status();
      assert.equal(plain.lastSeq, 1);
      assert.equal(plain.durableSeq, 0, 'a plain write is not made durable');
      assert.equal(plain.syncs, 0);
      await volume.write([pattern(1000, 2)], 8192, true);
      assert.ok(log.status().durableSeq >= 2, `durableSeq ${log.status().durableSeq} after a FUA write`);
      // Concurrent FUA writes: each is answered with the log durable at least up to it.
      const base = log.lastSeq;
      const durableWhenAnswered = await Promise.all(
        Array.from({ length: 10 }, (_, index) =>
          volume.write([pattern(512, 10 + index)], index * 4096, true).then(() => log.status().durableSeq),
        ),
      );
      durableWhenAnswered.forEach((durable, index) => assert.ok(durable >= base + index + 1, `write ${base + index + 1}: durable ${durable}`));
      assert.equal(log.status().durableSeq, log.lastSeq);
      assert.equal(disk.syncCount, 0, 'FUA waits for the log, not the image');
    });
  });

  test('flush makes every write answered so far durable in the log', async () => {
    await withVolume(new MemoryDisk(256 * KiB), {}, async ({ volume, log, disk }) => {
      for (let index = 0; index < 5; index += 1) await volume.write([pattern(3000, index)], index * 5000, false);
      await volume.writeZeroes(100_000, 5000, { noHole: false, fast: false, fua: false });
      await volume.trim(120_000, 4096, false);
      assert.ok(log.status().durableSeq < log.lastSeq);
      await volume.flush();
      const status = log.status();
      assert.equal(status.lastSeq, 7);
      assert.equal(status.durableSeq, 7);
      assert.equal(status.syncs, 1);
      assert.equal(volume.stats.flushOps, 1);
      // Nothing new: a flush costs no sync.
      await volume.flush();
      assert.equal(log.status().syncs, 1);
      assert.equal(volume.stats.flushOps, 2);
      assert.equal(disk.syncCount, 0, 'a flush does not sync the image');
    });
  });

  test('20 concurrent flushes share one or two log syncs', async () => {
    await withVolume(new MemoryDisk(256 * KiB), {}, async ({ volume, log }) => {
      await volume.write([pattern(4096, 1)], 0, false);
      const syncsBefore = log.status().syncs;
      await Promise.all(Array.from({ length: 20 }, () => volume.flush()));
      const syncs = log.status().syncs - syncsBefore;
      assert.ok(syncs >= 1 && syncs <= 2, `20 concurrent flushes took ${syncs} log syncs`);
      assert.equal(log.status().durableSeq, log.lastSeq);
      assert.equal(volume.stats.flushOps, 20);
      // Writes and flushes interleaved from many clients still share syncs.
      const before = log.status().syncs;
      await Promise.all(
        Array.from({ length: 20 }, (_, index) => volume.write([pattern(512, index)], index * 512, false).then(() => volume.flush())),
      );
      const shared = log.status().syncs - before;
      assert.ok(shared >= 1 && shared <= 4, `20 write+flush pairs took ${shared} log syncs`);
      assert.equal(log.status().durableSeq, log.lastSeq);
    });
  });

  test('a client that flushes after every write has the log sync started as each reply leaves', async () => {
    await withVolume(new MemoryDisk(256 * KiB), {}, async ({ volume, log }) => {
      const durableSoon = async (what: string): Promise<void> => {
        for (let wait = 0; log.status().durableSeq < log.lastSeq; wait += 1) {
          assert.ok(wait < 200, `${what}: the log was not made durable ahead of the flush`);
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      };
      await learnFlushPattern(volume, log);
      // The third write's sync starts once its reply has left (not before), and it
      // completes with no flush asked.
      await volume.write([pattern(4096, 2)], 2 * 4096, false);
      assert.equal(log.status().syncsAhead, 0, 'synced before the reply left');
      volume.replied();
      assert.equal(log.status().syncsAhead, 1);
      volume.replied();
      assert.equal(log.status().syncsAhead, 1, 'a second reply started a second sync');
      await durableSoon('third write');
      const syncs = log.status().syncs;
      await volume.flush();
      assert.equal(log.status().syncs, syncs, 'the flush found its writes durable already');
      // Two writes in a row break the pattern: the next write waits for its flush again.
      await volume.write([pattern(4096, 3)], 3 * 4096, false);
      volume.replied();
      await volume.write([pattern(4096, 4)], 4 * 4096, false);
      volume.replied();
      const ahead = log.status().syncsAhead;
      await volume.flush();
      await volume.write([pattern(4096, 5)], 5 * 4096, false);
      volume.replied();
      assert.equal(log.status().syncsAhead, ahead, 'no sync ahead after the pattern broke');
      // A FUA write waits for its own sync; it is never synced ahead.
      await volume.flush();
      const beforeFua = log.status().syncsAhead;
      await volume.write([pattern(4096, 6)], 6 * 4096, true);
      volume.replied();
      assert.equal(log.status().durableSeq, log.lastSeq);
      assert.equal(log.status().syncsAhead, beforeFua);
    });
  });

  test('the local part of a mirrored write starts its expected sync as it is logged, before its reply', async () => {
    await withVolume(new MemoryDisk(256 * KiB), {}, async ({ volume, log }) => {
      const intended: number[] = [];
      const intent: IntentRecord = {
        intend: (_offset, _length, seq) => {
          intended.push(seq);
          return null;
        },
      };
      await learnFlushPattern(volume, log);
      // The reply waits for the peers: the sync is already under way when the local part ends.
      const seq = await volume.writeLogged([pattern(4096, 2)], 2 * 4096, false, intent);
      assert.deepEqual(intended, [seq], 'the write-intent record was asked for the write');
      assert.equal(log.status().syncsAhead, 1);
      volume.replied();
      assert.equal(log.status().syncsAhead, 1, 'the reply started a second sync');
      await volume.flushLocal();
      assert.equal(log.status().durableSeq, log.lastSeq);
      assert.ok((await volume.read(2 * 4096, 4096)).equals(pattern(4096, 2)));
    });
  });

  test('a mirrored write reaches the image only once the write-intent record holds its range', async () => {
    await withVolume(new MemoryDisk(256 * KiB), {}, async ({ volume }) => {
      let recorded: () => void = () => undefined;
      const intent: IntentRecord = { intend: () => new Promise<void>((resolve) => (recorded = resolve)) };
      const writing = volume.writeLogged([pattern(4096, 3)], 4096, false, intent);
      for (let turn = 0; turn < 5; turn += 1) await nextTurn();
      assert.ok(isZero(await volume.read(4096, 4096)), 'the image is untouched while the record is being written');
      recorded();
      await writing;
      assert.ok((await volume.read(4096, 4096)).equals(pattern(4096, 3)));
    });
  });

  test('writeZeroes punches a hole by default, keeps the range allocated with noHole, and honours fua', async () => {
    const disk = new MemoryDisk(64 * KiB);
    await withVolume(disk, {}, async ({ volume, log }) => {
      const data = await fill(volume);
      assert.equal(await volume.writeZeroes(BLOCK - 10, 3 * BLOCK, { noHole: false, fast: false, fua: false }), 'done');
      const back = await volume.read(0, volume.sizeBytes);
      assert.ok(isZero(back.subarray(BLOCK - 10, 4 * BLOCK - 10)));
      assert.ok(back.subarray(0, BLOCK - 10).equals(data.subarray(0, BLOCK - 10)));
      assert.ok(back.subarray(4 * BLOCK - 10).equals(data.subarray(4 * BLOCK - 10)));
      assert.deepStrictEqual(layout(await volume.extents(BLOCK, 2 * BLOCK, 10)), [['hole', 2 * BLOCK]]);
      assert.equal(log.status().syncs, 0, 'no fua, no sync');

      await volume.trim(8 * BLOCK, 4 * BLOCK, false);
      assert.equal(await volume.writeZeroes(8 * BLOCK, 4 * BLOCK, { noHole: true, fast: false, fua: false }), 'done');
      assert.ok(isZero(await volume.read(8 * BLOCK, 4 * BLOCK)));
      assert.deepStrictEqual(layout(await volume.extents(8 * BLOCK, 4 * BLOCK, 10)), [['data', 4 * BLOCK]]);

      assert.equal(await volume.writeZeroes(0, BLOCK, { noHole: false, fast: true, fua: true }), 'done');
      assert.equal(log.status().durableSeq, log.lastSeq, 'fua zeroes are durable in the log when answered');
      await volume.write([pattern(100, 3)], 13 * BLOCK, false);
      assert.equal(await volume.writeZeroes(14 * BLOCK, BLOCK, { noHole: true, fast: false, fua: true }), 'done');
      assert.equal(log.status().durableSeq, log.lastSeq);
      assert.equal(disk.syncCount, 0);
      assert.equal(volume.stats.zeroOps, 4);
    });
  });

  test('a FAST_ZERO request on a disk that cannot zero quickly is answered "slow" and changes nothing', async () => {
    const disk = new NoFallocateDisk(64 * KiB);
    await withVolume(disk, {}, async ({ volume }) => {
      const data = await fill(volume);
      for (const noHole of [false, true]) {
        assert.equal(await volume.writeZeroes(100, 10_000, { noHole, fast: true, fua: false }), 'slow', `noHole ${noHole}`);
        assert.ok((await volume.read(0, volume.sizeBytes)).equals(data), `noHole ${noHole}: a refused fast zero leaves the data`);
      }
    });
  });

  test('on a disk that cannot zero, zeroes are written; later FAST_ZERO requests are answered "slow"', async () => {
    const disk = new NoFallocateDisk(64 * KiB);
    await withVolume(disk, {}, async ({ volume, log }) => {
      const data = await fill(volume);
      assert.equal(await volume.writeZeroes(100, 10_000, { noHole: false, fast: false, fua: false }), 'done');
      assert.ok(isZero(await volume.read(100, 10_000)));
      assert.ok((await volume.read(10_100, 1000)).equals(data.subarray(10_100, 11_100)));
      const seqBefore = log.lastSeq;
      assert.equal(await volume.writeZeroes(40_000, 5000, { noHole: true, fast: true, fua: false }), 'slow');
      assert.ok((await volume.read(40_000, 5000)).equals(data.subarray(40_000, 45_000)));
      assert.equal(log.lastSeq, seqBefore, 'a refused request is not logged');
      assert.equal(await volume.writeZeroes(30_000, 7_001, { noHole: true, fast: false, fua: true }), 'done');
      assert.ok(isZero(await volume.read(30_000, 7_001)));
      assert.equal((await volume.read(29_999, 1))[0], data[29_999]);
      assert.equal((await volume.read(37_001, 1))[0], data[37_001]);
      assert.equal(log.status().durableSeq, log.lastSeq);
    });
  });

  test('trim zeroes the range (whole blocks become holes); on a disk that cannot, the data stays', async () => {
    await withVolume(new MemoryDisk(64 * KiB), {}, async ({ volume, log }) => {
      await fill(volume);
      await volume.trim(2 * BLOCK, 4 * BLOCK, false);
      assert.ok(isZero(await volume.read(2 * BLOCK, 4 * BLOCK)));
      assert.deepStrictEqual(layout(await volume.extents(2 * BLOCK, 4 * BLOCK, 10)), [['hole', 4 * BLOCK]]);
      assert.equal(log.status().syncs, 0);
      await volume.trim(0, BLOCK, true);
      assert.equal(log.status().durableSeq, log.lastSeq, 'a fua trim is durable in the log when answered');
      assert.equal(volume.stats.trimOps, 2);
    });
    await withVolume(new NoFallocateDisk(64 * KiB), {}, async ({ volume }) => {
      const data = await fill(volume);
      await volume.trim(0, 4 * BLOCK, false);
      assert.ok((await volume.read(0, volume.sizeBytes)).equals(data), 'TRIM is only a hint');
    });
  });

  test('a write larger than one log entry becomes several entries and reads back whole', async () => {
    const random = new Prng(SEED + 1);
    await withVolume(new MemoryDisk(4 * MiB), { partitions: 3 }, async ({ volume, log }) => {
      const pieceMax = log.entryPayloadBytesMax;
      assert.equal(pieceMax, 520_192, 'with 1 MiB partitions');
      const total = 2 * pieceMax + 12_345;
      const data = random.bytes(total);
      // Slices that do not line up with the entries the write is cut into.
      const slices = [data.subarray(0, 1000), data.subarray(1000, pieceMax + 7), data.subarray(pieceMax + 7)];
      await volume.write(slices, 777, true);
      assert.equal(log.lastSeq, 3, 'three log entries');
      assert.ok((await volume.read(777, total)).equals(data), `seed ${SEED + 1}`);
      assert.ok(isZero(await volume.read(0, 777)));
      assert.equal(volume.stats.writeOps, 1);
      assert.equal(volume.stats.writeBytes, total);
      assert.equal(log.status().durableSeq, log.lastSeq);
    });
    // Exactly a multiple of the entry size.
    await withVolume(new MemoryDisk(2 * MiB), { partitions: 3 }, async ({ volume, log }) => {
      const data = random.bytes(2 * log.entryPayloadBytesMax);
      await volume.write([data], 0, false);
      assert.equal(log.lastSeq, 2, 'two entries exactly');
      assert.ok((await volume.read(0, data.length)).equals(data));
    });
  });

  test('overlapping writes in flight together end with the last one’s bytes, however the disk orders them', async () => {
    const size = 64 * KiB;
    // Non-overlapping writes run side by side, and this disk really finishes them backwards.
    const control = new ReverseOrderDisk(size, 2, 15);
    await withVolume(control, {}, async ({ volume }) => {
      await Promise.all([volume.write([pattern(100, 1)], 0, false), volume.write([pattern(100, 2)], 1000, false)]);
      assert.deepStrictEqual(control.completed, [1, 0], 'the second write finished first');
    });

    const disk = new ReverseOrderDisk(size, 3, 15);
    await withVolume(disk, {}, async ({ volume }) => {
      const writes: [number, Buffer][] = [
        [0, Buffer.alloc(12_000, 0xa1)],
        [4000, Buffer.alloc(12_000, 0xb2)],
        [2000, Buffer.alloc(4000, 0xc3)],
      ];
      const model = Buffer.alloc(size);
      for (const [offset, data] of writes) data.copy(model, offset);
      await Promise.all(writes.map(([offset, data]) => volume.write([data], offset, false)));
      assert.deepStrictEqual(disk.completed, [0, 1, 2], 'overlapping writes reach the disk in the order they were sent');
      assert.ok((await volume.read(0, size)).equals(model));
      assert.equal((await volume.read(2000, 1))[0], 0xc3);
      assert.equal((await volume.read(6000, 1))[0], 0xb2);
      assert.equal((await volume.read(15_999, 1))[0], 0xb2);
      assert.equal((await volume.read(1999, 1))[0], 0xa1);
    });
  });

  test('a checkpoint makes the image durable, advances cpSeq and releases log space', async () => {
    const disk = new MemoryDisk(4 * MiB);
    await withVolume(disk, {}, async ({ volume, log, checkpointsWanted }) => {
      // Two 500 KiB entries fill most of partition 0; the third starts partition 1.
      await volume.write([pattern(500 * KiB, 1)], 0, false);
      await volume.write([pattern(500 * KiB, 2)], MiB, false);
      assert.equal(checkpointsWanted.count, 0);
      await volume.write([pattern(100 * KiB, 3)], 2 * MiB, false);
      assert.ok(checkpointsWanted.count >= 1, 'starting a new partition asks for a checkpoint');
      const before = log.status();
      assert.ok(before.bytesUsed > 1 * MiB, `bytesUsed ${before.bytesUsed}`);
      assert.equal(before.cpSeq, 0);
      assert.equal(disk.syncCount, 0);
      await volume.checkpoint();
      const afterCp = log.status();
      assert.equal(disk.syncCount, 1, 'the image was synced');
      assert.ok(afterCp.cpSeq >= 3, `cpSeq ${afterCp.cpSeq}`);
      assert.equal(afterCp.checkpoints, 1);
      assert.ok(afterCp.bytesUsed < 200 * KiB, `bytesUsed ${afterCp.bytesUsed} after the checkpoint`);
      assert.ok((await volume.read(MiB, 500 * KiB)).equals(pattern(500 * KiB, 2)));
      // With nothing new, another checkpoint changes nothing.
      await volume.checkpoint();
      assert.equal(log.status().cpSeq, afterCp.cpSeq);
    });
  });

  test('a write needing more log space than all partitions hold completes as checkpoints free it, and survives a crash', async () => {
    const random = new Prng(SEED + 2);
    const size = 4 * MiB;
    const disk = new DurableDisk(size);
    const dir = freshDir();
    const crashDir = `${dir}-crash`;
    const data = random.bytes(3 * MiB);
    const small = pattern(1000, 5);
    let durableAtCrash = Buffer.alloc(0);
    let checkpointsTaken = '';
    await withVolume(disk, { dir, partitions: 2, autoCheckpoint: true }, async ({ volume, log, checkpointErrors, checkpointsRunning }) => {
      const entries = Math.ceil(data.length / log.entryPayloadBytesMax);
      const { partitionBytes, partitions } = log.status();
      assert.ok(
        entries * alignedEntryBytes(log.entryPayloadBytesMax) > partitions * partitionBytes,
        `${entries} entries fit in the log without a checkpoint`,
      );
      await volume.write([data], 100 * KiB, true);
      await volume.write([small], 0, true);
      // The node crashes now: the image as of its last sync, the log files as they are.
      durableAtCrash = Buffer.from(disk.durable);
      fs.cpSync(dir, crashDir, { recursive: true });
      assert.ok((await volume.read(100 * KiB, data.length)).equals(data), `seed ${SEED + 2}`);
      const status = log.status();
      assert.equal(status.durableSeq, status.lastSeq);
      assert.ok(status.stalls >= 1, `the write waited for log space ${status.stalls} times`);
      assert.ok(status.stallMs >= 0 && status.lastCheckpointMs >= 0);
      checkpointsTaken = `${status.checkpoints} checkpoints for ${entries} entries in a log that holds ${partitions * 2}`;
      while (checkpointsRunning.count > 0) await nextTurn();
      assert.deepStrictEqual(checkpointErrors, []);
    });
    // Restart from the crash: everything FUA acknowledged must be there.
    const restarted = new MemoryDisk(size);
    await restarted.write(durableAtCrash, 0);
    const setup = await openVolume(restarted, { dir: crashDir, partitions: 2 });
    try {
      const expected = Buffer.alloc(size);
      data.copy(expected, 100 * KiB);
      small.copy(expected, 0);
      const actual = await setup.volume.read(0, size);
      const firstDifference = actual.findIndex((byte, index) => byte !== expected[index]);
      assert.equal(firstDifference, -1, `after the crash the image differs from byte ${firstDifference} (${checkpointsTaken})`);
    } finally {
      await setup.volume.close();
    }
    assert.doesNotMatch(checkpointsTaken, /^0 checkpoints/);
  });

  test('a disk write that fails with EIO fails the request and then the volume', async () => {
    const disk = new FailingDisk(256 * KiB);
    await withVolume(disk, {}, async ({ volume }) => {
      await volume.write([pattern(1000, 1)], 0, false);
      disk.failing = true;
      await assert.rejects(volume.write([pattern(1000, 2)], 4096, false), (error: unknown) => {
        assert.equal((error as { code?: unknown }).code, 'EIO');
        return true;
      });
      assert.equal(volume.failed, true);
      assert.ok(volume.stats.errors >= 1);
      disk.failing = false;
      // From now on every request is refused rather than answered from a volume in doubt.
      const refused: [string, () => Promise<unknown>][] = [
        ['read', () => volume.read(0, 100)],
        ['write', () => volume.write([Buffer.alloc(10)], 0, false)],
        ['flush', () => volume.flush()],
        ['writeZeroes', () => volume.writeZeroes(0, 4096, { noHole: false, fast: false, fua: false })],
        ['trim', () => volume.trim(0, 4096, false)],
        ['extents', () => volume.extents(0, 4096, 10)],
        ['prefetch', () => volume.prefetch(0, 4096, 4096)],
      ];
      for (const [what, attempt] of refused) {
        await assert.rejects(
          async () => attempt(),
          (error: unknown) => {
            assert.ok(error instanceof VolumeFailedError, `${what}: ${String(error)}`);
            assert.equal(error.code, 'ERR_VOLUME_IO');
            assert.match(error.message, /vol0/);
            assert.match(error.message, /EIO/);
            return true;
          },
          what,
        );
      }
    });
  });

  test('a log fdatasync that fails fails the volume, and no later flush reports success', async () => {
    await withVolume(new MemoryDisk(64 * KiB), {}, async ({ volume, log }) => {
      await volume.write([pattern(4096, 1)], 0, false);
      await volume.flush();
      const durable = log.status().durableSeq;
      const syncs = log.status().syncs;
      await volume.write([pattern(4096, 2)], 4096, false);
      log.failNextSync(os.constants.errno.EIO);
      await assert.rejects(volume.flush(), /EIO/);
      assert.equal(volume.failed, true);
      assert.equal(log.status().syncs, syncs + 1);
      // The kernel may have dropped the pages it could not write: a sync that now
      // succeeds proves nothing, so none is tried and the error stays.
      await assert.rejects(volume.flush(), VolumeFailedError);
      await assert.rejects(log.syncTo(log.lastSeq), /EIO/);
      assert.equal(log.status().durableSeq, durable, 'durability claimed after the failed sync');
      assert.equal(log.status().syncs, syncs + 1, 'a sync was tried again after the failure');
      // What was durable before the failure still is.
      await log.syncTo(durable);
    });
  });

  test('a volume-file fdatasync that fails in a consistency point fails the volume, and no CP is recorded', async () => {
    const disk = new FailingDisk(64 * KiB);
    await withVolume(disk, {}, async ({ volume, log }) => {
      await volume.write([pattern(4096, 1)], 0, false);
      const cpSeq = log.status().cpSeq;
      disk.syncFailing = true;
      await assert.rejects(volume.checkpoint(), /EIO/);
      assert.equal(volume.failed, true);
      assert.equal(log.status().cpSeq, cpSeq);
      disk.syncFailing = false;
      await assert.rejects(volume.write([pattern(4096, 2)], 4096, false), VolumeFailedError);
    });
  });

  test('prefetch reads without changing anything', async () => {
    await withVolume(new MemoryDisk(64 * KiB), {}, async ({ volume, log }) => {
      const data = await fill(volume);
      const seq = log.lastSeq;
      await volume.prefetch(1000, 20_000, 8192);
      await volume.prefetch(0, 0, 8192);
      assert.ok((await volume.read(0, volume.sizeBytes)).equals(data));
      assert.equal(log.lastSeq, seq);
    });
  });

  test('replaying the log onto an empty image rebuilds the same bytes', async () => {
    const random = new Prng(SEED + 3);
    const size = 512 * KiB;
    const original = new MemoryDisk(size);
    const dir = freshDir();
    await withVolume(original, { dir, partitions: 3 }, async ({ volume }) => {
      for (let step = 0; step < 60; step += 1) {
        const length = random.between(1, 6 * BLOCK);
        const offset = random.below(size - length + 1);
        const what = random.below(4);
        if (what <= 1) await volume.write([random.bytes(length)], offset, false);
        else if (what === 2) await volume.writeZeroes(offset, length, { noHole: random.chance(0.5), fast: false, fua: false });
        else await volume.trim(offset, length, false);
      }
      await volume.flush();
    });
    const rebuilt = new MemoryDisk(size);
    const setup = await openVolume(rebuilt, { dir, partitions: 3 });
    await setup.volume.close();
    const expected = Buffer.alloc(size);
    const actual = Buffer.alloc(size);
    await original.read(expected, 0);
    await rebuilt.read(actual, 0);
    assert.ok(actual.equals(expected), `seed ${SEED + 3}`);
  });
});

// ---------------------------------------------------------------------------------------

describe('slicePayload', () => {
  test('cuts across slice boundaries and returns views of the same bytes', () => {
    const payload = [Buffer.from('abc'), Buffer.from(''), Buffer.from('defgh'), Buffer.from('ij')];
    const cases: [number, number, string[]][] = [
      [0, 10, ['abc', 'defgh', 'ij']],
      [0, 3, ['abc']],
      [3, 5, ['defgh']],
      [2, 2, ['c', 'd']],
      [4, 6, ['efgh', 'ij']],
      [9, 1, ['j']],
      [5, 0, []],
      [10, 0, []],
    ];
    for (const [start, length, expected] of cases) {
      const slices = slicePayload(payload, start, length);
      assert.deepStrictEqual(slices.map((slice) => slice.toString()), expected, `start ${start} length ${length}`);
    }
    const [view] = slicePayload(payload, 4, 1);
    assert.ok(view !== undefined);
    view[0] = 'E'.charCodeAt(0);
    assert.equal(payload[2]?.toString(), 'dEfgh', 'a view, not a copy');
  });

  test('a payload shorter than the range asked is a bug', () => {
    assert.throws(() => slicePayload([Buffer.alloc(4)], 2, 3), AssertionError);
    assert.throws(() => slicePayload([], 0, 1), AssertionError);
  });

  test('matches Buffer.concat().subarray() on random slicings (seeded)', () => {
    const random = new Prng(SEED + 4);
    for (let round = 0; round < 500; round += 1) {
      const payload = Array.from({ length: random.between(1, 6) }, () => random.bytes(random.between(0, 50)));
      const whole = Buffer.concat(payload);
      const start = random.below(whole.length + 1);
      const length = random.below(whole.length - start + 1);
      const slices = slicePayload(payload, start, length);
      assert.ok(Buffer.concat(slices).equals(whole.subarray(start, start + length)), `seed ${SEED + 4} round ${round}`);
      assert.ok(slices.every((slice) => slice.length > 0), 'no empty slices');
    }
  });
});

describe('applyEntry', () => {
  function header(fields: Partial<EntryHeader> & Pick<EntryHeader, 'type' | 'offset' | 'lengthBytes'>, payload: Buffer[] = []): EntryHeader {
    const encoded = encodeEntryHeader(
      { flags: 0, logId: 1, volumeId: 1, seq: 5, durableSeq: 4, generation: 0, epoch: 0, ...fields },
      payload,
    );
    const decoded = decodeEntryHeader(encoded);
    assert.ok(typeof decoded !== 'string');
    return decoded;
  }

  test('replays writes, zeroes with and without NO_HOLE, trims, and ignores consistency points', async () => {
    const disk = new MemoryDisk(64 * KiB);
    const data = pattern(64 * KiB, 3);
    await applyEntry(disk, header({ type: EntryType.WRITE, offset: 0, lengthBytes: data.length }, [data]), data, ZERO_CHUNK_BYTES);
    await applyEntry(disk, header({ type: EntryType.ZEROES, offset: 0, lengthBytes: 2 * BLOCK }), Buffer.alloc(0), ZERO_CHUNK_BYTES);
    await applyEntry(
      disk,
      header({ type: EntryType.ZEROES, offset: 4 * BLOCK, lengthBytes: 2 * BLOCK, flags: EntryFlag.NO_HOLE }),
      Buffer.alloc(0),
      ZERO_CHUNK_BYTES,
    );
    await applyEntry(disk, header({ type: EntryType.TRIM, offset: 8 * BLOCK, lengthBytes: BLOCK }), Buffer.alloc(0), ZERO_CHUNK_BYTES);
    await applyEntry(disk, header({ type: EntryType.CONSISTENCY_POINT, offset: 4, lengthBytes: 0 }), Buffer.alloc(0), ZERO_CHUNK_BYTES);
    const back = Buffer.alloc(64 * KiB);
    await disk.read(back, 0);
    const expected = Buffer.from(data);
    expected.fill(0, 0, 2 * BLOCK);
    expected.fill(0, 4 * BLOCK, 6 * BLOCK);
    expected.fill(0, 8 * BLOCK, 9 * BLOCK);
    assert.ok(back.equals(expected));
    assert.deepStrictEqual(layout(await disk.extents(0, 10 * BLOCK, 10)), [
      ['hole', 2 * BLOCK],
      ['data', 6 * BLOCK],
      ['hole', BLOCK],
      ['data', BLOCK],
    ]);
  });

  test('zeroes on a disk that cannot zero are written as zeroes', async () => {
    const disk = new NoFallocateDisk(64 * KiB);
    await disk.write(Buffer.alloc(64 * KiB, 0xff), 0);
    await applyEntry(disk, header({ type: EntryType.ZEROES, offset: 1000, lengthBytes: 10_000 }), Buffer.alloc(0), ZERO_CHUNK_BYTES);
    const back = Buffer.alloc(64 * KiB);
    await disk.read(back, 0);
    assert.ok(isZero(back.subarray(1000, 11_000)));
    assert.equal(back[999], 0xff);
    assert.equal(back[11_000], 0xff);
  });

  test('an entry reaching past the end of the volume is log corruption', async () => {
    const disk = new MemoryDisk(64 * KiB);
    await assert.rejects(
      applyEntry(disk, header({ type: EntryType.TRIM, offset: 60 * KiB, lengthBytes: 8 * KiB }), Buffer.alloc(0), ZERO_CHUNK_BYTES),
      (error: unknown) => error instanceof LogCorruptError && error.code === 'ERR_LOG_CORRUPT' && /entry 5/.test(error.message),
    );
  });
});
