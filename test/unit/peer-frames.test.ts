// The node-to-node frame codec. What a peer relies on: every message comes back exactly
// as it was sent, however TCP cuts the stream; an ENTRY arrives with its payload intact
// and ready to store; and any damage or any frame a correct node would not send is
// refused with a PeerProtocolError, an oversized one before its body is buffered, after
// which the decoder refuses everything. Frames that encoders cannot produce are built by
// hand here (frameOf), with the checksum recomputed so that the check under test is the
// one that must catch them.
//
// The epoch history HELLO, READY and SPLIT_BRAIN carry gets its own section: the encoder
// lays it out as documented (u16 count, then per epoch u32 epoch, u32 restart count, u64
// first entry, u16 + UTF-8 primary: 18 fixed bytes and the name), up to 16 epochs with
// 255-byte names come back intact, so do restarts (the same epoch again, by its primary,
// with a higher restart count; a count of 0 comes back as no count at all), and the
// decoder refuses a history a correct node cannot have (no epochs or more than 16, epochs
// going back, an epoch named twice other than as a restart by its own primary with a
// higher count, a first entry of 0 or going back, a last epoch other than the frame's, a
// body that ends early or runs on, the version 2 layout without restart counts) with an
// error that names the problem; the encoder asserts on the same histories. IN_SYNC and
// REFUSE STALE_EPOCH are covered with the other fixed frames.
//
// READY's divergedAfter (u64 at offset 32, after cpSeq, making a 40-byte fixed part before
// the history): it comes back whether below lastSeq or equal to it (no divergence), the
// encoder lays it out there, the decoder refuses one past lastSeq or above 2^53-1 (and a
// READY of the layout before it, whose history would be read as the field), and the
// encoder asserts rather than send one past lastSeq.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AssertionError } from '../../src/lib/assert.js';
import { crc32c } from '../../src/lib/crc32c.js';
import { PeerProtocolError } from '../../src/protocol/peer/errors.js';
import {
  encodeEntryFrame,
  encodeFrame,
  encodeReadDataFrame,
  PEER_CONTROL_BODY_BYTES_MAX,
  PEER_DISK_STATES,
  PEER_FRAME_MAGIC,
  PEER_PROTOCOL_VERSION,
  PeerFrameDecoder,
  PeerFrameType,
  RefuseCode,
  type PeerControlMessage,
  type PeerEpochStart,
  type PeerHello,
  type PeerMessage,
} from '../../src/protocol/peer/frames.js';
import { encodeEntryHeader, EntryType } from '../../src/protocol/log-entry.js';
import { baseSeed, Prng } from './prng.js';

const SEED = baseSeed(0x9ee7_f4a3);
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const PAYLOAD_MAX = 4096;
const ENTRY_BODY_MAX = 64 + PAYLOAD_MAX;

// ---------------------------------------------------------------------------------------
// Building frames.

function nonce(fill: number): Buffer {
  return Buffer.alloc(32, fill);
}

/** A 255-byte name of two- and one-byte characters, distinct per `index`. */
function longName(index: number): string {
  const name = 'é'.repeat(126) + String(index).padStart(3, '0');
  assert.equal(Buffer.byteLength(name), 255);
  return name;
}

/**
 * A history of `count` epochs ending with `last`, with first entries at the edges (1, an
 * epoch without entries, beyond 2^32, MAX_SAFE) and names as `primary` gives them.
 */
function historyOf(last: number, count: number, primary = (index: number): string => (index % 2 === 0 ? 'node-a' : 'node-b')): PeerEpochStart[] {
  return Array.from({ length: count }, (_, index) => ({
    epoch: last - (count - 1 - index),
    primary: primary(index),
    firstSeq: index === 0 ? 1 : index === count - 1 ? MAX_SAFE : 2 ** 32 + Math.floor(index / 2),
  }));
}

/**
 * A history with restarts: epoch 1 begun by b at entry 101, then restarted twice by b
 * (after crashes) from entry 121, with restart counts 1 and 2.
 */
const RESTARTED: PeerEpochStart[] = [
  { epoch: 0, primary: 'a', firstSeq: 1 },
  { epoch: 1, primary: 'b', firstSeq: 101 },
  { epoch: 1, primary: 'b', firstSeq: 121, restart: 1 },
  { epoch: 1, primary: 'b', firstSeq: 121, restart: 2 },
];

const hello: PeerHello = {
  type: 'hello',
  version: PEER_PROTOCOL_VERSION,
  connectionIndex: 2,
  connections: 4,
  session: 0xdead_beef,
  nonce: new Prng(SEED).bytes(32),
  cluster: 'prod-é-cluster',
  fromNode: 'node-a',
  toNode: 'x'.repeat(255),
  volume: 'vol-日本',
  epoch: 0xffff_ffff,
  lastSeq: MAX_SAFE,
  history: historyOf(0xffff_ffff, 3),
};

/** The largest legal HELLO: every name 255 bytes, 16 epochs of history. */
const largestHello: PeerHello = {
  ...hello,
  cluster: longName(900),
  fromNode: longName(901),
  toNode: longName(902),
  volume: longName(903),
  history: historyOf(0xffff_ffff, 16, longName),
};

/** One of every control message, with values at the edges of their ranges. */
const controlMessages: PeerControlMessage[] = [
  hello,
  {
    ...hello, connectionIndex: 0, connections: 1, session: 0, cluster: 'c', fromNode: 'a', toNode: 'b', volume: 'v', epoch: 0,
    history: [{ epoch: 0, primary: 'a', firstSeq: 1 }],
  },
  // One epoch with a 255-byte primary; epochs with gaps, some without entries.
  { ...hello, epoch: 9, history: [{ epoch: 9, primary: 'p'.repeat(255), firstSeq: MAX_SAFE }] },
  {
    ...hello, epoch: 40, history: [
      { epoch: 2, primary: 'node-b', firstSeq: 5 },
      { epoch: 3, primary: 'node-a', firstSeq: 5 },
      { epoch: 17, primary: 'nœud-ç', firstSeq: 5 },
      { epoch: 40, primary: 'node-b', firstSeq: 2 ** 40 },
    ],
  },
  // Restarts: the same epoch again by its primary, with higher counts; and a history cut
  // so that it begins with a restart, whose count reaches the u32's limit.
  { ...hello, epoch: 1, lastSeq: 130, history: RESTARTED },
  {
    ...hello, epoch: 6, history: [
      { epoch: 5, primary: 'node-b', firstSeq: 2 ** 40, restart: 7 },
      { epoch: 5, primary: 'node-b', firstSeq: 2 ** 40 + 1, restart: 0xffff_ffff },
      { epoch: 6, primary: 'node-a', firstSeq: 2 ** 40 + 1 },
      { epoch: 6, primary: 'node-a', firstSeq: MAX_SAFE, restart: 1 },
    ],
  },
  { type: 'challenge', nonce: nonce(0x11), mac: nonce(0x22) },
  { type: 'auth', mac: nonce(0x33) },
  { type: 'split-brain', decision: 'disconnect', sharedSeq: 0, lastSeq: MAX_SAFE, epoch: 3, history: historyOf(3, 2), targetEntries: 1, targetBytes: 2 ** 40, sourceEntries: 0 },
  { type: 'split-brain', decision: 'discard-source', sharedSeq: 2 ** 40, lastSeq: 2 ** 40 + 1, epoch: 0xffff_ffff, history: historyOf(0xffff_ffff, 1), targetEntries: MAX_SAFE, targetBytes: 0, sourceEntries: 5 },
  { type: 'split-brain', decision: 'disconnect', sharedSeq: 120, lastSeq: 130, epoch: 1, history: RESTARTED, targetEntries: 10, targetBytes: 40960, sourceEntries: 9 },
  // Histories of 1 to 4 epochs (index 0 has one epoch, 0xffff_ffff); divergedAfter equal
  // to lastSeq (none), 0, beyond 2^32 and just below lastSeq.
  ...PEER_DISK_STATES.map((disk, index): PeerControlMessage => ({
    type: 'ready',
    epoch: index === 0 ? 0xffff_ffff : index,
    disk,
    lastSeq: MAX_SAFE,
    durableSeq: 2 ** 32 + index,
    cpSeq: 0,
    diverged: index % 4 !== 0,
    divergedAfter: [MAX_SAFE, 0, 2 ** 40 + 3, MAX_SAFE - 1][index % 4] ?? MAX_SAFE, empty: false,
    history: historyOf(index === 0 ? 0xffff_ffff : index, Math.max(index, 1)),
  })),
  { type: 'ready', epoch: 0, disk: 'up-to-date', lastSeq: 0, durableSeq: 0, cpSeq: 0, diverged: false, divergedAfter: 0, empty: false, history: [{ epoch: 0, primary: 'q'.repeat(255), firstSeq: 1 }] },
  // Diverged with nothing past its last entry: only regions to name.
  { type: 'ready', epoch: 3, disk: 'up-to-date', lastSeq: 12, durableSeq: 12, cpSeq: 12, diverged: true, divergedAfter: 12, empty: false, history: historyOf(3, 2) },
  { type: 'ready', epoch: 1, disk: 'up-to-date', lastSeq: 130, durableSeq: 125, cpSeq: 121, diverged: false, divergedAfter: 130, empty: false, history: RESTARTED },
  { type: 'refuse', code: RefuseCode.AUTH, message: 'wrong secret for node "b"' },
  { type: 'refuse', code: RefuseCode.BUSY, message: '' },
  { type: 'refuse', code: RefuseCode.STALE_EPOCH, message: 'epoch 7 is over: node-b is primary in epoch 9' },
  { type: 'ack', seq: MAX_SAFE, status: 0xffff },
  { type: 'ack', seq: 0, status: 0 },
  { type: 'flush', seq: 2 ** 40 + 7 },
  { type: 'flushed', seq: 12, status: 5 },
  { type: 'sync', cpSeq: 99 },
  { type: 'synced', cpSeq: MAX_SAFE, status: 1 },
  { type: 'reset', seq: 2 ** 33 + 1, reportAfter: 2 ** 33 - 5 },
  { type: 'reset-done', seq: MAX_SAFE, status: 0 },
  { type: 'diverged', all: false, extents: Array.from({ length: 64 }, (_, index) => ({ offset: index * 2 ** 20, lengthBytes: 4096 + index })) },
  { type: 'diverged', all: true, extents: [] },
  { type: 'verify', token: 0xffff_ffff, seq: MAX_SAFE, offset: 2 ** 40, lengthBytes: 4 * 1024 * 1024 },
  { type: 'read', token: 0xffff_ffff, seq: MAX_SAFE, offset: 2 ** 40, lengthBytes: 4 * 1024 * 1024 },
  { type: 'read', token: 0, seq: 0, offset: 0, lengthBytes: 1 },
  { type: 'read-failed', token: 7, status: 0xffff },
  { type: 'verified', token: 7, status: 0, digest: Buffer.alloc(32, 0xab) },
  { type: 'in-sync', seq: MAX_SAFE },
  { type: 'in-sync', seq: 0 },
];

