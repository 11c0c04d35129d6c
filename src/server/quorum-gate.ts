// The quorum gate of a `quorum: majority` volume's primary (docs/operations.md, "Quorum
// and witnesses"): a write's or flush's reply passes only while the primary has a quorum
// (src/core/quorum.ts, writeQuorum). Without one, `onNoQuorum: suspend` holds the reply
// until the quorum is back, and `io-error` fails it (EIO). The change is in the log either
// way; a reply that never left means it was never acknowledged, and a primary that steps
// down (fenced by the majority's new primary) closes the gate, failing what it held. A
// node that stops lets replies with a quorum pass and fails those without at once, so
// that its clients' connections drain.

import { BlockmirrorError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import type { QuorumCount } from '../core/quorum.js';
import type { Clock } from '../io/clock.js';
import type { ReplyGate } from './reply-gate.js';

export class QuorumGate implements ReplyGate {
  private closedBy: string | null = null;
  /** The node stops: a reply with a quorum still passes, one without fails instead of waiting. */
  private stoppingBy: string | null = null;
  private lost = false;

  constructor(
    private readonly volume: string,
    private readonly count: () => QuorumCount,
    private readonly onNoQuorum: 'suspend' | 'io-error',
    private readonly clock: Clock,
    /** How often a held reply looks again (the heartbeats' pace). */
    private readonly pollMs: number,
    /**
     * io-error: how long a reply waits before it fails (a replica dropping out takes a
     * couple of heartbeats to reach the majority: a reply then waits rather than fails).
     */
    private readonly settleMs: number,
    private readonly log: Logger,
  ) {}

  /** Resolves once a reply may leave; rejects (ERR_NO_QUORUM) when it must not. */
  async pass(): Promise<void> {
    const giveUpMs = this.clock.nowMs() + this.settleMs;
    for (;;) {
      if (this.closedBy !== null) throw new BlockmirrorError('ERR_NO_QUORUM', `volume ${this.volume}: ${this.closedBy}; the change was not acknowledged`);
      const state = this.count();
      if (state.ok) {
        this.note(state);
        return;
      }
      if (this.stoppingBy !== null) throw new BlockmirrorError('ERR_NO_QUORUM', `volume ${this.volume}: ${this.stoppingBy} without a quorum; the change was not acknowledged`);
      if (this.onNoQuorum === 'io-error' && this.clock.nowMs() >= giveUpMs) {
        this.note(state);
        throw new BlockmirrorError('ERR_NO_QUORUM', `volume ${this.volume} has no quorum (${state.have} of the ${state.need} members needed reach it: ${state.counted.join(', ')})`);
      }
      if (this.onNoQuorum === 'suspend' && this.clock.nowMs() >= giveUpMs) this.note(state);
      await this.clock.sleep(this.pollMs);
    }
  }

  /** No reply passes any more (the primary steps down: a newer epoch may exist); those held fail. */
  close(reason: string): void {
    this.closedBy ??= reason;
  }

  /** The node stops: replies without a quorum fail at once (those held too), so that their connections drain. */
  stopping(reason: string): void {
    this.stoppingBy ??= reason;
  }

  /** Logs the loss and the return of the quorum, once each. */
  private note(state: QuorumCount): void {
    if (!state.ok && !this.lost) {
      this.lost = true;
      this.log.error('quorum lost: writes are not acknowledged', { have: state.have, need: state.need, counted: state.counted.join(','), onNoQuorum: this.onNoQuorum });
    } else if (state.ok && this.lost) {
      this.lost = false;
      this.log.warn('quorum regained', { have: state.have, need: state.need, counted: state.counted.join(',') });
    }
  }
}
