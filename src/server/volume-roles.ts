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
// Which epoch a HELLO may come from is decided here too (`check`), for the peer server.
// The decisions about the volume itself are its ReplicaCore's (promotion, demote, learn);
// the files of each change are volume-store.ts's (promoteStorage, demoteStorage,
// moveReplicaLog), with the history made durable at the one point each change commits.

import path from 'node:path';
import type { ClusterConfig, NodeConfig, VolumeConfig } from '../control/config.js';
import { assert } from '../lib/assert.js';
import { BlockmirrorError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import { compareCopies, EpochHistory, encodeEpochHistory } from '../core/epoch-history.js';
import { DirtyBitmap } from '../core/dirty-bitmap.js';
import { encodeMirrorRecord, type MirrorRecord } from '../core/mirror-ledger.js';
import type { Clock } from '../io/clock.js';
import type { StreamLink } from '../io/stream-link.js';
import { RefuseCode } from '../protocol/peer/frames.js';
import type { DurableFiles } from '../storage/durable-files.js';
import type { OpenedVolume } from '../storage/volume-store.js';
import { demoteStorage, logDir, logOptionsAt, moveReplicaLog, promoteStorage, restartReplicaLog } from '../storage/volume-store.js';
import type { Heartbeats } from './heartbeats.js';
import { VolumeQuorum } from './volume-quorum.js';
import { mirrorPrimary } from './mirrored-volume.js';
import type { HelloMessage, PeerLink } from './peer-link.js';
import { ReplicaTarget } from './replica-target.js';
import { mayLack } from '../core/promotion.js';
import { ContactRecord } from './source-contact.js';
import type { ServedVolume } from './served-volume.js';
import type { DemotionResult, PromotionResult } from './status.js';

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
}

export class VolumeRoles {
  /** The quorum of the `quorum: majority` volumes here. */
  readonly quorum: VolumeQuorum;

