// Crash at every mutation point of every operation that changes a node's files: the
// first start of a volume (image, identity, log), a start that replays the log (its
// session and consistency point in the superblock), a change of log geometry, a
// replica's log restarted for a resync, a damaged per-source log set aside, a mirrored
// primary's write-intent record, dirty bitmaps and state file, the incarnation, and the
// role changes (a promotion, a demotion, a secondary following a new primary), which
// must start in the old role from the old log or in the new role from the new one.
// Each operation runs over the simulated file system (MemoryFileSystem), is stopped
// after each of its mutations in turn, and every state the crash may leave is opened
// the way the node opens it at start (openVolumeStorage, MirrorEngine). The checks are
// what a user would notice: the node starts, every write acknowledged as durable before
// the crash reads back, a replica's log resumes where it was or where the reset put it,
// and a primary knows every region its absent peer may lack.
//
// Then start-up problems no crash makes but a damaged disk can: a replica's damaged log
// is set aside and replaced (it asks for a full resync), a primary's stops the start with
// ERR_LOG_CORRUPT and changes nothing, and so does a damaged epoch history or one that
// names another primary than the cluster file.

import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import { describe, test } from 'node:test';
import { parseClusterConfig, type ClusterConfig } from '../../src/control/config.js';
import { IoActivity } from '../../src/io/file-io.js';
import { MemoryFileSystem } from '../../src/io/memory-file-system.js';
import { Logger } from '../../src/lib/log.js';
import { DirtyBitmap } from '../../src/core/dirty-bitmap.js';
import { compareCopies, encodeEpochHistory, EpochHistory, parseEpochHistory } from '../../src/core/epoch-history.js';
import { DurableFiles } from '../../src/storage/durable-files.js';
import { decodeEntryHeader, EntryType, encodeEntryHeader, type EntryHeader } from '../../src/protocol/log-entry.js';
import { VolumeMismatchError } from '../../src/lib/errors.js';
import {
  demoteStorage,
  logDir,
  logOptionsAt,
  moveReplicaLog,
  openVolumeStorage,
  promoteStorage,
  restartReplicaLog,
  type OpenedVolume,
  type VolumeStorageOptions,
} from '../../src/storage/volume-store.js';
import { LogCorruptError, type LogGeometry } from '../../src/storage/write-log.js';
import type { MirrorEngine } from '../../src/server/mirror-engine.js';
import { mirrorPrimary, type MirroredVolume } from '../../src/server/mirrored-volume.js';
import { nextIncarnation } from '../../src/server/heartbeats.js';
import { exploreCrashes as explore, releasing, type CrashExploration, type ExplorationReport } from '../helpers/crash-explorer.js';
import { pattern } from '../helpers/test-data.js';
import { baseSeed } from './prng.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SEED = baseSeed(0xc4a5_0022);
const DATA_A = '/data-a';
const DATA_B = '/data-b';
const SIZE = 1 * MiB;
const BLOCK = 4096;
const REGION = 64 * KiB;
const GEOMETRY: LogGeometry = { partitionBytes: 64 * KiB, partitions: 2 };
const OTHER_GEOMETRY: LogGeometry = { partitionBytes: 128 * KiB, partitions: 3 };

const cluster: ClusterConfig = parseClusterConfig(
  `cluster: crash
secret: crash-test-secret
resync: { regionSize: 64KiB }
nodes:
  - { id: a, nbd: 127.0.0.1:0, replication: 127.0.0.1:1, admin: 127.0.0.1:0, dataDir: ${DATA_A} }
  - { id: b, nbd: 127.0.0.1:0, replication: 127.0.0.1:2, admin: 127.0.0.1:0, dataDir: ${DATA_B} }
volumes:
  - { name: v1, size: 1MiB, replicas: [a, b], primary: a, mode: sync }
`,
  { baseDir: '/' },
);
const volumeConfig = cluster.volumes[0]!;

type Role = 'primary' | 'secondary';

interface Opened extends OpenedVolume {
  warnings: Record<string, unknown>[];
}

function storageOptions(fs: MemoryFileSystem, role: Role, geometry: LogGeometry, lines: string[]): VolumeStorageOptions {
  return {
    files: new DurableFiles(fs),
    dataDir: role === 'primary' ? DATA_A : DATA_B,
    nodeId: role === 'primary' ? 'a' : 'b',
    config: volumeConfig,
    geometry,
    activity: new IoActivity(),
    log: new Logger({ write: (line) => lines.push(line) }, 'warn'),
    onCheckpointWanted: () => undefined,
  };
}

async function open(fs: MemoryFileSystem, role: Role, geometry = GEOMETRY, replayed: DirtyBitmap | null = null): Promise<Opened> {
  const lines: string[] = [];
  const opened = await openVolumeStorage({ ...storageOptions(fs, role, geometry, lines), replayed });
  return { ...opened, warnings: lines.map((line) => JSON.parse(line) as Record<string, unknown>) };
}

/** Every block in `expected` reads back as given. */
async function checkBlocks(opened: OpenedVolume, expected: Map<number, Buffer>, where: string): Promise<void> {
  for (const [offset, bytes] of expected) {
    const back = await opened.volume.read(offset, bytes.length);
    assert.ok(back.equals(bytes), `${where}: block at ${offset} does not read back as acknowledged`);
  }
}

/**
 * The node starts from this state, the acknowledged blocks read back, and it goes on
 * working: a durable write, a clean close, and a second start that finds it.
 */
async function checkStarts(fs: MemoryFileSystem, role: Role, expected: Map<number, Buffer>, where: string, geometry = GEOMETRY): Promise<Opened> {
  let first: Opened;
  try {
    first = await open(fs, role, geometry);
  } catch (error) {
    throw new Error(`${where}: the node does not start: ${String(error)}`);
  }
  const report = { ...first };
  await releasing(async () => {
    await checkBlocks(first, expected, where);
    if (role === 'primary') {
      await first.volume.write([pattern(BLOCK, 99)], SIZE - BLOCK, true);
      await first.volume.checkpoint();
    }
  }, () => first.volume.close());
  const second = await open(fs, role, geometry);
  await releasing(async () => {
    await checkBlocks(second, expected, `${where} (second start)`);
    if (role === 'primary') await checkBlocks(second, new Map([[SIZE - BLOCK, pattern(BLOCK, 99)]]), `${where} (second start)`);
    assert.deepEqual(
      fs.readdir(role === 'primary' ? `${DATA_A}/log` : `${DATA_B}/peers/a`).filter((name) => name.endsWith('.new') || name.endsWith('.old')),
      [],
      `${where}: a start leaves no half-installed log directory behind`,
    );
  }, () => second.volume.close());
  return report;
}

