// A replica's record of where its entries since the primary's last consistency point
// landed (src/core/replica-trail.ts): what it names for a primary that lost entries,
// how the primary's consistency points shorten it, and how it survives a restart — or,
// when its file is damaged or it grew past its bound, that it names every region rather
// than too few.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { ReplicaTrail, trailEntriesMax } from '../../src/core/replica-trail.js';
import { DurableFiles } from '../../src/storage/durable-files.js';

const files = new DurableFiles();

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockmirror-trail-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function filled(): ReplicaTrail {
  const trail = new ReplicaTrail();
  trail.add(1, 0, 4096);
  trail.add(2, 65536, 4096);
  trail.add(3, 8192, 4096);
  trail.add(4, 4096, 4096);
  trail.add(5, 65536, 512);
  trail.add(6, 1 << 20, 1 << 20);
  return trail;
}

test('names the regions of the entries after a sequence number, sorted and merged where they touch', () => {
  const trail = filled();
  assert.deepEqual(trail.extentsAfter(2), [
    { offset: 4096, lengthBytes: 8192 },
    { offset: 65536, lengthBytes: 512 },
    { offset: 1 << 20, lengthBytes: 1 << 20 },
  ]);
  assert.deepEqual(trail.extentsAfter(0)?.[0], { offset: 0, lengthBytes: 12288 }, 'entries 1, 4 and 3 are one run');
  assert.deepEqual(trail.extentsAfter(6), []);
  trail.add(7, 0, 0);
  assert.equal(trail.entries, 6, 'an entry that changes no bytes is not recorded');
});

test("the primary's consistency point drops the entries up to it", () => {
  const trail = filled();
  trail.trimThrough(4);
  assert.equal(trail.entries, 2);
  assert.deepEqual(trail.extentsAfter(0), [
    { offset: 65536, lengthBytes: 512 },
    { offset: 1 << 20, lengthBytes: 1 << 20 },
  ]);
});

test('saved and loaded, it names the same regions; a missing file is an empty record', () => {
  const file = path.join(dir, 'trail-1');
  files.replaceFile(file, filled().encode(), 'trail');
  assert.deepEqual(ReplicaTrail.decode(files.read(file)).extentsAfter(2), filled().extentsAfter(2));
  assert.deepEqual(ReplicaTrail.decode(files.read(path.join(dir, 'none'))).extentsAfter(0), []);
});

test('a damaged or truncated file, or more entries than the bound, name every region (null)', () => {
  const file = path.join(dir, 'trail-2');
  files.replaceFile(file, filled().encode(), 'trail');
  const bytes = fs.readFileSync(file);
  for (const at of [0, 9, 20, bytes.length - 1]) {
    const damaged = Buffer.from(bytes);
    damaged[at] = (damaged[at] ?? 0) ^ 0x10;
    fs.writeFileSync(file, damaged);
    assert.equal(ReplicaTrail.decode(files.read(file)).extentsAfter(0), null, `byte ${at} flipped`);
  }
  fs.writeFileSync(file, bytes.subarray(0, bytes.length - 24));
  assert.equal(ReplicaTrail.decode(files.read(file)).extentsAfter(0), null, 'truncated');
  const big = new ReplicaTrail();
  for (let seq = 1; seq <= trailEntriesMax + 1; seq += 1) big.add(seq, 0, 4096);
  assert.equal(big.extentsAfter(0), null);
  files.replaceFile(file, big.encode(), 'trail');
  assert.equal(ReplicaTrail.decode(files.read(file)).extentsAfter(0), null, 'the overflow is remembered');
});

test("names kept across a reset are named at every later reset, until the primary's next consistency point", () => {
  const trail = filled();
  const named = trail.extentsAfter(2);
  trail.resetTo(named, 1 << 30);
  trail.add(20, 1 << 24, 4096);
  assert.deepEqual(trail.extentsAfter(19), [...(named ?? []), { offset: 1 << 24, lengthBytes: 4096 }]);
  assert.deepEqual(trail.extentsAfter(25), named, 'kept names whatever the sequence number asked about');
  const file = path.join(dir, 'trail-3');
  files.replaceFile(file, trail.encode(), 'trail');
  assert.deepEqual(ReplicaTrail.decode(files.read(file)).extentsAfter(25), named);
  trail.trimThrough(20);
  assert.deepEqual(trail.extentsAfter(0), []);
  // A reset after an overflow keeps "every region" as one name.
  trail.resetTo(null, 1 << 20);
  assert.deepEqual(trail.extentsAfter(5), [{ offset: 0, lengthBytes: 1 << 20 }]);
});
