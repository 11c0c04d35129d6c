// Split brain with real processes and a real partition (nftables, a table of this
// process's own; see helpers/nft-partition.ts). Nodes a and b hold vol0 in sync mode with
// `quorum: off`. Each test makes the copies go separate ways the way an operator can: a
// is cut off from b and keeps acknowledging writes alone, b is promoted by force and
// takes writes too, then the partition heals. Every wait is for a state the nodes report.
//
// 1. `afterSplitBrain: disconnect`: both nodes report the split brain (status, metric),
//    a steps down and the copies stay apart while b serves; `blockmirror resolve --discard a`
//    makes a save its writes since the split and follow b; `split-brain show/extract`
//    read them back, and the images end the same, with b's writes.
// 2. `discard-younger-primary`: b (promoted later) loses without anyone asking: a takes
//    writes again in a new epoch, b saves its writes and follows a.
// 3. `discard-least-changes`, b with more writes than a: a loses at once (it is the copy
//    that finds the split brain) and follows b in the same session, its writes saved.
// 4. `discard-zero-changes`, b promoted but never written to: b loses by itself.
// 5. `disconnect`, then `resolve --discard b` (after refusals that change nothing): a,
//    which had stepped down, wins and takes writes again in a new epoch.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { cliPath, makeTempDir, run, startClusterNode, testResources, vol0, writeClusterConfig, type TestNode } from '../helpers/node-process.js';
import { NftPartition } from '../helpers/nft-partition.js';

const fast = { intervalMs: 100, timeoutMs: 600, probationMs: 600 };
const LINK = { a: '127.0.0.41', b: '127.0.0.42' };
const MiB = 1024 * 1024;

const { nodes: started, dirs, first } = testResources();
const partitions: NftPartition[] = [];
first.push(async () => {
  for (const partition of partitions) await partition.remove();
});

type Policy = 'disconnect' | 'discard-zero-changes' | 'discard-younger-primary' | 'discard-least-changes';

async function cluster(prefix: string, afterSplitBrain: Policy): Promise<{ dir: string; a: TestNode; b: TestNode; cut: NftPartition }> {
  const dir = makeTempDir(prefix);
  dirs.push(dir);
  const config = await writeClusterConfig(dir, {
    nodes: [
      { id: 'a', replicationHost: LINK.a },
      { id: 'b', replicationHost: LINK.b },
    ],
    volumes: [{ name: 'vol0', size: '64MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync', afterSplitBrain }],
    heartbeat: fast,
    log: { partitionSize: '4MiB', partitions: 3, cpIntervalMs: 200 },
  });
  const b = await startClusterNode(dir, config, 'b');
  started.push(b);
  const a = await startClusterNode(dir, config, 'a');
  started.push(a);
  await a.waitStatus('b streaming', (status) => vol0(status).peers[0]?.replication === 'streaming' && vol0(status).peers[0]?.disk === 'up-to-date');
  await b.waitStatus('b knows it is in sync', (status) => vol0(status).source?.promotable === true);
  const cut = new NftPartition(LINK.a, LINK.b, `split_${partitions.length}`);
  partitions.push(cut);
  return { dir, a, b, cut };
}

/** qemu-io writing 4 KiB blocks of `byte` at each offset through `node`, each with FUA. */
async function writeBlocks(node: TestNode, byte: number, offsets: number[]): Promise<void> {
  const commands = offsets.flatMap((offset) => ['-c', `write -f -P 0x${byte.toString(16)} ${offset} 4k`]);
  const result = await run('qemu-io', ['-f', 'raw', '-t', 'none', node.uri('vol0'), ...commands], { timeoutMs: 60_000 });
  assert.equal(result.code, 0, `writes through ${node.uri('vol0')}: ${result.stderr}`);
}

function block(image: Buffer, offset: number): Buffer {
  return image.subarray(offset, offset + 4096);
}

