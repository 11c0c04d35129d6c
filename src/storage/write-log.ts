// The write-ahead log of one volume, the node's "NVRAM" (docs/operations.md): every change
// to the volume is appended here first, under a gap-free sequence number that fixes its
// place in the volume's order. A FLUSH or FUA waits only for the log to be durable (one
// sequential fdatasync shared by every waiter); the volume file is made durable at
// consistency points (CPs), after which the log before the CP is no longer needed.
//
// Its layout on disk, the sessions and the making of a whole new log directory are
// log-layout.ts; reading it back at recovery is log-scan.ts (over a LogImage, so that it
// is fuzzed over buffers); writing placed entries in whole blocks is log-writer.ts; the
// hand-off to the syncer thread and the durable mark are log-durability.ts. This module
// assigns sequence numbers, places entries in partitions, keeps the partition table
// (which generation each file holds, its first and last entry) and the marks (appended,
// applied, CP), takes consistency points and frees partitions, and reads entries back.
//
// Memory is bounded: the log holds per-partition counters, one block of tail bytes, the
// entries queued for the writer (bounded by requests in flight) and, for entries
// appended but not yet applied to the volume, their positions.
//
// This module owns the log files. It never touches the volume file: the caller applies
// entries and reports them applied, and passes the volume's sync to checkpoint().
//
// Why one file of this size: placement, consistency points, release and reading back all
// work on the one partition table and the same marks; each of the other jobs is a module
// of its own (above).

import fs from 'node:fs';
import path from 'node:path';
import { assert } from '../lib/assert.js';
import { IoActivity, readFullyAt } from '../io/file-io.js';
import type { DurableFiles } from './durable-files.js';
import { ReplicaTrail, TRAIL_FILE, type TrailExtent } from '../core/replica-trail.js';
import { LogCorruptError, scanLog, type LogImage } from './log-scan.js';
import {
  filesOf,
  installLogDirectory,
  LOG_BLOCK_BYTES,
  LOG_IDS_MAX,
  newLogId,
  openPartitions,
  partitionFile,
  readSuperblock,
  settleLogDirectory,
  SUPERBLOCK_FILE,
  superblockText,
  type LogGeometry,
  type LogPlace,
  type NewLogState,
  type Partition,
  type Position,
  type Superblock,
} from './log-layout.js';
import { LogWriter } from './log-writer.js';
import { LogDurability } from './log-durability.js';
import {
  alignedEntryBytes,
  decodeEntryHeader,
  ENTRY_HEADER_BYTES,
  encodeEntryHeader,
  EntryType,
  payloadMatches,
  type EntryHeader,
} from '../protocol/log-entry.js';

export { LogCorruptError, LOG_BLOCK_BYTES, type LogGeometry, type NewLogState };

export interface LogOptions extends LogPlace {
  volumeId: number;
  activity: IoActivity;
  /** Appends up to this size are written inline on the event loop (see IoActivity). */
  inlineWriteBytesMax: number;
  /** Called when the log wants a consistency point (a partition filled up). */
  onCheckpointWanted: () => void;
  /**
   * A replica's log of the entries its primary sends (under the primary's sequence
   * numbers, appended with appendReplica, no CP markers of its own). With `deferApply`
   * (logship) entries are applied to the volume only at the primary's CPs: recovery
   * does not apply them, and readEntry() reads them back.
   */
  replica?: { deferApply: boolean };
}

/** Hears of every entry as it is placed, in sequence order: its encoded header and payload (the mirror's tap). */
export type PlacedListener = (seq: number, header: Buffer, payload: readonly Buffer[], fields: { type: EntryType; offset: number; lengthBytes: number }) => void;

/** An entry's sequence number and epoch, as the volume's core (src/core/volume-core.ts) gives them. */
export interface EntryStamp {
  seq: number;
  epoch: number;
}

/** The fields of an entry a caller chooses (the log adds the rest). */
export interface EntryFields {
  offset: number;
  lengthBytes: number;
  flags: number;
}

/** Applies one recovered entry to the volume, in sequence order. */
export type ApplyEntry = (header: EntryHeader, payload: Buffer) => Promise<void>;

export interface RecoveryReport {
  cpSeq: number;
  replayedEntries: number;
  replayedBytes: number;
  lastSeq: number;
  tornBytes: number;
  created: boolean;
}

