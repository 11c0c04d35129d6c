// The LogSyncer port (src/io/log-syncer.ts), driven directly, with one suite for both of
// its implementations: the native syncer thread (native/log_syncer.c) over real files and
// its twin over the simulated file system (memory-log-syncer.ts). Each makes what was
// noted durable when somebody wants it, reports each sync on the event loop, covers
// entries noted while it synced with the next sync, syncs on the caller's turn when asked
// and idle, keeps the first failure for good (a failed fdatasync is never retried), and
// reports nothing after close.
//
// Then what only the thread has (a real fdatasync failing, its argument checks, keeping
// an idle process from exiting but not a busy one), and what only the twin has: the
// simulated file system loses a partition's bytes written since the syncer's last sync of
// it when it crashes, and a sync is a mutation at which a test can stop the world.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, test } from 'node:test';
import { NodeFileSystem, type FileSystem } from '../../src/io/file-system.js';
import { MemoryFileSystem, SimulatedCrash } from '../../src/io/memory-file-system.js';
import type { LogSyncer } from '../../src/io/log-syncer.js';
import { native, type SyncerHandle } from '../../src/io/native.js';
import { scratchDirs } from '../helpers/test-data.js';

const scratch = scratchDirs('blockmirror-syncer-');

function freshDir(): string {
  const dir = scratch();
  fs.mkdirSync(dir);
  return dir;
}

interface Report {
  durableSeq: number;
  syncs: number;
  error: Error | null;
}

/** A file system to hold partitions: a real directory, or the simulated file system. */
interface Place {
  fs: FileSystem;
  /** A new partition file of 4 KiB, opened for the data path. */
  partition(name: string): number;
  close(fd: number): void;
}

const places: { name: string; make: () => Place }[] = [
  {
    name: 'native thread over NodeFileSystem',
    make: () => {
      const dir = freshDir();
      const system = new NodeFileSystem();
      return {
        fs: system,
        partition: (name) => {
          const fd = fs.openSync(path.join(dir, name), 'w+');
          fs.writeSync(fd, Buffer.alloc(4096, 7), 0, 4096, 0);
          return fd;
        },
        close: (fd) => fs.closeSync(fd),
      };
    },
  },
  {
    name: 'twin over MemoryFileSystem',
    make: () => {
      const memory = new MemoryFileSystem();
      after(() => memory.dispose());
      return { fs: memory, partition: (name) => memoryPartition(memory, `/${name}`), close: (fd) => memory.close(fd) };
    },
  },
];

/** A 4 KiB partition in the simulated file system, durable with its name, opened as the log opens one. */
function memoryPartition(memory: MemoryFileSystem, file: string): number {
  const made = memory.create(file);
  memory.write(made, Buffer.alloc(4096, 7), 0);
  memory.syncData(made);
  memory.close(made);
  memory.syncDir('/');
  return memory.open(file, true);
}

/** A syncer whose reports are queued; `next()` waits for the next one. */
function openSyncer(system: FileSystem, fdsMax = 4, durableSeq = 0): { syncer: LogSyncer; next: () => Promise<Report>; reports: Report[] } {
  const reports: Report[] = [];
  let wake: (() => void) | null = null;
  const syncer = system.openSyncer(fdsMax, durableSeq, (durable, syncs, error) => {
    reports.push({ durableSeq: durable, syncs, error });
    wake?.();
  });
  let read = 0;
  const next = async (): Promise<Report> => {
    while (read === reports.length) await new Promise<void>((resolve) => (wake = resolve));
    wake = null;
    const report = reports[read];
    read += 1;
    assert(report !== undefined);
    return report;
  };
  return { syncer, next, reports };
}

/** Waits until `seq` is reported durable (reports may merge several syncs). */
async function durableThrough(next: () => Promise<Report>, seq: number): Promise<Report> {
  for (;;) {
    const report = await next();
    assert.equal(report.error, null);
    if (report.durableSeq >= seq) return report;
  }
}

/** Runs `body` with one partition in `place` and a syncer over it (opened with `durableSeq`), then closes both. */
async function withSyncer(
  place: { make: () => Place },
  body: (fd: number, opened: ReturnType<typeof openSyncer>) => Promise<void> | void,
  durableSeq = 0,
): Promise<void> {
  const at = place.make();
  const fd = at.partition('a');
  const opened = openSyncer(at.fs, 4, durableSeq);
  try {
    await body(fd, opened);
  } finally {
    opened.syncer.close();
    at.close(fd);
  }
}

