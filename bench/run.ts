// `npm run bench`: blockmirror against nbdkit (file plugin) and qemu-nbd, in one run, on
// the same backing storage, with fio's nbd engine. Prints a table with the ratio of
// blockmirror to each reference server, keeps the raw fio output under bench/results/,
// and rewrites docs/benchmarks.md with the latest table.
//
// Besides fio, it measures durable writes with FUA at depth 1 and 32 (qemu-img bench; fio
// sends no FUA) and how long a node takes to recover a full log partition after SIGKILL.
//
// Environment: BENCH_RUNTIME_S (default 10), BENCH_SIZE (default 1G), BENCH_SERVERS
// (comma list, default blockmirror,nbdkit,qemu-nbd), BENCH_WORKLOADS (comma list of names,
// including fua-4k-qd1 and fua-4k-qd32), BENCH_FUA_COUNT (default 20000), BENCH_RECOVERY=0
// to skip the recovery measurement, BENCH_LOG (a YAML flow mapping for blockmirror's `log:`
// section, e.g. "{ partitionSize: 256MiB, partitions: 4 }").

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const cli = path.join(root, 'bin/blockmirror.cjs');
const workDir = path.join(root, 'bench/work');
const resultsDir = path.join(root, 'bench/results');
const runtimeS = Number(process.env['BENCH_RUNTIME_S'] ?? 10);
const sizeText = process.env['BENCH_SIZE'] ?? '1G';
const sizeBytes = parseSize(sizeText);

interface Workload {
  name: string;
  label: string;
  args: string[];
  /** Which fio direction holds the figures. */
  direction: 'read' | 'write';
  unit: 'IOPS' | 'MiB/s';
}

const workloads: Workload[] = [
  { name: 'randwrite-4k-qd32', label: '4k randwrite QD32', args: ['--rw=randwrite', '--bs=4k', '--iodepth=32'], direction: 'write', unit: 'IOPS' },
  { name: 'randread-4k-qd32', label: '4k randread QD32', args: ['--rw=randread', '--bs=4k', '--iodepth=32'], direction: 'read', unit: 'IOPS' },
  { name: 'seqwrite-1m-qd8', label: '1M seqwrite QD8', args: ['--rw=write', '--bs=1M', '--iodepth=8'], direction: 'write', unit: 'MiB/s' },
  { name: 'seqread-1m-qd8', label: '1M seqread QD8', args: ['--rw=read', '--bs=1M', '--iodepth=8'], direction: 'read', unit: 'MiB/s' },
  { name: 'write-4k-flush-qd1', label: '4k write+flush QD1', args: ['--rw=randwrite', '--bs=4k', '--iodepth=1', '--fsync=1'], direction: 'write', unit: 'IOPS' },
];

interface Figure {
  value: number;
  p50Us: number;
  p99Us: number;
}

interface ServerRun {
  server: string;
  figures: Record<string, Figure>;
  peakRssMiB: number | null;
}

/** Durable writes through qemu-img bench, which sets FUA on every write (fio cannot). */
const fuaDepths = [1, 32];
const fuaCount = Number(process.env['BENCH_FUA_COUNT'] ?? 20000);

function fuaName(depth: number): string {
  return `fua-4k-qd${depth}`;
}

function parseSize(text: string): number {
  const match = /^(\d+)([KMG]?)$/i.exec(text);
  if (match === null) throw new Error(`BENCH_SIZE: ${text} is not a size like 1G`);
  const unit = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[(match[2] ?? '').toUpperCase()] ?? 1;
  return Number(match[1]) * unit;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, child: ChildProcess, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    await sleep(50);
  }
  // A server that never came up must not outlive the run.
  child.kill('SIGKILL');
  throw new Error(`port ${port} did not open within ${timeoutMs} ms`);
}

function runTool(command: string, args: string[], timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`${command} exited ${code}: ${stderr}`));
    });
  });
}

/**
 * Writes back every dirty page on the machine before a workload starts, so no workload
 * (and no server) pays for the writeback of what an earlier one left in the page cache.
 */
function settle(): Promise<void> {
  return runTool('sync', [], 600_000);
}

function peakRssMiB(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const match = /VmHWM:\s+(\d+) kB/.exec(status);
    return match === null ? null : Math.round(Number(match[1]) / 1024);
  } catch {
    return null;
  }
}

interface Started {
  uri: string;
  child: ChildProcess;
}

