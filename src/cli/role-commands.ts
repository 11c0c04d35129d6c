// `blockmirror promote` and `blockmirror demote` (docs/operations.md, "Failover"): the
// role changes, asked of the node's admin API.

import { formatAddress, loadClusterConfig } from '../control/config.js';
import { BlockmirrorError } from '../lib/errors.js';
import { formatBytes } from '../lib/size.js';
import type { DemotionResult, PromotionResult } from '../server/status.js';
import { parseFlags, required } from './flags.js';

/**
 * `promote` and `demote`: asked of node N's admin API (its address from the cluster file,
 * or --admin). Exit 0 when done; 1 when refused, with the reason.
 */
export async function changeRole(change: 'promote' | 'demote', args: string[]): Promise<number> {
  const [volume, ...rest] = args;
  if (volume === undefined || volume.startsWith('-')) throw new BlockmirrorError('ERR_USAGE', `${change} needs a VOLUME (see blockmirror --help)`);
  const flags = parseFlags(rest, ['--config', '--admin', '--node'], change === 'promote' ? ['--force', '--json'] : ['--json']);
  const nodeId = required(flags, '--node');
  let admin = flags.values.get('--admin');
  if (admin === undefined) {
    const config = loadClusterConfig(required(flags, '--config'));
    const node = config.nodes.find((candidate) => candidate.id === nodeId);
    if (node === undefined) throw new BlockmirrorError('ERR_USAGE', `the cluster file has no node "${nodeId}"`);
    const spec = config.volumes.find((candidate) => candidate.name === volume);
    if (spec === undefined) throw new BlockmirrorError('ERR_USAGE', `the cluster file has no volume "${volume}"`);
    if (!spec.replicas.includes(nodeId)) throw new BlockmirrorError('ERR_USAGE', `node ${nodeId} holds no copy of volume "${volume}" (its replicas: ${spec.replicas.join(', ')})`);
    if (node.admin.port === 0) throw new BlockmirrorError('ERR_USAGE', `node ${nodeId}'s admin address in the cluster file has port 0 (the kernel picks one at start): give --admin URL`);
    admin = `http://${formatAddress(node.admin)}`;
  }
  const url = new URL(`/api/v1/volumes/${encodeURIComponent(volume)}/${change}`, admin);
  let response: Response;
  try {
    // A demotion waits for the clients' requests to drain and the peers to take the last consistency point.
    response = await fetch(url, { method: 'POST', body: JSON.stringify(flags.switches.has('--force') ? { force: true } : {}), signal: AbortSignal.timeout(60_000) });
  } catch (error) {
    throw new BlockmirrorError('ERR_ADMIN_UNREACHABLE', `cannot reach node ${nodeId} at ${admin}: ${(error as Error).message}`);
  }
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
  } else {
    const result = body as DemotionResult;
    process.stdout.write(`node ${result.node} stepped down as the primary of ${result.volume} in epoch ${result.epoch} at entry ${result.lastSeq}; promote another copy to take writes\n`);
  }
  return 0;
}
