// Heartbeats with real processes: a secondary frozen with SIGSTOP is cut off once its
// heartbeats stop, writes go on, and after SIGCONT it is trusted again only after its
// probation; heartbeats that flap faster than the probation never bring a peer back; 30%
// datagram loss at the default timing causes no false disconnect; forged and replayed
// datagrams are dropped and counted and never keep a silent peer alive. A primary killed
// during a resync restarts its epoch in its history (and its secondary learns it).
//
// Loss and flapping are made by a UDP relay in the harness: the primary's copy of the
// cluster file sends nothing through it, but the secondary's copy names the relay as the
// primary's replication address, so the secondary's heartbeats to the primary pass the
// relay, which drops what the test says.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import {
  killAll,
  makeTempDir,
  replicationAddress,
  runOk,
  sleep,
  startClusterNode,
  withReplicationAddress,
  writeClusterConfig,
  type NodeStatusJson,
  type TestNode,
} from '../helpers/node-process.js';
import { assertConverged } from '../helpers/mirror-checks.js';
import { Prng } from '../unit/prng.js';
import { UdpRelay } from '../helpers/udp-relay.js';

const dirs: string[] = [];
const relays: UdpRelay[] = [];
after(() => {
  killAll();
  for (const relay of relays) relay.stop();
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

const fast = { intervalMs: 100, timeoutMs: 600, probationMs: 1500 };

function peerOf(status: NodeStatusJson): NodeStatusJson['volumes'][number]['peers'][number] | undefined {
  return status.volumes.find((volume) => volume.name === 'v1')?.peers[0];
}

const streaming = (status: NodeStatusJson): boolean => peerOf(status)?.replication === 'streaming';

function messages(node: TestNode, msg: string): Record<string, unknown>[] {
  return node.records().filter((record) => record['msg'] === msg);
}

/** Waits (bounded) until the node has logged `msg` `count` times; its log reaches us through a pipe. */
async function logged(node: TestNode, msg: string, count: number): Promise<Record<string, unknown>[]> {
  for (let attempt = 0; attempt < 100 && messages(node, msg).length < count; attempt += 1) await sleep(20);
  return messages(node, msg);
}

/** A two-node sync cluster whose b→a heartbeats pass a relay the test controls. */
async function relayedPair(heartbeat = fast, size = '16MiB'): Promise<{ a: TestNode; b: TestNode; relay: UdpRelay; dir: string; config: string }> {
  const dir = makeTempDir('blockmirror-heartbeat-');
  dirs.push(dir);
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }],
    volumes: [{ name: 'v1', size, replicas: ['a', 'b'], primary: 'a', mode: 'sync' }],
    heartbeat,
  });
  const relay = new UdpRelay(replicationAddress(config, 'a'));
  relays.push(relay);
  const port = await relay.start();
  const bConfig = withReplicationAddress(config, 'a', { host: '127.0.0.1', port }, 'cluster-b.yaml');
  const b = await startClusterNode(dir, bConfig, 'b');
  const a = await startClusterNode(dir, config, 'a');
  await a.waitStatus('streaming', streaming);
  await a.waitStatus(`b's heartbeats arriving through the relay (${relay.forwarded} forwarded)`, (status) =>
    status.nodes.some((node) => node.node === 'b' && node.state === 'up'),
  );
  return { a, b, relay, dir, config };
}

