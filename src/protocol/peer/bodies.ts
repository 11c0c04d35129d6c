// The layout of every frame body: how each message becomes the bytes after the frame
// header and back. Framing (magic, length, checksum, limits) is frames.ts's job; this
// module sees one whole, checksummed body at a time. Encoders take this node's own values,
// so a bad argument is a bug and asserts; decoders take the network's, so every problem
// is a PeerProtocolError.
//
// Why one file of this size: it is the protocol's one table of layouts, an encoder and a
// decoder case per frame side by side, so that a field changed on one side is seen to be
// changed on the other.

import { assert } from '../../lib/assert.js';
import { decodeEntryHeader, ENTRY_HEADER_BYTES, payloadMatches } from '../log-entry.js';
import { PeerProtocolError } from './errors.js';
import {
  PEER_CONNECTIONS_MAX,
  PEER_DIGEST_BYTES,
  PEER_DISK_STATES,
  PEER_DIVERGED_EXTENTS_MAX,
  PEER_HISTORY_EPOCHS_MAX,
  PEER_VERIFY_BYTES_MAX,
  PEER_READ_BYTES_MAX,
  PEER_MAC_BYTES,
  PEER_NAME_BYTES_MAX,
  PEER_NONCE_BYTES,
  PEER_PROTOCOL_VERSION,
  PEER_REFUSE_MESSAGE_BYTES_MAX,
  PeerFrameType,
  peerFrameName,
  RefuseCode,
  type PeerControlMessage,
  type PeerEpochStart,
  type PeerEntry,
  type PeerMessage,
} from './messages.js';
import { nameBytes, readU64, writeU64 } from '../../lib/wire.js';

const KNOWN_REFUSE_CODES = new Set<number>(Object.values(RefuseCode));
/** READY's flags byte: the target diverged (see PeerReady.diverged). */
const READY_DIVERGED = 1;
/** READY's flags byte: the target's image is empty, made at its last start (see PeerReady.empty). */
const READY_EMPTY = 2;
/** SPLIT_BRAIN's decision byte: 0 leaves the copies apart; this one discards the source's writes. */
const SPLIT_BRAIN_DISCARD_SOURCE = 1;

/** Body sizes of the fixed-layout frames; the frame decoder refuses any other length up front. */
export const FIXED_BODY_BYTES: ReadonlyMap<number, number> = new Map<number, number>([
  [PeerFrameType.CHALLENGE, PEER_NONCE_BYTES + PEER_MAC_BYTES],
  [PeerFrameType.AUTH, PEER_MAC_BYTES],
  [PeerFrameType.ACK, 12],
  [PeerFrameType.FLUSH, 8],
  [PeerFrameType.FLUSHED, 12],
  [PeerFrameType.SYNC, 8],
  [PeerFrameType.SYNCED, 12],
  [PeerFrameType.RESET, 16],
  [PeerFrameType.RESET_DONE, 12],
  [PeerFrameType.IN_SYNC, 8],
  [PeerFrameType.VERIFY, 32],
  [PeerFrameType.READ, 32],
  [PeerFrameType.READ_FAILED, 8],
  [PeerFrameType.VERIFIED, 8 + PEER_DIGEST_BYTES],
]);


// ---------------------------------------------------------------------------------------
// Encoding.

