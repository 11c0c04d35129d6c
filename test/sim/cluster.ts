// A deterministic simulation of one mirrored volume: a primary (MirrorSource) and one or
// two secondaries (MirrorTarget each) in one process, with clients, disks and links made
// of events on a virtual clock (event-queue.ts) and every choice drawn from one seeded
// Prng. It plays the part src/server plays for real — it performs the cores' actions and
// reports completions back — and lets the Checker look at every step. It must never read
// a real clock, start a timer or call Math.random(): a seed replays a run exactly.
//
// The primary assigns sequence numbers in arrival order, writes its image at once (so
// writes to one block land in seq order) and reports its own disk write, and for FUA and
// FLUSH its fdatasync, after a delay; it takes consistency points as the write log does.
// The secondaries are secondary.ts.
//
// Faults: a partition cuts a secondary's links (the source is told at once) and heals
// later, or never; a crash kills a secondary (it keeps only what was durable), the source
// notices some time later, and the secondary restarts and reconnects with what its
// recovery found. When the primary connects to a peer again is the shipped
// PeerConnector's decision (src/core/peer-connector.ts), one per peer as PeerSessions
// keeps them, told by a failure detector that is always right: the peer is down while it
// is cut or crashed, up again the moment it heals or restarts.
//
// The primary is the shipped PrimaryCore (src/core/primary-core.ts: MirrorSource,
// MirrorLedger and the resync plans), whose actions the sim carries out
// as MirrorEngine does: messages over the simulated links, the ledger's files kept in
// `files`, entries read back from the log. When a peer comes back the core decides:
// catch up from the entries it kept, or (config.resync) a bitmap resync, which the sim
// runs as runResync (src/server/peer-transfers.ts) does: it logs the runs of regions
// resyncNext gives with their current contents, and waits for the peer when told to.
// Without resync such a peer stays out.
//
// The primary can crash too (config.primaryCrashes), as src/storage/write-log.ts behaves:
// every request in flight is dropped unanswered, every link closes, and its log keeps
// what was durable (and maybe some written entries past it); what it had sent to peers
// and not made durable is gone from it, though peers may hold it. Its volume file may
// keep lost writes in blocks the replay does not touch; its write-intent record names
// the regions of the entries since its last consistency point (the record keeps each
// extent until a CP covers it). At its restart it replays the log up to the recovered
// entry N, takes a consistency point (a marker at N+1 when it replayed anything), and
// opens a new MirrorLedger from its files (as MirrorEngine's constructor does) and a new
// MirrorSource from there, numbering new entries after it (reusing the numbers of lost
// ones). Clients reconnect and go on.

import type { DiskState, MirrorSource } from '../../src/core/mirror-source.js';
import { MirrorLedger, type LedgerOpening, type MirrorRecord } from '../../src/core/mirror-ledger.js';
import type { PrimaryAction, PrimaryCore } from '../../src/core/primary-core.js';
import { ReplicaCore } from '../../src/core/replica-core.js';
import { EpochHistory } from '../../src/core/epoch-history.js';
import { PeerConnector, type ConnectorAction } from '../../src/core/peer-connector.js';
import { constants } from '../../src/constants.js';
import { DirtyBitmap } from '../../src/core/dirty-bitmap.js';
import { Prng } from '../unit/prng.js';
import { Checker, SimFailure, type CheckedCluster } from './checker.js';
import type { Crash, PrimaryCrash, SimConfig, UsRange } from './config.js';
import { EventQueue } from './event-queue.js';
import { Secondary } from './secondary.js';
import { Replica, entryBytes, writeFrame, type Frame, type WriteFrame } from './volume.js';

export type { SimConfig } from './config.js';

/** The primary's back-off between attempts to reach a peer, on the sim's clock (the node's is 200 ms to 5 s). */
const RECONNECT_DELAY_US_MIN = 1000;
const RECONNECT_DELAY_US_MAX = 16_000;

export interface ClientRequest {
  token: number;
  clientId: number;
  kind: 'write' | 'fua' | 'flush';
  frame: WriteFrame | null;
  /** A write's entry; for a FLUSH, the last entry when it arrived. -1 until it arrives. */
  seq: number;
  sentAtUs: number;
  ackedAtUs: number | null;
  /** FLUSH: the writes answered before it was sent, which it must make durable. */
  ackedBefore: readonly ClientRequest[];
  /** The primary's incarnation it was sent to (its connection dies with it). */
  incarnation: number;
  /** Never answered: the primary crashed while it was in flight. */
  dropped: boolean;
}

interface Client {
  id: number;
  opsLeft: number;
  inFlight: number;
  timerSet: boolean;
  /** Requests of one client arrive in the order sent (one NBD connection). */
  lastArrivalUs: number;
}

export interface RunSummary {
  config: SimConfig;
  events: number;
  virtualUs: number;
  lastSeq: number;
  answered: { write: number; fua: number; flush: number };
  checkpoints: number;
  messages: { sent: number; lost: number };
  maxQueuedBytes: number;
  queuedBytesBound: number;
  maxInflightBytes: number;
  maxBufferedBytes: number;
  checks: number;
  drops: string[];
  faultInjected: boolean;
  crashes: number;
  resyncs: { started: number; done: number; regions: number };
  /** Replies that counted a resyncing peer which did not hold their write yet. */
  countedLacking: number;
  /** Crash recoveries (of any replica) whose log scan discarded a torn entry. */
  tornTails: number;
  peers: { id: string; inSync: boolean; disk: DiskState; storedSeq: number; durableSeq: number }[];
  primary: PrimaryTally;
}

/** What the primary's crashes did in one run. */
export interface PrimaryTally {
  crashes: number;
  /** Entries the crashes lost (appended, not recovered). */
  lostEntries: number;
  /** Lost writes whose bytes the volume file kept in some block. */
  keptInImage: number;
  /** Requests in flight at a crash (never answered). */
  droppedRequests: number;
  /** Restarts that took a consistency point after replaying entries (a marker at N+1). */
  startMarkers: number;
  /** Peers holding entries past what the primary recovered, at its crash. */
  peersAhead: number;
  /** DIVERGED reports that named regions, and the entries they named. */
  divergedReports: number;
  divergedEntries: number;
  /** Resyncs completed after a primary crash. */
  resyncsDone: number;
}