function filled(buffer: Buffer, byte: number): boolean {
  return buffer.length === 4096 && buffer.every((value) => value === byte);
}

function cli(...args: string[]): ReturnType<typeof run> {
  return run(process.execPath, [cliPath, ...args], { timeoutMs: 60_000 });
}

/**
 * Before the split both hold 0x10 at 0. Cut off, a acknowledges 0xa1 at `aOffsets`; b,
 * promoted by force, acknowledges 0xb2 at `bOffsets`; then the partition heals.
 */
async function diverge(a: TestNode, b: TestNode, cut: NftPartition, aOffsets: number[], bOffsets: number[]): Promise<void> {
  await writeBlocks(a, 0x10, [0]);
  await cut.cut();
  await a.waitStatus('a dropped b', (status) => vol0(status).peers[0]?.replication !== 'streaming');
  await writeBlocks(a, 0xa1, aOffsets);
  await b.waitStatus('b lost a', (status) => vol0(status).source?.connected === false);
  const promoted = await cli('promote', 'vol0', '--node', 'b', '--force', '--admin', `http://127.0.0.1:${b.adminPort}`);
  assert.equal(promoted.code, 0, `promote: ${promoted.stdout}${promoted.stderr}`);
  await b.waitStatus('b primary', (status) => vol0(status).role === 'primary' && vol0(status).epoch === 1);
  if (bOffsets.length > 0) await writeBlocks(b, 0xb2, bOffsets);
  await cut.heal();
}

/** The node's saved split-brain files (names under <dataDir>/split-brain/ ending in .log). */
function savedFiles(node: TestNode): string[] {
  const dir = path.join(node.dataDir, 'split-brain');
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).filter((name) => name.endsWith('.log')).map((name) => path.join(dir, name));
}

/** `split-brain extract` of `file` into a new file; its bytes. */
async function extracted(dir: string, file: string): Promise<Buffer> {
  const out = path.join(dir, `extracted-${path.basename(file)}.img`);
  const result = await cli('split-brain', 'extract', file, '--to', out);
  assert.equal(result.code, 0, result.stderr);
  return fs.readFileSync(out);
}