export function encodeControlBody(message: PeerControlMessage): Buffer {
  switch (message.type) {
    case 'hello': {
      assertUint(message.version, 0xffff, 'version');
      assert(
        Number.isInteger(message.connections) && message.connections >= 1 && message.connections <= PEER_CONNECTIONS_MAX,
        'connections out of range',
      );
      assert(Number.isInteger(message.connectionIndex) && message.connectionIndex >= 0 && message.connectionIndex < message.connections, 'connectionIndex out of range');
      assertUint(message.session, 0xffffffff, 'session');
      assert(message.nonce.length === PEER_NONCE_BYTES, 'nonce must be 32 bytes');
      assertUint(message.epoch, 0xffffffff, 'epoch');
      assert(message.history[message.history.length - 1]?.epoch === message.epoch, 'HELLO history must end with its epoch');
      const names = [message.cluster, message.fromNode, message.toNode, message.volume].map((name) => nameBytes(name, PEER_NAME_BYTES_MAX));
      const history = encodeHistory(message.history);
      const out = Buffer.alloc(8 + PEER_NONCE_BYTES + names.reduce((sum, name) => sum + 2 + name.length, 0) + 12 + history.length);
      out.writeUInt16BE(message.version, 0);
      out.writeUInt8(message.connectionIndex, 2);
      out.writeUInt8(message.connections, 3);
      out.writeUInt32BE(message.session, 4);
      message.nonce.copy(out, 8);
      let at = 8 + PEER_NONCE_BYTES;
      for (const name of names) {
        out.writeUInt16BE(name.length, at);
        name.copy(out, at + 2);
        at += 2 + name.length;
      }
      out.writeUInt32BE(message.epoch, at);
      writeU64(out, at + 4, message.lastSeq);
      history.copy(out, at + 12);
      return out;
    }
    case 'challenge':
      assert(message.nonce.length === PEER_NONCE_BYTES && message.mac.length === PEER_MAC_BYTES, 'challenge sizes');
      return Buffer.concat([message.nonce, message.mac]);
    case 'auth':
      assert(message.mac.length === PEER_MAC_BYTES, 'auth mac must be 32 bytes');
      return Buffer.from(message.mac);
    case 'ready': {
      assertUint(message.epoch, 0xffffffff, 'epoch');
      assert(message.history[message.history.length - 1]?.epoch === message.epoch, 'READY history must end with its epoch');
      const disk = PEER_DISK_STATES.indexOf(message.disk);
      assert(disk >= 0, 'unknown disk state');
      assert(message.divergedAfter <= message.lastSeq, 'READY divergedAfter past its last entry');
      assert(message.diverged || message.divergedAfter === message.lastSeq, 'READY divergedAfter without DIVERGED');
      const history = encodeHistory(message.history);
      const out = Buffer.alloc(40 + history.length);
      out.writeUInt32BE(message.epoch, 0);
      out.writeUInt8(disk, 4);
      assert(!message.empty || message.lastSeq === 0, 'READY empty with entries');
      out.writeUInt8((message.diverged ? READY_DIVERGED : 0) | (message.empty ? READY_EMPTY : 0), 5);
      writeU64(out, 8, message.lastSeq);
      writeU64(out, 16, message.durableSeq);
      writeU64(out, 24, message.cpSeq);
      writeU64(out, 32, message.divergedAfter);
      history.copy(out, 40);
      return out;
    }
    case 'refuse': {
      assert(KNOWN_REFUSE_CODES.has(message.code), 'unknown refuse code');
      // The message is for people and may quote names a peer sent, so it is cut to fit
      // rather than asserted: a refusal must always be sendable.
      const text = truncateUtf8(Buffer.from(message.message, 'utf8'), PEER_REFUSE_MESSAGE_BYTES_MAX);
      const out = Buffer.alloc(4 + text.length);
      out.writeUInt16BE(message.code, 0);
      out.writeUInt16BE(text.length, 2);
      text.copy(out, 4);
      return out;
    }
    case 'split-brain': {
      assertUint(message.epoch, 0xffffffff, 'epoch');
      assert(message.history[message.history.length - 1]?.epoch === message.epoch, 'SPLIT_BRAIN history must end with its epoch');
      assert(message.sharedSeq < message.lastSeq, 'a split brain holds entries past the shared one');
      const history = encodeHistory(message.history);
      const out = Buffer.alloc(48 + history.length);
      out.writeUInt8(message.decision === 'discard-source' ? SPLIT_BRAIN_DISCARD_SOURCE : 0, 0);
      out.writeUInt32BE(message.epoch, 4);
      writeU64(out, 8, message.sharedSeq);
      writeU64(out, 16, message.lastSeq);
      writeU64(out, 24, message.targetEntries);
      writeU64(out, 32, message.targetBytes);
      writeU64(out, 40, message.sourceEntries);
      history.copy(out, 48);
      return out;
    }
    case 'ack':
    case 'flushed':
      return seqStatus(message.seq, message.status);
    case 'synced':
      return seqStatus(message.cpSeq, message.status);
    case 'reset-done':
      return seqStatus(message.seq, message.status);
    case 'in-sync': {
      const out = Buffer.alloc(8);
      writeU64(out, 0, message.seq);
      return out;
    }
    case 'reset': {
      const out = Buffer.alloc(16);
      writeU64(out, 0, message.seq);
      writeU64(out, 8, message.reportAfter);
      return out;
    }
    case 'diverged': {
      assert(message.extents.length <= PEER_DIVERGED_EXTENTS_MAX, 'too many DIVERGED extents');
      const out = Buffer.alloc(8 + 16 * message.extents.length);
      out.writeUInt16BE(message.extents.length, 0);
      out.writeUInt8(message.all ? 1 : 0, 2);
      message.extents.forEach((extent, index) => {
        writeU64(out, 8 + index * 16, extent.offset);
        writeU64(out, 16 + index * 16, extent.lengthBytes);
      });
      return out;
    }
    case 'verify':
      assertUint(message.lengthBytes, PEER_VERIFY_BYTES_MAX, 'lengthBytes');
      return rangeAsked(message);
    case 'read':
      assert(message.lengthBytes >= 1 && message.lengthBytes <= PEER_READ_BYTES_MAX, 'READ length out of range');
      return rangeAsked(message);
    case 'read-failed': {
      assertUint(message.token, 0xffffffff, 'token');
      assert(message.status >= 1 && message.status <= 0xffff, 'READ_FAILED status 1..65535');
      const out = Buffer.alloc(8);
      out.writeUInt32BE(message.token, 0);
      out.writeUInt16BE(message.status, 4);
      return out;
    }
    case 'verified': {
      assertUint(message.token, 0xffffffff, 'token');
      assertUint(message.status, 0xffff, 'status');
      assert(message.digest.length === PEER_DIGEST_BYTES, 'digest size');
      const out = Buffer.alloc(8 + PEER_DIGEST_BYTES);
      out.writeUInt32BE(message.token, 0);
      out.writeUInt16BE(message.status, 4);
      message.digest.copy(out, 8);
      return out;
    }
    case 'flush': {
      const out = Buffer.alloc(8);
      writeU64(out, 0, message.seq);
      return out;
    }
    case 'sync': {
      const out = Buffer.alloc(8);
      writeU64(out, 0, message.cpSeq);
      return out;
    }
  }
}

