// Recovery's scan of a write log (src/storage/log-scan.ts) over partitions held in plain
// buffers: a log written the way WriteLog writes one (entries aligned to 64 bytes, moving
// to the next partition when one is too short, partitions reused in turn), then cut,
// damaged or left with stale data, and read back. Seeded: BLOCKMIRROR_SEED moves the base.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { alignedEntryBytes, ENTRY_HEADER_BYTES, encodeEntryHeader, EntryType } from '../../src/protocol/log-entry.js';
import { LogCorruptError, scanLog, type LogImage, type ScanEnd, type ScannedEntry } from '../../src/storage/log-scan.js';
import { baseSeed, Prng } from './prng.js';

const PARTITIONS = 3;
const PARTITION_BYTES = 16 * 1024;
const VOLUME_ID = 0x5ca1ab1e;
const LOG_ID = 0x1d;
const PAYLOAD_MAX = 3000;

interface Written {
  seq: number;
  generation: number;
  offset: number;
  bytes: number;
  durableSeq: number;
  payload: Buffer;
}

/** Partitions in memory, written as WriteLog writes them. */
class MemoryLog implements LogImage {
  readonly slots = Array.from({ length: PARTITIONS }, () => Buffer.alloc(PARTITION_BYTES));
  readonly entries: Written[] = [];
  generation = 0;
  offset = 0;

  readAt(generation: number, offset: number, length: number): Buffer {
    const slot = this.slots[generation % PARTITIONS];
    assert.ok(slot !== undefined);
    return Buffer.from(slot.subarray(offset, Math.min(offset + length, PARTITION_BYTES)));
  }

  /** Appends entry `seq` (a write of `payload`, or a CP marker when it is empty). */
  append(seq: number, payload: Buffer, durableSeq: number, logId = LOG_ID): Written {
    const bytes = alignedEntryBytes(payload.length);
    if (this.offset + bytes > PARTITION_BYTES) {
      this.generation += 1;
      this.offset = 0;
      // A partition taken again starts over: nothing of its last turn is rewritten until reached.
    }
    const type = payload.length === 0 ? EntryType.CONSISTENCY_POINT : EntryType.WRITE;
    const header = encodeEntryHeader(
      { type, flags: 0, logId, volumeId: VOLUME_ID, seq, durableSeq, offset: type === EntryType.WRITE ? seq * 4096 : seq - 1, lengthBytes: payload.length, generation: this.generation, epoch: 0 },
      payload.length === 0 ? [] : [payload],
    );
    const slot = this.slots[this.generation % PARTITIONS];
    assert.ok(slot !== undefined);
    slot.fill(0, this.offset, this.offset + bytes);
    header.copy(slot, this.offset);
    payload.copy(slot, this.offset + ENTRY_HEADER_BYTES);
    const written = { seq, generation: this.generation, offset: this.offset, bytes, durableSeq, payload };
    this.entries.push(written);
    this.offset += bytes;
    return written;
  }

  slotOf(entry: Written): Buffer {
    const slot = this.slots[entry.generation % PARTITIONS];
    assert.ok(slot !== undefined);
    return slot;
  }
}

/** A log of `count` entries from seq 1; each entry's durableSeq lags its seq by up to `lagMax`. */
function writeLog(prng: Prng, count: number, lagMax: number): MemoryLog {
  const log = new MemoryLog();
  for (let seq = 1; seq <= count; seq += 1) {
    const length = prng.chance(0.1) ? 0 : prng.between(1, PAYLOAD_MAX);
    const payload = Buffer.alloc(length);
    for (let at = 0; at < length; at += 1) payload[at] = prng.below(256);
    log.append(seq, payload, Math.max(0, seq - 1 - prng.below(lagMax + 1)));
  }
  return log;
}

function scan(log: LogImage, from: { generation: number; offset: number; expected: number } = { generation: 0, offset: 0, expected: 1 }): { entries: ScannedEntry[]; end: ScanEnd } {
  const entries: ScannedEntry[] = [];
  const run = scanLog(log, {
    ...from,
    logIds: [LOG_ID],
    volumeId: VOLUME_ID,
    partitionBytes: PARTITION_BYTES,
    entryPayloadBytesMax: PAYLOAD_MAX,
    chunkBytes: 4096,
    where: (generation, offset) => `generation ${generation} offset ${offset}`,
  });
  for (let step = run.next(); ; step = run.next()) {
    if (step.done === true) return { entries, end: step.value };
    entries.push(step.value);
  }
}

/** Every entry scanned is the one written under its sequence number, in order from 1. */
function assertPrefix(log: MemoryLog, entries: ScannedEntry[]): void {
  entries.forEach((entry, index) => {
    const written = log.entries[index];
    assert.ok(written !== undefined, `entry ${entry.header.seq} was never written`);
    assert.equal(entry.header.seq, written.seq);
    assert.deepEqual([entry.generation, entry.offset], [written.generation, written.offset]);
    assert.ok(entry.payload.equals(written.payload), `entry ${written.seq} read back with other bytes`);
  });
}

const base = baseSeed(0x10c5);

