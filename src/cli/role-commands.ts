// `blockmirror promote`, `blockmirror demote`, `blockmirror resolve` and `blockmirror
// attach` (docs/operations.md, "Failover", "Split brain" and "A failed disk"): the role
// changes and a replaced disk, asked of the nodes' admin APIs.

import { formatAddress, loadClusterConfig } from '../control/config.js';
import { assert } from '../lib/assert.js';
import { BlockmirrorError } from '../lib/errors.js';
import { formatBytes } from '../lib/size.js';
import type { ClusterConfig } from '../control/config.js';
import type { AttachResult, DemotionResult, NodeStatus, PromotionResult, ResolveResult } from '../server/status.js';
import { parseFlags, required } from './flags.js';

/**
 * `promote` and `demote`: asked of node N's admin API (its address from the cluster file,
 * or --admin). Exit 0 when done; 1 when refused, with the reason.
 */
export async function changeRole(change: 'promote' | 'demote' | 'attach', args: string[]): Promise<number> {
  const [volume, ...rest] = args;
  if (volume === undefined || volume.startsWith('-')) throw new BlockmirrorError('ERR_USAGE', `${change} needs a VOLUME (see blockmirror --help)`);
  const flags = parseFlags(rest, ['--config', '--admin', '--node'], change === 'promote' ? ['--force', '--json'] : ['--json']);
  const nodeId = required(flags, '--node');
  const admin = flags.values.get('--admin') ?? adminOf(loadClusterConfig(required(flags, '--config')), nodeId, volume);
  const response = await post(admin, nodeId, volume, change, flags.switches.has('--force') ? { force: true } : {});
  const body = (await response.json()) as unknown;
  if (!response.ok) {
    const error = (body as { error?: { code?: string; message?: string } }).error;
    if (flags.switches.has('--json')) process.stdout.write(JSON.stringify(body, null, 2) + '\n');
    process.stderr.write(`blockmirror: ${change} refused${error?.code === undefined ? '' : ` (${error.code})`}: ${error?.message ?? `HTTP ${response.status}`}\n`);
    return 1;
  }
  if (flags.switches.has('--json')) {
    process.stdout.write(JSON.stringify(body, null, 2) + '\n');
  } else if (change === 'promote') {
    const result = body as PromotionResult;
    const lines = [`node ${result.node} is the primary of ${result.volume} in epoch ${result.epoch} (entries from ${result.firstSeq}; node ${result.previousPrimary} was)`];
    if (result.appliedEntries > 0) lines.push(`applied ${result.appliedEntries} entries (${formatBytes(result.appliedBytes)}) of its per-source log first`);
    if (result.sourceLogDamage !== null) lines.push(`its per-source log was damaged: ${result.sourceLogDamage}`);
    if (result.mayLack !== null) lines.push(`forced: ${result.mayLack}`);
    process.stdout.write(lines.join('\n') + '\n');
  } else if (change === 'attach') {
    const result = body as AttachResult;
    process.stdout.write(`a new disk is attached for ${result.volume} on node ${result.node}: its ${formatBytes(result.totalBytes)} are being filled from the peers while clients go on (blockmirror status shows how far)\n`);
  } else {
    const result = body as DemotionResult;
    process.stdout.write(`node ${result.node} stepped down as the primary of ${result.volume} in epoch ${result.epoch} at entry ${result.lastSeq}; promote another copy to take writes\n`);
  }
  return 0;
}

/** Node `nodeId`'s admin URL from the cluster file, which must give it a copy of `volume` and a fixed port. */
function adminOf(config: ClusterConfig, nodeId: string, volume: string): string {
  const node = config.nodes.find((candidate) => candidate.id === nodeId);
  if (node === undefined) throw new BlockmirrorError('ERR_USAGE', `the cluster file has no node "${nodeId}"`);
  const spec = config.volumes.find((candidate) => candidate.name === volume);
  if (spec === undefined) throw new BlockmirrorError('ERR_USAGE', `the cluster file has no volume "${volume}"`);
  if (!spec.replicas.includes(nodeId)) throw new BlockmirrorError('ERR_USAGE', `node ${nodeId} holds no copy of volume "${volume}" (its replicas: ${spec.replicas.join(', ')})`);
  if (node.admin.port === 0) throw new BlockmirrorError('ERR_USAGE', `node ${nodeId}'s admin address in the cluster file has port 0 (the kernel picks one at start): give --admin URL`);
  return `http://${formatAddress(node.admin)}`;
}

