// The mirror engine of one volume on its primary node (docs/architecture.md): it taps
// the volume's write log, sends every entry to each peer over that peer's connections,
// and holds a client's reply until the peers have what the volume's mode requires.
// The decisions are PrimaryCore's (src/core/primary-core.ts): who streams, catches up or
// resyncs, and when a reply may leave (MirrorSource); what each peer may lack and how the
// last run ended (MirrorLedger: the dirty bitmaps and the state file
// `<dataDir>/mirror/<volume>.json`); and which regions a resync sends next. This module
// carries out its actions: frames on the sessions' links, the files; the sessions
// themselves (connections, reconnects, the frames that arrive) are peer-sessions.ts, and
// the long transfers (a resync, a catch-up from the log, entries read back for a dropped
// peer) are peer-transfers.ts, which it starts and gives what they act through.
//
// Why one file of this size: it has one job, to run one volume's PrimaryCore, and the
// sections below are that job's inputs and outputs. Events come in from the write path
// (the tap, a reply's wait, the log's retainer), from the sessions (READY, the peers'
// replies, a lost link) and from online verify (a region found different, a repair);
// actions go out to the sessions' links, the state and bitmap files, the write-intent
// record and the transfers (`run`). Each section reads and changes the same core,
// sessions and files; split up, each part would need all of them. What they decide is
// the cores' (PrimaryCore, ResyncController), save whether a verify may start at all.

