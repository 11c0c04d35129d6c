// The file in which the copy that lost a split brain keeps its writes past the last entry
// both copies share, read from its volume before the winner's writes overwrite them, so
// that an operator can look at them (`blockmirror split-brain show`) and put them back
// where they are wanted (`blockmirror split-brain extract`). It lies at
// `<dataDir>/split-brain/<volume>-<epoch>.log` and is never overwritten: a second save
// of the same volume and epoch goes to `<volume>-<epoch>.2.log`, then `.3.log`, and so on.
//
//   header block, 4096 bytes   0 magic u32 'BMSB'    4 version u16 (1)   6 reserved u16 (0)
//                              8 meta length u32     12 meta CRC32C u32
//                             16 the meta (SplitBrainMeta) as JSON in UTF-8, then zeroes
//   records, from byte 4096    each one WRITE entry as the write log encodes it
//                              (src/protocol/log-entry.ts), payload at most 1 MiB
//
// A record holds the loser's bytes of a range it wrote past the shared entry, as its
// volume holds them now, not one of its entries (its log may no longer have them): so
// records are numbered 1, 2, 3... in file order, carry the volume id and the loser's
// epoch, and have log id, flags, durable sequence number and generation 0. They are
// entries so that the codec and CRCs that check every entry read back check them too.
// The header is a whole block so that records start block-aligned. All integers are
// big-endian.

import fs from 'node:fs';
import path from 'node:path';
import { assert } from '../lib/assert.js';
import { crc32c } from '../lib/crc32c.js';
import { BlockmirrorError } from '../lib/errors.js';
import {
  alignedEntryBytes,
  decodeEntryHeader,
  encodeEntryHeader,
  ENTRY_HEADER_BYTES,
  EntryType,
  payloadMatches,
  type EntryHeader,
  type HeaderProblem,
} from '../protocol/log-entry.js';
import type { DurableFiles } from './durable-files.js';

export const SPLIT_BRAIN_MAGIC = 0x424d5342; // 'BMSB'
export const SPLIT_BRAIN_VERSION = 1;
export const SPLIT_BRAIN_HEADER_BYTES = 4096;
/** Where the meta's JSON starts in the header block. */
export const SPLIT_BRAIN_META_AT = 16;
/** A record's payload at most; a longer range is cut into several records. */
export const SPLIT_BRAIN_RECORD_PAYLOAD_BYTES_MAX = 1024 * 1024;

export interface SplitBrainMeta {
  volume: string;
  volumeId: number;
  /** The copy that lost, whose writes the file holds. */
  node: string;
  /** The copy that won, whose writes overwrite them. */
  winner: string;
  /** The loser's epoch, in which it took these writes. */
  epoch: number;
  /** The last entry both copies share. */
  sharedSeq: number;
  /** The loser's last entry. */
  lastSeq: number;
  /** When the file was written (ISO 8601). */
  savedAt: string;
  /** A sentence: what the records hold. */
  what: string;
}

/** One record read back: `lengthBytes` bytes of the volume at `offset`. */
export interface SplitBrainRecord {
  seq: number;
  offset: number;
  lengthBytes: number;
  payload: Buffer;
}

export interface SplitBrainFile {
  meta: SplitBrainMeta;
  /** The records in file order, each checked before it is yielded; damage is thrown. */
  records(): AsyncIterable<SplitBrainRecord>;
}

export function splitBrainDir(dataDir: string): string {
  return path.join(dataDir, 'split-brain');
}

export function splitBrainFileName(volume: string, epoch: number): string {
  // Volume names are checked by the cluster file (no separators); this keeps the file in its directory.
  assert(volume !== '' && !volume.includes('/') && !volume.includes('\0'), `volume name ${JSON.stringify(volume)} cannot name a file`);
  assert(Number.isSafeInteger(epoch) && epoch >= 0, `epoch ${epoch} is not a whole number`);
  return `${volume}-${epoch}.log`;
}

/** The nth name for a save to `filePath`: the first is itself, then `<name>.2.log`, `<name>.3.log`... */
export function numberedFileName(filePath: string, n: number): string {
  assert(Number.isSafeInteger(n) && n >= 1, 'names are numbered from 1');
  if (n === 1) return filePath;
  const extension = path.extname(filePath);
  return `${filePath.slice(0, filePath.length - extension.length)}.${n}${extension}`;
}

