// Applying log entries to a volume file: at recovery and on a replica (write-log.ts
// replays, LocalVolume.replicate stores), and slicing a payload into pieces.

import { assert } from '../lib/assert.js';
import type { Disk } from '../io/disk.js';
import { EntryFlag, EntryType, type EntryHeader } from '../protocol/log-entry.js';
import { LogCorruptError } from './log-scan.js';

/** The slices of `payload` covering bytes [start, start + length). */
export function slicePayload(payload: readonly Buffer[], start: number, length: number): Buffer[] {
  const out: Buffer[] = [];
  let skip = start;
  let left = length;
  for (const slice of payload) {
    if (left === 0) break;
    if (skip >= slice.length) {
      skip -= slice.length;
      continue;
    }
    const take = Math.min(slice.length - skip, left);
    out.push(slice.subarray(skip, skip + take));
    left -= take;
    skip = 0;
  }
  assert(left === 0, 'payload shorter than its length');
  return out;
}

/**
 * Zeroes a range: a hole, or with `noHole` an allocated zeroed range, or (when the file
 * system can do neither) written zeroes. Returns false when it had to write zeroes.
 */
export async function zeroRange(disk: Disk, offset: number, lengthBytes: number, noHole: boolean, chunkBytes: number): Promise<boolean> {
  const done = noHole ? await disk.zeroRange(offset, lengthBytes) : await disk.punchHole(offset, lengthBytes);
  if (done) return true;
  const zeroes = Buffer.alloc(Math.min(chunkBytes, lengthBytes));
  const end = offset + lengthBytes;
  for (let at = offset; at < end; at += zeroes.length) {
    await disk.write(zeroes.subarray(0, Math.min(zeroes.length, end - at)), at);
  }
  return false;
}

/** Applies one entry found in the log at recovery (in sequence order, one at a time). */
export async function applyEntry(disk: Disk, header: EntryHeader, payload: Buffer | readonly Buffer[], zeroChunkBytes: number): Promise<void> {
  if (header.type === EntryType.CONSISTENCY_POINT) return;
  if (header.offset + header.lengthBytes > disk.sizeBytes) {
    throw new LogCorruptError(`log entry ${header.seq} reaches past the end of the volume (${disk.sizeBytes} bytes)`);
  }
  switch (header.type) {
    case EntryType.WRITE:
      return Buffer.isBuffer(payload) ? disk.write(payload, header.offset) : disk.writev(payload, header.offset);
    case EntryType.ZEROES:
      await zeroRange(disk, header.offset, header.lengthBytes, (header.flags & EntryFlag.NO_HOLE) !== 0, zeroChunkBytes);
      return;
    case EntryType.TRIM:
      await disk.punchHole(header.offset, header.lengthBytes);
      return;
  }
}
