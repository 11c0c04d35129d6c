// Requests a well-behaved client never sends, against a real `blockmirror serve`.
//
// First libnbd, with its client-side checks off, sends every refusable request and
// checks the exact errno (test/interop/bad_requests.py). Then a raw socket speaking the
// protocol by hand covers what libnbd cannot send: broken handshakes, bad magic,
// oversized and unknown requests, a client that never reads its replies and clients
// that vanish with requests in flight. The server must answer each one as the spec and
// docs/nbd.md say, keep serving everyone else, keep its memory bounded, and
// never change a byte that no valid write touched: the image files are compared byte
// for byte with a model once the server has stopped.
//
// The wire constants below are written out from the spec on purpose rather than
// imported from src/, so a wrong constant in the server cannot hide itself.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { constants } from '../../src/constants.js';
import { run, sleep, startNode, type TestNode, type VolumeSpec } from '../helpers/node-process.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The script lives beside this file's source: dist/test/interop -> test/interop. */
const scriptPath = path.resolve(here, '../../../test/interop/bad_requests.py');

const KiB = 1024;
const MiB = 1024 * KiB;
const DATA_SIZE_BYTES = 64 * MiB;
const RO_SIZE_BYTES = 1 * MiB;
const volumes: VolumeSpec[] = [
  { name: 'data', size: '64MiB' },
  { name: 'ro', size: '1MiB', readOnly: true },
];

// Wire constants (NetworkBlockDevice/nbd doc/proto.md).
const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
const C_FIXED_NEWSTYLE = 0x1;
const C_NO_ZEROES = 0x2;
const OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;
const REP = {
  ACK: 1,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 2 ** 31 + 1,
  ERR_INVALID: 2 ** 31 + 3,
  ERR_UNKNOWN: 2 ** 31 + 6,
  ERR_TOO_BIG: 2 ** 31 + 9,
} as const;
const INFO_EXPORT = 0;
const TX_READ_ONLY = 0x2;
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, BLOCK_STATUS: 7 } as const;
const CMD_FLAG_DF = 0x4;
const CHUNK = { OFFSET_DATA: 1, BLOCK_STATUS: 5, ERROR: 0x8001 } as const;
const REPLY_FLAG_DONE = 0x1;
const EINVAL = 22;

// ---------------------------------------------------------------------------------------
// Volume contents. The images start with these patterns (written before the server
// starts); the data volume's model then follows every write the server accepted.

function patternBytes(offset: number, length: number, modulus: number, xor: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let index = 0; index < length; index += 1) out[index] = ((offset + index) % modulus) ^ xor;
  return out;
}
/** The data volume's starting contents (bad_requests.py restores it when it is done). */
const dataPattern = (offset: number, length: number): Buffer => patternBytes(offset, length, 251, 0);
const roPattern = (offset: number, length: number): Buffer => patternBytes(offset, length, 241, 0x5a);
const fill = (byte: number, length: number): Buffer => Buffer.alloc(length, byte);

function firstDifference(actual: Buffer, expected: Buffer): string {
  if (actual.length !== expected.length) return `length ${actual.length}, expected ${expected.length}`;
  const index = actual.findIndex((byte, at) => byte !== expected[at]);
  if (index < 0) return 'equal';
  return `first difference at +${index}: 0x${actual[index]?.toString(16)} vs 0x${expected[index]?.toString(16)}`;
}

function assertBytes(actual: Buffer, expected: Buffer, what: string): void {
  if (!actual.equals(expected)) assert.fail(`${what}: ${firstDifference(actual, expected)}`);
}

// ---------------------------------------------------------------------------------------
// A raw client: a socket plus a byte queue with awaitable reads.

class ConnectionClosed extends Error {}

