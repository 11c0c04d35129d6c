// The decisions of coordination through etcd (src/core/lease.ts): how long a primary may
// acknowledge on a lease it renewed, which candidate claims a vacant volume first, the
// epoch a claim takes, and the keys' values, a forged or damaged one refused.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  claimedEpoch, claimsNow, encodeClaim, encodeSynced, HeldLease, leaseMarginMs, parseCandidate, parseEpochClaim, parsePrimaryClaim, parseSyncedClaim, preferredCandidate,
  renewEveryMs, sameNodes, syncedAdmits, syncedCovers,
} from '../../src/core/lease.js';

test('a held lease is valid until its last confirmed renewal\'s send time plus its TTL, less the margin', () => {
  const lease = new HeldLease(5000, 1000);
  assert.equal(lease.valid(0), false, 'not held before the grant is confirmed');
  lease.confirmed(100, 5000);
  assert.equal(lease.valid(4099), true);
  assert.equal(lease.valid(4100), false, 'sent at 100: etcd expires it no sooner than 5100; the holder stops at 4100');
  // A renewal confirmed late still counts from when it was sent, and never moves the bound back.
  lease.confirmed(2000, 5000);
  assert.equal(lease.fenceAtMs, 6000);
  lease.confirmed(1500, 5000);
  assert.equal(lease.fenceAtMs, 6000);
  // etcd granting more than asked does not lengthen the holder's view; less shortens it.
  lease.confirmed(3000, 60_000);
  assert.equal(lease.fenceAtMs, 7000);
  lease.lost();
  assert.equal(lease.valid(3001), false, 'an expired lease stops every reply at once');
  assert.throws(() => new HeldLease(1000, 1000));
});

test('the margin and the renewal pace scale with the lease', () => {
  assert.equal(leaseMarginMs(2000), 400);
  assert.equal(leaseMarginMs(5000), 1000);
  assert.equal(leaseMarginMs(60_000), 1000);
  assert.equal(renewEveryMs(5000), 1250);
  // Four renewals per lease: with the margin, two in a row may fail without a fence.
  for (const ttl of [2000, 5000, 30_000]) assert.ok(ttl - leaseMarginMs(ttl) > 2 * renewEveryMs(ttl));
});

test('the preferred candidate: highest priority, then most entries, then lowest id', () => {
  assert.equal(preferredCandidate([]), null);
  const candidates = [
    { node: 'c', priority: 0, lastSeq: 90 },
    { node: 'b', priority: 0, lastSeq: 100 },
    { node: 'd', priority: 0, lastSeq: 100 },
  ];
  assert.equal(preferredCandidate(candidates)?.node, 'b');
  assert.equal(preferredCandidate([...candidates, { node: 'e', priority: 5, lastSeq: 1 }])?.node, 'e');
  // A primary that stepped down comes after every copy that follows, whatever its priority.
  assert.equal(preferredCandidate([{ node: 'a', priority: 9, lastSeq: 200, steppedDown: true }, ...candidates])?.node, 'b');
  assert.equal(preferredCandidate([{ node: 'a', priority: 9, lastSeq: 200, steppedDown: true }])?.node, 'a');
  assert.deepEqual(parseCandidate(encodeClaim({ node: 'a', priority: 0, lastSeq: 5, steppedDown: true })), { node: 'a', priority: 0, lastSeq: 5, steppedDown: true });
  assert.equal(parseCandidate('{"node":"a","priority":0,"lastSeq":5,"steppedDown":"yes"}'), null);
});

