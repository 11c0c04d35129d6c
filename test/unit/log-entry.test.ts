// The write log's entry codec and the CRC32C under it. What matters to a user of the log
// is that every field comes back as it went in, and that damage to a stored entry is
// noticed: any single flipped bit of a header or of a payload, a foreign magic number or
// format version, and fields no writer can produce. The native CRC32C must agree with
// the table-driven one and with the published check values.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AssertionError } from '../../src/lib/assert.js';
import { crc32c, crc32cSoftware } from '../../src/lib/crc32c.js';
import { native } from '../../src/io/native.js';
import {
  alignedEntryBytes,
  decodeEntryHeader,
  encodeEntryHeader,
  ENTRY_ALIGN_BYTES,
  ENTRY_HEADER_BYTES,
  ENTRY_MAGIC,
  ENTRY_VERSION,
  EntryFlag,
  EntryType,
  payloadMatches,
  type EntryHeader,
} from '../../src/protocol/log-entry.js';
import { baseSeed, Prng } from './prng.js';

const SEED = baseSeed(0x10_6e_47_01);
const MAX_SAFE = Number.MAX_SAFE_INTEGER; // 2^53 - 1

type HeaderFields = Omit<EntryHeader, 'payloadCrc' | 'payloadBytes'>;

function fields(overrides: Partial<HeaderFields> = {}): HeaderFields {
  return {
    type: EntryType.WRITE,
    flags: 0,
    logId: 0x1234_5678,
    volumeId: 7,
    seq: 42,
    durableSeq: 41,
    offset: 4096,
    lengthBytes: 0,
    generation: 3,
    epoch: 1,
    ...overrides,
  };
}

function decoded(buffer: Buffer, at = 0): EntryHeader {
  const header = decodeEntryHeader(buffer, at);
  assert.ok(typeof header !== 'string', `decode failed: ${String(header)}`);
  return header;
}

/** Rewrites the header CRC after a field was changed on purpose (a forged header). */
function resealHeader(header: Buffer): void {
  header.writeUInt32BE(crc32c([header.subarray(0, 8), header.subarray(12, ENTRY_HEADER_BYTES)]), 8);
}

function flipBit(buffer: Buffer, bit: number): Buffer {
  const copy = Buffer.from(buffer);
  const index = bit >> 3;
  copy[index] = (copy[index] ?? 0) ^ (0x80 >> (bit & 7));
  return copy;
}