import path from 'node:path';
import { constants } from '../constants.js';
import type { ClusterConfig, NodeConfig, VolumeConfig } from '../control/config.js';
import { assert } from '../lib/assert.js';
import { BlockmirrorError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import type { DiskState, PeerStatus } from '../core/mirror-source.js';
import type { PrimaryAction, PrimaryCore, ResyncPace } from '../core/primary-core.js';
import { DigestRequests } from './digest-requests.js';
import { encodeEntryFrame, encodeFrame, PEER_HISTORY_EPOCHS_MAX, type PeerMessage } from '../protocol/peer/frames.js';
import type { DirtyBitmap } from '../core/dirty-bitmap.js';
import { compareCopies, EpochHistory } from '../core/epoch-history.js';
import { MirrorLedger, encodeMirrorRecord, parseMirrorRecord } from '../core/mirror-ledger.js';
import { encodeEntryHeader, EntryType } from '../protocol/log-entry.js';
import type { LocalVolume, VolumeReplicaCore } from '../storage/local-volume.js';
import type { WriteLog } from '../storage/write-log.js';
import { WriteIntent } from '../storage/write-intent.js';
import type { DurableFiles } from '../storage/durable-files.js';
import { ResyncController } from '../core/resync-controller.js';
import { OnlineVerify, type VerifyReport } from './online-verify.js';
import { catchUpFromLog, readUnsynced, runResync, type TransferPeer, type TransferPorts } from './peer-transfers.js';
import type { PeerLink, ReadyMessage, SplitBrainMessage } from './peer-link.js';
import { PeerReads } from './peer-reads.js';
import { linkFor, PeerSessions, type PeerSession } from './peer-sessions.js';
import { systemClock, type Clock } from '../io/clock.js';
import { tcpStreamLink, type StreamLink } from '../io/stream-link.js';

type Frame = Buffer[];

export interface MirrorPeerStatus extends PeerStatus {
  outOfSyncBytes: number;
  /** While resyncing: bytes left, the rate so far, and the time left at that rate. */
  resync: { remainingBytes: number; rateBytesPerSec: number; etaSeconds: number | null } | null;
  connections: { state: string; lastHeartbeatMs: number }[];
}

/** What a MirrorEngine is made of: the configuration, what this start found, and the node's parts it uses. */
export interface MirrorEngineParts {
  cluster: ClusterConfig;
  local: NodeConfig;
  volume: VolumeConfig;
  /** The volume's replica core: the engine carries out the primary's side it starts (`mirror`). */
  replica: VolumeReplicaCore;
  /** The log's last entry now (after the start's own consistency point). */
  lastSeq: number;
  /**
   * The last entry recovery found at this start (before the start's own consistency
   * point, whose marker may follow it): a crash lost whatever came after it.
   */
  recoveredSeq: number;
  /** Regions of the entries replayed at this start (after a crash), or null. */
  replayed: DirtyBitmap | null;
  /** Log partitions that peers held may be free now. */
  release: () => void;
  log: Logger;
  counters: { peerProtocolErrors: number };
  /** Whether the failure detector currently trusts the peer (heartbeats). */
  available: (peer: string) => boolean;
  /** The volume's region holds: LocalVolume.logCurrent (resync) and whileHeld (verify). */
  regions: Pick<LocalVolume, 'logCurrent' | 'whileHeld'>;
  /** The volume's log: entries a peer that was away lacks are read back from it. */
  entries: Pick<WriteLog, 'readRange' | 'syncTo' | 'holdsFrom' | 'entryPayloadBytesMax' | 'status'>;
  /** The node's durable files: the state file, the bitmaps and the write-intent record. */
  files: DurableFiles;
  /** Time for pacing, waits and reconnects (the system clock unless a test gives another). */
  clock?: Clock;
  /** Where the connections to the peers come from (TCP unless a test gives another). */
  streams?: StreamLink;
  /** A peer refused this node's session because it knows a newer epoch: this node is no longer the primary. */
  stale?: (peer: string, message: string) => void;
  /** A peer found the copies in split brain (SPLIT_BRAIN in place of READY); null once a session with it is up. */
  splitBrain?: (peer: string, found: SplitBrainMessage | null) => void;
}

export class MirrorEngine {
  private readonly core: PrimaryCore<Frame>;
  /** The previous run of this primary stopped cleanly (its ledger says so). */
  readonly stoppedCleanly: boolean;
  private readonly sessions: PeerSessions;
  private readonly waiters = new Map<number, { resolve: () => void; reject: (error: Error) => void }>();
  private nextToken = 1;
  private readonly stateFile: string;
  private stopped = false;
  private verifyRun: OnlineVerify | null = null;
  private intent: WriteIntent;
  private readonly intentFile: string;
  /** Without resync.rateMax: how many regions a resync may have in flight, from client latency. */
  private readonly resyncControl = new ResyncController({
    minRegions: constants.resyncRegionsInflightMin,
    maxRegions: constants.resyncRegionsInflightMax,
    stepRegions: constants.resyncRegionsInflightStep,
    slackMs: constants.resyncLatencySlackMs,
    factor: constants.resyncLatencyFactor,
    intervalMs: constants.resyncControlIntervalMs,
  });
  /** Entries being read back from the log (markUnsynced): their partitions stay. */
  private readonly readPins = new Set<{ fromSeq: number }>();
  /** VERIFY requests waiting for their VERIFIED, by token. */
  private readonly digests: DigestRequests;
  /** What resyncs and catch-ups act through (peer-transfers.ts). */
  private readonly transfers: TransferPorts;

  private readonly cluster: ClusterConfig;
  private readonly local: NodeConfig;
  private readonly volume: VolumeConfig;
  private readonly release: () => void;
  private readonly log: Logger;
  private readonly counters: { peerProtocolErrors: number };
  private readonly regions: MirrorEngineParts['regions'];
  private readonly entries: MirrorEngineParts['entries'];
  private readonly files: DurableFiles;
  private readonly clock: Clock;
  private readonly replica: VolumeReplicaCore;

  /** What the engine's owner hears of split brains (MirrorEngineParts.splitBrain). */
  private readonly splitBrainWith: (peer: string, found: SplitBrainMessage | null) => void;
  /** Reads asked of the peers once this node's disk failed (diskless). */
  private readonly reads: PeerReads;
  /** Since when this node's own disk failed and the volume is served from its peers (null: it has not). */
  private disklessSince: { since: string; reason: string } | null = null;

  constructor(parts: MirrorEngineParts) {
    const { cluster, local, volume, lastSeq, recoveredSeq, replayed, log, files } = parts;
    this.splitBrainWith = parts.splitBrain ?? (() => undefined);
    this.cluster = cluster;
    this.local = local;
    this.volume = volume;
    this.release = parts.release;
    this.log = log;
    this.counters = parts.counters;
    this.regions = parts.regions;
    this.entries = parts.entries;
    this.files = files;
    this.clock = parts.clock ?? systemClock;
    this.digests = new DigestRequests(this.clock, constants.verifyReplyTimeoutMs);
    assert(volume.mode !== 'local');
    this.stateFile = path.join(local.dataDir, 'mirror', `${volume.name}.json`);
    const peerIds = volume.replicas.filter((id) => id !== local.id);
    const stateData = files.read(this.stateFile);
    const intentFile = path.join(local.dataDir, 'mirror', `${volume.name}.intent`);
    this.intentFile = intentFile;
    const ledger = new MirrorLedger({
      peers: peerIds,
      sizeBytes: volume.sizeBytes,
      regionBytes: cluster.resync.regionBytes,
      lastSeq,
      recoveredSeq,
      record: stateData === null ? null : parseMirrorRecord(stateData),
      bitmaps: new Map(peerIds.map((id) => [id, files.read(this.bitmapFile(id))])),
      replayed,
      intent: WriteIntent.load(files, intentFile, volume.sizeBytes, constants.writeIntentExtentBytes),
      unsyncedGenerationsMax: constants.unsyncedGenerationsMax,
    });
    for (const { message, fields } of ledger.warnings) log.warn(message, fields);
    this.stoppedCleanly = ledger.clean;
    this.core = parts.replica.mirror(
      {
        mode: volume.mode,
        strict: volume.strict,
        peers: peerIds,
        lastSeq,
        lagBytesMax: constants.asyncLagBytesMax,
        windowBytesMax: constants.mirrorWindowBytesMax,
        catchUpBytesMax: constants.mirrorCatchUpBytesMax,
        resync: true,
        logCatchUp: cluster.log.retentionBytesMax > 0,
        sizeBytes: volume.sizeBytes,
      },
      ledger,
    );
    this.transfers = { core: this.core, clock: this.clock, log, regions: this.regions, entries: this.entries, run: (actions) => this.run(actions) };
    this.sessions = new PeerSessions({
      clusterName: cluster.cluster,
      secret: Buffer.from(cluster.secret, 'utf8'),
      local,
      peers: peerIds.map((id) => {
        const node = cluster.nodes.find((candidate) => candidate.id === id);
        assert(node !== undefined, `replica ${id} is not a node`);
        return node;
      }),
      volume: volume.name,
      connections: cluster.connections,
      history: () => parts.replica.history.last(PEER_HISTORY_EPOCHS_MAX),
      lastSeq: () => parts.replica.local.lastSeq,
      streams: parts.streams ?? tcpStreamLink,
      clock: this.clock,
      log,
      counters: this.counters,
      available: parts.available,
      events: {
        connecting: (peer) => this.core.connecting(peer.node.id),
        ready: (peer, ready) => this.sessionReady(peer, ready),
        message: (peer, link, message) => this.onMessage(peer, link, message),
        lost: (peer, reason, stopping) => {
          peer.resyncStart = null;
          this.digests.failPeer(peer.node.id, `connection lost: ${reason}`);
          this.reads.failPeer(peer.node.id, `connection lost: ${reason}`);
          if (!stopping) this.run(this.core.disconnected(peer.node.id, reason));
        },
        stale: (peer, message) => {
          this.log.error('a peer knows a newer epoch of the volume: this node is no longer its primary', { peer: peer.node.id, reason: message });
          parts.stale?.(peer.node.id, message);
        },
        splitBrain: (peer, found) => this.splitBrainWith(peer.node.id, found),
      },
    });
    this.replica = parts.replica;
    this.reads = new PeerReads({
      clock: this.clock,
      candidates: () => this.upToDatePeers(),
      send: (peer, frame) => {
        const link = this.sessions.get(peer)?.links[0];
        if (link === undefined || link.state !== 'up') return false;
        link.send(frame);
        return true;
      },
      lastSeq: () => this.core.lastSeq,
      pieceBytesMax: this.entries.entryPayloadBytesMax,
    });
    // Durable before the first write: the record (a crash from now on is an unclean stop)
    // and the bitmaps; only then may the write-intent record start afresh.
    files.makeDir(path.dirname(this.stateFile), 'mirror-state');
    this.run(this.core.open());
    this.intent = new WriteIntent(files, intentFile, volume.sizeBytes, constants.writeIntentExtentBytes);
  }

  private bitmapFile(peer: string): string {
    return path.join(this.local.dataDir, 'mirror', `${this.volume.name}.${peer}.bitmap`);
  }

  private resyncProgress(peer: PeerSession | undefined): MirrorPeerStatus['resync'] {
    if (peer?.resyncStart == null) return null;
    const remainingBytes = this.core.dirtyBytes(peer.node.id);
    const elapsedSeconds = Math.max(0.001, (this.clock.nowMs() - peer.resyncStart.atMs) / 1000);
    const rateBytesPerSec = Math.max(0, Math.round((peer.resyncStart.bytes - remainingBytes) / elapsedSeconds));
    return { remainingBytes, rateBytesPerSec, etaSeconds: rateBytesPerSec > 0 ? Math.ceil(remainingBytes / rateBytesPerSec) : null };
  }

  /**
   * Writes each changed bitmap (atomically, durably). Runs in every consistency point
   * before it is recorded: marks for entries the CP covers must not depend on the log.
   */
  persistBitmaps(): void {
    // Extents whose writes are all durable in the log (or covered by a CP) leave the
    // write-intent record (during construction there is none yet).
    if (this.intent !== undefined && this.disklessSince === null) {
      const log = this.entries.status();
      this.intent.cool(Math.max(log.durableSeq, log.cpSeq));
    }
    this.run(this.core.persist());
  }

  /** Resolves on the peer's next ACK or FLUSHED, or after 100 ms (a wait that is bounded). */
  private progressOf(peer: PeerSession): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        timer.cancel();
        if (peer.progress === done) peer.progress = null;
        resolve();
      };
      const timer = this.clock.after(100, done);
      peer.progress = done;
    });
  }

  /** A resync of `peer`'s marked regions, for this session of its links (see runResync). */
  private async resync(peer: PeerSession, session: number): Promise<void> {
    peer.resyncStart ??= { atMs: this.clock.nowMs(), bytes: this.core.dirtyBytes(peer.node.id) };
    await runResync(this.transfers, this.transferPeer(peer, session), this.volume.sizeBytes, () => this.resyncPace());
    peer.resyncStart = null;
    if (peer.session === session) this.tellInSync(peer);
  }

  /**
   * The limits of a resync's next turn: capped by `resync.rateMax`, or without one by the
   * controller that keeps client requests responsive (one for every peer's resync).
   */
  private resyncPace(): ResyncPace {
    const regionBytes = this.cluster.resync.regionBytes;
    const rateMax = this.cluster.resync.rateBytesPerSecMax;
    return {
      inflightMax: rateMax > 0 ? constants.resyncRegionsInflightMax : this.resyncControl.limitAt(this.clock.nowMs()),
      runsMax: constants.resyncReadsParallelMax,
      // Consecutive dirty regions go out as one entry, up to this many.
      runRegionsMax: Math.max(1, Math.floor(Math.min(constants.resyncEntryBytesMax, this.entries.entryPayloadBytesMax) / regionBytes)),
      // Paced, a batch is at most a tenth of a second's worth, so bursts stay small.
      batchRegionsMax: rateMax > 0 ? Math.max(1, Math.floor(rateMax / 10 / regionBytes)) : Number.POSITIVE_INFINITY,
      rateBytesPerSecMax: rateMax,
      regionBytes,
    };
  }

  /** `peer` as a transfer sees it: live while this session is up and the engine runs. */
  private transferPeer(peer: PeerSession, session: number): TransferPeer {
    return {
      id: peer.node.id,
      live: () => !this.stopped && peer.up && peer.session === session,
      progress: () => this.progressOf(peer),
      send: (offset, frame) => linkFor(peer, offset)?.send(frame),
    };
  }

  /**
   * Marks the regions of entries `fromSeq`..`toSeq` that a dropped peer had not made
   * durable (see readUnsynced); the log keeps them while they are read (see retains()).
   */
  private async markUnsynced(id: string, fromSeq: number, toSeq: number): Promise<void> {
    const pin = { fromSeq };
    this.readPins.add(pin);
    let extents: { offset: number; lengthBytes: number }[] | null;
    try {
      extents = await readUnsynced(this.transfers, id, fromSeq, toSeq);
    } finally {
      this.readPins.delete(pin);
    }
    if (!this.stopped) this.run(this.core.unsyncedRead(id, extents));
  }

  start(): void {
    this.sessions.start();
  }

  // ---- the failure detector's verdicts --------------------------------------------------------

  /** Heartbeats say the peer is up (first contact, or after its probation): connect. */
  peerUp(id: string): void {
    this.sessions.peerUp(id);
  }

  /** The peer went silent: its connections are closed and it is not retried until it is up again. */
  peerDown(id: string, reason: string): void {
    this.sessions.peerDown(id, reason);
  }

  /** The peer restarted: connections to its earlier run are dead; set them up anew. */
  peerRestarted(id: string): void {
    this.sessions.peerRestarted(id);
  }

  /** A heartbeat from the peer: the time goes into every element of its connection array. */
  peerHeard(id: string, nowMs: number): void {
    this.sessions.peerHeard(id, nowMs);
  }

  // ---- the write path ---------------------------------------------------------------------

  /** The log's tap: every entry as it is placed, in sequence order. */
  placed(seq: number, header: Buffer, payload: readonly Buffer[], fields: { type: EntryType; offset: number; lengthBytes: number }): void {
    const frame = encodeEntryFrame(header, payload);
    const bytes = header.length + payload.reduce((sum, slice) => sum + slice.length, 0);
    // A CP marker's offset field is a sequence number, not a place in the volume.
    const marker = fields.type === EntryType.CONSISTENCY_POINT;
    const offset = marker ? 0 : fields.offset;
    const lengthBytes = marker ? 0 : fields.lengthBytes;
    this.run(this.core.placed({ seq, bytes, offset, lengthBytes, frame }));
  }

  get lastSeq(): number {
    return this.core.lastSeq;
  }

  // ---- diskless: this node's own disk failed ------------------------------------------------

  /** Peers a reply waits for now (in sync: streaming or catching up); the others may lack what is acknowledged. */
  countedPeers(): string[] {
    return this.sessions
      .all()
      .filter((peer) => this.core.isInSync(peer.node.id))
      .map((peer) => peer.node.id);
  }

  /** Peers a diskless primary may read from and count on: streaming, up to date, in sync. */
  upToDatePeers(): string[] {
    return this.sessions
      .all()
      .filter((peer) => peer.up && this.core.isInSync(peer.node.id) && this.core.peerStatus(peer.node.id).disk === 'up-to-date')
      .map((peer) => peer.node.id);
  }

  /** The volume's mode (a diskless primary needs `sync`: only then do its peers hold what it acknowledged). */
  get mode(): VolumeConfig['mode'] {
    return this.volume.mode;
  }

  /** Since when the volume is served from its peers (its disk failed), or null. */
  get diskless(): { since: string; reason: string } | null {
    return this.disklessSince;
  }

  /**
   * This node's disk failed: from now on the volume's entries exist only on its peers. No
   * file of this node's is written again; reads go to the peers (`readFromPeer`) and
   * changes are numbered here and sent (`placeDiskless`).
   */
  goDiskless(reason: string): void {
    if (this.disklessSince !== null) return;
    this.disklessSince = { since: new Date().toISOString(), reason };
  }

  /**
   * A replaced disk is attached (`blockmirror attach`): this node keeps its files again,
   * written anew (the state file, the bitmaps, a fresh write-intent record).
   */
  leaveDiskless(): void {
    if (this.disklessSince === null) return;
    this.disklessSince = null;
    this.files.makeDir(path.dirname(this.stateFile), 'mirror-state');
    this.intent = new WriteIntent(this.files, this.intentFile, this.volume.sizeBytes, constants.writeIntentExtentBytes);
    this.run(this.core.rewriteFiles());
  }

  /** A diskless primary's read: the bytes from an up-to-date peer. */
  readFromPeer(buffer: Buffer, offset: number): Promise<void> {
    return this.reads.read(buffer, offset);
  }

  /**
   * A diskless primary's change: numbered by the replica core as the log would have, and
   * sent to the peers as an entry; returns its sequence number.
   */
  placeDiskless(type: EntryType, offset: number, lengthBytes: number, flags: number, payload: readonly Buffer[]): number {
    assert(this.disklessSince !== null, 'a change placed without the log while the disk works');
    const local = this.replica.local;
    const seq = local.assignSeq();
    const fields = { type, flags, logId: 0, volumeId: 0, seq, durableSeq: 0, offset, lengthBytes, generation: 0, epoch: local.epoch };
    this.placed(seq, encodeEntryHeader(fields, payload), payload, fields);
    return seq;
  }

  /**
   * After a diskless change's wait: at least one peer must hold entry `seq` durably, since
   * this node holds nothing; else the change fails (no up-to-date copy is left).
   */
  requireHeld(seq: number): void {
    const held = this.core.status().some((peer) => peer.durableSeq >= seq || peer.syncedSeq >= seq);
    if (!held) throw new BlockmirrorError('ERR_VOLUME_IO', `volume ${this.volume.name}: this node's disk failed and no peer holds the change (no up-to-date copy is left)`);
  }

  mirrored(seq: number, durable: boolean, local: Promise<void> | null): Promise<void> {
    const token = this.nextToken;
    this.nextToken += 1;
    return new Promise<void>((resolve, reject) => {
      // A failed local part fails the request with its own error (the client's errno comes from it).
      let localError: unknown = null;
      this.waiters.set(token, { resolve, reject: (error) => reject(localError ?? error) });
      this.run(this.core.request(token, seq, durable));
      if (local === null) {
        if (this.waiters.has(token)) this.run(this.core.localDone(token, null));
        return;
      }
      local.then(
        () => {
          if (this.waiters.has(token)) this.run(this.core.localDone(token, null));
        },
        (error: unknown) => {
          localError = error;
          if (this.waiters.has(token)) this.run(this.core.localDone(token, String(error)));
        },
      );
    });
  }

  /**
   * A client's change is about to be replied to: in sync mode, a reply that leaves while a
   * peer is not in sync is recorded first (the ledger's `ackedAlone`, from which a split
   * brain is found). Async and logship replies never wait for a peer: their mode says so.
   */
  replying(): void {
    if (this.volume.mode === 'sync') this.run(this.core.replying());
  }

  changeDone(latencyMs: number): void {
    this.resyncControl.clientDone(latencyMs);
  }

  /** The write-intent record: a change writes the image only where it holds the range. */
  get intentRecord(): WriteIntent {
    return this.intent;
  }

  /** A consistency point was taken here: peers take it too, and then may release their logs. */
  checkpointTaken(cpSeq: number): void {
    this.run(this.core.checkpoint(cpSeq));
  }

  /**
   * The log's retainer: PrimaryCore.retention decides, given the partitions this engine
   * is reading entries back from (readPins) and the retention (`log.retentionMax`). A
   * peer whose entries fall out of the retention needs a resync; its regions are in its
   * bitmap.
   */
  retains(partition: { generation: number; lastSeq: number; activeGeneration: number }): boolean {
    let pinnedFromSeq: number | null = null;
    for (const pin of this.readPins) pinnedFromSeq = Math.min(pinnedFromSeq ?? pin.fromSeq, pin.fromSeq);
    const { keep, released } = this.core.retention(
      { lastSeq: partition.lastSeq, behind: partition.activeGeneration - partition.generation },
      pinnedFromSeq,
      Math.floor(this.cluster.log.retentionBytesMax / this.cluster.log.partitionBytes),
    );
    for (const id of released) {
      // Called while the log releases partitions: the peer is told after that.
      setImmediate(() => {
        if (this.stopped || this.core.logNeed(id) === null) return;
        this.log.warn('peer away longer than the log retention: it needs a resync', { peer: id, retentionBytes: this.cluster.log.retentionBytesMax });
        this.run(this.core.logReleased(id));
      });
    }
    return keep;
  }

  status(): MirrorPeerStatus[] {
    return this.core.status().map((peer) => ({
      ...peer,
      outOfSyncBytes: peer.disk === 'up-to-date' ? 0 : this.core.dirtyBytes(peer.peer),
      resync: this.resyncProgress(this.sessions.get(peer.peer)),
      connections: (this.sessions.get(peer.peer)?.links ?? []).map((link) => ({ state: link.state, lastHeartbeatMs: link.lastHeartbeatMs })),
    }));
  }

  /**
   * At a clean stop, after the final consistency point: waits (bounded) until every
   * in-sync peer has taken it, then closes the links and records the clean stop.
   */
  async stop(finalSeq: number | null): Promise<void> {
    if (finalSeq !== null) {
      const deadline = this.clock.nowMs() + constants.peerDrainTimeoutMs;
      while (this.clock.nowMs() < deadline && this.core.status().some((peer) => peer.replication === 'streaming' && peer.syncedSeq < finalSeq)) {
        await this.clock.sleep(10);
      }
    }
    this.stopped = true;
    this.reads.failAll('node stopping');
    this.sessions.stop();
    for (const waiter of this.waiters.values()) waiter.reject(new BlockmirrorError('ERR_VOLUME_IO', 'node stopping'));
    this.waiters.clear();
    // The peers have taken the final CP: the bitmap files no longer need to mark what they
    // had not made durable, and the record names the clean stop.
    if (finalSeq !== null) {
      this.run(this.core.cleanStop(finalSeq));
    }
  }

  // ---- online verify ------------------------------------------------------------------------

  /** Starts comparing every region with the streaming peers (see online-verify.ts); one at a time. */
  startVerify(repair: boolean): VerifyReport {
    if (this.volume.mode === 'logship') {
      throw new BlockmirrorError('ERR_VERIFY_REFUSED', `volume ${this.volume.name} is logship: its replicas' images lag until each consistency point and cannot be compared online`);
    }
    if (this.verifyRun?.running === true) throw new BlockmirrorError('ERR_VERIFY_REFUSED', `a verify of ${this.volume.name} is already running`);
    const run = new OnlineVerify(
      {
        volume: this.volume.name,
        sizeBytes: this.volume.sizeBytes,
        regionBytes: this.cluster.resync.regionBytes,
        peers: () =>
          this.sessions.all().map((peer) => {
            const { replication, disk } = this.core.peerStatus(peer.node.id);
            return { node: peer.node.id, unavailable: peer.up && replication === 'streaming' ? null : `not compared: ${replication}, ${disk}` };
          }),
        whileHeld: (offset, lengthBytes, use) => this.regions.whileHeld(offset, lengthBytes, use),
        askDigest: (node, seq, offset, lengthBytes) => this.askDigest(node, seq, offset, lengthBytes),
        markOutOfSync: (node, offset, lengthBytes) => {
          this.sessions.of(node);
          this.run(this.core.outOfSync(node, offset, lengthBytes));
        },
        repair: async (node) => {
          const peer = this.sessions.get(node);
          if (peer === undefined || !peer.up || !this.core.repair(node)) return false;
          this.log.warn('repairing the regions verify found different', { peer: node, bytes: this.core.dirtyBytes(node) });
          peer.resyncStart = { atMs: this.clock.nowMs(), bytes: this.core.dirtyBytes(node) };
          await this.resync(peer, peer.session);
          return this.core.peerStatus(node).disk === 'up-to-date';
        },
      },
      repair,
    );
    this.verifyRun = run;
    this.log.info('verify started', { repair, peers: run.report.peers.map((peer) => `${peer.node}${peer.compared ? '' : ` (${peer.note})`}`).join(',') });
    void run.run().then((report) => {
      const fields = { state: report.state, matched: report.matched, error: report.error, checkedBytes: report.checkedBytes };
      const differing = report.peers.filter((peer) => peer.mismatchedRegions > 0);
      if (differing.length > 0) {
        this.log.error('verify found regions that differ', {
          ...fields,
          peers: differing.map((peer) => `${peer.node}: ${peer.mismatchedRegions} regions${peer.repaired === null ? '' : peer.repaired ? ', repaired' : ', not repaired'}`).join('; '),
        });
      } else {
        this.log.info('verify finished', fields);
      }
    });
    return run.report;
  }

  /** The last verify's report (running or finished), or null. */
  verifyReport(): VerifyReport | null {
    return this.verifyRun?.report ?? null;
  }

  private askDigest(node: string, seq: number, offset: number, lengthBytes: number): Promise<Buffer> {
    const peer = this.sessions.get(node);
    // On the connection the region's entries travel on, after them.
    const link = peer === undefined ? undefined : linkFor(peer, offset);
    if (peer === undefined || !peer.up || link === undefined) return Promise.reject(new Error('peer disconnected'));
    return this.digests.ask(node, (token) => link.send(encodeFrame({ type: 'verify', token, seq, offset, lengthBytes })));
  }

  // ---- sessions ---------------------------------------------------------------------------

  /** A session is up: the core decides from the target's READY whether it streams, catches up or resyncs. */
  private sessionReady(peer: PeerSession, ready: ReadyMessage): void {
    const theirs = EpochHistory.from(ready.history);
    if (ready.epoch !== this.replica.epoch || !(theirs instanceof EpochHistory)) {
      // The target follows the epoch the HELLO named, or refuses it.
      this.counters.peerProtocolErrors += 1;
      const problem = theirs instanceof EpochHistory ? `READY names epoch ${ready.epoch}, not ${this.replica.epoch}` : `READY's history is impossible (${theirs.problem})`;
      this.log.error('protocol error from the peer', { peer: peer.node.id, reason: problem });
      for (const link of peer.links) link.close(`protocol error: ${problem}`);
      return;
    }
    // Where the copies part: entries it holds past it are another epoch's, not this node's.
    // (What it held before it followed this history is not of it: READY's divergedAfter.)
    const compared = compareCopies({ history: this.replica.history, lastSeq: this.lastSeq }, { history: theirs, lastSeq: ready.lastSeq }).sharedSeq;
    const sharedSeq = ready.diverged ? Math.min(compared, ready.divergedAfter) : compared;
    this.log.info('peer connected', { peer: peer.node.id, connections: peer.links.length, lastSeq: ready.lastSeq, sharedSeq, disk: ready.disk });
    this.splitBrainWith(peer.node.id, null);
    this.run(
      this.core.connected(
        peer.node.id,
        { lastSeq: ready.lastSeq, durableSeq: ready.durableSeq, cpSeq: ready.cpSeq, disk: ready.disk, sharedSeq, diverged: ready.diverged, empty: ready.empty },
        (seq) => this.entries.holdsFrom(seq),
      ),
    );
    const replication = this.core.peerStatus(peer.node.id).replication;
    if (replication === 'streaming' || replication === 'catching-up') {
      this.log.info(replication === 'streaming' ? 'peer streaming' : 'peer catching up', { peer: peer.node.id, fromSeq: ready.lastSeq + 1 });
    }
    this.tellInSync(peer);
  }

  /**
   * IN_SYNC, once per session, when the peer streams up to date: its acknowledgements
   * count from now on, so a promotion of it loses nothing this node acknowledges while
   * the session lasts (it records that; see ReplicaTarget's contact record).
   */
  private tellInSync(peer: PeerSession): void {
    if (peer.toldInSync || !peer.up) return;
    const status = this.core.peerStatus(peer.node.id);
    if (status.replication !== 'streaming' || status.disk !== 'up-to-date') return;
    peer.toldInSync = true;
    peer.links[0]?.send(encodeFrame({ type: 'in-sync', seq: status.ackedSeq }));
    this.log.info('peer in sync', { peer: peer.node.id, seq: status.ackedSeq });
  }

  private onMessage(peer: PeerSession, link: PeerLink, message: PeerMessage): void {
    const id = peer.node.id;
    switch (message.type) {
      case 'ack':
        this.run(this.core.acked(id, message.seq, message.status));
        peer.progress?.();
        if (!peer.toldInSync) this.tellInSync(peer);
        return;
      case 'flushed':
        this.run(this.core.flushed(id, message.seq, message.status));
        peer.progress?.();
        if (!peer.toldInSync) this.tellInSync(peer);
        return;
      case 'synced':
        this.run(this.core.synced(id, message.cpSeq, message.status));
        if (!peer.toldInSync) this.tellInSync(peer);
        return;
      case 'read-data':
      case 'read-failed':
        if (!this.reads.answered(id, message)) {
          this.counters.peerProtocolErrors += 1;
          link.close(`${message.type} for no READ of this node's`);
        }
        return;
      case 'verified':
        if (!this.digests.answered(id, message.token, message.status, message.digest)) {
          this.counters.peerProtocolErrors += 1;
          link.close('VERIFIED for no VERIFY');
        }
        return;
      case 'diverged':
        return this.run(this.core.diverged(id, message.all, message.extents));
      case 'reset-done':
        return this.run(this.core.resetDone(id, message.seq, message.status));
      default:
        this.counters.peerProtocolErrors += 1;
        link.close(`unexpected ${message.type} from the target`);
    }
  }

  // ---- actions ------------------------------------------------------------------------------

  private run(actions: PrimaryAction<Frame>[]): void {
    for (const action of actions) {
      switch (action.kind) {
        case 'send-entry':
          linkFor(this.sessions.of(action.peer), action.entry.offset)?.send(action.entry.frame);
          break;
        case 'send-flush':
          this.sessions.get(action.peer)?.links[0]?.send(encodeFrame({ type: 'flush', seq: action.seq }));
          break;
        case 'send-sync':
          this.sessions.get(action.peer)?.links[0]?.send(encodeFrame({ type: 'sync', cpSeq: action.cpSeq }));
          break;
        case 'complete': {
          const waiter = this.waiters.get(action.token);
          if (waiter === undefined) break;
          this.waiters.delete(action.token);
          if (action.error === null) waiter.resolve();
          else waiter.reject(new BlockmirrorError('ERR_REPLICA_UNAVAILABLE', action.error));
          break;
        }
        // Written at once, in order, atomically and durably; not on a disk that failed (the
        // node keeps no state of its own then: a new disk is brought back in full).
        case 'write-record':
          if (this.disklessSince === null) this.files.replaceFile(this.stateFile, encodeMirrorRecord(action.record), 'mirror-state');
          break;
        case 'write-bitmap':
          if (this.disklessSince === null) this.files.replaceFile(this.bitmapFile(action.peer), action.bitmap.encode(), 'bitmap');
          break;
        case 'read-unsynced':
          if (this.cannotServe(action.peer)) break;
          void this.markUnsynced(action.peer, action.fromSeq, action.toSeq);
          break;
        case 'peer-dropped':
          this.dropped(action.peer, action.disk, action.reason);
          break;
        case 'release':
          this.release();
          break;
        case 'catch-up-from-log': {
          if (this.cannotServe(action.peer)) break;
          const peer = this.sessions.of(action.peer);
          void catchUpFromLog(this.transfers, this.transferPeer(peer, peer.session), action.fromSeq, action.toSeq);
          break;
        }
        case 'send-reset': {
          const peer = this.sessions.of(action.peer);
          const bytes = this.core.dirtyBytes(action.peer);
          this.log.warn('peer needs a resync: it restarts its log here and is sent the regions it lacks', { peer: action.peer, fromSeq: action.seq, bytes });
          peer.resyncStart = { atMs: this.clock.nowMs(), bytes };
          peer.links[0]?.send(encodeFrame({ type: 'reset', seq: action.seq, reportAfter: action.reportAfter }));
          break;
        }
        case 'resync': {
          if (this.cannotServe(action.peer)) break;
          const peer = this.sessions.of(action.peer);
          if (action.namedBytes > 0) this.log.warn('peer held writes this node lost in a crash; their regions are resent', { peer: action.peer, bytes: action.namedBytes });
          void this.resync(peer, peer.session);
          break;
        }
        case 'protocol-error': {
          const peer = this.sessions.of(action.peer);
          this.counters.peerProtocolErrors += 1;
          this.log.error('protocol error from the peer', { peer: action.peer, reason: action.reason });
          for (const link of peer.links) link.close(`protocol error: ${action.reason}`);
          break;
        }
      }
    }
  }

  /**
   * Diskless, this node holds nothing to bring a peer up to date from (no log to read
   * back, no image to resync from): such a peer's session ends, and it stays out.
   */
  private cannotServe(id: string): boolean {
    if (this.disklessSince === null) return false;
    this.log.error('this node\'s disk failed: a peer that is not up to date cannot be brought back', { peer: id });
    if (this.sessions.of(id).up) this.sessions.drop(id, 'the primary\'s disk failed: it cannot bring this copy up to date');
    return true;
  }

  private dropped(id: string, disk: DiskState, reason: string): void {
    this.log.error('replica no longer counts for this volume', { peer: id, disk, reason, strict: this.volume.strict });
    // A drop while the links are up comes from the core (a bad reply, or a peer that
    // cannot be taken back); a drop because the links went down is the lost session's.
    if (!this.sessions.of(id).up) return;
    this.digests.failPeer(id, `dropped: ${reason}`);
    this.sessions.drop(id, reason);
  }
}
