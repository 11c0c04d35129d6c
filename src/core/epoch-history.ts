// A volume's epoch history (docs/architecture.md, "Where each decision lives"): which node
// was the volume's primary in each epoch, and the first sequence number it gave out in it,
// like raft's terms or DRBD's generation identifiers. Epoch 0 belongs to the cluster file's
// `primary:`; each promotion begins the next epoch. Every entry carries the epoch it was
// numbered in, and one primary numbers the entries of an epoch, so two copies that hold an
// entry with the same number in the same epoch hold the same entry. That is what makes the
// histories enough to find where two copies part (`compareCopies`). A primary that starts
// again after a crash may have lost entries its peers hold, and numbers anew from the
// entry after what it recovered: it restarts its epoch there (`restart`, a start of the
// same epoch with a higher `restart` count), so that a copy holding the lost entries and
// one holding the new ones under the same numbers are told apart too.
//
// Pure: the history is a value, changed by `begin` into a new one. Each replica keeps its
// own durably (its text is `encodeEpochHistory`; `parseEpochHistory` refuses a damaged or
// impossible one, naming what is wrong).

import { assert } from '../lib/assert.js';

/** An epoch begins: `primary` numbers the volume's entries from `firstSeq` on. */
export interface EpochStart {
  epoch: number;
  primary: string;
  firstSeq: number;
  /** How many times the epoch's primary restarted it after a crash (absent: 0, its first start). */
  restart?: number;
}

/** How many times `start`'s primary had restarted its epoch there. */
export function restartOf(start: EpochStart): number {
  return start.restart ?? 0;
}

/**
 * What a history may hold: epochs in increasing order, each starting at or after the one
 * before; an epoch again only as a restart by its own primary (a higher restart count).
 */
function problemWith(starts: readonly EpochStart[]): string | null {
  if (starts.length === 0) return 'it names no epoch';
  for (let index = 0; index < starts.length; index += 1) {
    const start = starts[index];
    assert(start !== undefined);
    if (!Number.isSafeInteger(start.epoch) || start.epoch < 0 || start.epoch > 0xffff_ffff) return `epoch ${String(start.epoch)} is not a number from 0 to 2^32-1`;
    if (typeof start.primary !== 'string' || start.primary === '') return `epoch ${start.epoch} names no primary`;
    if (!Number.isSafeInteger(start.firstSeq) || start.firstSeq < 1) return `epoch ${start.epoch} starts at ${String(start.firstSeq)}, not at an entry`;
    if (start.restart !== undefined && (!Number.isSafeInteger(start.restart) || start.restart < 0 || start.restart > 0xffff_ffff)) return `epoch ${start.epoch} has restart count ${String(start.restart)}`;
    const before = starts[index - 1];
    if (before !== undefined && start.epoch === before.epoch) {
      if (start.primary !== before.primary || restartOf(start) <= restartOf(before)) return `epoch ${start.epoch} starts twice, not as a restart by its primary`;
    } else if (before !== undefined && start.epoch < before.epoch) return `epoch ${start.epoch} follows epoch ${before.epoch}`;
    if (before !== undefined && start.firstSeq < before.firstSeq) return `epoch ${start.epoch} starts at ${start.firstSeq}, before epoch ${before.epoch} (${before.firstSeq})`;
  }
  return null;
}

export class EpochHistory {
  private constructor(
    readonly starts: readonly EpochStart[],
    /** The current epoch's primary stepped down (`demote`): no node takes writes until the next promotion. */
    readonly ended: boolean,
  ) {}

  /** The history of a new volume: epoch 0, `primary` numbering from entry 1. */
  static initial(primary: string): EpochHistory {
    return EpochHistory.of([{ epoch: 0, primary, firstSeq: 1 }]);
  }

  /** A history from its epochs; an impossible one is a bug here (a file's text goes through parseEpochHistory). */
  static of(starts: readonly EpochStart[], ended = false): EpochHistory {
    const problem = problemWith(starts);
    assert(problem === null, `epoch history: ${problem ?? ''}`);
    return new EpochHistory(starts.map((start) => ({ ...start })), ended);
  }