class RawClient {
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;
  private ended = false;
  private socketError: Error | null = null;
  private wakers: (() => void)[] = [];

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.bufferedBytes += chunk.length;
      this.wake();
    });
    socket.on('end', () => this.markEnded());
    socket.on('close', () => this.markEnded());
    // EPIPE / ECONNRESET when the server hangs up first: that is what several tests expect.
    socket.on('error', (error) => {
      this.socketError = error;
      this.markEnded();
    });
  }

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        socket.setNoDelay(true);
        resolve(new RawClient(socket));
      });
    });
  }

  get isEnded(): boolean {
    return this.ended;
  }

  write(data: Buffer): boolean {
    return this.socket.write(data);
  }

  /** Exactly `length` bytes, or ConnectionClosed if the server hangs up first. */
  async read(length: number, timeoutMs = 20_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.bufferedBytes < length) {
      if (this.ended) {
        throw new ConnectionClosed(
          `connection closed with ${this.bufferedBytes} of ${length} bytes received` +
            (this.socketError === null ? '' : ` (${this.socketError.message})`),
        );
      }
      if (Date.now() >= deadline) throw new Error(`timed out waiting for ${length} bytes (have ${this.bufferedBytes})`);
      await this.waitForChange(deadline);
    }
    const joined = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    const taken = joined.subarray(0, length);
    const rest = joined.subarray(length);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.bufferedBytes = rest.length;
    return taken;
  }

  /** Waits for the server to close; returns whatever it sent and was not read yet. */
  async expectClosed(timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      if (Date.now() >= deadline) assert.fail(`server did not close the connection within ${timeoutMs} ms`);
      await this.waitForChange(deadline);
    }
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.bufferedBytes = 0;
    return rest;
  }

  /** Resolves after 'drain', or false when the socket stays blocked for `timeoutMs`. */
  waitDrain(timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.socket.off('drain', onDrain);
        resolve(false);
      }, timeoutMs);
      const onDrain = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      this.socket.once('drain', onDrain);
    });
  }

  destroy(): void {
    this.socket.destroy();
  }

  private markEnded(): void {
    this.ended = true;
    this.wake();
  }

  private wake(): void {
    const wakers = this.wakers;
    this.wakers = [];
    for (const waker of wakers) waker();
  }

  private waitForChange(deadline: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
      this.wakers.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

// ---------------------------------------------------------------------------------------
// Handshake helpers.

interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

/** Reads the greeting and answers with the client flags. */
async function greet(client: RawClient, clientFlags = C_FIXED_NEWSTYLE | C_NO_ZEROES): Promise<number> {
  const greeting = await client.read(18);
  assert.equal(greeting.readBigUInt64BE(0), NBDMAGIC, 'greeting NBDMAGIC');
  assert.equal(greeting.readBigUInt64BE(8), IHAVEOPT, 'greeting IHAVEOPT');
  const handshakeFlags = greeting.readUInt16BE(16);
  assert.equal(handshakeFlags & 0x1, 0x1, 'server must set FIXED_NEWSTYLE');
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(clientFlags >>> 0, 0);
  client.write(flags);
  return handshakeFlags;
}

function option(code: number, data: Buffer = Buffer.alloc(0), announcedLength = data.length): Buffer {
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(IHAVEOPT, 0);
  header.writeUInt32BE(code, 8);
  header.writeUInt32BE(announcedLength, 12);
  return Buffer.concat([header, data]);
}

function u32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value, 0);
  return out;
}

function u16(value: number): Buffer {
  const out = Buffer.alloc(2);
  out.writeUInt16BE(value, 0);
  return out;
}

/** INFO/GO data: u32 name length, name, u16 count, the info requests. */
function exportRequest(name: string, infos: number[] = []): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  return Buffer.concat([u32(nameBytes.length), nameBytes, u16(infos.length), ...infos.map(u16)]);
}

/** SET/LIST_META_CONTEXT data: u32 name length, name, u32 count, each query. */
function metaRequest(name: string, queries: string[]): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const parts = [u32(nameBytes.length), nameBytes, u32(queries.length)];
  for (const query of queries) {
    const bytes = Buffer.from(query, 'utf8');
    parts.push(u32(bytes.length), bytes);
  }
  return Buffer.concat(parts);
}

async function readOptionReply(client: RawClient): Promise<OptionReply> {
  const header = await client.read(20);
  assert.equal(header.readBigUInt64BE(0), OPTION_REPLY_MAGIC, 'option reply magic');
  const length = header.readUInt32BE(16);
  assert.ok(length <= 64 * KiB, `option reply of ${length} bytes`);
  return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data: await client.read(length) };
}

async function expectOptionReply(client: RawClient, code: number, type: number, what: string): Promise<OptionReply> {
  const reply = await readOptionReply(client);
  assert.equal(reply.option, code, `${what}: reply names option ${reply.option}`);
  const message = reply.data.toString('utf8');
  const types = `0x${reply.type.toString(16)}, expected 0x${type.toString(16)}`;
  assert.equal(reply.type, type, `${what}: reply type ${types} (${message})`);
  if (type === REP.ACK) assert.equal(reply.data.length, 0, `${what}: ACK must carry no data`);
  return reply;
}

interface ExportDetails {
  sizeBytes: number;
  transmissionFlags: number;
}

/** Sends GO and reads its replies up to the ACK; the connection is then in transmission. */
async function sendGo(client: RawClient, name: string): Promise<ExportDetails> {
  client.write(option(OPT.GO, exportRequest(name)));
  let details: ExportDetails | undefined;
  for (;;) {
    const reply = await readOptionReply(client);
    assert.equal(reply.option, OPT.GO);
    if (reply.type === REP.ACK) break;
    const message = reply.data.toString('utf8');
    assert.equal(reply.type, REP.INFO, `GO ${name}: reply type 0x${reply.type.toString(16)} (${message})`);
    if (reply.data.readUInt16BE(0) === INFO_EXPORT) {
      assert.equal(reply.data.length, 12, 'INFO_EXPORT is 12 bytes');
      details = { sizeBytes: Number(reply.data.readBigUInt64BE(2)), transmissionFlags: reply.data.readUInt16BE(10) };
    }
  }
  assert.ok(details !== undefined, 'GO must send INFO_EXPORT');
  return details;
}

/** GO on a client that negotiated by hand (no meta context). */
async function goSession(client: RawClient, name: string, structured = false): Promise<Session> {
  return { client, details: await sendGo(client, name), structured, allocationContextId: null };
}

interface OpenOptions {
  structured?: boolean;
  allocation?: boolean;
}

interface Session {
  client: RawClient;
  details: ExportDetails;
  structured: boolean;
  allocationContextId: number | null;
}

