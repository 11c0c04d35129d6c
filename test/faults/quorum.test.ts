// Quorum with a witness, with real processes and real partitions (nftables: a table of
// this process's own, removed after; see helpers/nft-partition.ts). Nodes a and b hold
// vol0 in sync mode with `quorum: majority`; w is a witness (no data). Every wait is for a
// state the nodes report, never for a time.
//
// 1. a cut off from b and w at once: a stops acknowledging (a write through it is held),
//    b is promoted without --force (it and w are a majority, w no longer hears a), and
//    when the partition heals a learns the newer epoch, steps down (the held write fails,
//    never acknowledged) and follows b; every write a acknowledged before reads back
//    through b, and the two images end the same.
// 2. a cut off from b only: a keeps acknowledging with w, after w has heard that b dropped
//    out; b's promotion is refused while w hears a, and still refused once a is cut off
//    from w too, since w knows b lacks writes a acknowledged. Healed, b catches up from a
//    and holds them.
// 3. The witness replaced on an empty data directory while b is down: it counts for no one
//    (a write through a is held) until it has heard a and b, and learned the newest epoch;
//    then the held write is acknowledged.
//
// Votes bind: in 1, b is promoted only once w has promised it epoch 1, and w's record says so.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { cliPath, makeTempDir, readVolumeRange, run, startClusterNode, testResources, vol0, writeClusterConfig, type TestNode } from '../helpers/node-process.js';
import { NftPartition } from '../helpers/nft-partition.js';
import { checkImage, dumpVolume, seed, Writer } from './workload.js';

const fast = { intervalMs: 100, timeoutMs: 600, probationMs: 600 };
const LINK = { a: '127.0.0.31', b: '127.0.0.32', w: '127.0.0.33' };

const { nodes: started, dirs, first } = testResources();
const partitions: NftPartition[] = [];
first.push(async () => {
  for (const partition of partitions) await partition.remove();
});

function partition(x: keyof typeof LINK, y: keyof typeof LINK): NftPartition {
  const cut = new NftPartition(LINK[x], LINK[y], `quorum_${x}${y}_${partitions.length}`);
  partitions.push(cut);
  return cut;
}

async function cluster(prefix: string): Promise<{ dir: string; a: TestNode; b: TestNode; w: TestNode }> {
  const dir = makeTempDir(prefix);
  dirs.push(dir);
  const config = await writeClusterConfig(dir, {
    nodes: [
      { id: 'a', replicationHost: LINK.a },
      { id: 'b', replicationHost: LINK.b },
      { id: 'w', replicationHost: LINK.w, witness: true },
    ],
    volumes: [{ name: 'vol0', size: '64MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync', quorum: 'majority' }],
    heartbeat: fast,
    log: { partitionSize: '4MiB', partitions: 3, cpIntervalMs: 200 },
  });
  const start = async (id: string): Promise<TestNode> => {
    const node = await startClusterNode(dir, config, id);
    started.push(node);
    return node;
  };
  const w = await start('w');
  const b = await start('b');
  const a = await start('a');
  await a.waitStatus('b streaming and a quorum of 3', (status) => {
    const volume = vol0(status);
    return volume.peers[0]?.replication === 'streaming' && volume.quorum?.have === 3;
  });
  await b.waitStatus('b knows it is in sync', (status) => vol0(status).source?.promotable === true);
  return { dir, a, b, w };
}

function cli(node: TestNode, ...args: string[]): ReturnType<typeof run> {
  return run(process.execPath, [cliPath, ...args, '--admin', `http://127.0.0.1:${node.adminPort}`], { timeoutMs: 60_000 });
}

/** qemu-io writing 4 KiB of `byte` at `offset` through `node`, with FUA. */
function writeBlock(node: TestNode, byte: number, offset: number): ReturnType<typeof run> {
  return run('qemu-io', ['-f', 'raw', '-t', 'none', node.uri('vol0'), '-c', `write -f -P 0x${byte.toString(16)} ${offset} 4k`], { timeoutMs: 60_000 });
}

function readBlock(node: TestNode, offset: number): Promise<Buffer> {
  return readVolumeRange(node, node.dir, offset);
}

