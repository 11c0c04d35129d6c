// The shape of one simulated run, drawn from its seed: how many peers and clients, the
// mirror's window and lag limits, the delays of disks and links, which secondaries are
// cut off part way (some for longer than the catch-up bound absorbs), which crash and
// restart, whether the primary brings back a peer that cannot catch up by a bitmap
// resync, and whether (and when) the primary itself crashes and restarts. Everything a
// run does follows from this and the seed, so printing the seed (and any forced choice)
// is enough to replay it.

import { Prng } from '../unit/prng.js';
import type { DelayRange } from './network.js';

export type SimMode = 'sync' | 'async';

/**
 * Deliberate faults, to show that the checker catches what it claims to. Of the
 * simulated parts:
 * - drop-store-data: one secondary acknowledges one write without writing it to its image;
 * - lying-log-sync: one secondary reports its log synced without making anything durable;
 * - reorder-same-block: one secondary lets a store overtake an earlier one to the same blocks;
 * - duplicate-entry: the network delivers one entry twice;
 * - source-overruns-window: the primary's core is given four times the window the
 *   checker holds it to;
 * - source-ignores-lag: in async mode, the primary's core is given sixteen times the lag
 *   bound the checker holds it to;
 * - secondary-loses-durable: after a crash, the recovery of the first secondary loses the
 *   last entry it had made durable (its crashes stay on);
 * - primary-loses-durable: a crash of the primary loses, with what follows it, a write
 *   it had answered a FUA for (its log recovers to just before it);
 * - primary-ignores-diverged: the restarted primary marks nothing for the regions a
 *   peer names in DIVERGED (and has no write-intent record, which marks most of them
 *   anyway);
 * - target-forgets-named: a secondary forgets, at its log restart, the regions it named
 *   in DIVERGED, so a primary that crashes again before RESET_DONE never hears of them.
 * And a broken shipped core (src/core/mirror-ledger.ts), patched here, each the bug a
 * seed once found in src/ (the seed in brackets, with --primary-crash on):
 * - ledger-forgets-unsynced: the bitmap files do not mark the entries a peer in sync has
 *   not made durable (19);
 * - ledger-diverged-after-last: after an unclean start, divergedAfter is the log's last
 *   entry (the start's CP marker) instead of the last one recovered (2);
 * - ledger-ignores-intent: the ledger ignores the write-intent record at an unclean start (21).
 * Every one from primary-loses-durable on forces the seed's primary crashes on.
 */
export type Fault =
  | 'drop-store-data'
  | 'lying-log-sync'
  | 'reorder-same-block'
  | 'duplicate-entry'
  | 'source-overruns-window'
  | 'source-ignores-lag'
  | 'secondary-loses-durable'
  | 'primary-loses-durable'
  | 'primary-ignores-diverged'
  | 'target-forgets-named'
  | 'ledger-forgets-unsynced'
  | 'ledger-diverged-after-last'
  | 'ledger-ignores-intent';
export const faults: readonly Fault[] = [
  'drop-store-data',
  'lying-log-sync',
  'reorder-same-block',
  'duplicate-entry',
  'source-overruns-window',
  'source-ignores-lag',
  'secondary-loses-durable',
  'primary-loses-durable',
  'primary-ignores-diverged',
  'target-forgets-named',
  'ledger-forgets-unsynced',
  'ledger-diverged-after-last',
  'ledger-ignores-intent',
];
export const primaryFaults: readonly Fault[] = faults.slice(faults.indexOf('primary-loses-durable'));

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

/**
 * A secondary crashes at `atUs`: it loses what it had not made durable (a recovery finds
 * its durable log entries and, with `keepFraction` > 0, that fraction of the stored ones
 * past them, which reached the disk anyway). The primary notices `detectAfterUs` later
 * (its links reset, or heartbeats), or when the peer is back if that comes first; the
 * peer restarts `restartAfterUs` after the crash and reconnects.
 */
export interface Crash {
  peer: string;
  atUs: number;
  restartAfterUs: number;
  detectAfterUs: number;
  keepFraction: number;
}

/**
 * The primary crashes at `atUs`: its process dies with every request in flight (clients
 * see their connections drop) and every link to its peers. Its log keeps the entries
 * that were durable and, with `keepFraction` > 0, that fraction of the written ones past
 * them (a prefix), which reached the disk anyway; the rest is lost, though peers may
 * hold them (entries are sent as they are placed, before the primary's own log write).
 * With `imageKeepsLost` > 0 its volume file keeps, in that fraction of the blocks that
 * only lost entries had changed since its last consistency point, a lost write's bytes
 * (the volume file is written alongside the log, not after it). It restarts
 * `restartAfterUs` later: it replays its log, takes a consistency point, and every peer
 * needs a resync (the start was not clean).
 */
export interface PrimaryCrash {
  atUs: number;
  restartAfterUs: number;
  keepFraction: number;
  imageKeepsLost: number;
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
  /** Secondaries that crash and restart. */
  crashes: Crash[];
  /** Crashes of the primary (only with resync: a primary always resyncs its peers after one). */
  primaryCrashes: PrimaryCrash[];
  /** Peers that cannot catch up are brought back by a bitmap resync (else they stay out). */
  resync: boolean;
  /** The dirty bitmap's region, in blocks. */
  resyncRegionBlocks: number;
  /** Resync entries logged and not yet durable on the peer, at most. */
  resyncInflightMax: number;
  /** Consecutive dirty regions one resync entry may carry (the engine's runs). */
  resyncRunRegionsMax: number;
  fault: Fault | null;
  /** A run that has not gone quiet after this many events is a failure (a livelock). */
  eventsMax: number;
}

