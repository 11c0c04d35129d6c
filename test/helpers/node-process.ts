// Test harness: runs real `blockmirror serve` processes on loopback with ephemeral
// ports, and runs client tools with a time limit. Every process started here is killed
// by its PID when the test process exits, so no test leaks a server.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import dgram from 'node:dgram';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { NodeStatus } from '../../src/server/status.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The `blockmirror` command: dist/test/helpers -> bin/blockmirror.cjs (which runs dist/src/cli/main.js). */
export const cliPath = path.resolve(here, '../../../bin/blockmirror.cjs');

const live = new Set<ChildProcess>();

function killLive(): void {
  for (const child of live) {
    if (child.pid !== undefined && child.exitCode === null) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }
}

process.on('exit', killLive);

/** Kills `child` by its PID if it still runs when the test process exits, as every process started here is. */
export function reapAtExit(child: ChildProcess): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
}

/**
 * Kills (SIGKILL, by PID) every process this harness started that is still running. Test
 * files call it from `after`, so a failed test cannot leave nodes that keep the test
 * process alive.
 */
export function killAll(): void {
  killLive();
}
/**
 * What a test file starts and makes, ended after its tests whatever happened: `first`
 * (such as removing nftables rules) runs, then every process this harness started is
 * killed by its PID, the nodes are reaped, and the directories removed.
 */
export function testResources(): { nodes: TestNode[]; dirs: string[]; first: (() => Promise<void>)[] } {
  const resources = { nodes: [] as TestNode[], dirs: [] as string[], first: [] as (() => Promise<void>)[] };
  after(async () => {
    for (const step of resources.first) await step();
    killAll();
    for (const node of resources.nodes) await node.stop('SIGKILL');
    for (const dir of resources.dirs) fs.rmSync(dir, { recursive: true, force: true });
  });
  return resources;
}

// A test run stopped from outside (a timeout, Ctrl-C) would otherwise skip 'exit'.
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
  process.once(signal, () => {
    killLive();
    process.exit(128 + (signal === 'SIGINT' ? 2 : signal === 'SIGHUP' ? 1 : 15));
  });
}

export function makeTempDir(prefix = 'blockmirror-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export interface VolumeSpec {
  name: string;
  size: string;
  readOnly?: boolean;
  description?: string;
}

export interface LogSpec {
  partitionSize: string;
  partitions: number;
  cpIntervalMs: number;
}

/** Small log files, so each test node is created quickly. */
export const testLog: LogSpec = { partitionSize: '4MiB', partitions: 3, cpIntervalMs: 1000 };

/** GET /api/v1/status, as the server builds it. */
export type NodeStatusJson = NodeStatus;

/** A node's status of vol0 (or `name`); the test fails when the node does not list it. */
export function vol0(status: NodeStatusJson, name = 'vol0'): NodeStatusJson['volumes'][number] {
  const volume = status.volumes.find((candidate) => candidate.name === name);
  if (volume === undefined) throw new Error(`${status.node} does not list ${name}`);
  return volume;
}

export interface NodeOptions {
  /** Reuse a directory (and its data) from an earlier node to restart it. */
  dir?: string;
  volumes?: VolumeSpec[];
  log?: LogSpec;
  env?: Record<string, string>;
}

export class TestNode {
  private stderrText = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  nbdPort = 0;
  adminPort = 0;
  nbdHost = '127.0.0.1';
  adminHost = '127.0.0.1';