export interface LogStatus {
  lastSeq: number;
  durableSeq: number;
  cpSeq: number;
  cpTimeMs: number;
  bytesUsed: number;
  partitionBytes: number;
  partitions: number;
  checkpoints: number;
  syncs: number;
  /** Syncs started ahead of an expected flush (see LocalVolume). */
  syncsAhead: number;
  /** Times appends had to wait for a partition to be freed by a CP, and how long in all. */
  stalls: number;
  stallMs: number;
  /** How long the last CP took (mostly the volume's fdatasync). */
  lastCheckpointMs: number;
  /**
   * A replica's log made anew with nothing known of what its copy holds (its log was
   * damaged or missing at start): the copy needs every region from the primary.
   */
  needsFullResync: boolean;
}

/** Decides whether a partition that the CP no longer needs may be reused. */
export type Retainer = (partition: { generation: number; firstSeq: number; lastSeq: number; activeGeneration: number }) => boolean;

const SCAN_CHUNK_BYTES = 4 * 1024 * 1024;

export class WriteLog {
  private readonly slots: Partition[];
  private readonly geometry: LogGeometry;
  /** The id of the entries this session of the log writes (new at every open). */
  private readonly logId: number;
  /** Session ids recovery accepts, in order (see Superblock.logIds). */
  private logIds: number[];
  /** The last entry recovery found from each earlier session. */
  private readonly sessionLastSeq = new Map<number, number>();
  private activeGeneration: number;
  private writeOffset: number;
  private nextSeq: number;
  private appendedSeq: number;
  private appliedSeq: number;
  private readonly appendedAhead = new Set<number>();
  private readonly appliedAhead = new Set<number>();
  /** Positions of entries placed but not yet applied: bounded by requests in flight. */
  private readonly positions = new Map<number, Position>();
  private readonly placeQueue: { bytes: number; seq: number; place: (position: Position) => void; abandon: (error: Error) => void }[] = [];
  private readonly writer: LogWriter;
  /** The mirror's tap, once there is one (see tap). */
  private placedListener: PlacedListener | null = null;
  private readonly durability: LogDurability;
  private checkpointing: Promise<void> | null = null;
  private readonly retainers: Retainer[] = [];
  private cpSeq: number;
  private cpTimeMs: number;
  private checkpoints = 0;
  private stalls = 0;
  private stallMs = 0;
  private stallStartedMs: number | null = null;
  private lastCheckpointMs = 0;
  private closed = false;
  /** A replica's record of its entries since the primary's last CP (null for a primary's log). */
  private readonly trail: ReplicaTrail | null;
  private readonly files: DurableFiles;
  private readonly needsFullResync: boolean;

  private constructor(
    private readonly options: LogOptions,
    superblock: Superblock,
    slots: Partition[],
  ) {
    this.geometry = { partitionBytes: superblock.partitionBytes, partitions: superblock.partitions };
    this.slots = slots;
    this.logIds = superblock.logIds;
    this.logId = newLogId(superblock.logIds);
    this.cpSeq = superblock.cpSeq;
    this.cpTimeMs = superblock.cpTimeMs;
    this.activeGeneration = superblock.replayGeneration;
    this.writeOffset = superblock.replayOffset;
    this.nextSeq = superblock.cpSeq + 1;
    this.appendedSeq = superblock.cpSeq;
    this.appliedSeq = superblock.cpSeq;
    this.durability = new LogDurability(
      options.dir,
      options.activity,
      (fdsMax, durableSeq, onSynced) => this.files.fs.openSyncer(fdsMax, durableSeq, onSynced),
      () => this.appendedSeq,
      superblock.cpSeq,
    );
    this.writer = new LogWriter(this.geometry.partitionBytes, options.activity, options.inlineWriteBytesMax, {
      fdOf: (generation) => this.slotOf(generation).fd,
      written: (run, fd) => {
        for (const entry of run) this.advance(this.appendedAhead, entry.seq, 'appended');
        this.durability.written(fd, this.appendedSeq);
      },
      settled: () => this.durability.resume(),
    });
    this.files = filesOf(options);
    this.needsFullResync = superblock.needsFullResync === true;
    this.trail = options.replica === undefined ? null : ReplicaTrail.decode(this.files.read(path.join(options.dir, TRAIL_FILE)));
  }