  /** A history a peer sent, or the reason it cannot be one. */
  static from(starts: readonly EpochStart[]): EpochHistory | { problem: string } {
    const problem = problemWith(starts);
    return problem === null ? EpochHistory.of(starts) : { problem };
  }

  /** The last `count` epochs at most (what a frame carries). */
  last(count: number): EpochStart[] {
    return this.starts.slice(-count).map((start) => ({ ...start }));
  }

  /** The node that takes the volume's writes in this history: the current epoch's primary, unless it stepped down. */
  get primaryNow(): string | null {
    return this.ended ? null : this.current.primary;
  }

  /** The current epoch's primary steps down (a demotion by command): the same epochs, ended. */
  stepDown(): EpochHistory {
    return new EpochHistory(this.starts, true);
  }

  /**
   * The primary of the current epoch starts again after a crash that may have lost entries
   * its peers hold: it restarts the epoch at `firstSeq`, the entry after the last it
   * recovered, from where it numbers anew.
   */
  restart(firstSeq: number): EpochHistory {
    const { epoch, primary } = this.current;
    const kept = this.upTo(firstSeq);
    assert(kept.current.epoch === epoch, `a restart at entry ${firstSeq}, before epoch ${epoch} began`);
    return EpochHistory.of([...kept.starts, { epoch, primary, firstSeq, restart: restartOf(kept.current) + 1 }]);
  }

  /**
   * The history `node` takes when it starts again after a crash holding entries through
   * `lastSeq`: its epoch restarted after them when it is this history's primary and holds
   * entries of its epoch's start (a primary left with less has nothing to number from);
   * else null, the history unchanged.
   */
  restartAfterCrash(node: string, lastSeq: number): EpochHistory | null {
    if (this.primaryNow !== node || lastSeq + 1 < this.current.firstSeq) return null;
    return this.restart(lastSeq + 1);
  }

  /** The first start of the current epoch (before any restart of it). */
  get origin(): EpochStart {
    const first = this.starts.find((start) => start.epoch === this.current.epoch);
    assert(first !== undefined);
    return first;
  }

  /** The epoch in force, and its primary. */
  get current(): EpochStart {
    const last = this.starts[this.starts.length - 1];
    assert(last !== undefined);
    return last;
  }

  /** The epoch entry `seq` was numbered in (the last to start at or before it). */
  epochOf(seq: number): EpochStart {
    let found = this.starts[0];
    assert(found !== undefined);
    for (const start of this.starts) {
      if (start.firstSeq > seq) break;
      found = start;
    }
    return found;
  }

  /**
   * The next epoch begins: `primary` numbers from `firstSeq` (the entry after the last its
   * copy holds; epochs that start after it are left out, see `upTo`). Its number is the
   * next one, or the one after `above` when a copy that went separate ways knows a higher
   * one (a split brain's winner must fence its loser's line).
   */
  begin(primary: string, firstSeq: number, above = this.current.epoch): EpochHistory {
    const epoch = Math.max(this.current.epoch, above) + 1;
    return EpochHistory.of([...this.upTo(firstSeq).starts, { epoch, primary, firstSeq }]);
  }

  /**
   * The epochs that start at or before entry `seq` (the first always stays): what a copy
   * that holds entries only up to `seq - 1` can vouch for. A copy that learned a newer epoch
   * but holds none of its entries, promoted, begins its own epoch before that one's start,
   * so that epoch is not in its line (its number stays used: the new one is above it).
   */
  upTo(seq: number): EpochHistory {
    const kept = this.starts.filter((start, index) => index === 0 || start.firstSeq <= seq);
    return kept.length === this.starts.length ? this : EpochHistory.of(kept);
  }

  /**
   * A newer history from the wire (only its last epochs), joined to the epochs this one
   * holds before the first of them.
   */
  joinedWith(newer: EpochHistory): EpochHistory {
    const first = newer.starts[0];
    assert(first !== undefined);
    const before = this.starts.filter((start) => (start.epoch < first.epoch || (start.epoch === first.epoch && restartOf(start) < restartOf(first))) && start.firstSeq <= first.firstSeq);
    return EpochHistory.of([...before, ...newer.starts], newer.ended);
  }

