// Quorum (src/core/quorum.ts) and the primary's quorum gate (src/server/quorum-gate.ts).
// The rules: a member counts for the primary only while it is heard freshly, hears the
// primary, is in the primary's epoch, and echoes no node outside the primary's synced set;
// a member votes for a promotion only while it is heard freshly, is in the candidate's
// epoch, does not hear the primary (unless the primary says it stepped down) and echoes a
// synced set that names the candidate; any member (the candidate included) that still
// hears the primary stops the promotion. Then the gate: a reply passes with a quorum;
// without one it waits (suspend) until the quorum is back or fails (io-error, after a
// settling time); a closed gate fails what it holds, even if the quorum is back; a stopping
// node's gate passes a reply with a quorum and fails one without at once. And a
// seeded check of the properties the rules are for: a primary cut off from a majority has
// stopped acknowledging before that majority can vote for another node, and a replica
// the primary left behind is never voted for by a majority while the primary acknowledges.
// Votes bind: a candidate stands for the next epoch, members promise it their vote, it is
// promoted only on a majority of promises; a member that promised a newer epoch counts for
// no older primary and fences it; a member started empty learns the newest epoch first.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { candidacyOf, grantsPromise, hearsLivePrimary, learnedFloor, LEARNING, majorityOf, newerPromise, nextCandidacy, promiseFences, promotionQuorum, writeQuorum, type MemberState, type MemberView } from '../../src/core/quorum.js';
import { ManualClock } from '../../src/io/clock.js';
import { BlockmirrorError } from '../../src/lib/errors.js';
import { Logger } from '../../src/lib/log.js';
import { QuorumGate } from '../../src/server/quorum-gate.js';
import { Prng } from './prng.js';

const FRESH_MS = 200;
const members = ['a', 'b', 'w'];

function view(node: string, heardAgoMs: number | null, hears: string[], epoch: number | null = 0, synced: string[] | null = ['a', 'b'], role: string | null = 'secondary'): MemberView {
  return { node, heardAgoMs, hears, epoch, role, synced };
}

const SYNCED = ['a', 'b'];

