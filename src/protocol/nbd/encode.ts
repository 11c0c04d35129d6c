// Encoders for everything an NBD server sends. Each returns whole buffers; the caller
// writes a reply's buffers together so replies never interleave on the socket.

import { assert } from '../../lib/assert.js';
import {
  ChunkType,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  GREETING_BYTES,
  IHAVEOPT,
  Info,
  NBDMAGIC,
  OPTION_REPLY_MAGIC,
  Reply,
  ReplyFlag,
  SIMPLE_REPLY_HEADER_BYTES,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_HEADER_BYTES,
  STRUCTURED_REPLY_MAGIC,
} from './constants.js';
import { writeU64 } from '../../lib/wire.js';

export function encodeGreeting(): Buffer {
  const out = Buffer.alloc(GREETING_BYTES);
  out.writeBigUInt64BE(NBDMAGIC, 0);
  out.writeBigUInt64BE(IHAVEOPT, 8);
  out.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return out;
}

export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.allocUnsafe(20 + data.length);
  out.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  out.writeUInt32BE(option, 8);
  out.writeUInt32BE(type, 12);
  out.writeUInt32BE(data.length, 16);
  data.copy(out, 20);
  return out;
}

/** An error reply; the message is a human-readable UTF-8 string the client may show. */
export function encodeOptionError(option: number, type: number, message: string): Buffer {
  assert(type >= Reply.ERR_UNSUP, 'error reply type expected');
  return encodeOptionReply(option, type, Buffer.from(message, 'utf8'));
}

export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  const out = Buffer.alloc(12);
  out.writeUInt16BE(Info.EXPORT, 0);
  writeU64(out, 2, sizeBytes);
  out.writeUInt16BE(transmissionFlags, 10);
  return out;
}

export function encodeInfoString(type: typeof Info.NAME | typeof Info.DESCRIPTION, text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const out = Buffer.alloc(2 + bytes.length);
  out.writeUInt16BE(type, 0);
  bytes.copy(out, 2);
  return out;
}

export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const out = Buffer.alloc(14);
  out.writeUInt16BE(Info.BLOCK_SIZE, 0);
  out.writeUInt32BE(minimum, 2);
  out.writeUInt32BE(preferred, 6);
  out.writeUInt32BE(maximum, 10);
  return out;
}

/** NBD_REP_SERVER data: u32 name length, name, then the description. */
export function encodeServerEntry(name: string, description: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const descriptionBytes = Buffer.from(description, 'utf8');
  const out = Buffer.alloc(4 + nameBytes.length + descriptionBytes.length);
  out.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(out, 4);
  descriptionBytes.copy(out, 4 + nameBytes.length);
  return out;
}

/** NBD_REP_META_CONTEXT data: u32 context id, then the name. */
export function encodeMetaContext(contextId: number, name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const out = Buffer.alloc(4 + nameBytes.length);
  out.writeUInt32BE(contextId, 0);
  nameBytes.copy(out, 4);
  return out;
}

/** The reply to NBD_OPT_EXPORT_NAME: size, flags and, unless NO_ZEROES, 124 zeroes. */
export function encodeExportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const out = Buffer.alloc(noZeroes ? 10 : 134);
  writeU64(out, 0, sizeBytes);
  out.writeUInt16BE(transmissionFlags, 8);
  return out;
}

export function encodeSimpleReply(cookie: bigint, error: number): Buffer {
  const out = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_BYTES);
  out.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  out.writeUInt32BE(error, 4);
  out.writeBigUInt64BE(cookie, 8);
  return out;
}

export function encodeChunkHeader(flags: number, type: number, cookie: bigint, lengthBytes: number): Buffer {
  const out = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES);
  writeChunkHeader(out, flags, type, cookie, lengthBytes);
  return out;
}

function writeChunkHeader(out: Buffer, flags: number, type: number, cookie: bigint, lengthBytes: number): void {
  out.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  out.writeUInt16BE(flags, 4);
  out.writeUInt16BE(type, 6);
  out.writeBigUInt64BE(cookie, 8);
  out.writeUInt32BE(lengthBytes, 16);
}

/** Header and offset of an OFFSET_DATA chunk carrying `dataBytes` bytes; DONE set. */
export function encodeOffsetDataHeader(cookie: bigint, offset: number, dataBytes: number): Buffer {
  const out = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + 8);
  writeChunkHeader(out, ReplyFlag.DONE, ChunkType.OFFSET_DATA, cookie, 8 + dataBytes);
  writeU64(out, STRUCTURED_REPLY_HEADER_BYTES, offset);
  return out;
}

/** A final ERROR chunk with a message (kept short: the spec bounds it by the chunk). */
export function encodeErrorChunk(cookie: bigint, error: number, message: string): Buffer {
  const text = Buffer.from(message.slice(0, 200), 'utf8');
  const out = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + 6 + text.length);
  writeChunkHeader(out, ReplyFlag.DONE, ChunkType.ERROR, cookie, 6 + text.length);
  out.writeUInt32BE(error, STRUCTURED_REPLY_HEADER_BYTES);
  out.writeUInt16BE(text.length, STRUCTURED_REPLY_HEADER_BYTES + 4);
  text.copy(out, STRUCTURED_REPLY_HEADER_BYTES + 6);
  return out;
}

export interface Extent {
  lengthBytes: number;
  flags: number;
}

/** A final BLOCK_STATUS chunk for one meta context. */
export function encodeBlockStatusChunk(cookie: bigint, contextId: number, extents: readonly Extent[]): Buffer {
  assert(extents.length > 0, 'block status needs at least one extent');
  const payloadBytes = 4 + 8 * extents.length;
  const out = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + payloadBytes);
  writeChunkHeader(out, ReplyFlag.DONE, ChunkType.BLOCK_STATUS, cookie, payloadBytes);
  out.writeUInt32BE(contextId, STRUCTURED_REPLY_HEADER_BYTES);
  let at = STRUCTURED_REPLY_HEADER_BYTES + 4;
  for (const extent of extents) {
    assert(extent.lengthBytes > 0 && extent.lengthBytes < 2 ** 32, 'extent length out of range');
    out.writeUInt32BE(extent.lengthBytes, at);
    out.writeUInt32BE(extent.flags, at + 4);
    at += 8;
  }
  return out;
}