function seqStatus(seq: number, status: number): Buffer {
  assertUint(status, 0xffff, 'status');
  const out = Buffer.alloc(12);
  writeU64(out, 0, seq);
  out.writeUInt16BE(status, 8);
  return out;
}

/** The longest prefix of UTF-8 `bytes` of at most `maxBytes` that ends on a character. */
function truncateUtf8(bytes: Buffer, maxBytes: number): Buffer {
  if (bytes.length <= maxBytes) return bytes;
  let end = maxBytes;
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end -= 1;
  return bytes.subarray(0, end);
}

function assertUint(value: number, max: number, field: string): void {
  assert(Number.isInteger(value) && value >= 0 && value <= max, `${field} out of range`);
}

// ---------------------------------------------------------------------------------------
// Decoding.

// fatal: invalid UTF-8 throws instead of becoming U+FFFD; ignoreBOM: a leading U+FEFF is
// part of the name, not a marker to drop.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Reads one body front to back; any read past the end is a protocol error. */
class BodyReader {
  private at = 0;

  constructor(
    private readonly body: Buffer,
    private readonly what: string,
  ) {}

  private take(count: number): number {
    if (this.body.length - this.at < count) throw new PeerProtocolError(`${this.what} body ends early`);
    const at = this.at;
    this.at += count;
    return at;
  }

