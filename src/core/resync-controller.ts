// How much resync traffic may be in flight while clients use the volume (docs/operations.md):
// the resync uses what the link and disks allow when the volume is idle, and backs off
// when it makes client requests slower.
//
// Additive increase, multiplicative decrease on one signal: the mean latency of client
// changes (from arrival to answer) over each interval. The controller keeps the lowest
// mean seen as the baseline, let up slowly so it follows a changing workload; a mean
// clearly above it (`factor` times, and at least `slackMs` more) halves the number of
// regions the resync may have in flight, anything else adds `stepRegions`. An interval without client
// requests lets the resync run at its maximum. Pure: the caller reports completions and
// asks limitAt(nowMs) for the limit, which ends an interval once `intervalMs` has passed
// (or calls tick() itself at the end of each interval).

import { assert } from '../lib/assert.js';

export interface ResyncControllerOptions {
  minRegions: number;
  maxRegions: number;
  stepRegions: number;
  /** Latency above the baseline that never counts as slower (noise on an idle machine). */
  slackMs: number;
  /** How many times the baseline counts as slowed by the resync. */
  factor: number;
  /** The length of an interval, for limitAt. */
  intervalMs: number;
}

export class ResyncController {
  private regions: number;
  private sumMs = 0;
  private count = 0;
  private baselineMs: number | null = null;
  /** When limitAt last ended an interval (null: never asked). */
  private intervalStartMs: number | null = null;

  constructor(private readonly options: ResyncControllerOptions) {
    assert(options.minRegions >= 1 && options.maxRegions >= options.minRegions && options.stepRegions >= 1 && options.factor > 1);
    this.regions = options.maxRegions;
  }

  /** A client's change was answered `latencyMs` after it arrived. */
  clientDone(latencyMs: number): void {
    this.sumMs += latencyMs;
    this.count += 1;
  }

  /** The end of an interval: the regions the resync may have in flight during the next one. */
  tick(): number {
    const { minRegions, maxRegions, stepRegions, slackMs, factor } = this.options;
    if (this.count === 0) {
      this.regions = maxRegions;
      return this.regions;
    }
    const meanMs = this.sumMs / this.count;
    this.sumMs = 0;
    this.count = 0;
    // The baseline creeps up 2% per interval, so one fast interval long ago does not
    // hold the resync down for good.
    this.baselineMs = this.baselineMs === null ? meanMs : Math.min(this.baselineMs * 1.02, meanMs);
    if (meanMs > Math.max(factor * this.baselineMs, this.baselineMs + slackMs)) {
      this.regions = Math.max(minRegions, Math.floor(this.regions / 2));
    } else {
      this.regions = Math.min(maxRegions, this.regions + stepRegions);
    }
    return this.regions;
  }

  get limit(): number {
    return this.regions;
  }

  /** The limit at `nowMs`: an interval that has lasted `intervalMs` ends first (tick). */
  limitAt(nowMs: number): number {
    if (this.intervalStartMs === null) this.intervalStartMs = nowMs;
    else if (nowMs - this.intervalStartMs >= this.options.intervalMs) {
      this.intervalStartMs = nowMs;
      this.tick();
    }
    return this.regions;
  }
}