// ---- writing ---------------------------------------------------------------------------

/**
 * Saves what `read` gives for each extent, in order, as a split-brain file at `filePath`
 * (its directory made if missing), or at the first numbered name that is free when a
 * file is there already: a saved file is never overwritten. The file appears whole or
 * not at all (DurableFiles.installFile); one record is in memory at a time. The name is
 * chosen before the file is written, so saves to one name must not run at once.
 */
export async function writeSplitBrainFile(
  files: DurableFiles,
  filePath: string,
  meta: SplitBrainMeta,
  extents: readonly { offset: number; lengthBytes: number }[],
  read: (offset: number, lengthBytes: number) => Promise<Buffer>,
): Promise<{ path: string; records: number; bytes: number }> {
  const header = encodeHeaderBlock(meta);
  files.makeDir(path.dirname(filePath), 'split-brain');
  let target = filePath;
  for (let n = 2; files.kind(target) !== null; n += 1) target = numberedFileName(filePath, n);
  let records = 0;
  const bytes = await files.installFile(target, 'split-brain', async (append) => {
    append(header);
    for (const piece of recordPieces(extents)) {
      const payload = await read(piece.offset, piece.lengthBytes);
      assert(payload.length === piece.lengthBytes, `read ${payload.length} bytes at ${piece.offset}, asked for ${piece.lengthBytes}`);
      records += 1;
      for (const part of encodeRecord(meta, records, piece.offset, payload)) append(part);
    }
  });
  return { path: target, records, bytes };
}

/** The ranges of the records, in order: each extent cut into pieces of at most 1 MiB (none for an empty one). */
export function* recordPieces(extents: readonly { offset: number; lengthBytes: number }[]): Generator<{ offset: number; lengthBytes: number }> {
  for (const extent of extents) {
    assert(Number.isSafeInteger(extent.offset) && extent.offset >= 0, `extent offset ${extent.offset}`);
    assert(Number.isSafeInteger(extent.lengthBytes) && extent.lengthBytes >= 0, `extent length ${extent.lengthBytes}`);
    for (let done = 0; done < extent.lengthBytes; done += SPLIT_BRAIN_RECORD_PAYLOAD_BYTES_MAX) {
      yield { offset: extent.offset + done, lengthBytes: Math.min(SPLIT_BRAIN_RECORD_PAYLOAD_BYTES_MAX, extent.lengthBytes - done) };
    }
  }
}

/**
 * The header block. The meta is made by the node from names the cluster file limits, so
 * one that does not fit is a bug, not an operating error.
 */
export function encodeHeaderBlock(meta: SplitBrainMeta): Buffer {
  assert(Number.isInteger(meta.volumeId) && meta.volumeId >= 0 && meta.volumeId <= 0xffffffff, `volume id ${meta.volumeId} is not a u32`);
  assert(Number.isInteger(meta.epoch) && meta.epoch >= 0 && meta.epoch <= 0xffffffff, `epoch ${meta.epoch} is not a u32`);
  const json = Buffer.from(JSON.stringify(metaFields(meta)), 'utf8');
  assert(json.length <= SPLIT_BRAIN_HEADER_BYTES - SPLIT_BRAIN_META_AT, `the meta is ${json.length} bytes of JSON; the header block holds ${SPLIT_BRAIN_HEADER_BYTES - SPLIT_BRAIN_META_AT}`);
  const block = Buffer.alloc(SPLIT_BRAIN_HEADER_BYTES);
  block.writeUInt32BE(SPLIT_BRAIN_MAGIC, 0);
  block.writeUInt16BE(SPLIT_BRAIN_VERSION, 4);
  block.writeUInt16BE(0, 6);
  block.writeUInt32BE(json.length, 8);
  block.writeUInt32BE(crc32c(json), 12);
  json.copy(block, SPLIT_BRAIN_META_AT);
  return block;
}

