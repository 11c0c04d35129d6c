// Outages of the replication link with real processes: a secondary SIGKILLed while a
// client writes comes back and catches up from the primary's log files (it missed more
// than is kept in memory, less than the log's retention); a partition (nftables drops
// every packet between the two replication addresses) that outlasts the retention ends in
// a bitmap resync; and a link that flaps (seeded cuts and heals) during a resync, while
// the client writes to the very regions being resynced, still ends with identical images.
//
// Each test writes unique data and checks, after a clean stop of both nodes, that the
// primary's image holds exactly what the client wrote and the secondary's is identical.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { killAll, makeTempDir, runOk, sleep, startClusterNode, writeClusterConfig, type LogSpec, type NodeStatusJson, type TestNode } from '../helpers/node-process.js';
import { NftPartition } from '../helpers/nft-partition.js';
import { assertConverged } from '../helpers/mirror-checks.js';
import { Prng } from '../unit/prng.js';
import { DirtyBitmap } from '../../src/core/dirty-bitmap.js';

const MiB = 1024 * 1024;
const dirs: string[] = [];
const partitions: NftPartition[] = [];
after(async () => {
  killAll();
  for (const partition of partitions) await partition.remove();
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

const fast = { intervalMs: 100, timeoutMs: 600, probationMs: 1500 };
/** The replication link: a dedicated pair of loopback addresses the partition cuts. */
const A_LINK = '127.0.0.2';
const B_LINK = '127.0.0.4';

function peerOf(status: NodeStatusJson): NodeStatusJson['volumes'][number]['peers'][number] | undefined {
  return status.volumes.find((volume) => volume.name === 'v1')?.peers[0];
}

const upToDate = (status: NodeStatusJson): boolean => peerOf(status)?.replication === 'streaming' && peerOf(status)?.disk === 'up-to-date';

function messages(node: TestNode, msg: string): Record<string, unknown>[] {
  return node.records().filter((record) => record['msg'] === msg);
}

interface Pair {
  a: TestNode;
  b: TestNode;
  dir: string;
  config: string;
}

async function startPair(options: { size: string; log: LogSpec; resync?: { rateMax?: string } }): Promise<Pair> {
  const dir = makeTempDir('blockmirror-outage-');
  dirs.push(dir);
  const config = await writeClusterConfig(dir, {
    nodes: [
      { id: 'a', replicationHost: A_LINK },
      { id: 'b', replicationHost: B_LINK },
    ],
    volumes: [{ name: 'v1', size: options.size, replicas: ['a', 'b'], primary: 'a', mode: 'sync' }],
    heartbeat: fast,
    log: options.log,
    ...(options.resync === undefined ? {} : { resync: options.resync }),
  });
  const b = await startClusterNode(dir, config, 'b');
  const a = await startClusterNode(dir, config, 'a');
  await a.waitStatus('b streaming', upToDate);
  return { a, b, dir, config };
}

function randomFile(dir: string, bytes: number): { path: string; data: Buffer } {
  const data = crypto.randomBytes(bytes);
  const file = `${dir}/random-${bytes}.bin`;
  fs.writeFileSync(file, data);
  return { path: file, data };
}

test('a secondary SIGKILLed during writes misses more than memory keeps: after its restart it catches up from the log files, no resync', async () => {
  // 20 partitions of 8 MiB: 144 MiB of retention, above the 64 MiB kept in memory.
  const { a, b: first, dir, config } = await startPair({ size: '128MiB', log: { partitionSize: '8MiB', partitions: 20, cpIntervalMs: 1000 } });
  const { path: source, data } = randomFile(dir, 96 * MiB);
  // b is killed while the first 16 MiB are being written; then all 96 MiB are written, so
  // that what b misses is past the memory bound however late the kill landed.
  const head = `${dir}/head.bin`;
  fs.writeFileSync(head, data.subarray(0, 16 * MiB));
  const writeBytes = (status: NodeStatusJson): number => status.volumes[0]?.stats['writeBytes'] ?? 0;
  const copy = runOk('nbdcopy', [head, a.uri('v1')], { timeoutMs: 120_000 });
  await a.waitStatus('4 MiB written', (status) => writeBytes(status) >= 4 * MiB);
  process.kill(first.pid, 'SIGKILL');
  await first.exited;
  await copy;
  await runOk('nbdcopy', [source, a.uri('v1')], { timeoutMs: 120_000 });
  const away = peerOf(await a.status());
  assert.equal(away?.resyncNeeded, false, 'the log still holds what b lacks');
  assert.ok((away?.outOfSyncBytes ?? 0) > 64 * MiB, `b missed more than memory keeps (${away?.outOfSyncBytes} bytes)`);

  const b = await startClusterNode(dir, config, 'b');
  await a.waitStatus('b caught up', upToDate, 60_000);
  const caughtUp = messages(a, 'peer caught up from the log');
  assert.equal(caughtUp.length, 1, 'b caught up from the log files once');
  assert.ok(Number(caughtUp[0]?.['bytes']) > 64 * MiB, `entries read back from the log: ${String(caughtUp[0]?.['bytes'])} bytes`);
  assert.deepEqual(messages(a, 'resync started'), [], 'no resync');
  assert.equal(peerOf(await a.status())?.outOfSyncBytes, 0);
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  assertConverged(a, b, data);
});

test('a partition of the replication link past the log retention: writes go on, then a bitmap resync', async () => {
  // 6 partitions of 4 MiB: 16 MiB of retention; 80 MiB written is past it and past memory.
  const { a, b, dir } = await startPair({ size: '128MiB', log: { partitionSize: '4MiB', partitions: 6, cpIntervalMs: 1000 } });
  const partition = new NftPartition(A_LINK, B_LINK, 'retention');
  partitions.push(partition);
  const { path: source, data } = randomFile(dir, 80 * MiB);
  await partition.cut();
  try {
    await runOk('nbdcopy', [source, a.uri('v1')], { timeoutMs: 120_000 });
    const away = await a.waitStatus('b marked for a resync', (status) => peerOf(status)?.resyncNeeded === true);
    assert.equal(peerOf(away)?.replication, 'disconnected');
    assert.equal(peerOf(away)?.outOfSyncBytes, 80 * MiB, 'the bitmap covers every region written while cut off');
    assert.ok(messages(a, 'peer down: no heartbeat').length >= 1, 'the partition was seen through the heartbeats');
  } finally {
    await partition.heal();
  }
  await a.waitStatus('b resynced', upToDate, 60_000);
  const done = messages(a, 'resync done');
  assert.equal(done.length, 1);
  assert.equal(done[0]?.['bytes'], 80 * MiB, 'exactly the regions written during the partition were resent');
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  assertConverged(a, b, data);
  await partition.remove();
});

test('the link flaps (seeded) during a resync while the client writes to the regions being resynced: nothing older overwrites newer', async () => {
  const seed = 0x0f1a9 ^ Number(process.env['BLOCKMIRROR_SEED'] ?? 0);
  const prng = new Prng(seed);
  // 72 MiB written while cut off is past what memory and the log keep: a resync, capped
  // at 8 MiB/s so that it lasts long enough for the link to flap under it.
  const { a, b, dir } = await startPair({ size: '96MiB', log: { partitionSize: '4MiB', partitions: 4, cpIntervalMs: 1000 }, resync: { rateMax: '8MiB' } });
  const partition = new NftPartition(A_LINK, B_LINK, 'flap');
  partitions.push(partition);
  const { path: source, data } = randomFile(dir, 72 * MiB);
  const model = Buffer.from(data);
  await partition.cut();
  try {
    await runOk('nbdcopy', [source, a.uri('v1')], { timeoutMs: 120_000 });
    await a.waitStatus('b marked for a resync', (status) => peerOf(status)?.resyncNeeded === true);
  } finally {
    await partition.heal();
  }
  // 'resyncing' (and its progress in the status) starts when a asks b to reset its log;
  // the region loop, what the flapping must interrupt, runs once b has done so, and logs
  // 'resync started'. A cut before that ends the reset, not the loop, and the heals that
  // follow may all be shorter than the probation.
  await a.waitStatus('the resync running', (status) => peerOf(status)?.replication === 'resyncing' && messages(a, 'resync started').length > 0, 30_000);

  // Flapping: seeded cuts of 0.7-2 s (past the 600 ms heartbeat timeout, so each one cuts
  // the peer off) and heals of 0.2-2 s for about 8 s, while 4 KiB writes with a fill byte of
  // their own land in the regions being resynced. The first cut lasts until node a has cut
  // b off, so that the resync is interrupted at least once however the timing falls.
  let flapping = true;
  const flaps = (async () => {
    const endMs = Date.now() + 8_000;
    try {
      for (let first = true; Date.now() < endMs; first = false) {
        await partition.cut();
        await sleep(prng.between(fast.timeoutMs + 100, 2000));
        if (first) await a.waitStatus('b cut off during its resync', (status) => peerOf(status)?.replication === 'disconnected');
        await partition.heal();
        await sleep(prng.between(200, 2000));
      }
    } finally {
      flapping = false;
    }
  })();
  let version = 0;
  while (flapping) {
    const commands: string[] = [];
    for (let index = 0; index < 40; index += 1) {
      const offset = prng.below((72 * MiB) / 4096) * 4096;
      version += 1;
      const fill = (version % 251) + 1;
      model.fill(fill, offset, offset + 4096);
      commands.push('-c', `write -P ${fill} ${offset} 4k`);
    }
    await runOk('qemu-io', ['-f', 'raw', a.uri('v1'), ...commands], { timeoutMs: 60_000 });
  }
  await flaps;
  await partition.heal();
  await a.waitStatus('b resynced after the flapping', upToDate, 90_000);
  assert.ok(messages(a, 'resync interrupted').length >= 1, `the flapping interrupted the resync (seed ${seed})`);
  assert.ok(version >= 40, `the client wrote during the flapping (${version} writes)`);
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  assertConverged(a, b, model);
  await partition.remove();
});

test('after a start that was not clean, every extent of the write-intent record is resent to the secondary', async () => {
  const { a: first, b, dir, config } = await startPair({ size: '64MiB', log: { partitionSize: '4MiB', partitions: 4, cpIntervalMs: 1000 } });
  // Writes in extents 2 and 5 (4 MiB each): both nodes hold them.
  await runOk('qemu-io', ['-f', 'raw', first.uri('v1'), '-c', 'write -P 0x21 8M 64k', '-c', 'write -P 0x22 20M 64k']);
  await first.waitStatus('b up to date', upToDate);
  assert.equal((await first.stop()).code, 0);
  // As a crash would leave it: the state file says the stop was not clean, and the
  // write-intent record names extents 2 and 5, where writes were in flight; the log has
  // nothing to replay; and the primary's volume file holds a write in extent 5 that no log
  // entry and no secondary has (its entry was lost in the crash).
  const mirrorDir = `${first.dataDir}/mirror`;
  const stateFile = `${mirrorDir}/v1.json`;
  const state = JSON.parse(fs.readFileSync(stateFile, 'utf8')) as { cleanStopSeq: number | null };
  fs.writeFileSync(stateFile, JSON.stringify({ ...state, cleanStopSeq: null }));
  const record = new DirtyBitmap(64 * MiB, 4 * MiB);
  record.mark(8 * MiB, 1);
  record.mark(20 * MiB, 1);
  fs.writeFileSync(`${mirrorDir}/v1.intent`, record.encode());
  const image = fs.openSync(first.imagePath('v1'), 'r+');
  try {
    fs.writeSync(image, Buffer.alloc(4096, 0x5a), 0, 4096, 21 * MiB);
  } finally {
    fs.closeSync(image);
  }
  const a = await startClusterNode(dir, config, 'a');
  await a.waitStatus('b resynced', upToDate, 60_000);
  const started = messages(a, 'resync started');
  assert.equal(started.length, 1);
  assert.equal(started[0]?.['bytes'], 8 * MiB, 'exactly extents 2 and 5');
  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  const imageA = fs.readFileSync(a.imagePath('v1'));
  assert.ok(imageA.subarray(21 * MiB, 21 * MiB + 4096).every((byte) => byte === 0x5a));
  assert.ok(fs.readFileSync(b.imagePath('v1')).equals(imageA), 'b got the write only the primary\'s volume file held');
});