test('the primary cut off from b and the witness stops acknowledging; b is promoted with the witness; healed, a steps down and follows b with nothing lost', async () => {
  const { dir, a, b, w } = await cluster('blockmirror-quorum-');
  const writer = new Writer(a.uri('vol0'), 1, 10_000_000, ['--max-writes', '300']);
  assert.equal((await writer.finish(60_000)).code, 0, writer.stderr);
  const history = path.join(dir, 'history.txt');
  fs.writeFileSync(history, writer.output);

  const ab = partition('a', 'b');
  const aw = partition('a', 'w');
  await Promise.all([ab.cut(), aw.cut()]);
  await a.waitStatus('a without quorum', (status) => vol0(status).quorum?.ok === false);
  // A write a takes now is held, never acknowledged.
  const held = writeBlock(a, 0x42, 61 * 1024 * 1024);
  await b.waitStatus('b may be promoted with w', (status) => vol0(status).quorum?.ok === true && vol0(status).source?.connected === false);
  const promoted = await cli(b, 'promote', 'vol0', '--node', 'b');
  assert.equal(promoted.code, 0, `promote: ${promoted.stdout}${promoted.stderr}`);
  await b.waitStatus('b primary with a quorum', (status) => vol0(status).role === 'primary' && vol0(status).quorum?.ok === true);
  // w promised b epoch 1, durably, before b was promoted to it; b stood for it.
  const witnessRecord = JSON.parse(fs.readFileSync(path.join(w.dataDir, 'witness', 'vol0.json'), 'utf8')) as { promise: unknown; epoch: number };
  assert.deepEqual(witnessRecord.promise, { epoch: 1, to: 'b' });
  assert.deepEqual(vol0(await b.status()).quorum?.promise, { epoch: 1, to: 'b' });
  // w's status says the same: what it knows of vol0, its promise, and that it learns no more.
  const known = (await w.status()).witness?.find((entry) => entry.volume === 'vol0');
  assert.deepEqual({ promise: known?.promise, learning: known?.learning }, { promise: { epoch: 1, to: 'b' }, learning: false });
  assert.equal((await a.status()).witness, null, 'a data node has no witness record');
  // Every write a acknowledged reads back through b.
  const dumped = path.join(dir, 'b.img');
  await dumpVolume(b, dumped);
  const report = await checkImage(null, dumped, [history], { acknowledged: 'replied' });
  assert.equal(report.failure_count, 0, `seed ${seed}: ${report.failures.join('; ')}`);
  // b takes writes (b and w are a majority).
  assert.equal((await writeBlock(b, 0x51, 62 * 1024 * 1024)).code, 0);

  await Promise.all([ab.heal(), aw.heal()]);
  const outcome = await held;
  assert.notEqual(outcome.code, 0, 'the write a held was never acknowledged');
  await a.waitStatus('a follows b', (status) => vol0(status).role === 'secondary' && vol0(status).epoch === 1 && vol0(status).source?.node === 'b', 30_000);
  await b.waitStatus('a streaming from b', (status) => vol0(status).peers[0]?.replication === 'streaming' && vol0(status).peers[0]?.disk === 'up-to-date', 60_000);
  await dumpVolume(b, dumped);
  const image = fs.readFileSync(dumped);
  assert.ok(image.subarray(61 * 1024 * 1024, 61 * 1024 * 1024 + 4096).every((byte) => byte === 0), 'the held write is nowhere');
  assert.ok(image.subarray(62 * 1024 * 1024, 62 * 1024 * 1024 + 4096).every((byte) => byte === 0x51), 'b\'s own write is there');
  for (const node of [a, b]) assert.equal((await node.stop()).code, 0);
  assert.ok(fs.readFileSync(a.imagePath('vol0')).equals(fs.readFileSync(b.imagePath('vol0'))), 'a and b hold the same image');
});

