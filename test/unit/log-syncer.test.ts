// The write log's syncer thread (native/log_syncer.c), driven directly: it makes what was
// noted durable when somebody wants it, reports each sync on the event loop, covers
// entries noted while it synced with the next sync, syncs on the caller's thread when
// asked and idle, keeps the first failure for good (a failed fdatasync is never retried),
// refuses bad arguments without changing anything, and neither keeps an idle process
// alive nor lets it exit before a queued report arrives, nor calls back after close.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';
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

/** A syncer whose reports are queued; `next()` waits for the next one. */
function openSyncer(fdsMax = 4, durableSeq = 0): { syncer: SyncerHandle; next: () => Promise<Report>; reports: Report[] } {
  const reports: Report[] = [];
  let wake: (() => void) | null = null;
  const syncer = native.syncerOpen(fdsMax, durableSeq, (durable, syncs, error) => {
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

function fileFd(name: string): number {
  const fd = fs.openSync(path.join(freshDir(), name), 'w+');
  fs.writeSync(fd, Buffer.alloc(4096, 7), 0, 4096, 0);
  return fd;
}

/** Waits until `seq` is reported durable (reports may merge several syncs). */
async function durableThrough(next: () => Promise<Report>, seq: number): Promise<Report> {
  for (;;) {
    const report = await next();
    assert.equal(report.error, null);
    if (report.durableSeq >= seq) return report;
  }
}

describe('log syncer', () => {
  test('a wanted seq that was noted becomes durable, and the report says so', async () => {
    const fd = fileFd('a');
    const { syncer, next } = openSyncer(4, 10);
    try {
      assert.deepEqual(native.syncerState(syncer), [10, 0, null]);
      native.syncerNote(syncer, fd, 13);
      // Noted but not wanted: nothing to do yet.
      assert.deepEqual(native.syncerState(syncer), [10, 0, null]);
      native.syncerWant(syncer, 13);
      const report = await next();
      assert.deepEqual(report, { durableSeq: 13, syncs: 1, error: null });
      assert.deepEqual(native.syncerState(syncer), [13, 1, null]);
    } finally {
      native.syncerClose(syncer);
      fs.closeSync(fd);
    }
  });

  test('a sync covers only what was noted before it; what is noted later goes with the next one', async () => {
    const fds = [fileFd('a'), fileFd('b')];
    const { syncer, next } = openSyncer(2);
    try {
      native.syncerNote(syncer, fds[0]!, 1);
      // Wanted beyond what is written: the sync covers seq 1 only.
      native.syncerWant(syncer, 3);
      const first = await durableThrough(next, 1);
      assert.equal(first.durableSeq, 1);
      // Written across both partitions, then wanted again.
      native.syncerNote(syncer, fds[0]!, 2);
      native.syncerNote(syncer, fds[1]!, 3);
      native.syncerWant(syncer, 3);
      const second = await durableThrough(next, 3);
      assert.equal(second.durableSeq, 3);
      assert.ok(second.syncs >= 2 && second.syncs <= 3, `${second.syncs} syncs`);
    } finally {
      native.syncerClose(syncer);
      for (const fd of fds) fs.closeSync(fd);
    }
  });

  test('many wants while the thread syncs are served by few syncs (group commit)', async () => {
    const fd = fileFd('a');
    const { syncer, next } = openSyncer();
    try {
      for (let seq = 1; seq <= 200; seq += 1) {
        fs.writeSync(fd, Buffer.alloc(512, seq), 0, 512, (seq % 8) * 512);
        native.syncerNote(syncer, fd, seq);
        native.syncerWant(syncer, seq);
      }
      const report = await durableThrough(next, 200);
      assert.equal(report.durableSeq, 200);
      // Each sync takes tens of microseconds; the 200 wants above take far less.
      assert.ok(report.syncs < 100, `${report.syncs} syncs for 200 wants`);
    } finally {
      native.syncerClose(syncer);
      fs.closeSync(fd);
    }
  });

  test('syncNow syncs on the calling thread when the syncer is idle', () => {
    const fd = fileFd('a');
    const { syncer, reports } = openSyncer();
    try {
      assert.equal(native.syncerSyncNow(syncer), 0, 'nothing noted: durable as it was, no sync');
      assert.equal(native.syncerState(syncer)[1], 0);
      native.syncerNote(syncer, fd, 5);
      assert.equal(native.syncerSyncNow(syncer), 5);
      assert.deepEqual(native.syncerState(syncer), [5, 1, null]);
      assert.equal(reports.length, 0, 'an inline sync is returned, not reported');
    } finally {
      native.syncerClose(syncer);
      fs.closeSync(fd);
    }
  });

  test('a failed sync is reported, kept, and never retried', async () => {
    const fd = fileFd('a');
    const { syncer, next } = openSyncer();
    try {
      native.syncerNote(syncer, fd, 1);
      native.syncerWant(syncer, 1);
      await durableThrough(next, 1);
      native.syncerFailNext(syncer, os.constants.errno.EIO);
      native.syncerNote(syncer, fd, 2);
      native.syncerWant(syncer, 2);
      const failed = await next();
      assert.equal(failed.durableSeq, 1, 'durability claimed by a failed sync');
      assert.equal(failed.syncs, 2);
      assert.ok(failed.error !== null);
      assert.equal((failed.error as NodeJS.ErrnoException).code, 'EIO');
      assert.equal((failed.error as NodeJS.ErrnoException).syscall, 'fdatasync');
      // Later wants start no sync, and an inline one throws the same error.
      native.syncerNote(syncer, fd, 3);
      native.syncerWant(syncer, 3);
      assert.throws(() => native.syncerSyncNow(syncer), { code: 'EIO', syscall: 'fdatasync' });
      const [durableSeq, syncs, error] = native.syncerState(syncer);
      assert.equal(durableSeq, 1);
      assert.equal(syncs, 2);
      assert.match(String(error), /EIO/);
    } finally {
      native.syncerClose(syncer);
      fs.closeSync(fd);
    }
  });

  test('fdatasync failing for real (a pipe cannot be synced) fails the same way', async () => {
    const [readEnd, writeEnd] = pipeFds();
    const { syncer, next } = openSyncer();
    try {
      native.syncerNote(syncer, writeEnd, 1);
      native.syncerWant(syncer, 1);
      const report = await next();
      assert.equal(report.durableSeq, 0);
      assert.equal((report.error as NodeJS.ErrnoException | null)?.code, 'EINVAL');
    } finally {
      native.syncerClose(syncer);
      fs.closeSync(readEnd);
      fs.closeSync(writeEnd);
    }
  });

  test('bad arguments are refused and change nothing', () => {
    const fd = fileFd('a');
    const fd2 = fileFd('b');
    const { syncer } = openSyncer(1);
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

  test('after close a wanted sync is not reported', async () => {
    const fd = fileFd('a');
    const { syncer, reports } = openSyncer();
    native.syncerNote(syncer, fd, 1);
    native.syncerWant(syncer, 1);
    native.syncerClose(syncer);
    const [durableSeq] = native.syncerState(syncer);
    assert.ok(durableSeq === 0 || durableSeq === 1);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(reports.length, 0);
    fs.closeSync(fd);
  });
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
