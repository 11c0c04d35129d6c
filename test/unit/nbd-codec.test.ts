// The NBD codecs against hand-built byte streams: both decoders must return the same
// messages however the stream is cut into chunks (at every byte boundary, and one byte
// at a time), stop for good at a bad magic, and hand over exactly the unconsumed bytes.
// The encoders are checked byte for byte against the offsets of the spec
// (NetworkBlockDevice/nbd doc/proto.md), with the expected bytes written out by hand.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AssertionError } from '../../src/lib/assert.js';
import { ChunkType, Command, CommandFlag, Errno, Info, Option, Reply, TxFlag } from '../../src/protocol/nbd/constants.js';
import {
  encodeBlockStatusChunk,
  encodeChunkHeader,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContext,
  encodeOffsetDataHeader,
  encodeOptionError,
  encodeOptionReply,
  encodeServerEntry,
  encodeSimpleReply,
} from '../../src/protocol/nbd/encode.js';
import { HandshakeDecoder, type HandshakeMessage } from '../../src/protocol/nbd/handshake-decoder.js';
import { RequestDecoder, type RequestMessage } from '../../src/protocol/nbd/request-decoder.js';

// ---------------------------------------------------------------------------------------
// Building client byte streams.

const IHAVEOPT_HEX = '49484156454f5054';

function u16(value: number): Buffer {
  const out = Buffer.alloc(2);
  out.writeUInt16BE(value, 0);
  return out;
}

function u32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value, 0);
  return out;
}

function optionHeader(option: number, lengthBytes: number): Buffer {
  return Buffer.concat([Buffer.from(IHAVEOPT_HEX, 'hex'), u32(option), u32(lengthBytes)]);
}

function optionBytes(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([optionHeader(option, data.length), data]);
}

function lengthPrefixed(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  return Buffer.concat([u32(bytes.length), bytes]);
}

/** INFO/GO data: u32 name length, name, u16 count, count × u16 info type. */
function infoRequestData(name: string, infos: number[]): Buffer {
  return Buffer.concat([lengthPrefixed(name), u16(infos.length), ...infos.map(u16)]);
}

/** LIST/SET_META_CONTEXT data: u32 name length, name, u32 count, each query prefixed. */
function metaRequestData(name: string, queries: string[]): Buffer {
  return Buffer.concat([lengthPrefixed(name), u32(queries.length), ...queries.map(lengthPrefixed)]);
}

function pattern(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  for (let index = 0; index < length; index += 1) out[index] = (seed + index * 7) & 0xff;
  return out;
}

interface RequestSpec {
  flags: number;
  type: number;
  cookie: bigint;
  offset: bigint;
  length: number;
  /** Bytes sent after the header (a WRITE's payload). */
  payload?: Buffer;
  magic?: number;
}

function requestBytes(spec: RequestSpec): Buffer {
  const header = Buffer.alloc(28);
  header.writeUInt32BE(spec.magic ?? 0x25609513, 0);
  header.writeUInt16BE(spec.flags, 4);
  header.writeUInt16BE(spec.type, 6);
  header.writeBigUInt64BE(spec.cookie, 8);
  header.writeBigUInt64BE(spec.offset, 16);
  header.writeUInt32BE(spec.length, 24);
  return spec.payload === undefined ? header : Buffer.concat([header, spec.payload]);
}

// ---------------------------------------------------------------------------------------
// Driving the decoders over a stream cut into pieces.

/** Messages with buffers turned into hex, so that assertion diffs are readable. */
type Plain = Record<string, unknown>;

function plainHandshake(message: HandshakeMessage): Plain {
  return message.kind === 'option' ? { ...message, data: message.data.toString('hex') } : { ...message };
}

function plainRequest(message: RequestMessage): Plain {
  if (message.kind === 'fatal') return { ...message };
  const { payload, ...request } = message.request;
  return { kind: 'request', ...request, data: payload.length === 0 ? undefined : Buffer.concat(payload).toString('hex') };
}

