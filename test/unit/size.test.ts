// Byte sizes as operators write them in the cluster file, and as blockmirror prints them
// back in messages that tell the operator what to put in that file.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { formatBytes, parseSizeBytes } from '../../src/lib/size.js';
import { baseSeed, Prng } from './prng.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

describe('parseSizeBytes', () => {
  const accepted: [string | number, number][] = [
    [0, 0],
    [4096, 4096],
    [Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
    ['0', 0],
    ['4096', 4096],
    ['007', 7],
    ['  12  ', 12],
    ['1B', 1],
    ['1b', 1],
    ['1K', KiB],
    ['1k', KiB],
    ['1KiB', KiB],
    ['1kib', KiB],
    ['1 KiB', KiB],
    ['64M', 64 * MiB],
    ['64MiB', 64 * MiB],
    ['1G', GiB],
    ['1GiB', GiB],
    ['2 TiB', 2 * TiB],
    ['1T', TiB],
    ['1PiB', 1024 * TiB],
    ['1P', 1024 * TiB],
    ['2PB', 2_000_000_000_000_000],
    ['1KB', 1000],
    ['1kb', 1000],
    ['1MB', 1_000_000],
    ['1GB', 1_000_000_000],
    ['1TB', 1_000_000_000_000],
    ['1.5KiB', 1536],
    ['0.5MiB', 512 * KiB],
    ['2.25GiB', 2.25 * GiB],
    ['1.5KB', 1500],
    ['2.5MB', 2_500_000],
    ['8191TiB', 8191 * TiB],
    ['9007199254740991', Number.MAX_SAFE_INTEGER],
  ];
  for (const [text, expected] of accepted) {
    test(`${JSON.stringify(text)} → ${expected}`, () => {
      assert.equal(parseSizeBytes(text), expected);
    });
  }

  const refused: (string | number)[] = [
    '',
    ' ',
    'GiB',
    '-1',
    '-1GiB',
    '1.5',
    '0.1KiB',
    '1e3',
    '0x10',
    '1,000',
    '1 000',
    '1 GiBs',
    '1GiBx',
    '1.GiB',
    '.5GiB',
    '10iB',
    '9007199254740992',
    '8192TiB',
    '1 2',
    -1,
    1.5,
    Number.NaN,
    Number.POSITIVE_INFINITY,
    2 ** 53,
  ];
  for (const text of refused) {
    test(`${typeof text === 'string' ? JSON.stringify(text) : String(text)} is refused`, () => {
      assert.equal(parseSizeBytes(text), undefined);
    });
  }

  test('a decimal size that is a whole number of bytes is accepted whatever its float rounding', () => {
    // 4.1 * 1e6 is 4099999.9999999995 in binary floating point, yet "4.1MB" is exactly
    // 4,100,000 bytes.
    const table: [string, number][] = [
      ['4.1MB', 4_100_000],
      ['8.2MB', 8_200_000],
      ['4.1GB', 4_100_000_000],
      ['8.3GB', 8_300_000_000],
      ['8.7TB', 8_700_000_000_000],
      ['1.1KB', 1100],
      ['0.001KB', 1],
    ];
    const wrong = table.filter(([text, bytes]) => parseSizeBytes(text) !== bytes).map(([text]) => text);
    assert.deepStrictEqual(wrong, [], 'decimal sizes refused or misread');
  });
});

describe('formatBytes', () => {
  const table: [number, string][] = [
    [0, '0B'],
    [1, '1B'],
    [1023, '1023B'],
    [1024, '1KiB'],
    [1536, '1536B'],
    [4096, '4KiB'],
    [MiB, '1MiB'],
    [1.5 * MiB, '1536KiB'],
    [64 * MiB, '64MiB'],
    [GiB, '1GiB'],
    [GiB + 4096, '1048580KiB'],
    [3 * TiB, '3TiB'],
    [1024 * TiB, '1PiB'],
    [2 ** 60, '1024PiB'],
    [1_000_000, '1000000B'],
  ];
  for (const [bytes, expected] of table) {
    test(`${bytes} → ${expected}`, () => {
      assert.equal(formatBytes(bytes), expected);
    });
  }

  test('what it prints parses back to the same number (seeded)', () => {
    const seed = baseSeed(0x512e);
    const random = new Prng(seed);
    for (let index = 0; index < 2000; index += 1) {
      // Multiples of a random power of two, below 1 PiB (see the next test for more).
      const shift = random.below(38);
      const bytes = random.between(0, 2 ** 12) * 2 ** shift;
      const text = formatBytes(bytes);
      assert.equal(parseSizeBytes(text), bytes, `seed ${seed}: ${bytes} printed as ${text}`);
    }
  });

  test('a PiB-sized volume prints in a form the cluster file accepts', () => {
    // The size-mismatch message tells the operator to restore this text in the cluster file.
    for (const bytes of [2 ** 50, 2 ** 52]) {
      const text = formatBytes(bytes);
      assert.equal(parseSizeBytes(text), bytes, `${bytes} printed as ${text}`);
    }
  });
});
