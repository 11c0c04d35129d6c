// The UDP heartbeat datagram (docs/operations.md, heartbeats): who sends it (cluster, from, to), which
// life of the sending process it comes from (incarnation) and its place in that life
// (counter), and what the sender holds of each volume. A MAC keyed with the cluster
// secret covers every byte before it, so a datagram cannot be forged, altered, or
// redirected to another node or cluster; replays of an authentic datagram are the failure
// detector's to refuse (by incarnation and counter), and checking that cluster and toNode
// name this node is the caller's job.
//
// Pure: the MAC is injected (HMAC-SHA256, src/lib/hmac.ts) as in the peer handshake.
// The encoder takes this node's own values, so a bad one asserts; the decoder takes the
// network's and never throws: it checks every length before it reads, interprets nothing
// before the MAC has matched, and names why it refused.
//
//   0 magic u32 'BMHB'  4 version u8  5 reserved u8  6 reserved u16
//   8 incarnation u64  16 counter u64  24 cluster, fromNode, toNode (u16 length + UTF-8)
//   volume count u16, per volume: name, role u8, disk u8, reserved u16, epoch u32, lastSeq u64,
//     synced count u16 and node ids (u16 length + UTF-8), promise epoch u32 (0: none) and the
//     node it was made to (u16 length + UTF-8; empty: to none)
//   hears count u16, per node the sender's failure detector trusts now: its id (u16 length + UTF-8)
//   mac 32 bytes = mac(secret, 'blockmirror-heartbeat-v1' || every byte before the mac)

import { DISK_STATES, type DiskState } from '../disk-state.js';
import { assert } from '../../lib/assert.js';
import { proofsEqual, type Mac } from '../peer/handshake.js';
import { nameBytes, readU64, writeU64 } from '../../lib/wire.js';

export const HEARTBEAT_MAGIC = 0x424d4842; // 'BMHB'
export const HEARTBEAT_VERSION = 3;
export const HEARTBEAT_BYTES_MAX = 8192;
export const HEARTBEAT_VOLUMES_MAX = 64;
/** Node ids in `hears` at most. */
export const HEARTBEAT_HEARS_MAX = 64;
export const HEARTBEAT_NAME_BYTES_MAX = 255;
export const HEARTBEAT_MAC_BYTES = 32;

/** The role byte and the disk byte are indexes in these lists. */
/** `learning`: a quorum member started on an empty data directory, which counts for no one yet (src/core/quorum.ts). */
export const HEARTBEAT_ROLES = ['primary', 'secondary', 'witness', 'learning'] as const;
export const HEARTBEAT_DISK_STATES = DISK_STATES;

export type HeartbeatRole = (typeof HEARTBEAT_ROLES)[number];

export interface HeartbeatVolume {
  name: string;
  role: HeartbeatRole;
  disk: DiskState;
  /** The epoch of the volume's history the sender knows (a witness: the newest it heard claimed). */
  epoch: number;
  lastSeq: number;
  /**
   * The nodes that hold every write the primary acknowledges: the primary's own word (it
   * and the replicas streaming in sync), or what another node last heard it say (empty:
   * nothing heard). See src/core/quorum.ts.
   */
  synced: string[];
  /** The newest promise of an epoch the sender made for the volume (src/core/quorum.ts), or null. */
  promise: { epoch: number; to: string } | null;
}

export interface Heartbeat {
  /** Which life of the sender: must grow every time its process starts. */
  incarnation: number;
  /** Grows with every datagram sent within one incarnation. */
  counter: number;
  cluster: string;
  fromNode: string;
  toNode: string;
  volumes: HeartbeatVolume[];
  /** The nodes the sender's failure detector trusts now (they count toward quorum only while they hear each other). */
  hears: string[];
}

export type HeartbeatRejectReason = 'short' | 'magic' | 'version' | 'malformed' | 'mac';
export type HeartbeatDecodeResult = { ok: true; heartbeat: Heartbeat } | { ok: false; reason: HeartbeatRejectReason };