test('SIGSTOP of the secondary past the timeout: cut off, writes go on; after SIGCONT, probation, catch-up, streaming', async () => {
  const { a, b } = await relayedPair();
  process.kill(b.pid, 'SIGSTOP');
  try {
    await a.waitStatus('b cut off', (status) => !streaming(status));
    assert.equal((await logged(a, 'peer down: no heartbeat', 1)).length, 1);
  } finally {
    process.kill(b.pid, 'SIGCONT');
  }
  await a.waitStatus('b streaming again', streaming);
  const down = Date.parse(String(messages(a, 'peer down: no heartbeat')[0]?.['time']));
  const up = Date.parse(String((await logged(a, 'peer up', 2)).at(-1)?.['time']));
  assert.ok(up - down >= fast.probationMs, `b trusted again ${up - down} ms after it was cut off, before its probation`);

  // A second freeze with writes during it: a sync write waits for the cut-off, then
  // completes without b; when b is back it catches up on what it missed (kept in memory
  // for it) and streams again, and both images end up identical.
  process.kill(b.pid, 'SIGSTOP');
  try {
    await runOk('qemu-io', ['-f', 'raw', a.uri('v1'), '-c', 'write -P 0x7e 0 64k', '-c', 'write -P 0x7f 1M 512k'], { timeoutMs: 30_000 });
    const writeDoneMs = Date.now();
    const cutOffMs = Date.parse(String((await logged(a, 'peer down: no heartbeat', 2))[1]?.['time']));
    assert.ok(cutOffMs <= writeDoneMs, 'the sync write was answered only once b was cut off');
    const away = peerOf(await a.status());
    assert.equal(away?.disk, 'outdated');
    assert.equal(away?.outOfSyncBytes, 64 * 1024 + 512 * 1024, 'the regions written while b was away');
    assert.equal(away?.resyncNeeded, false, 'what b lacks is still held for it');
  } finally {
    process.kill(b.pid, 'SIGCONT');
  }
  await a.waitStatus('b caught up', (status) => streaming(status) && peerOf(status)?.disk === 'up-to-date');
  const caughtUp = peerOf(await a.status());
  assert.equal(caughtUp?.ackedSeq, (await a.status()).volumes[0]?.log.lastSeq);
  assert.equal(caughtUp?.outOfSyncBytes, 0);
  await runOk('qemu-io', ['-f', 'raw', a.uri('v1'), '-c', 'write -P 0x80 2M 64k']);
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  const imageA = fs.readFileSync(a.imagePath('v1'));
  const imageB = fs.readFileSync(b.imagePath('v1'));
  assert.ok(imageA.subarray(0, 64 * 1024).every((byte) => byte === 0x7e));
  assert.ok(imageA.subarray(1024 * 1024, 1536 * 1024).every((byte) => byte === 0x7f));
  assert.ok(imageB.equals(imageA), 'b has everything a has');
});

test('a peer whose heartbeats never arrive is cut off once the timeout has passed, though its links came up; its first heartbeat brings it back', async () => {
  const dir = makeTempDir('blockmirror-heartbeat-');
  dirs.push(dir);
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }],
    volumes: [{ name: 'v1', size: '16MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' }],
    heartbeat: fast,
  });
  const relay = new UdpRelay(replicationAddress(config, 'a'));
  relays.push(relay);
  // Not one of b's heartbeats reaches a.
  relay.pass = () => false;
  const port = await relay.start();
  const b = await startClusterNode(dir, withReplicationAddress(config, 'a', { host: '127.0.0.1', port }, 'cluster-b.yaml'), 'b');
  const a = await startClusterNode(dir, config, 'a');
  // a connects at once to a peer it has not heard yet; then, having never heard it, cuts it off.
  await a.waitStatus('b cut off, never heard', (status) => status.nodes.some((node) => node.node === 'b' && node.state === 'down'));
  await a.waitStatus('b not streaming', (status) => !streaming(status));
  assert.ok(messages(a, 'peer down: no heartbeat').length >= 1);
  // A sync write completes without b.
  await runOk('qemu-io', ['-f', 'raw', a.uri('v1'), '-c', 'write -P 0x42 0 64k'], { timeoutMs: 30_000 });
  relay.pass = () => true;
  await a.waitStatus('b back and caught up', (status) => streaming(status) && peerOf(status)?.disk === 'up-to-date');
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  const imageB = fs.readFileSync(b.imagePath('v1'));
  assert.ok(imageB.subarray(0, 64 * 1024).every((byte) => byte === 0x42), 'b caught up on the write made while it was cut off');
});

