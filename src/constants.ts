// Every limit and default of blockmirror, with its unit in its name. Relations between
// them are checked once at start-up by checkConstants(); a violated relation is a bug in
// this file, not an operating error.

import { assert } from './lib/assert.js';

const KiB = 1024;
const MiB = 1024 * KiB;

export const constants = {
  // NBD handshake.
  /** Largest option payload a client may send (nbdkit allows 64 MiB; names are short). */
  nbdOptionBytesMax: 64 * KiB,
  /** Options a client may send before it must choose an export (nbdkit: 32). */
  nbdOptionCountMax: 64,
  /** Longest export name, meta context name or query (the spec allows 4096). */
  nbdNameBytesMax: 4096,
  /** Meta context queries in one LIST/SET_META_CONTEXT. */
  nbdMetaQueriesMax: 64,
  /** A client that has not finished the handshake within this time is dropped. */
  nbdHandshakeTimeoutMs: 30_000,

  // NBD transmission.
  /** Block sizes advertised in NBD_INFO_BLOCK_SIZE. */
  nbdBlockSizeMinBytes: 1,
  nbdBlockSizePreferredBytes: 4 * KiB,
  nbdPayloadBytesMax: 32 * MiB,
  /**
   * A WRITE larger than the advertised maximum but at most this is read and discarded
   * (the client gets EINVAL and the connection lives); beyond it the connection closes.
   */
  nbdPayloadDiscardBytesMax: 64 * MiB,
  /** Requests of one connection being executed at once. */
  nbdInflightRequestsMax: 64,
  /** Payload bytes (write data and read buffers) held for one connection at once. */
  nbdInflightBytesMax: 64 * MiB,
  /** Reply bytes queued on a socket before the connection stops taking new requests. */
  nbdReplyQueueBytesMax: 16 * MiB,
  /** Extents in one BLOCK_STATUS reply (the spec allows 2^20). */
  nbdBlockStatusExtentsMax: 1024,
  /** Simultaneous client connections per node. */
  nbdConnectionsMax: 256,

  // Volumes.
  /** Volume sizes must be a multiple of this (the preferred block size). */
  volumeSizeAlignBytes: 4 * KiB,
  /** Reads up to this size are first tried inline with RWF_NOWAIT (page-cache hits). */
  diskInlineReadBytesMax: 128 * KiB,
  /** Writes up to this size run inline on the event loop (see IoActivity). */
  diskInlineWriteBytesMax: 64 * KiB,
  /**
   * Larger writes to a volume file are made in pieces aligned to this size, so that its
   * page-cache folios stay this small: a 4 KiB write into a 1 MiB folio costs ext4
   * about 15 us, into a 64 KiB one 4 us (docs/performance.md).
   */
  diskWritePieceBytes: 64 * KiB,
  /** An inline write slower than this sends small writes to the thread pool (see IoActivity)... */
  inlineWriteSlowMs: 2,
  /** ...for this long, unless their request is alone. */
  inlineWriteSlowBackoffMs: 1000,
  /** Read buffers of at least this size come from a pool (fresh ones cost page faults). */
  bufferPoolMinBytes: 64 * KiB,
  /** Bytes a buffer pool keeps for reuse. */
  bufferPoolBytesMax: 64 * MiB,
  /** Buffer used when zeroes must be written because the file system cannot zero a range. */
  zeroWriteChunkBytes: 1 * MiB,

  // Write log.
  logPartitionBytesDefault: 64 * MiB,
  logPartitionsDefault: 4,
  /** Smallest partition; a write larger than half a partition becomes several entries. */
  logPartitionBytesMin: 1 * MiB,
  logPartitionsMax: 64,
  cpIntervalMsDefault: 5000,
  /** Log appends up to this size are written inline on the event loop (see IoActivity). */
  logInlineWriteBytesMax: 64 * KiB,

  // Cluster file defaults (docs/configuration.md).
  heartbeatIntervalMsDefault: 250,
  heartbeatTimeoutMsDefault: 2000,
  heartbeatProbationMsDefault: 2000,
  /** Coordination through etcd: a primary's lease; etcd counts it in whole seconds, and grants at least 2 s. */
  leaseTtlMsDefault: 5000,
  leaseTtlMsMin: 2000,
  leaseTtlMsMax: 600_000,
  coordinationPrefixDefault: 'blockmirror',
  nodePriorityMax: 1_000_000,
  /** A hook (docs/operations.md, "Hooks") is killed after this long. */
  hookTimeoutMsDefault: 30_000,
  /** Bytes of a hook's output kept for the log. */
  hookOutputBytesMax: 16 * 1024,
  peerConnectionsDefault: 2,
  peerConnectionsMax: 16,
  /** How long the event loop may poll before it sleeps (native busyPoll), in microseconds. */
  busyPollMicrosDefault: 50,
  busyPollMicrosMax: 1000,

  // Mirror links.
  /** Bytes of log entries sent to one peer and not yet acknowledged; also the peer's reorder buffer. */
  mirrorWindowBytesMax: 64 * MiB,
  /** async/logship: writes wait while a peer lags by more than this many bytes. */
  asyncLagBytesMax: 128 * MiB,
  /** Entries kept in memory for a peer that is away, so that it catches up when it is back. */
  mirrorCatchUpBytesMax: 64 * MiB,
  /** A resync sends consecutive dirty regions as one entry of up to this many bytes. */
  resyncEntryBytesMax: 1024 * 1024,
  /** Runs of regions a resync reads from the volume at once. */
  resyncReadsParallelMax: 16,
  /** Regions an online verify compares at once (and a replica keeps waiting). */
  verifyRegionsInflightMax: 16,
  /** How long a verify waits for a peer's digest of one region. */
  verifyReplyTimeoutMs: 30_000,
  /** READs a diskless primary has in flight to one peer at most (and a replica keeps waiting). */
  peerReadsInflightMax: 64,
  /** How long a diskless primary's read waits for a peer's answer before it tries another or fails. */
  peerReadTimeoutMs: 10_000,
  /** Mismatching regions a verify report lists (it counts them all). */
  verifyMismatchesListedMax: 1000,
  /** Without resync.rateMax, the controller keeps a resync's regions in flight within these bounds. */
  resyncRegionsInflightMin: 4,
  resyncRegionsInflightStep: 8,
  /** How often it looks at client latency. */
  resyncControlIntervalMs: 100,
  /** Client latency this much above its baseline never counts as slowed by the resync. */
  resyncLatencySlackMs: 1,
  /** Client latency this many times its baseline counts as slowed by the resync. */
  resyncLatencyFactor: 1.5,
  /** One bit of a mirrored volume's write-intent record covers this much of it. */
  writeIntentExtentBytes: 4 * 1024 * 1024,
  /** Stretches of written regions kept for peers that have not made them durable (see MirrorEngine.persistBitmaps); the oldest merge. */
  unsyncedGenerationsMax: 8,
  /** Regions a resync has sent to a peer and that are not yet durable there. */
  resyncRegionsInflightMax: 256,
  /** One bit of a peer's dirty bitmap covers this much of the volume (the default of resync.regionSize). */
  dirtyRegionBytes: 64 * KiB,
  dirtyRegionBytesMin: 4 * KiB,
  /** A region is sent as one log entry, so it must fit one (less than half the smallest partition). */
  dirtyRegionBytesMax: 256 * KiB,
  /** The smallest resync.rateMax (a slower resync would hardly end). */
  resyncRateBytesPerSecMin: 1 * MiB,
  /** Entries for one region of the volume always travel on the same connection. */
  mirrorRegionBytes: 1 * MiB,
  /** A peer connection must finish its handshake within this time. */
  peerHandshakeTimeoutMs: 10_000,
  /** Delay before reconnecting to a peer, doubling per failure up to the max. */
  peerReconnectDelayMsMin: 200,
  peerReconnectDelayMsMax: 5_000,
  /** Frames other than ENTRY are small; ENTRY carries one log entry (header and payload). */
  peerEntryBodyBytesMax: 64 + 32 * MiB,
  /** At a clean stop the primary waits this long for peers to take its last consistency point. */
  peerDrainTimeoutMs: 10_000,

  // Shutdown.
  /** In-flight requests get this long to finish at shutdown before they are failed. */
  shutdownDrainMs: 5000,
} as const;

