// The shape of one simulated failover run (failover.ts), drawn from its seed: two or three
// data nodes (and a witness for a two-node quorum volume), the mode, quorum and split-brain
// policy, the clients, and a schedule of what befalls the primary and the others — crashes,
// partitions, a failed disk — with the operator's answers to it: promotions (by the rules, or
// forced), a planned switchover (demote, then promote), `resolve` of a split brain left
// apart, and `attach` of a new disk. Everything a run does follows from this and the seed.
//
// With `coordination: etcd` no operator promotes: a primary holds the volume under a lease in
// a simulated etcd (etcd-model.ts), and a secondary that may be promoted by the rules claims
// the volume once the lease expired, or else the primary that stepped down takes it back
// (etcd-node.ts). Such a run draws, after everything else,
// the lease's time to live, the messages' delays and losses to and from etcd, each node's
// priority, whether the volume is strict, whether each partition also cuts the node off from
// etcd, and up to two faults of etcd's own: every member down for a while, or one node cut
// off from etcd alone.

import type { AfterSplitBrain } from '../../src/core/split-brain.js';
import { Prng } from '../unit/prng.js';

export type FailoverMode = 'sync' | 'async';

/** Who chooses the primary: the operator (`static`), or claims in etcd under a lease (`etcd`). */
export type Coordination = 'static' | 'etcd';

/**
 * Deliberate faults, to show that the checker catches what it claims to:
 * - promote-ignores-contact: a promotion by the rules skips the contact rule (mayLack), so
 *   a copy that was left behind can be promoted without --force;
 * - split-brain-unseen: a copy never finds a split brain (it follows the other line and
 *   drops its own acknowledged writes without saving them);
 * - no-write-quorum: a quorum volume's primary acknowledges without a majority;
 * - passive-votes: a quorum volume's candidate is promoted on the votes its members would
 *   give, without their promises (a member that voted still counts for the old primary);
 * - forgets-epoch: a member replaced on an empty disk counts at once, for whichever
 *   primary claims its (first) epoch;
 * - renumbers-unmarked: a primary that starts again after a crash numbers anew without
 *   restarting its epoch in the history (only its ledger knows).
 * With coordination through etcd (each implies it):
 * - ignores-lease: a primary never asks its HeldLease (its replies pass the gate on the key
 *   as last read, and it never fences itself), so it acknowledges after its lease expired.
 */
export type FailoverFault =
  | 'promote-ignores-contact' | 'split-brain-unseen' | 'no-write-quorum' | 'passive-votes' | 'forgets-epoch' | 'renumbers-unmarked'
  | 'ignores-lease';
export const failoverFaults: readonly FailoverFault[] = [
  'promote-ignores-contact', 'split-brain-unseen', 'no-write-quorum', 'passive-votes', 'forgets-epoch', 'renumbers-unmarked', 'ignores-lease',
];
/** The faults of coordination through etcd: a run with one of them is coordinated through etcd. */
export const etcdFaults: readonly FailoverFault[] = ['ignores-lease'];

export type Step =
  /** The node's process dies (what its disk had not made durable is lost); it restarts later. */
  | { kind: 'crash'; target: Target; atUs: number; restartAfterUs: number }
  /** The node is cut off from every other node (and the witness; from etcd too with `etcdToo`); healed later. */
  | { kind: 'partition'; target: Target; atUs: number; healAfterUs: number; etcdToo: boolean }
  /** The node's disk fails; the operator attaches a new one later. */
  | { kind: 'disk'; target: Target; atUs: number; attachAfterUs: number }
  /** The operator promotes a secondary: `node`, or the first that may be promoted. */
  | { kind: 'promote'; node: string | null; force: boolean; atUs: number }
  /** A planned switchover: the primary steps down, and an in-sync secondary is promoted (through etcd: claims). */
  | { kind: 'switchover'; atUs: number }
  /** Every member of etcd stops for a while (coordination through etcd). */
  | { kind: 'etcd-down'; atUs: number; forUs: number }
  /** The node is cut off from etcd, and from nothing else, for a while (coordination through etcd). */
  | { kind: 'etcd-cut'; target: Target; atUs: number; forUs: number };

/** Whom a step befalls: the primary of the moment, a secondary of the moment, or a named node. */
export type Target = 'primary' | 'secondary' | string;

/** Coordination through etcd: the lease, the links to etcd (in the lease's milliseconds), each node's priority. */
export interface EtcdShape {
  /** The lease's time to live as configured (whole seconds, as the cluster file requires). */
  ttlMs: number;
  /** Simulated microseconds per millisecond of the lease's figures (HeldLease, renewals, reads, deadlines). */
  usPerMs: number;
  /** One way between a node and etcd, in milliseconds; now and then a message is slow (up to four times `maxMs`). */
  delayMs: { minMs: number; maxMs: number };
  slowChance: number;
  lossChance: number;
  priorities: Record<string, number>;
}

