// The cluster file: one YAML document, shared by every node, that names the cluster's
// nodes and volumes (docs/configuration.md). This module turns that text
// into a checked ClusterConfig and does nothing else: it never opens sockets, creates
// directories or touches volumes. Every mistake an operator can make is a ConfigError
// whose message starts with the path of the field to fix (`volumes[0].size: ...`), and
// the first mistake found stops the parse. What comes out has passed every rule, so the
// rest of the program can trust it without checking again.
//
// Why one file of this size: it is one format. Each section's reader sits beside the
// others, so that the rules that tie fields together (a volume's replicas are nodes, no
// two nodes share an address) are checked in one place; most of its length is one
// reader per field, each with the message that names it.

import { readFileSync } from 'node:fs';
import { isIPv4, isIPv6 } from 'node:net';
import { dirname, resolve } from 'node:path';
import { LineCounter, parseDocument, visit, type Document } from 'yaml';
import { constants } from '../constants.js';
import { HEARTBEAT_BYTES_MAX, HEARTBEAT_MAC_BYTES, HEARTBEAT_VOLUMES_MAX } from '../protocol/heartbeat/datagram.js';
import { assert } from '../lib/assert.js';
import { ConfigError } from '../lib/errors.js';
import { formatBytes, parseSizeBytes } from '../lib/size.js';

export interface Address {
  host: string;
  /** 0 asks the operating system for a free port (tests use it). */
  port: number;
}

export type VolumeMode = 'sync' | 'async' | 'logship' | 'local';

export interface NodeConfig {
  id: string;
  nbd: Address;
  replication: Address;
  admin: Address;
  /** Absolute; a relative path in the file is resolved against the file's directory. */
  dataDir: string;
  /** Stores no data: takes part in heartbeats and counts toward the quorum of `quorum: majority` volumes. */
  witness: boolean;
  /** With coordination through etcd, the higher a node's priority the sooner it is the one promoted (0 by default). */
  priority: number;
}

export interface VolumeConfig {
  name: string;
  sizeBytes: number;
  replicas: string[];
  primary: string | null;
  multiPrimary: boolean;
  mode: VolumeMode;
  strict: boolean;
  /** What a secondary does with a client: `refuse` it, or export a `read-only` copy (`allowSecondaryReads: true` is the old word for it). */
  secondaryAccess: 'refuse' | 'read-only';
  readOnly: boolean;
  description: string;
  /** `majority`: the primary acknowledges writes, and a node is promoted, only with a majority of the replicas and witnesses. */
  quorum: 'off' | 'majority';
  /** Without quorum, writes wait (`suspend`) or fail with EIO (`io-error`). */
  onNoQuorum: 'suspend' | 'io-error';
  /** What a split brain found with another copy does (src/core/split-brain.ts decides with it). */
  afterSplitBrain: (typeof AFTER_SPLIT_BRAIN_POLICIES)[number];
}

export interface HeartbeatConfig {
  intervalMs: number;
  timeoutMs: number;
  probationMs: number;
}

export interface LogConfig {
  partitionBytes: number;
  partitions: number;
  cpIntervalMs: number;
  /** Log bytes (whole partitions before the active one) kept for a peer that is away; 0: none. */
  retentionBytesMax: number;
}

export interface ResyncConfig {
  /** One bit of a peer's dirty bitmap covers this many bytes. */
  regionBytes: number;
  /** Resync traffic per peer and volume, bytes per second; 0: as fast as it goes. */
  rateBytesPerSecMax: number;
}

/**
 * Who decides which copy of a volume is its primary: `static`, a person by command
 * (`blockmirror promote`), or `etcd`: a primary holds its volume under a lease it keeps
 * alive there, and when the lease expires an up-to-date secondary takes the next epoch
 * (docs/operations.md, "Automatic failover through etcd").
 */
export type CoordinationConfig =
  | { kind: 'static' }
  | { kind: 'etcd'; endpoints: string[]; prefix: string; leaseTtlMs: number };

/** Commands run on a volume's role changes (docs/operations.md, "Hooks"). */
export interface HooksConfig {
  promoted: string | null;
  demoted: string | null;
  splitBrain: string | null;
  timeoutMs: number;
}

export interface ClusterConfig {
  cluster: string;
  secret: string;
  coordination: CoordinationConfig;
  hooks: HooksConfig;
  heartbeat: HeartbeatConfig;
  resync: ResyncConfig;
  connections: number;
  /** Longest the event loop polls for new work before it sleeps, in microseconds; 0: never. */
  busyPollMicros: number;
  log: LogConfig;
  nodes: NodeConfig[];
  volumes: VolumeConfig[];
}

