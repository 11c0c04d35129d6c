// The heartbeat datagram codec. What a node relies on: a heartbeat comes back exactly as
// it was sent, each volume's synced set and promise included (its own on every volume);
// the layout on the wire is the documented one, MAC included, with a volume's synced set
// right after its lastSeq and its promise right after that; any damage, truncation, extra
// byte, wrong secret, older version or random garbage is refused with a reason and never
// throws; and a datagram no correct sender would produce (a synced set of more than 64 ids,
// a bad or repeated id in one, a node promised without an epoch) is refused even when its
// MAC is right (such datagrams are built by hand here and re-signed, so the check under
// test is the one that must catch them), while the encoder asserts rather than send one.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AssertionError } from '../../src/lib/assert.js';
import { hmacSha256 } from '../../src/lib/hmac.js';
import {
  decodeHeartbeat,
  encodeHeartbeat,
  HEARTBEAT_BYTES_MAX,
  HEARTBEAT_DISK_STATES,
  HEARTBEAT_HEARS_MAX,
  HEARTBEAT_MAGIC,
  HEARTBEAT_ROLES,
  HEARTBEAT_VERSION,
  type Heartbeat,
} from '../../src/protocol/heartbeat/datagram.js';
import { baseSeed, Prng } from './prng.js';

const SEED = baseSeed(0x4842_1d07);
const secret = Buffer.from('cluster-secret', 'utf8');
const LABEL = Buffer.from('blockmirror-heartbeat-v1', 'ascii');
const REASONS = new Set(['short', 'magic', 'version', 'malformed', 'mac']);

