// Deterministic simulation of one mirrored volume (cluster.ts) over many seeds, in sync
// and async mode, with the invariants of checker.ts checked throughout. A failure names
// the seed and the command that replays it; BLOCKMIRROR_SEED moves the base seed.
//
// The checker is shown not to be vacuous: with a deliberate fault injected (a secondary
// that loses a write, lies about a log sync, reorders writes to a block, or a network that
// delivers an entry twice) every run where the fault took effect must fail, for the
// right reason. Last, a scenario the simulator found in the cores (since fixed: waiting
// FLUSHes beyond the target's bound merge instead of breaking the session).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MirrorSource, type SourceAction } from '../../src/core/mirror-source.js';
import { MirrorTarget, type TargetAction } from '../../src/core/mirror-target.js';
import { baseSeed } from '../unit/prng.js';
import type { Fault, SimMode } from './config.js';
import { defaultBaseSeed, failureText, runSeed } from './run.js';

const base = baseSeed(defaultBaseSeed);

function runSeeds(mode: SimMode, count: number): void {
  const failures: string[] = [];
  let answered = 0;
  for (let run = 0; run < count; run += 1) {
    const result = runSeed((base + run) >>> 0, { mode });
    if (result.summary === null) failures.push(failureText(result));
    else answered += result.summary.answered.write + result.summary.answered.fua + result.summary.answered.flush;
  }
  assert.equal(failures.length, 0, `${failures.length} of ${count} ${mode} seeds failed; the first:\n${failures[0] ?? ''}`);
  assert.ok(answered > count * 20, `only ${answered} requests answered in ${count} runs`);
}

describe('simulated mirrored volume', () => {
  test('200 seeds in sync mode keep every invariant', () => runSeeds('sync', 200));
  test('100 seeds in async mode keep every invariant', () => runSeeds('async', 100));

  test('a seed replays exactly', () => {
    const traces: string[][] = [[], []];
    for (const trace of traces) runSeed(base, {}, (line) => trace.push(line));
    assert.ok((traces[0]?.length ?? 0) > 100);
    assert.deepEqual(traces[0], traces[1]);
    const other: string[] = [];
    runSeed((base + 1) >>> 0, {}, (line) => other.push(line));
    assert.notDeepEqual(other, traces[0]);
  });
});

describe('the checker catches deliberate faults', () => {
  const cases: { fault: Fault; mode: SimMode; reason: RegExp }[] = [
    // In sync mode the reply to the write is wrong, unless a later write to the block lands first.
    { fault: 'drop-store-data', mode: 'sync', reason: /^\((a\) .*answered: b's block \d+ holds|d\) .*\bb wrote write)/ },
    // In async mode nothing waits for the peer: the next write to the block, or the end, shows it.
    { fault: 'drop-store-data', mode: 'async', reason: /^\((c|d)\) .*\bb('s)? / },
    { fault: 'lying-log-sync', mode: 'sync', reason: /^\(b\) .*\bb replies flushed \d+, but is durable only through/ },
    { fault: 'reorder-same-block', mode: 'sync', reason: /^\(d\) .*\bb wrote write \d+ as version/ },
    { fault: 'reorder-same-block', mode: 'async', reason: /^\(d\) .*\bb wrote write \d+ as version/ },
    { fault: 'duplicate-entry', mode: 'sync', reason: /protocol error: protocol violation: entry \d+ again/ },
  ];
  for (const { fault, mode, reason } of cases) {
    test(`${fault} (${mode})`, () => {
      let caught = 0;
      for (let run = 0; run < 60 && caught < 8; run += 1) {
        const seed = (base + run) >>> 0;
        if (runSeed(seed, { mode }).summary === null) continue;
        const faulty = runSeed(seed, { mode, fault });
        if (faulty.summary !== null) {
          assert.equal(faulty.summary.faultInjected, false, `seed ${seed}: ${fault} was injected and the checker saw nothing (${faulty.replay})`);
          continue;
        }
        assert.match(faulty.error ?? '', reason, failureText(faulty));
        assert.match(failureText(faulty), new RegExp(`^FAILED seed ${seed}: .*\\nreplay: npm run sim -- --seed ${seed} --mode ${mode} --fault ${fault}$`, 's'));
        caught += 1;
      }
      assert.ok(caught >= 8, `${fault} was caught in only ${caught} runs`);
    });
  }
});

describe('found by the simulator', () => {
  // Seed 16948 (`npm run sim -- --seed 16948`) fails the same way.
  test(
    'a durable request beyond the window while the peer syncs its log: the source sends no more FLUSHes than the target lets wait',
    () => {
      const windowBytesMax = 128;
      const source = new MirrorSource<number>({ mode: 'sync', strict: false, peers: ['b'], lastSeq: 0, lagBytesMax: 1 << 20, windowBytesMax });
      const target = new MirrorTarget<number>({ mode: 'sync', lastSeq: 0, windowBytesMax });
      let toTarget: SourceAction<number>[] = source.connected('b', { lastSeq: 0, durableSeq: 0, cpSeq: 0, disk: 'up-to-date' });
      for (let seq = 1; seq <= 10; seq += 1) toTarget.push(...source.appended({ seq, bytes: 64, offset: 0, frame: seq }));
      // One FUA write through entry 10, five window lengths ahead.
      toTarget.push(...source.request(1, 10, true));
      source.localDone(1, null);
      const errors: string[] = [];
      while (toTarget.length > 0) {
        const replies: TargetAction<number>[] = [];
        for (const action of toTarget) {
          if (action.kind === 'send-entry') replies.push(...target.entry(action.entry.seq, action.entry.bytes, action.entry.frame));
          if (action.kind === 'send-flush') replies.push(...target.flush(action.seq));
        }
        toTarget = [];
        for (let at = 0; at < replies.length; at += 1) {
          const reply = replies[at];
          if (reply?.kind === 'store') replies.push(...target.stored(reply.seq, null));
          if (reply?.kind === 'send-ack') toTarget.push(...source.acked('b', reply.seq, reply.status));
          if (reply?.kind === 'protocol-error') errors.push(reply.reason);
          // The first log sync (through entry 2) is slow: it has not finished when the rest arrives.
        }
      }
      assert.deepEqual(errors, []);
    },
  );
});