describe('quorum rules', () => {
  test('majorities: 2 of 2 or 3, 3 of 4 or 5', () => {
    assert.deepEqual([1, 2, 3, 4, 5].map((count) => majorityOf(Array.from({ length: count }, (_, index) => String(index)))), [1, 2, 2, 3, 3]);
  });

  test('the primary counts a member only while it is heard freshly, hears the primary and is in its epoch', () => {
    const all = [view('b', 50, ['a', 'w']), view('w', 100, ['a', 'b'])];
    assert.deepEqual(writeQuorum('a', 0, SYNCED, members, all, FRESH_MS), { counted: ['a', 'b', 'w'], have: 3, need: 2, ok: true });
    const cases: [string, MemberView[], boolean][] = [
      ['w heard too long ago, b still counts', [view('b', 50, ['a']), view('w', FRESH_MS + 1, ['a'])], true],
      ['neither heard freshly', [view('b', FRESH_MS + 1, ['a']), view('w', 5_000, ['a'])], false],
      ['never heard', [view('b', null, []), view('w', null, [])], false],
      ['heard, but they do not hear a', [view('b', 10, ['w']), view('w', 10, ['b'])], false],
      ['they hear a, but know a newer epoch', [view('b', 10, ['a'], 1), view('w', 10, ['a'], 1)], false],
      ['they name no epoch of the volume', [view('b', 10, ['a'], null), view('w', 10, ['a'], null)], false],
      ['one of them right', [view('b', 10, ['a'], 1), view('w', 10, ['a'], 0)], true],
    ];
    for (const [what, views, ok] of cases) {
      const count = writeQuorum('a', 0, SYNCED, members, views, FRESH_MS);
      assert.equal(count.ok, ok, what);
      assert.equal(count.counted[0], 'a', `${what}: the primary counts itself`);
    }
  });

  test('the synced set: when a replica drops out, no member counts until it echoes the smaller set; a larger set counts at once', () => {
    // b dropped out: a's set is {a}. The witness still echoes {a, b}: it does not count.
    const stale = [view('b', null, []), view('w', 10, ['a'], 0, ['a', 'b'])];
    assert.equal(writeQuorum('a', 0, ['a'], members, stale, FRESH_MS).ok, false);
    const heard = [view('b', null, []), view('w', 10, ['a'], 0, ['a'])];
    assert.deepEqual(writeQuorum('a', 0, ['a'], members, heard, FRESH_MS).counted, ['a', 'w']);
    // b back in sync: a's set grows to {a, b}; an echo of the smaller set still counts, and so does none.
    assert.equal(writeQuorum('a', 0, ['a', 'b'], members, heard, FRESH_MS).ok, true);
    assert.equal(writeQuorum('a', 0, ['a'], members, [view('w', 10, ['a'], 0, null)], FRESH_MS).ok, true, 'a member that heard nothing votes for no one');
    assert.equal(writeQuorum('a', 0, ['a'], members, [view('w', 10, ['a'], 0, [])], FRESH_MS).ok, true);
  });

  test('a promotion needs a majority in its epoch that does not hear the primary and knows the candidate holds every acknowledged write', () => {
    const voted = promotionQuorum('b', 0, members, [view('a', null, []), view('w', 20, ['b'])], FRESH_MS, 'a', false, SYNCED);
    assert.deepEqual({ ...voted }, { counted: ['b', 'w'], have: 2, need: 2, ok: true, reason: null });
    // Left behind: the witness heard that b dropped out.
    const left = promotionQuorum('b', 0, members, [view('a', null, []), view('w', 20, ['b'], 0, ['a'])], FRESH_MS, 'a', false, SYNCED);
    assert.equal(left.ok, false);
    assert.match(left.reason ?? '', /^only 1 of the 3 members \(b\) vote for it, and a majority is 2; node w last heard that node b does not hold every acknowledged write$/);
    // b itself heard it.
    const self = promotionQuorum('b', 0, members, [view('a', null, []), view('w', 20, ['b'])], FRESH_MS, 'a', false, ['a']);
    assert.equal(self.ok, false);
    assert.match(self.reason ?? '', /node b last heard that node b does not hold every acknowledged write/);
    // A primary that says it stepped down, in this epoch, is heard without harm (a switchover).
    const switchover = promotionQuorum('b', 0, members, [view('a', 10, ['b', 'w'], 0, ['a', 'b'], 'secondary'), view('w', 20, ['a', 'b'])], FRESH_MS, 'a', true, SYNCED);
    assert.equal(switchover.ok, true, switchover.reason ?? '');
    const stillPrimary = promotionQuorum('b', 0, members, [view('a', 10, ['b', 'w'], 0, ['a', 'b'], 'primary'), view('w', 20, ['a', 'b'])], FRESH_MS, 'a', true, SYNCED);
    assert.equal(stillPrimary.ok, false);
    const refused: [string, MemberView[], boolean, RegExp][] = [
      ['the witness still hears a', [view('w', 20, ['a', 'b'])], false, /^node w still hears the primary, node a$/],
      ['b itself still hears a', [view('w', 20, ['b'])], true, /^node b still hears the primary, node a$/],
      ['the witness is not heard freshly', [view('w', FRESH_MS + 1, ['b'])], false, /^only 1 of the 3 members \(b\) vote for it, and a majority is 2$/],
      ['the witness knows a newer epoch', [view('w', 20, ['b'], 1)], false, /^only 1 of the 3 members/],
      ['the witness was never heard', [view('w', null, [])], false, /^only 1 of the 3 members/],
    ];
    for (const [what, views, selfHears, reason] of refused) {
      const count = promotionQuorum('b', 0, members, [view('a', null, []), ...views], FRESH_MS, 'a', selfHears, SYNCED);
      assert.equal(count.ok, false, what);
      assert.match(count.reason ?? '', reason, what);
    }
    // The primary's own views never vote, whatever they say.
    assert.equal(promotionQuorum('b', 0, members, [view('a', 1, ['b'])], FRESH_MS, 'a', false, SYNCED).ok, false);
    // Five members: three votes are needed.
    const five = ['a', 'b', 'c', 'd', 'w'];
    assert.equal(promotionQuorum('b', 0, five, [view('c', 1, []), view('d', 1, [])], FRESH_MS, 'a', false, SYNCED).ok, true);
    assert.equal(promotionQuorum('b', 0, five, [view('c', 1, [])], FRESH_MS, 'a', false, SYNCED).ok, false);
  });

  test('seeded partitions: whenever a majority could vote for another node, the old primary has stopped acknowledging, and no left-behind replica is voted for', () => {
    // Heartbeats every 100 ms, judged down after 600 ms, fresh for 200 ms; at time 0 a link
    // set (seeded) is cut. Each member's heartbeat to another arrives if their link is up;
    // "hears" is what its detector says (up unless silent for 600 ms). The primary a's
    // synced set is itself and the replicas it still reaches once it has dropped the others
    // (at 600 ms); every member echoes the set it last heard from a.
    const intervalMs = 100;
    const timeoutMs = 600;
    for (let seed = 1; seed <= 300; seed += 1) {
      const rng = new Prng(seed);
      const nodes = ['a', 'b', 'c', 'w', 'x'].slice(0, rng.between(3, 5));
      const witnesses = new Set<string>(nodes.filter((node) => node === 'w' || node === 'x'));
      const cut = new Set<string>();
      for (let i = 0; i < nodes.length; i += 1) {
        for (let j = i + 1; j < nodes.length; j += 1) if (rng.between(0, 2) === 0) cut.add(`${nodes[i]}-${nodes[j]}`);
      }
      const linked = (x: string, y: string): boolean => !cut.has(`${x}-${y}`) && !cut.has(`${y}-${x}`);
      const replicas = nodes.filter((node) => !witnesses.has(node));
      // a's synced set at time t: every replica before the drop, then those it reaches.
      const syncedAt = (t: number): string[] => (t < timeoutMs ? replicas : replicas.filter((node) => node === 'a' || linked('a', node)));
      // The last heartbeat from x that y received, sent at time t - ago.
      const agoAt = (x: string, y: string, t: number): number => (linked(x, y) ? t % intervalMs : t);
      const hears = (x: string, t: number): string[] => nodes.filter((y) => y !== x && agoAt(y, x, t) < timeoutMs);
      // What x echoes at time t: the set a named in the last heartbeat x got from it.
      const echo = (x: string, t: number): string[] => (x === 'a' ? syncedAt(t) : syncedAt(Math.max(0, t - agoAt('a', x, t))));
      for (let t = 0; t <= 2_000; t += 10) {
        const views = (self: string): MemberView[] =>
          nodes
            .filter((y) => y !== self)
            .map((y) => {
              const ago = agoAt(y, self, t);
              return view(y, ago, hears(y, t - ago), 0, echo(y, t - ago), y === 'a' ? 'primary' : 'secondary');
            });
        const primaryAcks = writeQuorum('a', 0, syncedAt(t), nodes, views('a'), 2 * intervalMs).ok;
        for (const candidate of replicas.filter((node) => node !== 'a')) {
          const promotable = promotionQuorum(candidate, 0, nodes, views(candidate), 2 * intervalMs, 'a', hears(candidate, t).includes('a'), echo(candidate, t)).ok;
          const where = `seed ${seed}, t ${t} ms, cut ${[...cut].join(' ')}`;
          assert.ok(!(promotable && primaryAcks), `${where}: ${candidate} could be promoted while a still acknowledges`);
          // A replica a left behind (not in its set) while a acknowledged is never promotable later.
          if (promotable) assert.ok(syncedAt(t).includes(candidate) || !everAckedWithout(candidate), `${where}: ${candidate}, left behind, could be promoted`);
        }
      }
      // Whether a ever acknowledged with `node` outside its synced set (checked over all t).
      function everAckedWithout(node: string): boolean {
        for (let t = 0; t <= 2_000; t += 10) {
          const views = nodes.filter((y) => y !== 'a').map((y) => view(y, agoAt(y, 'a', t), hears(y, t - agoAt(y, 'a', t)), 0, echo(y, t - agoAt(y, 'a', t))));
          if (!syncedAt(t).includes(node) && writeQuorum('a', 0, syncedAt(t), nodes, views, 2 * intervalMs).ok) return true;
        }
        return false;
      }
    }
  });
});