test('heartbeats flapping faster than the probation keep the peer out; steady ones bring it back', async () => {
  const { a, b, relay } = await relayedPair();
  // 1000 ms through, 800 ms dropped: every gap passes the 600 ms timeout, and no run of
  // heartbeats lasts the 1500 ms probation.
  const startMs = Date.now();
  relay.pass = () => (Date.now() - startMs) % 1800 < 1000;
  await a.waitStatus('b cut off', (status) => !streaming(status));
  const ups = messages(a, 'peer up').length;
  for (let sample = 0; sample < 30; sample += 1) {
    assert.equal(streaming(await a.status()), false, 'b taken back while its heartbeats flap');
    await sleep(200);
  }
  assert.equal(messages(a, 'peer up').length, ups, 'no peer up while flapping');
  relay.pass = () => true;
  await a.waitStatus('b streaming again', streaming);
  assert.ok(relay.dropped > 0);
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
});

test('30% datagram loss at the default heartbeat timing causes no false disconnect', async () => {
  const { a, b, relay } = await relayedPair({ intervalMs: 250, timeoutMs: 2000, probationMs: 2000 });
  const prng = new Prng(30);
  relay.pass = () => prng.below(100) >= 30;
  for (let sample = 0; sample < 40; sample += 1) {
    assert.equal(streaming(await a.status()), true, 'b cut off under 30% loss');
    await sleep(200);
  }
  assert.equal(messages(a, 'peer down: no heartbeat').length, 0);
  assert.ok(relay.dropped >= 5, `the relay dropped ${relay.dropped} datagrams`);
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
});

test('forged and replayed heartbeats are dropped and counted; they never keep a silent peer alive', async () => {
  const { a, b, relay } = await relayedPair();
  await sleep(500);
  const captured = relay.seen.slice(-10);
  assert.ok(captured.length >= 5, 'the relay saw b\'s heartbeats');
  const droppedBefore = (await a.status()).counters['heartbeatsDropped'] ?? 0;
  process.kill(b.pid, 'SIGSTOP');
  let sent = 0;
  try {
    // While b is silent, its old datagrams are replayed and altered ones forged, faster
    // than b ever sent.
    const forging = setInterval(() => {
      for (const datagram of captured) {
        relay.inject(datagram);
        const forged = Buffer.from(datagram);
        forged[forged.length - 40] = (forged[forged.length - 40] ?? 0) ^ 0x01;
        relay.inject(forged);
        sent += 2;
      }
      relay.inject(Buffer.from('not a heartbeat'));
      sent += 1;
    }, 50);
    try {
      await a.waitStatus('b cut off despite the replays', (status) => !streaming(status));
    } finally {
      clearInterval(forging);
    }
    await sleep(200);
    const dropped = ((await a.status()).counters['heartbeatsDropped'] ?? 0) - droppedBefore;
    assert.ok(dropped >= sent * 0.9, `dropped ${dropped} of ${sent} forged or replayed datagrams`);
    assert.equal((await logged(a, 'peer down: no heartbeat', 1)).length, 1);
  } finally {
    process.kill(b.pid, 'SIGCONT');
  }
  await a.waitStatus('b streaming again', streaming);
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
});

/**
 * Writes `bytes` of random data to a's v1 from offset 0 while b is frozen, runs `meanwhile`
 * (still frozen), then thaws b. Returns the data written.
 */
async function writeWhileFrozen(a: TestNode, b: TestNode, dir: string, bytes: number, meanwhile: () => Promise<void>): Promise<Buffer> {
  const random = crypto.randomBytes(bytes);
  const source = `${dir}/random.bin`;
  fs.writeFileSync(source, random);
  process.kill(b.pid, 'SIGSTOP');
  try {
    await runOk('nbdcopy', [source, a.uri('v1')], { timeoutMs: 120_000 });
    await meanwhile();
  } finally {
    process.kill(b.pid, 'SIGCONT');
  }
  return random;
}