for (const place of places) {
  describe(`log syncer: ${place.name}`, () => {
    test('a wanted seq that was noted becomes durable, and the report says so', () =>
      withSyncer(
        place,
        async (fd, { syncer, next }) => {
          assert.deepEqual(stateOf(syncer), [10, 0, null]);
          syncer.note(fd, 13);
          // Noted but not wanted: nothing to do yet.
          assert.deepEqual(stateOf(syncer), [10, 0, null]);
          syncer.want(13);
          const report = await next();
          assert.deepEqual(report, { durableSeq: 13, syncs: 1, error: null });
          assert.deepEqual(stateOf(syncer), [13, 1, null]);
        },
        10,
      ));

    test('a sync covers only what was noted before it; what is noted later goes with the next one', async () => {
      const at = place.make();
      const fds = [at.partition('a'), at.partition('b')];
      const { syncer, next } = openSyncer(at.fs, 2);
      try {
        syncer.note(fds[0]!, 1);
        // Wanted beyond what is written: the sync covers seq 1 only.
        syncer.want(3);
        const first = await durableThrough(next, 1);
        assert.equal(first.durableSeq, 1);
        // Written across both partitions, then wanted again.
        syncer.note(fds[0]!, 2);
        syncer.note(fds[1]!, 3);
        syncer.want(3);
        const second = await durableThrough(next, 3);
        assert.equal(second.durableSeq, 3);
        assert.ok(second.syncs >= 2 && second.syncs <= 3, `${second.syncs} syncs`);
      } finally {
        syncer.close();
        for (const fd of fds) at.close(fd);
      }
    });

    test('many wants while a sync runs are served by few syncs (group commit)', () =>
      withSyncer(
        place,
        async (fd, { syncer, next }) => {
          for (let seq = 1; seq <= 200; seq += 1) {
            fs.writeSync(fd, Buffer.alloc(512, seq), 0, 512, (seq % 8) * 512);
            syncer.note(fd, seq);
            syncer.want(seq);
          }
          const report = await durableThrough(next, 200);
          assert.equal(report.durableSeq, 200);
          // Each sync takes tens of microseconds; the 200 wants above take far less.
          assert.ok(report.syncs < 100, `${report.syncs} syncs for 200 wants`);
        },
      ));

    test('syncNow syncs on the caller\'s turn when no sync runs', () =>
      withSyncer(
        place,
        async (fd, { syncer, reports }) => {
          assert.equal(syncer.syncNow(), 0, 'nothing noted: durable as it was, no sync');
          assert.equal(stateOf(syncer)[1], 0);
          syncer.note(fd, 5);
          assert.equal(syncer.syncNow(), 5);
          assert.deepEqual(stateOf(syncer), [5, 1, null]);
          assert.equal(reports.length, 0, 'an inline sync is returned, not reported');
        },
      ));

    test('a failed sync is reported, kept, and never retried', () =>
      withSyncer(
        place,
        async (fd, { syncer, next }) => {
          syncer.note(fd, 1);
          syncer.want(1);
          await durableThrough(next, 1);
          syncer.failNext(os.constants.errno.EIO);
          syncer.note(fd, 2);
          syncer.want(2);
          const failed = await next();
          assert.equal(failed.durableSeq, 1, 'durability claimed by a failed sync');
          assert.equal(failed.syncs, 2);
          assert.ok(failed.error !== null);
          assert.equal((failed.error as NodeJS.ErrnoException).code, 'EIO');
          assert.equal((failed.error as NodeJS.ErrnoException).syscall, 'fdatasync');
          // Later wants start no sync, and an inline one throws the same error.
          syncer.note(fd, 3);
          syncer.want(3);
          assert.throws(() => syncer.syncNow(), { code: 'EIO', syscall: 'fdatasync' });
          const [durableSeq, syncs, error] = stateOf(syncer);
          assert.equal(durableSeq, 1);
          assert.equal(syncs, 2);
          assert.match(String(error), /EIO/);
        },
      ));

    test('after close a wanted sync is not reported', async () => {
      const at = place.make();
      const fd = at.partition('a');
      const { syncer, reports } = openSyncer(at.fs);
      syncer.note(fd, 1);
      syncer.want(1);
      syncer.close();
      const [durableSeq] = stateOf(syncer);
      assert.ok(durableSeq === 0 || durableSeq === 1);
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(reports.length, 0);
      at.close(fd);
    });
  });
}