describe('promises', () => {
  const promised = (epoch: number, to: string, v: MemberView): MemberView => ({ ...v, promise: { epoch, to } });
  const member = (overrides: Partial<MemberState> = {}): MemberState => ({ self: 'w', epoch: 0, role: 'witness', promise: null, hearsLivePrimary: false, echo: ['a', 'b'], ...overrides });

  test('a candidate is a member whose promise of a newer epoch names itself; it stands past every promise it knows of', () => {
    assert.equal(candidacyOf(promised(1, 'b', view('b', 10, []))), 1);
    assert.equal(candidacyOf(promised(1, 'c', view('b', 10, []))), null, 'a promise to another node is a vote, not a candidacy');
    assert.equal(candidacyOf(promised(0, 'b', view('b', 10, []))), null, 'not newer than its own epoch');
    assert.equal(nextCandidacy(0, null, [view('a', 10, []), promised(3, 'c', view('w', 10, []))]), 4);
    assert.equal(nextCandidacy(2, { epoch: 5, to: 'b' }, [view('a', 10, [])]), 6);
  });

  test('a member promises a candidate of its epoch that it would vote for, and only a newer epoch than any it promised', () => {
    const candidate = promised(1, 'b', view('b', 10, []));
    assert.equal(grantsPromise(member(), candidate), 1);
    assert.equal(grantsPromise(member({ hearsLivePrimary: true }), candidate), null, 'it still hears the primary');
    assert.equal(grantsPromise(member({ echo: ['a'] }), candidate), null, 'its echo says b lacks acknowledged writes');
    assert.equal(grantsPromise(member({ role: 'primary' }), candidate), null, 'a primary never promises');
    assert.equal(grantsPromise(member({ role: LEARNING }), candidate), null, 'a member still learning never promises');
    assert.equal(grantsPromise(member({ promise: { epoch: 1, to: 'c' } }), candidate), null, 'epoch 1 is promised to c already');
    assert.equal(grantsPromise(member({ epoch: 1 }), candidate), null, 'b is not in its epoch');
    assert.equal(grantsPromise(member(), view('b', 10, [])), null, 'b stands for nothing');
  });

  test('standing for an epoch, the candidate counts only the members that promised it that epoch', () => {
    const others = [view('a', null, []), promised(1, 'b', view('w', 20, ['b']))];
    assert.equal(promotionQuorum('b', 0, members, others, FRESH_MS, 'a', false, SYNCED, 1).ok, true);
    const notYet = promotionQuorum('b', 0, members, [view('a', null, []), view('w', 20, ['b'])], FRESH_MS, 'a', false, SYNCED, 1);
    assert.equal(notYet.ok, false);
    assert.match(notYet.reason ?? '', /node w did not promise epoch 1 to it/);
    assert.equal(promotionQuorum('b', 0, members, [view('a', null, []), promised(1, 'c', view('w', 20, ['b']))], FRESH_MS, 'a', false, SYNCED, 1).ok, false, 'promised to another candidate');
    assert.equal(promotionQuorum('b', 0, members, [view('a', null, []), view('w', 20, ['b'])], FRESH_MS, 'a', false, SYNCED).ok, true, 'without a candidacy: who would vote');
  });

  test('what a member must not vote past: its primary serving, or the candidate it promised, standing or serving', () => {
    const all = (): boolean => true;
    assert.equal(hearsLivePrimary('w', 'a', null, [view('a', 10, [], 0, null, 'primary')], all), true);
    assert.equal(hearsLivePrimary('w', 'a', null, [view('a', 10, [], 0, null, 'secondary')], all), false, 'a says it stepped down');
    assert.equal(hearsLivePrimary('w', 'a', null, [], () => false), false, 'a is not heard');
    const promise = { epoch: 1, to: 'b' };
    assert.equal(hearsLivePrimary('w', 'a', promise, [promised(1, 'b', view('b', 10, []))], (node) => node === 'b'), true, 'b stands for epoch 1');
    assert.equal(hearsLivePrimary('w', 'a', promise, [view('b', 10, [], 1, null, 'primary')], (node) => node === 'b'), true, 'b serves epoch 1');
    assert.equal(hearsLivePrimary('w', 'a', promise, [view('b', 10, [])], (node) => node === 'b'), false, 'b gave up');
    assert.equal(hearsLivePrimary('w', null, { epoch: 1, to: '' }, [], all), false, 'a learned floor names no one');
    assert.deepEqual(newerPromise(promise, 0), promise);
    assert.equal(newerPromise(promise, 1), null);
    assert.equal(newerPromise(null, 0), null);
  });

  test('a member that promised a newer epoch counts for no primary of an older one, and fences it', () => {
    const w = promised(1, 'b', view('w', 20, ['a', 'b']));
    assert.deepEqual(writeQuorum('a', 0, SYNCED, members, [view('b', null, []), w], FRESH_MS).counted, ['a']);
    assert.equal(promiseFences(0, [view('b', null, []), w], FRESH_MS)?.node, 'w');
    assert.equal(promiseFences(1, [w], FRESH_MS), null, 'not newer than the primary of epoch 1');
    assert.equal(promiseFences(0, [{ ...w, heardAgoMs: FRESH_MS + 1 }], FRESH_MS), null, 'a stale heartbeat fences no one');
  });

  test('a member started empty counts for no one until it heard more members than a majority leaves out; then it knows the newest epoch', () => {
    const learning = view('w', 20, ['a', 'b'], 0, [], LEARNING);
    assert.deepEqual(writeQuorum('a', 0, SYNCED, members, [view('b', null, []), learning], FRESH_MS).counted, ['a']);
    assert.equal(promotionQuorum('b', 0, members, [view('a', null, []), learning], FRESH_MS, 'a', false, SYNCED).ok, false);
    assert.equal(learnedFloor('w', members, [view('a', 20, [], 0)], FRESH_MS), null, 'one of three members heard: a majority may be the other two');
    assert.equal(learnedFloor('w', members, [view('a', 20, [], 0), view('b', 20, [], 2)], FRESH_MS), 2);
    assert.equal(learnedFloor('w', members, [view('a', 20, [], 0), promised(3, 'c', view('b', 20, [], 2))], FRESH_MS), 3, 'a promise counts as the epoch it names');
    assert.equal(learnedFloor('w', members, [view('a', 20, [], 0), view('b', FRESH_MS + 1, [], 2)], FRESH_MS), null, 'b is not heard freshly');
    const five = ['a', 'b', 'c', 'd', 'w'];
    assert.equal(learnedFloor('w', five, [view('a', 1, [], 0), view('b', 1, [], 1)], FRESH_MS), null);
    assert.equal(learnedFloor('w', five, [view('a', 1, [], 0), view('b', 1, [], 1), view('c', 1, [], 4)], FRESH_MS), 4);
  });
});

