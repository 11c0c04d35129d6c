// The source side of mirroring one volume (docs/architecture.md): which log entries
// each peer has been sent and has stored, and when a client's request may be answered.
//
// Pure: the node (or the simulator) reports events — an entry appended to the log, a
// client request waiting, the local part of it done, a peer's ACK/FLUSHED/SYNCED, a peer
// connected or lost — and gets back actions to perform: send an entry or a flush or a
// sync request to a peer, complete a request, drop a peer. It never reads a clock, never
// touches a socket or file and never throws for bad peer input (that is an action too).
//
// Every entry of the log is mirrored in sequence order, consistency-point markers
// included, so a peer's per-source log has the same gap-free sequence as ours. A peer
// is "in sync" while it is streaming and has been sent every entry; only in-sync peers
// count for acknowledgements. A peer whose links go down keeps its place in the queue,
// up to `catchUpBytesMax` of entries: when it comes back it is sent what it lacks from
// there (`catching-up`, its copy `inconsistent` until it has everything) and then streams
// again. A peer that missed more, or whose entries this node no longer holds, is
// `outdated` until a resync brings it back; a peer that answers an entry with an error is
// `failed`. Neither fails the client's request unless the volume is `strict`.
//
// Memory is bounded: the queue holds the entries that some in-sync peer has not
// acknowledged (in sync mode, requests still waiting for their reply; in async and
// logship mode writes are held back once a peer lags by more than `lagBytesMax`), and
// at most `catchUpBytesMax` more for peers that are away. At most `windowBytesMax` bytes are sent to a peer and not yet
// acknowledged; the rest waits in the queue.
//
// Why one file of this size: it is one state machine. Every transition (an entry
// appended, a request, an ACK, a connect, a drop, a reset) reads and changes the same
// per-peer record (sent, acknowledged, durable, held, resync state), and the invariants
// between those fields are checked in one place; split across files, each part would
// have to expose that record to the others. A peer's replication and disk state change
// only through `enter`, which asserts the transition against one table.

import type { DiskState } from '../protocol/disk-state.js';
import { assert } from '../lib/assert.js';
import { IndexedQueue } from '../lib/indexed-queue.js';

export type MirrorMode = 'sync' | 'async' | 'logship';
export type ReplicationState = 'connecting' | 'streaming' | 'disconnected' | 'catching-up' | 'resyncing';

/** Which replication states may follow which (see MirrorSource.enter). */
const transitions: Record<ReplicationState, readonly ReplicationState[]> = {
  // A READY decides: stream, catch up, reset, or refuse.
  connecting: ['connecting', 'streaming', 'catching-up', 'resyncing', 'disconnected'],
  disconnected: ['disconnected', 'connecting', 'streaming', 'catching-up', 'resyncing'],
  streaming: ['streaming', 'resyncing', 'disconnected'],
  'catching-up': ['catching-up', 'streaming', 'disconnected'],
  resyncing: ['resyncing', 'streaming', 'disconnected'],
};
export type { DiskState };

/** One log entry as the mirror sees it; `frame` is opaque here (the encoded entry). */
export interface MirrorEntry<Frame> {
  seq: number;
  /** Header and payload bytes: what the entry costs in memory and on the wire. */
  bytes: number;
  /** Where in the volume it lands; peers route entries to connections by region. */
  offset: number;
  /** How many bytes of the volume it changes (0 for a consistency-point marker). */
  lengthBytes?: number;
  frame: Frame;
}

export type SourceAction<Frame> =
  | { kind: 'send-entry'; peer: string; entry: MirrorEntry<Frame> }
  | { kind: 'send-flush'; peer: string; seq: number }
  | { kind: 'send-sync'; peer: string; cpSeq: number }
  | { kind: 'complete'; token: number; error: string | null }
  /**
   * The peer no longer counts for acknowledgements; the node logs it loudly and closes its
   * links. `lost`: the queued entries it had not made durable (it may lack them, should it
   * have crashed); `unsynced`: those it had not made durable that are no longer queued,
   * which the node reads back from its log (null: none); `full`: nothing about its copy
   * can be trusted (it failed, or its history diverged).
   */
  | {
      kind: 'peer-dropped';
      peer: string;
      disk: DiskState;
      reason: string;
      lost: MirrorEntry<Frame>[];
      unsynced: { fromSeq: number; toSeq: number } | null;
      full: boolean;
    }
  /** Log partitions that peers held may be free now. */
  | { kind: 'release' }
  /**
   * Tell the peer to restart its log after `seq`, naming first the regions of the
   * entries it holds past `reportAfter` (this node may have lost them); `full`: every
   * region must be resent (its copy is not to be trusted, or its history went another
   * way and this node cannot tell where).
   */
  | { kind: 'reset-peer'; peer: string; seq: number; reportAfter: number; full: boolean }
  /**
   * Send the peer entries `fromSeq`..`toSeq` from the log files (no longer in memory), in
   * order, within the window; report loggedCaughtUp() once it has acknowledged them all,
   * or logCatchUpFailed().
   */
  | { kind: 'catch-up-from-log'; peer: string; fromSeq: number; toSeq: number };

