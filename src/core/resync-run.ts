// One resync of one peer, as data: which regions of its dirty bitmap go out next, as runs
// of consecutive regions (each run one entry, logged with the region's current contents),
// which entries are on their way, and which the peer has made durable, whose regions are
// then clean. A region's bit is cleared only then, so a resync cut short by a lost link or
// a crash of either node resumes from the bitmap.
//
// Pure: the caller logs each run (LocalVolume.logCurrent), reports the entry's sequence
// number, paces, asks the peer to make its entries durable and waits. MirrorEngine does
// that with real time and I/O; the simulator (test/sim) does it on its virtual clock, so
// both run this plan.

import { assert } from '../lib/assert.js';

/** The dirty bitmap as the plan sees it (dirty-bitmap.ts is one). */
export interface RegionBitmap {
  readonly regions: number;
  readonly dirtyRegions: number;
  nextDirty(from: number): number;
  isDirty(region: number): boolean;
  clear(region: number): void;
}

export interface ResyncLimits {
  /** Regions logged and not yet durable on the peer, at most. */
  inflightMax: number;
  /** Runs one plan may hold (they are read at once). */
  runsMax: number;
  /** Consecutive regions one run (one entry) may carry. */
  runRegionsMax: number;
  /** Regions one plan may take in all (a paced resync takes a tenth of a second's worth). */
  batchRegionsMax: number;
}

/** What to do when plan() has nothing to send. */
export type ResyncIdle =
  /** No region is dirty and none is on its way: the peer has all of it. */
  | 'done'
  /** Regions are dirty behind the plan's cursor: plan again from the start. */
  | 'again'
  /** Wait for the peer to make what it was sent durable (askDurable), then plan again. */
  | 'wait';

export class ResyncRun {
  /** Entries logged and not yet durable on the peer, with the regions each carries. */
  private readonly pending = new Map<number, number[]>();
  private readonly pendingRegions = new Set<number>();
  /** Plans go through the bitmap in order, from here. */
  private cursor = 0;

  constructor(private readonly bitmap: RegionBitmap) {}

  /** Entries through `seq` are durable on the peer: the regions they carried are clean. Returns how many bits were cleared. */
  durableThrough(seq: number): number {
    let cleared = 0;
    for (const [entrySeq, regions] of this.pending) {
      if (entrySeq > seq) continue;
      this.pending.delete(entrySeq);
      for (const region of regions) {
        this.pendingRegions.delete(region);
        if (this.bitmap.isDirty(region)) cleared += 1;
        this.bitmap.clear(region);
      }
    }
    return cleared;
  }

  /**
   * The next runs to log, in bitmap order from the cursor, within `limits`: none when as
   * many regions are on their way as allowed, or when no dirty region lies ahead.
   */
  plan(limits: ResyncLimits): number[][] {
    assert(limits.inflightMax >= 1 && limits.runsMax >= 1 && limits.runRegionsMax >= 1 && limits.batchRegionsMax >= 1, 'resync limits');
    const runs: number[][] = [];
    let next = this.nextFree(this.cursor);
    if (next === -1 || this.pendingRegions.size >= limits.inflightMax) return runs;
    let taken = 0;
    while (next !== -1 && runs.length < limits.runsMax && this.pendingRegions.size + taken < limits.inflightMax && taken < limits.batchRegionsMax) {
      const run = [next];
      while (
        run.length < limits.runRegionsMax &&
        this.pendingRegions.size + taken + run.length < limits.inflightMax &&
        taken + run.length < limits.batchRegionsMax
      ) {
        const following = next + run.length;
        if (following >= this.bitmap.regions || !this.bitmap.isDirty(following) || this.pendingRegions.has(following)) break;
        run.push(following);
      }
      runs.push(run);
      taken += run.length;
      next = this.nextFree((run[run.length - 1] ?? next) + 1);
    }
    this.cursor = (runs[runs.length - 1]?.at(-1) ?? this.cursor) + 1;
    return runs;
  }

  /** A run of plan() was logged as entry `seq`. */
  logged(seq: number, run: readonly number[]): void {
    assert(run.length > 0 && !this.pending.has(seq), `resync entry ${seq} logged twice or empty`);
    this.pending.set(seq, [...run]);
    for (const region of run) this.pendingRegions.add(region);
  }

  /** When plan() gave nothing: whether the resync is done, plans again from the start, or waits. */
  idle(): ResyncIdle {
    const ahead = this.nextFree(this.cursor) !== -1;
    if (!ahead && this.pending.size === 0) {
      if (this.bitmap.dirtyRegions === 0) return 'done';
      this.cursor = 0;
      return 'again';
    }
    // After the wait, the plan looks at the whole bitmap again if nothing lay ahead.
    if (!ahead) this.cursor = 0;
    return 'wait';
  }

  /**
   * The entry up to which to ask the peer to make what it holds durable: what it has
   * acknowledged, if that is past what it has made durable, else the last one sent.
   */
  flushTarget(ackedSeq: number, durableSeq: number): number {
    return ackedSeq > durableSeq || this.pending.size === 0 ? ackedSeq : Math.max(...this.pending.keys());
  }

  /** Regions logged and not yet durable on the peer. */
  get regionsInFlight(): number {
    return this.pendingRegions.size;
  }

  private nextFree(from: number): number {
    let found = this.bitmap.nextDirty(from);
    while (found !== -1 && this.pendingRegions.has(found)) found = this.bitmap.nextDirty(found + 1);
    return found;
  }
}
