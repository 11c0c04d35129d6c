// The primary's side of one mirrored volume as one pure state machine (docs/architecture.md,
// "Where each decision lives"): MirrorSource (who streams, catches up or resyncs, and when
// a reply may leave), MirrorLedger (what each peer may lack, and the state file) and each
// peer's resync plan (ResyncRun), joined so that every event goes to all of them in one
// order. MirrorEngine runs it on a node over sockets, files and timers; the simulator
// (test/sim) runs it on its virtual clock. What one of them would otherwise decide on its
// own (when a peer's bitmap is cleared, what a drop or a reset writes, when a resync
// starts, steps and ends, whether a DIVERGED is in turn) is decided here, once.
//
// Inputs are events (an entry placed, a request, a peer's READY or reply, links lost, a
// consistency point, the log read back); outputs are actions for the caller to carry out
// in order: messages to send, requests to complete, files to write (at once, durably),
// entries to read back from the log, a resync to run.

import { AssertionError } from '../lib/assert.js';
import type { DiskState } from '../protocol/disk-state.js';
import type { DirtyBitmap } from './dirty-bitmap.js';
import type { LedgerAction, MirrorLedger } from './mirror-ledger.js';
import { MirrorSource, type MirrorEntry, type MirrorSourceOptions, type PeerReady, type PeerStatus, type SourceAction } from './mirror-source.js';
import type { ResyncLimits, ResyncRun } from './resync-run.js';

export type PrimaryAction<Frame> =
  | Exclude<SourceAction<Frame>, { kind: 'peer-dropped' } | { kind: 'reset-peer' }>
  | LedgerAction
  /** The peer no longer counts for acknowledgements: say so loudly, and close its links if they are up. */
  | { kind: 'peer-dropped'; peer: string; disk: DiskState; reason: string }
  /** Read entries `fromSeq`..`toSeq` back from the log and report their extents (unsyncedRead). */
  | { kind: 'read-unsynced'; peer: string; fromSeq: number; toSeq: number }
  /** Send RESET: the peer restarts its log after `seq`, naming first what it holds past `reportAfter`. */
  | { kind: 'send-reset'; peer: string; seq: number; reportAfter: number; full: boolean }
  /** Run the peer's resync (resyncNext until done or stopped); `namedBytes`: what it named in DIVERGED. */
  | { kind: 'resync'; peer: string; namedBytes: number }
  /** The peer broke the protocol: close its connection. */
  | { kind: 'protocol-error'; peer: string; reason: string };

/** One turn of a resync: regions to log now, or later (paced), or wait for the peer (after carrying out `actions`), or it is over. */
export type ResyncStep<Frame> =
  | { kind: 'log'; runs: number[][] }
  /** Paced: the regions sent so far may not run ahead of the rate; ask again at `untilMs`. */
  | { kind: 'pause'; untilMs: number }
  | { kind: 'wait'; actions: PrimaryAction<Frame>[] }
  | { kind: 'done'; actions: PrimaryAction<Frame>[] }
  | { kind: 'stopped' };

/** The limits of one resync turn, and its pace. */
export interface ResyncPace extends ResyncLimits {
  /** Bytes per second the resync may send at most (0: no limit). */
  rateBytesPerSecMax: number;
  regionBytes: number;
}

interface ResyncState {
  plan: ResyncRun;
  /** When the first turn ran, and the bytes logged since: the pace is measured from there. */
  startedMs: number | null;
  sentBytes: number;
  regionBytes: number;
  /** Runs planned in a turn that had to pause for the pace: they go out first. */
  planned: number[][] | null;
}

export type PrimaryCoreOptions = Omit<MirrorSourceOptions, 'resyncNeeded' | 'divergedAfter' | 'bitmapFrom'> & {
  /** The volume's size: extents named in DIVERGED must lie inside it. */
  sizeBytes: number;
};

export class PrimaryCore<Frame> {
  readonly source: MirrorSource<Frame>;
  /** Per peer: the resync under way, and the bytes it named since its last RESET. */
  private readonly resyncs = new Map<string, ResyncState>();
  private readonly named = new Map<string, number>();

