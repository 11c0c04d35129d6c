// The write log's entry format, which is also what an ENTRY frame carries from a primary
// to its secondaries (protocol/peer). One entry is a 64-byte header, then the payload, padded
// to a multiple of 64 bytes so entries start on 64-byte boundaries (which lets recovery
// look for later entries after a damaged one). All integers are big-endian.
//
//   0 magic u32 'BMLE'      4 version u8   5 type u8   6 flags u16
//   8 header CRC32C u32 (over bytes 0..7 and 12..63)   12 payload CRC32C u32
//  16 log id u32 (random per session of the log; a guest's data never passes for an entry)
//  20 volume id u32         24 sequence number u64    32 durable sequence number u64
//  40 offset u64            48 length u32 (bytes of volume the entry covers)
//  52 payload bytes u32     56 generation u32 (of the partition it was written in)
//  60 epoch u32
//
// `durableSeq` is the highest sequence number known durable when the entry was appended.
// Recovery uses it to tell a torn tail (damage after the last sync, which a crash may
// leave) from corruption of entries that had been made durable.

import { assert } from '../lib/assert.js';
import { crc32c } from '../lib/crc32c.js';
import { readU64, writeU64 } from '../lib/wire.js';

export const ENTRY_HEADER_BYTES = 64;
export const ENTRY_ALIGN_BYTES = 64;
export const ENTRY_MAGIC = 0x424d4c45; // 'BMLE'
export const ENTRY_VERSION = 1;

export const EntryType = {
  WRITE: 1,
  ZEROES: 2,
  TRIM: 3,
  CONSISTENCY_POINT: 4,
} as const;
export type EntryType = (typeof EntryType)[keyof typeof EntryType];

/** Entry flags. */
export const EntryFlag = {
  /** ZEROES: keep the range allocated (NBD NO_HOLE). */
  NO_HOLE: 0x1,
  /**
   * WRITE: the current contents of a region, logged to bring a peer back (resync). The
   * primary's volume already holds them; a replica writes them like any write.
   */
  RESYNC: 0x2,
} as const;

export interface EntryHeader {
  type: EntryType;
  flags: number;
  logId: number;
  volumeId: number;
  seq: number;
  durableSeq: number;
  /** WRITE/ZEROES/TRIM: byte offset in the volume. CONSISTENCY_POINT: the CP's sequence number. */
  offset: number;
  lengthBytes: number;
  payloadBytes: number;
  generation: number;
  epoch: number;
  payloadCrc: number;
}

export function alignedEntryBytes(payloadBytes: number): number {
  return ENTRY_HEADER_BYTES + Math.ceil(payloadBytes / ENTRY_ALIGN_BYTES) * ENTRY_ALIGN_BYTES;
}

/** Values past 2^53 cannot be produced by this writer; they read as NaN and fail the field checks. */
function readSeqField(buffer: Buffer, at: number): number {
  return readU64(buffer, at) ?? Number.NaN;
}

/**
 * Encodes an entry header for `payload` (written right after it), computing both CRCs.
 * `knownPayloadCrc`, when given, must be the payload's CRC32C as already checked by the
 * caller (a replica storing an entry it received checked it on receipt); it is then not
 * computed a second time.
 */
export function encodeEntryHeader(
  fields: Omit<EntryHeader, 'payloadCrc' | 'payloadBytes'>,
  payload: readonly Buffer[],
  knownPayloadCrc?: number,
): Buffer {
  const payloadBytes = payload.reduce((sum, slice) => sum + slice.length, 0);
  assert(fields.type !== EntryType.WRITE || payloadBytes === fields.lengthBytes, 'write entry payload must match its length');
  assert(fields.type === EntryType.WRITE || payloadBytes === 0, 'only write entries carry a payload');
  const out = Buffer.alloc(ENTRY_HEADER_BYTES);
  out.writeUInt32BE(ENTRY_MAGIC, 0);
  out.writeUInt8(ENTRY_VERSION, 4);
  out.writeUInt8(fields.type, 5);
  out.writeUInt16BE(fields.flags, 6);
  out.writeUInt32BE(payloadBytes === 0 ? 0 : (knownPayloadCrc ?? crc32c(payload)), 12);
  out.writeUInt32BE(fields.logId >>> 0, 16);
  out.writeUInt32BE(fields.volumeId >>> 0, 20);
  writeU64(out, 24, fields.seq);
  writeU64(out, 32, fields.durableSeq);
  writeU64(out, 40, fields.offset);
  out.writeUInt32BE(fields.lengthBytes, 48);
  out.writeUInt32BE(payloadBytes, 52);
  out.writeUInt32BE(fields.generation >>> 0, 56);
  out.writeUInt32BE(fields.epoch >>> 0, 60);
  out.writeUInt32BE(headerCrc(out, 0), 8);
  return out;
}

/** CRC32C of a header, every byte but the CRC field itself. */
function headerCrc(buffer: Buffer, at: number): number {
  return crc32c([buffer.subarray(at, at + 8), buffer.subarray(at + 12, at + ENTRY_HEADER_BYTES)]);
}

export type HeaderProblem = 'magic' | 'version' | 'header-crc' | 'fields';

/** Decodes and checks a header (not its payload); returns the problem if it is not valid. */
export function decodeEntryHeader(buffer: Buffer, at = 0): EntryHeader | HeaderProblem {
  assert(buffer.length - at >= ENTRY_HEADER_BYTES, 'header needs 64 bytes');
  if (buffer.readUInt32BE(at) !== ENTRY_MAGIC) return 'magic';
  if (buffer.readUInt8(at + 4) !== ENTRY_VERSION) return 'version';
  if (headerCrc(buffer, at) !== buffer.readUInt32BE(at + 8)) return 'header-crc';
  const header: EntryHeader = {
    type: buffer.readUInt8(at + 5) as EntryType,
    flags: buffer.readUInt16BE(at + 6),
    payloadCrc: buffer.readUInt32BE(at + 12),
    logId: buffer.readUInt32BE(at + 16),
    volumeId: buffer.readUInt32BE(at + 20),
    seq: readSeqField(buffer, at + 24),
    durableSeq: readSeqField(buffer, at + 32),
    offset: readSeqField(buffer, at + 40),
    lengthBytes: buffer.readUInt32BE(at + 48),
    payloadBytes: buffer.readUInt32BE(at + 52),
    generation: buffer.readUInt32BE(at + 56),
    epoch: buffer.readUInt32BE(at + 60),
  };
  const knownType = (Object.values(EntryType) as number[]).includes(header.type);
  const payloadMatches =
    header.type === EntryType.WRITE ? header.payloadBytes === header.lengthBytes : header.payloadBytes === 0;
  if (!knownType || !payloadMatches || Number.isNaN(header.seq) || Number.isNaN(header.durableSeq) || Number.isNaN(header.offset)) {
    return 'fields';
  }
  return header;
}

export function payloadMatches(header: EntryHeader, payload: Buffer | readonly Buffer[]): boolean {
  const bytes = Buffer.isBuffer(payload) ? payload.length : payload.reduce((sum, slice) => sum + slice.length, 0);
  return bytes === header.payloadBytes && (bytes === 0 || crc32c(payload) === header.payloadCrc);
}
