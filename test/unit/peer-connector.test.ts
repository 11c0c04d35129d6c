// PeerConnector (src/core/peer-connector.ts): when a primary connects to a peer again. It
// is driven as MirrorEngine drives it, and each answer is checked: connect at once at
// start and when the heartbeats call the peer up, after a doubling back-off when a
// session fails, not at all while the heartbeats call the peer down, and each problem
// reported once until it changes.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PeerConnector } from '../../src/core/peer-connector.js';

const MIN_MS = 100;
const MAX_MS = 800;

test('a failing peer is tried again after 100, 200, 400, 800, 800 ms, the problem said once until it changes; a session resets the back-off', () => {
  const connector = new PeerConnector(MIN_MS, MAX_MS);
  assert.deepEqual(connector.start(true), [{ kind: 'connect' }]);
  assert.deepEqual(connector.start(true), [], 'already connecting');
  const delays: number[] = [];
  const reports: string[] = [];
  for (let attempt = 0; attempt < 5; attempt += 1) {
    for (const action of connector.failed(attempt < 3 ? 'connection refused' : 'wrong cluster secret', true)) {
      if (action.kind === 'wait') delays.push(action.delayMs);
      else if (action.kind === 'report') reports.push(action.problem);
      else assert.fail(`unexpected ${action.kind}`);
    }
    assert.deepEqual(connector.failed('a second link lost', true), [], 'one retry per failure, however many links report it');
    assert.deepEqual(connector.timerFired(true), [{ kind: 'connect' }]);
  }
  assert.deepEqual(delays, [100, 200, 400, 800, 800]);
  assert.deepEqual(reports, ['connection refused', 'wrong cluster secret']);
  connector.connected();
  assert.deepEqual(connector.failed('connection closed by the peer', true), [
    { kind: 'report', problem: 'connection closed by the peer' },
    { kind: 'wait', delayMs: 100 },
  ]);
});

test('while the heartbeats call the peer down nothing is retried; when they call it up it is connected to at once', () => {
  const connector = new PeerConnector(MIN_MS, MAX_MS);
  assert.deepEqual(connector.start(false), [], 'not before the heartbeats allow it');
  assert.deepEqual(connector.heartbeatUp(), [{ kind: 'connect' }]);
  assert.deepEqual(connector.heartbeatUp(), [], 'a connection is being set up');
  connector.connected();
  assert.deepEqual(connector.heartbeatUp(), [], 'up already');
  // The heartbeats call it down: its links close (the caller's part) and the loss is not retried.
  assert.deepEqual(connector.heartbeatDown(), []);
  assert.deepEqual(connector.failed('peer down: no heartbeat for 3000 ms', false), [{ kind: 'report', problem: 'peer down: no heartbeat for 3000 ms' }]);
  assert.deepEqual(connector.timerFired(true), [], 'no wait was set');
  assert.deepEqual(connector.heartbeatUp(), [{ kind: 'connect' }]);
});

test('a wait is cancelled when the heartbeats call the peer down, and replaced by a connection when they call it up; a wait that runs out while the peer is down connects nothing', () => {
  const connector = new PeerConnector(MIN_MS, MAX_MS);
  connector.start(true);
  assert.deepEqual(connector.failed('connection refused', true), [
    { kind: 'report', problem: 'connection refused' },
    { kind: 'wait', delayMs: 100 },
  ]);
  assert.deepEqual(connector.heartbeatDown(), [{ kind: 'cancel-wait' }]);
  assert.deepEqual(connector.heartbeatDown(), []);
  assert.deepEqual(connector.heartbeatUp(), [{ kind: 'connect' }]);
  assert.deepEqual(connector.failed('connection refused', true), [{ kind: 'wait', delayMs: 100 }], 'the heartbeats reset the back-off; the same problem is not said again');
  assert.deepEqual(connector.heartbeatUp(), [{ kind: 'cancel-wait' }, { kind: 'connect' }], 'the peer restarted: at once, not after the wait');
  connector.failed('connection refused', true);
  assert.deepEqual(connector.timerFired(false), [], 'the heartbeats called it down meanwhile');
  assert.deepEqual(connector.heartbeatUp(), [{ kind: 'connect' }]);
});
