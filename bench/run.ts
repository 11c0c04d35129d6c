// `npm run bench`: blockmirror against nbdkit (file plugin) and qemu-nbd, in one run, on
// the same backing storage, with fio's nbd engine. Prints a table with the ratio of
// blockmirror to each reference server, keeps the raw fio output under bench/results/,
// and rewrites in docs/benchmarks.md the part of each section that ran (see writeDoc).
//
// `blockmirror` is a `mode: local` volume on one node. `blockmirror-sync` and
// `blockmirror-async` are the same volume mirrored from node a to node b, two `blockmirror
// serve` processes on this machine linked over loopback TCP; the clients talk to node a.
//
// Besides fio, it measures durable writes with FUA at depth 1 and 32 (qemu-img bench; fio
// sends no FUA), how long a node takes to recover a full log partition after SIGKILL, and,
// for the mirrored servers, the CPU time both nodes spend per MiB written.
//
// The resync section measures, on a two-node sync volume, the bitmap resync of a fully
// dirty volume, the catch-up from memory of a secondary frozen past the heartbeat timeout,
// and 4k random write IOPS while a resync runs against those without (see benchResync).
//
// The failover section measures, on a two-node sync volume, the time from SIGKILL of the
// primary to the first write acknowledged by the secondary promoted at once, and what a
// failed disk under the primary costs a client's writes (see benchFailover), each over
// BENCH_FAILOVER_RUNS runs (default 10).
//
// Environment: BENCH_SECTIONS (comma list of servers, recovery, resync, failover; default all),
// BENCH_RUNTIME_S (default 10), BENCH_SIZE (default 1G), BENCH_SERVERS
// (comma list, default blockmirror,blockmirror-sync,blockmirror-async,nbdkit,qemu-nbd),
// BENCH_WORKLOADS (comma list of names, including fua-4k-qd1 and fua-4k-qd32),
// BENCH_FUA_S (default 5: how long each FUA run aims to take), BENCH_RECOVERY=0 to skip the recovery measurement,
// BENCH_LOG (a YAML flow mapping for blockmirror's `log:` section, e.g.
// "{ partitionSize: 256MiB, partitions: 4 }"; every blockmirror server uses it),
// BENCH_RESYNC_FIO_S (default 2: fio's runtime in the resync section, which the resync must
// outlast), BENCH_RESYNC_RATE_MAX_MIB (default 100: node a's resync.rateMax in the second
// resync under fio; 0 skips it).

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { VolumeStatus } from '../src/server/status.js';
import { runCleanupSteps } from '../test/helpers/fuse.js';
import { PoweredStack } from '../test/helpers/nbdkit-disk.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const cli = path.join(root, 'bin/blockmirror.cjs');
const workDir = path.join(root, 'bench/work');
const resultsDir = path.join(root, 'bench/results');
/** A positive number of seconds from the environment, or `fallback` when unset; anything else stops the run. */
function envSeconds(name: string, fallback: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!(value > 0) || !Number.isFinite(value)) throw new Error(`${name} must be a positive number of seconds, got ${JSON.stringify(text)}`);
  return value;
}

const runtimeS = envSeconds('BENCH_RUNTIME_S', 10);
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
  /** With fio's --fsync: the latency of the flushes (fio's sync), p50 and p99. */
  flush?: { p50Us: number; p99Us: number };
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
const fuaSeconds = envSeconds('BENCH_FUA_S', 5);
/** Writes of the probe run that sizes each FUA run (and warms the path up, as fio's ramp does). */
const FUA_PROBE_WRITES = 1000;
/** Bounds of a FUA run's size, whatever the probe measured. */
const FUA_WRITES_MIN = 1000;
const FUA_WRITES_MAX = 1_000_000;

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
  /** Every JSON line the node logged (bounded), for the sections that read events from the log. */
  records: LogRecord[];
}

interface Mirror {
  primary: MirrorNode;
  secondary: MirrorNode;
  /** Node a's admin API. */
  adminUrl: string;
}

/** Node a's `GET /api/v1/status` entry for vol0. */
type MirrorVolumeStatus = VolumeStatus;

const nodeProblemsKept = 5;
const nodeTailLines = 20;
/** A node logs a few lines per event, not per request: this bound is far above a run's. */
const nodeRecordsKept = 10_000;

function spawnNode(config: string, id: 'a' | 'b'): MirrorNode {
  const child = spawn(process.execPath, [cli, 'serve', '--config', config, '--node', id], { stdio: ['ignore', 'ignore', 'pipe'] });
  const node: MirrorNode = { id, child, ready: null, problems: [], problemCount: 0, tail: [], records: [] };
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
  if (record !== null && node.records.length < nodeRecordsKept) node.records.push(record);
  if (record?.msg === 'node ready') node.ready = { nbd: String(record.nbd), admin: String(record.admin) };
  if (record === null || record.level === 'warn' || record.level === 'error') {
    node.problemCount += 1;
    if (node.problems.length < nodeProblemsKept) node.problems.push(line);
  }
}

/** One JSON line of a node's log: `time`, `level`, `msg` and the event's fields. */
type LogRecord = { time?: unknown; level?: unknown; msg?: unknown; nbd?: unknown; admin?: unknown } & Record<string, unknown>;

