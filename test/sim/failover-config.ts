// The shape of one simulated failover run (failover.ts), drawn from its seed: two or three
// data nodes (and a witness for a two-node quorum volume), the mode, quorum and split-brain
// policy, the clients, and a schedule of what befalls the primary and the others — crashes,
// partitions, a failed disk — with the operator's answers to it: promotions (by the rules, or
// forced), a planned switchover (demote, then promote), `resolve` of a split brain left
// apart, and `attach` of a new disk. Everything a run does follows from this and the seed.

import type { AfterSplitBrain } from '../../src/core/split-brain.js';
import { Prng } from '../unit/prng.js';

export type FailoverMode = 'sync' | 'async';

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
 */
export type FailoverFault = 'promote-ignores-contact' | 'split-brain-unseen' | 'no-write-quorum' | 'passive-votes' | 'forgets-epoch' | 'renumbers-unmarked';
export const failoverFaults: readonly FailoverFault[] = ['promote-ignores-contact', 'split-brain-unseen', 'no-write-quorum', 'passive-votes', 'forgets-epoch', 'renumbers-unmarked'];

export type Step =
  /** The node's process dies (what its disk had not made durable is lost); it restarts later. */
  | { kind: 'crash'; target: Target; atUs: number; restartAfterUs: number }
  /** The node is cut off from every other node (and the witness); healed later. */
  | { kind: 'partition'; target: Target; atUs: number; healAfterUs: number }
  /** The node's disk fails; the operator attaches a new one later. */
  | { kind: 'disk'; target: Target; atUs: number; attachAfterUs: number }
  /** The operator promotes a secondary: `node`, or the first that may be promoted. */
  | { kind: 'promote'; node: string | null; force: boolean; atUs: number }
  /** A planned switchover: the primary steps down, and an in-sync secondary is promoted. */
  | { kind: 'switchover'; atUs: number };

/** Whom a step befalls: the primary of the moment, a secondary of the moment, or a named node. */
export type Target = 'primary' | 'secondary' | string;

export interface FailoverConfig {
  seed: number;
  mode: FailoverMode;
  nodes: string[];
  /** A witness (no data) makes a two-node quorum volume's third member. */
  witness: boolean;
  quorum: 'off' | 'majority';
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
  fault?: FailoverFault | null;
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
    else if (roll < 65) steps.push({ kind: 'partition', target, atUs, healAfterUs: prng.pick([prng.between(100, 3000), prng.between(3000, 40_000)]) });
    else if (roll < 75) steps.push({ kind: 'disk', target, atUs, attachAfterUs: prng.between(1000, 20_000) });
    else if (roll < 85) steps.push({ kind: 'switchover', atUs });
    else steps.push({ kind: 'promote', node: prng.chance(0.5) ? null : prng.pick(nodes), force: prng.chance(0.5), atUs });
  }
  steps.sort((x, y) => x.atUs - y.atUs);
  const config: FailoverConfig = {
    seed,
    mode,
    nodes,
    witness: quorum === 'majority' && nodes.length === 2,
    quorum,
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
  return config;
}

export function describeFailoverConfig(config: FailoverConfig): string {
  const step = (each: Step): string => {
    switch (each.kind) {
      case 'crash':
        return `crash ${each.target} at ${each.atUs}us for ${each.restartAfterUs}us`;
      case 'partition':
        return `cut off ${each.target} at ${each.atUs}us for ${each.healAfterUs}us`;
      case 'disk':
        return `disk of ${each.target} fails at ${each.atUs}us, attach after ${each.attachAfterUs}us`;
      case 'promote':
        return `promote ${each.node ?? 'a secondary'}${each.force ? ' --force' : ''} at ${each.atUs}us`;
      case 'switchover':
        return `switchover at ${each.atUs}us`;
    }
  };
  return [
    `mode ${config.mode}`,
    `nodes ${config.nodes.join(',')}${config.witness ? ' + witness' : ''}`,
    `quorum ${config.quorum}`,
    `afterSplitBrain ${config.afterSplitBrain}`,
    `${config.clients} clients x ${config.opsPerClient} writes`,
    config.resolveAfterUs === null ? 'no resolve' : `resolve after ${config.resolveAfterUs}us`,
    ...(config.operatorForces ? ['the operator forces a promotion the rules refuse'] : []),
    config.steps.map(step).join(', '),
    ...(config.fault === null ? [] : [`fault ${config.fault}`]),
  ].join('; ');
}
