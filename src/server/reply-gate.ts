// What a mirrored primary's write and flush replies pass before they leave: the quorum's
// gate (quorum-gate.ts) on a `quorum: majority` volume, and the lease's gate on a volume
// coordinated through etcd (`LeaseGate`, docs/operations.md, "Automatic failover through
// etcd"). A change whose reply never left was never acknowledged: it is in the log either
// way, and a newer primary's resync undoes it on this copy if need be.

import { BlockmirrorError } from '../lib/errors.js';
import type { Clock } from '../io/clock.js';

export interface ReplyGate {
  /** Resolves once a reply may leave; rejects when it must not. */
  pass(): Promise<void>;
  /** No reply passes any more (the primary steps down); those held fail. */
  close(reason: string): void;
  /** The node stops: replies that would wait fail at once, so that connections drain. */
  stopping(reason: string): void;
}

/** Every gate of `gates` in turn; null when there are none. */
export function joinGates(gates: readonly (ReplyGate | null)[]): ReplyGate | null {
  const present = gates.filter((gate): gate is ReplyGate => gate !== null);
  if (present.length <= 1) return present[0] ?? null;
  return {
    async pass() {
      for (const gate of present) await gate.pass();
    },
    close(reason) {
      for (const gate of present) gate.close(reason);
    },
    stopping(reason) {
      for (const gate of present) gate.stopping(reason);
    },
  };
}

/**
 * A primary coordinated through etcd replies only while it holds the volume's key under a
 * lease it knows to be alive (`holds`, which asks HeldLease on the clock at the moment the
 * reply would leave): self-fencing. A reply that finds no lease waits for one (a primary
 * that just started claims its key within a read or two) for at most `waitMs`, and fails
 * when the primary steps down meanwhile (its lease lapsed: the coordinator steps it down).
 */
export class LeaseGate implements ReplyGate {
  private closedBy: string | null = null;
  private stoppingBy: string | null = null;

  constructor(
    private readonly volume: string,
    private readonly holds: () => boolean,
    private readonly clock: Clock,
    private readonly pollMs: number,
    private readonly waitMs: number,
  ) {}

  async pass(): Promise<void> {
    const giveUpMs = this.clock.nowMs() + this.waitMs;
    for (;;) {
      if (this.closedBy !== null) throw new BlockmirrorError('ERR_FENCED', `volume ${this.volume}: ${this.closedBy}; the change was not acknowledged`);
      if (this.holds()) return;
      if (this.stoppingBy !== null || this.clock.nowMs() >= giveUpMs) {
        throw new BlockmirrorError('ERR_FENCED', `volume ${this.volume}: this node holds no live lease on it in etcd${this.stoppingBy === null ? '' : ` and ${this.stoppingBy}`}; the change was not acknowledged`);
      }
      await this.clock.sleep(this.pollMs);
    }
  }

  close(reason: string): void {
    this.closedBy ??= reason;
  }

  stopping(reason: string): void {
    this.stoppingBy ??= reason;
  }
}