/** [durableSeq, syncs, error]: the state as one value to compare. */
function stateOf(syncer: LogSyncer): [number, number, Error | null] {
  const { durableSeq, syncs, error } = syncer.state();
  return [durableSeq, syncs, error];
}

function fileFd(name: string): number {
  const fd = fs.openSync(path.join(freshDir(), name), 'w+');
  fs.writeSync(fd, Buffer.alloc(4096, 7), 0, 4096, 0);
  return fd;
}

describe('log syncer: only the native thread', () => {
  test('fdatasync failing for real (a pipe cannot be synced) fails the same way', async () => {
    const [readEnd, writeEnd] = pipeFds();
    const { syncer, next } = openSyncer(new NodeFileSystem());
    try {
      syncer.note(writeEnd, 1);
      syncer.want(1);
      const report = await next();
      assert.equal(report.durableSeq, 0);
      assert.equal((report.error as NodeJS.ErrnoException | null)?.code, 'EINVAL');
    } finally {
      syncer.close();
      fs.closeSync(readEnd);
      fs.closeSync(writeEnd);
    }
  });

  test('bad arguments are refused and change nothing', () => {
    const fd = fileFd('a');
    const fd2 = fileFd('b');
    const syncer = native.syncerOpen(1, 0, () => undefined);
    try {
      const noop = (): void => undefined;
      assert.throws(() => native.syncerOpen(0, 0, noop), TypeError);
      assert.throws(() => native.syncerOpen(2, -1, noop), TypeError);
      assert.throws(() => native.syncerOpen(2, 0.5, noop), TypeError);
      assert.throws(() => native.syncerOpen(2, 0, 'callback' as never), TypeError);
      assert.throws(() => native.syncerNote({} as SyncerHandle, fd, 1), TypeError);
      assert.throws(() => native.syncerNote(syncer, -1, 1), TypeError);
      assert.throws(() => native.syncerNote(syncer, fd, 1.5), TypeError);
      assert.throws(() => native.syncerWant(syncer, -2), TypeError);
      assert.throws(() => native.syncerFailNext(syncer, 0), TypeError);
      native.syncerNote(syncer, fd, 1);
      // Opened for one partition between syncs: a second is refused, and not noted.
      assert.throws(() => native.syncerNote(syncer, fd2, 2), RangeError);
      assert.equal(native.syncerSyncNow(syncer), 1);
      assert.deepEqual(native.syncerState(syncer), [1, 1, null]);
    } finally {
      native.syncerClose(syncer);
      native.syncerClose(syncer);
      fs.closeSync(fd);
      fs.closeSync(fd2);
    }
  });

  test('an idle syncer does not keep the process alive; a wanted sync does until it is done', () => {
    const addon = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../build/Release/blockmirror_native.node');
    const file = path.join(freshDir(), 'f');
    const script = `
      const native = require(${JSON.stringify(addon)});
      const fd = require('node:fs').openSync(${JSON.stringify(file)}, 'w+');
      const idle = native.syncerOpen(1, 0, () => { throw new Error('idle syncer reported'); });
      const busy = native.syncerOpen(1, 0, (durable) => console.log('durable', durable));
      native.syncerNote(busy, fd, 4);
      native.syncerWant(busy, 4);
    `;
    const started = Date.now();
    const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(child.status, 0, child.stderr);
    assert.equal(child.stdout.trim(), 'durable 4');
    assert.ok(Date.now() - started < 10_000);
  });

  test('a sync whose report is queued keeps the process alive until the report arrives, though the want that follows it is met already', () => {
    const addon = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../build/Release/blockmirror_native.node');
    const file = path.join(freshDir(), 'f');
    // The thread syncs 4 and queues its report; before the report runs, the same seq is
    // wanted again (a flush after a sync ahead): met already, so nothing more is asked of
    // the thread, but the report must still come, with nothing else keeping the loop alive.
    const script = `
      const native = require(${JSON.stringify(addon)});
      const fd = require('node:fs').openSync(${JSON.stringify(file)}, 'w+');
      const syncer = native.syncerOpen(1, 0, (durable) => console.log('durable', durable));
      native.syncerNote(syncer, fd, 4);
      native.syncerWant(syncer, 4);
      const deadline = Date.now() + 10000;
      while (native.syncerState(syncer)[0] < 4 && Date.now() < deadline) {}
      native.syncerWant(syncer, 4);
    `;
    const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(child.status, 0, child.stderr);
    assert.equal(child.stdout.trim(), 'durable 4', 'the queued report arrived');
  });

});