describe('log scan', () => {
  test('a whole log is read back in order, across partitions, and ends where the next entry goes', () => {
    const log = writeLog(new Prng(base), 30, 3);
    assert.ok(log.generation >= 2, 'the log spans several partitions');
    const { entries, end } = scan(log);
    assertPrefix(log, entries);
    assert.equal(entries.length, 30);
    assert.deepEqual({ generation: end.generation, offset: end.offset, expected: end.expected }, { generation: log.generation, offset: log.offset, expected: 31 });
    assert.deepEqual([end.tornBytes, end.laterEntries, end.sessionLastSeq.get(LOG_ID)], [0, false, 30]);
  });

  test('a last entry cut at any byte is a torn tail: the entries before it, nothing after', () => {
    const log = writeLog(new Prng(base + 1), 11, 1);
    const last = log.append(12, Buffer.alloc(777, 7), 11);
    const pristine = Buffer.from(log.slotOf(last));
    // Past the payload there is only padding, which is zero anyway.
    for (let cut = 0; cut < ENTRY_HEADER_BYTES + last.payload.length; cut += 1) {
      const slot = log.slotOf(last);
      pristine.copy(slot);
      slot.fill(0, last.offset + cut, last.offset + last.bytes);
      const { entries, end } = scan(log);
      assertPrefix(log, entries);
      assert.equal(entries.length, 11, `cut at byte ${cut}`);
      assert.equal(end.expected, 12);
      // A whole header makes the rest of its entry torn; a header cut short past its magic is torn too.
      if (cut >= ENTRY_HEADER_BYTES) assert.equal(end.tornBytes, last.bytes, `cut at byte ${cut}`);
      if (cut === 0) assert.equal(end.tornBytes, 0);
    }
  });

  test('entries of a partition turn before are not read: the log ends where this turn does', () => {
    const log = writeLog(new Prng(base + 2), 60, 2);
    assert.ok(log.generation >= PARTITIONS + 1, 'partitions were reused');
    // Recovery starts from a consistency point in the partition before the active one.
    const first = log.entries.find((entry) => entry.generation === log.generation - 1);
    assert.ok(first !== undefined);
    const { entries, end } = scan(log, { generation: first.generation, offset: first.offset, expected: first.seq });
    assert.deepEqual(
      entries.map((entry) => entry.header.seq),
      log.entries.filter((entry) => entry.seq >= first.seq).map((entry) => entry.seq),
    );
    assert.deepEqual([end.expected, end.laterEntries, end.tornBytes], [61, false, 0], 'stale entries of the last turn are neither read nor discarded as later ones');
  });

  test('a sequence gap is corruption', () => {
    const log = new MemoryLog();
    log.append(1, Buffer.alloc(100, 1), 0);
    log.append(3, Buffer.alloc(100, 3), 1);
    assert.throws(() => scan(log), (error: unknown) => error instanceof LogCorruptError && /sequence gap: expected entry 2, found 3/.test(error.message));
  });

  test('an entry of a session not listed, or listed before the one before it, is not read', () => {
    const log = new MemoryLog();
    log.append(1, Buffer.alloc(100, 1), 0);
    log.append(2, Buffer.alloc(100, 2), 0, 0x99);
    const { entries, end } = scan(log);
    assert.deepEqual([entries.length, end.expected], [1, 2]);
  });

  test('seeded damage: never an entry other than the one written, never out of order; durable damage is refused', () => {
    let refused = 0;
    let stopped = 0;
    for (let run = 0; run < 400; run += 1) {
      const prng = new Prng((base + 100 + run) >>> 0);
      const log = writeLog(prng, prng.between(5, 30), 4);
      // One to three bytes flipped anywhere in what was written.
      const damaged = new Set<number>();
      for (let flips = prng.between(1, 3); flips > 0; flips -= 1) {
        const entry = prng.pick(log.entries);
        const at = entry.offset + prng.below(ENTRY_HEADER_BYTES + entry.payload.length);
        const slot = log.slotOf(entry);
        slot[at] = (slot[at] ?? 0) ^ (1 << prng.below(8));
        damaged.add(entry.seq);
      }
      let result: { entries: ScannedEntry[]; end: ScanEnd };
      try {
        result = scan(log);
      } catch (error) {
        assert.ok(error instanceof LogCorruptError, `run ${run}: ${String(error)}`);
        refused += 1;
        continue;
      }
      const { entries, end } = result;
      assertPrefix(log, entries);
      const missing = end.expected;
      assert.ok(damaged.has(missing) || missing === log.entries.length + 1, `run ${run}: the scan stopped at entry ${missing}, which is intact`);
      if (missing <= log.entries.length) stopped += 1;
      // A later intact entry that shows the missing one durable, where the scan looks
      // (the rest of its partition, the first entry of the next), would have been refused.
      for (const later of log.entries) {
        if (later.seq <= missing || damaged.has(later.seq)) continue;
        const looked = (later.generation === end.generation && later.offset > end.offset) || (later.generation === end.generation + 1 && later.offset === 0);
        assert.ok(!(looked && later.durableSeq >= missing), `run ${run}: entry ${later.seq} shows ${missing} durable, and the scan took the damage for a torn tail`);
      }
    }
    assert.ok(refused > 50 && stopped > 50, `refused ${refused}, stopped early ${stopped} of 400`);
  });
});
