// Recovery's reading of a write log (write-log.ts): from the place the last consistency
// point names, every entry of this log's sessions in sequence order, across partitions,
// and then what lies at the end: a torn entry (discarded), later entries that were never
// durable (discarded), or damage to entries already durable (LogCorruptError).
//
// It reads only through `LogImage.readAt`, so it runs as well over plain buffers as over
// the partition files: test/unit/log-scan.test.ts fuzzes it that way. It changes nothing
// and applies nothing; the caller takes each entry as it is yielded.
//
// The rules (docs/operations.md, "The write log and consistency points"):
// - an entry counts only if its header is valid, it names this volume, the partition's
//   generation, and a session listed at or after the one of the entry before it, and its
//   payload matches its CRC;
// - entries follow each other without a gap in sequence numbers; the writer moves to the
//   next partition when the rest of one is too short for the next entry;
// - where the entries stop, any valid later entry of this log that says the missing one
//   had been made durable (its durableSeq) proves damage, not a torn tail.

import { BlockmirrorError } from '../lib/errors.js';
import { alignedEntryBytes, decodeEntryHeader, ENTRY_ALIGN_BYTES, ENTRY_HEADER_BYTES, payloadMatches, type EntryHeader } from '../protocol/log-entry.js';

export class LogCorruptError extends BlockmirrorError {
  override name = 'LogCorruptError';
  constructor(message: string) {
    super('ERR_LOG_CORRUPT', message);
  }
}

/** The log's partitions as recovery reads them. */
export interface LogImage {
  /** Up to `length` bytes at `offset` of the partition holding `generation` (fewer at its end). */
  readAt(generation: number, offset: number, length: number): Buffer;
}

export interface ScanStart {
  /** Where the first entry after the consistency point lies, and its sequence number. */
  generation: number;
  offset: number;
  expected: number;
  /** The sessions whose entries may be replayed, in the order they wrote. */
  logIds: readonly number[];
  volumeId: number;
  partitionBytes: number;
  /** The largest payload an entry may carry (bounds what is read as a torn entry). */
  entryPayloadBytesMax: number;
  /** Reads at most this many bytes at a time. */
  chunkBytes: number;
  /** Names a place in the log, for messages. */
  where(generation: number, offset: number): string;
}

export interface ScannedEntry {
  generation: number;
  offset: number;
  header: EntryHeader;
  payload: Buffer;
}

export interface ScanEnd {
  /** Where the next entry goes, and its sequence number. */
  generation: number;
  offset: number;
  expected: number;
  /** Per session: the last entry found of it. */
  sessionLastSeq: Map<number, number>;
  /** Bytes of a torn entry at the end. */
  tornBytes: number;
  /** Valid entries after the end that were never durable (discarded). */
  laterEntries: boolean;
}

/** Yields every entry recovery replays, in order; returns where the log ends. Throws LogCorruptError. */
export function* scanLog(image: LogImage, start: ScanStart): Generator<ScannedEntry, ScanEnd> {
  let { generation, offset, expected } = start;
  let session = 0;
  const sessionLastSeq = new Map<number, number>();
  let chunk: { buffer: Buffer; start: number } | undefined;
  for (;;) {
    const header = headerAt(image, start, generation, offset, session, chunk);
    if (header !== null && header.seq !== expected) {
      throw new LogCorruptError(`${start.where(generation, offset)}: sequence gap: expected entry ${expected}, found ${header.seq}`);
    }
    let payload: Buffer | null = null;
    if (header !== null) {
      const at = offset + ENTRY_HEADER_BYTES;
      if (chunk === undefined || at < chunk.start || at + header.payloadBytes > chunk.start + chunk.buffer.length) {
        chunk = { buffer: image.readAt(generation, at, Math.max(start.chunkBytes, header.payloadBytes)), start: at };
      }
      payload = chunk.buffer.subarray(at - chunk.start, at - chunk.start + header.payloadBytes);
      if (payload.length !== header.payloadBytes || !payloadMatches(header, payload)) payload = null;
    }
    if (header !== null && payload !== null) {
      session = start.logIds.indexOf(header.logId);
      sessionLastSeq.set(header.logId, header.seq);
      yield { generation, offset, header, payload };
      expected += 1;
      offset += alignedEntryBytes(header.payloadBytes);
      continue;
    }
    // No valid entry here. Either the writer moved to the next partition (this one's
    // tail was too short for the next entry), or the log ends here.
    const next = headerAt(image, start, generation + 1, 0, session);
    if (next !== null && next.seq === expected) {
      generation += 1;
      offset = 0;
      chunk = undefined;
      continue;
    }
    if (next !== null && next.seq > expected && next.durableSeq >= expected) {
      throw new LogCorruptError(
        `${start.where(generation, offset)}: entry ${expected} is damaged, but entry ${next.seq} ` +
          `(${start.where(generation + 1, 0)}) shows it had been made durable`,
      );
    }
    const { tornBytes, laterEntries } = checkTail(image, start, generation, offset, expected, session, header);
    return { generation, offset, expected, sessionLastSeq, tornBytes, laterEntries };
  }
}

