// The node-to-node protocol as a secondary sees it, from a primary that does not follow
// the rules. Each test starts only node b of a two-node cluster (b is the secondary of
// volume v1, whose primary is a) and acts as node a itself, over plain TCP with the
// project's own frame codec and handshake proofs: first a well-behaved session, then
// damaged frames, entries that cannot belong to the volume, out-of-order and repeated
// sequence numbers, data before the session is READY, HELLOs that must be refused, and a
// connection that never finishes its handshake.
//
// Checked is what an operator would notice: the replies b sends (ACK, FLUSHED, SYNCED,
// REFUSE with its code and text), that b closes a connection it cannot trust, the
// counters and source state b reports, and the bytes in b's image file after b has
// stopped. Nothing a misbehaving primary sends may reach that image.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { constants } from '../../src/constants.js';
import { hmacSha256, macEquals, randomNonce } from '../../src/lib/hmac.js';
import {
  encodeEntryFrame,
  encodeFrame,
  PEER_PROTOCOL_VERSION,
  PeerFrameDecoder,
  RefuseCode,
  type PeerEpochStart,
  type PeerHello,
  type PeerMessage,
} from '../../src/protocol/peer/frames.js';
import { sourceProof, targetProof } from '../../src/protocol/peer/handshake.js';
import { encodeEntryHeader, EntryType } from '../../src/protocol/log-entry.js';
import { killAll, makeTempDir, startClusterNode, writeClusterConfig, type NodeStatusJson, type TestNode } from '../helpers/node-process.js';
import { pattern } from '../helpers/test-data.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const VOLUME_BYTES = 16 * MiB;
const SECRET = 'test-secret-123';
/** How long a reply or a close may take on loopback before the test gives up. */
const REPLY_TIMEOUT_MS = 5000;

const dirs: string[] = [];
const nodes: TestNode[] = [];
after(async () => {
  killAll();
  for (const node of nodes) await node.stop();
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------
// Node b, alone.

interface Secondary {
  b: TestNode;
  replicationPort: number;
}

/**
 * Writes a cluster of a, b and c (c holds no volume) with v1 mirrored from a to b in
 * sync mode, and starts only b.
 */
/** Starts b, the secondary of v1 (primary a); `epochs` is v1's epoch history file on b beforehand. */
async function startSecondary(epochs: string | null = null): Promise<Secondary> {
  const dir = makeTempDir('blockmirror-peer-protocol-');
  dirs.push(dir);
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }, { id: 'c' }],
    volumes: [{ name: 'v1', size: '16MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' }],
    secret: SECRET,
  });
  if (epochs !== null) {
    fs.mkdirSync(path.join(dir, 'data-b', 'volumes'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'data-b', 'volumes', 'v1.epochs.json'), epochs);
  }
  const match = /- id: b\n {4}nbd: [^\n]+\n {4}replication: 127\.0\.0\.1:(\d+)\n/.exec(fs.readFileSync(config, 'utf8'));
  assert.ok(match?.[1] !== undefined, 'b\'s replication port in the cluster file');
  const b = await startClusterNode(dir, config, 'b');
  nodes.push(b);
  return { b, replicationPort: Number(match[1]) };
}

/** Stops b cleanly and returns its image of v1. */
async function stopAndReadImage(b: TestNode): Promise<Buffer> {
  const exit = await b.stop();
  assert.equal(exit.code, 0, `b stops cleanly: ${b.logs.slice(-2000)}`);
  const image = fs.readFileSync(b.imagePath('v1'));
  assert.equal(image.length, VOLUME_BYTES);
  return image;
}

function volumeOf(status: NodeStatusJson): NodeStatusJson['volumes'][number] {
  const volume = status.volumes.find((candidate) => candidate.name === 'v1');
  assert.ok(volume !== undefined, 'b lists v1');
  return volume;
}

function counter(status: NodeStatusJson, name: string): number {
  return status.counters[name] ?? 0;
}