const LABEL = Buffer.from('blockmirror-heartbeat-v1', 'ascii');
const HEADER_BYTES = 8;
const VOLUME_FIXED_BYTES = 16; // role, disk, reserved u16, epoch u32, lastSeq u64 (after the name)

// fatal: invalid UTF-8 is refused rather than becoming U+FFFD; ignoreBOM: a leading
// U+FEFF is part of the name.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

// ---------------------------------------------------------------------------------------
// Encoding.

export function encodeHeartbeat(mac: Mac, secret: Buffer, heartbeat: Heartbeat): Buffer {
  assert(secret.length > 0, 'heartbeat secret must not be empty');
  assert(heartbeat.volumes.length <= HEARTBEAT_VOLUMES_MAX, `at most ${HEARTBEAT_VOLUMES_MAX} volumes per heartbeat`);
  const names = [heartbeat.cluster, heartbeat.fromNode, heartbeat.toNode].map((name) => nameBytes(name, HEARTBEAT_NAME_BYTES_MAX));
  const volumeNames = heartbeat.volumes.map((volume) => nameBytes(volume.name, HEARTBEAT_NAME_BYTES_MAX));
  assert(heartbeat.hears.length <= HEARTBEAT_HEARS_MAX, `at most ${HEARTBEAT_HEARS_MAX} nodes heard per heartbeat`);
  const heardNames = heartbeat.hears.map((id) => nameBytes(id, HEARTBEAT_NAME_BYTES_MAX));
  const syncedNames = heartbeat.volumes.map((volume) => {
    assert(volume.synced.length <= HEARTBEAT_HEARS_MAX, `at most ${HEARTBEAT_HEARS_MAX} synced nodes per volume`);
    assert(new Set(volume.synced).size === volume.synced.length, 'synced nodes repeat');
    return volume.synced.map((id) => nameBytes(id, HEARTBEAT_NAME_BYTES_MAX));
  });
  assert(new Set(heartbeat.volumes.map((volume) => volume.name)).size === heartbeat.volumes.length, 'heartbeat volume names repeat');
  const promisedTo = heartbeat.volumes.map((volume) => {
    const promise = volume.promise;
    if (promise === null) return Buffer.alloc(0);
    assert(Number.isInteger(promise.epoch) && promise.epoch >= 1 && promise.epoch <= 0xffff_ffff, 'heartbeat promise epoch');
    return promise.to === '' ? Buffer.alloc(0) : nameBytes(promise.to, HEARTBEAT_NAME_BYTES_MAX);
  });

  const bodyBytes =
    HEADER_BYTES + 16 + names.reduce((sum, name) => sum + 2 + name.length, 0) + 2 +
    volumeNames.reduce((sum, name) => sum + 2 + name.length + VOLUME_FIXED_BYTES, 0) +
    syncedNames.reduce((sum, ids) => sum + 2 + ids.reduce((total, id) => total + 2 + id.length, 0), 0) +
    promisedTo.reduce((sum, to) => sum + 4 + 2 + to.length, 0) + 2 +
    heardNames.reduce((sum, name) => sum + 2 + name.length, 0);
  assert(bodyBytes + HEARTBEAT_MAC_BYTES <= HEARTBEAT_BYTES_MAX, `heartbeat of ${bodyBytes + HEARTBEAT_MAC_BYTES} bytes exceeds ${HEARTBEAT_BYTES_MAX}`);

  const out = Buffer.alloc(bodyBytes + HEARTBEAT_MAC_BYTES);
  out.writeUInt32BE(HEARTBEAT_MAGIC, 0);
  out.writeUInt8(HEARTBEAT_VERSION, 4);
  let at = HEADER_BYTES;
  at = writeU64(out, at, heartbeat.incarnation);
  at = writeU64(out, at, heartbeat.counter);
  for (const name of names) at = writeName(out, at, name);
  out.writeUInt16BE(heartbeat.volumes.length, at);
  at += 2;
  heartbeat.volumes.forEach((volume, index) => {
    const role = HEARTBEAT_ROLES.indexOf(volume.role);
    const disk = HEARTBEAT_DISK_STATES.indexOf(volume.disk);
    assert(role >= 0, `unknown role ${String(volume.role)}`);
    assert(disk >= 0, `unknown disk state ${String(volume.disk)}`);
    at = writeName(out, at, volumeNames[index] ?? Buffer.alloc(0));
    assert(Number.isInteger(volume.epoch) && volume.epoch >= 0 && volume.epoch <= 0xffff_ffff, 'heartbeat epoch');
    out.writeUInt8(role, at);
    out.writeUInt8(disk, at + 1);
    out.writeUInt32BE(volume.epoch, at + 4);
    at = writeU64(out, at + 8, volume.lastSeq);
    const synced = syncedNames[index] ?? [];
    out.writeUInt16BE(synced.length, at);
    at += 2;
    for (const id of synced) at = writeName(out, at, id);
    out.writeUInt32BE(volume.promise?.epoch ?? 0, at);
    at = writeName(out, at + 4, promisedTo[index] ?? Buffer.alloc(0));
  });
  out.writeUInt16BE(heardNames.length, at);
  at += 2;
  for (const name of heardNames) at = writeName(out, at, name);
  assert(at === bodyBytes, 'heartbeat layout size mismatch');
  sign(mac, secret, out.subarray(0, at)).copy(out, at);
  return out;
}

