// Split brain (docs/operations.md, "Split brain"): two copies of a volume that went
// separate ways, each holding writes past the last entry they share that may have been
// acknowledged to a client, by different primaries (a forced promotion during a
// partition, or a volume without quorum). Following the other copy would overwrite
// acknowledged writes, so it is never done silently: the copies stay apart until a
// policy (`afterSplitBrain`) or an operator (`blockmirror resolve`) names the copy whose
// writes are discarded, and that copy's writes are saved before they are overwritten.
//
// Pure: `splitBrainBetween` finds one from the two copies' histories and last entries and
// from what this copy's mirror ledger recorded of writes it acknowledged without the
// other; `decideSplitBrain` applies the volume's policy to what was found. The copy that
// finds it (the target of a session) decides and tells the source; the figures do not
// change when the winner begins a new epoch, so finding it again decides the same.

import { compareCopies, type EpochHistory } from './epoch-history.js';

/** What to do when a split brain is found (the volume's `afterSplitBrain`). */
export type AfterSplitBrain = 'disconnect' | 'discard-zero-changes' | 'discard-younger-primary' | 'discard-least-changes';

/** This copy, as far as finding a split brain with another goes. */
export interface SplitBrainCopy {
  node: string;
  history: EpochHistory;
  /** The last entry the copy holds. */
  lastSeq: number;
  /** The volume's mode: only in sync mode does a primary wait for its peers before it acknowledges. */
  mode: 'sync' | 'async' | 'logship';
  /**
   * From which entry on this node, as a primary, may have acknowledged writes without
   * `peer` holding them (its mirror ledger's record), or null when it never did.
   */
  ackedAloneFrom: (peer: string) => number | null;
  /**
   * After which entry this copy's entries may differ from what `peer` holds under the same
   * numbers (its mirror ledger's record: it restarted as a primary after a crash and
   * numbered anew in the same epoch, entries the peer may hold otherwise), or null.
   */
  divergedAfter?: (peer: string) => number | null;
}

/** The other copy: the node that claims to be the primary of the last epoch of its history. */
export interface OtherCopy {
  node: string;
  history: EpochHistory;
  lastSeq: number;
}

/** A split brain found: where the copies part, and the writes each holds past it. */
export interface SplitBrain {
  /** Every entry through this one is the same on both copies. */
  sharedSeq: number;
  /** Entries this copy holds past sharedSeq that it numbered as a primary and may have acknowledged. */
  hereEntries: number;
  /** Entries the other copy holds past sharedSeq. */
  otherEntries: number;
  /**
   * Which primary is the younger, the same figure however many epochs either began since:
   * here, the epoch in which this copy numbered its first entry past sharedSeq; there, the
   * epoch of the other line's first primary past it that is not this node.
   */
  hereEpoch: number;
  otherEpoch: number;
}

/**
 * Whether following `other` would discard writes this copy may have acknowledged: entries
 * past the shared one that this node numbered as a primary, from the point where it began
 * to acknowledge without the node that forked away (the primary of the other history's
 * first epoch past the shared entry). In sync mode that point is the ledger's record; in
 * async and logship modes every entry is acknowledged before the peers hold it.
 */
export function splitBrainBetween(here: SplitBrainCopy, other: OtherCopy): SplitBrain | null {
  const compared = compareCopies({ history: here.history, lastSeq: here.lastSeq }, { history: other.history, lastSeq: other.lastSeq });
  // The node that forked away: the first primary of the other line past the shared entry
  // that is not this one (past it the other copy may hold this node's own entries from
  // before it restarted its epoch after a crash).
  const otherStarts = other.history.starts;
  const fork = otherStarts.find((start, index) => start.primary !== here.node && (otherStarts[index + 1]?.firstSeq ?? Number.POSITIVE_INFINITY) > compared.sharedSeq + 1);
  // None: the other copy holds only this node's own entries past the shared one.
  if (fork === undefined) return null;
  const forker = fork.primary;
  // A primary that restarted after a crash numbered anew after what it recovered, in the
  // same epoch: entries past that point are not the same as the peer's under the same numbers.
  const sharedSeq = Math.min(compared.sharedSeq, here.divergedAfter?.(other.node) ?? Number.POSITIVE_INFINITY);
  const bPast = other.lastSeq - sharedSeq;
  if (here.lastSeq <= sharedSeq) return null;
  const alone = here.mode === 'sync' ? here.ackedAloneFrom(forker) : 1;
  if (alone === null) return null;
  const from = Math.max(sharedSeq + 1, alone);
  let hereEntries = 0;
  let hereEpoch = -1;
  const starts = here.history.starts;
  starts.forEach((start, index) => {
    if (start.primary !== here.node) return;
    const next = starts[index + 1];
    const first = Math.max(from, start.firstSeq);
    const last = Math.min(here.lastSeq, next === undefined ? Number.POSITIVE_INFINITY : next.firstSeq - 1);
    if (last < first) return;
    hereEntries += last - first + 1;
    if (hereEpoch === -1) hereEpoch = start.epoch;
  });
  if (hereEntries === 0) return null;
  return { sharedSeq, hereEntries, otherEntries: bPast, hereEpoch, otherEpoch: fork.epoch };
}

/** Which copy's writes a policy discards: none (they stay apart), this one's, or the other's. */
export type SplitBrainDecision = 'disconnect' | 'discard-here' | 'discard-other';

/**
 * The volume's policy applied to a split brain, the same on both sides:
 *   - `disconnect`: nothing is discarded; an operator decides (`blockmirror resolve`);
 *   - `discard-zero-changes`: the copy with no writes past the shared entry loses;
 *   - `discard-younger-primary`: the copy whose primary was promoted later (the higher epoch) loses;
 *   - `discard-least-changes`: the copy with fewer entries past the shared one loses.
 * A tie, where the policy names neither, leaves them apart.
 */
export function decideSplitBrain(policy: AfterSplitBrain, found: SplitBrain): SplitBrainDecision {
  const fewer = (here: number, other: number): SplitBrainDecision => (here < other ? 'discard-here' : other < here ? 'discard-other' : 'disconnect');
  switch (policy) {
    case 'disconnect':
      return 'disconnect';
    case 'discard-zero-changes':
      return found.otherEntries === 0 ? 'discard-other' : found.hereEntries === 0 ? 'discard-here' : 'disconnect';
    case 'discard-younger-primary':
      // The younger primary is the one in the higher epoch: its writes lose.
      return found.hereEpoch > found.otherEpoch ? 'discard-here' : found.otherEpoch > found.hereEpoch ? 'discard-other' : 'disconnect';
    case 'discard-least-changes':
      return fewer(found.hereEntries, found.otherEntries);
  }
}