export function checkConstants(): void {
  const c = constants;
  assert(c.nbdBlockSizeMinBytes >= 1 && c.nbdBlockSizeMinBytes <= c.nbdBlockSizePreferredBytes);
  assert(c.nbdBlockSizePreferredBytes <= c.nbdPayloadBytesMax);
  assert(c.nbdPayloadBytesMax <= c.nbdPayloadDiscardBytesMax);
  // One request of maximum size must always fit in the per-connection budget.
  assert(c.nbdPayloadBytesMax <= c.nbdInflightBytesMax);
  assert(c.nbdReplyQueueBytesMax >= 0);
  assert(c.nbdNameBytesMax <= c.nbdOptionBytesMax);
  assert(c.volumeSizeAlignBytes % c.nbdBlockSizeMinBytes === 0);
  assert(c.heartbeatTimeoutMsDefault > c.heartbeatIntervalMsDefault);
  assert(c.peerConnectionsDefault <= c.peerConnectionsMax);
  assert(c.logPartitionsDefault >= 2 && c.logPartitionsDefault <= c.logPartitionsMax);
  assert(c.logPartitionBytesDefault >= c.logPartitionBytesMin && c.logPartitionBytesDefault % 4096 === 0);
  // A log entry carries at most one NBD request's payload; the largest must fit a frame and the window.
  assert(c.peerEntryBodyBytesMax >= 64 + c.nbdPayloadBytesMax);
  assert(c.mirrorWindowBytesMax >= c.peerEntryBodyBytesMax);
  assert(c.asyncLagBytesMax >= c.mirrorWindowBytesMax);
  assert(c.peerReconnectDelayMsMin > 0 && c.peerReconnectDelayMsMin <= c.peerReconnectDelayMsMax);
  assert(c.dirtyRegionBytesMin <= c.dirtyRegionBytes && c.dirtyRegionBytes <= c.dirtyRegionBytesMax);
  assert(c.dirtyRegionBytesMax <= c.logPartitionBytesMin / 4);
}