  /**
   * Opens the log in `options.dir` (creating it the first time), replays every entry
   * after the last CP through `apply`, and returns the log ready for appends. The caller
   * must then make the volume durable and call checkpoint().
   */
  static async open(options: LogOptions, apply: ApplyEntry): Promise<{ log: WriteLog; recovery: RecoveryReport }> {
    const { dir, geometry } = options;
    const files = filesOf(options);
    assert(geometry.partitions >= 2, 'the log needs at least two partitions');
    assert(geometry.partitionBytes % LOG_BLOCK_BYTES === 0, 'log partitions are whole blocks');
    settleLogDirectory(options);
    const superblockPath = path.join(dir, SUPERBLOCK_FILE);
    let created = false;
    if (files.kind(dir) === null) {
      installLogDirectory(options, 'log-create', { cpSeq: 0, needsFullResync: false, trail: null });
      created = true;
    } else if (files.kind(dir) !== 'directory') {
      throw new LogCorruptError(`${dir} is not a directory`);
    }
    const superblock = readSuperblock(files, superblockPath);
    if (superblock.volumeUuid !== options.volumeUuid) {
      throw new LogCorruptError(`${superblockPath}: log of volume ${superblock.volumeUuid}, not ${options.volumeUuid}`);
    }
    const slots = openPartitions(files, dir, superblock);
    const log = new WriteLog(options, superblock, slots);
    try {
      const recovery = await log.recover(apply);
      recovery.created = created;
      log.startSession(superblock);
      return { log, recovery };
    } catch (error) {
      log.close();
      throw error;
    }
  }

  // ---- recovery ----------------------------------------------------------------------

  private slotOf(generation: number): Partition {
    const slot = this.slots[generation % this.geometry.partitions];
    assert(slot !== undefined);
    return slot;
  }

  private readAt(generation: number, offset: number, length: number): Buffer {
    const buffer = Buffer.alloc(length);
    const count = fs.readSync(this.slotOf(generation).fd, buffer, 0, length, offset);
    return count === length ? buffer : buffer.subarray(0, count);
  }

  private async recover(apply: ApplyEntry): Promise<RecoveryReport> {
    const report: RecoveryReport = {
      cpSeq: this.cpSeq,
      replayedEntries: 0,
      replayedBytes: 0,
      lastSeq: this.cpSeq,
      tornBytes: 0,
      created: false,
    };
    const image: LogImage = { readAt: (generation, offset, length) => this.readAt(generation, offset, length) };
    const scan = scanLog(image, {
      generation: this.activeGeneration,
      offset: this.writeOffset,
      expected: this.cpSeq + 1,
      logIds: this.logIds,
      volumeId: this.options.volumeId,
      partitionBytes: this.geometry.partitionBytes,
      entryPayloadBytesMax: this.entryPayloadBytesMax,
      chunkBytes: SCAN_CHUNK_BYTES,
      where: (generation, offset) => this.where(generation, offset),
    });
    let step = scan.next();
    while (step.done !== true) {
      const { generation, offset, header, payload } = step.value;
      if (header.type !== EntryType.CONSISTENCY_POINT) this.trail?.add(header.seq, header.offset, header.lengthBytes);
      if (this.options.replica?.deferApply === true) this.positions.set(header.seq, { generation, offset });
      else await apply(header, payload);
      this.recordPlaced(generation, header.seq, offset);
      report.replayedEntries += 1;
      report.replayedBytes += header.lengthBytes;
      report.lastSeq = header.seq;
      step = scan.next();
    }
    const { generation, offset, expected, sessionLastSeq, tornBytes, laterEntries } = step.value;
    for (const [id, seq] of sessionLastSeq) this.sessionLastSeq.set(id, seq);
    report.tornBytes = tornBytes;
    if (tornBytes > 0 || laterEntries) {
      // The discarded entries carry this session's predecessors' ids: entries of the
      // session now starting come after them in the superblock's list, so a later
      // recovery that has read a new entry never goes back to them.
      this.options.log.warn('log: discarded a torn tail at the end of the log', {
        at: this.where(generation, offset),
        tornBytes,
        discardedLaterEntries: laterEntries,
        nextSeq: expected,
      });
    }
    this.activeGeneration = generation;
    this.writeOffset = offset;
    const blockStart = offset - (offset % LOG_BLOCK_BYTES);
    this.writer.startAt(generation, blockStart, this.readAt(generation, blockStart, offset - blockStart));
    this.nextSeq = expected;
    this.appendedSeq = expected - 1;
    // A logship replica's entries after the CP are in its log only, not in its volume.
    this.appliedSeq = this.options.replica?.deferApply === true ? this.cpSeq : expected - 1;
    return report;
  }

  /**
   * Names this session's id in the superblock, after the ids whose entries recovery just
   * replayed (not yet covered by a CP), before anything is appended.
   */
  private startSession(superblock: Superblock): void {
    // Sessions recovery found no entry of lie wholly before the CP or past the end of the
    // log: none of their entries may be replayed any more, so they leave the list (a node
    // killed again and again at start would otherwise fill it).
    this.logIds = this.logIds.filter((id) => this.sessionLastSeq.has(id));
    if (this.logIds.length >= LOG_IDS_MAX) {
      throw new LogCorruptError(
        `${path.join(this.options.dir, SUPERBLOCK_FILE)}: ${this.logIds.length} sessions since the last consistency point; ` +
          'the node has crashed repeatedly before completing one',
      );
    }
    this.logIds = [...this.logIds, this.logId];
    this.files.replaceFile(path.join(this.options.dir, SUPERBLOCK_FILE), superblockText({ ...superblock, logIds: this.logIds }), 'log-superblock');
    // Every entry recovery found was durable: it was read back from the files.
    this.durability.start(this.geometry.partitions, this.appendedSeq);
  }