  constructor(
    readonly dir: string,
    readonly configPath: string,
    readonly child: ChildProcess,
    /** The node's dataDir, relative to `dir`. */
    readonly dataSubdir = 'data',
  ) {
    live.add(child);
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (text: string) => {
      this.stderrText += text;
    });
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        live.delete(child);
        resolve({ code, signal });
      });
    });
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error('node has no pid');
    return this.child.pid;
  }

  get dataDir(): string {
    return path.join(this.dir, this.dataSubdir);
  }

  imagePath(volume: string): string {
    return path.join(this.dataDir, 'volumes', `${volume}.img`);
  }

  uri(volume: string): string {
    return `nbd://${this.nbdHost}:${this.nbdPort}/${volume}`;
  }

  /** The node's own status from its admin API. */
  async status(): Promise<NodeStatusJson> {
    const response = await fetch(`http://${this.adminHost}:${this.adminPort}/api/v1/status`);
    return (await response.json()) as NodeStatusJson;
  }

  /** Waits until `check` holds for the node's status (polling, bounded). */
  async waitStatus(what: string, check: (status: NodeStatusJson) => boolean, timeoutMs = 15_000): Promise<NodeStatusJson> {
    const deadline = Date.now() + timeoutMs;
    let last: NodeStatusJson | null = null;
    while (Date.now() < deadline) {
      last = await this.status();
      if (check(last)) return last;
      await sleep(50);
    }
    throw new Error(`node status: ${what} did not happen within ${timeoutMs} ms; last status ${JSON.stringify(last)}`);
  }

  get logs(): string {
    return this.stderrText;
  }

  /** Parsed JSON log records (lines that are not JSON are skipped). */
  records(): Record<string, unknown>[] {
    return this.stderrText
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  }

  async waitReady(timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const ready = this.records().find((record) => record['msg'] === 'node ready');
      if (ready !== undefined) {
        this.nbdHost = String(ready['nbd']).split(':')[0] ?? '127.0.0.1';
        this.nbdPort = Number(String(ready['nbd']).split(':').pop());
        this.adminPort = Number(String(ready['admin']).split(':').pop());
        this.adminHost = String(ready['admin']).split(':')[0] ?? '127.0.0.1';
        return;
      }
      if (this.child.exitCode !== null) throw new Error(`node exited with ${this.child.exitCode}: ${this.stderrText}`);
      await sleep(20);
    }
    throw new Error(`node not ready after ${timeoutMs} ms: ${this.stderrText}`);
  }

  /** Sends a signal and waits for exit (SIGKILL after `timeoutMs`). */
  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

export function writeConfig(dir: string, volumes: VolumeSpec[], log: LogSpec = testLog): string {
  const volumeYaml = volumes
    .map(
      (volume) => `  - name: ${volume.name}
    size: ${volume.size}
    replicas: [a]
    primary: a
    mode: local
    readOnly: ${volume.readOnly === true}
    description: ${JSON.stringify(volume.description ?? '')}`,
    )
    .join('\n');
  const text = `cluster: test
secret: test-secret-123
log:
  partitionSize: ${log.partitionSize}
  partitions: ${log.partitions}
  cpIntervalMs: ${log.cpIntervalMs}
nodes:
  - id: a
    nbd: 127.0.0.1:0
    replication: 127.0.0.1:0
    admin: 127.0.0.1:0
    dataDir: ./data
volumes:
${volumeYaml}
`;
  const configPath = path.join(dir, 'cluster.yaml');
  fs.writeFileSync(configPath, text);
  return configPath;
}

/** Starts `blockmirror serve` for node "a" and waits until it listens. */
export async function startNode(options: NodeOptions = {}): Promise<TestNode> {
  const dir = options.dir ?? makeTempDir();
  const configPath = writeConfig(dir, options.volumes ?? [{ name: 'vol0', size: '64MiB' }], options.log);
  const child = spawn(process.execPath, [cliPath, 'serve', '--config', configPath, '--node', 'a'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...options.env },
  });
  const node = new TestNode(dir, configPath, child);
  await node.waitReady();
  return node;
}

/**
 * A port free on `host` for both TCP and UDP right now, chosen below Linux's ephemeral
 * range (32768 and up): ports the kernel hands to other listeners and to outgoing
 * connections in the meantime can then never take it before the node binds it.
 */
export async function freePort(host: string): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt += 1) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if ((await canBind(host, port, 'tcp')) && (await canBind(host, port, 'udp'))) return port;
  }
  throw new Error(`no free port on ${host} below 32000 after 100 tries`);
}

function canBind(host: string, port: number, kind: 'tcp' | 'udp'): Promise<boolean> {
  return new Promise((resolve) => {
    if (kind === 'tcp') {
      const server = net.createServer();
      server.once('error', () => resolve(false));
      server.listen({ host, port }, () => server.close(() => resolve(true)));
    } else {
      const socket = dgram.createSocket('udp4');
      socket.once('error', () => {
        socket.close();
        resolve(false);
      });
      socket.bind({ address: host, port }, () => socket.close(() => resolve(true)));
    }
  });
}

export interface ClusterNodeSpec {
  id: string;
  /** Loopback address of the NBD and admin listeners (default 127.0.0.1). */
  host?: string;
  /** Loopback address of the replication link (default: `host`, the same network). */
  replicationHost?: string;
  /** Stores no data, counts toward quorum. */
  witness?: boolean;
  /** Coordination through etcd: the higher, the sooner promoted. */
  priority?: number;
}

