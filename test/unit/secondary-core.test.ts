// SecondaryCore (src/core/secondary-core.ts): when a secondary may send READY and how a
// RESET runs around MirrorTarget, driven event by event as ReplicaTarget and the
// simulator drive it.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { SecondaryCore, type SecondaryAction } from '../../src/core/secondary-core.js';

function makeCore(lastSeq = 0): SecondaryCore<string> {
  return new SecondaryCore<string>({ mode: 'sync', lastSeq, windowBytesMax: 1 << 20 });
}

function kinds(actions: SecondaryAction<string>[]): string[] {
  return actions.map((action) => action.kind);
}

describe('SecondaryCore', () => {
  test('READY goes out at once to a session begun while idle, with the last entry issued', () => {
    const core = makeCore(7);
    assert.deepEqual(core.sessionStarted(1), [{ kind: 'send-ready', session: 1, lastSeq: 7 }]);
  });

  test('READY waits for the stores of the session before: the last sequence number it reports is exact', () => {
    const core = makeCore();
    core.sessionStarted(1);
    assert.deepEqual(kinds(core.entry(1, 100, 'e1')), ['store']);
    core.sessionEnded();
    assert.deepEqual(core.sessionStarted(2), [], 'entry 1 is still being stored');
    const after = core.stored(1, null);
    assert.deepEqual(after.filter((action) => action.kind === 'send-ready'), [{ kind: 'send-ready', session: 2, lastSeq: 1 }]);
  });

  test('a RESET waits until idle, names, restarts the log, and answers the session that asked', () => {
    const core = makeCore();
    core.sessionStarted(1);
    core.entry(1, 100, 'e1');
    assert.deepEqual(core.resetAsked(1, 5, 0), [], 'a store is under way');
    assert.equal(core.idle, false);
    const started = core.stored(1, null);
    assert.deepEqual(
      started.filter((action) => action.kind === 'name-and-keep' || action.kind === 'restart-log'),
      [{ kind: 'name-and-keep', reportAfter: 0 }],
      'the log restarts only once the names are kept',
    );
    assert.deepEqual(core.logRestarted(5, null), [{ kind: 'protocol-error', reason: 'log restarted after 5, which no reset asked' }]);
    assert.deepEqual(core.named(null), [{ kind: 'restart-log', seq: 5 }]);
    assert.deepEqual(core.resetAsked(1, 6, 0), [{ kind: 'protocol-error', reason: 'RESET during a reset' }]);
    assert.deepEqual(core.logRestarted(5, null), [{ kind: 'send-reset-done', session: 1, seq: 5, status: 0 }]);
    assert.equal(core.ready().lastSeq, 5, 'the log now follows the primary from entry 5');
    assert.deepEqual(kinds(core.entry(6, 100, 'e6')), ['store']);
  });

  test('a session that ends before its RESET began takes the RESET with it', () => {
    const core = makeCore();
    core.sessionStarted(1);
    core.entry(1, 100, 'e1');
    core.resetAsked(1, 5, 0);
    core.sessionEnded();
    assert.deepEqual(kinds(core.stored(1, null)), [], 'nothing is reset');
    assert.equal(core.idle, true);
    assert.deepEqual(core.sessionStarted(2), [{ kind: 'send-ready', session: 2, lastSeq: 1 }]);
  });

  test('a new session during a reset gets READY only after it, from where the log restarted; RESET_DONE is not sent to it', () => {
    const core = makeCore(3);
    core.sessionStarted(1);
    assert.deepEqual(kinds(core.resetAsked(1, 9, 3)), ['name-and-keep']);
    assert.deepEqual(kinds(core.named(null)), ['restart-log']);
    core.sessionEnded();
    assert.deepEqual(core.sessionStarted(2), [], 'the reset is still running');
    assert.deepEqual(core.logRestarted(9, null), [{ kind: 'send-ready', session: 2, lastSeq: 9 }]);
  });

  test('names that could not be kept fail the reset without restarting the log', () => {
    const core = makeCore(3);
    core.sessionStarted(1);
    core.resetAsked(1, 9, 3);
    assert.deepEqual(core.named('ENOSPC'), [{ kind: 'send-reset-done', session: 1, seq: 9, status: 1 }]);
    assert.equal(core.ready().lastSeq, 3);
    assert.equal(core.idle, true);
  });

  test('a log that could not restart answers RESET_DONE with status 1 and keeps the old log', () => {
    const core = makeCore(3);
    core.sessionStarted(1);
    core.resetAsked(1, 9, 3);
    core.named(null);
    assert.deepEqual(core.logRestarted(9, 'ENOSPC'), [{ kind: 'send-reset-done', session: 1, seq: 9, status: 1 }]);
    assert.equal(core.ready().lastSeq, 3);
    assert.deepEqual(core.logRestarted(9, null), [{ kind: 'protocol-error', reason: 'log restarted after 9, which no reset asked' }]);
  });
});