async function startServer(server: string, image: string): Promise<Started> {
  const port = await freePort();
  if (server === 'nbdkit') {
    const child = spawn('nbdkit', ['-f', '-i', '127.0.0.1', '-p', String(port), 'file', image], { stdio: 'ignore' });
    await waitForPort(port, child);
    return { uri: `nbd://127.0.0.1:${port}`, child };
  }
  if (server === 'qemu-nbd') {
    const child = spawn(
      'qemu-nbd',
      ['-f', 'raw', '-b', '127.0.0.1', '-p', String(port), '-x', '', '--persistent', '--shared=16', '--aio=threads', '--cache=writeback', image],
      { stdio: 'ignore' },
    );
    await waitForPort(port, child);
    return { uri: `nbd://127.0.0.1:${port}`, child };
  }
  // blockmirror: its image lives in its data dir, on the same file system as the others.
  const dir = path.dirname(image);
  const config = path.join(dir, 'cluster.yaml');
  fs.writeFileSync(
    config,
    `cluster: bench
secret: bench-secret-123
nodes:
  - id: a
    nbd: 127.0.0.1:${port}
    replication: 127.0.0.1:0
    admin: 127.0.0.1:0
    dataDir: ${path.join(dir, 'data')}
volumes:
  - name: vol0
    size: ${sizeBytes}
    replicas: [a]
    primary: a
    mode: local
${process.env['BENCH_LOG'] !== undefined ? `log: ${process.env['BENCH_LOG']}\n` : ''}`,
  );
  const child = spawn(process.execPath, [cli, 'serve', '--config', config, '--node', 'a'], { stdio: 'ignore' });
  await waitForPort(port, child);
  return { uri: `nbd://127.0.0.1:${port}/vol0`, child };
}

async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
}