/** What a peer reported about its copy when it connected (its READY). */
export interface PeerReady {
  lastSeq: number;
  durableSeq: number;
  cpSeq: number;
  disk: DiskState;
  /**
   * The last entry its history shares with this node's (compareCopies: an entry is the
   * same on both when both put it in the same epoch); entries it holds past it are not
   * this node's, whatever their numbers. Left out: every entry it holds up to ours.
   */
  sharedSeq?: number;
  /** It holds writes that are not of this node's history (named at its reset), even at or before sharedSeq's entries. */
  diverged?: boolean;
  /** Its image is empty, made at its last start (a replaced disk): it lacks everything unless `bitmapCoversAll`. */
  empty?: boolean;
  /** This node's records of what the peer lacks name every write since entry 1 (it never held any). */
  bitmapCoversAll?: boolean;
}

export interface PeerStatus {
  peer: string;
  replication: ReplicationState;
  disk: DiskState;
  sentSeq: number;
  ackedSeq: number;
  durableSeq: number;
  syncedSeq: number;
  /** Bytes appended here that the peer has not acknowledged (while in sync). */
  lagBytes: number;
  /** It can come back only through a resync. */
  resyncNeeded: boolean;
}

export interface MirrorSourceOptions {
  mode: MirrorMode;
  strict: boolean;
  peers: readonly string[];
  /** The log's last sequence number when the mirror starts. */
  lastSeq: number;
  /** async/logship: writes wait while a peer lags by more than this. */
  lagBytesMax: number;
  /** Bytes sent to one peer and not yet acknowledged. */
  windowBytesMax: number;
  /**
   * Peers known to lack writes (they missed some in an earlier run, or this node did not
   * stop cleanly): they are not taken back by comparing sequence numbers alone.
   */
  resyncNeeded?: readonly string[];
  /**
   * Bytes of entries kept in memory for a peer whose links went down, so that it catches
   * up from them when it comes back (0: none kept). Past it, the peer needs a resync.
   */
  catchUpBytesMax?: number;
  /**
   * Bring back a peer that cannot catch up by a resync instead of dropping it: it is told
   * to restart its log at the current sequence number (action `reset-peer`), then streams
   * while the node sends the regions it lacks (`resyncDone` when they are all durable there).
   */
  resync?: boolean;
  /**
   * Peers whose entries past this sequence number may not be this node's (it crashed
   * and lost entries it had sent): at their reset they name those entries' regions.
   */
  divergedAfter?: Readonly<Record<string, number>>;
  /**
   * Peers whose bitmap names every region they lack only if they hold every entry up to
   * this one (a promoted node knows the regions of the entries since its old primary's
   * last consistency point, not of those before): one further behind is resynced in full.
   */
  bitmapFrom?: Readonly<Record<string, number>>;
  /**
   * The node's log keeps the entries a peer that is away lacks (within its retention), so
   * a peer that missed more than `catchUpBytesMax` catches up from the log files instead
   * of needing a resync. See logNeed(), logReleased().
   */
  logCatchUp?: boolean;
}

interface Peer {
  id: string;
  replication: ReplicationState;
  disk: DiskState;
  inSync: boolean;
  /** Away (or being brought back), and the entries after `heldAfter` are kept in the queue for it. */
  holding: boolean;
  heldAfter: number;
  /** Away: the first entry it lacks, which the log must keep for it (null: it needs none from the log). */
  logFrom: number | null;
  /** Being sent entries from the log files up to `to`; then it catches up from the queue. */
  logPhase: { to: number } | null;
  /** While catching up: the last entry appended when it came back. */
  catchUpTo: number;
  /** While resyncing: where its log restarts. */
  resetSeq: number;
  resyncNeeded: boolean;
  /** Its entries past this may not be ours (see MirrorSourceOptions.divergedAfter), or null. */
  divergedAfter: number | null;
  /** Its bitmap covers what it lacks only from this entry on (see MirrorSourceOptions.bitmapFrom), or null. */
  bitmapFrom: number | null;
  sentSeq: number;
  ackedSeq: number;
  durableSeq: number;
  syncedSeq: number;
  /** Highest entry a FLUSH was sent for, and the highest one a waiting request needs durable. */
  flushAskedSeq: number;
  flushWantedSeq: number;
  /** The consistency point last asked of the peer, and the one it should take. */
  syncAskedSeq: number;
  syncWantedSeq: number;
}

interface Queued<Frame> {
  entry: MirrorEntry<Frame>;
  /** Bytes appended up to and including this entry, since the mirror started. */
  cumulativeBytes: number;
}

interface Waiter {
  seq: number;
  durable: boolean;
  localDone: boolean;
  localError: string | null;
}

export class MirrorSource<Frame> {
  private readonly peers = new Map<string, Peer>();
  private readonly queue = new IndexedQueue<Queued<Frame>>();
  /** Sequence number of queue[0] (or of the next entry when the queue is empty). */
  private queueFirstSeq: number;
  private appendedSeq: number;
  private appendedBytes = 0;
  /** Bytes appended up to the entry just before queue[0]. */
  private trimmedBytes = 0;
  private readonly waiters = new Map<number, Waiter>();
  /** The last consistency point taken here (a peer that connects later takes it too). */
  private cpSeq = 0;