/** Runs `body` over a new simulated file system, then disposes of it. */
async function inMemory(body: (memory: MemoryFileSystem) => Promise<void> | void): Promise<void> {
  const memory = new MemoryFileSystem();
  try {
    await body(memory);
  } finally {
    memory.dispose();
  }
}

describe('log syncer: only the twin', () => {
  test('a crash loses what the log wrote to a partition since the last sync of it, and keeps what a sync made durable', () =>
    inMemory(async (memory) => {
      const fd = memoryPartition(memory, '/part-0');
      const { syncer, next } = openSyncer(memory);
      fs.writeSync(fd, Buffer.alloc(512, 1), 0, 512, 0);
      syncer.note(fd, 1);
      assert.deepEqual(memory.crashChanges(), ['bytes of /part-0']);
      const lost = memory.afterCrash(() => false);
      const kept = memory.afterCrash(() => true);
      assert.ok(lost.readFile('/part-0').equals(Buffer.alloc(4096, 7)), 'unsynced bytes survived a crash that lost them');
      assert.equal(kept.readFile('/part-0')[0], 1);
      lost.dispose();
      kept.dispose();
      syncer.want(1);
      await durableThrough(next, 1);
      assert.deepEqual(memory.crashChanges(), [], 'nothing left to chance after the sync');
      const after = memory.afterCrash(() => false);
      assert.equal(after.readFile('/part-0')[0], 1, 'synced bytes lost');
      after.dispose();
      syncer.close();
      memory.close(fd);
    }));

  test('a file opened for the data path and never noted keeps its bytes as they are (the volume image)', () =>
    inMemory((memory) => {
      const fd = memoryPartition(memory, '/image');
      fs.writeSync(fd, Buffer.alloc(512, 3), 0, 512, 0);
      assert.deepEqual(memory.crashChanges(), []);
      const after = memory.afterCrash(() => false);
      assert.equal(after.readFile('/image')[0], 3);
      after.dispose();
      memory.close(fd);
    }));

  test('a sync is a mutation: the world stopped at it fails the sync, and the report carries the crash', () =>
    inMemory(async (memory) => {
      const fd = memoryPartition(memory, '/part-0');
      const { syncer, next } = openSyncer(memory);
      fs.writeSync(fd, Buffer.alloc(512, 1), 0, 512, 0);
      syncer.note(fd, 1);
      memory.stopAfter(memory.mutations + 1);
      syncer.want(1);
      const report = await next();
      assert.ok(report.error instanceof SimulatedCrash, String(report.error));
      assert.equal(report.durableSeq, 0);
      assert.ok(memory.crashed);
      syncer.close();
      memory.close(fd);
    }));

  test('bad arguments are refused as the thread refuses them', () =>
    inMemory((memory) => {
      const noop = (): void => undefined;
      assert.throws(() => memory.openSyncer(0, 0, noop), TypeError);
      assert.throws(() => memory.openSyncer(2, -1, noop), TypeError);
      assert.throws(() => memory.openSyncer(2, 0.5, noop), TypeError);
      const syncer = memory.openSyncer(1, 0, noop);
      assert.throws(() => syncer.failNext(0), TypeError);
      const first = memoryPartition(memory, '/a');
      const second = memoryPartition(memory, '/b');
      syncer.note(first, 1);
      assert.throws(() => syncer.note(second, 2), RangeError);
      assert.equal(syncer.syncNow(), 1);
      assert.deepEqual(stateOf(syncer), [1, 1, null]);
      syncer.close();
      memory.close(first);
      memory.close(second);
    }));
});

function pipeFds(): [number, number] {
  // A FIFO opened read-write gives both ends without node's stream wrappers.
  const fifo = path.join(freshDir(), 'fifo');
  const made = spawnSync('mkfifo', [fifo]);
  assert.equal(made.status, 0, String(made.stderr));
  const readEnd = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  const writeEnd = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
  return [readEnd, writeEnd];
}
