#!/usr/bin/env node
// The `blockmirror` command. Each subcommand parses its own flags; errors print one
// line naming the problem and exit non-zero (2 for usage and configuration, 1 for
// failures at run time).

import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { formatAddress, loadClusterConfig, type ClusterConfig } from '../control/config.js';
import { BlockmirrorError } from '../lib/errors.js';
import { Logger, parseLogLevel } from '../lib/log.js';
import { BlockmirrorNode } from '../server/node.js';
import { DurableFiles, parseCrashPoint, type CrashPoint } from '../storage/durable-files.js';
import { NodeFileSystem } from '../io/file-system.js';
import type { NodeStatus } from '../server/status.js';
import type { VerifyReport } from '../server/online-verify.js';
import { parseFlags, required, type Flags } from './flags.js';
import { changeRole, resolve } from './role-commands.js';
import { splitBrain } from './split-brain-commands.js';
import { formatBytes } from '../lib/size.js';

const usage = `blockmirror — replicated block storage served over NBD

Usage:
  blockmirror demo [--dir DIR]                         start a local cluster under ./blockmirror-demo/
  blockmirror serve --config FILE --node ID            run one node of a cluster
  blockmirror status (--config FILE | --admin URL) [--json | --watch]
                                                       show nodes, volumes and peers; --watch
                                                       redraws every second, with resync progress
  blockmirror verify VOLUME (--config FILE | --admin URL) [--repair] [--json]
                                                       compare every region of VOLUME across its
                                                       replicas while it stays in use; --repair
                                                       resyncs the regions that differ. Exit 0:
                                                       identical, 1: regions differ, 3: could not
                                                       compare every replica
  blockmirror promote VOLUME --node N (--config FILE | --admin URL) [--force] [--json]
                                                       make node N's copy of VOLUME its primary in
                                                       a new epoch; refused when N may lack writes
                                                       the primary acknowledged, unless --force
  blockmirror demote VOLUME --node N (--config FILE | --admin URL) [--json]
                                                       node N, VOLUME's primary, steps down: its
                                                       clients drain and are refused until another
                                                       node is promoted
  blockmirror attach VOLUME --node N (--config FILE | --admin URL) [--json]
                                                       node N, serving VOLUME from its peers since
                                                       its disk failed, takes a replaced (empty)
                                                       disk: its image is filled from a peer while
                                                       clients go on
  blockmirror resolve VOLUME --discard N (--config FILE | --admin URL --winner-admin URL) [--json]
                                                       end a split brain: node N's copy saves its
                                                       writes since the split, discards them and
                                                       follows the other copy, which becomes (or
                                                       stays) the primary
  blockmirror split-brain show FILE [--json]           show what a copy that lost a split brain
                                                       saved of its writes (FILE, under
                                                       <dataDir>/split-brain/): who lost and won,
                                                       the epoch, and each record's offset and
                                                       length; every record is checked
  blockmirror split-brain extract FILE --to PATH [--json]
                                                       write each saved record at its offset into
                                                       PATH (created 0600 if absent, never
                                                       truncated); a damaged FILE writes nothing
  blockmirror check-config --config FILE               validate a cluster file and exit
  blockmirror --help | --version

Environment:
  BLOCKMIRROR_LOG_LEVEL   debug | info | warn | error (default info); logs are JSON lines on stderr

Documentation: README.md, docs/configuration.md, docs/operations.md`;

function packageVersion(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 5; depth += 1) {
    const file = path.join(dir, 'package.json');
    if (fs.existsSync(file)) return (JSON.parse(fs.readFileSync(file, 'utf8')) as { version: string }).version;
    dir = path.dirname(dir);
  }
  return 'unknown';
}