/** Simulated microseconds per millisecond of a lease: a lease of 2 s lives 10 ms of the simulator's time. */
export const ETCD_US_PER_MS = 5;

export interface FailoverConfig {
  seed: number;
  mode: FailoverMode;
  coordination: Coordination;
  /** Present exactly when `coordination` is `etcd`. */
  etcd: EtcdShape | null;
  nodes: string[];
  /** A witness (no data) makes a two-node quorum volume's third member. */
  witness: boolean;
  quorum: 'off' | 'majority';
  /**
   * `strict: true` (MirrorSource.strictMissing): the primary refuses changes, and fails those
   * waiting, while a replica does not stream in sync, so it never acknowledges alone. Drawn
   * only under coordination through etcd; a static run is never strict.
   */
  strict: boolean;
  afterSplitBrain: AfterSplitBrain;
  blocks: number;
  clients: number;
  opsPerClient: number;
  thinkUs: { minUs: number; maxUs: number };
  networkUs: { minUs: number; maxUs: number };
  diskUs: { minUs: number; maxUs: number };
  /** How long the operator takes to answer a failure (a promotion after a crash of the primary). */
  operatorUs: { minUs: number; maxUs: number };
  /** When the rules refuse every copy after a failure, the operator forces the promotion of the best one. */
  operatorForces: boolean;
  /** A split brain left apart is resolved by the operator this long after it is found (null: never). */
  resolveAfterUs: number | null;
  steps: Step[];
  fault: FailoverFault | null;
}

export interface FailoverChoices {
  mode?: FailoverMode;
  quorum?: 'off' | 'majority';
  coordination?: Coordination;
  /** Under coordination through etcd: strict volumes, or not (else drawn). */
  strict?: boolean;
  fault?: FailoverFault | null;
}

/** The coordination of a run: as chosen, else etcd for an etcd fault, else static. */
export function coordinationOf(choices: FailoverChoices): Coordination {
  return choices.coordination ?? (choices.fault != null && etcdFaults.includes(choices.fault) ? 'etcd' : 'static');
}

const policies: readonly AfterSplitBrain[] = ['disconnect', 'discard-zero-changes', 'discard-younger-primary', 'discard-least-changes'];

export function failoverConfigFromSeed(seed: number, choices: FailoverChoices = {}): FailoverConfig {
  const prng = new Prng((seed ^ 0x2f0a11) >>> 0);
  const mode: FailoverMode = choices.mode ?? (prng.chance(0.25) ? 'async' : 'sync');
  const nodes = prng.chance(0.5) ? ['a', 'b'] : ['a', 'b', 'c'];
  const quorum = choices.quorum ?? (mode === 'sync' && prng.chance(0.4) ? 'majority' : 'off');
  const clients = prng.between(1, 3);
  const opsPerClient = prng.between(10, 40);
  const thinkUs = { minUs: 50, maxUs: prng.pick([300, 1000, 3000]) };
  const activeUs = opsPerClient * (thinkUs.maxUs / 2 + 800);
  const steps: Step[] = [];
  const count = prng.between(1, 4);
  for (let index = 0; index < count; index += 1) {
    const atUs = prng.between(200, activeUs);
    const roll = prng.below(100);
    const target: Target = prng.chance(0.7) ? 'primary' : prng.chance(0.5) ? 'secondary' : prng.pick(nodes);
    if (roll < 35) steps.push({ kind: 'crash', target, atUs, restartAfterUs: prng.pick([prng.between(100, 2000), prng.between(2000, 30_000)]) });
    else if (roll < 65) steps.push({ kind: 'partition', target, atUs, healAfterUs: prng.pick([prng.between(100, 3000), prng.between(3000, 40_000)]), etcdToo: false });
    else if (roll < 75) steps.push({ kind: 'disk', target, atUs, attachAfterUs: prng.between(1000, 20_000) });
    else if (roll < 85) steps.push({ kind: 'switchover', atUs });
    else steps.push({ kind: 'promote', node: prng.chance(0.5) ? null : prng.pick(nodes), force: prng.chance(0.5), atUs });
  }
  steps.sort((x, y) => x.atUs - y.atUs);
  const config: FailoverConfig = {
    seed,
    mode,
    coordination: 'static',
    etcd: null,
    nodes,
    witness: quorum === 'majority' && nodes.length === 2,
    quorum,
    strict: false,
    afterSplitBrain: prng.pick(policies),
    blocks: 16,
    clients,
    opsPerClient,
    thinkUs,
    networkUs: { minUs: 20, maxUs: prng.pick([100, 300, 1000]) },
    diskUs: { minUs: 30, maxUs: prng.pick([100, 500, 2000]) },
    operatorUs: { minUs: 200, maxUs: prng.pick([1000, 5000, 20_000]) },
    resolveAfterUs: prng.chance(0.7) ? prng.between(500, 10_000) : null,
    steps,
    // Drawn last, so that adding it left the rest of each seed's shape as it was.
    operatorForces: false,
    fault: choices.fault ?? null,
  };
  config.operatorForces = prng.chance(0.3);
  if (coordinationOf(choices) === 'etcd') coordinateThroughEtcd(config, choices);
  return config;
}

