// The local side of one volume on one node (docs/architecture.md, "Where each decision
// lives"): whether it takes changes from clients (its role, and the epoch its entries
// carry), the sequence number each entry gets, the order in which changes and reads of
// overlapping ranges run, and the holds that a resync or a verify puts on a range so that
// new changes to it wait. Pure: LocalVolume (src/storage/local-volume.ts) carries out its
// answers, and the write log checks that the numbers it is given follow each other.
// copyState says what the copy is (the disk state a node reports).
//
// The order: an operation entered on [start, end) runs after every operation entered
// earlier on an overlapping range has finished, and at once when there is none. Changes
// are entered in sequence order, so the image always matches what replaying the log in
// sequence order would produce, and a mirror applying the same entries ends the same.

import { assert } from '../lib/assert.js';
import type { DiskState } from '../protocol/disk-state.js';

export type VolumeRole = 'primary' | 'secondary';

/** What a node knows of its copy of a volume, from which copyState says what the copy is. */
export interface CopyFacts {
  /** The volume's disk or log failed here (or the secondary's end of the link says so). */
  failed: boolean;
  /** The log was made anew knowing nothing of what the copy holds (damaged or missing at start). */
  needsFullResync: boolean;
  /**
   * On a secondary: whether its primary streams to it now. Null where that is not in
   * question: a primary's own copy, or a secondary's READY (which names its last entry).
   */
  streaming: boolean | null;
}

/**
 * What this node's copy of a volume is (src/protocol/disk-state.ts): failed; inconsistent
 * while a copy whose log was made anew waits for the full resync its primary gives it; a
 * primary's copy is up to date; a secondary's only while its primary streams to it (it
 * knows it is current only then), outdated otherwise.
 */
export function copyState(facts: CopyFacts): DiskState {
  if (facts.failed) return 'failed';
  if (facts.needsFullResync) return 'inconsistent';
  return facts.streaming === null || facts.streaming ? 'up-to-date' : 'outdated';
}

interface Operation {
  start: number;
  end: number;
  /** Earlier overlapping operations not finished yet. */
  waitingFor: number;
  /** Later overlapping operations waiting for this one. */
  followers: number[];
}

export class VolumeCore {
  private lastAssigned: number;
  /** Operations entered and not finished, in the order they were entered. */
  private readonly operations = new Map<number, Operation>();
  private nextOperation = 1;
  private readonly holds = new Map<number, { start: number; end: number }>();
  private nextHold = 1;
  private currentRole: VolumeRole;
  /** The epoch this node's entries carry (a secondary: the epoch it knows). */
  private currentEpoch: number;

  constructor(options: { lastSeq: number; role: VolumeRole; epoch: number }) {
    assert(Number.isSafeInteger(options.lastSeq) && options.lastSeq >= 0, 'last sequence number');
    this.lastAssigned = options.lastSeq;
    this.currentRole = options.role;
    this.currentEpoch = options.epoch;
  }

  get role(): VolumeRole {
    return this.currentRole;
  }

  get epoch(): number {
    return this.currentEpoch;
  }

  /**
   * The volume changes role (a promotion or a demotion) or learns a newer epoch: only with
   * nothing running, and never back to an older epoch. Numbering goes on from the last
   * entry this copy holds.
   */
  changeRole(role: VolumeRole, epoch: number): void {
    assert(this.operations.size === 0, 'role changed with operations running');
    // A primary never numbers in an older epoch; a secondary may follow one (a split brain's winner).
    assert(role === 'secondary' || epoch >= this.currentEpoch, `epoch ${epoch} is older than ${this.currentEpoch}`);
    this.currentRole = role;
    this.currentEpoch = epoch;
  }

  /** Nothing entered is unfinished, and nothing is held. */
  get idle(): boolean {
    return this.operations.size === 0 && this.holds.size === 0;
  }

  /** The last sequence number given out (or accepted from the primary). */
  get lastSeq(): number {
    return this.lastAssigned;
  }

  /** Why a client's change is refused here, or null when it is taken. */
  refusal(): string | null {
    return this.role === 'primary' ? null : 'this node holds a secondary copy of the volume; changes go to the primary';
  }

  /** The number of the next entry this node appends: a client's change, a resync's copy, or a CP marker. */
  assignSeq(): number {
    assert(this.role === 'primary', 'only a primary numbers entries');
    this.lastAssigned += 1;
    return this.lastAssigned;
  }

  /** A secondary's entry carries its primary's number, which must be the next one. */
  acceptSeq(seq: number): void {
    assert(this.role === 'secondary', "only a secondary takes its primary's numbers");
    assert(seq === this.lastAssigned + 1, `entry ${seq} accepted after ${this.lastAssigned}`);
    this.lastAssigned = seq;
  }

  /** The log was made anew after `seq` (a secondary restarting its log for a resync); nothing may be running. */
  restartAt(seq: number): void {
    assert(this.operations.size === 0, 'log restarted with operations running');
    this.lastAssigned = seq;
  }

  /**
   * Enters an operation on [start, end): the image write of a change (entered in sequence
   * order), or a read that must see every change entered before it. `ready` says whether
   * it may run now; otherwise finished() names it once it may.
   */
  enter(start: number, end: number): { id: number; ready: boolean } {
    assert(start >= 0 && end >= start, 'range');
    const id = this.nextOperation;
    this.nextOperation += 1;
    let waitingFor = 0;
    for (const other of this.operations.values()) {
      if (other.start < end && start < other.end) {
        other.followers.push(id);
        waitingFor += 1;
      }
    }
    this.operations.set(id, { start, end, waitingFor, followers: [] });
    return { id, ready: waitingFor === 0 };
  }

  /** Operation `id` finished (done or failed): the operations that may run now, in the order entered. */
  finished(id: number): number[] {
    const operation = this.operations.get(id);
    assert(operation !== undefined, `operation ${id} finished twice or never entered`);
    assert(operation.waitingFor === 0, `operation ${id} finished before it could run`);
    this.operations.delete(id);
    const ready: number[] = [];
    for (const followerId of operation.followers) {
      const follower = this.operations.get(followerId);
      assert(follower !== undefined && follower.waitingFor > 0);
      follower.waitingFor -= 1;
      if (follower.waitingFor === 0) ready.push(followerId);
    }
    return ready;
  }

  /** Operations entered and not finished. */
  get running(): number {
    return this.operations.size;
  }

  /** A hold on part of [start, end) that a new change there must wait for, or null. */
  heldBy(start: number, end: number): number | null {
    for (const [id, hold] of this.holds) if (hold.start < end && start < hold.end) return id;
    return null;
  }

  /** Holds [start, end): new changes to it wait until release(). Holds never overlap (ask heldBy first). */
  hold(start: number, end: number): number {
    assert(this.heldBy(start, end) === null, 'overlapping holds');
    const id = this.nextHold;
    this.nextHold += 1;
    this.holds.set(id, { start, end });
    return id;
  }

  release(id: number): void {
    assert(this.holds.delete(id), `hold ${id} released twice`);
  }
}
