// A secondary's disk replaced, with real processes: b's data directory is removed while b
// is stopped (a new, empty disk), and b is started again on it. Its primary's records say
// b was up to date, so nothing of theirs names what b lacks: b says its image is empty
// (READY's EMPTY), a resyncs all of the volume to it, and b ends with a's image byte for
// byte. Every wait is for a state the nodes report.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { makeTempDir, run, startClusterNode, testResources, vol0, writeClusterConfig, type NodeStatusJson, type TestNode } from '../helpers/node-process.js';

const { nodes: started, dirs } = testResources();

async function writeBlocks(node: TestNode, byte: number, offsets: number[]): Promise<void> {
  const commands = offsets.flatMap((offset) => ['-c', `write -f -P 0x${byte.toString(16)} ${offset} 64k`]);
  const result = await run('qemu-io', ['-f', 'raw', '-t', 'none', node.uri('vol0'), ...commands], { timeoutMs: 60_000 });
  assert.equal(result.code, 0, result.stderr);
}

test('a secondary started on a new, empty disk is resynced in full and ends with its primary\'s image', async () => {
  const dir = makeTempDir('blockmirror-replaced-');
  dirs.push(dir);
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }],
    volumes: [{ name: 'vol0', size: '64MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' }],
    heartbeat: { intervalMs: 100, timeoutMs: 600, probationMs: 600 },
    log: { partitionSize: '4MiB', partitions: 3, cpIntervalMs: 200 },
  });
  let b = await startClusterNode(dir, config, 'b');
  started.push(b);
  const a = await startClusterNode(dir, config, 'a');
  started.push(a);
  const streaming = (status: NodeStatusJson): boolean => vol0(status).peers[0]?.replication === 'streaming' && vol0(status).peers[0]?.disk === 'up-to-date';
  await a.waitStatus('b streaming', streaming);
  // Spread over the volume, more than the log holds, so that b can only get them by region.
  const offsets = Array.from({ length: 200 }, (_, index) => index * 320 * 1024);
  await writeBlocks(a, 0x5c, offsets);
  await a.waitStatus('b has it all', (status) => streaming(status) && (vol0(status).peers[0]?.durableSeq ?? 0) >= vol0(status).log.lastSeq - 1);
  assert.equal((await b.stop()).code, 0);

  // The disk is replaced: nothing of b's is left.
  fs.rmSync(b.dataDir, { recursive: true, force: true });
  b = await startClusterNode(dir, config, 'b');
  started.push(b);
  await a.waitStatus('b resynced and streaming', streaming, 60_000);
  assert.match(b.logs, /this copy is empty and its source holds entries/);
  assert.ok(a.records().some((record) => record['msg'] === 'resync done' && record['bytes'] === 64 * 1024 * 1024), 'a sent all of the volume');
  for (const node of [a, b]) assert.equal((await node.stop()).code, 0);
  assert.ok(fs.readFileSync(a.imagePath('vol0')).equals(fs.readFileSync(b.imagePath('vol0'))), 'b holds a\'s image byte for byte');
});
