// One compliance suite for the Disk port, run against both twins: MemoryDisk and
// FileDisk over a sparse temporary file. What a user of the port can see is checked —
// bytes read back, zeroes where nothing was written, holes and data in the allocation
// map, assertions on out-of-range access — never how a twin does it.
//
// Then the volume files that prepareVolumeFiles creates and checks at start-up.
// LocalVolume (a write log over a Disk) has its own suite in local-volume.test.ts.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import type { Disk, DiskExtent } from '../../src/io/disk.js';
import { FileDisk, type FileDiskOptions } from '../../src/io/file-disk.js';
import { IoActivity } from '../../src/io/file-io.js';
import { MemoryDisk } from '../../src/io/memory-disk.js';
import { AssertionError } from '../../src/lib/assert.js';
import { VolumeMismatchError } from '../../src/lib/errors.js';
import { prepareVolumeFiles, volumePaths } from '../../src/storage/volume-files.js';
import { baseSeed, Prng } from './prng.js';
import { pattern } from '../helpers/test-data.js';
import { DurableFiles } from '../../src/storage/durable-files.js';

const files = new DurableFiles();

const KiB = 1024;
const BLOCK = 4096;
const SEED = baseSeed(0xd15c_0001);


async function readBack(disk: Disk, offset: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length, 0xcc);
  await disk.read(buffer, offset);
  return buffer;
}

function isZero(buffer: Buffer): boolean {
  return buffer.every((byte) => byte === 0);
}

/** The property every extents() answer must have, whatever the layout. */
function checkExtentsShape(extents: DiskExtent[], lengthBytes: number, extentsMax: number, what: string): number {
  assert.ok(extents.length >= 1, `${what}: no extent`);
  assert.ok(extents.length <= extentsMax, `${what}: ${extents.length} extents, at most ${extentsMax} asked`);
  let total = 0;
  for (const extent of extents) {
    assert.ok(Number.isSafeInteger(extent.lengthBytes) && extent.lengthBytes > 0, `${what}: extent of ${extent.lengthBytes}`);
    total += extent.lengthBytes;
  }
  assert.ok(total >= 1 && total <= lengthBytes, `${what}: covers ${total} of ${lengthBytes} bytes`);
  return total;
}

/** [hole, length] pairs, for short readable comparisons. */
function layout(extents: DiskExtent[]): [string, number][] {
  return extents.map((extent) => [extent.hole ? 'hole' : 'data', extent.lengthBytes]);
}

// ---------------------------------------------------------------------------------------
// The twins.

interface DiskFactory {
  name: string;
  make(sizeBytes: number): Disk;
}

const temporaryDir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockmirror-disk-'));
after(() => fs.rmSync(temporaryDir, { recursive: true, force: true }));