describe('entry header codec', () => {
  test('every field round-trips, including sequence numbers and offsets near 2^53', () => {
    const random = new Prng(SEED);
    const payload = random.bytes(5000);
    const cases: { what: string; fields: HeaderFields; payload: Buffer[] }[] = [
      { what: 'a small write', fields: fields({ lengthBytes: 5000 }), payload: [payload] },
      {
        what: 'a write in three slices',
        fields: fields({ lengthBytes: 5000, seq: 1, durableSeq: 0, offset: 0 }),
        payload: [payload.subarray(0, 1), payload.subarray(1, 4097), payload.subarray(4097)],
      },
      {
        what: 'every field at its largest',
        fields: {
          type: EntryType.WRITE,
          flags: 0xffff,
          logId: 0xffff_ffff,
          volumeId: 0xffff_ffff,
          seq: MAX_SAFE,
          durableSeq: MAX_SAFE - 1,
          offset: MAX_SAFE - 5000,
          lengthBytes: 5000,
          generation: 0xffff_ffff,
          epoch: 0xffff_ffff,
        },
        payload: [payload],
      },
      {
        what: 'u64 fields whose low word is zero or all ones',
        fields: fields({ seq: 2 ** 52, durableSeq: 2 ** 32 - 1, offset: 2 ** 32, lengthBytes: 0, type: EntryType.TRIM }),
        payload: [],
      },
      {
        what: 'zeroes that keep the range allocated',
        fields: fields({ type: EntryType.ZEROES, flags: EntryFlag.NO_HOLE, offset: 2 ** 50, lengthBytes: 0xffff_ffff }),
        payload: [],
      },
      {
        what: 'a trim',
        fields: fields({ type: EntryType.TRIM, flags: 0, offset: 123_456_789, lengthBytes: 1 }),
        payload: [],
      },
      {
        what: 'a consistency point',
        fields: fields({ type: EntryType.CONSISTENCY_POINT, offset: 41, lengthBytes: 0, seq: 42, durableSeq: 42 }),
        payload: [],
      },
      {
        what: 'every field zero',
        fields: {
          type: EntryType.TRIM,
          flags: 0,
          logId: 0,
          volumeId: 0,
          seq: 0,
          durableSeq: 0,
          offset: 0,
          lengthBytes: 0,
          generation: 0,
          epoch: 0,
        },
        payload: [],
      },
    ];
    for (const { what, fields: input, payload: slices } of cases) {
      const header = encodeEntryHeader(input, slices);
      assert.equal(header.length, ENTRY_HEADER_BYTES, what);
      const whole = Buffer.concat(slices);
      const expected: EntryHeader = {
        ...input,
        payloadBytes: whole.length,
        payloadCrc: whole.length === 0 ? 0 : crc32cSoftware(whole),
      };
      assert.deepStrictEqual(decoded(header), expected, what);
      assert.equal(payloadMatches(decoded(header), whole), true, what);
      // A header found inside a larger buffer decodes the same.
      const framed = Buffer.concat([Buffer.alloc(100, 0xee), header, whole]);
      assert.deepStrictEqual(decoded(framed, 100), expected, `${what}, at offset 100`);
    }
  });

  test('the layout is the documented one: big-endian fields at fixed offsets', () => {
    const header = encodeEntryHeader(
      fields({ seq: 2 ** 40 + 5, durableSeq: 9, offset: 2 ** 33 + 1, lengthBytes: 3, flags: 0x0102 }),
      [Buffer.from('abc')],
    );
    assert.equal(header.readUInt32BE(0), ENTRY_MAGIC);
    assert.equal(header.toString('latin1', 0, 4), 'BMLE');
    assert.equal(header.readUInt8(4), ENTRY_VERSION);
    assert.equal(header.readUInt8(5), EntryType.WRITE);
    assert.equal(header.readUInt16BE(6), 0x0102);
    // The header CRC covers every byte but its own field.
    assert.equal(header.readUInt32BE(8), crc32cSoftware(Buffer.concat([header.subarray(0, 8), header.subarray(12)])));
    assert.equal(header.readUInt32BE(12), crc32cSoftware(Buffer.from('abc')));
    assert.equal(header.readUInt32BE(24), 2 ** 8);
    assert.equal(header.readUInt32BE(28), 5);
    assert.equal(header.readUInt32BE(40), 2);
    assert.equal(header.readUInt32BE(44), 1);
    assert.equal(header.readUInt32BE(52), 3);
  });

  test('a payload CRC the caller already checked is written as given, giving the same header', () => {
    const payload = [Buffer.from('replicated '), Buffer.from('payload')];
    const input = fields({ lengthBytes: 18 });
    const computed = encodeEntryHeader(input, payload);
    const given = encodeEntryHeader(input, payload, crc32cSoftware(Buffer.concat(payload)));
    assert.deepEqual(given, computed);
    // It is taken as given (not recomputed): the caller vouches for it.
    assert.equal(encodeEntryHeader(input, payload, 0x1234_5678).readUInt32BE(12), 0x1234_5678);
  });

  test('encoding refuses what no valid entry holds', () => {
    const attempts: [string, () => unknown][] = [
      ['a write whose payload is not its length', () => encodeEntryHeader(fields({ lengthBytes: 10 }), [Buffer.alloc(9)])],
      ['zeroes with a payload', () => encodeEntryHeader(fields({ type: EntryType.ZEROES, lengthBytes: 4 }), [Buffer.alloc(4)])],
      ['a trim with a payload', () => encodeEntryHeader(fields({ type: EntryType.TRIM, lengthBytes: 1 }), [Buffer.alloc(1)])],
      ['a sequence number of 2^53', () => encodeEntryHeader(fields({ seq: 2 ** 53 }), [])],
      ['a negative offset', () => encodeEntryHeader(fields({ offset: -1 }), [])],
      ['a fractional durable sequence number', () => encodeEntryHeader(fields({ durableSeq: 1.5 }), [])],
    ];
    for (const [what, attempt] of attempts) assert.throws(attempt, AssertionError, what);
  });

  test('a wrong magic or version is reported as such, before the CRC is looked at', () => {
    const header = encodeEntryHeader(fields({ lengthBytes: 4 }), [Buffer.from('data')]);
    const wrongMagic = Buffer.from(header);
    wrongMagic.write('XMLE', 0, 'latin1');
    assert.equal(decodeEntryHeader(wrongMagic), 'magic');
    assert.equal(decodeEntryHeader(Buffer.alloc(ENTRY_HEADER_BYTES)), 'magic', 'zeroes are not an entry');
    for (const version of [0, 2, 255]) {
      const wrongVersion = Buffer.from(header);
      wrongVersion.writeUInt8(version, 4);
      assert.equal(decodeEntryHeader(wrongVersion), 'version', `version ${version}`);
      resealHeader(wrongVersion);
      assert.equal(decodeEntryHeader(wrongVersion), 'version', `version ${version} with a valid CRC`);
    }
    const wrongCrc = Buffer.from(header);
    wrongCrc.writeUInt32BE((header.readUInt32BE(8) + 1) >>> 0, 8);
    assert.equal(decodeEntryHeader(wrongCrc), 'header-crc');
  });

  test('fields no writer produces are refused even under a valid CRC', () => {
    const base = encodeEntryHeader(fields({ lengthBytes: 8 }), [Buffer.alloc(8, 1)]);
    const forged = (what: string, change: (header: Buffer) => void): void => {
      const header = Buffer.from(base);
      change(header);
      resealHeader(header);
      assert.equal(decodeEntryHeader(header), 'fields', what);
    };
    forged('unknown type 0', (header) => header.writeUInt8(0, 5));
    forged('unknown type 5', (header) => header.writeUInt8(5, 5));
    forged('unknown type 255', (header) => header.writeUInt8(255, 5));
    forged('a write whose payload is not its length', (header) => header.writeUInt32BE(9, 48));
    forged('a trim with a payload', (header) => header.writeUInt8(EntryType.TRIM, 5));
    forged('a sequence number of 2^53', (header) => header.writeUInt32BE(2 ** 21, 24));
    forged('a durable sequence number past 2^53', (header) => header.writeUInt32BE(0xffff_ffff, 32));
    forged('an offset past 2^53', (header) => header.writeUInt32BE(2 ** 21 + 7, 40));
    // The largest value a writer can produce still decodes.
    const largest = Buffer.from(base);
    largest.writeUInt32BE(2 ** 21 - 1, 24);
    largest.writeUInt32BE(0xffff_ffff, 28);
    resealHeader(largest);
    assert.equal(decoded(largest).seq, MAX_SAFE);
  });

  test('every single-bit flip of a header is detected', () => {
    const headers: [string, Buffer][] = [
      ['write', encodeEntryHeader(fields({ lengthBytes: 300 }), [new Prng(SEED + 1).bytes(300)])],
      ['zeroes with NO_HOLE', encodeEntryHeader(fields({ type: EntryType.ZEROES, flags: EntryFlag.NO_HOLE, lengthBytes: 8192 }), [])],
      ['trim', encodeEntryHeader(fields({ type: EntryType.TRIM, lengthBytes: 8192 }), [])],
      ['consistency point', encodeEntryHeader(fields({ type: EntryType.CONSISTENCY_POINT, offset: 41 }), [])],
    ];
    // Bytes 5..7 (type and flags) matter as much as any other field: a ZEROES entry read
    // as a TRIM, or one that lost NO_HOLE, would be replayed wrongly without a trace.
    const undetected: string[] = [];
    for (const [what, header] of headers) {
      for (let bit = 0; bit < ENTRY_HEADER_BYTES * 8; bit += 1) {
        const result = decodeEntryHeader(flipBit(header, bit));
        const byte = bit >> 3;
        const expected = byte < 4 ? 'magic' : byte === 4 ? 'version' : null;
        if (typeof result !== 'string') {
          undetected.push(`${what}: bit ${bit} (byte ${byte}) decodes as type ${result.type} flags ${result.flags}`);
        } else if (expected !== null) {
          assert.equal(result, expected, `${what}: bit ${bit}`);
        }
      }
    }
    assert.deepStrictEqual(undetected, [], 'single-bit flips that decode as a valid header');
  });

  test('every sampled single-bit flip of a payload is detected, and so is a wrong length', () => {
    const random = new Prng(SEED + 2);
    for (const length of [1, 63, 4096, 65_536 + 17]) {
      const payload = random.bytes(length);
      const header = decoded(encodeEntryHeader(fields({ lengthBytes: length }), [payload]));
      assert.equal(payloadMatches(header, payload), true);
      const bits = length * 8;
      const sampled = new Set<number>([0, 1, 7, bits - 1, bits - 8]);
      while (sampled.size < Math.min(bits, 600)) sampled.add(random.below(bits));
      for (const bit of sampled) {
        assert.equal(payloadMatches(header, flipBit(payload, bit)), false, `length ${length}: bit ${bit} of the payload`);
      }
      assert.equal(payloadMatches(header, payload.subarray(0, length - 1)), false, 'a short payload');
      assert.equal(payloadMatches(header, Buffer.concat([payload, Buffer.alloc(1)])), false, 'a long payload');
    }
    const empty = decoded(encodeEntryHeader(fields({ type: EntryType.TRIM, lengthBytes: 4096 }), []));
    assert.equal(empty.payloadCrc, 0);
    assert.equal(payloadMatches(empty, Buffer.alloc(0)), true);
    assert.equal(payloadMatches(empty, Buffer.alloc(1)), false);
  });

  test('alignedEntryBytes: a header, then the payload padded to 64 bytes', () => {
    assert.equal(ENTRY_ALIGN_BYTES, 64);
    const cases: [number, number][] = [
      [0, 64],
      [1, 128],
      [63, 128],
      [64, 128],
      [65, 192],
      [200, 320],
      [4096, 4160],
      [520_192, 520_256],
    ];
    for (const [payloadBytes, expected] of cases) assert.equal(alignedEntryBytes(payloadBytes), expected, `${payloadBytes} bytes`);
    for (let payloadBytes = 0; payloadBytes < 1000; payloadBytes += 1) {
      const bytes = alignedEntryBytes(payloadBytes);
      assert.equal(bytes % ENTRY_ALIGN_BYTES, 0);
      assert.ok(bytes - ENTRY_HEADER_BYTES >= payloadBytes && bytes - ENTRY_HEADER_BYTES - payloadBytes < ENTRY_ALIGN_BYTES);
    }
  });
});

