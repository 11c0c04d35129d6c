// The shape of one simulated run, drawn from its seed: how many peers and clients, the
// mirror's window and lag limits, the delays of disks and links, and which secondaries
// are cut off part way. Everything a run does follows from this and the seed, so printing
// the seed (and a forced mode, if any) is enough to replay it.

import { Prng } from '../unit/prng.js';
import type { DelayRange } from './network.js';

export type SimMode = 'sync' | 'async';

/**
 * Deliberate faults, to show that the checker catches what it claims to:
 * - drop-store-data: one secondary acknowledges one write without writing it to its image;
 * - lying-log-sync: one secondary reports its log synced without making anything durable;
 * - reorder-same-block: one secondary lets a store overtake an earlier one to the same blocks;
 * - duplicate-entry: the network delivers one entry twice.
 */
export type Fault = 'drop-store-data' | 'lying-log-sync' | 'reorder-same-block' | 'duplicate-entry';
export const faults: readonly Fault[] = ['drop-store-data', 'lying-log-sync', 'reorder-same-block', 'duplicate-entry'];

export interface UsRange {
  minUs: number;
  maxUs: number;
}

/** A secondary's links close at `atUs`; it reconnects `reconnectAfterUs` later (never if null). */
export interface Cut {
  peer: string;
  atUs: number;
  reconnectAfterUs: number | null;
}

export interface SimConfig {
  seed: number;
  mode: SimMode;
  peers: string[];
  connections: number;
  blocks: number;
  blockBytes: number;
  /** Entries are routed to connection floor(offset / regionBytes) % connections. */
  regionBytes: number;
  clients: number;
  opsPerClient: number;
  outstandingPerClient: number;
  writeBlocksMax: number;
  /** Writes start in the first `hotBlocks` blocks this often, so that they overlap. */
  hotBlocks: number;
  hotChance: number;
  windowBytesMax: number;
  lagBytesMax: number;
  /** Entries kept for a peer that is away (0: none; it then needs a resync). */
  catchUpBytesMax: number;
  network: DelayRange;
  clientNetwork: DelayRange;
  thinkUs: UsRange;
  diskWriteUs: UsRange;
  /** A secondary's disk may be slower than the primary's: the mirror then runs at its pace. */
  secondaryDiskWriteUs: UsRange;
  diskSyncUs: UsRange;
  checkpointIntervalUs: UsRange;
  /** Secondaries whose links are cut part way. */
  cuts: Cut[];
  fault: Fault | null;
  /** A run that has not gone quiet after this many events is a failure (a livelock). */
  eventsMax: number;
}

export interface ConfigChoices {
  mode?: SimMode;
  fault?: Fault | null;
}

export function configFromSeed(seed: number, choices: ConfigChoices = {}): SimConfig {
  const prng = new Prng(seed);
  const drawnMode: SimMode = prng.chance(1 / 3) ? 'async' : 'sync';
  const peers = prng.chance(0.3) ? ['b'] : ['b', 'c'];
  const blockBytes = 512;
  const clients = prng.between(2, 6);
  const opsPerClient = prng.between(10, 40);
  const thinkUs = { minUs: 0, maxUs: prng.pick([200, 1000, 3000]) };
  const activeUs = opsPerClient * (thinkUs.maxUs / 2 + 1500);
  const cutCount = prng.pick([0, 0, 0, 1, 1, 2, 3]);
  const cuts: Cut[] = [];
  for (let count = 0; count < cutCount; count += 1) {
    cuts.push({
      peer: prng.pick(peers),
      atUs: prng.between(100, activeUs),
      reconnectAfterUs: prng.chance(0.7) ? prng.pick([prng.between(1, 500), prng.between(500, 20_000)]) : null,
    });
  }
  return {
    seed,
    mode: choices.mode ?? drawnMode,
    peers,
    connections: 2,
    blocks: 64,
    blockBytes,
    regionBytes: 8 * blockBytes,
    clients,
    opsPerClient,
    outstandingPerClient: prng.between(1, 3),
    writeBlocksMax: prng.pick([1, 4, 8]),
    hotBlocks: 12,
    hotChance: 0.6,
    // 2 KiB is smaller than the largest entry: such an entry goes alone.
    windowBytesMax: prng.pick([2048, 4096, 8192, 32768]),
    lagBytesMax: prng.pick([1024, 4096, 16384]),
    catchUpBytesMax: prng.pick([0, 4096, 65536, 1 << 20]),
    network: { minUs: 20, maxUs: prng.pick([100, 300, 1000]), slowChance: prng.pick([0, 0.05, 0.2]) },
    clientNetwork: { minUs: 5, maxUs: 50, slowChance: 0 },
    thinkUs,
    diskWriteUs: { minUs: 30, maxUs: prng.pick([100, 400, 2000]) },
    secondaryDiskWriteUs: { minUs: 30, maxUs: prng.pick([100, 400, 2000, 5000]) },
    diskSyncUs: { minUs: 100, maxUs: prng.pick([500, 1500, 5000]) },
    checkpointIntervalUs: { minUs: 500, maxUs: prng.pick([3000, 10_000, 50_000]) },
    // A deliberate fault must be caught on a secondary that stays in sync.
    cuts: (choices.fault ?? null) === null ? cuts : [],
    fault: choices.fault ?? null,
    eventsMax: 1_000_000,
  };
}

export function describeConfig(config: SimConfig): string {
  return [
    `mode ${config.mode}`,
    `peers ${config.peers.join(',')}`,
    `${config.clients} clients x ${config.opsPerClient} ops (<= ${config.outstandingPerClient} outstanding, <= ${config.writeBlocksMax} blocks)`,
    `window ${config.windowBytesMax} B`,
    `lag ${config.lagBytesMax} B`,
    `catch-up ${config.catchUpBytesMax} B`,
    `net ${config.network.minUs}-${config.network.maxUs}us (slow ${config.network.slowChance})`,
    config.cuts.length === 0
      ? 'no disconnect'
      : config.cuts.map((cut) => `cut ${cut.peer} at ${cut.atUs}us${cut.reconnectAfterUs === null ? '' : ` for ${cut.reconnectAfterUs}us`}`).join(', '),
    ...(config.fault === null ? [] : [`fault ${config.fault}`]),
  ].join('; ');
}
