// The roles of the volumes a node holds, and their changes at run time (docs/operations.md,
// "Failover"): which part serves each volume here (a mirror engine on its primary, a
// replica target on a secondary, neither on a primary that stepped down), and the
// changes between them:
//   - `promote`: a secondary becomes the primary in the next epoch. Refused when it may
//     lack writes the primary acknowledged (it was not in sync at its last contact),
//     unless forced; a forced one says what may be lost.
//   - `demote`: the primary steps down: its clients' connections drain and close, a last
//     consistency point goes to the peers, and it takes no writes until it follows the
//     next primary. The same happens when a peer refuses it for a newer epoch (fenced).
//   - a secondary that meets a primary of a newer epoch follows it (ReplicaTarget), and
//     a primary that stepped down becomes its secondary (`attach`).
//   - a split brain (docs/operations.md, "Split brain"): a copy that was a primary finds
//     one when a source's copy went separate ways from it (`attach`), and the policy or
//     `resolve` decides: the loser saves its writes and follows, the winner takes over
//     as the primary (`takeOver`) if it is not.
// (A replaced disk under a copy served from its peers is attach-disk.ts's: no role changes.)
// Whether a HELLO's claim is taken is the core's (`admitsSource`); `check` asks it, for
// the peer server, and words the refusal.
// The decisions about the volume itself are its ReplicaCore's (promotion, demote, learn)
// and the split brain's src/core/split-brain.ts's; the files of each change are
// volume-store.ts's (promoteStorage, demoteStorage, moveReplicaLog), with the history
// made durable at the one point each change commits.
//
// Why one file of this size: every change here moves a volume between the same three
// shapes (mirror engine, replica target, neither) under one guard (`changing`), and the
// split brain's outcomes are those same changes (follow, step down, take over); apart,
// each piece would have to reach into the others' private steps.

