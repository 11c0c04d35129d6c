// The handshake proofs and the MAC helpers under them. What the handshake relies on: a
// proof binds the secret, the direction and every field both sides said, so a proof made
// for one connection, pair of nodes, volume or direction is worthless for any other; that
// includes the epoch history HELLO carries, so a history changed on the way (an epoch, a
// restart count, a first entry, a primary, an epoch dropped or added) changes both
// proofs, and a restart count altered in a sent HELLO makes the target's proofs differ
// from the source's; the same inputs always give the same proof, so both nodes compute it
// alike, the target from the HELLO it decoded and the source from the one it sent (a
// restart count of 0, which the decoder leaves out, included); and proofs are compared
// without leaking where they differ.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { hmacSha256, macEquals, randomNonce } from '../../src/lib/hmac.js';
import { crc32c } from '../../src/lib/crc32c.js';
import { encodeFrame, PEER_PROTOCOL_VERSION, PeerFrameDecoder, type PeerEpochStart, type PeerHello } from '../../src/protocol/peer/frames.js';
import { proofsEqual, sourceProof, targetProof, type HelloTranscript } from '../../src/protocol/peer/handshake.js';

const secret = Buffer.from('change-me', 'utf8');
const targetNonce = Buffer.alloc(32, 0x5a);

function baseHello(): HelloTranscript {
  return {
    version: PEER_PROTOCOL_VERSION,
    connectionIndex: 0,
    connections: 2,
    session: 0x0102_0304,
    nonce: Buffer.alloc(32, 0xa5),
    cluster: 'prod',
    fromNode: 'node-a',
    toNode: 'node-b',
    volume: 'vol-1',
    epoch: 0x0a0b_0c0d,
    lastSeq: 2 ** 40 + 9,
    history: [
      { epoch: 3, primary: 'node-b', firstSeq: 1 },
      { epoch: 0x0a0b_0c0d, primary: 'node-a', firstSeq: 2 ** 40 + 5 },
    ],
  };
}

/** The base HELLO with another history. */
function withHistory(history: PeerEpochStart[]): HelloTranscript {
  return { ...baseHello(), history };
}

/** The base HELLO with epoch `index` of its history changed. */
function withEpoch(index: number, change: Partial<PeerEpochStart>): HelloTranscript {
  return withHistory(baseHello().history.map((start, at) => (at === index ? { ...start, ...change } : start)));
}

function flipped(buffer: Buffer, index: number): Buffer {
  const copy = Buffer.from(buffer);
  copy[index] = (copy[index] ?? 0) ^ 1;
  return copy;
}

/**
 * The base HELLO's history as transcript fields: its length as a u16, then per epoch the
 * epoch as a u32, the restart count as a u32 (0 when there is none), the first entry in
 * decimal and the primary, each a field of its own.
 */
const BASE_HISTORY_FIELDS = [
  Buffer.from('0002', 'hex'),
  Buffer.from('00000003', 'hex'),
  Buffer.from('00000000', 'hex'),
  Buffer.from('1', 'utf8'),
  Buffer.from('node-b', 'utf8'),
  Buffer.from('0a0b0c0d', 'hex'),
  Buffer.from('00000000', 'hex'),
  Buffer.from('1099511627781', 'utf8'),
  Buffer.from('node-a', 'utf8'),
];

/** The base HELLO with its last epoch restarted twice by node-a, the second time from entry 2^40 + 7. */
function restartedHello(): HelloTranscript {
  const base = baseHello();
  return withHistory([
    ...base.history,
    { epoch: 0x0a0b_0c0d, primary: 'node-a', firstSeq: 2 ** 40 + 5, restart: 1 },
    { epoch: 0x0a0b_0c0d, primary: 'node-a', firstSeq: 2 ** 40 + 7, restart: 0x0102_0304 },
  ]);
}