  u8(): number {
    return this.body.readUInt8(this.take(1));
  }

  u16(): number {
    return this.body.readUInt16BE(this.take(2));
  }

  u32(): number {
    return this.body.readUInt32BE(this.take(4));
  }

  u64(field: string): number {
    const value = readU64(this.body, this.take(8));
    if (value === undefined) throw new PeerProtocolError(`${this.what} ${field} exceeds 2^53-1`);
    return value;
  }

  /** A copy, so a nonce or MAC kept for the handshake does not pin the socket's chunk. */
  bytes(count: number): Buffer {
    const at = this.take(count);
    return Buffer.from(this.body.subarray(at, at + count));
  }

  zeroes(count: number): void {
    const at = this.take(count);
    for (let index = at; index < at + count; index += 1) {
      if (this.body[index] !== 0) throw new PeerProtocolError(`${this.what} reserved bytes are not zero`);
    }
  }

  /** u16 length + UTF-8, at most maxBytes, non-empty unless allowed. */
  text(field: string, maxBytes: number, emptyAllowed = false): string {
    const length = this.u16();
    if (length > maxBytes || (length === 0 && !emptyAllowed)) {
      throw new PeerProtocolError(`${this.what} ${field} length ${length} outside ${emptyAllowed ? 0 : 1}..${maxBytes}`);
    }
    const at = this.take(length);
    try {
      return utf8.decode(this.body.subarray(at, at + length));
    } catch (error) {
      throw new PeerProtocolError(`${this.what} ${field} is not valid UTF-8`, { cause: error });
    }
  }

  /** Whatever is left unread, taken as it is (a HELLO of another protocol version's history). */
  skipRest(): void {
    this.at = this.body.length;
  }

  end(): void {
    if (this.at !== this.body.length) throw new PeerProtocolError(`${this.what} body has ${this.body.length - this.at} extra bytes`);
  }
}

/** Any frame body but ENTRY's (see decodeEntryBody). */
export function decodeBody(type: Exclude<PeerFrameType, typeof PeerFrameType.ENTRY | typeof PeerFrameType.READ_DATA>, body: Buffer): PeerMessage {
  const reader = new BodyReader(body, peerFrameName(type));
  const message = decodeControlBody(type, reader);
  reader.end();
  return message;
}