test('a secondary away for more than the primary keeps for it is resynced from the dirty bitmap, across a restart of the primary', async () => {
  const setup = await relayedPair(fast, '128MiB');
  let { a } = setup;
  const { b, dir, config } = setup;
  // 80 MiB written while b is frozen: more than the 64 MiB kept in memory for it.
  const random = await writeWhileFrozen(a, b, dir, 80 * 1024 * 1024, async () => {
    const away = peerOf(await a.status());
    assert.equal(away?.resyncNeeded, true);
    assert.equal(away?.outOfSyncBytes, 80 * 1024 * 1024);
    // The primary stops cleanly; its dirty bitmap is on disk.
    assert.equal((await a.stop()).code, 0);
  });
  a = await startClusterNode(dir, config, 'a');
  const back = await a.waitStatus(
    'b resynced',
    (status) => streaming(status) && peerOf(status)?.disk === 'up-to-date' && peerOf(status)?.outOfSyncBytes === 0,
    60_000,
  );
  assert.equal(peerOf(back)?.resyncNeeded, false);
  const done = (await logged(a, 'resync done', 1))[0];
  assert.equal(done?.['bytes'], 80 * 1024 * 1024, 'exactly the regions written while b was away were resent');
  await runOk('qemu-io', ['-f', 'raw', a.uri('v1'), '-c', 'write -P 0x3c 100M 1M']);
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  assertConverged(a, b, random);
});

test('a primary killed in the middle of a resync resumes it after its restart; the images end identical', async () => {
  const setup = await relayedPair(fast, '512MiB');
  let { a } = setup;
  const { b, dir, config } = setup;
  const random = await writeWhileFrozen(a, b, dir, 256 * 1024 * 1024, async () => {
    assert.equal(peerOf(await a.status())?.resyncNeeded, true);
  });
  // Killed as soon as the resync is seen running.
  const running = await a.waitStatus('resync running', (status) => peerOf(status)?.replication === 'resyncing', 30_000);
  assert.equal(messages(a, 'resync done').length, 0, 'the primary is killed while the resync runs');
  // Status shows the resync's progress: what is left (at most what b missed) and the rate.
  const progress = peerOf(running)?.resync;
  assert.ok(progress !== null && progress !== undefined && progress.remainingBytes <= 256 * 1024 * 1024, JSON.stringify(progress));
  assert.equal(peerOf(running)?.disk, 'inconsistent');
  assert.equal((await a.stop('SIGKILL')).signal, 'SIGKILL');
  a = await startClusterNode(dir, config, 'a');
  await a.waitStatus(
    'b resynced after the restart',
    (status) => streaming(status) && peerOf(status)?.disk === 'up-to-date' && peerOf(status)?.outOfSyncBytes === 0,
    120_000,
  );
  assert.ok(messages(a, 'resync done').length >= 1);
  // Killed, a restarted its epoch after the last entry it held (a start with restart 1),
  // and b, which followed it, learned the restart at the next HELLO.
  assert.equal(messages(a, 'primary restarted its epoch after an unclean stop: entries from here on are numbered anew').length, 1);
  const epochs = (node: TestNode): { epoch: number; primary: string; restart?: number }[] =>
    (JSON.parse(fs.readFileSync(node.imagePath('v1').replace(/\.img$/, '.epochs.json'), 'utf8')) as { epochs: { epoch: number; primary: string; restart?: number }[] }).epochs;
  const restarted = epochs(a);
  assert.deepEqual(restarted.map(({ epoch, primary, restart }) => [epoch, primary, restart ?? 0]), [[0, 'a', 0], [0, 'a', 1]]);
  assert.deepEqual(epochs(b), restarted);
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  assertConverged(a, b, random);
});
