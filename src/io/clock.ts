// The clock port (docs/architecture.md, "I/O ports and their twins"): time as the code
// that waits, paces and retries sees it. `systemClock` is the real one (monotonic
// milliseconds, Node timers); `ManualClock` is its twin, whose time moves only when a test
// says so, running the timers that fall due in order. test/unit/clock.test.ts holds both
// to one suite.

import { assert } from '../lib/assert.js';

export interface Timer {
  /** The timer will not run (a no-op once it has). */
  cancel(): void;
}

export interface Clock {
  /** Milliseconds on a clock that never goes back (not the time of day). */
  nowMs(): number;
  /** Runs `run` once, `delayMs` (>= 0) from now. */
  after(delayMs: number, run: () => void): Timer;
  /** A promise that resolves `delayMs` from now. */
  sleep(delayMs: number): Promise<void>;
}

export const systemClock: Clock = {
  nowMs: () => performance.now(),
  after(delayMs, run) {
    const timer = setTimeout(run, Math.max(0, delayMs));
    return { cancel: () => clearTimeout(timer) };
  },
  sleep: (delayMs) => new Promise((resolve) => setTimeout(resolve, Math.max(0, delayMs))),
};

interface Pending {
  dueMs: number;
  order: number;
  run: () => void;
  cancelled: boolean;
}

/** A clock whose time moves only through advance(); timers due run in due order, ties in the order set. */
export class ManualClock implements Clock {
  private timeMs: number;
  private pending: Pending[] = [];
  private nextOrder = 0;
  /** Timers set and not yet run or cancelled, at most (a runaway loop fails rather than grows). */
  static readonly pendingMax = 100_000;

  constructor(startMs = 0) {
    this.timeMs = startMs;
  }

  nowMs(): number {
    return this.timeMs;
  }

  after(delayMs: number, run: () => void): Timer {
    assert(Number.isFinite(delayMs), 'timer delay');
    assert(this.pending.length < ManualClock.pendingMax, 'too many timers pending');
    const entry: Pending = { dueMs: this.timeMs + Math.max(0, delayMs), order: this.nextOrder, run, cancelled: false };
    this.nextOrder += 1;
    this.pending.push(entry);
    return {
      cancel: () => {
        entry.cancelled = true;
      },
    };
  }

  sleep(delayMs: number): Promise<void> {
    return new Promise((resolve) => this.after(delayMs, resolve));
  }

  /** Timers set and neither run nor cancelled. */
  get waiting(): number {
    return this.pending.filter((entry) => !entry.cancelled).length;
  }

  /** Moves time forward by `ms`, running each timer that falls due at its time, in order. */
  advance(ms: number): void {
    assert(ms >= 0, 'time goes forward');
    const endMs = this.timeMs + ms;
    for (;;) {
      this.pending = this.pending.filter((entry) => !entry.cancelled);
      let next: Pending | undefined;
      for (const entry of this.pending) {
        if (entry.dueMs > endMs) continue;
        if (next === undefined || entry.dueMs < next.dueMs || (entry.dueMs === next.dueMs && entry.order < next.order)) next = entry;
      }
      if (next === undefined) break;
      this.pending.splice(this.pending.indexOf(next), 1);
      this.timeMs = Math.max(this.timeMs, next.dueMs);
      next.run();
    }
    this.timeMs = endMs;
  }
}
