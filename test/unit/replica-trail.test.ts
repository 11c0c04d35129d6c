// A replica's record of where its entries since the primary's last consistency point
// landed (src/core/replica-trail.ts): what it names for a primary that lost entries,
// how the primary's consistency points shorten it, and how it survives a restart — or,
// when its file is damaged or it grew past its bound, that it names every region rather
// than too few.
//
// Its two marks: trimmedThrough (raised by the primary's consistency points; a primary
// asking about an earlier entry is told "every region") and divergedAfter (the lowest
// entry after which the replica holds entries of another history; cleared with
// trimmedThrough by a reset), how ofOwnEntries sets them for a primary that follows a
// newer epoch, and the 'BMT2' file that keeps them: its documented layout (32-byte header,
// none as all ones), a round trip of both marks with entries and with overflow, and that
// a file of the earlier 'BMTR' format, a damaged mark, or a mark above 2^53-1 names every
// region and counts as diverged from the start (divergedAfter 0).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { ReplicaTrail, trailEntriesMax } from '../../src/core/replica-trail.js';
import { crc32c } from '../../src/lib/crc32c.js';
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
  assert.deepEqual(trail.extentsAfter(4), [
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
  // A byte of each header field (magic, flags, count, checksum, trimmedThrough,
  // divergedAfter), of the first record and the last.
  for (const at of [0, 7, 9, 13, 20, 28, 32 + 7, bytes.length - 1]) {
    const damaged = Buffer.from(bytes);
    damaged[at] = (damaged[at] ?? 0) ^ 0x10;
    fs.writeFileSync(file, damaged);
    const decoded = ReplicaTrail.decode(files.read(file));
    assert.equal(decoded.extentsAfter(0), null, `byte ${at} flipped`);
    assert.equal(decoded.divergedAfter, 0, `byte ${at} flipped: diverged from the start`);
  }
  fs.writeFileSync(file, bytes.subarray(0, bytes.length - 24));
  assert.equal(ReplicaTrail.decode(files.read(file)).extentsAfter(0), null, 'truncated');
  fs.writeFileSync(file, Buffer.concat([bytes, Buffer.alloc(24)]));
  assert.equal(ReplicaTrail.decode(files.read(file)).extentsAfter(0), null, 'a record too many');
  for (const length of [0, 1, 16, 31]) {
    assert.equal(ReplicaTrail.decode(bytes.subarray(0, length)).extentsAfter(0), null, `cut to ${length} bytes`);
  }
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
  assert.deepEqual(trail.extentsAfter(20), [], 'the kept names are durable at the primary now');
  // A reset after an overflow keeps "every region" as one name.
  trail.resetTo(null, 1 << 20);
  assert.deepEqual(trail.extentsAfter(5), [{ offset: 0, lengthBytes: 1 << 20 }]);
});

// ---------------------------------------------------------------------------------------
// The marks.

/** Recomputes the checksum of a trail file a test changed on purpose (over the file, its own field zero). */
function resealed(bytes: Buffer): Buffer {
  const copy = Buffer.from(bytes);
  copy.writeUInt32BE(0, 12);
  copy.writeUInt32BE(crc32c(copy) >>> 0, 12);
  return copy;
}

/** The marks and what the trail names after a few sequence numbers, for comparing two trails. */
function summary(trail: ReplicaTrail): unknown {
  return {
    trimmedThrough: trail.trimmedThrough,
    divergedAfter: trail.divergedAfter,
    entries: trail.entries,
    after: [0, 1, 2, 3, 4, 5, 6, 100].map((seq) => trail.extentsAfter(seq)),
  };
}

test('a new or missing record has no marks: nothing trimmed, nothing diverged', () => {
  for (const trail of [new ReplicaTrail(), ReplicaTrail.decode(null), ReplicaTrail.decode(files.read(path.join(dir, 'none')))]) {
    assert.equal(trail.trimmedThrough, 0);
    assert.equal(trail.divergedAfter, null);
    assert.deepEqual(trail.extentsAfter(0), []);
  }
});