/** restartedHello's history as transcript fields. */
const RESTARTED_HISTORY_FIELDS = [
  Buffer.from('0004', 'hex'),
  ...BASE_HISTORY_FIELDS.slice(1),
  Buffer.from('0a0b0c0d', 'hex'),
  Buffer.from('00000001', 'hex'),
  Buffer.from('1099511627781', 'utf8'),
  Buffer.from('node-a', 'utf8'),
  Buffer.from('0a0b0c0d', 'hex'),
  Buffer.from('01020304', 'hex'),
  Buffer.from('1099511627783', 'utf8'),
  Buffer.from('node-a', 'utf8'),
];

/**
 * The transcript spelled out by hand: label, then every field as u32 length + bytes. The
 * fields before the history are the base HELLO's; the history's are given.
 */
function expectedTranscript(label: string, hello: HelloTranscript, nonce: Buffer, history: readonly Buffer[] = BASE_HISTORY_FIELDS): Buffer {
  const field = (bytes: Buffer): Buffer => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(bytes.length, 0);
    return Buffer.concat([length, bytes]);
  };
  return Buffer.concat([
    Buffer.from(label, 'utf8'),
    // The version, 3.
    field(Buffer.from('0003', 'hex')),
    field(Buffer.from([hello.connectionIndex])),
    field(Buffer.from([hello.connections])),
    field(Buffer.from('01020304', 'hex')),
    field(hello.nonce),
    field(Buffer.from(hello.cluster, 'utf8')),
    field(Buffer.from(hello.fromNode, 'utf8')),
    field(Buffer.from(hello.toNode, 'utf8')),
    field(Buffer.from(hello.volume, 'utf8')),
    field(Buffer.from('0a0b0c0d', 'hex')),
    // The source's last entry, in decimal.
    field(Buffer.from('1099511627785', 'utf8')),
    // The history (see BASE_HISTORY_FIELDS).
    ...history.map(field),
    field(nonce),
  ]);
}

