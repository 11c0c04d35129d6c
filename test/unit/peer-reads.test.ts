// PeerReads (src/server/peer-reads.ts): a diskless primary's reads, asked of its peers.
// Driven with fake peers that answer (or not) the READ frames it sends: a range is asked
// for in pieces as of the last entry, each answer is copied into place, a piece a peer
// cannot answer goes to the next peer, and only with no peer left does the read fail.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ManualClock } from '../../src/io/clock.js';
import { constants } from '../../src/constants.js';
import { EntryType } from '../../src/protocol/log-entry.js';
import { PeerFrameDecoder, type PeerMessage } from '../../src/protocol/peer/frames.js';
import { PeerReads } from '../../src/server/peer-reads.js';

type Read = Extract<PeerMessage, { type: 'read' }>;

/** The volume as every peer holds it: byte i is i mod 251. */
const content = (offset: number, lengthBytes: number): Buffer => Buffer.from(Array.from({ length: lengthBytes }, (_, index) => (offset + index) % 251));

function dataFor(read: Read, bytes = content(read.offset, read.lengthBytes)): Extract<PeerMessage, { type: 'read-data' }> {
  const header = { type: EntryType.WRITE, flags: 0, logId: 0, volumeId: 0, seq: read.token, durableSeq: 0, offset: read.offset, lengthBytes: bytes.length, generation: 0, epoch: 0 };
  return { type: 'read-data', header: { ...header, payloadBytes: bytes.length, payloadCrc: 0 }, payload: [bytes.subarray(0, 100), bytes.subarray(100)], bodyBytes: 64 + bytes.length };
}

function harness(peers: string[], pieceBytesMax = 4096): { reads: PeerReads; sent: { peer: string; read: Read }[]; clock: ManualClock; up: Set<string> } {
  const clock = new ManualClock();
  const sent: { peer: string; read: Read }[] = [];
  const up = new Set(peers);
  const reads = new PeerReads({
    clock,
    candidates: () => peers.filter((peer) => up.has(peer)),
    send: (peer, frame) => {
      const [message] = new PeerFrameDecoder({ entryBodyBytesMax: 1 << 20 }).push(frame);
      assert.equal(message?.type, 'read');
      sent.push({ peer, read: message as Read });
      return true;
    },
    lastSeq: () => 42,
    pieceBytesMax,
  });
  return { reads, sent, clock, up };
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

test('a range is asked for in pieces as of the last entry, and the answers land in place', async () => {
  const { reads, sent } = harness(['b', 'c']);
  const buffer = Buffer.alloc(10_000);
  const done = reads.read(buffer, 5_000);
  await turn();
  assert.deepEqual(sent.map(({ peer, read }) => [peer, read.seq, read.offset, read.lengthBytes]), [['b', 42, 5_000, 4096], ['b', 42, 9_096, 4096], ['b', 42, 13_192, 1808]]);
  // Answered out of order.
  for (const { read } of [...sent].reverse()) assert.equal(reads.answered('b', dataFor(read)), true);
  await done;
  assert.ok(buffer.equals(content(5_000, 10_000)));
  assert.equal(reads.inflight, 0);
});

test('a piece a peer cannot answer is asked of the next; with none left the read fails, naming why', async () => {
  const { reads, sent, clock, up } = harness(['b', 'c']);
  const buffer = Buffer.alloc(1000);
  const done = reads.read(buffer, 0);
  await turn();
  assert.equal(reads.answered('b', { type: 'read-failed', token: sent[0]?.read.token ?? 0, status: 1 }), true);
  await turn();
  assert.deepEqual(sent.map(({ peer }) => peer), ['b', 'c']);
  // c's links go down: nobody is left.
  reads.failPeer('c', 'connection lost');
  await assert.rejects(done, /read of 1000 bytes at 0 failed: this node's disk failed, and no peer answered \(c: connection lost\)/);

  // No answer in time is a failure too; a peer no longer up is not asked.
  up.delete('c');
  const slow = reads.read(Buffer.alloc(10), 0);
  await turn();
  clock.advance(constants.peerReadTimeoutMs);
  await assert.rejects(slow, /no peer answered \(b: no answer in 10000 ms\)/);
  up.clear();
  await assert.rejects(reads.read(Buffer.alloc(10), 0), /no peer holds an up-to-date copy/);
});

test('an answer to no READ, from another peer, or for another range is refused', async () => {
  const { reads, sent } = harness(['b']);
  const done = reads.read(Buffer.alloc(300), 100);
  await turn();
  const read = sent[0]?.read ?? assert.fail();
  assert.equal(reads.answered('c', dataFor(read)), false, 'not the peer asked');
  assert.equal(reads.answered('b', dataFor({ ...read, token: read.token + 1 })), false, 'no such token');
  assert.equal(reads.answered('b', dataFor({ ...read, offset: 0 })), false, 'another range');
  assert.equal(reads.answered('b', dataFor(read)), true);
  await done;
});

test('READs in flight are bounded: the rest wait for room', async () => {
  const { reads, sent } = harness(['b'], 1);
  const total = constants.peerReadsInflightMax + 5;
  const done = reads.read(Buffer.alloc(total), 0);
  await turn();
  assert.equal(sent.length, constants.peerReadsInflightMax);
  for (let index = 0; index < total; index += 1) {
    const { read } = sent[index] ?? assert.fail(`READ ${index} was sent`);
    assert.equal(reads.answered('b', dataFor(read)), true);
    await turn();
    assert.ok(reads.inflight <= constants.peerReadsInflightMax);
  }
  await done;
  assert.equal(sent.length, total);
});
