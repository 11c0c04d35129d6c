// CRC32C (Castagnoli) over one buffer or several in sequence, computed by the native
// addon (the SSE4.2 instruction where the CPU has it). Log entries and peer frames are
// checksummed with it before they are written and verified after they are read.

import { native } from '../io/native.js';

export function crc32c(data: Buffer | readonly Buffer[], seed = 0): number {
  if (Buffer.isBuffer(data)) return native.crc32c(data, seed);
  let crc = seed;
  for (const buffer of data) crc = native.crc32c(buffer, crc);
  return crc;
}

/** The table-driven version, for tests that check both give the same value. */
export function crc32cSoftware(data: Buffer, seed = 0): number {
  return native.crc32c(data, seed, true);
}
