// `npm run bench`: blockmirror against nbdkit (file plugin) and qemu-nbd, in one run, on
// the same backing storage, with fio's nbd engine. Prints a table with the ratio of
// blockmirror to each reference server, keeps the raw fio output under bench/results/,
// and rewrites docs/benchmarks.md with the latest table.
//
// `blockmirror` is a `mode: local` volume on one node. `blockmirror-sync` and
// `blockmirror-async` are the same volume mirrored from node a to node b, two `blockmirror
// serve` processes on this machine linked over loopback TCP; the clients talk to node a.
//
// Besides fio, it measures durable writes with FUA at depth 1 and 32 (qemu-img bench; fio
// sends no FUA), how long a node takes to recover a full log partition after SIGKILL, and,
// for the mirrored servers, the CPU time both nodes spend per MiB written.
//
// Environment: BENCH_RUNTIME_S (default 10), BENCH_SIZE (default 1G), BENCH_SERVERS
// (comma list, default blockmirror,blockmirror-sync,blockmirror-async,nbdkit,qemu-nbd),
// BENCH_WORKLOADS (comma list of names, including fua-4k-qd1 and fua-4k-qd32),
// BENCH_FUA_COUNT (default 20000), BENCH_RECOVERY=0 to skip the recovery measurement,
// BENCH_LOG (a YAML flow mapping for blockmirror's `log:` section, e.g.
// "{ partitionSize: 256MiB, partitions: 4 }"; every blockmirror server uses it).

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
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

/** The mirrored servers, and the mode of their volume. */
const mirrorModes: Record<string, 'sync' | 'async'> = { 'blockmirror-sync': 'sync', 'blockmirror-async': 'async' };
/** How long node b may take to catch up with node a before a workload starts. */
const catchUpTimeoutMs = 120_000;
/** The workload in which the mirrored servers' CPU time per MiB written is measured. */
const cpuWorkloadName = 'seqwrite-1m-qd8';
/** /proc/<pid>/stat counts CPU time in clock ticks of this length. */
const clockTicksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());

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
  /** Of the server's process; of node a for a mirrored server. */
  peakRssMiB: number | null;
  /** Of node b, for a mirrored server. */
  secondaryPeakRssMiB: number | null;
  /** CPU time of node a and node b per MiB written in the 1M seqwrite workload, for a mirrored server. */
  cpuMsPerMiB: { a: number; b: number } | null;
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

function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
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
  /** The server's process; node a's for a mirrored server. */
  child: ChildProcess;
  mirror: Mirror | null;
}

/** blockmirror's `log:` section from BENCH_LOG, for every blockmirror server's cluster file. */
function logSection(): string {
  return process.env['BENCH_LOG'] !== undefined ? `log: ${process.env['BENCH_LOG']}\n` : '';
}

async function startServer(server: string, image: string): Promise<Started> {
  const port = await freePort();
  if (server === 'nbdkit') {
    const child = spawn('nbdkit', ['-f', '-i', '127.0.0.1', '-p', String(port), 'file', image], { stdio: 'ignore' });
    await waitForPort(port, child);
    return { uri: `nbd://127.0.0.1:${port}`, child, mirror: null };
  }
  if (server === 'qemu-nbd') {
    const child = spawn(
      'qemu-nbd',
      ['-f', 'raw', '-b', '127.0.0.1', '-p', String(port), '-x', '', '--persistent', '--shared=16', '--aio=threads', '--cache=writeback', image],
      { stdio: 'ignore' },
    );
    await waitForPort(port, child);
    return { uri: `nbd://127.0.0.1:${port}`, child, mirror: null };
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
${logSection()}`,
  );
  const child = spawn(process.execPath, [cli, 'serve', '--config', config, '--node', 'a'], { stdio: 'ignore' });
  await waitForPort(port, child);
  return { uri: `nbd://127.0.0.1:${port}/vol0`, child, mirror: null };
}

async function stopServer(child: ChildProcess): Promise<void> {
  // A process killed by a signal has no exit code, and its 'exit' has been emitted already.
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
}

/** One node of a mirrored server: its process, and what its log said. */
interface MirrorNode {
  id: 'a' | 'b';
  child: ChildProcess;
  /** The NBD and admin addresses (host:port) from the node's "node ready" line. */
  ready: { nbd: string; admin: string } | null;
  /** The first few warn and error lines, and lines that are not JSON (a crash's stack trace). */
  problems: string[];
  problemCount: number;
  /** The last lines logged, for the error when the node fails. */
  tail: string[];
}

interface Mirror {
  primary: MirrorNode;
  secondary: MirrorNode;
  /** Node a's admin API. */
  adminUrl: string;
}

/** The parts of node a's `GET /api/v1/status` for vol0 that the bench reads. */
interface MirrorVolumeStatus {
  name: string;
  stats: Record<string, number>;
  log: { lastSeq: number };
  peers: { node: string; replication: string; ackedSeq: number }[];
}

const nodeProblemsKept = 5;
const nodeTailLines = 20;

function spawnNode(config: string, id: 'a' | 'b'): MirrorNode {
  const child = spawn(process.execPath, [cli, 'serve', '--config', config, '--node', id], { stdio: ['ignore', 'ignore', 'pipe'] });
  const node: MirrorNode = { id, child, ready: null, problems: [], problemCount: 0, tail: [] };
  let partial = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (text: string) => {
    const lines = (partial + text).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) onNodeLine(node, line);
  });
  return node;
}