/**
 * The largest HELLO and READY, kept out of controlMessages so that splitting the chunking
 * stream at every byte stays quick; they are fed a byte at a time on their own.
 */
const largeControlMessages: PeerControlMessage[] = [
  largestHello,
  { type: 'ready', epoch: 16, disk: 'outdated', lastSeq: 3, durableSeq: 2, cpSeq: 1, diverged: true, divergedAfter: 2, empty: false, history: historyOf(16, 16, longName) },
];

/** A WRITE entry header and its payload, split into slices as a client write would be. */
function writeEntry(random: Prng, payloadBytes: number, seq = 42): { header: Buffer; payload: Buffer[] } {
  const data = random.bytes(payloadBytes);
  const cut = random.below(payloadBytes + 1);
  const payload = [data.subarray(0, cut), data.subarray(cut)];
  const header = encodeEntryHeader(
    { type: EntryType.WRITE, flags: 0, logId: 0x0bad_cafe, volumeId: 3, seq, durableSeq: seq - 1, offset: 8192, lengthBytes: payloadBytes, generation: 1, epoch: 2 },
    payload,
  );
  return { header, payload };
}

function zeroesEntry(): Buffer {
  return encodeEntryHeader(
    { type: EntryType.ZEROES, flags: 1, logId: 1, volumeId: 3, seq: MAX_SAFE, durableSeq: 0, offset: 0, lengthBytes: 1 << 20, generation: 1, epoch: 2 },
    [],
  );
}

/** A frame built by hand, with a correct checksum over whatever header and body it is given. */
function frameOf(type: number, body: Buffer, reserved = { byte5: 0, word6: 0 }, bodyBytes = body.length): Buffer {
  const header = Buffer.alloc(16);
  header.writeUInt32BE(PEER_FRAME_MAGIC, 0);
  header.writeUInt8(type, 4);
  header.writeUInt8(reserved.byte5, 5);
  header.writeUInt16BE(reserved.word6, 6);
  header.writeUInt32BE(bodyBytes, 8);
  header.writeUInt32BE(crc32c([header.subarray(0, 12), covered(type, body)]), 12);
  return Buffer.concat([header, body]);
}

/** What a frame's checksum covers: the body, or for ENTRY the entry header (which checksums the payload). */
function covered(type: number, body: Buffer): Buffer {
  return type === PeerFrameType.ENTRY ? body.subarray(0, 64) : body;
}

/** Recomputes the frame checksum after a test changed the frame on purpose. */
function reseal(frame: Buffer): Buffer {
  const copy = Buffer.from(frame);
  copy.writeUInt32BE(crc32c([copy.subarray(0, 12), covered(copy.readUInt8(4), copy.subarray(16))]), 12);
  return copy;
}

function u16(value: number): Buffer {
  const out = Buffer.alloc(2);
  out.writeUInt16BE(value, 0);
  return out;
}

function text(value: Buffer | string): Buffer {
  const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  return Buffer.concat([u16(bytes.length), bytes]);
}

function u32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value, 0);
  return out;
}

function u64(value: number | bigint): Buffer {
  const out = Buffer.alloc(8);
  out.writeBigUInt64BE(BigInt(value), 0);
  return out;
}

/** One epoch of a history as bytes; any value, legal or not (no restart count: 0). */
interface RawEpochStart {
  epoch: number;
  restart?: number;
  firstSeq: number | bigint;
  primary: string | Buffer;
}

/**
 * A history laid out by hand: u16 count (the number of epochs unless given), then per
 * epoch u32 epoch, u32 restart count, u64 first entry, u16 length + primary.
 */
function historyBytes(starts: readonly RawEpochStart[], count = starts.length): Buffer {
  return Buffer.concat([u16(count), ...starts.flatMap((start) => [u32(start.epoch), u32(start.restart ?? 0), u64(start.firstSeq), text(start.primary)])]);
}

/** A history in the layout of protocol version 2, without restart counts: u32 epoch, u64 first entry, u16 + primary. */
function historyBytesVersion2(starts: readonly RawEpochStart[]): Buffer {
  return Buffer.concat([u16(starts.length), ...starts.flatMap((start) => [u32(start.epoch), u64(start.firstSeq), text(start.primary)])]);
}

/** The history of the hand-built HELLO and READY bodies: two epochs, the last one 7. */
const HISTORY_7: RawEpochStart[] = [
  { epoch: 3, firstSeq: 1, primary: 'b' },
  { epoch: 7, firstSeq: 100, primary: 'a' },
];

/** A HELLO body from parts, so single fields can be made illegal. */
function helloBody(parts: { connectionIndex?: number; connections?: number; names?: Buffer[]; epoch?: number; lastSeq?: number; history?: Buffer } = {}): Buffer {
  const fixed = Buffer.alloc(40);
  fixed.writeUInt16BE(3, 0);
  fixed.writeUInt8(parts.connectionIndex ?? 0, 2);
  fixed.writeUInt8(parts.connections ?? 1, 3);
  const names = parts.names ?? ['c', 'a', 'b', 'v'].map((name) => text(name));
  return Buffer.concat([fixed, ...names, u32(parts.epoch ?? 7), u64(parts.lastSeq ?? 9), parts.history ?? historyBytes(HISTORY_7)]);
}

/**
 * A READY body from parts (disk 'up-to-date', lastSeq 9, durableSeq 8, cpSeq 5,
 * divergedAfter 6 unless given or changed after): every u64 differs, so a field written
 * in another's place shows.
 */
function readyBody(parts: { epoch?: number; lastSeq?: number | bigint; divergedAfter?: number | bigint; history?: Buffer } = {}): Buffer {
  const fixed = Buffer.alloc(40);
  fixed.writeUInt32BE(parts.epoch ?? 7, 0);
  fixed.writeUInt8(PEER_DISK_STATES.indexOf('up-to-date'), 4);
  // DIVERGED unless divergedAfter is lastSeq.
  fixed.writeUInt8(BigInt(parts.divergedAfter ?? 6) === BigInt(parts.lastSeq ?? 9) ? 0 : 1, 5);
  u64(parts.lastSeq ?? 9).copy(fixed, 8);
  u64(8).copy(fixed, 16);
  u64(5).copy(fixed, 24);
  u64(parts.divergedAfter ?? 6).copy(fixed, 32);
  return Buffer.concat([fixed, parts.history ?? historyBytes(HISTORY_7)]);
}

/** A SPLIT_BRAIN body from parts (disconnect, shared entry 4, the target's last 5, epoch 7, no counts unless given). */
function splitBrainBody(parts: { decision?: number; reserved?: number; sharedSeq?: number; lastSeq?: number; epoch?: number; history?: Buffer } = {}): Buffer {
  const fixed = Buffer.alloc(48);
  fixed.writeUInt8(parts.decision ?? 0, 0);
  fixed.writeUInt8(parts.reserved ?? 0, 3);
  fixed.writeUInt32BE(parts.epoch ?? 7, 4);
  u64(parts.sharedSeq ?? 4).copy(fixed, 8);
  u64(parts.lastSeq ?? 5).copy(fixed, 16);
  return Buffer.concat([fixed, parts.history ?? historyBytes(HISTORY_7)]);
}

// ---------------------------------------------------------------------------------------
// Decoding.

