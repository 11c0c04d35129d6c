// The node process and the CLI as an operator meets them: help, configuration errors
// that name the field, volume identity across restarts, signals, the admin API and the
// demo that `npm start` runs.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { cliPath, makeTempDir, run, runOk, sleep, startNode, writeConfig } from '../helpers/node-process.js';

const dirs: string[] = [];
after(() => {
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = makeTempDir();
  dirs.push(dir);
  return dir;
}

function cli(args: string[], cwd?: string) {
  return run(process.execPath, [cliPath, ...args], { timeoutMs: 30_000, ...(cwd === undefined ? {} : { cwd }) });
}

test('--help lists the subcommands; an unknown command is a usage error', async () => {
  const help = await cli(['--help']);
  assert.equal(help.code, 0);
  for (const command of ['demo', 'serve', 'status', 'check-config']) {
    assert.match(help.stdout, new RegExp(`blockmirror ${command}`));
  }
  const version = await cli(['--version']);
  assert.match(version.stdout, /^blockmirror \d+\.\d+\.\d+/);
  const unknown = await cli(['frobnicate']);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /unknown command "frobnicate"/);
  const missing = await cli(['serve', '--node', 'a']);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /--config is required/);
});

test('a bad cluster file stops serve with exit 2 and names the field', async () => {
  const dir = tempDir();
  const cases: { yaml: string; message: RegExp }[] = [
    { yaml: 'cluster: x\nsecret: s3cret-abc\nnodez: []\n', message: /nodez: unknown key/ },
    {
      yaml: `cluster: x\nsecret: s3cret-abc\nnodes:\n  - {id: a, nbd: "127.0.0.1:1", replication: "127.0.0.1:2", admin: "127.0.0.1:3", dataDir: d}\nvolumes:\n  - {name: v, size: 1GB0, replicas: [a], primary: a, mode: local}\n`,
      message: /volumes\[0\]\.size:/,
    },
    {
      yaml: `cluster: x\nsecret: s3cret-abc\nnodes:\n  - {id: a, nbd: "127.0.0.1:1", replication: "127.0.0.1:2", admin: "127.0.0.1:3", dataDir: d}\n  - {id: a, nbd: "127.0.0.1:4", replication: "127.0.0.1:5", admin: "127.0.0.1:6", dataDir: e}\n`,
      message: /nodes\[1\]\.id: duplicate node id "a"/,
    },
    {
      yaml: `cluster: x\nsecret: s3cret-abc\nnodes:\n  - {id: a, nbd: "127.0.0.1:1", replication: "127.0.0.1:1", admin: "127.0.0.1:3", dataDir: d}\n`,
      message: /nodes\[0\]\.replication: 127\.0\.0\.1:1 is already used by nodes\[0\]\.nbd/,
    },
    {
      yaml: `cluster: x\nsecret: s3cret-abc\nnodes:\n  - {id: a, nbd: "127.0.0.1:1", replication: "127.0.0.1:2", admin: "127.0.0.1:3", dataDir: d}\nvolumes:\n  - {name: v, size: 1GiB, replicas: [a, c], primary: a, mode: sync}\n`,
      message: /volumes\[0\]\.replicas\[1\]: "c" is not a node/,
    },
  ];
  for (const [index, { yaml, message }] of cases.entries()) {
    const file = path.join(dir, `bad-${index}.yaml`);
    fs.writeFileSync(file, yaml);
    const result = await cli(['serve', '--config', file, '--node', 'a']);
    assert.equal(result.code, 2, `case ${index}: ${result.stderr}`);
    assert.match(result.stderr, message, `case ${index}`);
    const check = await cli(['check-config', '--config', file]);
    assert.equal(check.code, 2, `check-config case ${index}`);
  }
  // Nothing was created for a configuration that was refused.
  assert.equal(fs.existsSync(path.join(dir, 'd')), false);
});