  private recordPlaced(generation: number, seq: number, offset: number): void {
    const slot = this.slotOf(generation);
    if (slot.generation !== generation) {
      slot.generation = generation;
      slot.firstSeq = seq;
      slot.firstOffset = offset;
    }
    slot.lastSeq = seq;
  }

  private where(generation: number, offset: number): string {
    return `${partitionFile(this.options.dir, generation % this.geometry.partitions)} (generation ${generation}) offset ${offset}`;
  }

  // ---- appends -----------------------------------------------------------------------

  get lastSeq(): number {
    return this.nextSeq - 1;
  }

  /** Largest payload one entry may carry; larger writes are split by the caller. */
  get entryPayloadBytesMax(): number {
    return Math.floor((this.geometry.partitionBytes - ENTRY_HEADER_BYTES) / 2 / 4096) * 4096;
  }

  /**
   * Appends an entry under `stamp`: the sequence number and epoch the volume's core gave
   * it, which must be the next number here (so the caller's order is the log's order).
   * `written` resolves once the entry is in the log file (not yet durable).
   */
  append(stamp: EntryStamp, type: EntryType, fields: EntryFields, payload: readonly Buffer[]): { seq: number; written: Promise<void> } {
    assert(this.options.replica === undefined || type === EntryType.CONSISTENCY_POINT, 'a replica log takes entries from its primary');
    assert(stamp.seq === this.nextSeq, `entry ${stamp.seq} appended after ${this.nextSeq - 1}`);
    return this.appendAs(stamp.seq, type, fields, stamp.epoch, payload);
  }

  /**
   * Appends an entry received from the primary under the primary's sequence number,
   * which must be the next one here (the replica's log has the primary's sequence).
   * `source.payloadCrc` must be the CRC32C of `payload`, as checked when it was received.
   */
  appendReplica(source: EntryHeader, payload: Buffer | readonly Buffer[]): { seq: number; written: Promise<void> } {
    assert(this.options.replica !== undefined, 'not a replica log');
    assert(source.seq === this.nextSeq, `replica entry ${source.seq} appended after ${this.nextSeq - 1}`);
    if (source.type !== EntryType.CONSISTENCY_POINT) this.trail?.add(source.seq, source.offset, source.lengthBytes);
    // The payload was checked against the source's payload CRC when it was received.
    const slices = Buffer.isBuffer(payload) ? [payload] : payload;
    return this.appendAs(source.seq, source.type, source, source.epoch, slices.filter((slice) => slice.length > 0), source.payloadCrc);
  }

  private appendAs(
    seq: number,
    type: EntryType,
    fields: EntryFields,
    epoch: number,
    payload: readonly Buffer[],
    knownPayloadCrc?: number,
  ): { seq: number; written: Promise<void> } {
    assert(!this.closed, 'log is closed');
    this.nextSeq += 1;
    const payloadBytes = payload.reduce((sum, slice) => sum + slice.length, 0);
    assert(payloadBytes <= this.entryPayloadBytesMax, 'entry larger than a log entry may be');
    const bytes = alignedEntryBytes(payloadBytes);
    const headerAt = (generation: number): Buffer =>
      encodeEntryHeader(
        {
          type,
          flags: fields.flags,
          logId: this.logId,
          volumeId: this.options.volumeId,
          seq,
          durableSeq: this.durability.durableSeq,
          offset: fields.offset,
          lengthBytes: fields.lengthBytes,
          generation,
          epoch,
        },
        payload,
        knownPayloadCrc,
      );
    const tapped = { type, offset: fields.offset, lengthBytes: fields.lengthBytes };
    const written = this.place(bytes, seq).then(
      (position) => {
        const header = headerAt(position.generation);
        this.placedListener?.(seq, header, payload, tapped);
        const padding = bytes - ENTRY_HEADER_BYTES - payloadBytes;
        const buffers = padding > 0 ? [header, ...payload, Buffer.alloc(padding)] : [header, ...payload];
        return new Promise<void>((resolve, reject) => this.writer.enqueue({ position, buffers, bytes, seq, resolve, reject }));
      },
      (error: unknown) => {
        // Given up before it was placed (abandonQueued): the tap still gets it, in order.
        this.placedListener?.(seq, headerAt(0), payload, tapped);
        throw error;
      },
    );
    return { seq, written };
  }