test('the file has the documented layout: a 32-byte header with both marks, then 24-byte records', () => {
  const trail = new ReplicaTrail();
  trail.add(2 ** 40 + 1, 2 ** 33, 4096);
  trail.add(2 ** 40 + 2, 512, 1 << 20);
  trail.trimThrough(2 ** 40);
  trail.divergesAfter(2 ** 40 + 1);
  const bytes = trail.encode();
  assert.equal(bytes.length, 32 + 2 * 24);
  assert.equal(bytes.toString('hex', 0, 12), '424d5432' + '00000000' + '00000002');
  assert.equal(bytes.toString('hex', 16, 32), '0000010000000000' + '0000010000000001');
  assert.equal(
    bytes.toString('hex', 32),
    '0000010000000001' + '0000000200000000' + '0000000000001000' + '0000010000000002' + '0000000000000200' + '0000000000100000',
  );
  const zeroed = Buffer.from(bytes);
  zeroed.writeUInt32BE(0, 12);
  assert.equal(bytes.readUInt32BE(12), crc32c(zeroed) >>> 0, 'the checksum covers the whole file, its own field zero');
  // No divergence is all ones; the overflow flag is 1 and lists nothing.
  const none = new ReplicaTrail().encode();
  assert.equal(none.toString('hex', 16, 32), '0000000000000000' + 'ffffffffffffffff');
  const overflow = ReplicaTrail.everything().encode();
  assert.equal(overflow.length, 32);
  assert.equal(overflow.toString('hex', 0, 12), '424d5432' + '00000001' + '00000000');
});

test('both marks survive encode and decode, with entries and with overflow', () => {
  const trail = filled();
  trail.trimThrough(2);
  trail.divergesAfter(4);
  const decoded = ReplicaTrail.decode(trail.encode());
  assert.equal(decoded.trimmedThrough, 2);
  assert.equal(decoded.divergedAfter, 4);
  assert.deepEqual(summary(decoded), summary(trail));
  assert.equal(decoded.extentsAfter(1), null, 'still trimmed after decoding');
  // Through a file, and at the edges: divergedAfter 0 is not "none", nor is 2^53-1.
  const file = path.join(dir, 'trail-marks');
  for (const [trimmed, diverged] of [[0, 0], [0, null], [Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER], [2 ** 32, 2 ** 32 + 1], [7, 3]] as const) {
    const marked = new ReplicaTrail();
    marked.add(Number.MAX_SAFE_INTEGER, 0, 4096);
    marked.trimThrough(trimmed);
    if (diverged !== null) marked.divergesAfter(diverged);
    files.replaceFile(file, marked.encode(), 'trail');
    const back = ReplicaTrail.decode(files.read(file));
    assert.equal(back.trimmedThrough, trimmed, `trimmedThrough ${trimmed}`);
    assert.equal(back.divergedAfter, diverged, `divergedAfter ${String(diverged)}`);
    assert.equal(back.entries, trimmed < Number.MAX_SAFE_INTEGER ? 1 : 0, 'the entry is listed unless trimmed');
  }
  // An overflowed record keeps its marks, though it names every region.
  const big = new ReplicaTrail();
  for (let seq = 1; seq <= trailEntriesMax + 1; seq += 1) big.add(seq, 0, 4096);
  big.trimThrough(10);
  big.divergesAfter(12);
  for (const overflowed of [big, ReplicaTrail.everything()]) {
    overflowed.trimThrough(10);
    overflowed.divergesAfter(12);
    const back = ReplicaTrail.decode(overflowed.encode());
    assert.equal(back.trimmedThrough, 10);
    assert.equal(back.divergedAfter, 12);
    assert.equal(back.extentsAfter(10), null, 'every region, though 10 is not below trimmedThrough');
    assert.equal(back.extentsAfter(50), null);
  }
  // And one without divergence keeps that.
  assert.equal(ReplicaTrail.decode(ReplicaTrail.everything().encode()).divergedAfter, null);
});

test("trimmedThrough: a primary asking about an entry before it is told every region; at it or after, the list", () => {
  const trail = filled();
  trail.trimThrough(3);
  assert.equal(trail.trimmedThrough, 3);
  assert.equal(trail.extentsAfter(0), null);
  assert.equal(trail.extentsAfter(2), null, 'entry 3 is no longer listed, so "after 2" cannot be answered');
  assert.deepEqual(trail.extentsAfter(3), [
    { offset: 4096, lengthBytes: 4096 },
    { offset: 65536, lengthBytes: 512 },
    { offset: 1 << 20, lengthBytes: 1 << 20 },
  ]);
  assert.deepEqual(trail.extentsAfter(4), [
    { offset: 65536, lengthBytes: 512 },
    { offset: 1 << 20, lengthBytes: 1 << 20 },
  ]);
  assert.deepEqual(trail.extentsAfter(6), []);
  // It only rises: an older consistency point reported late changes nothing.
  trail.trimThrough(1);
  assert.equal(trail.trimmedThrough, 3);
  assert.equal(trail.extentsAfter(2), null);
  assert.equal(trail.entries, 3);
  // A consistency point past every entry empties the list but still refuses to answer before it.
  trail.trimThrough(50);
  assert.equal(trail.entries, 0);
  assert.deepEqual(trail.extentsAfter(50), []);
  assert.deepEqual(trail.extentsAfter(60), []);
  assert.equal(trail.extentsAfter(49), null);
});