test('a mirrored multiPrimary volume is refused, naming the field; an unknown --node too', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'c.yaml');
  fs.writeFileSync(
    file,
    `cluster: x\nsecret: s3cret-abc\nnodes:\n  - {id: a, nbd: "127.0.0.1:0", replication: "127.0.0.1:0", admin: "127.0.0.1:0", dataDir: d}\n` +
      `  - {id: b, nbd: "127.0.0.1:0", replication: "127.0.0.1:0", admin: "127.0.0.1:0", dataDir: e}\n` +
      `volumes:\n  - {name: v, size: 1GiB, replicas: [a, b], multiPrimary: true, mode: sync}\n`,
  );
  const result = await cli(['serve', '--config', file, '--node', 'a']);
  assert.equal(result.code, 2);
  assert.match(result.stderr, /volumes\[0\]\.multiPrimary: writes on several nodes need region tokens/);
  const unknownNode = await cli(['serve', '--config', file, '--node', 'z']);
  assert.equal(unknownNode.code, 2);
  assert.match(unknownNode.stderr, /--node/);
});

test('restarting with another size is refused and the image is left as it was', async () => {
  const node = await startNode({ volumes: [{ name: 'vol0', size: '16MiB' }] });
  dirs.push(node.dir);
  await runOk('qemu-io', ['-f', 'raw', node.uri('vol0'), '-c', 'write -P 0x42 0 64k']);
  assert.deepEqual(await node.stop('SIGTERM'), { code: 0, signal: null });
  const before = fs.readFileSync(node.imagePath('vol0'));

  for (const size of ['32MiB', '8MiB']) {
    const configPath = writeConfig(node.dir, [{ name: 'vol0', size }]);
    const result = await cli(['serve', '--config', configPath, '--node', 'a']);
    assert.equal(result.code, 1, result.stderr);
    assert.match(result.stderr, /volume vol0: the cluster file says size .* but the volume was created with 16MiB \(16777216 bytes\)/);
    const after = fs.readFileSync(node.imagePath('vol0'));
    assert.equal(after.length, before.length);
    assert.ok(after.equals(before), 'image bytes changed');
  }

  const again = await startNode({ dir: node.dir, volumes: [{ name: 'vol0', size: '16MiB' }] });
  try {
    await runOk('qemu-io', ['-f', 'raw', again.uri('vol0'), '-c', 'read -P 0x42 0 64k']);
  } finally {
    assert.deepEqual(await again.stop('SIGINT'), { code: 0, signal: null });
  }
});

test('a damaged epoch history stops the start, exit 1, naming the file and what is wrong; the image is left as it was', async () => {
  const node = await startNode({ volumes: [{ name: 'vol0', size: '16MiB' }] });
  dirs.push(node.dir);
  await runOk('qemu-io', ['-f', 'raw', node.uri('vol0'), '-c', 'write -P 0x43 0 64k']);
  assert.deepEqual(await node.stop('SIGTERM'), { code: 0, signal: null });
  const epochs = path.join(node.dataDir, 'volumes', 'vol0.epochs.json');
  const good = fs.readFileSync(epochs);
  assert.deepEqual(JSON.parse(good.toString()), { epochs: [{ epoch: 0, primary: 'a', firstSeq: 1 }] });
  const before = fs.readFileSync(node.imagePath('vol0'));
  fs.writeFileSync(epochs, '{"epochs": [{"epoch": 0, "primary": "a"}]}\n');
  const configPath = writeConfig(node.dir, [{ name: 'vol0', size: '16MiB' }]);
  const result = await cli(['serve', '--config', configPath, '--node', 'a']);
  assert.equal(result.code, 1, result.stderr);
  assert.match(result.stderr, /volume vol0: .*vol0\.epochs\.json is damaged \(epoch 0 starts at undefined, not at an entry\)/);
  assert.ok(fs.readFileSync(node.imagePath('vol0')).equals(before), 'image bytes changed');
  fs.writeFileSync(epochs, good);
  const again = await startNode({ dir: node.dir, volumes: [{ name: 'vol0', size: '16MiB' }] });
  try {
    await runOk('qemu-io', ['-f', 'raw', again.uri('vol0'), '-c', 'read -P 0x43 0 64k']);
  } finally {
    assert.deepEqual(await again.stop('SIGINT'), { code: 0, signal: null });
  }
});

