// A volume as a node serves it, and what the admin API reads of a node: kept apart from
// node.ts (which builds them) so that the modules node.ts composes need not import it.

import type { ClusterConfig, NodeConfig, VolumeConfig, Address } from '../control/config.js';
import type { DiskState } from '../protocol/disk-state.js';
import { copyState } from '../core/volume-core.js';
import type { IoActivity } from '../io/file-io.js';
import type { LocalVolume } from '../storage/local-volume.js';
import type { VolumeIdentity, VolumePaths } from '../storage/volume-files.js';
import type { LogOptions } from '../storage/write-log.js';
import type { Heartbeats } from './heartbeats.js';
import type { MirroredVolume } from './mirrored-volume.js';
import type { ConnectionCounters } from './nbd-connection.js';
import type { ReplicaTarget } from './replica-target.js';
import type { DiscardRecord, SplitBrainStatus } from './split-brain.js';
import type { AttachResult, DemotionResult, NodeStatus, PromotionResult, ResolveResult } from './status.js';

export interface ServedVolume {
  config: VolumeConfig;
  identity: VolumeIdentity;
  volume: LocalVolume;
  /** `primary` takes client writes (a local volume is always its own primary). */
  role: 'primary' | 'secondary';
  /** On a mirrored volume's primary: the volume its clients see, with its mirror engine. */
  mirrored: MirroredVolume | null;
  /** The secondary's end of the primary's links (null on a primary, and on one that stepped down). */
  target: ReplicaTarget | null;
  /** The options the volume's log was opened with (its role decides where it lives). */
  logOptions: LogOptions;
  /** The volume's files (its epoch history among them). */
  paths: VolumePaths;
  /** A role change under way ('promotion', 'demotion', 'following'), or null. */
  changing: string | null;
  /** A split brain with another copy, as found here or told by it (docs/operations.md, "Split brain"), or null. */
  splitBrain: SplitBrainStatus | null;
  /** Whether this copy's writes are to be discarded in favour of another's (a mirrored volume's record; null otherwise). */
  discard: DiscardRecord | null;
}

/** What the admin API reads of a running node (BlockmirrorNode is one). */
export interface NodeView {
  readonly config: ClusterConfig;
  readonly node: NodeConfig;
  readonly volumes: ReadonlyMap<string, ServedVolume>;
  readonly startedAtMs: number;
  readonly nbdAddress: Address | null;
  readonly connectionCount: number;
  readonly counters: ConnectionCounters;
  readonly peerCounters: Record<string, number>;
  readonly heartbeatCounters: Record<string, number>;
  readonly ioActivity: IoActivity;
  heartbeatStatus(): ReturnType<Heartbeats['status']>;
  /** On a witness node, what it knows of each quorum volume; else null. */
  witnessStatus(): NodeStatus['witness'];
  coordinationStatus(): NodeStatus['coordination'];
  readonly hookCounts: NodeStatus['hooks'];
  /** Role changes (docs/operations.md, "Failover"). */
  promote(name: string, force: boolean): Promise<PromotionResult>;
  demote(name: string): Promise<DemotionResult>;
  /** `blockmirror resolve`: this node's part in resolving a split brain by discarding `discard`'s writes. */
  resolve(name: string, discard: string): Promise<ResolveResult>;
  /** `blockmirror attach`: a replaced disk under this node's diskless copy. */
  attach(name: string): Promise<AttachResult>;
  /** A `quorum: majority` volume's quorum on this node, or null. */
  quorumOf(served: ServedVolume): { have: number; need: number; ok: boolean; counted: string[]; reason: string | null; promise: { epoch: number; to: string } | null; learning: boolean } | null;
}

/** This node's copy of a volume, as copyState (src/core/volume-core.ts) says from what the node knows of it. */
export function diskState({ volume, target, mirrored }: ServedVolume): DiskState {
  // A primary whose disk failed serves the volume from its peers.
  if (mirrored?.diskless === true) return 'diskless';
  // A replaced disk being filled from a peer (`attach`) does not hold the volume yet.
  if (mirrored?.filling === true) return 'inconsistent';
  const source = target?.status() ?? null;
  return copyState({
    failed: volume.failed || source?.failed === true,
    needsFullResync: volume.log.status().needsFullResync,
    streaming: source === null ? null : source.session,
  });
}