async function serve(args: string[]): Promise<number> {
  const flags = parseFlags(args, ['--config', '--node'], []);
  const config = loadClusterConfig(required(flags, '--config'));
  const log = new Logger(process.stderr, parseLogLevel(process.env['BLOCKMIRROR_LOG_LEVEL'])).child({
    node: required(flags, '--node'),
  });
  const node = new BlockmirrorNode(config, required(flags, '--node'), log, new DurableFiles(new NodeFileSystem(), crashPointFromEnv()));
  let signalled = false;
  const stopped = new Promise<void>((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      if (signalled) return;
      signalled = true;
      log.info('signal received, shutting down', { signal });
      node.stop().then(resolve, (error: unknown) => {
        log.error('shutdown failed', { error: String(error) });
        process.exit(1);
      });
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
  try {
    await node.start();
  } catch (error) {
    await node.stop().catch(() => undefined);
    throw error;
  }
  await stopped;
  return 0;
}

/**
 * BLOCKMIRROR_CRASH_POINT=<operation>:<n> kills the node with SIGKILL right after the nth
 * change to its files made by that operation (crash tests with real processes).
 */
function crashPointFromEnv(): CrashPoint | null {
  const text = process.env['BLOCKMIRROR_CRASH_POINT'];
  if (text === undefined || text === '') return null;
  try {
    return parseCrashPoint(text);
  } catch (error) {
    throw new BlockmirrorError('ERR_USAGE', (error as Error).message);
  }
}

function checkConfig(args: string[]): number {
  const flags = parseFlags(args, ['--config'], []);
  const config = loadClusterConfig(required(flags, '--config'));
  process.stdout.write(
    `${required(flags, '--config')}: valid (cluster ${config.cluster}, ${config.nodes.length} node(s), ` +
      `${config.volumes.length} volume(s))\n`,
  );
  return 0;
}

async function fetchStatus(url: string): Promise<NodeStatus> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 3000);
  try {
    const response = await fetch(new URL('/api/v1/status', url), { signal: controller.signal });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return (await response.json()) as NodeStatus;
  } catch (error) {
    throw new BlockmirrorError('ERR_ADMIN_UNREACHABLE', `cannot reach ${url}: ${(error as Error).message}`);
  } finally {
    clearTimeout(timer);
  }
}

function adminUrls(flags: Flags): string[] {
  const admin = flags.values.get('--admin');
  if (admin !== undefined) return [admin];
  const config: ClusterConfig = loadClusterConfig(required(flags, '--config'));
  return config.nodes.map((node) => `http://${formatAddress(node.admin)}`);
}

type StatusResult = { url: string; status: NodeStatus } | { url: string; error: string };

async function fetchAll(urls: string[]): Promise<StatusResult[]> {
  return Promise.all(
    urls.map(async (url): Promise<StatusResult> => {
      try {
        return { url, status: await fetchStatus(url) };
      } catch (error) {
        return { url, error: (error as Error).message };
      }
    }),
  );
}

async function status(args: string[]): Promise<number> {
  const flags = parseFlags(args, ['--config', '--admin'], ['--json', '--watch']);
  const urls = adminUrls(flags);
  if (flags.switches.has('--watch')) return watch(urls);
  const results = await fetchAll(urls);
  if (flags.switches.has('--json')) {
    process.stdout.write(JSON.stringify({ nodes: results }, null, 2) + '\n');
  } else {
    process.stdout.write(statusTable(results));
  }
  return results.every((result) => 'status' in result) ? 0 : 1;
}

