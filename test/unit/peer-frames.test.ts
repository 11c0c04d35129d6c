// The node-to-node frame codec. What a peer relies on: every message comes back exactly
// as it was sent, however TCP cuts the stream; an ENTRY arrives with its payload intact
// and ready to store; and any damage or any frame a correct node would not send is
// refused with a PeerProtocolError, an oversized one before its body is buffered, after
// which the decoder refuses everything. Frames that encoders cannot produce are built by
// hand here (frameOf), with the checksum recomputed so that the check under test is the
// one that must catch them.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AssertionError } from '../../src/lib/assert.js';
import { crc32c } from '../../src/lib/crc32c.js';
import { PeerProtocolError } from '../../src/protocol/peer/errors.js';
import {
  encodeEntryFrame,
  encodeFrame,
  PEER_DISK_STATES,
  PEER_FRAME_MAGIC,
  PeerFrameDecoder,
  PeerFrameType,
  RefuseCode,
  type PeerControlMessage,
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

const hello: PeerControlMessage = {
  type: 'hello',
  version: 1,
  connectionIndex: 2,
  connections: 4,
  session: 0xdead_beef,
  nonce: new Prng(SEED).bytes(32),
  cluster: 'prod-é-cluster',
  fromNode: 'node-a',
  toNode: 'x'.repeat(255),
  volume: 'vol-日本',
  epoch: 0xffff_ffff,
};

/** One of every control message, with values at the edges of their ranges. */
const controlMessages: PeerControlMessage[] = [
  hello,
  { ...hello, connectionIndex: 0, connections: 1, session: 0, cluster: 'c', fromNode: 'a', toNode: 'b', volume: 'v', epoch: 0 },
  { type: 'challenge', nonce: nonce(0x11), mac: nonce(0x22) },
  { type: 'auth', mac: nonce(0x33) },
  ...PEER_DISK_STATES.map((disk, index): PeerControlMessage => ({
    type: 'ready',
    epoch: index === 0 ? 0xffff_ffff : index,
    disk,
    lastSeq: MAX_SAFE,
    durableSeq: 2 ** 32 + index,
    cpSeq: 0,
  })),
  { type: 'refuse', code: RefuseCode.AUTH, message: 'wrong secret for node "b"' },
  { type: 'refuse', code: RefuseCode.BUSY, message: '' },
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
  { type: 'verified', token: 7, status: 0, digest: Buffer.alloc(32, 0xab) },
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

/** A HELLO body from parts, so single fields can be made illegal. */
function helloBody(parts: { connectionIndex?: number; connections?: number; names?: Buffer[] } = {}): Buffer {
  const fixed = Buffer.alloc(40);
  fixed.writeUInt16BE(2, 0);
  fixed.writeUInt8(parts.connectionIndex ?? 0, 2);
  fixed.writeUInt8(parts.connections ?? 1, 3);
  const names = parts.names ?? ['c', 'a', 'b', 'v'].map((name) => text(name));
  const epoch = Buffer.alloc(4);
  epoch.writeUInt32BE(7, 0);
  return Buffer.concat([fixed, ...names, epoch]);
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

/** Feeds `bytes`, then enough zeroes to complete any frame a damaged length announced. */
function assertRefused(bytes: Buffer, pattern?: RegExp): void {
  const decoder = new PeerFrameDecoder({ entryBodyBytesMax: ENTRY_BODY_MAX });
  const returned: PeerMessage[] = [];
  const thrown = (() => {
    try {
      returned.push(...decoder.push(bytes));
      returned.push(...decoder.push(Buffer.alloc(ENTRY_BODY_MAX + 16)));
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
    for (const message of controlMessages) {
      assert.deepEqual(decodeAll([encodeFrame(message)]), [plain(message)], message.type);
    }
  });

  test('the header has the documented layout and checksum', () => {
    const frame = encodeFrame({ type: 'ack', seq: 0x1_0000_0002, status: 3 });
    assert.equal(frame.toString('hex', 0, 12), '424d5046' + '11' + '000000' + '0000000c');
    assert.equal(frame.toString('hex', 16), '00000001' + '00000002' + '0003' + '0000');
    assert.equal(frame.readUInt32BE(12), crc32c(Buffer.concat([frame.subarray(0, 12), frame.subarray(16)])));
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
    const { header, payload } = writeEntry(new Prng(SEED), 100);
    assert.throws(() => encodeEntryFrame(header, payload.slice(0, 1).concat(Buffer.alloc(1))), AssertionError);
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
    for (const frame of [...controlMessages.map(encodeFrame), entryFrame]) {
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
    for (const type of [0, 6, 15, 27, 255]) assertRefused(frameOf(type, Buffer.alloc(8)), /unknown peer frame type/);
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
    const ready = Buffer.alloc(32);
    ready.writeUInt8(1, 6);
    assertRefused(frameOf(PeerFrameType.READY, ready), /reserved/);
  });

  test('an oversized body is refused from its header alone, before the body arrives', () => {
    const cases: [number, number][] = [
      [PeerFrameType.ENTRY, ENTRY_BODY_MAX + 1],
      [PeerFrameType.ENTRY, 0xffff_ffff],
      [PeerFrameType.HELLO, 2049],
      [PeerFrameType.REFUSE, 0xffff_ffff],
      [PeerFrameType.ACK, 13],
      [PeerFrameType.AUTH, 31],
      [PeerFrameType.ENTRY, 63],
    ];
    for (const [type, bodyBytes] of cases) {
      const header = frameOf(type, Buffer.alloc(0), undefined, bodyBytes);
      const decoder = new PeerFrameDecoder({ entryBodyBytesMax: ENTRY_BODY_MAX });
      assert.throws(() => decoder.push(header), PeerProtocolError, `type ${type} body ${bodyBytes}`);
    }
    // At the limit, the header is accepted and the decoder waits for the body.
    for (const [type, bodyBytes] of [[PeerFrameType.ENTRY, ENTRY_BODY_MAX], [PeerFrameType.HELLO, 2048]] as const) {
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
    // Without the epoch that follows the names (a version 1 HELLO's length).
    assertRefused(frameOf(PeerFrameType.HELLO, helloBody().subarray(0, helloBody().length - 4)), /ends early/);
    // The well-formed body these cases were made from is accepted.
    const decoded = decodeAll([frameOf(PeerFrameType.HELLO, helloBody())])[0];
    assert.equal(decoded?.['volume'], 'v');
    assert.equal(decoded?.['epoch'], 7);
  });

  test('READY with an unknown disk state', () => {
    for (const disk of [5, 255]) {
      const body = Buffer.alloc(32);
      body.writeUInt8(disk, 4);
      assertRefused(frameOf(PeerFrameType.READY, body), /disk state/);
    }
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
    assertRefused(frameOf(PeerFrameType.REFUSE, Buffer.concat([u16(10), text('x')])), /code 10/);
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
    const ready = Buffer.alloc(32);
    ready.writeUInt32BE(0xffff_ffff, 16);
    assertRefused(frameOf(PeerFrameType.READY, ready), /durableSeq exceeds/);
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
