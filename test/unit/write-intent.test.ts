// The write-intent record of a mirrored primary (src/storage/write-intent.ts): a write to
// an extent not in the record waits until the record holds it durably (one file write for
// all that join in a turn); later writes there go at once; an extent leaves the record at
// a consistency point once it went unwritten for a whole interval and its entries are
// durable; and what a run left is read back at the next start.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { WriteIntent } from '../../src/storage/write-intent.js';
import { DurableFiles } from '../../src/storage/durable-files.js';

const files = new DurableFiles();

const MiB = 1024 * 1024;
const EXTENT = 4 * MiB;
const SIZE = 64 * MiB;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockmirror-intent-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function onDisk(file: string): number[] {
  const loaded = WriteIntent.load(files, file, SIZE, EXTENT);
  assert.ok(loaded?.readable === true);
  const extents: number[] = [];
  for (let extent = loaded.extents.nextDirty(0); extent !== -1; extent = loaded.extents.nextDirty(extent + 1)) extents.push(extent);
  return extents;
}

test('a write to a new extent waits for the durable record; one file write for the extents of a turn; later writes go at once', async () => {
  const file = path.join(dir, 'a.intent');
  const intent = new WriteIntent(files, file, SIZE, EXTENT);
  assert.deepEqual(onDisk(file), [], 'a fresh record is empty');
  const writesBefore = intent.writes;
  const first = intent.intend(0, 4096, 1);
  const spanning = intent.intend(2 * EXTENT - 512, 1024, 2);
  const again = intent.intend(4096, 4096, 3);
  assert.ok(first !== null && spanning !== null && again !== null, 'writes to extents not yet durable in the record wait');
  assert.deepEqual(onDisk(file), [], 'nothing written before the turn ends');
  await Promise.all([first, spanning, again]);
  assert.deepEqual(onDisk(file), [0, 1, 2], 'the extents the writes touch (one write spans 1 and 2), durable before the writes go');
  assert.equal(intent.writes - writesBefore, 1, 'one file write for the turn');
  assert.equal(intent.intend(100, 100, 4), null, 'an extent in the durable record: at once');
});

test('an extent leaves the record after an interval without writes, once its entries are durable', async () => {
  const file = path.join(dir, 'b.intent');
  const intent = new WriteIntent(files, file, SIZE, EXTENT);
  await intent.intend(0, 4096, 10);
  await intent.intend(8 * EXTENT, 4096, 11);
  intent.cool(11);
  assert.deepEqual(onDisk(file), [0, 8], 'written since the last consistency point: kept');
  assert.equal(intent.intend(8 * EXTENT, 4096, 12), null);
  intent.cool(11);
  assert.deepEqual(onDisk(file), [8], 'extent 0 unwritten for an interval and durable: gone; extent 8 written again: kept');
  intent.cool(11);
  assert.deepEqual(onDisk(file), [8], 'its entry 12 is not durable yet');
  intent.cool(12);
  assert.deepEqual(onDisk(file), []);
  assert.equal(intent.extents, 0);
});

test('a damaged record counts as every extent; no file, no record', () => {
  const file = path.join(dir, 'c.intent');
  new WriteIntent(files, file, SIZE, EXTENT);
  const bytes = fs.readFileSync(file);
  bytes[bytes.length - 1] = (bytes[bytes.length - 1] ?? 0) ^ 1;
  fs.writeFileSync(file, bytes);
  const loaded = WriteIntent.load(files, file, SIZE, EXTENT);
  assert.equal(loaded?.readable, false);
  assert.equal(loaded?.extents.dirtyRegions, SIZE / EXTENT);
  assert.equal(WriteIntent.load(files, path.join(dir, 'none.intent'), SIZE, EXTENT), null);
});