function decodeControlBody(type: Exclude<PeerFrameType, typeof PeerFrameType.ENTRY | typeof PeerFrameType.READ_DATA>, reader: BodyReader): PeerControlMessage {
  switch (type) {
    case PeerFrameType.HELLO: {
      const version = reader.u16();
      const connectionIndex = reader.u8();
      const connections = reader.u8();
      if (connections < 1 || connections > PEER_CONNECTIONS_MAX || connectionIndex >= connections) {
        throw new PeerProtocolError(`HELLO connection ${connectionIndex} of ${connections} is out of range`);
      }
      const session = reader.u32();
      const nonce = reader.bytes(PEER_NONCE_BYTES);
      const cluster = reader.text('cluster', PEER_NAME_BYTES_MAX);
      const fromNode = reader.text('fromNode', PEER_NAME_BYTES_MAX);
      const toNode = reader.text('toNode', PEER_NAME_BYTES_MAX);
      const volume = reader.text('volume', PEER_NAME_BYTES_MAX);
      const epoch = reader.u32();
      const lastSeq = reader.u64('lastSeq');
      // Every version so far lays out the fields above alike; the history's layout is this
      // version's. A HELLO of another version is taken without it, so that the target can
      // answer REFUSE VERSION, which says what is wrong, rather than close on a bad frame.
      if (version !== PEER_PROTOCOL_VERSION) {
        reader.skipRest();
        return { type: 'hello', version, connectionIndex, connections, session, nonce, cluster, fromNode, toNode, volume, epoch, lastSeq, history: [] };
      }
      const history = readHistory(reader, epoch);
      return { type: 'hello', version, connectionIndex, connections, session, nonce, cluster, fromNode, toNode, volume, epoch, lastSeq, history };
    }
    case PeerFrameType.CHALLENGE:
      return { type: 'challenge', nonce: reader.bytes(PEER_NONCE_BYTES), mac: reader.bytes(PEER_MAC_BYTES) };
    case PeerFrameType.AUTH:
      return { type: 'auth', mac: reader.bytes(PEER_MAC_BYTES) };
    case PeerFrameType.READY: {
      const epoch = reader.u32();
      const diskCode = reader.u8();
      const disk = PEER_DISK_STATES[diskCode];
      if (disk === undefined) throw new PeerProtocolError(`READY disk state ${diskCode} is unknown`);
      const flags = reader.u8();
      if ((flags & ~(READY_DIVERGED | READY_EMPTY)) !== 0) throw new PeerProtocolError(`READY flags ${flags} are unknown`);
      reader.zeroes(2);
      const lastSeq = reader.u64('lastSeq');
      const durableSeq = reader.u64('durableSeq');
      const cpSeq = reader.u64('cpSeq');
      const divergedAfter = reader.u64('divergedAfter');
      if (divergedAfter > lastSeq) throw new PeerProtocolError(`READY divergedAfter ${divergedAfter} is past its last entry ${lastSeq}`);
      const diverged = (flags & READY_DIVERGED) !== 0;
      const empty = (flags & READY_EMPTY) !== 0;
      if (empty && lastSeq !== 0) throw new PeerProtocolError(`READY says the copy is empty, yet it holds entries up to ${lastSeq}`);
      if (!diverged && divergedAfter !== lastSeq) throw new PeerProtocolError(`READY divergedAfter ${divergedAfter} without DIVERGED must be its last entry ${lastSeq}`);
      const history = readHistory(reader, epoch);
      return { type: 'ready', epoch, disk, lastSeq, durableSeq, cpSeq, diverged, divergedAfter, empty, history };
    }
    case PeerFrameType.REFUSE: {
      const code = reader.u16();
      if (!KNOWN_REFUSE_CODES.has(code)) throw new PeerProtocolError(`REFUSE code ${code} is unknown`);
      const message = reader.text('message', PEER_REFUSE_MESSAGE_BYTES_MAX, true);
      return { type: 'refuse', code: code as RefuseCode, message };
    }
    case PeerFrameType.SPLIT_BRAIN: {
      const decision = reader.u8();
      if (decision !== 0 && decision !== SPLIT_BRAIN_DISCARD_SOURCE) throw new PeerProtocolError(`SPLIT_BRAIN decision ${decision} is unknown`);
      reader.zeroes(3);
      const epoch = reader.u32();
      const sharedSeq = reader.u64('sharedSeq');
      const lastSeq = reader.u64('lastSeq');
      if (sharedSeq >= lastSeq) throw new PeerProtocolError(`SPLIT_BRAIN shared entry ${sharedSeq} is not before the target's last ${lastSeq}`);
      const targetEntries = reader.u64('targetEntries');
      const targetBytes = reader.u64('targetBytes');
      const sourceEntries = reader.u64('sourceEntries');
      const history = readHistory(reader, epoch);
      return { type: 'split-brain', decision: decision === 0 ? 'disconnect' : 'discard-source', sharedSeq, lastSeq, epoch, history, targetEntries, targetBytes, sourceEntries };
    }
    case PeerFrameType.ACK:
    case PeerFrameType.FLUSHED:
    case PeerFrameType.SYNCED: {
      const seq = reader.u64(type === PeerFrameType.SYNCED ? 'cpSeq' : 'seq');
      const status = reader.u16();
      reader.zeroes(2);
      if (type === PeerFrameType.SYNCED) return { type: 'synced', cpSeq: seq, status };
      return { type: type === PeerFrameType.ACK ? 'ack' : 'flushed', seq, status };
    }
    case PeerFrameType.FLUSH:
      return { type: 'flush', seq: reader.u64('seq') };
    case PeerFrameType.SYNC:
      return { type: 'sync', cpSeq: reader.u64('cpSeq') };
    case PeerFrameType.IN_SYNC:
      return { type: 'in-sync', seq: reader.u64('seq') };
    case PeerFrameType.RESET:
      return { type: 'reset', seq: reader.u64('seq'), reportAfter: reader.u64('reportAfter') };
    case PeerFrameType.DIVERGED: {
      const count = reader.u16();
      const flag = reader.u8();
      reader.zeroes(5);
      if (count > PEER_DIVERGED_EXTENTS_MAX || flag > 1) throw new PeerProtocolError(`DIVERGED with ${count} extents and flag ${flag}`);
      const extents: { offset: number; lengthBytes: number }[] = [];
      for (let index = 0; index < count; index += 1) {
        extents.push({ offset: reader.u64('offset'), lengthBytes: reader.u64('lengthBytes') });
      }
      return { type: 'diverged', all: flag === 1, extents };
    }
    case PeerFrameType.VERIFY:
      return { type: 'verify', ...readRangeAsked(reader, 'VERIFY', PEER_VERIFY_BYTES_MAX) };
    case PeerFrameType.READ:
      return { type: 'read', ...readRangeAsked(reader, 'READ', PEER_READ_BYTES_MAX) };
    case PeerFrameType.READ_FAILED: {
      const token = reader.u32();
      const status = reader.u16();
      reader.zeroes(2);
      if (status === 0) throw new PeerProtocolError('READ_FAILED with status 0');
      return { type: 'read-failed', token, status };
    }
    case PeerFrameType.VERIFIED: {
      const token = reader.u32();
      const status = reader.u16();
      reader.zeroes(2);
      return { type: 'verified', token, status, digest: reader.bytes(PEER_DIGEST_BYTES) };
    }
    case PeerFrameType.RESET_DONE: {
      const seq = reader.u64('seq');
      const status = reader.u16();
      reader.zeroes(2);
      return { type: 'reset-done', seq, status };
    }
  }
}

