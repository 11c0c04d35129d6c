// The destination side of mirroring one volume from one source node
// (docs/architecture.md, "Following one write"): it puts the entries that arrive from the source back in sequence order, has them
// stored, acknowledges what is stored, and answers the source's FLUSH and SYNC requests.
//
// Pure, like MirrorSource: the node reports events (an entry arrived on any connection of
// the session; a store, log sync or checkpoint finished; the session closed) and gets back
// actions to perform. It never reads a clock, never touches a socket or file and never
// throws for bad peer input: a source that breaks the protocol gets a `protocol-error`
// action, after which the target does nothing until `reset()`.
//
// Entries are issued for storing strictly in sequence order, so the per-source log has the
// same gap-free sequence as the source's; stores may complete in any order, and an ACK
// only ever covers the contiguous prefix that is stored. Memory is bounded by the window
// the source keeps: an entry is held in the reorder buffer only while the buffer stays
// within `windowBytesMax` and the entry is at most `windowBytesMax / 64` entries past the
// last acknowledgement (no entry is smaller than its 64-byte header); anything else is a
// source that does not keep its window. Waiting FLUSH and SYNC requests are bounded too.
// A store, log sync or checkpoint that fails leaves the copy `failed`: nothing more is
// stored and every request is answered with an error status until a new target is made.

import { assert } from '../lib/assert.js';
import type { MirrorMode } from './mirror-source.js';

/** 0: done; 1: this node could not do it (its copy is failed). */
export type TargetStatus = 0 | 1;

export type TargetAction<Frame> =
  /** Append the entry to the per-source log (and, unless logship, write it to the image); report stored(). */
  | { kind: 'store'; seq: number; frame: Frame }
  | { kind: 'send-ack'; seq: number; status: TargetStatus }
  /** Make the per-source log durable through `seq`; report logSynced(). */
  | { kind: 'sync-log'; seq: number }
  | { kind: 'send-flushed'; seq: number; status: TargetStatus }
  /** Apply logship entries up to cpSeq, make the image durable, release the log up to cpSeq; report checkpointDone(). */
  | { kind: 'checkpoint'; cpSeq: number }
  | { kind: 'send-synced'; cpSeq: number; status: TargetStatus }
  /** The source broke the protocol: the node closes the session's links and calls reset(). */
  | { kind: 'protocol-error'; reason: string };

export interface MirrorTargetOptions {
  mode: MirrorMode;
  /** The per-source log's last entry when the target starts. */
  lastSeq: number;
  /** Bytes the source may have sent and not had acknowledged (the source's window). */
  windowBytesMax: number;
}

export interface TargetReady {
  /** Every entry up to here has been issued for storing; a new session resumes after it. */
  lastSeq: number;
  /** No store, log sync or checkpoint is in flight. */
  idle: boolean;
}

export interface TargetStatusReport {
  storedSeq: number;
  issuedSeq: number;
  bufferedEntries: number;
  bufferedBytes: number;
  /** A store, log sync or checkpoint failed: nothing more is stored here. */
  failed: boolean;
  /** The last consistency point taken here. */
  syncedCpSeq: number;
}

/** The smallest entry: a log entry header (see storage/log-entry.ts). */
const ENTRY_BYTES_MIN = 64;

export class MirrorTarget<Frame> {
  /** How far past the acknowledged mark an entry may be: a full window of the smallest entries. */
  private readonly entriesAheadMax: number;
  /**
   * Waiting FLUSH requests, and waiting SYNC requests, each at most this many. MirrorSource
   * sends each for a higher seq than the last, so this is as many as a window can hold;
   * more would take that many client requests in flight (far fewer with 64 MiB windows).
   */
  private readonly requestsWaitingMax: number;
  private issuedSeq: number;
  /** Contiguous stored mark: every entry up to here is stored. */
  private storedSeq: number;
  /** The mark the source has been told about (or, after reset(), need not be told about). */
  private ackedSeq: number;
  /** Issued entries whose store has not completed. */
  private readonly storing = new Set<number>();
  /** Stored entries past the contiguous mark (stores complete out of order). */
  private readonly storedAhead = new Set<number>();
  private readonly buffer = new Map<number, { bytes: number; frame: Frame }>();
  private bufferedBytes = 0;
  /** The per-source log is durable through here. */
  private logSyncedSeq = 0;
  private logSyncRunning: number | null = null;
  /** FLUSH requests waiting for their reply, in ascending seq order. */
  private readonly flushesWaiting: number[] = [];
  private syncedCpSeq = 0;
  private checkpointRunning: number | null = null;
  /** SYNC requests waiting for their reply, in arrival order. */
  private readonly syncsWaiting: number[] = [];
  private failed = false;
  /** A protocol violation was reported: nothing happens until reset(). */
  private stopped = false;