  /**
   * Reads back an entry appended and written but not yet applied (a logship replica
   * applies its entries at the primary's consistency points).
   */
  async readEntry(seq: number): Promise<{ header: EntryHeader; payload: Buffer }> {
    assert(seq <= this.appendedSeq, `entry ${seq} is not written yet`);
    const position = this.positions.get(seq);
    assert(position !== undefined, `entry ${seq} has no known position`);
    const fd = this.slotOf(position.generation).fd;
    const head = Buffer.alloc(ENTRY_HEADER_BYTES);
    const pastEnd = (at: number): Error => new LogCorruptError(`log file ends at ${at}, inside entry ${seq}`);
    await readFullyAt(fd, head, position.offset, 0, this.options.activity, pastEnd);
    const header = decodeEntryHeader(head);
    if (typeof header === 'string' || header.seq !== seq || header.generation !== position.generation) {
      throw new LogCorruptError(`${this.where(position.generation, position.offset)}: entry ${seq} reads back damaged (${typeof header === 'string' ? header : 'wrong entry'})`);
    }
    const payload = Buffer.alloc(header.payloadBytes);
    await readFullyAt(fd, payload, position.offset + ENTRY_HEADER_BYTES, 0, this.options.activity, pastEnd);
    if (!payloadMatches(header, payload)) {
      throw new LogCorruptError(`${this.where(position.generation, position.offset)}: entry ${seq} payload checksum mismatch on read-back`);
    }
    return { header, payload };
  }

  /**
   * Whether entries from `seq` up to the last one are still in the log files (a
   * partition is reused only when no retainer keeps it; see addRetainer).
   */
  holdsFrom(seq: number): boolean {
    return seq > this.lastSeq || this.slotHolding(seq) !== undefined;
  }

  /** The partition that holds entry `seq`, if one still does. */
  private slotHolding(seq: number): Partition | undefined {
    return this.slots.find((slot) => slot.generation !== -1 && slot.firstSeq <= seq && seq <= slot.lastSeq);
  }

  /**
   * Reads entries `fromSeq`..`toSeq` back from the log files, in order, as they were
   * written: the encoded header (as the mirror's tap saw it) and the payload. The entries
   * must have been written (e.g. after syncTo(toSeq)). Throws LogCorruptError when an
   * entry is missing, damaged, or was overwritten meanwhile (its partition reused).
   * Reads at most `chunkBytes` at a time, so memory stays bounded.
   */
  async *readRange(fromSeq: number, toSeq: number, chunkBytes = SCAN_CHUNK_BYTES): AsyncGenerator<{ seq: number; header: Buffer; payload: Buffer; fields: EntryHeader }> {
    assert(toSeq <= this.appendedSeq, `entry ${toSeq} is not written yet`);
    const slot = this.slotHolding(fromSeq);
    if (slot === undefined) throw new LogCorruptError(`entry ${fromSeq} is no longer in ${this.options.dir}`);
    let generation = slot.generation;
    // Recovery and a start after it place entries from the middle of a partition; what is before them there is not read.
    let offset = slot.firstOffset;
    let expected = slot.firstSeq;
    let chunk: { buffer: Buffer; start: number } = { buffer: Buffer.alloc(0), start: 0 };
    const fail = (what: string): never => {
      throw new LogCorruptError(`${this.where(generation, offset)}: ${what} while reading entries ${fromSeq}..${toSeq} back`);
    };
    const readAt = async (at: number, length: number): Promise<Buffer> => {
      const buffer = Buffer.alloc(length);
      await readFullyAt(this.slotOf(generation).fd, buffer, at, 0, this.options.activity, () => fail('the partition ends early'));
      return buffer;
    };
    while (expected <= toSeq) {
      const current = this.slotOf(generation);
      if (current.generation !== generation) fail(`partition of generation ${generation} was reused`);
      if (expected > current.lastSeq) {
        // The rest is in the next partition, from its start.
        generation += 1;
        offset = this.slotOf(generation).firstOffset;
        chunk = { buffer: Buffer.alloc(0), start: 0 };
        continue;
      }
      if (offset + ENTRY_HEADER_BYTES > chunk.start + chunk.buffer.length) {
        chunk = { buffer: await readAt(offset, Math.min(chunkBytes, this.geometry.partitionBytes - offset)), start: offset };
      }
      const header = chunk.buffer.subarray(offset - chunk.start, offset - chunk.start + ENTRY_HEADER_BYTES);
      const fields = decodeEntryHeader(header);
      if (typeof fields === 'string') return fail(`entry ${expected} is damaged (${fields})`);
      if (fields.seq !== expected || fields.generation !== generation || fields.volumeId !== this.options.volumeId) {
        fail(`found entry ${fields.seq} of generation ${fields.generation} where entry ${expected} should be`);
      }
      const start = offset + ENTRY_HEADER_BYTES;
      const payload =
        start + fields.payloadBytes <= chunk.start + chunk.buffer.length
          ? chunk.buffer.subarray(start - chunk.start, start - chunk.start + fields.payloadBytes)
          : await readAt(start, fields.payloadBytes);
      if (!payloadMatches(fields, payload)) fail(`entry ${expected} payload checksum mismatch`);
      // Still this generation after the reads: the bytes are the entry's, not a reuse's.
      if (this.slotOf(generation).generation !== generation) fail(`partition of generation ${generation} was reused`);
      if (expected >= fromSeq) yield { seq: expected, header: Buffer.from(header), payload: Buffer.from(payload), fields };
      expected += 1;
      offset += alignedEntryBytes(fields.payloadBytes);
    }
  }

