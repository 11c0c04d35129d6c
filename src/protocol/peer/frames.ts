// Framing of the node-to-node protocol: encoders for every frame a node sends to a peer
// and an incremental decoder for what it receives. Every frame is a 16-byte header (magic,
// type, reserved zeroes, body length, CRC32C over the first 12 header bytes and the body)
// and a body whose layout the type fixes (bodies.ts). This module only turns bytes into
// checked messages and back: it never decides whether a message is acceptable in the
// connection's current state, performs no I/O, and never buffers a body before its length
// passed the limit.
//
//   0 magic u32 'BMPF'   4 type u8   5 reserved u8   6 reserved u16   8 body bytes u32
//  12 CRC32C u32 (header bytes 0..11, then the body)
//
// An ENTRY frame's CRC covers its 64-byte log entry header only: that header carries the
// CRC32C of the payload, which the decoder checks too. The payload is checksummed once
// on each side instead of twice, which matters for large writes. READ_DATA is laid out
// and checked the same way.

import { assert } from '../../lib/assert.js';
import { ByteQueue } from '../../lib/byte-queue.js';
import { crc32c } from '../../lib/crc32c.js';
import { decodeEntryHeader, encodeEntryHeader, ENTRY_HEADER_BYTES, EntryType } from '../log-entry.js';
import { decodeBody, decodeEntryBody, encodeControlBody, FIXED_BODY_BYTES } from './bodies.js';
import { PeerProtocolError } from './errors.js';
import {
  PEER_CONTROL_BODY_BYTES_MAX,
  PEER_FRAME_HEADER_BYTES,
  PEER_FRAME_MAGIC,
  PEER_READ_BYTES_MAX,
  PeerFrameType,
  peerFrameName,
  type PeerControlMessage,
  type PeerMessage,
} from './messages.js';

// Callers get the whole protocol surface (message types, codes, limits) from this module.
export * from './messages.js';

const TYPE_CODES: Record<PeerMessage['type'], PeerFrameType> = {
  hello: PeerFrameType.HELLO,
  challenge: PeerFrameType.CHALLENGE,
  auth: PeerFrameType.AUTH,
  ready: PeerFrameType.READY,
  refuse: PeerFrameType.REFUSE,
  'split-brain': PeerFrameType.SPLIT_BRAIN,
  entry: PeerFrameType.ENTRY,
  ack: PeerFrameType.ACK,
  flush: PeerFrameType.FLUSH,
  flushed: PeerFrameType.FLUSHED,
  sync: PeerFrameType.SYNC,
  synced: PeerFrameType.SYNCED,
  reset: PeerFrameType.RESET,
  'reset-done': PeerFrameType.RESET_DONE,
  diverged: PeerFrameType.DIVERGED,
  verify: PeerFrameType.VERIFY,
  verified: PeerFrameType.VERIFIED,
  'in-sync': PeerFrameType.IN_SYNC,
  read: PeerFrameType.READ,
  'read-data': PeerFrameType.READ_DATA,
  'read-failed': PeerFrameType.READ_FAILED,
};
const KNOWN_TYPES = new Set<number>(Object.values(PeerFrameType));

const TWO_POW_32 = 2 ** 32;

// ---------------------------------------------------------------------------------------
// Encoding. Arguments come from this node, so a bad one is a bug and asserts.

/** The 16-byte header of a frame of `bodyBytes`, whose checksum covers `covered` (the body, or an ENTRY's entry header). */
function encodeFrameHeader(type: PeerFrameType, bodyBytes: number, covered: readonly Buffer[]): Buffer {
  assert(bodyBytes < TWO_POW_32, 'peer frame body too large');
  const out = Buffer.alloc(PEER_FRAME_HEADER_BYTES);
  out.writeUInt32BE(PEER_FRAME_MAGIC, 0);
  out.writeUInt8(type, 4);
  out.writeUInt32BE(bodyBytes, 8);
  out.writeUInt32BE(crc32c([out.subarray(0, 12), ...covered]), 12);
  return out;
}