  constructor(private readonly options: MirrorTargetOptions) {
    assert(Number.isSafeInteger(options.lastSeq) && options.lastSeq >= 0, `bad lastSeq ${options.lastSeq}`);
    assert(Number.isSafeInteger(options.windowBytesMax) && options.windowBytesMax > 0);
    this.entriesAheadMax = Math.max(1, Math.floor(options.windowBytesMax / ENTRY_BYTES_MIN));
    this.requestsWaitingMax = this.entriesAheadMax + 1;
    this.issuedSeq = options.lastSeq;
    this.storedSeq = options.lastSeq;
    this.ackedSeq = options.lastSeq;
  }

  get mode(): MirrorMode {
    return this.options.mode;
  }

  // ---- the source's messages ----------------------------------------------------------

  /** An ENTRY arrived, on any connection of the session. */
  entry(seq: number, bytes: number, frame: Frame): TargetAction<Frame>[] {
    const actions: TargetAction<Frame>[] = [];
    if (this.stopped || this.failed) return actions;
    if (!Number.isSafeInteger(seq) || !Number.isSafeInteger(bytes) || bytes < ENTRY_BYTES_MIN) {
      return this.violation(`entry ${seq} of ${bytes} bytes is malformed`);
    }
    if (seq <= this.issuedSeq) return this.violation(`entry ${seq} again (entries up to ${this.issuedSeq} arrived)`);
    if (this.buffer.has(seq)) return this.violation(`entry ${seq} again (it is waiting for its predecessors)`);
    // Measured from the last ACK rather than the issued mark, this also bounds the stores in flight.
    if (seq - this.ackedSeq > this.entriesAheadMax) {
      return this.violation(`entry ${seq} is beyond the window (acknowledged up to ${this.ackedSeq})`);
    }
    if (seq === this.issuedSeq + 1) {
      this.issue(seq, frame, actions);
      let next = this.buffer.get(this.issuedSeq + 1);
      while (next !== undefined) {
        this.buffer.delete(this.issuedSeq + 1);
        this.bufferedBytes -= next.bytes;
        this.issue(this.issuedSeq + 1, next.frame, actions);
        next = this.buffer.get(this.issuedSeq + 1);
      }
      return actions;
    }
    if (this.bufferedBytes + bytes > this.options.windowBytesMax) {
      return this.violation(`entry ${seq} overflows the window (${this.bufferedBytes} + ${bytes} bytes waiting for entry ${this.issuedSeq + 1})`);
    }
    this.buffer.set(seq, { bytes, frame });
    this.bufferedBytes += bytes;
    return actions;
  }

  /** A FLUSH request: reply once entries up to `seq` are durable in the per-source log. */
  flush(seq: number): TargetAction<Frame>[] {
    const actions: TargetAction<Frame>[] = [];
    if (this.stopped) return actions;
    // Waiting FLUSHes are merged rather than refused: FLUSHED is cumulative, so the reply
    // to a later one answers an earlier one too (only a little later).
    const problem = this.requestProblem('flush', seq, 0);
    if (problem !== null) return this.violation(problem);
    if (this.failed) actions.push({ kind: 'send-flushed', seq, status: 1 });
    else if (seq <= this.logSyncedSeq) actions.push({ kind: 'send-flushed', seq, status: 0 });
    else {
      let at = this.flushesWaiting.length;
      while (at > 0 && (this.flushesWaiting[at - 1] ?? 0) > seq) at -= 1;
      this.flushesWaiting.splice(at, 0, seq);
      while (this.flushesWaiting.length > this.requestsWaitingMax) this.flushesWaiting.splice(this.flushesWaiting.length - 2, 1);
      this.startLogSync(actions);
    }
    return actions;
  }