const topKeys = ['cluster', 'secret', 'secretFile', 'coordination', 'hooks', 'heartbeat', 'resync', 'connections', 'busyPollMicros', 'log', 'nodes', 'volumes'];
const resyncKeys = ['regionSize', 'rateMax'];
const logKeys = ['partitionSize', 'partitions', 'cpIntervalMs', 'retentionMax'];
const heartbeatKeys = ['intervalMs', 'timeoutMs', 'probationMs'];
const nodeKeys = ['id', 'nbd', 'replication', 'admin', 'dataDir', 'witness', 'priority'];
const etcdKeys = ['endpoints', 'prefix', 'leaseTtlMs'];
const hookKeys = ['promoted', 'demoted', 'splitBrain', 'timeoutMs'];
const volumeKeys = [
  'name', 'size', 'replicas', 'primary', 'multiPrimary', 'mode',
  'strict', 'secondaryAccess', 'allowSecondaryReads', 'readOnly', 'description', 'quorum', 'onNoQuorum', 'afterSplitBrain',
];
const volumeModes: readonly VolumeMode[] = ['sync', 'async', 'logship', 'local'];

const clusterNamePattern = /^[A-Za-z0-9._-]{1,64}$/;
const nodeIdPattern = /^[a-z0-9][a-z0-9_-]{0,31}$/;
const volumeNamePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const hostNamePattern = /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;
const secretLengthMin = 8;
// Node fires a timer of more than 2^31-1 ms at once, so no duration may exceed it.
const durationMsMax = 2 ** 31 - 1;
// Anchors and aliases are legal YAML, but a few lines of them can expand to gigabytes.
const yamlAliasCountMax = 100;

export function parseClusterConfig(text: string, options: { baseDir: string }): ClusterConfig {
  const baseDir = resolve(options.baseDir);
  const root = parseYaml(text);
  if (root === null || root === undefined) {
    throw new ConfigError('', 'the cluster file is empty; expected a map with cluster, secret, nodes and volumes');
  }
  const top = Fields.of(root, '', topKeys);

  const cluster = readString(top.required('cluster'), 'cluster', 'a cluster name', true);
  if (!clusterNamePattern.test(cluster)) {
    throw new ConfigError('cluster', `${quote(cluster)} is not a valid cluster name (1 to 64 of A-Z a-z 0-9 . _ -)`);
  }
  const secret = readSecret(top, baseDir);
  const coordination = readCoordination(top.optional('coordination'));
  const hooks = readHooks(top.optional('hooks'));
  const heartbeat = readHeartbeat(top.optional('heartbeat'));
  const connectionsValue = top.optional('connections');
  const connections = connectionsValue === undefined
    ? constants.peerConnectionsDefault
    : readInteger(connectionsValue, 'connections', 1, constants.peerConnectionsMax);
  const busyPollValue = top.optional('busyPollMicros');
  const busyPollMicros = busyPollValue === undefined
    ? constants.busyPollMicrosDefault
    : readInteger(busyPollValue, 'busyPollMicros', 0, constants.busyPollMicrosMax);
  const log = readLog(top.optional('log'));
  const resync = readResync(top.optional('resync'));

  const nodesValue = top.required('nodes');
  if (!Array.isArray(nodesValue)) throw new ConfigError('nodes', `expected a list of nodes, got ${kindOf(nodesValue)}`);
  if (nodesValue.length === 0) throw new ConfigError('nodes', 'must list at least one node');
  const nodes = nodesValue.map((value: unknown, index) => readNode(value, `nodes[${index}]`, baseDir));
  checkNodesDistinct(nodes);

  const volumesValue = top.optional('volumes') ?? [];
  if (!Array.isArray(volumesValue)) throw new ConfigError('volumes', `expected a list of volumes, got ${kindOf(volumesValue)}`);
  const volumes = volumesValue.map((value: unknown, index) => readVolume(value, `volumes[${index}]`, nodes));
  checkVolumesDistinct(volumes);
  checkHeartbeatSize(cluster, nodes, volumes);

  return { cluster, secret, coordination, hooks, heartbeat, resync, connections, busyPollMicros, log, nodes, volumes };
}

export function loadClusterConfig(path: string): ClusterConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError('', `cannot read ${path}: ${describeFsError(error)}`);
  }
  return parseClusterConfig(text, { baseDir: dirname(resolve(path)) });
}

export function formatAddress(a: Address): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

export function findNode(config: ClusterConfig, id: string): NodeConfig {
  const node = config.nodes.find((candidate) => candidate.id === id);
  if (node === undefined) {
    const known = config.nodes.map((candidate) => candidate.id).join(', ');
    throw new ConfigError('--node', `no node ${quote(id)} in cluster ${quote(config.cluster)} (nodes: ${known})`);
  }
  return node;
}

function parseYaml(text: string): unknown {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const syntaxError = doc.errors[0];
  if (syntaxError !== undefined) {
    const { line } = lineCounter.linePos(syntaxError.pos[0]);
    throw new ConfigError('', `YAML: ${syntaxError.message} at line ${line}`);
  }
  try {
    // Maps stay Maps so that keys such as __proto__ or [a, b] are reported, not mangled.
    return doc.toJS({ mapAsMap: true, maxAliasCount: yamlAliasCountMax });
  } catch (error) {
    // toJS fails only on aliases: one without an anchor, or too many of them.
    const message = error instanceof Error ? error.message : String(error);
    const line = firstUnresolvedAliasLine(doc, lineCounter);
    throw new ConfigError('', line === undefined ? `YAML: ${message}` : `YAML: ${message} at line ${line}`);
  }
}

