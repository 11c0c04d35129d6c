// Simulated copies of one small volume: the bytes of an image, the order in which each
// block's versions were written to it, and a replica's log of entries with their stored
// and durable flags. Every block a client writes is filled with a pattern derived from
// (write id, client id, block), so a checker can tell versions apart by their bytes and
// a torn or misplaced block never passes for a real one.
//
// A replica's "durable image" is what would survive a crash now: the entries of its log
// applied in sequence order up to the first entry that is not durable.

import { ENTRY_HEADER_BYTES } from '../../src/storage/log-entry.js';

export interface WriteFrame {
  kind: 'write';
  /** Unique per client write; version 0 of every block is zeroes. */
  writeId: number;
  clientId: number;
  firstBlock: number;
  blockCount: number;
  data: Buffer;
}

/** A consistency point marker, as the write log appends one: it changes no block. */
export interface MarkerFrame {
  kind: 'cp';
  targetSeq: number;
}

export type Frame = WriteFrame | MarkerFrame;

export function entryBytes(frame: Frame): number {
  return ENTRY_HEADER_BYTES + (frame.kind === 'write' ? frame.data.length : 0);
}

/** The contents of `block` as written by write `writeId` of client `clientId`. */
export function blockContents(writeId: number, clientId: number, block: number, blockBytes: number): Buffer {
  const out = Buffer.alloc(blockBytes);
  out.writeUInt32BE(writeId, 0);
  out.writeUInt16BE(clientId, 4);
  out.writeUInt16BE(block, 6);
  let state = (Math.imul(writeId, 0x9e3779b1) ^ Math.imul(block + 1, 0x85ebca6b)) >>> 0;
  for (let at = 8; at + 4 <= blockBytes; at += 4) {
    state = (Math.imul(state ^ (state >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    out.writeUInt32BE(state, at);
  }
  return out;
}

export function writeFrame(writeId: number, clientId: number, firstBlock: number, blockCount: number, blockBytes: number): WriteFrame {
  const blocks: Buffer[] = [];
  for (let block = firstBlock; block < firstBlock + blockCount; block += 1) blocks.push(blockContents(writeId, clientId, block, blockBytes));
  return { kind: 'write', writeId, clientId, firstBlock, blockCount, data: Buffer.concat(blocks) };
}

export class BlockImage {
  readonly bytes: Buffer;
  /** Per block, the write ids written to it here, in the order they were written. */
  readonly versions: number[][];

  constructor(
    readonly blocks: number,
    readonly blockBytes: number,
  ) {
    this.bytes = Buffer.alloc(blocks * blockBytes);
    this.versions = Array.from({ length: blocks }, () => []);
  }

  write(frame: WriteFrame): void {
    frame.data.copy(this.bytes, frame.firstBlock * this.blockBytes);
    for (let block = frame.firstBlock; block < frame.firstBlock + frame.blockCount; block += 1) this.blockVersions(block).push(frame.writeId);
  }

  blockVersions(block: number): number[] {
    const versions = this.versions[block];
    if (versions === undefined) throw new Error(`block ${block} is outside the volume`);
    return versions;
  }

  /** The write id whose bytes the block holds now (0: never written), read from the bytes themselves. */
  writeIdAt(block: number): number {
    return this.bytes.readUInt32BE(block * this.blockBytes);
  }
}

export interface LogRecord {
  seq: number;
  frame: Frame;
  bytes: number;
  /** Written to the log (and, unless logship, to the image). */
  stored: boolean;
  durable: boolean;
}

export class Replica {
  readonly image: BlockImage;
  readonly durableImage: BlockImage;
  /** The log: records[seq - 1]. */
  private readonly records: LogRecord[] = [];
  /** Every entry up to here is durable (and applied to the durable image). */
  durablePrefix = 0;

  constructor(
    readonly name: string,
    blocks: number,
    blockBytes: number,
  ) {
    this.image = new BlockImage(blocks, blockBytes);
    this.durableImage = new BlockImage(blocks, blockBytes);
  }

  get lastSeq(): number {
    return this.records.length;
  }

  /** Appends the next entry of the log; entries arrive in sequence order, without gaps. */
  append(seq: number, frame: Frame): LogRecord {
    if (seq !== this.records.length + 1) throw new Error(`${this.name}: entry ${seq} appended after ${this.records.length} (the log has a gap or a repeat)`);
    const record: LogRecord = { seq, frame, bytes: entryBytes(frame), stored: false, durable: false };
    this.records.push(record);
    return record;
  }

  record(seq: number): LogRecord {
    const record = this.records[seq - 1];
    if (record === undefined) throw new Error(`${this.name}: no entry ${seq} (log ends at ${this.records.length})`);
    return record;
  }

  /** The highest seq such that every entry up to it is stored. */
  storedPrefix(): number {
    let seq = 0;
    while (this.records[seq]?.stored === true) seq += 1;
    return seq;
  }

  markDurable(seq: number): void {
    this.record(seq).durable = true;
    for (let next = this.records[this.durablePrefix]; next?.durable === true; next = this.records[this.durablePrefix]) {
      if (next.frame.kind === 'write') this.durableImage.write(next.frame);
      this.durablePrefix += 1;
    }
  }

  /** Marks every stored entry up to `seq` durable (what an fdatasync covers). */
  syncThrough(seq: number): void {
    // Entries up to the durable prefix are durable already.
    for (let at = this.durablePrefix + 1; at <= Math.min(seq, this.records.length); at += 1) {
      const record = this.record(at);
      if (record.stored && !record.durable) this.markDurable(at);
    }
  }
}