function onNodeLine(node: MirrorNode, line: string): void {
  if (line === '') return;
  node.tail.push(line);
  if (node.tail.length > nodeTailLines) node.tail.shift();
  const record = parseLogRecord(line);
  if (record?.msg === 'node ready') node.ready = { nbd: String(record.nbd), admin: String(record.admin) };
  if (record === null || record.level === 'warn' || record.level === 'error') {
    node.problemCount += 1;
    if (node.problems.length < nodeProblemsKept) node.problems.push(line);
  }
}

/** A node's JSON log line, or null for anything else (which the node only writes when it fails). */
function parseLogRecord(line: string): { level?: unknown; msg?: unknown; nbd?: unknown; admin?: unknown } | null {
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === 'object' && value !== null ? value : null;
  } catch {
    return null;
  }
}

function nodeExited(node: MirrorNode): boolean {
  return node.child.exitCode !== null || node.child.signalCode !== null;
}

function checkNodeAlive(node: MirrorNode): void {
  if (!nodeExited(node)) return;
  const how = node.child.exitCode ?? node.child.signalCode;
  throw new Error(`node ${node.id} exited (${how}); its last log lines:\n${node.tail.join('\n')}`);
}

async function waitNodeReady(node: MirrorNode, timeoutMs: number): Promise<{ nbd: string; admin: string }> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (node.ready !== null) return node.ready;
    checkNodeAlive(node);
    await sleep(20);
  }
  throw new Error(`node ${node.id} not ready within ${timeoutMs} ms; its last log lines:\n${node.tail.join('\n')}`);
}

async function mirrorVolume(mirror: Mirror): Promise<MirrorVolumeStatus> {
  const response = await fetch(`${mirror.adminUrl}/api/v1/status`, { signal: AbortSignal.timeout(10_000) });
  if (!response.ok) throw new Error(`node a's admin API answered ${response.status}`);
  const status = (await response.json()) as { volumes: MirrorVolumeStatus[] };
  const volume = status.volumes.find((candidate) => candidate.name === 'vol0');
  if (volume === undefined) throw new Error(`node a's status has no vol0: ${JSON.stringify(status)}`);
  return volume;
}

/** Polls node a's status of vol0 until `check` holds (bounded); fails at once if a node exits. */
async function waitMirror(mirror: Mirror, what: string, check: (volume: MirrorVolumeStatus) => boolean, timeoutMs: number): Promise<MirrorVolumeStatus> {
  const deadline = Date.now() + timeoutMs;
  let last: MirrorVolumeStatus | null = null;
  while (Date.now() < deadline) {
    checkNodeAlive(mirror.primary);
    checkNodeAlive(mirror.secondary);
    last = await mirrorVolume(mirror);
    if (check(last)) return last;
    await sleep(50);
  }
  throw new Error(`${what} did not happen within ${timeoutMs} ms; node a's last status of vol0: ${JSON.stringify(last)}`);
}

function streaming(volume: MirrorVolumeStatus): boolean {
  return volume.peers.length > 0 && volume.peers.every((peer) => peer.replication === 'streaming');
}