/**
 * An ENTRY frame as buffers to write in order: frame header, the entry header, then the
 * payload slices as given (not copied). The entry header must be valid and describe
 * exactly this payload; its payload CRC is not recomputed here.
 */
export function encodeEntryFrame(entryHeader: Buffer, payload: readonly Buffer[]): Buffer[] {
  assert(entryHeader.length === ENTRY_HEADER_BYTES, 'entry header must be 64 bytes');
  const header = decodeEntryHeader(entryHeader);
  assert(typeof header !== 'string', `entry header invalid: ${String(header)}`);
  const payloadBytes = payload.reduce((sum, part) => sum + part.length, 0);
  assert(payloadBytes === header.payloadBytes, 'entry payload does not match its header');
  return [encodeFrameHeader(PeerFrameType.ENTRY, ENTRY_HEADER_BYTES + payloadBytes, [entryHeader]), entryHeader, ...payload];
}

/**
 * A READ_DATA frame answering READ `token`: the bytes of the range at `offset`, as buffers
 * to write in order (the data is not copied).
 */
export function encodeReadDataFrame(token: number, offset: number, data: Buffer): Buffer[] {
  assert(Number.isInteger(token) && token >= 0 && token <= 0xffffffff, 'READ token out of range');
  assert(data.length > 0 && data.length <= PEER_READ_BYTES_MAX, 'READ_DATA of 1..PEER_READ_BYTES_MAX bytes');
  const entryHeader = encodeEntryHeader({ type: EntryType.WRITE, flags: 0, logId: 0, volumeId: 0, seq: token, durableSeq: 0, offset, lengthBytes: data.length, generation: 0, epoch: 0 }, [data]);
  return [encodeFrameHeader(PeerFrameType.READ_DATA, ENTRY_HEADER_BYTES + data.length, [entryHeader]), entryHeader, data];
}

/** Any frame but ENTRY and READ_DATA, as one buffer. */
export function encodeFrame(message: PeerControlMessage): Buffer {
  const body = encodeControlBody(message);
  return Buffer.concat([encodeFrameHeader(TYPE_CODES[message.type], body.length, [body]), body]);
}

interface PendingFrame {
  type: PeerFrameType;
  bodyBytes: number;
  crc: number;
  /** Header bytes 0..11, the start of the checksummed range. */
  prefix: Buffer;
}

export interface PeerFrameDecoderOptions {
  /** Largest ENTRY body accepted: 64-byte entry header plus the largest payload. */
  entryBodyBytesMax: number;
}

/**
 * Turns the bytes of one connection into messages. The first bad frame is fatal: push
 * throws a PeerProtocolError, drops what it holds, and throws on every later call, since a
 * stream that lost its framing cannot be resynchronised. Messages decoded from the same
 * chunk before the bad frame are not returned; the connection is closed either way.
 */
export class PeerFrameDecoder {
  private readonly queue = new ByteQueue();
  private pending: PendingFrame | undefined;
  private failure: PeerProtocolError | undefined;
  private readonly entryBodyBytesMax: number;

  constructor(options: PeerFrameDecoderOptions) {
    this.entryBodyBytesMax = options.entryBodyBytesMax;
    assert(
      Number.isSafeInteger(this.entryBodyBytesMax) && this.entryBodyBytesMax >= ENTRY_HEADER_BYTES && this.entryBodyBytesMax < TWO_POW_32,
      'entryBodyBytesMax out of range',
    );
  }

  /** Bytes held: a partial header, or the announced frame's header and partial body. */
  get bufferedBytes(): number {
    return this.queue.length + (this.pending === undefined ? 0 : PEER_FRAME_HEADER_BYTES);
  }

