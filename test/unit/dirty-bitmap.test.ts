// The per-peer dirty bitmap: marking ranges region by region, the bytes it stands for
// (the last region may be short), and its file format: a stored bitmap reads back the
// same, and any damage, or a bitmap made for another geometry, reads as nothing (so the
// caller assumes every region dirty rather than trusting it).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DirtyBitmap } from '../../src/core/dirty-bitmap.js';
import { baseSeed, Prng } from './prng.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('DirtyBitmap', () => {
  test('marks every region a range touches, once', () => {
    const bitmap = new DirtyBitmap(MiB, 64 * KiB);
    assert.equal(bitmap.regions, 16);
    bitmap.mark(0, 1);
    bitmap.mark(64 * KiB - 1, 2);
    assert.deepEqual(dirtyList(bitmap), [0, 1]);
    bitmap.mark(200 * KiB, 100 * KiB);
    assert.deepEqual(dirtyList(bitmap), [0, 1, 3, 4]);
    bitmap.mark(0, 64 * KiB);
    bitmap.mark(5 * 64 * KiB, 0);
    assert.equal(bitmap.dirtyRegions, 4);
    assert.equal(bitmap.dirtyBytes, 4 * 64 * KiB);
    bitmap.clearAll();
    assert.equal(bitmap.dirtyRegions, 0);
    assert.throws(() => bitmap.mark(MiB - 1, 2), /outside the volume/);
  });

  test('clear and nextDirty walk the dirty regions', () => {
    const bitmap = new DirtyBitmap(4 * MiB, 64 * KiB);
    for (const region of [3, 8, 9, 40, 63]) bitmap.mark(region * 64 * KiB, 1);
    const walked: number[] = [];
    for (let region = bitmap.nextDirty(0); region !== -1; region = bitmap.nextDirty(region + 1)) walked.push(region);
    assert.deepEqual(walked, [3, 8, 9, 40, 63]);
    bitmap.clear(8);
    bitmap.clear(8);
    bitmap.clear(10);
    assert.equal(bitmap.dirtyRegions, 4);
    assert.equal(bitmap.nextDirty(4), 9);
    assert.equal(bitmap.nextDirty(64), -1);
  });

  test('the last region may be shorter than the others', () => {
    const bitmap = new DirtyBitmap(100 * KiB, 64 * KiB);
    assert.equal(bitmap.regions, 2);
    bitmap.mark(99 * KiB, KiB);
    assert.equal(bitmap.dirtyBytes, 36 * KiB);
    bitmap.markAll();
    assert.equal(bitmap.dirtyBytes, 100 * KiB);
  });

  test('include adds another bitmap\'s regions', () => {
    const a = new DirtyBitmap(MiB, 64 * KiB);
    const b = new DirtyBitmap(MiB, 64 * KiB);
    a.mark(0, KiB);
    b.mark(MiB - KiB, KiB);
    b.mark(0, KiB);
    a.include(b);
    assert.deepEqual(dirtyList(a), [0, 15]);
    assert.throws(() => a.include(new DirtyBitmap(2 * MiB, 64 * KiB)), /different geometry/);
  });

  test('encode and decode round trip, for random marks', () => {
    const prng = new Prng(baseSeed(7));
    for (let round = 0; round < 50; round += 1) {
      const size = (1 + prng.below(4096)) * 4 * KiB;
      const regionBytes = [4 * KiB, 64 * KiB, MiB][prng.below(3)] ?? 64 * KiB;
      const bitmap = new DirtyBitmap(size, regionBytes);
      for (let mark = prng.below(20); mark > 0; mark -= 1) {
        const offset = prng.below(size);
        bitmap.mark(offset, 1 + prng.below(size - offset));
      }
      const decoded = DirtyBitmap.decode(bitmap.encode(), size, regionBytes);
      assert.ok(decoded !== null);
      assert.deepEqual(dirtyList(decoded), dirtyList(bitmap));
      assert.equal(decoded.dirtyBytes, bitmap.dirtyBytes);
    }
  });

  test('any damaged byte, a truncation, or another geometry reads as nothing', () => {
    const bitmap = new DirtyBitmap(4 * MiB, 64 * KiB);
    bitmap.mark(MiB, 3 * 64 * KiB);
    const encoded = bitmap.encode();
    for (let at = 0; at < encoded.length; at += 1) {
      const damaged = Buffer.from(encoded);
      damaged[at] = (damaged[at] ?? 0) ^ 0x10;
      assert.equal(DirtyBitmap.decode(damaged, 4 * MiB, 64 * KiB), null, `byte ${at} flipped`);
    }
    for (let length = 0; length < encoded.length; length += 1) {
      assert.equal(DirtyBitmap.decode(encoded.subarray(0, length), 4 * MiB, 64 * KiB), null, `cut at ${length}`);
    }
    assert.equal(DirtyBitmap.decode(Buffer.concat([encoded, Buffer.alloc(1)]), 4 * MiB, 64 * KiB), null, 'trailing byte');
    assert.equal(DirtyBitmap.decode(encoded, 8 * MiB, 64 * KiB), null, 'another volume size');
    assert.equal(DirtyBitmap.decode(encoded, 4 * MiB, 128 * KiB), null, 'another region size');
  });
});

function dirtyList(bitmap: DirtyBitmap): number[] {
  const out: number[] = [];
  for (let region = 0; region < bitmap.regions; region += 1) if (bitmap.isDirty(region)) out.push(region);
  return out;
}