  constructor(private readonly options: MirrorSourceOptions) {
    assert(options.windowBytesMax > 0 && options.lagBytesMax > 0);
    this.appendedSeq = options.lastSeq;
    this.queueFirstSeq = options.lastSeq + 1;
    for (const id of options.peers) {
      this.peers.set(id, {
        id,
        replication: 'connecting',
        disk: 'outdated',
        inSync: false,
        holding: false,
        heldAfter: 0,
        // A peer that was up to date when this node stopped lacks only what is written from now on.
        logFrom: options.resyncNeeded?.includes(id) === true ? null : options.lastSeq + 1,
        logPhase: null,
        catchUpTo: 0,
        resetSeq: 0,
        resyncNeeded: options.resyncNeeded?.includes(id) === true,
        divergedAfter: options.divergedAfter?.[id] ?? null,
        bitmapFrom: options.bitmapFrom?.[id] ?? null,
        sentSeq: 0,
        ackedSeq: 0,
        durableSeq: 0,
        syncedSeq: 0,
        flushAskedSeq: 0,
        flushWantedSeq: 0,
        syncAskedSeq: 0,
        syncWantedSeq: 0,
      });
    }
  }

  get mode(): MirrorMode {
    return this.options.mode;
  }

  get lastSeq(): number {
    return this.appendedSeq;
  }

  // ---- the log ------------------------------------------------------------------------

  /** An entry was appended to the log (called in sequence order, as sequence numbers are assigned). */
  appended(entry: MirrorEntry<Frame>): SourceAction<Frame>[] {
    assert(entry.seq === this.appendedSeq + 1, `entry ${entry.seq} appended after ${this.appendedSeq}`);
    this.appendedSeq = entry.seq;
    this.appendedBytes += entry.bytes;
    this.queue.push({ entry, cumulativeBytes: this.appendedBytes });
    const actions: SourceAction<Frame>[] = [];
    for (const peer of this.peers.values()) {
      if (peer.inSync) this.pump(peer, actions);
      else if (peer.disk === 'up-to-date') this.enter(peer, peer.replication, 'outdated');
      if (peer.holding && this.appendedBytes - this.bytesThrough(peer.heldAfter) > (this.options.catchUpBytesMax ?? 0)) {
        peer.holding = false;
        // Restarting its log for a resync: these entries' regions are the node's to
        // resend; the peer restarts again when it is done (resetDone). Being sent entries
        // from the log: it is sent the rest from the log too (loggedCaughtUp).
        if (peer.replication === 'resyncing' || peer.logPhase !== null) continue;
        // Away: the log keeps what it lacks (logFrom), within its retention.
        if (this.options.logCatchUp === true && peer.logFrom !== null) continue;
        // Away too long to catch up from memory: it will need a resync.
        peer.resyncNeeded = true;
        actions.push({
          kind: 'peer-dropped',
          peer: peer.id,
          disk: peer.disk,
          reason: `it missed more than ${this.options.catchUpBytesMax ?? 0} bytes of writes while away; it needs a resync`,
          lost: this.unacknowledged(peer.id),
          unsynced: null,
          full: false,
        });
      }
    }
    this.trim();
    return actions;
  }

  /** A consistency point is durable here; in-sync peers are asked to take it too. */
  checkpoint(cpSeq: number): SourceAction<Frame>[] {
    assert(cpSeq <= this.appendedSeq);
    this.cpSeq = Math.max(this.cpSeq, cpSeq);
    const actions: SourceAction<Frame>[] = [];
    for (const peer of this.peers.values()) {
      if (!peer.inSync) continue;
      peer.syncWantedSeq = Math.max(peer.syncWantedSeq, cpSeq);
      this.askSync(peer, actions);
    }
    return actions;
  }

  /**
   * May a log partition whose last entry is `lastSeq` be reused? Not while an in-sync
   * peer has not taken a consistency point covering it (it may still need the entries
   * after a crash of its own before it syncs).
   */
  retains(lastSeq: number): boolean {
    for (const peer of this.peers.values()) {
      if (peer.inSync && peer.syncedSeq < lastSeq) return true;
    }
    return false;
  }

  // ---- client requests ----------------------------------------------------------------

  /**
   * A client request waits for entries up to `seq` (a write's last entry, or everything
   * before a FLUSH). `durable`: a FUA write or a FLUSH. The token is the caller's.
   */
  request(token: number, seq: number, durable: boolean): SourceAction<Frame>[] {
    assert(!this.waiters.has(token), `token ${token} in use`);
    assert(seq <= this.appendedSeq);
    const actions: SourceAction<Frame>[] = [];
    const missing = this.strictMissing();
    if (missing !== null) {
      actions.push({ kind: 'complete', token, error: missing });
      return actions;
    }
    this.waiters.set(token, { seq, durable, localDone: false, localError: null });
    if (durable && this.options.mode === 'sync') {
      for (const peer of this.peers.values()) {
        if (!peer.inSync) continue;
        peer.flushWantedSeq = Math.max(peer.flushWantedSeq, seq);
        this.askFlush(peer, actions);
      }
    }
    return actions;
  }

  /** The local part of a request is done (written, and durable if it asked for that). */
  localDone(token: number, error: string | null): SourceAction<Frame>[] {
    const waiter = this.waiters.get(token);
    assert(waiter !== undefined, `no request ${token}`);
    waiter.localDone = true;
    waiter.localError = error;
    const actions: SourceAction<Frame>[] = [];
    this.settle(token, waiter, actions);
    return actions;
  }

  // ---- peers --------------------------------------------------------------------------