test('an NBD address already in use is reported, exit 1', async () => {
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  const port = (blocker.address() as net.AddressInfo).port;
  try {
    const dir = tempDir();
    const file = path.join(dir, 'c.yaml');
    fs.writeFileSync(
      file,
      `cluster: x\nsecret: s3cret-abc\nnodes:\n  - {id: a, nbd: "127.0.0.1:${port}", replication: "127.0.0.1:0", admin: "127.0.0.1:0", dataDir: d}\n` +
        `volumes:\n  - {name: v, size: 1MiB, replicas: [a], primary: a, mode: local}\n`,
    );
    const result = await cli(['serve', '--config', file, '--node', 'a']);
    assert.equal(result.code, 1);
    assert.match(result.stderr, new RegExp(`nbd address 127\\.0\\.0\\.1:${port} is already in use`));
  } finally {
    blocker.close();
  }
});

test('SIGTERM while a client writes: the node drains and exits 0, and restarts cleanly', async () => {
  const node = await startNode({ volumes: [{ name: 'vol0', size: '64MiB' }] });
  dirs.push(node.dir);
  const fio = spawn(
    'fio',
    ['--name=w', '--ioengine=nbd', `--uri=${node.uri('vol0')}`, '--rw=randwrite', '--bs=4k', '--iodepth=32', '--size=64M', '--time_based', '--runtime=30', '--output=/dev/null'],
    { stdio: 'ignore' },
  );
  const fioExited = new Promise<void>((resolve) => fio.once('exit', () => resolve()));
  try {
    // Stopped while fio's writes are under way, not before they begin.
    await node.waitStatus('fio writing', (status) => (status.volumes[0]?.stats['writeOps'] ?? 0) >= 200, 15_000);
    const started = Date.now();
    const exit = await node.stop('SIGTERM');
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.ok(Date.now() - started < 10_000, 'shutdown took longer than the drain limit');
    assert.ok(node.records().some((record) => record['msg'] === 'node stopped'));
  } finally {
    fio.kill('SIGKILL');
    await fioExited;
  }
  const again = await startNode({ dir: node.dir, volumes: [{ name: 'vol0', size: '64MiB' }] });
  await runOk('qemu-io', ['-f', 'raw', again.uri('vol0'), '-c', 'write -P 0x9 0 4k', '-c', 'read -P 0x9 0 4k']);
  assert.deepEqual(await again.stop('SIGTERM'), { code: 0, signal: null });
});

test('admin API: status JSON, Prometheus metrics, dashboard, and blockmirror status', async () => {
  const node = await startNode({ volumes: [{ name: 'vol0', size: '16MiB', description: 'first' }, { name: 'vol1', size: '8MiB' }] });
  dirs.push(node.dir);
  try {
    await runOk('qemu-io', ['-f', 'raw', node.uri('vol0'), '-c', 'write -P 1 0 4k', '-c', 'write -P 2 4k 4k', '-c', 'read 0 8k']);
    const base = `http://127.0.0.1:${node.adminPort}`;
    const status = (await (await fetch(`${base}/api/v1/status`)).json()) as {
      node: string;
      volumes: { name: string; sizeBytes: number; role: string; epoch: number; disk: string; stats: Record<string, number> }[];
    };
    assert.equal(status.node, 'a');
    const vol0 = status.volumes.find((volume) => volume.name === 'vol0');
    assert.ok(vol0 !== undefined);
    assert.equal(vol0.sizeBytes, 16 * 1024 * 1024);
    assert.equal(vol0.role, 'primary');
    assert.equal(vol0.epoch, 0);
    assert.equal(vol0.disk, 'up-to-date');
    assert.equal(vol0.stats['writeOps'], 2);
    assert.equal(vol0.stats['writeBytes'], 8192);

    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /^blockmirror_volume_write_ops_total\{node="a",volume="vol0"\} 2$/m);
    assert.match(metrics, /^blockmirror_volume_size_bytes\{node="a",volume="vol1"\} 8388608$/m);
    assert.match(metrics, /^blockmirror_volume_epoch\{node="a",volume="vol0"\} 0$/m);
    assert.match(await (await fetch(`${base}/`)).text(), /blockmirror node a/);
    assert.equal((await fetch(`${base}/nope`)).status, 404);

    const table = await runOk(process.execPath, [cliPath, 'status', '--admin', base]);
    assert.match(table.stdout, /^a\s+vol0\s+16MiB\s+local\s+primary\s+0\s+up-to-date\s+2\s+/m);
    const json = JSON.parse((await runOk(process.execPath, [cliPath, 'status', '--admin', base, '--json'])).stdout) as {
      nodes: { status: { volumes: unknown[] } }[];
    };
    assert.equal(json.nodes[0]?.status.volumes.length, 2);
  } finally {
    await node.stop();
  }
  const unreachable = await cli(['status', '--admin', `http://127.0.0.1:${node.adminPort}`]);
  assert.equal(unreachable.code, 1);
  assert.match(unreachable.stdout, /unreachable/);
});

