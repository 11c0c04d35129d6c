// The mirror engine with real processes and real clients: every topology the cluster
// file can describe (two-way over a dedicated link or the client network, three-way,
// bidirectional, fan-in), every mode (sync, async, logship, local), and peers that must
// be kept out (wrong secret, garbage on the replication port). Each test checks what an
// operator would: the bytes the client reads, the bytes in every replica's image file
// after a clean stop, and what `status` says.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import {
  killAll,
  makeTempDir,
  run,
  runOk,
  startClusterNode,
  writeClusterConfig,
  type NodeStatusJson,
  type TestNode,
} from '../helpers/node-process.js';

const MiB = 1024 * 1024;
const dirs: string[] = [];
after(() => {
  killAll();
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = makeTempDir('blockmirror-mirror-');
  dirs.push(dir);
  return dir;
}

function volumeOf(status: NodeStatusJson, name: string): NodeStatusJson['volumes'][number] {
  const volume = status.volumes.find((candidate) => candidate.name === name);
  assert.ok(volume !== undefined, `node ${status.node} has no volume ${name}`);
  return volume;
}

/** Waits until the primary streams `volume` to every peer. */
function streaming(primary: TestNode, volume: string, peers: number): Promise<NodeStatusJson> {
  return primary.waitStatus(`${volume} streaming to ${peers} peer(s)`, (status) => {
    const peerList = volumeOf(status, volume).peers;
    return peerList.length === peers && peerList.every((peer) => peer.replication === 'streaming');
  });
}

async function qemuIo(uri: string, commands: string[]): Promise<void> {
  await runOk('qemu-io', ['-f', 'raw', uri, ...commands.flatMap((command) => ['-c', command])], { timeoutMs: 60_000 });
}

/** What a volume of `sizeBytes` holds after the writes the tests make with qemu-io. */
function fill(image: Buffer, offset: number, length: number, byte: number): void {
  image.fill(byte, offset, offset + length);
}

function readImage(node: TestNode, volume: string): Buffer {
  return fs.readFileSync(node.imagePath(volume));
}

function assertSameImage(expected: Buffer, actual: Buffer, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: size`);
  if (!actual.equals(expected)) {
    let at = 0;
    while (at < actual.length && actual[at] === expected[at]) at += 1;
    assert.fail(`${what}: first difference at byte ${at} (0x${(actual[at] ?? 0).toString(16)} instead of 0x${(expected[at] ?? 0).toString(16)})`);
  }
}

test('two-way sync over a dedicated replication address: qemu-io and nbdcopy writes land on both images', async () => {
  const dir = tempDir();
  const config = await writeClusterConfig(dir, {
    nodes: [
      { id: 'a', host: '127.0.0.1', replicationHost: '127.0.0.2' },
      { id: 'b', host: '127.0.0.3', replicationHost: '127.0.0.4' },
    ],
    volumes: [{ name: 'v1', size: '64MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' }],
  });
  const b = await startClusterNode(dir, config, 'b');
  const a = await startClusterNode(dir, config, 'a');
  await streaming(a, 'v1', 1);

  const expected = Buffer.alloc(64 * MiB);
  const random = crypto.randomBytes(16 * MiB);
  random.copy(expected, 0);
  const source = path.join(dir, 'random.bin');
  fs.writeFileSync(source, random);
  await runOk('nbdcopy', [source, a.uri('v1')], { timeoutMs: 60_000 });
  await qemuIo(a.uri('v1'), ['write -P 0x11 20M 1M', 'write -f -P 0x22 5M 64k', 'write -z 2M 1M', 'flush', 'write -P 0x33 30M 4k']);
  fill(expected, 20 * MiB, MiB, 0x11);
  fill(expected, 5 * MiB, 64 * 1024, 0x22);
  fill(expected, 2 * MiB, MiB, 0);
  fill(expected, 30 * MiB, 4096, 0x33);
  await qemuIo(a.uri('v1'), ['read -P 0x22 5M 64k', 'read -P 0x11 20M 1M', 'read -P 0 2M 1M']);

  // Sync mode: every write replied to has been acknowledged by b.
  const status = await a.status();
  const v1 = volumeOf(status, 'v1');
  assert.equal(v1.role, 'primary');
  assert.equal(v1.peers[0]?.node, 'b');
  assert.equal(v1.peers[0]?.ackedSeq, v1.log.lastSeq);
  assert.equal(v1.peers[0]?.disk, 'up-to-date');
  assert.equal(v1.peers[0]?.outOfSyncBytes, 0);
  assert.equal(v1.peers[0]?.connections, 2);
  const bv1 = volumeOf(await b.status(), 'v1');
  assert.equal(bv1.role, 'secondary');
  assert.equal(bv1.source?.connected, true);

  // The secondary lists the volume but sends clients to the primary.
  const refused = await run('qemu-io', ['-f', 'raw', b.uri('v1'), '-c', 'read 0 4k'], { timeoutMs: 30_000 });
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, /served by its primary, node a at 127\.0\.0\.1:\d+/);

  // The status command shows the pair as a table, and --watch redraws it until Ctrl-C.
  const table = await runOk(process.execPath, [path.resolve('bin/blockmirror.cjs'), 'status', '--admin', `http://127.0.0.1:${a.adminPort}`]);
  assert.match(table.stdout, /a\s+v1\s+64MiB\s+sync\s+primary\s+0\s+up-to-date.*-> b\s+streaming\s+up-to-date/);
  const watching = spawn(process.execPath, [path.resolve('bin/blockmirror.cjs'), 'status', '--watch', '--admin', `http://127.0.0.1:${a.adminPort}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let screens = '';
  watching.stdout.on('data', (chunk: Buffer) => (screens += chunk.toString()));
  const watchExit = new Promise<number | null>((resolve) => watching.once('exit', (code) => resolve(code)));
  for (let waited = 0; waited < 100 && (screens.match(/Ctrl-C to stop/g) ?? []).length < 2; waited += 1) await new Promise((resolve) => setTimeout(resolve, 50));
  watching.kill('SIGINT');
  assert.equal(await watchExit, 0);
  assert.ok((screens.match(/-> b\s+streaming/g) ?? []).length >= 2, 'redrawn at least twice');

  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  assertSameImage(expected, readImage(a, 'v1'), 'primary image');
  assertSameImage(expected, readImage(b, 'v1'), 'secondary image');
});

test('three-way sync on one network, with a local volume beside it that sends nothing to the peers', async () => {
  const dir = tempDir();
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }, { id: 'c' }],
    volumes: [
      { name: 'v1', size: '32MiB', replicas: ['a', 'b', 'c'], primary: 'a', mode: 'sync' },
      { name: 'loc', size: '32MiB', replicas: ['a'], primary: 'a', mode: 'local' },
    ],
  });
  const b = await startClusterNode(dir, config, 'b');
  const c = await startClusterNode(dir, config, 'c');
  const a = await startClusterNode(dir, config, 'a');
  await streaming(a, 'v1', 2);
  const before = volumeOf(await b.status(), 'v1').log.lastSeq;
  await qemuIo(a.uri('loc'), ['write -P 0x44 0 8M', 'flush']);
  await qemuIo(a.uri('v1'), ['write -P 0x55 1M 3M', 'write -f -P 0x66 10M 128k']);
  const status = await a.status();
  assert.deepEqual(volumeOf(status, 'loc').peers, []);
  const v1 = volumeOf(status, 'v1');
  for (const peer of v1.peers) assert.equal(peer.ackedSeq, v1.log.lastSeq, `peer ${peer.node} acknowledged everything`);
  // Only the v1 writes reached b: its log grew by exactly v1's entries.
  assert.equal(volumeOf(await b.status(), 'v1').log.lastSeq - before, v1.log.lastSeq - before);
  for (const node of [a, b, c]) assert.equal((await node.stop()).code, 0);
  const expected = Buffer.alloc(32 * MiB);
  fill(expected, MiB, 3 * MiB, 0x55);
  fill(expected, 10 * MiB, 128 * 1024, 0x66);
  for (const node of [a, b, c]) assertSameImage(expected, readImage(node, 'v1'), `v1 on ${node.dataSubdir}`);
  for (const node of [b, c]) assert.equal(fs.existsSync(node.imagePath('loc')), false, 'no copy of the local volume on a peer');
});

test('bidirectional and fan-in: each node is primary of one volume and secondary of others, with one log per source', async () => {
  const dir = tempDir();
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }, { id: 'c' }],
    volumes: [
      { name: 'v1', size: '16MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' },
      { name: 'v2', size: '16MiB', replicas: ['a', 'b'], primary: 'b', mode: 'sync' },
      { name: 'v3', size: '16MiB', replicas: ['c', 'b'], primary: 'c', mode: 'sync' },
    ],
  });
  const a = await startClusterNode(dir, config, 'a');
  const b = await startClusterNode(dir, config, 'b');
  const c = await startClusterNode(dir, config, 'c');
  await streaming(a, 'v1', 1);
  await streaming(b, 'v2', 1);
  await streaming(c, 'v3', 1);
  await Promise.all([
    qemuIo(a.uri('v1'), ['write -P 0x71 0 2M', 'flush']),
    qemuIo(b.uri('v2'), ['write -P 0x72 1M 2M', 'flush']),
    qemuIo(c.uri('v3'), ['write -P 0x73 2M 2M', 'flush']),
  ]);
  // b holds a separate log for each source it mirrors from.
  assert.ok(fs.existsSync(path.join(b.dataDir, 'peers', 'a', 'v1', 'superblock.json')));
  assert.ok(fs.existsSync(path.join(b.dataDir, 'peers', 'c', 'v3', 'superblock.json')));
  assert.ok(fs.existsSync(path.join(a.dataDir, 'peers', 'b', 'v2', 'superblock.json')));
  for (const node of [a, b, c]) assert.equal((await node.stop()).code, 0);
  const cases: [string, TestNode, TestNode, number, number][] = [
    ['v1', a, b, 0, 0x71],
    ['v2', b, a, MiB, 0x72],
    ['v3', c, b, 2 * MiB, 0x73],
  ];
  for (const [name, primary, secondary, offset, byte] of cases) {
    const expected = Buffer.alloc(16 * MiB);
    fill(expected, offset, 2 * MiB, byte);
    assertSameImage(expected, readImage(primary, name), `${name} on its primary`);
    assertSameImage(expected, readImage(secondary, name), `${name} on its secondary`);
  }
});

test('async converges; a logship image changes only at the source\'s consistency points', async () => {
  const dir = tempDir();
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }],
    volumes: [
      { name: 'va', size: '16MiB', replicas: ['a', 'b'], primary: 'a', mode: 'async' },
      { name: 'vl', size: '16MiB', replicas: ['a', 'b'], primary: 'a', mode: 'logship' },
    ],
    // No timed consistency point during the test: the only one is at the clean stop.
    log: { partitionSize: '4MiB', partitions: 3, cpIntervalMs: 600_000 },
  });
  const b = await startClusterNode(dir, config, 'b');
  const a = await startClusterNode(dir, config, 'a');
  await streaming(a, 'va', 1);
  await streaming(a, 'vl', 1);
  await qemuIo(a.uri('va'), ['write -P 0x81 0 1M', 'write -P 0x82 4M 1M']);
  await qemuIo(a.uri('vl'), ['write -P 0x91 0 1M', 'write -P 0x92 4M 1M']);
  const lastSeq = volumeOf(await a.status(), 'vl').log.lastSeq;
  // Every logship entry has reached b's per-source log...
  await b.waitStatus('logship entries stored', (status) => volumeOf(status, 'vl').source?.storedSeq === lastSeq);
  // ...but its image is still the point-in-time copy of the last CP: all zeroes.
  const image = readImage(b, 'vl');
  assert.equal(image.subarray(0, MiB).every((byte) => byte === 0), true, 'logship image unchanged before the CP');
  assert.equal(image.subarray(4 * MiB, 5 * MiB).every((byte) => byte === 0), true);
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  for (const [name, first, second] of [
    ['va', 0x81, 0x82],
    ['vl', 0x91, 0x92],
  ] as const) {
    const expected = Buffer.alloc(16 * MiB);
    fill(expected, 0, MiB, first);
    fill(expected, 4 * MiB, MiB, second);
    assertSameImage(expected, readImage(a, name), `${name} on a`);
    assertSameImage(expected, readImage(b, name), `${name} on b after the final CP`);
  }
});

test('a peer with the wrong secret is refused and never receives data; garbage on the replication port is counted', async () => {
  const dir = tempDir();
  const spec = {
    nodes: [{ id: 'a' }, { id: 'b' }],
    volumes: [{ name: 'v1', size: '16MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' as const }],
  };
  const config = await writeClusterConfig(dir, spec);
  // b's file differs only in the secret (and so in nothing a port scan would show).
  const other = path.join(dir, 'other.yaml');
  fs.writeFileSync(other, fs.readFileSync(config, 'utf8').replace('secret: test-secret-123', 'secret: other-secret-456'));
  const b = await startClusterNode(dir, other, 'b');
  const a = await startClusterNode(dir, config, 'a');
  await qemuIo(a.uri('v1'), ['write -P 0xa5 0 4M', 'flush']);
  await b.waitStatus('a refusal counted', (status) => (status.counters['peerRefusals'] ?? 0) > 0);
  const refusal = b.records().find((record) => record['msg'] === 'peer connection refused');
  assert.match(String(refusal?.['reason']), /could not verify your proof: wrong cluster secret/);
  const failure = a.records().find((record) => record['msg'] === 'peer connection failed');
  assert.match(String(failure?.['problem']), /node b failed to authenticate: wrong cluster secret/);
  assert.notEqual(volumeOf(await a.status(), 'v1').peers[0]?.replication, 'streaming');
  // Their heartbeats do not authenticate either: each side drops and counts the other's.
  await a.waitStatus('b\'s heartbeats dropped', (status) => (status.counters['heartbeatsDropped'] ?? 0) > 0);
  assert.ok(a.records().some((record) => record['msg'] === 'heartbeat failed authentication (a different cluster secret?)'));
  assert.equal(volumeOf(await b.status(), 'v1').log.lastSeq, 0, 'no entry reached b');

  // Bytes that are not a frame close the connection and are counted.
  const replicationPort = Number(/replication: 127\.0\.0\.1:(\d+)\n    admin: 127\.0\.0\.1:0\n    dataDir: \.\/data-b/.exec(fs.readFileSync(config, 'utf8'))?.[1]);
  const garbage = net.connect({ host: '127.0.0.1', port: replicationPort });
  await new Promise<void>((resolve) => garbage.once('connect', () => resolve()));
  garbage.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  await new Promise<void>((resolve) => garbage.once('close', () => resolve()));
  await b.waitStatus('the bad frame counted', (status) => (status.counters['peerProtocolErrors'] ?? 0) > 0);

  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  assert.equal(readImage(b, 'v1').every((byte) => byte === 0), true, 'b\'s image holds nothing from a');
  assert.equal(readImage(a, 'v1').subarray(0, 4 * MiB).every((byte) => byte === 0xa5), true);
});

test('a strict volume fails writes while a replica is away and takes them once it streams', async () => {
  const dir = tempDir();
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }],
    volumes: [{ name: 'v1', size: '16MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync', strict: true }],
  });
  const a = await startClusterNode(dir, config, 'a');
  const failed = await run('qemu-io', ['-f', 'raw', a.uri('v1'), '-c', 'write -P 0x01 0 64k'], { timeoutMs: 30_000 });
  assert.match(failed.stdout + failed.stderr, /Input\/output error/);
  const b = await startClusterNode(dir, config, 'b');
  await streaming(a, 'v1', 1);
  await qemuIo(a.uri('v1'), ['write -P 0x02 0 64k', 'flush']);
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  for (const node of [a, b]) {
    const image = readImage(node, 'v1');
    assert.equal(image.subarray(0, 64 * 1024).every((byte) => byte === 0x02), true, `${node.dataSubdir} has the write`);
  }
});

test('clean restarts of either node resume streaming; after a primary crash its peer is resynced, not taken back by sequence numbers', async () => {
  const dir = tempDir();
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }],
    volumes: [{ name: 'v1', size: '16MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' }],
  });
  let b = await startClusterNode(dir, config, 'b');
  let a = await startClusterNode(dir, config, 'a');
  await streaming(a, 'v1', 1);
  await qemuIo(a.uri('v1'), ['write -P 0x10 0 1M']);

  // The secondary stops cleanly and comes back; nothing was written meanwhile.
  assert.equal((await b.stop()).code, 0);
  await a.waitStatus('b disconnected', (status) => volumeOf(status, 'v1').peers[0]?.replication !== 'streaming');
  b = await startClusterNode(dir, config, 'b');
  await streaming(a, 'v1', 1);
  await qemuIo(a.uri('v1'), ['write -P 0x20 1M 1M']);

  // The primary stops cleanly and comes back.
  assert.equal((await a.stop()).code, 0);
  a = await startClusterNode(dir, config, 'a');
  await streaming(a, 'v1', 1);
  await qemuIo(a.uri('v1'), ['write -P 0x30 2M 1M', 'flush']);
  const peer = volumeOf(await a.status(), 'v1').peers[0];
  assert.equal(peer?.disk, 'up-to-date');

  // A crashed primary cannot know which of its last entries its peer holds under the
  // same sequence numbers: the peer is not taken back by comparing them. It restarts its
  // log and is resynced from the primary's dirty bitmap (the regions the crashed primary
  // replayed from its log), then streams again.
  assert.equal((await a.stop('SIGKILL')).signal, 'SIGKILL');
  a = await startClusterNode(dir, config, 'a');
  await a.waitStatus('b resynced and streaming', (status) => {
    const peer = volumeOf(status, 'v1').peers[0];
    return peer?.replication === 'streaming' && peer.disk === 'up-to-date' && peer.outOfSyncBytes === 0 && !peer.resyncNeeded;
  });
  const asked = a.records().find((record) => record['msg'] === 'peer needs a resync: it restarts its log here and is sent the regions it lacks');
  assert.equal(asked?.['peer'], 'b', 'b was brought back by a resync');
  assert.ok(a.records().some((record) => record['msg'] === 'resync done' && record['peer'] === 'b'));
  await qemuIo(a.uri('v1'), ['write -P 0x40 3M 1M', 'read -P 0x30 2M 1M']);
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  const expected = Buffer.alloc(16 * MiB);
  fill(expected, 0, MiB, 0x10);
  fill(expected, MiB, MiB, 0x20);
  fill(expected, 2 * MiB, MiB, 0x30);
  fill(expected, 3 * MiB, MiB, 0x40);
  assertSameImage(expected, readImage(a, 'v1'), 'primary image');
  assertSameImage(expected, readImage(b, 'v1'), 'secondary image after the resync');
});

test('secondaryAccess: read-only: a streaming secondary exports a read-only copy', async () => {
  const dir = tempDir();
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b', host: '127.0.0.2' }],
    volumes: [{ name: 'v1', size: '16MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync', secondaryAccess: 'read-only' }],
  });
  const b = await startClusterNode(dir, config, 'b');
  const a = await startClusterNode(dir, config, 'a');
  await streaming(a, 'v1', 1);
  await qemuIo(a.uri('v1'), ['write -P 0x5a 0 256k']);
  // Sync mode: the write was acknowledged by b before a answered, so b reads it.
  await runOk('qemu-io', ['-r', '-f', 'raw', b.uri('v1'), '-c', 'read -P 0x5a 0 256k', '-c', 'read -P 0 256k 64k'], { timeoutMs: 30_000 });
  // The export is read-only: a client that asks for write access is turned away.
  const write = await run('qemu-io', ['-f', 'raw', b.uri('v1'), '-c', 'write -P 0x01 0 4k'], { timeoutMs: 30_000 });
  assert.notEqual(write.code, 0);
  assert.match(write.stdout + write.stderr, /Permission denied|read-only/i);
  assert.equal((await a.stop()).code, 0);
  // Without its primary the copy may fall behind: it is no longer offered.
  const refused = await run('qemu-io', ['-r', '-f', 'raw', b.uri('v1'), '-c', 'read 0 4k'], { timeoutMs: 30_000 });
  assert.match(refused.stderr, /not up to date; use the primary, node a/);
  assert.equal((await b.stop()).code, 0);
  assert.equal(readImage(b, 'v1').subarray(0, 4096).every((byte) => byte === 0x5a), true, 'the refused write changed nothing');
});

test('a secondary that cannot store an entry answers with an error: the primary marks it failed and carries on', async () => {
  const dir = tempDir();
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }],
    volumes: [{ name: 'v1', size: '64MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' }],
  });
  // b's data directory is a small tmpfs: its log files fit, the image's data does not.
  const small = path.join(dir, 'data-b');
  fs.mkdirSync(small);
  await runOk('mount', ['-t', 'tmpfs', '-o', 'size=20m', 'tmpfs', small]);
  let a: TestNode | null = null;
  let b: TestNode | null = null;
  try {
    b = await startClusterNode(dir, config, 'b');
    a = await startClusterNode(dir, config, 'a');
    await streaming(a, 'v1', 1);
    await qemuIo(a.uri('v1'), ['write -P 0x61 0 16M', 'flush', 'read -P 0x61 0 16M']);
    const status = await a.waitStatus('b marked failed', (next) => volumeOf(next, 'v1').peers[0]?.disk === 'failed');
    assert.notEqual(volumeOf(status, 'v1').peers[0]?.replication, 'streaming');
    const loud = a.records().find((record) => record['msg'] === 'replica no longer counts for this volume');
    assert.equal(loud?.['level'], 'error');
    // Whichever b failed first: storing an entry, or taking a's consistency point.
    assert.match(String(loud?.['reason']), /could not (store entry|take consistency point) \d+ \(error 1\)/);
    assert.equal(volumeOf(await b.status(), 'v1').disk, 'failed');
    assert.equal((await a.stop()).code, 0);
    assert.equal(readImage(a, 'v1').subarray(0, 16 * MiB).every((byte) => byte === 0x61), true);
  } finally {
    await b?.stop('SIGKILL');
    await a?.stop('SIGKILL');
    await run('umount', [small]);
  }
});

test('a secondary that joins a volume already written gets it all by a resync, paced by resync.rateMax', async () => {
  const dir = tempDir();
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }],
    volumes: [{ name: 'v1', size: '64MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' }],
    resync: { regionSize: '128KiB', rateMax: '8MiB' },
  });
  let a = await startClusterNode(dir, config, 'a');
  await qemuIo(a.uri('v1'), ['write -P 0x21 0 16M', 'write -P 0x22 40M 8M', 'flush']);
  const alone = volumeOf(await a.status(), 'v1').peers[0];
  assert.equal(alone?.outOfSyncBytes, 24 * MiB, 'every region written while b never came is marked');
  assert.equal((await a.stop()).code, 0);
  a = await startClusterNode(dir, config, 'a');
  const b = await startClusterNode(dir, config, 'b');
  await a.waitStatus('b resynced', (status) => volumeOf(status, 'v1').peers[0]?.disk === 'up-to-date', 60_000);
  const done = a.records().find((record) => record['msg'] === 'resync done');
  assert.equal(done?.['bytes'], 24 * MiB);
  // 24 MiB at 8 MiB/s, sent 16 regions (2 MiB) at a time: the last batch may not leave
  // before 22/8 s.
  assert.ok(Number(done?.['ms']) >= 2750, `a 24 MiB resync at 8 MiB/s took ${String(done?.['ms'])} ms`);
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  const expected = Buffer.alloc(64 * MiB);
  fill(expected, 0, 16 * MiB, 0x21);
  fill(expected, 40 * MiB, 8 * MiB, 0x22);
  assertSameImage(expected, readImage(a, 'v1'), 'primary');
  assertSameImage(expected, readImage(b, 'v1'), 'the secondary that joined');
});