async function metricOf(node: TestNode): Promise<string | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${node.adminPort}/metrics`)).text();
  return text.split('\n').find((line) => line.startsWith('blockmirror_volume_split_brain{'));
}

test('disconnect: both sides report the split brain and stay apart; resolve --discard a saves a\'s writes, a follows b, and the images end the same', async () => {
  const { dir, a, b, cut } = await cluster('blockmirror-split-', 'disconnect');
  await diverge(a, b, cut, [1 * MiB, 2 * MiB], [1 * MiB, 20 * MiB]);

  const aSplit = await a.waitStatus('a reports the split brain', (status) => vol0(status).splitBrain !== null && vol0(status).role === 'secondary');
  const bSplit = await b.waitStatus('b reports the split brain', (status) => vol0(status).splitBrain !== null);
  const seenByA = vol0(aSplit).splitBrain ?? assert.fail();
  const seenByB = vol0(bSplit).splitBrain ?? assert.fail();
  assert.equal(seenByA.peer, 'b');
  assert.equal(seenByB.peer, 'a');
  assert.equal(seenByA.decision, 'disconnect');
  assert.equal(seenByB.decision, 'disconnect');
  assert.equal(seenByA.sharedSeq, seenByB.sharedSeq, 'both name the same fork');
  // a acknowledged two writes alone (with consistency points between, which are entries too); b two.
  assert.ok(seenByA.here.entries >= 2 && seenByB.other.entries === seenByA.here.entries, JSON.stringify({ seenByA, seenByB }));
  assert.ok(seenByB.here.entries >= 2 && seenByA.other.entries === seenByB.here.entries, JSON.stringify({ seenByA, seenByB }));
  assert.ok((seenByB.other.bytes ?? 0) > 0, 'b is told how much a changed');
  assert.equal(await metricOf(a), 'blockmirror_volume_split_brain{node="a",volume="vol0"} 1');
  assert.equal(await metricOf(b), 'blockmirror_volume_split_brain{node="b",volume="vol0"} 1');
  // Refused on both sides: a follows nobody, b mirrors to nobody; b still serves.
  assert.equal(vol0(aSplit).source, null);
  assert.notEqual(vol0(await b.status()).peers[0]?.replication, 'streaming');
  await writeBlocks(b, 0xb3, [21 * MiB]);
  assert.deepEqual(savedFiles(a), [], 'nothing discarded yet');

  // The cluster file gives the admin ports as 0 (the kernel picks them): both are given here.
  const resolved = await cli('resolve', 'vol0', '--discard', 'a', '--admin', `http://127.0.0.1:${a.adminPort}`, '--winner-admin', `http://127.0.0.1:${b.adminPort}`);
  assert.equal(resolved.code, 0, `resolve: ${resolved.stdout}${resolved.stderr}`);
  assert.match(resolved.stdout, /node a discards its \d+ entries of vol0 past entry \d+/);
  await b.waitStatus('a streaming from b', (status) => vol0(status).peers[0]?.replication === 'streaming' && vol0(status).peers[0]?.disk === 'up-to-date', 60_000);
  await a.waitStatus('a follows b, the split brain gone', (status) => vol0(status).source?.node === 'b' && vol0(status).splitBrain === null);
  assert.equal(vol0(await b.status()).splitBrain, null);
  assert.equal(await metricOf(a), 'blockmirror_volume_split_brain{node="a",volume="vol0"} 0');

  // What a saved: its writes since the split, readable by show and extract.
  const [file, ...more] = savedFiles(a);
  assert.ok(file !== undefined && more.length === 0, `one saved file: ${savedFiles(a).join(', ')}`);
  assert.equal(path.basename(file), 'vol0-0.log');
  const shown = await cli('split-brain', 'show', file, '--json');
  assert.equal(shown.code, 0, shown.stderr);
  const listing = JSON.parse(shown.stdout) as { meta: { node: string; winner: string; epoch: number; sharedSeq: number }; records: { offset: number; lengthBytes: number }[] };
  assert.deepEqual([listing.meta.node, listing.meta.winner, listing.meta.epoch, listing.meta.sharedSeq], ['a', 'b', 0, seenByA.sharedSeq]);
  const covered = (offset: number): boolean => listing.records.some((record) => record.offset <= offset && offset + 4096 <= record.offset + record.lengthBytes);
  assert.ok(covered(1 * MiB) && covered(2 * MiB), 'the records cover both of a\'s writes');
  const saved = await extracted(dir, file);
  assert.ok(filled(block(saved, 1 * MiB), 0xa1) && filled(block(saved, 2 * MiB), 0xa1), 'a\'s acknowledged writes read back from the saved file');

  for (const node of [a, b]) assert.equal((await node.stop()).code, 0);
  const image = fs.readFileSync(b.imagePath('vol0'));
  assert.ok(image.equals(fs.readFileSync(a.imagePath('vol0'))), 'a and b hold the same image');
  assert.ok(filled(block(image, 0), 0x10), 'the write before the split');
  assert.ok(filled(block(image, 1 * MiB), 0xb2) && filled(block(image, 20 * MiB), 0xb2) && filled(block(image, 21 * MiB), 0xb3), 'b\'s writes');
  assert.ok(filled(block(image, 2 * MiB), 0), 'a\'s write, discarded (it is in the saved file)');
});

