// The stream and datagram link ports (src/io/stream-link.ts, src/io/datagram-link.ts):
// the real ones over loopback and their in-process twin (src/io/memory-network.ts) pass
// one suite. It checks what a user of the ports sees — the bytes that arrive, in order and
// whole, when each side learns of a close, the errors for a refused connection and a taken
// address — then what only the twin offers: cutting, healing and resetting a link.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { DatagramLink } from '../../src/io/datagram-link.js';
import { udpDatagramLink } from '../../src/io/datagram-link.js';
import { MemoryNetwork } from '../../src/io/memory-network.js';
import { tcpStreamLink, type ByteStream, type StreamLink } from '../../src/io/stream-link.js';
import { until } from '../helpers/test-data.js';

/** The longest a test waits for a state it expects (a bound, not a pace). */
const WAIT_MS = 5_000;

/** What one end of a stream saw. */
function watch(stream: ByteStream): { opened: boolean; bytes: Buffer[]; closed: Error | null | undefined; received(): Buffer } {
  const seen = {
    opened: false,
    bytes: [] as Buffer[],
    closed: undefined as Error | null | undefined,
    received: () => Buffer.concat(seen.bytes),
  };
  stream.onOpen(() => {
    assert.equal(seen.closed, undefined, 'opened after it closed');
    seen.opened = true;
  });
  stream.onData((chunk) => seen.bytes.push(chunk));
  stream.onClose((error) => {
    assert.equal(seen.closed, undefined, 'closed twice');
    seen.closed = error;
  });
  return seen;
}

function code(error: unknown): unknown {
  return (error as { code?: unknown }).code;
}

interface Twin {
  name: string;
  streams: StreamLink;
  datagrams: DatagramLink;
  host: string;
}

const memory = new MemoryNetwork();
const twins: Twin[] = [
  { name: 'TCP and UDP over loopback', streams: tcpStreamLink, datagrams: udpDatagramLink, host: '127.0.0.1' },
  { name: 'MemoryNetwork', streams: memory.streams, datagrams: memory.datagrams, host: '127.0.0.1' },
];

/** Connects a client to a fresh listener; returns both ends once both are open. */
async function pair(twin: Twin): Promise<{ client: ByteStream; server: ByteStream; close: () => Promise<void> }> {
  let server: ByteStream | null = null;
  const listener = await twin.streams.listen({ host: twin.host, port: 0 }, 8, (stream) => (server = stream));
  assert.ok(listener.address.port > 0, 'a port was picked');
  const client = twin.streams.connect(listener.address, { host: twin.host, port: 0 });
  const seen = watch(client);
  await until('connection', () => seen.opened && server !== null, WAIT_MS);
  return { client, server: server as unknown as ByteStream, close: () => listener.close() };
}

