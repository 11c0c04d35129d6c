// The invariants of a simulated failover run (failover.ts), checked as it goes and once
// more at the end. Like checker.ts, it trusts no core's word: it keeps its own record of
// every write a client was told was done (the node, the epoch, the entry number) and looks
// at what each node's log holds.
//
//   (p) a promotion the rules allowed (no --force) loses nothing: the new primary holds
//       every write acknowledged in its line so far (by a primary of an epoch its history
//       holds) at the same entry;
//   (e) at most one node acknowledges writes in each epoch, its primary. An epoch is its
//       number with its primary and first entry, as compareCopies tells them apart: without
//       a coordinator two promotions made apart (the first new primary died, or was cut
//       off, before any other copy heard of it; or --force on both sides of a partition)
//       can take one number; such numbers are tallied, and the copies still part where
//       their epochs differ;
//   (s) split brain is never resolved silently: the last copy of an acknowledged write
//       leaves a log only when a split brain's decision discards it, and it is saved first
//       (a copy that follows a newer primary drops the old line's entries; the copy that
//       acknowledged them keeps them until it finds the split brain);
//   (l) no acknowledged write is lost: at the end every one is in some node's log at its
//       entry, or saved by a split brain's loser, or went with the only disk that held it
//       (acknowledged while no peer was counted: async mode, or a sync primary alone), or
//       was dropped, when a copy followed a line begun by a forced promotion (what --force
//       warns may be lost), by a copy that had not acknowledged it alone;
//   (d) split brain is always found: two copies that meet at the end, one of them a
//       primary, each holding a write it acknowledged itself without the other that the
//       other lacks (async mode: any; sync mode: those its ledger records as acknowledged
//       without it), were found in split brain at some point (a copy that follows a third
//       is not asked to find it: the copies that acknowledged do; a write the other
//       once held was taken away only by a failed disk or --force);
//   (q) a `quorum: majority` volume with no forced promotion never splits: no split brain
//       is ever found where each side holds writes it acknowledged past the shared entry
//       (one side may hold only entries it never acknowledged: a new primary cut off or
//       dead before any copy heard of its epoch);
//   (c) when the run ends with one primary, no split brain left apart and every node up,
//       reachable and on a working disk, every copy that follows it holds its entries.
//
// Coordinated through etcd (no operator promotes; a claim in etcd does), two more, from the
// acknowledgements (node, epoch, virtual time) and the claims as etcd processed them:
//   (a) at most one node ever acknowledges in an epoch number, and etcd never gives one
//       epoch to two nodes nor takes an epoch older than the newest it gave;
//   (b) a primary acknowledges only while etcd still holds its `primary` key of that epoch
//       (the lease it is under has not expired there: it fenced itself first), so the
//       primaries' acknowledgements never overlap: every acknowledgement in an epoch happens
//       before etcd processed the claim of any newer epoch.
// (p) covers the promotions by a claim as it covers those by the rules: the copy promoted
// holds every write acknowledged in its line.

import { SimFailure } from './checker.js';

export interface AckedWrite {
  writeId: number;
  node: string;
  epoch: number;
  /** The primary of that epoch's start (two forced promotions may share a number). */
  epochKey: string;
  seq: number;
  block: number;
  /** No peer was counted for it: only the acknowledging node's disk held it then. */
  alone: boolean;
}

export interface CheckedEntry {
  seq: number;
  writeId: number;
}

export class FailoverChecker {
  readonly acked = new Map<number, AckedWrite>();
  /** Write ids saved by a split brain's loser before it discarded them. */
  readonly saved = new Set<number>();
  /** Write ids that went with a failed disk (its log was replaced by an empty one). */
  readonly lostWithDisk = new Set<number>();
  /** Per epoch (number and primary): the nodes that acknowledged in it. */
  private readonly ackersByEpoch = new Map<string, Set<string>>();
  /** Epoch numbers a forced promotion began. */
  private readonly forcedEpochs = new Set<number>();
  forcedPromotions = 0;
  splitBrainsFound = 0;
  /** Disks that failed in the run. */
  disksFailed = 0;
  /** Acknowledged writes a copy dropped when it followed a line a forced promotion began (the loss --force warns of). */
  readonly lostToForce = new Set<number>();
  /** Acknowledged writes a copy dropped when it followed a forced line (they live on only in the old line). */
  private readonly leftByForce = new Set<number>();
  sharedEpochNumbers = 0;
  checks = 0;

  /** Per epoch, the last time a node acknowledged in it (coordinated through etcd). */
  private readonly lastAckUs = new Map<number, number>();
  /** Per epoch, the node etcd gave it to and when it processed the first claim of it. */
  private readonly claims = new Map<number, { node: string; atUs: number }>();
  private newestClaim: { epoch: number; node: string; atUs: number } | null = null;

  constructor(
    private readonly now: () => number,
    private readonly quorum: boolean,
    /** Coordinated through etcd: who etcd's `primary` key names now, in which epoch (null: absent). */
    private readonly etcdHolder: (() => { node: string; epoch: number } | null) | null = null,
  ) {}