let fileCount = 0;
function sparseFile(sizeBytes: number): string {
  fileCount += 1;
  const file = path.join(temporaryDir, `disk-${fileCount}.img`);
  const fd = fs.openSync(file, 'w+', 0o600);
  try {
    fs.ftruncateSync(fd, sizeBytes);
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

/** Writes above 4 KiB go out in pieces aligned to 8 KiB (the node uses 64 KiB), inline below. */
const piecewise: FileDiskOptions = { inlineReadBytesMax: 128 * KiB, inlineWriteBytesMax: 4 * KiB, writePieceBytes: 8 * KiB, activity: new IoActivity() };

const factories: DiskFactory[] = [
  { name: 'MemoryDisk', make: (sizeBytes) => new MemoryDisk(sizeBytes) },
  { name: 'FileDisk', make: (sizeBytes) => FileDisk.open(sparseFile(sizeBytes), sizeBytes) },
  { name: 'FileDisk writing in pieces', make: (sizeBytes) => FileDisk.open(sparseFile(sizeBytes), sizeBytes, piecewise) },
];

async function withDisk(factory: DiskFactory, sizeBytes: number, body: (disk: Disk) => Promise<void>): Promise<void> {
  const disk = factory.make(sizeBytes);
  try {
    await body(disk);
  } finally {
    await disk.close();
  }
}

/** What each block of the disk must be reported as; 'unknown' where the contract is checked elsewhere. */
type BlockState = 'data' | 'hole' | 'unknown';

function diskComplianceSuite(factory: DiskFactory): void {
  describe(`Disk compliance: ${factory.name}`, () => {
    test('never-written ranges read as zeroes, and a fresh disk is one hole', async () => {
      await withDisk(factory, 1024 * KiB, async (disk) => {
        assert.equal(disk.sizeBytes, 1024 * KiB);
        assert.ok(isZero(await readBack(disk, 0, disk.sizeBytes)));
        assert.ok(isZero(await readBack(disk, 12_345, 7)));
        assert.ok(isZero(await readBack(disk, disk.sizeBytes - 1, 1)));
        assert.deepStrictEqual(layout(await disk.extents(0, disk.sizeBytes, 16)), [['hole', disk.sizeBytes]]);
        assert.deepStrictEqual(layout(await disk.extents(777, 5000, 16)), [['hole', 5000]]);
      });
    });

    test('writes read back at unaligned offsets (seeded, checked against a model)', async () => {
      const random = new Prng(SEED);
      const size = 256 * KiB;
      await withDisk(factory, size, async (disk) => {
        const model = Buffer.alloc(size);
        for (let step = 0; step < 200; step += 1) {
          const length = random.between(1, 3 * BLOCK);
          const offset = random.below(size - length + 1);
          const data = random.bytes(length);
          await disk.write(data, offset);
          data.copy(model, offset);
          const readOffset = random.below(size);
          const readLength = random.between(1, Math.min(5 * BLOCK, size - readOffset));
          assert.deepStrictEqual(
            await readBack(disk, readOffset, readLength),
            model.subarray(readOffset, readOffset + readLength),
            `seed ${SEED} step ${step}: read ${readLength} at ${readOffset}`,
          );
        }
        assert.ok((await readBack(disk, 0, size)).equals(model), `seed ${SEED}: whole disk`);
        // The buffer handed to write may be reused at once.
        const reused = Buffer.from('first');
        await disk.write(reused, 100);
        reused.write('XXXXX');
        assert.equal((await readBack(disk, 100, 5)).toString(), 'first');
      });
    });

    test('the first and last bytes of a disk whose size is not a block multiple', async () => {
      const size = 64 * KiB + 1000;
      await withDisk(factory, size, async (disk) => {
        await disk.write(Buffer.from([0x11]), 0);
        await disk.write(Buffer.from([0x22, 0x33]), size - 2);
        assert.deepStrictEqual([...(await readBack(disk, 0, 2))], [0x11, 0]);
        assert.deepStrictEqual([...(await readBack(disk, size - 3, 3))], [0, 0x22, 0x33]);
        const extents = await disk.extents(0, size, 100);
        assert.equal(checkExtentsShape(extents, size, 100, 'whole disk'), size);
        assert.equal(extents[0]?.hole, false);
        assert.equal(extents[extents.length - 1]?.hole, false);
        assert.deepStrictEqual(layout(await disk.extents(size - 1, 1, 1)), [['data', 1]]);
      });
    });

    test('punchHole zeroes the range; whole 4 KiB blocks become holes', async () => {
      await withDisk(factory, 256 * KiB, async (disk) => {
        const data = pattern(16 * BLOCK, 1);
        await disk.write(data, 0);
        assert.deepStrictEqual(layout(await disk.extents(0, 16 * BLOCK, 10)), [['data', 16 * BLOCK]]);
        const start = BLOCK + 100;
        const end = 5 * BLOCK + 50;
        assert.equal(await disk.punchHole(start, end - start), true);
        const back = await readBack(disk, 0, 16 * BLOCK);
        assert.ok(isZero(back.subarray(start, end)), 'punched range reads zero');
        assert.ok(back.subarray(0, start).equals(data.subarray(0, start)), 'bytes before are kept');
        assert.ok(back.subarray(end).equals(data.subarray(end)), 'bytes after are kept');
        // Blocks 2..4 are wholly inside; 1 and 5 only partly.
        assert.deepStrictEqual(layout(await disk.extents(2 * BLOCK, 3 * BLOCK, 10)), [['hole', 3 * BLOCK]]);
        assert.deepStrictEqual(layout(await disk.extents(0, 16 * BLOCK, 10)), [
          ['data', 2 * BLOCK],
          ['hole', 3 * BLOCK],
          ['data', 11 * BLOCK],
        ]);
        // Punching a hole that is already one, and a zero-length range, are fine.
        assert.equal(await disk.punchHole(100 * KiB, 8 * BLOCK), true);
        assert.ok(isZero(await readBack(disk, 100 * KiB, 8 * BLOCK)));
      });
    });

    test('zeroRange zeroes the range; untouched data stays reported as data', async () => {
      await withDisk(factory, 256 * KiB, async (disk) => {
        const data = pattern(8 * BLOCK, 2);
        await disk.write(data, 0);
        const overData = await disk.zeroRange(BLOCK, 2 * BLOCK);
        const overHole = await disk.zeroRange(32 * BLOCK, 4 * BLOCK);
        assert.equal(overData, true, 'zeroRange supported');
        assert.equal(overHole, true, 'zeroRange supported');
        // A zeroed range may be reported as data or hole (ext4 keeps it as an unwritten
        // extent, see DiskExtent.hole); the blocks around it that hold data must stay data,
        // and the extents must cover exactly what was asked.
        const allocation = async (when: string): Promise<void> => {
          assert.deepStrictEqual(layout(await disk.extents(0, BLOCK, 10)), [['data', BLOCK]], `data before the zeroed range, ${when}`);
          assert.deepStrictEqual(layout(await disk.extents(3 * BLOCK, 5 * BLOCK, 10)), [['data', 5 * BLOCK]], `data after it, ${when}`);
          const zeroed = await disk.extents(32 * BLOCK, 4 * BLOCK, 10);
          assert.equal(zeroed.reduce((sum, extent) => sum + extent.lengthBytes, 0), 4 * BLOCK, `zeroed extents cover the range, ${when}`);
        };
        await allocation('before reading');
        const back = await readBack(disk, 0, 8 * BLOCK);
        assert.ok(isZero(back.subarray(BLOCK, 3 * BLOCK)));
        assert.ok(back.subarray(0, BLOCK).equals(data.subarray(0, BLOCK)));
        assert.ok(back.subarray(3 * BLOCK).equals(data.subarray(3 * BLOCK)));
        assert.ok(isZero(await readBack(disk, 32 * BLOCK, 4 * BLOCK)));
        await allocation('after reading');
      });
    });

    test('extents report an alternating data/hole layout exactly', async () => {
      await withDisk(factory, 256 * KiB, async (disk) => {
        for (let block = 0; block < 16; block += 2) await disk.write(pattern(BLOCK, block), block * BLOCK);
        const expected: [string, number][] = [];
        for (let block = 0; block < 16; block += 1) expected.push([block % 2 === 0 ? 'data' : 'hole', BLOCK]);
        assert.deepStrictEqual(layout(await disk.extents(0, 16 * BLOCK, 1000)), expected);
        // extentsMax cuts the answer short; it never goes past the request.
        assert.deepStrictEqual(layout(await disk.extents(0, 16 * BLOCK, 5)), expected.slice(0, 5));
        assert.deepStrictEqual(layout(await disk.extents(0, 16 * BLOCK, 1)), [['data', BLOCK]]);
        // Unaligned requests are cut at the request's own edges.
        assert.deepStrictEqual(layout(await disk.extents(100, 8000, 10)), [
          ['data', BLOCK - 100],
          ['hole', 8000 - (BLOCK - 100)],
        ]);
        assert.deepStrictEqual(layout(await disk.extents(BLOCK + 1, 1, 10)), [['hole', 1]]);
        assert.deepStrictEqual(layout(await disk.extents(15 * BLOCK, 64 * KiB, 10)), [['hole', 64 * KiB]]);
      });
    });

    test('extents: at least one byte, never more than asked, at most extentsMax (seeded)', async () => {
      const random = new Prng(SEED + 1);
      const blocks = 64;
      const size = blocks * BLOCK;
      await withDisk(factory, size, async (disk) => {
        const states: BlockState[] = new Array<BlockState>(blocks).fill('hole');
        const model = Buffer.alloc(size);
        for (let step = 0; step < 120; step += 1) {
          const what = random.below(3);
          const length = random.between(1, 6 * BLOCK);
          const offset = random.below(size - length + 1);
          const firstTouched = Math.floor(offset / BLOCK);
          const lastTouched = Math.floor((offset + length - 1) / BLOCK);
          if (what === 0) {
            const data = random.bytes(length);
            await disk.write(data, offset);
            data.copy(model, offset);
            for (let block = firstTouched; block <= lastTouched; block += 1) states[block] = 'data';
          } else if (what === 1) {
            assert.equal(await disk.punchHole(offset, length), true);
            model.fill(0, offset, offset + length);
            for (let block = Math.ceil(offset / BLOCK); block < Math.floor((offset + length) / BLOCK); block += 1) {
              states[block] = 'hole';
            }
          } else {
            if (await disk.zeroRange(offset, length)) model.fill(0, offset, offset + length);
            for (let block = firstTouched; block <= lastTouched; block += 1) states[block] = 'unknown';
          }
          const queryOffset = random.below(size);
          const queryLength = random.between(1, size - queryOffset);
          const extentsMax = random.between(1, 12);
          const what2 = `seed ${SEED + 1} step ${step}: extents(${queryOffset}, ${queryLength}, ${extentsMax})`;
          const extents = await disk.extents(queryOffset, queryLength, extentsMax);
          checkExtentsShape(extents, queryLength, extentsMax, what2);
          let at = queryOffset;
          for (const extent of extents) {
            for (let block = Math.floor(at / BLOCK); block * BLOCK < at + extent.lengthBytes; block += 1) {
              const state = states[block];
              if (state === 'unknown') continue;
              assert.equal(extent.hole, state === 'hole', `${what2}: block ${block} is ${state}`);
            }
            if (extent.hole) {
              assert.ok(isZero(await readBack(disk, at, extent.lengthBytes)), `${what2}: a hole must read as zeroes`);
            }
            at += extent.lengthBytes;
          }
          assert.ok((await readBack(disk, 0, size)).equals(model), `seed ${SEED + 1} step ${step}: contents`);
        }
      });
    });

    test('zero-length operations inside the disk are no-ops', async () => {
      // checkRange accepts a length of 0 in both twins, so both must agree on what it does.
      await withDisk(factory, 64 * KiB, async (disk) => {
        await disk.write(pattern(BLOCK, 4), BLOCK);
        const outcomes: string[] = [];
        const attempts: [string, () => Promise<unknown>][] = [
          ['read 0 bytes', () => disk.read(Buffer.alloc(0), BLOCK + 10)],
          ['read 0 bytes at the end', () => disk.read(Buffer.alloc(0), 64 * KiB)],
          ['write 0 bytes', () => disk.write(Buffer.alloc(0), BLOCK + 10)],
          ['punchHole of 0 bytes', () => disk.punchHole(BLOCK, 0)],
          ['zeroRange of 0 bytes', () => disk.zeroRange(BLOCK, 0)],
        ];
        for (const [name, attempt] of attempts) {
          try {
            await attempt();
          } catch (error) {
            outcomes.push(`${name}: ${(error as Error).message}`);
          }
        }
        assert.deepStrictEqual(outcomes, [], 'zero-length operations failed');
        assert.ok((await readBack(disk, BLOCK, BLOCK)).equals(pattern(BLOCK, 4)));
      });
    });

    test('sync resolves after writes', async () => {
      await withDisk(factory, 64 * KiB, async (disk) => {
        await disk.write(pattern(10_000, 3), 123);
        await disk.sync();
        await Promise.all([disk.sync(), disk.sync()]);
        assert.ok((await readBack(disk, 123, 10_000)).equals(pattern(10_000, 3)));
      });
    });

    test('out-of-range access throws an AssertionError', async () => {
      const size = 64 * KiB;
      await withDisk(factory, size, async (disk) => {
        const attempts: [string, () => Promise<unknown>][] = [
          ['read past the end', () => disk.read(Buffer.alloc(10), size - 5)],
          ['read at the end', () => disk.read(Buffer.alloc(1), size)],
          ['read at a negative offset', () => disk.read(Buffer.alloc(1), -1)],
          ['read at a fractional offset', () => disk.read(Buffer.alloc(1), 1.5)],
          ['read at an offset beyond 2^53', () => disk.read(Buffer.alloc(1), Infinity)],
          ['write past the end', () => disk.write(Buffer.alloc(2), size - 1)],
          ['write at a negative offset', () => disk.write(Buffer.alloc(1), -4096)],
          ['punchHole past the end', () => disk.punchHole(size - BLOCK, 2 * BLOCK)],
          ['punchHole with a negative length', () => disk.punchHole(0, -1)],
          ['zeroRange past the end', () => disk.zeroRange(size, 1)],
          ['extents past the end', () => disk.extents(size - 1, 2, 10)],
          ['extents of zero bytes', () => disk.extents(0, 0, 10)],
          ['extents with extentsMax 0', () => disk.extents(0, BLOCK, 0)],
        ];
        for (const [name, attempt] of attempts) {
          await assert.rejects(async () => attempt(), AssertionError, name);
        }
        // Nothing was written by the refused calls.
        assert.ok(isZero(await readBack(disk, 0, size)));
      });
    });
  });
}

for (const factory of factories) diskComplianceSuite(factory);

describe('FileDisk specifics', () => {
  test('open refuses a file of another size', () => {
    const file = path.join(temporaryDir, 'wrong-size.img');
    fs.writeFileSync(file, Buffer.alloc(1000));
    assert.throws(() => FileDisk.open(file, 4096), /1000 bytes, expected 4096/);
  });

  test('vectored writes split into aligned pieces land exactly where a single write would (seeded)', async () => {
    const random = new Prng(SEED + 7);
    const sizeBytes = 256 * KiB;
    const model = Buffer.alloc(sizeBytes);
    const disk = FileDisk.open(sparseFile(sizeBytes), sizeBytes, piecewise);
    try {
      for (let round = 0; round < 60; round += 1) {
        // Slices of odd sizes (some empty), at an odd offset, often across several pieces.
        const slices = Array.from({ length: random.between(1, 6) }, (_, index) => pattern(random.below(13 * KiB), round * 8 + index));
        const total = slices.reduce((sum, slice) => sum + slice.length, 0);
        const offset = random.below(sizeBytes - total + 1);
        await disk.writev(slices, offset);
        Buffer.concat(slices).copy(model, offset);
      }
      assert.deepEqual(await readBack(disk, 0, sizeBytes), model, `seed ${SEED + 7}`);
      assert.equal(piecewise.activity.pending, 0);
    } finally {
      await disk.close();
    }
  });

  test('a piecewise write that fails rejects with the error code and leaves the pool count as it was', async () => {
    const file = sparseFile(64 * KiB);
    const readOnly = FileDisk.open(file, 64 * KiB, piecewise);
    // Make its descriptor read-only behind its back: reopen the same number read-only.
    const fd = (readOnly as unknown as { fd: number }).fd;
    fs.closeSync(fd);
    const again = fs.openSync(file, 'r');
    try {
      assert.equal(again, fd, 'the read-only descriptor took the same number');
      await assert.rejects(readOnly.writev([pattern(20 * KiB, 1)], 1000), { code: 'EBADF' });
      assert.equal(piecewise.activity.pending, 0);
      assert.deepEqual(fs.readFileSync(file), Buffer.alloc(64 * KiB));
    } finally {
      await readOnly.close();
    }
  });

  test('a closed disk asserts on use', async () => {
    const disk = factories[1]?.make(64 * KiB);
    assert.ok(disk !== undefined);
    await disk.close();
    await disk.close();
    await assert.rejects(async () => disk.read(Buffer.alloc(1), 0), AssertionError);
  });
});

// ---------------------------------------------------------------------------------------
// Volume files.

describe('prepareVolumeFiles', () => {
  const MiB = 1024 * KiB;
  let dirCount = 0;
  function freshDataDir(): string {
    dirCount += 1;
    const dir = path.join(temporaryDir, `data-${dirCount}`);
    fs.mkdirSync(dir);
    return dir;
  }

  test('first start creates a sparse image of the right size and an identity', () => {
    const dataDir = freshDataDir();
    const result = prepareVolumeFiles(files, dataDir, 'vol0', 64 * MiB, 4096);
    assert.equal(result.created, true);
    const paths = volumePaths(dataDir, 'vol0');
    assert.deepStrictEqual(result.paths, paths);
    const stat = fs.statSync(paths.image);
    assert.equal(stat.size, 64 * MiB);
    assert.ok(stat.blocks * 512 < 1 * MiB, `image should be sparse, has ${stat.blocks * 512} bytes allocated`);
    assert.equal(fs.existsSync(paths.imageNew), false);
    const identity = JSON.parse(fs.readFileSync(paths.identity, 'utf8')) as Record<string, unknown>;
    assert.deepStrictEqual(identity, { ...result.identity });
    assert.equal(identity['format'], 1);
    assert.equal(identity['name'], 'vol0');
    assert.equal(identity['sizeBytes'], 64 * MiB);
    assert.equal(identity['blockSizeBytes'], 4096);
    assert.match(String(identity['uuid']), /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.ok(!Number.isNaN(Date.parse(String(identity['createdAt']))));
    assert.deepStrictEqual(fs.readdirSync(paths.dir).sort(), ['vol0.identity.json', 'vol0.img']);
  });

  test('a second start with the same size finds the same volume', () => {
    const dataDir = freshDataDir();
    const first = prepareVolumeFiles(files, dataDir, 'vol0', 8 * MiB, 4096);
    fs.writeFileSync(first.paths.image, Buffer.from('keep me'), { flag: 'r+' });
    const second = prepareVolumeFiles(files, dataDir, 'vol0', 8 * MiB, 4096);
    assert.equal(second.created, false);
    assert.equal(second.identity.uuid, first.identity.uuid);
    assert.equal(fs.readFileSync(second.paths.image).subarray(0, 7).toString(), 'keep me');
    assert.equal(fs.statSync(second.paths.image).size, 8 * MiB);
  });

  test('another size is refused, naming both sizes, and nothing is resized', () => {
    const dataDir = freshDataDir();
    prepareVolumeFiles(files, dataDir, 'vol0', 8 * MiB, 4096);
    assert.throws(
      () => prepareVolumeFiles(files, dataDir, 'vol0', 16 * MiB, 4096),
      (error: unknown) => {
        assert.ok(error instanceof VolumeMismatchError);
        assert.equal(error.code, 'ERR_VOLUME_MISMATCH');
        assert.match(error.message, /16MiB/);
        assert.match(error.message, /16777216/);
        assert.match(error.message, /8MiB/);
        assert.match(error.message, /8388608/);
        return true;
      },
    );
    assert.equal(fs.statSync(volumePaths(dataDir, 'vol0').image).size, 8 * MiB);
  });

  test('an image without an identity is refused and left alone', () => {
    const dataDir = freshDataDir();
    const paths = volumePaths(dataDir, 'vol0');
    fs.mkdirSync(paths.dir, { recursive: true });
    fs.writeFileSync(paths.image, Buffer.from('somebody else'));
    assert.throws(() => prepareVolumeFiles(files, dataDir, 'vol0', 8 * MiB, 4096), VolumeMismatchError);
    assert.equal(fs.readFileSync(paths.image, 'utf8'), 'somebody else');
    assert.equal(fs.existsSync(paths.identity), false);
  });

  test('a leftover .img.new with its identity written is completed', () => {
    const dataDir = freshDataDir();
    const first = prepareVolumeFiles(files, dataDir, 'vol0', 8 * MiB, 4096);
    // A crash between writing the identity and the final rename.
    fs.renameSync(first.paths.image, first.paths.imageNew);
    const again = prepareVolumeFiles(files, dataDir, 'vol0', 8 * MiB, 4096);
    assert.equal(again.created, false);
    assert.equal(again.identity.uuid, first.identity.uuid);
    assert.equal(fs.statSync(again.paths.image).size, 8 * MiB);
    assert.equal(fs.existsSync(again.paths.imageNew), false);
  });

  test('a leftover .img.new without an identity is started over', () => {
    const dataDir = freshDataDir();
    const paths = volumePaths(dataDir, 'vol0');
    fs.mkdirSync(paths.dir, { recursive: true });
    fs.writeFileSync(paths.imageNew, Buffer.alloc(123, 1));
    const result = prepareVolumeFiles(files, dataDir, 'vol0', 8 * MiB, 4096);
    assert.equal(result.created, true);
    assert.equal(fs.statSync(paths.image).size, 8 * MiB);
    assert.ok(isZero(fs.readFileSync(paths.image).subarray(0, 123)), 'the half-made image is not reused');
    assert.equal(fs.existsSync(paths.imageNew), false);
  });

  test('an identity of another volume, a broken identity, a missing or resized image are refused', () => {
    const cases: [string, (paths: ReturnType<typeof volumePaths>) => void][] = [
      [
        'another name',
        (paths) => {
          const identity = JSON.parse(fs.readFileSync(paths.identity, 'utf8')) as Record<string, unknown>;
          fs.writeFileSync(paths.identity, JSON.stringify({ ...identity, name: 'vol9' }));
        },
      ],
      ['not JSON', (paths) => fs.writeFileSync(paths.identity, '{ nope')],
      ['wrong format', (paths) => fs.writeFileSync(paths.identity, JSON.stringify({ format: 2 }))],
      ['image missing', (paths) => fs.rmSync(paths.image)],
      ['image resized', (paths) => fs.truncateSync(paths.image, 4 * MiB)],
    ];
    for (const [name, damage] of cases) {
      const dataDir = freshDataDir();
      const { paths } = prepareVolumeFiles(files, dataDir, 'vol0', 8 * MiB, 4096);
      damage(paths);
      assert.throws(() => prepareVolumeFiles(files, dataDir, 'vol0', 8 * MiB, 4096), VolumeMismatchError, name);
    }
  });
});
