// A mirrored volume as its primary serves it to clients: the local volume (storage) and the
// mirror engine joined here, in the server layer, so that storage never calls up into the
// mirror. Whether a change is taken is the volume's ReplicaCore's (`refusal`: a strict
// volume refuses changes while it lacks a replica); its local part runs in LocalVolume
// (logged, applied where the write-intent record allows); its reply waits, in
// MirrorSource, for the log and the peers to hold it as the volume's mode promises; and
// its latency goes to the resync controller. `mirrorPrimary` composes one (node.ts, and
// the crash-point tests).

import type { Disk, DiskExtent } from '../io/disk.js';
import { assert } from '../lib/assert.js';
import { DirtyBitmap } from '../core/dirty-bitmap.js';
import { disklessRefusal } from '../core/diskless.js';
import type { WriteLog } from '../storage/write-log.js';
import { BlockmirrorError } from '../lib/errors.js';
import { EntryFlag, EntryType } from '../protocol/log-entry.js';
import { slicePayload } from '../storage/apply-entry.js';
import type { LocalVolume, ZeroOptions } from '../storage/local-volume.js';
import { MirrorEngine, type MirrorEngineParts } from './mirror-engine.js';
import type { ReplyGate } from './reply-gate.js';

/** What an NBD connection asks of a volume (LocalVolume is one; MirroredVolume another). */
export interface ClientVolume {
  readInto(buffer: Buffer, offset: number): Promise<void>;
  write(payload: readonly Buffer[], offset: number, fua: boolean): Promise<void>;
  writeZeroes(offset: number, lengthBytes: number, options: ZeroOptions): Promise<'done' | 'slow'>;
  trim(offset: number, lengthBytes: number, fua: boolean): Promise<void>;
  flush(): Promise<void>;
  /** Replies have left for a client (a sync expected by a flush may start). */
  replied(): void;
  prefetch(offset: number, lengthBytes: number, prefetchBytesMax: number): Promise<void>;
  extents(offset: number, lengthBytes: number, extentsMax: number): Promise<DiskExtent[]>;
}

export class MirroredVolume implements ClientVolume {
  constructor(
    readonly volume: LocalVolume,
    readonly engine: MirrorEngine,
    /** What a reply passes before it leaves: a `quorum: majority` volume's quorum, an etcd-coordinated one's lease. */
    readonly gate: ReplyGate | null = null,
    /** Lets go of the log once the engine stopped (its tap and retainer), so that another engine can mirror it later. */
    readonly detach: () => void = () => undefined,
    /** Told when the disk failed: the volume went diskless (`refusal` null) or could not, and why (the node logs it). */
    private readonly onDiskless: (reason: string, peers: string[], refusal: string | null) => void = () => undefined,
    /** Taps the volume's current log for the engine (again, once a replaced disk brought a new one). */
    private readonly retap: () => void = () => undefined,
  ) {}

  /** While a replaced disk's image is filled from a peer (`attach`): the regions it does not hold yet. */
  private unfilled: DirtyBitmap | null = null;
  /** While the replaced disk is swapped in: no change is numbered until it is. */
  private swapping: Promise<void> | null = null;
  /** Whether failing requests make the volume diskless (decided once for those that fail together). */
  private disklessDecision: Promise<boolean> | null = null;
  /** What `attach` did and does, for status. */
  attaching: { startedAt: string; totalBytes: number; filledBytes: number; error: string | null } | null = null;

  /** Whether this node's disk failed and the volume is served from its peers. */
  get diskless(): boolean {
    return this.engine.diskless !== null;
  }

  /** Whether [offset, offset + lengthBytes) is not all in the image yet (a disk being attached). */
  private notFilled(offset: number, lengthBytes: number): boolean {
    const unfilled = this.unfilled;
    if (unfilled === null) return false;
    const last = Math.floor((offset + lengthBytes - 1) / unfilled.regionBytes);
    for (let region = Math.floor(offset / unfilled.regionBytes); region <= last; region += 1) if (unfilled.isDirty(region)) return true;
    return false;
  }

