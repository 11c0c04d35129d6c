// The heartbeat datagram codec. What a node relies on: a heartbeat comes back exactly as
// it was sent; the layout on the wire is the documented one, MAC included; any damage,
// truncation, extra byte, wrong secret or random garbage is refused with a reason and
// never throws; and a datagram no correct sender would produce is refused even when its
// MAC is right (such datagrams are built by hand here and re-signed, so the check under
// test is the one that must catch them).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AssertionError } from '../../src/lib/assert.js';
import { hmacSha256 } from '../../src/lib/hmac.js';
import {
  decodeHeartbeat,
  encodeHeartbeat,
  HEARTBEAT_BYTES_MAX,
  HEARTBEAT_DISK_STATES,
  HEARTBEAT_MAGIC,
  type Heartbeat,
} from '../../src/protocol/heartbeat/datagram.js';
import { baseSeed, Prng } from './prng.js';

const SEED = baseSeed(0x4842_1d07);
const secret = Buffer.from('cluster-secret', 'utf8');
const LABEL = Buffer.from('blockmirror-heartbeat-v1', 'ascii');
const REASONS = new Set(['short', 'magic', 'version', 'malformed', 'mac']);

function heartbeat(volumeCount: number): Heartbeat {
  return {
    incarnation: 1_700_000_000_123,
    counter: 42,
    cluster: 'prod-é',
    fromNode: 'node-a',
    toNode: 'node-b',
    volumes: Array.from({ length: volumeCount }, (_, index) => ({
      name: `vol-${index}`,
      role: index % 2 === 0 ? ('primary' as const) : ('secondary' as const),
      disk: HEARTBEAT_DISK_STATES[index % HEARTBEAT_DISK_STATES.length] ?? 'up-to-date',
      lastSeq: index === 0 ? Number.MAX_SAFE_INTEGER : index * 1_000_003,
    })),
  };
}

const encode = (value: Heartbeat): Buffer => encodeHeartbeat(hmacSha256, secret, value);
const decode = (datagram: Buffer, key = secret) => decodeHeartbeat(hmacSha256, key, datagram);

/** The datagram with its MAC recomputed over whatever the bytes before it now are. */
function resigned(bytes: Buffer): Buffer {
  const body = bytes.subarray(0, bytes.length - 32);
  return Buffer.concat([body, hmacSha256(secret, Buffer.concat([LABEL, body]))]);
}

function rejects(datagram: Buffer): string {
  const result = decode(datagram);
  assert.equal(result.ok, false, `accepted ${datagram.toString('hex')}`);
  if (result.ok) throw new Error('unreachable');
  assert.ok(REASONS.has(result.reason), `unknown reason ${result.reason}`);
  return result.reason;
}