/** Every way of cutting `stream` that the tests try: whole, in two at each byte, byte by byte. */
function splits(stream: Buffer): { name: string; pieces: Buffer[] }[] {
  const out: { name: string; pieces: Buffer[] }[] = [{ name: 'whole', pieces: [stream] }];
  for (let at = 0; at <= stream.length; at += 1) {
    out.push({ name: `split at ${at}`, pieces: [stream.subarray(0, at), stream.subarray(at)] });
  }
  const bytes: Buffer[] = [];
  for (let at = 0; at < stream.length; at += 1) bytes.push(stream.subarray(at, at + 1));
  out.push({ name: 'one byte at a time', pieces: bytes });
  return out;
}

/**
 * Plays a connection: pushes pieces into a HandshakeDecoder and takes messages until GO
 * (or EXPORT_NAME) or a bad magic; after GO the decoder's remainder and every later piece
 * belong to transmission. next() calls are counted so that a loop is caught.
 */
function runHandshake(pieces: Buffer[], optionBytesMax: number): { messages: Plain[]; rest: Buffer } {
  const decoder = new HandshakeDecoder(optionBytesMax);
  const messages: Plain[] = [];
  const rest: Buffer[] = [];
  let done = false;
  let calls = 0;
  const totalBytes = pieces.reduce((sum, piece) => sum + piece.length, 0);
  for (const piece of pieces) {
    if (done) {
      rest.push(piece);
      continue;
    }
    decoder.push(piece);
    for (;;) {
      calls += 1;
      assert.ok(calls <= totalBytes + pieces.length + 1, 'HandshakeDecoder.next() called more often than bytes exist');
      const message = decoder.next();
      if (message === undefined) break;
      messages.push(plainHandshake(message));
      if (message.kind === 'bad-magic') {
        done = true;
        break;
      }
      if (message.kind === 'option' && (message.option === Option.GO || message.option === Option.EXPORT_NAME)) {
        done = true;
        rest.push(decoder.takeRemainder());
        break;
      }
    }
  }
  return { messages, rest: Buffer.concat(rest) };
}

function runRequests(pieces: Buffer[], payloadBytesMax: number, discardBytesMax: number): Plain[] {
  const decoder = new RequestDecoder(payloadBytesMax, discardBytesMax);
  const messages: Plain[] = [];
  let calls = 0;
  const totalBytes = pieces.reduce((sum, piece) => sum + piece.length, 0);
  for (const piece of pieces) {
    decoder.push(piece);
    for (;;) {
      calls += 1;
      assert.ok(calls <= totalBytes + pieces.length + 1, 'RequestDecoder.next() called more often than bytes exist');
      const message = decoder.next();
      if (message === undefined) break;
      messages.push(plainRequest(message));
    }
  }
  return messages;
}

// ---------------------------------------------------------------------------------------
// The handshake decoder.

const OPTION_LIMIT = 32;

const setMetaData = metaRequestData('disk', ['base:allocation']);
const limitData = pattern(OPTION_LIMIT, 1);
const infoData = infoRequestData('disk', [Info.BLOCK_SIZE, Info.NAME]);
const goData = infoRequestData('disk', [Info.BLOCK_SIZE]);
const transmissionStart = Buffer.concat([
  requestBytes({ flags: 0, type: Command.READ, cookie: 0x1122334455667788n, offset: 0n, length: 512 }),
  Buffer.from('0123', 'utf8'),
]);

const handshakeStream = Buffer.concat([
  u32(0x3),
  optionBytes(Option.STRUCTURED_REPLY),
  optionBytes(Option.SET_META_CONTEXT, setMetaData),
  optionBytes(0x1234abcd, limitData),
  optionBytes(Option.LIST, pattern(OPTION_LIMIT + 1, 2)),
  optionBytes(Option.INFO, infoData),
  optionBytes(Option.LIST_META_CONTEXT, pattern(1000, 3)),
  optionBytes(Option.GO, goData),
  transmissionStart,
]);

const handshakeExpected: Plain[] = [
  { kind: 'client-flags', flags: 3 },
  { kind: 'option', option: Option.STRUCTURED_REPLY, data: '' },
  { kind: 'option', option: Option.SET_META_CONTEXT, data: setMetaData.toString('hex') },
  { kind: 'option', option: 0x1234abcd, data: limitData.toString('hex') },
  { kind: 'option-too-big', option: Option.LIST, lengthBytes: OPTION_LIMIT + 1 },
  { kind: 'option', option: Option.INFO, data: infoData.toString('hex') },
  { kind: 'option-too-big', option: Option.LIST_META_CONTEXT, lengthBytes: 1000 },
  { kind: 'option', option: Option.GO, data: goData.toString('hex') },
];