  /** The last entry applied to the volume in sequence (all before it are applied too). */
  get appliedThrough(): number {
    return this.appliedSeq;
  }

  /** Reports that entry `seq` has been applied to the volume (or needs no applying). */
  applied(seq: number): void {
    this.positions.delete(seq);
    this.advance(this.appliedAhead, seq, 'applied');
    // Appends wait for log space: a CP can now cover more, and may free it.
    if (this.stallStartedMs !== null && this.appliedSeq > this.cpSeq) this.options.onCheckpointWanted();
  }

  private advance(ahead: Set<number>, seq: number, which: 'appended' | 'applied'): void {
    let mark = which === 'appended' ? this.appendedSeq : this.appliedSeq;
    assert(seq > mark && !ahead.has(seq), `entry ${seq} ${which} twice`);
    ahead.add(seq);
    while (ahead.has(mark + 1)) {
      ahead.delete(mark + 1);
      mark += 1;
    }
    if (which === 'appended') this.appendedSeq = mark;
    else this.appliedSeq = mark;
  }

  private placementPoint(): Position {
    return { generation: this.activeGeneration, offset: this.writeOffset };
  }

  private canPlaceNow(bytes: number): boolean {
    if (this.placeQueue.length > 0) return false;
    return this.writeOffset + bytes <= this.geometry.partitionBytes || this.slotOf(this.activeGeneration + 1).generation === -1;
  }

  /** Reserves room for an entry, in call order; waits when no partition is free. */
  private place(bytes: number, seq: number): Promise<Position> {
    return new Promise((resolve, reject) => {
      this.placeQueue.push({ bytes, seq, place: resolve, abandon: reject });
      this.drainPlaceQueue();
    });
  }

  /**
   * The volume failed while entries wait for room (a full log whose consistency point
   * cannot succeed): they are given up, in order. Each still goes to the tap (the peers
   * get every entry numbered, so that a primary serving from them goes on without a
   * gap), and its write fails with `error`.
   */
  abandonQueued(error: Error): void {
    const queued = this.placeQueue.splice(0);
    for (const entry of queued) entry.abandon(error);
  }

  private drainPlaceQueue(): void {
    while (this.placeQueue.length > 0) {
      const next = this.placeQueue[0];
      assert(next !== undefined);
      if (this.writeOffset + next.bytes > this.geometry.partitionBytes) {
        const following = this.slotOf(this.activeGeneration + 1);
        if (following.generation !== -1) {
          // The next file still holds entries a CP has not covered (or a peer needs). A CP
          // is asked for when the stall starts, and again only while one could cover more:
          // a file kept for a peer is freed by the peer (retainersChanged), not by CPs.
          if (this.stallStartedMs === null) {
            this.stallStartedMs = performance.now();
            this.stalls += 1;
            this.options.onCheckpointWanted();
          } else if (this.appliedSeq > this.cpSeq) {
            this.options.onCheckpointWanted();
          }
          return;
        }
        if (this.stallStartedMs !== null) {
          this.stallMs += performance.now() - this.stallStartedMs;
          this.stallStartedMs = null;
        }
        this.activeGeneration += 1;
        this.writeOffset = 0;
        this.options.onCheckpointWanted();
      }
      this.placeQueue.shift();
      const position = { generation: this.activeGeneration, offset: this.writeOffset };
      this.writeOffset += next.bytes;
      // Claimed now, not when the write starts: the next placement must see this
      // partition as taken.
      this.positions.set(next.seq, position);
      this.recordPlaced(position.generation, next.seq, position.offset);
      next.place(position);
    }
  }

  // ---- durability --------------------------------------------------------------------

