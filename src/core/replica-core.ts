// One volume on one node, whatever its role (docs/architecture.md, "Where each decision
// lives"): the one object through which the node and the simulator reach every decision
// about the volume. It owns the volume's role and epoch and the parts that decide, each a
// pure state machine of its own:
//   - the local side, VolumeCore: whether clients' changes are taken here, the number and
//     epoch of each entry, the order of operations on overlapping ranges, the holds;
//   - on the primary of a mirrored volume, the primary's side of the mirror, PrimaryCore
//     (MirrorSource, MirrorLedger, the resync plans): who streams, catches up or
//     resyncs, when a reply may leave, what each peer may lack, what the log retains;
//   - on a secondary, the secondary's side of its primary's sessions, SecondaryCore.
// Decisions that need more than one part are made here: whether a client's change is
// taken at all (`refusal`: a secondary refuses it, and so does a strict volume's primary
// while a replica is missing), and how an epoch met on the wire stands to the one this
// copy knows (`epochVerdict`, by which a secondary refuses a HELLO in any epoch but its
// own, and an entry numbered in a later one). The role's mirror part starts
// once the executor has what it needs (`mirror`, with the ledger its files gave;
// `follow`); a role change (`promote`, `demote`) ends it, with nothing under way.
//
// Executors carry out the parts' actions: LocalVolume (src/storage/local-volume.ts) owns
// the ReplicaCore of its volume and carries out the local side; MirrorEngine and
// ReplicaTarget (src/server) take the mirror part from it. The simulator (test/sim) runs
// the same object for its primary and each secondary.

import { assert } from '../lib/assert.js';
import { EpochHistory, restartOf, type EpochStart } from './epoch-history.js';
import type { MirrorLedger } from './mirror-ledger.js';
import { PrimaryCore, type PrimaryCoreOptions } from './primary-core.js';
import { SecondaryCore, type SecondaryCoreOptions } from './secondary-core.js';
import { VolumeCore, type VolumeRole } from './volume-core.js';

/** Why a client's change is not taken, with the error code a client is given. */
export interface Refusal {
  code: 'ERR_NOT_PRIMARY' | 'ERR_REPLICA_UNAVAILABLE';
  reason: string;
}

/**
 * How a source's claim (a HELLO: the node and its history) stands to this copy, from
 * `judgeSource`: `current`, a session of the primary it follows; `newer`, a newer epoch
 * that holds this copy's, to follow (the history joined to what this copy knows before the
 * epochs the wire carried); every other kind is a refusal.
 */
export type SourceVerdict =
  | { kind: 'current' }
  | { kind: 'newer'; history: EpochHistory }
  | { kind: 'impossible'; problem: string }
  | { kind: 'names-another'; primary: string }
  | { kind: 'stale'; known: EpochStart }
  | { kind: 'not-its-primary'; known: EpochStart }
  | { kind: 'primary-here'; known: EpochStart }
  | { kind: 'separate-ways'; known: EpochStart };

/**
 * Whether a source's claim, judged `verdict` by this copy, is taken (its session begins):
 * its own primary or a newer epoch's; a stale one only as the winner of a split brain this
 * copy lost (`winner`); another line (`separate-ways`, or `not-its-primary`: two nodes
 * promoted to one epoch number without a coordinator) when it is that winner, or when this
 * copy follows no primary (it is one, or stepped down) and finds a split brain with it
 * (`splitFound`: then the policy decides). Every other claim is refused.
 */
export function admitsSource(verdict: SourceVerdict, copy: { following: boolean; winner: boolean; splitFound: () => boolean }): boolean {
  switch (verdict.kind) {
    case 'current':
    case 'newer':
      return true;
    case 'stale':
      return copy.winner;
    case 'not-its-primary':
    case 'separate-ways':
      return copy.winner || (!copy.following && copy.splitFound());
    case 'primary-here':
    case 'names-another':
    case 'impossible':
      return false;
  }
}

