// Simulated copies of one small volume: the bytes of an image, the order in which each
// block's versions were written to it, and a replica's log of entries with their stored
// and durable flags. Every block a client writes is filled with a pattern derived from
// (write id, client id, block), so a checker can tell versions apart by their bytes and
// a torn or misplaced block never passes for a real one.
//
// A replica's "durable image" is what would survive a crash now: the entries of its log
// applied in sequence order up to the first entry that is not durable. crash() turns a
// replica into what its recovery would find; resetLog() restarts its log after a
// sequence number, as a secondary does when a resync begins.

import { ENTRY_HEADER_BYTES } from '../../src/protocol/log-entry.js';
import { LogBytes } from './log-bytes.js';

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

/**
 * A resync entry, as LocalVolume.logCurrent logs one: the current contents of a range of
 * blocks on the primary (each block some client write's bytes, or zeroes), sent to a
 * peer that lacks the range. `ids` are the write ids the blocks hold (0: zeroes).
 */
export interface ResyncFrame {
  kind: 'resync';
  firstBlock: number;
  blockCount: number;
  ids: number[];
  data: Buffer;
}

export type DataFrame = WriteFrame | ResyncFrame;
export type Frame = DataFrame | MarkerFrame;

export function entryBytes(frame: Frame): number {
  return ENTRY_HEADER_BYTES + (frame.kind === 'cp' ? 0 : frame.data.length);
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
  /** Counts every change (for checks that need to look again only after one). */
  changes = 0;

  constructor(
    readonly blocks: number,
    readonly blockBytes: number,
  ) {
    this.bytes = Buffer.alloc(blocks * blockBytes);
    this.versions = Array.from({ length: blocks }, () => []);
  }

  /** A resync entry that finds a block as it carries it leaves no new version in its history. */
  write(frame: DataFrame): void {
    this.changes += 1;
    frame.data.copy(this.bytes, frame.firstBlock * this.blockBytes);
    for (let block = frame.firstBlock; block < frame.firstBlock + frame.blockCount; block += 1) {
      const versions = this.blockVersions(block);
      if (frame.kind === 'write') versions.push(frame.writeId);
      else {
        const id = frame.ids[block - frame.firstBlock] ?? -1;
        if ((versions[versions.length - 1] ?? 0) !== id) versions.push(id);
      }
    }
  }

  /** Becomes a copy of `other` (bytes and the history of every block). */
  copyFrom(other: BlockImage): void {
    this.changes += 1;
    other.bytes.copy(this.bytes);
    for (let block = 0; block < this.blocks; block += 1) this.versions[block] = [...other.blockVersions(block)];
  }

  /** A resync entry carrying blocks first..first+count-1 as they are now. */
  resyncFrame(firstBlock: number, blockCount: number): ResyncFrame {
    const ids: number[] = [];
    for (let block = firstBlock; block < firstBlock + blockCount; block += 1) ids.push(this.writeIdAt(block));
    const data = Buffer.from(this.bytes.subarray(firstBlock * this.blockBytes, (firstBlock + blockCount) * this.blockBytes));
    return { kind: 'resync', firstBlock, blockCount, ids, data };
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
  /** The log starts after this entry (0, or where a resync restarted it). */
  base = 0;
  /** The log: records[seq - base - 1]. */
  private readonly records: LogRecord[] = [];
  /** Every entry up to here is durable (and applied to the durable image). */
  durablePrefix = 0;
  /** Times the log was restarted for a resync: the image's history then skips versions. */
  resets = 0;
  /** The log's bytes, which a crash's recovery reads with the shipped scan. */
  private log: LogBytes;
  private crashes = 0;
  /** Recoveries whose scan discarded a torn entry at the end of the log. */
  tornTails = 0;

  constructor(
    readonly name: string,
    blocks: number,
    private readonly blockBytes: number,
  ) {
    this.image = new BlockImage(blocks, blockBytes);
    this.durableImage = new BlockImage(blocks, blockBytes);
    this.log = new LogBytes(0, blockBytes);
  }

  get lastSeq(): number {
    return this.base + this.records.length;
  }

  /** Whether the log holds entry `seq` (it may start after it, or end before it). */
  has(seq: number): boolean {
    return seq > this.base && seq <= this.lastSeq;
  }

  /** Appends the next entry of the log; entries arrive in sequence order, without gaps. */
  append(seq: number, frame: Frame): LogRecord {
    if (seq !== this.lastSeq + 1) throw new Error(`${this.name}: entry ${seq} appended after ${this.lastSeq} (the log has a gap or a repeat)`);
    const record: LogRecord = { seq, frame, bytes: entryBytes(frame), stored: false, durable: false };
    this.records.push(record);
    this.log.append(seq, frame, this.durablePrefix);
    return record;
  }

  record(seq: number): LogRecord {
    const record = this.records[seq - this.base - 1];
    if (record === undefined) throw new Error(`${this.name}: no entry ${seq} (log holds ${this.base + 1}..${this.lastSeq})`);
    return record;
  }

  /** The highest seq such that every entry up to it is stored. */
  storedPrefix(): number {
    let at = 0;
    while (this.records[at]?.stored === true) at += 1;
    return this.base + at;
  }

  markDurable(seq: number): void {
    this.record(seq).durable = true;
    for (let next = this.records[this.durablePrefix - this.base]; next?.durable === true; next = this.records[this.durablePrefix - this.base]) {
      if (next.frame.kind !== 'cp') this.durableImage.write(next.frame);
      this.durablePrefix += 1;
    }
  }

  /**
   * A crash: the log keeps its durable entries and, if `keep` says so, stored entries
   * past them that reached the disk anyway (a prefix: recovery stops at the first entry
   * it cannot read); the rest is gone. The shipped log scan, run over the log's bytes
   * (log-bytes.ts), must find exactly that prefix. The image is what recovery makes of it: the
   * durable image with the kept entries replayed. Returns the log's last entry.
   */
  crash(keep: number): number {
    const last = Math.max(this.durablePrefix, Math.min(keep, this.storedPrefix()));
    this.recoverLog(last);
    for (let seq = this.durablePrefix + 1; seq <= last; seq += 1) this.markDurable(seq);
    this.records.length = last - this.base;
    for (const record of this.records) record.durable = true;
    this.image.copyFrom(this.durableImage);
    return last;
  }

  /**
   * A recovery that ends at `last`, before the durable prefix (a broken one: a deliberate
   * fault). The log starts at 0 here (the primary's), so the durable image is rebuilt.
   */
  crashTo(last: number): number {
    if (this.base !== 0 || last > this.durablePrefix) throw new Error(`${this.name}: crashTo(${last}) with base ${this.base}, durable ${this.durablePrefix}`);
    this.recoverLog(last);
    const rebuilt = new BlockImage(this.image.blocks, this.image.blockBytes);
    for (const record of this.records.slice(0, last)) if (record.frame.kind !== 'cp') rebuilt.write(record.frame);
    this.records.length = last;
    this.durablePrefix = last;
    this.durableImage.copyFrom(rebuilt);
    this.image.copyFrom(rebuilt);
    return last;
  }

  /**
   * A resync's RESET: what was stored is made durable, then the log restarts after `seq`
   * (every stored entry must be complete: the node waits until it is idle).
   */
  resetLog(seq: number): void {
    if (this.storedPrefix() !== this.lastSeq) throw new Error(`${this.name}: log reset while entries ${this.storedPrefix() + 1}..${this.lastSeq} are being stored`);
    this.durableImage.copyFrom(this.image);
    this.records.length = 0;
    this.base = seq;
    this.durablePrefix = seq;
    this.resets += 1;
    this.log = new LogBytes(seq, this.blockBytes);
  }

  /**
   * The crash leaves the log's bytes through entry `last` and a torn piece of the next;
   * the shipped scan must find exactly `last` (the model of recovery and the code agree).
   */
  private recoverLog(last: number): void {
    this.crashes += 1;
    const tornBytes = (last * 2_654_435_761 + this.crashes * 40_503) % 5_000;
    this.log.crash(last, tornBytes);
    const found = this.log.recover();
    if (found.lastSeq !== last) throw new Error(`${this.name}: the log scan recovers through ${found.lastSeq}, the crash kept through ${last}`);
    if (found.tornBytes > 0) this.tornTails += 1;
  }

  /** Marks every stored entry up to `seq` durable (what an fdatasync covers). */
  syncThrough(seq: number): void {
    // Entries up to the durable prefix are durable already.
    for (let at = this.durablePrefix + 1; at <= Math.min(seq, this.lastSeq); at += 1) {
      const record = this.record(at);
      if (record.stored && !record.durable) this.markDurable(at);
    }
  }
}