test('a client that flushes after every write has each write synced from its reply on, and reads it back', async () => {
  const node = await startNode({ volumes: [{ name: 'vol0', size: '16MiB' }] });
  dirs.push(node.dir);
  try {
    // qemu-io sends each command and waits for its reply: write, flush, write, flush...
    // (with a writeback cache: writethrough, its default, would send every write with FUA).
    const writes = 40;
    const commands: string[] = [];
    for (let index = 0; index < writes; index += 1) commands.push('-c', `write -P ${index + 1} ${index * 8}k 4k`, '-c', 'flush');
    await runOk('qemu-io', ['-f', 'raw', '-t', 'writeback', node.uri('vol0'), ...commands]);
    const base = `http://127.0.0.1:${node.adminPort}`;
    const status = (await (await fetch(`${base}/api/v1/status`)).json()) as {
      counters: Record<string, number>;
      volumes: { name: string; stats: Record<string, number>; log: { syncsAhead: number; durableSeq: number; lastSeq: number } }[];
    };
    const vol0 = status.volumes.find((volume) => volume.name === 'vol0');
    assert.ok(vol0 !== undefined);
    assert.equal(vol0.stats['writeOps'], writes);
    // qemu-io flushes once more as it closes the image.
    assert.equal(vol0.stats['flushOps'], writes + 1);
    // The first two write+flush pairs teach the volume the pattern; every later write
    // starts the log sync once its reply has left.
    assert.equal(vol0.log.syncsAhead, writes - 2);
    assert.equal(vol0.log.durableSeq, vol0.log.lastSeq);
    assert.equal(typeof status.counters['busyPollHits'], 'number');
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /^blockmirror_log_syncs_ahead_total\{node="a",volume="vol0"\} 38$/m);
    assert.match(metrics, /^blockmirror_busy_poll_hits_total\{node="a"\} \d+$/m);
    const reads: string[] = [];
    for (let index = 0; index < writes; index += 1) reads.push('-c', `read -P ${index + 1} ${index * 8}k 4k`, '-c', `read -P 0 ${index * 8 + 4}k 4k`);
    await runOk('qemu-io', ['-f', 'raw', '-r', node.uri('vol0'), ...reads]);
  } finally {
    await node.stop();
  }
});

test('demo (what npm start runs): two nodes mirror vol0, and both stop cleanly on SIGINT with identical images', async () => {
  const dir = tempDir();
  const demo = spawn(process.execPath, [cliPath, 'demo', '--dir', path.join(dir, 'demo')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  demo.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  demo.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => demo.once('exit', (code) => resolve(code)));
  try {
    const deadline = Date.now() + 30_000;
    while (!output.includes('Press Ctrl-C') && Date.now() < deadline && demo.exitCode === null) await sleep(50);
    // The URI is printed once b streams.
    assert.match(output, /volume vol0 \(1GiB, sync-mirrored to b\): nbd:\/\/127\.0\.0\.1:10809\/vol0/);
    assert.doesNotMatch(output, /not streaming yet/);
    await runOk('qemu-io', ['-f', 'raw', 'nbd://127.0.0.1:10809/vol0', '-c', 'write -P 0x33 0 4k', '-c', 'read -P 0x33 0 4k']);
    const info = await runOk('nbdinfo', ['--size', 'nbd://127.0.0.1:10809/vol0']);
    assert.equal(info.stdout.trim(), String(1024 ** 3));
  } finally {
    demo.kill('SIGINT');
  }
  assert.equal(await exited, 0);
  for (const node of ['a', 'b']) {
    const image = fs.readFileSync(path.join(dir, 'demo', 'data', node, 'volumes', 'vol0.img'), { flag: 'r' }).subarray(0, 8192);
    assert.ok(image.subarray(0, 4096).every((byte) => byte === 0x33), `node ${node} has the write`);
    assert.ok(image.subarray(4096).every((byte) => byte === 0), `node ${node} has nothing else`);
  }
});
