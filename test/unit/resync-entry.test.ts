// LocalVolume.logCurrent: the entry that carries a region's current contents to a peer
// being resynced. What a peer relies on is its place in the sequence: its bytes must be
// exactly what every earlier entry leaves in the range, and no later change to the
// range may come before it. Checked against the log itself (captured through the
// mirror's tap), with writes, zeroes and trims racing the resync on a disk that
// finishes operations after random delays, for many seeds.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { IoActivity } from '../../src/io/file-io.js';
import { MemoryDisk } from '../../src/io/memory-disk.js';
import { Logger } from '../../src/lib/log.js';
import { decodeEntryHeader, EntryFlag, EntryType, type EntryHeader } from '../../src/protocol/log-entry.js';
import { applyEntry } from '../../src/storage/apply-entry.js';
import { LocalVolume } from '../../src/storage/local-volume.js';
import { WriteLog } from '../../src/storage/write-log.js';
import { baseSeed, Prng } from './prng.js';

const KiB = 1024;
const VOLUME_BYTES = 256 * KiB;
const REGION_BYTES = 64 * KiB;
const SEED = baseSeed(0x7e5c);

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'blockmirror-resync-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let dirs = 0;

/** A memory disk whose reads and writes finish after a random delay (up to ~2 ms). */
class SlowDisk extends MemoryDisk {
  constructor(
    sizeBytes: number,
    private readonly prng: Prng,
  ) {
    super(sizeBytes);
  }

  private later<T>(operation: () => Promise<T>): Promise<T> {
    const delayMs = this.prng.below(3);
    return new Promise((resolve, reject) => setTimeout(() => operation().then(resolve, reject), delayMs));
  }

  override read(buffer: Buffer, offset: number): Promise<void> {
    return this.later(() => super.read(buffer, offset));
  }

  override write(data: Buffer, offset: number): Promise<void> {
    return this.later(() => super.write(data, offset));
  }

  override writev(data: readonly Buffer[], offset: number): Promise<void> {
    return this.later(() => super.writev(data, offset));
  }
}

interface Logged {
  header: EntryHeader;
  payload: Buffer;
}

async function open(disk: MemoryDisk): Promise<{ volume: LocalVolume; entries: Map<number, Logged> }> {
  dirs += 1;
  const entries = new Map<number, Logged>();
  const { log } = await WriteLog.open(
    {
      dir: path.join(root, `log-${dirs}`),
      geometry: { partitionBytes: 4 * 1024 * KiB, partitions: 4 },
      volumeUuid: '0f0e0d0c-0b0a-4908-8706-050403020100',
      volumeId: 7,
      activity: new IoActivity(),
      inlineWriteBytesMax: 64 * KiB,
      log: new Logger({ write: () => undefined }, 'error'),
      onCheckpointWanted: () => undefined,
    },
    () => Promise.resolve(),
  );
  log.tap((seq, header, payload) => {
    const decoded = decodeEntryHeader(header);
    assert.ok(typeof decoded !== 'string');
    entries.set(seq, { header: decoded, payload: Buffer.concat(payload) });
  });
  return { volume: new LocalVolume('v', disk, log, 16 * KiB, 'primary'), entries };
}

/** The volume as replaying entries 1..throughSeq of the log onto zeroes gives it. */
async function replay(entries: Map<number, Logged>, throughSeq: number): Promise<Buffer> {
  const disk = new MemoryDisk(VOLUME_BYTES);
  for (let seq = 1; seq <= throughSeq; seq += 1) {
    const entry = entries.get(seq);
    assert.ok(entry !== undefined, `entry ${seq} was never placed`);
    await applyEntry(disk, entry.header, entry.payload, 16 * KiB);
  }
  const image = Buffer.alloc(VOLUME_BYTES);
  await disk.read(image, 0);
  return image;
}

describe('LocalVolume.logCurrent (the resync entry)', () => {
  test('logs a region\'s current bytes as a RESYNC write and leaves the volume as it was', async () => {
    const { volume, entries } = await open(new MemoryDisk(VOLUME_BYTES));
    try {
      await volume.write([Buffer.alloc(8 * KiB, 0x5a)], 60 * KiB, false);
      const before = await volume.read(0, VOLUME_BYTES);
      const { seq, written } = await volume.logCurrent(REGION_BYTES, REGION_BYTES);
      await written;
      const entry = entries.get(seq);
      assert.equal(entry?.header.type, EntryType.WRITE);
      assert.equal(entry?.header.flags, EntryFlag.RESYNC);
      assert.equal(entry?.header.offset, REGION_BYTES);
      assert.deepEqual(entry?.payload, before.subarray(REGION_BYTES, 2 * REGION_BYTES));
      assert.deepEqual(await volume.read(0, VOLUME_BYTES), before);
      assert.equal(volume.stats.writeOps, 1, 'no client write counted');
      await assert.rejects(volume.logCurrent(VOLUME_BYTES - KiB, 2 * KiB), /outside the volume/);
    } finally {
      await volume.close();
    }
  });

  test('racing writes, zeroes and trims: the entry holds exactly what the entries before it leave, and replay rebuilds the volume', async () => {
    for (let round = 0; round < 40; round += 1) {
      const prng = new Prng(SEED + round);
      const { volume, entries } = await open(new SlowDisk(VOLUME_BYTES, prng));
      try {
        const pending: Promise<unknown>[] = [];
        const resyncs: Promise<number>[] = [];
        for (let op = 0; op < 60; op += 1) {
          const offset = prng.below(VOLUME_BYTES / KiB - 16) * KiB;
          const length = (1 + prng.below(16)) * KiB;
          const roll = prng.below(10);
          if (roll < 6) pending.push(volume.write([Buffer.alloc(length, 1 + ((round * 60 + op) % 250))], offset, prng.below(4) === 0));
          else if (roll < 7) pending.push(volume.writeZeroes(offset, length, { noHole: prng.below(2) === 0, fast: false, fua: false }));
          else if (roll < 8) pending.push(volume.trim(offset, length, false));
          else {
            resyncs.push(
              volume.logCurrent(prng.below(VOLUME_BYTES / REGION_BYTES) * REGION_BYTES, REGION_BYTES).then(async ({ seq, written }) => {
                await written;
                return seq;
              }),
            );
          }
          if (prng.below(3) === 0) await new Promise((resolve) => setTimeout(resolve, prng.below(2)));
        }
        await Promise.all(pending);
        const seqs = await Promise.all(resyncs);
        for (const seq of seqs) {
          const entry = entries.get(seq);
          assert.ok(entry !== undefined);
          const before = await replay(entries, seq - 1);
          const { offset, lengthBytes } = entry.header;
          assert.deepEqual(entry.payload, before.subarray(offset, offset + lengthBytes), `round ${round}: resync entry ${seq} differs from entries 1..${seq - 1}`);
        }
        const final = await replay(entries, Math.max(...entries.keys()));
        assert.deepEqual(await volume.read(0, VOLUME_BYTES), final, `round ${round}: replaying the log does not give the volume`);
      } finally {
        await volume.close();
      }
    }
  });
});
