// Online verify with real processes: `blockmirror verify` compares every region of a
// mirrored volume between the primary and its secondary while a client keeps writing,
// finds regions changed behind the system's back on the secondary's image, marks them
// out of sync, and `--repair` resyncs them from the primary. Checked is what an operator
// sees — the exit status and report of the command, the peer's state in `status` — and,
// after a clean stop, that both images are identical and hold exactly what the client
// wrote. Verify refuses what it cannot do: a logship volume, a node that is not the
// primary, a volume that does not exist.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { cliPath, killAll, makeTempDir, run, runOk, startClusterNode, writeClusterConfig, type NodeStatusJson } from '../helpers/node-process.js';
import { Prng } from '../unit/prng.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const VOLUME_BYTES = 16 * MiB;
const REGION_BYTES = 64 * KiB;

const dirs: string[] = [];
after(() => {
  killAll();
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

function peerOf(status: NodeStatusJson): NodeStatusJson['volumes'][number]['peers'][number] | undefined {
  return status.volumes.find((volume) => volume.name === 'v1')?.peers[0];
}

function verify(args: string[]): ReturnType<typeof run> {
  return run(process.execPath, [cliPath, 'verify', ...args], { timeoutMs: 120_000 });
}

/**
 * Random 4 KiB writes with a distinct fill byte each, applied to `model` in the order
 * qemu-io sends them (one after another).
 */
function writeCommands(prng: Prng, model: Buffer, count: number, firstFill: number): string[] {
  const commands: string[] = [];
  for (let index = 0; index < count; index += 1) {
    const offset = prng.below(VOLUME_BYTES / (4 * KiB)) * 4 * KiB;
    const fill = ((firstFill + index) % 250) + 1;
    model.fill(fill, offset, offset + 4 * KiB);
    commands.push('-c', `write -P ${fill} ${offset} 4k`);
  }
  return commands;
}

test('verify while a client writes: identical; then regions changed on the secondary are found, marked, and repaired', async () => {
  const dir = makeTempDir('blockmirror-verify-');
  dirs.push(dir);
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }],
    volumes: [
      { name: 'v1', size: '16MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' },
      { name: 'v2', size: '4MiB', replicas: ['a', 'b'], primary: 'a', mode: 'logship' },
    ],
  });
  const b = await startClusterNode(dir, config, 'b');
  const a = await startClusterNode(dir, config, 'a');
  await a.waitStatus('both volumes streaming', (status) => status.volumes.every((volume) => volume.peers[0]?.replication === 'streaming'));
  // The command finds v1's primary (a) in the cluster file; the nodes' admin ports were
  // chosen by the kernel, so its copy of the file names a's.
  const cliConfig = `${dir}/cluster-cli.yaml`;
  fs.writeFileSync(cliConfig, fs.readFileSync(config, 'utf8').replace(/(- id: a\n(?: {4}.*\n)*? {4}admin: 127\.0\.0\.1:)0\n/, `$1${a.adminPort}\n`));
  assert.match(fs.readFileSync(cliConfig, 'utf8'), new RegExp(`admin: 127\\.0\\.0\\.1:${a.adminPort}`));
  const prng = new Prng(0x7e41);
  const model = Buffer.alloc(VOLUME_BYTES);

  // 1. A client writes while verify runs: every region matches.
  const writeOps = (status: NodeStatusJson): number => status.volumes.find((volume) => volume.name === 'v1')?.stats['writeOps'] ?? 0;
  const writer = runOk('qemu-io', ['-f', 'raw', a.uri('v1'), ...writeCommands(prng, model, 1500, 0)], { timeoutMs: 120_000 });
  await a.waitStatus('the client writing', (status) => writeOps(status) >= 20);
  const writtenBefore = writeOps(await a.status());
  const same = await verify(['v1', '--config', cliConfig]);
  const writtenAfter = writeOps(await a.status());
  await writer;
  assert.ok(writtenAfter > writtenBefore, `the client wrote while verify ran (${writtenBefore} -> ${writtenAfter} writes)`);
  assert.equal(same.code, 0, `verify of identical replicas: ${same.stdout}${same.stderr}`);
  assert.match(same.stdout, /verify of v1: done, 16MiB of 16MiB compared in regions of 64KiB/);
  assert.match(same.stdout, /b: identical/);

  // 2. Bytes changed behind the system's back on b: one region, and a change that spans two.
  const image = fs.openSync(b.imagePath('v1'), 'r+');
  try {
    fs.writeSync(image, Buffer.alloc(4 * KiB, 0xee), 0, 4 * KiB, 5 * MiB + 100);
    fs.writeSync(image, Buffer.alloc(20, 0xef), 0, 20, 12 * MiB - 10);
  } finally {
    fs.closeSync(image);
  }
  const found = await verify(['v1', '--config', cliConfig]);
  assert.equal(found.code, 1, `verify exits 1 when regions differ: ${found.stdout}${found.stderr}`);
  assert.match(found.stdout, /b: 3 region\(s\) differ \(192KiB\)/);
  for (const offset of [5 * MiB, 12 * MiB - REGION_BYTES, 12 * MiB]) {
    assert.match(found.stdout, new RegExp(`b: offset ${offset}, ${REGION_BYTES} bytes`));
  }
  assert.match(found.stdout, /run again with --repair/);
  const marked = peerOf(await a.status());
  assert.deepEqual(
    { replication: marked?.replication, disk: marked?.disk, outOfSyncBytes: marked?.outOfSyncBytes, resyncNeeded: marked?.resyncNeeded },
    { replication: 'streaming', disk: 'inconsistent', outOfSyncBytes: 3 * REGION_BYTES, resyncNeeded: true },
    'b goes on streaming, but its copy is marked inconsistent with the regions out of sync',
  );
  // Writes go on meanwhile.
  await runOk('qemu-io', ['-f', 'raw', a.uri('v1'), ...writeCommands(prng, model, 50, 100)]);

  // 3. --repair resyncs the marked regions from a, with a client writing.
  const [moreWrites, repaired] = await Promise.all([
    runOk('qemu-io', ['-f', 'raw', a.uri('v1'), ...writeCommands(prng, model, 200, 150)], { timeoutMs: 120_000 }),
    verify(['v1', '--config', cliConfig, '--repair', '--json']),
  ]);
  assert.equal(moreWrites.code, 0);
  assert.equal(repaired.code, 1, 'the replicas did not match before the repair');
  const report = JSON.parse(repaired.stdout) as { state: string; matched: boolean; peers: { node: string; mismatchedRegions: number; repaired: boolean | null }[] };
  assert.equal(report.state, 'done');
  assert.deepEqual(report.peers.map((peer) => ({ node: peer.node, mismatchedRegions: peer.mismatchedRegions, repaired: peer.repaired })), [
    { node: 'b', mismatchedRegions: 3, repaired: true },
  ]);
  const healed = peerOf(await a.status());
  assert.deepEqual({ replication: healed?.replication, disk: healed?.disk, outOfSyncBytes: healed?.outOfSyncBytes }, {
    replication: 'streaming',
    disk: 'up-to-date',
    outOfSyncBytes: 0,
  });
  const again = await verify(['v1', '--config', cliConfig]);
  assert.equal(again.code, 0, `after the repair the replicas match: ${again.stdout}`);

  // 4. What verify refuses.
  const logship = await verify(['v2', '--config', cliConfig]);
  assert.equal(logship.code, 3);
  assert.match(logship.stderr, /v2 is logship/);
  const secondary = await verify(['v1', '--admin', `http://127.0.0.1:${b.adminPort}`]);
  assert.equal(secondary.code, 3);
  assert.match(secondary.stderr, /node b is not the primary of v1 \(a is\)/);
  const unknown = await verify(['nosuch', '--config', cliConfig]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /no volume "nosuch"/);

  assert.equal((await a.stop()).code, 0);
  assert.equal((await b.stop()).code, 0);
  const imageA = fs.readFileSync(a.imagePath('v1'));
  const imageB = fs.readFileSync(b.imagePath('v1'));
  assert.ok(imageA.equals(model), 'a holds exactly what the client wrote');
  assert.ok(imageB.equals(imageA), 'b is identical to a after the repair');
});