/** Messages with buffers as hex, so that deepEqual diffs are readable. */
function plain(message: PeerMessage): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(message)) {
    // An ENTRY's payload comes as slices: however the stream was cut, the bytes are what count.
    const slices = Array.isArray(value) && value.every((item) => Buffer.isBuffer(item));
    out[key] = Buffer.isBuffer(value) ? value.toString('hex') : slices ? Buffer.concat(value as Buffer[]).toString('hex') : value;
  }
  return out;
}

function decodeAll(pieces: readonly Buffer[]): Record<string, unknown>[] {
  const decoder = new PeerFrameDecoder({ entryBodyBytesMax: ENTRY_BODY_MAX });
  const messages: Record<string, unknown>[] = [];
  for (const piece of pieces) messages.push(...decoder.push(piece).map(plain));
  assert.equal(decoder.bufferedBytes, 0, 'bytes left over after the last frame');
  return messages;
}

/**
 * Feeds `bytes`, then enough zeroes to complete any frame a damaged length announced (up
 * to the control limit for HELLO and READY, whose bodies vary in length).
 */
function assertRefused(bytes: Buffer, pattern?: RegExp): void {
  const decoder = new PeerFrameDecoder({ entryBodyBytesMax: ENTRY_BODY_MAX });
  const returned: PeerMessage[] = [];
  const thrown = (() => {
    try {
      returned.push(...decoder.push(bytes));
      returned.push(...decoder.push(Buffer.alloc(Math.max(ENTRY_BODY_MAX, PEER_CONTROL_BODY_BYTES_MAX) + 16)));
    } catch (error) {
      return error;
    }
    return undefined;
  })();
  assert.ok(thrown instanceof PeerProtocolError, `expected a PeerProtocolError, got ${String(thrown)}`);
  assert.equal(thrown.code, 'ERR_PEER_PROTOCOL');
  if (pattern !== undefined) assert.match(thrown.message, pattern);
  assert.deepEqual(returned, [], 'a damaged frame produced a message');
}

// ---------------------------------------------------------------------------------------