/**
 * A header at (generation, offset) of this log and generation, written by a session at
 * or after `sessionIndex` in logIds, or null.
 */
function headerAt(
  image: LogImage,
  start: ScanStart,
  generation: number,
  offset: number,
  sessionIndex: number,
  chunk?: { buffer: Buffer; start: number },
): EntryHeader | null {
  if (offset + ENTRY_HEADER_BYTES > start.partitionBytes) return null;
  const bytes =
    chunk !== undefined && offset >= chunk.start && offset + ENTRY_HEADER_BYTES <= chunk.start + chunk.buffer.length
      ? chunk.buffer.subarray(offset - chunk.start, offset - chunk.start + ENTRY_HEADER_BYTES)
      : image.readAt(generation, offset, ENTRY_HEADER_BYTES);
  if (bytes.length < ENTRY_HEADER_BYTES) return null;
  const header = decodeEntryHeader(bytes);
  if (typeof header === 'string') return null;
  if (start.logIds.indexOf(header.logId) < sessionIndex || header.generation !== generation || header.volumeId !== start.volumeId) return null;
  if (alignedEntryBytes(header.payloadBytes) > start.partitionBytes - offset) return null;
  return header;
}

/**
 * The log ends at (generation, offset). Anything after it in this partition that is a
 * valid entry of this log, and that was appended when entry `expected` was already
 * durable, proves damage to durable entries: that is corruption, not a torn tail.
 * Valid later entries that were never durable, and a torn entry, are discarded.
 */
function checkTail(
  image: LogImage,
  start: ScanStart,
  generation: number,
  offset: number,
  expected: number,
  session: number,
  tornHeader: EntryHeader | null,
): { tornBytes: number; laterEntries: boolean } {
  const { partitionBytes } = start;
  let laterEntries = false;
  // Read in large chunks: a header may start at every ENTRY_ALIGN_BYTES of the rest of
  // the partition, and one read each would make a start on a fresh log take seconds.
  let chunk: { buffer: Buffer; start: number } | undefined;
  for (let at = offset + ENTRY_ALIGN_BYTES; at + ENTRY_HEADER_BYTES <= partitionBytes; at += ENTRY_ALIGN_BYTES) {
    if (chunk === undefined || at + ENTRY_HEADER_BYTES > chunk.start + chunk.buffer.length) {
      chunk = { buffer: image.readAt(generation, at, Math.min(start.chunkBytes, partitionBytes - at)), start: at };
    }
    const later = headerAt(image, start, generation, at, session, chunk);
    if (later === null) continue;
    if (later.seq > expected && later.durableSeq >= expected) {
      throw new LogCorruptError(
        `${start.where(generation, offset)}: entry ${expected} is damaged, but entry ${later.seq} ` + `(${start.where(generation, at)}) shows it had been made durable`,
      );
    }
    laterEntries = true;
  }
  // A torn entry is one whose header this log wrote (valid, or starting with the entry
  // magic) but that is incomplete. Anything else here is data left from an earlier turn
  // through this partition file, which the generation check already ignores.
  let tornBytes = 0;
  if (tornHeader !== null) {
    tornBytes = Math.min(alignedEntryBytes(tornHeader.payloadBytes), partitionBytes - offset);
  } else if (offset + ENTRY_HEADER_BYTES <= partitionBytes) {
    const head = image.readAt(generation, offset, ENTRY_HEADER_BYTES);
    const problem = head.length < ENTRY_HEADER_BYTES ? 'magic' : decodeEntryHeader(head);
    const ours = typeof problem === 'string' ? problem !== 'magic' : start.logIds.indexOf(problem.logId) >= session && problem.generation === generation;
    if (ours) {
      const limit = Math.min(partitionBytes - offset, alignedEntryBytes(start.entryPayloadBytesMax));
      while (tornBytes < limit) {
        const block = image.readAt(generation, offset + tornBytes, Math.min(ENTRY_ALIGN_BYTES, limit - tornBytes));
        if (block.length === 0 || block.every((byte) => byte === 0)) break;
        tornBytes += block.length;
      }
    }
  }
  return { tornBytes, laterEntries };
}