  /** A SYNC request: the source took consistency point `cpSeq`; reply once it is taken here. */
  sync(cpSeq: number): TargetAction<Frame>[] {
    const actions: TargetAction<Frame>[] = [];
    if (this.stopped) return actions;
    const problem = this.requestProblem('sync', cpSeq, this.syncsWaiting.length);
    if (problem !== null) return this.violation(problem);
    if (this.failed) actions.push({ kind: 'send-synced', cpSeq, status: 1 });
    else if (cpSeq <= this.syncedCpSeq) actions.push({ kind: 'send-synced', cpSeq, status: 0 });
    else {
      this.syncsWaiting.push(cpSeq);
      this.startCheckpoint(actions);
    }
    return actions;
  }

  /** The session's connections closed: what it asked for and has not been issued is dropped. */
  reset(): void {
    this.stopped = false;
    this.dropWaiting(null);
    // A new session starts from the issued mark (ready()); stores of the old one complete
    // unannounced, so no stale ACK ever reaches the new session.
    this.ackedSeq = this.issuedSeq;
  }

  // ---- completions --------------------------------------------------------------------

  /** Entry `seq` is stored (or could not be). */
  stored(seq: number, error: string | null): TargetAction<Frame>[] {
    assert(this.storing.delete(seq), `entry ${seq} stored but not being stored`);
    const actions: TargetAction<Frame>[] = [];
    if (error !== null) {
      // One error ACK, unless the copy had failed already or the session it belongs to is gone.
      if (!this.failed && !this.stopped && seq > this.ackedSeq) actions.push({ kind: 'send-ack', seq, status: 1 });
      return this.fail(actions);
    }
    this.storedAhead.add(seq);
    while (this.storedAhead.delete(this.storedSeq + 1)) this.storedSeq += 1;
    if (this.stopped || this.failed) return actions;
    if (this.storedSeq > this.ackedSeq) {
      this.ackedSeq = this.storedSeq;
      actions.push({ kind: 'send-ack', seq: this.storedSeq, status: 0 });
    }
    this.startLogSync(actions);
    this.startCheckpoint(actions);
    return actions;
  }

  /** The per-source log is durable through `seq` (or the sync failed). */
  logSynced(seq: number, error: string | null): TargetAction<Frame>[] {
    assert(this.logSyncRunning === seq, `log synced through ${seq}, but ${String(this.logSyncRunning)} was running`);
    this.logSyncRunning = null;
    const actions: TargetAction<Frame>[] = [];
    // A failed sync may have lost what the cache held: the copy cannot be trusted.
    if (error !== null) return this.fail(actions);
    this.logSyncedSeq = Math.max(this.logSyncedSeq, seq);
    if (this.stopped || this.failed) return actions;
    // Ascending order: the answered ones are a prefix.
    while ((this.flushesWaiting[0] ?? Infinity) <= this.logSyncedSeq) {
      actions.push({ kind: 'send-flushed', seq: this.flushesWaiting.shift() ?? 0, status: 0 });
    }
    this.startLogSync(actions);
    return actions;
  }

  /** The checkpoint at `cpSeq` is taken (or failed). */
  checkpointDone(cpSeq: number, error: string | null): TargetAction<Frame>[] {
    assert(this.checkpointRunning === cpSeq, `checkpoint ${cpSeq} done, but ${String(this.checkpointRunning)} was running`);
    this.checkpointRunning = null;
    const actions: TargetAction<Frame>[] = [];
    if (error !== null) return this.fail(actions);
    this.syncedCpSeq = Math.max(this.syncedCpSeq, cpSeq);
    if (this.stopped || this.failed) return actions;
    for (const waiting of this.syncsWaiting) if (waiting <= this.syncedCpSeq) actions.push({ kind: 'send-synced', cpSeq: waiting, status: 0 });
    const still = this.syncsWaiting.filter((waiting) => waiting > this.syncedCpSeq);
    this.syncsWaiting.splice(0, this.syncsWaiting.length, ...still);
    this.startCheckpoint(actions);
    return actions;
  }