describe('peer frames: round trip', () => {
  test('every control message comes back as it was encoded', () => {
    for (const message of [...controlMessages, ...largeControlMessages]) {
      assert.deepEqual(decodeAll([encodeFrame(message)]), [plain(message)], message.type);
    }
  });

  test('the header has the documented layout and checksum', () => {
    const frame = encodeFrame({ type: 'ack', seq: 0x1_0000_0002, status: 3 });
    assert.equal(frame.toString('hex', 0, 12), '424d5046' + '11' + '000000' + '0000000c');
    assert.equal(frame.toString('hex', 16), '00000001' + '00000002' + '0003' + '0000');
    assert.equal(frame.readUInt32BE(12), crc32c(Buffer.concat([frame.subarray(0, 12), frame.subarray(16)])));
  });

  test('READ is type 28 laid out as VERIFY; READ_DATA (29) is a WRITE entry whose seq is the token; READ_FAILED (30) is token and status', () => {
    assert.equal(encodeFrame({ type: 'read', token: 5, seq: 9, offset: 4096, lengthBytes: 512 }).toString('hex', 16), '00000005' + '00000000' + '0000000000000009' + '0000000000001000' + '00000200' + '00000000');
    const data = Buffer.alloc(700, 0x5a);
    const frame = Buffer.concat(encodeReadDataFrame(0xffff_ffff, 2 ** 40, data));
    assert.equal(frame.readUInt8(4), 29);
    const [decoded] = decodeAll([frame]);
    assert.equal(decoded?.['type'], 'read-data');
    const header = decoded?.['header'] as { seq: number; offset: number; lengthBytes: number; type: number };
    assert.deepEqual([header.seq, header.offset, header.lengthBytes, header.type], [0xffff_ffff, 2 ** 40, 700, EntryType.WRITE]);
    assert.equal(decoded?.['payload'], data.toString('hex'));
    assert.equal(encodeFrame({ type: 'read-failed', token: 3, status: 5 }).toString('hex', 16), '00000003' + '0005' + '0000');
    // Out of range: refused when decoded, asserted when encoded.
    const readBody = (lengthBytes: number): Buffer => {
      const body = Buffer.alloc(32);
      body.writeUInt32BE(lengthBytes, 24);
      return body;
    };
    assertRefused(frameOf(PeerFrameType.READ, readBody(0)), /^READ length 0 outside 1\.\.4194304$/);
    assertRefused(frameOf(PeerFrameType.READ, readBody(4 * 1024 * 1024 + 1)), /^READ length 4194305 outside/);
    assertRefused(frameOf(PeerFrameType.READ_FAILED, Buffer.alloc(8)), /^READ_FAILED with status 0$/);
    assert.throws(() => encodeFrame({ type: 'read', token: 1, seq: 1, offset: 0, lengthBytes: 0 }), AssertionError);
    assert.throws(() => encodeReadDataFrame(1, 0, Buffer.alloc(0)), AssertionError);
    // READ_DATA that is not a WRITE with bytes, or larger than the ENTRY body limit.
    const zeroes = encodeEntryHeader({ type: EntryType.ZEROES, flags: 0, logId: 0, volumeId: 0, seq: 1, durableSeq: 0, offset: 0, lengthBytes: 4096, generation: 0, epoch: 0 }, []);
    assertRefused(frameOf(PeerFrameType.READ_DATA, zeroes), /^READ_DATA must carry a WRITE entry with bytes$/);
    assertRefused(Buffer.concat(encodeReadDataFrame(1, 0, Buffer.alloc(PAYLOAD_MAX + 1))), /READ_DATA body of \d+ bytes exceeds/);
  });

  test('SPLIT_BRAIN is type 6: decision byte, epoch at 4, then sharedSeq, lastSeq, targetEntries, targetBytes, sourceEntries and the history', () => {
    const frame = encodeFrame({ type: 'split-brain', decision: 'discard-source', sharedSeq: 2, lastSeq: 9, epoch: 7, history: historyOf(7, 1), targetEntries: 3, targetBytes: 2 ** 40, sourceEntries: 4 });
    assert.equal(frame.readUInt8(4), 6);
    assert.equal(frame.toString('hex', 16, 16 + 48), '01000000' + '00000007' + '0000000000000002' + '0000000000000009' + '0000000000000003' + '0000010000000000' + '0000000000000004');
    // The history after it: one epoch, 7, no restart, from entry 1, by node-a.
    assert.equal(frame.toString('hex', 16 + 48), '0001' + '00000007' + '00000000' + '0000000000000001' + '0006' + Buffer.from('node-a').toString('hex'));
    assert.equal(frame.length, 16 + 48 + 2 + 18 + 6);
  });

  test('IN_SYNC is type 27 with the seq as its 8-byte body; STALE_EPOCH is refusal code 10', () => {
    const inSync = encodeFrame({ type: 'in-sync', seq: 0x1_0000_0002 });
    assert.equal(inSync.toString('hex', 0, 12), '424d5046' + '1b' + '000000' + '00000008');
    assert.equal(inSync.toString('hex', 16), '00000001' + '00000002');
    const refuse = encodeFrame({ type: 'refuse', code: RefuseCode.STALE_EPOCH, message: 'old' });
    assert.equal(refuse.toString('hex', 16), '000a' + '0003' + Buffer.from('old').toString('hex'));
    // A peer's bytes decode to the same codes.
    assert.deepEqual(decodeAll([frameOf(27, u64(MAX_SAFE))]), [{ type: 'in-sync', seq: MAX_SAFE }]);
    assert.deepEqual(decodeAll([frameOf(PeerFrameType.REFUSE, Buffer.concat([u16(10), text('')]))]), [{ type: 'refuse', code: RefuseCode.STALE_EPOCH, message: '' }]);
  });

  test('the protocol version is 3, the first whose histories carry restart counts', () => {
    assert.equal(PEER_PROTOCOL_VERSION, 3);
    assert.equal(encodeFrame(hello).toString('hex', 16, 18), '0003');
  });

  test('HELLO and READY carry their history in the documented layout', () => {
    const history = HISTORY_7.map((start) => ({ epoch: start.epoch, firstSeq: Number(start.firstSeq), primary: String(start.primary) }));
    const helloFrame = encodeFrame({
      type: 'hello', version: 3, connectionIndex: 0, connections: 1, session: 0, nonce: Buffer.alloc(32),
      cluster: 'c', fromNode: 'a', toNode: 'b', volume: 'v', epoch: 7, lastSeq: 9, history,
    });
    assert.equal(helloFrame.subarray(16).toString('hex'), helloBody().toString('hex'));
    const readyFrame = encodeFrame({ type: 'ready', epoch: 7, disk: 'up-to-date', lastSeq: 9, durableSeq: 8, cpSeq: 5, diverged: true, divergedAfter: 6, empty: false, history });
    assert.equal(readyFrame.subarray(16).toString('hex'), readyBody().toString('hex'));
    // Spelled out once more for a first entry beyond 2^32 and a multi-byte name.
    const wide = encodeFrame({ type: 'ready', epoch: 0x0102_0304, disk: 'up-to-date', lastSeq: 0, durableSeq: 0, cpSeq: 0, diverged: false, divergedAfter: 0, empty: false, history: [{ epoch: 0x0102_0304, primary: 'é', firstSeq: 2 ** 40 + 3 }] });
    assert.equal(wide.toString('hex', 16 + 40), '0001' + '01020304' + '00000000' + '0000010000000003' + '0002' + 'c3a9');
  });

  test('a restart count is the u32 after its epoch, and a count of 0 comes back as none', () => {
    const history: PeerEpochStart[] = [
      { epoch: 0x0102_0304, primary: 'é', firstSeq: 2 ** 40 + 3 },
      { epoch: 0x0102_0304, primary: 'é', firstSeq: 2 ** 40 + 5, restart: 0x0a0b_0c0d },
    ];
    const body = encodeFrame({ type: 'ready', epoch: 0x0102_0304, disk: 'up-to-date', lastSeq: 0, durableSeq: 0, cpSeq: 0, diverged: false, divergedAfter: 0, empty: false, history }).subarray(16);
    assert.equal(body.length, 40 + 2 + 2 * (18 + 2));
    assert.equal(
      body.toString('hex', 40),
      '0002' + '01020304' + '00000000' + '0000010000000003' + '0002' + 'c3a9' + '01020304' + '0a0b0c0d' + '0000010000000005' + '0002' + 'c3a9',
    );
    assert.equal(body.toString('hex', 40), historyBytes(history).toString('hex'));
    const [decoded] = decodeAll([frameOf(PeerFrameType.READY, body)]);
    assert.deepEqual(decoded?.['history'], history);
    // An explicit count of 0 is sent as 0 and comes back without the field.
    const zero = encodeFrame({ type: 'ready', epoch: 7, disk: 'up-to-date', lastSeq: 0, durableSeq: 0, cpSeq: 0, diverged: false, divergedAfter: 0, empty: false, history: [{ epoch: 7, primary: 'a', firstSeq: 1, restart: 0 }] });
    assert.equal(zero.toString('hex', 16 + 40), '0001' + '00000007' + '00000000' + '0000000000000001' + '0001' + '61');
    const [back] = (decodeAll([zero])[0]?.['history'] as PeerEpochStart[] | undefined) ?? [];
    assert.deepEqual(back, { epoch: 7, primary: 'a', firstSeq: 1 });
    assert.ok(back !== undefined && !('restart' in back), 'a restart count of 0 is left out');
  });

  test('a history with restarts comes back in HELLO, READY and SPLIT_BRAIN', () => {
    const messages: PeerControlMessage[] = [
      { ...hello, epoch: 1, lastSeq: 130, history: RESTARTED },
      { type: 'ready', epoch: 1, disk: 'outdated', lastSeq: 130, durableSeq: 125, cpSeq: 121, diverged: true, divergedAfter: 122, empty: false, history: RESTARTED },
      { type: 'split-brain', decision: 'discard-source', sharedSeq: 120, lastSeq: 130, epoch: 1, history: RESTARTED, targetEntries: 10, targetBytes: 40960, sourceEntries: 9 },
    ];
    for (const message of messages) {
      const frame = encodeFrame(message);
      const [decoded] = decodeAll([frame]);
      assert.deepEqual(decoded, plain(message), message.type);
      assert.deepEqual(decoded?.['history'], RESTARTED, message.type);
      // The history is the frame's last bytes: 2 + 4 × 18 fixed, 4 one-byte names.
      assert.equal(frame.toString('hex', frame.length - (2 + 4 * 19)), historyBytes(RESTARTED).toString('hex'), message.type);
    }
  });

  test("READY's fixed part is 40 bytes: the DIVERGED flag in byte 5, divergedAfter the u64 at offset 32 after cpSeq", () => {
    const history = [{ epoch: 7, primary: 'a', firstSeq: 1 }];
    const body = encodeFrame({
      type: 'ready', epoch: 7, disk: 'outdated', lastSeq: 2 ** 40 + 9, durableSeq: 2 ** 40 + 8, cpSeq: 2 ** 40 + 5, diverged: true, divergedAfter: 2 ** 40 + 6, empty: false, history,
    }).subarray(16);
    assert.equal(body.length, 40 + 2 + 18 + 1);
    assert.equal(
      body.toString('hex', 0, 40),
      '00000007' + PEER_DISK_STATES.indexOf('outdated').toString(16).padStart(2, '0') + '010000' + '0000010000000009' + '0000010000000008' + '0000010000000005' + '0000010000000006',
    );
    assert.equal(body.toString('hex', 40), '0001' + '00000007' + '00000000' + '0000000000000001' + '0001' + '61');
    // No divergence: no flag, and the field repeats lastSeq.
    const none = encodeFrame({ type: 'ready', epoch: 7, disk: 'outdated', lastSeq: MAX_SAFE, durableSeq: 0, cpSeq: 0, diverged: false, divergedAfter: MAX_SAFE, empty: false, history }).subarray(16);
    assert.equal(none.toString('hex', 5, 8), '000000');
    assert.equal(none.toString('hex', 32, 40), '001fffffffffffff');
  });

  test('READY: unknown flags, and divergedAfter below lastSeq without DIVERGED, are refused', () => {
    for (const flags of [4, 0x80, 0xff]) {
      const body = readyBody();
      body.writeUInt8(flags, 5);
      assert.throws(() => decodeAll([frameOf(PeerFrameType.READY, body)]), new RegExp(`READY flags ${flags} are unknown`));
    }
    // EMPTY (bit 1) only with no entry held.
    const emptyWithEntries = readyBody();
    emptyWithEntries.writeUInt8(3, 5);
    assert.throws(() => decodeAll([frameOf(PeerFrameType.READY, emptyWithEntries)]), /READY says the copy is empty, yet it holds entries up to 9/);
    const empty = readyBody({ lastSeq: 0, divergedAfter: 0 });
    empty.writeUInt8(2, 5);
    assert.equal(decodeAll([frameOf(PeerFrameType.READY, empty)])[0]?.['empty'], true);
    const undeclared = readyBody();
    undeclared.writeUInt8(0, 5);
    assert.throws(() => decodeAll([frameOf(PeerFrameType.READY, undeclared)]), /READY divergedAfter 6 without DIVERGED must be its last entry 9/);
    const history = [{ epoch: 7, primary: 'a', firstSeq: 1 }];
    assert.throws(() => encodeFrame({ type: 'ready', epoch: 7, disk: 'up-to-date', lastSeq: 9, durableSeq: 0, cpSeq: 0, diverged: false, divergedAfter: 6, empty: false, history }), AssertionError);
  });

  test('READY divergedAfter comes back below lastSeq, equal to it, and at 0', () => {
    const history = [{ epoch: 7, primary: 'a', firstSeq: 1 }];
    for (const [lastSeq, divergedAfter] of [[9, 6], [9, 9], [9, 0], [0, 0], [MAX_SAFE, MAX_SAFE - 1], [MAX_SAFE, MAX_SAFE], [2 ** 40, 2 ** 32]] as const) {
      const message: PeerControlMessage = { type: 'ready', epoch: 7, disk: 'up-to-date', lastSeq, durableSeq: 0, cpSeq: 0, diverged: divergedAfter !== lastSeq, empty: false, divergedAfter, history };
      const [decoded] = decodeAll([encodeFrame(message)]);
      assert.deepEqual(decoded, plain(message), `lastSeq ${lastSeq}, divergedAfter ${divergedAfter}`);
      assert.equal(decoded?.['divergedAfter'], divergedAfter);
    }
    // And from bytes a peer built.
    assert.equal(decodeAll([frameOf(PeerFrameType.READY, readyBody({ divergedAfter: 9 }))])[0]?.['divergedAfter'], 9);
    assert.equal(decodeAll([frameOf(PeerFrameType.READY, readyBody({ divergedAfter: 0 }))])[0]?.['divergedAfter'], 0);
  });

  test('the largest legal HELLO (255-byte names, 16 epochs) fits a control frame and comes back whole', () => {
    const frame = encodeFrame(largestHello);
    // 8 fixed + 32 nonce + 4 × (2 + 255) names + 4 epoch + 8 lastSeq + 2 count
    // + 16 × (4 epoch + 4 restart count + 8 first entry + 2 + 255 primary).
    assert.equal(frame.length - 16, 8 + 32 + 4 * 257 + 4 + 8 + 2 + 16 * 273);
    assert.equal(frame.length - 16, 5450);
    assert.ok(frame.length - 16 <= 8192);
    const [decoded] = decodeAll([frame]);
    assert.deepEqual(decoded, plain(largestHello));
    const history = decoded?.['history'] as PeerEpochStart[];
    assert.equal(history.length, 16);
    assert.deepEqual(history.map((start) => start.primary), Array.from({ length: 16 }, (_, index) => longName(index)));
    // Both large frames fed a byte at a time, so each history is cut at every offset once.
    const stream = Buffer.concat(largeControlMessages.map(encodeFrame));
    const bytes: Buffer[] = [];
    for (let at = 0; at < stream.length; at += 1) bytes.push(stream.subarray(at, at + 1));
    assert.deepEqual(decodeAll(bytes), largeControlMessages.map(plain));
  });

  test('an ENTRY frame carries the header and payload without copying them, on either side', () => {
    const { header, payload } = writeEntry(new Prng(SEED), 1000);
    const parts = encodeEntryFrame(header, payload);
    assert.equal(parts.length, 2 + payload.length);
    assert.equal(parts[1], header, 'entry header is passed through');
    payload.forEach((slice, index) => assert.equal(parts[2 + index], slice, 'payload slice is passed through'));
    const frame = Buffer.concat(parts);
    // Received in three chunks, the middle one cut inside the payload.
    const cuts = [16 + 64 + 100, 16 + 64 + 700];
    // Each chunk in its own memory, as socket reads deliver them.
    const own = (bytes: Buffer): Buffer => {
      const out = Buffer.alloc(bytes.length);
      bytes.copy(out);
      return out;
    };
    const chunks = [own(frame.subarray(0, cuts[0])), own(frame.subarray(cuts[0], cuts[1])), own(frame.subarray(cuts[1]))];
    const decoder = new PeerFrameDecoder({ entryBodyBytesMax: ENTRY_BODY_MAX });
    const messages = chunks.flatMap((chunk) => decoder.push(chunk));
    const [message] = messages;
    assert.equal(messages.length, 1);
    assert.ok(message?.type === 'entry');
    assert.equal(message.header.seq, 42);
    assert.equal(message.header.payloadBytes, 1000);
    assert.equal(message.bodyBytes, 64 + 1000);
    assert.deepEqual(Buffer.concat(message.payload), Buffer.concat(payload));
    // The payload is views of the received chunks, not a copy.
    assert.equal(message.payload.length, 3);
    message.payload.forEach((slice, index) => assert.equal(slice.buffer, chunks[index]?.buffer, `slice ${index} is a view of chunk ${index}`));
  });

  test('an ENTRY without payload and one of exactly the largest size are accepted', () => {
    const zeroes = zeroesEntry();
    const largest = writeEntry(new Prng(SEED + 1), PAYLOAD_MAX);
    const messages = decodeAll([Buffer.concat([...encodeEntryFrame(zeroes, []), ...encodeEntryFrame(largest.header, largest.payload)])]);
    assert.deepEqual(messages.map((message) => message['type']), ['entry', 'entry']);
    assert.equal(messages[0]?.['payload'], '');
    assert.equal(messages[1]?.['payload'], Buffer.concat(largest.payload).toString('hex'));
    assert.equal(messages[1]?.['bodyBytes'], 64 + PAYLOAD_MAX);
  });

  test('a refusal message is cut to 1024 bytes on a character boundary', () => {
    const [message] = decodeAll([encodeFrame({ type: 'refuse', code: RefuseCode.STATE, message: 'é'.repeat(600) })]);
    assert.equal(message?.['message'], 'é'.repeat(512));
    const [odd] = decodeAll([encodeFrame({ type: 'refuse', code: RefuseCode.STATE, message: 'x' + 'é'.repeat(600) })]);
    assert.equal(odd?.['message'], 'x' + 'é'.repeat(511));
  });

  test('encoders assert on values this node must never send', () => {
    assert.throws(() => encodeFrame({ ...hello, volume: 'v'.repeat(256) } as PeerControlMessage), AssertionError);
    assert.throws(() => encodeFrame({ ...hello, cluster: '' } as PeerControlMessage), AssertionError);
    assert.throws(() => encodeFrame({ ...hello, connectionIndex: 4 } as PeerControlMessage), AssertionError);
    assert.throws(() => encodeFrame({ type: 'flush', seq: MAX_SAFE + 1 }), AssertionError);
    assert.throws(() => encodeFrame({ type: 'in-sync', seq: MAX_SAFE + 1 }), AssertionError);
    const ready: PeerControlMessage = { type: 'ready', epoch: 7, disk: 'up-to-date', lastSeq: 9, durableSeq: 8, cpSeq: 5, diverged: true, divergedAfter: 9, empty: false, history: historyOf(7, 1) };
    assert.doesNotThrow(() => encodeFrame(ready));
    assert.throws(() => encodeFrame({ ...ready, divergedAfter: 10 }), AssertionError, 'divergedAfter past lastSeq');
    assert.throws(() => encodeFrame({ ...ready, lastSeq: 0, divergedAfter: 1 }), AssertionError, 'divergedAfter past lastSeq 0');
    assert.throws(() => encodeFrame({ ...ready, lastSeq: MAX_SAFE, divergedAfter: MAX_SAFE + 1 }), AssertionError, 'divergedAfter beyond 2^53-1');
    assert.throws(() => encodeFrame({ ...ready, divergedAfter: -1 }), AssertionError, 'negative divergedAfter');
    assert.throws(() => encodeFrame({ ...ready, divergedAfter: 1.5 }), AssertionError, 'fractional divergedAfter');
    const { header, payload } = writeEntry(new Prng(SEED), 100);
    assert.throws(() => encodeEntryFrame(header, payload.slice(0, 1).concat(Buffer.alloc(1))), AssertionError);
  });

  test('encoders assert on a history this node must never send', () => {
    const ready: PeerControlMessage = { type: 'ready', epoch: 7, disk: 'up-to-date', lastSeq: 0, durableSeq: 0, cpSeq: 0, diverged: false, divergedAfter: 0, empty: false, history: historyOf(7, 2) };
    for (const message of [{ ...hello, epoch: 7, history: historyOf(7, 2) }, ready]) {
      assert.doesNotThrow(() => encodeFrame(message), message.type);
      const bad: [string, PeerEpochStart[]][] = [
        ['empty', []],
        ['17 epochs', historyOf(7 + 17, 17)],
        ['last epoch is older', historyOf(6, 2)],
        ['last epoch is newer', historyOf(8, 2)],
        ['the epoch is not last', [{ epoch: 7, primary: 'a', firstSeq: 1 }, { epoch: 8, primary: 'b', firstSeq: 2 }]],
        ['primary of 256 bytes', [{ epoch: 7, primary: 'p'.repeat(256), firstSeq: 1 }]],
        ['empty primary', [{ epoch: 7, primary: '', firstSeq: 1 }]],
        ['firstSeq beyond 2^53-1', [{ epoch: 7, primary: 'a', firstSeq: MAX_SAFE + 1 }]],
        ['firstSeq going back', [{ epoch: 3, primary: 'a', firstSeq: 5 }, { epoch: 7, primary: 'b', firstSeq: 4 }]],
        ['an epoch going back', [{ epoch: 8, primary: 'a', firstSeq: 1 }, { epoch: 7, primary: 'b', firstSeq: 2 }]],
        ['the same epoch twice without a restart count', [{ epoch: 7, primary: 'a', firstSeq: 1 }, { epoch: 7, primary: 'a', firstSeq: 2 }]],
        ['the same epoch twice with the same restart count', [{ epoch: 7, primary: 'a', firstSeq: 1, restart: 1 }, { epoch: 7, primary: 'a', firstSeq: 2, restart: 1 }]],
        ['the same epoch restarted by another primary', [{ epoch: 7, primary: 'a', firstSeq: 1 }, { epoch: 7, primary: 'b', firstSeq: 2, restart: 1 }]],
        ['a restart count going down', [{ epoch: 7, primary: 'a', firstSeq: 1, restart: 2 }, { epoch: 7, primary: 'a', firstSeq: 2, restart: 1 }]],
        ['a restart count going down to none', [{ epoch: 7, primary: 'a', firstSeq: 1, restart: 1 }, { epoch: 7, primary: 'a', firstSeq: 2 }]],
        ['a restart whose firstSeq goes back', [{ epoch: 7, primary: 'a', firstSeq: 5 }, { epoch: 7, primary: 'a', firstSeq: 4, restart: 1 }]],
        ['a restart of an older epoch', [{ epoch: 6, primary: 'a', firstSeq: 1 }, { epoch: 7, primary: 'b', firstSeq: 2 }, { epoch: 6, primary: 'a', firstSeq: 3, restart: 1 }, { epoch: 7, primary: 'b', firstSeq: 4, restart: 1 }]],
        ['a restart count beyond a u32', [{ epoch: 7, primary: 'a', firstSeq: 1, restart: 2 ** 32 }]],
        ['a negative restart count', [{ epoch: 7, primary: 'a', firstSeq: 1, restart: -1 }]],
        ['a fractional restart count', [{ epoch: 7, primary: 'a', firstSeq: 1, restart: 1.5 }]],
      ];
      for (const [name, history] of bad) {
        const epoch = name === '17 epochs' ? 7 + 17 : 7;
        assert.throws(() => encodeFrame({ ...message, epoch, history }), AssertionError, `${message.type}: ${name}`);
      }
      // Restarts by the epoch's own primary with rising counts, and equal first entries, are sent.
      const restarts: PeerEpochStart[] = [{ epoch: 7, primary: 'a', firstSeq: 1 }, { epoch: 7, primary: 'a', firstSeq: 1, restart: 1 }, { epoch: 7, primary: 'a', firstSeq: 1, restart: 0xffff_ffff }];
      assert.doesNotThrow(() => encodeFrame({ ...message, history: restarts }), `${message.type}: restarts`);
    }
    const splitBrain: PeerControlMessage = { type: 'split-brain', decision: 'disconnect', sharedSeq: 120, lastSeq: 130, epoch: 1, history: RESTARTED, targetEntries: 0, targetBytes: 0, sourceEntries: 0 };
    assert.doesNotThrow(() => encodeFrame(splitBrain));
    const [first, second, third, fourth] = RESTARTED as [PeerEpochStart, PeerEpochStart, PeerEpochStart, PeerEpochStart];
    for (const [name, history] of [
      ['the same epoch twice without a higher restart count', [first, second, third, { ...fourth, restart: 1 }]],
      ['the same epoch restarted by another primary', [first, second, third, { ...fourth, primary: 'a' }]],
      ['a restart count going down', [first, second, fourth, third]],
    ] as const) {
      assert.throws(() => encodeFrame({ ...splitBrain, history: [...history] }), AssertionError, `split-brain: ${name}`);
    }
  });
});