/** The record's header, payload and padding, as the write log would write the entry. */
function encodeRecord(meta: SplitBrainMeta, seq: number, offset: number, payload: Buffer): Buffer[] {
  const header = encodeEntryHeader(
    { type: EntryType.WRITE, flags: 0, logId: 0, volumeId: meta.volumeId, seq, durableSeq: 0, offset, lengthBytes: payload.length, generation: 0, epoch: meta.epoch },
    [payload],
  );
  const padding = alignedEntryBytes(payload.length) - ENTRY_HEADER_BYTES - payload.length;
  return [header, payload, Buffer.alloc(padding)];
}

/** The meta's fields alone, in a fixed order (what a caller's object may carry besides is not saved). */
function metaFields(meta: SplitBrainMeta): SplitBrainMeta {
  const { volume, volumeId, node, winner, epoch, sharedSeq, lastSeq, savedAt, what } = meta;
  return { volume, volumeId, node, winner, epoch, sharedSeq, lastSeq, savedAt, what };
}

// ---- reading ---------------------------------------------------------------------------

/** What is wrong with a file, and the byte at which it starts (the bad record's, for a record). */
export interface Damage {
  at: number;
  problem: string;
}

/** Reads and checks the header block; the records are read, one at a time, as they are iterated. */
export async function openSplitBrainFile(filePath: string): Promise<SplitBrainFile> {
  const handle = await fs.promises.open(filePath, 'r');
  let meta: SplitBrainMeta | Damage;
  try {
    const block = Buffer.alloc(SPLIT_BRAIN_HEADER_BYTES);
    const got = await readFully(handle, block, 0);
    meta = decodeHeaderBlock(block.subarray(0, got));
  } finally {
    await handle.close();
  }
  if (isDamage(meta)) throw damaged(filePath, meta);
  const checked = meta;
  return { meta: checked, records: () => readRecords(filePath, checked) };
}

/** The meta of a header block, or what is wrong with it. */
export function decodeHeaderBlock(block: Buffer): SplitBrainMeta | Damage {
  if (block.length < SPLIT_BRAIN_HEADER_BYTES) return { at: 0, problem: `the header block is cut short (${block.length} of ${SPLIT_BRAIN_HEADER_BYTES} bytes)` };
  const magic = block.readUInt32BE(0);
  if (magic !== SPLIT_BRAIN_MAGIC) return { at: 0, problem: `not a split-brain file (magic 0x${magic.toString(16).padStart(8, '0')})` };
  const version = block.readUInt16BE(4);
  if (version !== SPLIT_BRAIN_VERSION) return { at: 4, problem: `format version ${version}; this build reads version ${SPLIT_BRAIN_VERSION}` };
  if (block.readUInt16BE(6) !== 0) return { at: 6, problem: 'the reserved field is not zero' };
  const length = block.readUInt32BE(8);
  const end = SPLIT_BRAIN_META_AT + length;
  if (end > SPLIT_BRAIN_HEADER_BYTES) return { at: 8, problem: `a meta of ${length} bytes does not fit the header block` };
  const json = block.subarray(SPLIT_BRAIN_META_AT, end);
  if (crc32c(json) !== block.readUInt32BE(12)) return { at: SPLIT_BRAIN_META_AT, problem: 'the meta does not match its CRC32C' };
  if (block.subarray(end).some((byte) => byte !== 0)) return { at: end, problem: 'the header block is not zero after the meta' };
  return parseMeta(json);
}

function parseMeta(json: Buffer): SplitBrainMeta | Damage {
  let value: unknown;
  try {
    value = JSON.parse(json.toString('utf8'));
  } catch {
    return { at: SPLIT_BRAIN_META_AT, problem: 'the meta is not JSON' };
  }
  if (typeof value !== 'object' || value === null) return { at: SPLIT_BRAIN_META_AT, problem: 'the meta is not a JSON object' };
  const fields = value as Record<string, unknown>;
  for (const name of ['volume', 'node', 'winner', 'savedAt', 'what'] as const) {
    if (typeof fields[name] !== 'string') return { at: SPLIT_BRAIN_META_AT, problem: `the meta's ${name} is not a string` };
  }
  for (const name of ['volumeId', 'epoch', 'sharedSeq', 'lastSeq'] as const) {
    const field = fields[name];
    if (typeof field !== 'number' || !Number.isSafeInteger(field) || field < 0) return { at: SPLIT_BRAIN_META_AT, problem: `the meta's ${name} is not a whole number` };
  }
  return metaFields(fields as unknown as SplitBrainMeta);
}