  /** Resolves once every entry up to `seq` is durable in the log. */
  syncTo(seq: number): Promise<void> {
    return this.durability.syncTo(seq);
  }

  /**
   * Starts making the log durable up to what is appended, with nobody waiting yet: a
   * flush is expected, and one that comes while this runs waits for it rather than
   * starting its own. `inlineAllowed` once the reply to the write has left: the sync may
   * then run inline like a flush's, when nothing else is in flight on the node. Nothing
   * happens if `seq` is durable or the log is closed.
   */
  syncAhead(seq: number, inlineAllowed: boolean): void {
    if (!this.closed) this.durability.syncAhead(seq, inlineAllowed);
  }

  /** Fault injection for tests: the log's next sync fails with `errno`, as a failing disk would make it. */
  failNextSync(errno: number): void {
    this.durability.failNext(errno);
  }

  // ---- consistency points -------------------------------------------------------------

  /**
   * From now on every entry placed goes to `listener` too, in sequence order, as it is
   * placed (a primary's mirror engine). One listener per log.
   */
  tap(listener: PlacedListener): void {
    assert(this.placedListener === null, 'the log is tapped already');
    this.placedListener = listener;
  }

  /** Registers a check that may keep a partition from being reused (the mirror's peers). */
  addRetainer(retainer: Retainer): void {
    this.retainers.push(retainer);
  }

  /**
   * The mirror engine that tapped the log and kept partitions for its peers stopped (its
   * primary stepped down): its listener and retainer go, so that a later one can start.
   */
  untap(listener: PlacedListener, retainer: Retainer): void {
    if (this.placedListener === listener) this.placedListener = null;
    const index = this.retainers.indexOf(retainer);
    if (index !== -1) this.retainers.splice(index, 1);
  }

  /**
   * Takes a consistency point: makes the volume durable (`syncVolume`) up to every entry
   * applied so far, records it in the superblock, appends a CP entry (a primary's log,
   * stamped by `nextStamp`), and frees the partitions it covers. One runs at a time; a
   * call during one waits for it and runs again.
   */
  checkpoint(nextStamp: () => EntryStamp, syncVolume: () => Promise<void>): Promise<void> {
    // A failed CP is reported to its caller only; the next one starts afresh.
    const previous = this.checkpointing ?? Promise.resolve();
    const next = previous.then(() => this.checkpointOnce(nextStamp, syncVolume));
    const settled: Promise<void> = next.then(
      () => undefined,
      () => undefined,
    );
    this.checkpointing = settled;
    void settled.then(() => {
      if (this.checkpointing === settled) this.checkpointing = null;
    });
    return next;
  }

  private async checkpointOnce(nextStamp: () => EntryStamp, syncVolume: () => Promise<void>): Promise<void> {
    const target = this.appliedSeq;
    if (target === this.cpSeq && this.placeQueue.length === 0) return;
    // Where entry target+1 is, taken now: it is not applied yet, so its position is still
    // known (or it is not placed, and will go at the current placement point).
    let resume = this.positions.get(target + 1) ?? this.placementPoint();
    const startedMs = performance.now();
    await syncVolume();
    // The CP entry tells readers of the log (peers, tools) where the CP fell. When nothing
    // else is in flight it directly follows `target`, and the CP covers it too, so a
    // clean stop leaves nothing to replay. It is written only when it fits at once: a CP
    // must never wait for log space, since freeing log space is what it is for.
    let cpSeq = target;
    if (this.options.replica === undefined && this.canPlaceNow(alignedEntryBytes(0))) {
      const marker = this.append(nextStamp(), EntryType.CONSISTENCY_POINT, { offset: target, lengthBytes: 0, flags: 0 }, []);
      // Placed synchronously by append(): what follows the marker goes here.
      const afterMarker = this.placementPoint();
      await marker.written;
      this.applied(marker.seq);
      if (marker.seq === target + 1 && this.appliedSeq >= marker.seq) {
        cpSeq = marker.seq;
        resume = afterMarker;
      }
    }
    const cpTimeMs = Date.now();
    // The entries this CP lets go of may still have to be named to the primary.
    if (this.trail !== null) this.saveTrail(this.trail);
    // Sessions whose entries may lie after the CP: this one, and earlier ones with entries
    // beyond it (a logship replica applies, and so covers, only up to the primary's CP).
    const logIds = this.logIds.filter((id) => id === this.logId || (this.sessionLastSeq.get(id) ?? 0) > cpSeq);
    const superblock: Superblock = {
      format: 1,
      // Everything before the CP is covered: only this session's entries can follow it.
      logIds,
      volumeUuid: this.options.volumeUuid,
      partitionBytes: this.geometry.partitionBytes,
      partitions: this.geometry.partitions,
      cpSeq,
      cpTimeMs,
      replayGeneration: resume.generation,
      replayOffset: resume.offset,
      ...(this.needsFullResync ? { needsFullResync: true } : {}),
    };
    this.files.replaceFile(path.join(this.options.dir, SUPERBLOCK_FILE), superblockText(superblock), 'log-superblock');
    this.logIds = logIds;
    this.cpSeq = cpSeq;
    this.cpTimeMs = cpTimeMs;
    this.checkpoints += 1;
    this.lastCheckpointMs = Math.round(performance.now() - startedMs);
    this.release();
  }