for (const twin of twins) {
  describe(`network ports: ${twin.name}`, () => {
    test('bytes cross in both directions, whole and in order, in any chunking', async () => {
      const { client, server, close } = await pair(twin);
      const toServer = watch(server);
      const toClient = watch(client);
      const payload = Buffer.alloc(3 * 1024 * 1024 + 17);
      for (let i = 0; i < payload.length; i += 1) payload[i] = (i * 31 + (i >> 11)) & 0xff;
      client.cork();
      for (let offset = 0; offset < payload.length; offset += 65_521) client.write(payload.subarray(offset, offset + 65_521));
      client.uncork();
      server.write(Buffer.from('reply'));
      await until('every byte', () => toServer.received().length === payload.length && toClient.received().length === 5, WAIT_MS);
      assert.ok(toServer.received().equals(payload), 'the bytes arrived as sent');
      assert.equal(toClient.received().toString(), 'reply');
      client.destroy();
      await until('both ends closed', () => toServer.closed !== undefined && toClient.closed !== undefined, WAIT_MS);
      await close();
    });

    test('end() delivers its last bytes, then both ends close without an error', async () => {
      const { client, server, close } = await pair(twin);
      const atClient = watch(client);
      const atServer = watch(server);
      server.end(Buffer.from('refused: wrong secret'));
      await until('both closed', () => atClient.closed !== undefined && atServer.closed !== undefined, WAIT_MS);
      assert.equal(atClient.received().toString(), 'refused: wrong secret');
      assert.equal(atClient.closed, null);
      server.write(Buffer.from('after the end'));
      client.write(Buffer.from('after the close'));
      await close();
    });

    test('a connection nobody accepts closes with ECONNREFUSED and never opens', async () => {
      const listener = await twin.streams.listen({ host: twin.host, port: 0 }, 8, () => undefined);
      const address = listener.address;
      await listener.close();
      const seen = watch(twin.streams.connect(address, null));
      await until('refusal', () => seen.closed !== undefined, WAIT_MS);
      assert.equal(seen.opened, false);
      assert.equal(code(seen.closed), 'ECONNREFUSED');
    });

    test('a taken address is refused with EADDRINUSE, for streams and datagrams', async () => {
      const listener = await twin.streams.listen({ host: twin.host, port: 0 }, 8, () => undefined);
      await assert.rejects(twin.streams.listen(listener.address, 8, () => undefined), (error) => code(error) === 'EADDRINUSE');
      await listener.close();
      const socket = await twin.datagrams.bind({ host: twin.host, port: 0 }, () => undefined, () => undefined);
      await assert.rejects(
        twin.datagrams.bind(socket.address, () => undefined, () => undefined),
        (error) => code(error) === 'EADDRINUSE',
      );
      socket.close();
    });

    test('datagrams arrive whole with their sender; none after close', async () => {
      const received: { datagram: Buffer; from: string }[] = [];
      const receiver = await twin.datagrams.bind({ host: twin.host, port: 0 }, (datagram, from) => received.push({ datagram, from }), () => undefined);
      const sender = await twin.datagrams.bind({ host: twin.host, port: 0 }, () => undefined, () => undefined);
      const sent: boolean[] = [];
      for (let i = 0; i < 5; i += 1) sender.send(Buffer.from(`heartbeat ${i}`), receiver.address, (ok) => sent.push(ok));
      await until('five datagrams', () => received.length === 5, WAIT_MS);
      assert.deepEqual(received.map((one) => one.datagram.toString()).sort(), [0, 1, 2, 3, 4].map((i) => `heartbeat ${i}`));
      assert.ok(received.every((one) => one.from === `${twin.host}:${sender.address.port}`), 'the sender is named');
      await until('send callbacks', () => sent.length === 5, WAIT_MS);
      assert.deepEqual(sent, [true, true, true, true, true]);
      receiver.close();
      sender.send(Buffer.from('to nobody'), receiver.address);
      sender.close();
      const late: boolean[] = [];
      sender.send(Buffer.from('from a closed socket'), receiver.address, (ok) => late.push(ok));
      await until('the closed socket says so', () => late.length === 1, WAIT_MS);
      assert.deepEqual(late, [false]);
      assert.equal(received.length, 5);
    });
  });
}

describe('MemoryNetwork: cuts', () => {
  test('a cut holds stream bytes until heal, then delivers them in order; datagrams across it are lost', async () => {
    const network = new MemoryNetwork();
    let server: ByteStream | null = null;
    const listener = await network.streams.listen({ host: '10.0.0.2', port: 7000 }, 4, (stream) => (server = stream));
    const client = network.streams.connect(listener.address, { host: '10.0.0.1', port: 0 });
    const atClient = watch(client);
    await until('open', () => atClient.opened && server !== null, WAIT_MS);
    const atServer = watch(server as unknown as ByteStream);
    client.write(Buffer.from('before '));
    await until('first bytes', () => atServer.received().length === 7, WAIT_MS);

    network.cut('10.0.0.2', '10.0.0.1');
    client.write(Buffer.from('during '));
    const heard: string[] = [];
    const b = await network.datagrams.bind({ host: '10.0.0.2', port: 7000 }, (datagram) => heard.push(datagram.toString()), () => undefined);
    const a = await network.datagrams.bind({ host: '10.0.0.1', port: 7000 }, () => undefined, () => undefined);
    a.send(Buffer.from('lost'), b.address);
    const blocked = watch(network.streams.connect(listener.address, { host: '10.0.0.1', port: 0 }));
    for (let turn = 0; turn < 20; turn += 1) await new Promise((resolve) => setImmediate(resolve));
    assert.equal(atServer.received().toString(), 'before ', 'nothing crosses the cut');
    assert.equal(blocked.opened, false, 'a new connection waits');
    assert.equal(network.datagramsLost, 1);

    client.write(Buffer.from('after'));
    network.heal('10.0.0.1', '10.0.0.2');
    await until('held bytes', () => atServer.received().length === 19 && blocked.opened, WAIT_MS);
    assert.equal(atServer.received().toString(), 'before during after');
    a.send(Buffer.from('heard'), b.address);
    await until('datagram', () => heard.length === 1, WAIT_MS);
    assert.deepEqual(heard, ['heard']);

    network.reset('10.0.0.1', '10.0.0.2');
    await until('reset', () => atClient.closed !== undefined && atServer.closed !== undefined, WAIT_MS);
    assert.equal(code(atClient.closed), 'ECONNRESET');
    a.close();
    b.close();
    await listener.close();
  });
});