  constructor(
    private readonly parts: RoleParts,
    private readonly volumes: Map<string, ServedVolume>,
  ) {
    this.quorum = new VolumeQuorum(parts.cluster, parts.node, parts.heartbeats);
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
    };
    if (opened.role === 'primary' && this.mirroredHere(config)) {
      served.mirrored = this.mirror(served, opened.recovery.lastSeq, replayed);
    } else if (opened.role === 'secondary' && opened.logOptions.replica !== undefined) {
      served.target = this.target(served);
    }
    return served;
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
    const gate = this.quorum.gate(served, clock, this.volumeLog(served));
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
    }, gate);
  }

  private target(served: ServedVolume): ReplicaTarget {
    const { config, volume } = served;
    return new ReplicaTarget(
      config,
      volume,
      this.volumeLog(served),
      this.parts.counters,
      (seq) => restartReplicaLog(volume, served.logOptions, seq, config.mode === 'logship'),
      {
        contact: new ContactRecord(this.parts.files, contactFile(served), this.volumeLog(served)),
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
   * Makes this node's copy of `name` the primary in the next epoch. Refused when the copy
   * may lack acknowledged writes (see `mayLack`) unless `force`; either way only a
   * secondary that follows a primary is promoted.
   */
  async promote(name: string, force: boolean): Promise<PromotionResult> {
    const served = this.served(name);
    const { volume, config } = served;
    const target = served.target;
    const previous = volume.replica.history;
    if (served.role === 'primary') throw new BlockmirrorError('ERR_ROLE_REFUSED', `node ${this.parts.node.id} is the primary of ${name} already (epoch ${volume.replica.epoch})`);
    if (target === null) {
      throw new BlockmirrorError('ERR_ROLE_REFUSED', `node ${this.parts.node.id} stepped down as the primary of ${name} in epoch ${volume.replica.epoch}; promote another copy, which it then follows`);
    }
    if (volume.failed) throw new BlockmirrorError('ERR_ROLE_REFUSED', `the copy of ${name} on node ${this.parts.node.id} failed: it cannot be the primary`);
    if (volume.log.status().needsFullResync) {
      throw new BlockmirrorError('ERR_MAY_LOSE_WRITES', `the copy of ${name} on node ${this.parts.node.id} is inconsistent (it waits for a full resync): it cannot be the primary`);
    }
    if (target.status().session) {
      throw new BlockmirrorError('ERR_ROLE_REFUSED', `node ${this.parts.node.id} is streaming from ${target.source}, the primary of ${name}: demote it first (blockmirror demote ${name} --node ${target.source})`);
    }
    const lack = mayLack(config, target.contact, this.parts.node.id);
    if (lack !== null && !force) {
      throw new BlockmirrorError('ERR_MAY_LOSE_WRITES', `${lack}; --force promotes it anyway, and those writes are lost`);
    }
    const quorum = this.quorum.of(served);
    if (quorum !== null && !quorum.ok && !force) {
      throw new BlockmirrorError('ERR_NO_QUORUM', `volume ${name} has quorum: majority, and node ${this.parts.node.id} has no majority to be promoted with: ${quorum.reason ?? ''}; --force promotes it anyway (two primaries may then take writes)`);
    }
    served.changing = 'promotion';
    const log = this.volumeLog(served);
    let committed = false;
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
        history = volume.replica.promotion(this.parts.node.id, lastSeq);
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
      served.mirrored?.quorum?.close('its primary stepped down');
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
        served.mirrored = null;
      }
      await waitUntil(() => volume.replica.local.idle, 10_000, `the running operations of ${name} to end`);
      const history = volume.replica.history.stepDown();
      this.saveHistory(served, history);
      volume.replica.demote(history);
      const result = { volume: name, node: this.parts.node.id, epoch: history.current.epoch, lastSeq: volume.log.lastSeq };
      log.warn('stepped down: no longer the primary', { ...result, reason });
      return result;
    } finally {
      served.changing = null;
    }
  }

  /**
   * A copy that was the primary (stepped down, or fenced) becomes a secondary of the
   * primary of `history`, a newer epoch: its own log gives way to a per-source log whose
   * trail names the regions of every entry it holds past the last one the new primary
   * shares with it, so that they are resent from there.
   */
  private async follow(served: ServedVolume, history: EpochHistory): Promise<void> {
    if (served.volume.replica.role === 'primary') await this.stepDown(served.config.name, `node ${history.current.primary} is primary in epoch ${history.current.epoch}`);
    const { volume, config } = served;
    const mine = volume.replica.history;
    // The new primary's epoch started after the last entry it held: nothing of this copy past it is the new primary's.
    const { sharedSeq } = compareCopies({ history: mine, lastSeq: volume.log.lastSeq }, { history, lastSeq: history.current.firstSeq - 1 });
    served.changing = 'following';
    try {
      const to = logOptionsAt(served.logOptions, logDir(this.parts.node.dataDir, config.name, history, this.parts.node.id), { deferApply: config.mode === 'logship' });
      // What its mirror ledger said the new primary may lack: writes in its image whose
      // entries a crash lost, entries placed while that node was away.
      const bitmap = this.parts.files.read(path.join(this.parts.node.dataDir, 'mirror', `${config.name}.${history.current.primary}.bitmap`));
      const mayDiffer = bitmap === null ? null : DirtyBitmap.decode(bitmap, config.sizeBytes, this.parts.cluster.resync.regionBytes);
      await demoteStorage(this.parts.files, volume, served.logOptions, to, sharedSeq, mayDiffer, () => {
        this.saveHistory(served, history);
        volume.replica.learn(history);
      });
      served.logOptions = to;
      // The core steps down into the history it now follows.
      served.target = this.target(served);
      this.volumeLog(served).warn('following a new primary', { primary: history.current.primary, epoch: history.current.epoch, sharedSeq, lastSeq: volume.log.lastSeq });
    } finally {
      served.changing = null;
    }
  }

  // ---- the peer server's questions ------------------------------------------------------

  /**
   * Whether a HELLO for `name` may go on to authentication: its source must be the
   * primary of the epoch it names, which may be the one this copy knows or a newer one
   * whose history holds this copy's epoch unchanged (a promotion elsewhere). A source in
   * an older epoch is told it is stale (it steps down).
   */
  check(name: string, hello: HelloMessage): { code: RefuseCode; message: string } | null {
    const served = this.volumes.get(name);
    if (served === undefined || served.changing !== null && served.changing !== 'following') {
      return { code: RefuseCode.STATE, message: `volume ${name} is not open on node ${this.parts.node.id}${served?.changing == null ? '' : ` (its ${served.changing} is under way)`}` };
    }
    const verdict = served.volume.replica.judgeSource(hello.fromNode, hello.history);
    const here = this.parts.node.id;
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
   * after this copy stopped being a primary when the source is a newer epoch's.
   */
  attach(name: string, hello: HelloMessage, link: PeerLink): void {
    const served = this.volumes.get(name);
    if (served === undefined) {
      link.close('volume went away');
      return;
    }
    if (served.target !== null) {
      served.target.attach(hello, link);
      return;
    }
    const verdict = served.volume.replica.judgeSource(hello.fromNode, hello.history);
    if (verdict.kind !== 'newer' || served.changing !== null) {
      link.close(`node ${this.parts.node.id} cannot follow node ${hello.fromNode} in epoch ${hello.epoch} now`);
      return;
    }
    this.follow(served, verdict.history).then(
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
