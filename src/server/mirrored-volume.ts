// A mirrored volume as its primary serves it to clients: the local volume (storage) and the
// mirror engine joined here, in the server layer, so that storage never calls up into the
// mirror. Whether a change is taken is the volume's ReplicaCore's (`refusal`: a strict
// volume refuses changes while it lacks a replica); its local part runs in LocalVolume
// (logged, applied where the write-intent record allows); its reply waits, in
// MirrorSource, for the log and the peers to hold it as the volume's mode promises; and
// its latency goes to the resync controller. `mirrorPrimary` composes one (node.ts, and
// the crash-point tests).

import type { DiskExtent } from '../io/disk.js';
import type { LocalVolume, ZeroOptions } from '../storage/local-volume.js';
import { MirrorEngine, type MirrorEngineParts } from './mirror-engine.js';
import type { QuorumGate } from './quorum-gate.js';

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
    /** A `quorum: majority` volume's gate: no reply leaves without a quorum. */
    readonly quorum: QuorumGate | null = null,
    /** Lets go of the log once the engine stopped (its tap and retainer), so that another engine can mirror it later. */
    readonly detach: () => void = () => undefined,
  ) {}

  readInto(buffer: Buffer, offset: number): Promise<void> {
    return this.volume.readInto(buffer, offset);
  }

  async write(payload: readonly Buffer[], offset: number, fua: boolean): Promise<void> {
    const startedMs = performance.now();
    this.admit();
    const seq = await this.volume.writeLogged(payload, offset, fua, this.engine.intentRecord);
    await this.finish(seq, fua, startedMs);
  }

  async writeZeroes(offset: number, lengthBytes: number, options: ZeroOptions): Promise<'done' | 'slow'> {
    const startedMs = performance.now();
    this.admit();
    const seq = await this.volume.writeZeroesLogged(offset, lengthBytes, options, this.engine.intentRecord);
    if (seq === 'slow') return 'slow';
    await this.finish(seq, options.fua, startedMs);
    return 'done';
  }

  async trim(offset: number, lengthBytes: number, fua: boolean): Promise<void> {
    const startedMs = performance.now();
    this.admit();
    const seq = await this.volume.trimLogged(offset, lengthBytes, this.engine.intentRecord);
    await this.finish(seq, fua, startedMs);
  }

  /** Every change replied to so far made durable, in the log and on the peers that count. */
  async flush(): Promise<void> {
    const local = this.volume.flushLocal();
    await this.volume.counted(this.engine.mirrored(this.engine.lastSeq, true, local));
    await this.quorum?.pass();
  }

  replied(): void {
    this.volume.replied();
  }

  prefetch(offset: number, lengthBytes: number, prefetchBytesMax: number): Promise<void> {
    return this.volume.prefetch(offset, lengthBytes, prefetchBytesMax);
  }

  extents(offset: number, lengthBytes: number, extentsMax: number): Promise<DiskExtent[]> {
    return this.volume.extents(offset, lengthBytes, extentsMax);
  }

  /** A consistency point: the bitmaps made durable before it is recorded, then the peers told. */
  async checkpoint(): Promise<void> {
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
    await this.quorum?.pass();
    this.engine.replying();
  }
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
  quorum: QuorumGate | null = null,
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
  log.tap(listener);
  log.addRetainer(retainer);
  volume.requireIntent();
  return new MirroredVolume(volume, engine, quorum, () => log.untap(listener, retainer));
}