  /** A peer's links are up and it reported its state. */
  connected(id: string, ready: PeerReady, logHolds: (seq: number) => boolean = () => false): SourceAction<Frame>[] {
    const peer = this.peer(id);
    const actions: SourceAction<Frame>[] = [];
    assert(!peer.inSync, `peer ${id} connected twice`);
    const from = ready.lastSeq + 1;
    const sane =
      [ready.lastSeq, ready.durableSeq, ready.cpSeq].every((value) => Number.isSafeInteger(value) && value >= 0) &&
      ready.durableSeq <= ready.lastSeq &&
      ready.cpSeq <= ready.lastSeq &&
      (ready.sharedSeq === undefined || (Number.isSafeInteger(ready.sharedSeq) && ready.sharedSeq >= 0 && ready.sharedSeq <= ready.lastSeq));
    // Entries it holds past what its history shares with ours are not ours (a primary
    // before a promotion numbered them): they are named and resent like a crash's.
    const shared = Math.min(ready.sharedSeq ?? ready.lastSeq, this.appendedSeq);
    const problem = !sane
      ? `its state is impossible (last ${ready.lastSeq}, durable ${ready.durableSeq}, consistency point ${ready.cpSeq}, shared ${String(ready.sharedSeq)})`
      : ready.disk !== 'up-to-date'
        ? `its copy is ${ready.disk}`
        : peer.resyncNeeded
          ? 'it missed writes while it was away, or this node did not stop cleanly; it needs a resync'
          : ready.lastSeq > this.appendedSeq
          ? `it holds entries up to ${ready.lastSeq}, beyond this node's ${this.appendedSeq}: the histories diverged`
          : ready.lastSeq > shared || ready.diverged === true
          ? `it holds writes after entry ${shared} of another epoch than this node's: the histories diverged`
          : from < this.queueFirstSeq && !(this.options.logCatchUp === true && logHolds(from))
            ? `it lacks entries ${from}..${this.appendedSeq}, which this node no longer holds; it needs a resync`
            : null;
    peer.holding = false;
    peer.logFrom = null;
    if (problem !== null && sane && this.options.resync === true) {
      // A resync: the peer restarts its log here, and what follows is kept for it until
      // it has done so. What it lacks from before is the node's to send, by region.
      peer.resyncNeeded = true;
      this.enter(peer, 'resyncing', 'inconsistent');
      peer.resetSeq = this.appendedSeq;
      peer.ackedSeq = this.appendedSeq;
      peer.holding = true;
      peer.heldAfter = this.appendedSeq;
      // Entries it holds beyond ours are named by the peer when this node knows where
      // its own history may have been cut; otherwise nothing about them is known.
      const knownShared = ready.sharedSeq !== undefined;
      const reportAfter = Math.min(peer.divergedAfter ?? this.appendedSeq, knownShared ? shared : this.appendedSeq);
      const full =
        ready.disk !== 'up-to-date' ||
        (ready.empty === true && ready.bitmapCoversAll !== true) ||
        (ready.lastSeq > this.appendedSeq && peer.divergedAfter === null && !knownShared) ||
        (peer.bitmapFrom !== null && shared < peer.bitmapFrom);
      actions.push({ kind: 'reset-peer', peer: id, seq: this.appendedSeq, reportAfter, full });
      return actions;
    }
    if (problem !== null) {
      peer.resyncNeeded = true;
      this.enter(peer, 'disconnected', ready.disk === 'failed' ? 'failed' : 'outdated');
      // A copy that is not up to date, or a history that went another way, tells nothing
      // about which regions differ; entries it missed while away were noted then.
      const full = !sane || ready.disk !== 'up-to-date' || ready.lastSeq > shared || ready.diverged === true;
      actions.push({ kind: 'peer-dropped', peer: id, disk: peer.disk, reason: problem, lost: [], unsynced: null, full });
      // What was kept for it may go.
      this.trim();
      return actions;
    }
    if (from < this.queueFirstSeq) {
      // What it lacks is in the log files (logHolds said so): the node sends those first,
      // while what is queued from here on is kept for it.
      const to = this.queueFirstSeq - 1;
      this.enter(peer, 'catching-up', 'inconsistent');
      peer.logPhase = { to };
      peer.ackedSeq = ready.lastSeq;
      peer.sentSeq = ready.lastSeq;
      peer.durableSeq = ready.durableSeq;
      peer.syncedSeq = ready.cpSeq;
      peer.holding = true;
      peer.heldAfter = to;
      actions.push({ kind: 'catch-up-from-log', peer: id, fromSeq: from, toSeq: to });
      return actions;
    }
    this.startStreaming(peer, ready.lastSeq, ready.durableSeq, ready.cpSeq, actions);
    return actions;
  }

  /**
   * The peer acknowledged every entry up to `seq` sent from the log (the `toSeq` of
   * `catch-up-from-log`): it catches up on the rest from the queue, or, when more was
   * written meanwhile than the queue keeps for it, from the log again.
   */
  loggedCaughtUp(id: string, seq: number): SourceAction<Frame>[] {
    const peer = this.peer(id);
    const actions: SourceAction<Frame>[] = [];
    const phase = peer.logPhase;
    if (phase === null || phase.to !== seq || peer.ackedSeq < seq) return actions;
    peer.logPhase = null;
    if (!peer.holding) {
      const to = this.queueFirstSeq - 1;
      peer.logPhase = { to };
      peer.holding = true;
      peer.heldAfter = to;
      actions.push({ kind: 'catch-up-from-log', peer: id, fromSeq: seq + 1, toSeq: to });
      return actions;
    }
    peer.holding = false;
    // Its durable mark and consistency point are those its READY reported (FLUSHED and
    // SYNCED count only once it streams).
    this.startStreaming(peer, seq, Math.min(peer.durableSeq, seq), Math.min(peer.syncedSeq, seq), actions);
    return actions;
  }

