// Exponential back-off between attempts (docs/architecture.md, "Where each decision
// lives"): the first retry after `minMs`, each next one twice as long, never longer than
// `maxMs`, and back to `minMs` after a success. Pure: the caller schedules the delay on
// its clock. Each PeerConnector (peer-connector.ts) keeps one to reconnect to its peer.

import { assert } from '../lib/assert.js';

export class Backoff {
  private attempts = 0;

  constructor(
    private readonly minMs: number,
    private readonly maxMs: number,
  ) {
    assert(minMs > 0 && maxMs >= minMs, 'back-off bounds');
  }

  /** The delay before the next attempt (each call is one more failed attempt). */
  next(): number {
    const delayMs = Math.min(this.maxMs, this.minMs * 2 ** this.attempts);
    // Past this, the delay is the maximum anyway: the exponent stays small.
    if (delayMs < this.maxMs) this.attempts += 1;
    return delayMs;
  }

  /** An attempt succeeded (or the peer came back): the next failure waits `minMs` again. */
  reset(): void {
    this.attempts = 0;
  }
}