  constructor(
    private readonly options: PrimaryCoreOptions,
    readonly ledger: MirrorLedger,
  ) {
    this.source = new MirrorSource<Frame>({ ...options, resyncNeeded: [...ledger.resyncNeeded], divergedAfter: { ...ledger.divergedAfter }, bitmapFrom: { ...ledger.bitmapFrom } });
  }

  /** What must be durable before the first write (see MirrorLedger.attach). */
  open(): PrimaryAction<Frame>[] {
    return this.ledger.attach(this.source);
  }

  get lastSeq(): number {
    return this.source.lastSeq;
  }

  status(): PeerStatus[] {
    return this.source.status();
  }

  peerStatus(id: string): PeerStatus {
    return this.source.peerStatus(id);
  }

  isInSync(id: string): boolean {
    return this.source.isInSync(id);
  }

  /** The regions the peer may lack (read only). */
  bitmap(id: string): DirtyBitmap {
    return this.ledger.bitmap(id);
  }

  dirtyBytes(id: string): number {
    return this.ledger.dirtyBytes(id);
  }

  strictMissing(): string | null {
    return this.source.strictMissing();
  }

  /**
   * Whether the log must keep a partition whose last entry is `partition.lastSeq`, lying
   * `partition.behind` partitions before the one it writes in (the log's retainer): while
   * an in-sync peer has not taken a CP covering it, while entries from `pinnedFromSeq` on
   * are being read back from the log, or while a peer that is away (or catching up from
   * the log) lacks entries in it and it lies within `retentionPartitions`. `released`
   * names the peers that lack entries in it beyond the retention: each needs a resync,
   * which logReleased says once the log has let the partition go.
   */
  retention(partition: { lastSeq: number; behind: number }, pinnedFromSeq: number | null, retentionPartitions: number): { keep: boolean; released: string[] } {
    if (this.source.retains(partition.lastSeq)) return { keep: true, released: [] };
    if (pinnedFromSeq !== null && partition.lastSeq >= pinnedFromSeq) return { keep: true, released: [] };
    const within = partition.behind <= retentionPartitions;
    let keep = false;
    const released: string[] = [];
    for (const { peer } of this.source.status()) {
      const need = this.source.logNeed(peer);
      if (need === null || partition.lastSeq < need) continue;
      if (within) keep = true;
      else released.push(peer);
    }
    return { keep, released };
  }

  /** The first entry `id` still needs from the log (away, or catching up from it), or null. */
  logNeed(id: string): number | null {
    return this.source.logNeed(id);
  }

  // ---- events -----------------------------------------------------------------------------

  /** An entry was placed in the log, in sequence order (a CP marker: lengthBytes 0). */
  placed(entry: MirrorEntry<Frame> & { lengthBytes: number }): PrimaryAction<Frame>[] {
    this.ledger.placed(entry.offset, entry.lengthBytes);
    return this.translate(this.source.appended(entry));
  }

  request(token: number, seq: number, durable: boolean): PrimaryAction<Frame>[] {
    return this.translate(this.source.request(token, seq, durable));
  }

  localDone(token: number, error: string | null): PrimaryAction<Frame>[] {
    return this.translate(this.source.localDone(token, error));
  }

  /** A consistency point was taken here: peers take it too. */
  checkpoint(cpSeq: number): PrimaryAction<Frame>[] {
    return this.translate(this.source.checkpoint(cpSeq));
  }

  /** A reply to a client is about to leave (sync mode): what must be recorded first (see MirrorLedger.replying). */
  replying(): PrimaryAction<Frame>[] {
    return this.ledger.replying();
  }

  /** The state file and every bitmap written again whole (a replaced disk: see MirrorLedger.rewriteAll). */
  rewriteFiles(): PrimaryAction<Frame>[] {
    return this.ledger.rewriteAll();
  }

  /** The bitmaps are to be durable now (in every consistency point, before it is recorded). */
  persist(): PrimaryAction<Frame>[] {
    return this.ledger.persist();
  }

  connecting(id: string): void {
    this.source.connecting(id);
  }

  /** The peer's READY: stream, catch up or reset it. */
  connected(id: string, ready: PeerReady, logHolds: (seq: number) => boolean): PrimaryAction<Frame>[] {
    // An empty copy lacks all the volume, unless every write since entry 1 was marked for it (it never held one).
    const bitmapCoversAll = ready.empty === true && this.ledger.ackedAlone(id) === 1;
    const actions = this.translate(this.source.connected(id, { ...ready, bitmapCoversAll }, logHolds));
    actions.push(...this.ledger.clearIfCurrent(id));
    return actions;
  }