  async readInto(buffer: Buffer, offset: number): Promise<void> {
    if (!this.diskless && !this.notFilled(offset, buffer.length)) {
      try {
        return await this.volume.readInto(buffer, offset);
      } catch (error) {
        if (!(await this.goDiskless(error))) throw error;
      }
    }
    await this.volume.counted(this.engine.readFromPeer(buffer, offset));
    this.volume.stats.readOps += 1;
    this.volume.stats.readBytes += buffer.length;
  }

  async write(payload: readonly Buffer[], offset: number, fua: boolean): Promise<void> {
    const startedMs = performance.now();
    if (this.swapping !== null) await this.swapping;
    if (!this.diskless) {
      try {
        this.admit();
        const seq = await this.volume.writeLogged(payload, offset, fua, this.engine.intentRecord);
        return await this.finish(seq, fua, startedMs);
      } catch (error) {
        if (!(await this.goDiskless(error))) throw error;
      }
    }
    const total = payload.reduce((sum, slice) => sum + slice.length, 0);
    const pieceMax = this.volume.log.entryPayloadBytesMax;
    await this.changeDiskless(startedMs, () => {
      let seq = 0;
      for (let start = 0; start < total; start += pieceMax) {
        const length = Math.min(pieceMax, total - start);
        seq = this.engine.placeDiskless(EntryType.WRITE, offset + start, length, 0, total <= pieceMax ? payload : slicePayload(payload, start, length));
      }
      return seq;
    });
    this.volume.stats.writeOps += 1;
    this.volume.stats.writeBytes += total;
  }

  async writeZeroes(offset: number, lengthBytes: number, options: ZeroOptions): Promise<'done' | 'slow'> {
    const startedMs = performance.now();
    if (this.swapping !== null) await this.swapping;
    if (!this.diskless) {
      try {
        this.admit();
        const seq = await this.volume.writeZeroesLogged(offset, lengthBytes, options, this.engine.intentRecord);
        if (seq === 'slow') return 'slow';
        await this.finish(seq, options.fua, startedMs);
        return 'done';
      } catch (error) {
        if (!(await this.goDiskless(error))) throw error;
      }
    }
    // Zeroes are an entry like any other for the peers: as fast as any change.
    await this.changeDiskless(startedMs, () => this.engine.placeDiskless(EntryType.ZEROES, offset, lengthBytes, options.noHole ? EntryFlag.NO_HOLE : 0, []));
    this.volume.stats.zeroOps += 1;
    return 'done';
  }

  async trim(offset: number, lengthBytes: number, fua: boolean): Promise<void> {
    const startedMs = performance.now();
    if (this.swapping !== null) await this.swapping;
    if (!this.diskless) {
      try {
        this.admit();
        const seq = await this.volume.trimLogged(offset, lengthBytes, this.engine.intentRecord);
        return await this.finish(seq, fua, startedMs);
      } catch (error) {
        if (!(await this.goDiskless(error))) throw error;
      }
    }
    await this.changeDiskless(startedMs, () => this.engine.placeDiskless(EntryType.TRIM, offset, lengthBytes, 0, []));
    this.volume.stats.trimOps += 1;
  }

  /** Every change replied to so far made durable, in the log and on the peers that count. */
  async flush(): Promise<void> {
    if (this.swapping !== null) await this.swapping;
    if (!this.diskless) {
      try {
        const local = this.volume.flushLocal();
        await this.volume.counted(this.engine.mirrored(this.engine.lastSeq, true, local));
        await this.gate?.pass();
        return;
      } catch (error) {
        if (!(await this.goDiskless(error))) throw error;
      }
    }
    this.volume.stats.flushOps += 1;
    await this.changeDiskless(performance.now(), () => this.engine.lastSeq);
  }

  replied(): void {
    if (!this.diskless) this.volume.replied();
  }