describe('peer handshake proofs', () => {
  test('each proof is the HMAC of the documented transcript', () => {
    const hello = baseHello();
    assert.deepEqual(
      targetProof(hmacSha256, secret, hello, targetNonce),
      hmacSha256(secret, expectedTranscript('blockmirror-peer-v1 target', hello, targetNonce)),
    );
    assert.deepEqual(
      sourceProof(hmacSha256, secret, hello, targetNonce),
      hmacSha256(secret, expectedTranscript('blockmirror-peer-v1 source', hello, targetNonce)),
    );
    // And with restarts, whose counts are fields after their epochs.
    const restarted = restartedHello();
    assert.deepEqual(
      targetProof(hmacSha256, secret, restarted, targetNonce),
      hmacSha256(secret, expectedTranscript('blockmirror-peer-v1 target', restarted, targetNonce, RESTARTED_HISTORY_FIELDS)),
    );
    assert.deepEqual(
      sourceProof(hmacSha256, secret, restarted, targetNonce),
      hmacSha256(secret, expectedTranscript('blockmirror-peer-v1 source', restarted, targetNonce, RESTARTED_HISTORY_FIELDS)),
    );
  });

  test('two HELLOs that differ only in a restart count have different transcripts and proofs', () => {
    /** The transcript a proof is computed over, as the injected MAC sees it. */
    const transcriptOf = (proof: typeof targetProof, hello: HelloTranscript): Buffer => {
      let seen: Buffer | undefined;
      proof((_key, data) => {
        seen = data;
        return Buffer.from([1]);
      }, secret, hello, targetNonce);
      assert.ok(seen !== undefined);
      return seen;
    };
    const restarted = restartedHello();
    const pairs: [string, HelloTranscript, HelloTranscript][] = [
      ['no count and a count of 1', baseHello(), withEpoch(1, { restart: 1 })],
      ['counts 1 and 2 of the first epoch', withEpoch(0, { restart: 1 }), withEpoch(0, { restart: 2 })],
      ['the last count, 0x01020304 and 0x01020305', restarted, withHistory(restarted.history.map((start, at) => (at === 3 ? { ...start, restart: 0x0102_0305 } : start)))],
      ['the last count, 0x01020304 and 2^32-1', restarted, withHistory(restarted.history.map((start, at) => (at === 3 ? { ...start, restart: 0xffff_ffff } : start)))],
    ];
    for (const [name, first, second] of pairs) {
      for (const proof of [targetProof, sourceProof]) {
        const [a, b] = [transcriptOf(proof, first), transcriptOf(proof, second)];
        assert.equal(a.length, b.length, `${proof.name}: ${name}: the count is a fixed-width field`);
        assert.ok(!a.equals(b), `${proof.name}: ${name}: same transcript`);
        assert.ok(!proof(hmacSha256, secret, first, targetNonce).equals(proof(hmacSha256, secret, second, targetNonce)), `${proof.name}: ${name}: same proof`);
      }
    }
    // A count of 0 is no count: the wire cannot tell them apart, so neither may the proof.
    assert.deepEqual(transcriptOf(targetProof, withEpoch(1, { restart: 0 })), transcriptOf(targetProof, baseHello()));
    assert.deepEqual(targetProof(hmacSha256, secret, withEpoch(1, { restart: 0 }), targetNonce), targetProof(hmacSha256, secret, baseHello(), targetNonce));
  });

  test('the MAC is the injected one, keyed with the secret', () => {
    const calls: { key: string; data: Buffer }[] = [];
    const mac = (key: Buffer, data: Buffer): Buffer => {
      calls.push({ key: key.toString('utf8'), data });
      return Buffer.from([calls.length]);
    };
    assert.deepEqual(targetProof(mac, secret, baseHello(), targetNonce), Buffer.from([1]));
    assert.equal(calls[0]?.key, 'change-me');
    assert.ok(calls[0]?.data.subarray(0, 26).equals(Buffer.from('blockmirror-peer-v1 target')));
  });

  test('the two directions give different proofs', () => {
    assert.ok(!targetProof(hmacSha256, secret, baseHello(), targetNonce).equals(sourceProof(hmacSha256, secret, baseHello(), targetNonce)));
  });

  test('equal inputs give equal proofs', () => {
    const first = baseHello();
    const second = { ...baseHello(), nonce: Buffer.from(first.nonce) };
    assert.deepEqual(targetProof(hmacSha256, secret, first, targetNonce), targetProof(hmacSha256, Buffer.from(secret), second, Buffer.from(targetNonce)));
    assert.deepEqual(sourceProof(hmacSha256, secret, first, targetNonce), sourceProof(hmacSha256, Buffer.from(secret), second, Buffer.from(targetNonce)));
  });

  test('changing any field, the target nonce or the secret changes both proofs', () => {
    const base = baseHello();
    const variants: [string, HelloTranscript, Buffer, Buffer][] = [
      ['version', { ...base, version: 2 }, targetNonce, secret],
      ['connectionIndex', { ...base, connectionIndex: 1 }, targetNonce, secret],
      ['connections', { ...base, connections: 3 }, targetNonce, secret],
      ['session', { ...base, session: base.session + 1 }, targetNonce, secret],
      ['source nonce', { ...base, nonce: flipped(base.nonce, 31) }, targetNonce, secret],
      ['cluster', { ...base, cluster: 'prod2' }, targetNonce, secret],
      ['fromNode', { ...base, fromNode: 'node-c' }, targetNonce, secret],
      ['toNode', { ...base, toNode: 'node-c' }, targetNonce, secret],
      ['volume', { ...base, volume: 'vol-2' }, targetNonce, secret],
      ['epoch', { ...base, epoch: base.epoch + 1 }, targetNonce, secret],
      ['lastSeq', { ...base, lastSeq: base.lastSeq + 1 }, targetNonce, secret],
      ['nodes swapped', { ...base, fromNode: base.toNode, toNode: base.fromNode }, targetNonce, secret],
      // Without length prefixes these two would be the same bytes.
      ['boundary moved', { ...base, cluster: 'prodn', fromNode: 'ode-a' }, targetNonce, secret],
      ['target nonce', base, flipped(targetNonce, 0), secret],
      ['secret', base, targetNonce, Buffer.from('change-me!', 'utf8')],
      ['history: first epoch', withEpoch(0, { epoch: 4 }), targetNonce, secret],
      ['history: last epoch (with the HELLO epoch)', { ...withEpoch(1, { epoch: base.epoch + 1 }), epoch: base.epoch + 1 }, targetNonce, secret],
      ['history: first epoch\'s firstSeq', withEpoch(0, { firstSeq: 2 }), targetNonce, secret],
      ['history: last epoch\'s firstSeq', withEpoch(1, { firstSeq: 2 ** 40 + 6 }), targetNonce, secret],
      ['history: first epoch\'s primary', withEpoch(0, { primary: 'node-c' }), targetNonce, secret],
      ['history: last epoch\'s primary', withEpoch(1, { primary: 'node-c' }), targetNonce, secret],
      ['history: primaries swapped', withHistory(base.history.map((start, at) => ({ ...start, primary: at === 0 ? 'node-a' : 'node-b' }))), targetNonce, secret],
      ['history: first epoch dropped', withHistory(base.history.slice(1)), targetNonce, secret],
      ['history: an epoch added in front', withHistory([{ epoch: 1, primary: 'node-a', firstSeq: 1 }, ...base.history]), targetNonce, secret],
      ['history: an epoch added between', withHistory([...base.history.slice(0, 1), { epoch: 5, primary: 'node-a', firstSeq: 7 }, ...base.history.slice(1)]), targetNonce, secret],
      // Without length prefixes these two would be the same bytes ("12" + "x", "1" + "2x").
      ['history: firstSeq/primary boundary moved (1)', withEpoch(0, { firstSeq: 12, primary: 'x' }), targetNonce, secret],
      ['history: firstSeq/primary boundary moved (2)', withEpoch(0, { firstSeq: 1, primary: '2x' }), targetNonce, secret],
      ['history: first epoch\'s restart count', withEpoch(0, { restart: 1 }), targetNonce, secret],
      ['history: last epoch\'s restart count', withEpoch(1, { restart: 0xffff_ffff }), targetNonce, secret],
      // Each is a field of its own, so moving a value from one to the other shows.
      ['history: epoch and restart count swapped', withEpoch(0, { epoch: 0, restart: 3 }), targetNonce, secret],
      ['history: a restart added', withHistory([...base.history, { epoch: base.epoch, primary: 'node-a', firstSeq: 2 ** 40 + 5, restart: 1 }]), targetNonce, secret],
    ];
    for (const proof of [targetProof, sourceProof]) {
      const reference = proof(hmacSha256, secret, base, targetNonce);
      const seen = new Set<string>([reference.toString('hex')]);
      for (const [name, hello, nonce, key] of variants) {
        const changed = proof(hmacSha256, key, hello, nonce).toString('hex');
        assert.ok(!seen.has(changed), `${proof.name}: changing ${name} did not give a new proof`);
        seen.add(changed);
      }
    }
  });
});