import path from 'node:path';
import type { ClusterConfig, NodeConfig, VolumeConfig } from '../control/config.js';
import { assert } from '../lib/assert.js';
import { BlockmirrorError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import { compareCopies, EpochHistory, encodeEpochHistory } from '../core/epoch-history.js';
import { DirtyBitmap } from '../core/dirty-bitmap.js';
import { encodeMirrorRecord, parseMirrorRecord, type MirrorRecord } from '../core/mirror-ledger.js';
import type { Clock } from '../io/clock.js';
import type { StreamLink } from '../io/stream-link.js';
import { RefuseCode } from '../protocol/peer/frames.js';
import type { DurableFiles } from '../storage/durable-files.js';
import type { OpenedVolume } from '../storage/volume-store.js';
import { changedSince, demoteStorage, logDir, logOptionsAt, moveReplicaLog, promoteStorage, restartReplicaLog } from '../storage/volume-store.js';
import { splitBrainDir, splitBrainFileName, writeSplitBrainFile } from '../storage/split-brain-file.js';
import { decideSplitBrain, splitBrainBetween, type SplitBrain } from '../core/split-brain.js';
import { copyForSplitBrain, DiscardRecord, type SplitBrainStatus } from './split-brain.js';
import type { Heartbeats } from './heartbeats.js';
import { VolumeQuorum } from './volume-quorum.js';
import type { Hooks } from './hooks.js';
import { joinGates, type ReplyGate } from './reply-gate.js';
import { mirrorPrimary } from './mirrored-volume.js';
import type { HelloMessage, PeerLink, SplitBrainMessage } from './peer-link.js';
import { encodeFrame, PEER_HISTORY_EPOCHS_MAX } from '../protocol/peer/frames.js';
import { ReplicaTarget } from './replica-target.js';
import { mayLack } from '../core/promotion.js';
import { admitsSource } from '../core/replica-core.js';
import { ContactRecord } from './source-contact.js';
import type { ServedVolume } from './served-volume.js';
import type { DemotionResult, PromotionResult, ResolveResult } from './status.js';

/** What the roles need of the node. */
export interface RoleParts {
  cluster: ClusterConfig;
  node: NodeConfig;
  files: DurableFiles;
  streams: StreamLink;
  clock: Clock;
  log: Logger;
  counters: { peerProtocolErrors: number };
  /** Whether the failure detector trusts the peer now (heartbeats). */
  available: (peer: string) => boolean;
  /** Drains the NBD connections of a volume (in-flight requests finish) and closes them. */
  closeClients: (name: string) => Promise<void>;
  /** The heartbeats, once they run (quorum). */
  heartbeats: () => Heartbeats | null;
  /** The commands run on role changes. */
  hooks: Hooks;
  /** The gate of the lease a primary of `name` holds in etcd (null under static coordination). */
  leaseGate: (name: string) => ReplyGate | null;
}

export class VolumeRoles {
  /** The quorum of the `quorum: majority` volumes here. */
  readonly quorum: VolumeQuorum;

  constructor(
    private readonly parts: RoleParts,
    private readonly volumes: Map<string, ServedVolume>,
  ) {
    this.quorum = new VolumeQuorum(parts.cluster, parts.node, parts.heartbeats, parts.files, parts.log);
  }

  /** The volume as served here, just opened: the mirror engine or the replica target its role asks for. */
  serve(config: VolumeConfig, opened: OpenedVolume, replayed: DirtyBitmap | null): ServedVolume {
    const served: ServedVolume = {
      config,
      identity: opened.identity,
      volume: opened.volume,
      role: opened.role,
      mirrored: null,
      target: null,
      logOptions: opened.logOptions,
      paths: opened.paths,
      changing: null,
      splitBrain: null,
      discard: this.mirroredHere(config) ? new DiscardRecord(this.parts.files, this.parts.node.dataDir, config.name, this.parts.log.child({ volume: config.name })) : null,
    };
    this.quorum.open(served);
    if (opened.role === 'primary' && served.discard?.winner != null) {
      // It lost a split brain and stopped before it stepped down: it takes no writes now.
      const history = opened.volume.replica.history.stepDown();
      this.saveHistory(served, history);
      opened.volume.replica.demote(history);
      served.role = 'secondary';
      this.volumeLog(served).warn('this copy lost a split brain: it starts stepped down, and follows the winner once that connects', { winner: served.discard.winner });
    } else if (opened.role === 'primary' && this.mirroredHere(config)) {
      served.mirrored = this.mirror(served, opened.recovery.lastSeq, replayed);
      if (!served.mirrored.engine.stoppedCleanly) this.restartEpoch(served);
    } else if (opened.role === 'secondary' && opened.logOptions.replica !== undefined) {
      served.target = this.target(served, opened.created);
    }
    return served;
  }

  /**
   * A primary that did not stop cleanly may have lost entries its peers hold (sent before
   * its own write was durable): it restarts its epoch after the last entry it holds, in its
   * history file first, before it numbers a new one (src/core/epoch-history.ts).
   */
  private restartEpoch(served: ServedVolume): void {
    const { volume } = served;
    const restarted = volume.replica.history.restartAfterCrash(this.parts.node.id, volume.log.lastSeq);
    if (restarted === null) return;
    const { firstSeq } = restarted.current;
    this.saveHistory(served, restarted);
    volume.replica.restartEpoch(restarted);
    this.volumeLog(served).warn('primary restarted its epoch after an unclean stop: entries from here on are numbered anew', { epoch: restarted.current.epoch, firstSeq, restart: restarted.current.restart ?? 0 });
  }

  /** Whether the served volume has anything to checkpoint (a primary that stepped down writes nothing). */
  static active(served: ServedVolume): boolean {
    return served.role === 'primary' || served.target !== null;
  }

  private mirroredHere(config: VolumeConfig): boolean {
    return config.mode !== 'local' && config.replicas.length > 1;
  }

  private mirror(served: ServedVolume, recoveredSeq: number, replayed: DirtyBitmap | null): NonNullable<ServedVolume['mirrored']> {
    const { cluster, node, files, clock, streams, counters } = this.parts;
    const gate = joinGates([this.quorum.gate(served, clock, this.volumeLog(served)), this.parts.leaseGate(served.config.name)]);
    return mirrorPrimary(served.volume, {
      cluster,
      local: node,
      volume: served.config,
      recoveredSeq,
      replayed,
      log: this.volumeLog(served),
      counters,
      available: this.parts.available,
      files,
      clock,
      streams,
      stale: (peer, message) => void this.stepDown(served.config.name, `node ${peer} refused it: ${message}`).catch(() => undefined),
      splitBrain: (peer, found) => this.toldSplitBrain(served, peer, found),
    }, gate);
  }

  private target(served: ServedVolume, fresh = false): ReplicaTarget {
    const { config, volume } = served;
    return new ReplicaTarget(
      config,
      volume,
      this.volumeLog(served),
      this.parts.counters,
      (seq) => restartReplicaLog(volume, served.logOptions, seq, config.mode === 'logship'),
      {
        contact: new ContactRecord(this.parts.files, contactFile(served), this.volumeLog(served)),
        fresh,
        follow: async (history) => {
          const commit = (): void => {
            this.saveHistory(served, history);
            volume.replica.learn(history);
          };
          // The new epoch starts after the last entry its primary held: this copy's entries past it are not its.
          const { sharedSeq } = compareCopies({ history: volume.replica.history, lastSeq: volume.log.lastSeq }, { history, lastSeq: history.current.firstSeq - 1 });
          const dir = logDir(this.parts.node.dataDir, config.name, history, this.parts.node.id);
          if (dir === served.logOptions.dir) {
            // The same primary in a newer epoch (promoted again): its per-source log stays.
            if (volume.log.lastSeq > sharedSeq) volume.log.divergesAfter(sharedSeq);
            return commit();
          }
          const to = logOptionsAt(served.logOptions, dir, served.logOptions.replica ?? null);
          await moveReplicaLog(this.parts.files, volume, served.logOptions, to, sharedSeq, commit);
          served.logOptions = to;
        },
      },
    );
  }

  private volumeLog(served: ServedVolume): Logger {
    return this.parts.log.child({ volume: served.config.name });
  }

  private saveHistory(served: ServedVolume, history: EpochHistory): void {
    this.parts.files.replaceFile(served.paths.epochs, encodeEpochHistory(history), 'volume-epochs');
  }

  private served(name: string): ServedVolume {
    const served = this.volumes.get(name);
    if (served === undefined) throw new BlockmirrorError('ERR_UNKNOWN_VOLUME', `node ${this.parts.node.id} holds no volume "${name}"`);
    if (!this.mirroredHere(served.config)) throw new BlockmirrorError('ERR_ROLE_REFUSED', `volume ${name} is not mirrored: it has no other copy to fail over to`);
    if (served.changing !== null) throw new BlockmirrorError('ERR_ROLE_REFUSED', `volume ${name} is changing role already (${served.changing})`);
    return served;
  }

  // ---- promotion -----------------------------------------------------------------------

  /**
   * Why this node's copy of `name` may not be promoted now by the rules (the refusal
   * `promote` throws without `force`), or null when it may: what an automatic failover
   * asks before its copy competes for the volume.
   */
  promotable(name: string): BlockmirrorError | null {
    const served = this.served(name);
    const { volume, config } = served;
    const target = served.target;
    if (served.changing !== null) return new BlockmirrorError('ERR_ROLE_REFUSED', `the copy of ${name} on node ${this.parts.node.id} is changing its role (${served.changing})`);
    if (served.role === 'primary') return new BlockmirrorError('ERR_ROLE_REFUSED', `node ${this.parts.node.id} is the primary of ${name} already (epoch ${volume.replica.epoch})`);
    if (target === null) {
      return new BlockmirrorError('ERR_ROLE_REFUSED', `node ${this.parts.node.id} stepped down as the primary of ${name} in epoch ${volume.replica.epoch}; promote another copy, which it then follows`);
    }
    if (volume.failed) return new BlockmirrorError('ERR_ROLE_REFUSED', `the copy of ${name} on node ${this.parts.node.id} failed: it cannot be the primary`);
    if (volume.log.status().needsFullResync) {
      return new BlockmirrorError('ERR_MAY_LOSE_WRITES', `the copy of ${name} on node ${this.parts.node.id} is inconsistent (it waits for a full resync): it cannot be the primary`);
    }
    if (target.status().session) {
      return new BlockmirrorError('ERR_ROLE_REFUSED', `node ${this.parts.node.id} is streaming from ${target.source}, the primary of ${name}: demote it first (blockmirror demote ${name} --node ${target.source})`);
    }
    const lack = mayLack(config, target.contact, this.parts.node.id);
    if (lack !== null) return new BlockmirrorError('ERR_MAY_LOSE_WRITES', `${lack}; --force promotes it anyway, and those writes are lost`);
    const quorum = this.quorum.of(served);
    if (quorum !== null && !quorum.ok) {
      return new BlockmirrorError('ERR_NO_QUORUM', `volume ${name} has quorum: majority, and node ${this.parts.node.id} has no majority to be promoted with: ${quorum.reason ?? ''}; --force promotes it anyway (two primaries may then take writes)`);
    }
    return null;
  }

  /**
   * Makes this node's copy of `name` the primary in the next epoch (`epoch` when a claim
   * in etcd took it). Refused when the copy may lack acknowledged writes (see `mayLack`)
   * unless `force`; either way only a secondary that follows a primary is promoted.
   */
  async promote(name: string, force: boolean, epoch: number | null = null): Promise<PromotionResult> {
    const served = this.served(name);
    const { volume, config } = served;
    const target = served.target;
    const previous = volume.replica.history;
    const refusal = this.promotable(name);
    // What `force` overrides: a copy that may lack writes, or a quorum volume without a majority.
    if (refusal !== null && !(force && (refusal.code === 'ERR_MAY_LOSE_WRITES' || refusal.code === 'ERR_NO_QUORUM') && !volume.log.status().needsFullResync)) throw refusal;
    assert(target !== null);
    const lack = mayLack(config, target.contact, this.parts.node.id);
    const quorum = this.quorum.of(served);
    if (epoch !== null) assert(epoch > volume.replica.epoch);
    served.changing = 'promotion';
    const log = this.volumeLog(served);
    let committed = false;
    let candidacy: number;
    try {
      // A quorum volume's copy is promoted to the epoch a majority promised it; forced, past every promise it knows of.
      candidacy = quorum === null ? epoch ?? volume.replica.epoch + 1 : force ? this.quorum.forcedEpoch(served) : await this.quorum.stand(served, this.parts.clock, epoch);
    } catch (error) {
      served.changing = null;
      throw error;
    }
    try {
      await target.retire(`promoted to primary of ${name}`);
      // What the per-source trail names (the entries since its old primary's last
      // consistency point) is what other copies that hold at least those before may lack.
      const coveredFrom = volume.log.namedAfter;
      const lacking = volume.log.entriesAfter(coveredFrom);
      const from = served.logOptions;
      const own = logOptionsAt(from, path.join(this.parts.node.dataDir, 'log', name), null);
      let history: EpochHistory | null = null;
      const report = await promoteStorage(this.parts.files, volume, own, from, (lastSeq) => {
        history = volume.replica.promotion(this.parts.node.id, lastSeq, candidacy - 1);
        // The new primary's record: a clean start at its last entry, every peer's bitmap
        // naming the regions of the entries it may lack, and where their histories may part.
        this.writeMirrorStart(served, lastSeq, lastSeq < volume.log.lastSeq ? null : lacking, coveredFrom);
        this.saveHistory(served, history);
        committed = true;
      });
      if (report.damage !== null) log.error('the per-source log is damaged: promoted as of the last entry it could read', { lastSeq: report.lastSeq, lostEntries: report.damage.lostEntries, problem: report.damage.problem });
      assert(history !== null);
      const promoted: EpochHistory = history;
      served.logOptions = own;
      served.target = null;
      volume.replica.promote(promoted);
      served.role = 'primary';
      const mirrored = this.mirror(served, report.lastSeq, null);
      served.mirrored = mirrored;
      mirrored?.engine.start();
      const result: PromotionResult = {
        volume: name,
        node: this.parts.node.id,
        epoch: promoted.current.epoch,
        firstSeq: promoted.current.firstSeq,
        previousPrimary: previous.current.primary,
        appliedEntries: report.appliedEntries,
        appliedBytes: report.appliedBytes,
        sourceLogDamage: report.damage === null ? null : `${report.damage.problem}; the ${report.damage.lostEntries} entries from ${report.lastSeq + 1} on are lost`,
        mayLack: lack,
      };
      log.warn('promoted to primary', { ...result, mayLack: lack ?? 'nothing', sourceLogDamage: result.sourceLogDamage ?? 'none' });
      this.parts.hooks.fire('promoted', { volume: name, node: this.parts.node.id, epoch: result.epoch, role: 'primary' });
      return result;
    } catch (error) {
      if (!committed) {
        // Nothing changed on disk that a start would read: the copy goes on as a secondary.
        target.resume();
        log.error('promotion failed; still a secondary', { error: String(error) });
        throw error;
      }
      log.error('promotion failed after its epoch was written: restart the node, which starts as the primary', { error: String(error) });
      throw new BlockmirrorError('ERR_VOLUME_IO', `promotion of ${name} failed after its new epoch was written (${String(error)}): restart node ${this.parts.node.id}, which starts as the primary`);
    } finally {
      served.changing = null;
    }
  }

  /**
   * Why this node's copy of `name`, a primary that stepped down and follows no one yet,
   * may not take the volume back now, or null when it may: what a claim in etcd asks
   * before such a copy competes. (Whether it holds every acknowledged write is etcd's to
   * say: the copy must be the last one that claimed, and its synced set must name it.)
   */
  resumable(name: string): BlockmirrorError | null {
    const served = this.served(name);
    const { volume } = served;
    if (served.changing !== null) return new BlockmirrorError('ERR_ROLE_REFUSED', `the copy of ${name} on node ${this.parts.node.id} is changing its role (${served.changing})`);
    if (served.role !== 'secondary' || served.target !== null || served.mirrored !== null || !this.mirroredHere(served.config)) {
      return new BlockmirrorError('ERR_ROLE_REFUSED', `node ${this.parts.node.id} is not a primary of ${name} that stepped down`);
    }
    if (volume.replica.history.current.primary !== this.parts.node.id || served.discard?.winner != null) {
      return new BlockmirrorError('ERR_ROLE_REFUSED', `node ${this.parts.node.id} was not the last primary of ${name}, or lost a split brain`);
    }
    if (volume.failed) return new BlockmirrorError('ERR_ROLE_REFUSED', `the copy of ${name} on node ${this.parts.node.id} failed: it cannot be the primary`);
    if (volume.log.status().needsFullResync) return new BlockmirrorError('ERR_MAY_LOSE_WRITES', `the copy of ${name} on node ${this.parts.node.id} is inconsistent: it cannot be the primary`);
    return null;
  }

  /**
   * A primary that stepped down takes its volume back in `epoch` (a claim in etcd gave
   * it): from its own log, which holds every write it acknowledged, with the mirror state
   * its step down left, as after a clean stop.
   */
  async resume(name: string, epoch: number): Promise<PromotionResult> {
    const served = this.served(name);
    const { volume, config } = served;
    const refusal = this.resumable(name);
    if (refusal !== null) throw refusal;
    assert(epoch > volume.replica.epoch);
    const previous = volume.replica.history;
    served.changing = 'promotion';
    try {
      if (config.quorum === 'majority') await this.quorum.stand(served, this.parts.clock, epoch);
      const history = volume.replica.promotion(this.parts.node.id, volume.log.lastSeq, epoch - 1);
      this.saveHistory(served, history);
      volume.replica.promote(history);
      served.role = 'primary';
      served.mirrored = this.mirror(served, volume.log.lastSeq, null);
      served.mirrored?.engine.start();
      const result: PromotionResult = {
        volume: name,
        node: this.parts.node.id,
        epoch: history.current.epoch,
        firstSeq: history.current.firstSeq,
        previousPrimary: previous.current.primary,
        appliedEntries: 0,
        appliedBytes: 0,
        sourceLogDamage: null,
        mayLack: null,
      };
      this.volumeLog(served).warn('took the volume back as the primary', { epoch: result.epoch, firstSeq: result.firstSeq });
      this.parts.hooks.fire('promoted', { volume: name, node: this.parts.node.id, epoch: result.epoch, role: 'primary' });
      return result;
    } finally {
      served.changing = null;
    }
  }

  /** The mirror state a promoted node starts from (see MirrorLedger): written before its engine reads it. */
  private writeMirrorStart(served: ServedVolume, lastSeq: number, lacking: { offset: number; lengthBytes: number }[] | null, coveredFrom: number): void {
    const { config } = served;
    const peers = config.replicas.filter((id) => id !== this.parts.node.id);
    const dir = path.join(this.parts.node.dataDir, 'mirror');
    const files = this.parts.files;
    files.makeDir(dir, 'mirror-state');
    const bitmap = new DirtyBitmap(config.sizeBytes, this.parts.cluster.resync.regionBytes);
    if (lacking === null) bitmap.markAll();
    for (const extent of lacking ?? []) bitmap.mark(extent.offset, extent.lengthBytes);
    for (const peer of peers) files.replaceFile(path.join(dir, `${config.name}.${peer}.bitmap`), bitmap.encode(), 'bitmap');
    const record: MirrorRecord = {
      cleanStopSeq: lastSeq,
      resyncNeeded: [],
      divergedAfter: Object.fromEntries(peers.map((peer) => [peer, lastSeq])),
      bitmapFrom: Object.fromEntries(peers.map((peer) => [peer, coveredFrom])),
    };
    files.replaceFile(path.join(dir, `${config.name}.json`), encodeMirrorRecord(record), 'mirror-state');
  }

  // ---- demotion ------------------------------------------------------------------------

  /** The primary of `name` steps down by command (see `stepDown`). */
  async demote(name: string): Promise<DemotionResult> {
    const served = this.served(name);
    if (served.volume.replica.role !== 'primary') {
      const primary = served.volume.replica.history.primaryNow;
      throw new BlockmirrorError('ERR_ROLE_REFUSED', `node ${this.parts.node.id} is not the primary of ${name} (${primary === null ? 'no node is, since its primary stepped down' : `${primary} is`})`);
    }
    return this.stepDown(name, 'demoted by command');
  }

  /**
   * The primary of `name` steps down: no new writes are taken, its clients' connections
   * drain and close, a last consistency point goes to the peers, and its history says it
   * stepped down. It takes writes again only if promoted; it follows the next primary
   * once that one connects (`attach`).
   */
  async stepDown(name: string, reason: string): Promise<DemotionResult> {
    const served = this.volumes.get(name);
    assert(served !== undefined);
    const { volume } = served;
    if (volume.replica.role !== 'primary' || served.changing !== null) return { volume: name, node: this.parts.node.id, epoch: volume.replica.epoch, lastSeq: volume.log.lastSeq };
    served.changing = 'demotion';
    const log = this.volumeLog(served);
    log.warn('stepping down as the primary', { reason });
    try {
      // No new clients (the catalog refuses a secondary's export), and the connected ones
      // drain: their in-flight requests finish before they close (those a quorum gate
      // holds fail). A step down that failed part way (see waitUntil) is taken up again
      // from where it stopped.
      served.role = 'secondary';
      served.mirrored?.gate?.close('its primary stepped down');
      await this.parts.closeClients(name);
      const mirrored = served.mirrored;
      if (mirrored !== null) {
        let clean = false;
        try {
          if (!volume.failed) {
            await mirrored.checkpoint();
            clean = true;
          }
        } catch (error) {
          log.error('consistency point failed while stepping down', { error: String(error) });
        }
        await mirrored.engine.stop(clean ? volume.log.lastSeq : null);
        mirrored.detach();
        served.mirrored = null;
      }
      await waitUntil(() => volume.replica.local.idle, 10_000, `the running operations of ${name} to end`);
      const history = volume.replica.history.stepDown();
      this.saveHistory(served, history);
      volume.replica.demote(history);
      const result = { volume: name, node: this.parts.node.id, epoch: history.current.epoch, lastSeq: volume.log.lastSeq };
      log.warn('stepped down: no longer the primary', { ...result, reason });
      this.parts.hooks.fire('demoted', { volume: name, node: this.parts.node.id, epoch: result.epoch, role: 'secondary' });
      return result;
    } finally {
      served.changing = null;
    }
  }

  /**
   * A copy that was the primary (stepped down, or fenced) becomes a secondary of the
   * primary of `history`, a newer epoch: its own log gives way to a per-source log whose
   * trail names the regions of every entry it holds past the last one the new primary
   * shares with it, so that they are resent from there. A copy that discards its writes
   * after a split brain (`discard`: where it parts from the winner) saves them first.
   */
  private async follow(served: ServedVolume, history: EpochHistory, discard: { sharedSeq: number } | null = null): Promise<void> {
    if (served.volume.replica.role === 'primary') await this.stepDown(served.config.name, `node ${history.current.primary} is primary in epoch ${history.current.epoch}`);
    const { volume, config } = served;
    const mine = volume.replica.history;
    // The new primary's epoch started after the last entry it held: nothing of this copy past it is the new primary's.
    const sharedSeq = discard?.sharedSeq ?? compareCopies({ history: mine, lastSeq: volume.log.lastSeq }, { history, lastSeq: history.current.firstSeq - 1 }).sharedSeq;
    served.changing = 'following';
    const log = this.volumeLog(served);
    try {
      const to = logOptionsAt(served.logOptions, logDir(this.parts.node.dataDir, config.name, history, this.parts.node.id), { deferApply: config.mode === 'logship' });
      // What its mirror ledger said the new primary may lack: writes in its image whose
      // entries a crash lost, entries placed while that node was away.
      const mayDiffer = this.peerBitmap(config, history.current.primary);
      if (discard !== null) await this.saveDiscarded(served, history.current.primary, sharedSeq, mayDiffer);
      await demoteStorage(this.parts.files, volume, served.logOptions, to, sharedSeq, mayDiffer, () => {
        this.saveHistory(served, history);
        volume.replica.learn(history, discard !== null);
      });
      served.logOptions = to;
      // The core steps down into the history it now follows.
      served.target = this.target(served);
      if (discard !== null) {
        served.discard?.clear();
        log.warn('split brain resolved: this copy discarded its writes and follows the winner', { winner: history.current.primary, sharedSeq, saved: served.splitBrain?.saved ?? 'nothing' });
        served.splitBrain = null;
      }
      log.warn('following a new primary', { primary: history.current.primary, epoch: history.current.epoch, sharedSeq, lastSeq: volume.log.lastSeq });
    } finally {
      served.changing = null;
    }
  }

  // ---- split brain ---------------------------------------------------------------------

  /**
   * Saves what this copy holds past `sharedSeq` (the regions its entries and its ledger's
   * bitmap name, as they are in its image) to `<dataDir>/split-brain/<volume>-<epoch>.log`,
   * before they are resynced from the winner.
   */
  private async saveDiscarded(served: ServedVolume, winner: string, sharedSeq: number, mayDiffer: DirtyBitmap | null): Promise<void> {
    const { volume, config, identity } = served;
    const regionBytes = this.parts.cluster.resync.regionBytes;
    const regions = await this.changedRegions(served, sharedSeq, mayDiffer);
    const extents: { offset: number; lengthBytes: number }[] = [];
    for (let region = regions.nextDirty(0); region !== -1; region = regions.nextDirty(region + 1)) {
      const offset = region * regionBytes;
      const last = extents[extents.length - 1];
      const lengthBytes = Math.min(regionBytes, config.sizeBytes - offset);
      if (last !== undefined && last.offset + last.lengthBytes === offset) last.lengthBytes += lengthBytes;
      else extents.push({ offset, lengthBytes });
    }
    const epoch = splitEpoch(volume.replica.history, this.parts.node.id, sharedSeq);
    const file = path.join(splitBrainDir(this.parts.node.dataDir), splitBrainFileName(config.name, epoch));
    const saved = await writeSplitBrainFile(
      this.parts.files,
      file,
      {
        volume: config.name,
        volumeId: Number.parseInt(identity.uuid.slice(0, 8), 16),
        node: this.parts.node.id,
        winner,
        epoch,
        sharedSeq,
        lastSeq: volume.log.lastSeq,
        savedAt: new Date().toISOString(),
        what: regions.dirtyRegions === regions.regions
          ? 'every region of the volume as this copy held it (it could not name fewer it may have changed)'
          : 'the regions this copy changed after the entry it shares with the winner, as this copy held them',
      },
      extents,
      (offset, lengthBytes) => volume.read(offset, lengthBytes),
    );
    if (served.splitBrain !== null) served.splitBrain.saved = saved.path;
    this.volumeLog(served).warn('split brain: this copy\'s writes since the split are saved before they are discarded', { file: saved.path, records: saved.records, bytes: saved.bytes, winner });
  }

  /** What this node's mirror ledger said `peer` may lack (its bitmap file), or null when there is none. */
  private peerBitmap(config: VolumeConfig, peer: string): DirtyBitmap | null {
    const bitmap = this.parts.files.read(path.join(this.parts.node.dataDir, 'mirror', `${config.name}.${peer}.bitmap`));
    return bitmap === null ? null : DirtyBitmap.decode(bitmap, config.sizeBytes, this.parts.cluster.resync.regionBytes);
  }

  /** The regions this copy may hold differently from one that shares every entry through `sharedSeq` (all of them when it cannot name them). */
  private async changedRegions(served: ServedVolume, sharedSeq: number, mayDiffer: DirtyBitmap | null): Promise<DirtyBitmap> {
    const changed = await changedSince(served.volume, sharedSeq, mayDiffer);
    const regions = new DirtyBitmap(served.config.sizeBytes, this.parts.cluster.resync.regionBytes);
    if (changed === null) regions.markAll();
    for (const extent of changed ?? []) regions.mark(extent.offset, extent.lengthBytes);
    return regions;
  }

  /** What this copy is, for finding a split brain with another. */
  private copyOf(served: ServedVolume): ReturnType<typeof copyForSplitBrain> {
    return copyForSplitBrain(this.parts.node, served.config, served.volume.replica.history, served.volume.log.lastSeq, this.parts.files);
  }

  /** The split brain between this copy and a source's claim, or null. */
  private splitWith(served: ServedVolume, hello: HelloMessage): { found: SplitBrain; theirs: EpochHistory } | null {
    const theirs = EpochHistory.from(hello.history);
    if (!(theirs instanceof EpochHistory)) return null;
    const joined = served.volume.replica.history.knowsEpochOf(theirs) ? served.volume.replica.history.joinedWith(theirs) : theirs;
    const found = splitBrainBetween(this.copyOf(served), { node: hello.fromNode, history: joined, lastSeq: hello.lastSeq });
    return found === null ? null : { found, theirs: joined };
  }

  /** Notes a split brain with `peer` (a log line when it is new or changed), as `status` and the metrics show it. */
  private noteSplitBrain(served: ServedVolume, next: Omit<SplitBrainStatus, 'since' | 'saved'>): void {
    const before = served.splitBrain;
    const same = before !== null && before.peer === next.peer && before.sharedSeq === next.sharedSeq && before.decision === next.decision && before.here.entries === next.here.entries && before.other.entries === next.other.entries;
    if (same) return;
    served.splitBrain = { ...next, since: before?.peer === next.peer ? before.since : new Date().toISOString(), saved: before?.saved ?? null };
    if (before?.peer !== next.peer) {
      this.parts.hooks.fire('splitBrain', { volume: served.config.name, node: this.parts.node.id, epoch: served.volume.replica.epoch, role: served.volume.replica.role, peer: next.peer });
    }
    this.volumeLog(served).error('split brain: the copies went separate ways, each with writes the other lacks', {
      peer: next.peer,
      sharedSeq: next.sharedSeq,
      entriesHere: next.here.entries,
      entriesThere: next.other.entries,
      decision: next.decision,
      by: next.by,
    });
  }

  /** The source's side: a peer found a split brain (or, with null, took a session: none with it now). */
  private toldSplitBrain(served: ServedVolume, peer: string, found: SplitBrainMessage | null): void {
    if (found === null) {
      if (served.splitBrain?.peer === peer) served.splitBrain = null;
      return;
    }
    const decision = found.decision === 'discard-source' ? 'discard-here' : 'disconnect';
    const { volume } = served;
    const theirs = EpochHistory.from(found.history);
    this.noteSplitBrain(served, {
      peer,
      sharedSeq: found.sharedSeq,
      here: { entries: found.sourceEntries, bytes: null, epoch: splitEpoch(volume.replica.history, this.parts.node.id, found.sharedSeq) },
      other: { entries: found.targetEntries, bytes: found.targetBytes, epoch: theirs instanceof EpochHistory ? theirs.epochOf(found.sharedSeq + 1).epoch : found.epoch },
      peerEpoch: found.epoch,
      decision,
      by: decision === 'discard-here' ? `afterSplitBrain: ${served.config.afterSplitBrain}` : 'nobody yet',
    });
    if (decision !== 'discard-here' || served.discard === null || served.discard.winner === peer) return;
    // The peer's copy wins: this one stops taking writes at once, and follows it (saving its own) once it connects.
    served.discard.set(peer, `afterSplitBrain: ${served.config.afterSplitBrain}`, new Date());
    void this.stepDown(served.config.name, `split brain with node ${peer}: its copy wins`).catch(() => undefined);
  }

  /**
   * This copy wins a split brain over `peer`'s: if it is not the primary, it becomes the
   * primary again in an epoch above every one it knows of (the loser's included), with
   * the loser's entries past `sharedSeq` counted as diverged, so that the loser follows it.
   */
  private async takeOver(served: ServedVolume, peer: string, sharedSeq: number, aboveEpoch: number): Promise<void> {
    const { volume, config } = served;
    if (served.changing !== null) return;
    if (volume.replica.role === 'primary') {
      if (volume.replica.epoch > aboveEpoch) return;
      // A primary in an epoch the loser's line has passed: it begins one above it.
      await this.stepDown(config.name, `split brain with node ${peer}: this copy wins, in a new epoch`);
    }
    if (served.target !== null) throw new BlockmirrorError('ERR_ROLE_REFUSED', `node ${this.parts.node.id} follows ${served.target.source} for ${config.name}: promote it to win the split brain (blockmirror promote ${config.name} --node ${this.parts.node.id})`);
    served.changing = 'promotion';
    try {
      const history = volume.replica.promotion(this.parts.node.id, volume.log.lastSeq, aboveEpoch);
      const stateFile = path.join(this.parts.node.dataDir, 'mirror', `${config.name}.json`);
      const data = this.parts.files.read(stateFile);
      if (data !== null) {
        // Its entries past the shared one are not the loser's: named at its reset.
        const record = parseMirrorRecord(data);
        record.divergedAfter[peer] = Math.min(record.divergedAfter[peer] ?? sharedSeq, sharedSeq);
        this.parts.files.replaceFile(stateFile, encodeMirrorRecord(record), 'mirror-state');
      }
      this.saveHistory(served, history);
      volume.replica.promote(history);
      served.role = 'primary';
      served.mirrored = this.mirror(served, volume.log.lastSeq, null);
      served.mirrored?.engine.start();
      this.volumeLog(served).warn('split brain: this copy wins, and takes writes again as the primary', { loser: peer, epoch: history.current.epoch, firstSeq: history.current.firstSeq });
    } finally {
      served.changing = null;
    }
  }

  /**
   * `blockmirror resolve VOLUME --discard NODE`, as each of the two nodes carries it out:
   * on NODE, its copy's writes since the split are to be discarded (it steps down if it is
   * the primary, and follows the winner, saving them, once that connects); on the winner,
   * its copy becomes the primary if it is not.
   */
  async resolve(name: string, discard: string): Promise<ResolveResult> {
    const served = this.served(name);
    const split = served.splitBrain;
    const here = this.parts.node.id;
    if (split === null) throw new BlockmirrorError('ERR_ROLE_REFUSED', `node ${here} found no split brain of ${name}`);
    if (discard !== here && discard !== split.peer) {
      throw new BlockmirrorError('ERR_ROLE_REFUSED', `the split brain of ${name} on node ${here} is with node ${split.peer}, not ${discard}`);
    }
    const by = 'blockmirror resolve';
    if (discard === here) {
      served.discard?.set(split.peer, by, new Date());
      served.splitBrain = { ...split, decision: 'discard-here', by };
      if (served.volume.replica.role === 'primary') await this.stepDown(name, `split brain with node ${split.peer}: discarded by command`);
      return { volume: name, node: here, discards: true, winner: split.peer };
    }
    served.splitBrain = { ...split, decision: 'discard-other', by };
    await this.takeOver(served, split.peer, split.sharedSeq, split.peerEpoch);
    return { volume: name, node: here, discards: false, winner: here };
  }

  // ---- the peer server's questions ------------------------------------------------------

  /**
   * Whether a HELLO for `name` may go on to authentication: its source must be the
   * primary of the epoch it names, which may be the one this copy knows or a newer one
   * whose history holds this copy's epoch unchanged (a promotion elsewhere). A source in
   * an older epoch is told it is stale (it steps down). A source whose copy went separate
   * ways goes on when this copy discards its writes in its favour, or when the two may be
   * in split brain (found once it authenticated, in `attach`).
   */
  check(name: string, hello: HelloMessage): { code: RefuseCode; message: string } | null {
    const served = this.volumes.get(name);
    if (served === undefined || served.changing !== null && served.changing !== 'following') {
      return { code: RefuseCode.STATE, message: `volume ${name} is not open on node ${this.parts.node.id}${served?.changing == null ? '' : ` (its ${served.changing} is under way)`}` };
    }
    const verdict = served.volume.replica.judgeSource(hello.fromNode, hello.history);
    const here = this.parts.node.id;
    const winner = served.target === null && served.discard?.winner === hello.fromNode;
    // A copy that promised a newer epoch takes no session of an older one's primary (src/core/quorum.ts).
    const promised = this.quorum.promisedPast(served, hello.epoch);
    if (promised !== null && !winner) {
      const to = promised.to === '' ? 'learned on its empty data directory' : `promised to node ${promised.to}`;
      return { code: RefuseCode.STALE_EPOCH, message: `volume ${name}: node ${hello.fromNode} is primary in epoch ${hello.epoch}, but node ${here} knows of epoch ${promised.epoch} (${to})` };
    }
    if (admitsSource(verdict, { following: served.target !== null, winner, splitFound: () => this.splitWith(served, hello) !== null })) return null;
    switch (verdict.kind) {
      case 'current':
      case 'newer':
        return null;
      case 'impossible':
        return { code: RefuseCode.EPOCH, message: `volume ${name}: node ${hello.fromNode} sent an impossible history (${verdict.problem})` };
      case 'names-another':
        return { code: RefuseCode.EPOCH, message: `volume ${name}: node ${hello.fromNode} claims epoch ${hello.epoch}, whose primary its own history says is ${verdict.primary}` };
      case 'stale': {
        const { epoch, primary, firstSeq } = verdict.known;
        return { code: RefuseCode.STALE_EPOCH, message: `volume ${name}: node ${hello.fromNode} is primary in epoch ${hello.epoch}, but node ${here} knows epoch ${epoch} (primary ${primary} from entry ${firstSeq})` };
      }
      case 'not-its-primary':
        return { code: RefuseCode.EPOCH, message: `volume ${name}: node ${hello.fromNode} is not the primary of epoch ${verdict.known.epoch}, node ${verdict.known.primary} is` };
      case 'primary-here':
        return { code: RefuseCode.ROLE, message: `node ${here} does not follow a primary of ${name}: it is its primary in epoch ${verdict.known.epoch}` };
      case 'separate-ways': {
        const { epoch, primary, firstSeq } = verdict.known;
        return {
          code: RefuseCode.EPOCH,
          message: `volume ${name}: node ${hello.fromNode}'s history (epoch ${hello.epoch}) does not hold epoch ${epoch} that node ${here} is in (primary ${primary} from entry ${firstSeq}): the copies went separate ways`,
        };
      }
    }
  }

  /**
   * An authenticated source's connection for `name` (check passed): to the replica target,
   * after this copy stopped being a primary when the source is a newer epoch's. A copy
   * that was a primary first looks for a split brain with the source (its own writes past
   * their shared entry that the source lacks and that may have been acknowledged): then
   * the volume's policy decides; the source is told in SPLIT_BRAIN unless this copy is
   * the one to discard, which it then does.
   */
  attach(name: string, hello: HelloMessage, link: PeerLink): void {
    const served = this.volumes.get(name);
    if (served === undefined) {
      link.close('volume went away');
      return;
    }
    if (served.target !== null) {
      if (served.splitBrain?.peer === hello.fromNode) served.splitBrain = null;
      served.target.attach(hello, link);
      return;
    }
    const verdict = served.volume.replica.judgeSource(hello.fromNode, hello.history);
    const split = this.splitWith(served, hello);
    let discard: { sharedSeq: number } | null = null;
    let history = verdict.kind === 'newer' ? verdict.history : null;
    if (split !== null && served.changing === null) {
      const { found } = split;
      const decision = served.discard?.winner === hello.fromNode ? 'discard-here' : decideSplitBrain(served.config.afterSplitBrain, found);
      const by = served.discard?.winner === hello.fromNode ? served.discard.by : `afterSplitBrain: ${served.config.afterSplitBrain}`;
      this.noteSplitBrain(served, {
        peer: hello.fromNode,
        sharedSeq: found.sharedSeq,
        here: { entries: found.hereEntries, bytes: null, epoch: found.hereEpoch },
        other: { entries: found.otherEntries, bytes: null, epoch: found.otherEpoch },
        peerEpoch: hello.epoch,
        decision,
        by: decision === 'disconnect' ? 'nobody yet' : by,
      });
      if (decision !== 'discard-here') {
        void this.refuseSplit(served, hello, link, found, decision === 'discard-other');
        // Left apart, a primary that met a newer epoch stops taking writes all the same (it is fenced).
        if (decision === 'disconnect' && verdict.kind === 'newer' && served.volume.replica.role === 'primary') {
          void this.stepDown(name, `node ${hello.fromNode} is primary in epoch ${hello.epoch}; the copies are in split brain`).catch(() => undefined);
        }
        return;
      }
      if (served.discard?.winner !== hello.fromNode) served.discard?.set(hello.fromNode, by, new Date());
      discard = { sharedSeq: found.sharedSeq };
      history = split.theirs;
    } else if (served.discard?.winner === hello.fromNode && verdict.kind !== 'newer') {
      // Decided before (a policy or resolve): the winner's history, whatever its epoch.
      const theirs = EpochHistory.from(hello.history);
      if (theirs instanceof EpochHistory) {
        history = theirs;
        discard = { sharedSeq: compareCopies({ history: served.volume.replica.history, lastSeq: served.volume.log.lastSeq }, { history: theirs, lastSeq: hello.lastSeq }).sharedSeq };
      }
    }
    if (history === null || served.changing !== null) {
      link.close(`node ${this.parts.node.id} cannot follow node ${hello.fromNode} in epoch ${hello.epoch} now`);
      return;
    }
    this.follow(served, history, discard).then(
      () => {
        if (served.target !== null) served.target.attach(hello, link);
        else link.close('could not become a secondary');
      },
      (error: unknown) => {
        this.volumeLog(served).error('could not become a secondary of the new primary', { primary: hello.fromNode, error: String(error) });
        link.close(`could not follow: ${String(error)}`);
      },
    );
  }

  /**
   * Tells the source what was found (SPLIT_BRAIN, with the bytes of the regions this copy
   * changed) and closes; when the source's writes are to be discarded, this copy takes
   * over as the primary.
   */
  private async refuseSplit(served: ServedVolume, hello: HelloMessage, link: PeerLink, found: SplitBrain, discardSource: boolean): Promise<void> {
    let bytes = served.splitBrain?.here.bytes ?? null;
    if (bytes === null) {
      // Entries it cannot read back count as every region (see changedSince); a read that fails, as the volume's size.
      bytes = (await this.changedRegions(served, found.sharedSeq, this.peerBitmap(served.config, hello.fromNode)).catch(() => null))?.dirtyBytes ?? served.config.sizeBytes;
      if (served.splitBrain !== null) served.splitBrain.here.bytes = bytes;
    }
    const history = served.volume.replica.history;
    link.finish(
      encodeFrame({
        type: 'split-brain',
        decision: discardSource ? 'discard-source' : 'disconnect',
        sharedSeq: found.sharedSeq,
        lastSeq: served.volume.log.lastSeq,
        epoch: history.current.epoch,
        history: history.last(PEER_HISTORY_EPOCHS_MAX),
        targetEntries: found.hereEntries,
        targetBytes: bytes,
        sourceEntries: found.otherEntries,
      }),
      `split brain with node ${hello.fromNode}`,
    );
    if (discardSource) {
      await this.takeOver(served, hello.fromNode, found.sharedSeq, hello.epoch).catch((error: unknown) => {
        this.volumeLog(served).error('split brain: this copy wins, but could not take over as the primary', { error: String(error) });
      });
    }
  }
}

/** The epoch in which this node numbered its first entry past `sharedSeq` (its writes since a split), or its current one. */
function splitEpoch(history: EpochHistory, node: string, sharedSeq: number): number {
  const start = history.epochOf(sharedSeq + 1);
  return start.primary === node ? start.epoch : history.current.epoch;
}

/** The contact file of a volume (ReplicaTarget's record of its last contact with the primary). */
function contactFile(served: ServedVolume): string {
  return path.join(path.dirname(served.paths.epochs), `${served.config.name}.contact.json`);
}

/** Waits (bounded) for `done`, checking every few milliseconds. */
async function waitUntil(done: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new BlockmirrorError('ERR_ROLE_REFUSED', `gave up waiting for ${what} after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
