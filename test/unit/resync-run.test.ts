// The resync plan of one peer (src/core/resync-run.ts), which the mirror engine and the
// simulator both run: runs of consecutive dirty regions within the limits, bits cleared
// only once the peer has made the entry that carried them durable, the window of regions
// in flight, and the end. Then seeded runs against a peer that makes entries durable at
// random moments while regions are marked again under the plan: every region marked is
// sent after its last mark, the window is never exceeded, and the plan always ends.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ResyncRun, type ResyncLimits } from '../../src/core/resync-run.js';
import { DirtyBitmap } from '../../src/core/dirty-bitmap.js';
import { baseSeed, Prng } from './prng.js';

const REGION = 4096;
const unlimited: ResyncLimits = { inflightMax: 1000, runsMax: 1000, runRegionsMax: 1000, batchRegionsMax: Number.POSITIVE_INFINITY };

function bitmap(regions: number, dirty: number[]): DirtyBitmap {
  const map = new DirtyBitmap(regions * REGION, REGION);
  for (const region of dirty) map.mark(region * REGION, 1);
  return map;
}

test('consecutive dirty regions go out as runs of at most runRegionsMax, in order', () => {
  const map = bitmap(20, [1, 2, 3, 4, 5, 8, 9, 15]);
  const run = new ResyncRun(map);
  const runs = run.plan({ ...unlimited, runRegionsMax: 3 });
  assert.deepEqual(runs, [[1, 2, 3], [4, 5], [8, 9], [15]]);
  runs.forEach((planned, index) => run.logged(100 + index, planned));
  assert.equal(run.regionsInFlight, 8);
  assert.deepEqual(run.plan(unlimited), [], 'everything dirty is on its way');
  assert.equal(run.idle(), 'wait');
  assert.equal(map.dirtyRegions, 8, 'no bit cleared before the peer made an entry durable');
});

test('the window, the number of runs and the batch size bound a plan', () => {
  const map = bitmap(20, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.deepEqual(new ResyncRun(map).plan({ ...unlimited, inflightMax: 4 }), [[0, 1, 2, 3]]);
  assert.deepEqual(new ResyncRun(map).plan({ ...unlimited, runRegionsMax: 2, runsMax: 2 }), [[0, 1], [2, 3]]);
  assert.deepEqual(new ResyncRun(map).plan({ ...unlimited, runRegionsMax: 4, batchRegionsMax: 6 }), [[0, 1, 2, 3], [4, 5]]);
  const full = new ResyncRun(map);
  full.logged(10, full.plan({ ...unlimited, inflightMax: 3 })[0] ?? []);
  assert.deepEqual(full.plan({ ...unlimited, inflightMax: 3 }), [], 'three regions in flight fill a window of three');
  assert.equal(full.idle(), 'wait');
});

test('a bit is cleared only when the entry that carried its region is durable on the peer', () => {
  const map = bitmap(10, [2, 3, 7]);
  const run = new ResyncRun(map);
  const runs = run.plan(unlimited);
  assert.deepEqual(runs, [[2, 3], [7]]);
  run.logged(40, runs[0] ?? []);
  run.logged(41, runs[1] ?? []);
  assert.equal(run.idle(), 'wait');
  assert.equal(run.flushTarget(41, 39), 41, 'what the peer acknowledged, once past what it made durable');
  assert.equal(run.flushTarget(39, 39), 41, 'else the last entry sent');
  assert.equal(run.durableThrough(39), 0);
  assert.equal(map.dirtyRegions, 3);
  assert.equal(run.durableThrough(40), 2);
  assert.deepEqual([map.isDirty(2), map.isDirty(3), map.isDirty(7)], [false, false, true]);
  assert.equal(run.idle(), 'wait');
  assert.equal(run.durableThrough(41), 1);
  assert.equal(run.idle(), 'done');
});

test('a region marked again behind the cursor is planned again from the start', () => {
  const map = bitmap(10, [5]);
  const run = new ResyncRun(map);
  run.logged(1, run.plan(unlimited)[0] ?? []);
  run.durableThrough(1);
  map.mark(2 * REGION, 1);
  assert.deepEqual(run.plan(unlimited), [], 'nothing ahead of the cursor');
  assert.equal(run.idle(), 'again');
  assert.deepEqual(run.plan(unlimited), [[2]]);
});

test('seeded: every marked region is sent after its last mark, the window holds, and the plan ends', () => {
  const seed = baseSeed(0x5e5c_0001);
  for (let round = 0; round < 200; round += 1) {
    const random = new Prng(seed + round);
    const regions = random.between(1, 64);
    const map = new DirtyBitmap(regions * REGION, REGION);
    for (let region = 0; region < regions; region += 1) if (random.chance(0.4)) map.mark(region * REGION, 1);
    const limits: ResyncLimits = {
      inflightMax: random.between(1, 16),
      runsMax: random.between(1, 4),
      runRegionsMax: random.between(1, 8),
      batchRegionsMax: random.chance(0.5) ? Number.POSITIVE_INFINITY : random.between(1, 8),
    };
    const run = new ResyncRun(map);
    const lastMark = new Map<number, number>();
    const lastSent = new Map<number, number>();
    let seq = 0;
    let durable = 0;
    let marksLeft = random.between(0, 20);
    let steps = 0;
    for (;;) {
      steps += 1;
      assert.ok(steps < 10_000, `seed ${seed + round}: the plan does not end`);
      run.durableThrough(durable);
      const runs = run.plan(limits);
      for (const planned of runs) {
        assert.ok(planned.length <= limits.runRegionsMax);
        for (let index = 1; index < planned.length; index += 1) assert.equal(planned[index], (planned[index - 1] ?? 0) + 1, 'a run is consecutive');
        seq += 1;
        run.logged(seq, planned);
        for (const region of planned) lastSent.set(region, seq);
      }
      assert.ok(run.regionsInFlight <= limits.inflightMax, `seed ${seed + round}: ${run.regionsInFlight} in flight over ${limits.inflightMax}`);
      // Regions marked again under the plan (verify finding one different, say); never one
      // whose entry is on its way: a live write there is sent to the peer as an entry of
      // its own, after the resync's.
      const region = random.below(regions);
      if (marksLeft > 0 && random.chance(0.2) && (lastSent.get(region) ?? 0) <= durable) {
        map.mark(region * REGION, 1);
        lastMark.set(region, seq);
        marksLeft -= 1;
      }
      if (runs.length > 0) continue;
      const idle = run.idle();
      if (idle === 'done') break;
      if (idle === 'wait') durable = random.between(durable, seq);
    }
    assert.equal(map.dirtyRegions, 0, `seed ${seed + round}: regions left dirty`);
    for (const [region, markedAt] of lastMark) {
      assert.ok((lastSent.get(region) ?? -1) > markedAt, `seed ${seed + round}: region ${region} marked after entry ${markedAt} was not sent again`);
    }
  }
});