test('divergesAfter keeps the lowest sequence number it was given', () => {
  const trail = filled();
  assert.equal(trail.divergedAfter, null);
  trail.divergesAfter(5);
  assert.equal(trail.divergedAfter, 5);
  trail.divergesAfter(9);
  assert.equal(trail.divergedAfter, 5, 'a later point does not move it');
  trail.divergesAfter(2);
  assert.equal(trail.divergedAfter, 2);
  trail.divergesAfter(0);
  assert.equal(trail.divergedAfter, 0);
  trail.divergesAfter(3);
  assert.equal(trail.divergedAfter, 0, '0 is a mark, not "none"');
  // It changes nothing the trail names.
  assert.deepEqual(trail.extentsAfter(2), filled().extentsAfter(2));
  // And the minimum is what a decoded trail keeps.
  const decoded = ReplicaTrail.decode(filled().encode());
  decoded.divergesAfter(4);
  decoded.divergesAfter(6);
  assert.equal(ReplicaTrail.decode(decoded.encode()).divergedAfter, 4);
});

test('a reset clears both marks, by name or for every region, and the cleared marks are what is saved', () => {
  for (const named of [[{ offset: 8192, lengthBytes: 4096 }], null]) {
    const trail = filled();
    trail.trimThrough(3);
    trail.divergesAfter(1);
    trail.resetTo(named, 1 << 20);
    assert.equal(trail.trimmedThrough, 0);
    assert.equal(trail.divergedAfter, null);
    const expected = named ?? [{ offset: 0, lengthBytes: 1 << 20 }];
    assert.deepEqual(trail.extentsAfter(0), expected, 'no longer trimmed: every seq can be answered');
    assert.deepEqual(trail.extentsAfter(2), expected);
    const decoded = ReplicaTrail.decode(trail.encode());
    assert.equal(decoded.trimmedThrough, 0);
    assert.equal(decoded.divergedAfter, null);
    assert.deepEqual(decoded.extentsAfter(0), expected);
  }
  // A reset of an overflowed, diverged record (as a damaged file decodes) clears them too.
  const damaged = ReplicaTrail.decode(Buffer.from('not a trail'));
  assert.equal(damaged.divergedAfter, 0);
  damaged.resetTo(null, 4096);
  assert.equal(damaged.divergedAfter, null);
  assert.equal(damaged.trimmedThrough, 0);
  assert.deepEqual(damaged.extentsAfter(0), [{ offset: 0, lengthBytes: 4096 }]);
});

test("ofOwnEntries: a primary's own entries after the shared one, diverged only when it holds any", () => {
  const entries = [
    { seq: 11, offset: 4096, lengthBytes: 4096 },
    { seq: 12, offset: 0, lengthBytes: 4096 },
    { seq: 14, offset: 1 << 20, lengthBytes: 512 },
  ];
  const diverged = ReplicaTrail.ofOwnEntries(10, entries, 14);
  assert.equal(diverged.trimmedThrough, 10);
  assert.equal(diverged.divergedAfter, 10);
  assert.equal(diverged.entries, 3);
  assert.deepEqual(diverged.extentsAfter(10), [
    { offset: 0, lengthBytes: 8192 },
    { offset: 1 << 20, lengthBytes: 512 },
  ]);
  assert.deepEqual(diverged.extentsAfter(12), [{ offset: 1 << 20, lengthBytes: 512 }]);
  assert.equal(diverged.extentsAfter(9), null, 'entries up to the shared one are not listed');
  assert.deepEqual(summary(ReplicaTrail.decode(diverged.encode())), summary(diverged));
  // Past the shared entry only with entries that change no region (CP markers are left
  // out by the caller): still diverged, naming nothing.
  const markersOnly = ReplicaTrail.ofOwnEntries(10, [], 12);
  assert.equal(markersOnly.divergedAfter, 10);
  assert.deepEqual(markersOnly.extentsAfter(10), []);
  // Nothing past the shared entry: nothing diverges.
  for (const trail of [ReplicaTrail.ofOwnEntries(10, [], 10), ReplicaTrail.ofOwnEntries(0, [], 0)]) {
    assert.equal(trail.divergedAfter, null);
    assert.equal(trail.entries, 0);
    assert.deepEqual(trail.extentsAfter(trail.trimmedThrough), []);
    assert.equal(ReplicaTrail.decode(trail.encode()).divergedAfter, null);
  }
  assert.equal(ReplicaTrail.ofOwnEntries(10, [], 10).trimmedThrough, 10);
  assert.equal(ReplicaTrail.ofOwnEntries(10, [], 10).extentsAfter(9), null);
});