test('a candidate claims once the others had time to announce themselves, the preferred first, the rest after the fallback', () => {
  const b = { node: 'b', priority: 0, lastSeq: 100 };
  const c = { node: 'c', priority: 0, lastSeq: 90 };
  assert.equal(claimsNow(b, [c], 100, 300, 5000), false, 'still gathering');
  assert.equal(claimsNow(b, [c], 300, 300, 5000), true);
  assert.equal(claimsNow(c, [b], 300, 300, 5000), false, 'c is not preferred');
  assert.equal(claimsNow(c, [b], 5299, 300, 5000), false);
  assert.equal(claimsNow(c, [b], 5300, 300, 5000), true, 'b did not make it: c claims in its place');
  assert.equal(claimsNow(b, [b, c], 0, 0, 5000), true, 'its own announcement is not another candidate');
});

test('a claim takes the epoch past the newest recorded and every one the copy knows', () => {
  assert.equal(claimedEpoch(0, 0), 1);
  assert.equal(claimedEpoch(4, 2), 5);
  assert.equal(claimedEpoch(2, 7), 8);
});

test('the keys\' values round-trip; one that is not blockmirror\'s is refused', () => {
  const primary = { node: 'a', epoch: 3, lease: '7587871239459723814' };
  assert.deepEqual(parsePrimaryClaim(encodeClaim(primary)), primary);
  assert.deepEqual(parseEpochClaim(encodeClaim({ node: 'b', epoch: 0 })), { node: 'b', epoch: 0 });
  assert.deepEqual(parseCandidate(encodeClaim({ node: 'c', priority: 2, lastSeq: 10 })), { node: 'c', priority: 2, lastSeq: 10 });
  for (const text of ['', 'null', '[]', '{"node":"a"}', '{"node":"A!","epoch":1,"lease":"1"}', '{"node":"a","epoch":-1,"lease":"1"}', '{"node":"a","epoch":1.5,"lease":"1"}', '{"node":"a","epoch":1,"lease":"xyz"}', '{"node":"a","epoch":4294967296,"lease":"1"}']) {
    assert.equal(parsePrimaryClaim(text), null, text);
  }
  assert.equal(parseEpochClaim('{"node":"a","epoch":"1"}'), null);
  assert.equal(parseCandidate('{"node":"a","priority":-1,"lastSeq":0}'), null);
  assert.equal(parseCandidate('{"node":"a","priority":0}'), null);
});

test('the synced set: a reply leaves only when every copy etcd may name waited for it', () => {
  // Known value {a, b}, a change naming c whose answer was lost: etcd may name a, b or c.
  const mayName = ['a', 'b', 'c'];
  assert.equal(syncedCovers(mayName, 'a', ['b', 'c']), true);
  assert.equal(syncedCovers(mayName, 'a', ['b']), false, 'c may be named and did not wait for it');
  assert.equal(syncedCovers([], 'a', []), true);
  assert.equal(syncedCovers(['a'], 'a', []), true, 'the primary alone');
  assert.equal(syncedAdmits(null, 'b'), true);
  assert.equal(syncedAdmits({ epoch: 3, version: 2, nodes: ['a', 'b'] }, 'b'), true);
  assert.equal(syncedAdmits({ epoch: 3, version: 2, nodes: ['a'] }, 'b'), false);
  assert.equal(sameNodes(['a', 'b'], ['b', 'a']), true);
  assert.equal(sameNodes(['a', 'b'], ['a']), false);
  assert.equal(sameNodes(['a', 'a'], ['a']), true);
});

test('the synced key\'s value carries a version, so that no value ever comes back', () => {
  const first = encodeSynced({ epoch: 3, version: 1, nodes: ['b', 'a'] });
  const later = encodeSynced({ epoch: 3, version: 3, nodes: ['a', 'b'] });
  assert.notEqual(first, later, 'the same copies at another version are another value');
  assert.deepEqual(parseSyncedClaim(first), { epoch: 3, version: 1, nodes: ['a', 'b'] });
  for (const text of ['{"epoch":3,"nodes":["a"]}', '{"epoch":3,"version":-1,"nodes":["a"]}', '{"epoch":3,"version":0,"nodes":["A"]}', '{"epoch":3,"version":0,"nodes":"a"}']) {
    assert.equal(parseSyncedClaim(text), null, text);
  }
});
