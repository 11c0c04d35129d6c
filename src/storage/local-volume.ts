// One volume on this node: every change is appended to the volume's write log under a
// sequence number and applied to the volume file, and the client is answered when both
// are done. FLUSH and FUA wait for the log to be durable (one shared fdatasync), not the
// volume file, which consistency points make durable. Every connection to the volume
// shares this object, so a flush covers writes completed on any of them (multi-conn).
//
// What the volume takes, the sequence number of each entry, the order of changes and
// reads on overlapping ranges, and the holds on ranges are decided by the volume's
// ReplicaCore (src/core/replica-core.ts), which this class owns: its local side
// (VolumeCore) is carried out here on the log and the disk; its mirror part is the
// MirrorEngine's or the ReplicaTarget's to carry out (src/server).
// Changes to overlapping ranges are applied to the file in sequence order, so the file
// always matches what replaying the log would produce, and a later mirror applies the
// same writes in the same order. Errors are the disk's own (Node system
// errors); the NBD edge turns them into errno values. A failed apply fails the volume:
// from then on every request gets an error rather than a possibly stale answer (a
// mirrored primary may then serve it from its peers, and `replaceDisk` brings it back).
//
// Why one file of this size: every operation here (changes, reads, replicas' stores,
// resync and verify holds, a replaced disk's fill) goes through the same ordering of
// overlapping ranges and the same holds of the core; apart, each would need them all.

import { assert } from '../lib/assert.js';
import { BlockmirrorError } from '../lib/errors.js';
import type { Disk, DiskExtent } from '../io/disk.js';
import { EntryFlag, EntryType, type EntryHeader } from '../protocol/log-entry.js';
import { FlushPredictor } from '../core/flush-predictor.js';
import type { VolumeCore, VolumeRole } from '../core/volume-core.js';
import { ReplicaCore } from '../core/replica-core.js';
import { EpochHistory } from '../core/epoch-history.js';
import type { PeerEntry } from '../protocol/peer/messages.js';
import { applyEntry, slicePayload, zeroRange } from './apply-entry.js';
import type { EntryStamp, WriteLog } from './write-log.js';
import type { WriteIntent } from './write-intent.js';

export interface ZeroOptions {
  /** The range must stay allocated (NBD_CMD_FLAG_NO_HOLE). */
  noHole: boolean;
  /** Fail with 'slow' rather than writing zeroes (NBD_CMD_FLAG_FAST_ZERO). */
  fast: boolean;
  fua: boolean;
}

export interface VolumeStats {
  readOps: number;
  readBytes: number;
  writeOps: number;
  writeBytes: number;
  zeroOps: number;
  trimOps: number;
  flushOps: number;
  errors: number;
}