export interface ClusterVolumeSpec {
  name: string;
  size: string;
  replicas: string[];
  primary: string;
  mode: 'sync' | 'async' | 'logship' | 'local';
  strict?: boolean;
  /** What a secondary does with a client (default `refuse`). */
  secondaryAccess?: 'refuse' | 'read-only';
  quorum?: 'off' | 'majority';
  onNoQuorum?: 'suspend' | 'io-error';
  afterSplitBrain?: 'disconnect' | 'discard-zero-changes' | 'discard-younger-primary' | 'discard-least-changes';
}

export interface ClusterSpec {
  nodes: ClusterNodeSpec[];
  volumes: ClusterVolumeSpec[];
  secret?: string;
  connections?: number;
  log?: LogSpec;
  heartbeat?: { intervalMs: number; timeoutMs: number; probationMs: number };
  resync?: { regionSize?: string; rateMax?: string };
  /** Coordination through etcd (default: static). */
  etcd?: { endpoints: string[]; leaseTtlMs?: number; prefix?: string };
  hooks?: { promoted?: string; demoted?: string; splitBrain?: string; timeoutMs?: number };
}

/**
 * Writes a cluster file for several nodes in `dir` (each with dataDir `data-<id>`).
 * Replication ports must be known to every node, so they are chosen here; NBD and
 * admin ports are left to the kernel and read from each node's log.
 */
export async function writeClusterConfig(dir: string, spec: ClusterSpec, name = 'cluster.yaml'): Promise<string> {
  const log = spec.log ?? testLog;
  const nodes: string[] = [];
  for (const node of spec.nodes) {
    const host = node.host ?? '127.0.0.1';
    const replicationHost = node.replicationHost ?? host;
    nodes.push(`  - id: ${node.id}
    nbd: ${host}:0
    replication: ${replicationHost}:${await freePort(replicationHost)}
    admin: ${host}:0
    dataDir: ./data-${node.id}${node.witness === true ? '\n    witness: true' : ''}${node.priority === undefined ? '' : `\n    priority: ${node.priority}`}`);
  }
  const volumes = spec.volumes.map(
    (volume) => `  - name: ${volume.name}
    size: ${volume.size}
    replicas: [${volume.replicas.join(', ')}]
    primary: ${volume.primary}
    mode: ${volume.mode}
    strict: ${volume.strict === true}
    secondaryAccess: ${volume.secondaryAccess ?? 'refuse'}${volume.quorum === undefined ? '' : `\n    quorum: ${volume.quorum}`}${volume.onNoQuorum === undefined ? '' : `\n    onNoQuorum: ${volume.onNoQuorum}`}${volume.afterSplitBrain === undefined ? '' : `\n    afterSplitBrain: ${volume.afterSplitBrain}`}`,
  );
  const heartbeat = spec.heartbeat === undefined ? '' : `heartbeat: { intervalMs: ${spec.heartbeat.intervalMs}, timeoutMs: ${spec.heartbeat.timeoutMs}, probationMs: ${spec.heartbeat.probationMs} }\n`;
  const resyncKeys = Object.entries(spec.resync ?? {}).map(([key, value]) => `${key}: ${value}`);
  const resync = resyncKeys.length === 0 ? '' : `resync: { ${resyncKeys.join(', ')} }\n`;
  const coordination = spec.etcd === undefined
    ? ''
    : `coordination:\n  etcd:\n    endpoints: [${spec.etcd.endpoints.join(', ')}]${spec.etcd.prefix === undefined ? '' : `\n    prefix: ${spec.etcd.prefix}`}${spec.etcd.leaseTtlMs === undefined ? '' : `\n    leaseTtlMs: ${spec.etcd.leaseTtlMs}`}\n`;
  const hookKeys = Object.entries(spec.hooks ?? {}).map(([key, value]) => `  ${key}: ${JSON.stringify(value)}`);
  const hooks = hookKeys.length === 0 ? '' : `hooks:\n${hookKeys.join('\n')}\n`;
  const text = `cluster: test
secret: ${spec.secret ?? 'test-secret-123'}
connections: ${spec.connections ?? 2}
${coordination}${hooks}${heartbeat}${resync}log:
  partitionSize: ${log.partitionSize}
  partitions: ${log.partitions}
  cpIntervalMs: ${log.cpIntervalMs}
nodes:
${nodes.join('\n')}
volumes:
${volumes.join('\n')}
`;
  const configPath = path.join(dir, name);
  fs.writeFileSync(configPath, text);
  return configPath;
}