describe('HandshakeDecoder', () => {
  test('the option data builders match the spec layout', () => {
    assert.equal(
      setMetaData.toString('hex'),
      '00000004' + '6469736b' + '00000001' + '0000000f' + Buffer.from('base:allocation').toString('hex'),
    );
    assert.equal(goData.toString('hex'), '00000004' + '6469736b' + '0001' + '0003');
    assert.ok(setMetaData.length <= OPTION_LIMIT && infoData.length <= OPTION_LIMIT);
  });

  test('decodes the same messages and remainder however the stream is split', () => {
    for (const { name, pieces } of splits(handshakeStream)) {
      const { messages, rest } = runHandshake(pieces, OPTION_LIMIT);
      assert.deepStrictEqual(messages, handshakeExpected, name);
      assert.equal(rest.toString('hex'), transmissionStart.toString('hex'), `${name}: remainder`);
    }
  });

  test('a bad option magic is reported once and nothing is decoded after it', () => {
    const badHeader = Buffer.from(IHAVEOPT_HEX, 'hex');
    badHeader[7] = 0x55;
    const stream = Buffer.concat([
      u32(0x1),
      optionBytes(Option.LIST),
      badHeader,
      u32(Option.GO),
      u32(0),
      optionBytes(Option.ABORT),
      optionBytes(Option.LIST),
    ]);
    const expected: Plain[] = [
      { kind: 'client-flags', flags: 1 },
      { kind: 'option', option: Option.LIST, data: '' },
      { kind: 'bad-magic' },
    ];
    for (const { name, pieces } of splits(stream)) {
      const decoder = new HandshakeDecoder(OPTION_LIMIT);
      const messages: Plain[] = [];
      for (const piece of pieces) {
        decoder.push(piece);
        for (let message = decoder.next(); message !== undefined; message = decoder.next()) {
          messages.push(plainHandshake(message));
        }
      }
      assert.deepStrictEqual(messages, expected, name);
      decoder.push(optionBytes(Option.ABORT));
      assert.equal(decoder.next(), undefined, `${name}: a failed decoder stays failed`);
    }
  });

  test('takeRemainder returns exactly the bytes after the last message', () => {
    const decoder = new HandshakeDecoder(OPTION_LIMIT);
    const partialHeader = optionHeader(Option.GO, 12).subarray(0, 10);
    decoder.push(Buffer.concat([u32(0x3), optionBytes(Option.ABORT), partialHeader]));
    assert.deepStrictEqual(decoder.next(), { kind: 'client-flags', flags: 3 });
    const abort = decoder.next();
    assert.ok(abort?.kind === 'option' && abort.option === Option.ABORT && abort.data.length === 0);
    assert.equal(decoder.next(), undefined);
    assert.equal(decoder.bufferedBytes, 10);
    assert.equal(decoder.takeRemainder().toString('hex'), partialHeader.toString('hex'));
    assert.equal(decoder.bufferedBytes, 0);
    assert.equal(decoder.takeRemainder().length, 0, 'a second take is empty');
  });

  test('takeRemainder after GO is empty when nothing followed it', () => {
    const decoder = new HandshakeDecoder(OPTION_LIMIT);
    decoder.push(Buffer.concat([u32(0x1), optionBytes(Option.GO, goData)]));
    assert.equal(decoder.next()?.kind, 'client-flags');
    assert.equal(decoder.next()?.kind, 'option');
    assert.equal(decoder.takeRemainder().length, 0);
  });

  test('the data of an option over the limit is dropped as it arrives, never buffered', () => {
    const decoder = new HandshakeDecoder(OPTION_LIMIT);
    decoder.push(u32(0x1));
    assert.equal(decoder.next()?.kind, 'client-flags');
    const lengthBytes = 1_000_000;
    decoder.push(optionHeader(Option.INFO, lengthBytes));
    assert.equal(decoder.next(), undefined);
    let sent = 0;
    while (sent < lengthBytes) {
      const chunk = Math.min(65_536, lengthBytes - sent);
      decoder.push(Buffer.alloc(chunk, 0xee));
      sent += chunk;
      const message = decoder.next();
      if (sent < lengthBytes) {
        assert.equal(message, undefined);
        assert.equal(decoder.bufferedBytes, 0, 'skipped data must not stay buffered');
      } else {
        assert.deepStrictEqual(message, { kind: 'option-too-big', option: Option.INFO, lengthBytes });
      }
    }
    decoder.push(optionBytes(Option.ABORT));
    assert.deepStrictEqual(plainHandshake(decoder.next() ?? { kind: 'bad-magic' }), {
      kind: 'option',
      option: Option.ABORT,
      data: '',
    });
  });

  test('the option data handed out is a copy, not a view of the pushed chunk', () => {
    const decoder = new HandshakeDecoder(OPTION_LIMIT);
    const chunk = Buffer.concat([u32(0x1), optionBytes(Option.INFO, infoData)]);
    decoder.push(chunk);
    decoder.next();
    const message = decoder.next();
    assert.ok(message?.kind === 'option');
    chunk.fill(0);
    assert.equal(message.data.toString('hex'), infoData.toString('hex'));
  });

  test('rejects a zero limit', () => {
    assert.throws(() => new HandshakeDecoder(0), AssertionError);
  });
});