function firstUnresolvedAliasLine(doc: Document, lineCounter: LineCounter): number | undefined {
  let line: number | undefined;
  visit(doc, {
    Alias(_key, alias) {
      if (alias.resolve(doc) !== undefined || alias.range === undefined || alias.range === null) return undefined;
      line = lineCounter.linePos(alias.range[0]).line;
      return visit.BREAK;
    },
  });
  return line;
}

/** A YAML map being read: rejects unknown keys up front and names each field by its path. */
class Fields {
  private constructor(
    private readonly path: string,
    private readonly map: ReadonlyMap<unknown, unknown>,
  ) {}

  static of(value: unknown, path: string, allowed: readonly string[], what = 'a map'): Fields {
    if (!(value instanceof Map)) throw new ConfigError(path, `expected ${what}, got ${kindOf(value)}`);
    for (const key of value.keys()) {
      if (typeof key !== 'string' && typeof key !== 'number' && typeof key !== 'boolean') {
        throw new ConfigError(path, `keys must be plain words, got a ${kindOf(key)} as a key`);
      }
      if (typeof key !== 'string' || !allowed.includes(key)) {
        throw new ConfigError(fieldPath(path, String(key)), `unknown key (expected one of: ${allowed.join(', ')})`);
      }
    }
    return new Fields(path, value);
  }

  field(key: string): string {
    return fieldPath(this.path, key);
  }

  /** The value of an optional key; absent and empty (`key:` alone) both mean "use the default". */
  optional(key: string): unknown {
    const value = this.map.get(key);
    return value === null ? undefined : value;
  }

  required(key: string): unknown {
    if (!this.map.has(key)) throw new ConfigError(this.field(key), 'required but missing');
    const value = this.map.get(key);
    if (value === null || value === undefined) throw new ConfigError(this.field(key), 'required but empty');
    return value;
  }
}

function readSecret(top: Fields, baseDir: string): string {
  const secretValue = top.optional('secret');
  const secretFileValue = top.optional('secretFile');
  if (secretValue !== undefined && secretFileValue !== undefined) {
    throw new ConfigError('secret', 'set either secret or secretFile, not both');
  }
  if (secretValue !== undefined) {
    const secret = readString(secretValue, 'secret', 'a string', true);
    // The secret itself never appears in a message: error output ends up in logs.
    if (secret.length < secretLengthMin) {
      throw new ConfigError('secret', `must be at least ${secretLengthMin} characters, got ${secret.length}`);
    }
    return secret;
  }
  if (secretFileValue === undefined) {
    throw new ConfigError('secret', 'required but missing (or secretFile: a file that holds the secret)');
  }
  const fileName = readString(secretFileValue, 'secretFile', 'a file path', true);
  if (fileName === '') throw new ConfigError('secretFile', 'must not be empty');
  const path = resolve(baseDir, fileName);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError('secretFile', `cannot read ${path}: ${describeFsError(error)}`);
  }
  const secret = text.replace(/[\r\n]+$/, '');
  if (secret.length < secretLengthMin) {
    throw new ConfigError('secretFile', `the secret in ${path} must be at least ${secretLengthMin} characters, got ${secret.length}`);
  }
  return secret;
}

function readCoordination(value: unknown): CoordinationConfig {
  if (value === undefined || value === 'static') return { kind: 'static' };
  if (typeof value === 'string') throw new ConfigError('coordination', `${quote(value)} is not a coordination (static, or a map with etcd)`);
  const fields = Fields.of(value, 'coordination', ['etcd'], 'static, or a map with etcd');
  const etcd = Fields.of(fields.required('etcd'), 'coordination.etcd', etcdKeys, 'a map with endpoints, prefix, leaseTtlMs');
  const endpointsValue = etcd.required('endpoints');
  if (!Array.isArray(endpointsValue) || endpointsValue.length === 0) {
    throw new ConfigError(etcd.field('endpoints'), `expected a list of etcd client URLs (http://host:port), got ${Array.isArray(endpointsValue) ? 'an empty list' : kindOf(endpointsValue)}`);
  }
  const endpoints = endpointsValue.map((given: unknown, index) => {
    const field = `${etcd.field('endpoints')}[${index}]`;
    const text = readString(given, field, 'a URL', true);
    const match = /^http:\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})\/?$/.exec(text);
    const port = Number(match?.[2] ?? 0);
    if (match === null || port < 1 || port > 65535) {
      throw new ConfigError(field, `${quote(text)} is not an etcd client URL (http://host:port, nothing after the port)`);
    }
    let host: string;
    try {
      // The host as a URL spells it: lower case, an IPv6 address in its shortest form.
      host = new URL(`http://${match[1] ?? ''}/`).hostname;
    } catch {
      throw new ConfigError(field, `${quote(text)} is not an etcd client URL (http://host:port, nothing after the port)`);
    }
    return `http://${host}:${port}`;
  });
  const prefixValue = etcd.optional('prefix');
  const prefix = prefixValue === undefined ? constants.coordinationPrefixDefault : readString(prefixValue, etcd.field('prefix'), 'a key prefix', true);
  if (!/^[A-Za-z0-9._/-]{1,128}$/.test(prefix) || prefix.endsWith('/')) {
    throw new ConfigError(etcd.field('prefix'), `${quote(prefix)} is not a key prefix (1 to 128 of A-Z a-z 0-9 . _ - /, not ending in /)`);
  }
  const ttlValue = etcd.optional('leaseTtlMs');
  const leaseTtlMs = ttlValue === undefined ? constants.leaseTtlMsDefault : readInteger(ttlValue, etcd.field('leaseTtlMs'), constants.leaseTtlMsMin, constants.leaseTtlMsMax);
  if (leaseTtlMs % 1000 !== 0) {
    throw new ConfigError(etcd.field('leaseTtlMs'), `must be whole seconds (etcd counts a lease in seconds), got ${leaseTtlMs}`);
  }
  return { kind: 'etcd', endpoints, prefix, leaseTtlMs };
}

