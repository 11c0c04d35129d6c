// Start-up problems with real processes (docs/operations.md, "Start-up problems").
//
// The secondary killed exactly inside the restart of its per-source log (recreateLogDirectory,
// run when the primary resets it for a resync), at each step that matters: with the new
// log half built, built but not synced, the old one moved away and the new one not yet in
// place, the new one in place, and the old one half removed. The crash point comes from
// BLOCKMIRROR_CRASH_POINT=log-recreate:<n>, which SIGKILLs the node right after the nth
// change to its files that the operation makes. Each time the node must start again
// (finishing or undoing the swap, without setting its log aside), be resynced by the
// primary, and in the end hold the same bytes as the primary. A node of the version
// before this test never started again when killed between two of those steps.
//
// A secondary whose per-source log is damaged as that version left it (a superblock
// naming partitions that are gone) starts, sets the log aside, and is resynced in full:
// also in a region its image got wrong that no bitmap of the primary names. A primary
// whose log is damaged does not start, and says what to do.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { withDeadline } from '../helpers/fuse.js';
import { cliPath, killAll, makeTempDir, run, runOk, startClusterNode, startNode, writeClusterConfig, type NodeStatusJson, type TestNode } from '../helpers/node-process.js';

const MiB = 1024 * 1024;
const dirs: string[] = [];
after(() => {
  killAll();
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

const upToDate = (status: NodeStatusJson): boolean => {
  const peer = status.volumes.find((volume) => volume.name === 'v1')?.peers[0];
  return peer?.replication === 'streaming' && peer.disk === 'up-to-date';
};

// The changes installLogDirectory makes on b, in order (DurableFiles.installDirectory): make
// v1.new; per partition, create it, write 1 MiB of zeroes in 64 KiB pieces, sync it; the
// trail (create, write, sync) and the superblock (the same); sync v1.new; rename v1 to
// v1.old; rename v1.new to v1; sync the parent; remove v1.old (four files, the directory,
// a sync of the parent).
const PARTITIONS = 2;
const PIECES = MiB / (64 * 1024);
const BUILT = 1 + PARTITIONS * (PIECES + 2) + 3 + 3;
const points: [number, string][] = [
  [1, 'the new directory made, nothing in it'],
  [1 + PIECES + 2, 'one partition of the new log written'],
  [BUILT, 'every file of the new log written, its directory not synced'],
  [BUILT + 1, 'the new log complete'],
  [BUILT + 2, 'the old log moved away, the new one not yet in place'],
  [BUILT + 3, 'the new log in place, the parent not synced'],
  [BUILT + 4, 'the new log in place, the old one not removed'],
  [BUILT + 6, 'the old log half removed'],
  [BUILT + 4 + (PARTITIONS + 2) + 2, 'the restart done'],
];

test('the secondary killed at each step of the restart of its log starts again and is resynced; the images end identical', { timeout: 300_000 }, async (t) => {
  const dir = makeTempDir('blockmirror-recreate-crash-');
  dirs.push(dir);
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }],
    volumes: [{ name: 'v1', size: '16MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' }],
    heartbeat: { intervalMs: 100, timeoutMs: 600, probationMs: 600 },
    log: { partitionSize: '1MiB', partitions: PARTITIONS, cpIntervalMs: 500 },
  });
  let b: TestNode = await startClusterNode(dir, config, 'b');
  let a: TestNode = await startClusterNode(dir, config, 'a');
  await a.waitStatus('b streaming', upToDate);
  const expected = Buffer.alloc(16 * MiB);
  for (const [index, [point, what]] of points.entries()) {
    // b runs with the crash point, streaming.
    assert.equal((await b.stop('SIGTERM')).code, 0);
    b = await startClusterNode(dir, config, 'b', { BLOCKMIRROR_CRASH_POINT: `log-recreate:${point}` });
    await a.waitStatus('b streaming', upToDate);
    const offset = ((index * 5) % 15) * MiB;
    const fill = 0x21 + index;
    await runOk('qemu-io', ['-f', 'raw', a.uri('v1'), '-c', `write -P ${fill} ${offset} 1M`], { timeoutMs: 30_000 });
    expected.fill(fill, offset, offset + MiB);
    // A primary that did not stop cleanly resets b's log for a resync when it is back.
    process.kill(a.pid, 'SIGKILL');
    await withDeadline(a.exited, 10_000, 'a exit after SIGKILL');
    a = await startClusterNode(dir, config, 'a');
    const exit = await withDeadline(b.exited, 30_000, `b killed at ${what}`);
    assert.equal(exit.signal, 'SIGKILL', `b died at the crash point (${what}): ${b.logs.slice(-1500)}`);
    assert.ok(
      b.records().some((record) => record['msg'] === 'restarting the per-source log for a resync'),
      'b was killed inside the restart of its log',
    );
    // The node starts again: it settles what the kill left, and is resynced.
    b = await startClusterNode(dir, config, 'b');
    const settled = b.records().find((record) => record['msg'] === 'log: a change of the log directory was interrupted');
    assert.equal(
      b.records().filter((record) => String(record['msg']).startsWith('per-source log damaged') || record['level'] === 'error').length,
      0,
      `nothing set aside, no error at start (${what}):\n${b.logs.slice(-2000)}`,
    );
    await a.waitStatus('b resynced', upToDate, 60_000);
    t.diagnostic(`killed after change ${point} (${what}): started again${settled === undefined ? '' : `, ${String(settled['outcome'])}`}; resynced`);
  }
  assert.equal((await a.stop('SIGTERM')).code, 0);
  assert.equal((await b.stop('SIGTERM')).code, 0);
  const imageA = fs.readFileSync(a.imagePath('v1'));
  assert.ok(imageA.equals(expected), 'a holds what the client wrote');
  assert.ok(fs.readFileSync(b.imagePath('v1')).equals(imageA), 'b holds what a holds');
});