  /**
   * A replica's log: the primary's consistency point `cpSeq` is durable there, so the
   * entries up to it need no longer be named to it after a crash of its own.
   */
  primaryCheckpointed(cpSeq: number): void {
    this.trail?.trimThrough(cpSeq);
  }

  /**
   * A replica's log: the regions of the entries it stored after `seq` (those a primary
   * that recovered up to `seq` may have lost), or null for "every region".
   */
  entriesAfter(seq: number): TrailExtent[] | null {
    assert(this.trail !== null, 'not a replica log');
    return this.trail.extentsAfter(seq);
  }

  /**
   * A replica's log, about to be made anew for a resync (recreate keeps the trail file):
   * what it named is kept, durably, until the primary's next consistency point.
   */
  keepNamed(named: TrailExtent[] | null, volumeBytes: number): void {
    assert(this.trail !== null, 'not a replica log');
    this.trail.resetTo(named, volumeBytes);
    this.saveTrail(this.trail);
  }

  /** A replica's log: entries up to this one are no longer named (the primary's consistency points trimmed them). */
  get namedAfter(): number {
    assert(this.trail !== null, 'not a replica log');
    return this.trail.trimmedThrough;
  }

  /**
   * A replica's log: entries it holds after this one are not of the history it follows
   * (see ReplicaTrail.divergedAfter), or null. Its READY names it.
   */
  get divergedAfter(): number | null {
    return this.trail?.divergedAfter ?? null;
  }

  /** A replica's log: it now follows a history that holds none of its entries after `seq`; written durably at once. */
  divergesAfter(seq: number): void {
    assert(this.trail !== null, 'not a replica log');
    this.trail.divergesAfter(seq);
    this.saveTrail(this.trail);
  }

  /** Writes the replica trail durably (atomically replaced). */
  private saveTrail(trail: ReplicaTrail): void {
    this.files.replaceFile(path.join(this.options.dir, TRAIL_FILE), trail.encode(), 'trail');
  }

  /** A retainer may have changed its mind: partitions it held may be free now. */
  retainersChanged(): void {
    if (!this.closed) this.release();
  }

  /** Frees every partition the last CP covers, unless a retainer still needs it. */
  private release(): void {
    for (const slot of this.slots) {
      if (slot.generation === -1 || slot.generation === this.activeGeneration) continue;
      if (slot.lastSeq > this.cpSeq) continue;
      const partition = { generation: slot.generation, firstSeq: slot.firstSeq, lastSeq: slot.lastSeq, activeGeneration: this.activeGeneration };
      if (this.retainers.some((retain) => retain(partition))) continue;
      slot.generation = -1;
    }
    this.drainPlaceQueue();
  }

  status(): LogStatus {
    let bytesUsed = 0;
    for (const slot of this.slots) {
      if (slot.generation === -1) continue;
      bytesUsed += slot.generation === this.activeGeneration ? this.writeOffset : this.geometry.partitionBytes;
    }
    return {
      lastSeq: this.lastSeq,
      durableSeq: this.durability.durableSeq,
      cpSeq: this.cpSeq,
      cpTimeMs: this.cpTimeMs,
      bytesUsed,
      partitionBytes: this.geometry.partitionBytes,
      partitions: this.geometry.partitions,
      checkpoints: this.checkpoints,
      syncs: this.durability.syncs(),
      syncsAhead: this.durability.syncsAhead,
      stalls: this.stalls,
      stallMs: Math.round(this.stallMs + (this.stallStartedMs === null ? 0 : performance.now() - this.stallStartedMs)),
      lastCheckpointMs: this.lastCheckpointMs,
      needsFullResync: this.needsFullResync,
    };
  }

  /** True when the superblock's geometry differs from `geometry` (changed in the config). */
  geometryDiffers(geometry: LogGeometry): boolean {
    return geometry.partitionBytes !== this.geometry.partitionBytes || geometry.partitions !== this.geometry.partitions;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    // Waits for a sync that runs: the partitions' descriptors are closed next.
    this.durability.close();
    for (const slot of this.slots) this.files.closeData(slot.fd);
  }
}