function isZero(bytes: Buffer): boolean {
  return bytes.every((byte) => byte === 0);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------------------
// Acting as node a.

/** One TCP connection to b's replication port, decoding what b sends. */
class PeerClient {
  readonly socket: net.Socket;
  readonly received: PeerMessage[] = [];
  closed = false;
  closedAtMs: number | null = null;
  readonly openedAtMs = Date.now();
  private readonly decoder = new PeerFrameDecoder({ entryBodyBytesMax: constants.peerEntryBodyBytesMax });

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      // b's frames must always decode; a failure here fails the test.
      this.received.push(...this.decoder.push(chunk));
    });
    // b resets connections it drops; that is a close like any other here.
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.closed = true;
      this.closedAtMs = Date.now();
    });
  }

  static connect(port: number): Promise<PeerClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new PeerClient(socket));
      });
    });
  }

  send(frame: Buffer | readonly Buffer[]): void {
    this.socket.write(Buffer.isBuffer(frame) ? frame : Buffer.concat(frame));
  }

  /** Removes and returns the first message received of `type`, if any. */
  take<T extends PeerMessage['type']>(type: T): Extract<PeerMessage, { type: T }> | undefined {
    const index = this.received.findIndex((message) => message.type === type);
    if (index < 0) return undefined;
    return this.received.splice(index, 1)[0] as Extract<PeerMessage, { type: T }>;
  }

  async next<T extends PeerMessage['type']>(type: T, timeoutMs = REPLY_TIMEOUT_MS): Promise<Extract<PeerMessage, { type: T }>> {
    return waitFor(`${type.toUpperCase()} from b`, () => {
      const message = this.take(type);
      if (message === undefined && this.closed) assert.fail(`b closed the connection instead of sending ${type.toUpperCase()}; received ${this.describe()}`);
      return message;
    }, timeoutMs);
  }

  async waitClosed(timeoutMs = REPLY_TIMEOUT_MS): Promise<void> {
    await waitFor('b to close the connection', () => (this.closed ? true : undefined), timeoutMs);
  }

  describe(): string {
    return JSON.stringify(this.received.map((message) => message.type));
  }

  destroy(): void {
    this.socket.destroy();
  }
}

async function waitFor<T>(what: string, check: () => T | undefined, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`${what} did not happen within ${timeoutMs} ms`);
    await sleep(5);
  }
}

interface HelloChoices {
  version?: number;
  cluster?: string;
  fromNode?: string;
  toNode?: string;
  volume?: string;
  session?: number;
  connectionIndex?: number;
  connections?: number;
  epoch?: number;
  /** The sender's last entry (default 0). */
  lastSeq?: number;
  /** Default: the one epoch named, its primary the sender, from entry 1. */
  history?: PeerEpochStart[];
}

interface RefusedHello {
  what: string;
  hello: HelloChoices;
  code: number;
  message: RegExp;
}

/** Each HELLO, with an ENTRY right behind it (which must not get in either), gets REFUSE with its code and text, no CHALLENGE, and a closed connection. */
async function assertHellosRefused(port: number, cases: readonly RefusedHello[], seed: number): Promise<void> {
  for (const refused of cases) {
    const client = await PeerClient.connect(port);
    client.send([encodeFrame(hello(refused.hello)), ...entryFrame(1, 0, pattern(4 * KiB, seed))]);
    const refusal = await client.next('refuse');
    assert.equal(refusal.code, refused.code, `${refused.what}: refusal code`);
    assert.match(refusal.message, refused.message, `${refused.what}: refusal text`);
    await client.waitClosed();
    assert.equal(client.take('challenge'), undefined, `${refused.what}: no CHALLENGE`);
  }
}

function hello(choices: HelloChoices = {}): PeerHello {
  return {
    type: 'hello',
    version: choices.version ?? PEER_PROTOCOL_VERSION,
    connectionIndex: choices.connectionIndex ?? 0,
    connections: choices.connections ?? 1,
    session: choices.session ?? 1,
    nonce: randomNonce(),
    cluster: choices.cluster ?? 'test',
    fromNode: choices.fromNode ?? 'a',
    toNode: choices.toNode ?? 'b',
    volume: choices.volume ?? 'v1',
    epoch: choices.epoch ?? 0,
    lastSeq: choices.lastSeq ?? 0,
    history: choices.history ?? [{ epoch: choices.epoch ?? 0, primary: choices.fromNode ?? 'a', firstSeq: 1 }],
  };
}

/** Sends HELLO, checks b's CHALLENGE proves the cluster secret, and answers AUTH. */
async function authenticate(client: PeerClient, sent: PeerHello, secret = SECRET): Promise<void> {
  client.send(encodeFrame(sent));
  const challenge = await client.next('challenge');
  const expected = targetProof(hmacSha256, Buffer.from(SECRET), sent, challenge.nonce);
  assert.ok(macEquals(expected, challenge.mac), 'b proves it knows the cluster secret');
  client.send(encodeFrame({ type: 'auth', mac: sourceProof(hmacSha256, Buffer.from(secret), sent, challenge.nonce) }));
}

interface Session {
  clients: PeerClient[];
  ready: Extract<PeerMessage, { type: 'ready' }>;
}

/** A whole session of `connections` authenticated connections, each answered READY. */
async function openSession(port: number, connections: number, session: number, epochs: Pick<HelloChoices, 'epoch' | 'history'> = {}): Promise<Session> {
  const clients: PeerClient[] = [];
  for (let index = 0; index < connections; index += 1) {
    const client = await PeerClient.connect(port);
    clients.push(client);
    await authenticate(client, hello({ session, connectionIndex: index, connections, ...epochs }));
  }
  let ready: Extract<PeerMessage, { type: 'ready' }> | undefined;
  for (const client of clients) ready = await client.next('ready');
  assert.ok(ready !== undefined);
  return { clients, ready };
}