test('a secondary whose per-source log lost its partitions starts, sets it aside, and is resynced in full', { timeout: 120_000 }, async () => {
  const dir = makeTempDir('blockmirror-damaged-log-');
  dirs.push(dir);
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }],
    volumes: [{ name: 'v1', size: '16MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' }],
    heartbeat: { intervalMs: 100, timeoutMs: 600, probationMs: 600 },
    log: { partitionSize: '1MiB', partitions: 4, cpIntervalMs: 500 },
  });
  let b = await startClusterNode(dir, config, 'b');
  const a = await startClusterNode(dir, config, 'a');
  await a.waitStatus('b streaming', upToDate);
  await runOk('qemu-io', ['-f', 'raw', a.uri('v1'), '-c', 'write -P 0x31 0 4M', '-c', 'write -P 0x32 12M 1M'], { timeoutMs: 30_000 });
  await a.waitStatus('b up to date', upToDate);
  assert.equal((await b.stop('SIGTERM')).code, 0);
  // b's image gets a region wrong that nothing on a names (as when entries b had not yet
  // made durable in its image were lost with its log), and its log loses its partitions.
  const logDir = `${b.dataDir}/peers/a/v1`;
  const image = fs.openSync(b.imagePath('v1'), 'r+');
  try {
    fs.writeSync(image, Buffer.alloc(64 * 1024, 0xee), 0, 64 * 1024, 8 * MiB);
  } finally {
    fs.closeSync(image);
  }
  for (const name of fs.readdirSync(logDir)) if (name.startsWith('partition-')) fs.rmSync(`${logDir}/${name}`);
  assert.deepEqual(fs.readdirSync(logDir).sort(), ['superblock.json', 'trail']);

  b = await startClusterNode(dir, config, 'b');
  const warning = b.records().find((record) => String(record['msg']).startsWith('per-source log damaged'));
  assert.ok(warning !== undefined, `b says its log was damaged:\n${b.logs}`);
  assert.equal(warning['dir'], logDir);
  assert.match(String(warning['problem']), /partition-0\.log is missing/);
  assert.equal(warning['setAside'], `${logDir}.damaged`);
  assert.ok(fs.existsSync(`${logDir}.damaged/superblock.json`), 'the damaged log is kept');
  await a.waitStatus('b resynced', upToDate, 60_000);
  // b's READY said its copy is inconsistent: a marked every region before it reset b's
  // log (the new log's trail, which names every region, would have made a do so too).
  const reset = a.records().filter((record) => String(record['msg']).startsWith('peer needs a resync')).at(-1);
  assert.equal(reset?.['bytes'], 16 * MiB, `a marked the whole volume for b before the reset: ${JSON.stringify(reset)}`);
  const started = a.records().filter((record) => record['msg'] === 'resync started');
  assert.equal(started.at(-1)?.['bytes'], 16 * MiB, 'every region of the volume is resent');
  assert.equal((await a.stop('SIGTERM')).code, 0);
  assert.equal((await b.stop('SIGTERM')).code, 0);
  const imageA = fs.readFileSync(a.imagePath('v1'));
  assert.ok(imageA.subarray(0, 4 * MiB).every((byte) => byte === 0x31) && imageA.subarray(8 * MiB, 9 * MiB).every((byte) => byte === 0));
  assert.ok(fs.readFileSync(b.imagePath('v1')).equals(imageA), 'b holds what a holds, the region its image got wrong too');
});

test('a primary whose log is damaged does not start: ERR_LOG_CORRUPT with what to do, exit 1, nothing changed', { timeout: 60_000 }, async () => {
  const node = await startNode({ volumes: [{ name: 'vol0', size: '16MiB' }], log: { partitionSize: '1MiB', partitions: 2, cpIntervalMs: 500 } });
  dirs.push(node.dir);
  await runOk('qemu-io', ['-f', 'raw', node.uri('vol0'), '-c', 'write -P 0x41 0 64k'], { timeoutMs: 30_000 });
  assert.equal((await node.stop('SIGTERM')).code, 0);
  const logDir = `${node.dataDir}/log/vol0`;
  fs.rmSync(`${logDir}/partition-1.log`);
  const before = fs.readdirSync(logDir).sort();
  const result = await run(process.execPath, [cliPath, 'serve', '--config', node.configPath, '--node', 'a'], { timeoutMs: 30_000 });
  assert.equal(result.code, 1, `exit 1: ${result.stderr}`);
  assert.doesNotMatch(result.stderr, /internal error/);
  assert.match(result.stderr, /partition-1\.log is missing/);
  assert.match(result.stderr, /primary of volume vol0/);
  assert.ok(result.stderr.includes(`move ${logDir} aside`), result.stderr);
  assert.deepEqual(fs.readdirSync(logDir).sort(), before, 'the log is left as it was');
  // What the message says to do works: the node starts from its image.
  fs.renameSync(logDir, `${logDir}.damaged`);
  const again = await startNode({ dir: node.dir, volumes: [{ name: 'vol0', size: '16MiB' }], log: { partitionSize: '1MiB', partitions: 2, cpIntervalMs: 500 } });
  try {
    const read = await runOk('qemu-io', ['-f', 'raw', again.uri('vol0'), '-c', 'read -P 0x41 0 64k'], { timeoutMs: 30_000 });
    assert.doesNotMatch(read.stdout, /Pattern verification failed/);
  } finally {
    assert.equal((await again.stop('SIGTERM')).code, 0);
  }
});