/** Node b streams and has acknowledged everything node a logged. */
function caughtUp(volume: MirrorVolumeStatus): boolean {
  return streaming(volume) && volume.peers.every((peer) => peer.ackedSeq >= volume.log.lastSeq);
}

/** Waits until node b has caught up, so no workload pays for the replication an earlier one left. */
function waitCaughtUp(mirror: Mirror): Promise<MirrorVolumeStatus> {
  return waitMirror(mirror, 'node b catching up with node a', caughtUp, catchUpTimeoutMs);
}

/**
 * Starts a mirrored server: node a (the primary, NBD on 127.0.0.1) and node b from one
 * cluster file, replicating over 127.0.0.2 and 127.0.0.3, and waits until a streams to b.
 * NBD and admin ports are the kernel's choice, read from each node's "node ready" line;
 * replication ports must be known to both nodes before they start, so they are chosen here.
 */
async function startMirror(dir: string, mode: 'sync' | 'async'): Promise<Started> {
  const config = path.join(dir, 'cluster.yaml');
  fs.writeFileSync(
    config,
    `cluster: bench
secret: bench-secret-123
nodes:
  - id: a
    nbd: 127.0.0.1:0
    replication: 127.0.0.2:${await freePort('127.0.0.2')}
    admin: 127.0.0.1:0
    dataDir: ${path.join(dir, 'data-a')}
  - id: b
    nbd: 127.0.0.3:0
    replication: 127.0.0.3:${await freePort('127.0.0.3')}
    admin: 127.0.0.3:0
    dataDir: ${path.join(dir, 'data-b')}
volumes:
  - name: vol0
    size: ${sizeBytes}
    replicas: [a, b]
    primary: a
    mode: ${mode}
${logSection()}`,
  );
  const secondary = spawnNode(config, 'b');
  let primary: MirrorNode | null = null;
  try {
    // Node b listens first, so node a's first connection finds it (and logs no refusal).
    await waitNodeReady(secondary, 120_000);
    primary = spawnNode(config, 'a');
    const ready = await waitNodeReady(primary, 120_000);
    const mirror: Mirror = { primary, secondary, adminUrl: `http://${ready.admin}` };
    await waitMirror(mirror, 'node a streaming to node b', streaming, 60_000);
    return { uri: `nbd://${ready.nbd}/vol0`, child: primary.child, mirror };
  } catch (error) {
    // Nothing else knows these processes yet.
    if (primary !== null) await stopServer(primary.child);
    await stopServer(secondary.child);
    throw error;
  }
}

/** Stops node a first: at a clean stop it waits (bounded) for node b to take its last entries. */
async function stopMirror(server: string, mirror: Mirror): Promise<void> {
  const nodes = [mirror.primary, mirror.secondary];
  const exitedEarly = nodes.filter(nodeExited);
  // Node b warns when node a closes its links; that is the stop, not a problem of the run.
  const problemsBeforeStop = nodes.map((node) => node.problemCount);
  await stopServer(mirror.primary.child);
  await stopServer(mirror.secondary.child);
  nodes.forEach((node, index) => {
    if (exitedEarly.includes(node)) {
      process.stderr.write(`  ${server} node ${node.id} exited before the end; its last log lines:\n${node.tail.map((line) => `    ${line}\n`).join('')}`);
    } else if (node.problemCount > 0) {
      const whileStopping = node.problemCount - (problemsBeforeStop[index] ?? 0);
      process.stderr.write(
        `  ${server} node ${node.id} logged ${node.problemCount} warnings or errors (${whileStopping} while stopping), the first:\n` +
          node.problems.map((line) => `    ${line}\n`).join(''),
      );
    }
  });
}

interface CpuSample {
  ticksA: number;
  ticksB: number;
  writeBytes: number;
}

/** User and system CPU time of a process, all its threads, in clock ticks. */
function cpuTicks(pid: number | undefined): number {
  if (pid === undefined) throw new Error('node has no pid');
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name in parentheses may hold spaces; the fields after it start with the
  // state (field 3 in proc(5)), so utime and stime (fields 14 and 15) are at 11 and 12.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  if (!Number.isFinite(ticks)) throw new Error(`/proc/${pid}/stat: no utime and stime in ${stat}`);
  return ticks;
}

