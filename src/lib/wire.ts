// Small helpers the wire formats share (log entries, peer frames, heartbeats, NBD): u64
// fields as JavaScript numbers, and names as length-prefixed UTF-8. Big-endian, as every
// format here is.

import { assert } from './assert.js';

const TWO_POW_32 = 2 ** 32;
/** Above this high word a u64 is not a safe integer. */
const SAFE_HIGH_WORD_MAX = 2 ** 21 - 1;

/** Writes a u64 (a safe non-negative integer) at `at`; returns the offset after it. */
export function writeU64(out: Buffer, at: number, value: number): number {
  assert(Number.isSafeInteger(value) && value >= 0, `u64 value ${value} is not a safe non-negative integer`);
  out.writeUInt32BE(Math.floor(value / TWO_POW_32), at);
  out.writeUInt32BE(value >>> 0, at + 4);
  return at + 8;
}

/** Reads a u64 at `at`, or undefined when it is beyond 2^53-1 (no writer here makes one). */
export function readU64(buffer: Buffer, at: number): number | undefined {
  const high = buffer.readUInt32BE(at);
  return high > SAFE_HIGH_WORD_MAX ? undefined : high * TWO_POW_32 + buffer.readUInt32BE(at + 4);
}

/**
 * The UTF-8 bytes of a name to send, asserting it is 1..maxBytes long and well-formed: a
 * lone surrogate would go out as U+FFFD, and the other side would see (and authenticate)
 * another name than this one.
 */
export function nameBytes(name: string, maxBytes: number): Buffer {
  const bytes = Buffer.from(name, 'utf8');
  assert(bytes.length >= 1 && bytes.length <= maxBytes, `name "${name}" must be 1..${maxBytes} bytes of UTF-8`);
  assert(bytes.toString('utf8') === name, `name "${name}" is not well-formed Unicode`);
  return bytes;
}