describe('peer handshake proofs over the wire', () => {
  test('a HELLO decoded by the target gives the proofs the source computes from the one it sent', () => {
    const sent = {
      type: 'hello' as const,
      ...baseHello(),
      epoch: 0xffff_ffff,
      history: Array.from({ length: 16 }, (_, index): PeerEpochStart => ({
        epoch: 0xffff_fff0 + index,
        primary: `nœud-${index}-` + 'é'.repeat(index * 8),
        firstSeq: index === 15 ? Number.MAX_SAFE_INTEGER : 2 ** 32 + index * 3,
      })),
    };
    const [received] = new PeerFrameDecoder({ entryBodyBytesMax: 64 }).push(encodeFrame(sent));
    assert.ok(received?.type === 'hello');
    assert.deepEqual(targetProof(hmacSha256, secret, received, targetNonce), targetProof(hmacSha256, secret, sent, targetNonce));
    assert.deepEqual(sourceProof(hmacSha256, secret, received, targetNonce), sourceProof(hmacSha256, secret, sent, targetNonce));
  });

  /** The restarted HELLO as sent, its first epoch's count an explicit 0 (which the decoder leaves out). */
  function sentRestarted(): PeerHello {
    const restarted = restartedHello();
    return { type: 'hello', ...restarted, history: restarted.history.map((start, at) => (at === 0 ? { ...start, restart: 0 } : start)) };
  }

  test('with restarts, including a count of 0 given, the decoded HELLO gives the sent one\'s proofs', () => {
    const sent = sentRestarted();
    const [received] = new PeerFrameDecoder({ entryBodyBytesMax: 64 }).push(encodeFrame(sent));
    assert.ok(received?.type === 'hello');
    assert.equal(received.history[3]?.restart, 0x0102_0304);
    assert.ok(!('restart' in (received.history[0] ?? {})), 'a count of 0 comes back as none');
    assert.deepEqual(targetProof(hmacSha256, secret, received, targetNonce), targetProof(hmacSha256, secret, sent, targetNonce));
    assert.deepEqual(sourceProof(hmacSha256, secret, received, targetNonce), sourceProof(hmacSha256, secret, sent, targetNonce));
  });

  test('a restart count altered on the wire (checksum fixed up) breaks both proofs', () => {
    const sent = sentRestarted();
    const frame = Buffer.from(encodeFrame(sent));
    // The last epoch ends the body: u32 epoch, u32 restart count, u64 first entry, u16 + 'node-a'.
    const at = frame.length - 6 - 2 - 8 - 4;
    assert.equal(frame.readUInt32BE(at), 0x0102_0304);
    frame.writeUInt32BE(0x0102_0305, at);
    frame.writeUInt32BE(crc32c([frame.subarray(0, 12), frame.subarray(16)]), 12);
    const [received] = new PeerFrameDecoder({ entryBodyBytesMax: 64 }).push(frame);
    assert.ok(received?.type === 'hello');
    assert.equal(received.history[3]?.restart, 0x0102_0305);
    assert.ok(!targetProof(hmacSha256, secret, received, targetNonce).equals(targetProof(hmacSha256, secret, sent, targetNonce)));
    assert.ok(!sourceProof(hmacSha256, secret, received, targetNonce).equals(sourceProof(hmacSha256, secret, sent, targetNonce)));
  });
});

describe('proof comparison', () => {
  const proof = targetProof(hmacSha256, secret, baseHello(), targetNonce);

  for (const [name, equal] of [['proofsEqual', proofsEqual], ['macEquals', macEquals]] as const) {
    test(`${name}: equal, any one byte different, other lengths`, () => {
      assert.equal(equal(proof, Buffer.from(proof)), true);
      assert.equal(equal(Buffer.alloc(0), Buffer.alloc(0)), true);
      for (let index = 0; index < proof.length; index += 1) assert.equal(equal(proof, flipped(proof, index)), false, `byte ${index}`);
      assert.equal(equal(proof, proof.subarray(0, 31)), false);
      assert.equal(equal(proof, Buffer.concat([proof, Buffer.alloc(1)])), false);
      assert.equal(equal(Buffer.alloc(0), proof), false);
    });
  }

  test('random nonces are 32 bytes and differ', () => {
    const first = randomNonce();
    const second = randomNonce();
    assert.equal(first.length, 32);
    assert.equal(second.length, 32);
    assert.ok(!first.equals(second));
  });
});
