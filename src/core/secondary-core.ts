// A secondary's side of one mirrored volume as one pure state machine (docs/architecture.md,
// "Where each decision lives"): MirrorTarget (entries back in order, stores, ACK, FLUSH,
// SYNC, the window) and what is decided around it for a session: when READY may go out,
// and how a RESET runs. ReplicaTarget runs it on a node; the simulator (test/sim) runs it
// on its virtual clock.
//
// The rules:
// - READY goes out once nothing of the previous session is under way (no store, log sync
//   or checkpoint in flight, no reset running), so the last sequence number it reports is
//   exact;
// - a RESET waits for the same; then the regions of the entries held past `reportAfter`
//   are named (DIVERGED) and kept until the primary's next consistency point
//   (`name-and-keep`); once they are kept, the per-source log restarts after `seq`
//   (`restart-log`; names that could not be kept fail the reset instead), and RESET_DONE
//   answers, to the session that asked only; a RESET while one runs breaks the protocol.
//
// Pure: the caller carries out the actions in order and reports completions.

import type { MirrorMode } from './mirror-source.js';
import { MirrorTarget, type TargetAction, type TargetReady, type TargetStatus, type TargetStatusReport } from './mirror-target.js';

export type SecondaryAction<Frame> =
  | TargetAction<Frame>
  /** Send READY with this last sequence number (the caller adds its disk state, durable entry and CP). */
  | { kind: 'send-ready'; session: number; lastSeq: number }
  /** Keep durably (until the source's next CP) and name to it (DIVERGED) the regions of entries held past `reportAfter`; report named(). */
  | { kind: 'name-and-keep'; reportAfter: number }
  /** Restart the per-source log after `seq` (what was stored made durable first); report logRestarted(). */
  | { kind: 'restart-log'; seq: number }
  | { kind: 'send-reset-done'; session: number; seq: number; status: TargetStatus };

export interface SecondaryCoreOptions {
  mode: MirrorMode;
  /** The per-source log's last entry when the core starts. */
  lastSeq: number;
  windowBytesMax: number;
}

interface PendingReset {
  session: number;
  seq: number;
  reportAfter: number;
  started: boolean;
  /** The names are kept: the log may restart. */
  named: boolean;
}

export class SecondaryCore<Frame> {
  private target: MirrorTarget<Frame>;
  /** The session being served (null: none). */
  private session: number | null = null;
  /** READY is owed to the session once idle. */
  private readyOwed = false;
  private reset: PendingReset | null = null;

  constructor(private readonly options: SecondaryCoreOptions) {
    this.target = new MirrorTarget<Frame>(options);
  }

  /** What a new session would be told (and whether anything is under way). */
  ready(): TargetReady {
    return this.target.ready();
  }

  status(): TargetStatusReport {
    return this.target.status();
  }

  /** Nothing is under way: no store, log sync, checkpoint or reset. */
  get idle(): boolean {
    return this.target.ready().idle && this.reset === null;
  }

  get resetting(): boolean {
    return this.reset !== null;
  }

  // ---- sessions ---------------------------------------------------------------------------

  /** A session of the source has all its connections: READY goes out once idle. */
  sessionStarted(session: number): SecondaryAction<Frame>[] {
    if (this.session !== null) this.sessionEnded();
    this.session = session;
    this.readyOwed = true;
    return this.whenIdle();
  }

  /** The session ended (its links closed): what it sent and was not stored is dropped. */
  sessionEnded(): void {
    this.session = null;
    this.readyOwed = false;
    this.target.reset();
    // A reset not begun yet is the ended session's: it is not carried out.
    if (this.reset !== null && !this.reset.started) this.reset = null;
  }

  // ---- the source's messages ----------------------------------------------------------------

  entry(seq: number, bytes: number, frame: Frame): SecondaryAction<Frame>[] {
    return this.target.entry(seq, bytes, frame);
  }

  flush(seq: number): SecondaryAction<Frame>[] {
    return this.target.flush(seq);
  }

  sync(cpSeq: number): SecondaryAction<Frame>[] {
    return this.target.sync(cpSeq);
  }

  /** RESET from the session: restart the log after `seq`, naming first what is held past `reportAfter`. */
  resetAsked(session: number, seq: number, reportAfter: number): SecondaryAction<Frame>[] {
    if (this.reset !== null) return [{ kind: 'protocol-error', reason: 'RESET during a reset' }];
    this.reset = { session, seq, reportAfter, started: false, named: false };
    return this.whenIdle();
  }

  // ---- completions --------------------------------------------------------------------------

  stored(seq: number, error: string | null): SecondaryAction<Frame>[] {
    return [...this.target.stored(seq, error), ...this.whenIdle()];
  }

  logSynced(seq: number, error: string | null): SecondaryAction<Frame>[] {
    return [...this.target.logSynced(seq, error), ...this.whenIdle()];
  }

  checkpointDone(cpSeq: number, error: string | null): SecondaryAction<Frame>[] {
    return [...this.target.checkpointDone(cpSeq, error), ...this.whenIdle()];
  }

  /**
   * The names of a `name-and-keep` are kept (error: they could not be, and the reset fails
   * without restarting the log, which still holds what they name).
   */
  named(error: string | null): SecondaryAction<Frame>[] {
    const reset = this.reset;
    if (reset === null || !reset.started || reset.named) return [{ kind: 'protocol-error', reason: 'regions named, which no reset asked' }];
    if (error !== null) return this.endReset(reset, error);
    reset.named = true;
    return [{ kind: 'restart-log', seq: reset.seq }];
  }

  /** The log restarted after `seq` (error: it could not). RESET_DONE goes to the session that asked, if it is still there. */
  logRestarted(seq: number, error: string | null): SecondaryAction<Frame>[] {
    const reset = this.reset;
    if (reset === null || !reset.named || reset.seq !== seq) return [{ kind: 'protocol-error', reason: `log restarted after ${seq}, which no reset asked` }];
    if (error === null) this.target = new MirrorTarget<Frame>({ ...this.options, lastSeq: seq });
    return this.endReset(reset, error);
  }

  private endReset(reset: PendingReset, error: string | null): SecondaryAction<Frame>[] {
    this.reset = null;
    const actions: SecondaryAction<Frame>[] = [];
    if (this.session === reset.session) actions.push({ kind: 'send-reset-done', session: reset.session, seq: reset.seq, status: error === null ? 0 : 1 });
    actions.push(...this.whenIdle());
    return actions;
  }

  /** What waits for idle: a reset first, then READY. */
  private whenIdle(): SecondaryAction<Frame>[] {
    if (!this.target.ready().idle) return [];
    const reset = this.reset;
    if (reset !== null) {
      if (reset.started) return [];
      reset.started = true;
      return [{ kind: 'name-and-keep', reportAfter: reset.reportAfter }];
    }
    if (this.readyOwed && this.session !== null) {
      this.readyOwed = false;
      return [{ kind: 'send-ready', session: this.session, lastSeq: this.target.ready().lastSeq }];
    }
    return [];
  }
}