test('discard-younger-primary: b, promoted later, loses by itself; a takes writes again in a new epoch and b follows it, its writes saved', async () => {
  const { dir, a, b, cut } = await cluster('blockmirror-split-younger-', 'discard-younger-primary');
  await diverge(a, b, cut, [1 * MiB], [1 * MiB, 20 * MiB]);
  await a.waitStatus('a primary again, in epoch 2', (status) => vol0(status).role === 'primary' && vol0(status).epoch === 2, 30_000);
  await a.waitStatus('b streaming from a', (status) => vol0(status).peers[0]?.replication === 'streaming' && vol0(status).peers[0]?.disk === 'up-to-date', 60_000);
  await b.waitStatus('b follows a, the split brain gone', (status) => vol0(status).source?.node === 'a' && vol0(status).splitBrain === null && vol0(status).epoch === 2);
  await writeBlocks(a, 0xa4, [30 * MiB]);

  const [file] = savedFiles(b);
  assert.ok(file !== undefined && path.basename(file) === 'vol0-1.log', `b saved its writes of epoch 1: ${savedFiles(b).join(', ')}`);
  assert.deepEqual(savedFiles(a), []);
  const saved = await extracted(dir, file);
  assert.ok(filled(block(saved, 1 * MiB), 0xb2) && filled(block(saved, 20 * MiB), 0xb2), 'b\'s acknowledged writes read back from the saved file');

  for (const node of [a, b]) assert.equal((await node.stop()).code, 0);
  const image = fs.readFileSync(a.imagePath('vol0'));
  assert.ok(image.equals(fs.readFileSync(b.imagePath('vol0'))), 'a and b hold the same image');
  assert.ok(filled(block(image, 1 * MiB), 0xa1) && filled(block(image, 30 * MiB), 0xa4), 'a\'s writes, before and after');
  assert.ok(filled(block(image, 20 * MiB), 0), 'b\'s write, discarded (it is in the saved file)');
});

test('discard-least-changes: a, with fewer writes, loses at once and follows b in the same session, its writes saved', async () => {
  const { dir, a, b, cut } = await cluster('blockmirror-split-least-', 'discard-least-changes');
  const bOffsets = Array.from({ length: 40 }, (_, index) => (20 + index) * MiB);
  await diverge(a, b, cut, [1 * MiB], bOffsets);
  await b.waitStatus('a streaming from b', (status) => vol0(status).peers[0]?.replication === 'streaming' && vol0(status).peers[0]?.disk === 'up-to-date', 60_000);
  await a.waitStatus('a follows b', (status) => vol0(status).source?.node === 'b' && vol0(status).splitBrain === null && vol0(status).epoch === 1);
  assert.equal(vol0(await b.status()).role, 'primary');

  const [file] = savedFiles(a);
  assert.ok(file !== undefined && path.basename(file) === 'vol0-0.log', `a saved its writes of epoch 0: ${savedFiles(a).join(', ')}`);
  const saved = await extracted(dir, file);
  assert.ok(filled(block(saved, 1 * MiB), 0xa1), 'a\'s acknowledged write reads back from the saved file');

  for (const node of [a, b]) assert.equal((await node.stop()).code, 0);
  const image = fs.readFileSync(b.imagePath('vol0'));
  assert.ok(image.equals(fs.readFileSync(a.imagePath('vol0'))), 'a and b hold the same image');
  assert.ok(bOffsets.every((offset) => filled(block(image, offset), 0xb2)), 'every write of b');
  assert.ok(filled(block(image, 1 * MiB), 0), 'a\'s write, discarded (it is in the saved file)');
});

test('discard-zero-changes: b, promoted but never written to, loses by itself; a takes writes again and b follows it', async () => {
  const { a, b, cut } = await cluster('blockmirror-split-zero-', 'discard-zero-changes');
  await diverge(a, b, cut, [1 * MiB], []);
  await a.waitStatus('a primary again, in epoch 2', (status) => vol0(status).role === 'primary' && vol0(status).epoch === 2, 30_000);
  await a.waitStatus('b streaming from a', (status) => vol0(status).peers[0]?.replication === 'streaming' && vol0(status).peers[0]?.disk === 'up-to-date', 60_000);
  await b.waitStatus('b follows a', (status) => vol0(status).source?.node === 'a' && vol0(status).splitBrain === null);
  for (const node of [a, b]) assert.equal((await node.stop()).code, 0);
  const image = fs.readFileSync(a.imagePath('vol0'));
  assert.ok(image.equals(fs.readFileSync(b.imagePath('vol0'))), 'a and b hold the same image');
  assert.ok(filled(block(image, 1 * MiB), 0xa1), 'a\'s write, acknowledged alone, kept');
});