  prefetch(offset: number, lengthBytes: number, prefetchBytesMax: number): Promise<void> {
    // Diskless, there is no cache of this node's to fill.
    return this.diskless || this.notFilled(offset, lengthBytes) ? Promise.resolve() : this.volume.prefetch(offset, lengthBytes, prefetchBytesMax);
  }

  extents(offset: number, lengthBytes: number, extentsMax: number): Promise<DiskExtent[]> {
    // Diskless, nothing is known of holes here: all of it may hold data.
    return this.diskless || this.unfilled !== null ? Promise.resolve([{ lengthBytes, hole: false }]) : this.volume.extents(offset, lengthBytes, extentsMax);
  }

  /**
   * `blockmirror attach`: a replaced disk under this diskless primary. `open` makes the
   * volume's files anew on it (a log numbering on after `lastSeq`); while it does, no
   * change is numbered. From then on changes are logged and written here again, reads of
   * what the image does not hold yet go to the peers, and every region is filled from an
   * up-to-date peer (held, so that no change overtakes it); once all are, a consistency
   * point makes the image durable and `whole` is called.
   */
  async attach(open: (lastSeq: number) => Promise<{ disk: Disk; log: WriteLog }>, regionBytes: number, whole: () => void): Promise<{ filled: Promise<void> }> {
    assert(this.diskless && this.swapping === null, 'attach: the volume is not diskless');
    const totalBytes = this.volume.sizeBytes;
    let done: () => void = () => undefined;
    this.swapping = new Promise<void>((resolve) => (done = resolve));
    const unfilled = new DirtyBitmap(totalBytes, regionBytes);
    unfilled.markAll();
    try {
      const { disk, log } = await open(this.volume.replica.local.lastSeq);
      this.volume.replaceDisk(disk, log);
      this.retap();
      this.unfilled = unfilled;
      this.attaching = { startedAt: new Date().toISOString(), totalBytes, filledBytes: 0, error: null };
      this.engine.leaveDiskless();
      this.disklessDecision = null;
    } finally {
      this.swapping = null;
      done();
    }
    const attaching = this.attaching;
    const fill = async (): Promise<void> => {
      try {
        for (let region = unfilled.nextDirty(0); region !== -1; region = unfilled.nextDirty(region + 1)) {
          const offset = region * regionBytes;
          const lengthBytes = Math.min(regionBytes, totalBytes - offset);
          await this.volume.fillHeld(offset, lengthBytes, (data) => this.engine.readFromPeer(data, offset));
          unfilled.clear(region);
          if (attaching !== null) attaching.filledBytes += lengthBytes;
        }
        await this.checkpoint();
        whole();
        this.unfilled = null;
      } catch (error) {
        if (attaching !== null) attaching.error = error instanceof Error ? error.message : String(error);
        throw error;
      }
    };
    return { filled: fill() };
  }

  /** Whether the image is whole (no disk being attached is still filled). */
  get filling(): boolean {
    return this.unfilled !== null;
  }

  /**
   * A consistency point: the bitmaps made durable before it is recorded, then the peers
   * told. Diskless, only the peers take it (so that their logs are released).
   */
  async checkpoint(): Promise<void> {
    if (this.diskless) return this.engine.checkpointTaken(this.engine.lastSeq);
    await this.volume.checkpoint(() => this.engine.persistBitmaps());
    this.engine.checkpointTaken(this.volume.log.status().cpSeq);
  }

  /** Before a change: the volume takes it (its replica core's refusal covers a strict volume's missing replica). */
  private admit(): void {
    this.volume.checkWritable();
  }

  /** After the local part of a change that arrived at `startedMs`: its durability, and the peers' part. */
  private async finish(seq: number, durable: boolean, startedMs: number): Promise<void> {
    const local = durable ? this.volume.logDurable(seq) : null;
    await this.volume.counted(this.engine.mirrored(seq, durable, local));
    this.engine.changeDone(performance.now() - startedMs);
    await this.gate?.pass();
    this.engine.replying();
  }