export class VolumeFailedError extends BlockmirrorError {
  override name = 'VolumeFailedError';
  constructor(volume: string, cause: unknown) {
    super('ERR_VOLUME_IO', `volume ${volume} failed: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
  }
}

/** Where a mirrored primary's writes may be in flight (WriteIntent): the image is written only once the record holds the range. */
export type IntentRecord = Pick<WriteIntent, 'intend'>;

/** A volume's replica core as a node runs it: mirror frames are buffers, a secondary's entries arrive as ENTRY messages. */
export type VolumeReplicaCore = ReplicaCore<Buffer[], PeerEntry>;

export class LocalVolume {
  /** Every decision about this volume (see replica-core.ts). */
  readonly replica: VolumeReplicaCore;
  /** Its local side, which this class carries out. */
  private readonly core: VolumeCore;
  /** Operations the core holds back, started when it says they may run. */
  private readonly waiting = new Map<number, () => void>();
  private readonly flushExpected = new FlushPredictor();
  /** Set once a mirror takes this volume's entries: every change must then go through the write-intent record. */
  private intentRequired = false;
  /** The write whose log sync starts once its reply has left (a flush is expected), or 0. */
  private syncAfterReply = 0;
  /** The core's holds (a resync or verify reading a range): released when they end. */
  private readonly holds = new Map<number, Promise<void>>();
  private failure: VolumeFailedError | null = null;
  readonly stats: VolumeStats = {
    readOps: 0,
    readBytes: 0,
    writeOps: 0,
    writeBytes: 0,
    zeroOps: 0,
    trimOps: 0,
    flushOps: 0,
    errors: 0,
  };

  constructor(
    readonly name: string,
    private disk: Disk,
    private currentLog: WriteLog,
    private readonly zeroChunkBytes: number,
    role: VolumeRole,
    /** Its epoch history here (volume-files.ts); a new volume's has only epoch 0. */
    history: EpochHistory = EpochHistory.initial(role === 'primary' ? 'this node' : 'its primary'),
  ) {
    this.replica = new ReplicaCore({ lastSeq: currentLog.lastSeq, role, history });
    this.core = this.replica.local;
  }

  get log(): WriteLog {
    return this.currentLog;
  }

  /** Puts a new log, the caller having closed the old one (a resync, a role change), with nothing in flight. */
  replaceLog(log: WriteLog): void {
    this.core.restartAt(log.lastSeq);
    this.currentLog = log;
  }

  /**
   * A replaced disk (`blockmirror attach`): the volume goes on with `disk` and `log` (whose
   * numbers continue where the core's do) and is healthy again; what the new image lacks
   * is filled by the caller (`fillHeld`) before it is read. The failed disk and log are
   * closed (errors from them are of no interest now).
   */
  replaceDisk(disk: Disk, log: WriteLog): void {
    assert(disk.sizeBytes === this.disk.sizeBytes, 'a replaced disk has the volume\'s size');
    assert(log.lastSeq === this.core.lastSeq, `the new log continues after entry ${this.core.lastSeq}, not ${log.lastSeq}`);
    const failed = { disk: this.disk, log: this.currentLog };
    this.disk = disk;
    this.currentLog = log;
    this.failure = null;
    try {
      failed.log.close();
    } catch {
      // The failed log's files may not close cleanly; they are not used again.
    }
    void failed.disk.close().catch(() => undefined);
  }

  /**
   * Writes what `fetch` gives into [offset, offset + lengthBytes) of the image, held as a
   * resync holds a range: changes to it wait before they are logged, and the fetch runs
   * after every change to it logged so far is applied, so the bytes fetched (a peer's, as
   * of the last entry) are the newest and nothing overwrites them with older ones.
   */
  async fillHeld(offset: number, lengthBytes: number, fetch: (data: Buffer) => Promise<void>): Promise<void> {
    const data = Buffer.allocUnsafe(lengthBytes);
    await this.holding(offset, lengthBytes, async () => {
      await this.counted(
        this.inOrder(offset, offset + lengthBytes, async () => {
          await fetch(data);
          await this.disk.write(data, offset);
        }),
      );
    });
  }


  get sizeBytes(): number {
    return this.disk.sizeBytes;
  }

  get failed(): boolean {
    return this.failure !== null;
  }

  async read(offset: number, lengthBytes: number): Promise<Buffer> {
    const buffer = Buffer.allocUnsafe(lengthBytes);
    await this.readInto(buffer, offset);
    return buffer;
  }

  /** Fills `buffer` from `offset`. */
  async readInto(buffer: Buffer, offset: number): Promise<void> {
    this.checkHealthy();
    await this.counted(this.disk.read(buffer, offset));
    this.stats.readOps += 1;
    this.stats.readBytes += buffer.length;
  }

  /** Writes `payload` (slices written back to back) at `offset`; with `fua`, durably. */
  async write(payload: readonly Buffer[], offset: number, fua: boolean): Promise<void> {
    const seq = await this.writeLogged(payload, offset, fua, null);
    if (fua) await this.counted(this.logDurable(seq));
  }

  /**
   * The local part of a write: logged and applied, not yet durable. Returns the last
   * sequence number it logged. A mirrored primary (src/server/mirrored-volume.ts) passes
   * its write-intent record and then waits for the peers and the durability itself.
   */
  async writeLogged(payload: readonly Buffer[], offset: number, fua: boolean, intent: IntentRecord | null): Promise<number> {
    this.checkWritable();
    const total = payload.reduce((sum, slice) => sum + slice.length, 0);
    for (let hold = this.holdOn(offset, offset + total); hold !== null; hold = this.holdOn(offset, offset + total)) await hold;
    const pieceMax = this.log.entryPayloadBytesMax;
    const done: Promise<void>[] = [];
    let lastSeq = 0;
    // A write larger than one log entry may hold becomes several entries.
    for (let start = 0; start < total; start += pieceMax) {
      const length = Math.min(pieceMax, total - start);
      const piece = total <= pieceMax ? [...payload] : slicePayload(payload, start, length);
      const at = offset + start;
      lastSeq = this.logged(EntryType.WRITE, at, length, 0, piece, () => this.disk.writev(piece, at), done, intent);
    }
    await this.counted(Promise.all(done));
    this.stats.writeOps += 1;
    this.stats.writeBytes += total;
    this.flushExpected.wrote();
    this.syncAfterReply = 0;
    if (!fua && this.flushExpected.likely) {
      // A mirrored write is answered only once the peers have it: its sync starts now, on
      // the log's syncer thread, and overlaps that wait.
      if (intent === null) this.syncAfterReply = lastSeq;
      else this.log.syncAhead(lastSeq, false);
    }
    return lastSeq;
  }

  /** Zeroes a range. Returns 'slow' when `fast` was asked and only writing zeroes would do. */
  async writeZeroes(offset: number, lengthBytes: number, options: ZeroOptions): Promise<'done' | 'slow'> {
    const seq = await this.writeZeroesLogged(offset, lengthBytes, options, null);
    if (seq === 'slow') return 'slow';
    if (options.fua) await this.counted(this.logDurable(seq));
    return 'done';
  }

  /** The local part of writeZeroes (see writeLogged): its sequence number, or 'slow'. */
  async writeZeroesLogged(offset: number, lengthBytes: number, options: ZeroOptions, intent: IntentRecord | null): Promise<number | 'slow'> {
    this.checkWritable();
    // Asked before anything is logged, so a refused FAST_ZERO changes nothing.
    if (options.fast && !this.disk.canZeroFast(options.noHole)) return 'slow';
    for (let hold = this.holdOn(offset, offset + lengthBytes); hold !== null; hold = this.holdOn(offset, offset + lengthBytes)) await hold;
    this.stats.zeroOps += 1;
    const flags = options.noHole ? EntryFlag.NO_HOLE : 0;
    const done: Promise<void>[] = [];
    const seq = this.logged(EntryType.ZEROES, offset, lengthBytes, flags, [], () => this.applyZeroes(offset, lengthBytes, options.noHole), done, intent);
    await this.counted(Promise.all(done));
    return seq;
  }

  async trim(offset: number, lengthBytes: number, fua: boolean): Promise<void> {
    const seq = await this.trimLogged(offset, lengthBytes, null);
    if (fua) await this.counted(this.logDurable(seq));
  }

  /** The local part of trim (see writeLogged): its sequence number. */
  async trimLogged(offset: number, lengthBytes: number, intent: IntentRecord | null): Promise<number> {
    this.checkWritable();
    for (let hold = this.holdOn(offset, offset + lengthBytes); hold !== null; hold = this.holdOn(offset, offset + lengthBytes)) await hold;
    this.stats.trimOps += 1;
    const done: Promise<void>[] = [];
    // TRIM is a hint: a disk that cannot punch holes keeps the data, which is allowed.
    const seq = this.logged(EntryType.TRIM, offset, lengthBytes, 0, [], async () => {
      await this.disk.punchHole(offset, lengthBytes);
    }, done, intent);
    await this.counted(Promise.all(done));
    return seq;
  }

  /** Makes every change replied to so far durable in the log. */
  async flush(): Promise<void> {
    await this.counted(this.flushLocal());
  }

  /** A flush's bookkeeping and its local part: resolves once the log is durable through every entry so far. */
  flushLocal(): Promise<void> {
    this.checkHealthy();
    this.stats.flushOps += 1;
    this.flushExpected.flushed();
    this.syncAfterReply = 0;
    return this.logDurable(this.log.lastSeq);
  }

  /**
   * Told by the connection each time replies have left for its client: starts the log
   * sync that a write expecting a flush asked for (see FlushPredictor).
   */
  replied(): void {
    const seq = this.syncAfterReply;
    if (seq === 0) return;
    this.syncAfterReply = 0;
    if (this.failure === null) this.log.syncAhead(seq, true);
  }

  /**
   * Stores an entry received from the volume's primary: appended to this replica's log
   * under the primary's sequence number and, unless `apply` is false (logship), applied
   * to the volume file. Calls come in sequence order.
   */
  replicate(header: EntryHeader, payload: Buffer | readonly Buffer[], apply: boolean): Promise<void> {
    // A failed volume answers with a rejection (the source is told); an entry out of
    // order is a bug, and the log's assertion throws.
    if (this.failure !== null) return Promise.reject(this.failure);
    this.core.acceptSeq(header.seq);
    if (!apply) {
      return this.counted(this.log.appendReplica(header, payload).written);
    }
    const { seq, written } = this.log.appendReplica(header, payload);
    const applied = this.inOrder(header.offset, header.offset + header.lengthBytes, () =>
      applyEntry(this.disk, header, payload, this.zeroChunkBytes),
    );
    return this.counted(
      Promise.all([written, applied]).then(
        () => this.log.applied(seq),
        (error: unknown) => {
          this.fail(error);
          throw error;
        },
      ),
    );
  }

  /**
   * Logs the current contents of [offset, offset + lengthBytes) as a WRITE entry flagged
   * RESYNC and returns its sequence number: the bytes are exactly those every earlier
   * entry leaves there, and no later entry touching the range comes before it. New
   * changes to the range wait (before they are logged) until the entry is placed, and
   * the read runs after every change to the range already logged. The volume is not
   * written: it holds these bytes.
   */
  async logCurrent(offset: number, lengthBytes: number): Promise<{ seq: number; written: Promise<void> }> {
    this.checkHealthy();
    assert(lengthBytes > 0 && lengthBytes <= this.log.entryPayloadBytesMax, 'resync range larger than a log entry');
    return this.whileHeld(offset, lengthBytes, async (data) => {
      const { seq, written } = this.log.append(this.stamp(), EntryType.WRITE, { offset, lengthBytes, flags: EntryFlag.RESYNC }, [data]);
      // Placed (and so ordered) now: later changes to the range may be logged while it is
      // written. The volume already holds these bytes, so written means applied.
      return { seq, written: this.counted(written).then(() => this.log.applied(seq)) };
    });
  }

  /**
   * Reads [offset, offset + lengthBytes) at a moment when every change to it logged so
   * far is applied and none is in flight, and runs `use` with the bytes and the last
   * sequence number logged by then: no entry after that one touches the range until
   * `use` settles, because new changes to it wait (before they are logged) until then.
   * An online verify compares the range with the peers' copies this way.
   */
  async whileHeld<T>(offset: number, lengthBytes: number, use: (data: Buffer, seq: number) => Promise<T>): Promise<T> {
    return this.holding(offset, lengthBytes, async () => {
      const data = Buffer.allocUnsafe(lengthBytes);
      await this.counted(this.inOrder(offset, offset + lengthBytes, () => this.disk.read(data, offset)));
      return use(data, this.log.lastSeq);
    });
  }

  /** Runs `run` holding [offset, offset + lengthBytes) (once no other hold covers part of it): changes to it wait meanwhile. */
  private async holding<T>(offset: number, lengthBytes: number, run: () => Promise<T>): Promise<T> {
    this.checkHealthy();
    assert(lengthBytes > 0 && offset >= 0 && offset + lengthBytes <= this.disk.sizeBytes, 'held range outside the volume');
    const end = offset + lengthBytes;
    for (let other = this.holdOn(offset, end); other !== null; other = this.holdOn(offset, end)) await other;
    let release: () => void = () => undefined;
    const hold = this.core.hold(offset, end);
    this.holds.set(hold, new Promise<void>((resolve) => (release = resolve)));
    try {
      return await run();
    } finally {
      this.core.release(hold);
      this.holds.delete(hold);
      release();
    }
  }


  /**
   * A resync hold on part of [start, end) to wait for, or null. Callers loop until null
   * and then log at once, in the same turn: a wait that always yielded would let a hold
   * begin between the check and the logging.
   */
  private holdOn(start: number, end: number): Promise<void> | null {
    const hold = this.core.heldBy(start, end);
    return hold === null ? null : (this.holds.get(hold) ?? null);
  }

  /**
   * Runs `operation` on [start, end) when the core says it may: after every operation
   * entered before it on an overlapping range has finished (done or failed).
   */
  private inOrder<T>(start: number, end: number, operation: () => Promise<T>): Promise<T> {
    const { id, ready } = this.core.enter(start, end);
    const run = (): Promise<T> => {
      let result: Promise<T>;
      try {
        result = operation();
      } catch (error) {
        result = Promise.reject(error);
      }
      const finished = (): void => {
        for (const next of this.core.finished(id)) {
          const start = this.waiting.get(next);
          assert(start !== undefined, `operation ${next} is not waiting`);
          this.waiting.delete(next);
          start();
        }
      };
      result.then(finished, finished);
      return result;
    };
    if (ready) return run();
    return new Promise<T>((resolve, reject) => this.waiting.set(id, () => void run().then(resolve, reject)));
  }

  /** Applies logged entries up to `seq` that were stored without applying (logship), in order; says how many and their bytes. */
  async applyLoggedThrough(seq: number): Promise<{ entries: number; bytes: number }> {
    this.checkHealthy();
    const applied = { entries: 0, bytes: 0 };
    for (let next = this.log.appliedThrough + 1; next <= seq; next += 1) {
      const { header, payload } = await this.counted(this.log.readEntry(next));
      if (header.type !== EntryType.CONSISTENCY_POINT) applied.entries += 1;
      applied.bytes += header.lengthBytes;
      try {
        await applyEntry(this.disk, header, payload, this.zeroChunkBytes);
      } catch (error) {
        this.fail(error);
        throw error;
      }
      this.log.applied(next);
    }
    return applied;
  }

  /**
   * A consistency point: the volume file durable, the log before it released.
   * `beforeRecorded` runs after the volume file is durable and before the CP is recorded
   * (what must be durable before the log entries it covers are gone: a mirror's bitmaps).
   */
  checkpoint(beforeRecorded: (() => void) | null = null): Promise<void> {
    // A CP queued before the volume failed numbers nothing after it (a primary serving
    // from its peers numbers its entries without this log).
    const stamp = (): EntryStamp => {
      this.checkHealthy();
      return this.stamp();
    };
    return this.log.checkpoint(stamp, async () => {
      this.checkHealthy();
      try {
        await this.disk.sync();
      } catch (error) {
        // As with the log (logDurable): a later sync could succeed without the lost pages,
        // and a CP would then release log entries the volume file does not hold.
        this.fail(error);
        throw error;
      }
      beforeRecorded?.();
    });
  }

  /**
   * Resolves when the log is durable through `seq`. A failed log sync fails the volume:
   * the log cannot promise durability any more (WriteLog.syncTo), so nothing more is
   * served from it.
   */
  logDurable(seq: number): Promise<void> {
    return this.log.syncTo(seq).catch((error: unknown) => {
      this.fail(error);
      throw error;
    });
  }

  /**
   * NBD_CMD_CACHE: reads the start of the range (up to `prefetchBytesMax`) so that it is
   * in the page cache; the data is dropped.
   */
  async prefetch(offset: number, lengthBytes: number, prefetchBytesMax: number): Promise<void> {
    this.checkHealthy();
    const end = offset + Math.min(lengthBytes, prefetchBytesMax);
    const buffer = Buffer.allocUnsafe(Math.min(this.zeroChunkBytes, end - offset));
    for (let at = offset; at < end; at += buffer.length) {
      await this.counted(this.disk.read(buffer.subarray(0, Math.min(buffer.length, end - at)), at));
    }
  }

  extents(offset: number, lengthBytes: number, extentsMax: number): Promise<DiskExtent[]> {
    this.checkHealthy();
    return this.counted(this.disk.extents(offset, lengthBytes, extentsMax));
  }

  close(): Promise<void> {
    this.log.close();
    return this.disk.close();
  }

  /**
   * Appends an entry and applies it to the file in range order; pushes the promise of
   * both onto `done` and returns the sequence number. A failed apply fails the volume.
   */
  private logged(
    type: EntryType,
    offset: number,
    lengthBytes: number,
    flags: number,
    payload: readonly Buffer[],
    apply: () => Promise<void>,
    done: Promise<void>[],
    intentRecord: IntentRecord | null,
  ): number {
    const { seq, written } = this.log.append(this.stamp(), type, { offset, lengthBytes, flags }, payload);
    // A mirrored volume's file is written only where the write-intent record says so.
    assert(intentRecord !== null || !this.intentRequired, 'a mirrored volume changed without its write-intent record');
    const intent = intentRecord?.intend(offset, lengthBytes, seq) ?? null;
    const applied = this.inOrder(offset, offset + lengthBytes, intent === null ? apply : () => intent.then(apply));
    done.push(
      Promise.all([written, applied]).then(
        () => this.log.applied(seq),
        (error: unknown) => {
          this.fail(error);
          throw error;
        },
      ),
    );
    return seq;
  }

  /** The sequence number and epoch of the next entry this node appends. */
  private stamp(): EntryStamp {
    return { seq: this.core.assignSeq(), epoch: this.core.epoch };
  }

  private async applyZeroes(offset: number, lengthBytes: number, noHole: boolean): Promise<void> {
    await zeroRange(this.disk, offset, lengthBytes, noHole, this.zeroChunkBytes);
  }

  private fail(error: unknown): void {
    if (this.failure !== null) return;
    this.failure = new VolumeFailedError(this.name, error);
    // Entries waiting for log room would wait for a consistency point that cannot come.
    this.currentLog.abandonQueued(this.failure);
  }

  /**
   * The disk returned an error to a caller that goes on without it (a mirrored primary
   * serving from its peers): the volume is failed from now on, as if its own write had.
   */
  markFailed(error: unknown): void {
    this.fail(error);
  }

  private checkHealthy(): void {
    if (this.failure !== null) throw this.failure;
  }

  /**
   * From now on every change must name the write-intent record (a mirrored primary's
   * volume, written through src/server/mirrored-volume.ts): a change that does not is a bug.
   */
  requireIntent(): void {
    this.intentRequired = true;
  }

  /** Before a change: the volume is healthy and its replica core takes changes now. */
  checkWritable(): void {
    this.checkHealthy();
    const refusal = this.replica.refusal();
    if (refusal !== null) {
      this.stats.errors += 1;
      throw new BlockmirrorError(refusal.code, `volume ${this.name}: ${refusal.reason}`);
    }
  }

  /** `operation`, with its failure counted in the volume's errors. */
  async counted<T>(operation: Promise<T>): Promise<T> {
    try {
      return await operation;
    } catch (error) {
      this.stats.errors += 1;
      throw error;
    }
  }
}