describe('heartbeat datagram', () => {
  test('round trip with 0, 1 and 64 volumes and names at their edges', () => {
    const cases: Heartbeat[] = [
      heartbeat(0),
      heartbeat(1),
      heartbeat(64),
      { ...heartbeat(0), incarnation: 0, counter: Number.MAX_SAFE_INTEGER, cluster: 'c', fromNode: 'x'.repeat(255), toNode: '日本\u{1f600}' },
      { ...heartbeat(0), volumes: [{ name: '\ufeffv'.padEnd(100, 'z'), role: 'secondary', disk: 'diskless', lastSeq: 0 }] },
    ];
    for (const value of cases) {
      const datagram = encode(value);
      assert.ok(datagram.length <= HEARTBEAT_BYTES_MAX);
      assert.deepEqual(decode(datagram), { ok: true, heartbeat: value });
    }
  });

  test('the layout on the wire is the documented one', () => {
    const value: Heartbeat = {
      incarnation: 2 ** 40 + 7,
      counter: 9,
      cluster: 'c',
      fromNode: 'ab',
      toNode: 'd',
      volumes: [{ name: 'v', role: 'secondary', disk: 'failed', lastSeq: 2 ** 33 + 1 }],
    };
    const body = Buffer.from(
      '424d4842' + '01' + '00' + '0000' + '0000010000000007' + '0000000000000009' +
        '000163' + '00026162' + '000164' + '0001' + '000176' + '01' + '03' + '0000' + '0000000200000001',
      'hex',
    );
    const mac = hmacSha256(secret, Buffer.concat([LABEL, body]));
    assert.deepEqual(encode(value), Buffer.concat([body, mac]));
    assert.equal(body.readUInt32BE(0), HEARTBEAT_MAGIC);
  });

  test('every single-byte change anywhere is refused and never throws', () => {
    const datagram = encode(heartbeat(3));
    for (let index = 0; index < datagram.length; index += 1) {
      for (const mask of [0x01, 0x80, 0xff]) {
        const damaged = Buffer.from(datagram);
        damaged[index] = (damaged[index] ?? 0) ^ mask;
        rejects(damaged);
      }
    }
  });

  test('truncation at every length is refused; so is any byte after the mac', () => {
    const datagram = encode(heartbeat(2));
    for (let length = 0; length < datagram.length; length += 1) rejects(datagram.subarray(0, length));
    assert.equal(rejects(datagram.subarray(0, 7)), 'short');
    assert.equal(rejects(datagram.subarray(0, datagram.length - 1)), 'short');
    assert.equal(rejects(Buffer.concat([datagram, Buffer.alloc(1)])), 'malformed');
  });

  test('a wrong secret is refused as mac', () => {
    const result = decode(encode(heartbeat(2)), Buffer.from('other-secret', 'utf8'));
    assert.deepEqual(result, { ok: false, reason: 'mac' });
  });

  test('random garbage of random lengths never throws and is refused', () => {
    const prng = new Prng(SEED);
    const header = Buffer.from('424d484201000000', 'hex');
    for (let round = 0; round < 3000; round += 1) {
      const garbage = prng.bytes(prng.below(round % 10 === 0 ? HEARTBEAT_BYTES_MAX + 64 : 400));
      // Half of them carry a valid header, so the walk past it is exercised too.
      if (round % 2 === 0 && garbage.length >= header.length) header.copy(garbage, 0);
      assert.doesNotThrow(() => rejects(garbage), `seed ${SEED} round ${round}`);
    }
  });

  test('magic, version and size are checked first', () => {
    const datagram = encode(heartbeat(1));
    const badMagic = Buffer.from(datagram);
    badMagic.writeUInt32BE(0x424d5046, 0);
    assert.equal(rejects(resigned(badMagic)), 'magic');
    const badVersion = Buffer.from(datagram);
    badVersion.writeUInt8(2, 4);
    assert.equal(rejects(resigned(badVersion)), 'version');
    assert.equal(rejects(Buffer.alloc(HEARTBEAT_BYTES_MAX + 1)), 'malformed');
    assert.equal(rejects(Buffer.alloc(0)), 'short');
  });

  test('what no correct sender produces is refused even with a valid mac', () => {
    const base = encode({ ...heartbeat(0), cluster: 'c', fromNode: 'f', toNode: 't', volumes: [{ name: 'v', role: 'primary', disk: 'outdated', lastSeq: 1 }] });
    // Offsets: names at 24 (c), 27 (f), 30 (t); count at 33; volume name at 35, role 38,
    // disk 39, reserved 40..41, lastSeq 42..49; mac at 50.
    assert.equal(base.length, 82);
    const edits: [string, (bytes: Buffer) => void][] = [
      ['reserved u8', (bytes) => bytes.writeUInt8(1, 5)],
      ['reserved u16', (bytes) => bytes.writeUInt16BE(0x100, 6)],
      ['unsafe incarnation', (bytes) => bytes.writeUInt32BE(2 ** 21, 8)],
      ['unsafe counter', (bytes) => bytes.writeUInt32BE(0xffffffff, 16)],
      ['invalid UTF-8 name', (bytes) => bytes.writeUInt8(0xff, 26)],
      ['role 2', (bytes) => bytes.writeUInt8(2, 38)],
      ['disk 5', (bytes) => bytes.writeUInt8(5, 39)],
      ['volume reserved', (bytes) => bytes.writeUInt16BE(1, 40)],
      ['unsafe lastSeq', (bytes) => bytes.writeUInt32BE(2 ** 21, 42)],
      ['empty name', (bytes) => bytes.writeUInt16BE(0, 24)],
      ['volume count 65', (bytes) => bytes.writeUInt16BE(65, 33)],
    ];
    for (const [what, edit] of edits) {
      const bytes = Buffer.from(base);
      edit(bytes);
      assert.equal(rejects(resigned(bytes)), 'malformed', what);
    }
    const twice = encode({ ...heartbeat(0), volumes: [{ name: 'v', role: 'primary', disk: 'outdated', lastSeq: 1 }, { name: 'w', role: 'primary', disk: 'outdated', lastSeq: 2 }] });
    const duplicate = Buffer.from(twice);
    duplicate.write('v', duplicate.indexOf('w', 0, 'ascii'), 'ascii');
    assert.equal(rejects(resigned(duplicate)), 'malformed', 'duplicate volume');
    // A name longer than 255 bytes, with the datagram long enough to hold it.
    const long = Buffer.concat([base.subarray(0, 24), Buffer.from([0x01, 0x00]), Buffer.alloc(256, 0x61), base.subarray(27)]);
    assert.equal(rejects(resigned(long)), 'malformed', 'name of 256 bytes');
  });

  test('the encoder asserts on what it must never send', () => {
    const fits = (value: Heartbeat): void => void encode(value);
    const volume = { name: 'v', role: 'primary' as const, disk: 'up-to-date' as const, lastSeq: 0 };
    const bad: [string, Heartbeat][] = [
      ['65 volumes', heartbeat(65)],
      ['cluster of 256 bytes', { ...heartbeat(0), cluster: 'x'.repeat(256) }],
      ['empty node', { ...heartbeat(0), toNode: '' }],
      ['lone surrogate', { ...heartbeat(0), fromNode: 'a\ud800' }],
      ['volume name of 256 bytes', { ...heartbeat(0), volumes: [{ ...volume, name: 'é'.repeat(128) }] }],
      ['duplicate volume', { ...heartbeat(0), volumes: [volume, volume] }],
      ['unsafe counter', { ...heartbeat(0), counter: 2 ** 53 }],
      ['negative incarnation', { ...heartbeat(0), incarnation: -1 }],
      ['fractional lastSeq', { ...heartbeat(0), volumes: [{ ...volume, lastSeq: 1.5 }] }],
      ['over 8192 bytes', { ...heartbeat(0), volumes: Array.from({ length: 64 }, (_, index) => ({ ...volume, name: `${index}`.padEnd(200, '-') })) }],
    ];
    for (const [what, value] of bad) assert.throws(() => fits(value), AssertionError, what);
    assert.throws(() => encodeHeartbeat(hmacSha256, Buffer.alloc(0), heartbeat(0)), AssertionError);
  });
});