export function emptyPrimaryTally(): PrimaryTally {
  return { crashes: 0, lostEntries: 0, keptInImage: 0, droppedRequests: 0, startMarkers: 0, peersAhead: 0, divergedReports: 0, divergedEntries: 0, resyncsDone: 0 };
}

/** One peer's resync under way on the primary. */
interface ResyncState {
  run: SimResync | null;
}

/** The primary's files the ledger writes: the state file and each peer's bitmap file. */
interface LedgerFiles {
  record: MirrorRecord | null;
  bitmaps: Map<string, Buffer>;
}

interface SimResync {
  /** The links session it belongs to: it ends with it. */
  session: number;
  /** Only the latest scheduled step runs. */
  step: number;
}

export class Cluster implements CheckedCluster {
  readonly queue = new EventQueue();
  /** The primary's replica core, as LocalVolume owns one (a new one at each restart). */
  private replica = new ReplicaCore<Frame>({ lastSeq: 0, role: 'primary', history: EpochHistory.initial('p') });
  /** Its mirror part (`replica.mirror`, its ledger opened from `files`). */
  core: PrimaryCore<Frame>;
  private readonly files: LedgerFiles = { record: null, bitmaps: new Map() };
  /** The primary is running (false from a crash to its restart). */
  primaryUp = true;
  /** Counts the primary's crashes: what it had under way dies with it. */
  primaryIncarnation = 0;
  readonly primary: Replica;
  readonly peers: Secondary[] = [];
  readonly requests = new Map<number, ClientRequest>();
  readonly checker: Checker;
  private readonly prng: Prng;
  private readonly cumulativeBytes: number[] = [0];
  private readonly clients: Client[] = [];
  private readonly answeredWrites: ClientRequest[] = [];
  private readonly answered = { write: 0, fua: 0, flush: 0 };
  private nextToken = 1;
  private nextWriteId = 1;
  /** The peer whose drop the sim itself is causing (a disconnect, or a connect the source refuses). */
  private expectedDrop: string | null = null;
  private checkpointRunning = false;
  /** When the primary's last log write completes (they complete in sequence order). */
  private primaryLogUs = 0;
  private lastMarkerSeq = 0;
  private lastCpSeq = 0;
  private checkpoints = 0;
  private readonly drops: string[] = [];
  private readonly fault = { injected: false };
  /** Per peer: cuts in effect (a peer is reachable only with none). */
  private readonly partitions = new Map<string, number>();
  private readonly resyncs = new Map<string, ResyncState>();
  private readonly resyncCounts = { started: 0, done: 0, regions: 0 };
  private crashCount = 0;
  /** Per block of the primary: the seq of each version in primary.image.versions. */
  private readonly versionSeqs: number[][];
  /** Per block of the primary: write id -> its index in primary.image.versions. */
  private readonly versionIndex: Map<number, number>[];
  /** Per block: the writes a primary crash lost there. */
  private readonly lost: Set<number>[];
  /** Every write the primary ever logged -> its place in the order they were logged. */
  private readonly ordinals = new Map<number, number>();
  private readonly primaryTally: PrimaryTally = emptyPrimaryTally();
  /** Per peer, the primary's reconnect schedule (a new one at each start of the primary). */
  private connectors = new Map<string, PeerConnector>();
  /** Per peer, the connector's wait that is set (a later one, or a cancel, makes it stale). */
  private readonly waits = new Map<string, number>();
  private nextWait = 1;

  constructor(
    readonly config: SimConfig,
    private readonly trace: ((line: string) => void) | null = null,
  ) {
    this.prng = new Prng((config.seed ^ 0x5bd1e995) >>> 0);
    const { mode, catchUpBytesMax, resync } = config;
    const { windowBytesMax, lagBytesMax } = this.sourceLimits();
    const sizeBytes = config.blocks * config.blockBytes;
    this.core = this.replica.mirror({ mode, strict: false, peers: config.peers, lastSeq: 0, lagBytesMax, windowBytesMax, catchUpBytesMax, resync, sizeBytes }, this.openLedger(0, 0, null, null));
    this.onSource(this.core.open());
    this.primary = new Replica('primary', config.blocks, config.blockBytes);
    this.checker = new Checker(this);
    const cluster = this;
    const context = {
      config,
      queue: this.queue,
      prng: this.prng,
      checker: this.checker,
      get core(): PrimaryCore<Frame> {
        return cluster.core;
      },
      onSource: (actions: PrimaryAction<Frame>[]): void => this.onSource(actions),
      onResetDone: (peer: string, seq: number, status: number): void => this.resetDone(peer, seq, status),
      onDiverged: (peer: string, blocks: { firstBlock: number; blockCount: number }[]): void => this.diverged(peer, blocks),
      onFlushed: (peer: string): void => this.wakeResync(peer),
      fault: this.fault,
    };
    for (const id of config.peers) {
      this.peers.push(new Secondary(id, context));
      this.partitions.set(id, 0);
      this.resyncs.set(id, { run: null });
    }
    this.versionSeqs = Array.from({ length: config.blocks }, () => []);
    this.versionIndex = Array.from({ length: config.blocks }, () => new Map());
    this.lost = Array.from({ length: config.blocks }, () => new Set());
    for (let id = 1; id <= config.clients; id += 1) this.clients.push({ id, opsLeft: config.opsPerClient, inFlight: 0, timerSet: false, lastArrivalUs: 0 });
  }

  /**
   * The window and lag bound the primary's core is given: the configured ones, which the
   * checker holds it to, or (deliberate faults) four and sixteen times them.
   */
  private sourceLimits(): { windowBytesMax: number; lagBytesMax: number } {
    const { fault, windowBytesMax, lagBytesMax } = this.config;
    if (fault === 'source-overruns-window' || fault === 'source-ignores-lag') this.fault.injected = true;
    return {
      windowBytesMax: fault === 'source-overruns-window' ? 4 * windowBytesMax : windowBytesMax,
      lagBytesMax: fault === 'source-ignores-lag' ? 16 * lagBytesMax : lagBytesMax,
    };
  }