/**
 * A history's epochs: u16 count (1..PEER_HISTORY_EPOCHS_MAX), then per epoch u32 epoch,
 * u32 restart count, u64 first entry and the primary's name (u16 length + UTF-8). An epoch
 * appears again only as a restart by its own primary, with a higher count.
 */
function encodeHistory(history: readonly PeerEpochStart[]): Buffer {
  // The caller gives the last epochs of its history (the handshake's proofs cover what is sent).
  const cut = history;
  assert(cut.length > 0 && cut.length <= PEER_HISTORY_EPOCHS_MAX, 'a history on the wire names 1..PEER_HISTORY_EPOCHS_MAX epochs');
  cut.forEach((start, index) => {
    const before = cut[index - 1];
    assert(Number.isSafeInteger(start.firstSeq) && start.firstSeq >= 1, 'a history epoch starts at an entry');
    assert(before === undefined || (goesOn(before, start) && start.firstSeq >= before.firstSeq), 'a history goes forward');
  });
  const parts: Buffer[] = [Buffer.alloc(2)];
  parts[0]?.writeUInt16BE(cut.length, 0);
  for (const start of cut) {
    assertUint(start.epoch, 0xffffffff, 'history epoch');
    const name = nameBytes(start.primary, PEER_NAME_BYTES_MAX);
    assertUint(start.restart ?? 0, 0xffffffff, 'history restart');
    const fixed = Buffer.alloc(18);
    fixed.writeUInt32BE(start.epoch, 0);
    fixed.writeUInt32BE(start.restart ?? 0, 4);
    writeU64(fixed, 8, start.firstSeq);
    fixed.writeUInt16BE(name.length, 16);
    parts.push(fixed, name);
  }
  return Buffer.concat(parts);
}