function heartbeat(volumeCount: number, hearsCount = 2): Heartbeat {
  return {
    incarnation: 1_700_000_000_123,
    counter: 42,
    cluster: 'prod-é',
    fromNode: 'node-a',
    toNode: 'node-b',
    volumes: Array.from({ length: volumeCount }, (_, index) => ({
      name: `vol-${index}`,
      role: HEARTBEAT_ROLES[index % HEARTBEAT_ROLES.length] ?? 'primary',
      disk: HEARTBEAT_DISK_STATES[index % HEARTBEAT_DISK_STATES.length] ?? 'up-to-date',
      epoch: index === 0 ? 0xffff_ffff : index === 1 ? 0 : index * 7,
      lastSeq: index === 0 ? Number.MAX_SAFE_INTEGER : index * 1_000_003,
      // Sets of 0 to 3 ids, different from one volume to the next.
      synced: ['node-a', 'node-b', `node-${index}`].slice(0, index % 4),
      // No promise, a promise to no one (a floor learned), a promise to a node.
      promise: index % 3 === 0 ? null : { epoch: index + 1, to: index % 3 === 1 ? '' : `node-${index}` },
    })),
    hears: Array.from({ length: hearsCount }, (_, index) => `node-${index}`),
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
      { ...heartbeat(0), volumes: [{ name: '\ufeffv'.padEnd(100, 'z'), role: 'secondary', disk: 'diskless', epoch: 3, lastSeq: 0, synced: [], promise: null }] },
    ];
    for (const value of cases) {
      const datagram = encode(value);
      assert.ok(datagram.length <= HEARTBEAT_BYTES_MAX);
      assert.deepEqual(decode(datagram), { ok: true, heartbeat: value });
    }
  });

  test('round trip of epochs at their edges and of every role, the witness too', () => {
    assert.deepEqual([...HEARTBEAT_ROLES], ['primary', 'secondary', 'witness', 'learning']);
    const value: Heartbeat = {
      ...heartbeat(0),
      volumes: [
        { name: 'lowest', role: 'primary', disk: 'up-to-date', epoch: 0, lastSeq: 5, synced: ['node-a', 'node-b'], promise: null },
        { name: 'highest', role: 'secondary', disk: 'outdated', epoch: 0xffff_ffff, lastSeq: 6, synced: [], promise: null },
        { name: 'witnessed', role: 'witness', disk: 'diskless', epoch: 2 ** 31, lastSeq: 0, synced: ['node-a'], promise: null },
        { name: 'fresh', role: 'learning', disk: 'up-to-date', epoch: 0, lastSeq: 0, synced: [], promise: null },
        { name: 'voted', role: 'secondary', disk: 'up-to-date', epoch: 4, lastSeq: 7, synced: ['node-b'], promise: { epoch: 0xffff_ffff, to: 'x'.repeat(255) } },
        { name: 'floor', role: 'witness', disk: 'diskless', epoch: 1, lastSeq: 0, synced: [], promise: { epoch: 1, to: '' } },
      ],
    };
    assert.deepEqual(decode(encode(value)), { ok: true, heartbeat: value });
  });

  test('round trip of hears with 0, 1 and 64 node ids, ids at their edges', () => {
    const cases: Heartbeat[] = [
      heartbeat(1, 0),
      heartbeat(1, 1),
      heartbeat(2, HEARTBEAT_HEARS_MAX),
      { ...heartbeat(0), hears: ['x'.repeat(255), '日本\u{1f600}', '\ufeffz', 'a'] },
      // The sender's own id and ids of nodes it watches are just ids: the codec does not judge them.
      { ...heartbeat(0), hears: ['node-a', 'node-b'] },
    ];
    assert.equal(HEARTBEAT_HEARS_MAX, 64);
    for (const value of cases) {
      const datagram = encode(value);
      const decoded = decode(datagram);
      assert.deepEqual(decoded, { ok: true, heartbeat: value });
      if (decoded.ok) assert.equal(decoded.heartbeat.hears.length, value.hears.length);
    }
    // Where hears sits: right before the mac, a u16 count then each id.
    const one = encode({ ...heartbeat(0), hears: ['q'] });
    const macAt = one.length - 32;
    assert.deepEqual(one.subarray(macAt - 5, macAt), Buffer.from('0001000171', 'hex'));
    const none = encode({ ...heartbeat(0), hears: [] });
    assert.deepEqual(none.subarray(none.length - 34, none.length - 32), Buffer.from('0000', 'hex'));
  });

  test('round trip of synced sets with 0, 1 and 64 node ids, a different set on each volume', () => {
    const view = { role: 'primary' as const, disk: 'up-to-date' as const, epoch: 3, lastSeq: 9, promise: null };
    const sixtyFour = Array.from({ length: HEARTBEAT_HEARS_MAX }, (_, index) => `node-${index}`);
    const cases: Heartbeat[] = [
      { ...heartbeat(0), volumes: [{ ...view, name: 'none', synced: [] }] },
      { ...heartbeat(0), volumes: [{ ...view, name: 'one', synced: ['node-a'] }] },
      { ...heartbeat(0), volumes: [{ ...view, name: 'full', synced: sixtyFour }] },
      // One heartbeat, a different set on each volume: each comes back on its own volume.
      {
        ...heartbeat(0),
        volumes: [
          { ...view, name: 'p', synced: ['node-a', 'node-b'] },
          { ...view, name: 'q', role: 'secondary', synced: [] },
          { ...view, name: 'r', role: 'witness', disk: 'diskless', synced: ['node-c'] },
          { ...view, name: 's', synced: sixtyFour },
          { ...view, name: 't', synced: [...sixtyFour].reverse() },
        ],
      },
      // Ids at their edges; the order is the sender's, kept as it was.
      { ...heartbeat(0), volumes: [{ ...view, name: 'v', synced: ['x'.repeat(255), '日本\u{1f600}', '\ufeffz', 'b', 'a'] }] },
      // Repeats are refused only within one set: the same id on two volumes, in hears, or
      // naming a volume is just an id.
      {
        ...heartbeat(0),
        volumes: [
          { ...view, name: 'node-a', synced: ['node-a', 'node-b'] },
          { ...view, name: 'w', synced: ['node-a', 'node-b'] },
        ],
        hears: ['node-a', 'node-b'],
      },
    ];
    for (const value of cases) {
      const datagram = encode(value);
      assert.ok(datagram.length <= HEARTBEAT_BYTES_MAX);
      const decoded = decode(datagram);
      assert.deepEqual(decoded, { ok: true, heartbeat: value });
      if (decoded.ok) {
        assert.deepEqual(decoded.heartbeat.volumes.map((volume) => volume.synced), value.volumes.map((volume) => volume.synced));
      }
    }
  });

  test('a volume\'s synced set sits right after its lastSeq: a u16 count, then each id', () => {
    const view = { role: 'primary' as const, disk: 'up-to-date' as const, epoch: 1, lastSeq: 0x0a0b, promise: null };
    // Before the hears count: ..., lastSeq, synced count 1, id 'q' (length 1), no promise
    // (epoch 0, node of length 0), hears count 0, mac.
    const one = encode({ ...heartbeat(0), volumes: [{ ...view, name: 'v', synced: ['q'] }], hears: [] });
    const macAt = one.length - 32;
    assert.deepEqual(one.subarray(macAt - 21, macAt), Buffer.from('0000000000000a0b' + '0001' + '000171' + '00000000' + '0000' + '0000', 'hex'));
    // An empty set is its count alone.
    const none = encode({ ...heartbeat(0), volumes: [{ ...view, name: 'v', synced: [] }], hears: [] });
    assert.deepEqual(none.subarray(none.length - 32 - 18, none.length - 32), Buffer.from('0000000000000a0b' + '0000' + '00000000' + '0000' + '0000', 'hex'));
    assert.equal(one.length - none.length, 3);
    // Before the next volume's name: v's set ('q', 'rs') and v's promise (none), then w's
    // name, fixed fields, set and promise.
    const two = encode({ ...heartbeat(0), volumes: [{ ...view, name: 'v', synced: ['q', 'rs'] }, { ...view, name: 'w', synced: [] }], hears: [] });
    const at = two.indexOf('000176', 0, 'hex') + 3 + 16; // after v's name and fixed bytes
    assert.deepEqual(two.subarray(at - 8, at), Buffer.from('0000000000000a0b', 'hex'));
    assert.deepEqual(two.subarray(at, at + 2 + 3 + 4 + 6 + 3), Buffer.from('0002' + '000171' + '00027273' + '00000000' + '0000' + '000177', 'hex'));
    assert.deepEqual(two.subarray(at + 18 + 16, two.length - 32), Buffer.from('0000' + '00000000' + '0000' + '0000', 'hex'));
  });

  test('round trip of promises: none, to no one, to a node at its edges, epochs at their edges', () => {
    const view = { role: 'secondary' as const, disk: 'up-to-date' as const, epoch: 5, lastSeq: 11, synced: ['node-a'] };
    const value: Heartbeat = {
      ...heartbeat(0),
      volumes: [
        { ...view, name: 'none', promise: null },
        { ...view, name: 'no one', promise: { epoch: 1, to: '' } },
        { ...view, name: 'longest', promise: { epoch: 7, to: 'x'.repeat(255) } },
        { ...view, name: 'highest', promise: { epoch: 0xffff_ffff, to: 'node-b' } },
        { ...view, name: 'highest to no one', promise: { epoch: 0xffff_ffff, to: '' } },
        { ...view, name: 'multibyte', promise: { epoch: 2 ** 31, to: '日本\u{1f600}' } },
        // A leading U+FEFF is part of the node's id, and the node may be one of the synced set.
        { ...view, name: 'bom', promise: { epoch: 3, to: '\ufeffz' } },
        { ...view, name: 'synced', promise: { epoch: 3, to: 'node-a' } },
      ],
    };
    const decoded = decode(encode(value));
    assert.deepEqual(decoded, { ok: true, heartbeat: value });
    if (decoded.ok) {
      assert.strictEqual(decoded.heartbeat.volumes[0]?.promise, null);
      assert.deepEqual(decoded.heartbeat.volumes.map((volume) => volume.promise), value.volumes.map((volume) => volume.promise));
    }
    // 64 volumes, each with a promise of its own, in one datagram.
    const most: Heartbeat = {
      ...heartbeat(0),
      volumes: Array.from({ length: 64 }, (_, index) => ({ ...view, name: `${index}`, synced: [], promise: { epoch: index + 1, to: `${index}`.padEnd(90, 'y') } })),
    };
    assert.deepEqual(decode(encode(most)), { ok: true, heartbeat: most });
  });

  test('a volume\'s promise sits right after its synced set: epoch u32, then the node (u16 length + UTF-8)', () => {
    const view = { role: 'primary' as const, disk: 'up-to-date' as const, epoch: 1, lastSeq: 0x0a0b, synced: ['q'] };
    const tail = (promise: { epoch: number; to: string } | null): Buffer => {
      const datagram = encode({ ...heartbeat(0), volumes: [{ ...view, name: 'v', promise }], hears: [] });
      const start = datagram.indexOf('000176', 0, 'hex') + 3 + 8; // after v's name, role, disk, reserved and epoch
      return datagram.subarray(start, datagram.length - 32);
    };
    // lastSeq, synced count 1, id 'q', then the promise, then the hears count 0.
    assert.deepEqual(tail({ epoch: 0x0102_0304, to: 'pq' }), Buffer.from('0000000000000a0b' + '0001' + '000171' + '01020304' + '00027071' + '0000', 'hex'));
    assert.deepEqual(tail({ epoch: 0xffff_ffff, to: 'é' }), Buffer.from('0000000000000a0b' + '0001' + '000171' + 'ffffffff' + '0002c3a9' + '0000', 'hex'));
    // A promise to no one is its epoch and a length of 0; no promise is an epoch of 0 too.
    assert.deepEqual(tail({ epoch: 1, to: '' }), Buffer.from('0000000000000a0b' + '0001' + '000171' + '00000001' + '0000' + '0000', 'hex'));
    assert.deepEqual(tail(null), Buffer.from('0000000000000a0b' + '0001' + '000171' + '00000000' + '0000' + '0000', 'hex'));
    // Each volume has its own, before the next volume's name.
    const two = encode({
      ...heartbeat(0),
      volumes: [
        { ...view, name: 'v', promise: { epoch: 9, to: 'r' } },
        { ...view, name: 'w', synced: [], promise: { epoch: 0x0a, to: '' } },
      ],
      hears: [],
    });
    const at = two.indexOf('000176', 0, 'hex') + 3 + 16; // after v's name and fixed bytes
    assert.deepEqual(two.subarray(at, at + 5 + 7 + 3), Buffer.from('0001' + '000171' + '00000009' + '000172' + '000177', 'hex'));
    assert.deepEqual(two.subarray(at + 15 + 16, two.length - 32), Buffer.from('0000' + '0000000a' + '0000' + '0000', 'hex'));
  });

  test('the layout on the wire is the documented one', () => {
    const value: Heartbeat = {
      incarnation: 2 ** 40 + 7,
      counter: 9,
      cluster: 'c',
      fromNode: 'ab',
      toNode: 'd',
      volumes: [{ name: 'v', role: 'secondary', disk: 'failed', epoch: 0x0102_0304, lastSeq: 2 ** 33 + 1, synced: ['s', 'tu'], promise: { epoch: 0x0a0b_0c0d, to: 'xy' } }],
      hears: ['e', 'fg'],
    };
    const body = Buffer.from(
      '424d4842' + '03' + '00' + '0000' + '0000010000000007' + '0000000000000009' +
        '000163' + '00026162' + '000164' +
        // one volume: name, role, disk, reserved u16, epoch u32, lastSeq u64,
        '0001' + '000176' + '01' + '03' + '0000' + '01020304' + '0000000200000001' +
        // then its synced set: count, then each id
        '0002' + '000173' + '00027475' +
        // then its promise: epoch, then the node it was made to
        '0a0b0c0d' + '00027879' +
        // hears: count, then each id
        '0002' + '000165' + '00026667',
      'hex',
    );
    assert.equal(body.length, 81);
    assert.equal(body.indexOf('0a0b0c0d', 0, 'hex'), 64); // right after the synced set
    const mac = hmacSha256(secret, Buffer.concat([LABEL, body]));
    assert.deepEqual(encode(value), Buffer.concat([body, mac]));
    assert.equal(body.readUInt32BE(0), HEARTBEAT_MAGIC);
    assert.equal(body.readUInt8(4), HEARTBEAT_VERSION);
    assert.equal(HEARTBEAT_VERSION, 3);
    // The witness role is byte 2, the learning role byte 3.
    const roleAt = body.indexOf('000176', 0, 'hex') + 3;
    const witness = encode({ ...value, volumes: value.volumes.map((view) => ({ ...view, role: 'witness' as const })) });
    assert.equal(witness.readUInt8(roleAt), 2);
    const learning = encode({ ...value, volumes: value.volumes.map((view) => ({ ...view, role: 'learning' as const })) });
    assert.equal(learning.readUInt8(roleAt), 3);
    // No promise: an epoch of 0 and an empty node, 2 bytes shorter than the promise to 'xy'.
    const none = Buffer.from(
      body.subarray(0, body.indexOf('0a0b0c0d', 0, 'hex')).toString('hex') + '00000000' + '0000' + '0002' + '000165' + '00026667',
      'hex',
    );
    assert.equal(none.length, body.length - 2);
    assert.deepEqual(encode({ ...value, volumes: value.volumes.map((view) => ({ ...view, promise: null })) }), Buffer.concat([none, hmacSha256(secret, Buffer.concat([LABEL, none]))]));
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
    const header = Buffer.from('424d484203000000', 'hex');
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
    for (const version of [0, 1, 2, 4, 0xff]) {
      const badVersion = Buffer.from(datagram);
      badVersion.writeUInt8(version, 4);
      assert.equal(rejects(resigned(badVersion)), 'version', `version ${version}`);
    }
    assert.equal(rejects(Buffer.alloc(HEARTBEAT_BYTES_MAX + 1)), 'malformed');
    assert.equal(rejects(Buffer.alloc(0)), 'short');
  });

  test('a version-1 datagram (no epoch, no hears) is refused as version', () => {
    // Version 1's layout: volumes of role, disk, reserved u16, lastSeq u64 and nothing after them.
    const body = Buffer.from(
      '424d4842' + '01' + '00' + '0000' + '0000010000000007' + '0000000000000009' +
        '000163' + '00026162' + '000164' + '0001' + '000176' + '01' + '03' + '0000' + '0000000200000001',
      'hex',
    );
    const v1 = Buffer.concat([body, hmacSha256(secret, Buffer.concat([LABEL, body]))]);
    assert.deepEqual(decode(v1), { ok: false, reason: 'version' });
  });

  test('a version-2 datagram (no promise) is refused as version', () => {
    // Version 2's layout: as now, but a volume ends with its synced set.
    const body = Buffer.from(
      '424d4842' + '02' + '00' + '0000' + '0000010000000007' + '0000000000000009' +
        '000163' + '00026162' + '000164' + '0001' + '000176' + '01' + '03' + '0000' + '01020304' + '0000000200000001' +
        '0002' + '000173' + '00027475' + '0002' + '000165' + '00026667',
      'hex',
    );
    const v2 = Buffer.concat([body, hmacSha256(secret, Buffer.concat([LABEL, body]))]);
    assert.deepEqual(decode(v2), { ok: false, reason: 'version' });
    // The same bytes claiming version 3 lose the layout: the hears count and the first id's
    // length are read as a promise epoch (0x00020001), then 0x6500 as the length of its node.
    const claimed = Buffer.from(v2);
    claimed.writeUInt8(3, 4);
    assert.deepEqual(decode(resigned(claimed)), { ok: false, reason: 'malformed' });
  });

  test('what no correct sender produces is refused even with a valid mac', () => {
    const volume = { name: 'v', role: 'primary' as const, disk: 'outdated' as const, epoch: 1, lastSeq: 1, synced: ['s'], promise: { epoch: 2, to: 'p' } };
    const base = encode({ ...heartbeat(0), cluster: 'c', fromNode: 'f', toNode: 't', volumes: [volume], hears: ['h'] });
    // Offsets: names at 24 (c), 27 (f), 30 (t); count at 33; volume name at 35, role 38,
    // disk 39, reserved 40..41, epoch 42..45, lastSeq 46..53; synced count at 54, its one
    // id at 56 (length) and 58 (the byte); promise epoch 59..62, the node promised at 63
    // (length) and 65 (the byte); hears count at 66, its one id at 68 (length) and 70 (the
    // byte); mac at 71.
    assert.equal(base.length, 103);
    assert.equal(base.readUInt32BE(42), 1);
    assert.equal(base.readUInt16BE(54), 1);
    assert.equal(base.toString('latin1', 58, 59), 's');
    assert.equal(base.readUInt32BE(59), 2);
    assert.equal(base.readUInt16BE(63), 1);
    assert.equal(base.toString('latin1', 65, 66), 'p');
    assert.equal(base.readUInt16BE(66), 1);
    assert.equal(base.readUInt16BE(68), 1);
    assert.equal(base.toString('latin1', 70, 71), 'h');
    const edits: [string, (bytes: Buffer) => void][] = [
      ['reserved u8', (bytes) => bytes.writeUInt8(1, 5)],
      ['reserved u16', (bytes) => bytes.writeUInt16BE(0x100, 6)],
      ['unsafe incarnation', (bytes) => bytes.writeUInt32BE(2 ** 21, 8)],
      ['unsafe counter', (bytes) => bytes.writeUInt32BE(0xffffffff, 16)],
      ['invalid UTF-8 name', (bytes) => bytes.writeUInt8(0xff, 26)],
      ['role 4', (bytes) => bytes.writeUInt8(4, 38)],
      ['role 255', (bytes) => bytes.writeUInt8(0xff, 38)],
      ['disk 5', (bytes) => bytes.writeUInt8(5, 39)],
      ['volume reserved', (bytes) => bytes.writeUInt16BE(1, 40)],
      ['unsafe lastSeq', (bytes) => bytes.writeUInt32BE(2 ** 21, 46)],
      ['empty name', (bytes) => bytes.writeUInt16BE(0, 24)],
      ['volume count 65', (bytes) => bytes.writeUInt16BE(65, 33)],
      ['synced count 65', (bytes) => bytes.writeUInt16BE(65, 54)],
      ['synced count 0xffff', (bytes) => bytes.writeUInt16BE(0xffff, 54)],
      ['empty synced id', (bytes) => bytes.writeUInt16BE(0, 56)],
      ['invalid UTF-8 synced id', (bytes) => bytes.writeUInt8(0xff, 58)],
      ['lead byte without its continuation in synced id', (bytes) => bytes.writeUInt8(0xc3, 58)],
      ['promise epoch 0 with a node', (bytes) => bytes.writeUInt32BE(0, 59)],
      ['invalid UTF-8 promised node', (bytes) => bytes.writeUInt8(0xff, 65)],
      ['lead byte without its continuation in promised node', (bytes) => bytes.writeUInt8(0xc3, 65)],
      ['promised node length 256', (bytes) => bytes.writeUInt16BE(256, 63)],
      ['promised node length 0xffff', (bytes) => bytes.writeUInt16BE(0xffff, 63)],
      ['hears count 65', (bytes) => bytes.writeUInt16BE(65, 66)],
      ['hears count 0xffff', (bytes) => bytes.writeUInt16BE(0xffff, 66)],
      ['empty hears id', (bytes) => bytes.writeUInt16BE(0, 68)],
      ['invalid UTF-8 hears id', (bytes) => bytes.writeUInt8(0xff, 70)],
      ['lead byte without its continuation in hears id', (bytes) => bytes.writeUInt8(0xc3, 70)],
    ];
    for (const [what, edit] of edits) {
      const bytes = Buffer.from(base);
      edit(bytes);
      assert.equal(rejects(resigned(bytes)), 'malformed', what);
    }
    // Every epoch is valid, role 2 is the witness and role 3 the learning one, and a synced
    // id or promised node equal to the hears id is just an id: the same edits there are
    // accepted.
    const accepted: [string, (bytes: Buffer) => void, (value: Heartbeat) => boolean][] = [
      ['role 2', (bytes) => bytes.writeUInt8(2, 38), (value) => value.volumes[0]?.role === 'witness'],
      ['role 3', (bytes) => bytes.writeUInt8(3, 38), (value) => value.volumes[0]?.role === 'learning'],
      ['epoch 2^32-1', (bytes) => bytes.writeUInt32BE(0xffff_ffff, 42), (value) => value.volumes[0]?.epoch === 0xffff_ffff],
      ['synced id h', (bytes) => bytes.write('h', 58, 'latin1'), (value) => value.volumes[0]?.synced.join() === 'h' && value.hears.join() === 'h'],
      ['promise epoch 1', (bytes) => bytes.writeUInt32BE(1, 59), (value) => value.volumes[0]?.promise?.epoch === 1 && value.volumes[0].promise.to === 'p'],
      ['promise epoch 2^32-1', (bytes) => bytes.writeUInt32BE(0xffff_ffff, 59), (value) => value.volumes[0]?.promise?.epoch === 0xffff_ffff],
      ['promised node h', (bytes) => bytes.write('h', 65, 'latin1'), (value) => value.volumes[0]?.promise?.to === 'h' && value.hears.join() === 'h'],
    ];
    for (const [what, edit, check] of accepted) {
      const bytes = Buffer.from(base);
      edit(bytes);
      const result = decode(resigned(bytes));
      assert.ok(result.ok && check(result.heartbeat), what);
    }
    const twice = encode({ ...heartbeat(0), volumes: [volume, { ...volume, name: 'w', lastSeq: 2 }] });
    const duplicate = Buffer.from(twice);
    duplicate.write('v', duplicate.indexOf('w', 0, 'ascii'), 'ascii');
    assert.equal(rejects(resigned(duplicate)), 'malformed', 'duplicate volume');
    // A node id twice in hears: ids 'h' and 'i' at 70 and 73, then 'i' made 'h'.
    const heardTwice = Buffer.from(encode({ ...heartbeat(0), cluster: 'c', fromNode: 'f', toNode: 't', volumes: [volume], hears: ['h', 'i'] }));
    assert.equal(heardTwice.toString('latin1', 70, 74), 'h\x00\x01i');
    heardTwice.write('h', 73, 'latin1');
    assert.equal(rejects(resigned(heardTwice)), 'malformed', 'duplicate hears id');
    // A node id twice in one volume's synced set: ids 's' and 't' at 58 and 61, then 't' made 's'.
    const syncedTwice = Buffer.from(encode({ ...heartbeat(0), cluster: 'c', fromNode: 'f', toNode: 't', volumes: [{ ...volume, synced: ['s', 't'] }], hears: ['h'] }));
    assert.equal(syncedTwice.toString('latin1', 58, 62), 's\x00\x01t');
    syncedTwice.write('s', 61, 'latin1');
    assert.equal(rejects(resigned(syncedTwice)), 'malformed', 'duplicate synced id');
    // The same id in the sets of two volumes is no repeat: v's and w's sets, then w's 't' made 's'.
    const twoSets = Buffer.from(encode({ ...heartbeat(0), volumes: [volume, { ...volume, name: 'w', synced: ['t'] }] }));
    const tAt = twoSets.indexOf('0001000174', twoSets.indexOf('000177', 0, 'hex'), 'hex') + 4;
    assert.equal(twoSets.toString('latin1', tAt, tAt + 1), 't');
    twoSets.write('s', tAt, 'latin1');
    const acrossVolumes = decode(resigned(twoSets));
    assert.ok(acrossVolumes.ok, 'the same synced id on two volumes');
    if (acrossVolumes.ok) assert.deepEqual(acrossVolumes.heartbeat.volumes.map((view) => view.synced), [['s'], ['s']]);
    // A name longer than 255 bytes, with the datagram long enough to hold it.
    const long = Buffer.concat([base.subarray(0, 24), Buffer.from([0x01, 0x00]), Buffer.alloc(256, 0x61), base.subarray(27)]);
    assert.equal(rejects(resigned(long)), 'malformed', 'name of 256 bytes');
    const longSynced = Buffer.concat([base.subarray(0, 56), Buffer.from([0x01, 0x00]), Buffer.alloc(256, 0x61), base.subarray(59)]);
    assert.equal(rejects(resigned(longSynced)), 'malformed', 'synced id of 256 bytes');
    const longHeard = Buffer.concat([base.subarray(0, 68), Buffer.from([0x01, 0x00]), Buffer.alloc(256, 0x61), base.subarray(71)]);
    assert.equal(rejects(resigned(longHeard)), 'malformed', 'hears id of 256 bytes');
    const longPromised = Buffer.concat([base.subarray(0, 63), Buffer.from([0x01, 0x00]), Buffer.alloc(256, 0x61), base.subarray(66)]);
    assert.equal(rejects(resigned(longPromised)), 'malformed', 'promised node of 256 bytes');
    // 255 bytes are fine.
    const longestPromised = decode(resigned(Buffer.concat([base.subarray(0, 63), Buffer.from([0x00, 0xff]), Buffer.alloc(255, 0x61), base.subarray(66)])));
    assert.ok(longestPromised.ok && longestPromised.heartbeat.volumes[0]?.promise?.to === 'a'.repeat(255), 'promised node of 255 bytes');
    // Epoch 0 and an empty node: no promise. Epoch 0 with a node of its own is refused above;
    // a promise to no one (an epoch and an empty node) is accepted.
    const withPromise = (epoch: string, to: string): Buffer => Buffer.concat([base.subarray(0, 59), Buffer.from(epoch + to, 'hex'), base.subarray(66)]);
    const noPromise = decode(resigned(withPromise('00000000', '0000')));
    assert.ok(noPromise.ok && noPromise.heartbeat.volumes[0]?.promise === null, 'no promise');
    const toNoOne = decode(resigned(withPromise('00000002', '0000')));
    assert.ok(toNoOne.ok && toNoOne.heartbeat.volumes[0]?.promise?.epoch === 2 && toNoOne.heartbeat.volumes[0].promise.to === '', 'a promise to no one');
    assert.equal(rejects(resigned(withPromise('00000000', '00027071'))), 'malformed', 'promise epoch 0 to a node of 2 bytes');
    assert.equal(rejects(resigned(withPromise('00000001', '0002c328'))), 'malformed', 'invalid UTF-8 in a promised node of 2 bytes');
    // 65 well-formed ids after a count of 65: the count alone refuses it (64 are fine).
    const ids = (count: number): Buffer[] =>
      Array.from({ length: count }, (_, index) => Buffer.concat([Buffer.from([0x00, 0x02]), Buffer.from(`${index}`.padStart(2, '0'), 'ascii')]));
    const many = Buffer.concat([base.subarray(0, 66), Buffer.from([0x00, 65]), ...ids(65), base.subarray(71)]);
    assert.equal(rejects(resigned(many)), 'malformed', '65 hears ids');
    const syncedOf = (count: number): Buffer => Buffer.concat([base.subarray(0, 54), Buffer.from([0x00, count]), ...ids(count), base.subarray(59)]);
    assert.equal(rejects(resigned(syncedOf(65))), 'malformed', '65 synced ids');
    const sixtyFour = decode(resigned(syncedOf(64)));
    assert.ok(sixtyFour.ok, '64 synced ids');
    if (sixtyFour.ok) assert.equal(sixtyFour.heartbeat.volumes[0]?.synced.length, 64);
  });

  test('the encoder asserts on what it must never send', () => {
    const fits = (value: Heartbeat): void => void encode(value);
    const volume = { name: 'v', role: 'primary' as const, disk: 'up-to-date' as const, epoch: 0, lastSeq: 0, synced: [], promise: null };
    const promised = (epoch: number, to = 'n'): Heartbeat => ({ ...heartbeat(0), volumes: [{ ...volume, promise: { epoch, to } }] });
    const ids = (count: number, bytes = 6): string[] => Array.from({ length: count }, (_, index) => `${index}`.padEnd(bytes, '-'));
    const bad: [string, Heartbeat][] = [
      ['65 volumes', heartbeat(65)],
      ['cluster of 256 bytes', { ...heartbeat(0), cluster: 'x'.repeat(256) }],
      ['empty node', { ...heartbeat(0), toNode: '' }],
      ['lone surrogate', { ...heartbeat(0), fromNode: 'a\ud800' }],
      ['volume name of 256 bytes', { ...heartbeat(0), volumes: [{ ...volume, name: 'é'.repeat(128) }] }],
      ['duplicate volume', { ...heartbeat(0), volumes: [volume, volume] }],
      ['unknown role', { ...heartbeat(0), volumes: [{ ...volume, role: 'arbiter' as unknown as 'primary' }] }],
      ['unsafe counter', { ...heartbeat(0), counter: 2 ** 53 }],
      ['negative incarnation', { ...heartbeat(0), incarnation: -1 }],
      ['fractional lastSeq', { ...heartbeat(0), volumes: [{ ...volume, lastSeq: 1.5 }] }],
      ['negative epoch', { ...heartbeat(0), volumes: [{ ...volume, epoch: -1 }] }],
      ['epoch 2^32', { ...heartbeat(0), volumes: [{ ...volume, epoch: 2 ** 32 }] }],
      ['fractional epoch', { ...heartbeat(0), volumes: [{ ...volume, epoch: 0.5 }] }],
      ['NaN epoch', { ...heartbeat(0), volumes: [{ ...volume, epoch: Number.NaN }] }],
      ['65 hears', heartbeat(0, HEARTBEAT_HEARS_MAX + 1)],
      ['empty hears id', { ...heartbeat(0), hears: [''] }],
      ['hears id of 256 bytes', { ...heartbeat(0), hears: ['é'.repeat(128)] }],
      ['lone surrogate in hears', { ...heartbeat(0), hears: ['\udc00'] }],
      ['over 8192 bytes', { ...heartbeat(0), volumes: Array.from({ length: 64 }, (_, index) => ({ ...volume, name: `${index}`.padEnd(200, '-') })) }],
      ['over 8192 bytes of hears', { ...heartbeat(0), hears: Array.from({ length: 64 }, (_, index) => `${index}`.padEnd(200, '-')) }],
      ['65 synced ids', { ...heartbeat(0), volumes: [{ ...volume, synced: ids(HEARTBEAT_HEARS_MAX + 1) }] }],
      ['65 synced ids on the second volume', { ...heartbeat(0), volumes: [volume, { ...volume, name: 'w', synced: ids(65) }] }],
      ['repeated synced id', { ...heartbeat(0), volumes: [{ ...volume, synced: ['a', 'b', 'a'] }] }],
      ['repeated synced id among 64', { ...heartbeat(0), volumes: [{ ...volume, synced: [...ids(63), '0-----'] }] }],
      ['empty synced id', { ...heartbeat(0), volumes: [{ ...volume, synced: [''] }] }],
      ['synced id of 256 bytes', { ...heartbeat(0), volumes: [{ ...volume, synced: ['é'.repeat(128)] }] }],
      ['lone surrogate in synced', { ...heartbeat(0), volumes: [{ ...volume, synced: ['\ud800'] }] }],
      ['over 8192 bytes of synced', { ...heartbeat(0), volumes: [volume, { ...volume, name: 'w' }].map((view) => ({ ...view, synced: ids(64, 70) })) }],
      ['promise epoch 0', promised(0)],
      ['promise epoch 0 to no one', promised(0, '')],
      ['negative promise epoch', promised(-1)],
      ['promise epoch 2^32', promised(2 ** 32)],
      ['fractional promise epoch', promised(1.5)],
      ['NaN promise epoch', promised(Number.NaN)],
      ['promise epoch 0 on the second volume', { ...heartbeat(0), volumes: [volume, { ...volume, name: 'w', promise: { epoch: 0, to: 'n' } }] }],
      ['promised node of 256 bytes', promised(1, 'é'.repeat(128))],
      ['lone surrogate in promised node', promised(1, 'a\ud800')],
      ['over 8192 bytes of promises', { ...heartbeat(0), volumes: Array.from({ length: 64 }, (_, index) => ({ ...volume, name: `${index}`, promise: { epoch: 1, to: 'x'.repeat(255) } })) }],
    ];
    for (const [what, value] of bad) assert.throws(() => fits(value), AssertionError, what);
    assert.throws(() => fits(promised(0)), /promise epoch/);
    assert.throws(() => encodeHeartbeat(hmacSha256, Buffer.alloc(0), heartbeat(0)), AssertionError);
    // At the edges they are fine.
    assert.doesNotThrow(() => fits(heartbeat(0, HEARTBEAT_HEARS_MAX)));
    assert.doesNotThrow(() => fits({ ...heartbeat(0), volumes: [{ ...volume, epoch: 0xffff_ffff }] }));
    assert.doesNotThrow(() => fits({ ...heartbeat(0), volumes: [{ ...volume, synced: ids(HEARTBEAT_HEARS_MAX) }] }));
    assert.doesNotThrow(() => fits({ ...heartbeat(0), volumes: [{ ...volume, synced: ['x'.repeat(255)] }] }));
    assert.doesNotThrow(() => fits({ ...heartbeat(0), volumes: [volume, { ...volume, name: 'w' }].map((view) => ({ ...view, synced: ['a', 'b'] })) }));
    assert.doesNotThrow(() => fits(promised(1)));
    assert.doesNotThrow(() => fits(promised(1, '')));
    assert.doesNotThrow(() => fits(promised(0xffff_ffff, 'x'.repeat(255))));
  });
});