/** The first message of `type` on any connection of the session. */
function nextOnAny<T extends PeerMessage['type']>(session: Session, type: T): Promise<Extract<PeerMessage, { type: T }>> {
  return waitFor(`${type.toUpperCase()} from b`, () => {
    for (const client of session.clients) {
      const message = client.take(type);
      if (message !== undefined) return message;
    }
    if (session.clients.every((client) => client.closed)) assert.fail(`b closed the session instead of sending ${type.toUpperCase()}`);
    return undefined;
  }, REPLY_TIMEOUT_MS);
}

function closeSession(session: Session): void {
  for (const client of session.clients) client.destroy();
}

/** Entry `seq` as a's log would send it: a WRITE of `payload` at `offset`. */
function entryParts(seq: number, offset: number, payload: Buffer, epoch = 0): { header: Buffer; frame: Buffer[] } {
  const header = encodeEntryHeader(
    {
      type: EntryType.WRITE,
      flags: 0,
      logId: 0x5eed_0001,
      volumeId: 0x0000_00a1,
      seq,
      durableSeq: seq - 1,
      offset,
      lengthBytes: payload.length,
      generation: 0,
      epoch,
    },
    [payload],
  );
  return { header, frame: encodeEntryFrame(header, [payload]) };
}

function entryFrame(seq: number, offset: number, payload: Buffer): Buffer[] {
  return entryParts(seq, offset, payload).frame;
}

/**
 * The session's first connection, having sent a bad ENTRY, is closed by b with no ACK; b
 * counts one protocol error, stores nothing, and its image is all zeroes (b is stopped).
 */
async function assertEntryRejected(b: TestNode, session: Session, errorsBefore: number, why: string): Promise<void> {
  await session.clients[0]?.waitClosed();
  assert.equal(session.clients[0]?.take('ack'), undefined);
  await protocolErrorCounted(b, errorsBefore);
  await assertNothingStored(b);
  const image = await stopAndReadImage(b);
  assert.ok(isZero(image), why);
}

/** Waits until b has counted one more protocol error than `before`. */
async function protocolErrorCounted(b: TestNode, before: number): Promise<void> {
  await b.waitStatus('the protocol error counted', (status) => counter(status, 'peerProtocolErrors') >= before + 1, REPLY_TIMEOUT_MS);
  assert.equal(counter(await b.status(), 'peerProtocolErrors'), before + 1, 'exactly one protocol error');
}

/** Nothing from the source reached b's log. */
async function assertNothingStored(b: TestNode, lastSeq = 0): Promise<void> {
  const v1 = volumeOf(await b.status());
  assert.equal(v1.log.lastSeq, lastSeq, `b's log holds entries up to ${lastSeq} only`);
  assert.equal(v1.source?.storedSeq, lastSeq);
}

// ---------------------------------------------------------------------------------------

test('a well-formed session: ENTRY is acknowledged, FLUSH and SYNC answered, and the data is in b\'s image', async () => {
  const { b, replicationPort } = await startSecondary();
  const session = await openSession(replicationPort, 2, 0x0101);
  assert.deepEqual(
    { disk: session.ready.disk, lastSeq: session.ready.lastSeq, durableSeq: session.ready.durableSeq },
    { disk: 'up-to-date', lastSeq: 0, durableSeq: 0 },
    'a fresh secondary holds nothing yet',
  );
  const before = volumeOf(await b.status());
  assert.equal(before.source?.connected, true, 'b reports its source connected');

  const data = pattern(4 * KiB, 1);
  // Sent on the second connection: entries may travel on any connection of the session.
  session.clients[1]?.send(entryFrame(1, 0, data));
  assert.deepEqual(await nextOnAny(session, 'ack'), { type: 'ack', seq: 1, status: 0 });
  session.clients[0]?.send(encodeFrame({ type: 'flush', seq: 1 }));
  assert.deepEqual(await nextOnAny(session, 'flushed'), { type: 'flushed', seq: 1, status: 0 });
  session.clients[0]?.send(encodeFrame({ type: 'sync', cpSeq: 1 }));
  assert.deepEqual(await nextOnAny(session, 'synced'), { type: 'synced', cpSeq: 1, status: 0 });

  const status = await b.status();
  const v1 = volumeOf(status);
  assert.equal(v1.source?.storedSeq, 1);
  assert.equal(v1.source?.connected, true);
  assert.equal(v1.log.lastSeq, 1);
  assert.ok(v1.log.durableSeq >= 1, 'FLUSHED means durable in b\'s log');
  assert.equal(v1.log.cpSeq, 1, 'SYNCED means b took the consistency point');
  assert.equal(counter(status, 'peerProtocolErrors'), 0);
  for (const client of session.clients) assert.equal(client.closed, false);

  closeSession(session);
  const image = await stopAndReadImage(b);
  assert.ok(image.subarray(0, 4 * KiB).equals(data), 'the entry\'s bytes are at offset 0');
  assert.ok(isZero(image.subarray(4 * KiB)), 'nothing else was written');
});

