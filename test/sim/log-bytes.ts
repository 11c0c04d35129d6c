// The bytes of one simulated replica's write log, laid out as WriteLog lays them out
// (64-byte headers, entries aligned to 64 bytes, a new partition when one is too short,
// one log id per run of the process), so that a crash is recovered by the shipped scan
// (src/storage/log-scan.ts), not by the simulator's own idea of it. volume.ts keeps the
// records; this keeps what is on the disk.
//
// Partitions are never reused here (the simulated log never fills): partition g holds
// generation g. A crash keeps the entries through the last one it keeps, a torn piece of
// the next (the bytes of a write cut short), and nothing after.

import { alignedEntryBytes, encodeEntryHeader, EntryType } from '../../src/protocol/log-entry.js';
import { scanLog, type LogImage } from '../../src/storage/log-scan.js';
import type { Frame } from './volume.js';

const PARTITION_BYTES = 64 * 1024;
const VOLUME_ID = 0x51;
/** The largest payload a simulated entry carries (the sim's writes are far smaller). */
const PAYLOAD_MAX = 32 * 1024;

interface Placed {
  generation: number;
  offset: number;
  /** Header and payload, without the padding to 64 bytes. */
  used: number;
  bytes: number;
}

export class LogBytes implements LogImage {
  private readonly partitions: Buffer[] = [];
  private generation = 0;
  private offset = 0;
  private readonly placed = new Map<number, Placed>();
  /** One log id per run of the process, in the order they wrote (the superblock's list). */
  private readonly logIds: number[] = [1];

  constructor(
    /** The log starts after this entry. */
    private readonly base: number,
    private readonly blockBytes: number,
  ) {}

  readAt(generation: number, offset: number, length: number): Buffer {
    const partition = this.partitions[generation];
    if (partition === undefined) return Buffer.alloc(0);
    return Buffer.from(partition.subarray(offset, Math.min(offset + length, PARTITION_BYTES)));
  }

  /** Writes entry `seq` where the log ends, as the log's writer does. */
  append(seq: number, frame: Frame, durableSeq: number): void {
    const payload = frame.kind === 'cp' ? [] : [frame.data];
    const payloadBytes = frame.kind === 'cp' ? 0 : frame.data.length;
    const bytes = alignedEntryBytes(payloadBytes);
    if (this.offset + bytes > PARTITION_BYTES) {
      this.generation += 1;
      this.offset = 0;
    }
    const header = encodeEntryHeader(
      {
        type: frame.kind === 'cp' ? EntryType.CONSISTENCY_POINT : EntryType.WRITE,
        flags: 0,
        logId: this.logIds[this.logIds.length - 1] ?? 1,
        volumeId: VOLUME_ID,
        seq,
        durableSeq,
        offset: frame.kind === 'cp' ? frame.targetSeq : frame.firstBlock * this.blockBytes,
        lengthBytes: payloadBytes,
        generation: this.generation,
        epoch: 0,
      },
      payload,
    );
    const partition = this.partition(this.generation);
    partition.fill(0, this.offset, this.offset + bytes);
    header.copy(partition, this.offset);
    if (frame.kind !== 'cp') frame.data.copy(partition, this.offset + header.length);
    this.placed.set(seq, { generation: this.generation, offset: this.offset, used: header.length + payloadBytes, bytes });
    this.offset += bytes;
  }

  /**
   * A crash: entries through `last` stay, `tornBytes` of the entry after it stay (a write
   * cut short), everything after is gone; the next run writes after `last` with a new log id.
   */
  crash(last: number, tornBytes: number): void {
    const end = this.endOf(last);
    const next = this.placed.get(last + 1);
    let keep = 0;
    if (next !== undefined && next.generation === end.generation && next.offset === end.offset) {
      // Cut short before its last byte that is not zero (bytes it would leave zero change nothing).
      const bytes = this.partition(next.generation).subarray(next.offset, next.offset + next.used);
      let lastNonZero = bytes.length - 1;
      while (lastNonZero > 0 && bytes[lastNonZero] === 0) lastNonZero -= 1;
      keep = Math.min(tornBytes, lastNonZero);
    }
    for (let generation = end.generation; generation < this.partitions.length; generation += 1) {
      this.partition(generation).fill(0, generation === end.generation ? end.offset + keep : 0);
    }
    for (const seq of [...this.placed.keys()]) if (seq > last) this.placed.delete(seq);
    this.generation = end.generation;
    this.offset = end.offset;
    this.logIds.push((this.logIds[this.logIds.length - 1] ?? 1) + 1);
  }

  /** What recovery finds: the last entry the shipped scan replays, and the torn bytes it discards. */
  recover(): { lastSeq: number; tornBytes: number } {
    const scan = scanLog(this, {
      generation: 0,
      offset: 0,
      expected: this.base + 1,
      logIds: this.logIds,
      volumeId: VOLUME_ID,
      partitionBytes: PARTITION_BYTES,
      entryPayloadBytesMax: PAYLOAD_MAX,
      chunkBytes: PARTITION_BYTES,
      where: (generation, offset) => `generation ${generation} offset ${offset}`,
    });
    let step = scan.next();
    while (step.done !== true) step = scan.next();
    return { lastSeq: step.value.expected - 1, tornBytes: step.value.tornBytes };
  }

  /** Where the log ends after entry `seq` (the start, for the entry before the first). */
  private endOf(seq: number): { generation: number; offset: number } {
    if (seq === this.base) return { generation: 0, offset: 0 };
    const placed = this.placed.get(seq);
    if (placed === undefined) throw new Error(`entry ${seq} is not in the log`);
    return { generation: placed.generation, offset: placed.offset + placed.bytes };
  }

  private partition(generation: number): Buffer {
    while (this.partitions.length <= generation) this.partitions.push(Buffer.alloc(PARTITION_BYTES));
    const partition = this.partitions[generation];
    if (partition === undefined) throw new Error(`no partition ${generation}`);
    return partition;
  }
}