  /**
   * Whether `other` holds the epoch this one is in, unchanged (it is this history, or one
   * that went on from it): its first start, restarts aside (entries past a restart that
   * `other` lacks are told apart by `compareCopies`).
   */
  knowsEpochOf(other: EpochHistory): boolean {
    const mine = this.origin;
    return other.starts.some((start) => sameStart(start, mine));
  }

  /** Whether `other` is this history with restarts of its current epoch after it (the same primary started again). */
  restartedIn(other: EpochHistory): boolean {
    const mine = this.current;
    const theirs = other.current;
    return theirs.epoch === mine.epoch && theirs.primary === mine.primary && restartOf(theirs) > restartOf(mine) && other.starts.some((start) => sameStart(start, mine));
  }

  /** Whether `other` is this history or a later one: it holds every epoch of this one, unchanged. */
  isPrefixOf(other: EpochHistory): boolean {
    if (other.starts.length < this.starts.length) return false;
    return this.starts.every((start, index) => {
      const theirs = other.starts[index];
      return theirs !== undefined && sameStart(start, theirs);
    });
  }
}

/** One copy of a volume, as far as comparing it with another goes. */
export interface CopyPosition {
  history: EpochHistory;
  /** The last entry the copy holds. */
  lastSeq: number;
}

/** Where two copies part: the last entry both hold, and how many each holds past it. */
export interface CopyComparison {
  /** Every entry through this one is the same on both. */
  sharedSeq: number;
  /** Entries `a` holds past sharedSeq (which `b` lacks or holds differently). */
  aPast: number;
  bPast: number;
}

function sameStart(a: EpochStart, b: EpochStart): boolean {
  return a.epoch === b.epoch && a.primary === b.primary && a.firstSeq === b.firstSeq && restartOf(a) === restartOf(b);
}

/**
 * Compares two copies from their histories and last entries. Entry s is the same on both
 * when both hold it and both histories put it in the same epoch (the same epoch number,
 * primary and start: two nodes promoted to one number without a coordinator to stop them
 * did not number the same entries); the histories are step
 * functions of the sequence number, so the first entry where they differ is one where an
 * epoch starts on one side, and every entry from there on may differ.
 */
export function compareCopies(a: CopyPosition, b: CopyPosition): CopyComparison {
  let partsAt = Number.POSITIVE_INFINITY;
  const boundaries = [...new Set([...a.history.starts, ...b.history.starts].map((start) => start.firstSeq))].sort((x, y) => x - y);
  for (const seq of boundaries) {
    if (!sameStart(a.history.epochOf(seq), b.history.epochOf(seq))) {
      partsAt = seq;
      break;
    }
  }
  const sharedSeq = Math.min(partsAt - 1, a.lastSeq, b.lastSeq);
  return { sharedSeq, aPast: a.lastSeq - sharedSeq, bPast: b.lastSeq - sharedSeq };
}

/** The history's text in its file. */
export function encodeEpochHistory(history: EpochHistory): string {
  return JSON.stringify({ epochs: history.starts, ...(history.ended ? { ended: true } : {}) }, null, 2) + '\n';
}

/** A history file's text, or the reason it cannot be one (a damaged file is never guessed at). */
export function parseEpochHistory(data: Buffer): EpochHistory | { problem: string } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(data.toString('utf8'));
  } catch (error) {
    return { problem: `it is not JSON (${(error as Error).message})` };
  }
  const epochs = (parsed as { epochs?: unknown } | null)?.epochs;
  if (!Array.isArray(epochs)) return { problem: 'it has no list of epochs' };
  const ended = (parsed as { ended?: unknown }).ended ?? false;
  if (typeof ended !== 'boolean') return { problem: '"ended" is not true or false' };
  const starts: EpochStart[] = [];
  for (const item of epochs as unknown[]) {
    const { epoch, primary, firstSeq, restart } = (item ?? {}) as Record<string, unknown>;
    starts.push({ epoch: epoch as number, primary: primary as string, firstSeq: firstSeq as number, ...(restart === undefined ? {} : { restart: restart as number }) });
  }
  const problem = problemWith(starts);
  return problem === null ? EpochHistory.of(starts, ended) : { problem };
}