// ---------------------------------------------------------------------------------------
// The request decoder.

const PAYLOAD_MAX = 64;
const DISCARD_MAX = 200;

interface RequestCase {
  spec: RequestSpec;
  /** The offset the decoder must report (hand-computed). */
  offset: number;
  /** WRITE payload returned with the request, as hex; undefined when none or discarded. */
  data: string | undefined;
  payloadDiscarded: boolean;
}

const payload64 = pattern(PAYLOAD_MAX, 9);
const requestCases: RequestCase[] = [
  {
    spec: { flags: CommandFlag.FUA, type: Command.READ, cookie: 0xfedcba9876543210n, offset: 0x0000010000000003n, length: 4096 },
    offset: 1099511627779,
    data: undefined,
    payloadDiscarded: false,
  },
  {
    spec: { flags: 0, type: Command.WRITE, cookie: 1n, offset: 512n, length: 1, payload: Buffer.from([0xab]) },
    offset: 512,
    data: 'ab',
    payloadDiscarded: false,
  },
  {
    spec: { flags: 0, type: Command.WRITE, cookie: 2n, offset: 0n, length: 0 },
    offset: 0,
    data: undefined,
    payloadDiscarded: false,
  },
  {
    spec: { flags: CommandFlag.FUA, type: Command.WRITE, cookie: 3n, offset: 4096n, length: PAYLOAD_MAX, payload: payload64 },
    offset: 4096,
    data: payload64.toString('hex'),
    payloadDiscarded: false,
  },
  {
    spec: { flags: 0, type: Command.WRITE, cookie: 4n, offset: 0n, length: PAYLOAD_MAX + 1, payload: pattern(PAYLOAD_MAX + 1, 4) },
    offset: 0,
    data: undefined,
    payloadDiscarded: true,
  },
  {
    spec: { flags: 0, type: Command.WRITE, cookie: 5n, offset: 8192n, length: DISCARD_MAX, payload: pattern(DISCARD_MAX, 5) },
    offset: 8192,
    data: undefined,
    payloadDiscarded: true,
  },
  { spec: { flags: 0, type: Command.DISC, cookie: 6n, offset: 0n, length: 0 }, offset: 0, data: undefined, payloadDiscarded: false },
  { spec: { flags: 0, type: Command.FLUSH, cookie: 7n, offset: 0n, length: 0 }, offset: 0, data: undefined, payloadDiscarded: false },
  {
    spec: { flags: 0, type: Command.TRIM, cookie: 8n, offset: 0x001fffffffffffffn, length: 1 },
    offset: 9007199254740991,
    data: undefined,
    payloadDiscarded: false,
  },
  {
    spec: { flags: 0, type: Command.CACHE, cookie: 9n, offset: 0x0020000000000000n, length: 4096 },
    offset: Infinity,
    data: undefined,
    payloadDiscarded: false,
  },
  {
    spec: {
      flags: CommandFlag.NO_HOLE | CommandFlag.FAST_ZERO,
      type: Command.WRITE_ZEROES,
      cookie: 10n,
      offset: 0x100000000n,
      length: 0x8000000,
    },
    offset: 4294967296,
    data: undefined,
    payloadDiscarded: false,
  },
  {
    spec: { flags: CommandFlag.REQ_ONE, type: Command.BLOCK_STATUS, cookie: 0xffffffffffffffffn, offset: 0xffffffffffffffffn, length: 0xffffffff },
    offset: Infinity,
    data: undefined,
    payloadDiscarded: false,
  },
  { spec: { flags: 0, type: Command.READ, cookie: 0n, offset: 0n, length: 0 }, offset: 0, data: undefined, payloadDiscarded: false },
  {
    spec: { flags: 0, type: 8, cookie: 11n, offset: 0x1234n, length: 10 },
    offset: 0x1234,
    data: undefined,
    payloadDiscarded: false,
  },
  {
    spec: { flags: 0xffff, type: Command.WRITE, cookie: 0x8000000000000000n, offset: 0xffffffffn, length: 3, payload: Buffer.from('xyz') },
    offset: 0xffffffff,
    data: Buffer.from('xyz').toString('hex'),
    payloadDiscarded: false,
  },
];