/** VERIFY's and READ's body, encoded (readRangeAsked decodes it). */
function rangeAsked(message: { token: number; seq: number; offset: number; lengthBytes: number }): Buffer {
  assertUint(message.token, 0xffffffff, 'token');
  const out = Buffer.alloc(32);
  out.writeUInt32BE(message.token, 0);
  writeU64(out, 8, message.seq);
  writeU64(out, 16, message.offset);
  out.writeUInt32BE(message.lengthBytes, 24);
  return out;
}

/** VERIFY's and READ's body: token, then the range asked for as of entry `seq` (1..`max` bytes). */
function readRangeAsked(reader: BodyReader, name: string, max: number): { token: number; seq: number; offset: number; lengthBytes: number } {
  const token = reader.u32();
  reader.zeroes(4);
  const seq = reader.u64('seq');
  const offset = reader.u64('offset');
  const lengthBytes = reader.u32();
  reader.zeroes(4);
  if (lengthBytes === 0 || lengthBytes > max) throw new PeerProtocolError(`${name} length ${lengthBytes} outside 1..${max}`);
  return { token, seq, offset, lengthBytes };
}

/** Whether `start` may follow `before` in a history: a newer epoch, or a restart of the same one by its primary. */
function goesOn(before: PeerEpochStart, start: PeerEpochStart): boolean {
  if (start.epoch !== before.epoch) return start.epoch > before.epoch;
  return start.primary === before.primary && (start.restart ?? 0) > (before.restart ?? 0);
}

/** A history as encodeHistory lays it out, which must end with `epoch` and go forward. */
function readHistory(reader: BodyReader, epoch: number): PeerEpochStart[] {
  const count = reader.u16();
  if (count < 1 || count > PEER_HISTORY_EPOCHS_MAX) throw new PeerProtocolError(`history of ${count} epochs outside 1..${PEER_HISTORY_EPOCHS_MAX}`);
  const history: PeerEpochStart[] = [];
  for (let index = 0; index < count; index += 1) {
    const epoch = reader.u32();
    const restart = reader.u32();
    const start: PeerEpochStart = { epoch, firstSeq: reader.u64('firstSeq'), primary: reader.text('primary', PEER_NAME_BYTES_MAX), ...(restart === 0 ? {} : { restart }) };
    const before = history[index - 1];
    if (start.firstSeq < 1) throw new PeerProtocolError(`history epoch ${start.epoch} starts at entry ${start.firstSeq}, not at an entry`);
    if (before !== undefined && (!goesOn(before, start) || start.firstSeq < before.firstSeq)) {
      throw new PeerProtocolError(`history epoch ${start.epoch} (from entry ${start.firstSeq}) does not follow the one before`);
    }
    history.push(start);
  }
  if (history[count - 1]?.epoch !== epoch) throw new PeerProtocolError(`history ends with epoch ${history[count - 1]?.epoch ?? '?'}, not ${epoch}`);
  return history;
}

/**
 * An ENTRY body given as its first 64 bytes (the entry header) and the rest as slices;
 * `bodyBytes` is the frame's body length. The body must be at least a header long.
 */
export function decodeEntryBody(head: Buffer, payload: Buffer[], bodyBytes: number, name = 'ENTRY'): PeerEntry {
  if (bodyBytes < ENTRY_HEADER_BYTES) throw new PeerProtocolError(`${name} body of ${bodyBytes} bytes is shorter than its header`);
  const header = decodeEntryHeader(head, 0);
  if (typeof header === 'string') throw new PeerProtocolError(`${name} header is invalid (${header})`);
  if (bodyBytes !== ENTRY_HEADER_BYTES + header.payloadBytes) {
    throw new PeerProtocolError(`${name} body of ${bodyBytes} bytes does not match payload of ${header.payloadBytes}`);
  }
  if (!payloadMatches(header, payload)) throw new PeerProtocolError(`${name} seq ${header.seq} payload checksum mismatch`);
  return { type: 'entry', header, payload, bodyBytes };
}