/** Redraws the table every second, with a progress bar for each peer being resynced, until Ctrl-C. */
async function watch(urls: string[]): Promise<number> {
  let stopped = false;
  const stop = (): void => {
    stopped = true;
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  while (!stopped) {
    const results = await fetchAll(urls);
    let screen = `\x1b[2J\x1b[Hblockmirror status, ${new Date().toISOString()} (Ctrl-C to stop)\n\n${statusTable(results)}`;
    for (const result of results) {
      if (!('status' in result)) continue;
      for (const volume of result.status.volumes) {
        for (const peer of volume.peers ?? []) {
          if (peer.resync === null || peer.resync === undefined) continue;
          screen += `\n${result.status.node} -> ${peer.node} ${volume.name}: ${progressLine(volume.sizeBytes, peer.resync)}`;
        }
      }
    }
    process.stdout.write(screen + '\n');
    for (let waited = 0; waited < 1000 && !stopped; waited += 50) await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return 0;
}

/** Exit statuses of `blockmirror verify`. */
const VERIFY_SAME = 0;
const VERIFY_DIFFERENT = 1;
const VERIFY_INCOMPLETE = 3;

async function verify(args: string[]): Promise<number> {
  const [volume, ...rest] = args;
  if (volume === undefined || volume.startsWith('-')) throw new BlockmirrorError('ERR_USAGE', 'verify needs a VOLUME (see blockmirror --help)');
  const flags = parseFlags(rest, ['--config', '--admin'], ['--repair', '--json']);
  let admin = flags.values.get('--admin');
  if (admin === undefined) {
    // The volume's primary runs the verify.
    const config = loadClusterConfig(required(flags, '--config'));
    const spec = config.volumes.find((candidate) => candidate.name === volume);
    if (spec === undefined) throw new BlockmirrorError('ERR_USAGE', `the cluster file has no volume "${volume}"`);
    const primary = config.nodes.find((node) => node.id === spec.primary);
    if (spec.mode === 'local' || primary === undefined) throw new BlockmirrorError('ERR_USAGE', `volume "${volume}" is not mirrored: there is nothing to compare`);
    admin = `http://${formatAddress(primary.admin)}`;
  }
  const url = new URL(`/api/v1/volumes/${encodeURIComponent(volume)}/verify`, admin);
  const call = async (method: 'GET' | 'POST'): Promise<VerifyReport> => {
    let response: Response;
    try {
      response = await fetch(url, { method, ...(method === 'POST' ? { body: JSON.stringify({ repair: flags.switches.has('--repair') }) } : {}), signal: AbortSignal.timeout(10_000) });
    } catch (error) {
      throw new BlockmirrorError('ERR_ADMIN_UNREACHABLE', `cannot reach ${admin}: ${(error as Error).message}`);
    }
    const body = (await response.json()) as unknown;
    if (!response.ok) {
      const message = (body as { error?: { message?: string } }).error?.message;
      throw new BlockmirrorError('ERR_VERIFY_REFUSED', message ?? `HTTP ${response.status}`);
    }
    return body as VerifyReport;
  };
  let report: VerifyReport;
  try {
    report = await call('POST');
    const tty = process.stderr.isTTY === true && !flags.switches.has('--json');
    while (report.state === 'running' || report.state === 'repairing') {
      if (tty) {
        const done = report.checkedBytes / Math.max(1, report.totalBytes);
        process.stderr.write(`\r${report.state} ${Math.floor(done * 100)}% (${formatBytes(report.checkedBytes)} of ${formatBytes(report.totalBytes)})   `);
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
      report = await call('GET');
    }
    if (tty) process.stderr.write('\n');
  } catch (error) {
    process.stderr.write(`blockmirror: ${(error as Error).message}\n`);
    return VERIFY_INCOMPLETE;
  }
  if (flags.switches.has('--json')) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  else process.stdout.write(verifyText(report));
  if (report.peers.some((peer) => peer.mismatchedRegions > 0)) return VERIFY_DIFFERENT;
  return report.matched === true ? VERIFY_SAME : VERIFY_INCOMPLETE;
}

function verifyText(report: VerifyReport): string {
  const lines = [`verify of ${report.volume}: ${report.state}, ${formatBytes(report.checkedBytes)} of ${formatBytes(report.totalBytes)} compared in regions of ${formatBytes(report.regionBytes)}`];
  if (report.error !== null) lines.push(`  error: ${report.error}`);
  for (const peer of report.peers) {
    const verdict = !peer.compared
      ? `not fully compared (${peer.note ?? 'unknown'})`
      : peer.mismatchedRegions === 0
        ? 'identical'
        : `${peer.mismatchedRegions} region(s) differ (${formatBytes(peer.mismatchedBytes)})`;
    const repaired = peer.repaired === null ? '' : peer.repaired ? ', repaired' : ', NOT repaired (see blockmirror status)';
    lines.push(`  ${peer.node}: ${verdict}${peer.mismatchedRegions > 0 && peer.compared === false ? `; ${peer.mismatchedRegions} region(s) differ` : ''}${repaired}`);
  }
  const shown = report.mismatches.slice(0, 20);
  for (const region of shown) lines.push(`    ${region.node}: offset ${region.offset}, ${region.lengthBytes} bytes`);
  const total = report.peers.reduce((sum, peer) => sum + peer.mismatchedRegions, 0);
  if (total > shown.length) lines.push(`    ... ${total - shown.length} more (--json lists up to ${report.mismatches.length})`);
  if (total > 0 && !report.repair) lines.push('  the regions are marked out of sync; run again with --repair to resync them from the primary');
  return lines.join('\n') + '\n';
}

function progressLine(totalBytes: number, resync: { remainingBytes: number; rateBytesPerSec: number; etaSeconds: number | null }): string {
  const done = Math.min(1, Math.max(0, 1 - resync.remainingBytes / Math.max(1, totalBytes)));
  const width = 30;
  const filled = Math.round(done * width);
  const eta = resync.etaSeconds === null ? '?' : `${resync.etaSeconds} s`;
  return `resync [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${formatBytes(resync.remainingBytes)} left, ${formatBytes(resync.rateBytesPerSec)}/s, ETA ${eta}`;
}

function statusTable(results: StatusResult[]): string {
  const rows: string[][] = [['NODE', 'VOLUME', 'SIZE', 'MODE', 'ROLE', 'EPOCH', 'DISK', 'WRITES', 'READS', 'LAST SEQ', 'PEER', 'REPLICATION', 'PEER DISK', 'ACKED SEQ', 'LAG', 'OUT OF SYNC']];
  for (const result of results) {
    if (!('status' in result)) {
      rows.push([result.url, '-', '-', '-', 'unreachable']);
      continue;
    }
    for (const volume of result.status.volumes) {
      const own = [
        result.status.node,
        volume.name,
        formatBytes(volume.sizeBytes),
        volume.mode,
        volume.role,
        String(volume.epoch),
        volume.disk,
        String(volume.stats['writeOps'] ?? 0),
        String(volume.stats['readOps'] ?? 0),
        String(volume.log.lastSeq),
      ];
      const peers = volume.peers ?? [];
      if (peers.length === 0) {
        const source = volume.source;
        rows.push(source === null || source === undefined ? own : [...own, `<- ${source.node}`, source.connected ? 'streaming' : 'disconnected']);
      }
      for (const peer of peers) {
        const disk = peer.resyncNeeded === true ? `${peer.disk} (needs resync)` : peer.disk;
        rows.push([...own, `-> ${peer.node}`, peer.replication, disk, String(peer.ackedSeq), formatBytes(peer.lagBytes), formatBytes(peer.outOfSyncBytes)]);
      }
    }
  }
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => (row[column] ?? '').length)));
  const table = rows.map((row) => row.map((cell, column) => cell.padEnd(widths[column] ?? 0)).join('  ').trimEnd() + '\n').join('');
  return table + results.map((result) => ('status' in result ? coordinationLine(result.status) : '')).join('');
}