function writeName(out: Buffer, at: number, name: Buffer): number {
  out.writeUInt16BE(name.length, at);
  name.copy(out, at + 2);
  return at + 2 + name.length;
}

function sign(mac: Mac, secret: Buffer, signed: Buffer): Buffer {
  const result = mac(secret, Buffer.concat([LABEL, signed]));
  assert(result.length === HEARTBEAT_MAC_BYTES, 'mac must return 32 bytes');
  return result;
}

// ---------------------------------------------------------------------------------------
// Decoding.

/**
 * Reads front to back. A read past the end sets `short` and yields zeroes instead of
 * throwing; every length it hands out is bounded, so the walk that follows stays small,
 * and the caller looks at `short` before trusting anything read.
 */
class Reader {
  private at: number;
  short = false;

  constructor(
    private readonly data: Buffer,
    start: number,
  ) {
    this.at = start;
  }

  get offset(): number {
    return this.at;
  }

  take(count: number): Buffer {
    if (this.short || this.data.length - this.at < count) {
      this.short = true;
      return Buffer.alloc(count);
    }
    this.at += count;
    return this.data.subarray(this.at - count, this.at);
  }

  u8(): number {
    return this.take(1).readUInt8(0);
  }

  u16(): number {
    return this.take(2).readUInt16BE(0);
  }

  u32(): number {
    return this.take(4).readUInt32BE(0);
  }

  /** A u64 as a number, or undefined when it is not a safe integer. */
  u64(): number | undefined {
    return readU64(this.take(8), 0);
  }

  /** A list of node ids (u16 count, at most HEARTBEAT_HEARS_MAX, then names), or undefined when the layout is lost. */
  ids(): Buffer[] | undefined {
    const count = this.u16();
    if (count > HEARTBEAT_HEARS_MAX) return undefined;
    const ids: Buffer[] = [];
    for (let index = 0; index < count && !this.short; index += 1) {
      const id = this.name();
      if (id === undefined) return undefined;
      ids.push(id);
    }
    return ids;
  }

  /** A name's bytes (empty only when `mayBeEmpty`), or undefined when its length is out of range and the layout is lost. */
  name(mayBeEmpty = false): Buffer | undefined {
    const length = this.u16();
    if (!this.short && (length < (mayBeEmpty ? 0 : 1) || length > HEARTBEAT_NAME_BYTES_MAX)) return undefined;
    return this.take(length);
  }
}

function text(bytes: Buffer): string | undefined {
  try {
    return utf8.decode(bytes);
  } catch {
    return undefined;
  }
}