test('RESET: b names the regions of every entry it holds past reportAfter, after a restart of its own too, then restarts its log', async () => {
  const { b: first, replicationPort } = await startSecondary();
  // Entries 1..6; a's consistency point at 2 tells b that entries up to 2 cannot be lost.
  const writes: [number, number][] = [
    [1, 0],
    [2, 64 * KiB],
    [3, 1 * MiB],
    [4, 1 * MiB + 4 * KiB],
    [5, 3 * MiB],
    [6, 5 * MiB],
  ];
  const session = await openSession(replicationPort, 1, 0x0c01);
  const client = session.clients[0];
  assert.ok(client !== undefined);
  for (const [seq, offset] of writes.slice(0, 2)) client.send(entryFrame(seq, offset, pattern(4 * KiB, seq)));
  await waitFor('ACK of entry 2', () => (client.take('ack')?.seq === 2 ? true : undefined), REPLY_TIMEOUT_MS);
  client.send(encodeFrame({ type: 'sync', cpSeq: 2 }));
  assert.deepEqual(await client.next('synced'), { type: 'synced', cpSeq: 2, status: 0 });
  for (const [seq, offset] of writes.slice(2)) client.send(entryFrame(seq, offset, pattern(4 * KiB, seq)));
  await waitFor('ACK of entry 6', () => {
    let last = 0;
    for (let ack = client.take('ack'); ack !== undefined; ack = client.take('ack')) last = Math.max(last, ack.seq);
    return last === 6 ? true : undefined;
  }, REPLY_TIMEOUT_MS);
  closeSession(session);
  // A clean restart: b's own consistency points cover entries 3..6, so its log no longer
  // holds them; only its record of them can name them now.
  const stopped = await first.stop();
  assert.equal(stopped.code, 0);
  const b = await startClusterNode(first.dir, first.configPath, 'b');
  nodes.push(b);
  assert.equal(volumeOf(await b.status()).log.cpSeq, 6, 'b\'s own consistency point covers every entry');

  /** A new session that sends RESET; what b names (DIVERGED) before its RESET_DONE. */
  const reset = async (session: number, seq: number, reportAfter: number): Promise<{ session: Session; client: PeerClient; named: unknown[] }> => {
    const opened = await openSession(replicationPort, 1, session);
    const client = opened.clients[0];
    assert.ok(client !== undefined);
    client.send(encodeFrame({ type: 'reset', seq, reportAfter }));
    assert.deepEqual(await client.next('reset-done'), { type: 'reset-done', seq, status: 0 });
    const diverged = client.received.filter((message): message is Extract<PeerMessage, { type: 'diverged' }> => message.type === 'diverged');
    return { session: opened, client, named: diverged.flatMap((message): unknown[] => (message.all ? ['all'] : message.extents)) };
  };
  // a recovered only up to entry 3 after a crash and has written up to 10 since.
  const again = await reset(0x0c02, 10, 3);
  assert.equal(again.session.ready.lastSeq, 6);
  assert.deepEqual(
    again.named,
    [
      { offset: 1 * MiB + 4 * KiB, lengthBytes: 4 * KiB },
      { offset: 3 * MiB, lengthBytes: 4 * KiB },
      { offset: 5 * MiB, lengthBytes: 4 * KiB },
    ],
    'the regions of entries 4, 5 and 6, and nothing else',
  );
  assert.equal(volumeOf(await b.status()).log.lastSeq, 10, 'b\'s log restarts after 10');
  // Its log follows a's again: entry 11 is the next it takes.
  again.client.send(entryFrame(11, 7 * MiB, pattern(4 * KiB, 11)));
  assert.deepEqual(await again.client.next('ack'), { type: 'ack', seq: 11, status: 0 });
  closeSession(again.session);

  // a crashes again before it takes a consistency point: at the next reset b names the same
  // regions again (a may not have made them durable), and entry 11 too.
  const third = await reset(0x0c03, 12, 10);
  assert.deepEqual(
    third.named,
    [
      { offset: 1 * MiB + 4 * KiB, lengthBytes: 4 * KiB },
      { offset: 3 * MiB, lengthBytes: 4 * KiB },
      { offset: 5 * MiB, lengthBytes: 4 * KiB },
      { offset: 7 * MiB, lengthBytes: 4 * KiB },
    ],
    'the names kept from the first reset, and entry 11',
  );
  // a's consistency point: now the names are durable there, and b lets them go.
  third.client.send(entryFrame(13, 9 * MiB, pattern(4 * KiB, 13)));
  third.client.send(encodeFrame({ type: 'sync', cpSeq: 13 }));
  assert.deepEqual(await third.client.next('synced'), { type: 'synced', cpSeq: 13, status: 0 });
  closeSession(third.session);
  const fourth = await reset(0x0c04, 14, 13);
  assert.deepEqual(fourth.named, [], 'nothing left to name');
  closeSession(fourth.session);
  const image = await stopAndReadImage(b);
  for (const [seq, offset] of [...writes, [11, 7 * MiB], [13, 9 * MiB]] as const) {
    assert.ok(image.subarray(offset, offset + 4 * KiB).equals(pattern(4 * KiB, seq)), `entry ${seq}'s bytes in b's image`);
  }
});