describe('peer frames: chunking', () => {
  const random = new Prng(SEED + 2);
  const entry = writeEntry(random, 700);
  const stream = Buffer.concat([
    ...controlMessages.map(encodeFrame),
    ...encodeEntryFrame(entry.header, entry.payload),
    ...encodeEntryFrame(zeroesEntry(), []),
    encodeFrame({ type: 'ack', seq: 1, status: 0 }),
  ]);
  const expected = decodeAll([stream]);

  test('the stream decodes to one message per frame', () => {
    assert.equal(expected.length, controlMessages.length + 3);
  });

  test('split in two at every byte boundary', () => {
    for (let at = 0; at <= stream.length; at += 1) {
      assert.deepEqual(decodeAll([stream.subarray(0, at), stream.subarray(at)]), expected, `split at ${at}`);
    }
  });

  test('one byte at a time', () => {
    const bytes: Buffer[] = [];
    for (let at = 0; at < stream.length; at += 1) bytes.push(stream.subarray(at, at + 1));
    assert.deepEqual(decodeAll(bytes), expected);
  });

  test('random chunk sizes', () => {
    for (let iteration = 0; iteration < 200; iteration += 1) {
      const seed = (SEED + 1000 + iteration) >>> 0;
      const chunks = new Prng(seed);
      const pieces: Buffer[] = [];
      for (let at = 0; at < stream.length; ) {
        const size = chunks.chance(0.2) ? 0 : chunks.between(1, chunks.chance(0.5) ? 20 : 2000);
        pieces.push(stream.subarray(at, at + size));
        at += size;
      }
      assert.deepEqual(decodeAll(pieces), expected, `seed ${seed} (replay: BLOCKMIRROR_SEED=${seed})`);
    }
  });
});

