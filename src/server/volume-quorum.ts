// The quorum of the `quorum: majority` volumes a node holds (docs/operations.md, "Quorum
// and witnesses"), from what its heartbeats say (src/core/quorum.ts decides): whether this
// node, as a volume's primary, may acknowledge writes (its QuorumGate asks), whether it
// may be promoted, and which copies hold every acknowledged write: on the primary its
// synced set, which its heartbeats name, and on a secondary the set its primary named last.
//
// Votes bind. Each copy keeps a member record, `<dataDir>/volumes/<name>.promise.json`:
// its newest promise of an epoch, and whether it is still learning (it started on an
// empty data directory and counts for no one until it has heard enough members to know
// the newest epoch). A promotion by the rules stands first (`stand`): this copy promises
// the next epoch to itself, its heartbeats say so, and it waits, for at most two heartbeat
// timeouts, until a majority has promised it that epoch. On every heartbeat a secondary
// judges the candidates it hears (`heard`) and records its promise before its own
// heartbeats name it; a primary that hears of a promise past its epoch steps down (`fence`);
// a HELLO from an older epoch than a promise is refused (`promisedPast`).

import path from 'node:path';
import { quorumMembers, type ClusterConfig, type NodeConfig } from '../control/config.js';
import { BlockmirrorError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import {
  hearsLivePrimary,
  memberHeard,
  newerPromise,
  nextCandidacy,
  promiseFences,
  promotionQuorum,
  writeQuorum,
  type EpochPromise,
  type MemberRecord,
  type MemberView,
  type QuorumCount,
} from '../core/quorum.js';
import type { Clock } from '../io/clock.js';
import type { HeartbeatRole } from '../protocol/heartbeat/datagram.js';
import type { DurableFiles } from '../storage/durable-files.js';
import type { Heartbeats } from './heartbeats.js';
import { QuorumGate } from './quorum-gate.js';
import type { ServedVolume } from './served-volume.js';

/** A member record as its file holds it, or null when the file is damaged. */
export function parseMemberRecord(data: Buffer): MemberRecord | null {
  try {
    const parsed = JSON.parse(data.toString('utf8')) as { promise?: unknown; learning?: unknown };
    if (typeof parsed.learning !== 'boolean') return null;
    if (parsed.promise === null) return { promise: null, learning: parsed.learning };
    const promise = parsed.promise as { epoch?: unknown; to?: unknown } | undefined;
    if (typeof promise?.epoch !== 'number' || !Number.isSafeInteger(promise.epoch) || promise.epoch < 1 || typeof promise.to !== 'string') return null;
    return { promise: { epoch: promise.epoch, to: promise.to }, learning: parsed.learning };
  } catch {
    return null;
  }
}

export function encodeMemberRecord(record: MemberRecord): string {
  return JSON.stringify(record) + '\n';
}

export class VolumeQuorum {
  /** On a secondary: the synced set its primary's heartbeats named last, per volume. */
  private readonly learnedSynced = new Map<string, string[]>();
  /** Each quorum volume's member record (its file holds the same). */
  private readonly records = new Map<string, MemberRecord>();

  constructor(
    private readonly cluster: ClusterConfig,
    private readonly node: NodeConfig,
    private readonly heartbeats: () => Heartbeats | null,
    private readonly files: DurableFiles,
    private readonly log: Logger,
  ) {}

  /**
   * Reads a quorum volume's member record as the node opens it. Without one (an empty data
   * directory) or with a damaged one, a secondary learns first; a primary counts itself and
   * learns nothing (a copy on an empty disk never starts as a primary past the first epoch).
   */
  open(served: ServedVolume): void {
    const { config, volume } = served;
    if (config.quorum !== 'majority') return;
    const data = this.files.read(this.file(served));
    const primary = volume.replica.role === 'primary';
    const read = data === null ? null : parseMemberRecord(data);
    if (data !== null && read === null) this.log.error('member record damaged: this copy counts for no one until it has learned the newest epoch again', { volume: config.name, file: this.file(served) });
    const record = { promise: read?.promise ?? null, learning: !primary && (read?.learning ?? true) };
    if (read === null || read.learning !== record.learning) this.save(served, record);
    else this.records.set(config.name, record);
    if (record.learning) this.log.info('learning the newest epoch from the other members before counting toward the quorum', { volume: config.name });
  }

  private file(served: ServedVolume): string {
    return path.join(served.paths.dir, `${served.config.name}.promise.json`);
  }

  private save(served: ServedVolume, record: MemberRecord): void {
    this.files.replaceFile(this.file(served), encodeMemberRecord(record), 'promise');
    this.records.set(served.config.name, record);
  }

  /** The member record of a quorum volume (a volume without quorum: none). */
  record(name: string): MemberRecord | null {
    return this.records.get(name) ?? null;
  }

  /** What this node's heartbeats name for the volume: its role (learning, while it learns) and its promise. */
  view(served: ServedVolume): { role: HeartbeatRole; promise: EpochPromise | null } {
    const record = this.records.get(served.config.name);
    return { role: record?.learning === true ? 'learning' : served.role, promise: record?.promise ?? null };
  }

  /** The gate of a quorum volume's primary, or null for a volume without quorum. */
  gate(served: ServedVolume, clock: Clock, log: Logger): QuorumGate | null {
    const { config } = served;
    if (config.quorum !== 'majority') return null;
    const { intervalMs } = this.cluster.heartbeat;
    return new QuorumGate(config.name, () => this.write(served), config.onNoQuorum, clock, Math.max(5, Math.floor(intervalMs / 4)), 3 * intervalMs, log);
  }

  private views(name: string): MemberView[] {
    return this.heartbeats()?.memberViews(name) ?? [];
  }

  private get freshMs(): number {
    return this.heartbeats()?.quorumFreshMs ?? 0;
  }

  /** Whether this node, the volume's primary, has a quorum now. */
  write(served: ServedVolume): QuorumCount {
    const { config, volume } = served;
    return writeQuorum(this.node.id, volume.replica.epoch, this.synced(served), quorumMembers(this.cluster, config), this.views(config.name), this.freshMs);
  }

  /**
   * The copies that hold every write the volume's primary acknowledges, as this node's
   * heartbeats name them: on the primary, itself and the replicas streaming in sync (in
   * async or logship mode itself alone); on a secondary, what its primary named last.
   */
  synced(served: ServedVolume): string[] {
    const { config, volume } = served;
    if (volume.replica.role !== 'primary') return this.learnedSynced.get(config.name) ?? [];
    const engine = served.mirrored?.engine;
    const streaming = config.mode !== 'sync' || engine === undefined ? [] : engine.status().filter((peer) => peer.replication === 'streaming' && peer.disk === 'up-to-date').map((peer) => peer.peer);
    return [this.node.id, ...streaming];
  }

  /** A heartbeat of `peer` named `synced` as the volume's primary in `epoch`: kept when it is this copy's primary (and no newer epoch was promised). */
  heardSynced(served: ServedVolume, peer: string, epoch: number, synced: readonly string[]): void {
    if (served.volume.replica.role !== 'secondary' || this.promisedPast(served, epoch) !== null) return;
    const { current } = served.volume.replica.history;
    if (current.epoch === epoch && current.primary === peer) this.learnedSynced.set(served.config.name, [...synced]);
  }

  /** This copy's promise of an epoch newer than `epoch`, or null: an older epoch's primary is stale here. */
  promisedPast(served: ServedVolume, epoch: number): EpochPromise | null {
    return newerPromise(this.records.get(served.config.name)?.promise ?? null, epoch);
  }

  /**
   * Every accepted heartbeat, on a copy that is not the primary: a copy still learning
   * learns the newest epoch once enough members are heard; one that has learned promises
   * its vote to a candidate it would vote for, durably before its heartbeats say so.
   */
  heard(served: ServedVolume): void {
    const { config, volume } = served;
    const record = this.records.get(config.name);
    if (record === undefined || volume.replica.role === 'primary') return;
    const views = this.views(config.name);
    const step = memberHeard(
      record,
      { self: this.node.id, epoch: volume.replica.epoch, role: served.role, hearsLivePrimary: hearsLivePrimary(this.node.id, volume.replica.history.primaryNow, record.promise, views, (node) => this.heartbeats()?.hears(node) === true), echo: this.learnedSynced.get(config.name) ?? [] },
      quorumMembers(this.cluster, config),
      views,
      this.freshMs,
    );
    if (step === null) return;
    this.save(served, step.record);
    this.log.info(step.change, { volume: config.name });
  }

  /** On the primary: a member heard freshly that promised a newer epoch (the primary then steps down), or null. */
  fence(served: ServedVolume): MemberView | null {
    if (served.config.quorum !== 'majority' || served.volume.replica.role !== 'primary') return null;
    return promiseFences(served.volume.replica.epoch, this.views(served.config.name), this.freshMs);
  }

  /** A quorum volume's quorum here: for its primary's writes, or for a promotion of this copy (null without quorum). */
  of(served: ServedVolume, candidacy: number | null = null): (QuorumCount & { reason: string | null }) | null {
    const { config, volume } = served;
    if (config.quorum !== 'majority') return null;
    if (volume.replica.role === 'primary') {
      const count = this.write(served);
      return { ...count, reason: count.ok ? null : `only ${count.have} of ${count.need} needed members reach it` };
    }
    const record = this.records.get(config.name);
    if (record?.learning === true) {
      return { counted: [], have: 0, need: 0, ok: false, reason: `node ${this.node.id} started on an empty data directory and has not yet heard enough members to know the newest epoch` };
    }
    const primary = volume.replica.history.primaryNow;
    return promotionQuorum(
      this.node.id,
      volume.replica.epoch,
      quorumMembers(this.cluster, config),
      this.views(config.name),
      this.freshMs,
      primary,
      primary !== null && this.heartbeats()?.hears(primary) === true,
      this.learnedSynced.get(config.name) ?? [],
      candidacy,
    );
  }

  /** The epoch a forced promotion takes: past every promise this copy knows of, so that the copies that made one follow it. */
  forcedEpoch(served: ServedVolume): number {
    return nextCandidacy(served.volume.replica.epoch, this.records.get(served.config.name)?.promise ?? null, this.views(served.config.name));
  }

  /** The epoch this copy of a quorum volume would stand for next: past every epoch and promise it knows of. */
  candidacy(served: ServedVolume): number {
    const record = this.records.get(served.config.name) ?? { promise: null, learning: false };
    return nextCandidacy(served.volume.replica.epoch, record.promise, this.views(served.config.name));
  }

  /**
   * A promotion by the rules of a quorum volume's copy: it stands for the next epoch (its
   * promise to itself, durable, which its heartbeats then name) and waits until a majority
   * has promised it that epoch: the epoch it is then promoted to. Refused with
   * ERR_NO_QUORUM, the promise kept, when they have not within two heartbeat timeouts.
   */
  async stand(served: ServedVolume, clock: Clock, claimed: number | null = null): Promise<number> {
    const { config, volume } = served;
    const next = this.candidacy(served);
    // An epoch claimed in etcd is stood for as it is, unless a member already promised past it.
    if (claimed !== null && claimed < next) {
      throw new BlockmirrorError('ERR_NO_QUORUM', `volume ${config.name}: node ${this.node.id} claimed epoch ${claimed} in etcd, but a member promised epoch ${next - 1} already`);
    }
    const epoch = claimed ?? next;
    this.save(served, { promise: { epoch, to: this.node.id }, learning: false });
    this.log.info('stands for the next epoch: waiting for a majority to promise it', { volume: config.name, epoch });
    const { intervalMs, timeoutMs } = this.cluster.heartbeat;
    const deadline = clock.nowMs() + 2 * timeoutMs;
    for (;;) {
      // Its own vote is gone once it promised a newer epoch to another candidate meanwhile.
      const own = this.records.get(config.name)?.promise ?? null;
      if (own?.epoch !== epoch || own.to !== this.node.id) {
        throw new BlockmirrorError('ERR_NO_QUORUM', `volume ${config.name}: node ${this.node.id} stood for epoch ${epoch}, but promised epoch ${own?.epoch ?? '?'} to node ${own?.to ?? '?'} meanwhile`);
      }
      const count = this.of(served, epoch);
      if (count?.ok === true) {
        this.log.info('a majority promised the epoch', { volume: config.name, epoch, promised: count.counted.join(', ') });
        return epoch;
      }
      if (clock.nowMs() >= deadline || volume.replica.role !== 'secondary') {
        throw new BlockmirrorError('ERR_NO_QUORUM', `volume ${config.name}: node ${this.node.id} stood for epoch ${epoch}, but no majority promised it within ${2 * timeoutMs} ms: ${count?.reason ?? ''}`);
      }
      await clock.sleep(Math.max(5, Math.floor(intervalMs / 2)));
    }
  }
}