function readHooks(value: unknown): HooksConfig {
  const hooks: HooksConfig = { promoted: null, demoted: null, splitBrain: null, timeoutMs: constants.hookTimeoutMsDefault };
  if (value === undefined) return hooks;
  const fields = Fields.of(value, 'hooks', hookKeys, 'a map with promoted, demoted, splitBrain, timeoutMs');
  for (const key of ['promoted', 'demoted', 'splitBrain'] as const) {
    const given = fields.optional(key);
    if (given === undefined) continue;
    const command = readString(given, fields.field(key), 'a command', true);
    if (command.trim() === '') throw new ConfigError(fields.field(key), 'must not be empty (leave the key out for no hook)');
    hooks[key] = command;
  }
  const timeout = fields.optional('timeoutMs');
  if (timeout !== undefined) hooks.timeoutMs = readInteger(timeout, fields.field('timeoutMs'), 1, durationMsMax);
  return hooks;
}

function readHeartbeat(value: unknown): HeartbeatConfig {
  const heartbeat: HeartbeatConfig = {
    intervalMs: constants.heartbeatIntervalMsDefault,
    timeoutMs: constants.heartbeatTimeoutMsDefault,
    probationMs: constants.heartbeatProbationMsDefault,
  };
  if (value === undefined) return heartbeat;
  const fields = Fields.of(value, 'heartbeat', heartbeatKeys);
  for (const key of ['intervalMs', 'timeoutMs', 'probationMs'] as const) {
    const given = fields.optional(key);
    if (given !== undefined) heartbeat[key] = readInteger(given, fields.field(key), 1, durationMsMax);
  }
  if (heartbeat.timeoutMs <= heartbeat.intervalMs) {
    const isDefault = fields.optional('timeoutMs') === undefined ? ' (the default)' : '';
    throw new ConfigError(
      'heartbeat.timeoutMs',
      `must be greater than heartbeat.intervalMs (${heartbeat.intervalMs}), got ${heartbeat.timeoutMs}${isDefault}`,
    );
  }
  return heartbeat;
}

function readResync(value: unknown): ResyncConfig {
  const resync: ResyncConfig = { regionBytes: constants.dirtyRegionBytes, rateBytesPerSecMax: 0 };
  if (value === undefined) return resync;
  const fields = Fields.of(value, 'resync', resyncKeys);
  const region = fields.optional('regionSize');
  if (region !== undefined) {
    resync.regionBytes = readSize(region, 'resync.regionSize');
    const ok = resync.regionBytes >= constants.dirtyRegionBytesMin && resync.regionBytes <= constants.dirtyRegionBytesMax && (resync.regionBytes & (resync.regionBytes - 1)) === 0;
    if (!ok) {
      throw new ConfigError(
        'resync.regionSize',
        `must be a power of two from ${formatBytes(constants.dirtyRegionBytesMin)} to ${formatBytes(constants.dirtyRegionBytesMax)}, got ${formatBytes(resync.regionBytes)}`,
      );
    }
  }
  const rate = fields.optional('rateMax');
  if (rate !== undefined) {
    resync.rateBytesPerSecMax = readSize(rate, 'resync.rateMax');
    if (resync.rateBytesPerSecMax < constants.resyncRateBytesPerSecMin) {
      throw new ConfigError('resync.rateMax', `must be at least ${formatBytes(constants.resyncRateBytesPerSecMin)} per second, got ${formatBytes(resync.rateBytesPerSecMax)}`);
    }
  }
  return resync;
}