async function openExport(port: number, name: string, options: OpenOptions = {}): Promise<Session> {
  const client = await RawClient.connect(port);
  await greet(client);
  let allocationContextId: number | null = null;
  if (options.structured === true || options.allocation === true) {
    client.write(option(OPT.STRUCTURED_REPLY));
    await expectOptionReply(client, OPT.STRUCTURED_REPLY, REP.ACK, 'STRUCTURED_REPLY');
  }
  if (options.allocation === true) {
    client.write(option(OPT.SET_META_CONTEXT, metaRequest(name, ['base:allocation'])));
    const context = await expectOptionReply(client, OPT.SET_META_CONTEXT, REP.META_CONTEXT, 'SET_META_CONTEXT');
    assert.equal(context.data.subarray(4).toString('utf8'), 'base:allocation');
    allocationContextId = context.data.readUInt32BE(0);
    await expectOptionReply(client, OPT.SET_META_CONTEXT, REP.ACK, 'SET_META_CONTEXT');
  }
  const details = await sendGo(client, name);
  return {
    client,
    details,
    structured: options.structured === true || options.allocation === true,
    allocationContextId,
  };
}

// ---------------------------------------------------------------------------------------
// Transmission helpers (one request at a time unless said otherwise).

let nextCookie = 0x1000n;
function newCookie(): bigint {
  nextCookie += 0x100000001n;
  return nextCookie;
}

function requestHeader(
  type: number,
  flags: number,
  cookie: bigint,
  offset: number | bigint,
  length: number,
  magic = REQUEST_MAGIC,
): Buffer {
  const header = Buffer.alloc(28);
  header.writeUInt32BE(magic >>> 0, 0);
  header.writeUInt16BE(flags, 4);
  header.writeUInt16BE(type, 6);
  header.writeBigUInt64BE(cookie, 8);
  header.writeBigUInt64BE(BigInt(offset), 16);
  header.writeUInt32BE(length >>> 0, 24);
  return header;
}

async function readSimpleReply(client: RawClient, cookie: bigint): Promise<number> {
  const reply = await client.read(16);
  assert.equal(reply.readUInt32BE(0), SIMPLE_REPLY_MAGIC, 'simple reply magic');
  assert.equal(reply.readBigUInt64BE(8), cookie, 'reply must echo the cookie exactly');
  return reply.readUInt32BE(4);
}

/** Sends one request and returns its errno (0 for success). */
async function simpleCommand(
  session: Session,
  type: number,
  offset: number,
  length: number,
  flags = 0,
): Promise<number> {
  const cookie = newCookie();
  session.client.write(requestHeader(type, flags, cookie, offset, length));
  return readSimpleReply(session.client, cookie);
}

async function writeData(session: Session, offset: number, data: Buffer, flags = 0): Promise<number> {
  const cookie = newCookie();
  session.client.write(Buffer.concat([requestHeader(CMD.WRITE, flags, cookie, offset, data.length), data]));
  return readSimpleReply(session.client, cookie);
}

/** A READ on a simple-reply session: the data, or the errno. */
async function readData(session: Session, offset: number, length: number): Promise<Buffer | number> {
  assert.equal(session.structured, false, 'use readStructured on a structured session');
  const cookie = newCookie();
  session.client.write(requestHeader(CMD.READ, 0, cookie, offset, length));
  const error = await readSimpleReply(session.client, cookie);
  if (error !== 0) return error;
  return session.client.read(length);
}

interface Chunk {
  flags: number;
  type: number;
  payload: Buffer;
}

async function readChunk(client: RawClient, cookie: bigint): Promise<Chunk> {
  const header = await client.read(20);
  assert.equal(header.readUInt32BE(0), STRUCTURED_REPLY_MAGIC, 'structured reply magic');
  assert.equal(header.readBigUInt64BE(8), cookie, 'chunk must echo the cookie exactly');
  const length = header.readUInt32BE(16);
  return { flags: header.readUInt16BE(4), type: header.readUInt16BE(6), payload: await client.read(length) };
}

/** A READ on a structured session: every chunk up to DONE, assembled. */
async function readStructured(session: Session, offset: number, length: number): Promise<Buffer> {
  const cookie = newCookie();
  session.client.write(requestHeader(CMD.READ, 0, cookie, offset, length));
  const out = Buffer.alloc(length);
  let covered = 0;
  for (;;) {
    const chunk = await readChunk(session.client, cookie);
    if (chunk.type === CHUNK.OFFSET_DATA) {
      const at = Number(chunk.payload.readBigUInt64BE(0)) - offset;
      const data = chunk.payload.subarray(8);
      assert.ok(at >= 0 && at + data.length <= length, 'data chunk inside the request');
      data.copy(out, at);
      covered += data.length;
    } else {
      assert.fail(`unexpected chunk type 0x${chunk.type.toString(16)} in a read reply`);
    }
    if ((chunk.flags & REPLY_FLAG_DONE) !== 0) break;
  }
  assert.equal(covered, length, 'read chunks cover the whole request');
  return out;
}

async function disconnect(session: Session): Promise<void> {
  session.client.write(requestHeader(CMD.DISC, 0, newCookie(), 0, 0));
  const rest = await session.client.expectClosed();
  assert.equal(rest.length, 0, 'DISC gets no reply');
}