  disconnected(id: string, reason: string): PrimaryAction<Frame>[] {
    this.resyncs.delete(id);
    return this.translate(this.source.disconnected(id, reason));
  }

  acked(id: string, seq: number, status: number): PrimaryAction<Frame>[] {
    const actions = this.translate(this.source.acked(id, seq, status));
    actions.push(...this.ledger.clearIfCurrent(id));
    return actions;
  }

  flushed(id: string, seq: number, status: number): PrimaryAction<Frame>[] {
    return this.translate(this.source.flushed(id, seq, status));
  }

  synced(id: string, cpSeq: number, status: number): PrimaryAction<Frame>[] {
    return this.translate(this.source.synced(id, cpSeq, status));
  }

  /** DIVERGED: only between RESET and RESET_DONE, and only inside the volume. */
  diverged(id: string, all: boolean, extents: readonly { offset: number; lengthBytes: number }[]): PrimaryAction<Frame>[] {
    const awaited = !this.source.isInSync(id) && this.source.peerStatus(id).replication === 'resyncing';
    if (!awaited) return [{ kind: 'protocol-error', peer: id, reason: 'DIVERGED out of turn' }];
    if (extents.some((extent) => extent.offset < 0 || extent.lengthBytes < 0 || extent.offset + extent.lengthBytes > this.options.sizeBytes)) {
      return [{ kind: 'protocol-error', peer: id, reason: 'DIVERGED extent outside the volume' }];
    }
    this.named.set(id, (this.named.get(id) ?? 0) + this.ledger.diverged(id, all, extents));
    return [];
  }

  /** RESET_DONE: what the peer named is durable here first; a peer streaming again is resynced. */
  resetDone(id: string, seq: number, status: number): PrimaryAction<Frame>[] {
    const actions: PrimaryAction<Frame>[] = [...this.ledger.beforeResetDone()];
    actions.push(...this.translate(this.source.resetDone(id, seq, status)));
    actions.push(...this.ledger.afterResetDone(id));
    if (this.source.isInSync(id) && this.source.peerStatus(id).replication === 'resyncing') {
      this.resyncs.set(id, this.newResync(id));
      actions.push({ kind: 'resync', peer: id, namedBytes: this.named.get(id) ?? 0 });
      this.named.delete(id);
    }
    return actions;
  }

  loggedCaughtUp(id: string, seq: number): PrimaryAction<Frame>[] {
    return this.translate(this.source.loggedCaughtUp(id, seq));
  }

  logCatchUpFailed(id: string, reason: string): PrimaryAction<Frame>[] {
    return this.translate(this.source.logCatchUpFailed(id, reason));
  }

  /** The log let go of entries a peer that is away lacks: it needs a resync. */
  logReleased(id: string): PrimaryAction<Frame>[] {
    return this.translate(this.source.logReleased(id));
  }

  /**
   * The entries of a `read-unsynced` action, read back from the log: their extents (null:
   * they could not be read, and every region counts).
   */
  unsyncedRead(id: string, extents: readonly { offset: number; lengthBytes: number }[] | null): PrimaryAction<Frame>[] {
    if (extents === null) this.ledger.lacksAll(id);
    else for (const extent of extents) this.ledger.lacks(id, extent.offset, extent.lengthBytes);
    return this.ledger.persist();
  }

  /** Verify found [offset, offset + lengthBytes) different on the streaming peer. */
  outOfSync(id: string, offset: number, lengthBytes: number): PrimaryAction<Frame>[] {
    this.source.outOfSync(id);
    return this.ledger.outOfSync(id, offset, lengthBytes);
  }

  /** Starts resyncing a streaming peer verify found different; false when it cannot be now. */
  repair(id: string): boolean {
    if (!this.source.repair(id)) return false;
    this.resyncs.set(id, this.newResync(id));
    return true;
  }

  // ---- the resync loop ----------------------------------------------------------------------

  private newResync(id: string): ResyncState {
    return { plan: this.ledger.resyncPlan(id), startedMs: null, sentBytes: 0, regionBytes: 0, planned: null };
  }