function readLog(value: unknown): LogConfig {
  const log: LogConfig = {
    partitionBytes: constants.logPartitionBytesDefault,
    partitions: constants.logPartitionsDefault,
    cpIntervalMs: constants.cpIntervalMsDefault,
    retentionBytesMax: 0,
  };
  // Two partitions stay for the log's own turnover (the one written and the next).
  const retentionLimit = (): number => (log.partitions - 2) * log.partitionBytes;
  if (value === undefined) {
    log.retentionBytesMax = retentionLimit();
    return log;
  }
  const fields = Fields.of(value, 'log', logKeys);
  const size = fields.optional('partitionSize');
  if (size !== undefined) {
    log.partitionBytes = readSize(size, 'log.partitionSize');
    if (log.partitionBytes < constants.logPartitionBytesMin) {
      throw new ConfigError('log.partitionSize', `must be at least ${formatBytes(constants.logPartitionBytesMin)}, got ${formatBytes(log.partitionBytes)}`);
    }
  }
  const partitions = fields.optional('partitions');
  if (partitions !== undefined) log.partitions = readInteger(partitions, 'log.partitions', 2, constants.logPartitionsMax);
  const interval = fields.optional('cpIntervalMs');
  if (interval !== undefined) log.cpIntervalMs = readInteger(interval, 'log.cpIntervalMs', 10, durationMsMax);
  const retention = fields.optional('retentionMax');
  // 0 turns it off: a peer that missed more than is kept in memory then needs a resync.
  log.retentionBytesMax = retention === undefined ? retentionLimit() : retention === 0 || retention === '0' ? 0 : readSize(retention, 'log.retentionMax');
  if (log.retentionBytesMax > retentionLimit()) {
    throw new ConfigError(
      'log.retentionMax',
      `must be at most (partitions - 2) × partitionSize = ${formatBytes(retentionLimit())}, got ${formatBytes(log.retentionBytesMax)}; raise log.partitions to keep more`,
    );
  }
  return log;
}

function readNode(value: unknown, path: string, baseDir: string): NodeConfig {
  const fields = Fields.of(value, path, nodeKeys, 'a node (a map with id, nbd, replication, admin, dataDir)');
  const id = readString(fields.required('id'), fields.field('id'), 'a node id', true);
  if (!nodeIdPattern.test(id)) {
    throw new ConfigError(fields.field('id'), `${quote(id)} is not a valid node id (1 to 32 of a-z 0-9 _ -, starting with a letter or digit)`);
  }
  const nbd = readAddress(fields.required('nbd'), fields.field('nbd'));
  const replication = readAddress(fields.required('replication'), fields.field('replication'));
  const admin = readAddress(fields.required('admin'), fields.field('admin'));
  const dataDirText = readString(fields.required('dataDir'), fields.field('dataDir'), 'a directory path', true);
  if (dataDirText === '') throw new ConfigError(fields.field('dataDir'), 'must not be empty');
  const witnessValue = fields.optional('witness');
  const witness = witnessValue === undefined ? false : readBoolean(witnessValue, fields.field('witness'));
  const priorityValue = fields.optional('priority');
  const priority = priorityValue === undefined ? 0 : readInteger(priorityValue, fields.field('priority'), 0, constants.nodePriorityMax);
  return { id, nbd, replication, admin, dataDir: resolve(baseDir, dataDirText), witness, priority };
}

function checkNodesDistinct(nodes: readonly NodeConfig[]): void {
  const listeners: Array<{ field: string; address: Address; machine: string | null }> = [];
  nodes.forEach((node, index) => {
    const path = `nodes[${index}]`;
    const earlier = nodes.findIndex((other) => other.id === node.id);
    if (earlier !== index) {
      throw new ConfigError(`${path}.id`, `duplicate node id ${quote(node.id)} (also nodes[${earlier}].id)`);
    }
    // One replication address carries both TCP and UDP, so it is one listener, not two.
    // Nodes whose replication addresses are different concrete addresses run on different
    // machines: a wildcard listener of one cannot clash with the other's (each node may
    // listen on 0.0.0.0:10809 of its own machine, as a floating address needs).
    const machine = machineOf(node);
    for (const kind of ['nbd', 'replication', 'admin'] as const) {
      const field = `${path}.${kind}`;
      const address = node[kind];
      const clash = listeners.find((listener) => (listener.machine === null || machine === null || listener.machine === machine) && addressesClash(listener.address, address));
      if (clash !== undefined) {
        const mine = formatAddress(address);
        const theirs = formatAddress(clash.address);
        const problem = mine === theirs ? `is already used by ${clash.field}` : `clashes with ${clash.field} (${theirs})`;
        throw new ConfigError(field, `${mine} ${problem}; every listener needs its own port`);
      }
      listeners.push({ field, address, machine });
    }
    const sharer = nodes.findIndex((other) => other.dataDir === node.dataDir);
    if (sharer !== index) {
      throw new ConfigError(`${path}.dataDir`, `${node.dataDir} is also the dataDir of nodes[${sharer}] (${quote(nodes[sharer]?.id ?? '')}); each node needs its own`);
    }
  });
}