describe('peer frames: damage and illegal frames', () => {
  const random = new Prng(SEED + 3);
  const entry = writeEntry(random, 300);
  const entryFrame = Buffer.concat(encodeEntryFrame(entry.header, entry.payload));
  const ackFrame = encodeFrame({ type: 'ack', seq: 5, status: 0 });

  test('any flipped byte of any frame is refused', () => {
    for (const frame of [...controlMessages.map(encodeFrame), ...largeControlMessages.map(encodeFrame), entryFrame]) {
      for (let index = 0; index < frame.length; index += 1) {
        const damaged = Buffer.from(frame);
        damaged[index] = (damaged[index] ?? 0) ^ random.between(1, 255);
        assertRefused(damaged);
      }
    }
  });

  test('any flipped bit of a small frame is refused', () => {
    for (let bit = 0; bit < ackFrame.length * 8; bit += 1) {
      const damaged = Buffer.from(ackFrame);
      damaged[bit >> 3] = (damaged[bit >> 3] ?? 0) ^ (1 << (bit & 7));
      assertRefused(damaged);
    }
  });

  test('a checksum mismatch is named', () => {
    const damaged = Buffer.from(ackFrame);
    damaged[20] = (damaged[20] ?? 0) ^ 1;
    assertRefused(damaged, /checksum/);
  });

  test('bad magic', () => {
    const damaged = Buffer.from(ackFrame);
    damaged.writeUInt32BE(0x424d4c45, 0); // a log entry's magic, not a frame's
    assertRefused(reseal(damaged), /magic/);
  });

  test('unknown frame types', () => {
    for (const type of [0, 7, 15, 31, 255]) assertRefused(frameOf(type, Buffer.alloc(8)), /unknown peer frame type/);
  });

  test('nonzero reserved header bytes', () => {
    const body = ackFrame.subarray(16);
    assertRefused(frameOf(PeerFrameType.ACK, body, { byte5: 1, word6: 0 }), /reserved/);
    assertRefused(frameOf(PeerFrameType.ACK, body, { byte5: 0, word6: 0x8000 }), /reserved/);
    assertRefused(frameOf(PeerFrameType.ACK, body, { byte5: 0, word6: 1 }), /reserved/);
  });

  test('nonzero reserved body fields', () => {
    for (const type of [PeerFrameType.ACK, PeerFrameType.FLUSHED, PeerFrameType.SYNCED]) {
      const body = Buffer.alloc(12);
      body.writeUInt16BE(1, 10);
      assertRefused(frameOf(type, body), /reserved/);
    }
    const ready = readyBody();
    ready.writeUInt8(1, 6);
    assertRefused(frameOf(PeerFrameType.READY, ready), /reserved/);
  });

  test('an oversized body is refused from its header alone, before the body arrives', () => {
    const cases: [number, number][] = [
      [PeerFrameType.ENTRY, ENTRY_BODY_MAX + 1],
      [PeerFrameType.ENTRY, 0xffff_ffff],
      [PeerFrameType.HELLO, 8193],
      [PeerFrameType.READY, 8193],
      [PeerFrameType.REFUSE, 0xffff_ffff],
      [PeerFrameType.ACK, 13],
      [PeerFrameType.AUTH, 31],
      [PeerFrameType.IN_SYNC, 9],
      [PeerFrameType.ENTRY, 63],
    ];
    for (const [type, bodyBytes] of cases) {
      const header = frameOf(type, Buffer.alloc(0), undefined, bodyBytes);
      const decoder = new PeerFrameDecoder({ entryBodyBytesMax: ENTRY_BODY_MAX });
      assert.throws(() => decoder.push(header), PeerProtocolError, `type ${type} body ${bodyBytes}`);
    }
    // At the limit, the header is accepted and the decoder waits for the body.
    for (const [type, bodyBytes] of [[PeerFrameType.ENTRY, ENTRY_BODY_MAX], [PeerFrameType.HELLO, 8192], [PeerFrameType.READY, 8192]] as const) {
      const decoder = new PeerFrameDecoder({ entryBodyBytesMax: ENTRY_BODY_MAX });
      assert.deepEqual(decoder.push(frameOf(type, Buffer.alloc(0), undefined, bodyBytes)), []);
    }
  });

  test('HELLO fields out of range', () => {
    const long = text('n'.repeat(256));
    assertRefused(frameOf(PeerFrameType.HELLO, helloBody({ names: [text('c'), long, text('b'), text('v')] })), /fromNode length 256/);
    assertRefused(frameOf(PeerFrameType.HELLO, helloBody({ names: [text(''), text('a'), text('b'), text('v')] })), /cluster length 0/);
    const invalidUtf8 = text(Buffer.from([0x61, 0xc3]));
    assertRefused(frameOf(PeerFrameType.HELLO, helloBody({ names: [text('c'), text('a'), text('b'), invalidUtf8] })), /UTF-8/);
    assertRefused(frameOf(PeerFrameType.HELLO, helloBody({ connections: 0 })), /out of range/);
    assertRefused(frameOf(PeerFrameType.HELLO, helloBody({ connections: 17, connectionIndex: 0 })), /out of range/);
    assertRefused(frameOf(PeerFrameType.HELLO, helloBody({ connections: 2, connectionIndex: 2 })), /out of range/);
    assertRefused(frameOf(PeerFrameType.HELLO, Buffer.concat([helloBody(), Buffer.alloc(1)])), /extra bytes/);
    assertRefused(frameOf(PeerFrameType.HELLO, helloBody().subarray(0, 45)), /ends early/);
    // Without the epoch that follows the names (a version 1 HELLO's length), and without
    // the history that follows the epoch (an earlier version 2 HELLO's).
    const names = ['c', 'a', 'b', 'v'].map((name) => text(name));
    assertRefused(frameOf(PeerFrameType.HELLO, Buffer.concat([helloBody().subarray(0, 40), ...names])), /HELLO body ends early/);
    assertRefused(frameOf(PeerFrameType.HELLO, Buffer.concat([helloBody().subarray(0, 40), ...names, u32(7)])), /HELLO body ends early/);
    // A version 2 HELLO, whose history has no restart counts: read without its history, so
    // that the target can answer REFUSE VERSION (with who sent it), not close on a bad frame.
    const version2 = helloBody({ history: historyBytesVersion2(HISTORY_7) });
    version2.writeUInt16BE(2, 0);
    const older = new PeerFrameDecoder({ entryBodyBytesMax: ENTRY_BODY_MAX }).push(frameOf(PeerFrameType.HELLO, version2))[0];
    assert.ok(older?.type === 'hello');
    assert.deepEqual([older.version, older.fromNode, older.volume, older.history], [2, 'a', 'v', []]);
    // The same history in a HELLO that says version 3 is a bad frame: the high half of epoch
    // 3's first entry is read as its restart count, the first entry read after it runs into
    // the name, and what is left for the name's length is 0.
    const mislabelled = helloBody({ history: historyBytesVersion2(HISTORY_7) });
    assertRefused(frameOf(PeerFrameType.HELLO, mislabelled), /^HELLO primary length 0 outside 1\.\.255$/);
    // The well-formed body these cases were made from is accepted.
    const decoded = decodeAll([frameOf(PeerFrameType.HELLO, helloBody())])[0];
    assert.equal(decoded?.['volume'], 'v');
    assert.equal(decoded?.['epoch'], 7);
  });

  test('READY with an unknown disk state, without its history, or with bytes after it', () => {
    for (const disk of [5, 255]) {
      const body = readyBody();
      body.writeUInt8(disk, 4);
      assertRefused(frameOf(PeerFrameType.READY, body), /disk state/);
    }
    // The fixed part alone (the READY of before histories), and the fixed part without
    // divergedAfter (the READY of before it, 32 bytes).
    assertRefused(frameOf(PeerFrameType.READY, readyBody().subarray(0, 40)), /READY body ends early/);
    assertRefused(frameOf(PeerFrameType.READY, readyBody().subarray(0, 32)), /READY body ends early/);
    assertRefused(frameOf(PeerFrameType.READY, Buffer.concat([readyBody(), Buffer.alloc(1)])), /READY body has 1 extra bytes/);
    assertRefused(frameOf(PeerFrameType.READY, Buffer.concat([readyBody(), historyBytes(HISTORY_7)])), /READY body has \d+ extra bytes/);
    // A history in the version 2 layout (14 fixed bytes per epoch, no restart counts).
    assertRefused(frameOf(PeerFrameType.READY, readyBody({ history: historyBytesVersion2(HISTORY_7) })), /^READY primary length 0 outside 1\.\.255$/);
    // One epoch in the version 2 layout is 4 bytes short of the new one.
    assertRefused(frameOf(PeerFrameType.READY, readyBody({ history: historyBytesVersion2([{ epoch: 7, firstSeq: 1, primary: 'a' }]) })), /READY body ends early/);
    // The well-formed body these were made from is accepted.
    assert.deepEqual(decodeAll([frameOf(PeerFrameType.READY, readyBody())]), [{
      type: 'ready', epoch: 7, disk: 'up-to-date', lastSeq: 9, durableSeq: 8, cpSeq: 5, diverged: true, divergedAfter: 6, empty: false,
      history: [{ epoch: 3, firstSeq: 1, primary: 'b' }, { epoch: 7, firstSeq: 100, primary: 'a' }],
    }]);
  });

  test('SPLIT_BRAIN with an unknown decision, reserved bytes set, or a shared entry not before the target\'s last', () => {
    const body = (decision: number, reserved: number, sharedSeq: number, lastSeq: number): Buffer => splitBrainBody({ decision, reserved, sharedSeq, lastSeq });
    assert.equal(decodeAll([frameOf(PeerFrameType.SPLIT_BRAIN, body(1, 0, 4, 5))])[0]?.['decision'], 'discard-source');
    assertRefused(frameOf(PeerFrameType.SPLIT_BRAIN, body(2, 0, 4, 5)), /^SPLIT_BRAIN decision 2 is unknown$/);
    assertRefused(frameOf(PeerFrameType.SPLIT_BRAIN, body(0, 1, 4, 5)), /reserved|zero/);
    assertRefused(frameOf(PeerFrameType.SPLIT_BRAIN, body(0, 0, 5, 5)), /^SPLIT_BRAIN shared entry 5 is not before the target's last 5$/);
    assert.throws(() => encodeFrame({ type: 'split-brain', decision: 'disconnect', sharedSeq: 5, lastSeq: 5, epoch: 7, history: historyOf(7, 1), targetEntries: 0, targetBytes: 0, sourceEntries: 0 }), AssertionError);
  });

  test('READY divergedAfter past its last entry or above 2^53-1', () => {
    assertRefused(frameOf(PeerFrameType.READY, readyBody({ divergedAfter: 10 })), /^READY divergedAfter 10 is past its last entry 9$/);
    assertRefused(frameOf(PeerFrameType.READY, readyBody({ lastSeq: 0, divergedAfter: 1 })), /READY divergedAfter 1 is past its last entry 0/);
    assertRefused(frameOf(PeerFrameType.READY, readyBody({ lastSeq: MAX_SAFE - 1, divergedAfter: MAX_SAFE })), /READY divergedAfter 9007199254740991 is past its last entry 9007199254740990/);
    for (const divergedAfter of [2n ** 53n, 2n ** 64n - 1n]) {
      assertRefused(frameOf(PeerFrameType.READY, readyBody({ lastSeq: MAX_SAFE, divergedAfter })), /READY divergedAfter exceeds 2\^53-1/);
    }
    // A READY of the layout before divergedAfter: the history's first bytes are read as
    // the field, which lies past lastSeq.
    assertRefused(frameOf(PeerFrameType.READY, Buffer.concat([readyBody().subarray(0, 32), historyBytes(HISTORY_7)])), /READY divergedAfter \d+ is past its last entry 9/);
    // The edges are accepted.
    assert.equal(decodeAll([frameOf(PeerFrameType.READY, readyBody({ lastSeq: MAX_SAFE, divergedAfter: MAX_SAFE }))])[0]?.['divergedAfter'], MAX_SAFE);
  });

  describe('a history a correct node cannot have', () => {
    const frames = [
      ['HELLO', (epoch: number, history: Buffer) => frameOf(PeerFrameType.HELLO, helloBody({ epoch, history }))],
      ['READY', (epoch: number, history: Buffer) => frameOf(PeerFrameType.READY, readyBody({ epoch, history }))],
      ['SPLIT_BRAIN', (epoch: number, history: Buffer) => frameOf(PeerFrameType.SPLIT_BRAIN, splitBrainBody({ epoch, history }))],
    ] as const;
    const seventeen = Array.from({ length: 17 }, (_, index): RawEpochStart => ({ epoch: index + 1, firstSeq: index + 1, primary: 'a' }));
    const cases: [string, number, Buffer, RegExp][] = [
      ['no epochs', 7, historyBytes([]), /history of 0 epochs outside 1\.\.16/],
      ['17 epochs', 17, historyBytes(seventeen), /history of 17 epochs outside 1\.\.16/],
      ['a count of 65535 (with one epoch)', 7, historyBytes([{ epoch: 7, firstSeq: 1, primary: 'a' }], 0xffff), /history of 65535 epochs/],
      ['an epoch repeated', 7, historyBytes([{ epoch: 3, firstSeq: 1, primary: 'b' }, { epoch: 3, firstSeq: 5, primary: 'a' }, { epoch: 7, firstSeq: 9, primary: 'a' }]), /history epoch 3 \(from entry 5\) does not follow/],
      ['an epoch repeated by its primary without a restart count', 7, historyBytes([{ epoch: 3, firstSeq: 1, primary: 'b' }, { epoch: 3, firstSeq: 5, primary: 'b' }, { epoch: 7, firstSeq: 9, primary: 'a' }]), /history epoch 3 \(from entry 5\) does not follow/],
      ['an epoch repeated with the same restart count', 7, historyBytes([{ epoch: 3, restart: 1, firstSeq: 1, primary: 'b' }, { epoch: 3, restart: 1, firstSeq: 5, primary: 'b' }, { epoch: 7, firstSeq: 9, primary: 'a' }]), /history epoch 3 \(from entry 5\) does not follow/],
      ['an epoch restarted by another primary', 7, historyBytes([{ epoch: 3, firstSeq: 1, primary: 'b' }, { epoch: 3, restart: 1, firstSeq: 5, primary: 'a' }, { epoch: 7, firstSeq: 9, primary: 'a' }]), /history epoch 3 \(from entry 5\) does not follow/],
      ['a restart count going down', 7, historyBytes([{ epoch: 7, restart: 2, firstSeq: 1, primary: 'a' }, { epoch: 7, restart: 1, firstSeq: 5, primary: 'a' }]), /history epoch 7 \(from entry 5\) does not follow/],
      ['a restart count going down to 0', 7, historyBytes([{ epoch: 7, restart: 0xffff_ffff, firstSeq: 1, primary: 'a' }, { epoch: 7, firstSeq: 5, primary: 'a' }]), /history epoch 7 \(from entry 5\) does not follow/],
      ['a restart whose first entry goes back', 7, historyBytes([{ epoch: 7, firstSeq: 5, primary: 'a' }, { epoch: 7, restart: 1, firstSeq: 4, primary: 'a' }]), /history epoch 7 \(from entry 4\) does not follow/],
      ['a restart of an older epoch', 7, historyBytes([{ epoch: 3, firstSeq: 1, primary: 'b' }, { epoch: 5, firstSeq: 2, primary: 'a' }, { epoch: 3, restart: 1, firstSeq: 3, primary: 'b' }, { epoch: 7, firstSeq: 4, primary: 'a' }]), /history epoch 3 \(from entry 3\) does not follow/],
      ['epochs going back', 7, historyBytes([{ epoch: 5, firstSeq: 1, primary: 'b' }, { epoch: 4, firstSeq: 2, primary: 'a' }, { epoch: 7, firstSeq: 3, primary: 'a' }]), /history epoch 4 \(from entry 2\) does not follow/],
      ['first entries going back', 7, historyBytes([{ epoch: 3, firstSeq: 10, primary: 'b' }, { epoch: 7, firstSeq: 9, primary: 'a' }]), /history epoch 7 \(from entry 9\) does not follow/],
      ['a first entry of 0 in the first epoch', 7, historyBytes([{ epoch: 3, firstSeq: 0, primary: 'b' }, { epoch: 7, firstSeq: 1, primary: 'a' }]), /history epoch 3 starts at entry 0, not at an entry/],
      ['a first entry of 0 in the only epoch', 7, historyBytes([{ epoch: 7, firstSeq: 0, primary: 'a' }]), /history epoch 7 starts at entry 0, not at an entry/],
      ['a last epoch older than the frame\'s', 7, historyBytes([{ epoch: 3, firstSeq: 1, primary: 'b' }, { epoch: 6, firstSeq: 2, primary: 'a' }]), /history ends with epoch 6, not 7/],
      ['a last epoch newer than the frame\'s', 7, historyBytes([{ epoch: 7, firstSeq: 1, primary: 'b' }, { epoch: 8, firstSeq: 2, primary: 'a' }]), /history ends with epoch 8, not 7/],
      ['a first entry beyond 2^53-1', 7, historyBytes([{ epoch: 7, firstSeq: 2n ** 53n, primary: 'a' }]), /firstSeq exceeds 2\^53-1/],
      ['an empty primary', 7, historyBytes([{ epoch: 7, firstSeq: 1, primary: '' }]), /primary length 0 outside 1\.\.255/],
      ['a primary of 256 bytes', 7, historyBytes([{ epoch: 7, firstSeq: 1, primary: 'p'.repeat(256) }]), /primary length 256 outside 1\.\.255/],
      ['a primary that is not UTF-8', 7, historyBytes([{ epoch: 7, firstSeq: 1, primary: Buffer.from([0x61, 0xc3]) }]), /primary is not valid UTF-8/],
      ['fewer epochs than counted', 7, historyBytes(HISTORY_7, 3), /body ends early/],
      ['a body cut inside the last primary', 7, historyBytes(HISTORY_7).subarray(0, historyBytes(HISTORY_7).length - 1), /body ends early/],
    ];
    for (const [frameName, frame] of frames) {
      for (const [name, epoch, history, pattern] of cases) {
        test(`${frameName}: ${name}`, () => assertRefused(frame(epoch, history), pattern));
      }
      test(`${frameName}: the edges are accepted (16 epochs, equal first entries, a 255-byte primary)`, () => {
        const sixteen = seventeen.slice(1).map((start, index) => ({ ...start, firstSeq: 1 + Math.floor(index / 3), primary: index === 15 ? 'p'.repeat(255) : 'a' }));
        const [decoded] = decodeAll([frame(17, historyBytes(sixteen))]);
        assert.deepEqual(decoded?.['history'], sixteen);
        const [single] = decodeAll([frame(7, historyBytes([{ epoch: 7, firstSeq: MAX_SAFE, primary: 'é' }]))]);
        assert.deepEqual(single?.['history'], [{ epoch: 7, firstSeq: MAX_SAFE, primary: 'é' }]);
      });
      test(`${frameName}: restarts are accepted (rising counts from any start, up to 2^32-1, equal first entries, a history that begins with one)`, () => {
        const restarts: RawEpochStart[] = [
          { epoch: 3, restart: 4, firstSeq: 1, primary: 'b' },
          { epoch: 3, restart: 9, firstSeq: 1, primary: 'b' },
          { epoch: 7, firstSeq: 2, primary: 'a' },
          { epoch: 7, restart: 1, firstSeq: 2, primary: 'a' },
          { epoch: 7, restart: 0xffff_ffff, firstSeq: 9, primary: 'a' },
        ];
        const [decoded] = decodeAll([frame(7, historyBytes(restarts))]);
        assert.deepEqual(decoded?.['history'], restarts);
      });
    }
  });

  test('IN_SYNC of another length than 8 bytes, or a seq above 2^53-1', () => {
    for (const bytes of [0, 7, 9, 16]) {
      assertRefused(frameOf(PeerFrameType.IN_SYNC, Buffer.alloc(bytes)), new RegExp(`IN_SYNC body of ${bytes} bytes, expected 8`));
    }
    assertRefused(frameOf(PeerFrameType.IN_SYNC, u64(2n ** 53n)), /IN_SYNC seq exceeds 2\^53-1/);
  });

  test('DIVERGED, VERIFY and VERIFIED out of range', () => {
    const diverged = (count: number, flag: number, extents: number): Buffer => {
      const body = Buffer.alloc(8 + 16 * extents);
      body.writeUInt16BE(count, 0);
      body.writeUInt8(flag, 2);
      return body;
    };
    assertRefused(frameOf(PeerFrameType.DIVERGED, diverged(65, 0, 65)), /65 extents/);
    assertRefused(frameOf(PeerFrameType.DIVERGED, diverged(1, 2, 1)), /flag 2/);
    assertRefused(frameOf(PeerFrameType.DIVERGED, diverged(2, 0, 1)), /ends early/);
    assertRefused(frameOf(PeerFrameType.DIVERGED, diverged(1, 0, 2)), /extra bytes/);
    const reserved = diverged(0, 0, 0);
    reserved.writeUInt8(1, 7);
    assertRefused(frameOf(PeerFrameType.DIVERGED, reserved), /reserved/);
    const verify = (lengthBytes: number): Buffer => {
      const body = Buffer.alloc(32);
      body.writeUInt32BE(lengthBytes, 24);
      return body;
    };
    assertRefused(frameOf(PeerFrameType.VERIFY, verify(0)), /VERIFY length 0/);
    assertRefused(frameOf(PeerFrameType.VERIFY, verify(4 * 1024 * 1024 + 1)), /VERIFY length/);
    assertRefused(frameOf(PeerFrameType.VERIFY, verify(4096).subarray(0, 28)), /VERIFY body of 28 bytes, expected 32/);
    const verified = Buffer.alloc(40);
    verified.writeUInt8(1, 7);
    assertRefused(frameOf(PeerFrameType.VERIFIED, verified), /reserved/);
    // The well-formed bodies these were made from are accepted.
    assert.equal(decodeAll([frameOf(PeerFrameType.VERIFY, verify(4096))])[0]?.['lengthBytes'], 4096);
    assert.deepEqual(decodeAll([frameOf(PeerFrameType.DIVERGED, diverged(1, 0, 1))])[0]?.['extents'], [{ offset: 0, lengthBytes: 0 }]);
  });

  test('REFUSE with an unknown code or an overlong message', () => {
    assertRefused(frameOf(PeerFrameType.REFUSE, Buffer.concat([u16(0), text('x')])), /code 0/);
    assertRefused(frameOf(PeerFrameType.REFUSE, Buffer.concat([u16(11), text('x')])), /code 11/);
    assertRefused(frameOf(PeerFrameType.REFUSE, Buffer.concat([u16(RefuseCode.ROLE), text('m'.repeat(1025))])), /1025/);
  });

  test('an ENTRY whose payload does not match its checksum, with the frame checksum right', () => {
    const damaged = Buffer.from(entryFrame);
    damaged[16 + 64 + 10] = (damaged[16 + 64 + 10] ?? 0) ^ 0x40;
    assertRefused(reseal(damaged), /payload checksum/);
  });

  test('an ENTRY whose header is damaged or does not match the body length', () => {
    const damagedHeader = Buffer.from(entryFrame);
    damagedHeader[16 + 30] = (damagedHeader[16 + 30] ?? 0) ^ 1;
    assertRefused(reseal(damagedHeader), /ENTRY header is invalid/);
    assertRefused(frameOf(PeerFrameType.ENTRY, entryFrame.subarray(16, entryFrame.length - 1)), /does not match payload/);
    assertRefused(frameOf(PeerFrameType.ENTRY, Buffer.concat([entryFrame.subarray(16), Buffer.alloc(1)])), /does not match payload/);
  });

  test('u64 fields above 2^53-1', () => {
    const seq = Buffer.alloc(8);
    seq.writeUInt32BE(0x0020_0000, 0); // 2^53
    assertRefused(frameOf(PeerFrameType.FLUSH, seq), /exceeds 2\^53-1/);
    assertRefused(frameOf(PeerFrameType.SYNCED, Buffer.concat([seq, Buffer.alloc(4)])), /cpSeq exceeds/);
    const ready = readyBody();
    ready.writeUInt32BE(0xffff_ffff, 16);
    assertRefused(frameOf(PeerFrameType.READY, ready), /durableSeq exceeds/);
    const diverged = readyBody();
    diverged.writeUInt32BE(0x0020_0000, 32);
    assertRefused(frameOf(PeerFrameType.READY, diverged), /divergedAfter exceeds/);
  });

  test('a decoder that refused once refuses everything after', () => {
    const decoder = new PeerFrameDecoder({ entryBodyBytesMax: ENTRY_BODY_MAX });
    assert.equal(decoder.push(ackFrame).length, 1);
    const damaged = Buffer.from(ackFrame);
    damaged[0] = 0;
    assert.throws(() => decoder.push(damaged), PeerProtocolError);
    assert.equal(decoder.bufferedBytes, 0, 'a dead decoder holds nothing');
    assert.throws(() => decoder.push(ackFrame), PeerProtocolError);
    assert.throws(() => decoder.push(Buffer.alloc(0)), PeerProtocolError);
  });
});
