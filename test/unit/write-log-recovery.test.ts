// Recovery of the write log from crafted logs. Each log is built by running a real
// WriteLog (entries with known payloads, syncs, checkpoints), closed without a final
// checkpoint as a crash would leave it, then damaged with plain fs calls and reopened.
// What is checked is what a user of the log would notice: which entries `apply` is
// given, in which order and with which bytes; whether a damaged log is refused with
// ERR_LOG_CORRUPT and a message that names the file and offset; and that the log goes on
// working after recovery.
//
// Partitions are 64 KiB here (the log accepts any size; the config's 1 MiB minimum does
// not apply) so that the scans recovery does after a torn tail stay fast.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { IoActivity } from '../../src/io/file-io.js';
import { Logger } from '../../src/lib/log.js';
import {
  alignedEntryBytes,
  decodeEntryHeader,
  encodeEntryHeader,
  ENTRY_ALIGN_BYTES,
  ENTRY_HEADER_BYTES,
  EntryFlag,
  EntryType,
  type EntryHeader,
} from '../../src/protocol/log-entry.js';
import { LOG_BLOCK_BYTES, LogCorruptError, WriteLog, type EntryStamp, type LogGeometry, type RecoveryReport } from '../../src/storage/write-log.js';

/** The next entry's stamp, as a primary's core would give it (these tests drive the log alone). */
function nextStamp(log: WriteLog): EntryStamp {
  return { seq: log.lastSeq + 1, epoch: 0 };
}
import { baseSeed, Prng } from './prng.js';
import { pattern, scratchDirs } from '../helpers/test-data.js';

const KiB = 1024;
const SEED = baseSeed(0x10_9c_0001);
const SMALL: LogGeometry = { partitionBytes: 64 * KiB, partitions: 2 };
/** The largest payload one entry may carry in SMALL partitions (see WriteLog.entryPayloadBytesMax). */
const SMALL_ENTRY_PAYLOAD_MAX = Math.floor((SMALL.partitionBytes - ENTRY_HEADER_BYTES) / 2 / 4096) * 4096;
const VOLUME_UUID = '5f0c6a1e-7d0b-4e57-9a43-2b8e1f6c3d21';
const VOLUME_ID = 7;

const freshDir = scratchDirs('blockmirror-log-');

function partitionPath(dir: string, slot: number): string {
  return path.join(dir, `partition-${slot}.log`);
}


function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

// ---------------------------------------------------------------------------------------
// Operations and what replaying them must give back.

type Op =
  | { type: 'write'; offset: number; payload: Buffer }
  | { type: 'zeroes'; offset: number; lengthBytes: number; noHole: boolean }
  | { type: 'trim'; offset: number; lengthBytes: number };

interface Replayed {
  seq: number;
  type: EntryType;
  flags: number;
  offset: number;
  lengthBytes: number;
  payload: Buffer;
}

function write(offset: number, payload: Buffer): Op {
  return { type: 'write', offset, payload };
}

function expectedEntry(op: Op, seq: number): Replayed {
  switch (op.type) {
    case 'write':
      return { seq, type: EntryType.WRITE, flags: 0, offset: op.offset, lengthBytes: op.payload.length, payload: op.payload };
    case 'zeroes':
      return {
        seq,
        type: EntryType.ZEROES,
        flags: op.noHole ? EntryFlag.NO_HOLE : 0,
        offset: op.offset,
        lengthBytes: op.lengthBytes,
        payload: Buffer.alloc(0),
      };
    case 'trim':
      return { seq, type: EntryType.TRIM, flags: 0, offset: op.offset, lengthBytes: op.lengthBytes, payload: Buffer.alloc(0) };
  }
}

/** Appends `op` and waits until it is in the log file; returns its sequence number. */
async function append(log: WriteLog, op: Op): Promise<number> {
  const appended =
    op.type === 'write'
      ? log.append(nextStamp(log), EntryType.WRITE, { offset: op.offset, lengthBytes: op.payload.length, flags: 0 }, [op.payload])
      : op.type === 'zeroes'
        ? log.append(nextStamp(log), EntryType.ZEROES, { offset: op.offset, lengthBytes: op.lengthBytes, flags: op.noHole ? EntryFlag.NO_HOLE : 0 }, [])
        : log.append(nextStamp(log), EntryType.TRIM, { offset: op.offset, lengthBytes: op.lengthBytes, flags: 0 }, []);
  await appended.written;
  return appended.seq;
}

// ---------------------------------------------------------------------------------------
// Opening a log and watching what it replays.

interface Opened {
  log: WriteLog;
  recovery: RecoveryReport;
  replayed: Replayed[];
  warnings: Record<string, unknown>[];
  checkpointsWanted: { count: number };
}

interface OpenChoices {
  geometry?: LogGeometry;
  volumeUuid?: string;
  volumeId?: number;
  inlineWriteBytesMax?: number;
  onCheckpointWanted?: () => void;
}