  /** The primary's MirrorSource, which the checker reads. */
  get source(): MirrorSource<Frame> {
    return this.core.source;
  }

  nowUs(): number {
    return this.queue.now;
  }

  bytesThrough(seq: number): number {
    const bytes = this.cumulativeBytes[seq];
    if (bytes === undefined) throw new Error(`no entry ${seq} on the primary`);
    return bytes;
  }

  /** The index in the primary's history of `block` of the version it held after entry `seq` (-1: zeroes). */
  primaryVersionAt(block: number, seq: number): number {
    const seqs = this.versionSeqs[block];
    if (seqs === undefined) throw new Error(`no block ${block}`);
    let low = 0;
    let high = seqs.length;
    while (low < high) {
      const middle = (low + high) >> 1;
      if ((seqs[middle] ?? 0) <= seq) low = middle + 1;
      else high = middle;
    }
    return low - 1;
  }

  /** The index of write `writeId` in the primary's history of `block` (-1: zeroes; null: never written there). */
  positionOf(block: number, writeId: number): number | null {
    if (writeId === 0) return -1;
    return this.versionIndex[block]?.get(writeId) ?? null;
  }

  /** Where write `writeId` stands among every write the primary ever logged (-1: zeroes; null: never logged). */
  ordinalOf(writeId: number): number | null {
    if (writeId === 0) return -1;
    return this.ordinals.get(writeId) ?? null;
  }

  /** Whether a crash of the primary lost write `writeId` in `block`. */
  lostIn(block: number, writeId: number): boolean {
    return this.lost[block]?.has(writeId) === true;
  }

  get primaryCrashes(): number {
    return this.primaryTally.crashes;
  }

  /** Reachable and running: the sim may connect to it. */
  reachable(peer: Secondary): boolean {
    return peer.up && (this.partitions.get(peer.id) ?? 0) === 0;
  }

  run(): RunSummary {
    this.startConnectors();
    for (const client of this.clients) this.scheduleClient(client);
    this.scheduleCheckpoint();
    for (const cut of this.config.cuts) {
      const peer = this.peer(cut.peer);
      this.queue.at(cut.atUs, `cut ${peer.id}`, () => {
        this.partitions.set(peer.id, (this.partitions.get(peer.id) ?? 0) + 1);
        this.lose(peer, 'links cut by the simulator');
      });
      const after = cut.reconnectAfterUs;
      if (after !== null) {
        this.queue.at(cut.atUs + after, `heal ${peer.id}`, () => {
          this.partitions.set(peer.id, (this.partitions.get(peer.id) ?? 1) - 1);
          this.heartbeatUp(peer);
        });
      }
    }
    for (const crash of this.config.crashes) {
      const peer = this.peer(crash.peer);
      this.queue.at(crash.atUs, `crash ${peer.id}`, () => this.crash(peer, crash));
    }
    for (const crash of this.config.primaryCrashes) this.queue.at(crash.atUs, 'crash primary', () => this.crashPrimary(crash));
    for (let label = this.queue.step(); label !== null; label = this.queue.step()) {
      this.trace?.(`${this.queue.now}us ${label}`);
      this.checker.afterEvent();
      if (this.queue.executed > this.config.eventsMax) throw new SimFailure(`no quiet after ${this.config.eventsMax} events (a livelock?)`);
    }
    this.checker.final();
    return this.summary();
  }

  // ---- peers --------------------------------------------------------------------------

  private peer(id: string): Secondary {
    const peer = this.peers.find((each) => each.id === id);
    if (peer === undefined) throw new Error(`no peer ${id}`);
    return peer;
  }

  private connect(peer: Secondary): void {
    peer.links.open();
    peer.inSync = true;
    const ready = peer.ready();
    this.expectedDrop = peer.id;
    this.onSource(this.core.connected(peer.id, ready, () => false));
    this.expectedDrop = null;
  }

  /** The peer's links go down: what is in flight is lost, and the target's session ends. */
  disconnect(peer: Secondary, reason: string): void {
    if (!peer.inSync) return;
    peer.cut();
    this.expectedDrop = peer.id;
    this.onSource(this.core.disconnected(peer.id, reason));
    this.expectedDrop = null;
  }

  // ---- reconnects, as PeerSessions carries out its PeerConnector's actions -------------

  /** The primary (re)starts: a new connector per peer, each connecting if the peer is up. */
  private startConnectors(): void {
    this.connectors = new Map(this.peers.map((peer) => [peer.id, new PeerConnector(RECONNECT_DELAY_US_MIN / 1000, RECONNECT_DELAY_US_MAX / 1000)]));
    this.waits.clear();
    for (const peer of this.peers) this.onConnector(peer, this.connectorOf(peer).start(this.reachable(peer)));
  }

  private connectorOf(peer: Secondary): PeerConnector {
    const connector = this.connectors.get(peer.id);
    if (connector === undefined) throw new Error(`no connector for ${peer.id}`);
    return connector;
  }

  /** The failure detector calls the peer up (healed, restarted). */
  private heartbeatUp(peer: Secondary): void {
    if (this.primaryUp) this.onConnector(peer, this.connectorOf(peer).heartbeatUp());
  }

  /**
   * The peer's links go down because it is cut off or crashed: the source is told, and the
   * connector hears of the lost session while the failure detector calls the peer down.
   */
  private lose(peer: Secondary, reason: string): void {
    if (!peer.inSync) return;
    this.disconnect(peer, reason);
    this.retry(peer, reason, false);
  }

  /** The session failed or was lost or dropped: the connector says when to try again. */
  private retry(peer: Secondary, problem: string, available: boolean): void {
    if (this.primaryUp) this.onConnector(peer, this.connectorOf(peer).failed(problem, available));
  }

