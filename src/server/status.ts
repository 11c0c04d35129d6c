// The admin API's status (GET /api/v1/status): one schema, which the server builds
// (admin.ts nodeStatus), the CLI prints, and the tests and the benchmark read.

import type { DiskState } from '../protocol/disk-state.js';
import type { LogStatus } from '../storage/write-log.js';

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
  /** The node that takes this volume's writes. */
  primary: string | null;
  stats: Record<string, number>;
  log: LogStatus;
  /** On the primary: each peer it mirrors to. */
  peers: PeerReplicationStatus[];
  /** On a secondary: the primary's links. */
  source: { node: string; connected: boolean; storedSeq: number; syncedCpSeq: number } | null;
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
}