  /**
   * The local part failed with `error`: when it is the disk's, the volume fails, which
   * gives up the entries that waited for log room (they still go to the peers); a turn
   * later the core's rule (disklessRefusal) says whether the volume goes diskless (true:
   * the change is made through the peers instead) or the error stands (false). Requests
   * that fail together share one decision.
   */
  private goDiskless(error: unknown): Promise<boolean> {
    if (this.diskless) return Promise.resolve(true);
    this.disklessDecision ??= this.decideDiskless(error).then((diskless) => {
      if (!diskless) this.disklessDecision = null;
      return diskless;
    });
    return this.disklessDecision;
  }

  private async decideDiskless(error: unknown): Promise<boolean> {
    if (!isDiskError(error) && !this.volume.failed) return false;
    this.volume.markFailed(error);
    await new Promise((resolve) => setImmediate(resolve));
    const peers = this.engine.upToDatePeers();
    const reason = error instanceof Error ? error.message : String(error);
    const refusal = disklessRefusal({ mode: this.engine.mode, numberedSeq: this.volume.replica.local.lastSeq, mirroredSeq: this.engine.lastSeq, upToDatePeers: peers.length });
    this.onDiskless(reason, peers, refusal);
    if (refusal !== null) return false;
    this.engine.goDiskless(reason);
    return true;
  }

  /**
   * A change made through the peers alone: `place` numbers and sends it; the reply waits
   * until they hold it durably, and fails when none does.
   */
  private async changeDiskless(startedMs: number, place: () => number): Promise<void> {
    const refusal = this.volume.replica.refusal();
    if (refusal !== null) throw new BlockmirrorError(refusal.code, `volume ${this.volume.name}: ${refusal.reason}`);
    const seq = place();
    await this.volume.counted(this.engine.mirrored(seq, true, null));
    this.engine.requireHeld(seq);
    this.engine.changeDone(performance.now() - startedMs);
    await this.gate?.pass();
  }
}

/** An error of the disk itself (a system call's), as opposed to a refusal. */
function isDiskError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && ['EIO', 'ENOSPC', 'EROFS', 'EDQUOT', 'ENXIO', 'ENODEV', 'EBADF'].includes(code);
}

/**
 * Makes `volume` (a primary's, just opened) a mirrored one: its mirror engine, which
 * hears of every entry the log places from now on and keeps the log partitions its peers
 * still need. Nothing has been placed since the log opened but the start's consistency
 * point marker, which the engine's start (`lastSeq`) covers.
 */
export function mirrorPrimary(
  volume: LocalVolume,
  parts: Omit<MirrorEngineParts, 'replica' | 'lastSeq' | 'release' | 'regions' | 'entries'>,
  gate: ReplyGate | null = null,
): MirroredVolume {
  const log = volume.log;
  const engine = new MirrorEngine({
    ...parts,
    replica: volume.replica,
    lastSeq: log.lastSeq,
    release: () => log.retainersChanged(),
    regions: volume,
    entries: log,
  });
  const listener: Parameters<typeof log.tap>[0] = (seq, header, payload, fields) => engine.placed(seq, header, payload, fields);
  const retainer: Parameters<typeof log.addRetainer>[0] = (partition) => engine.retains(partition);
  let tapped = log;
  tapped.tap(listener);
  tapped.addRetainer(retainer);
  volume.requireIntent();
  return new MirroredVolume(
    volume,
    engine,
    gate,
    () => tapped.untap(listener, retainer),
    (reason, peers, refusal) =>
      refusal === null
        ? parts.log.error('local disk failed: the volume is served from its peers (diskless)', { reason, peers: peers.join(',') })
        : parts.log.error('local disk failed, and the volume cannot be served from its peers: it fails', { reason, refusal }),
    () => {
      tapped.untap(listener, retainer);
      tapped = volume.log;
      tapped.tap(listener);
      tapped.addRetainer(retainer);
    },
  );
}