export class ReplicaCore<Frame, Entry = Frame> {
  readonly local: VolumeCore;
  private primaryPart: PrimaryCore<Frame> | null = null;
  private secondaryPart: SecondaryCore<Entry> | null = null;
  private currentHistory: EpochHistory;

  constructor(options: { lastSeq: number; role: VolumeRole; history: EpochHistory }) {
    this.currentHistory = options.history;
    this.local = new VolumeCore({ lastSeq: options.lastSeq, role: options.role, epoch: options.history.current.epoch });
  }

  /** The volume's epoch history as this copy knows it (its file holds the same). */
  get history(): EpochHistory {
    return this.currentHistory;
  }

  get role(): VolumeRole {
    return this.local.role;
  }

  /** The epoch this node's entries carry. */
  get epoch(): number {
    return this.local.epoch;
  }

  /** The primary's side of the mirror, once this node mirrors the volume (else null). */
  get primary(): PrimaryCore<Frame> | null {
    return this.primaryPart;
  }

  /** The secondary's side, once this node follows a primary (else null). */
  get secondary(): SecondaryCore<Entry> | null {
    return this.secondaryPart;
  }

  /** This node mirrors the volume as its primary, from the ledger its files gave. */
  mirror(options: PrimaryCoreOptions, ledger: MirrorLedger): PrimaryCore<Frame> {
    assert(this.role === 'primary', 'only a primary mirrors the volume');
    assert(this.primaryPart === null, 'the volume is mirrored already');
    this.primaryPart = new PrimaryCore<Frame>(options, ledger);
    return this.primaryPart;
  }

  /** This node follows the volume's primary as a secondary. */
  follow(options: SecondaryCoreOptions): SecondaryCore<Entry> {
    assert(this.role === 'secondary', 'only a secondary follows a primary');
    assert(this.secondaryPart === null, 'the volume follows its primary already');
    this.secondaryPart = new SecondaryCore<Entry>(options);
    return this.secondaryPart;
  }

  /**
   * The history a promotion of this secondary to `node` would give: the next epoch,
   * numbered from the entry after the last this copy holds (or after `lastSeq`, the last
   * it could read back of a damaged log, which its log then restarts after). The executor
   * makes it durable before `promote`, so that no entry of the new epoch exists where its
   * history does not.
   */
  promotion(node: string, lastSeq = this.local.lastSeq, aboveEpoch = this.epoch): EpochHistory {
    assert(this.role === 'secondary', 'only a secondary is promoted');
    assert(lastSeq <= this.local.lastSeq, `a promotion after entry ${lastSeq}, which this copy does not hold`);
    return this.currentHistory.begin(node, lastSeq + 1, aboveEpoch);
  }

  /**
   * This secondary becomes the primary of `history`'s last epoch (`promotion` gave it):
   * its secondary part ends, which must have nothing under way; the mirror part comes
   * with `mirror`. Its entries are numbered from the last it holds.
   */
  promote(history: EpochHistory): void {
    assert(this.role === 'secondary', 'only a secondary is promoted');
    assert(history.current.epoch > this.epoch, `promotion to epoch ${history.current.epoch}, which is not newer than ${this.epoch}`);
    assert(this.currentHistory.upTo(history.current.firstSeq).isPrefixOf(history), 'a promotion keeps the history of what the copy holds');
    assert(history.current.firstSeq === this.local.lastSeq + 1, `epoch ${history.current.epoch} must start after entry ${this.local.lastSeq}`);
    assert(this.secondaryPart === null || this.secondaryPart.idle, 'promoted while its primary\'s session is under way');
    this.secondaryPart = null;
    this.currentHistory = history;
    this.local.changeRole('primary', history.current.epoch);
  }

  /**
   * This primary started again after a crash that may have lost entries its peers hold:
   * its epoch restarts (`EpochHistory.restart`, which the executor makes durable first), so
   * that the entries it numbers anew are told apart from the lost ones.
   */
  restartEpoch(history: EpochHistory): void {
    assert(this.role === 'primary', 'only a primary restarts its epoch');
    assert(this.currentHistory.restartedIn(history), 'a restart of this primary\'s epoch');
    assert(history.current.firstSeq === this.local.lastSeq + 1, `the restart must start after entry ${this.local.lastSeq}`);
    this.currentHistory = history;
  }