describe('crc32c', () => {
  test('the published check values', () => {
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
    assert.equal(crc32cSoftware(Buffer.from('123456789')), 0xe3069283);
    // RFC 3720 (iSCSI) appendix B.4.
    const ascending = Buffer.from(Array.from({ length: 32 }, (_, index) => index));
    const vectors: [string, Buffer, number][] = [
      ['32 bytes of zeroes', Buffer.alloc(32), 0x8a9136aa],
      ['32 bytes of 0xff', Buffer.alloc(32, 0xff), 0x62a8ab43],
      ['32 ascending bytes', ascending, 0x46dd794e],
      ['32 descending bytes', Buffer.from(ascending).reverse(), 0x113fdb5c],
      ['nothing', Buffer.alloc(0), 0],
    ];
    for (const [what, data, expected] of vectors) {
      assert.equal(crc32c(data), expected, `${what}, the installed (native) one`);
      assert.equal(native.crc32c(data, 0, true), expected, `${what}, the addon's table-driven one`);
      assert.equal(crc32cSoftware(data), expected, `${what}, JavaScript`);
    }
  });

  test('the native, the addon\'s table-driven and the JavaScript CRC32C agree on every length up to 5000, at every alignment', () => {
    const random = new Prng(SEED + 3);
    const source = random.bytes(5000 + 64);
    for (let length = 0; length <= 5000; length += 1) {
      const start = (length * 7) % 64;
      const data = source.subarray(start, start + length);
      const seed = length % 3 === 0 ? 0 : random.u32();
      assert.equal(crc32c(data, seed), crc32cSoftware(data, seed), `seed ${SEED + 3}: length ${length} at ${start}, crc seed ${seed}`);
      assert.equal(native.crc32c(data, seed, true), crc32cSoftware(data, seed), `seed ${SEED + 3}: length ${length}, the addon's table`);
    }
  });

  test('native and JavaScript CRC32C agree on buffers of a few MiB, and around the block sizes of the three-stream version', () => {
    const random = new Prng(SEED + 4);
    // The hardware version checksums 3 x 8 KiB and then 3 x 256-byte blocks as three streams.
    const edges = [3 * 8192 - 1, 3 * 8192, 3 * 8192 + 1, 3 * 8192 + 3 * 256 + 7, 6 * 8192 + 3 * 256 - 1, 6 * 8192 + 2 * 3 * 256 + 8];
    for (const length of [...edges, 1024 * 1024, 3 * 1024 * 1024 + 5, 4 * 1024 * 1024 - 3]) {
      const data = Buffer.allocUnsafe(length);
      for (let at = 0; at < length; at += 4) data.writeUInt32LE(random.u32(), Math.min(at, length - 4));
      assert.equal(crc32c(data), crc32cSoftware(data), `seed ${SEED + 4}: ${length} bytes`);
    }
  });

  test('a CRC continues across buffers: one call on the whole equals calls on the pieces', () => {
    const random = new Prng(SEED + 5);
    for (let round = 0; round < 200; round += 1) {
      const whole = random.bytes(random.between(0, 3000));
      const cuts = [random.below(whole.length + 1), random.below(whole.length + 1)].sort((a, b) => a - b);
      const [first = 0, second = 0] = cuts;
      const pieces = [whole.subarray(0, first), whole.subarray(first, second), whole.subarray(second)];
      const expected = crc32cSoftware(whole);
      assert.equal(crc32c(pieces), expected, `seed ${SEED + 5} round ${round}`);
      assert.equal(crc32c(pieces[2] ?? Buffer.alloc(0), crc32c(whole.subarray(0, second))), expected);
      assert.equal(crc32cSoftware(pieces[2] ?? Buffer.alloc(0), crc32cSoftware(whole.subarray(0, second))), expected);
    }
    assert.equal(crc32c([]), 0);
  });
});