test("a file of the earlier 'BMTR' format names every region and counts as diverged from the start", () => {
  // 16-byte header: magic, flags, count, checksum over the file with its own field zero; then records.
  const old = (records: [number, number, number][]): Buffer => {
    const bytes = Buffer.alloc(16 + records.length * 24);
    bytes.writeUInt32BE(0x424d5452, 0);
    bytes.writeUInt32BE(records.length, 8);
    records.forEach(([seq, offset, lengthBytes], index) => {
      bytes.writeBigUInt64BE(BigInt(seq), 16 + index * 24);
      bytes.writeBigUInt64BE(BigInt(offset), 24 + index * 24);
      bytes.writeBigUInt64BE(BigInt(lengthBytes), 32 + index * 24);
    });
    bytes.writeUInt32BE(crc32c(bytes) >>> 0, 12);
    return bytes;
  };
  for (const records of [[], [[1, 0, 4096]], [[1, 0, 4096], [2, 8192, 512]], [[5, 0, 4096], [6, 4096, 4096], [7, 0, 512]]] as [number, number, number][][]) {
    const file = path.join(dir, 'trail-old');
    fs.writeFileSync(file, old(records));
    const decoded = ReplicaTrail.decode(files.read(file));
    assert.equal(decoded.extentsAfter(0), null, `${records.length} records`);
    assert.equal(decoded.extentsAfter(100), null);
    assert.equal(decoded.divergedAfter, 0);
    assert.equal(decoded.trimmedThrough, 0);
  }
  // The magic alone decides: the new layout under the old magic (checksum right) is refused too.
  const relabelled = filled().encode();
  relabelled.writeUInt32BE(0x424d5452, 0);
  assert.equal(ReplicaTrail.decode(resealed(relabelled)).extentsAfter(0), null);
});

test('a flipped byte in either mark, or a mark above 2^53-1, names every region and counts as diverged from the start', () => {
  const trail = filled();
  trail.trimThrough(2);
  trail.divergesAfter(3);
  const bytes = trail.encode();
  for (let at = 16; at < 32; at += 1) {
    for (const flip of [0x01, 0x80]) {
      const damaged = Buffer.from(bytes);
      damaged[at] = (damaged[at] ?? 0) ^ flip;
      const decoded = ReplicaTrail.decode(damaged);
      assert.equal(decoded.extentsAfter(0), null, `byte ${at} ^ ${flip}`);
      assert.equal(decoded.extentsAfter(100), null, `byte ${at} ^ ${flip}`);
      assert.equal(decoded.divergedAfter, 0, `byte ${at} ^ ${flip}`);
      assert.equal(decoded.trimmedThrough, 0, `byte ${at} ^ ${flip}`);
    }
  }
  // Checksum right, marks out of range (all ones is "none" for divergedAfter only).
  const cases: [string, bigint, bigint][] = [
    ['trimmedThrough 2^53', 2n ** 53n, 0xffff_ffff_ffff_ffffn],
    ['trimmedThrough all ones', 0xffff_ffff_ffff_ffffn, 0xffff_ffff_ffff_ffffn],
    ['divergedAfter 2^53', 2n, 2n ** 53n],
    ['divergedAfter one below none', 2n, 0xffff_ffff_ffff_fffen],
  ];
  for (const [name, trimmed, diverged] of cases) {
    const marked = Buffer.from(bytes);
    marked.writeBigUInt64BE(trimmed, 16);
    marked.writeBigUInt64BE(diverged, 24);
    const decoded = ReplicaTrail.decode(resealed(marked));
    assert.equal(decoded.extentsAfter(0), null, name);
    assert.equal(decoded.extentsAfter(100), null, name);
    assert.equal(decoded.divergedAfter, 0, name);
  }
  // The largest legal marks, resealed the same way, are accepted: the checks above are the range's.
  const largest = Buffer.from(bytes);
  largest.writeBigUInt64BE(BigInt(Number.MAX_SAFE_INTEGER), 16);
  largest.writeBigUInt64BE(BigInt(Number.MAX_SAFE_INTEGER), 24);
  const decoded = ReplicaTrail.decode(resealed(largest));
  assert.equal(decoded.trimmedThrough, Number.MAX_SAFE_INTEGER);
  assert.equal(decoded.divergedAfter, Number.MAX_SAFE_INTEGER);
  assert.equal(decoded.entries, 4);
});