function readVolume(value: unknown, path: string, nodes: readonly NodeConfig[]): VolumeConfig {
  const fields = Fields.of(value, path, volumeKeys, 'a volume (a map with name, size, replicas, primary, ...)');
  const name = readString(fields.required('name'), fields.field('name'), 'a volume name', true);
  if (!volumeNamePattern.test(name)) {
    throw new ConfigError(fields.field('name'), `${quote(name)} is not a valid volume name (1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)`);
  }
  const sizeBytes = readSize(fields.required('size'), fields.field('size'));
  const replicas = readReplicas(fields.required('replicas'), fields.field('replicas'), nodes);

  const primaryValue = fields.optional('primary');
  const multiPrimaryValue = fields.optional('multiPrimary');
  const multiPrimary = multiPrimaryValue === undefined ? false : readBoolean(multiPrimaryValue, fields.field('multiPrimary'));
  let primary: string | null = null;
  if (primaryValue !== undefined) {
    if (multiPrimary) {
      throw new ConfigError(fields.field('multiPrimary'), 'cannot be combined with primary; a volume has either one primary or multiPrimary: true');
    }
    primary = readString(primaryValue, fields.field('primary'), 'a node id', true);
    if (!replicas.includes(primary)) {
      throw new ConfigError(fields.field('primary'), `${quote(primary)} is not one of the replicas (${replicas.join(', ')})`);
    }
  } else if (!multiPrimary) {
    throw new ConfigError(fields.field('primary'), 'required but missing (name one of the replicas, or set multiPrimary: true)');
  }

  const modeValue = fields.optional('mode');
  const mode = modeValue === undefined ? 'sync' : readMode(modeValue, fields.field('mode'));
  if (mode === 'local' && replicas.length > 1) {
    throw new ConfigError(fields.field('mode'), `local keeps a single copy, but replicas lists ${replicas.length} nodes (${replicas.join(', ')}); use sync, async or logship to mirror`);
  }
  if (multiPrimary && mode === 'logship') {
    throw new ConfigError(fields.field('multiPrimary'), 'not supported with mode logship, which ships one writer\'s log; use mode sync or async');
  }

  const flag = (key: string): boolean => {
    const given = fields.optional(key);
    return given === undefined ? false : readBoolean(given, fields.field(key));
  };
  const strict = flag('strict');
  const secondaryAccess = readSecondaryAccess(fields);
  const readOnly = flag('readOnly');
  const descriptionValue = fields.optional('description');
  const description = descriptionValue === undefined ? '' : readString(descriptionValue, fields.field('description'), 'a string', true);
  const quorum = readChoice(fields.optional('quorum'), fields.field('quorum'), ['off', 'majority'] as const, 'off');
  const onNoQuorum = readChoice(fields.optional('onNoQuorum'), fields.field('onNoQuorum'), ['suspend', 'io-error'] as const, 'suspend');
  const afterSplitBrain = readChoice(fields.optional('afterSplitBrain'), fields.field('afterSplitBrain'), AFTER_SPLIT_BRAIN_POLICIES, 'disconnect');
  if (quorum === 'majority' && mode === 'local') {
    throw new ConfigError(fields.field('quorum'), 'majority needs a mirrored volume (mode sync, async or logship); a local volume has one copy');
  }
  replicas.forEach((id, index) => {
    if (nodes.find((node) => node.id === id)?.witness === true) {
      throw new ConfigError(`${fields.field('replicas')}[${index}]`, `${quote(id)} is a witness: it stores no data (it only counts toward quorum)`);
    }
  });
  return { name, sizeBytes, replicas, primary, multiPrimary, mode, strict, secondaryAccess, readOnly, description, quorum, onNoQuorum, afterSplitBrain };
}

/** `secondaryAccess`, or the older `allowSecondaryReads` (true is `read-only`), not both. */
function readSecondaryAccess(fields: Fields): VolumeConfig['secondaryAccess'] {
  const older = fields.optional('allowSecondaryReads');
  const given = fields.optional('secondaryAccess');
  if (older !== undefined && given !== undefined) {
    throw new ConfigError(fields.field('allowSecondaryReads'), 'set either secondaryAccess or allowSecondaryReads (its older form), not both');
  }
  if (older !== undefined) return readBoolean(older, fields.field('allowSecondaryReads')) ? 'read-only' : 'refuse';
  return readChoice(given, fields.field('secondaryAccess'), ['refuse', 'read-only'] as const, 'refuse');
}

/** The policies of `afterSplitBrain` (docs/operations.md, "Split brain"). */
export const AFTER_SPLIT_BRAIN_POLICIES = ['disconnect', 'discard-zero-changes', 'discard-younger-primary', 'discard-least-changes'] as const;

/** One of `choices`, or `fallback` when the key is absent. */
function readChoice<T extends string>(value: unknown, field: string, choices: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  const choice = choices.find((candidate) => candidate === value);
  if (choice === undefined) {
    const got = typeof value === 'string' ? quote(value) : kindOf(value);
    throw new ConfigError(field, `expected one of ${choices.join(', ')}, got ${got}`);
  }
  return choice;
}