function expectedRequest(entry: RequestCase): Plain {
  return {
    kind: 'request',
    flags: entry.spec.flags,
    type: entry.spec.type,
    cookie: entry.spec.cookie,
    offset: entry.offset,
    length: entry.spec.length,
    data: entry.data,
    payloadDiscarded: entry.payloadDiscarded,
  };
}

const requestStream = Buffer.concat(requestCases.map((entry) => requestBytes(entry.spec)));
const requestExpected = requestCases.map(expectedRequest);

describe('RequestDecoder', () => {
  test('decodes every command the same however the stream is split', () => {
    for (const { name, pieces } of splits(requestStream)) {
      assert.deepStrictEqual(runRequests(pieces, PAYLOAD_MAX, DISCARD_MAX), requestExpected, name);
    }
  });

  test('the cookie is echoed exactly, as an unsigned 64-bit bigint', () => {
    for (const cookie of [0n, 1n, 0x7fffffffffffffffn, 0x8000000000000000n, 0xdeadbeefcafef00dn, 0xffffffffffffffffn]) {
      const [message] = runRequests([requestBytes({ flags: 0, type: Command.FLUSH, cookie, offset: 0n, length: 0 })], 64, 64);
      assert.equal(message?.['cookie'], cookie);
    }
  });

  test('offsets use all 64 bits; those beyond a safe integer become Infinity', () => {
    const table: [bigint, number][] = [
      [0n, 0],
      [0xffffffffn, 4294967295],
      [0x100000000n, 4294967296],
      [0x123456789abcn, 0x123456789abc],
      [0x001fffffffffffffn, Number.MAX_SAFE_INTEGER],
      [0x0020000000000000n, Infinity],
      [0x8000000000000000n, Infinity],
      [0xffffffffffffffffn, Infinity],
    ];
    for (const [offset, expected] of table) {
      const [message] = runRequests([requestBytes({ flags: 0, type: Command.READ, cookie: 1n, offset, length: 1 })], 64, 64);
      assert.equal(message?.['offset'], expected, `offset 0x${offset.toString(16)}`);
    }
  });

  test('a bad magic is fatal and nothing after it is decoded', () => {
    const stream = Buffer.concat([
      requestBytes({ flags: 0, type: Command.FLUSH, cookie: 1n, offset: 0n, length: 0 }),
      requestBytes({ flags: 0, type: Command.READ, cookie: 2n, offset: 0n, length: 1, magic: 0x25609514 }),
      requestBytes({ flags: 0, type: Command.FLUSH, cookie: 3n, offset: 0n, length: 0 }),
    ]);
    const expected: Plain[] = [
      { kind: 'request', flags: 0, type: Command.FLUSH, cookie: 1n, offset: 0, length: 0, data: undefined, payloadDiscarded: false },
      { kind: 'fatal', reason: 'bad-magic', detail: 'magic 0x25609514' },
    ];
    for (const { name, pieces } of splits(stream)) {
      assert.deepStrictEqual(runRequests(pieces, PAYLOAD_MAX, DISCARD_MAX), expected, name);
    }
  });

  test('a WRITE beyond discardBytesMax is fatal and nothing after it is decoded', () => {
    const stream = Buffer.concat([
      requestBytes({ flags: 0, type: Command.WRITE, cookie: 1n, offset: 0n, length: DISCARD_MAX + 1, payload: pattern(DISCARD_MAX + 1, 0) }),
      requestBytes({ flags: 0, type: Command.FLUSH, cookie: 3n, offset: 0n, length: 0 }),
    ]);
    for (const { name, pieces } of splits(stream)) {
      const messages = runRequests(pieces, PAYLOAD_MAX, DISCARD_MAX);
      assert.equal(messages.length, 1, name);
      assert.equal(messages[0]?.['kind'], 'fatal', name);
      assert.equal(messages[0]?.['reason'], 'payload-too-large', name);
      assert.match(String(messages[0]?.['detail']), new RegExp(`${DISCARD_MAX + 1}.*${DISCARD_MAX}`), name);
    }
  });

  test('a discarded payload is dropped as it arrives and the stream stays in step', () => {
    const decoder = new RequestDecoder(1024, 10_000_000);
    const lengthBytes = 5_000_000;
    decoder.push(requestBytes({ flags: 0, type: Command.WRITE, cookie: 42n, offset: 0n, length: lengthBytes }));
    let sent = 0;
    while (sent < lengthBytes) {
      const chunk = Math.min(100_000, lengthBytes - sent);
      decoder.push(Buffer.alloc(chunk, 0x77));
      sent += chunk;
      if (sent < lengthBytes) {
        assert.equal(decoder.next(), undefined);
        assert.equal(decoder.bufferedBytes, 0);
      }
    }
    decoder.push(requestBytes({ flags: 0, type: Command.FLUSH, cookie: 43n, offset: 0n, length: 0 }));
    const write = decoder.next();
    assert.ok(write?.kind === 'request');
    assert.equal(write.request.payloadDiscarded, true);
    assert.equal(write.request.payload.length, 0);
    assert.equal(write.request.cookie, 42n);
    const flush = decoder.next();
    assert.ok(flush?.kind === 'request');
    assert.equal(flush.request.type, Command.FLUSH);
    assert.equal(flush.request.cookie, 43n);
    assert.equal(decoder.next(), undefined);
  });

  test('rejects limits that contradict each other', () => {
    assert.throws(() => new RequestDecoder(0, 10), AssertionError);
    assert.throws(() => new RequestDecoder(100, 99), AssertionError);
  });
});