/** POST /api/v1/volumes/<volume>/<change> to a node's admin API. */
async function post(admin: string, nodeId: string, volume: string, change: string, body: unknown): Promise<Response> {
  const url = new URL(`/api/v1/volumes/${encodeURIComponent(volume)}/${change}`, admin);
  try {
    // A demotion waits for the clients' requests to drain and the peers to take the last consistency point.
    return await fetch(url, { method: 'POST', body: JSON.stringify(body), signal: AbortSignal.timeout(60_000) });
  } catch (error) {
    throw new BlockmirrorError('ERR_ADMIN_UNREACHABLE', `cannot reach node ${nodeId} at ${admin}: ${(error as Error).message}`);
  }
}

/**
 * `resolve VOLUME --discard NODE`: NODE's copy of a volume in split brain discards its
 * writes since the split (saved first) in favour of the copy it split from, which
 * becomes the primary if it is not. Asked of NODE (which names the other side), then of
 * the winner. Exit 0 when both did their part; 1 when one refused.
 */
export async function resolve(args: string[]): Promise<number> {
  const [volume, ...rest] = args;
  if (volume === undefined || volume.startsWith('-')) throw new BlockmirrorError('ERR_USAGE', 'resolve needs a VOLUME (see blockmirror --help)');
  const flags = parseFlags(rest, ['--config', '--discard', '--admin', '--winner-admin'], ['--json']);
  const loser = required(flags, '--discard');
  // The two nodes' admin APIs: from the cluster file, or given (--admin for NODE, --winner-admin for the other).
  const config = flags.values.has('--admin') && flags.values.has('--winner-admin') ? null : loadClusterConfig(required(flags, '--config'));
  const admin = (node: string, flag: string): string => {
    const given = flags.values.get(flag);
    if (given !== undefined) return given;
    assert(config !== null);
    return adminOf(config, node, volume);
  };
  const loserAdmin = admin(loser, '--admin');
  let status: NodeStatus;
  try {
    const response = await fetch(new URL('/api/v1/status', loserAdmin), { signal: AbortSignal.timeout(10_000) });
    status = (await response.json()) as NodeStatus;
  } catch (error) {
    throw new BlockmirrorError('ERR_ADMIN_UNREACHABLE', `cannot reach node ${loser} at ${loserAdmin}: ${(error as Error).message}`);
  }
  const split = status.volumes.find((candidate) => candidate.name === volume)?.splitBrain ?? null;
  if (split === null) {
    process.stderr.write(`blockmirror: resolve refused (ERR_ROLE_REFUSED): node ${loser} finds no split brain of ${volume}\n`);
    return 1;
  }
  const results: ResolveResult[] = [];
  for (const [node, flag] of [[loser, '--admin'], [split.peer, '--winner-admin']] as const) {
    const response = await post(admin(node, flag), node, volume, 'resolve', { discard: loser });
    const body = (await response.json()) as unknown;
    if (!response.ok) {
      const error = (body as { error?: { code?: string; message?: string } }).error;
      if (flags.switches.has('--json')) process.stdout.write(JSON.stringify({ done: results, refused: body }, null, 2) + '\n');
      process.stderr.write(`blockmirror: resolve refused by node ${node}${error?.code === undefined ? '' : ` (${error.code})`}: ${error?.message ?? `HTTP ${response.status}`}\n`);
      return 1;
    }
    results.push(body as ResolveResult);
  }
  if (flags.switches.has('--json')) {
    process.stdout.write(JSON.stringify({ done: results }, null, 2) + '\n');
  } else {
    process.stdout.write(
      `node ${loser} discards its ${split.here.entries} entries of ${volume} past entry ${split.sharedSeq} (saved under its data directory's split-brain/ first); ` +
        `node ${split.peer}'s copy wins and is the primary\n`,
    );
  }
  return 0;
}