function readSize(value: unknown, field: string): number {
  const alignBytes = constants.volumeSizeAlignBytes;
  const example = `such as 1GiB, 512MiB or ${1024 ** 3}`;
  if (typeof value !== 'string' && typeof value !== 'number') {
    throw new ConfigError(field, `expected a size ${example}, got ${kindOf(value)}`);
  }
  const sizeBytes = parseSizeBytes(value);
  if (sizeBytes === undefined) throw new ConfigError(field, `${quote(String(value))} is not a size; write one ${example}`);
  if (sizeBytes === 0) throw new ConfigError(field, `must be greater than 0; write a size ${example}`);
  if (sizeBytes % alignBytes !== 0) {
    throw new ConfigError(field, `${sizeBytes} bytes is not a multiple of ${formatBytes(alignBytes)} (${alignBytes} bytes); use a size ${example}`);
  }
  return sizeBytes;
}

function readReplicas(value: unknown, field: string, nodes: readonly NodeConfig[]): string[] {
  if (!Array.isArray(value)) throw new ConfigError(field, `expected a list of node ids, got ${kindOf(value)}`);
  if (value.length === 0) throw new ConfigError(field, 'must list at least one node');
  const nodeIds = nodes.map((node) => node.id);
  const replicas: string[] = [];
  value.forEach((item: unknown, index) => {
    const itemField = `${field}[${index}]`;
    const id = readString(item, itemField, 'a node id', true);
    if (!nodeIds.includes(id)) throw new ConfigError(itemField, `${quote(id)} is not a node (nodes: ${nodeIds.join(', ')})`);
    const earlier = replicas.indexOf(id);
    if (earlier !== -1) throw new ConfigError(itemField, `${quote(id)} is listed twice (also ${field}[${earlier}])`);
    replicas.push(id);
  });
  return replicas;
}

function readMode(value: unknown, field: string): VolumeMode {
  const mode = volumeModes.find((candidate) => candidate === value);
  if (mode === undefined) {
    const got = typeof value === 'string' ? quote(value) : kindOf(value);
    throw new ConfigError(field, `expected one of ${volumeModes.join(', ')}, got ${got}`);
  }
  return mode;
}

function checkVolumesDistinct(volumes: readonly VolumeConfig[]): void {
  volumes.forEach((volume, index) => {
    const earlier = volumes.findIndex((other) => other.name === volume.name);
    if (earlier !== index) {
      throw new ConfigError(`volumes[${index}].name`, `duplicate volume name ${quote(volume.name)} (also volumes[${earlier}].name)`);
    }
  });
}

function readAddress(value: unknown, field: string): Address {
  if (typeof value !== 'string') throw new ConfigError(field, `expected a "host:port" string, got ${kindOf(value)}`);
  let hostText: string;
  let portText: string;
  const bracketed = /^\[([^\]]*)\]:(.*)$/.exec(value);
  if (bracketed !== null) {
    hostText = bracketed[1] ?? '';
    portText = bracketed[2] ?? '';
  } else {
    const colon = value.lastIndexOf(':');
    if (colon === -1) throw new ConfigError(field, `expected "host:port", got ${quote(value)} (the port is missing)`);
    hostText = value.slice(0, colon);
    portText = value.slice(colon + 1);
    if (hostText.includes(':')) {
      throw new ConfigError(field, `IPv6 addresses need brackets, like [::1]:10809; got ${quote(value)}`);
    }
    if (hostText === '') throw new ConfigError(field, `the host is missing in ${quote(value)} (use 0.0.0.0:${portText} to listen on all addresses)`);
  }
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : Number.NaN;
  if (!(port >= 0 && port <= 65535)) {
    throw new ConfigError(field, `the port must be an integer from 0 to 65535, got ${quote(portText)}`);
  }
  return { host: readHost(hostText, bracketed !== null, field), port };
}

function readHost(text: string, bracketed: boolean, field: string): string {
  if (bracketed) {
    // Zone ids (fe80::1%eth0) are not accepted: a cluster address must mean the same on every node.
    if (!isIPv6(text) || text.includes('%')) throw new ConfigError(field, `[${text}] is not an IPv6 address`);
    // The URL parser writes an IPv6 address in its one canonical form, so equal addresses compare equal.
    return new URL(`http://[${text}]/`).hostname.slice(1, -1);
  }
  if (/^[0-9.]+$/.test(text)) {
    if (!isIPv4(text)) throw new ConfigError(field, `${quote(text)} is not an IPv4 address`);
    return text;
  }
  const host = text.toLowerCase();
  if (!hostNamePattern.test(host)) {
    throw new ConfigError(field, `${quote(text)} is not an IPv4 address, [IPv6] address or host name`);
  }
  return host;
}

/** Whether two listeners would fight over one port; port 0 always gets a fresh one. */
/** The machine a node runs on as its replication address names it, or null when that cannot tell (loopback, a wildcard). */
function machineOf(node: NodeConfig): string | null {
  const host = node.replication.host;
  return ['0.0.0.0', '::', '127.0.0.1', '::1', 'localhost'].includes(host) ? null : host;
}

