// The clock port (src/io/clock.ts): the system clock and its manual twin pass one suite.
// The suite asserts order and lower bounds only (a timer never runs early, a cancelled
// one never runs, timers run in due order), never how late a real timer may be.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ManualClock, systemClock, type Clock } from '../../src/io/clock.js';

interface Twin {
  name: string;
  clock: Clock;
  /** Lets `ms` of the clock's time pass (and its timers run). */
  pass(ms: number): Promise<void>;
}

function twins(): Twin[] {
  const manual = new ManualClock(1000);
  return [
    { name: 'systemClock', clock: systemClock, pass: (ms) => new Promise((resolve) => setTimeout(resolve, ms + 20)) },
    {
      name: 'ManualClock',
      clock: manual,
      pass: async (ms) => {
        manual.advance(ms);
        await Promise.resolve();
      },
    },
  ];
}

for (const { name, clock, pass } of twins()) {
  describe(`clock port: ${name}`, () => {
    test('time never goes back, and a timer never runs before its delay', async () => {
      const startMs = clock.nowMs();
      let ranAtMs: number | null = null;
      clock.after(30, () => (ranAtMs = clock.nowMs()));
      assert.equal(ranAtMs, null, 'not at once');
      await pass(40);
      assert.ok(ranAtMs !== null, 'ran once due');
      assert.ok(ranAtMs - startMs >= 29, `ran after ${ranAtMs - startMs} ms`);
      assert.ok(clock.nowMs() >= ranAtMs);
    });

    test('timers run in due order, each once; a cancelled one never runs', async () => {
      const ran: string[] = [];
      clock.after(30, () => ran.push('late'));
      clock.after(5, () => ran.push('early'));
      const cancelled = clock.after(10, () => ran.push('cancelled'));
      cancelled.cancel();
      await pass(50);
      assert.deepEqual(ran, ['early', 'late']);
      cancelled.cancel();
      await pass(10);
      assert.deepEqual(ran, ['early', 'late']);
    });

    test('sleep resolves after its delay', async () => {
      const startMs = clock.nowMs();
      let woke = false;
      const sleeping = clock.sleep(20).then(() => (woke = true));
      await Promise.resolve();
      assert.equal(woke, false);
      await pass(30);
      await sleeping;
      assert.ok(clock.nowMs() - startMs >= 19);
    });
  });
}

test('ManualClock: a timer set by a timer runs in the same advance when it falls due within it', () => {
  const clock = new ManualClock();
  const ran: number[] = [];
  clock.after(10, () => {
    ran.push(clock.nowMs());
    clock.after(10, () => ran.push(clock.nowMs()));
  });
  clock.advance(25);
  assert.deepEqual(ran, [10, 20]);
  assert.equal(clock.nowMs(), 25);
  assert.equal(clock.waiting, 0);
});