  private onConnector(peer: Secondary, actions: ConnectorAction[]): void {
    const connector = this.connectorOf(peer);
    for (const action of actions) {
      switch (action.kind) {
        case 'connect':
          this.reconnect(peer);
          break;
        case 'wait': {
          const wait = this.nextWait++;
          this.waits.set(peer.id, wait);
          this.queue.after(action.delayMs * 1000, `reconnect ${peer.id} after the back-off`, () => {
            if (this.waits.get(peer.id) !== wait || this.connectors.get(peer.id) !== connector) return;
            this.waits.delete(peer.id);
            this.onConnector(peer, connector.timerFired(this.reachable(peer)));
          });
          break;
        }
        case 'cancel-wait':
          this.waits.delete(peer.id);
          break;
        case 'report':
          this.trace?.(`${this.queue.now}us cannot reach ${peer.id}: ${action.problem}`);
          break;
      }
    }
  }

  /**
   * A connection attempt, as the node makes one: a session with the target's READY, which
   * a target sends only once nothing of its last session is under way (it waits here).
   */
  private reconnect(peer: Secondary): void {
    if (!this.primaryUp || peer.inSync) return;
    if (!this.reachable(peer)) {
      this.retry(peer, 'the peer cannot be reached', false);
      return;
    }
    if (!peer.idle) {
      this.queue.after(200, `reconnect ${peer.id} (target busy)`, () => this.reconnect(peer));
      return;
    }
    this.core.connecting(peer.id);
    this.connect(peer);
    if (peer.inSync) this.connectorOf(peer).connected();
  }

  /**
   * The secondary crashes now: the source is told when it notices (or when the peer is
   * back, whichever comes first), and the peer restarts and reconnects later.
   */
  private crash(peer: Secondary, crash: Crash): void {
    if (!peer.up) return;
    this.crashCount += 1;
    const last = peer.crash(crash.keepFraction);
    this.trace?.(`${this.queue.now}us ${peer.id} crashed: its log recovers through ${last} (durable ${peer.replica.durablePrefix})`);
    this.checker.crashed(peer);
    const incarnation = peer.incarnation;
    this.queue.after(Math.min(crash.detectAfterUs, crash.restartAfterUs), `${peer.id}'s crash noticed`, () => {
      if (peer.incarnation === incarnation) this.lose(peer, 'peer crashed');
    });
    this.queue.after(crash.restartAfterUs, `${peer.id} restarts`, () => {
      this.lose(peer, 'peer restarted');
      peer.restart();
      this.heartbeatUp(peer);
    });
  }

  /** The core dropped the peer (its ledger has marked what it may lack). */
  private onPeerDropped(id: string, disk: DiskState, reason: string): void {
    this.drops.push(`${id} (${disk}) at ${this.queue.now}us: ${reason}`);
    this.trace?.(`${this.queue.now}us the source drops ${id} (${disk}): ${reason}`);
    const peer = this.peer(id);
    // A peer that is away may be given up on when it misses more than the source keeps for it.
    const givenUpWhileAway = !peer.inSync && reason.includes('while away');
    if (this.expectedDrop !== id && !givenUpWhileAway) throw new SimFailure(`the source dropped ${id} (${disk}) unexpectedly: ${reason}`);
    if (peer.inSync) {
      peer.cut();
      // The engine closes the links of a peer dropped while they were up, and retries.
      // Without resync the core drops it again at each retry: the sim stops retrying.
      this.retry(peer, reason, this.config.resync);
    }
  }

  // ---- bitmap resync ------------------------------------------------------------------

  private resyncOf(id: string): ResyncState {
    const state = this.resyncs.get(id);
    if (state === undefined) throw new Error(`no peer ${id}`);
    return state;
  }

  /** The bytes of the volume an entry changes (a CP marker: none). */
  private extentOf(frame: Frame): { offset: number; lengthBytes: number } {
    if (frame.kind === 'cp') return { offset: 0, lengthBytes: 0 };
    return { offset: frame.firstBlock * this.config.blockBytes, lengthBytes: frame.blockCount * this.config.blockBytes };
  }

  /** A bitmap of the volume in regions of config.resyncRegionBlocks blocks, nothing marked. */
  private newBitmap(): DirtyBitmap {
    const { blocks, blockBytes, resyncRegionBlocks } = this.config;
    return new DirtyBitmap(blocks * blockBytes, resyncRegionBlocks * blockBytes);
  }

  /**
   * As MirrorEngine's constructor opens the ledger: from the files a previous run left.
   * The deliberate faults of the ledger (config.ts) patch what it is given, or the ledger.
   */
  private openLedger(lastSeq: number, recoveredSeq: number, replayed: DirtyBitmap | null, intent: DirtyBitmap | null): MirrorLedger {
    const { blocks, blockBytes, resyncRegionBlocks, peers, fault } = this.config;
    const opening: LedgerOpening = {
      peers,
      sizeBytes: blocks * blockBytes,
      regionBytes: resyncRegionBlocks * blockBytes,
      lastSeq,
      recoveredSeq,
      record: this.files.record,
      bitmaps: new Map(peers.map((id) => [id, this.files.bitmaps.get(id) ?? null])),
      replayed,
      intent: intent === null ? null : { extents: intent, readable: true },
      unsyncedGenerationsMax: constants.unsyncedGenerationsMax,
    };
    if (fault === 'ledger-diverged-after-last' && recoveredSeq !== lastSeq) {
      this.fault.injected = true;
      opening.recoveredSeq = lastSeq;
    }
    // Faults the write-intent record would hide go without it (it marks every lost entry's regions).
    if (fault !== null && withoutIntent.includes(fault) && intent !== null) {
      if (fault === 'ledger-ignores-intent' && intent.dirtyRegions > 0) this.fault.injected = true;
      opening.intent = null;
    }
    if (fault === 'ledger-forgets-unsynced') return new ForgetfulLedger(opening, this.fault);
    return new MirrorLedger(opening);
  }

  /** The core's send-reset: the peer is told to restart its log (and to name what it holds past `reportAfter`). */
  private resetPeer(id: string, seq: number, reportAfter: number, full: boolean): void {
    const peer = this.peer(id);
    this.resyncCounts.started += 1;
    this.trace?.(`${this.queue.now}us the source resets ${id} at ${seq}${full ? ' (full)' : ''}, ${this.core.bitmap(id).dirtyRegions} regions dirty`);
    peer.links.send('to-peer', 0, `reset ${seq}`, () => peer.reset(seq, reportAfter));
  }