function addressesClash(a: Address, b: Address): boolean {
  if (a.port === 0 || a.port !== b.port) return false;
  const wildcard = (host: string): boolean => host === '0.0.0.0' || host === '::';
  // Host names are not resolved here, except the one every machine agrees on.
  const loopback = (host: string): boolean => host === '127.0.0.1' || host === '::1';
  const localhostOf = (x: string, y: string): boolean => x === 'localhost' && loopback(y);
  return wildcard(a.host) || wildcard(b.host) || a.host === b.host
    || localhostOf(a.host, b.host) || localhostOf(b.host, a.host);
}

function readString(value: unknown, field: string, what: string, quoteHint: boolean): string {
  if (typeof value === 'string') return value;
  const hint = quoteHint && (typeof value === 'number' || typeof value === 'boolean') ? ' (put it in quotes)' : '';
  throw new ConfigError(field, `expected ${what}, got ${kindOf(value)}${hint}`);
}

function readInteger(value: unknown, field: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw new ConfigError(field, `expected an integer from ${min} to ${max}, got ${typeof value === 'number' ? value : kindOf(value)}`);
  }
  if (value < min || value > max) throw new ConfigError(field, `must be an integer from ${min} to ${max}, got ${value}`);
  return value;
}

function readBoolean(value: unknown, field: string): boolean {
  if (typeof value === 'boolean') return value;
  const yamlOneOne = typeof value === 'string' && /^(yes|no|on|off|y|n)$/i.test(value);
  const hint = yamlOneOne ? ` (YAML 1.2 reads ${quote(value)} as a string; write true or false)` : '';
  throw new ConfigError(field, `expected true or false, got ${kindOf(value)}${hint}`);
}

function kindOf(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (Array.isArray(value)) return 'list';
  if (value instanceof Map) return 'map';
  return typeof value;
}

function fieldPath(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

function quote(text: string): string {
  return JSON.stringify(text);
}

/** "no such file or directory (ENOENT)" from Node's "ENOENT: no such file or directory, open '...'". */
function describeFsError(error: unknown): string {
  assert(error instanceof Error, 'file system errors are Errors');
  const match = /^([A-Z0-9]+): (.*?), \w+ '.*'$/s.exec(error.message);
  return match === null ? error.message : `${match[2]} (${match[1]})`;
}

/** The members of a volume's quorum: its replicas and every witness of the cluster. */
export function quorumMembers(cluster: Pick<ClusterConfig, 'nodes'>, volume: Pick<VolumeConfig, 'replicas'>): string[] {
  return [...volume.replicas, ...cluster.nodes.filter((node) => node.witness).map((node) => node.id)];
}

/**
 * Every node's heartbeat must fit in one datagram (HEARTBEAT_BYTES_MAX, at most
 * HEARTBEAT_VOLUMES_MAX volumes): its volumes with their names and, for a quorum volume,
 * its synced set, and the peers it hears (counted as every other node, the most it can be).
 */
function checkHeartbeatSize(cluster: string, nodes: readonly NodeConfig[], volumes: readonly VolumeConfig[]): void {
  const utf8Bytes = (text: string): number => Buffer.byteLength(text, 'utf8');
  const longestId = Math.max(...nodes.map((node) => utf8Bytes(node.id)));
  nodes.forEach((node, index) => {
    const sent = volumes.filter((volume) => volume.replicas.includes(node.id) || (node.witness && volume.quorum === 'majority'));
    if (sent.length > HEARTBEAT_VOLUMES_MAX) {
      throw new ConfigError(`nodes[${index}]`, `${quote(node.id)} would name ${sent.length} volumes in its heartbeats, more than the ${HEARTBEAT_VOLUMES_MAX} one heartbeat carries; spread the volumes over more nodes`);
    }
    const volumeBytes = sent.reduce((sum, volume) => {
      const synced = volume.quorum === 'majority' ? volume.replicas.reduce((ids, id) => ids + 2 + utf8Bytes(id), 0) : 0;
      return sum + 2 + utf8Bytes(volume.name) + 16 + 2 + synced;
    }, 0);
    const hears = nodes.reduce((sum, other) => sum + (other.id === node.id ? 0 : 2 + utf8Bytes(other.id)), 0);
    const bytes = 24 + 2 + utf8Bytes(cluster) + 2 + utf8Bytes(node.id) + 2 + longestId + 2 + volumeBytes + 2 + hears + HEARTBEAT_MAC_BYTES;
    if (bytes > HEARTBEAT_BYTES_MAX) {
      throw new ConfigError(`nodes[${index}]`, `${quote(node.id)}'s heartbeats would take up to ${bytes} bytes, more than the ${HEARTBEAT_BYTES_MAX} of one datagram; spread its ${sent.length} volumes over more nodes, or shorten their names`);
    }
  });
}