  /** etcd processed a claim: `node` took `epoch` at `atUs` (the epoch key names it). */
  claimed(node: string, epoch: number, atUs: number): void {
    this.checks += 1;
    const earlier = this.claims.get(epoch);
    if (earlier !== undefined && earlier.node !== node) this.fail('a', `etcd gave epoch ${epoch} to node ${node} at ${atUs}us, and to node ${earlier.node} at ${earlier.atUs}us`);
    const newest = this.newestClaim;
    if (newest !== null && epoch < newest.epoch) this.fail('a', `etcd took epoch ${epoch} for node ${node} at ${atUs}us, older than epoch ${newest.epoch} node ${newest.node} took at ${newest.atUs}us`);
    if (earlier === undefined) this.claims.set(epoch, { node, atUs });
    for (const [older, lastUs] of this.lastAckUs) {
      if (older < epoch && lastUs >= atUs) this.fail('b', `a write was acknowledged in epoch ${older} at ${lastUs}us, not before etcd processed node ${node}'s claim of epoch ${epoch} at ${atUs}us`);
    }
    if (newest === null || epoch > newest.epoch) this.newestClaim = { epoch, node, atUs };
  }

  private fail(invariant: string, message: string): never {
    throw new SimFailure(`(${invariant}) at ${this.now()}us: ${message}`);
  }

  /** A client was told its write is done. */
  acknowledged(write: AckedWrite): void {
    this.checks += 1;
    if (this.acked.has(write.writeId)) this.fail('e', `write ${write.writeId} acknowledged twice`);
    this.acked.set(write.writeId, write);
    const key = `${write.epoch}/${write.epochKey}`;
    const ackers = this.ackersByEpoch.get(key) ?? new Set<string>();
    ackers.add(write.node);
    this.ackersByEpoch.set(key, ackers);
    if (ackers.size > 1 || write.epochKey !== write.node) this.fail('e', `nodes ${[...ackers].join(' and ')} acknowledged writes in epoch ${write.epoch} of node ${write.epochKey}`);
    const numbers = this.primariesByNumber.get(write.epoch) ?? new Set<string>();
    numbers.add(write.node);
    this.primariesByNumber.set(write.epoch, numbers);
    if (numbers.size > 1 && !this.sharedNumbers.has(write.epoch)) {
      this.sharedNumbers.add(write.epoch);
      this.sharedEpochNumbers += 1;
    }
    if (this.etcdHolder === null) return;
    if (numbers.size > 1) this.fail('a', `nodes ${[...numbers].join(' and ')} acknowledged writes in epoch ${write.epoch}`);
    const holder = this.etcdHolder();
    if (holder?.node !== write.node || holder.epoch !== write.epoch) {
      this.fail('b', `node ${write.node} acknowledged write ${write.writeId} in epoch ${write.epoch} at ${this.now()}us, when etcd's primary key named ${holder === null ? 'nobody' : `node ${holder.node} in epoch ${holder.epoch}`}`);
    }
    const newest = this.newestClaim;
    if (newest !== null && newest.epoch > write.epoch) {
      this.fail('b', `node ${write.node} acknowledged write ${write.writeId} in epoch ${write.epoch} at ${this.now()}us, after etcd processed node ${newest.node}'s claim of epoch ${newest.epoch} at ${newest.atUs}us`);
    }
    this.lastAckUs.set(write.epoch, this.now());
  }

  /** Per epoch number: the nodes that acknowledged as its primary (more than one only for promotions made apart). */
  private readonly primariesByNumber = new Map<number, Set<string>>();
  private readonly sharedNumbers = new Set<number>();

  /**
   * `node` became the primary of `epoch` (by the rules, forced, or as a split brain's
   * winner); `holds` says what its log holds at an entry, `inLine` whether a write's epoch
   * is in its history.
   */
  promoted(node: string, epoch: number, how: 'rules' | 'forced' | 'take-over', holds: (seq: number) => number | null, inLine: (write: AckedWrite) => boolean): void {
    this.checks += 1;
    if (how !== 'rules') {
      if (how === 'forced') this.forcedPromotions += 1;
      this.forcedEpochs.add(epoch);
      return;
    }
    for (const write of this.acked.values()) {
      if (!inLine(write) || this.saved.has(write.writeId) || this.lostWithDisk.has(write.writeId)) continue;
      if (holds(write.seq) !== write.writeId) {
        this.fail('p', `node ${node} was promoted to epoch ${epoch} by the rules, but lacks write ${write.writeId} that node ${write.node} acknowledged at entry ${write.seq} (epoch ${write.epoch}${write.alone ? ', no peer counted' : ''})`);
      }
    }
  }