  /** DIVERGED: blocks of entries the peer holds past what the source asked about; only between RESET and RESET_DONE. */
  private diverged(id: string, blocks: { firstBlock: number; blockCount: number }[]): void {
    this.primaryTally.divergedReports += 1;
    this.primaryTally.divergedEntries += blocks.length;
    const extents = blocks.map((range) => this.extentOf({ kind: 'resync', ...range, ids: [], data: Buffer.alloc(0) }));
    if (this.config.fault === 'primary-ignores-diverged') {
      // Injected when it leaves out a region that was not dirty anyway.
      const probe = this.core.bitmap(id).clone();
      for (const { offset, lengthBytes } of extents) probe.mark(offset, lengthBytes);
      if (probe.dirtyRegions > this.core.bitmap(id).dirtyRegions) this.fault.injected = true;
      return;
    }
    this.onSource(this.core.diverged(id, false, extents));
  }

  private resetDone(id: string, seq: number, status: number): void {
    this.onSource(this.core.resetDone(id, seq, status));
  }

  /** The core's resync action: the peer streams again and is sent the regions it lacks. */
  private startResync(id: string): void {
    const peer = this.peer(id);
    const state = this.resyncOf(id);
    state.run = { session: peer.links.sessionId, step: 0 };
    this.resyncStep(peer, state, state.run);
  }

  /** A FLUSHED arrived: a resync waiting for the peer's progress looks again. */
  private wakeResync(id: string): void {
    const state = this.resyncOf(id);
    const run = state.run;
    if (run === null) return;
    run.step += 1;
    const step = run.step;
    this.queue.after(0, `resync of ${id} wakes`, () => {
      if (run.step === step) this.resyncStep(this.peer(id), state, run);
    });
  }

  /** One turn of runResync (src/server/peer-transfers.ts): log the runs the core gives, wait for the peer, or finish. */
  private resyncStep(peer: Secondary, state: ResyncState, run: SimResync): void {
    if (state.run !== run) return;
    const { blocks, resyncRegionBlocks: regionBlocks, resyncInflightMax: inflightMax, resyncRunRegionsMax: runRegionsMax } = this.config;
    // The engine's limits, but for the window: the sim draws it (resyncInflightMax).
    const pace = {
      inflightMax,
      runsMax: constants.resyncReadsParallelMax,
      runRegionsMax,
      batchRegionsMax: Number.POSITIVE_INFINITY,
      // Unpaced, as a node without resync.rateMax runs it.
      rateBytesPerSecMax: 0,
      regionBytes: regionBlocks * this.config.blockBytes,
    };
    for (let turn = 0; ; turn += 1) {
      if (turn > blocks + 2) throw new SimFailure(`the resync of ${peer.id} plans without end`);
      if (!peer.inSync || peer.links.sessionId !== run.session) {
        state.run = null;
        return;
      }
      const step = this.core.resyncNext(peer.id, pace, this.queue.now / 1000);
      if (step.kind === 'stopped') {
        state.run = null;
        return;
      }
      if (step.kind === 'pause') throw new SimFailure(`the resync of ${peer.id} paused, unpaced`);
      if (step.kind === 'log') {
        for (const regions of step.runs) {
          // LocalVolume.logCurrent: the regions' current contents, logged in order with live writes.
          const firstBlock = (regions[0] ?? 0) * regionBlocks;
          const seq = this.append(this.primary.image.resyncFrame(firstBlock, Math.min(regions.length * regionBlocks, blocks - firstBlock)));
          this.primaryWrite(seq, () => undefined);
          this.core.resyncLogged(peer.id, seq, regions);
          this.resyncCounts.regions += regions.length;
        }
        continue;
      }
      this.onSource(step.actions);
      if (step.kind === 'done') {
        state.run = null;
        this.resyncCounts.done += 1;
        if (this.primaryTally.crashes > 0) this.primaryTally.resyncsDone += 1;
        this.trace?.(`${this.queue.now}us resync of ${peer.id} done`);
        return;
      }
      break;
    }
    // The peer was asked to make durable what it has stored so far: look again on FLUSHED or later.
    if (state.run !== run) return;
    run.step += 1;
    const step = run.step;
    this.queue.after(2000, `resync of ${peer.id} looks again`, () => {
      if (run.step === step) this.resyncStep(peer, state, run);
    });
  }

  // ---- clients ------------------------------------------------------------------------

  private draw(range: UsRange): number {
    return this.prng.between(range.minUs, range.maxUs);
  }

  private scheduleClient(client: Client): void {
    if (!this.primaryUp || client.timerSet || client.opsLeft === 0 || client.inFlight >= this.config.outstandingPerClient) return;
    client.timerSet = true;
    this.queue.after(this.draw(this.config.thinkUs), `client ${client.id} sends`, () => {
      client.timerSet = false;
      // The primary is down: the client reconnects when it is back.
      if (!this.primaryUp) return;
      this.send(client);
      this.scheduleClient(client);
    });
  }

  private send(client: Client): void {
    const { config, prng } = this;
    client.opsLeft -= 1;
    client.inFlight += 1;
    const roll = prng.below(100);
    const kind = roll < 10 ? 'flush' : roll < 25 ? 'fua' : 'write';
    let frame: WriteFrame | null = null;
    if (kind !== 'flush') {
      const firstBlock = prng.chance(config.hotChance) ? prng.below(config.hotBlocks) : prng.below(config.blocks);
      const blockCount = Math.min(prng.between(1, config.writeBlocksMax), config.blocks - firstBlock);
      frame = writeFrame(this.nextWriteId, client.id, firstBlock, blockCount, config.blockBytes);
      this.nextWriteId += 1;
    }
    const request: ClientRequest = {
      token: this.nextToken,
      clientId: client.id,
      kind,
      frame,
      seq: -1,
      sentAtUs: this.queue.now,
      ackedAtUs: null,
      ackedBefore: kind === 'flush' ? [...this.answeredWrites] : [],
      incarnation: this.primaryIncarnation,
      dropped: false,
    };
    this.nextToken += 1;
    this.requests.set(request.token, request);
    const delayUs = prng.between(config.clientNetwork.minUs, config.clientNetwork.maxUs);
    client.lastArrivalUs = Math.max(client.lastArrivalUs, this.queue.now + delayUs);
    this.queue.at(client.lastArrivalUs, `${kind} ${request.token} arrives`, () => this.arrived(request));
  }