  push(chunk: Buffer): PeerMessage[] {
    if (this.failure !== undefined) {
      throw new PeerProtocolError('peer frame decoder stopped after an earlier error', { cause: this.failure });
    }
    try {
      this.queue.push(chunk);
      const messages: PeerMessage[] = [];
      for (;;) {
        if (this.pending === undefined) {
          if (this.queue.length < PEER_FRAME_HEADER_BYTES) break;
          this.pending = this.decodeHeader(this.queue.read(PEER_FRAME_HEADER_BYTES));
        }
        const frame = this.pending;
        if (this.queue.length < frame.bodyBytes) break;
        this.pending = undefined;
        if (frame.type === PeerFrameType.ENTRY || frame.type === PeerFrameType.READ_DATA) {
          // The entry header (decodeHeader made sure the body holds one) is copied if it
          // spans chunks; the payload never is: it stays slices of the received chunks
          // (its CRC is in the header, checked below).
          const head = this.queue.read(ENTRY_HEADER_BYTES);
          const payload = this.queue.readSlices(frame.bodyBytes - ENTRY_HEADER_BYTES);
          const name = peerFrameName(frame.type);
          if (crc32c([frame.prefix, head]) !== frame.crc) throw new PeerProtocolError(`${name} frame checksum mismatch`);
          const entry = decodeEntryBody(head, payload, frame.bodyBytes, name);
          if (frame.type === PeerFrameType.ENTRY) {
            messages.push(entry);
            continue;
          }
          if (entry.header.type !== EntryType.WRITE || entry.header.lengthBytes === 0) throw new PeerProtocolError('READ_DATA must carry a WRITE entry with bytes');
          messages.push({ type: 'read-data', header: entry.header, payload: entry.payload, bodyBytes: entry.bodyBytes });
          continue;
        }
        // Copies only when the body spans chunks, once, now that all of it is here.
        const body = this.queue.read(frame.bodyBytes);
        if (crc32c([frame.prefix, body]) !== frame.crc) {
          throw new PeerProtocolError(`${peerFrameName(frame.type)} frame checksum mismatch`);
        }
        messages.push(decodeBody(frame.type, body));
      }
      return messages;
    } catch (error) {
      if (error instanceof PeerProtocolError) {
        this.failure = error;
        this.pending = undefined;
        this.queue.skip(this.queue.length);
      }
      throw error;
    }
  }

  /** Checks everything the header alone can tell, so no oversized body is ever buffered. */
  private decodeHeader(header: Buffer): PendingFrame {
    const magic = header.readUInt32BE(0);
    if (magic !== PEER_FRAME_MAGIC) throw new PeerProtocolError(`bad peer frame magic 0x${magic.toString(16)}`);
    const type = header.readUInt8(4);
    if (!KNOWN_TYPES.has(type)) throw new PeerProtocolError(`unknown peer frame type ${type}`);
    if (header.readUInt8(5) !== 0 || header.readUInt16BE(6) !== 0) {
      throw new PeerProtocolError('peer frame reserved header bytes are not zero');
    }
    const bodyBytes = header.readUInt32BE(8);
    const name = peerFrameName(type);
    const fixed = FIXED_BODY_BYTES.get(type);
    if (fixed !== undefined && bodyBytes !== fixed) {
      throw new PeerProtocolError(`${name} body of ${bodyBytes} bytes, expected ${fixed}`);
    }
    const entryLike = type === PeerFrameType.ENTRY || type === PeerFrameType.READ_DATA;
    const max = entryLike ? this.entryBodyBytesMax : PEER_CONTROL_BODY_BYTES_MAX;
    if (bodyBytes > max) throw new PeerProtocolError(`${name} body of ${bodyBytes} bytes exceeds ${max}`);
    if (entryLike && bodyBytes < ENTRY_HEADER_BYTES) {
      throw new PeerProtocolError(`${name} body of ${bodyBytes} bytes is shorter than an entry header`);
    }
    return { type: type as PeerFrameType, bodyBytes, crc: header.readUInt32BE(12), prefix: header.subarray(0, 12) };
  }
}
