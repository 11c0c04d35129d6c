// Where file writes run (IoActivity): small writes on the event loop whatever else is in
// flight, large ones on the thread pool, and small ones on the pool for a while after an
// inline write was slow, unless their request is alone. What is checked is what a
// caller can see: whether the bytes are in the file when writevAt returns (inline) or
// only once its promise settles (pool), the pool counter, and the bytes read back.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { IoActivity, writevAt } from '../../src/io/file-io.js';
import { pattern, scratchDirs } from '../helpers/test-data.js';

const KiB = 1024;
const scratch = scratchDirs('blockmirror-file-io-');

function scratchFile(bytes: number): { fd: number; file: string } {
  const dir = scratch();
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(bytes));
  return { fd: fs.openSync(file, 'r+'), file };
}

function readAt(fd: number, offset: number, length: number): Buffer {
  const buffer = Buffer.alloc(length);
  assert.equal(fs.readSync(fd, buffer, 0, length, offset), length);
  return buffer;
}

/** Other requests in flight: not alone. */
function busy(activity: IoActivity): void {
  activity.requests = 5;
}

test('a small write runs inline while other requests are in flight; a large one goes to the pool', async () => {
  const { fd } = scratchFile(1024 * KiB);
  const activity = new IoActivity();
  busy(activity);
  try {
    const small = [pattern(4 * KiB, 1), pattern(4 * KiB, 2)];
    const written = writevAt(fd, small, 8 * KiB, activity, 64 * KiB);
    // Inline: the bytes are in the file before the promise is even awaited.
    assert.equal(activity.pending, 0);
    assert.deepEqual(readAt(fd, 8 * KiB, 8 * KiB), Buffer.concat(small));
    await written;

    const large = pattern(128 * KiB, 3);
    const pooled = writevAt(fd, [large], 256 * KiB, activity, 64 * KiB);
    assert.equal(activity.pending, 1, 'a write above the inline size is a pool operation');
    await pooled;
    assert.equal(activity.pending, 0);
    assert.deepEqual(readAt(fd, 256 * KiB, 128 * KiB), large);
    assert.equal(activity.slowWrites, 0);
  } finally {
    fs.closeSync(fd);
  }
});

test('after a slow inline write, small writes go to the pool for the back-off unless alone', async () => {
  const { fd } = scratchFile(256 * KiB);
  // Every inline write counts as slow (it takes more than -1 ms); the back-off is 150 ms.
  const activity = new IoActivity(-1, 150);
  try {
    busy(activity);
    await writevAt(fd, [pattern(4 * KiB, 4)], 0, activity, 64 * KiB);
    assert.equal(activity.slowWrites, 1);
    assert.equal(activity.writeInline(4 * KiB, 64 * KiB), false);

    const next = pattern(4 * KiB, 5);
    const pooled = writevAt(fd, [next], 4 * KiB, activity, 64 * KiB);
    assert.equal(activity.pending, 1, 'during the back-off a small write is a pool operation');
    await pooled;
    assert.deepEqual(readAt(fd, 4 * KiB, 4 * KiB), next);
    assert.equal(activity.slowWrites, 1, 'pool writes are not timed');

    // A request alone has nobody to stall: inline even during the back-off.
    activity.requests = 1;
    assert.equal(activity.writeInline(4 * KiB, 64 * KiB), true);
    busy(activity);

    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(activity.writeInline(4 * KiB, 64 * KiB), true, 'inline again after the back-off');
    assert.equal(activity.writeInline(128 * KiB, 64 * KiB), false);
  } finally {
    fs.closeSync(fd);
  }
});

test('an inline write that fails rejects its promise and changes nothing after it', async () => {
  const { fd, file } = scratchFile(64 * KiB);
  fs.closeSync(fd);
  const readOnly = fs.openSync(file, 'r');
  const activity = new IoActivity();
  try {
    await assert.rejects(writevAt(readOnly, [pattern(4 * KiB, 6)], 0, activity, 64 * KiB), { code: 'EBADF' });
    assert.equal(activity.pending, 0);
    assert.deepEqual(readAt(readOnly, 0, 4 * KiB), Buffer.alloc(4 * KiB));
  } finally {
    fs.closeSync(readOnly);
  }
});