  // ---- queries ------------------------------------------------------------------------

  ready(): TargetReady {
    const idle = this.storing.size === 0 && this.logSyncRunning === null && this.checkpointRunning === null;
    return { lastSeq: this.issuedSeq, idle };
  }

  status(): TargetStatusReport {
    const { storedSeq, issuedSeq, bufferedBytes, failed, syncedCpSeq } = this;
    return { storedSeq, issuedSeq, bufferedEntries: this.buffer.size, bufferedBytes, failed, syncedCpSeq };
  }

  // ---- internals ----------------------------------------------------------------------

  private issue(seq: number, frame: Frame, actions: TargetAction<Frame>[]): void {
    assert(seq === this.issuedSeq + 1 && !this.storing.has(seq));
    this.issuedSeq = seq;
    this.storing.add(seq);
    actions.push({ kind: 'store', seq, frame });
  }

  /** Why a FLUSH or SYNC breaks the protocol, or null. It may run ahead of the entries, by a window at most. */
  private requestProblem(what: string, seq: number, waiting: number): string | null {
    if (!Number.isSafeInteger(seq) || seq < 0) return `${what} ${seq} is malformed`;
    if (seq > this.issuedSeq + this.entriesAheadMax + 1) return `${what} ${seq} is beyond the window (entries up to ${this.issuedSeq} arrived)`;
    if (waiting >= this.requestsWaitingMax) return `more than ${this.requestsWaitingMax} ${what} requests waiting`;
    return null;
  }

  /** Syncs the log for the highest waiting FLUSH whose entries are all stored. */
  private startLogSync(actions: TargetAction<Frame>[]): void {
    if (this.logSyncRunning !== null || this.failed) return;
    let target: number | null = null;
    for (const seq of this.flushesWaiting) if (seq <= this.storedSeq) target = seq;
    if (target === null) return;
    assert(target > this.logSyncedSeq);
    this.logSyncRunning = target;
    actions.push({ kind: 'sync-log', seq: target });
  }

  /** Takes the highest waiting consistency point whose entries are all stored. */
  private startCheckpoint(actions: TargetAction<Frame>[]): void {
    if (this.checkpointRunning !== null || this.failed) return;
    let target: number | null = null;
    for (const cpSeq of this.syncsWaiting) if (cpSeq <= this.storedSeq && (target === null || cpSeq > target)) target = cpSeq;
    if (target === null) return;
    assert(target > this.syncedCpSeq);
    this.checkpointRunning = target;
    actions.push({ kind: 'checkpoint', cpSeq: target });
  }

  /** The copy failed: nothing more is stored, and waiting requests get an error status. */
  private fail(actions: TargetAction<Frame>[]): TargetAction<Frame>[] {
    this.failed = true;
    this.dropWaiting(actions);
    return actions;
  }

  private violation(reason: string): TargetAction<Frame>[] {
    this.stopped = true;
    this.dropWaiting(null);
    return [{ kind: 'protocol-error', reason: `protocol violation: ${reason}` }];
  }

  /** Empties the reorder buffer and drops waiting requests, answering them with an error if `actions` is given. */
  private dropWaiting(actions: TargetAction<Frame>[] | null): void {
    for (const seq of this.flushesWaiting) actions?.push({ kind: 'send-flushed', seq, status: 1 });
    for (const cpSeq of this.syncsWaiting) actions?.push({ kind: 'send-synced', cpSeq, status: 1 });
    this.buffer.clear();
    this.bufferedBytes = 0;
    this.flushesWaiting.length = 0;
    this.syncsWaiting.length = 0;
  }
}