async function* readRecords(filePath: string, meta: SplitBrainMeta): AsyncGenerator<SplitBrainRecord> {
  const handle = await fs.promises.open(filePath, 'r');
  try {
    const sizeBytes = (await handle.stat()).size;
    const header = Buffer.alloc(ENTRY_HEADER_BYTES);
    for (let at = SPLIT_BRAIN_HEADER_BYTES, seq = 1; at < sizeBytes; seq += 1) {
      const got = await readFully(handle, header, at);
      if (got < ENTRY_HEADER_BYTES) throw damaged(filePath, { at, problem: `the record is cut short: the file ends at byte ${at + got}, within its ${ENTRY_HEADER_BYTES}-byte header` });
      const found = checkRecordHeader(header, meta, seq);
      if (typeof found === 'string') throw damaged(filePath, { at, problem: found });
      const stored = alignedEntryBytes(found.payloadBytes) - ENTRY_HEADER_BYTES;
      if (at + ENTRY_HEADER_BYTES + stored > sizeBytes) {
        throw damaged(filePath, { at, problem: `the record is cut short: it needs ${ENTRY_HEADER_BYTES + stored} bytes, the file ends at byte ${sizeBytes}` });
      }
      // A fresh buffer for each record: the one yielded stays the caller's.
      const body = Buffer.alloc(stored);
      if ((await readFully(handle, body, at + ENTRY_HEADER_BYTES)) < stored) throw damaged(filePath, { at, problem: 'the record is cut short: the file shrank while it was read' });
      const payload = body.subarray(0, found.payloadBytes);
      if (!payloadMatches(found, payload)) throw damaged(filePath, { at, problem: `record ${seq}'s payload does not match its CRC32C` });
      if (body.subarray(found.payloadBytes).some((byte) => byte !== 0)) throw damaged(filePath, { at, problem: `record ${seq}'s padding is not zero` });
      yield { seq, offset: found.offset, lengthBytes: found.lengthBytes, payload };
      at += ENTRY_HEADER_BYTES + stored;
    }
  } finally {
    await handle.close();
  }
}

const headerProblems: Record<HeaderProblem, string> = {
  magic: 'no entry magic where a record starts',
  version: 'an entry format version this build does not read',
  'header-crc': 'the record header does not match its CRC32C',
  fields: 'the record header has fields no writer produces',
};

/** The header of record number `seq`, checked against the file's meta, or what is wrong with it. */
export function checkRecordHeader(bytes: Buffer, meta: SplitBrainMeta, seq: number): EntryHeader | string {
  const header = decodeEntryHeader(bytes);
  if (typeof header === 'string') return headerProblems[header];
  if (header.type !== EntryType.WRITE || header.flags !== 0 || header.logId !== 0 || header.durableSeq !== 0 || header.generation !== 0) {
    return 'an entry that is not a split-brain record (a WRITE with flags, log id, durable sequence number and generation 0)';
  }
  if (header.volumeId !== meta.volumeId || header.epoch !== meta.epoch) {
    return `a record of volume id ${header.volumeId} in epoch ${header.epoch}; the file holds volume id ${meta.volumeId} in epoch ${meta.epoch}`;
  }
  if (header.seq !== seq) return `record ${header.seq} where record ${seq} belongs`;
  if (header.payloadBytes > SPLIT_BRAIN_RECORD_PAYLOAD_BYTES_MAX) return `a payload of ${header.payloadBytes} bytes, more than a record holds`;
  return header;
}

function isDamage(value: object): value is Damage {
  return 'problem' in value;
}

function damaged(filePath: string, damage: Damage): BlockmirrorError {
  return new BlockmirrorError('ERR_BAD_FILE', `${filePath}, byte ${damage.at}: ${damage.problem}`);
}

/** Fills `buffer` from `position` on; fewer bytes only at the end of the file. */
async function readFully(handle: fs.promises.FileHandle, buffer: Buffer, position: number): Promise<number> {
  let got = 0;
  while (got < buffer.length) {
    const { bytesRead } = await handle.read(buffer, got, buffer.length - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}