  private clientsActive(): boolean {
    return this.clients.some((client) => client.opsLeft > 0 || client.inFlight > 0);
  }

  // ---- the primary --------------------------------------------------------------------

  private arrived(request: ClientRequest): void {
    // Its connection died with the primary it was sent to.
    if (request.incarnation !== this.primaryIncarnation) return;
    const { token, frame } = request;
    const refusal = this.replica.refusal();
    if (refusal !== null) throw new SimFailure(`the primary refused a client's request: ${refusal.reason}`);
    if (frame === null) {
      request.seq = this.replica.local.lastSeq;
      this.onSource(this.core.request(token, request.seq, true));
      this.primarySync(() => this.onSource(this.core.localDone(token, null)));
      return;
    }
    request.seq = this.append(frame);
    this.primary.image.write(frame);
    this.onSource(this.core.request(token, request.seq, request.kind === 'fua'));
    this.primaryWrite(request.seq, () => {
      if (request.kind === 'fua') this.primarySync(() => this.onSource(this.core.localDone(token, null)));
      else this.onSource(this.core.localDone(token, null));
    });
  }

  /** Appends an entry to the primary's log and hands it to the mirror. */
  private append(frame: Frame): number {
    const seq = this.replica.local.assignSeq();
    this.primary.append(seq, frame);
    if (frame.kind === 'write') {
      this.ordinals.set(frame.writeId, this.ordinals.size);
      for (let block = frame.firstBlock; block < frame.firstBlock + frame.blockCount; block += 1) {
        const seqs = this.versionSeqs[block] ?? [];
        this.versionIndex[block]?.set(frame.writeId, seqs.length);
        seqs.push(seq);
      }
    }
    const bytes = entryBytes(frame);
    this.cumulativeBytes.push(this.bytesThrough(seq - 1) + bytes);
    // A CP marker's offset field is a sequence number: it is routed like offset 0.
    const offset = frame.kind === 'write' ? frame.firstBlock * this.config.blockBytes : 0;
    this.onSource(this.core.placed({ seq, bytes, offset, lengthBytes: this.extentOf(frame).lengthBytes, frame }));
    return seq;
  }

  /**
   * The primary's log write of entry `seq`. One writer writes the log in sequence order
   * (WriteLog), so entries are written in order: a sync never covers an entry past one
   * that is not written yet, and recovery finds a prefix.
   */
  private primaryWrite(seq: number, done: () => void): void {
    const incarnation = this.primaryIncarnation;
    const atUs = Math.max(this.queue.now + this.draw(this.config.diskWriteUs), this.primaryLogUs);
    this.primaryLogUs = atUs;
    this.queue.at(atUs, `primary writes ${seq}`, () => {
      // What the process had under way died with it.
      if (incarnation !== this.primaryIncarnation) return;
      this.primary.record(seq).stored = true;
      done();
    });
  }

  /** An fdatasync: it covers the entries written when it starts. */
  private primarySync(done: () => void): void {
    const covered: number[] = [];
    for (let seq = this.primary.durablePrefix + 1; seq <= this.primary.lastSeq; seq += 1) {
      const record = this.primary.record(seq);
      if (record.stored && !record.durable) covered.push(seq);
    }
    const incarnation = this.primaryIncarnation;
    this.queue.after(this.draw(this.config.diskSyncUs), 'primary fdatasync', () => {
      if (incarnation !== this.primaryIncarnation) return;
      for (const seq of covered) if (!this.primary.record(seq).durable) this.primary.markDurable(seq);
      done();
    });
  }

  /**
   * Consistency points, as the write log takes them: sync, append a marker, and tell the
   * mirror the CP (the marker's seq if nothing came between). A new CP waits until the
   * last marker is acknowledged by every streaming peer; a node's CP interval (seconds)
   * is far longer than a round trip, and this keeps the bound of invariant (e) exact.
   */
  private scheduleCheckpoint(): void {
    const incarnation = this.primaryIncarnation;
    this.queue.after(this.draw(this.config.checkpointIntervalUs), 'checkpoint timer', () => {
      if (incarnation !== this.primaryIncarnation || !this.clientsActive()) return;
      this.takeCheckpoint();
      this.scheduleCheckpoint();
    });
  }

  private takeCheckpoint(): void {
    if (this.checkpointRunning) return;
    if (this.core.status().some((peer) => peer.replication === 'streaming' && peer.ackedSeq < this.lastMarkerSeq)) return;
    this.checkpointRunning = true;
    this.primarySync(() => {
      const targetSeq = this.primary.durablePrefix;
      // The volume is durable: the bitmaps are written before the CP is recorded.
      this.onSource(this.core.persist());
      const markerSeq = this.append({ kind: 'cp', targetSeq });
      this.lastMarkerSeq = markerSeq;
      this.primaryWrite(markerSeq, () => {
        this.primary.markDurable(markerSeq);
        this.checkpointRunning = false;
        const cpSeq = markerSeq === targetSeq + 1 && this.primary.durablePrefix >= markerSeq ? markerSeq : targetSeq;
        if (cpSeq <= this.lastCpSeq) return;
        this.lastCpSeq = cpSeq;
        this.checkpoints += 1;
        this.onSource(this.core.checkpoint(cpSeq));
      });
    });
  }

  // ---- the primary's crash and restart ---------------------------------------------------