  /** Sending from the log failed (the entries are gone, or damaged): it needs a resync. */
  logCatchUpFailed(id: string, reason: string): SourceAction<Frame>[] {
    const peer = this.peer(id);
    if (peer.logPhase === null) return [];
    peer.logPhase = null;
    peer.holding = false;
    peer.resyncNeeded = true;
    this.enter(peer, 'disconnected', 'outdated');
    const actions: SourceAction<Frame>[] = [{ kind: 'peer-dropped', peer: id, disk: peer.disk, reason: `catching up from the log failed: ${reason}; it needs a resync`, lost: [], unsynced: null, full: false }];
    this.afterPeerChange(actions);
    return actions;
  }

  /**
   * The first entry the log must keep for `id`, which is away or catching up from the
   * log (null: none). The node's log retainer asks.
   */
  logNeed(id: string): number | null {
    const peer = this.peer(id);
    if (this.options.logCatchUp !== true || peer.resyncNeeded) return null;
    if (peer.logPhase !== null) return peer.ackedSeq + 1;
    return peer.inSync ? null : peer.logFrom;
  }

  /**
   * The log let go of entries `id` lacks (its retention was exceeded): it can come back
   * only through a resync (the regions are in its bitmap).
   */
  logReleased(id: string): SourceAction<Frame>[] {
    const peer = this.peer(id);
    if (peer.logPhase !== null) return this.logCatchUpFailed(id, 'the log no longer holds the entries it lacks');
    if (peer.inSync || peer.resyncNeeded) return [];
    peer.logFrom = null;
    // What it lacks is still all in memory: that may yet do (appended() decides).
    if (peer.holding) return [];
    peer.resyncNeeded = true;
    this.trim();
    return [{ kind: 'peer-dropped', peer: id, disk: peer.disk, reason: 'it has been away longer than the log keeps writes for it; it needs a resync', lost: [], unsynced: null, full: false }];
  }

  private startStreaming(peer: Peer, lastSeq: number, durableSeq: number, cpSeq: number, actions: SourceAction<Frame>[]): void {
    const ready = { lastSeq, durableSeq, cpSeq };
    // Entries it lacks come first; until it has them all its copy is inconsistent.
    const behind = ready.lastSeq < this.appendedSeq;
    if (behind) this.enter(peer, 'catching-up', 'inconsistent');
    else this.enter(peer, 'streaming', 'up-to-date');
    peer.catchUpTo = this.appendedSeq;
    peer.inSync = true;
    peer.sentSeq = ready.lastSeq;
    peer.ackedSeq = ready.lastSeq;
    peer.durableSeq = ready.durableSeq;
    peer.syncedSeq = ready.cpSeq;
    peer.flushAskedSeq = ready.durableSeq;
    peer.syncAskedSeq = ready.cpSeq;
    peer.syncWantedSeq = this.cpSeq;
    // Requests already waiting to be durable need it durable on this peer too.
    peer.flushWantedSeq = 0;
    if (this.options.mode === 'sync') {
      for (const waiter of this.waiters.values()) if (waiter.durable) peer.flushWantedSeq = Math.max(peer.flushWantedSeq, waiter.seq);
    }
    // Entries it lacks that are still queued (appended while it connected) go first.
    this.pump(peer, actions);
    // It may report more than it had acknowledged (acknowledgements lost with the links):
    // entries kept for it may go, and requests waiting on them may be answered.
    this.trim();
    this.settleAll(actions);
  }

  /** The peer restarted its log after `seq` (its answer to `reset-peer`): it streams from there on. */
  resetDone(id: string, seq: number, status: number): SourceAction<Frame>[] {
    const peer = this.peer(id);
    const actions: SourceAction<Frame>[] = [];
    if (peer.replication !== 'resyncing' || peer.inSync) return actions;
    if (seq !== peer.resetSeq) return this.violation(peer, `reset to ${seq}, asked ${peer.resetSeq}`);
    if (status !== 0) return this.failPeer(peer, `could not restart its log for a resync (error ${status})`);
    // It named what it held beyond our history; its log now follows ours, and what it
    // lacks from before is in its bitmap (or it is resent in full).
    peer.divergedAfter = null;
    peer.bitmapFrom = null;
    if (!peer.holding) {
      // More was written meanwhile than is kept for it (those regions count as lacking):
      // it restarts its log again, at the entry appended last.
      peer.resetSeq = this.appendedSeq;
      peer.ackedSeq = this.appendedSeq;
      peer.holding = true;
      peer.heldAfter = this.appendedSeq;
      actions.push({ kind: 'reset-peer', peer: id, seq: this.appendedSeq, reportAfter: this.appendedSeq, full: false });
      this.trim();
      return actions;
    }
    peer.holding = false;
    peer.inSync = true;
    peer.sentSeq = seq;
    peer.ackedSeq = seq;
    peer.durableSeq = seq;
    peer.syncedSeq = seq;
    peer.flushAskedSeq = seq;
    peer.syncAskedSeq = seq;
    peer.syncWantedSeq = this.cpSeq;
    peer.flushWantedSeq = 0;
    this.pump(peer, actions);
    this.trim();
    this.settleAll(actions);
    return actions;
  }