test('VERIFY: b answers the digest of the range once every entry up to its seq is stored; a range past the volume closes the connection', async () => {
  const { b, replicationPort } = await startSecondary();
  const session = await openSession(replicationPort, 1, 0x0d01);
  const client = session.clients[0];
  assert.ok(client !== undefined);
  const data = pattern(64 * KiB, 21);
  // Asked before entry 1 arrives: the answer waits for it.
  client.send(encodeFrame({ type: 'verify', token: 7, seq: 1, offset: 128 * KiB, lengthBytes: 64 * KiB }));
  await sleep(200);
  assert.equal(client.take('verified'), undefined, 'no digest before entry 1 is stored');
  client.send(entryFrame(1, 128 * KiB, data));
  const verified = await client.next('verified');
  assert.deepEqual(
    { token: verified.token, status: verified.status, digest: verified.digest.toString('hex') },
    { token: 7, status: 0, digest: crypto.createHash('sha256').update(data).digest('hex') },
  );
  const errorsBefore = counter(await b.status(), 'peerProtocolErrors');
  client.send(encodeFrame({ type: 'verify', token: 8, seq: 1, offset: VOLUME_BYTES - 4 * KiB, lengthBytes: 8 * KiB }));
  await client.waitClosed();
  await protocolErrorCounted(b, errorsBefore);
  const image = await stopAndReadImage(b);
  assert.ok(image.subarray(128 * KiB, 192 * KiB).equals(data));
});

test('an ENTRY with a payload byte flipped in transit fails the frame CRC: connection closed, counted, nothing stored', async () => {
  const { b, replicationPort } = await startSecondary();
  const errorsBefore = counter(await b.status(), 'peerProtocolErrors');
  const session = await openSession(replicationPort, 1, 0x0201);
  const [frameHeader, entryHeader, payload] = entryFrame(1, 0, pattern(4 * KiB, 2));
  assert.ok(frameHeader !== undefined && entryHeader !== undefined && payload !== undefined);
  const damaged = Buffer.from(payload);
  damaged[1000] = (damaged[1000] ?? 0) ^ 0x40;
  session.clients[0]?.send([frameHeader, entryHeader, damaged]);
  await session.clients[0]?.waitClosed();
  assert.equal(session.clients[0]?.take('ack'), undefined, 'no ACK for a damaged entry');
  await protocolErrorCounted(b, errorsBefore);
  await assertNothingStored(b);

  // The damaged entry took no sequence number: a new session delivers entry 1 again, intact.
  const retry = await openSession(replicationPort, 1, 0x0202);
  assert.equal(retry.ready.lastSeq, 0, 'b tells the new session it holds nothing');
  const intact = pattern(4 * KiB, 3);
  retry.clients[0]?.send(entryFrame(1, 8 * KiB, intact));
  assert.deepEqual(await nextOnAny(retry, 'ack'), { type: 'ack', seq: 1, status: 0 });
  closeSession(retry);

  const image = await stopAndReadImage(b);
  assert.ok(isZero(image.subarray(0, 8 * KiB)), 'the damaged entry\'s bytes are not in the image');
  assert.ok(image.subarray(8 * KiB, 12 * KiB).equals(intact));
  assert.ok(isZero(image.subarray(12 * KiB)));
});

test('an ENTRY whose frame CRC is right but whose entry payload CRC is wrong is rejected', async () => {
  const { b, replicationPort } = await startSecondary();
  const errorsBefore = counter(await b.status(), 'peerProtocolErrors');
  const session = await openSession(replicationPort, 1, 0x0301);
  const payload = pattern(4 * KiB, 4);
  const { header } = entryParts(1, 0, payload);
  const damaged = Buffer.from(payload);
  damaged[4000] = (damaged[4000] ?? 0) ^ 0x01;
  // encodeEntryFrame checksums the frame over the damaged bytes; the entry header still
  // carries the CRC of the original payload.
  session.clients[0]?.send(encodeEntryFrame(header, [damaged]));
  await assertEntryRejected(b, session, errorsBefore, 'b\'s image holds nothing');
});