  /**
   * The primary crashes now: requests in flight are never answered, its links close (the
   * peers' targets see their sessions end), and what it had under way is lost. Its log
   * keeps what recovery will find; its image becomes what the replay makes of it.
   */
  private crashPrimary(crash: PrimaryCrash): void {
    if (!this.primaryUp) return;
    this.primaryUp = false;
    this.primaryIncarnation += 1;
    this.primaryTally.crashes += 1;
    for (const peer of this.peers) if (peer.inSync) peer.cut();
    for (const request of this.requests.values()) {
      if (request.ackedAtUs !== null || request.dropped) continue;
      request.dropped = true;
      this.primaryTally.droppedRequests += 1;
    }
    for (const client of this.clients) client.inFlight = 0;
    // A FLUSH on a new connection promises nothing about writes answered before the crash.
    this.answeredWrites.length = 0;
    this.checkpointRunning = false;
    for (const state of this.resyncs.values()) state.run = null;
    const before = this.primary.lastSeq;
    const durable = this.primary.durablePrefix;
    const entries: { seq: number; frame: Frame }[] = [];
    for (let seq = this.lastCpSeq + 1; seq <= before; seq += 1) entries.push({ seq, frame: this.primary.record(seq).frame });
    const keep = durable + Math.floor(crash.keepFraction * (this.primary.storedPrefix() - durable));
    // The deliberate fault: recovery ends just before the last write a FUA was answered for.
    let losesFrom: number | null = null;
    if (this.config.fault === 'primary-loses-durable') {
      for (const request of this.requests.values()) {
        if (request.kind === 'fua' && request.ackedAtUs !== null && request.incarnation === this.primaryIncarnation - 1 && request.seq > this.lastCpSeq) {
          losesFrom = Math.max(losesFrom ?? 0, request.seq);
        }
      }
    }
    if (losesFrom !== null) this.fault.injected = true;
    const recovered = losesFrom === null ? this.primary.crash(keep) : this.primary.crashTo(losesFrom - 1);
    this.primaryTally.lostEntries += before - recovered;
    this.cumulativeBytes.length = recovered + 1;
    // Blocks the replay rewrites, and the regions of the entries replayed (for the ledger).
    const replayedBlocks = new Set<number>();
    const replayed = this.newBitmap();
    for (const { seq, frame } of entries) {
      if (seq > recovered || frame.kind === 'cp') continue;
      for (let block = frame.firstBlock; block < frame.firstBlock + frame.blockCount; block += 1) replayedBlocks.add(block);
      const { offset, lengthBytes } = this.extentOf(frame);
      replayed.mark(offset, lengthBytes);
    }
    // The write-intent record: at least the regions of every write since the last CP that
    // the crash lost (their extents were in it before the volume file was written there).
    const intent = this.newBitmap();
    // Lost writes leave the primary's history of each block.
    const lostWrites = new Map<number, WriteFrame[]>();
    for (const { seq, frame } of entries) {
      if (seq <= recovered || frame.kind !== 'write') continue;
      const { offset, lengthBytes } = this.extentOf(frame);
      intent.mark(offset, lengthBytes);
      for (let block = frame.firstBlock; block < frame.firstBlock + frame.blockCount; block += 1) {
        this.versionIndex[block]?.delete(frame.writeId);
        this.lost[block]?.add(frame.writeId);
        lostWrites.set(block, [...(lostWrites.get(block) ?? []), frame]);
      }
    }
    for (const seqs of this.versionSeqs) while ((seqs[seqs.length - 1] ?? 0) > recovered) seqs.pop();
    // The volume file is written alongside the log: in blocks that no replayed entry
    // rewrites, it may hold a lost write's bytes (one of those written there since the CP).
    const kept = new Set<number>();
    for (const [block, frames] of [...lostWrites].sort((a, b) => a[0] - b[0])) {
      if (replayedBlocks.has(block) || losesFrom !== null || crash.imageKeepsLost === 0 || !this.prng.chance(crash.imageKeepsLost)) continue;
      const frame = this.prng.pick(frames);
      const piece = writeFrame(frame.writeId, frame.clientId, block, 1, this.config.blockBytes);
      this.primary.image.write(piece);
      this.primary.durableImage.write(piece);
      const seqs = this.versionSeqs[block] ?? [];
      this.versionIndex[block]?.set(frame.writeId, seqs.length);
      seqs.push(recovered);
      this.lost[block]?.delete(frame.writeId);
      kept.add(frame.writeId);
    }
    this.primaryTally.keptInImage += kept.size;
    for (const peer of this.peers) {
      if (peer.replica.lastSeq > Math.max(recovered, peer.replica.base)) this.primaryTally.peersAhead += 1;
    }
    const lostList = entries.filter(({ seq, frame }) => seq > recovered && frame.kind === 'write').map(({ seq, frame }) => `${seq}:${frame.kind === 'write' ? frame.writeId : ''}`);
    this.trace?.(
      `${this.queue.now}us primary crashed at entry ${before}: its log recovers through ${recovered} (durable ${durable}, last CP ${this.lastCpSeq}); ` +
        `lost writes (seq:id) ${lostList.join(' ') || 'none'}` +
        (kept.size > 0 ? `; its image keeps lost writes ${[...kept].join(',')}` : ''),
    );
    this.checker.primaryCrashed();
    this.queue.after(crash.restartAfterUs, 'primary restarts', () => this.restartPrimary(recovered, replayed, intent));
  }

  /**
   * As the node starts a volume that did not stop cleanly: a consistency point after the
   * replay (a marker when it replayed anything, placed before the mirror exists), then a
   * ledger opened from the files and a mirror core from what it decided (every peer
   * needs a resync: the stop was not clean).
   */
  private restartPrimary(recovered: number, replayed: DirtyBitmap, intent: DirtyBitmap): void {
    this.replica = new ReplicaCore<Frame>({ lastSeq: recovered, role: 'primary', history: EpochHistory.initial('p') });
    let lastSeq = recovered;
    if (recovered > this.lastCpSeq) {
      lastSeq = this.replica.local.assignSeq();
      const marker: Frame = { kind: 'cp', targetSeq: recovered };
      this.primary.append(lastSeq, marker).stored = true;
      this.primary.markDurable(lastSeq);
      this.cumulativeBytes.push(this.bytesThrough(recovered) + entryBytes(marker));
      this.primaryTally.startMarkers += 1;
    }
    this.lastCpSeq = lastSeq;
    this.lastMarkerSeq = lastSeq;
    for (const state of this.resyncs.values()) state.run = null;
    const { mode, peers, catchUpBytesMax, blocks, blockBytes } = this.config;
    const { windowBytesMax, lagBytesMax } = this.sourceLimits();
    const ledger = this.openLedger(lastSeq, recovered, replayed, intent);
    this.core = this.replica.mirror({ mode, strict: false, peers, lastSeq, lagBytesMax, windowBytesMax, catchUpBytesMax, resync: true, sizeBytes: blocks * blockBytes }, ledger);
    this.onSource(this.core.open());
    this.primaryUp = true;
    this.trace?.(`${this.queue.now}us primary restarted at entry ${lastSeq}; diverged after ${JSON.stringify(ledger.divergedAfter)}`);
    this.startConnectors();
    for (const client of this.clients) this.scheduleClient(client);
    this.scheduleCheckpoint();
  }