/** Once node b has caught up (so its share of the writes is done): both nodes' CPU time and node a's bytes written. */
async function cpuSample(mirror: Mirror): Promise<CpuSample> {
  const volume = await waitCaughtUp(mirror);
  return { ticksA: cpuTicks(mirror.primary.child.pid), ticksB: cpuTicks(mirror.secondary.child.pid), writeBytes: volume.stats['writeBytes'] ?? 0 };
}

function cpuMsPerMiB(before: CpuSample, after: CpuSample): { a: number; b: number } | null {
  const mib = (after.writeBytes - before.writeBytes) / 1024 ** 2;
  if (mib <= 0) return null;
  const perMiB = (ticks: number): number => ((ticks / clockTicksPerSecond) * 1000) / mib;
  return { a: perMiB(after.ticksA - before.ticksA), b: perMiB(after.ticksB - before.ticksB) };
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
  const mode = mirrorModes[server];
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(mode === undefined ? path.join(dir, 'data', 'volumes') : dir, { recursive: true });
  // Every server gets the same file: sparse, then filled once before measuring, so
  // reads read data and writes overwrite allocated blocks. blockmirror creates its own.
  const ours = server === 'blockmirror' || mode !== undefined;
  const image = ours ? path.join(dir, 'data', 'volumes', 'vol0.img') : path.join(dir, 'disk.img');
  if (!ours) fs.writeFileSync(image, '');
  if (!ours) fs.truncateSync(image, sizeBytes);
  let started: Started | null = null;
  const figures: Record<string, Figure> = {};
  let cpu: { a: number; b: number } | null = null;
  try {
    started = mode === undefined ? await startServer(server, image) : await startMirror(dir, mode);
    const mirror = started.mirror;
    // A mirror is measured once node b has caught up, and fails as soon as either node exits.
    const prepare = async (): Promise<void> => {
      if (mirror !== null) await waitCaughtUp(mirror);
      await settle();
    };
    await runTool('fio', ['--name=fill', '--ioengine=nbd', `--uri=${started.uri}`, '--rw=write', '--bs=1M', '--iodepth=8', `--size=${sizeText}`, '--output=/dev/null'], 300_000);
    const selected = (process.env['BENCH_WORKLOADS'] ?? '').split(',').filter((name) => name !== '');
    for (const workload of workloads) {
      if (selected.length > 0 && !selected.includes(workload.name)) continue;
      await prepare();
      const before = mirror !== null && workload.name === cpuWorkloadName ? await cpuSample(mirror) : null;
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
      if (mirror !== null && before !== null) {
        cpu = cpuMsPerMiB(before, await cpuSample(mirror));
        if (cpu !== null) process.stderr.write(`  ${server} CPU per MiB written: node a ${format(cpu.a)} ms, node b ${format(cpu.b)} ms\n`);
      }
    }
    for (const depth of fuaDepths) {
      if (selected.length > 0 && !selected.includes(fuaName(depth))) continue;
      await prepare();
      figures[fuaName(depth)] = await qemuBench(started.uri, depth);
      process.stderr.write(`  ${server} 4k FUA write QD${depth}: ${format(figures[fuaName(depth)]?.value ?? 0)} IOPS\n`);
    }
    // Node b still mirrors at the end: the figures are a mirror's, not a lone primary's.
    if (mirror !== null) await waitCaughtUp(mirror);
    return {
      server,
      figures,
      peakRssMiB: peakRssMiB(started.child.pid),
      secondaryPeakRssMiB: mirror === null ? null : peakRssMiB(mirror.secondary.child.pid),
      cpuMsPerMiB: cpu,
    };
  } finally {
    if (started !== null && started.mirror !== null) await stopMirror(server, started.mirror);
    else if (started !== null) await stopServer(started.child);
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

interface Ratio {
  label: string;
  mine: ServerRun | undefined;
  theirs: ServerRun;
}

function table(runs: ServerRun[]): string {
  const names = runs.map((run) => run.server);
  const find = (server: string): ServerRun | undefined => runs.find((run) => run.server === server);
  const ours = find('blockmirror');
  // blockmirror against each reference server; then the sync mirror against nbdkit, and
  // the async mirror against the same volume unmirrored, when both sides ran.
  const ratios: Ratio[] = runs
    .filter((run) => run.server !== 'blockmirror' && mirrorModes[run.server] === undefined)
    .map((run) => ({ label: `blockmirror / ${run.server}`, mine: ours, theirs: run }));
  for (const [label, mine, theirs] of [
    ['sync / nbdkit', 'blockmirror-sync', 'nbdkit'],
    ['async / local', 'blockmirror-async', 'blockmirror'],
  ] as const) {
    const mineRun = find(mine);
    const theirsRun = find(theirs);
    if (mineRun !== undefined && theirsRun !== undefined) ratios.push({ label, mine: mineRun, theirs: theirsRun });
  }
  const ratioCells = (name: string): string[] =>
    ratios.map((ratio) => {
      const mine = ratio.mine?.figures[name]?.value;
      const theirs = ratio.theirs.figures[name]?.value;
      return mine === undefined || theirs === undefined || theirs === 0 ? '-' : `${(mine / theirs).toFixed(2)}x`;
    });
  const header = ['workload', 'unit', ...names, ...ratios.map((ratio) => ratio.label)];
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`];
  for (const workload of workloads) {
    if (!runs.some((run) => run.figures[workload.name] !== undefined)) continue;
    const cells = runs.map((run) => {
      const figure = run.figures[workload.name];
      return figure === undefined ? '-' : `${format(figure.value)} (p50 ${format(figure.p50Us)} µs, p99 ${format(figure.p99Us)} µs)`;
    });
    lines.push(`| ${workload.label} | ${workload.unit} | ${cells.join(' | ')} | ${ratioCells(workload.name).join(' | ')} |`);
  }
  for (const depth of fuaDepths) {
    const name = fuaName(depth);
    if (!runs.some((run) => run.figures[name] !== undefined)) continue;
    const cells = runs.map((run) => (run.figures[name] === undefined ? '-' : format(run.figures[name]?.value ?? 0)));
    lines.push(`| 4k FUA write QD${depth} (qemu-img bench) | IOPS | ${cells.join(' | ')} | ${ratioCells(name).join(' | ')} |`);
  }
  const qd1 = ours?.figures[fuaName(1)]?.value;
  const qd32 = ours?.figures[fuaName(32)]?.value;
  if (qd1 !== undefined && qd32 !== undefined) {
    lines.push('', `blockmirror group commit: FUA QD32 / QD1 = ${(qd32 / qd1).toFixed(1)}x`);
  }
  if (ours !== undefined) lines.push('', `blockmirror peak RSS: ${ours.peakRssMiB ?? '?'} MiB`);
  for (const run of runs) {
    if (mirrorModes[run.server] === undefined) continue;
    lines.push('', `${run.server} peak RSS: node a ${run.peakRssMiB ?? '?'} MiB, node b ${run.secondaryPeakRssMiB ?? '?'} MiB`);
    if (run.cpuMsPerMiB !== null) {
      lines.push('', `${run.server} CPU time per MiB written (1M seqwrite QD8): node a ${format(run.cpuMsPerMiB.a)} ms, node b ${format(run.cpuMsPerMiB.b)} ms`);
    }
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  fs.mkdirSync(resultsDir, { recursive: true });
  fs.mkdirSync(workDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const servers = (process.env['BENCH_SERVERS'] ?? 'blockmirror,blockmirror-sync,blockmirror-async,nbdkit,qemu-nbd').split(',');
  const known = ['blockmirror', ...Object.keys(mirrorModes), 'nbdkit', 'qemu-nbd'];
  const unknown = servers.filter((server) => !known.includes(server));
  if (unknown.length > 0) throw new Error(`BENCH_SERVERS: unknown ${unknown.join(', ')} (known: ${known.join(', ')})`);
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
partitions, a consistency point every 5 s) on the same file system. blockmirror-sync and blockmirror-async
mirror that volume (\`mode: sync\` / \`async\`) from node a to node b, a second \`blockmirror serve\` on the
same machine and file system, over loopback TCP (replication on 127.0.0.2 and 127.0.0.3, the default two
connections); fio talks to node a, and each workload starts once node b has caught up. Their CPU time per MiB
written is each node's user + system time from the start of the 1M seqwrite workload until node b has caught
up, over the MiB written to node a in that time (ramp included). nbdkit runs the \`file\` plugin with its
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