/**
 * The run's shape under coordination through etcd, drawn from a Prng of its own so that the
 * rest of the seed's shape is the static run's: no operator promotes (the schedule's
 * promotions go, and nobody forces one), the volume has no quorum (etcd chooses the primary),
 * and etcd's figures and faults are added.
 */
function coordinateThroughEtcd(config: FailoverConfig, choices: FailoverChoices): void {
  if (choices.quorum === 'majority') throw new Error('coordination through etcd runs without a quorum: etcd chooses the primary');
  const prng = new Prng((config.seed ^ 0xe7cd1ea5) >>> 0);
  const ttlMs = prng.pick([2000, 2000, 3000, 5000]);
  const etcd: EtcdShape = {
    ttlMs,
    usPerMs: ETCD_US_PER_MS,
    delayMs: { minMs: 1, maxMs: prng.pick([5, 20, 100, 300]) },
    slowChance: prng.pick([0, 0.01, 0.05]),
    lossChance: prng.pick([0, 0, 0.01, 0.05, 0.2]),
    priorities: Object.fromEntries(config.nodes.map((node) => [node, prng.pick([0, 0, 1, 2])])),
  };
  const strict = prng.chance(0.5);
  const ttlUs = ttlMs * ETCD_US_PER_MS;
  const lastUs = Math.max(1000, ...config.steps.map((step) => step.atUs));
  const steps = config.steps
    .filter((step) => step.kind !== 'promote')
    .map((step): Step => (step.kind === 'partition' ? { ...step, etcdToo: prng.chance(0.5) } : step));
  const faults = prng.between(0, 2);
  for (let index = 0; index < faults; index += 1) {
    const atUs = prng.between(200, lastUs + ttlUs);
    const forUs = prng.pick([prng.between(ttlUs / 10, ttlUs), prng.between(ttlUs, 3 * ttlUs)]);
    if (prng.chance(0.4)) steps.push({ kind: 'etcd-down', atUs, forUs });
    else steps.push({ kind: 'etcd-cut', target: prng.chance(0.6) ? 'primary' : prng.pick(config.nodes), atUs, forUs });
  }
  steps.sort((x, y) => x.atUs - y.atUs);
  config.coordination = 'etcd';
  config.etcd = etcd;
  config.quorum = 'off';
  config.strict = choices.strict ?? strict;
  config.witness = false;
  config.operatorForces = false;
  config.steps = steps;
}

export function describeFailoverConfig(config: FailoverConfig): string {
  const step = (each: Step): string => {
    switch (each.kind) {
      case 'crash':
        return `crash ${each.target} at ${each.atUs}us for ${each.restartAfterUs}us`;
      case 'partition':
        return `cut off ${each.target}${each.etcdToo ? ' (and from etcd)' : ''} at ${each.atUs}us for ${each.healAfterUs}us`;
      case 'disk':
        return `disk of ${each.target} fails at ${each.atUs}us, attach after ${each.attachAfterUs}us`;
      case 'promote':
        return `promote ${each.node ?? 'a secondary'}${each.force ? ' --force' : ''} at ${each.atUs}us`;
      case 'switchover':
        return `switchover at ${each.atUs}us`;
      case 'etcd-down':
        return `etcd down at ${each.atUs}us for ${each.forUs}us`;
      case 'etcd-cut':
        return `${each.target} cut off from etcd at ${each.atUs}us for ${each.forUs}us`;
    }
  };
  const etcd = config.etcd;
  return [
    `mode ${config.mode}`,
    ...(etcd === null
      ? []
      : [
          `coordination etcd (lease ${etcd.ttlMs} ms = ${etcd.ttlMs * etcd.usPerMs}us, delay ${etcd.delayMs.minMs}..${etcd.delayMs.maxMs} ms, ` +
            `slow ${etcd.slowChance}, loss ${etcd.lossChance}, priorities ${Object.entries(etcd.priorities).map(([node, priority]) => `${node}=${priority}`).join(',')})`,
        ]),
    `nodes ${config.nodes.join(',')}${config.witness ? ' + witness' : ''}`,
    `quorum ${config.quorum}`,
    ...(config.strict ? ['strict'] : []),
    `afterSplitBrain ${config.afterSplitBrain}`,
    `${config.clients} clients x ${config.opsPerClient} writes`,
    config.resolveAfterUs === null ? 'no resolve' : `resolve after ${config.resolveAfterUs}us`,
    ...(config.operatorForces ? ['the operator forces a promotion the rules refuse'] : []),
    config.steps.map(step).join(', '),
    ...(config.fault === null ? [] : [`fault ${config.fault}`]),
  ].join('; ');
}
