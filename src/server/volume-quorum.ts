// The quorum of the `quorum: majority` volumes a node holds (docs/operations.md, "Quorum
// and witnesses"), from what its heartbeats say (src/core/quorum.ts decides): whether this
// node, as a volume's primary, may acknowledge writes (its QuorumGate asks), whether it
// may be promoted, and which copies hold every acknowledged write: on the primary its
// synced set, which its heartbeats name, and on a secondary the set its primary named last.

import { quorumMembers, type ClusterConfig, type NodeConfig } from '../control/config.js';
import type { Logger } from '../lib/log.js';
import { promotionQuorum, writeQuorum, type QuorumCount } from '../core/quorum.js';
import type { Clock } from '../io/clock.js';
import type { Heartbeats } from './heartbeats.js';
import { QuorumGate } from './quorum-gate.js';
import type { ServedVolume } from './served-volume.js';

export class VolumeQuorum {
  /** On a secondary: the synced set its primary's heartbeats named last, per volume. */
  private readonly learnedSynced = new Map<string, string[]>();

  constructor(
    private readonly cluster: ClusterConfig,
    private readonly node: NodeConfig,
    private readonly heartbeats: () => Heartbeats | null,
  ) {}

  /** The gate of a quorum volume's primary, or null for a volume without quorum. */
  gate(served: ServedVolume, clock: Clock, log: Logger): QuorumGate | null {
    const { config } = served;
    if (config.quorum !== 'majority') return null;
    const { intervalMs } = this.cluster.heartbeat;
    return new QuorumGate(config.name, () => this.write(served), config.onNoQuorum, clock, Math.max(5, Math.floor(intervalMs / 4)), 3 * intervalMs, log);
  }

  /** Whether this node, the volume's primary, has a quorum now. */
  write(served: ServedVolume): QuorumCount {
    const { config, volume } = served;
    const heartbeats = this.heartbeats();
    const members = quorumMembers(this.cluster, config);
    return writeQuorum(this.node.id, volume.replica.epoch, this.synced(served), members, heartbeats?.memberViews(config.name) ?? [], heartbeats?.quorumFreshMs ?? 0);
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

  /** A heartbeat of `peer` named `synced` as the volume's primary in `epoch`: kept when it is this copy's primary. */
  heardSynced(served: ServedVolume, peer: string, epoch: number, synced: readonly string[]): void {
    if (served.volume.replica.role !== 'secondary') return;
    const { current } = served.volume.replica.history;
    if (current.epoch === epoch && current.primary === peer) this.learnedSynced.set(served.config.name, [...synced]);
  }

  /** A quorum volume's quorum here: for its primary's writes, or for a promotion of this copy (null without quorum). */
  of(served: ServedVolume): (QuorumCount & { reason: string | null }) | null {
    const { config, volume } = served;
    if (config.quorum !== 'majority') return null;
    if (volume.replica.role === 'primary') {
      const count = this.write(served);
      return { ...count, reason: count.ok ? null : `only ${count.have} of ${count.need} needed members reach it` };
    }
    const heartbeats = this.heartbeats();
    const primary = volume.replica.history.primaryNow;
    return promotionQuorum(
      this.node.id,
      volume.replica.epoch,
      quorumMembers(this.cluster, config),
      heartbeats?.memberViews(config.name) ?? [],
      heartbeats?.quorumFreshMs ?? 0,
      primary,
      primary !== null && heartbeats?.hears(primary) === true,
      this.learnedSynced.get(config.name) ?? [],
    );
  }
}