// ---------------------------------------------------------------------------------------
// Encoders, byte for byte.

const cookie = 0x0123456789abcdefn;
const cookieHex = '0123456789abcdef';

function hex(buffer: Buffer): string {
  return buffer.toString('hex');
}

describe('encoders', () => {
  test('greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES', () => {
    assert.equal(hex(encodeGreeting()), '4e42444d41474943' + '49484156454f5054' + '0003');
  });

  test('option reply: magic(8) option(4) type(4) length(4) data', () => {
    assert.equal(
      hex(encodeOptionReply(Option.GO, Reply.ACK)),
      '0003e889045565a9' + '00000007' + '00000001' + '00000000',
    );
    assert.equal(
      hex(encodeOptionReply(Option.LIST, Reply.SERVER, Buffer.from('abc'))),
      '0003e889045565a9' + '00000003' + '00000002' + '00000003' + '616263',
    );
    assert.equal(
      hex(encodeOptionError(Option.GO, Reply.ERR_UNKNOWN, 'no')),
      '0003e889045565a9' + '00000007' + '80000006' + '00000002' + '6e6f',
    );
    assert.equal(
      hex(encodeOptionError(Option.STARTTLS, Reply.ERR_TOO_BIG, '')),
      '0003e889045565a9' + '00000005' + '80000009' + '00000000',
    );
    assert.throws(() => encodeOptionError(Option.GO, Reply.ACK, 'not an error'), AssertionError);
  });

  test('INFO_EXPORT: type(2) size(8) flags(2), 12 bytes', () => {
    const info = encodeInfoExport(2 ** 32 + 512, 0x5ed);
    assert.equal(info.length, 12);
    assert.equal(hex(info), '0000' + '0000000100000200' + '05ed');
    assert.equal(hex(encodeInfoExport(Number.MAX_SAFE_INTEGER, TxFlag.HAS_FLAGS)), '0000' + '001fffffffffffff' + '0001');
    assert.throws(() => encodeInfoExport(2 ** 53, 1), AssertionError);
    assert.throws(() => encodeInfoExport(-1, 1), AssertionError);
  });

  test('INFO_BLOCK_SIZE: type(2) minimum(4) preferred(4) maximum(4), 14 bytes', () => {
    const info = encodeInfoBlockSize(1, 4096, 32 * 1024 * 1024);
    assert.equal(info.length, 14);
    assert.equal(hex(info), '0003' + '00000001' + '00001000' + '02000000');
  });

  test('INFO_NAME and INFO_DESCRIPTION: type(2) then the UTF-8 text', () => {
    assert.equal(hex(encodeInfoString(Info.NAME, 'disk')), '0001' + '6469736b');
    assert.equal(hex(encodeInfoString(Info.DESCRIPTION, 'é')), '0002' + 'c3a9');
  });

  test('REP_SERVER entry and META_CONTEXT data', () => {
    assert.equal(hex(encodeServerEntry('ro', 'x')), '00000002' + '726f' + '78');
    assert.equal(hex(encodeServerEntry('d', '')), '00000001' + '64');
    assert.equal(
      hex(encodeMetaContext(1, 'base:allocation')),
      '00000001' + Buffer.from('base:allocation').toString('hex'),
    );
  });

  test('EXPORT_NAME reply: size(8) flags(2) and 124 zeroes unless NO_ZEROES', () => {
    const short = encodeExportNameReply(1024 * 1024, 0x1cd, true);
    assert.equal(hex(short), '0000000000100000' + '01cd');
    const long = encodeExportNameReply(1024 * 1024, 0x1cd, false);
    assert.equal(long.length, 134);
    assert.equal(hex(long), '0000000000100000' + '01cd' + '00'.repeat(124));
  });

  test('simple reply: magic(4) error(4) cookie(8)', () => {
    assert.equal(hex(encodeSimpleReply(cookie, Errno.EINVAL)), '67446698' + '00000016' + cookieHex);
    assert.equal(hex(encodeSimpleReply(0xffffffffffffffffn, 0)), '67446698' + '00000000' + 'ffffffffffffffff');
  });

  test('structured chunk header: magic(4) flags(2) type(2) cookie(8) length(4)', () => {
    assert.equal(
      hex(encodeChunkHeader(1, ChunkType.NONE, cookie, 0)),
      '668e33ef' + '0001' + '0000' + cookieHex + '00000000',
    );
  });

  test('OFFSET_DATA header: chunk header with length 8 + data, then the offset', () => {
    const header = encodeOffsetDataHeader(cookie, 2 ** 40 + 5, 512);
    assert.equal(header.length, 28);
    assert.equal(hex(header), '668e33ef' + '0001' + '0001' + cookieHex + '00000208' + '0000010000000005');
  });

  test('ERROR chunk: error(4), message length(2), message', () => {
    assert.equal(
      hex(encodeErrorChunk(cookie, Errno.EINVAL, 'bad')),
      '668e33ef' + '0001' + '8001' + cookieHex + '00000009' + '00000016' + '0003' + '626164',
    );
    const empty = encodeErrorChunk(cookie, Errno.EIO, '');
    assert.equal(hex(empty), '668e33ef' + '0001' + '8001' + cookieHex + '00000006' + '00000005' + '0000');
  });

  test('BLOCK_STATUS chunk: context id(4), then length(4) flags(4) per extent', () => {
    const chunk = encodeBlockStatusChunk(cookie, 1, [
      { lengthBytes: 4096, flags: 0 },
      { lengthBytes: 8192, flags: 3 },
    ]);
    assert.equal(
      hex(chunk),
      '668e33ef' + '0001' + '0005' + cookieHex + '00000014' + '00000001' + '00001000' + '00000000' + '00002000' + '00000003',
    );
    assert.throws(() => encodeBlockStatusChunk(cookie, 1, []), AssertionError);
    assert.throws(() => encodeBlockStatusChunk(cookie, 1, [{ lengthBytes: 0, flags: 0 }]), AssertionError);
    assert.throws(() => encodeBlockStatusChunk(cookie, 1, [{ lengthBytes: 2 ** 32, flags: 0 }]), AssertionError);
  });
});