test('the primary cut off from b only keeps acknowledging with the witness; b, left behind, is never promoted, and catches up once healed', async () => {
  const { a, b } = await cluster('blockmirror-quorum-left-');
  const ab = partition('a', 'b');
  await ab.cut();
  await a.waitStatus('a dropped b and keeps a quorum with w', (status) => vol0(status).peers[0]?.replication !== 'streaming' && vol0(status).quorum?.ok === true);
  assert.equal((await writeBlock(a, 0x41, 60 * 1024 * 1024)).code, 0, 'a acknowledges with w');
  await b.waitStatus('b sees a gone', (status) => vol0(status).source?.connected === false);
  const whileHeard = await cli(b, 'promote', 'vol0', '--node', 'b');
  assert.equal(whileHeard.code, 1);
  assert.match(whileHeard.stderr, /promote refused \(ERR_NO_QUORUM\): volume vol0 has quorum: majority, and node b has no majority to be promoted with: node w still hears the primary, node a/);
  const byApi = await fetch(`http://127.0.0.1:${b.adminPort}/api/v1/volumes/vol0/promote`, { method: 'POST', body: '{}' });
  assert.equal(byApi.status, 409, 'a refusal, not a server error');
  assert.equal(((await byApi.json()) as { error: { code: string } }).error.code, 'ERR_NO_QUORUM');

  const aw = partition('a', 'w');
  await aw.cut();
  await a.waitStatus('a without quorum', (status) => vol0(status).quorum?.ok === false);
  await b.waitStatus('w no longer hears a', (status) => /last heard that node b does not hold every acknowledged write/.test(vol0(status).quorum?.reason ?? ''));
  const leftBehind = await cli(b, 'promote', 'vol0', '--node', 'b');
  assert.equal(leftBehind.code, 1);
  assert.match(leftBehind.stderr, /node w last heard that node b does not hold every acknowledged write/);
  assert.equal(vol0(await b.status()).role, 'secondary');

  await Promise.all([ab.heal(), aw.heal()]);
  await a.waitStatus('b back in sync', (status) => vol0(status).peers[0]?.replication === 'streaming' && vol0(status).peers[0]?.disk === 'up-to-date' && vol0(status).quorum?.have === 3, 60_000);
  assert.ok((await readBlock(a, 60 * 1024 * 1024)).every((byte) => byte === 0x41));
  for (const node of [a, b]) assert.equal((await node.stop()).code, 0);
  const offset = 60 * 1024 * 1024;
  assert.ok(fs.readFileSync(b.imagePath('vol0')).subarray(offset, offset + 4096).every((byte) => byte === 0x41), 'b holds the write a acknowledged while it was away');
  assert.ok(fs.readFileSync(a.imagePath('vol0')).equals(fs.readFileSync(b.imagePath('vol0'))));
});

test('a witness replaced on an empty data directory counts for no one until it has heard a and b; then a acknowledges again', async () => {
  const { a, b, w } = await cluster('blockmirror-quorum-fresh-');
  assert.equal((await b.stop()).code, 0);
  await a.waitStatus('a keeps its quorum with w', (status) => vol0(status).quorum?.ok === true && vol0(status).quorum?.have === 2);
  assert.equal((await w.stop()).code, 0);
  fs.rmSync(w.dataDir, { recursive: true, force: true });
  await a.waitStatus('a without quorum', (status) => vol0(status).quorum?.ok === false);
  const fresh = await startClusterNode(w.dir, w.configPath, 'w');
  started.push(fresh);
  // a hears the new w, which says it is learning: it counts for no one, and a write is held.
  await a.waitStatus('a hears w again', (status) => status.nodes.some((peer) => peer.node === 'w' && peer.state === 'up'));
  const held = writeBlock(a, 0x61, 63 * 1024 * 1024);
  const record = (): { learning: boolean } => JSON.parse(fs.readFileSync(path.join(fresh.dataDir, 'witness', 'vol0.json'), 'utf8')) as { learning: boolean };
  await a.waitStatus('a hears w learning, and has no quorum', (status) => status.nodes.some((peer) => peer.node === 'w' && peer.state === 'up' && peer.lastHeardAgoMs <= 200));
  assert.equal(record().learning, true, 'w has heard only a');
  const status = vol0(await a.status());
  assert.equal(status.quorum?.ok, false);
  assert.deepEqual(status.quorum?.counted, ['a']);

  const back = await startClusterNode(b.dir, b.configPath, 'b');
  started.push(back);
  const outcome = await held;
  assert.equal(outcome.code, 0, `the held write is acknowledged once w has learned: ${outcome.stderr}`);
  assert.equal(record().learning, false);
  await a.waitStatus('a counts w and b', (status) => vol0(status).quorum?.have === 3, 60_000);
  assert.ok((await readBlock(a, 63 * 1024 * 1024)).every((byte) => byte === 0x61));
});