async function openLog(dir: string, choices: OpenChoices = {}): Promise<Opened> {
  const replayed: Replayed[] = [];
  const lines: string[] = [];
  const checkpointsWanted = { count: 0 };
  let applying = false;
  const { log, recovery } = await WriteLog.open(
    {
      dir,
      geometry: choices.geometry ?? SMALL,
      volumeUuid: choices.volumeUuid ?? VOLUME_UUID,
      volumeId: choices.volumeId ?? VOLUME_ID,
      activity: new IoActivity(),
      inlineWriteBytesMax: choices.inlineWriteBytesMax ?? 64 * KiB,
      log: new Logger({ write: (line) => lines.push(line) }, 'debug'),
      onCheckpointWanted: () => {
        checkpointsWanted.count += 1;
        choices.onCheckpointWanted?.();
      },
    },
    async (header: EntryHeader, payload: Buffer) => {
      assert.equal(applying, false, 'entries are applied one at a time');
      applying = true;
      // The payload may be a view of a buffer recovery reuses: keep a copy.
      replayed.push({
        seq: header.seq,
        type: header.type,
        flags: header.flags,
        offset: header.offset,
        lengthBytes: header.lengthBytes,
        payload: Buffer.from(payload),
      });
      await new Promise<void>((resolve) => setImmediate(resolve));
      applying = false;
    },
  );
  const warnings = lines
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((record) => record['level'] === 'warn');
  return { log, recovery, replayed, warnings, checkpointsWanted };
}

/** Opens the log (replaying it) and closes it again at once, as a restart then a crash would. */
async function reopenReplayed(dir: string, choices: OpenChoices = {}): Promise<Opened> {
  const opened = await openLog(dir, choices);
  opened.log.close();
  return opened;
}

function writesOnly(replayed: Replayed[]): Replayed[] {
  return replayed.filter((entry) => entry.type !== EntryType.CONSISTENCY_POINT);
}

function seqs(replayed: Replayed[]): number[] {
  return replayed.map((entry) => entry.seq);
}

/** Every decodable header in a partition file, at each 64-byte boundary. */
function scanHeaders(file: string): { offset: number; header: EntryHeader }[] {
  const bytes = fs.readFileSync(file);
  const found: { offset: number; header: EntryHeader }[] = [];
  for (let offset = 0; offset + ENTRY_HEADER_BYTES <= bytes.length; offset += ENTRY_ALIGN_BYTES) {
    const header = decodeEntryHeader(bytes, offset);
    if (typeof header !== 'string') found.push({ offset, header });
  }
  return found;
}

/** Where entry `seq` of the newest generation holding it lies. */
function locate(dir: string, seq: number, partitions = SMALL.partitions): { file: string; offset: number; header: EntryHeader } {
  let best: { file: string; offset: number; header: EntryHeader } | undefined;
  for (let slot = 0; slot < partitions; slot += 1) {
    const file = partitionPath(dir, slot);
    for (const { offset, header } of scanHeaders(file)) {
      if (header.seq === seq && (best === undefined || header.generation > best.header.generation)) best = { file, offset, header };
    }
  }
  assert.ok(best !== undefined, `entry ${seq} not found in ${dir}`);
  return best;
}

function patchFile(file: string, offset: number, bytes: Buffer): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

function readFileRange(file: string, offset: number, length: number): Buffer {
  const buffer = Buffer.alloc(length);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, buffer, 0, length, offset);
  } finally {
    fs.closeSync(fd);
  }
  return buffer;
}

function flipByte(file: string, offset: number): void {
  const byte = readFileRange(file, offset, 1);
  patchFile(file, offset, Buffer.from([(byte[0] ?? 0) ^ 0x5a]));
}

async function rejectsCorrupt(promise: Promise<unknown>, ...patterns: RegExp[]): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof LogCorruptError, `expected a LogCorruptError, got ${String(error)}`);
    assert.equal(error.code, 'ERR_LOG_CORRUPT');
    for (const expected of patterns) assert.match(error.message, expected);
    return true;
  });
}