  /** Every region the resyncing peer lacked is durable there: it is up to date. */
  resyncDone(id: string): void {
    const peer = this.peer(id);
    assert(peer.inSync && peer.replication === 'resyncing', `peer ${id} is not resyncing`);
    this.enter(peer, 'streaming', 'up-to-date');
    peer.resyncNeeded = false;
  }

  /**
   * An online verify found regions that differ on this streaming peer: its copy is
   * inconsistent and only a resync (now, with repair(), or when it next connects) makes
   * it up to date again. It goes on counting for acknowledgements: it has every write.
   */
  outOfSync(id: string): void {
    const peer = this.peer(id);
    if (!peer.inSync) return;
    this.enter(peer, peer.replication, 'inconsistent');
    peer.resyncNeeded = true;
  }

  /** Starts resyncing a streaming peer (after outOfSync()): the node sends it the regions it lacks, then resyncDone(). */
  repair(id: string): boolean {
    const peer = this.peer(id);
    if (!peer.inSync || peer.replication !== 'streaming') return false;
    this.enter(peer, 'resyncing', 'inconsistent');
    peer.resyncNeeded = true;
    return true;
  }

  /** Its entries past the returned sequence number may not be ours (null: none). */
  /** From which entry on its bitmap covers what it lacks (see MirrorSourceOptions.bitmapFrom), or null. */
  bitmapFrom(id: string): number | null {
    return this.peer(id).bitmapFrom;
  }

  divergedAfter(id: string): number | null {
    return this.peer(id).divergedAfter;
  }

  /** Asks the peer to make entries up to `seq` durable (FLUSHED tells when). */
  askDurable(id: string, seq: number): SourceAction<Frame>[] {
    const peer = this.peer(id);
    const actions: SourceAction<Frame>[] = [];
    if (!peer.inSync) return actions;
    peer.flushWantedSeq = Math.max(peer.flushWantedSeq, seq);
    this.askFlush(peer, actions);
    return actions;
  }

  /** A peer's links went down (or could not be set up). */
  disconnected(id: string, reason: string): SourceAction<Frame>[] {
    const peer = this.peer(id);
    const actions: SourceAction<Frame>[] = [];
    const wasInSync = peer.inSync;
    const wasCatchingUp = peer.logPhase !== null;
    peer.inSync = false;
    peer.logPhase = null;
    // A lost link may be its crash: what it had not made durable may be gone.
    this.enter(peer, 'disconnected', peer.disk !== 'failed' && durableThrough(peer) < this.appendedSeq ? 'outdated' : peer.disk);
    // What it lacks stays queued (bounded) so that it can catch up when it is back, and
    // in the log (within its retention) past that, from the first entry it may have lost.
    peer.holding = wasInSync && !peer.resyncNeeded && (this.options.catchUpBytesMax ?? 0) > 0;
    peer.heldAfter = peer.ackedSeq;
    if ((wasInSync || wasCatchingUp) && !peer.resyncNeeded) peer.logFrom = durableThrough(peer) + 1;
    if (wasCatchingUp) this.trim();
    if (wasInSync) {
      actions.push({ kind: 'peer-dropped', peer: id, disk: peer.disk, reason, ...this.mayLack(peer), full: false });
      this.afterPeerChange(actions);
    }
    return actions;
  }

  /** The peer is being connected to again. */
  connecting(id: string): void {
    const peer = this.peer(id);
    if (!peer.inSync) this.enter(peer, 'connecting', peer.disk);
  }

  /** ACK from a peer: status 0 means every entry up to `seq` is stored there. */
  acked(id: string, seq: number, status: number): SourceAction<Frame>[] {
    const peer = this.peer(id);
    const actions: SourceAction<Frame>[] = [];
    if (peer.logPhase !== null) {
      // Entries sent from the log: the node tracks how far it got (logCatchUp's window).
      if (seq > peer.logPhase.to || (status === 0 && seq < peer.ackedSeq)) {
        return this.violation(peer, `acknowledged entry ${seq} while being sent ${peer.ackedSeq + 1}..${peer.logPhase.to} from the log`);
      }
      if (status !== 0) return this.failPeer(peer, `could not store entry ${seq} (error ${status})`);
      peer.ackedSeq = seq;
      peer.sentSeq = Math.max(peer.sentSeq, seq);
      return actions;
    }
    if (!peer.inSync) return actions;
    if (seq > peer.sentSeq || (status === 0 && seq < peer.ackedSeq)) {
      return this.violation(peer, `acknowledged entry ${seq}, but was sent up to ${peer.sentSeq} and had acknowledged ${peer.ackedSeq}`);
    }
    if (status !== 0) return this.failPeer(peer, `could not store entry ${seq} (error ${status})`);
    peer.ackedSeq = seq;
    if (peer.replication === 'catching-up' && seq >= peer.catchUpTo) {
      this.enter(peer, 'streaming', 'up-to-date');
    }
    this.pump(peer, actions);
    this.trim();
    this.settleAll(actions);
    return actions;
  }

  /** FLUSHED from a peer: entries up to `seq` are durable there. */
  flushed(id: string, seq: number, status: number): SourceAction<Frame>[] {
    const peer = this.peer(id);
    const actions: SourceAction<Frame>[] = [];
    if (!peer.inSync) return actions;
    if (seq > peer.sentSeq) return this.violation(peer, `flushed entry ${seq}, but was sent up to ${peer.sentSeq}`);
    if (status !== 0) return this.failPeer(peer, `could not make entries up to ${seq} durable (error ${status})`);
    peer.durableSeq = Math.max(peer.durableSeq, seq);
    this.settleAll(actions);
    return actions;
  }