export function decodeHeartbeat(mac: Mac, secret: Buffer, datagram: Buffer): HeartbeatDecodeResult {
  assert(secret.length > 0, 'heartbeat secret must not be empty');
  if (datagram.length > HEARTBEAT_BYTES_MAX) return { ok: false, reason: 'malformed' };
  if (datagram.length < HEADER_BYTES) return { ok: false, reason: 'short' };
  if (datagram.readUInt32BE(0) !== HEARTBEAT_MAGIC) return { ok: false, reason: 'magic' };
  if (datagram.readUInt8(4) !== HEARTBEAT_VERSION) return { ok: false, reason: 'version' };

  // First only the layout, to find the MAC: no field is interpreted until it matched.
  const reader = new Reader(datagram, HEADER_BYTES);
  const incarnation = reader.u64();
  const counter = reader.u64();
  const names: Buffer[] = [];
  for (let index = 0; index < 3; index += 1) {
    const name = reader.name();
    if (name === undefined) return { ok: false, reason: 'malformed' };
    names.push(name);
  }
  const count = reader.u16();
  if (count > HEARTBEAT_VOLUMES_MAX) return { ok: false, reason: 'malformed' };
  const rawVolumes: { name: Buffer; role: number; disk: number; reserved: number; epoch: number; lastSeq: number | undefined; synced: Buffer[]; promiseEpoch: number; promisedTo: Buffer }[] = [];
  for (let index = 0; index < count && !reader.short; index += 1) {
    const name = reader.name();
    if (name === undefined) return { ok: false, reason: 'malformed' };
    const fixed = { name, role: reader.u8(), disk: reader.u8(), reserved: reader.u16(), epoch: reader.u32(), lastSeq: reader.u64() };
    const synced = reader.ids();
    if (synced === undefined) return { ok: false, reason: 'malformed' };
    const promiseEpoch = reader.u32();
    const promisedTo = reader.name(true);
    if (promisedTo === undefined) return { ok: false, reason: 'malformed' };
    rawVolumes.push({ ...fixed, synced, promiseEpoch, promisedTo });
  }
  const rawHeard = reader.ids();
  if (rawHeard === undefined) return { ok: false, reason: 'malformed' };
  const macAt = reader.offset;
  reader.take(HEARTBEAT_MAC_BYTES);
  if (reader.short) return { ok: false, reason: 'short' };
  if (reader.offset !== datagram.length) return { ok: false, reason: 'malformed' };

  const expected = sign(mac, secret, datagram.subarray(0, macAt));
  if (!proofsEqual(expected, datagram.subarray(macAt))) return { ok: false, reason: 'mac' };

  // Authentic: now what a correct sender would never send is refused.
  const malformed = { ok: false, reason: 'malformed' } as const;
  if (datagram.readUInt8(5) !== 0 || datagram.readUInt16BE(6) !== 0) return malformed;
  const [cluster, fromNode, toNode] = names.map(text);
  if (incarnation === undefined || counter === undefined || cluster === undefined || fromNode === undefined || toNode === undefined) {
    return malformed;
  }
  const volumes: HeartbeatVolume[] = [];
  for (const raw of rawVolumes) {
    const name = text(raw.name);
    const role = HEARTBEAT_ROLES[raw.role];
    const disk = HEARTBEAT_DISK_STATES[raw.disk];
    if (name === undefined || role === undefined || disk === undefined || raw.reserved !== 0 || raw.lastSeq === undefined) return malformed;
    const synced = raw.synced.map(text);
    if (synced.some((id) => id === undefined) || new Set(synced).size !== synced.length) return malformed;
    const to = text(raw.promisedTo);
    // A promise names an epoch; with none, no node either.
    if (to === undefined || (raw.promiseEpoch === 0 && to !== '')) return malformed;
    const promise = raw.promiseEpoch === 0 ? null : { epoch: raw.promiseEpoch, to };
    volumes.push({ name, role, disk, epoch: raw.epoch, lastSeq: raw.lastSeq, synced: synced as string[], promise });
  }
  if (new Set(volumes.map((volume) => volume.name)).size !== volumes.length) return malformed;
  const hears: string[] = [];
  for (const raw of rawHeard) {
    const id = text(raw);
    if (id === undefined) return malformed;
    hears.push(id);
  }
  if (new Set(hears).size !== hears.length) return malformed;
  return { ok: true, heartbeat: { incarnation, counter, cluster, fromNode, toNode, volumes, hears } };
}