  /**
   * `node` drops entries from its log; `saving` when a split brain's decision discards them
   * (saved first); `heldElsewhere` whether another copy holds a write at its entry;
   * `forcedLine` when the copy follows a line a forced promotion began, which may lose
   * writes (the loss --force warns of) but for those this copy's ledger records it
   * acknowledged alone (`recordedAlone`), which only a split brain may discard.
   */
  dropping(
    node: string,
    entries: readonly CheckedEntry[],
    saving: boolean,
    why: string,
    heldElsewhere: (write: AckedWrite) => boolean,
    forcedLine: boolean,
    recordedAlone: (write: AckedWrite) => boolean,
  ): void {
    this.checks += 1;
    for (const entry of entries) {
      const write = this.acked.get(entry.writeId);
      if (write === undefined || write.seq !== entry.seq) continue;
      if (saving) this.saved.add(write.writeId);
      // A forced line lacks it: the copies of the old line that still hold it are all it has.
      if (forcedLine && !(write.node === node && recordedAlone(write))) this.leftByForce.add(write.writeId);
      if (saving || this.saved.has(write.writeId) || heldElsewhere(write)) continue;
      if (forcedLine && !(write.node === node && recordedAlone(write))) {
        this.lostToForce.add(write.writeId);
        continue;
      }
      this.fail('s', `node ${node} drops the last copy of write ${write.writeId} (entry ${entry.seq}), acknowledged by node ${write.node} in epoch ${write.epoch}, without a split brain: ${why}`);
    }
  }

  /** An epoch of that number was begun by a forced promotion (or a split brain's winner). */
  forced(epoch: number): boolean {
    return this.forcedEpochs.has(epoch);
  }

  /** A failed disk's log is replaced by an empty one: what only it held is gone. */
  diskReplaced(entries: readonly CheckedEntry[], heldElsewhere: (write: AckedWrite) => boolean): void {
    for (const entry of entries) {
      const write = this.acked.get(entry.writeId);
      if (write === undefined || write.seq !== entry.seq || heldElsewhere(write) || this.saved.has(write.writeId) || this.lostToForce.has(write.writeId)) continue;
      if (this.leftByForce.has(write.writeId)) {
        this.lostToForce.add(write.writeId);
        continue;
      }
      // A second failed disk may take the last copy of anything (two failures, not a failover).
      if (!write.alone && this.disksFailed === 1) this.fail('l', `write ${write.writeId} was acknowledged with a peer counted, but only the failed disk held it`);
      this.lostWithDisk.add(write.writeId);
    }
  }

  /** Pairs of copies ever found in split brain, and those not resolved since. */
  private readonly everFound = new Set<string>();
  private readonly apart = new Set<string>();

  /** `here` found a split brain with `other` (counted once until it is resolved); `bothSides`: each holds writes it acknowledged past their shared entry. */
  splitBrain(here: string, other: string, bothSides: boolean): void {
    const pair = [here, other].sort().join('+');
    this.everFound.add(pair);
    if (this.apart.has(pair)) return;
    this.apart.add(pair);
    this.splitBrainsFound += 1;
    if (this.quorum && bothSides && this.forcedPromotions === 0) this.fail('q', `a split brain between ${here} and ${other} in a quorum volume without a forced promotion`);
  }

  splitEnded(a: string, b: string): void {
    this.apart.delete([a, b].sort().join('+'));
  }

  /**
   * (d) Two copies that meet, each holding writes it acknowledged without the other (`alone`:
   * in async mode every write; in sync mode those its ledger still records so) that the
   * other lacks, are in split brain: it must have been found.
   */
  detected(
    x: string,
    y: string,
    xHolds: (write: AckedWrite) => boolean,
    yHolds: (write: AckedWrite) => boolean,
    alone: (write: AckedWrite) => boolean,
  ): void {
    this.checks += 1;
    let onlyX: AckedWrite | null = null;
    let onlyY: AckedWrite | null = null;
    for (const write of this.acked.values()) {
      const inX = xHolds(write);
      const inY = yHolds(write);
      if (inX && !inY && write.node === x && alone(write)) onlyX ??= write;
      if (inY && !inX && write.node === y && alone(write)) onlyY ??= write;
    }
    if (onlyX === null || onlyY === null || this.everFound.has([x, y].sort().join('+'))) return;
    this.fail('d', `${x} holds acknowledged write ${onlyX.writeId} (entry ${onlyX.seq}) that ${y} lacks, and ${y} write ${onlyY.writeId} (entry ${onlyY.seq}) that ${x} lacks, but no split brain was found between them`);
  }

  /** At the end: `held` says whether some node's log holds the write at its entry. */
  final(held: (write: AckedWrite) => boolean): void {
    for (const write of this.acked.values()) {
      this.checks += 1;
      if (held(write) || this.saved.has(write.writeId) || this.lostWithDisk.has(write.writeId) || this.lostToForce.has(write.writeId)) continue;
      this.fail('l', `write ${write.writeId}, acknowledged by node ${write.node} at entry ${write.seq} in epoch ${write.epoch}, is nowhere`);
    }
  }
}