  /** SYNCED from a peer: it took the consistency point `cpSeq`. */
  synced(id: string, cpSeq: number, status: number): SourceAction<Frame>[] {
    const peer = this.peer(id);
    const actions: SourceAction<Frame>[] = [];
    if (!peer.inSync) return actions;
    if (cpSeq > peer.sentSeq) return this.violation(peer, `synced ${cpSeq}, but was sent up to ${peer.sentSeq}`);
    if (status !== 0) return this.failPeer(peer, `could not take consistency point ${cpSeq} (error ${status})`);
    peer.syncedSeq = Math.max(peer.syncedSeq, cpSeq);
    actions.push({ kind: 'release' });
    return actions;
  }

  status(): PeerStatus[] {
    return [...this.peers.keys()].map((id) => this.peerStatus(id));
  }

  peerStatus(id: string): PeerStatus {
    const peer = this.peer(id);
    return {
      peer: peer.id,
      replication: peer.replication,
      disk: peer.disk,
      sentSeq: peer.sentSeq,
      ackedSeq: peer.ackedSeq,
      durableSeq: peer.durableSeq,
      syncedSeq: peer.syncedSeq,
      lagBytes: peer.inSync ? this.appendedBytes - this.bytesThrough(peer.ackedSeq) : 0,
      resyncNeeded: peer.resyncNeeded,
    };
  }

  /** Whether `id` counts for acknowledgements now (streaming or catching up). */
  isInSync(id: string): boolean {
    return this.peer(id).inSync;
  }

  /** The queued entries `id` has not acknowledged (what it may lack when its links go down). */
  unacknowledged(id: string): MirrorEntry<Frame>[] {
    const peer = this.peer(id);
    const from = Math.max(peer.ackedSeq + 1, this.queueFirstSeq);
    return this.queue.slice(from - this.queueFirstSeq).map((queued) => queued.entry);
  }

  /** Entries and bytes held for peers. */
  get queued(): { entries: number; bytes: number } {
    return { entries: this.queue.length, bytes: this.appendedBytes - this.trimmedBytes };
  }

  /** Requests waiting for their reply. */
  get waiting(): number {
    return this.waiters.size;
  }

  // ---- internals ----------------------------------------------------------------------

  /**
   * Every change of a peer's replication or disk state goes through here. A transition
   * the table does not list, or a state a replica may not be in (catching up or
   * resyncing but not reported inconsistent; reported up to date while catching up or
   * resyncing), is a bug: the assertion stops the node rather than report a copy wrongly.
   */
  private enter(peer: Peer, replication: ReplicationState, disk: DiskState): void {
    assert(transitions[peer.replication].includes(replication), `peer ${peer.id}: ${peer.replication} -> ${replication}`);
    assert(!(replication === 'catching-up' || replication === 'resyncing') || disk === 'inconsistent', `peer ${peer.id}: ${replication} but ${disk}`);
    peer.replication = replication;
    peer.disk = disk;
  }

  private peer(id: string): Peer {
    const peer = this.peers.get(id);
    assert(peer !== undefined, `unknown peer ${id}`);
    return peer;
  }

  /** Sends queued entries to `peer` while its window has room. */
  private pump(peer: Peer, actions: SourceAction<Frame>[]): void {
    const ackedBytes = this.bytesThrough(peer.ackedSeq);
    while (peer.sentSeq < this.appendedSeq) {
      const next = this.queue.at(peer.sentSeq + 1 - this.queueFirstSeq);
      assert(next !== undefined, `entry ${peer.sentSeq + 1} not queued for ${peer.id}`);
      const inflight = this.bytesThrough(peer.sentSeq) - ackedBytes;
      // One entry always goes, however large, or nothing would ever move.
      if (inflight > 0 && inflight + next.entry.bytes > this.options.windowBytesMax) break;
      peer.sentSeq += 1;
      actions.push({ kind: 'send-entry', peer: peer.id, entry: next.entry });
    }
    this.askFlush(peer, actions);
    this.askSync(peer, actions);
  }

  /**
   * Sends a FLUSH for what waiting requests need durable, as far as the peer has been
   * sent entries: a peer is never asked about entries it cannot have yet, so its wait
   * for them stays within one window. The rest is asked as the window moves on.
   */
  private askFlush(peer: Peer, actions: SourceAction<Frame>[]): void {
    const seq = Math.min(peer.flushWantedSeq, peer.sentSeq);
    if (seq <= peer.flushAskedSeq || seq <= peer.durableSeq) return;
    peer.flushAskedSeq = seq;
    actions.push({ kind: 'send-flush', peer: peer.id, seq });
  }

  /** Asks the peer to take the latest consistency point once it has been sent the entries up to it. */
  private askSync(peer: Peer, actions: SourceAction<Frame>[]): void {
    const cpSeq = peer.syncWantedSeq;
    if (cpSeq <= peer.syncAskedSeq || cpSeq <= peer.syncedSeq || cpSeq > peer.sentSeq) return;
    peer.syncAskedSeq = cpSeq;
    actions.push({ kind: 'send-sync', peer: peer.id, cpSeq });
  }