/** A state built by running `build` over a fresh file system, copied as a crash would find it. */
async function stateAfter(build: (fs: MemoryFileSystem) => Promise<void>): Promise<MemoryFileSystem> {
  const fs = new MemoryFileSystem();
  try {
    await build(fs);
    return fs.copy();
  } finally {
    fs.dispose();
  }
}

/** Durable writes through a primary, left open (as a crash would leave it); returns what they wrote. */
async function writeDurably(opened: OpenedVolume, count: number, seed: number): Promise<Map<number, Buffer>> {
  const written = new Map<number, Buffer>();
  for (let index = 0; index < count; index += 1) {
    const offset = ((index * 7 + seed) % (SIZE / BLOCK - 1)) * BLOCK;
    const bytes = pattern(BLOCK, seed * 1000 + index);
    await opened.volume.write([bytes], offset, true);
    written.set(offset, bytes);
  }
  return written;
}

/** Explores the crashes of one operation and reports how many points and states it checked. */
async function exploreCrashes(exploration: CrashExploration): Promise<ExplorationReport> {
  const report = await explore(exploration);
  console.log(`  ${report.mutations} mutation points, ${report.states} states opened, at most ${report.mostPending} changes pending at one point`);
  return report;
}

describe('crash at every mutation point', () => {
  test('first start of a primary volume: image, identity and log created', async () => {
    const before = new MemoryFileSystem();
    const report = await exploreCrashes({
      before,
      seed: SEED,
      operation: async (fs) => {
        const opened = await open(fs, 'primary');
        await opened.volume.close();
      },
      check: async (fs, where) => {
        await checkStarts(fs, 'primary', new Map([[0, Buffer.alloc(BLOCK)]]), where);
      },
    });
    before.dispose();
    assert.ok(report.mutations >= 20, `a first start makes its files in ${report.mutations} mutations`);
  });

  test('first start of a secondary volume: a crash between image and log costs at most a full resync', async () => {
    const before = new MemoryFileSystem();
    let fullResyncs = 0;
    await exploreCrashes({
      before,
      seed: SEED + 1,
      operation: async (fs) => {
        const opened = await open(fs, 'secondary');
        await opened.volume.close();
      },
      check: async (fs, where) => {
        const opened = await checkStarts(fs, 'secondary', new Map([[0, Buffer.alloc(BLOCK)]]), where);
        if (opened.volume.log.status().needsFullResync) fullResyncs += 1;
      },
    });
    before.dispose();
    // Crashes after the image is in place and before the log is: the image was made by
    // an earlier start, so a missing log counts as a damaged one.
    assert.ok(fullResyncs > 0, 'some crash points leave an image without a log');
  });

  test('a start that replays the log (its session and consistency point written to the superblock) loses no durable write', async () => {
    const written = new Map<number, Buffer>();
    const before = await stateAfter(async (fs) => {
      const opened = await open(fs, 'primary');
      for (const [offset, bytes] of await writeDurably(opened, 6, 1)) written.set(offset, bytes);
      await opened.volume.checkpoint();
      for (const [offset, bytes] of await writeDurably(opened, 5, 2)) written.set(offset, bytes);
      // Left open: the state is a crash's, with entries after the last consistency point.
      await opened.volume.close();
    });
    await exploreCrashes({
      before,
      seed: SEED + 2,
      operation: async (fs) => {
        const opened = await open(fs, 'primary');
        assert.ok(opened.recovery.replayedEntries >= 5, `the start replays the entries after the CP (${opened.recovery.replayedEntries})`);
        await opened.volume.close();
      },
      check: (fs, where) => checkStarts(fs, 'primary', written, where).then(() => undefined),
    });
    before.dispose();
  });

  test('a primary\'s life: durable writes, consistency points while writing, more writes (each acknowledged write survives)', async () => {
    const before = await stateAfter(async (fs) => {
      const opened = await open(fs, 'primary');
      await opened.volume.close();
    });
    let acknowledged = new Map<number, Buffer>();
    const report = await exploreCrashes({
      before,
      seed: SEED + 3,
      operation: async (fs) => {
        acknowledged = new Map();
        const opened = await open(fs, 'primary');
        await releasing(async () => {
          for (let round = 0; round < 3; round += 1) {
            for (let index = 0; index < 4; index += 1) {
              const offset = (round * 4 + index) * BLOCK;
              const bytes = pattern(BLOCK, round * 10 + index);
              await opened.volume.write([bytes], offset, true);
              if (!fs.crashed) acknowledged.set(offset, bytes);
            }
            await opened.volume.checkpoint();
          }
        }, () => opened.volume.close());
      },
      check: (fs, where) => checkStarts(fs, 'primary', acknowledged, where).then(() => undefined),
    });
    before.dispose();
    // The log's syncer and the image's sync are the simulated file system's: crashes
    // before a sync of a partition lose the entries written to it since the last one, and
    // crashes before a consistency point's sync of the image lose what was applied to it.
    for (const file of [`${DATA_A}/log/`, `${DATA_A}/volumes/v1.img`]) {
      assert.ok(
        [...report.changesSeen].some((change) => change.startsWith(`bytes of ${file}`)),
        `no crash left the unsynced bytes of ${file} to chance: ${[...report.changesSeen].join('; ')}`,
      );
    }
  });

  test('a change of log geometry at start: the log is made anew in one step, its sequence continues', async () => {
    const written = new Map<number, Buffer>();
    let lastSeq = 0;
    const before = await stateAfter(async (fs) => {
      const opened = await open(fs, 'primary');
      for (const [offset, bytes] of await writeDurably(opened, 8, 3)) written.set(offset, bytes);
      lastSeq = opened.volume.log.lastSeq;
      await opened.volume.close();
    });
    await exploreCrashes({
      before,
      seed: SEED + 4,
      operation: async (fs) => {
        const opened = await open(fs, 'primary', OTHER_GEOMETRY);
        assert.equal(opened.volume.log.geometryDiffers(OTHER_GEOMETRY), false);
        await opened.volume.close();
      },
      check: async (fs, where) => {
        const opened = await checkStarts(fs, 'primary', written, where, OTHER_GEOMETRY);
        assert.ok(opened.volume.log.lastSeq >= lastSeq, `${where}: sequence numbers went back (${opened.volume.log.lastSeq} < ${lastSeq})`);
      },
    });
    before.dispose();
  });

  test("a replica's log that cannot be made anew (a full disk) stays in service: the reset fails, nothing is lost, and a later reset succeeds", async () => {
    /** The node's files, with a disk that fills up while `full` is set: every new file of a log being made anew fails. */
    class FillingFiles extends DurableFiles {
      full = false;
      override writeNewFile(file: string, contents: Parameters<DurableFiles['writeNewFile']>[1], operation: Parameters<DurableFiles['writeNewFile']>[2]): void {
        if (this.full && operation === 'log-recreate') throw Object.assign(new Error(`ENOSPC: no space left on device, write '${file}'`), { code: 'ENOSPC' });
        super.writeNewFile(file, contents, operation);
      }
    }
    const fs = new MemoryFileSystem();
    const files = new FillingFiles(fs);
    const lines: string[] = [];
    const received = new Map<number, Buffer>();
    const store = async (volume: OpenedVolume['volume'], seq: number): Promise<void> => {
      const bytes = pattern(BLOCK, 900 + seq);
      const offset = (seq % 7) * 3 * BLOCK;
      await volume.replicate(entryHeader(seq, offset, bytes), bytes, true);
      received.set(offset, bytes);
    };
    const opened = await openVolumeStorage({ ...storageOptions(fs, 'secondary', GEOMETRY, lines), files });
    try {
      for (let seq = 1; seq <= 6; seq += 1) await store(opened.volume, seq);
      files.full = true;
      await assert.rejects(restartReplicaLog(opened.volume, opened.logOptions, 40, false), /ENOSPC/);
      // The old log goes on: the next entry in sequence is stored, and every block reads back.
      assert.equal(opened.volume.log.lastSeq, 6);
      await store(opened.volume, 7);
      await opened.volume.log.syncTo(7);
      await checkBlocks(opened, received, 'after the failed reset');
      files.full = false;
      await restartReplicaLog(opened.volume, opened.logOptions, 40, false);
      assert.equal(opened.volume.log.lastSeq, 40);
      await store(opened.volume, 41);
      await opened.volume.log.syncTo(41);
    } finally {
      await opened.volume.close();
    }
    const again = await open(fs, 'secondary');
    try {
      assert.equal(again.volume.log.lastSeq, 41);
      assert.equal(again.volume.log.status().needsFullResync, false);
      await checkBlocks(again, received, 'after a restart');
    } finally {
      await again.volume.close();
    }
  });

  test('a replica\'s log restarted for a resync: it resumes where it was or where the reset put it, names what it named, never needs a full resync', async () => {
    const received = new Map<number, Buffer>();
    const before = await stateAfter(async (fs) => {
      const opened = await open(fs, 'secondary');
      for (let seq = 1; seq <= 12; seq += 1) {
        const bytes = pattern(BLOCK, 500 + seq);
        const offset = (seq % 9) * 2 * BLOCK;
        await opened.volume.replicate(entryHeader(seq, offset, bytes), bytes, true);
        received.set(offset, bytes);
      }
      await opened.volume.log.syncTo(12);
      await opened.volume.close();
    });
    const resetSeq = 40;
    const reportAfter = 8;
    let named: { offset: number; lengthBytes: number }[] = [];
    await exploreCrashes({
      before,
      seed: SEED + 5,
      operation: async (fs) => {
        const opened = await open(fs, 'secondary');
        await releasing(async () => {
          // What ReplicaTarget.reset does: name the regions past reportAfter, keep them, restart the log.
          named = opened.volume.log.entriesAfter(reportAfter) ?? [];
          assert.ok(named.length > 0);
          opened.volume.log.keepNamed(named, SIZE);
          await restartReplicaLog(opened.volume, opened.logOptions, resetSeq, false);
        }, () => opened.volume.close());
      },
      check: async (fs, where) => {
        const opened = await checkStarts(fs, 'secondary', received, where);
        const log = opened.volume.log;
        assert.equal(log.status().needsFullResync, false, `${where}: a crash during a reset must not cost a full resync`);
        assert.equal(opened.setAside, null, `${where}: nothing set aside`);
        assert.ok(log.lastSeq === 12 || log.lastSeq === resetSeq, `${where}: the log resumes after ${log.lastSeq}, neither where it was (12) nor where the reset put it (${resetSeq})`);
        // Reopened once more to read what it names after a restart of its own.
        const again = await open(fs, 'secondary');
        try {
          const names = again.volume.log.entriesAfter(reportAfter);
          if (names !== null) {
            for (const extent of named) {
              assert.ok(
                names.some((have) => have.offset <= extent.offset && extent.offset + extent.lengthBytes <= have.offset + have.lengthBytes),
                `${where}: the region at ${extent.offset} it named before the reset is no longer named`,
              );
            }
          }
        } finally {
          await again.volume.close();
        }
      },
    });
    before.dispose();
  });

  test('a replica\'s damaged log set aside at start: a crash during it still ends in a started node asking for a full resync', async () => {
    const before = await stateAfter(async (fs) => {
      const opened = await open(fs, 'secondary');
      await opened.volume.close();
      // The damage of the report that led here: the superblock names partitions that are gone.
      for (const name of fs.readdir(`${DATA_B}/peers/a/v1`)) if (name.startsWith('partition-')) fs.unlink(`${DATA_B}/peers/a/v1/${name}`);
      fs.syncDir(`${DATA_B}/peers/a/v1`);
    });
    await exploreCrashes({
      before,
      seed: SEED + 6,
      operation: async (fs) => {
        const opened = await open(fs, 'secondary');
        await opened.volume.close();
      },
      check: async (fs, where) => {
        const opened = await checkStarts(fs, 'secondary', new Map(), where);
        assert.equal(opened.volume.log.status().needsFullResync, true, `${where}: the new log asks for a full resync`);
      },
    });
    before.dispose();
  });

  test('a mirrored primary with its peer away: write-intent record, bitmaps and state file name every region the peer may lack', async () => {
    const before = await stateAfter(async (fs) => {
      const { opened, engine } = await openMirrored(fs);
      await engine.stop(null);
      await opened.volume.close();
    });
    let acknowledged = new Map<number, Buffer>();
    await exploreCrashes({
      before,
      seed: SEED + 7,
      randomOutcomes: 2,
      operation: async (fs) => {
        acknowledged = new Map();
        const { opened, engine, mirrored } = await openMirrored(fs);
        await releasing(async () => {
          for (let round = 0; round < 2; round += 1) {
            for (let index = 0; index < 3; index += 1) {
              const offset = (round * 5 + index * 2) * REGION + BLOCK;
              const bytes = pattern(BLOCK, 700 + round * 10 + index);
              await mirrored.write([bytes], offset, index === 2);
              if (!fs.crashed && index === 2) for (let at = 0; at <= index; at += 1) {
                const earlier = (round * 5 + at * 2) * REGION + BLOCK;
                acknowledged.set(earlier, pattern(BLOCK, 700 + round * 10 + at));
              }
            }
            await mirrored.checkpoint();
          }
          // A clean stop: final consistency point, then the state file says so.
          await mirrored.checkpoint();
          await engine.stop(opened.volume.log.lastSeq);
        }, async () => {
          await engine.stop(null).catch(() => undefined);
          await opened.volume.close();
        });
      },
      check: async (fs, where) => {
        // The start the node makes: the engine reads its state, bitmap and intent files.
        const { opened, engine } = await openMirrored(fs);
        try {
          const bitmap = DirtyBitmap.decode(fs.readFile(`${DATA_A}/mirror/v1.b.bitmap`), SIZE, REGION);
          assert.ok(bitmap !== null, `${where}: the bitmap file is readable after the engine's start`);
          for (let region = 0; region < SIZE / REGION; region += 1) {
            const bytes = await opened.volume.read(region * REGION, REGION);
            if (bytes.some((byte) => byte !== 0)) {
              assert.ok(bitmap.isDirty(region), `${where}: region ${region} holds data peer b never got, and its bitmap does not say so`);
            }
          }
        } finally {
          await engine.stop(null);
          await opened.volume.close();
        }
        await checkStarts(fs, 'primary', acknowledged, where);
      },
    });
    before.dispose();
  });

  test('the incarnation file: every start gets a larger number than every earlier one', async () => {
    let previous = 0;
    const before = await stateAfter(async (fs) => {
      previous = nextIncarnation(new DurableFiles(fs), DATA_A, 1000);
    });
    await exploreCrashes({
      before,
      seed: SEED + 8,
      operation: async (fs) => {
        nextIncarnation(new DurableFiles(fs), DATA_A, 5);
        return Promise.resolve();
      },
      check: async (fs, where) => {
        const next = nextIncarnation(new DurableFiles(fs), DATA_A, 5);
        assert.ok(next > previous, `${where}: incarnation ${next} after ${previous}`);
        return Promise.resolve();
      },
    });
    before.dispose();
  });

  // ---- role changes (volume-store.ts, "role changes") ----------------------------------
  // Each one is explored from a start (as the node opens the volume) through the change to
  // a clean close. Every state is opened as the node opens it at start: before the new
  // history is durable it must start in its old role from its old log, after it in its new
  // role from its new log, never a mix, with every block it held. A state in the old role
  // then makes the change again (it replaces whatever the crash left of the new log
  // directory); a state in the new role starts a second time.

  for (const [index, mode] of (['sync', 'logship'] as const).entries()) {
    test(`a promotion (${mode}): a crash leaves the secondary of a on its per-source log, or the primary of epoch 1 on its own log continuing after entry 12`, async () => {
      const { before, held } = await replicaWithEntries(mode, 12);
      const promoted = EpochHistory.of([{ epoch: 0, primary: 'a', firstSeq: 1 }, { epoch: 1, primary: 'b', firstSeq: 13 }]);
      await exploreRoleChange({
        before,
        seed: SEED + 9 + index,
        node: NODE_B,
        mode,
        held,
        old: { role: 'secondary', history: EpochHistory.initial('a'), dir: `${DATA_B}/peers/a/v1`, replicaLog: true, lastSeq: 12 },
        new: { role: 'primary', history: promoted, dir: `${DATA_B}/log/v1`, replicaLog: false, lastSeq: 12 },
        change: async (fs) => {
          const opened = await openAt(fs, NODE_B, mode);
          const files = new DurableFiles(fs);
          await releasing(async () => {
            await primaryCheckpointArrives(opened, mode);
            const from = opened.logOptions;
            const own = logOptionsAt(from, logDir(DATA_B, 'v1', promoted, 'b'), null);
            const made: { history?: EpochHistory } = {};
            // What VolumeRoles.promote commits: the next epoch, starting after the last entry, made durable.
            const report = await promoteStorage(files, opened.volume, own, from, (lastSeq) => {
              made.history = opened.volume.replica.promotion('b', lastSeq);
              files.replaceFile(opened.paths.epochs, encodeEpochHistory(made.history), 'volume-epochs');
            });
            assert.equal(report.lastSeq, 12);
            assert.equal(report.damage, null);
            assert.ok(made.history !== undefined);
            opened.volume.replica.promote(made.history);
          }, () => opened.volume.close());
        },
        goesOn: async (fs, where) => {
          // The new primary's first write is the first entry of its epoch, and it is kept.
          const bytes = pattern(BLOCK, 77);
          const opened = await openAt(fs, NODE_B, mode);
          await releasing(async () => {
            await opened.volume.write([bytes], SIZE - BLOCK, true);
            assert.equal(opened.volume.log.lastSeq, promoted.current.firstSeq, `${where}: the first write of epoch 1 is not entry ${promoted.current.firstSeq}`);
          }, () => opened.volume.close());
          const again = await openAt(fs, NODE_B, mode);
          await releasing(() => checkBlocks(again, new Map([[SIZE - BLOCK, bytes]]), `${where} (the new primary's write)`), () => again.volume.close());
        },
      });
      before.dispose();
    });

    test(`a change of primary on a secondary (${mode}): a crash leaves its per-source log of a, or one of c in epoch 1 that says its entries after 10 are not c's`, async () => {
      const { before, held, offsets } = await replicaWithEntries(mode, 12);
      const sharedSeq = 10;
      // c (a node the cluster file need not name: the history says) was promoted after entry 10.
      const following = EpochHistory.of([{ epoch: 0, primary: 'a', firstSeq: 1 }, { epoch: 1, primary: 'c', firstSeq: sharedSeq + 1 }]);
      await exploreRoleChange({
        before,
        seed: SEED + 13 + index,
        node: NODE_B,
        mode,
        held,
        old: { role: 'secondary', history: EpochHistory.initial('a'), dir: `${DATA_B}/peers/a/v1`, replicaLog: true, lastSeq: 12 },
        new: { role: 'secondary', history: following, dir: `${DATA_B}/peers/c/v1`, replicaLog: true, lastSeq: 12 },
        change: async (fs) => {
          const opened = await openAt(fs, NODE_B, mode);
          const files = new DurableFiles(fs);
          await releasing(async () => {
            await primaryCheckpointArrives(opened, mode);
            // What ReplicaTarget's follow (VolumeRoles.target) does for a primary of a newer epoch.
            const volume = opened.volume;
            const { sharedSeq: shared } = compareCopies({ history: volume.replica.history, lastSeq: volume.log.lastSeq }, { history: following, lastSeq: following.current.firstSeq - 1 });
            assert.equal(shared, sharedSeq);
            const to = logOptionsAt(opened.logOptions, logDir(DATA_B, 'v1', following, 'b'), opened.logOptions.replica ?? null);
            await moveReplicaLog(files, volume, opened.logOptions, to, shared, () => {
              files.replaceFile(opened.paths.epochs, encodeEpochHistory(following), 'volume-epochs');
              volume.replica.learn(following);
            });
          }, () => opened.volume.close());
        },
        also: (opened, standing, where) => {
          const log = opened.volume.log;
          assert.equal(log.divergedAfter, standing === 'old' ? null : sharedSeq, `${where}: what the log says of its entries after ${sharedSeq}`);
          // Either way it names the regions of the entries past the shared one (to a's reset, or to c's).
          const named = log.entriesAfter(sharedSeq);
          if (named === null) return;
          for (const [seq, offset] of offsets) {
            if (seq > sharedSeq) assert.ok(covers(named, { offset, lengthBytes: BLOCK }), `${where}: entry ${seq}'s region at ${offset} is no longer named`);
          }
        },
      });
      before.dispose();
    });
  }


  for (const [index, variant] of (['clean', 'failed'] as const).entries()) {
    const how = variant === 'clean' ? 'a clean step-down' : 'a step-down whose last consistency point failed (entries past the last one)';
    test(`a demotion after ${how}: a crash leaves the stepped-down primary on its own log, or a secondary of b in epoch 1 whose per-source log names what b may lack`, async () => {
      // a wrote entries 1..10 (with a consistency point after the 4th); b holds 1..6 and was promoted.
      const written = new Map<number, Buffer>();
      const seqs = new Map<number, number>();
      let lastSeq = 0;
      const before = await stateAfter(async (fs) => {
        const opened = await openAt(fs, NODE_A, 'sync');
        for (let entry = 0; entry < 10; entry += 1) {
          const offset = (entry * 5 + 1) * BLOCK;
          const bytes = pattern(BLOCK, 800 + entry);
          await opened.volume.write([bytes], offset, true);
          written.set(offset, bytes);
          seqs.set(opened.volume.log.lastSeq, offset);
          if (entry === 3) await opened.volume.checkpoint();
        }
        // What VolumeRoles.stepDown does: a last consistency point (unless it fails), then the history says it stepped down.
        if (variant === 'clean') await opened.volume.checkpoint();
        new DurableFiles(fs).replaceFile(opened.paths.epochs, encodeEpochHistory(opened.history.stepDown()), 'volume-epochs');
        lastSeq = opened.volume.log.lastSeq;
        await opened.volume.close();
      });
      const sharedSeq = 6;
      assert.ok([...seqs.keys()].some((seq) => seq > sharedSeq + 1), 'a holds entries b lacks');
      const following = EpochHistory.of([{ epoch: 0, primary: 'a', firstSeq: 1 }, { epoch: 1, primary: 'b', firstSeq: sharedSeq + 1 }]);
      // The mirror ledger's word on a region b may lack (a write whose entry a crash lost, say).
      const ledgerRegion = 12;
      let namedStates = 0;
      await exploreRoleChange({
        before,
        seed: SEED + 11 + index,
        node: NODE_A,
        mode: 'sync',
        held: written,
        // The start after a step-down whose consistency point failed takes one (its marker is one more entry).
        old: { role: 'secondary', history: EpochHistory.initial('a').stepDown(), dir: `${DATA_A}/log/v1`, replicaLog: false, lastSeq: variant === 'clean' ? lastSeq : { atLeast: lastSeq } },
        new: { role: 'secondary', history: following, dir: `${DATA_A}/peers/b/v1`, replicaLog: true, lastSeq: variant === 'clean' ? lastSeq : { atLeast: lastSeq } },
        change: async (fs) => {
          const opened = await openAt(fs, NODE_A, 'sync');
          const files = new DurableFiles(fs);
          await releasing(async () => {
            // What VolumeRoles.follow does for a copy that stepped down.
            const volume = opened.volume;
            const { sharedSeq: shared } = compareCopies({ history: volume.replica.history, lastSeq: volume.log.lastSeq }, { history: following, lastSeq: following.current.firstSeq - 1 });
            assert.equal(shared, sharedSeq);
            const to = logOptionsAt(opened.logOptions, logDir(DATA_A, 'v1', following, 'a'), { deferApply: false });
            const mayDiffer = new DirtyBitmap(SIZE, REGION);
            mayDiffer.mark(ledgerRegion * REGION, BLOCK);
            await demoteStorage(files, volume, opened.logOptions, to, shared, mayDiffer, () => {
              files.replaceFile(opened.paths.epochs, encodeEpochHistory(following), 'volume-epochs');
              volume.replica.learn(following);
            });
          }, () => opened.volume.close());
        },
        also: (opened, standing, where) => {
          if (standing === 'old') return;
          const log = opened.volume.log;
          assert.equal(log.divergedAfter, sharedSeq, `${where}: the per-source log does not say its entries after ${sharedSeq} are not b's`);
          // Every region, or at least those of a's entries after the shared one and the ledger's.
          const named = log.entriesAfter(sharedSeq);
          if (named === null) return;
          namedStates += 1;
          const must = [...seqs].filter(([seq]) => seq > sharedSeq).map(([, offset]) => ({ offset, lengthBytes: BLOCK }));
          must.push({ offset: ledgerRegion * REGION, lengthBytes: BLOCK });
          for (const extent of must) assert.ok(covers(named, extent), `${where}: the region at ${extent.offset}, which b may lack, is not named to it`);
        },
      });
      // After a clean step-down and a restart, a's log no longer holds the entries past the
      // shared one (the consistency point released them): it names every region. Entries
      // past its last consistency point are read back and named one by one.
      if (variant === 'failed') assert.ok(namedStates > 0, 'no start named the regions one by one: the check above never ran');
      before.dispose();
    });
  }
});