function escaped(text: string): RegExp {
  return new RegExp(text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
}

/** A log holding `ops` (every one made durable when `sync` is 'each'), then closed. */
async function buildLog(dir: string, ops: Op[], sync: 'each' | 'none' | 'end'): Promise<number[]> {
  const { log } = await openLog(dir);
  const appended: number[] = [];
  try {
    for (const op of ops) {
      const seq = await append(log, op);
      appended.push(seq);
      if (sync === 'each') await log.syncTo(seq);
    }
    if (sync === 'end') await log.syncTo(log.lastSeq);
  } finally {
    log.close();
  }
  return appended;
}

const mixedOps: Op[] = [
  write(0, pattern(1000, 1)),
  { type: 'zeroes', offset: 8192, lengthBytes: 65_536, noHole: true },
  { type: 'trim', offset: 2 ** 40, lengthBytes: 4096 },
  { type: 'zeroes', offset: 12_288, lengthBytes: 4096, noHole: false },
  write(2 ** 45 + 3, pattern(300, 2)),
];

/**
 * Runs a log over two partitions through several turns (checkpoints taken whenever the
 * log asks, as the node takes them), and stops where the end of the log lies right before
 * a whole entry of an earlier turn. Returns every entry appended, by sequence number.
 */
async function buildLappedLog(dir: string): Promise<Map<number, Op>> {
  const random = new Prng(SEED);
  let current: WriteLog | undefined;
  const checkpointErrors: unknown[] = [];
  let checkpointsInFlight = 0;
  const { log } = await openLog(dir, {
    onCheckpointWanted: () => {
      checkpointsInFlight += 1;
      setImmediate(() => {
        const open = current;
        const running = open === undefined ? Promise.resolve() : open.checkpoint(() => nextStamp(open), () => Promise.resolve());
        running.catch((error: unknown) => checkpointErrors.push(error)).finally(() => (checkpointsInFlight -= 1));
      });
    },
  });
  current = log;
  const written = new Map<number, Op>();
  let staleAtTail = false;
  try {
    for (let step = 0; step < 3000 && !staleAtTail; step += 1) {
      const op = write(random.below(1000) * 4096, random.bytes(random.between(1, 4096)));
      const seq = await append(log, op);
      written.set(seq, op);
      log.applied(seq);
      // Inline appends never leave the microtask queue: let the checkpoints run.
      await new Promise<void>((resolve) => setImmediate(resolve));
      const status = log.status();
      if (status.checkpoints < 4 || status.lastSeq - status.cpSeq < 3 || checkpointsInFlight > 0) continue;
      const tail = locate(dir, seq);
      const end = tail.offset + alignedEntryBytes(tail.header.payloadBytes);
      if (end + ENTRY_HEADER_BYTES > SMALL.partitionBytes) continue;
      // Log writes end with zeroes up to the block boundary; an earlier turn's entries
      // may follow from there.
      const boundary = Math.ceil(end / LOG_BLOCK_BYTES) * LOG_BLOCK_BYTES;
      if (boundary + ENTRY_HEADER_BYTES > SMALL.partitionBytes) continue;
      if (boundary > end) {
        assert.ok(readFileRange(tail.file, end, boundary - end).every((byte) => byte === 0), `bytes after entry ${seq} up to the block end`);
      }
      const next = decodeEntryHeader(readFileRange(tail.file, boundary, ENTRY_HEADER_BYTES));
      staleAtTail = typeof next !== 'string' && next.generation < tail.header.generation;
    }
    await log.syncTo(log.lastSeq);
    while (checkpointsInFlight > 0) await new Promise<void>((resolve) => setImmediate(resolve));
  } finally {
    log.close();
  }
  assert.deepStrictEqual(checkpointErrors, []);
  assert.ok(staleAtTail, `seed ${SEED}: never found an earlier turn's entry in the block after the tail`);
  return written;
}

// ---------------------------------------------------------------------------------------

describe('write log recovery', () => {
  test('a new log is created empty; reopening it replays nothing', async () => {
    const dir = freshDir();
    const first = await openLog(dir);
    first.log.close();
    assert.equal(first.recovery.created, true);
    assert.deepStrictEqual(first.replayed, []);
    assert.deepStrictEqual(
      fs.readdirSync(dir).sort(),
      ['partition-0.log', 'partition-1.log', 'superblock.json'],
    );
    for (const slot of [0, 1]) assert.equal(fs.statSync(partitionPath(dir, slot)).size, SMALL.partitionBytes);
    const second = await openLog(dir);
    try {
      assert.equal(second.recovery.created, false);
      assert.deepStrictEqual(second.replayed, []);
      assert.deepStrictEqual(
        { ...second.recovery },
        { cpSeq: 0, replayedEntries: 0, replayedBytes: 0, lastSeq: 0, tornBytes: 0, created: false },
      );
      assert.deepStrictEqual(second.warnings, []);
      assert.equal(second.log.lastSeq, 0);
      assert.equal((await append(second.log, write(0, pattern(10, 3)))), 1, 'the first entry is number 1');
    } finally {
      second.log.close();
    }
  });

  test('every entry is replayed in order with its type, flags, offset, length and payload', async () => {
    const dir = freshDir();
    const ops = [...mixedOps, write(4096, pattern(20_000, 4)), { type: 'trim', offset: 0, lengthBytes: 1 } as Op];
    const appended = await buildLog(dir, ops, 'end');
    assert.deepStrictEqual(appended, ops.map((_, index) => index + 1));
    for (let round = 0; round < 2; round += 1) {
      // Replaying does not change the log: a second crash before any CP replays the same.
      const { log, recovery, replayed, warnings } = await openLog(dir);
      try {
        assert.deepStrictEqual(replayed, ops.map((op, index) => expectedEntry(op, index + 1)), `round ${round}`);
        assert.equal(recovery.replayedEntries, ops.length);
        assert.equal(recovery.replayedBytes, ops.reduce((sum, op) => sum + expectedEntry(op, 0).lengthBytes, 0));
        assert.equal(recovery.lastSeq, ops.length);
        assert.equal(recovery.cpSeq, 0);
        assert.equal(recovery.tornBytes, 0);
        assert.deepStrictEqual(warnings, []);
        const status = log.status();
        assert.equal(status.lastSeq, ops.length);
        assert.equal(status.durableSeq, ops.length);
      } finally {
        log.close();
      }
    }
  });

  test('a torn last entry, cut at every byte of its header and payload, is discarded and the log goes on', async () => {
    const dir = freshDir();
    const last = pattern(200, 9);
    const ops = [...mixedOps.slice(0, 4), write(777, last)];
    const { log } = await openLog(dir);
    try {
      for (const op of ops.slice(0, -1)) await append(log, op);
      await log.syncTo(log.lastSeq);
      const lastOp = ops[ops.length - 1];
      assert.ok(lastOp !== undefined);
      await append(log, lastOp); // written, never synced: the tail a crash may tear
    } finally {
      log.close();
    }
    const lastSeq = ops.length;
    const { file, offset } = locate(dir, lastSeq);
    const entryBytes = alignedEntryBytes(last.length);
    const meaningful = ENTRY_HEADER_BYTES + last.length;
    const pristine = fs.readFileSync(file);
    // The superblock too: every open starts a session and lists it there.
    const superblockFile = path.join(dir, 'superblock.json');
    const pristineSuperblock = fs.readFileSync(superblockFile);
    const kept = ops.slice(0, -1).map((op, index) => expectedEntry(op, index + 1));
    for (let cut = 0; cut < meaningful; cut += 1) {
      const what = `cut at byte ${cut} of the last entry`;
      fs.writeFileSync(file, pristine);
      fs.writeFileSync(superblockFile, pristineSuperblock);
      patchFile(file, offset + cut, Buffer.alloc(entryBytes - cut));
      const torn = await openLog(dir);
      const replacement = pattern(64, 1000 + cut);
      try {
        assert.deepStrictEqual(torn.replayed, kept, what);
        assert.equal(torn.recovery.lastSeq, lastSeq - 1, what);
        if (cut < 4) {
          // Nothing of the entry's magic is left: the log simply ends there. (A 64-byte
          // header never straddles a sector, so a real disk writes it whole or not at all.)
          assert.equal(torn.recovery.tornBytes, 0, what);
        } else {
          assert.ok(torn.recovery.tornBytes > 0, `${what}: tornBytes ${torn.recovery.tornBytes}`);
          assert.ok(torn.recovery.tornBytes <= entryBytes, `${what}: tornBytes ${torn.recovery.tornBytes}`);
          assert.equal(torn.warnings.length, 1, `${what}: one warning`);
          assert.match(String(torn.warnings[0]?.['msg']), /torn/, what);
        }
        assert.equal(torn.log.lastSeq, lastSeq - 1, what);
        const seq = await append(torn.log, write(5000, replacement));
        assert.equal(seq, lastSeq, `${what}: the next entry takes the torn one's number`);
        await torn.log.syncTo(seq);
      } finally {
        torn.log.close();
      }
      const again = await reopenReplayed(dir);
      assert.deepStrictEqual(again.replayed, [...kept, expectedEntry(write(5000, replacement), lastSeq)], `${what}: after the new append`);
    }
  });

  test('a damaged entry that later entries show was durable is corruption, naming the file and offset', async () => {
    const ops = Array.from({ length: 6 }, (_, index) => write(index * 4096, pattern(500, 20 + index)));
    for (const where of ['payload', 'header'] as const) {
      const dir = freshDir();
      await buildLog(dir, ops, 'each');
      const { file, offset } = locate(dir, 3);
      flipByte(file, where === 'payload' ? offset + ENTRY_HEADER_BYTES + 123 : offset + 30);
      await rejectsCorrupt(openLog(dir), escaped(file), new RegExp(`offset ${offset}\\b`), /entry 3\b/);
    }
  });

  test('the same damage when nothing after it was synced is a torn tail, not corruption', async () => {
    const ops = Array.from({ length: 6 }, (_, index) => write(index * 4096, pattern(500, 20 + index)));
    for (const where of ['payload', 'header'] as const) {
      const dir = freshDir();
      await buildLog(dir, ops, 'none');
      const { file, offset } = locate(dir, 3);
      flipByte(file, where === 'payload' ? offset + ENTRY_HEADER_BYTES + 123 : offset + 30);
      const { log, recovery, replayed, warnings } = await openLog(dir);
      log.close();
      assert.deepStrictEqual(replayed, ops.slice(0, 2).map((op, index) => expectedEntry(op, index + 1)), where);
      assert.equal(recovery.lastSeq, 2, where);
      assert.ok(recovery.tornBytes > 0, `${where}: tornBytes ${recovery.tornBytes}`);
      assert.equal(warnings.length, 1, where);
    }
  });

  test('entries discarded after a torn tail never come back in a later recovery', async () => {
    // Entries 3..6 were written but never synced, and a crash tore entry 3. Recovery
    // keeps 1 and 2; the client's next write becomes entry 3, of the same size, so the old
    // entry 4 (valid, same log, same generation, the next number) lies right behind it.
    const ops = Array.from({ length: 6 }, (_, index) => write(index * 4096, pattern(500, 40 + index)));
    const dir = freshDir();
    await buildLog(dir, ops, 'none');
    const { file, offset } = locate(dir, 3);
    flipByte(file, offset + ENTRY_HEADER_BYTES + 7);
    const first = await openLog(dir);
    const fresh = write(100_000, pattern(500, 99));
    try {
      assert.deepStrictEqual(seqs(first.replayed), [1, 2]);
      assert.equal(await append(first.log, fresh), 3);
      await first.log.syncTo(3);
    } finally {
      first.log.close();
    }
    const second = await reopenReplayed(dir);
    assert.deepStrictEqual(seqs(second.replayed), [1, 2, 3], 'entries replayed by the second recovery');
    assert.deepStrictEqual(
      second.replayed,
      [expectedEntry(ops[0] ?? fresh, 1), expectedEntry(ops[1] ?? fresh, 2), expectedEntry(fresh, 3)],
      'writes 4..6 were lost in the first crash; replaying them after write 3 would undo what the client saw since',
    );
  });

  test('entries a crashed session left in the next partition are never replayed, even with the next number', async () => {
    // Entries 1 and 2 fill partition 0; 3 and 4 went to partition 1; none was synced and a
    // crash tore entry 2. The next session writes a new entry 2, small, and syncs it. The
    // old entry 3 at the start of partition 1 then carries exactly the next number, the
    // right generation and a valid CRC: only its session id says it is stale.
    const big = SMALL_ENTRY_PAYLOAD_MAX;
    const ops = Array.from({ length: 4 }, (_, index) => write(index * big, pattern(big, 70 + index)));
    const dir = freshDir();
    await buildLog(dir, ops, 'none');
    assert.equal(locate(dir, 3).offset, 0, 'entry 3 starts partition 1');
    const { file, offset } = locate(dir, 2);
    flipByte(file, offset + ENTRY_HEADER_BYTES + 11);
    const first = await openLog(dir);
    const fresh = write(500_000, pattern(500, 97));
    try {
      assert.deepStrictEqual(seqs(first.replayed), [1]);
      assert.equal(await append(first.log, fresh), 2);
      await first.log.syncTo(2);
    } finally {
      first.log.close();
    }
    const second = await reopenReplayed(dir);
    assert.deepStrictEqual(seqs(second.replayed), [1, 2]);
    assert.deepStrictEqual(second.replayed[1], expectedEntry(fresh, 2));
  });

  test('after a torn tail and the checkpoint a restart takes, the log can still be opened', async () => {
    // As the node does at start: recover, make the volume durable, checkpoint. The CP
    // entry (64 bytes) and the next write (256 bytes) then end exactly where the stale
    // entry 4 starts.
    const ops = Array.from({ length: 6 }, (_, index) => write(index * 4096, pattern(200, 60 + index)));
    const dir = freshDir();
    await buildLog(dir, ops, 'none');
    const { file, offset } = locate(dir, 3);
    flipByte(file, offset + ENTRY_HEADER_BYTES + 7);
    const first = await openLog(dir);
    const next = write(200_000, pattern(192, 98));
    let nextSeq = 0;
    try {
      assert.deepStrictEqual(seqs(first.replayed), [1, 2]);
      await first.log.checkpoint(() => nextStamp(first.log), () => Promise.resolve());
      assert.equal(alignedEntryBytes(0) + alignedEntryBytes(192), alignedEntryBytes(200));
      nextSeq = await append(first.log, next);
      await first.log.syncTo(nextSeq);
    } finally {
      first.log.close();
    }
    const second = await reopenReplayed(dir);
    assert.deepStrictEqual(writesOnly(second.replayed), [expectedEntry(next, nextSeq)]);
  });

  test('an append that finds no free partition waits for a checkpoint; durable entries are never overwritten', async () => {
    // Two partitions of two largest entries each. The five entries are appended in one go,
    // as the pieces of one large write are; the fifth has no free partition to go to.
    const dir = freshDir();
    const { log } = await openLog(dir);
    const max = log.entryPayloadBytesMax;
    const ops = Array.from({ length: 5 }, (_, index) => write(index * max, pattern(max, 50 + index)));
    const appended = ops.map((op) =>
      log.append(nextStamp(log), EntryType.WRITE, { offset: op.offset, lengthBytes: max, flags: 0 }, op.type === 'write' ? [op.payload] : []),
    );
    let fifthWritten = false;
    void appended[4]?.written.then(() => (fifthWritten = true));
    try {
      await Promise.all(appended.slice(0, 4).map((entry) => entry.written));
      await log.syncTo(4);
      await new Promise((resolve) => setTimeout(resolve, 20));
    } finally {
      log.close(); // a crash: no checkpoint was ever taken
    }
    const { replayed, recovery } = await reopenReplayed(dir);
    assert.deepStrictEqual(seqs(replayed), [1, 2, 3, 4], `entries made durable, replayed after a crash (tornBytes ${recovery.tornBytes})`);
    assert.deepStrictEqual(replayed, ops.slice(0, 4).map((op, index) => expectedEntry(op, index + 1)));
    assert.equal(fifthWritten, false, 'the fifth entry was written although no partition was free');
  });

  test('a sequence gap under a valid CRC is corruption', async () => {
    const dir = freshDir();
    const ops = Array.from({ length: 5 }, (_, index) => write(index * 4096, pattern(700, 80 + index)));
    await buildLog(dir, ops, 'each');
    const { file, offset, header } = locate(dir, 4);
    const payload = readFileRange(file, offset + ENTRY_HEADER_BYTES, header.payloadBytes);
    const { payloadCrc: _crc, payloadBytes: _bytes, ...fields } = header;
    const forged = encodeEntryHeader({ ...fields, seq: 9 }, [payload]);
    assert.equal(typeof decodeEntryHeader(forged), 'object', 'the forged header is valid on its own');
    patchFile(file, offset, forged);
    await rejectsCorrupt(openLog(dir), /sequence gap/, /expected entry 4, found 9/, escaped(file), new RegExp(`offset ${offset}\\b`));
  });

  test('entries that exactly fill a partition, a recovery that ends at its end, and the log continuing in the next', async () => {
    const dir = freshDir();
    const { log } = await openLog(dir);
    const big = log.entryPayloadBytesMax;
    log.close();
    assert.equal(big, 28_672);
    // 2 × (64 + 28 672) + (64 + 8 000) = 65 536: partition 0 is full to its last byte.
    const fill = [write(0, pattern(big, 1)), write(big, pattern(big, 2)), write(2 * big, pattern(8000, 3))];
    assert.equal(fill.reduce((sum, op) => sum + alignedEntryBytes(expectedEntry(op, 0).lengthBytes), 0), SMALL.partitionBytes);
    await buildLog(dir, fill, 'end');

    const atBoundary = await openLog(dir);
    const more = [write(3 * big, pattern(100, 4)), write(0, pattern(big, 5)), { type: 'trim', offset: 0, lengthBytes: 8192 } as Op];
    try {
      assert.deepStrictEqual(atBoundary.replayed, fill.map((op, index) => expectedEntry(op, index + 1)));
      assert.equal(atBoundary.recovery.tornBytes, 0);
      assert.deepStrictEqual(atBoundary.warnings, []);
      for (const op of more) await append(atBoundary.log, op);
      await atBoundary.log.syncTo(atBoundary.log.lastSeq);
      assert.ok(atBoundary.checkpointsWanted.count >= 1, 'starting the next partition asks for a checkpoint');
    } finally {
      atBoundary.log.close();
    }
    const fourth = locate(dir, 4);
    assert.deepStrictEqual([fourth.file, fourth.offset], [partitionPath(dir, 1), 0], 'entry 4 starts the next partition');

    const all = await reopenReplayed(dir);
    assert.deepStrictEqual(all.replayed, [...fill, ...more].map((op, index) => expectedEntry(op, index + 1)));
    assert.equal(all.recovery.tornBytes, 0);
  });

  test('an entry that does not fit in the rest of a partition starts the next one', async () => {
    const dir = freshDir();
    // 59 936 bytes of partition 0 used; the next 28 KiB entry goes to partition 1.
    const ops = [write(0, pattern(28_672, 1)), write(0, pattern(28_672, 2)), write(0, pattern(2_400, 3)), write(0, pattern(28_672, 4)), write(0, pattern(10, 5))];
    await buildLog(dir, ops, 'end');
    assert.equal(locate(dir, 4).file, partitionPath(dir, 1));
    const { replayed, recovery } = await reopenReplayed(dir);
    assert.deepStrictEqual(replayed, ops.map((op, index) => expectedEntry(op, index + 1)));
    assert.equal(recovery.tornBytes, 0);
  });

  test('only entries after the last checkpoint are replayed', async () => {
    const dir = freshDir();
    const before = mixedOps;
    const afterCp = [write(0, pattern(3000, 11)), { type: 'zeroes', offset: 0, lengthBytes: 4096, noHole: true } as Op];
    const { log } = await openLog(dir);
    let volumeSyncs = 0;
    try {
      for (const op of before) log.applied(await append(log, op));
      await log.checkpoint(() => nextStamp(log), () => {
        volumeSyncs += 1;
        return Promise.resolve();
      });
      assert.equal(volumeSyncs, 1);
      const status = log.status();
      assert.equal(status.checkpoints, 1);
      assert.ok(status.cpSeq >= before.length, `cpSeq ${status.cpSeq}`);
      for (const op of afterCp) await append(log, op);
      await log.syncTo(log.lastSeq);
    } finally {
      log.close();
    }
    const { replayed, recovery } = await reopenReplayed(dir);
    const cpSeq = recovery.cpSeq;
    assert.ok(cpSeq >= before.length);
    assert.deepStrictEqual(replayed, afterCp.map((op, index) => expectedEntry(op, cpSeq + 1 + index)));
  });

  test('entries replayed after a checkpoint in the middle of a partition, and those appended after the restart, read back (readRange)', async () => {
    const dir = freshDir();
    const before = [write(0, pattern(4096, 21)), write(8192, pattern(4096, 22)), write(16384, pattern(4096, 23))];
    const afterCp = [write(4096, pattern(4096, 24)), write(12288, pattern(4096, 25))];
    const { log } = await openLog(dir);
    try {
      for (const op of before) log.applied(await append(log, op));
      await log.checkpoint(() => nextStamp(log), () => Promise.resolve());
      for (const op of afterCp) await append(log, op);
      await log.syncTo(log.lastSeq);
    } finally {
      log.close();
    }
    // The replay point is in the middle of partition 0, after entries that are not replayed.
    const { log: reopened, recovery } = await openLog(dir);
    try {
      const later = write(20480, pattern(4096, 26));
      const laterSeq = await append(reopened, later);
      await reopened.syncTo(laterSeq);
      const firstReplayed = recovery.cpSeq + 1;
      assert.ok(reopened.holdsFrom(firstReplayed));
      const read: { seq: number; offset: number; payload: Buffer }[] = [];
      for await (const entry of reopened.readRange(firstReplayed, laterSeq)) read.push({ seq: entry.seq, offset: entry.fields.offset, payload: entry.payload });
      assert.deepEqual(
        read.map((entry) => [entry.seq, entry.offset]),
        [...afterCp, later].map((op, index) => [firstReplayed + index, op.type === 'write' ? op.offset : -1]),
      );
      assert.deepEqual(read.map((entry) => entry.payload), [...afterCp, later].map((op) => (op.type === 'write' ? op.payload : Buffer.alloc(0))));
    } finally {
      reopened.close();
    }
  });

  test('a checkpoint covering everything leaves nothing to replay, however often the log is reopened', async () => {
    const dir = freshDir();
    const { log } = await openLog(dir);
    let cpSeq = 0;
    try {
      for (const op of mixedOps) log.applied(await append(log, op));
      await log.syncTo(log.lastSeq);
      await log.checkpoint(() => nextStamp(log), () => Promise.resolve());
      cpSeq = log.status().cpSeq;
      assert.equal(cpSeq, log.lastSeq, 'with nothing in flight the CP covers its own entry');
    } finally {
      log.close();
    }
    for (let round = 0; round < 3; round += 1) {
      const { log: reopened, recovery, replayed } = await openLog(dir);
      try {
        assert.deepStrictEqual(replayed, [], `round ${round}`);
        assert.equal(recovery.cpSeq, cpSeq);
        assert.equal(recovery.lastSeq, cpSeq);
        assert.equal(reopened.status().durableSeq, cpSeq);
        if (round === 2) assert.equal(await append(reopened, write(0, pattern(5, 5))), cpSeq + 1);
      } finally {
        reopened.close();
      }
    }
  });

  test('starts that crash before their first checkpoint keep the session list bounded: one that wrote nothing leaves it', async () => {
    const dir = freshDir();
    const { log } = await openLog(dir);
    let lastSeq = 0;
    try {
      lastSeq = await append(log, write(0, pattern(4096, 1)));
      await log.syncTo(lastSeq);
    } finally {
      log.close();
    }
    // Far more starts than the superblock may list sessions (16), each killed before a
    // checkpoint and before appending: they never end in "crashed repeatedly".
    for (let round = 0; round < 40; round += 1) await reopenReplayed(dir);
    const superblock = JSON.parse(fs.readFileSync(path.join(dir, 'superblock.json'), 'utf8')) as { logIds: number[] };
    assert.equal(superblock.logIds.length, 2, 'the session that wrote the entry, and the last start');
    const { log: last, replayed } = await openLog(dir);
    try {
      assert.deepEqual(seqs(replayed), [lastSeq], 'the durable entry is replayed still');
    } finally {
      last.close();
    }
    // Sessions that did append stay listed until a checkpoint: past 16 of them the log is refused.
    let refused: unknown = null;
    for (let round = 0; round < 20 && refused === null; round += 1) {
      try {
        const { log: next } = await openLog(dir);
        try {
          await next.syncTo(await append(next, write(4096, pattern(4096, round))));
        } finally {
          next.close();
        }
      } catch (error) {
        refused = error;
      }
    }
    assert.ok(refused instanceof LogCorruptError, 'the list is bounded');
    assert.match(refused.message, /sessions since the last consistency point/);
  });

  test('a checkpoint taken while an entry is being applied still replays that entry', async () => {
    // Entry 2 is applied to the volume while the CP's volume sync runs, so that sync may
    // not cover it: the CP must stay below 2, and a crash must replay 2 and what follows.
    const dir = freshDir();
    const { log } = await openLog(dir);
    const ops = [write(0, pattern(100, 1)), write(4096, pattern(100, 2)), write(8192, pattern(100, 3))];
    const [first, second, third] = ops as [Op, Op, Op];
    const seqOf = new Map<Op, number>();
    try {
      seqOf.set(first, await append(log, first));
      log.applied(1);
      seqOf.set(second, await append(log, second));
      let finishSync: () => void = () => undefined;
      let syncStarted: () => void = () => undefined;
      const started = new Promise<void>((resolve) => (syncStarted = resolve));
      const checkpoint = log.checkpoint(
        () => nextStamp(log),
        () =>
          new Promise<void>((resolve) => {
            finishSync = resolve;
            syncStarted();
          }),
      );
      await started;
      log.applied(2);
      finishSync();
      await checkpoint;
      assert.ok(log.status().cpSeq < 2, `the CP claims entry 2 (cpSeq ${log.status().cpSeq}), applied after its sync began`);
      seqOf.set(third, await append(log, third));
      await log.syncTo(log.lastSeq);
    } finally {
      log.close();
    }
    const reopened = await reopenReplayed(dir);
    const cpSeq = reopened.recovery.cpSeq;
    assert.ok(cpSeq < 2, `recovered cpSeq ${cpSeq}`);
    assert.deepStrictEqual(
      writesOnly(reopened.replayed),
      ops.map((op) => expectedEntry(op, seqOf.get(op) ?? 0)).filter((entry) => entry.seq > cpSeq),
    );
  });

  test('appends of odd sizes, concurrent and across reopens, end mid-block and all replay', async () => {
    const random = new Prng(SEED + 11);
    const dir = freshDir();
    const all: Replayed[] = [];
    for (let session = 0; session < 3; session += 1) {
      const { log, replayed } = await openLog(dir, { inlineWriteBytesMax: 0 });
      try {
        assert.deepStrictEqual(writesOnly(replayed), all, `session ${session}, seed ${SEED + 11}`);
        // Concurrent appends: the writer puts them in as few whole-block writes as it can.
        const ops = Array.from({ length: 12 }, () => write(random.below(100) * 512, random.bytes(random.between(1, 5000))));
        const seqs = await Promise.all(ops.map((op) => append(log, op)));
        ops.forEach((op, index) => all.push(expectedEntry(op, seqs[index] ?? -1)));
        await log.syncTo(log.lastSeq);
        // The end of the log is not on a block boundary, and what follows it in its block is zeroes.
        const last = locate(dir, log.lastSeq);
        const end = last.offset + alignedEntryBytes(last.header.payloadBytes);
        const boundary = Math.ceil(end / LOG_BLOCK_BYTES) * LOG_BLOCK_BYTES;
        if (end % LOG_BLOCK_BYTES !== 0) {
          assert.ok(readFileRange(last.file, end, boundary - end).every((byte) => byte === 0));
        }
      } finally {
        log.close();
      }
    }
    const { replayed, recovery } = await reopenReplayed(dir);
    assert.equal(recovery.tornBytes, 0);
    assert.deepStrictEqual(writesOnly(replayed), all, `seed ${SEED + 11}`);
  });

  test('entries from an earlier turn of a reused partition are never replayed', async () => {
    const dir = freshDir();
    const written = await buildLappedLog(dir);
    const { replayed, recovery } = await reopenReplayed(dir);
    const expected = [...written.entries()]
      .filter(([seq]) => seq > recovery.cpSeq)
      .map(([seq, op]) => expectedEntry(op, seq));
    assert.ok(expected.length >= 3, `${expected.length} entries after the CP`);
    assert.deepStrictEqual(writesOnly(replayed), expected, `seed ${SEED}`);
  });

  test("a log that ends cleanly before an earlier turn's entries is not reported as torn", async () => {
    const dir = freshDir();
    await buildLappedLog(dir);
    const { recovery, warnings } = await reopenReplayed(dir);
    // Every entry was synced and the log closed: nothing was torn. The bytes after the
    // end are whole entries of an earlier generation, not the remains of a torn one.
    assert.equal(recovery.tornBytes, 0, 'tornBytes');
    assert.deepStrictEqual(warnings.map((record) => record['msg']), [], 'warnings');
  });

  test('a superblock that fails its checksum, or is not the format, is corruption', async () => {
    const damages: [string, (text: string) => string][] = [
      ['a changed cpSeq', (text) => text.replace(/"cpSeq": \d+/, '"cpSeq": 3')],
      ['a changed crc', (text) => text.replace(/"crc": (\d+)/, (_, crc: string) => `"crc": ${Number(crc) ^ 1}`)],
      ['no crc', (text) => text.replace(/,\s*"crc": \d+/, '')],
      ['another format', (text) => text.replace(/"format": 1/, '"format": 2')],
    ];
    await checkSuperblockDamages(damages);
  });

  test('a superblock that is not JSON at all is corruption too', async () => {
    await checkSuperblockDamages([
      ['cut in half', (text) => text.slice(0, text.length / 2)],
      ['empty', () => ''],
    ]);
  });

  async function checkSuperblockDamages(damages: [string, (text: string) => string][]): Promise<void> {
    for (const [what, damage] of damages) {
      const dir = freshDir();
      await buildLog(dir, mixedOps, 'end');
      const superblock = path.join(dir, 'superblock.json');
      const text = fs.readFileSync(superblock, 'utf8');
      const damaged = damage(text);
      assert.notEqual(damaged, text, what);
      fs.writeFileSync(superblock, damaged);
      await rejectsCorrupt(openLog(dir), escaped(superblock)).catch((error: unknown) => {
        throw new Error(`${what}: ${(error as Error).message}`);
      });
    }
  }

  test('a partition file of the wrong size is corruption', async () => {
    const dir = freshDir();
    await buildLog(dir, mixedOps, 'end');
    fs.truncateSync(partitionPath(dir, 1), 4096);
    const fdsBefore = openFdCount();
    await rejectsCorrupt(openLog(dir), escaped(partitionPath(dir, 1)), /4096 bytes/);
    assert.equal(openFdCount(), fdsBefore);
  });

  test('a log refused during recovery closes the partition files it opened', async () => {
    const dir = freshDir();
    const ops = Array.from({ length: 4 }, (_, index) => write(index * 4096, pattern(500, 30 + index)));
    await buildLog(dir, ops, 'each');
    const before = openFdCount();
    await assert.rejects(
      WriteLog.open(
        {
          dir,
          geometry: SMALL,
          volumeUuid: VOLUME_UUID,
          volumeId: VOLUME_ID,
          activity: new IoActivity(),
          inlineWriteBytesMax: 0,
          log: new Logger({ write: () => undefined }),
          onCheckpointWanted: () => undefined,
        },
        () => Promise.reject(new Error('EIO applying an entry')),
      ),
      /EIO applying an entry/,
    );
    const afterApplyFailed = openFdCount();
    flipByte(locate(dir, 2).file, locate(dir, 2).offset + ENTRY_HEADER_BYTES);
    await rejectsCorrupt(openLog(dir));
    const afterCorrupt = openFdCount();
    assert.deepStrictEqual(
      { afterApplyFailed: afterApplyFailed - before, afterCorrupt: afterCorrupt - afterApplyFailed },
      { afterApplyFailed: 0, afterCorrupt: 0 },
      'file descriptors left open by a refused open',
    );
  });

  test("a log that belongs to another volume is refused", async () => {
    const dir = freshDir();
    await buildLog(dir, mixedOps, 'end');
    const other = '00000000-1111-4222-8333-444444444444';
    await rejectsCorrupt(openLog(dir, { volumeUuid: other }), escaped(VOLUME_UUID), escaped(other));
    // The log is untouched by the refusal.
    const { replayed } = await reopenReplayed(dir);
    assert.equal(replayed.length, mixedOps.length);
  });
});

describe('write log group commit', () => {
  for (const [what, inlineWriteBytesMax] of [
    ['inline appends', 64 * KiB],
    ['thread-pool appends', 0],
  ] as const) {
    test(`100 appends and a syncTo for each share a few fdatasyncs (${what})`, async () => {
      const dir = freshDir();
      const { log } = await openLog(dir, { inlineWriteBytesMax });
      try {
        const appended = Array.from({ length: 100 }, (_, index) =>
          log.append(nextStamp(log), EntryType.WRITE, { offset: index * 512, lengthBytes: 512, flags: 0 }, [pattern(512, index)]),
        );
        assert.deepStrictEqual(appended.map((entry) => entry.seq), Array.from({ length: 100 }, (_, index) => index + 1));
        const order: number[] = [];
        await Promise.all(appended.map((entry) => log.syncTo(entry.seq).then(() => order.push(entry.seq))));
        await Promise.all(appended.map((entry) => entry.written));
        const status = log.status();
        assert.equal(status.durableSeq, 100);
        assert.equal(status.lastSeq, 100);
        assert.equal(order.length, 100);
        assert.ok(status.syncs >= 1 && status.syncs <= 10, `${status.syncs} fdatasyncs for 100 waiters`);
        // Nothing left to make durable: a syncTo of an old entry costs no sync.
        await log.syncTo(50);
        assert.equal(log.status().syncs, status.syncs);
      } finally {
        log.close();
      }
      const { replayed } = await reopenReplayed(dir);
      assert.deepStrictEqual(seqs(replayed), Array.from({ length: 100 }, (_, index) => index + 1));
    });
  }

  test('a syncTo still waiting when the log closes is rejected, not left hanging', async () => {
    const { log } = await openLog(freshDir(), { inlineWriteBytesMax: 0 });
    const entry = log.append(nextStamp(log), EntryType.WRITE, { offset: 0, lengthBytes: 512, flags: 0 }, [pattern(512, 1)]);
    // The entry's write is still on the thread pool: nothing can be synced yet.
    const waiting = log.syncTo(entry.seq);
    log.close();
    await assert.rejects(waiting, /closed before entry 1 was durable/);
    assert.equal(log.status().durableSeq, 0);
    await entry.written.catch(() => undefined);
  });
});