function rssBytes(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  assert.ok(match?.[1] !== undefined, 'VmRSS in /proc/PID/status');
  return Number(match[1]) * KiB;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------

/** Every line bad_requests.py prints when all its checks pass, in order. */
const SCRIPT_CHECKS = [
  'initial-contents',
  'write-known-pattern',
  'read-past-end',
  'read-straddling-end',
  'read-far-past-end',
  'read-zero-length',
  'read-unknown-flag-0x40',
  'read-no-hole-flag',
  'write-req-one-flag',
  'write-unknown-flag-0x40',
  'write-zero-length',
  'write-past-end',
  'write-straddling-end',
  'zero-past-end',
  'zero-straddling-end',
  'zero-straddling-end-no-hole',
  'trim-past-end',
  'trim-straddling-end',
  'block-status-past-end',
  'block-status-straddling-end',
  'block-status-without-context',
  'block-status-in-range',
  'read-only-write',
  'read-only-write-past-end',
  'read-only-trim',
  'read-only-zero',
  'read-only-zero-no-hole',
  'read-only-reads',
  'fast-zero',
  'zero-over-payload-max',
  'cache-past-end',
  'cache-in-range',
  'read-fua-flag',
  'read-one-byte-at-offset-1',
  'read-last-byte',
  'write-33MiB-refused',
  'write-32MiB',
  'volume-matches-model',
  'restore-pattern',
  'done',
];

describe('bad requests against a real server', { timeout: 240_000 }, () => {
  let node: TestNode | undefined;
  let dir: string | undefined;
  let stopped = false;
  let port = 0;
  /** What the data volume must hold: its pattern plus every write the server accepted. */
  const model = dataPattern(0, DATA_SIZE_BYTES);

  function running(): TestNode {
    assert.ok(node !== undefined && !stopped, 'node is running');
    return node;
  }

  /** A write the server must accept; the model follows it. */
  async function writeOk(session: Session, offset: number, data: Buffer): Promise<void> {
    assert.equal(await writeData(session, offset, data), 0, `write of ${data.length} bytes at ${offset}`);
    data.copy(model, offset);
  }

  /** Reads a range over a simple-reply session and compares it with the model. */
  async function expectModel(session: Session, offset: number, length: number, what: string): Promise<void> {
    const data = await readData(session, offset, length);
    assert.ok(Buffer.isBuffer(data), `${what}: read failed with errno ${String(data)}`);
    assertBytes(data, model.subarray(offset, offset + length), what);
  }

  before(async () => {
    // First start creates the volume files; the patterns then go straight into the
    // images, and the second start serves them.
    const first = await startNode({ volumes });
    dir = first.dir;
    await first.stop();
    fs.writeFileSync(first.imagePath('data'), dataPattern(0, DATA_SIZE_BYTES));
    fs.writeFileSync(first.imagePath('ro'), roPattern(0, RO_SIZE_BYTES));
    node = await startNode({ dir: first.dir, volumes });
    port = node.nbdPort;
  });

  after(async () => {
    if (node !== undefined && !stopped) await node.stop('SIGKILL');
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('libnbd with strict mode off gets the exact errno for every bad request', async () => {
    const current = running();
    const result = await run('/usr/bin/python3', [scriptPath, current.uri('data'), current.uri('ro')], {
      timeoutMs: 90_000,
    });
    // The script restores the starting pattern itself; writing it again here keeps the
    // tests below meaningful even when the script stopped half-way.
    const session = await openExport(port, 'data');
    for (let offset = 0; offset < DATA_SIZE_BYTES; offset += constants.nbdPayloadBytesMax) {
      await writeOk(session, offset, dataPattern(offset, constants.nbdPayloadBytesMax));
    }
    await disconnect(session);
    const lines = result.stdout.split('\n').filter((line) => line !== '');
    assert.equal(
      result.code,
      0,
      `bad_requests.py exited ${result.code ?? result.signal}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`,
    );
    assert.deepEqual(lines, SCRIPT_CHECKS.map((name) => `ok ${name}`), 'every check of bad_requests.py ran and passed');
  });

  describe('handshake', () => {
    it('unknown client flags: the server closes without a word', async () => {
      const client = await RawClient.connect(port);
      await greet(client, C_FIXED_NEWSTYLE | C_NO_ZEROES | 0x4);
      // A client that does not know the flags were refused might send an option anyway.
      client.write(option(OPT.GO, exportRequest('data')));
      const rest = await client.expectClosed();
      assert.equal(rest.length, 0, 'nothing may be sent after unknown client flags');
    });

    it('EXTENDED_HEADERS, STARTTLS and unknown options get ERR_UNSUP and negotiation continues', async () => {
      const client = await RawClient.connect(port);
      await greet(client);
      client.write(option(OPT.EXTENDED_HEADERS));
      await expectOptionReply(client, OPT.EXTENDED_HEADERS, REP.ERR_UNSUP, 'EXTENDED_HEADERS');
      client.write(option(OPT.STARTTLS));
      await expectOptionReply(client, OPT.STARTTLS, REP.ERR_UNSUP, 'STARTTLS');
      client.write(option(99));
      await expectOptionReply(client, 99, REP.ERR_UNSUP, 'option 99');
      // An unknown option's data is skipped, not parsed as the next option.
      client.write(option(99, Buffer.concat([option(OPT.ABORT), fill(0xab, 200)])));
      await expectOptionReply(client, 99, REP.ERR_UNSUP, 'option 99 with data');
      const session = await goSession(client, 'data');
      assert.equal(session.details.sizeBytes, DATA_SIZE_BYTES);
      await expectModel(session, 12345, 4 * KiB, 'read after the refused options');
      await disconnect(session);
    });

    it('GO and INFO for an unknown export get ERR_UNKNOWN; a following GO succeeds', async () => {
      const client = await RawClient.connect(port);
      await greet(client);
      client.write(option(OPT.GO, exportRequest('no-such-volume')));
      await expectOptionReply(client, OPT.GO, REP.ERR_UNKNOWN, 'GO unknown export');
      client.write(option(OPT.INFO, exportRequest('no-such-volume')));
      await expectOptionReply(client, OPT.INFO, REP.ERR_UNKNOWN, 'INFO unknown export');
      const details = await sendGo(client, 'ro');
      assert.equal(details.sizeBytes, RO_SIZE_BYTES);
      assert.equal(details.transmissionFlags & TX_READ_ONLY, TX_READ_ONLY, 'ro export is flagged read-only');
      const session: Session = { client, details, structured: false, allocationContextId: null };
      const data = await readData(session, 0, RO_SIZE_BYTES);
      assert.ok(Buffer.isBuffer(data));
      assertBytes(data, roPattern(0, RO_SIZE_BYTES), 'read-only volume');
      await disconnect(session);
    });

    it('INFO with malformed lengths gets ERR_INVALID; negotiation continues', async () => {
      const client = await RawClient.connect(port);
      await greet(client);
      // The name length runs past the option data.
      client.write(option(OPT.INFO, Buffer.concat([u32(100), Buffer.from('data'), u16(0)])));
      await expectOptionReply(client, OPT.INFO, REP.ERR_INVALID, 'INFO name length past the data');
      // Two info requests announced, one sent.
      client.write(option(OPT.INFO, Buffer.concat([u32(4), Buffer.from('data'), u16(2), u16(0)])));
      await expectOptionReply(client, OPT.INFO, REP.ERR_INVALID, 'INFO request count past the data');
      // Trailing bytes after the info requests.
      client.write(option(OPT.INFO, Buffer.concat([exportRequest('data'), fill(0, 3)])));
      await expectOptionReply(client, OPT.INFO, REP.ERR_INVALID, 'INFO with trailing bytes');
      // Too short to hold even the name length.
      client.write(option(OPT.GO, Buffer.from([0, 0])));
      await expectOptionReply(client, OPT.GO, REP.ERR_INVALID, 'GO of 2 bytes');
      const session = await goSession(client, 'data');
      await expectModel(session, 0, 4 * KiB, 'read after malformed INFO');
      await disconnect(session);
    });

    it('an option longer than the limit is skipped and gets ERR_TOO_BIG; negotiation continues', async () => {
      const client = await RawClient.connect(port);
      await greet(client);
      const limit = constants.nbdOptionBytesMax;
      // At the limit the data is read and judged: LIST takes no data.
      client.write(option(OPT.LIST, fill(0x41, limit)));
      await expectOptionReply(client, OPT.LIST, REP.ERR_INVALID, `LIST with ${limit} bytes of data`);
      // One byte over, and far over: skipped whole. The skipped data holds what would
      // look like an ABORT if the server parsed it.
      const decoy = Buffer.concat([option(OPT.ABORT), fill(0x42, limit + 1)]);
      client.write(option(OPT.LIST, decoy.subarray(0, limit + 1)));
      await expectOptionReply(client, OPT.LIST, REP.ERR_TOO_BIG, `option of ${limit + 1} bytes`);
      client.write(option(99, Buffer.concat([option(OPT.ABORT), fill(0x43, 4 * MiB)])));
      await expectOptionReply(client, 99, REP.ERR_TOO_BIG, 'option of 4 MiB');
      const session = await goSession(client, 'data');
      await expectModel(session, 63 * MiB, 64 * KiB, 'read after oversized options');
      await disconnect(session);
    });

    it(`more than ${constants.nbdOptionCountMax} options: the connection is closed`, async () => {
      const client = await RawClient.connect(port);
      await greet(client);
      const limit = constants.nbdOptionCountMax;
      const options: Buffer[] = [];
      for (let index = 0; index < limit; index += 1) options.push(option(99));
      // The next option, even a good GO, is one too many.
      options.push(option(OPT.GO, exportRequest('data')));
      client.write(Buffer.concat(options));
      for (let index = 0; index < limit; index += 1) {
        await expectOptionReply(client, 99, REP.ERR_UNSUP, `option ${index + 1} of ${limit}`);
      }
      const rest = await client.expectClosed();
      assert.equal(rest.length, 0, `option ${limit + 1} must get no reply`);
    });

    it('an option with a bad magic: the connection is closed', async () => {
      const client = await RawClient.connect(port);
      await greet(client);
      const bad = option(OPT.GO, exportRequest('data'));
      bad.writeBigUInt64BE(0x49484156454f5055n, 0);
      client.write(bad);
      const rest = await client.expectClosed();
      assert.equal(rest.length, 0, 'no reply to an option with a bad magic');
    });

    it('EXPORT_NAME with an unknown name: the connection is closed', async () => {
      const client = await RawClient.connect(port);
      await greet(client);
      client.write(option(OPT.EXPORT_NAME, Buffer.from('no-such-volume')));
      const rest = await client.expectClosed();
      assert.equal(rest.length, 0, 'EXPORT_NAME cannot be answered with an error');
    });

    it('EXPORT_NAME with a known name enters transmission', async () => {
      const client = await RawClient.connect(port);
      await greet(client);
      client.write(option(OPT.EXPORT_NAME, Buffer.from('data')));
      // With C_NO_ZEROES: size(8) + flags(2), no padding.
      const reply = await client.read(10);
      assert.equal(Number(reply.readBigUInt64BE(0)), DATA_SIZE_BYTES);
      const session: Session = {
        client,
        details: { sizeBytes: DATA_SIZE_BYTES, transmissionFlags: reply.readUInt16BE(8) },
        structured: false,
        allocationContextId: null,
      };
      await expectModel(session, 5 * MiB + 7, 3 * KiB, 'read after EXPORT_NAME');
      await disconnect(session);
    });

    it('ABORT gets an ACK, then the server closes', async () => {
      const client = await RawClient.connect(port);
      await greet(client);
      client.write(option(OPT.ABORT));
      await expectOptionReply(client, OPT.ABORT, REP.ACK, 'ABORT');
      const rest = await client.expectClosed();
      assert.equal(rest.length, 0, 'nothing after the ABORT ACK');
    });

    it('STRUCTURED_REPLY twice: the second gets ERR_INVALID and structured replies stay on', async () => {
      const client = await RawClient.connect(port);
      await greet(client);
      client.write(option(OPT.STRUCTURED_REPLY));
      await expectOptionReply(client, OPT.STRUCTURED_REPLY, REP.ACK, 'first STRUCTURED_REPLY');
      client.write(option(OPT.STRUCTURED_REPLY));
      await expectOptionReply(client, OPT.STRUCTURED_REPLY, REP.ERR_INVALID, 'second STRUCTURED_REPLY');
      client.write(option(OPT.STRUCTURED_REPLY, Buffer.from([1])));
      await expectOptionReply(client, OPT.STRUCTURED_REPLY, REP.ERR_INVALID, 'STRUCTURED_REPLY with data');
      const session = await goSession(client, 'data', true);
      const offset = 1 * MiB + 1;
      const data = await readStructured(session, offset, 100 * KiB);
      assertBytes(data, model.subarray(offset, offset + 100 * KiB), 'structured read');
      // Without a context, BLOCK_STATUS is refused, as an error chunk.
      const cookie = newCookie();
      client.write(requestHeader(CMD.BLOCK_STATUS, 0, cookie, 0, 4096));
      const chunk = await readChunk(client, cookie);
      assert.equal(chunk.type, CHUNK.ERROR, 'BLOCK_STATUS without a context gets an error chunk');
      assert.equal(chunk.payload.readUInt32BE(0), EINVAL);
      assert.equal(chunk.flags & REPLY_FLAG_DONE, REPLY_FLAG_DONE);
      await disconnect(session);
    });

    it('SET_META_CONTEXT before STRUCTURED_REPLY gets ERR_INVALID; after it, block status works', async () => {
      const client = await RawClient.connect(port);
      await greet(client);
      client.write(option(OPT.SET_META_CONTEXT, metaRequest('data', ['base:allocation'])));
      await expectOptionReply(client, OPT.SET_META_CONTEXT, REP.ERR_INVALID, 'SET_META_CONTEXT first');
      client.write(option(OPT.STRUCTURED_REPLY));
      await expectOptionReply(client, OPT.STRUCTURED_REPLY, REP.ACK, 'STRUCTURED_REPLY');
      // A query that runs past the option data.
      const truncated = metaRequest('data', ['base:allocation']);
      client.write(option(OPT.SET_META_CONTEXT, truncated.subarray(0, truncated.length - 3)));
      await expectOptionReply(client, OPT.SET_META_CONTEXT, REP.ERR_INVALID, 'truncated SET_META_CONTEXT');
      client.write(option(OPT.SET_META_CONTEXT, metaRequest('data', ['base:allocation'])));
      const context = await expectOptionReply(client, OPT.SET_META_CONTEXT, REP.META_CONTEXT, 'SET_META_CONTEXT');
      const contextId = context.data.readUInt32BE(0);
      await expectOptionReply(client, OPT.SET_META_CONTEXT, REP.ACK, 'SET_META_CONTEXT');
      await sendGo(client, 'data');
      const cookie = newCookie();
      client.write(requestHeader(CMD.BLOCK_STATUS, 0, cookie, 0, 1 * MiB));
      const chunk = await readChunk(client, cookie);
      assert.equal(chunk.type, CHUNK.BLOCK_STATUS, `chunk type 0x${chunk.type.toString(16)}`);
      assert.equal(chunk.flags & REPLY_FLAG_DONE, REPLY_FLAG_DONE);
      assert.equal(chunk.payload.readUInt32BE(0), contextId);
      const extentCount = (chunk.payload.length - 4) / 8;
      assert.ok(Number.isInteger(extentCount) && extentCount >= 1, 'at least one extent');
      for (let index = 0; index < extentCount; index += 1) {
        assert.ok(chunk.payload.readUInt32BE(4 + index * 8) > 0, 'every extent is longer than 0');
      }
      client.write(requestHeader(CMD.DISC, 0, newCookie(), 0, 0));
      await client.expectClosed();
    });
  });

  describe('transmission', () => {
    it('bad request magic closes that connection; a concurrent connection is unaffected', async () => {
      const bad = await openExport(port, 'data');
      const good = await openExport(port, 'data');
      // A write on the good connection is in flight while the other one breaks.
      const data = fill(0x5b, 4 * MiB);
      const cookie = newCookie();
      good.client.write(Buffer.concat([requestHeader(CMD.WRITE, 0, cookie, 8 * MiB, data.length), data]));
      bad.client.write(requestHeader(CMD.READ, 0, newCookie(), 0, 4096, 0xdeadbeef));
      const rest = await bad.client.expectClosed();
      assert.equal(rest.length, 0, 'no reply to a request with bad magic');
      assert.equal(await readSimpleReply(good.client, cookie), 0, 'write on the good connection');
      data.copy(model, 8 * MiB);
      await expectModel(good, 8 * MiB - 4 * KiB, 4 * MiB + 8 * KiB, 'read back on the good connection');
      await writeOk(good, 20 * MiB + 3, fill(0x5c, 5000));
      await expectModel(good, 20 * MiB, 8 * KiB, 'second write on the good connection');
      await disconnect(good);
    });

    it('a WRITE announcing 128 MiB closes the connection and changes nothing', async () => {
      const session = await openExport(port, 'data');
      session.client.write(requestHeader(CMD.WRITE, 0, newCookie(), 0, 128 * MiB));
      // Some of the payload follows; the server must not apply any of it.
      session.client.write(fill(0xff, 8 * MiB));
      const rest = await session.client.expectClosed();
      assert.equal(rest.length, 0, 'no reply to a write the server cannot take');
      const check = await openExport(port, 'data');
      await expectModel(check, 0, 16 * MiB, 'first 16 MiB after the refused 128 MiB write');
      await disconnect(check);
    });

    it(`a WRITE of 40 MiB gets EINVAL, its payload is consumed and the connection lives`, async () => {
      const size = 40 * MiB;
      assert.ok(size > constants.nbdPayloadBytesMax && size <= constants.nbdPayloadDiscardBytesMax);
      const session = await openExport(port, 'data');
      const errno = await writeData(session, 0, fill(0x77, size));
      assert.equal(errno, EINVAL, `40 MiB write: errno ${errno}`);
      // If the payload had not been consumed, these would be parsed out of it.
      await expectModel(session, 0, 32 * MiB, 'first 32 MiB after the refused write');
      await expectModel(session, 32 * MiB, 32 * MiB, 'last 32 MiB after the refused write');
      await writeOk(session, 30 * MiB, fill(0x78, 64 * KiB));
      await expectModel(session, 30 * MiB - 1, 64 * KiB + 2, 'write after the refused write');
      await disconnect(session);
    });

    it('an unknown command type gets EINVAL and the connection lives', async () => {
      const session = await openExport(port, 'data');
      assert.equal(await simpleCommand(session, 42, 0, 4096), EINVAL, 'command 42');
      assert.equal(await simpleCommand(session, 0xffff, 0, 0), EINVAL, 'command 0xffff');
      // A command number past the known ones that carries no payload must not be
      // mistaken for a write.
      assert.equal(await simpleCommand(session, 9, 4096, 4096), EINVAL, 'command 9');
      assert.equal(await simpleCommand(session, CMD.FLUSH, 0, 0), 0, 'FLUSH after unknown commands');
      await expectModel(session, 4096, 4096, 'read after unknown commands');
      await disconnect(session);
    });

    it('refused READs on a simple-reply connection carry no data and the connection lives', async () => {
      const session = await openExport(port, 'data');
      // A refused READ gets a bare 16-byte reply; any data after it would be read as the
      // next reply and break the checks below.
      assert.equal(await readData(session, DATA_SIZE_BYTES - 512, 1024), EINVAL, 'READ straddling the end');
      assert.equal(await readData(session, DATA_SIZE_BYTES, 4096), EINVAL, 'READ past the end');
      assert.equal(await readData(session, 2 ** 53, 4096), EINVAL, 'READ at 2^53');
      assert.equal(await readData(session, 0, 0), EINVAL, 'READ of 0 bytes');
      // DF is only valid once structured replies were negotiated.
      assert.equal(await simpleCommand(session, CMD.READ, 0, 4096, CMD_FLAG_DF), EINVAL, 'READ with DF');
      await expectModel(session, DATA_SIZE_BYTES - 4096, 4096, 'read after the refused reads');
      await disconnect(session);
    });

    it('a client that never reads its replies: memory stays bounded and others are served', async (t) => {
      const current = running();
      const pid = current.pid;
      const rssBefore = rssBytes(pid);
      let rssMax = rssBefore;
      const sampler = setInterval(() => {
        try {
          rssMax = Math.max(rssMax, rssBytes(pid));
        } catch {
          // The process is gone; the liveness check below reports it.
        }
      }, 50);

      const stuck = await openExport(port, 'data');
      // Stop reading the socket: replies pile up in the kernel, then in the server.
      stuck.client.socket.pause();
      const other = await openExport(port, 'data');
      const requestsMax = 2_000_000;
      const perBatch = 1024;
      const deadline = Date.now() + 15_000;
      let sent = 0;
      let blocked = false;
      try {
        while (sent < requestsMax && Date.now() < deadline) {
          const batch = Buffer.allocUnsafe(28 * perBatch);
          for (let index = 0; index < perBatch; index += 1) {
            const number = sent + index;
            requestHeader(CMD.READ, 0, BigInt(number), (number % 63) * MiB, 1 * MiB).copy(batch, index * 28);
          }
          sent += perBatch;
          if (!stuck.client.write(batch) && !(await stuck.client.waitDrain(2000))) {
            blocked = true;
            break;
          }
        }
        assert.ok(!stuck.client.isEnded, 'the server must not drop a client only for being slow');
        assert.ok(
          blocked,
          `the server kept reading requests it could not answer: ${sent} 1 MiB reads sent without blocking`,
        );

        // Meanwhile another client reads and writes as usual.
        for (let round = 0; round < 4; round += 1) {
          const offset = 40 * MiB + round * MiB + round;
          await writeOk(other, offset, fill(0x90 + round, 1 * MiB));
          await expectModel(other, offset - 1, 1 * MiB + 2, `round ${round}: read back while another client is stuck`);
        }
        await sleep(1000);
      } finally {
        clearInterval(sampler);
      }
      const mib = (bytes: number): string => `${(bytes / MiB).toFixed(0)} MiB`;
      t.diagnostic(
        `${sent} 1 MiB READs sent before the socket blocked; server RSS ${mib(rssBefore)} before, ${mib(rssMax)} at most`,
      );
      const rssLimit = 300 * MiB;
      assert.ok(rssMax < rssLimit, `server RSS reached ${mib(rssMax)} (before: ${mib(rssBefore)}), ${sent} requests sent`);
      stuck.client.destroy();
      await sleep(200);
      assert.ok(isAlive(pid), 'server still running after the stuck client left');
      await expectModel(other, 40 * MiB, 4 * MiB + 8, 'read after the stuck client left');
      await disconnect(other);
    });

    it('clients that vanish with requests in flight do not hurt the server', async () => {
      const current = running();
      for (const how of ['reset', 'close'] as const) {
        const session = await openExport(port, 'data');
        const parts: Buffer[] = [];
        // Writes carry the bytes the volume already holds, so whether or not the server
        // executes them, the volume's contents stay known.
        for (let index = 0; index < 24; index += 1) {
          const offset = index * 2 * MiB + 4 * KiB;
          const held = model.subarray(offset, offset + 1 * MiB);
          parts.push(requestHeader(CMD.WRITE, 0, newCookie(), offset, 1 * MiB), held);
          parts.push(requestHeader(CMD.READ, 0, newCookie(), offset + MiB, 1 * MiB));
        }
        parts.push(requestHeader(CMD.FLUSH, 0, newCookie(), 0, 0));
        // A write whose payload never fully arrives must never be applied.
        parts.push(requestHeader(CMD.WRITE, 0, newCookie(), 50 * MiB, 1 * MiB), fill(0xdd, 300 * KiB));
        session.client.write(Buffer.concat(parts));
        await sleep(20);
        if (how === 'reset') session.client.destroy();
        else session.client.socket.end();
        await sleep(300);
        assert.ok(isAlive(current.pid), `server still running after a client ${how}`);
        const next = await openExport(port, 'data');
        await expectModel(next, 50 * MiB - 4 * KiB, 1 * MiB + 8 * KiB, `half-sent write after ${how} was not applied`);
        await writeOk(next, 60 * MiB + 11, fill(how === 'reset' ? 0x31 : 0x32, 70 * KiB));
        await expectModel(next, 60 * MiB, 80 * KiB, `write and read after a client ${how}`);
        await disconnect(next);
      }
    });
  });

  it('after a clean stop every byte of both images is what the valid writes left', async () => {
    const current = running();
    const exit = await current.stop('SIGTERM');
    stopped = true;
    assert.deepEqual(exit, { code: 0, signal: null }, `server exit\n${current.logs.slice(-4000)}`);
    const image = fs.readFileSync(current.imagePath('data'));
    assert.equal(image.length, DATA_SIZE_BYTES);
    assertBytes(image, model, 'data image');
    assertBytes(fs.readFileSync(current.imagePath('ro')), roPattern(0, RO_SIZE_BYTES), 'read-only image');
    // Every bad request above is an operating condition; none may look like a server bug.
    const errors = current.records().filter((record) => record['level'] === 'error');
    assert.deepEqual(errors, [], 'the server logged errors');
  });
});