describe('start-up problems a damaged disk leaves', () => {
  test('the reported state: a superblock naming four partitions that are gone, and a trail: the secondary starts, says so, and asks for a full resync', async () => {
    const fs = await stateAfter(async (built) => {
      const opened = await open(built, 'secondary', { partitionBytes: 64 * KiB, partitions: 4 });
      const bytes = pattern(BLOCK, 1);
      await opened.volume.replicate(entryHeader(1, 0, bytes), bytes, true);
      await opened.volume.checkpoint();
      await opened.volume.close();
      for (let slot = 0; slot < 4; slot += 1) built.unlink(`${DATA_B}/peers/a/v1/partition-${slot}.log`);
    });
    assert.deepEqual(fs.readdir(`${DATA_B}/peers/a/v1`), ['superblock.json', 'trail']);
    const opened = await open(fs, 'secondary', { partitionBytes: 64 * KiB, partitions: 4 });
    try {
      const warning = opened.warnings.find((record) => String(record['msg']).startsWith('per-source log damaged'));
      assert.ok(warning !== undefined, `a warning names the damage: ${JSON.stringify(opened.warnings)}`);
      assert.equal(warning['dir'], `${DATA_B}/peers/a/v1`);
      assert.match(String(warning['problem']), /partition-0\.log is missing/);
      assert.equal(opened.setAside, `${DATA_B}/peers/a/v1.damaged`);
      assert.deepEqual(fs.readdir(`${DATA_B}/peers/a/v1.damaged`), ['superblock.json', 'trail'], 'the damaged log is kept for a look');
      const status = opened.volume.log.status();
      assert.equal(status.needsFullResync, true);
      assert.equal(opened.volume.log.entriesAfter(0), null, 'it names every region to a primary that asks');
    } finally {
      await opened.volume.close();
    }
    // The flag survives restarts (and a geometry change) until a reset clears it.
    const again = await open(fs, 'secondary', OTHER_GEOMETRY);
    try {
      assert.equal(again.volume.log.status().needsFullResync, true);
      await restartReplicaLog(again.volume, again.logOptions, 10, false);
      assert.equal(again.volume.log.status().needsFullResync, false);
      assert.equal(again.volume.log.lastSeq, 10);
    } finally {
      await again.volume.close();
    }
    fs.dispose();
  });

  test('other damage to a per-source log is set aside the same way; a missing one too once the image exists', async () => {
    const damages: [string, (fs: MemoryFileSystem, dir: string) => void, RegExp][] = [
      ['an unreadable superblock', (fs, dir) => rewrite(fs, `${dir}/superblock.json`, Buffer.from('{"format": 1, "cr')), /unreadable superblock/],
      ['a superblock with a bad checksum', (fs, dir) => rewrite(fs, `${dir}/superblock.json`, Buffer.from(fs.readFile(`${dir}/superblock.json`).toString().replace('"cpSeq": 0', '"cpSeq": 7'))), /checksum/],
      ['a short partition', (fs, dir) => rewrite(fs, `${dir}/partition-1.log`, Buffer.alloc(4096)), /4096 bytes, the superblock says/],
      ['no superblock', (fs, dir) => fs.unlink(`${dir}/superblock.json`), /superblock\.json is missing/],
      ['a log of another volume', (fs, dir) => rewrite(fs, `${dir}/superblock.json`, Buffer.from(fs.readFile(`${dir}/superblock.json`).toString().replace(/"volumeUuid": "[^"]*"/, '"volumeUuid": "x"'))), /log of volume|checksum/],
    ];
    for (const [what, damage, problem] of damages) {
      const fs = await stateAfter(async (built) => {
        const opened = await open(built, 'secondary');
        await opened.volume.close();
        damage(built, `${DATA_B}/peers/a/v1`);
      });
      const opened = await open(fs, 'secondary');
      try {
        const warning = opened.warnings.find((record) => String(record['msg']).startsWith('per-source log damaged'));
        assert.match(String(warning?.['problem']), problem, what);
        assert.equal(opened.volume.log.status().needsFullResync, true, what);
      } finally {
        await opened.volume.close();
        fs.dispose();
      }
    }
    const fs = await stateAfter(async (built) => {
      const opened = await open(built, 'secondary');
      await opened.volume.close();
      built.rename(`${DATA_B}/peers/a/v1`, `${DATA_B}/elsewhere`);
    });
    const opened = await open(fs, 'secondary');
    try {
      assert.ok(opened.warnings.some((record) => String(record['msg']).startsWith('per-source log missing')), 'a missing log is reported');
      assert.equal(opened.volume.log.status().needsFullResync, true);
    } finally {
      await opened.volume.close();
      fs.dispose();
    }
  });

  test('a primary\'s damaged log stops the start with ERR_LOG_CORRUPT, says what to do, and changes nothing', async () => {
    const fs = await stateAfter(async (built) => {
      const opened = await open(built, 'primary');
      await writeDurably(opened, 3, 9);
      await opened.volume.close();
      built.unlink(`${DATA_A}/log/v1/partition-1.log`);
    });
    const treeBefore = tree(fs, '/');
    await assert.rejects(open(fs, 'primary'), (error: unknown) => {
      assert.ok(error instanceof LogCorruptError);
      assert.equal(error.code, 'ERR_LOG_CORRUPT');
      assert.match(error.message, /partition-1\.log is missing/);
      assert.match(error.message, /primary of volume v1/);
      assert.match(error.message, /move \/data-a\/log\/v1 aside/);
      return true;
    });
    assert.deepEqual(tree(fs, '/'), treeBefore, 'nothing on disk changed');
    fs.dispose();
  });

  test("the epoch history: made at the first start, made again for a volume that has none, a damaged one stops the start and changes nothing, and the history, not the cluster file, says the role", async () => {
    let written = new Map<number, Buffer>();
    const fs = await stateAfter(async (built) => {
      const opened = await open(built, 'primary');
      assert.deepEqual(opened.history.current, { epoch: 0, primary: 'a', firstSeq: 1 });
      written = await writeDurably(opened, 2, 5);
      await opened.volume.close();
    });
    const epochs = `${DATA_A}/volumes/v1.epochs.json`;
    assert.deepEqual(JSON.parse(fs.readFile(epochs).toString()), { epochs: [{ epoch: 0, primary: 'a', firstSeq: 1 }] });
    // A volume made before epoch histories were kept: no promotion can have happened.
    fs.unlink(epochs);
    fs.syncDir(`${DATA_A}/volumes`);
    const again = await open(fs, 'primary');
    assert.equal(again.history.current.primary, 'a');
    assert.equal(again.volume.replica.epoch, 0);
    await again.volume.close();
    assert.deepEqual(JSON.parse(fs.readFile(epochs).toString()).epochs, [{ epoch: 0, primary: 'a', firstSeq: 1 }]);

    const refused = async (contents: string, why: RegExp): Promise<void> => {
      rewrite(fs, epochs, Buffer.from(contents));
      const treeBefore = tree(fs, '/');
      await assert.rejects(open(fs, 'primary'), (error: unknown) => {
        assert.ok(error instanceof VolumeMismatchError, String(error));
        assert.equal(error.code, 'ERR_VOLUME_MISMATCH');
        assert.match(error.message, why);
        return true;
      });
      assert.deepEqual(tree(fs, '/'), treeBefore, 'nothing on disk changed');
    };
    await refused('{"epochs": [', /v1\.epochs\.json is damaged \(it is not JSON .*restore it from a backup of this node, or, if the volume was never promoted, remove it/);
    await refused('{"epochs": [{"epoch": 1, "primary": "a", "firstSeq": 1}, {"epoch": 0, "primary": "b", "firstSeq": 9}]}', /is damaged \(epoch 0 follows epoch 1\)/);
    await refused('{"epochs": [{"epoch": 0, "primary": "a", "firstSeq": 1}], "ended": "yes"}', /is damaged \("ended" is not true or false\)/);

    // a stepped down in epoch 0: it opens its own log as it stopped, and does not take writes.
    rewrite(fs, epochs, Buffer.from('{"epochs": [{"epoch": 0, "primary": "a", "firstSeq": 1}], "ended": true}'));
    const steppedDown = await open(fs, 'primary');
    assert.equal(steppedDown.role, 'secondary');
    assert.equal(steppedDown.volume.replica.role, 'secondary');
    assert.equal(steppedDown.logOptions.dir, `${DATA_A}/log/v1`);
    assert.equal(steppedDown.logOptions.replica, undefined, 'its own log, not a per-source one');
    await checkBlocks(steppedDown, written, 'a stepped-down copy keeps its blocks');
    await steppedDown.volume.close();

    // b was promoted in epoch 1, whatever the cluster file says: a follows it, from a per-source log of b's entries.
    rewrite(fs, epochs, Buffer.from('{"epochs": [{"epoch": 0, "primary": "a", "firstSeq": 1}, {"epoch": 1, "primary": "b", "firstSeq": 9}]}'));
    const follower = await open(fs, 'primary');
    assert.equal(follower.role, 'secondary');
    assert.equal(follower.volume.replica.epoch, 1);
    assert.equal(follower.logOptions.dir, `${DATA_A}/peers/b/v1`);
    assert.deepEqual(follower.logOptions.replica, { deferApply: false });
    await follower.volume.close();
    fs.dispose();
  });
});

/** A header for an entry the primary sends (what a replica's log stores). */
function entryHeader(seq: number, offset: number, payload: Buffer): EntryHeader {
  const fields = { type: EntryType.WRITE, flags: 0, logId: 1, volumeId: 1, seq, durableSeq: seq - 1, offset, lengthBytes: payload.length, generation: 0, epoch: 0 };
  const header = decodeEntryHeader(encodeEntryHeader(fields, [payload]));
  assert.ok(typeof header !== 'string');
  return header;
}

/** A mirrored primary as the node composes it (the engine not started: its peer stays away). */
async function openMirrored(fs: MemoryFileSystem): Promise<{ opened: Opened; engine: MirrorEngine; mirrored: MirroredVolume }> {
  const replayed = new DirtyBitmap(SIZE, REGION);
  const lines: string[] = [];
  const options = storageOptions(fs, 'primary', GEOMETRY, lines);
  const opened = await openVolumeStorage({ ...options, replayed });
  let mirrored: MirroredVolume;
  try {
    mirrored = mirrorPrimary(opened.volume, {
      cluster,
      local: cluster.nodes[0]!,
      volume: volumeConfig,
      recoveredSeq: opened.recovery.lastSeq,
      replayed,
      log: options.log,
      counters: { peerProtocolErrors: 0 },
      available: () => false,
      files: options.files,
    });
  } catch (error) {
    await opened.volume.close();
    throw error;
  }
  return { opened: { ...opened, warnings: [] }, engine: mirrored.engine, mirrored };
}

function rewrite(fs: MemoryFileSystem, file: string, contents: Buffer): void {
  const fd = fs.create(file);
  fs.write(fd, contents, 0);
  fs.syncData(fd);
  fs.close(fd);
}

/** Every path under `dir` with its bytes' length and a checksum (to see that nothing changed). */
function tree(fs: MemoryFileSystem, dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of fs.readdir(dir)) {
    const full = dir === '/' ? `/${name}` : `${dir}/${name}`;
    if (fs.stat(full)?.kind === 'directory') Object.assign(out, tree(fs, full));
    else out[full] = fs.readFile(full).toString('base64');
  }
  return out;
}

// ---- role changes ------------------------------------------------------------------------

type Mode = 'sync' | 'logship';

interface NodeAt {
  id: string;
  dataDir: string;
}

const NODE_A: NodeAt = { id: 'a', dataDir: DATA_A };
const NODE_B: NodeAt = { id: 'b', dataDir: DATA_B };

/** The volume opened as node `node` opens it at start, in `mode`. */
async function openAt(fs: MemoryFileSystem, node: NodeAt, mode: Mode): Promise<Opened> {
  const lines: string[] = [];
  const opened = await openVolumeStorage({
    ...storageOptions(fs, 'primary', GEOMETRY, lines),
    dataDir: node.dataDir,
    nodeId: node.id,
    config: { ...volumeConfig, mode },
  });
  return { ...opened, warnings: lines.map((line) => JSON.parse(line) as Record<string, unknown>) };
}

/**
 * b, a secondary of a, that received entries 1..count (each to a block of its own, held
 * in its log only when logship) and made them durable in its log, then stopped.
 */
async function replicaWithEntries(mode: Mode, count: number): Promise<{ before: MemoryFileSystem; held: Map<number, Buffer>; offsets: Map<number, number> }> {
  const held = new Map<number, Buffer>();
  const offsets = new Map<number, number>();
  const before = await stateAfter(async (fs) => {
    const opened = await openAt(fs, NODE_B, mode);
    for (let seq = 1; seq <= count; seq += 1) {
      const bytes = pattern(BLOCK, 600 + seq);
      const offset = seq * 3 * BLOCK;
      await opened.volume.replicate(entryHeader(seq, offset, bytes), bytes, mode !== 'logship');
      held.set(offset, bytes);
      offsets.set(seq, offset);
    }
    await opened.volume.log.syncTo(count);
    await opened.volume.close();
  });
  return { before, held, offsets };
}

/**
 * A logship copy first hears of its primary's consistency point after entry 4 and does
 * what ReplicaTarget does with it (applies the entries through it, takes one of its own):
 * so the image is synced once in the run before the change applies the rest. (The
 * simulated file system keeps every byte written to the image until its first sync in a
 * run, so without one the exploration could not see the change's own consistency point
 * go missing.)
 */
async function primaryCheckpointArrives(opened: OpenedVolume, mode: Mode): Promise<void> {
  if (mode !== 'logship') return;
  await opened.volume.applyLoggedThrough(4);
  opened.volume.log.primaryCheckpointed(4);
  await opened.volume.checkpoint();
}

/** How a volume stands on a node: its role, its history, the log it has and the last entry there. */
interface Standing {
  role: Role;
  history: EpochHistory;
  dir: string;
  /** A per-source log (a replica's), not its own. */
  replicaLog: boolean;
  /** The last entry in its log at start (at least this one when a start may add its consistency point's marker). */
  lastSeq: number | { atLeast: number };
}

interface RoleChangeExploration {
  before: MemoryFileSystem;
  seed: number;
  node: NodeAt;
  mode: Mode;
  /** Every block the volume held before the change. */
  held: Map<number, Buffer>;
  old: Standing;
  new: Standing;
  /** A start, the change as VolumeRoles makes it (its commit writing the new history), a clean close. */
  change: (fs: MemoryFileSystem) => Promise<void>;
  /** What else the volume must show, started in either standing. */
  also?: (opened: Opened, standing: 'old' | 'new', where: string) => void;
  /** In the new standing: the volume goes on working. */
  goesOn?: (fs: MemoryFileSystem, where: string) => Promise<void>;
}

/** What a start found, in terms a Standing gives. */
function standingFound(opened: OpenedVolume): Record<string, unknown> {
  return {
    role: opened.role,
    volumeRole: opened.volume.replica.role,
    epoch: opened.volume.replica.epoch,
    history: historyText(opened.history),
    volumeHistory: historyText(opened.volume.replica.history),
    dir: opened.logOptions.dir,
    replicaLog: opened.logOptions.replica !== undefined,
  };
}

function standingExpected(standing: Standing): Record<string, unknown> {
  return {
    role: standing.role,
    volumeRole: standing.role,
    epoch: standing.history.current.epoch,
    history: historyText(standing.history),
    volumeHistory: historyText(standing.history),
    dir: standing.dir,
    replicaLog: standing.replicaLog,
  };
}

function historyText(history: EpochHistory): string {
  return JSON.stringify({ epochs: history.starts, ended: history.ended });
}

/** A log directory, with what an interrupted install may leave beside it, as it is on disk. */
function leftOf(fs: MemoryFileSystem, dir: string): string {
  const found: Record<string, unknown> = {};
  for (const at of [dir, `${dir}.new`, `${dir}.old`]) {
    const kind = fs.stat(at)?.kind;
    if (kind !== undefined) found[at] = kind === 'directory' ? tree(fs, at) : fs.readFile(at).toString('base64');
  }
  return JSON.stringify(found);
}

/**
 * Starts the node from a state a crash of the change left, checks how the volume stands
 * (the old way or the new, whole, never a mix) and closes it; says which.
 */
async function checkRoleStart(fs: MemoryFileSystem, spec: RoleChangeExploration, where: string): Promise<'old' | 'new'> {
  const epochsFile = `${spec.node.dataDir}/volumes/v1.epochs.json`;
  const otherBefore = { old: leftOf(fs, spec.new.dir), new: leftOf(fs, spec.old.dir) };
  let opened: Opened;
  try {
    opened = await openAt(fs, spec.node, spec.mode);
  } catch (error) {
    throw new Error(`${where}: the node does not start: ${String(error)}`);
  }
  return releasing(async () => {
    const found = standingFound(opened);
    const standing = isDeepStrictEqual(found, standingExpected(spec.old)) ? 'old' : isDeepStrictEqual(found, standingExpected(spec.new)) ? 'new' : null;
    assert.ok(
      standing !== null,
      `${where}: the volume started as ${JSON.stringify(found)}, neither as before the change (${JSON.stringify(standingExpected(spec.old))}) nor as after it (${JSON.stringify(standingExpected(spec.new))})`,
    );
    const expected = spec[standing].lastSeq;
    const lastSeq = opened.volume.log.lastSeq;
    assert.ok(typeof expected === 'number' ? lastSeq === expected : lastSeq >= expected.atLeast, `${where}: its log's last entry is ${lastSeq}, not ${JSON.stringify(expected)}`);
    assert.equal(historyText(parseHistoryFile(fs.readFile(epochsFile))), historyText(opened.history), `${where}: the start's history is not the file's`);
    assert.equal(opened.logOptions.dir, logDir(spec.node.dataDir, 'v1', opened.history, spec.node.id), `${where}: the log opened is not the one the history names`);
    assert.equal(opened.setAside, null, `${where}: a log was set aside`);
    assert.equal(opened.volume.log.status().needsFullResync, false, `${where}: a crash during a role change must not cost a full resync`);
    for (const beside of [`${opened.logOptions.dir}.new`, `${opened.logOptions.dir}.old`]) assert.equal(fs.stat(beside), null, `${where}: ${beside} is left after the start`);
    // The other standing's log directory, if any is left, is neither read nor changed by the start.
    const other = standing === 'old' ? spec.new.dir : spec.old.dir;
    assert.equal(leftOf(fs, other), otherBefore[standing], `${where}: the start changed ${other}, the log of the standing it is not in`);
    // A logship copy's held entries are in its log, not its image: applied here as a promotion would.
    if (opened.logOptions.replica?.deferApply === true) await opened.volume.applyLoggedThrough(opened.volume.log.lastSeq);
    await checkBlocks(opened, spec.held, `${where} (${standing} standing)`);
    spec.also?.(opened, standing, where);
    return standing;
  }, () => opened.volume.close());
}

function parseHistoryFile(data: Buffer): EpochHistory {
  const parsed = parseEpochHistory(data);
  assert.ok(parsed instanceof EpochHistory, `the epoch history file is damaged: ${JSON.stringify(parsed)}`);
  return parsed;
}

/** Explores the crashes of a role change (see RoleChangeExploration); every state's start is checked by checkRoleStart. */
async function exploreRoleChange(spec: RoleChangeExploration): Promise<void> {
  const seen = { old: 0, new: 0, leftOver: 0 };
  const report = await exploreCrashes({
    before: spec.before,
    seed: spec.seed,
    operation: spec.change,
    check: async (fs, where) => {
      const other = [leftOf(fs, spec.new.dir), leftOf(fs, spec.old.dir)];
      const standing = await checkRoleStart(fs, spec, where);
      seen[standing] += 1;
      if ((standing === 'old' ? other[0] : other[1]) !== '{}') seen.leftOver += 1;
      if (standing === 'old') {
        // Made again from here, the change replaces what the crash left of the new log.
        try {
          await spec.change(fs);
        } catch (error) {
          throw new Error(`${where}: the change made again from the old standing fails: ${String(error)}`);
        }
      }
      const again = standing === 'old' ? `${where} (the change made again)` : `${where} (second start)`;
      assert.equal(await checkRoleStart(fs, spec, again), 'new', `${again}: not in the new standing`);
      await spec.goesOn?.(fs, again);
    },
  });
  console.log(`  ${seen.old} states in the old standing (each then made the change again), ${seen.new} in the new one; ${seen.leftOver} with the other standing's log directory left`);
  assert.equal(seen.old + seen.new, report.states);
  assert.ok(seen.old > 0 && seen.new > 1, 'crashes fall both before and after the commit');
}

/** Whether `named` holds all of `extent`. */
function covers(named: readonly { offset: number; lengthBytes: number }[], extent: { offset: number; lengthBytes: number }): boolean {
  return named.some((have) => have.offset <= extent.offset && extent.offset + extent.lengthBytes <= have.offset + have.lengthBytes);
}