describe('QuorumGate', () => {
  const quiet = new Logger({ write: () => undefined }, 'error');
  const count = (ok: boolean) => ({ counted: ok ? ['a', 'w'] : ['a'], have: ok ? 2 : 1, need: 2, ok });

  test('with a quorum a reply passes at once', async () => {
    const gate = new QuorumGate('v', () => count(true), 'suspend', new ManualClock(), 25, 100, quiet);
    await gate.pass();
  });

  test('io-error: without a quorum the reply fails with ERR_NO_QUORUM after the settling time, naming what reaches it', async () => {
    const clock = new ManualClock();
    const gate = new QuorumGate('v', () => count(false), 'io-error', clock, 25, 100, quiet);
    let settled = false;
    const failed = gate.pass();
    failed.then(
      () => (settled = true),
      () => (settled = true),
    );
    for (let step = 0; step < 3; step += 1) {
      clock.advance(25);
      await new Promise((resolve) => setImmediate(resolve));
    }
    assert.equal(settled, false, 'still settling at 75 ms');
    for (let step = 0; step < 3 && !settled; step += 1) {
      clock.advance(25);
      await new Promise((resolve) => setImmediate(resolve));
    }
    await assert.rejects(failed, (error: unknown) => error instanceof BlockmirrorError && error.code === 'ERR_NO_QUORUM' && /volume v has no quorum \(1 of the 2 members needed reach it: a\)/.test(error.message));
  });

  test('suspend: the reply waits while the quorum is lost and passes once it is back', async () => {
    const clock = new ManualClock();
    let ok = false;
    const gate = new QuorumGate('v', () => count(ok), 'suspend', clock, 25, 100, quiet);
    let passed = false;
    const held = gate.pass().then(() => (passed = true));
    for (let step = 0; step < 10; step += 1) {
      clock.advance(25);
      await new Promise((resolve) => setImmediate(resolve));
    }
    assert.equal(passed, false, 'held while there is no quorum');
    ok = true;
    for (let step = 0; step < 3 && !passed; step += 1) {
      clock.advance(25);
      await new Promise((resolve) => setImmediate(resolve));
    }
    await held;
    assert.equal(passed, true);
  });

  test('closed (the primary steps down): what it holds fails, and nothing passes any more, quorum or not', async () => {
    const clock = new ManualClock();
    let ok = false;
    const gate = new QuorumGate('v', () => count(ok), 'suspend', clock, 25, 100, quiet);
    const held = gate.pass();
    gate.close('its primary stepped down');
    ok = true;
    clock.advance(25);
    await assert.rejects(held, /volume v: its primary stepped down; the change was not acknowledged/);
    await assert.rejects(gate.pass(), /its primary stepped down/);
  });

  test('stopping (the node stops): a reply with a quorum still passes; one without fails at once, held or new', async () => {
    const clock = new ManualClock();
    let ok = false;
    const gate = new QuorumGate('v', () => count(ok), 'suspend', clock, 25, 100, quiet);
    const held = gate.pass();
    held.catch(() => undefined);
    gate.stopping('the node is stopping');
    clock.advance(25);
    await assert.rejects(held, /volume v: the node is stopping without a quorum; the change was not acknowledged/);
    await assert.rejects(gate.pass(), /the node is stopping without a quorum/);
    ok = true;
    await gate.pass();
  });
});
