// Seeded fuzzing of the NBD codecs and of option negotiation. Random bytes and mutated
// valid streams (bit flips, truncation, duplicated, spliced, inserted and deleted
// segments), pushed in random chunks, must never make a decoder throw, loop, or hold
// more than its limit plus one chunk; the same stream must decode the same whether it
// arrives whole or in pieces; and every answer Negotiation gives must be a well-formed
// option reply (or the connection closes).
//
// Every failure names the seed of its iteration. BLOCKMIRROR_SEED=<that seed> makes it
// the first iteration of every target, so the failure replays at once.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  Command,
  FLAG_C_NO_ZEROES,
  Info,
  Option,
  Reply,
  TxFlag,
} from '../../src/protocol/nbd/constants.js';
import { HandshakeDecoder, type HandshakeMessage } from '../../src/protocol/nbd/handshake-decoder.js';
import {
  Negotiation,
  type ExportCatalog,
  type ExportLookup,
  type NegotiationLimits,
  type NegotiationStep,
} from '../../src/protocol/nbd/negotiation.js';
import { RequestDecoder, type RequestMessage } from '../../src/protocol/nbd/request-decoder.js';
import { baseSeed, Prng } from './prng.js';

const BASE_SEED = baseSeed(0x5eed_b10c);
const ITERATIONS = 1500;

function iterationSeed(iteration: number): number {
  return (BASE_SEED + Math.imul(iteration, 0x9e3779b9)) >>> 0;
}