/** Under coordination through etcd, a node's lease and what it holds (docs/operations.md, "Automatic failover through etcd"). */
function coordinationLine(status: NodeStatus): string {
  const coordination = status.coordination;
  if (coordination.kind !== 'etcd') return '';
  const { validForMs } = coordination.lease;
  const lease = validForMs === null ? 'no lease' : validForMs > 0 ? `lease good for ${(validForMs / 1000).toFixed(1)} s` : 'lease lapsed';
  const held = Object.entries(coordination.volumes).map(([name, volume]) =>
    `${name}: ${volume.holding ? 'held here' : `primary ${volume.primary ?? 'none'}`}, epoch ${volume.epoch}, synced ${volume.synced?.join(',') ?? '-'}`);
  const error = coordination.error === null ? '' : `; etcd: ${coordination.error}`;
  return `node ${status.node}: etcd ${lease}${held.length === 0 ? '' : `; ${held.join('; ')}`}${error}\n`;
}

const demoConfig = `# blockmirror demo cluster, written by \`blockmirror demo\`. Edit and restart to change it.
cluster: demo
secret: demo-secret-change-me
nodes:
  - id: a
    nbd: 127.0.0.1:10809
    replication: 127.0.0.1:7701
    admin: 127.0.0.1:9701
    dataDir: ./data/a
  - id: b
    nbd: 127.0.0.1:10810
    replication: 127.0.0.1:7702
    admin: 127.0.0.1:9702
    dataDir: ./data/b
volumes:
  - name: vol0
    size: 1GiB
    replicas: [a, b]
    primary: a
    mode: sync
    description: blockmirror demo volume, mirrored from a to b
`;