test('disconnect, then resolve --discard b: a, stepped down, wins and takes writes again in a new epoch; b saves its writes and follows it', async () => {
  const { dir, a, b, cut } = await cluster('blockmirror-split-resolve-b-', 'disconnect');
  await diverge(a, b, cut, [1 * MiB], [20 * MiB]);
  await a.waitStatus('a reports the split brain', (status) => vol0(status).splitBrain !== null && vol0(status).role === 'secondary');
  await b.waitStatus('b reports the split brain', (status) => vol0(status).splitBrain !== null);
  // Refusals that change nothing: a name outside the split brain, and a bad body.
  const other = await cli('resolve', 'vol0', '--discard', 'c', '--admin', `http://127.0.0.1:${a.adminPort}`, '--winner-admin', `http://127.0.0.1:${b.adminPort}`);
  assert.equal(other.code, 1);
  assert.match(other.stderr, /node c finds no split brain of vol0|the split brain of vol0 on node \w is with node \w, not c|cannot reach node c/);
  const bad = await fetch(`http://127.0.0.1:${a.adminPort}/api/v1/volumes/vol0/resolve`, { method: 'POST', body: '{"discard": 3}' });
  assert.equal(bad.status, 400);
  const wrong = await fetch(`http://127.0.0.1:${a.adminPort}/api/v1/volumes/vol0/resolve`, { method: 'POST', body: '{"discard": "c"}' });
  assert.equal(wrong.status, 409);
  assert.match(((await wrong.json()) as { error: { message: string } }).error.message, /the split brain of vol0 on node a is with node b, not c/);
  assert.equal(vol0(await a.status()).splitBrain?.decision, 'disconnect', 'nothing changed');

  const resolved = await cli('resolve', 'vol0', '--discard', 'b', '--admin', `http://127.0.0.1:${b.adminPort}`, '--winner-admin', `http://127.0.0.1:${a.adminPort}`, '--json');
  assert.equal(resolved.code, 0, `resolve: ${resolved.stdout}${resolved.stderr}`);
  const done = (JSON.parse(resolved.stdout) as { done: { node: string; discards: boolean; winner: string }[] }).done;
  assert.deepEqual(done.map((result) => [result.node, result.discards, result.winner]), [['b', true, 'a'], ['a', false, 'a']]);
  await a.waitStatus('a primary again, in epoch 2', (status) => vol0(status).role === 'primary' && vol0(status).epoch === 2, 30_000);
  await a.waitStatus('b streaming from a', (status) => vol0(status).peers[0]?.replication === 'streaming' && vol0(status).peers[0]?.disk === 'up-to-date', 60_000);
  const [file] = savedFiles(b);
  assert.ok(file !== undefined && path.basename(file) === 'vol0-1.log', `b saved its writes: ${savedFiles(b).join(', ')}`);
  assert.ok(filled(block(await extracted(dir, file), 20 * MiB), 0xb2));
  for (const node of [a, b]) assert.equal((await node.stop()).code, 0);
  const image = fs.readFileSync(a.imagePath('vol0'));
  assert.ok(image.equals(fs.readFileSync(b.imagePath('vol0'))), 'a and b hold the same image');
  assert.ok(filled(block(image, 1 * MiB), 0xa1) && filled(block(image, 20 * MiB), 0), 'a\'s write kept, b\'s discarded');
});
