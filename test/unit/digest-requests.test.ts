// DigestRequests (src/server/digest-requests.ts): VERIFY requests waiting for their VERIFIED,
// on a ManualClock.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ManualClock } from '../../src/io/clock.js';
import { DigestRequests } from '../../src/server/digest-requests.js';

test('a request is answered by its peer under its token; another peer, or an unknown token, is refused', async () => {
  const requests = new DigestRequests(new ManualClock(), 1000);
  const tokens: number[] = [];
  const asked = requests.ask('b', (token) => tokens.push(token));
  const token = tokens[0] ?? -1;
  assert.equal(requests.answered('c', token, 0, Buffer.alloc(32, 1)), false, 'not c’s request');
  assert.equal(requests.answered('b', token + 1, 0, Buffer.alloc(32, 1)), false, 'no such token');
  assert.equal(requests.answered('b', token, 0, Buffer.alloc(32, 7)), true);
  assert.ok((await asked).equals(Buffer.alloc(32, 7)));
  assert.equal(requests.answered('b', token, 0, Buffer.alloc(32, 7)), false, 'answered once');
});

test('a peer that cannot compute it, no answer in time, or links lost: the request fails', async () => {
  const clock = new ManualClock();
  const requests = new DigestRequests(clock, 1000);
  let token = 0;
  const failed = requests.ask('b', (sent) => (token = sent));
  requests.answered('b', token, 1, Buffer.alloc(32));
  await assert.rejects(failed, /could not compute it \(status 1\)/);
  const late = requests.ask('b', () => undefined);
  clock.advance(999);
  clock.advance(1);
  await assert.rejects(late, /no answer within 1000 ms/);
  const lost = requests.ask('c', () => undefined);
  const kept = requests.ask('b', (sent) => (token = sent));
  requests.failPeer('c', 'connection lost');
  await assert.rejects(lost, /connection lost/);
  assert.equal(requests.answered('b', token, 0, Buffer.alloc(32)), true, "b's request is not c's");
  await kept;
});