test('an ENTRY reaching past the end of the volume (valid checksums) closes the connection and writes nothing', async () => {
  const { b, replicationPort } = await startSecondary();
  const errorsBefore = counter(await b.status(), 'peerProtocolErrors');
  const session = await openSession(replicationPort, 1, 0x0401);
  session.clients[0]?.send(entryFrame(1, VOLUME_BYTES - 2 * KiB, pattern(4 * KiB, 5)));
  await assertEntryRejected(b, session, errorsBefore, 'b\'s image holds nothing, not even the part inside the volume');
});

test('an ENTRY far beyond the window, or a repeated sequence number, closes the connection; the stored entry stays as it was', async () => {
  const { b, replicationPort } = await startSecondary();
  const first = pattern(4 * KiB, 6);

  const session = await openSession(replicationPort, 1, 0x0501);
  session.clients[0]?.send(entryFrame(1, 0, first));
  assert.deepEqual(await nextOnAny(session, 'ack'), { type: 'ack', seq: 1, status: 0 });
  // The window holds mirrorWindowBytesMax / 64 entries past the last ACK; this is twice that.
  const beyond = 1 + 2 * (constants.mirrorWindowBytesMax / 64);
  const errorsBefore = counter(await b.status(), 'peerProtocolErrors');
  session.clients[0]?.send(entryFrame(beyond, 64 * KiB, pattern(4 * KiB, 7)));
  await session.clients[0]?.waitClosed();
  await protocolErrorCounted(b, errorsBefore);
  await assertNothingStored(b, 1);

  // A new session resumes after entry 1; sending entry 1 again, with other bytes, is refused.
  const again = await openSession(replicationPort, 1, 0x0502);
  assert.equal(again.ready.lastSeq, 1, 'b tells the new session where it is');
  const errorsBeforeRepeat = counter(await b.status(), 'peerProtocolErrors');
  again.clients[0]?.send(entryFrame(1, 0, pattern(4 * KiB, 8)));
  await again.clients[0]?.waitClosed();
  assert.equal(again.clients[0]?.take('ack'), undefined);
  await protocolErrorCounted(b, errorsBeforeRepeat);
  await assertNothingStored(b, 1);

  const image = await stopAndReadImage(b);
  assert.ok(image.subarray(0, 4 * KiB).equals(first), 'offset 0 holds entry 1 as first sent');
  assert.ok(isZero(image.subarray(4 * KiB)), 'the entry beyond the window wrote nothing');
});

test('data before READY: an ENTRY right after HELLO, or after AUTH while the session is incomplete, closes the connection', async () => {
  const { b, replicationPort } = await startSecondary();
  const errorsBefore = counter(await b.status(), 'peerProtocolErrors');

  // HELLO and ENTRY in one write, before b has even sent its CHALLENGE.
  const early = await PeerClient.connect(replicationPort);
  early.send([encodeFrame(hello({ session: 0x0601 })), ...entryFrame(1, 0, pattern(4 * KiB, 9))]);
  await early.waitClosed();
  assert.equal(early.take('ready'), undefined, 'no READY');
  await protocolErrorCounted(b, errorsBefore);
  await assertNothingStored(b);

  // One of two connections authenticated: no READY yet, so no entry may be sent.
  const errorsBeforeHalf = counter(await b.status(), 'peerProtocolErrors');
  const half = await PeerClient.connect(replicationPort);
  await authenticate(half, hello({ session: 0x0602, connectionIndex: 0, connections: 2 }));
  // b answers nothing until the second connection arrives; give it time to attach this one.
  await sleep(200);
  assert.equal(half.take('ready'), undefined, 'READY waits for the whole session');
  half.send(entryFrame(1, 4 * KiB, pattern(4 * KiB, 10)));
  await half.waitClosed();
  await protocolErrorCounted(b, errorsBeforeHalf);
  await assertNothingStored(b);

  const image = await stopAndReadImage(b);
  assert.ok(isZero(image), 'b\'s image holds nothing');
});

test(
  'data before READY: an ENTRY sent in the same write as AUTH is not silently dropped',
  async () => {
    const { b, replicationPort } = await startSecondary();
    const errorsBefore = counter(await b.status(), 'peerProtocolErrors');
    const client = await PeerClient.connect(replicationPort);
    const sent = hello({ session: 0x0701 });
    client.send(encodeFrame(sent));
    const challenge = await client.next('challenge');
    client.send([
      encodeFrame({ type: 'auth', mac: sourceProof(hmacSha256, Buffer.from(SECRET), sent, challenge.nonce) }),
      ...entryFrame(1, 0, pattern(4 * KiB, 11)),
    ]);
    // b closes the connection for it (whether or not READY went out first), and counts it.
    await client.waitClosed();
    const readyArrived = client.take('ready') !== undefined;
    assert.equal(client.closed, true, `b closed the connection for it (READY ${readyArrived ? 'was' : 'was not'} sent)`);
    await protocolErrorCounted(b, errorsBefore);
    const status = await b.status();
    const image = await stopAndReadImage(b);
    assert.equal(volumeOf(status).log.lastSeq, 0, 'the early entry is not stored');
    assert.ok(isZero(image), 'b\'s image holds nothing');
    assert.equal(counter(status, 'peerProtocolErrors'), errorsBefore + 1, 'the early entry is a protocol error');
  },
);