/** A node's JSON log line, or null for anything else (which the node only writes when it fails). */
function parseLogRecord(line: string): LogRecord | null {
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === 'object' && value !== null ? (value as LogRecord) : null;
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

async function mirrorVolume(mirror: Pick<Mirror, 'adminUrl'>): Promise<MirrorVolumeStatus> {
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
 * Writes the cluster file of a mirrored server: node a (the primary, NBD on 127.0.0.1) and
 * node b, replicating over 127.0.0.2 and 127.0.0.3; `extra` holds more top-level keys
 * (heartbeat:, resync:). NBD and admin ports are the kernel's choice, read from each node's
 * "node ready" line; replication ports must be known to both nodes before they start, so
 * they are chosen here.
 */
async function writeMirrorConfig(dir: string, mode: 'sync' | 'async', extra = ''): Promise<string> {
  const config = path.join(dir, 'cluster.yaml');
  fs.writeFileSync(
    config,
    `cluster: bench
secret: bench-secret-123
${extra}nodes:
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
  return config;
}

/** Starts a mirrored server from writeMirrorConfig's cluster file and waits until node a streams to node b. */
async function startMirror(dir: string, mode: 'sync' | 'async'): Promise<Started> {
  const config = await writeMirrorConfig(dir, mode);
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

/**
 * `qemu-img bench -w -t writethrough`: every write carries FUA. It counts writes, not time:
 * a probe run of FUA_PROBE_WRITES measures the rate first, and the measured run is sized to
 * take about fuaSeconds (servers differ a hundredfold here). Returns IOPS.
 */
async function qemuBench(uri: string, depth: number): Promise<Figure> {
  const probe = await qemuBenchRun(uri, depth, FUA_PROBE_WRITES);
  const count = Math.min(FUA_WRITES_MAX, Math.max(FUA_WRITES_MIN, Math.round(probe * fuaSeconds)));
  return { value: await qemuBenchRun(uri, depth, count), p50Us: 0, p99Us: 0 };
}

/** One `qemu-img bench` run of `count` FUA writes at `depth`: writes per second. */
async function qemuBenchRun(uri: string, depth: number, count: number): Promise<number> {
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
  return count / Number(match[1]);
}

function fioFigure(file: string, workload: Workload): Figure {
  const output = JSON.parse(fs.readFileSync(file, 'utf8')) as {
    jobs: (Record<'read' | 'write', { iops: number; bw_bytes: number; lat_ns: { percentile?: Record<string, number> } }> & {
      sync?: { total_ios?: number; lat_ns: { percentile?: Record<string, number> } };
    })[];
  };
  const job = output.jobs[0];
  if (job === undefined) throw new Error(`${file}: no job`);
  const side = job[workload.direction];
  // Total latency (submission and completion, --lat_percentiles): at depth 1 part of a
  // request's time can fall in fio's submission, more with one server than another.
  const percentiles = side.lat_ns.percentile;
  if (percentiles === undefined) throw new Error(`${file}: no latency percentiles (fio run without --lat_percentiles=1?)`);
  const flushes = job.sync !== undefined && (job.sync.total_ios ?? 0) > 0 ? job.sync.lat_ns.percentile : undefined;
  return {
    value: workload.unit === 'IOPS' ? side.iops : side.bw_bytes / 1024 ** 2,
    p50Us: (percentiles['50.000000'] ?? 0) / 1000,
    p99Us: (percentiles['99.000000'] ?? 0) / 1000,
    ...(flushes === undefined ? {} : { flush: { p50Us: (flushes['50.000000'] ?? 0) / 1000, p99Us: (flushes['99.000000'] ?? 0) / 1000 } }),
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
          '--lat_percentiles=1',
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

// ---- resync: a two-node sync volume brought back after node b was away -----------------------

/** Heartbeat timing of the resync section: a frozen node b is cut off after 1 s of silence and taken back 1 s after it answers again. */
const resyncHeartbeat = { intervalMs: 100, timeoutMs: 1000, probationMs: 1000 };
/** Written in 4 KiB random writes while node b is frozen: under the 64 MiB of entries node a keeps in memory for it. */
const catchUpWriteBytes = 48 * 1024 ** 2;
/** Written the same way for the catch-up from the log files: past the 64 MiB kept in memory, under the 128 MiB the default log keeps for a peer that is away. */
const logCatchUpWriteBytes = 104 * 1024 ** 2;
/**
 * fio's runtime and ramp in the client IOPS figure, with and without a resync. The resync
 * must outlast fio, and an uncapped resync of 1 GiB takes about 4 s here: 2 s after 0.5 s.
 */
const resyncFioRuntimeS = envSeconds('BENCH_RESYNC_FIO_S', 2);
const resyncFioRampMs = 500;
/** resync.rateMax (MiB/s) of node a in the second run of the client IOPS figure (100: about 10 s for 1 GiB); 0 skips that run. */
const resyncRateMaxMiB = Number(process.env['BENCH_RESYNC_RATE_MAX_MIB'] ?? 100);
/** How often node a's status is read while node b resyncs or catches up. */
const resyncPollMs = 50;
/** Bound of each wait of the section (a resync of the whole volume included). */
const resyncWaitMs = 600_000;
/** Warnings and errors the section causes on purpose (node b frozen, away, resynced; node a restarted), not problems of the run. */
const resyncExpectedProblems = new Set([
  'peer down: no heartbeat',
  'peer connection lost',
  'peer connection failed',
  'source disconnected',
  'replica no longer counts for this volume',
  'peer needs a resync: it restarts its log here and is sent the regions it lacks',
  'peer away longer than the log retention: it needs a resync',
]);

/** One resync of node b, as node a's "resync done" line and its status polls saw it. */
interface ResyncRun {
  /** What the resync sent and how long it took, from node a's "resync done" line (from node b's log restart until its last region was durable). */
  bytes: number;
  ms: number;
  /** From the first status poll that showed node b `resyncing` to the first that showed it `streaming` and `up-to-date`. */
  polledMs: number;
  /** bytes / ms, decimal (1e6) and binary. */
  mbPerSec: number;
  mibPerSec: number;
}

/** fio's 4k randwrite QD32 while node b is resynced from a fully dirty bitmap. */
interface UnderResync {
  /** Node a's resync.rateMax in bytes per second, or null for none. */
  rateMax: number | null;
  during: Figure;
  /** during / the baseline's IOPS. */
  ratio: number;
  /** Node a's status read as soon as fio ended: node b still resyncing, and what was left. */
  resyncingAtFioEnd: boolean;
  remainingBytesAtFioEnd: number | null;
  resync: ResyncRun;
  /** How often, and how long in all, node a's writes waited for log space while fio ran. */
  logStalls: LogStalls;
}

/** A catch-up after a freeze: what node b missed and how long it took to get it. */
interface CatchUp {
  entries: number;
  payloadBytes: number;
  ms: number;
  mbPerSec: number;
  mibPerSec: number;
  entriesPerSec: number;
}

/** Node a's log stalls (writes waiting for a consistency point to free log space) over a stretch of the run. */
interface LogStalls {
  stalls: number;
  stallMs: number;
}

function logStallsBetween(before: MirrorVolumeStatus, after: MirrorVolumeStatus): LogStalls {
  return { stalls: (after.log.stalls ?? 0) - (before.log.stalls ?? 0), stallMs: (after.log.stallMs ?? 0) - (before.log.stallMs ?? 0) };
}

interface ResyncFigures {
  volumeBytes: number;
  heartbeat: typeof resyncHeartbeat;
  pollMs: number;
  /** 1. Node b joins for the first time (its image sparse) after every byte of the volume was written without it; no resync.rateMax. */
  firstJoin: ResyncRun;
  /** 1. Node b stopped (SIGTERM), every byte of the volume written, node b started again (its image allocated); no resync.rateMax. */
  full: ResyncRun;
  /** 2. Node b frozen (SIGSTOP) past the heartbeat timeout while 4 KiB random writes land; from node a's "peer catching up" line to the first poll that shows node b `streaming`. */
  catchUp: CatchUp;
  /** 2. The same with more written than memory keeps: node b is sent entries read back from node a's log files, then the rest from memory. */
  logCatchUp: CatchUp;
  /** 3. 4k randwrite QD32 with both nodes streaming (baseline), and right after a resync of the fully dirty volume started: without resync.rateMax, and with it. */
  underLoad: { fioRuntimeS: number; fioRampMs: number; baseline: Figure; baselineLogStalls: LogStalls; runs: UnderResync[] };
}

/** The section's nodes: node a (the current one), node b once it runs, and whether the section froze node b (so that a failure thaws it before stopping it). */
interface ResyncPair {
  a: MirrorNode;
  b: MirrorNode | null;
  adminUrl: string;
  uri: string;
  frozen: boolean;
  /** How often the section froze or stopped node b: node a cutting it off more often is a false disconnect. */
  absences: number;
  /** Every node process the section started, to stop at the end. */
  started: MirrorNode[];
}

type PeerStatus = MirrorVolumeStatus['peers'][number];

function peerB(volume: MirrorVolumeStatus): PeerStatus | undefined {
  return volume.peers.find((peer) => peer.node === 'b');
}

function upToDate(volume: MirrorVolumeStatus): boolean {
  const peer = peerB(volume);
  return peer?.replication === 'streaming' && peer.disk === 'up-to-date';
}

/** Node b is up to date and has acknowledged everything node a logged. */
function caughtUpB(volume: MirrorVolumeStatus): boolean {
  return upToDate(volume) && (peerB(volume)?.ackedSeq ?? -1) >= volume.log.lastSeq;
}

/** Reads node a's status of vol0 every resyncPollMs until `check` holds (bounded): the status, and when its answer arrived. */
async function pollPair(
  pair: ResyncPair,
  what: string,
  check: (volume: MirrorVolumeStatus) => boolean,
  timeoutMs = resyncWaitMs,
): Promise<{ volume: MirrorVolumeStatus; atMs: number }> {
  const deadline = Date.now() + timeoutMs;
  let last: MirrorVolumeStatus | null = null;
  while (Date.now() < deadline) {
    checkNodeAlive(pair.a);
    if (pair.b !== null) checkNodeAlive(pair.b);
    last = await mirrorVolume(pair);
    const atMs = Date.now();
    if (check(last)) return { volume: last, atMs };
    await sleep(resyncPollMs);
  }
  throw new Error(`${what} did not happen within ${timeoutMs} ms; node a's last status of vol0: ${JSON.stringify(last)}`);
}

/**
 * Waits (bounded) until node a's heartbeats call node b up. Node a connects at once to a
 * peer it has not heard from since it started, but never cuts off such a peer when it
 * falls silent: a node b frozen before its first heartbeat reached node a would stay
 * `streaming` for good (and sync writes would wait for it).
 */
async function waitHeardB(pair: ResyncPair): Promise<void> {
  const deadline = Date.now() + 30_000;
  let last: unknown = null;
  while (Date.now() < deadline) {
    checkNodeAlive(pair.a);
    const response = await fetch(`${pair.adminUrl}/api/v1/status`, { signal: AbortSignal.timeout(10_000) });
    const status = (await response.json()) as { nodes?: { node: string; state: string }[] };
    last = status.nodes;
    if (status.nodes?.some((node) => node.node === 'b' && node.state === 'up')) return;
    await sleep(resyncPollMs);
  }
  throw new Error(`node a's heartbeats did not call node b up within 30 s: ${JSON.stringify(last)}`);
}

/** A node's log lines with this message (its log reaches the bench through a pipe: waits, bounded, for the `count`th). */
async function loggedLines(node: MirrorNode, msg: string, count: number): Promise<LogRecord[]> {
  const lines = (): LogRecord[] => node.records.filter((record) => record.msg === msg);
  for (let attempt = 0; attempt < 250 && lines().length < count; attempt += 1) await sleep(20);
  if (lines().length < count) throw new Error(`node ${node.id} logged "${msg}" ${lines().length} times, not ${count}`);
  return lines();
}

function rateOf(bytes: number, ms: number): { mbPerSec: number; mibPerSec: number } {
  const perSec = ms > 0 ? (bytes / ms) * 1000 : 0;
  return { mbPerSec: perSec / 1e6, mibPerSec: perSec / 1024 ** 2 };
}

/** Starts node a from `config` and makes it the pair's node a. */
async function startResyncA(pair: Omit<ResyncPair, 'a' | 'adminUrl' | 'uri'> & Partial<ResyncPair>, config: string): Promise<ResyncPair> {
  const a = spawnNode(config, 'a');
  pair.started.push(a);
  const ready = await waitNodeReady(a, 120_000);
  return Object.assign(pair, { a, adminUrl: `http://${ready.admin}`, uri: `nbd://${ready.nbd}/vol0` });
}

/** Freezes node b (SIGSTOP) and waits until node a has cut it off (no heartbeat for the timeout). */
async function freezeB(pair: ResyncPair): Promise<void> {
  const b = pair.b;
  if (b?.child.pid === undefined) throw new Error('node b is not running');
  await waitHeardB(pair);
  process.kill(b.child.pid, 'SIGSTOP');
  pair.frozen = true;
  pair.absences += 1;
  await pollPair(pair, 'node a cutting off the frozen node b', (volume) => peerB(volume)?.replication === 'disconnected', 30_000);
}

function thawB(pair: ResyncPair): void {
  if (!pair.frozen || pair.b?.child.pid === undefined) return;
  process.kill(pair.b.child.pid, 'SIGCONT');
  pair.frozen = false;
}

/** `fio --rw=write --bs=1M` over the whole volume through node a: every byte written once. Checks that node b's dirty bitmap then covers it all. */
async function writeWholeVolume(pair: ResyncPair): Promise<void> {
  await runTool('fio', ['--name=fill', '--ioengine=nbd', `--uri=${pair.uri}`, '--rw=write', '--bs=1M', '--iodepth=8', `--size=${sizeText}`, '--output=/dev/null'], 600_000);
  const dirty = peerB(await mirrorVolume(pair))?.outOfSyncBytes;
  if (dirty !== sizeBytes) throw new Error(`after writing the whole volume, node b's dirty bitmap covers ${dirty} bytes, not ${sizeBytes}`);
}

/** 4k randwrite QD32, as the servers' workload of that name but with the section's runtime and ramp. */
async function resyncFio(uri: string, output: string): Promise<Figure> {
  const workload = workloads.find((candidate) => candidate.name === 'randwrite-4k-qd32');
  if (workload === undefined) throw new Error('no randwrite-4k-qd32 workload');
  await runTool(
    'fio',
    [
      `--name=${workload.name}`,
      '--ioengine=nbd',
      `--uri=${uri}`,
      `--size=${sizeText}`,
      '--time_based',
      `--runtime=${resyncFioRuntimeS}s`,
      `--ramp_time=${resyncFioRampMs}ms`,
      '--lat_percentiles=1',
      '--output-format=json',
      `--output=${output}`,
      ...workload.args,
    ],
    (resyncFioRuntimeS + 60) * 1000,
  );
  return fioFigure(output, workload);
}

/**
 * Thaws node b and waits for its resync to start and end; `meanwhile` runs as soon as a
 * status poll shows it `resyncing`. The `count`th "resync done" line of node a holds bytes and ms.
 */
async function measureResync<T>(pair: ResyncPair, count: number, meanwhile: () => Promise<T>): Promise<{ run: ResyncRun; meanwhile: T }> {
  thawB(pair);
  const started = await pollPair(pair, 'node b resyncing', (volume) => peerB(volume)?.replication === 'resyncing');
  const result = await meanwhile();
  const ended = await pollPair(pair, 'node b resynced', upToDate);
  const done = (await loggedLines(pair.a, 'resync done', count))[count - 1] ?? {};
  const bytes = Number(done['bytes']);
  const ms = Number(done['ms']);
  return { run: { bytes, ms, polledMs: ended.atMs - started.atMs, ...rateOf(bytes, ms) }, meanwhile: result };
}

/**
 * Node b frozen while the whole volume is written again, then thawed; fio runs as soon as
 * its resync starts (the `count`th of node a), and node a's status is read when fio ends.
 */
async function fioUnderResync(pair: ResyncPair, count: number, rateMax: number | null, baseline: Figure, output: string): Promise<UnderResync> {
  await pollPair(pair, 'node b caught up', caughtUpB);
  await freezeB(pair);
  await writeWholeVolume(pair);
  await settle();
  const { run: resync, meanwhile } = await measureResync(pair, count, async () => {
    const before = await mirrorVolume(pair);
    const during = await resyncFio(pair.uri, output);
    const after = await mirrorVolume(pair);
    return { during, atFioEnd: peerB(after), logStalls: logStallsBetween(before, after) };
  });
  const { during, atFioEnd, logStalls } = meanwhile;
  return {
    rateMax,
    during,
    ratio: baseline.value > 0 ? during.value / baseline.value : 0,
    resyncingAtFioEnd: atFioEnd?.replication === 'resyncing',
    remainingBytesAtFioEnd: atFioEnd?.resync?.remainingBytes ?? null,
    resync,
    logStalls,
  };
}

function rateMaxLabel(rateMax: number | null): string {
  return rateMax === null ? 'no resync.rateMax' : `resync.rateMax ${format(rateMax / 1024 ** 2)} MiB/s`;
}

/**
 * The resync section, on one two-node `mode: sync` volume (node a primary, node b
 * secondary, as blockmirror-sync, heartbeats at resyncHeartbeat):
 * 1. node a alone, every byte of the volume written, then node b started: the resync of
 *    the fully dirty volume (node a's "resync done" line: bytes and ms); then node b
 *    stopped, the whole volume written again, node b started again: the same;
 * 2. node b frozen with SIGSTOP until node a cuts it off, 48 MiB of 4 KiB random writes,
 *    SIGCONT: the catch-up from node a's "peer catching up" line to `streaming`;
 * 3. fio 4k randwrite QD32 with both nodes streaming; then node b frozen while the whole
 *    volume is written again, thawed, and the same fio run as soon as its resync starts;
 *    then once more after node a restarted with resync.rateMax.
 */
async function benchResync(stamp: string): Promise<ResyncFigures> {
  const dir = path.join(workDir, 'resync');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const { intervalMs, timeoutMs, probationMs } = resyncHeartbeat;
  const config = await writeMirrorConfig(dir, 'sync', `heartbeat: { intervalMs: ${intervalMs}, timeoutMs: ${timeoutMs}, probationMs: ${probationMs} }\n`);
  const label = `resync (${sizeText} sync volume)`;
  const nodes: MirrorNode[] = [];
  /** Nodes the section stopped itself (node a, to restart it with resync.rateMax). */
  const stopped = new Set<MirrorNode>();
  let pair: ResyncPair | null = null;
  try {
    pair = await startResyncA({ b: null, frozen: false, absences: 0, started: nodes }, config);

    // 1. Bitmap resync of the fully dirty volume: node b starts after node a wrote all of it,
    // first as a new node (its image is created sparse), then after a clean stop.
    const fullResync = async (on: ResyncPair, count: number, what: string): Promise<ResyncRun> => {
      await writeWholeVolume(on);
      await settle();
      on.b = spawnNode(config, 'b');
      nodes.push(on.b);
      const { run } = await measureResync(on, count, async () => undefined);
      if (run.bytes !== sizeBytes) throw new Error(`node a resynced ${run.bytes} bytes, not the whole volume (${sizeBytes})`);
      process.stderr.write(
        `  ${label} bitmap resync of the fully dirty volume, ${what}: ${format(run.bytes / 1024 ** 2)} MiB in ${run.ms} ms ` +
          `(status polls: ${run.polledMs} ms): ${format(run.mbPerSec)} MB/s, ${format(run.mibPerSec)} MiB/s\n`,
      );
      return run;
    };
    const firstJoin = await fullResync(pair, 1, 'node b new');
    await pollPair(pair, 'node b caught up', caughtUpB);
    const firstB = pair.b as MirrorNode | null;
    if (firstB === null) throw new Error('node b is not running');
    stopped.add(firstB);
    pair.absences += 1;
    await stopServer(firstB.child);
    pair.b = null;
    await pollPair(pair, 'node a seeing node b gone', (volume) => peerB(volume)?.replication !== 'streaming');
    const full = await fullResync(pair, 2, 'node b restarted');

    // 2. Catch-up after a freeze past the heartbeat timeout: from memory, then from the log files.
    const current = pair;
    const catchUpAfterFreeze = async (writeBytes: number, from: 'memory' | 'the log'): Promise<CatchUp> => {
      const pair = current;
      await pollPair(pair, 'node b caught up', caughtUpB);
      await settle();
      await freezeB(pair);
      const away = await mirrorVolume(pair);
      await runTool(
        'fio',
        ['--name=while-away', '--ioengine=nbd', `--uri=${pair.uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=32', `--size=${sizeText}`, `--io_size=${writeBytes}`, '--output=/dev/null'],
        300_000,
      );
      const written = await mirrorVolume(pair);
      if (peerB(written)?.resyncNeeded === true) throw new Error(`node b needs a resync after the writes made while it was frozen: node a no longer holds them in ${from}`);
      const catchingBefore = pair.a.records.filter((record) => record.msg === 'peer catching up').length;
      const fromLogBefore = pair.a.records.filter((record) => record.msg === 'peer caught up from the log').length;
      thawB(pair);
      // From node a's "peer catching up" line (logged as it starts sending what node b
      // missed) to the first status poll that shows node b streaming and up to date.
      const streamingAgain = await pollPair(pair, 'node b caught up', upToDate);
      const catching = (await loggedLines(pair.a, 'peer catching up', catchingBefore + 1))[catchingBefore] ?? {};
      const fromLog = pair.a.records.filter((record) => record.msg === 'peer caught up from the log').length - fromLogBefore;
      if ((fromLog > 0) !== (from === 'the log')) throw new Error(`node b caught up from ${fromLog > 0 ? 'the log' : 'memory'}, not from ${from}`);
      const ms = streamingAgain.atMs - Date.parse(String(catching['time']));
      const payloadBytes = (written.stats['writeBytes'] ?? 0) - (away.stats['writeBytes'] ?? 0);
      const entries = written.log.lastSeq - (peerB(away)?.ackedSeq ?? 0);
      const figure = { entries, payloadBytes, ms, ...rateOf(payloadBytes, ms), entriesPerSec: (entries / ms) * 1000 };
      process.stderr.write(
        `  ${label} catch-up from ${from} after a freeze: ${entries} entries (${format(payloadBytes / 1024 ** 2)} MiB of 4 KiB writes) in ${ms} ms: ` +
          `${format(figure.mbPerSec)} MB/s, ${format(figure.mibPerSec)} MiB/s, ${format(figure.entriesPerSec)} entries/s\n`,
      );
      return figure;
    };
    const catchUp = await catchUpAfterFreeze(catchUpWriteBytes, 'memory');
    const logCatchUp = await catchUpAfterFreeze(logCatchUpWriteBytes, 'the log');

    // 3. Client writes with both nodes streaming, then during resyncs of the fully dirty volume.
    await pollPair(pair, 'node b caught up', caughtUpB);
    await settle();
    const beforeBaseline = await mirrorVolume(pair);
    const baseline = await resyncFio(pair.uri, path.join(resultsDir, `${stamp}-resync-randwrite-4k-qd32-baseline.json`));
    const baselineLogStalls = logStallsBetween(beforeBaseline, await mirrorVolume(pair));
    process.stderr.write(
      `  ${label} 4k randwrite QD32, both nodes streaming: ${format(baseline.value)} IOPS (node a's log stalled ${baselineLogStalls.stalls} times, ${baselineLogStalls.stallMs} ms)\n`,
    );
    const runs: UnderResync[] = [];
    const report = (run: UnderResync): void => {
      const left = run.remainingBytesAtFioEnd === null ? '' : ` with ${format(run.remainingBytesAtFioEnd / 1024 ** 2)} MiB left`;
      process.stderr.write(
        `  ${label} 4k randwrite QD32 during a resync of the fully dirty volume, ${rateMaxLabel(run.rateMax)}: ${format(run.during.value)} IOPS ` +
          `(${run.ratio.toFixed(2)}x); when fio ended node b was ${run.resyncingAtFioEnd ? 'resyncing' : 'NOT resyncing any more'}${left}; ` +
          `that resync took ${run.resync.ms} ms (${format(run.resync.mbPerSec)} MB/s); node a's log stalled ${run.logStalls.stalls} times, ${run.logStalls.stallMs} ms while fio ran\n`,
      );
    };
    runs.push(await fioUnderResync(pair, 3, null, baseline, path.join(resultsDir, `${stamp}-resync-randwrite-4k-qd32-during-resync.json`)));
    report(runs[0] as UnderResync);
    if (resyncRateMaxMiB > 0) {
      // resync.rateMax is node a's to apply: node a restarts (cleanly, node b streaming) with
      // a copy of the cluster file that sets it, and node b reconnects to it.
      await pollPair(pair, 'node b caught up', caughtUpB);
      const capped = path.join(dir, 'cluster-rate-max.yaml');
      fs.writeFileSync(capped, fs.readFileSync(config, 'utf8').replace(/^nodes:/m, `resync: { rateMax: ${resyncRateMaxMiB}MiB }\nnodes:`));
      stopped.add(pair.a);
      await stopServer(pair.a.child);
      pair = await startResyncA(pair, capped);
      const rateMax = resyncRateMaxMiB * 1024 ** 2;
      runs.push(await fioUnderResync(pair, 1, rateMax, baseline, path.join(resultsDir, `${stamp}-resync-randwrite-4k-qd32-during-resync-rate-max.json`)));
      report(runs[1] as UnderResync);
    }
    for (const run of runs) {
      if (!run.resyncingAtFioEnd) process.stderr.write(`  ${label} warning: with ${rateMaxLabel(run.rateMax)} the resync ended before fio did; that IOPS figure is partly without a resync\n`);
    }
    await pollPair(pair, 'node b caught up', caughtUpB);
    return {
      volumeBytes: sizeBytes,
      heartbeat: resyncHeartbeat,
      pollMs: resyncPollMs,
      firstJoin,
      full,
      catchUp,
      logCatchUp,
      underLoad: { fioRuntimeS: resyncFioRuntimeS, fioRampMs: resyncFioRampMs, baseline, baselineLogStalls, runs },
    };
  } finally {
    if (pair !== null) thawB(pair);
    await stopResyncNodes(nodes, stopped, pair?.absences ?? 0);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Stops every node the section started (node a first), and prints what they logged that the section did not cause. */
async function stopResyncNodes(nodes: MirrorNode[], stopped: Set<MirrorNode>, absences: number): Promise<void> {
  const exitedEarly = nodes.filter((node) => nodeExited(node) && !stopped.has(node));
  const before = nodes.map((node) => node.records.length);
  for (const node of nodes.filter((candidate) => candidate.id === 'a')) await stopServer(node.child);
  for (const node of nodes.filter((candidate) => candidate.id === 'b')) await stopServer(node.child);
  const down = nodes.filter((node) => node.id === 'a').flatMap((node) => node.records.filter((record) => record.msg === 'peer down: no heartbeat')).length;
  if (down > absences) process.stderr.write(`  resync: node a cut node b off ${down} times; the section froze or stopped it ${absences} times\n`);
  nodes.forEach((node, index) => {
    if (exitedEarly.includes(node)) {
      process.stderr.write(`  resync node ${node.id} exited before the end; its last log lines:\n${node.tail.map((line) => `    ${line}\n`).join('')}`);
      return;
    }
    // Node b warns when node a closes its links at the stop; that is the stop.
    const unexpected = node.records
      .slice(0, before[index])
      .filter((record) => (record.level === 'warn' || record.level === 'error') && !resyncExpectedProblems.has(String(record.msg)));
    if (unexpected.length > 0) {
      process.stderr.write(
        `  resync node ${node.id} logged ${unexpected.length} unexpected warnings or errors, the first:\n` +
          unexpected
            .slice(0, nodeProblemsKept)
            .map((record) => `    ${JSON.stringify(record)}\n`)
            .join(''),
      );
    }
  });
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
      if (figure === undefined) return '-';
      const flush = figure.flush === undefined ? '' : `; flush p50 ${format(figure.flush.p50Us)} µs, p99 ${format(figure.flush.p99Us)} µs`;
      return `${format(figure.value)} (${figure.flush === undefined ? '' : 'write '}p50 ${format(figure.p50Us)} µs, p99 ${format(figure.p99Us)} µs${flush})`;
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
  // A durable write at depth 1 is the write and the flush after it: its latency is theirs
  // added (fio reports each separately; summing the percentiles is an approximation).
  const durable = (run: ServerRun | undefined, at: 'p50Us' | 'p99Us'): number | undefined => {
    const figure = run?.figures['write-4k-flush-qd1'];
    return figure?.flush === undefined ? undefined : figure[at] + figure.flush[at];
  };
  const nbdkit = find('nbdkit');
  const [oursP50, oursP99, theirsP50, theirsP99] = [durable(ours, 'p50Us'), durable(ours, 'p99Us'), durable(nbdkit, 'p50Us'), durable(nbdkit, 'p99Us')];
  const oursWrite = ours?.figures['write-4k-flush-qd1']?.p50Us;
  const theirsWrite = nbdkit?.figures['write-4k-flush-qd1']?.p50Us;
  if (oursP50 !== undefined && oursP99 !== undefined && theirsP50 !== undefined && theirsP99 !== undefined && oursWrite !== undefined && theirsWrite !== undefined) {
    lines.push(
      '',
      `blockmirror durable 4k write latency at QD1 (write + flush): p50 ${format(oursP50)} µs against nbdkit's ${format(theirsP50)} µs = ${(oursP50 / theirsP50).toFixed(2)}x, ` +
        `p99 ${format(oursP99)} µs against ${format(theirsP99)} µs = ${(oursP99 / theirsP99).toFixed(2)}x (the write alone: p50 ${(oursWrite / theirsWrite).toFixed(2)}x)`,
    );
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

/** The parts of a run, all by default; BENCH_SECTIONS (a comma list) picks some. */
const sectionNames = ['servers', 'recovery', 'resync', 'failover'] as const;
type Section = (typeof sectionNames)[number];

function selectedSections(): Section[] {
  const names = (process.env['BENCH_SECTIONS'] ?? sectionNames.join(',')).split(',').filter((name) => name !== '');
  const unknown = names.filter((name) => !(sectionNames as readonly string[]).includes(name));
  if (unknown.length > 0 || names.length === 0) {
    throw new Error(`BENCH_SECTIONS: ${unknown.length > 0 ? `unknown ${unknown.join(', ')}` : 'empty'} (known: ${sectionNames.join(', ')})`);
  }
  return names as Section[];
}

function resyncText(figures: ResyncFigures): string {
  const { firstJoin, full, catchUp, logCatchUp, underLoad } = figures;
  const mib = (bytes: number): string => `${format(bytes / 1024 ** 2)} MiB`;
  const resyncCell = (run: ResyncRun): string =>
    `${format(run.mbPerSec)} MB/s (${format(run.mibPerSec)} MiB/s): ${mib(run.bytes)} in ${run.ms} ms (status polls: ${run.polledMs} ms)`;
  const stalls = (figure: LogStalls): string => `${figure.stalls} times, ${figure.stallMs} ms`;
  const catchUpCell = (figure: CatchUp): string =>
    `${format(figure.mbPerSec)} MB/s (${format(figure.mibPerSec)} MiB/s), ${format(figure.entriesPerSec)} entries/s: ${figure.entries} entries, ${mib(figure.payloadBytes)} of 4 KiB writes, in ${figure.ms} ms`;
  const lines = [
    '| resync figure | result | target |',
    '|---|---|---|',
    `| bitmap resync of the fully dirty ${sizeText} volume, node b restarted | ${resyncCell(full)} | ≥ 400 MB/s |`,
    `| bitmap resync of the fully dirty ${sizeText} volume, node b new (sparse image) | ${resyncCell(firstJoin)} | ≥ 400 MB/s |`,
    `| catch-up from memory after a freeze | ${catchUpCell(catchUp)} | |`,
    `| catch-up from the log files after a freeze | ${catchUpCell(logCatchUp)} | |`,
    `| 4k randwrite QD32, both nodes streaming | ${format(underLoad.baseline.value)} IOPS (p50 ${format(underLoad.baseline.p50Us)} µs, p99 ${format(underLoad.baseline.p99Us)} µs) | |`,
  ];
  for (const run of underLoad.runs) {
    lines.push(
      `| 4k randwrite QD32 during a resync, ${rateMaxLabel(run.rateMax)} | ${format(run.during.value)} IOPS (p50 ${format(run.during.p50Us)} µs, p99 ${format(run.during.p99Us)} µs) = **${run.ratio.toFixed(2)}x** of streaming | ≥ 0.5x |`,
    );
  }
  lines.push('');
  for (const run of underLoad.runs) {
    const atEnd = run.resyncingAtFioEnd
      ? `still resyncing when fio ended (${run.remainingBytesAtFioEnd === null ? '?' : mib(run.remainingBytesAtFioEnd)} left)`
      : 'NOT resyncing any more when fio ended: its IOPS figure is partly without a resync';
    lines.push(
      `With ${rateMaxLabel(run.rateMax)}, node b was ${atEnd}; that resync took ${run.resync.ms} ms for ${mib(run.resync.bytes)} ` +
        `(${format(run.resync.mbPerSec)} MB/s, ${format(run.resync.mibPerSec)} MiB/s). Node a's log stalled ${stalls(run.logStalls)} ` +
        `while fio ran (${stalls(underLoad.baselineLogStalls)} in the baseline).`,
      '',
    );
  }
  return lines.join('\n').trimEnd();
}

/** Marks where docs/benchmarks.md's resync part starts: each part is rewritten only by a run of its sections. */
const resyncDocMarker = '<!-- npm run bench: the resync section writes what follows, the servers section what comes before. -->';
/** And where the failover part starts (after the resync part). */
const failoverDocMarker = '<!-- npm run bench: the failover section writes what follows. -->';

function serversDoc(summary: { date: string; machine: { cpus: number; cpuModel: string; memoryGiB: number; kernel: string } }, text: string): string {
  return `# Benchmarks

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
total latencies (submission and completion, fio's \`--lat_percentiles=1\`). In the write+flush row (fio's \`--fsync=1\`) they are given for the writes and
for the flushes, and a durable write is the two together (the line under the table adds them up). The FUA
rows come from \`qemu-img bench -w -t writethrough -s 4096\`, which sets FUA on every write (fio's nbd engine
cannot); it runs a number of writes, not a time, so a probe run of ${FUA_PROBE_WRITES.toLocaleString('en-US')} writes first sizes each run to about
${fuaSeconds} s. Raw fio JSON for every run is written to \`bench/results/\` on the machine that ran it (not kept in git).

${text}

Run it yourself with \`npm run bench\` (\`BENCH_RUNTIME_S\`, \`BENCH_SIZE\`, \`BENCH_SERVERS\` and
\`BENCH_WORKLOADS\` narrow it; \`BENCH_SECTIONS\` picks among \`servers\`, \`recovery\`, \`resync\` and \`failover\`). The machine has two cores shared by fio and the server, so figures move by
±10–20% between runs; compare ratios from the same run. What the write log costs, and what was measured
and changed because of it, is in [performance.md](performance.md).
`;
}

function resyncDoc(summary: { date: string; machine: { cpus: number; cpuModel: string; memoryGiB: number; kernel: string } }, figures: ResyncFigures): string {
  const { intervalMs, timeoutMs, probationMs } = figures.heartbeat;
  const capped = figures.underLoad.runs.find((run) => run.rateMax !== null);
  return `## Resync

Latest run of the resync section, ${summary.date.slice(0, 10)} (\`BENCH_SECTIONS=resync npm run bench\` runs it alone): ${summary.machine.cpus} cores (${summary.machine.cpuModel}),
${summary.machine.memoryGiB} GiB, Linux ${summary.machine.kernel}; both nodes and fio on this one machine. One \`mode: sync\` volume of
${sizeText} mirrored from node a to node b as for blockmirror-sync above (two \`blockmirror serve\` processes over
loopback TCP, the default log and 64 KiB resync regions), with heartbeats every ${intervalMs} ms, a ${timeoutMs} ms timeout and a
${probationMs} ms probation. Node a's status is read every ${figures.pollMs} ms; each measurement starts after a \`sync\`.

- **Bitmap resync of the fully dirty volume** (no \`resync.rateMax\`). Node a starts alone and fio writes every
  byte of the volume (\`--rw=write --bs=1M\`), so its dirty bitmap for node b covers all of it (checked in
  its status: \`outOfSyncBytes\`); then node b starts for the first time, with its image created sparse, and
  node a resyncs it ("node b new"). Then node b stops (SIGTERM), fio writes the whole volume again, and node b
  starts again over its allocated image ("node b restarted": a secondary that was away). Each figure is node
  a's \`resync done\` line: the bytes resent over the time from node b's log restart until its last region
  was durable there, in MB/s (10^6 bytes) and MiB/s. "Status polls" is the time from the first status that
  showed node b \`resyncing\` to the first that showed it \`streaming\` and \`up-to-date\` (it includes node b
  making its image durable and restarting its log).
- **Catch-up from memory.** With node b streaming, the bench freezes its process with SIGSTOP and waits until
  node a has cut it off (no heartbeat for the timeout), writes 48 MiB of 4 KiB random writes at QD32 (under the
  64 MiB node a keeps in memory for a peer that is away), and sends SIGCONT. After its probation node b is sent
  the entries it missed; the figure is their payload over the time from node a's \`peer catching up\` line to
  the first status that shows node b \`streaming\` and \`up-to-date\` (so up to one poll late). Before each
  freeze the bench waits until node a's heartbeats call node b \`up\`, so that the freeze is a peer going silent.
- **Catch-up from the log files.** The same with 104 MiB written while node b is frozen: more than node a keeps
  in memory, less than its log keeps for a peer that is away (the default 4 × 64 MiB log keeps 128 MiB), so
  node b is sent the entries read back from node a's log files (\`peer caught up from the log\`), then the
  rest from memory; the bench checks that it went that way.
- **Client writes during a resync.** fio's 4k randwrite QD32 (as in the table above, but ${figures.underLoad.fioRuntimeS} s after
  ${figures.underLoad.fioRampMs} ms of ramp, so that it ends before the resync does) with both nodes streaming; then node b is frozen
  while fio writes the whole volume again (its bitmap covers all of it), thawed, and the same fio run starts
  as soon as a status shows node b \`resyncing\`. The figure is the IOPS during the resync over the IOPS
  without; the status read when fio ended says whether the resync was still running then (it must be, for
  the figure to hold). Node a's log stalls (writes waiting for a consistency point to free log space, from its
  status) while fio ran are given as well.${capped === undefined ? '' : ` Then node a restarts with \`resync.rateMax: ${(capped.rateMax ?? 0) / 1024 ** 2}MiB\` (node b
  keeps running and reconnects) and the same is measured against the same baseline, with a resync paced to
  last about ${format(sizeBytes / (capped.rateMax ?? 1))} s.`}

${resyncText(figures)}

Raw fio JSON of the 4k randwrite runs and the figures (\`resync\` in the summary) are written to \`bench/results/\` (not kept in git).
`;
}

/** How the recovery section's line in docs/benchmarks.md starts. */
const RECOVERY_LINE_START = 'Recovery after SIGKILL with a full 64 MiB log partition';

function recoveryLine(recovery: RecoveryFigure, date: string): string {
  return (
    `${RECOVERY_LINE_START} of 4 KiB writes: ${recovery.entries} entries ` +
    `(${format(recovery.bytes / 1024 ** 2)} MiB) replayed in ${recovery.recoveryMs} ms (run of ${date.slice(0, 10)}).`
  );
}

/** `doc` with `line` as its only recovery line, in front of the "Run it yourself" paragraph. */
function withRecoveryLine(doc: string, line: string): string {
  const kept = doc
    .split('\n\n')
    .filter((paragraph) => !paragraph.startsWith(RECOVERY_LINE_START))
    .join('\n\n');
  const at = kept.indexOf('Run it yourself');
  return at === -1 ? `${kept.trimEnd()}\n\n${line}` : `${kept.slice(0, at)}${line}\n\n${kept.slice(at)}`;
}

/**
 * Rewrites docs/benchmarks.md: the part of each section that ran, and what was there for the
 * others. The recovery line lives in the servers' part and is kept or replaced on its own.
 */
function writeDoc(servers: string | null, recovery: string | null, resync: string | null, failover: string | null): void {
  const file = path.join(root, 'docs/benchmarks.md');
  const whole = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  const failoverAt = whole.indexOf(failoverDocMarker);
  const existing = failoverAt === -1 ? whole : whole.slice(0, failoverAt);
  const oldFailover = failoverAt === -1 ? '' : whole.slice(failoverAt + failoverDocMarker.length);
  const at = existing.indexOf(resyncDocMarker);
  const oldServers = at === -1 ? existing : existing.slice(0, at);
  const oldResync = at === -1 ? '' : existing.slice(at + resyncDocMarker.length);
  let serversPart = (servers ?? oldServers).trimEnd();
  const line = recovery ?? oldServers.split('\n\n').find((paragraph) => paragraph.startsWith(RECOVERY_LINE_START)) ?? null;
  if (line !== null && serversPart !== '') serversPart = withRecoveryLine(serversPart, line.trim());
  const parts = [serversPart];
  const resyncPart = (resync ?? oldResync).trim();
  if (resyncPart !== '') parts.push(`${resyncDocMarker}\n\n${resyncPart}`);
  const failoverPart = (failover ?? oldFailover).trim();
  if (failoverPart !== '') parts.push(`${failoverDocMarker}\n\n${failoverPart}`);
  fs.writeFileSync(file, parts.filter((part) => part !== '').join('\n\n') + '\n');
}

// ---- failover ------------------------------------------------------------------------------

const failoverRuns = Math.max(1, Math.floor(envSeconds('BENCH_FAILOVER_RUNS', 10)));

interface FailoverRun {
  /** From SIGKILL of node a until node b's status shows its session with a gone. */
  detectMs: number;
  /** The promote call on node b's admin API (its answer: b is the primary). */
  promoteMs: number;
  /** qemu-io connecting to node b and writing 4 KiB with FUA. */
  firstWriteMs: number;
  /** From SIGKILL to the first write's acknowledgement. */
  totalMs: number;
}

/** One automatic failover through etcd: SIGKILL of the primary until a client's first write through node b is acknowledged. */
interface AutoFailoverRun {
  /** From SIGKILL until node b's status says it is the primary. */
  promotedMs: number;
  /** From SIGKILL until a client that keeps trying node b has its first 4 KiB FUA write acknowledged. */
  totalMs: number;
}

/** The settings of the automatic failover runs: the defaults, and a tight one. */
const autoSettings = [
  { name: 'defaults', heartbeat: null, leaseTtlMs: 5000 },
  { name: 'tight', heartbeat: { intervalMs: 100, timeoutMs: 600, probationMs: 600 }, leaseTtlMs: 2000 },
] as const;

interface FailoverFigures {
  runs: FailoverRun[];
  /** Per setting of autoSettings, its runs. */
  auto: { name: string; leaseTtlMs: number; heartbeatTimeoutMs: number; runs: AutoFailoverRun[] }[];
  volumeBytes: number;
  /** The failed-disk runs (empty when they could not run here: not root, or tools missing). */
  disk: DiskFailureRun[];
  diskSkipped: string | null;
}

interface DiskFailureRun {
  /** The median latency of the client's writes before the disk failed. */
  beforeP50Ms: number;
  /** The slowest write under way between the failure and a second after the node went diskless. */
  slowestMs: number;
  /** From the failure (the error filter's trigger) to node a's status saying diskless. */
  disklessMs: number;
  /** The median latency of the client's writes a second after the node went diskless and later. */
  afterP50Ms: number;
}

/**
 * One failover: a two-node sync volume, 16 MiB written through node a, node b in sync;
 * node a SIGKILLed, node b promoted by its admin API as soon as it saw its session end,
 * and a first 4 KiB FUA write through node b (qemu-io, connection included).
 */
async function failoverOnce(run: number): Promise<FailoverRun> {
  const dir = path.join(workDir, `failover-${run}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const config = await writeMirrorConfig(dir, 'sync');
  const started: { a: MirrorNode | null; b: MirrorNode | null } = { a: null, b: null };
  try {
    const { a, bReady } = await startFilledPair(config, started);
    const bAdmin = `http://${bReady.admin}`;
    const bVolume = async (): Promise<MirrorVolumeStatus> => mirrorVolume({ adminUrl: bAdmin });
    await pollUntil('node b in sync', () => bVolume().then((volume) => volume.source?.promotable === true), 30_000);
    const killedAt = performance.now();
    a.child.kill('SIGKILL');
    await pollUntil('node b sees node a gone', () => bVolume().then((volume) => volume.source?.connected === false), 30_000, 1);
    const detectedAt = performance.now();
    const response = await fetch(`${bAdmin}/api/v1/volumes/vol0/promote`, { method: 'POST', body: '{}', signal: AbortSignal.timeout(60_000) });
    if (!response.ok) throw new Error(`promote of node b answered ${response.status}: ${await response.text()}`);
    const promotedAt = performance.now();
    await runTool('qemu-io', ['-f', 'raw', '-t', 'none', `nbd://${bReady.nbd}/vol0`, '-c', 'write -P 0x6b -f 0 4k'], 60_000);
    const writtenAt = performance.now();
    return {
      detectMs: Math.round(detectedAt - killedAt),
      promoteMs: Math.round(promotedAt - detectedAt),
      firstWriteMs: Math.round(writtenAt - promotedAt),
      totalMs: Math.round(writtenAt - killedAt),
    };
  } finally {
    await stopPair(started);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The two nodes of a failover run: node b first, then node a; once node a streams to
 * node b, 16 MiB written through node a. `started` holds them as they start, for the
 * caller's `stopPair` however this ends.
 */
async function startFilledPair(config: string, started: { a: MirrorNode | null; b: MirrorNode | null }): Promise<{ a: MirrorNode; aReady: { nbd: string; admin: string }; bReady: { nbd: string; admin: string } }> {
  const b = spawnNode(config, 'b');
  started.b = b;
  const bReady = await waitNodeReady(b, 120_000);
  const a = spawnNode(config, 'a');
  started.a = a;
  const aReady = await waitNodeReady(a, 120_000);
  const mirror: Mirror = { primary: a, secondary: b, adminUrl: `http://${aReady.admin}` };
  await waitMirror(mirror, 'node a streaming to node b', streaming, 60_000);
  await runTool('qemu-io', ['-f', 'raw', '-t', 'none', `nbd://${aReady.nbd}/vol0`, '-c', 'write -P 0x5a 0 16M', '-c', 'flush'], 60_000);
  return { a, aReady, bReady };
}

async function stopPair(started: { a: MirrorNode | null; b: MirrorNode | null }): Promise<void> {
  if (started.a !== null) await stopServer(started.a.child);
  if (started.b !== null) await stopServer(started.b.child);
}

/** Polls `check` every `everyMs` until it holds (bounded by `timeoutMs`). */
async function pollUntil(what: string, check: () => Promise<boolean>, timeoutMs: number, everyMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(everyMs);
  }
}

/**
 * A client that keeps trying node b: it connects and writes 4 KiB with FUA, again every
 * 10 ms until a write is acknowledged (node b refuses clients until it is the primary).
 */
const retryingWriter = `
import sys, time, nbd
uri = sys.argv[1]
buf = bytearray(b'\\x6b' * 4096)
deadline = time.monotonic() + 120
while True:
    try:
        h = nbd.NBD()
        h.connect_uri(uri)
        h.pwrite(buf, 0, nbd.CMD_FLAG_FUA)
        h.shutdown()
        print('written', flush=True)
        break
    except nbd.Error as e:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.01)
`;

/** etcd for the automatic failover runs: one member on loopback ports, its data under `dir`. */
async function startEtcd(dir: string): Promise<{ child: ChildProcess; url: string }> {
  const client = await freePort('127.0.0.1');
  let peer = await freePort('127.0.0.1');
  while (peer === client) peer = await freePort('127.0.0.1');
  const url = `http://127.0.0.1:${client}`;
  const peerUrl = `http://127.0.0.1:${peer}`;
  const child = spawn('etcd', [
    '--name', 'bench', '--data-dir', path.join(dir, 'etcd'),
    '--listen-client-urls', url, '--advertise-client-urls', url,
    '--listen-peer-urls', peerUrl, '--initial-advertise-peer-urls', peerUrl,
    '--initial-cluster', `bench=${peerUrl}`, '--initial-cluster-state', 'new', '--log-level', 'error',
  ], { stdio: ['ignore', 'ignore', 'ignore'] });
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const answer = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) });
      if (answer.ok) return { child, url };
    } catch {
      // Not up yet.
    }
    if (Date.now() > deadline || child.exitCode !== null) {
      await stopServer(child);
      throw new Error('etcd did not start within 30 s');
    }
    await sleep(50);
  }
}

/**
 * One automatic failover: as failoverOnce, with both nodes coordinated through etcd (a key
 * prefix of the run's own); node a SIGKILLed, and a client trying node b at once until its
 * write is acknowledged. Nothing promotes node b but the expiry of node a's lease.
 */
async function autoFailoverOnce(run: number, setting: (typeof autoSettings)[number], etcdUrl: string): Promise<AutoFailoverRun> {
  const dir = path.join(workDir, `auto-failover-${setting.name}-${run}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const heartbeat = setting.heartbeat === null ? '' : `heartbeat: { intervalMs: ${setting.heartbeat.intervalMs}, timeoutMs: ${setting.heartbeat.timeoutMs}, probationMs: ${setting.heartbeat.probationMs} }\n`;
  const coordination = `coordination:\n  etcd:\n    endpoints: [${etcdUrl}]\n    prefix: bench/${setting.name}-${run}-${Date.now()}\n    leaseTtlMs: ${setting.leaseTtlMs}\n`;
  const config = await writeMirrorConfig(dir, 'sync', coordination + heartbeat);
  const started: { a: MirrorNode | null; b: MirrorNode | null } = { a: null, b: null };
  try {
    const { a, bReady } = await startFilledPair(config, started);
    const bAdmin = `http://${bReady.admin}`;
    const status = async (): Promise<{ coordination: { kind: string; volumes?: Record<string, { synced: string[] | null }> }; volumes: MirrorVolumeStatus[] }> =>
      (await fetch(`${bAdmin}/api/v1/status`, { signal: AbortSignal.timeout(10_000) })).json() as never;
    // Node b may claim the volume: in sync, and named in etcd's synced set.
    await pollUntil('node b in sync and in the synced set', async () => {
      const answer = await status();
      return answer.volumes[0]?.source?.promotable === true && (answer.coordination.volumes?.['vol0']?.synced ?? []).includes('b');
    }, 60_000);
    const killedAt = performance.now();
    a.child.kill('SIGKILL');
    const client = spawn('/usr/bin/python3', ['-c', retryingWriter, `nbd://${bReady.nbd}/vol0`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let promotedAt: number | null = null;
    const written = new Promise<number>((resolve, reject) => {
      client.stdout.on('data', () => resolve(performance.now()));
      client.once('exit', (code) => reject(new Error(`the client exited (${code}) without a write`)));
    });
    const watch = (async () => {
      while (promotedAt === null) {
        const answer = await status().catch(() => null);
        if (answer?.volumes[0]?.role === 'primary') promotedAt = performance.now();
        else await sleep(5);
      }
    })();
    const writtenAt = await written;
    await watch;
    await stopServer(client);
    return { promotedMs: Math.round((promotedAt ?? writtenAt) - killedAt), totalMs: Math.round(writtenAt - killedAt) };
  } finally {
    await stopPair(started);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function benchFailover(): Promise<FailoverFigures> {
  const runs: FailoverRun[] = [];
  for (let run = 0; run < failoverRuns; run += 1) {
    runs.push(await failoverOnce(run));
    process.stderr.write(`  failover ${run + 1}/${failoverRuns}: ${JSON.stringify(runs[runs.length - 1])}\n`);
  }
  const auto: FailoverFigures['auto'] = [];
  const etcdDir = path.join(workDir, 'etcd');
  fs.rmSync(etcdDir, { recursive: true, force: true });
  fs.mkdirSync(etcdDir, { recursive: true });
  const etcd = await startEtcd(etcdDir);
  try {
    for (const setting of autoSettings) {
      const settingRuns: AutoFailoverRun[] = [];
      for (let run = 0; run < failoverRuns; run += 1) {
        settingRuns.push(await autoFailoverOnce(run, setting, etcd.url));
        process.stderr.write(`  automatic failover (${setting.name}) ${run + 1}/${failoverRuns}: ${JSON.stringify(settingRuns[settingRuns.length - 1])}\n`);
      }
      auto.push({ name: setting.name, leaseTtlMs: setting.leaseTtlMs, heartbeatTimeoutMs: setting.heartbeat?.timeoutMs ?? 2000, runs: settingRuns });
    }
  } finally {
    await stopServer(etcd.child);
    fs.rmSync(etcdDir, { recursive: true, force: true });
  }
  const disk: DiskFailureRun[] = [];
  const diskSkipped = process.getuid?.() === 0 ? null : 'not root (the failing disk is a mount of nbdfuse and a loop device)';
  for (let run = 0; diskSkipped === null && run < failoverRuns; run += 1) {
    disk.push(await diskFailureOnce(run));
    process.stderr.write(`  failed disk ${run + 1}/${failoverRuns}: ${JSON.stringify(disk[disk.length - 1])}\n`);
  }
  return { runs, auto, volumeBytes: sizeBytes, disk, diskSkipped };
}

/**
 * A client's sequential 4 KiB FUA writes through libnbd, each timed: one line per write,
 * `<start, ms since the epoch> <latency ms>`, until `count` writes are done.
 */
const timedWriter = `
import sys, time, nbd
uri, count = sys.argv[1], int(sys.argv[2])
h = nbd.NBD()
h.connect_uri(uri)
buf = bytearray(b'\\x5a' * 4096)
size = h.get_size()
for i in range(count):
    start = time.time()
    t0 = time.perf_counter()
    h.pwrite(buf, (i * 4096) % size, nbd.CMD_FLAG_FUA)
    print('%.3f %.3f' % (start * 1000, (time.perf_counter() - t0) * 1000), flush=True)
h.shutdown()
`;

/**
 * One failed disk: a two-node sync volume whose node a keeps its data directory on ext4
 * over nbdkit's error filter (as test/faults/failed-disk.test.ts); a client writes 4 KiB
 * with FUA through node a, one at a time; after 500 writes the filter's trigger is
 * created, node a goes diskless, and the client writes on. What the failure cost the
 * client is the slowest write under way from the failure until a second after node a
 * said it was diskless.
 */
async function diskFailureOnce(run: number): Promise<DiskFailureRun> {
  const dir = path.join(workDir, `failed-disk-${run}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const config = await writeMirrorConfig(dir, 'sync');
  const backing = path.join(dir, 'backing.img');
  const trigger = path.join(dir, 'disk-fails');
  execFileSync('truncate', ['-s', `${Math.max(256, Math.ceil((sizeBytes * 2) / 2 ** 20))}M`, backing]);
  const { stack } = await PoweredStack.powerOn(backing, path.join(dir, 'fuse'), path.join(dir, 'data-a'), true, {
    filters: ['error'],
    params: ['error-rate=100%', `error-file=${trigger}`, 'error=EIO'],
  });
  const b = spawnNode(config, 'b');
  let a: MirrorNode | null = null;
  let client: ChildProcess | null = null;
  try {
    await waitNodeReady(b, 120_000);
    a = spawnNode(config, 'a');
    const aReady = await waitNodeReady(a, 120_000);
    const adminUrl = `http://${aReady.admin}`;
    await waitMirror({ primary: a, secondary: b, adminUrl }, 'node a streaming to node b', streaming, 60_000);
    const lines: string[] = [];
    const count = 3000;
    // Debian's python3, which has libnbd's bindings (python3-libnbd), whatever else is on PATH.
    const started = spawn('/usr/bin/python3', ['-c', timedWriter, `nbd://${aReady.nbd}/vol0`, String(count)], { stdio: ['ignore', 'pipe', 'pipe'] });
    client = started;
    let partial = '';
    let stderr = '';
    started.stdout?.setEncoding('utf8').on('data', (text: string) => {
      const parts = (partial + text).split('\n');
      partial = parts.pop() ?? '';
      lines.push(...parts);
    });
    started.stderr?.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    const exited = new Promise<number | null>((resolve) => started.once('exit', (code) => resolve(code)));
    await pollUntil('500 writes before the failure', async () => lines.length >= 500 || started.exitCode !== null, 60_000);
    const failedAt = Date.now();
    fs.writeFileSync(trigger, '');
    const aNode = a;
    await pollUntil('node a diskless', () => mirrorVolume({ adminUrl }).then((volume) => volume.disk === 'diskless'), 60_000, 5).catch((error: unknown) => {
      throw new Error(`${String(error)}; the client: ${lines.length} writes, ${stderr.trim().slice(-300)}; node a's last lines:\n${aNode.tail.join('\n')}`);
    });
    const disklessAt = Date.now();
    const code = await exited;
    client = null;
    if (code !== 0) throw new Error(`the timed writer failed (exit ${code}): ${stderr.trim().slice(-500)}`);
    const writes = lines.map((line) => line.split(' ').map(Number)).map(([start, latency]) => ({ start: start ?? 0, latency: latency ?? 0 }));
    const median = (values: number[]): number => {
      const sorted = [...values].sort((x, y) => x - y);
      return sorted[Math.floor((sorted.length - 1) / 2)] ?? 0;
    };
    const around = writes.filter((write) => write.start + write.latency >= failedAt && write.start <= disklessAt + 1000);
    return {
      beforeP50Ms: Number(median(writes.filter((write) => write.start + write.latency < failedAt).map((write) => write.latency)).toFixed(2)),
      slowestMs: Number(Math.max(0, ...around.map((write) => write.latency)).toFixed(1)),
      disklessMs: disklessAt - failedAt,
      afterP50Ms: Number(median(writes.filter((write) => write.start > disklessAt + 1000).map((write) => write.latency)).toFixed(2)),
    };
  } finally {
    client?.kill('SIGKILL');
    if (a !== null) await stopServer(a.child);
    await stopServer(b.child);
    fs.rmSync(trigger, { force: true });
    await runCleanupSteps(stack.cleanupSteps());
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function failoverText(figures: FailoverFigures): string {
  const row = <T>(runs: T[], name: string, pick: (run: T) => number): string => {
    const values = runs.map(pick).sort((x, y) => x - y);
    const p50 = values[Math.floor((values.length - 1) / 2)] ?? 0;
    return `| ${name} | ${p50} ms | ${values[0] ?? 0} ms | ${values[values.length - 1] ?? 0} ms |`;
  };
  const disk =
    figures.disk.length === 0
      ? [`(The failed-disk runs did not run: ${figures.diskSkipped ?? 'none asked for'}.)`]
      : [
          `| a failed disk under the primary (${figures.disk.length} runs) | p50 | min | max |`,
          '|---|---|---|---|',
          row(figures.disk, '4 KiB FUA write, before the failure (median of each run)', (run) => run.beforeP50Ms),
          row(figures.disk, 'the failure → node a says diskless', (run) => run.disklessMs),
          row(figures.disk, '**the slowest write around the failure**', (run) => run.slowestMs),
          row(figures.disk, '4 KiB FUA write, diskless (median of each run)', (run) => run.afterP50Ms),
        ];
  return [
    `| failover of a two-node sync volume (${figures.runs.length} runs) | p50 | min | max |`,
    '|---|---|---|---|',
    row(figures.runs, 'SIGKILL of the primary → the secondary sees its session end', (run) => run.detectMs),
    row(figures.runs, 'promote (admin API call) → primary', (run) => run.promoteMs),
    row(figures.runs, 'first 4 KiB FUA write through the new primary (qemu-io, connection included)', (run) => run.firstWriteMs),
    row(figures.runs, '**SIGKILL → first write acknowledged by the promoted node**', (run) => run.totalMs),
    '',
    ...figures.auto.flatMap((setting) => [
      `| automatic failover through etcd, ${setting.name}: leaseTtlMs ${setting.leaseTtlMs}, heartbeat.timeoutMs ${setting.heartbeatTimeoutMs} (${setting.runs.length} runs) | p50 | min | max |`,
      '|---|---|---|---|',
      row(setting.runs, 'SIGKILL of the primary → node b says it is the primary', (run) => run.promotedMs),
      row(setting.runs, `**SIGKILL → first write acknowledged by node b, as a client trying it sees it** (goal: under ${setting.leaseTtlMs + 1000} ms at p50)`, (run) => run.totalMs),
      '',
    ]),
    ...disk,
  ].join('\n');
}

function failoverDoc(summary: { date: string; machine: { cpus: number; cpuModel: string; memoryGiB: number; kernel: string } }, figures: FailoverFigures): string {
  return `## Failover

Latest run of the failover section, ${summary.date.slice(0, 10)} (\`BENCH_SECTIONS=failover npm run bench\` runs it alone): ${summary.machine.cpus} cores (${summary.machine.cpuModel}),
${summary.machine.memoryGiB} GiB, Linux ${summary.machine.kernel}. Each run starts a \`mode: sync\` volume of ${sizeText} mirrored from node a to
node b as for blockmirror-sync above, writes 16 MiB through node a and waits until node b says it may be promoted
(in sync at its last contact); then node a is SIGKILLed, node b's status is polled every millisecond until its
session with node a is gone, \`POST /api/v1/volumes/vol0/promote\` goes to node b at once, and \`qemu-io\` connects
to node b and writes 4 KiB with FUA. This failover is by command, so the time a person or a cluster manager
takes to decide is not in these figures; the automatic failover through etcd below has it. Most of the promotion is making the new
primary's own log, whose partitions (\`log:\` here: ${process.env['BENCH_LOG'] ?? 'the default 4 × 64 MiB'}) are written as zeroes and
synced, so it grows with the log's size.

The automatic failover runs do the same with both nodes coordinated through a one-member etcd on loopback
(docs/operations.md, "Automatic failover through etcd"), at the defaults and at a tight setting. Nobody promotes:
node a is SIGKILLed, and a client (libnbd) connects to node b and writes 4 KiB with FUA, trying again every 10 ms
until a write is acknowledged (node b refuses clients while it is a secondary). Node a's lease expires in etcd
between 3/4 of a lease and a whole lease after its last renewal; etcd looks for expired leases twice a second;
node b reads the volume's keys every 250 ms (a sixteenth of a lease when that is shorter), claims at once (no other
copy to wait for) and promotes itself.

The failed-disk runs keep node a's data directory on ext4 over \`nbdfuse\` of \`nbdkit\` with its \`error\`
filter (the stack of \`test/faults/failed-disk.test.ts\`); a client (libnbd) writes 4 KiB with FUA through node a,
one write at a time, and after 500 writes the filter's trigger makes every request to the disk fail with EIO.
Node a goes diskless (the write that met the error is made again through node b) and the client goes on; what
the failure costs it is its slowest write from the failure until a second after node a's status said
\`diskless\`. Diskless, every write is acknowledged once node b holds it durably, with no local log write.

${failoverText(figures)}`;
}

async function main(): Promise<void> {
  fs.mkdirSync(resultsDir, { recursive: true });
  fs.mkdirSync(workDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const sections = selectedSections();
  const servers = (process.env['BENCH_SERVERS'] ?? 'blockmirror,blockmirror-sync,blockmirror-async,nbdkit,qemu-nbd').split(',');
  const known = ['blockmirror', ...Object.keys(mirrorModes), 'nbdkit', 'qemu-nbd'];
  const unknown = servers.filter((server) => !known.includes(server));
  if (unknown.length > 0) throw new Error(`BENCH_SERVERS: unknown ${unknown.join(', ')} (known: ${known.join(', ')})`);
  const runs: ServerRun[] = [];
  if (sections.includes('servers')) {
    for (const server of servers) {
      process.stderr.write(`benchmarking ${server} (${sizeText}, ${runtimeS} s per workload)\n`);
      runs.push(await benchServer(server, stamp));
    }
  }
  let recovery: RecoveryFigure | null = null;
  if (sections.includes('recovery') && servers.includes('blockmirror') && process.env['BENCH_RECOVERY'] !== '0') {
    process.stderr.write('measuring recovery of a full 64 MiB log partition of 4k writes\n');
    recovery = await benchRecovery();
  }
  let resync: ResyncFigures | null = null;
  if (sections.includes('resync')) {
    process.stderr.write(`measuring resync and catch-up of a ${sizeText} two-node sync volume\n`);
    resync = await benchResync(stamp);
  }
  let failover: FailoverFigures | null = null;
  if (sections.includes('failover')) {
    process.stderr.write(`measuring failover of a two-node sync volume, ${failoverRuns} runs\n`);
    failover = await benchFailover();
  }
  const text = runs.length > 0 ? table(runs).trim() : '';
  const recoveryText = recovery === null ? null : recoveryLine(recovery, new Date().toISOString());
  const printed = [text, recoveryText ?? '', resync === null ? '' : resyncText(resync), failover === null ? '' : failoverText(failover)].filter((part) => part !== '').join('\n\n');
  process.stdout.write(printed + '\n');
  const summary = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? '', memoryGiB: Math.round(os.totalmem() / 1024 ** 3), kernel: os.release() },
    sections,
    runtimeS,
    sizeBytes,
    runs,
    recovery,
    resync,
    failover,
  };
  fs.writeFileSync(path.join(resultsDir, `${stamp}-summary.json`), JSON.stringify(summary, null, 2) + '\n');
  writeDoc(
    runs.length > 0 ? serversDoc(summary, text) : null,
    recoveryText,
    resync === null ? null : resyncDoc(summary, resync),
    failover === null ? null : failoverDoc(summary, failover),
  );
}

main().catch((error: unknown) => {
  process.stderr.write(`bench: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