  /** As MirrorEngine.run carries out the core's actions. */
  private onSource(actions: PrimaryAction<Frame>[]): void {
    for (const action of actions) {
      switch (action.kind) {
        case 'send-entry': {
          const peer = this.peer(action.peer);
          const { seq, bytes, offset, frame } = action.entry;
          const connection = Math.floor(offset / this.config.regionBytes) % this.config.connections;
          const send = (): void => peer.links.send('to-peer', connection, `entry ${seq}`, () => peer.entry(seq, bytes, frame));
          send();
          if (this.config.fault === 'duplicate-entry' && !this.fault.injected && seq >= 2) {
            this.fault.injected = true;
            send();
          }
          break;
        }
        case 'send-flush': {
          const peer = this.peer(action.peer);
          peer.links.send('to-peer', 0, `flush ${action.seq}`, () => peer.flush(action.seq));
          break;
        }
        case 'send-sync': {
          const peer = this.peer(action.peer);
          peer.links.send('to-peer', 0, `sync ${action.cpSeq}`, () => peer.sync(action.cpSeq));
          break;
        }
        case 'complete':
          this.completed(action.token, action.error);
          break;
        case 'write-record':
          this.files.record = structuredClone(action.record);
          break;
        case 'write-bitmap':
          this.files.bitmaps.set(action.peer, action.bitmap.encode());
          break;
        case 'read-unsynced': {
          // Entries it had not made durable that are no longer queued, read back from the log.
          const extents: { offset: number; lengthBytes: number }[] = [];
          for (let seq = action.fromSeq; seq <= action.toSeq; seq += 1) extents.push(this.extentOf(this.primary.record(seq).frame));
          this.onSource(this.core.unsyncedRead(action.peer, extents));
          break;
        }
        case 'peer-dropped':
          this.onPeerDropped(action.peer, action.disk, action.reason);
          break;
        case 'send-reset':
          this.resetPeer(action.peer, action.seq, action.reportAfter, action.full);
          break;
        case 'resync':
          this.startResync(action.peer);
          break;
        case 'protocol-error':
          throw new SimFailure(`${action.peer} broke the protocol: ${action.reason}`);
        case 'catch-up-from-log':
          throw new SimFailure(`the source asked to catch ${action.peer} up from the log, which the simulated one does not keep`);
        case 'release':
          break;
      }
    }
  }

  private completed(token: number, error: string | null): void {
    const request = this.requests.get(token);
    if (request === undefined) throw new SimFailure(`the source completed unknown request ${token}`);
    if (request.ackedAtUs !== null) throw new SimFailure(`the source completed request ${token} twice`);
    if (error !== null) throw new SimFailure(`${request.kind} ${token} failed: ${error}`);
    request.ackedAtUs = this.queue.now;
    this.checker.completed(request);
    this.answered[request.kind] += 1;
    if (request.frame !== null) this.answeredWrites.push(request);
    const client = this.clients[request.clientId - 1];
    if (client === undefined) throw new Error(`no client ${request.clientId}`);
    client.inFlight -= 1;
    this.scheduleClient(client);
  }

  private summary(): RunSummary {
    const sent = this.peers.reduce((sum, peer) => sum + peer.links.sent, 0);
    const lost = this.peers.reduce((sum, peer) => sum + peer.links.lost, 0);
    return {
      config: this.config,
      events: this.queue.executed,
      virtualUs: this.queue.now,
      lastSeq: this.source.lastSeq,
      answered: { ...this.answered },
      checkpoints: this.checkpoints,
      messages: { sent, lost },
      maxQueuedBytes: this.checker.maxQueuedBytes,
      queuedBytesBound: this.checker.queuedBytesMax,
      maxInflightBytes: this.checker.maxInflightBytes,
      maxBufferedBytes: this.checker.maxBufferedBytes,
      checks: this.checker.checks,
      drops: [...this.drops],
      faultInjected: this.fault.injected,
      crashes: this.crashCount,
      resyncs: { ...this.resyncCounts },
      countedLacking: this.checker.countedLacking,
      tornTails: this.primary.tornTails + this.peers.reduce((sum, peer) => sum + peer.replica.tornTails, 0),
      primary: { ...this.primaryTally },
      peers: this.peers.map((peer) => ({
        id: peer.id,
        inSync: peer.inSync,
        disk: this.source.peerStatus(peer.id).disk,
        storedSeq: peer.replica.storedPrefix(),
        durableSeq: peer.replica.durablePrefix,
      })),
    };
  }
}

const withoutIntent: readonly string[] = ['ledger-ignores-intent', 'primary-ignores-diverged', 'ledger-diverged-after-last', 'target-forgets-named'];

/** The deliberate fault ledger-forgets-unsynced: the bitmap files never mark what peers in sync have not made durable. */
class ForgetfulLedger extends MirrorLedger {
  constructor(
    opening: LedgerOpening,
    private readonly fault: { injected: boolean },
  ) {
    super(opening);
  }

  protected override closeUnsyncedGeneration(): void {
    super.closeUnsyncedGeneration();
    if (this.unsyncedGenerations.length === 0) return;
    this.fault.injected = true;
    this.unsyncedGenerations = [];
  }
}

/** Runs one seed; throws SimFailure (or an assertion from a core) when something breaks. */
export function runCluster(config: SimConfig, trace: ((line: string) => void) | null = null): RunSummary {
  return new Cluster(config, trace).run();
}