  /**
   * One turn of the peer's resync at `nowMs`: regions cleared once the peer has made their
   * entries durable, then the runs to log next within the limits, or a pause when the pace
   * says they may not go yet; or, with none to log, a wait for the peer (asked to make
   * what it stored durable) or the end (the core, the record and the bitmap say it is up
   * to date). Stopped once the peer no longer resyncs.
   */
  resyncNext(id: string, pace: ResyncPace, nowMs: number): ResyncStep<Frame> {
    const state = this.resyncs.get(id);
    const live = state !== undefined && this.source.isInSync(id) && this.source.peerStatus(id).replication === 'resyncing';
    if (!live) {
      this.resyncs.delete(id);
      return { kind: 'stopped' };
    }
    const { plan } = state;
    state.startedMs ??= nowMs;
    state.regionBytes = pace.regionBytes;
    // After 'again' (the plan starts over, nothing in flight) the next plan() finds a run.
    for (let turn = 0; turn < 3; turn += 1) {
      plan.durableThrough(this.source.peerStatus(id).durableSeq);
      const runs = state.planned ?? plan.plan(pace);
      state.planned = null;
      if (runs.length > 0) {
        // Paced: what was sent so far may not run ahead of the allowed rate.
        const dueMs = pace.rateBytesPerSecMax > 0 ? state.startedMs + (state.sentBytes / pace.rateBytesPerSecMax) * 1000 : nowMs;
        if (dueMs > nowMs) {
          state.planned = runs;
          return { kind: 'pause', untilMs: dueMs };
        }
        return { kind: 'log', runs };
      }
      const idle = plan.idle();
      if (idle === 'again') continue;
      if (idle === 'done') {
        this.resyncs.delete(id);
        this.source.resyncDone(id);
        return { kind: 'done', actions: this.ledger.resyncDone(id) };
      }
      const { ackedSeq, durableSeq } = this.source.peerStatus(id);
      return { kind: 'wait', actions: this.translate(this.source.askDurable(id, plan.flushTarget(ackedSeq, durableSeq))) };
    }
    throw new AssertionError(`the resync of ${id} plans without end`);
  }

  /** A run of `resyncNext` was logged as entry `seq`. */
  resyncLogged(id: string, seq: number, regions: readonly number[]): void {
    const state = this.resyncs.get(id);
    if (state === undefined) return;
    state.plan.logged(seq, regions);
    state.sentBytes += regions.length * state.regionBytes;
  }

  /**
   * A clean stop at `finalSeq`, after the final consistency point every peer in sync has
   * taken: the files say so (see MirrorLedger.cleanStop).
   */
  cleanStop(finalSeq: number): PrimaryAction<Frame>[] {
    return this.ledger.cleanStop(
      finalSeq,
      this.source
        .status()
        .filter((peer) => peer.resyncNeeded)
        .map((peer) => peer.peer),
    );
  }

  // ---- what the source decided, with the ledger's part ------------------------------------

  private translate(actions: SourceAction<Frame>[]): PrimaryAction<Frame>[] {
    const out: PrimaryAction<Frame>[] = [];
    for (const action of actions) {
      switch (action.kind) {
        case 'peer-dropped': {
          const { peer, full, lost, unsynced } = action;
          this.resyncs.delete(peer);
          // What it may lack: entries in flight or queued for it, or everything; written at once.
          out.push(...this.ledger.peerDropped(peer, full, lost.map((entry) => ({ offset: entry.offset, lengthBytes: entry.lengthBytes ?? 0 }))));
          if (unsynced !== null) out.push({ kind: 'read-unsynced', peer, fromSeq: unsynced.fromSeq, toSeq: unsynced.toSeq });
          out.push({ kind: 'peer-dropped', peer, disk: action.disk, reason: action.reason });
          break;
        }
        case 'reset-peer': {
          const { peer, seq, reportAfter, full } = action;
          this.resyncs.delete(peer);
          this.named.set(peer, 0);
          out.push(...this.ledger.resetPeer(peer, full));
          out.push({ kind: 'send-reset', peer, seq, reportAfter, full });
          break;
        }
        default:
          out.push(action);
      }
    }
    return out;
  }
}