/** `qemu-img bench -w -t writethrough`: every write carries FUA. Returns IOPS. */
async function qemuBench(uri: string, depth: number): Promise<Figure> {
  const count = depth === 1 ? Math.ceil(fuaCount / 8) : fuaCount;
  const output = await new Promise<string>((resolve, reject) => {
    const child = spawn('qemu-img', ['bench', '-f', 'raw', '-w', '-t', 'writethrough', '-d', String(depth), '-s', '4096', '-c', String(count), uri], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let text = '';
    child.stdout.on('data', (chunk: Buffer) => (text += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (text += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(text);
      else reject(new Error(`qemu-img bench exited ${code}: ${text}`));
    });
  });
  const match = /Run completed in ([\d.]+) seconds/.exec(output);
  if (match === null) throw new Error(`qemu-img bench: no timing in ${output}`);
  const seconds = Number(match[1]);
  return { value: count / seconds, p50Us: 0, p99Us: 0 };
}

function fioFigure(file: string, workload: Workload): Figure {
  const output = JSON.parse(fs.readFileSync(file, 'utf8')) as {
    jobs: Record<'read' | 'write', { iops: number; bw_bytes: number; clat_ns: { percentile?: Record<string, number> } }>[];
  };
  const job = output.jobs[0];
  if (job === undefined) throw new Error(`${file}: no job`);
  const side = job[workload.direction];
  const percentiles = side.clat_ns.percentile ?? {};
  return {
    value: workload.unit === 'IOPS' ? side.iops : side.bw_bytes / 1024 ** 2,
    p50Us: (percentiles['50.000000'] ?? 0) / 1000,
    p99Us: (percentiles['99.000000'] ?? 0) / 1000,
  };
}

async function benchServer(server: string, stamp: string): Promise<ServerRun> {
  const dir = path.join(workDir, server);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(path.join(dir, 'data', 'volumes'), { recursive: true });
  // Every server gets the same file: sparse, then filled once before measuring, so
  // reads read data and writes overwrite allocated blocks.
  const image = server === 'blockmirror' ? path.join(dir, 'data', 'volumes', 'vol0.img') : path.join(dir, 'disk.img');
  if (server !== 'blockmirror') fs.writeFileSync(image, '');
  if (server !== 'blockmirror') fs.truncateSync(image, sizeBytes);
  const started = await startServer(server, image);
  const figures: Record<string, Figure> = {};
  try {
    await runTool('fio', ['--name=fill', '--ioengine=nbd', `--uri=${started.uri}`, '--rw=write', '--bs=1M', '--iodepth=8', `--size=${sizeText}`, '--output=/dev/null'], 300_000);
    const selected = (process.env['BENCH_WORKLOADS'] ?? '').split(',').filter((name) => name !== '');
    for (const workload of workloads) {
      if (selected.length > 0 && !selected.includes(workload.name)) continue;
      await settle();
      const output = path.join(resultsDir, `${stamp}-${server}-${workload.name}.json`);
      await runTool(
        'fio',
        [
          `--name=${workload.name}`,
          '--ioengine=nbd',
          `--uri=${started.uri}`,
          `--size=${sizeText}`,
          '--time_based',
          `--runtime=${runtimeS}`,
          '--ramp_time=2',
          '--output-format=json',
          `--output=${output}`,
          ...workload.args,
        ],
        (runtimeS + 60) * 1000,
      );
      figures[workload.name] = fioFigure(output, workload);
      process.stderr.write(`  ${server} ${workload.label}: ${format(figures[workload.name]?.value ?? 0)} ${workload.unit}\n`);
    }
    for (const depth of fuaDepths) {
      if (selected.length > 0 && !selected.includes(fuaName(depth))) continue;
      await settle();
      figures[fuaName(depth)] = await qemuBench(started.uri, depth);
      process.stderr.write(`  ${server} 4k FUA write QD${depth}: ${format(figures[fuaName(depth)]?.value ?? 0)} IOPS\n`);
    }
    return { server, figures, peakRssMiB: peakRssMiB(started.child.pid) };
  } finally {
    await stopServer(started.child);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

interface RecoveryFigure {
  entries: number;
  bytes: number;
  recoveryMs: number;
}

/**
 * Recovery after a crash with one full 64 MiB log partition of 4 KiB writes to replay:
 * write about 62 MiB of random 4 KiB blocks with consistency points held off, SIGKILL
 * the node, start it again and read the replay figures from its "volume opened" line.
 */
async function benchRecovery(): Promise<RecoveryFigure> {
  const dir = path.join(workDir, 'recovery');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const config = path.join(dir, 'cluster.yaml');
  fs.writeFileSync(
    config,
    `cluster: bench
secret: bench-secret-123
log: { partitionSize: 64MiB, partitions: 4, cpIntervalMs: 3600000 }
nodes:
  - { id: a, nbd: "127.0.0.1:${port}", replication: "127.0.0.1:0", admin: "127.0.0.1:0", dataDir: ${path.join(dir, 'data')} }
volumes:
  - { name: vol0, size: 1GiB, replicas: [a], primary: a, mode: local }
`,
  );
  const start = (): { child: ChildProcess; logs: () => string } => {
    let text = '';
    const child = spawn(process.execPath, [cli, 'serve', '--config', config, '--node', 'a'], { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr?.on('data', (chunk: Buffer) => (text += chunk.toString()));
    return { child, logs: () => text };
  };
  const first = start();
  try {
    await waitForPort(port, first.child, 60_000);
    await runTool(
      'fio',
      ['--name=fill-log', '--ioengine=nbd', `--uri=nbd://127.0.0.1:${port}/vol0`, '--rw=randwrite', '--bs=4k', '--iodepth=32', '--size=1G', '--io_size=62M', '--output=/dev/null'],
      300_000,
    );
  } finally {
    first.child.kill('SIGKILL');
    await new Promise<void>((resolve) => (first.child.exitCode !== null ? resolve() : first.child.once('exit', () => resolve())));
  }
  const second = start();
  try {
    await waitForPort(port, second.child, 60_000);
    const line = second
      .logs()
      .split('\n')
      .find((text) => text.includes('"volume opened"'));
    if (line === undefined) throw new Error(`no "volume opened" line: ${second.logs()}`);
    const record = JSON.parse(line) as { replayedEntries: number; replayedBytes: number; recoveryMs: number };
    return { entries: record.replayedEntries, bytes: record.replayedBytes, recoveryMs: record.recoveryMs };
  } finally {
    await stopServer(second.child);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function format(value: number): string {
  return value >= 100 ? Math.round(value).toLocaleString('en-US') : value.toFixed(1);
}

function table(runs: ServerRun[]): string {
  const names = runs.map((run) => run.server);
  const ours = runs.find((run) => run.server === 'blockmirror');
  const others = runs.filter((run) => run.server !== 'blockmirror');
  const header = ['workload', 'unit', ...names, ...others.map((run) => `blockmirror / ${run.server}`)];
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`];
  for (const workload of workloads) {
    if (!runs.some((run) => run.figures[workload.name] !== undefined)) continue;
    const cells = runs.map((run) => {
      const figure = run.figures[workload.name];
      return figure === undefined ? '-' : `${format(figure.value)} (p50 ${format(figure.p50Us)} µs, p99 ${format(figure.p99Us)} µs)`;
    });
    const ratios = others.map((run) => {
      const mine = ours?.figures[workload.name]?.value;
      const theirs = run.figures[workload.name]?.value;
      return mine === undefined || theirs === undefined || theirs === 0 ? '-' : `${(mine / theirs).toFixed(2)}x`;
    });
    lines.push(`| ${workload.label} | ${workload.unit} | ${cells.join(' | ')} | ${ratios.join(' | ')} |`);
  }
  for (const depth of fuaDepths) {
    const name = fuaName(depth);
    if (!runs.some((run) => run.figures[name] !== undefined)) continue;
    const cells = runs.map((run) => (run.figures[name] === undefined ? '-' : format(run.figures[name]?.value ?? 0)));
    const ratios = others.map((run) => {
      const mine = ours?.figures[name]?.value;
      const theirs = run.figures[name]?.value;
      return mine === undefined || theirs === undefined || theirs === 0 ? '-' : `${(mine / theirs).toFixed(2)}x`;
    });
    lines.push(`| 4k FUA write QD${depth} (qemu-img bench) | IOPS | ${cells.join(' | ')} | ${ratios.join(' | ')} |`);
  }
  const qd1 = ours?.figures[fuaName(1)]?.value;
  const qd32 = ours?.figures[fuaName(32)]?.value;
  if (qd1 !== undefined && qd32 !== undefined) {
    lines.push('', `blockmirror group commit: FUA QD32 / QD1 = ${(qd32 / qd1).toFixed(1)}x`);
  }
  if (ours !== undefined) lines.push('', `blockmirror peak RSS: ${ours.peakRssMiB ?? '?'} MiB`);
  return lines.join('\n');
}

async function main(): Promise<void> {
  fs.mkdirSync(resultsDir, { recursive: true });
  fs.mkdirSync(workDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const servers = (process.env['BENCH_SERVERS'] ?? 'blockmirror,nbdkit,qemu-nbd').split(',');
  const runs: ServerRun[] = [];
  for (const server of servers) {
    process.stderr.write(`benchmarking ${server} (${sizeText}, ${runtimeS} s per workload)\n`);
    runs.push(await benchServer(server, stamp));
  }
  let recovery: RecoveryFigure | null = null;
  if (servers.includes('blockmirror') && process.env['BENCH_RECOVERY'] !== '0') {
    process.stderr.write('measuring recovery of a full 64 MiB log partition of 4k writes\n');
    recovery = await benchRecovery();
  }
  let text = table(runs);
  if (recovery !== null) {
    text +=
      `\n\nRecovery after SIGKILL with a full 64 MiB log partition of 4 KiB writes: ${recovery.entries} entries ` +
      `(${format(recovery.bytes / 1024 ** 2)} MiB) replayed in ${recovery.recoveryMs} ms.`;
  }
  process.stdout.write(text + '\n');
  const summary = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? '', memoryGiB: Math.round(os.totalmem() / 1024 ** 3), kernel: os.release() },
    runtimeS,
    sizeBytes,
    runs,
    recovery,
  };
  fs.writeFileSync(path.join(resultsDir, `${stamp}-summary.json`), JSON.stringify(summary, null, 2) + '\n');
  fs.writeFileSync(
    path.join(root, 'docs/benchmarks.md'),
    `# Benchmarks

Latest \`npm run bench\` (${summary.date.slice(0, 10)}): ${summary.machine.cpus} cores (${summary.machine.cpuModel}),
${summary.machine.memoryGiB} GiB, Linux ${summary.machine.kernel}. One fio job with the \`nbd\` engine on loopback, a
${sizeText} file on the same ext4 file system for every server, filled once before measuring; ${runtimeS} s per
workload after 2 s of ramp, each starting after a \`sync\` so none pays for another's writeback. blockmirror serves a \`mode: local\` volume with its write log (the default 4 × 64 MiB
partitions, a consistency point every 5 s) on the same file system; nbdkit runs the \`file\` plugin with its
defaults; qemu-nbd runs with \`--cache=writeback --aio=threads --shared=16\`. Figures are fio's, latencies are
completion latencies. The FUA rows come from \`qemu-img bench -w -t writethrough -s 4096\`, which sets FUA
on every write (fio's nbd engine cannot). Raw fio JSON for every run is in \`bench/results/\`.

${text}

Run it yourself with \`npm run bench\` (\`BENCH_RUNTIME_S\`, \`BENCH_SIZE\`, \`BENCH_SERVERS\` and
\`BENCH_WORKLOADS\` narrow it). The machine has two cores shared by fio and the server, so figures move by
±10–20% between runs; compare ratios from the same run. What the write log costs, and what was measured
and changed because of it, is in [performance.md](performance.md).
`,
  );
}

main().catch((error: unknown) => {
  process.stderr.write(`bench: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