/** The replication address of node `id` in a cluster file written by writeClusterConfig. */
export function replicationAddress(configPath: string, id: string): { host: string; port: number } {
  const text = fs.readFileSync(configPath, 'utf8');
  const match = new RegExp(`- id: ${id}\\n    nbd: [^\\n]*\\n    replication: ([0-9.]+):(\\d+)`).exec(text);
  if (match === null) throw new Error(`no node ${id} in ${configPath}`);
  return { host: match[1] ?? '', port: Number(match[2]) };
}

/**
 * A copy of a cluster file in which node `id` is reached at another replication address
 * (a relay's), for the node that reads this copy; the node itself keeps its real one.
 */
export function withReplicationAddress(configPath: string, id: string, address: { host: string; port: number }, name: string): string {
  const real = replicationAddress(configPath, id);
  const text = fs.readFileSync(configPath, 'utf8').replace(`replication: ${real.host}:${real.port}`, `replication: ${address.host}:${address.port}`);
  const copy = path.join(path.dirname(configPath), name);
  fs.writeFileSync(copy, text);
  return copy;
}

/** Starts node `id` of a cluster file written by writeClusterConfig and waits until it listens. */
export async function startClusterNode(dir: string, configPath: string, id: string, env: Record<string, string> = {}, netns: string | null = null): Promise<TestNode> {
  const node = spawnClusterNode(dir, configPath, id, env, netns);
  await node.waitReady();
  return node;
}

/** Starts node `id` of a cluster file written by writeClusterConfig, without waiting for it. */
export function spawnClusterNode(dir: string, configPath: string, id: string, env: Record<string, string> = {}, netns: string | null = null): TestNode {
  // In a network namespace through `ip netns exec`, which becomes the node (the same PID).
  const [command, args] = netns === null ? [process.execPath, []] : ['ip', ['netns', 'exec', netns, process.execPath]];
  const child = spawn(command, [...args, cliPath, 'serve', '--config', configPath, '--node', id], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
  });
  return new TestNode(dir, configPath, child, `data-${id}`);
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion, killing it (by PID) after `timeoutMs`. */
export function run(
  command: string,
  args: string[],
  options: { timeoutMs?: number; input?: string; cwd?: string; env?: Record<string, string> } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      cwd: options.cwd,
      env: { ...process.env, ...options.env },
    });
    live.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (text: string) => (stdout += text));
    child.stderr?.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
    child.once('error', (error) => {
      clearTimeout(timer);
      live.delete(child);
      reject(error);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      live.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
    if (child.stdin !== null) {
      // A tool that exits before reading its input closes the pipe: not an error here.
      child.stdin.on('error', () => undefined);
      child.stdin.end(options.input);
    }
  });
}

/** Like run(), but throws with the output when the command does not exit 0. */
export async function runOk(command: string, args: string[], options: Parameters<typeof run>[2] = {}): Promise<RunResult> {
  const result = await run(command, args, options);
  if (result.code !== 0) {
    throw new Error(
      `${command} ${args.join(' ')} exited ${result.code ?? result.signal}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`,
    );
  }
  return result;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * `size` bytes at `offset` of `volume`, read through `node` with qemu-img: a raw layer cut
 * to that range over the NBD export (qemu-img dd's `skip`/`count` will not do: qemu 7.2
 * counts `count` from the start, so `skip=N count=1` copies nothing). Fails unless all of
 * it was read.
 */
export async function readVolumeRange(node: TestNode, work: string, offset: number, size = 4096, volume = 'vol0'): Promise<Buffer> {
  const file = path.join(work, `read-${volume}-${offset}-${size}.bin`);
  const nbd = { driver: 'nbd', server: { type: 'inet', host: node.nbdHost, port: String(node.nbdPort) }, export: volume };
  const source = `json:${JSON.stringify({ driver: 'raw', offset, size, file: nbd })}`;
  const result = await run('qemu-img', ['convert', '-O', 'raw', source, file], { timeoutMs: 30_000 });
  if (result.code !== 0) throw new Error(`qemu-img convert of the ${size} bytes at ${offset} through ${node.uri(volume)}: ${result.stderr}`);
  const data = fs.readFileSync(file);
  if (data.length !== size) throw new Error(`qemu-img read ${data.length} of the ${size} bytes at ${offset} through ${node.uri(volume)}`);
  return data;
}