async function demo(args: string[]): Promise<number> {
  const flags = parseFlags(args, ['--dir'], []);
  const dir = path.resolve(flags.values.get('--dir') ?? 'blockmirror-demo');
  const files = new DurableFiles();
  files.makeDir(dir, 'config');
  const configPath = path.join(dir, 'cluster.yaml');
  if (files.kind(configPath) === null) files.replaceFile(configPath, demoConfig, 'config');
  const config = loadClusterConfig(configPath);
  const main = fileURLToPath(import.meta.url);
  // Each node in its own process group, so Ctrl-C reaches only this process, which
  // stops the primaries first (they hand their last consistency point to the peers).
  const children = config.nodes.map((node) => ({
    node,
    process: spawn(process.execPath, [main, 'serve', '--config', configPath, '--node', node.id], {
      stdio: ['ignore', 'inherit', 'inherit'],
      detached: true,
    }),
  }));
  const exited = children.map(
    (child) => new Promise<number>((resolve) => child.process.once('exit', (code) => resolve(code ?? 1))),
  );
  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    const primaries = new Set(config.volumes.map((volume) => volume.primary));
    const order = [...children.filter((child) => primaries.has(child.node.id)), ...children.filter((child) => !primaries.has(child.node.id))];
    for (const child of order) {
      if (child.process.exitCode !== null) continue;
      child.process.kill('SIGTERM');
      await exited[children.indexOf(child)];
    }
  };
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());
  process.stdout.write(`blockmirror demo: cluster file ${configPath}\n`);
  const ready = await waitForStreaming(config, exited);
  for (const volume of config.volumes) {
    const primary = config.nodes.find((node) => node.id === volume.primary);
    if (primary === undefined) continue;
    const peers = volume.replicas.filter((id) => id !== primary.id);
    const mirrored = peers.length === 0 || volume.mode === 'local' ? 'not mirrored' : `${volume.mode}-mirrored to ${peers.join(', ')}`;
    process.stdout.write(`  volume ${volume.name} (${formatBytes(volume.sizeBytes)}, ${mirrored}): nbd://${formatAddress(primary.nbd)}/${volume.name}\n`);
  }
  for (const node of config.nodes) process.stdout.write(`  node ${node.id} dashboard: http://${formatAddress(node.admin)}/\n`);
  if (!ready) process.stdout.write('  (the peers are not streaming yet; see blockmirror status)\n');
  process.stdout.write(`  status: blockmirror status --config ${configPath}\n`);
  process.stdout.write('  try: qemu-io -f raw nbd://127.0.0.1:10809/vol0 -c "write -P 0xab 0 1M" -c "read -P 0xab 0 1M"\n');
  process.stdout.write('Press Ctrl-C to stop.\n');
  const codes = await Promise.all(exited);
  return codes.every((code) => code === 0) ? 0 : 1;
}

/** Waits (bounded) until every primary streams to every peer; false if it did not happen in time. */
async function waitForStreaming(config: ClusterConfig, exited: Promise<number>[]): Promise<boolean> {
  let gone = false;
  void Promise.race(exited).then(() => (gone = true));
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && !gone) {
    const statuses = await Promise.all(
      config.nodes.map((node) => fetchStatus(`http://${formatAddress(node.admin)}`).catch(() => null)),
    );
    const streaming = statuses.every(
      (status) => status !== null && status.volumes.every((volume) => (volume.peers ?? []).every((peer) => peer.replication === 'streaming')),
    );
    if (streaming) return true;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return false;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case '--help':
    case '-h':
    case 'help':
      process.stdout.write(usage + '\n');
      return command === undefined ? 2 : 0;
    case '--version':
      process.stdout.write(`blockmirror ${packageVersion()}\n`);
      return 0;
    case 'serve':
      return serve(rest);
    case 'demo':
      return demo(rest);
    case 'status':
      return status(rest);
    case 'check-config':
      return checkConfig(rest);
    case 'verify':
      return verify(rest);
    case 'promote':
    case 'demote':
    case 'attach':
      return changeRole(command, rest);
    case 'resolve':
      return resolve(rest);
    case 'split-brain':
      return splitBrain(rest);
    default:
      throw new BlockmirrorError('ERR_USAGE', `unknown command "${command}" (see blockmirror --help)`);
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    if (error instanceof BlockmirrorError) {
      process.stderr.write(`blockmirror: ${error.message}\n`);
      process.exit(error.code === 'ERR_USAGE' || error.code === 'ERR_CONFIG_INVALID' ? 2 : 1);
    }
    process.stderr.write(`blockmirror: internal error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(70);
  },
);
