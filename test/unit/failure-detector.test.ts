// The failure detector. What a node relies on: a peer heard for the first time is up at
// once; a silent peer is declared down exactly once, and only after more than the
// timeout; it is trusted again only after a whole probation of heartbeats, so a flapping
// link never brings it up; replayed or stale datagrams change nothing; a restart is
// reported; and ordinary packet loss never looks like a failure.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AssertionError } from '../../src/lib/assert.js';
import { FailureDetector, type DetectorAction } from '../../src/core/failure-detector.js';
import { baseSeed, Prng } from './prng.js';

const DEFAULT_SEED = 0x0fd0_2024;
const SEED = baseSeed(DEFAULT_SEED);
const INTERVAL_MS = 250;
const TIMEOUT_MS = 2000;
const PROBATION_MS = 2000;

function detector(peers: string[] = ['b'], probationMs = PROBATION_MS): FailureDetector {
  return new FailureDetector({ peers, timeoutMs: TIMEOUT_MS, probationMs });
}

interface Timed {
  atMs: number;
  action: DetectorAction;
}

/**
 * Peer 'b' sends a heartbeat every interval in [fromMs, toMs); `delivered(sendMs)` says
 * whether it arrives (instantly). The node ticks every `tickMs`. Returns every action
 * with its time and the next counter to use.
 */
function run(
  subject: FailureDetector,
  options: { fromMs: number; toMs: number; delivered: (sendMs: number) => boolean; incarnation?: number; counter?: number; tickMs?: number },
): { actions: Timed[]; counter: number; states: Set<string> } {
  const tickMs = options.tickMs ?? 50;
  let counter = options.counter ?? 1;
  const actions: Timed[] = [];
  const states = new Set<string>();
  for (let nowMs = options.fromMs; nowMs < options.toMs; nowMs += tickMs) {
    if ((nowMs - options.fromMs) % INTERVAL_MS === 0) {
      counter += 1;
      if (options.delivered(nowMs)) {
        const result = subject.heard('b', options.incarnation ?? 1, counter, nowMs);
        assert.ok(result.accepted);
        for (const action of result.actions) actions.push({ atMs: nowMs, action });
      }
    }
    for (const action of subject.tick(nowMs)) actions.push({ atMs: nowMs, action });
    states.add(subject.state('b'));
  }
  return { actions, counter, states };
}

const always = (): boolean => true;
const kinds = (actions: Timed[]): string[] => actions.map(({ action }) => action.kind);