  /** Bytes appended up to and including entry `seq` (which must be queued or just before). */
  private bytesThrough(seq: number): number {
    if (seq < this.queueFirstSeq) {
      // Only the entry just before the queue is known (as the bytes trimmed so far).
      assert(seq === this.queueFirstSeq - 1, `entry ${seq} was trimmed (queue starts at ${this.queueFirstSeq})`);
      return this.trimmedBytes;
    }
    const queued = this.queue.at(seq - this.queueFirstSeq);
    assert(queued !== undefined, `entry ${seq} not queued`);
    return queued.cumulativeBytes;
  }

  /** Drops queued entries every in-sync peer has acknowledged. */
  private trim(): void {
    let keepFrom = this.appendedSeq + 1;
    for (const peer of this.peers.values()) {
      if (peer.inSync) keepFrom = Math.min(keepFrom, peer.ackedSeq + 1);
      else if (peer.holding) keepFrom = Math.min(keepFrom, peer.heldAfter + 1);
    }
    while (this.queueFirstSeq < keepFrom) {
      const dropped = this.queue.shift();
      assert(dropped !== undefined);
      this.trimmedBytes = dropped.cumulativeBytes;
      this.queueFirstSeq += 1;
    }
  }

  /** Why a strict volume must refuse requests now, or null. */
  strictMissing(): string | null {
    if (!this.options.strict) return null;
    for (const peer of this.peers.values()) {
      if (!peer.inSync) return `replica ${peer.id} is ${peer.disk} (${peer.replication}) and the volume is strict`;
    }
    return null;
  }

  private settleAll(actions: SourceAction<Frame>[]): void {
    for (const [token, waiter] of this.waiters) this.settle(token, waiter, actions);
  }

  private settle(token: number, waiter: Waiter, actions: SourceAction<Frame>[]): void {
    if (!waiter.localDone) return;
    let error = waiter.localError;
    if (error === null) {
      const missing = this.strictMissing();
      if (missing !== null) error = missing;
      else if (!this.mirrored(waiter)) return;
    }
    this.waiters.delete(token);
    actions.push({ kind: 'complete', token, error });
  }

  /** Whether the peers' part of a request is done. */
  private mirrored(waiter: Waiter): boolean {
    for (const peer of this.peers.values()) {
      if (!peer.inSync) continue;
      if (this.options.mode === 'sync') {
        if (peer.ackedSeq < waiter.seq) return false;
        if (waiter.durable && peer.durableSeq < waiter.seq) return false;
      } else if (peer.ackedSeq < waiter.seq && this.bytesThrough(waiter.seq) - this.bytesThrough(peer.ackedSeq) > this.options.lagBytesMax) {
        // async/logship: the reply is held back while the peer lags too far behind it.
        return false;
      }
    }
    return true;
  }

  /**
   * What a peer that stops counting may lack: every entry after the last it made durable
   * (the links may have gone down because it crashed). Those still queued are listed;
   * those before the queue are the log's to name.
   */
  private mayLack(peer: Peer): { lost: MirrorEntry<Frame>[]; unsynced: { fromSeq: number; toSeq: number } | null } {
    const from = durableThrough(peer) + 1;
    const lost = this.queue.slice(Math.max(from, this.queueFirstSeq) - this.queueFirstSeq).map((queued) => queued.entry);
    const to = Math.min(peer.ackedSeq, this.queueFirstSeq - 1);
    return { lost, unsynced: from <= to ? { fromSeq: from, toSeq: to } : null };
  }

  private failPeer(peer: Peer, reason: string): SourceAction<Frame>[] {
    const actions: SourceAction<Frame>[] = [];
    peer.inSync = false;
    peer.logPhase = null;
    peer.holding = false;
    peer.logFrom = null;
    peer.resyncNeeded = true;
    this.enter(peer, 'disconnected', 'failed');
    actions.push({ kind: 'peer-dropped', peer: peer.id, disk: peer.disk, reason, lost: this.unacknowledged(peer.id), unsynced: null, full: true });
    this.afterPeerChange(actions);
    return actions;
  }

  private violation(peer: Peer, what: string): SourceAction<Frame>[] {
    const actions: SourceAction<Frame>[] = [];
    if (peer.inSync || peer.logPhase !== null) peer.logFrom = peer.resyncNeeded ? null : durableThrough(peer) + 1;
    const lacking = this.mayLack(peer);
    peer.inSync = false;
    peer.logPhase = null;
    peer.holding = false;
    this.enter(peer, 'disconnected', peer.disk === 'up-to-date' && durableThrough(peer) < this.appendedSeq ? 'outdated' : peer.disk);
    actions.push({ kind: 'peer-dropped', peer: peer.id, disk: peer.disk, reason: `protocol violation: ${what}`, ...lacking, full: false });
    this.afterPeerChange(actions);
    return actions;
  }

  /** A peer stopped counting: queued entries and waiting requests may be free. */
  private afterPeerChange(actions: SourceAction<Frame>[]): void {
    this.trim();
    this.settleAll(actions);
    actions.push({ kind: 'release' });
  }
}

/**
 * The last entry a peer holds durably: made durable on request (FLUSHED), or covered by a
 * consistency point it took (SYNCED: its image was made durable through it).
 */
function durableThrough(peer: { durableSeq: number; syncedSeq: number }): number {
  return Math.max(peer.durableSeq, peer.syncedSeq);
}