export interface ConfigChoices {
  mode?: SimMode;
  fault?: Fault | null;
  /** false: no secondary crashes (the seed's other choices stay as drawn). */
  crashes?: boolean;
  /** Forces bitmap resync on or off. */
  resync?: boolean;
  /**
   * Forces primary crashes on (the seed's drawn schedule; resync is then on unless forced
   * off, which leaves them out) or off. Drawn per seed when not given.
   */
  primaryCrashes?: boolean;
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
  // Drawn after everything above, so that adding them left the rest of each seed's shape as it was.
  const resync = prng.chance(0.6);
  const crashes: Crash[] = [];
  const crashCount = prng.pick([0, 0, 1, 1, 2, 3]);
  for (let count = 0; count < crashCount; count += 1) {
    crashes.push({
      peer: prng.pick(peers),
      atUs: prng.between(100, activeUs),
      restartAfterUs: prng.pick([prng.between(1, 500), prng.between(500, 5000), prng.between(5000, 50_000)]),
      detectAfterUs: prng.pick([0, prng.between(1, 2000), prng.between(2000, 20_000)]),
      keepFraction: prng.chance(0.3) ? prng.below(1001) / 1000 : 0,
    });
  }
  // Partitions longer than some catch-up bounds absorb.
  const longCuts = prng.pick([0, 0, 1, 2]);
  for (let count = 0; count < longCuts; count += 1) {
    cuts.push({ peer: prng.pick(peers), atUs: prng.between(100, activeUs), reconnectAfterUs: prng.between(20_000, 200_000) });
  }
  const resyncRegionBlocks = prng.pick([1, 4, 8]);
  const resyncInflightMax = prng.pick([1, 4, 16]);
  const primaryFault = choices.fault != null && primaryFaults.includes(choices.fault);
  // A deliberate fault of a secondary must be caught on one that stays in sync.
  const noFault = (choices.fault ?? null) === null || primaryFault || choices.fault === 'secondary-loses-durable';
  const config: SimConfig = {
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
    cuts: noFault ? cuts : [],
    crashes: noFault && choices.crashes !== false ? crashes : [],
    primaryCrashes: [],
    resync: choices.resync ?? resync,
    resyncRegionBlocks,
    resyncInflightMax,
    resyncRunRegionsMax: 1,
    fault: choices.fault ?? null,
    eventsMax: 1_000_000,
  };
  // Drawn after everything above (the object's fields included), so that adding them left
  // the rest of each seed's shape as it was.
  const primaryDrawn = prng.chance(0.5);
  const primaryCrashes: PrimaryCrash[] = [];
  const primaryCount = prng.pick([1, 1, 1, 2, 3]);
  for (let count = 0; count < primaryCount; count += 1) {
    primaryCrashes.push({
      atUs: prng.between(100, activeUs),
      restartAfterUs: prng.pick([prng.between(1, 500), prng.between(500, 5000), prng.between(5000, 30_000)]),
      keepFraction: prng.chance(0.3) ? prng.below(1001) / 1000 : 0,
      imageKeepsLost: prng.chance(0.3) ? prng.below(1001) / 1000 : 0,
    });
  }
  primaryCrashes.sort((a, b) => a.atUs - b.atUs);
  config.resyncRunRegionsMax = prng.pick([1, 2, 4]);
  // A forced choice of primary crashes brings resync with it (the real primary always resyncs).
  if ((choices.primaryCrashes === true || primaryFault) && choices.resync === undefined) config.resync = true;
  // A secondary's fault runs without primary crashes (its crashes are what it needs).
  const wanted = primaryFault || (choices.primaryCrashes ?? (choices.fault === 'secondary-loses-durable' ? false : primaryDrawn));
  if (wanted && config.resync && noFault) config.primaryCrashes = primaryCrashes;
  return config;
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
    config.crashes.length === 0
      ? 'no crash'
      : config.crashes
          .map(
            (crash) =>
              `crash ${crash.peer} at ${crash.atUs}us, restart after ${crash.restartAfterUs}us, noticed after ${crash.detectAfterUs}us` +
              (crash.keepFraction > 0 ? `, keeps ${crash.keepFraction} of its unsynced entries` : ''),
          )
          .join(', '),
    config.primaryCrashes.length === 0
      ? 'no primary crash'
      : config.primaryCrashes
          .map(
            (crash) =>
              `primary crash at ${crash.atUs}us, restart after ${crash.restartAfterUs}us` +
              (crash.keepFraction > 0 ? `, keeps ${crash.keepFraction} of its unsynced entries` : '') +
              (crash.imageKeepsLost > 0 ? `, its image keeps lost writes in ${crash.imageKeepsLost} of the blocks` : ''),
          )
          .join(', '),
    config.resync
      ? `resync (regions of ${config.resyncRegionBlocks} blocks, ${config.resyncInflightMax} in flight, up to ${config.resyncRunRegionsMax} a run)`
      : 'no resync',
    ...(config.fault === null ? [] : [`fault ${config.fault}`]),
  ].join('; ');
}