/** Runs `body` for each iteration's seed; any failure is rethrown naming the seed. */
function fuzz(iterations: number, body: (random: Prng) => void): void {
  for (let iteration = 0; iteration < iterations; iteration += 1) {
    const seed = iterationSeed(iteration);
    try {
      body(new Prng(seed));
    } catch (error) {
      const detail = error instanceof Error ? (error.stack ?? error.message) : String(error);
      assert.fail(`seed ${seed} (replay: BLOCKMIRROR_SEED=${seed}): ${detail}`);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Valid streams, and how to damage them.

function u16(value: number): Buffer {
  const out = Buffer.alloc(2);
  out.writeUInt16BE(value & 0xffff, 0);
  return out;
}

function u32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value >>> 0, 0);
  return out;
}

const IHAVEOPT = Buffer.from('49484156454f5054', 'hex');

function optionBytes(option: number, data: Buffer): Buffer {
  return Buffer.concat([IHAVEOPT, u32(option), u32(data.length), data]);
}

function lengthPrefixed(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  return Buffer.concat([u32(bytes.length), bytes]);
}

const exportNames = ['disk', 'ro', 'secret', '', 'nope', 'x'.repeat(80)];
const queries = ['base:allocation', 'base:', 'base:foo', 'qemu:dirty-bitmap:a', ''];

function randomOption(random: Prng, optionBytesMax: number): Buffer {
  switch (random.below(12)) {
    case 0:
      return optionBytes(Option.STRUCTURED_REPLY, Buffer.alloc(0));
    case 1:
      return optionBytes(Option.LIST, Buffer.alloc(0));
    case 2:
    case 3: {
      const option = random.chance(0.5) ? Option.SET_META_CONTEXT : Option.LIST_META_CONTEXT;
      const count = random.below(4);
      const picked: Buffer[] = [];
      for (let index = 0; index < count; index += 1) picked.push(lengthPrefixed(random.pick(queries)));
      return optionBytes(option, Buffer.concat([lengthPrefixed(random.pick(exportNames)), u32(count), ...picked]));
    }
    case 4:
    case 5: {
      const option = random.chance(0.5) ? Option.INFO : Option.GO;
      const count = random.below(4);
      const infos: Buffer[] = [];
      for (let index = 0; index < count; index += 1) infos.push(u16(random.below(6)));
      return optionBytes(option, Buffer.concat([lengthPrefixed(random.pick(exportNames)), u16(count), ...infos]));
    }
    case 6:
      return optionBytes(Option.EXPORT_NAME, Buffer.from(random.pick(exportNames)));
    case 7:
      return optionBytes(Option.ABORT, Buffer.alloc(0));
    case 8:
      return optionBytes(random.pick([Option.STARTTLS, Option.PEEK_EXPORT, Option.EXTENDED_HEADERS, 99, 0]), random.bytes(random.below(8)));
    case 9:
      // Over the limit: skipped and reported.
      return optionBytes(random.below(12), random.bytes(optionBytesMax + 1 + random.below(64)));
    case 10:
      return optionBytes(random.u32(), random.bytes(random.below(optionBytesMax + 1)));
    default:
      return optionBytes(random.pick([Option.INFO, Option.GO, Option.SET_META_CONTEXT]), random.bytes(random.below(24)));
  }
}

function validHandshakeStream(random: Prng, optionBytesMax: number): Buffer {
  const flags = random.chance(0.9) ? random.pick([1, 3]) : random.u32();
  const parts = [u32(flags)];
  // As qemu and libnbd do, most streams ask for structured replies first, so that the
  // meta context options get past their precondition.
  if (random.chance(0.5)) parts.push(optionBytes(Option.STRUCTURED_REPLY, Buffer.alloc(0)));
  const count = random.between(1, 10);
  for (let index = 0; index < count; index += 1) parts.push(randomOption(random, optionBytesMax));
  return Buffer.concat(parts);
}

function requestHeader(random: Prng, type: number, length: number): Buffer {
  const header = Buffer.alloc(28);
  header.writeUInt32BE(0x25609513, 0);
  header.writeUInt16BE(random.chance(0.8) ? random.below(0x20) : random.below(0x10000), 4);
  header.writeUInt16BE(type, 6);
  header.writeUInt32BE(random.u32(), 8);
  header.writeUInt32BE(random.u32(), 12);
  header.writeUInt32BE(random.chance(0.7) ? 0 : random.u32(), 16);
  header.writeUInt32BE(random.u32(), 20);
  header.writeUInt32BE(length >>> 0, 24);
  return header;
}

function validRequestStream(random: Prng, payloadBytesMax: number, discardBytesMax: number): Buffer {
  const parts: Buffer[] = [];
  const count = random.between(1, 12);
  for (let index = 0; index < count; index += 1) {
    const type = random.chance(0.9) ? random.below(8) : random.below(0x10000);
    if (type === Command.WRITE) {
      const length = random.pick([
        0,
        1,
        random.below(payloadBytesMax + 1),
        payloadBytesMax,
        payloadBytesMax + 1,
        random.between(payloadBytesMax + 1, discardBytesMax),
        discardBytesMax,
      ]);
      parts.push(requestHeader(random, type, length), random.bytes(length));
    } else {
      parts.push(requestHeader(random, type, random.chance(0.5) ? random.below(65_536) : random.u32()));
    }
  }
  return Buffer.concat(parts);
}

function mutate(random: Prng, stream: Buffer, other: Buffer): Buffer {
  let out = Buffer.from(stream);
  const rounds = random.between(1, 3);
  for (let round = 0; round < rounds; round += 1) {
    const at = random.below(out.length + 1);
    const end = at + random.below(out.length - at + 1);
    switch (random.below(6)) {
      case 0: {
        const flips = random.between(1, 4);
        for (let flip = 0; flip < flips && out.length > 0; flip += 1) {
          const index = random.below(out.length);
          out[index] = (out[index] ?? 0) ^ (1 << random.below(8));
        }
        break;
      }
      case 1:
        out = out.subarray(0, at);
        break;
      case 2: {
        const insertAt = random.below(out.length + 1);
        out = Buffer.concat([out.subarray(0, insertAt), out.subarray(at, end), out.subarray(insertAt)]);
        break;
      }
      case 3: {
        const otherAt = random.below(other.length + 1);
        out = Buffer.concat([out.subarray(0, at), other.subarray(otherAt)]);
        break;
      }
      case 4:
        out = Buffer.concat([out.subarray(0, at), random.bytes(random.between(1, 16)), out.subarray(at)]);
        break;
      default:
        out = Buffer.concat([out.subarray(0, at), out.subarray(end)]);
        break;
    }
  }
  return out;
}

function chunked(random: Prng, stream: Buffer): Buffer[] {
  if (random.chance(0.1)) return [stream];
  const pieces: Buffer[] = [];
  const sizeMax = random.pick([1, 3, 17, 64, 512]);
  for (let at = 0; at < stream.length; ) {
    const size = random.between(0, sizeMax);
    pieces.push(stream.subarray(at, at + size));
    at += size;
  }
  return pieces;
}

// ---------------------------------------------------------------------------------------
// Decoder properties.

interface Decoder<M> {
  push(chunk: Buffer): void;
  next(): M | undefined;
  readonly bufferedBytes: number;
}

/**
 * Feeds pieces, draining after each, and checks the invariants: bounded next() calls,
 * buffered bytes below `holdBytesMax` after draining (and so at most that plus one chunk
 * at any time), nothing after a fatal message. Returns the messages.
 */
function drive<M>(
  decoder: Decoder<M>,
  pieces: Buffer[],
  holdBytesMax: number,
  isFatal: (message: M) => boolean,
): M[] {
  const messages: M[] = [];
  const totalBytes = pieces.reduce((sum, piece) => sum + piece.length, 0);
  const callsMax = totalBytes + pieces.length + 1;
  let calls = 0;
  let failed = false;
  for (const piece of pieces) {
    if (failed) break;
    const before = decoder.bufferedBytes;
    decoder.push(piece);
    assert.ok(decoder.bufferedBytes <= before + piece.length);
    for (;;) {
      calls += 1;
      assert.ok(calls <= callsMax, `next() called ${calls} times for ${totalBytes} bytes: a loop`);
      const message = decoder.next();
      if (message === undefined) break;
      messages.push(message);
      if (isFatal(message)) {
        failed = true;
        break;
      }
    }
    if (!failed) {
      assert.ok(
        decoder.bufferedBytes < holdBytesMax,
        `holds ${decoder.bufferedBytes} bytes after draining; limit ${holdBytesMax}`,
      );
    }
  }
  if (failed) {
    for (let index = 0; index < 3; index += 1) assert.equal(decoder.next(), undefined, 'a message after a fatal one');
  }
  return messages;
}

function plainHandshake(message: HandshakeMessage): unknown {
  return message.kind === 'option' ? { ...message, data: message.data.toString('hex') } : message;
}

function plainRequest(message: RequestMessage): unknown {
  if (message.kind === 'fatal') return message;
  return { ...message.request, payload: Buffer.concat(message.request.payload).toString('hex') };
}

const OPTION_BYTES_MAX = 48;

function checkHandshakeDecoder(random: Prng, stream: Buffer): HandshakeMessage[] {
  const hold = Math.max(OPTION_BYTES_MAX, 16);
  const isFatal = (message: HandshakeMessage): boolean => message.kind === 'bad-magic';
  const whole = drive(new HandshakeDecoder(OPTION_BYTES_MAX), [stream], hold, isFatal);
  const pieces = drive(new HandshakeDecoder(OPTION_BYTES_MAX), chunked(random, stream), hold, isFatal);
  assert.deepStrictEqual(pieces.map(plainHandshake), whole.map(plainHandshake), 'chunking changed the messages');
  for (const message of whole) {
    if (message.kind === 'option') assert.ok(message.data.length <= OPTION_BYTES_MAX);
    if (message.kind === 'option-too-big') assert.ok(message.lengthBytes > OPTION_BYTES_MAX);
  }
  return whole;
}

const PAYLOAD_BYTES_MAX = 96;
const DISCARD_BYTES_MAX = 256;

function checkRequestDecoder(random: Prng, stream: Buffer): void {
  const hold = Math.max(PAYLOAD_BYTES_MAX, 28);
  const isFatal = (message: RequestMessage): boolean => message.kind === 'fatal';
  const make = (): RequestDecoder => new RequestDecoder(PAYLOAD_BYTES_MAX, DISCARD_BYTES_MAX);
  const whole = drive(make(), [stream], hold, isFatal);
  const pieces = drive(make(), chunked(random, stream), hold, isFatal);
  assert.deepStrictEqual(pieces.map(plainRequest), whole.map(plainRequest), 'chunking changed the messages');
  for (const message of whole) {
    if (message.kind !== 'request') continue;
    const { request } = message;
    assert.ok(request.offset >= 0 && (Number.isSafeInteger(request.offset) || request.offset === Infinity));
    if (request.type === Command.WRITE && request.length > 0 && !request.payloadDiscarded) {
      assert.equal(request.payload.reduce((sum, slice) => sum + slice.length, 0), request.length);
    } else {
      assert.equal(request.payload.length, 0);
    }
    assert.equal(request.payloadDiscarded, request.type === Command.WRITE && request.length > PAYLOAD_BYTES_MAX);
  }
}

// ---------------------------------------------------------------------------------------
// Negotiation driven by the handshake decoder.

const catalog: ExportCatalog = {
  lookup(name: string): ExportLookup {
    if (name === 'disk' || name === '') {
      return { kind: 'ok', export: { name: 'disk', description: 'main disk', sizeBytes: 1 << 20, readOnly: false } };
    }
    if (name === 'ro') return { kind: 'ok', export: { name: 'ro', description: '', sizeBytes: 1 << 16, readOnly: true } };
    if (name === 'secret') return { kind: 'refused', message: 'not served here' };
    return { kind: 'unknown' };
  },
  list: () => [
    { name: 'disk', description: 'main disk' },
    { name: 'ro', description: '' },
  ],
};

const limits: NegotiationLimits = {
  optionCountMax: 12,
  nameBytesMax: 32,
  metaQueriesMax: 3,
  blockSizeMinBytes: 1,
  blockSizePreferredBytes: 4096,
  payloadBytesMax: 1 << 20,
};

const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
const ERROR_BIT = 2 ** 31;

interface ParsedReply {
  option: number;
  type: number;
  data: Buffer;
}

function parseOptionReply(reply: Buffer): ParsedReply {
  assert.ok(reply.length >= 20, `option reply of ${reply.length} bytes`);
  assert.equal(reply.readBigUInt64BE(0), OPTION_REPLY_MAGIC, 'option reply magic');
  assert.equal(reply.readUInt32BE(16), reply.length - 20, 'option reply length field');
  return { option: reply.readUInt32BE(8), type: reply.readUInt32BE(12), data: reply.subarray(20) };
}

/** One option's answer: zero or more SERVER/INFO/META_CONTEXT, then ACK or one error. */
function checkOptionAnswer(option: number, replies: Buffer[]): ParsedReply[] {
  assert.ok(replies.length > 0, `option ${option} got no reply`);
  const parsed = replies.map(parseOptionReply);
  parsed.forEach((reply, index) => {
    assert.equal(reply.option, option, 'reply names another option');
    const last = index === parsed.length - 1;
    if (reply.type === Reply.ACK) {
      assert.ok(last, 'ACK before the end of the answer');
      assert.equal(reply.data.length, 0, 'ACK with payload');
    } else if (reply.type >= ERROR_BIT) {
      assert.ok(last && parsed.length === 1, 'an error reply must be the whole answer');
    } else {
      assert.ok(!last, 'answer does not end with ACK or an error');
      assert.ok([Reply.SERVER, Reply.INFO, Reply.META_CONTEXT].includes(reply.type as 2 | 3 | 4), `reply type ${reply.type}`);
    }
    if (reply.type === Reply.INFO) {
      assert.ok(reply.data.length >= 2);
      const infoType = reply.data.readUInt16BE(0);
      if (infoType === Info.EXPORT) assert.equal(reply.data.length, 12, 'INFO_EXPORT length');
      if (infoType === Info.BLOCK_SIZE) assert.equal(reply.data.length, 14, 'INFO_BLOCK_SIZE length');
    }
    if (reply.type === Reply.META_CONTEXT) {
      assert.ok(reply.data.length > 4, 'META_CONTEXT without a name');
    }
  });
  return parsed;
}

function checkStep(message: HandshakeMessage, step: NegotiationStep, clientFlags: number): void {
  if (message.kind !== 'client-flags' && message.kind !== 'bad-magic' && message.option === Option.EXPORT_NAME) {
    // EXPORT_NAME has no error reply: the client reads export data or sees the close.
    assert.notEqual(step.kind, 'continue', `EXPORT_NAME (${message.kind}) answered with an option reply`);
  }
  switch (step.kind) {
    case 'close':
      // Closing may still say goodbye (ABORT's ACK); anything sent must be well formed.
      for (const reply of step.replies) parseOptionReply(reply);
      return;
    case 'continue':
      if (message.kind === 'client-flags') {
        assert.equal(step.replies.length, 0);
        return;
      }
      assert.ok(message.kind === 'option' || message.kind === 'option-too-big');
      checkOptionAnswer(message.option, step.replies);
      return;
    case 'transmission': {
      assert.ok(message.kind === 'option', 'transmission entered without an option');
      const flags = step.params.transmissionFlags;
      assert.ok((flags & TxFlag.HAS_FLAGS) !== 0);
      if (!step.params.structuredReplies) assert.equal(flags & TxFlag.SEND_DF, 0);
      if ((flags & TxFlag.SEND_FAST_ZERO) !== 0) assert.ok((flags & TxFlag.SEND_WRITE_ZEROES) !== 0);
      if (step.params.allocationContextId !== null) assert.ok(step.params.structuredReplies);
      if (message.option === Option.EXPORT_NAME) {
        assert.equal(step.replies.length, 1);
        const expected = (clientFlags & FLAG_C_NO_ZEROES) !== 0 ? 10 : 134;
        assert.equal(step.replies[0]?.length, expected, 'EXPORT_NAME reply length');
        return;
      }
      assert.equal(message.option, Option.GO, 'only GO and EXPORT_NAME enter transmission');
      const parsed = checkOptionAnswer(Option.GO, step.replies);
      assert.equal(parsed[parsed.length - 1]?.type, Reply.ACK);
      assert.ok(parsed.some((reply) => reply.type === Reply.INFO && reply.data.readUInt16BE(0) === Info.EXPORT));
      return;
    }
  }
}

function checkNegotiation(random: Prng, stream: Buffer): void {
  const decoder = new HandshakeDecoder(OPTION_BYTES_MAX);
  const negotiation = new Negotiation(catalog, limits);
  const shutdownAt = random.chance(0.2) ? random.below(8) : -1;
  let steps = 0;
  let clientFlags = 0;
  const pieces = chunked(random, stream);
  let calls = 0;
  for (const piece of pieces) {
    decoder.push(piece);
    assert.ok(decoder.bufferedBytes < Math.max(OPTION_BYTES_MAX, 16) + piece.length);
    for (;;) {
      calls += 1;
      assert.ok(calls <= stream.length + pieces.length + 1, 'next() loop');
      const message = decoder.next();
      if (message === undefined) break;
      if (steps === shutdownAt) negotiation.setShuttingDown();
      if (message.kind === 'client-flags') clientFlags = message.flags;
      const step = negotiation.step(message);
      steps += 1;
      checkStep(message, step, clientFlags);
      if (step.kind !== 'continue') return;
    }
  }
}

// ---------------------------------------------------------------------------------------

describe('fuzz: HandshakeDecoder', () => {
  test('random bytes', () => {
    fuzz(ITERATIONS, (random) => {
      const stream = random.chance(0.5)
        ? random.bytes(random.below(600))
        : Buffer.concat([random.bytes(4), IHAVEOPT, random.bytes(random.below(200))]);
      checkHandshakeDecoder(random, stream);
    });
  });

  test('mutated valid streams', () => {
    fuzz(ITERATIONS, (random) => {
      const stream = validHandshakeStream(random, OPTION_BYTES_MAX);
      const other = validHandshakeStream(random, OPTION_BYTES_MAX);
      checkHandshakeDecoder(random, random.chance(0.1) ? stream : mutate(random, stream, other));
    });
  });
});

describe('fuzz: RequestDecoder', () => {
  test('random bytes', () => {
    fuzz(ITERATIONS, (random) => {
      const stream = random.chance(0.5)
        ? random.bytes(random.below(600))
        : Buffer.concat([Buffer.from('25609513', 'hex'), random.bytes(random.below(400))]);
      checkRequestDecoder(random, stream);
    });
  });

  test('mutated valid streams', () => {
    fuzz(ITERATIONS, (random) => {
      const stream = validRequestStream(random, PAYLOAD_BYTES_MAX, DISCARD_BYTES_MAX);
      const other = validRequestStream(random, PAYLOAD_BYTES_MAX, DISCARD_BYTES_MAX);
      checkRequestDecoder(random, random.chance(0.1) ? stream : mutate(random, stream, other));
    });
  });

  test('valid streams decode to exactly the requests sent', () => {
    fuzz(300, (random) => {
      const decoder = new RequestDecoder(PAYLOAD_BYTES_MAX, DISCARD_BYTES_MAX);
      const sent: { type: number; cookie: bigint; length: number; data: string | undefined }[] = [];
      const parts: Buffer[] = [];
      const count = random.between(1, 20);
      for (let index = 0; index < count; index += 1) {
        const type = random.below(8);
        const length = type === Command.WRITE ? random.below(DISCARD_BYTES_MAX + 1) : random.u32();
        const header = requestHeader(random, type, length);
        const payload = type === Command.WRITE ? random.bytes(length) : Buffer.alloc(0);
        parts.push(header, payload);
        const kept = type === Command.WRITE && length > 0 && length <= PAYLOAD_BYTES_MAX;
        sent.push({ type, cookie: header.readBigUInt64BE(8), length, data: kept ? payload.toString('hex') : undefined });
      }
      const stream = Buffer.concat(parts);
      const received = drive(decoder, chunked(random, stream), PAYLOAD_BYTES_MAX, (message) => message.kind === 'fatal');
      assert.deepStrictEqual(
        received.map((message) => {
          assert.ok(message.kind === 'request');
          const { type, cookie, length, payload } = message.request;
          return { type, cookie, length, data: payload.length === 0 ? undefined : Buffer.concat(payload).toString('hex') };
        }),
        sent,
      );
      assert.equal(decoder.bufferedBytes, 0);
    });
  });
});

describe('fuzz: Negotiation', () => {
  test('random bytes after valid client flags', () => {
    fuzz(ITERATIONS, (random) => {
      const stream = Buffer.concat([u32(random.pick([1, 3])), IHAVEOPT, random.bytes(random.below(300))]);
      checkNegotiation(random, stream);
    });
  });

  test('valid and mutated option sequences', () => {
    fuzz(ITERATIONS * 2, (random) => {
      const stream = validHandshakeStream(random, OPTION_BYTES_MAX);
      const other = validHandshakeStream(random, OPTION_BYTES_MAX);
      checkNegotiation(random, random.chance(0.3) ? stream : mutate(random, stream, other));
    });
  });

  test('the flags in every answer follow the export and the connection', () => {
    // A focused sequence: structured replies or not, then GO for one of the exports.
    fuzz(500, (random) => {
      const negotiation = new Negotiation(catalog, limits);
      assert.equal(negotiation.step({ kind: 'client-flags', flags: 3 }).kind, 'continue');
      const structured = random.chance(0.5);
      if (structured) negotiation.step({ kind: 'option', option: Option.STRUCTURED_REPLY, data: Buffer.alloc(0) });
      const name = random.pick(['disk', 'ro', '']);
      const data = Buffer.concat([lengthPrefixed(name), u16(0)]);
      const step = negotiation.step({ kind: 'option', option: Option.GO, data });
      assert.ok(step.kind === 'transmission');
      const flags = step.params.transmissionFlags;
      assert.equal((flags & TxFlag.SEND_DF) !== 0, structured, 'DF exactly when structured');
      assert.equal((flags & TxFlag.READ_ONLY) !== 0, name === 'ro');
      assert.equal((flags & (TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FAST_ZERO)) !== 0, name !== 'ro');
      const info = parseOptionReply(step.replies[0] ?? Buffer.alloc(0));
      assert.equal(info.data.readUInt16BE(10), flags, 'INFO_EXPORT carries the same flags');
    });
  });
});