test('HELLOs b must refuse get REFUSE with the reason, and store nothing', async () => {
  const { b, replicationPort } = await startSecondary();
  const refusalsBefore = counter(await b.status(), 'peerRefusals');
  const cases: RefusedHello[] = [
    { what: 'node c, which holds no copy of v1', hello: { fromNode: 'c' }, code: RefuseCode.ROLE, message: /^node c holds no copy of volume v1$/ },
    { what: 'a node outside the cluster', hello: { fromNode: 'z' }, code: RefuseCode.UNKNOWN_NODE, message: /^"z" is not a node of cluster test$/ },
    { what: 'an unknown volume', hello: { volume: 'v9' }, code: RefuseCode.VOLUME, message: /^node b holds no volume "v9"$/ },
    { what: 'another cluster', hello: { cluster: 'prod' }, code: RefuseCode.CLUSTER, message: /^node a belongs to cluster "prod", this node to "test"$/ },
    { what: 'another node\'s connection', hello: { toNode: 'c' }, code: RefuseCode.UNKNOWN_NODE, message: /^connection meant for node "c" reached node "b"$/ },
    // A node of the version before (its history has no restart counts): told so, not cut off on a bad frame.
    { what: 'protocol version 2', hello: { version: 2 }, code: RefuseCode.VERSION, message: /^protocol version 2 is not supported \(this node speaks 3\)$/ },
  ];
  await assertHellosRefused(replicationPort, cases, 12);

  // The wrong cluster secret: b's CHALLENGE is answered with a proof b cannot verify.
  const impostor = await PeerClient.connect(replicationPort);
  await authenticate(impostor, hello({ session: 0x0801 }), 'not-the-secret');
  const refusal = await impostor.next('refuse');
  assert.equal(refusal.code, RefuseCode.AUTH);
  assert.match(refusal.message, /^node "a" failed to authenticate: wrong cluster secret$/);
  await impostor.waitClosed();
  assert.equal(impostor.take('ready'), undefined);

  const status = await b.status();
  assert.equal(counter(status, 'peerRefusals'), refusalsBefore + cases.length + 1, 'every refusal counted');
  assert.equal(volumeOf(status).source?.connected, false);
  await assertNothingStored(b);
  const image = await stopAndReadImage(b);
  assert.ok(isZero(image), 'b\'s image holds nothing');
  const logged = b.records().filter((record) => record['msg'] === 'peer connection refused').map((record) => String(record['reason']));
  assert.ok(logged.some((reason) => reason === 'node c holds no copy of volume v1'), `b's log says why: ${JSON.stringify(logged)}`);
});

test('epochs: b tells an older epoch\'s primary it is stale, refuses a newer epoch that does not hold its own, says its epoch in READY, closes a session whose ENTRY carries a newer one', async () => {
  // b's history of v1: a is primary again in epoch 3.
  const { b, replicationPort } = await startSecondary(
    JSON.stringify({ epochs: [{ epoch: 0, primary: 'a', firstSeq: 1 }, { epoch: 3, primary: 'a', firstSeq: 1 }] }),
  );
  assert.equal(volumeOf(await b.status()).epoch, 3);
  const refusalsBefore = counter(await b.status(), 'peerRefusals');
  const cases: RefusedHello[] = [
    {
      what: 'epoch 0, older',
      hello: { epoch: 0 },
      code: RefuseCode.STALE_EPOCH,
      message: /^volume v1: node a is primary in epoch 0, but node b knows epoch 3 \(primary a from entry 1\)$/,
    },
    {
      what: 'epoch 4, whose history does not hold b\'s epoch 3',
      hello: { epoch: 4, history: [{ epoch: 0, primary: 'a', firstSeq: 1 }, { epoch: 4, primary: 'a', firstSeq: 1 }] },
      code: RefuseCode.EPOCH,
      message: /^volume v1: node a's history \(epoch 4\) does not hold epoch 3 that node b is in \(primary a from entry 1\): the copies went separate ways$/,
    },
    {
      what: 'epoch 4, whose history names b as its primary',
      hello: { epoch: 4, history: [{ epoch: 3, primary: 'a', firstSeq: 1 }, { epoch: 4, primary: 'b', firstSeq: 1 }] },
      code: RefuseCode.EPOCH,
      message: /^volume v1: node a claims epoch 4, whose primary its own history says is b$/,
    },
  ];
  await assertHellosRefused(replicationPort, cases, 13);
  assert.equal(counter(await b.status(), 'peerRefusals'), refusalsBefore + cases.length);
  assert.equal(volumeOf(await b.status()).epoch, 3, 'no refused HELLO changed b\'s epoch');

  const errorsBefore = counter(await b.status(), 'peerProtocolErrors');
  const session = await openSession(replicationPort, 1, 0x0a01, { epoch: 3, history: [{ epoch: 0, primary: 'a', firstSeq: 1 }, { epoch: 3, primary: 'a', firstSeq: 1 }] });
  assert.equal(session.ready.epoch, 3, 'READY names the epoch b knows');
  assert.deepEqual(session.ready.history, [{ epoch: 0, primary: 'a', firstSeq: 1 }, { epoch: 3, primary: 'a', firstSeq: 1 }], 'and b\'s history');
  session.clients[0]?.send(entryParts(1, 0, pattern(4 * KiB, 14), 4).frame);
  await assertEntryRejected(b, session, errorsBefore, 'b\'s image holds nothing');
});

