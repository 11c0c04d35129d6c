// The admin API's status (GET /api/v1/status): one schema, which the server builds
// (admin.ts nodeStatus), the CLI prints, and the tests and the benchmark read.

import type { DiskState } from '../protocol/disk-state.js';
import type { LogStatus } from '../storage/write-log.js';
import type { SplitBrainStatus } from './split-brain.js';

export interface VolumeStatus {
  name: string;
  uuid: string;
  sizeBytes: number;
  mode: string;
  role: 'primary' | 'secondary';
  /** The epoch of the volume's history this node is in (see docs/operations.md, "Data layout"). */
  epoch: number;
  disk: DiskState;
  readOnly: boolean;
  /** The node that takes this volume's writes, as this node's epoch history says (null: its primary stepped down). */
  primary: string | null;
  /** A role change under way here ('promotion', 'demotion', 'following'), or null. */
  changing: string | null;
  /**
   * For `quorum: majority`: on the primary, whether its writes are acknowledged (it and the
   * members that reach it); on a secondary, whether it may be promoted (the members that
   * vote for it, and what is missing). `promise`: the newest epoch this copy promised, and
   * to which node ('' for none: learned on an empty data directory); `learning`: it started
   * on an empty data directory and counts for no one until it has learned the newest epoch.
   * Null otherwise.
   */
  quorum: {
    onNoQuorum: string;
    have: number;
    need: number;
    ok: boolean;
    counted: string[];
    reason: string | null;
    promise: { epoch: number; to: string } | null;
    learning: boolean;
  } | null;
  /** A split brain with another copy (docs/operations.md, "Split brain"), or null. */
  splitBrain: SplitBrainStatus | null;
  /**
   * On a primary: since when its own disk failed and the volume is served from its peers
   * (`disk` is `diskless`), and why; else null.
   */
  diskless: { since: string; reason: string } | null;
  /** A replaced disk being filled from a peer (`blockmirror attach`), or the last one filled; else null. */
  attach: { startedAt: string; totalBytes: number; filledBytes: number; error: string | null } | null;
  stats: Record<string, number>;
  log: LogStatus;
  /** On the primary: each peer it mirrors to. */
  peers: PeerReplicationStatus[];
  /** On a secondary: the primary's links. */
  source: {
    node: string;
    connected: boolean;
    storedSeq: number;
    syncedCpSeq: number;
    /** A promotion of this copy cannot lose writes the primary acknowledged (it was in sync at its last contact). */
    promotable: boolean;
  } | null;
}

export interface PeerReplicationStatus {
  node: string;
  replication: 'streaming' | 'connecting' | 'disconnected' | 'catching-up' | 'resyncing';
  disk: DiskState;
  ackedSeq: number;
  durableSeq: number;
  syncedSeq: number;
  lagBytes: number;
  outOfSyncBytes: number;
  /** It comes back only through a resync (it missed more than the primary kept for it, failed, or the primary crashed). */
  resyncNeeded: boolean;
  /** While resyncing: bytes left, rate so far and ETA at that rate. */
  resync: { remainingBytes: number; rateBytesPerSec: number; etaSeconds: number | null } | null;
  connections: number;
}

export interface NodeStatus {
  cluster: string;
  node: string;
  uptimeSeconds: number;
  nbd: string;
  connections: number;
  counters: Record<string, number>;
  /** What the failure detector thinks of each peer node. */
  nodes: { node: string; state: string; lastHeardAgoMs: number; incarnation: number }[];
  volumes: VolumeStatus[];
  /**
   * On a witness node, what it knows of each `quorum: majority` volume (docs/operations.md,
   * "Quorum and witnesses"): the newest epoch a primary claimed and that primary, the synced
   * set it echoes, its newest promise, and whether it is still learning; else null.
   */
  witness: { volume: string; epoch: number; primary: string | null; synced: string[]; promise: { epoch: number; to: string } | null; learning: boolean }[] | null;
  /**
   * Who chooses the volumes' primaries (docs/operations.md, "Automatic failover through
   * etcd"): `static` (by command), or etcd with this node's lease, the last error talking
   * to it, and what each volume's keys said at the last read.
   */
  coordination: CoordinationStatus | { kind: 'static' };
  /** Hooks run on role changes so far, and how many failed (docs/operations.md, "Hooks"). */
  hooks: { run: number; failed: number };
}

/** Coordination through etcd as this node sees it (EtcdCoordinator.status). */
export interface CoordinationStatus {
  kind: 'etcd';
  endpoints: string[];
  prefix: string;
  leaseTtlMs: number;
  /** This node's lease: its id and how long it is known to live (negative: lapsed). */
  lease: { id: string | null; validForMs: number | null };
  /** The last error talking to etcd, or null when the last read and renewal worked. */
  error: string | null;
  volumes: Record<string, { primary: string | null; epoch: number; holding: boolean; synced: string[] | null }>;
  counters: { renewals: number; renewalFailures: number; claimsWon: number; claimsLost: number; fenced: number };
}


// The answers of POST /api/v1/volumes/<name>/promote and .../demote (VolumeRoles).

/** What `promote` did. */
export interface PromotionResult {
  volume: string;
  node: string;
  epoch: number;
  /** The epoch's first entry. */
  firstSeq: number;
  previousPrimary: string;
  /** Entries of the per-source log applied to the image at the promotion (a logship copy's held entries). */
  appliedEntries: number;
  appliedBytes: number;
  /** The per-source log was damaged: where the promotion stopped and what was lost, in words; else null. */
  sourceLogDamage: string | null;
  /** With --force: what the promoted copy may lack, in words; null when nothing acknowledged can be lost. */
  mayLack: string | null;
}

/** What `attach` did: the replaced disk is in, and being filled from a peer (status shows how far). */
export interface AttachResult {
  volume: string;
  node: string;
  totalBytes: number;
  /** The entry after which the new disk's log numbers on. */
  fromSeq: number;
}

/** What `resolve` did on one node: this copy discards its writes (in favour of `winner`), or wins. */
export interface ResolveResult {
  volume: string;
  node: string;
  discards: boolean;
  winner: string;
}

/** What `demote` did. */
export interface DemotionResult {
  volume: string;
  node: string;
  epoch: number;
  lastSeq: number;
}