  /**
   * This primary becomes a secondary: by command (in its own epoch, `history` unchanged)
   * or fenced by a newer history it met. Its mirror part ends. Nothing may be running (the
   * executor lets requests finish first and refuses new ones); `follow` starts the
   * secondary part.
   */
  demote(history: EpochHistory = this.currentHistory): void {
    assert(this.role === 'primary', 'only a primary is demoted');
    assert(history.current.epoch >= this.epoch, `demoted to epoch ${history.current.epoch}, older than ${this.epoch}`);
    this.primaryPart = null;
    this.currentHistory = history;
    this.local.changeRole('secondary', history.current.epoch);
  }

  /**
   * This secondary follows a newer history (a promotion elsewhere, learned from the new
   * primary's HELLO once it authenticated), or, `discarding` its writes after a split
   * brain, its winner's; with nothing of a session under way.
   */
  learn(history: EpochHistory, discarding = false): void {
    assert(this.role === 'secondary', 'only a secondary learns a newer history');
    // A copy that discards its writes after a split brain takes its winner's history, whatever its epoch.
    assert(discarding || history.current.epoch > this.epoch || this.currentHistory.restartedIn(history), `epoch ${history.current.epoch} is not newer than ${this.epoch}`);
    assert(this.secondaryPart === null || this.secondaryPart.idle, 'learned a history while a session is under way');
    this.currentHistory = history;
    this.local.changeRole('secondary', history.current.epoch);
  }

  /**
   * Whether `node`, claiming to be the primary of the last epoch of `starts` (its history
   * as the wire carries it), may mirror to this copy: the primary this copy follows, in
   * its epoch; or the primary of a newer epoch whose history holds this copy's unchanged
   * (a promotion elsewhere), which this copy then follows. An older epoch's primary is
   * stale (it steps down when told); a newer history without this copy's epoch went
   * separate ways.
   */
  judgeSource(node: string, starts: readonly EpochStart[]): SourceVerdict {
    const theirs = EpochHistory.from(starts);
    if (!(theirs instanceof EpochHistory)) return { kind: 'impossible', problem: theirs.problem };
    if (theirs.current.primary !== node) return { kind: 'names-another', primary: theirs.current.primary };
    const known = this.currentHistory.current;
    if (theirs.current.epoch < known.epoch) return { kind: 'stale', known };
    if (theirs.current.epoch === known.epoch) {
      // The primary this copy follows started again after a crash and restarted its epoch: a newer history.
      if (this.currentHistory.restartedIn(theirs)) return { kind: 'newer', history: this.currentHistory.joinedWith(theirs) };
      if (node !== known.primary || theirs.current.firstSeq !== known.firstSeq || restartOf(theirs.current) !== restartOf(known)) return { kind: 'not-its-primary', known };
      // A copy that is (or was, and stepped down as) the primary follows no one in its own epoch.
      return this.secondaryPart === null ? { kind: 'primary-here', known } : { kind: 'current' };
    }
    if (!this.currentHistory.knowsEpochOf(theirs)) return { kind: 'separate-ways', known };
    return { kind: 'newer', history: this.currentHistory.joinedWith(theirs) };
  }

  /** How an epoch a peer claims stands to the one this copy knows. */
  epochVerdict(epoch: number): 'older' | 'current' | 'newer' {
    return epoch < this.epoch ? 'older' : epoch === this.epoch ? 'current' : 'newer';
  }

  /** Why a client's change must be refused now, or null when it is taken. */
  refusal(): Refusal | null {
    const notPrimary = this.local.refusal();
    if (notPrimary !== null) return { code: 'ERR_NOT_PRIMARY', reason: notPrimary };
    const missing = this.primaryPart?.strictMissing() ?? null;
    return missing === null ? null : { code: 'ERR_REPLICA_UNAVAILABLE', reason: missing };
  }
}
