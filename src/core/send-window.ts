// How much may be on its way to a peer and not yet acknowledged (docs/architecture.md,
// "Where each decision lives"): a catch-up from the log files sends entries only while
// the bytes unacknowledged stay within the window, as MirrorSource does for entries in
// memory. One entry larger than the window goes alone. Pure: catchUpFromLog
// (src/server/peer-transfers.ts) reports what it sent and what the peer acknowledged, and
// waits while fits() says no.

import { assert } from '../lib/assert.js';

export class SendWindow {
  private readonly inflight: { seq: number; bytes: number }[] = [];
  private inflightBytes = 0;

  constructor(private readonly windowBytesMax: number) {
    assert(windowBytesMax > 0, 'window size');
  }

  /** The peer acknowledged every entry through `seq`. */
  acked(seq: number): void {
    let drop = 0;
    while (drop < this.inflight.length && (this.inflight[drop]?.seq ?? 0) <= seq) {
      this.inflightBytes -= this.inflight[drop]?.bytes ?? 0;
      drop += 1;
    }
    if (drop > 0) this.inflight.splice(0, drop);
  }

  /** Whether an entry of `bytes` may go now. */
  fits(bytes: number): boolean {
    return this.inflightBytes === 0 || this.inflightBytes + bytes <= this.windowBytesMax;
  }

  /** Entry `seq` of `bytes` went out (in sequence order). */
  sent(seq: number, bytes: number): void {
    assert(this.inflight.length === 0 || (this.inflight[this.inflight.length - 1]?.seq ?? 0) < seq, 'entries are sent in order');
    this.inflight.push({ seq, bytes });
    this.inflightBytes += bytes;
  }

  /** Bytes sent and not acknowledged. */
  get bytes(): number {
    return this.inflightBytes;
  }
}