test('epochs: b follows a newer epoch whose history holds its own, from then on refuses the older one, and keeps the new history on disk', async () => {
  const { b, replicationPort } = await startSecondary(
    JSON.stringify({ epochs: [{ epoch: 0, primary: 'a', firstSeq: 1 }, { epoch: 3, primary: 'a', firstSeq: 1 }] }),
  );
  const newer = [{ epoch: 3, primary: 'a', firstSeq: 1 }, { epoch: 5, primary: 'a', firstSeq: 1 }];
  const session = await openSession(replicationPort, 1, 0x0b01, { epoch: 5, history: newer });
  assert.equal(session.ready.epoch, 5, 'READY names the epoch b now follows');
  assert.deepEqual(session.ready.history, [{ epoch: 0, primary: 'a', firstSeq: 1 }, ...newer], 'b joined the epochs it knew before to the newer ones');
  session.clients[0]?.send(entryParts(1, 0, pattern(4 * KiB, 15), 5).frame);
  for (let waited = 0; volumeOf(await b.status()).log.lastSeq !== 1; waited += 20) {
    assert.ok(waited < REPLY_TIMEOUT_MS, 'entry 1 stored in time');
    await sleep(20);
  }
  for (const client of session.clients) client.destroy();

  const stale = await PeerClient.connect(replicationPort);
  stale.send(encodeFrame(hello({ epoch: 3, history: [{ epoch: 3, primary: 'a', firstSeq: 1 }] })));
  const refusal = await stale.next('refuse');
  assert.equal(refusal.code, RefuseCode.STALE_EPOCH);
  assert.match(refusal.message, /^volume v1: node a is primary in epoch 3, but node b knows epoch 5 \(primary a from entry 1\)$/);
  await stale.waitClosed();

  const image = await stopAndReadImage(b);
  assert.deepEqual(image.subarray(0, 4 * KiB), pattern(4 * KiB, 15), 'the entry of epoch 5 is in b\'s image');
  const epochs = JSON.parse(fs.readFileSync(path.join(b.dataDir, 'volumes', 'v1.epochs.json'), 'utf8')) as { epochs: unknown[] };
  assert.deepEqual(epochs.epochs, [{ epoch: 0, primary: 'a', firstSeq: 1 }, ...newer], 'the history on disk');
});

test('a connection that never finishes its handshake is closed by b after peerHandshakeTimeoutMs', async () => {
  const { b, replicationPort } = await startSecondary();
  const refusalsBefore = counter(await b.status(), 'peerRefusals');
  const timeoutMs = constants.peerHandshakeTimeoutMs;
  // One says nothing at all; one stops after HELLO.
  const silent = await PeerClient.connect(replicationPort);
  const stalled = await PeerClient.connect(replicationPort);
  stalled.send(encodeFrame(hello({ session: 0x0901 })));
  await stalled.next('challenge');
  const boundMs = timeoutMs + 2500;
  await Promise.all([silent.waitClosed(boundMs), stalled.waitClosed(boundMs)]);
  for (const [what, client] of [['silent', silent], ['stalled after HELLO', stalled]] as const) {
    const openMs = (client.closedAtMs ?? Number.NaN) - client.openedAtMs;
    assert.ok(openMs >= timeoutMs - 500 && openMs <= timeoutMs + 2000, `${what}: closed after ${openMs} ms, expected ~${timeoutMs} ms`);
  }
  const status = await b.status();
  assert.equal(counter(status, 'peerRefusals'), refusalsBefore + 2, 'both abandoned handshakes counted');
  await assertNothingStored(b);
  await stopAndReadImage(b);
});