describe('failure detector', () => {
  test('first contact is up at once; a peer never heard is down once the timeout has passed since the start', () => {
    const subject = detector(['b', 'c']);
    assert.deepEqual(subject.tick(0), []);
    assert.deepEqual(subject.heard('b', 1, 1, 10), { accepted: true, reason: 'ok', actions: [{ kind: 'peer-up', peer: 'b' }] });
    assert.equal(subject.isUp('b'), true);
    assert.deepEqual(subject.tick(TIMEOUT_MS), []);
    assert.equal(subject.state('c'), 'unknown', 'not yet silent for longer than the timeout');
    // The node may have connected to c while it was unknown: it is declared down, once.
    assert.deepEqual(subject.tick(TIMEOUT_MS + 1), [{ kind: 'peer-down', peer: 'c', silentMs: TIMEOUT_MS + 1 }]);
    assert.deepEqual(subject.tick(100_000), [{ kind: 'peer-down', peer: 'b', silentMs: 99_990 }]);
    assert.equal(subject.state('c'), 'down');
    // Its first heartbeat, however late, is a first contact: up at once, no probation.
    assert.deepEqual(subject.heard('c', 7, 1, 100_001).actions, [{ kind: 'peer-up', peer: 'c' }]);
    // b was heard before: it comes back through probation.
    assert.deepEqual(subject.heard('b', 1, 2, 100_001).actions, []);
    assert.equal(subject.state('b'), 'probation');
    assert.deepEqual(subject.heard('zed', 1, 1, 100_002), { accepted: false, reason: 'unknown-peer', actions: [] });
  });

  test('silence longer than the timeout makes a peer down, once', () => {
    const subject = detector();
    subject.heard('b', 1, 1, 1000);
    assert.deepEqual(subject.tick(1000 + TIMEOUT_MS), []);
    assert.deepEqual(subject.tick(1001 + TIMEOUT_MS), [{ kind: 'peer-down', peer: 'b', silentMs: 2001 }]);
    assert.deepEqual(subject.tick(5000), []);
    assert.deepEqual(subject.tick(60_000), []);
    assert.equal(subject.state('b'), 'down');
  });

  test('a down peer is up again only after a full probation of heartbeats', () => {
    const subject = detector();
    subject.heard('b', 1, 1, 0);
    subject.tick(3000);
    const { actions, states } = run(subject, { fromMs: 10_000, toMs: 20_000, delivered: always, counter: 1 });
    assert.deepEqual(actions, [{ atMs: 10_000 + PROBATION_MS, action: { kind: 'peer-up', peer: 'b' } }]);
    assert.deepEqual(states, new Set(['probation', 'up']));
  });

  test('probation that ends in silence does not bring the peer up', () => {
    const subject = detector();
    subject.heard('b', 1, 1, 0);
    subject.tick(3000);
    subject.heard('b', 1, 2, 10_000);
    subject.heard('b', 1, 3, 11_900);
    // Probation time has passed and the last heartbeat is within the timeout, but none
    // has been heard since the probation should have ended.
    assert.deepEqual(subject.tick(12_100), []);
    assert.equal(subject.state('b'), 'probation');
    assert.deepEqual(subject.tick(13_901), []);
    assert.equal(subject.state('b'), 'down');
  });

  test('a gap longer than the timeout during probation restarts it', () => {
    for (const ticking of [false, true]) {
      const subject = detector();
      subject.heard('b', 1, 1, 0);
      subject.tick(3000);
      subject.heard('b', 1, 2, 10_000);
      subject.heard('b', 1, 3, 11_000);
      if (ticking) assert.deepEqual(subject.tick(13_001), []);
      assert.equal(subject.state('b'), ticking ? 'down' : 'probation');
      assert.deepEqual(subject.heard('b', 1, 4, 13_500).actions, []);
      assert.equal(subject.state('b'), 'probation');
      assert.deepEqual(subject.heard('b', 1, 5, 15_000).actions, []);
      assert.deepEqual(subject.heard('b', 1, 6, 15_500).actions, [{ kind: 'peer-up', peer: 'b' }]);
    }
  });

  test('heartbeats flapping faster than the probation never bring the peer up', () => {
    const subject = detector();
    subject.heard('b', 1, 1, 0);
    subject.tick(3000);
    // 1.5 s on, 2.5 s off, for ten minutes.
    const { actions, states } = run(subject, { fromMs: 10_000, toMs: 610_000, delivered: (sendMs) => (sendMs - 10_000) % 4000 <= 1500, counter: 1 });
    assert.deepEqual(actions, []);
    assert.equal(states.has('up'), false);
    assert.ok(states.has('probation') && states.has('down'));
  });

  test('replayed and stale datagrams are refused and refresh nothing', () => {
    const subject = detector();
    subject.heard('b', 5, 10, 0);
    for (const [incarnation, counter] of [[5, 10], [5, 9], [4, 100], [0, 0]] as const) {
      assert.deepEqual(subject.heard('b', incarnation, counter, 1500), { accepted: false, reason: 'replay', actions: [] });
    }
    assert.deepEqual(subject.tick(2001), [{ kind: 'peer-down', peer: 'b', silentMs: 2001 }]);
    // Nor does a replay move a down peer into probation.
    subject.heard('b', 5, 10, 3000);
    assert.equal(subject.state('b'), 'down');
    const [status] = subject.status();
    assert.deepEqual(status, { peer: 'b', state: 'down', lastHeardMs: 0, incarnation: 5, counter: 10, accepted: 1, rejected: 5 });
  });

  test('a higher incarnation while up is a restart; the old one is then stale', () => {
    const subject = detector();
    subject.heard('b', 5, 10, 0);
    assert.deepEqual(subject.heard('b', 6, 1, 250).actions, [{ kind: 'peer-restarted', peer: 'b' }]);
    assert.equal(subject.isUp('b'), true);
    assert.deepEqual(subject.heard('b', 6, 2, 500).actions, []);
    assert.equal(subject.heard('b', 5, 11, 750).reason, 'replay');
  });

  test('a peer silent past the timeout is down even if no tick ran before it spoke again', () => {
    const subject = detector();
    subject.heard('b', 1, 1, 0);
    assert.deepEqual(subject.heard('b', 2, 1, 5000).actions, [{ kind: 'peer-down', peer: 'b', silentMs: 5000 }]);
    assert.equal(subject.state('b'), 'probation');
    const zero = detector(['b'], 0);
    zero.heard('b', 1, 1, 0);
    assert.deepEqual(zero.heard('b', 1, 2, 5000).actions.map((action) => action.kind), ['peer-down', 'peer-up']);
  });

  test('30% random loss over ten minutes is never taken for a failure', () => {
    const prng = new Prng(SEED);
    const subject = detector();
    const delivered = new Map<number, boolean>();
    const { actions, states } = run(subject, {
      fromMs: 0,
      toMs: 600_000,
      delivered: (sendMs) => {
        const arrives = sendMs === 0 || !prng.chance(0.3);
        delivered.set(sendMs, arrives);
        return arrives;
      },
    });
    // The only loss that may look like a failure: more than the timeout between two
    // arrivals (8 losses in a row, p = 0.3^8 per heartbeat). The default seed has none;
    // a replayed seed that does must then show exactly those.
    let lastMs = 0;
    let longGaps = 0;
    let longestRun = 0;
    let lossRun = 0;
    for (const [sendMs, arrives] of delivered) {
      lossRun = arrives ? 0 : lossRun + 1;
      longestRun = Math.max(longestRun, lossRun);
      if (!arrives) continue;
      if (sendMs - lastMs > TIMEOUT_MS) longGaps += 1;
      lastMs = sendMs;
    }
    assert.ok(longestRun >= 4, `seed ${SEED}: loss too mild to test anything`);
    assert.equal(kinds(actions).filter((kind) => kind === 'peer-down').length, longGaps, `seed ${SEED}`);
    if (longGaps === 0) {
      assert.deepEqual(kinds(actions), ['peer-up'], `seed ${SEED}`);
      assert.deepEqual(states, new Set(['up']));
    }
    if (SEED === DEFAULT_SEED) assert.equal(longGaps, 0, 'the default seed is a run with loss but no long silence');
  });

  test('100% loss for 2.1 s gives exactly one peer-down, and up again after probation', () => {
    const subject = detector();
    const { actions } = run(subject, { fromMs: 0, toMs: 30_000, delivered: (sendMs) => sendMs <= 10_000 || sendMs > 12_100 });
    assert.deepEqual(actions, [
      { atMs: 0, action: { kind: 'peer-up', peer: 'b' } },
      { atMs: 12_050, action: { kind: 'peer-down', peer: 'b', silentMs: 2050 } },
      { atMs: 12_250 + PROBATION_MS, action: { kind: 'peer-up', peer: 'b' } },
    ]);
    // 1.9 s of loss (seven heartbeats) is a gap of exactly the timeout: not a failure.
    const tolerant = detector();
    assert.deepEqual(kinds(run(tolerant, { fromMs: 0, toMs: 30_000, delivered: (sendMs) => sendMs <= 10_000 || sendMs > 11_900 }).actions), ['peer-up']);
  });

  test('illegal use asserts', () => {
    assert.throws(() => new FailureDetector({ peers: ['b'], timeoutMs: 0, probationMs: 0 }), AssertionError);
    assert.throws(() => new FailureDetector({ peers: ['b'], timeoutMs: 1, probationMs: -1 }), AssertionError);
    assert.throws(() => new FailureDetector({ peers: ['b', 'b'], timeoutMs: 1, probationMs: 0 }), AssertionError);
    const subject = detector();
    subject.tick(1000);
    assert.throws(() => subject.tick(999), AssertionError);
    assert.throws(() => subject.heard('b', 1, 1, 999), AssertionError);
    assert.throws(() => subject.state('zed'), AssertionError);
    assert.throws(() => subject.isUp('zed'), AssertionError);
    assert.throws(() => subject.heard('b', 2 ** 53, 1, 1000), AssertionError);
  });
});
