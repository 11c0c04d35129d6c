// Coordination through etcd (docs/operations.md, "Automatic failover through etcd"): the
// decisions, apart from the client that carries them out (src/server/coordinator.ts) and
// the simulator that tries them (test/sim).
//
// A primary holds its volume under a lease that etcd expires `ttlMs` after the last
// renewal it processed. The holder cannot see etcd's clock, but it knows when it sent each
// renewal: etcd processed a confirmed one after that, so the lease lives at least until
// `sentAtMs + ttlMs` on any clock that runs at the same rate. `HeldLease` keeps that bound
// on the holder's monotonic clock, less a margin for the time a reply takes to leave once
// it passed the gate and for clock rates that differ; the primary acknowledges nothing
// past it (self-fencing), so that an old primary has stopped before etcd lets another
// claim the volume.
//
// The claim itself is one compare-and-swap transaction over two keys per volume: the
// leased `primary` key, which must be absent, and the `epoch` key, the newest epoch any
// claim took, which must be as read. The claimant writes both, so no two nodes ever take
// the same epoch. Among the copies that may be promoted, the one etcd should see first is
// `preferredCandidate`'s: a copy that follows before a primary that stepped down, then the
// highest `priority`, then the most entries durable, then the lowest node id; the others
// wait `fallbackMs` before they claim in its place.

import { assert } from '../lib/assert.js';

/** A primary's view of its own lease, on its monotonic clock. */
export class HeldLease {
  private validUntilMs = -Infinity;
  private renewals = 0;

  constructor(
    /** The lease's time to live as configured (etcd may grant more, never less). */
    readonly ttlMs: number,
    /** How long before the bound the holder stops acknowledging. */
    readonly marginMs: number,
  ) {
    assert(ttlMs > marginMs && marginMs >= 0);
  }

  /** A renewal (or the grant) sent at `sentAtMs` was confirmed with `grantedMs` to live. */
  confirmed(sentAtMs: number, grantedMs: number): void {
    const until = sentAtMs + Math.min(grantedMs, this.ttlMs) - this.marginMs;
    if (until > this.validUntilMs) this.validUntilMs = until;
    this.renewals += 1;
  }

  /** etcd said the lease is gone (expired or revoked): nothing is acknowledged under it any more. */
  lost(): void {
    this.validUntilMs = -Infinity;
  }

  /** Whether a reply may leave at `nowMs`. */
  valid(nowMs: number): boolean {
    return nowMs < this.validUntilMs;
  }

  /** When the holder fences itself unless a renewal is confirmed first (-Infinity: not held). */
  get fenceAtMs(): number {
    return this.validUntilMs;
  }

  get confirmedRenewals(): number {
    return this.renewals;
  }
}

/** The margin a holder keeps before its lease's bound: a fifth of it, between 200 ms and 1 s. */
export function leaseMarginMs(ttlMs: number): number {
  return Math.min(1000, Math.max(200, Math.floor(ttlMs / 5)));
}

/** How often a holder renews: four times in a lease, so that a renewal or two may fail. */
export function renewEveryMs(ttlMs: number): number {
  return Math.max(100, Math.floor(ttlMs / 4));
}

/** How often a node reads the volumes' keys: what a vacancy waits before a claim. */
export function watchEveryMs(ttlMs: number): number {
  return Math.max(50, Math.min(250, Math.floor(ttlMs / 16)));
}

/** A copy that may be promoted, as it announces itself while its volume has no primary. */
export interface Candidate {
  node: string;
  priority: number;
  /** Its last entry made durable. */
  lastSeq: number;
  /**
   * A primary that stepped down, to take its volume back: preferred after every copy that
   * follows (a `demote` means "another copy", and one is taken if there is one).
   */
  steppedDown?: boolean;
}

/** Which of `candidates` should claim first: the highest priority, then the most entries, then the lowest id. */
export function preferredCandidate(candidates: readonly Candidate[]): Candidate | null {
  let best: Candidate | null = null;
  for (const candidate of candidates) {
    if (best === null || prefers(candidate, best)) best = candidate;
  }
  return best;
}

function prefers(a: Candidate, b: Candidate): boolean {
  if ((a.steppedDown === true) !== (b.steppedDown === true)) return b.steppedDown === true;
  if (a.priority !== b.priority) return a.priority > b.priority;
  if (a.lastSeq !== b.lastSeq) return a.lastSeq > b.lastSeq;
  return a.node < b.node;
}

/**
 * Whether `self` claims a vacant volume now, `vacantForMs` after it first saw the vacancy:
 * the preferred candidate once the others have had `gatherMs` to announce themselves, any
 * other candidate only after `fallbackMs` more (the preferred one did not make it).
 */
export function claimsNow(self: Candidate, candidates: readonly Candidate[], vacantForMs: number, gatherMs: number, fallbackMs: number): boolean {
  if (vacantForMs < gatherMs) return false;
  const best = preferredCandidate([self, ...candidates.filter((candidate) => candidate.node !== self.node)]);
  return best?.node === self.node || vacantForMs >= gatherMs + fallbackMs;
}

/** The epoch a claim takes: past the newest any claim took and past every epoch this copy knows of. */
export function claimedEpoch(recorded: number, known: number): number {
  return Math.max(recorded, known) + 1;
}

/** The `primary` key's value: who holds the volume, in which epoch, under which lease. */
export interface PrimaryClaim {
  node: string;
  epoch: number;
  lease: string;
}

/** The `epoch` key's value: the newest epoch a claim took, and by whom. */
export interface EpochClaim {
  epoch: number;
  node: string;
}

/** The text of a claim as it is stored. */
export function encodeClaim(claim: PrimaryClaim | EpochClaim | Candidate): string {
  return JSON.stringify(claim);
}

/** A `primary` key's value, or null when it is not one (a key written by something else is not trusted). */
export function parsePrimaryClaim(text: string): PrimaryClaim | null {
  const value = parseObject(text);
  if (value === null) return null;
  const { node, epoch, lease } = value;
  if (!isNodeId(node) || !isEpoch(epoch) || typeof lease !== 'string' || !/^[0-9]{1,20}$/.test(lease)) return null;
  return { node, epoch, lease };
}

export function parseEpochClaim(text: string): EpochClaim | null {
  const value = parseObject(text);
  if (value === null) return null;
  const { node, epoch } = value;
  if (!isNodeId(node) || !isEpoch(epoch)) return null;
  return { node, epoch };
}

export function parseCandidate(text: string): Candidate | null {
  const value = parseObject(text);
  if (value === null) return null;
  const { node, priority, lastSeq, steppedDown } = value;
  if (!isNodeId(node) || !Number.isSafeInteger(priority) || (priority as number) < 0 || !Number.isSafeInteger(lastSeq) || (lastSeq as number) < 0) return null;
  if (steppedDown !== undefined && typeof steppedDown !== 'boolean') return null;
  return { node, priority: priority as number, lastSeq: lastSeq as number, ...(steppedDown === true ? { steppedDown } : {}) };
}

function parseObject(text: string): Record<string, unknown> | null {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

function isNodeId(value: unknown): value is string {
  return typeof value === 'string' && /^[a-z0-9][a-z0-9_-]{0,31}$/.test(value);
}

function isEpoch(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0 && (value as number) <= 0xffff_ffff;
}

/**
 * The `synced` key's value: the copies that hold every write the primary of `epoch`
 * acknowledged. The primary shrinks it before it acknowledges a write that a copy it
 * names may lack, and grows it when a copy is up to date again; a copy it does not name
 * may not claim the volume.
 */
export interface SyncedClaim {
  epoch: number;
  /**
   * Counts the primary's changes of the set in its epoch (0: its claim's), so that no
   * value comes back: a change whose answer was lost, compared against a value since
   * replaced, can never apply later.
   */
  version: number;
  nodes: string[];
}

export function encodeSynced(claim: SyncedClaim): string {
  return JSON.stringify({ epoch: claim.epoch, version: claim.version, nodes: [...claim.nodes].sort() });
}

export function parseSyncedClaim(text: string): SyncedClaim | null {
  const value = parseObject(text);
  if (value === null) return null;
  const { epoch, version, nodes } = value;
  if (!isEpoch(epoch) || !Number.isSafeInteger(version) || (version as number) < 0 || !Array.isArray(nodes) || nodes.length > 64 || !nodes.every(isNodeId)) return null;
  return { epoch, version: version as number, nodes: [...(nodes as string[])] };
}

/** The same set of copies (the order aside). */
export function sameNodes(a: readonly string[], b: readonly string[]): boolean {
  const set = new Set(a);
  return set.size === new Set(b).size && b.every((node) => set.has(node));
}

/**
 * Whether a reply may leave as far as the synced set goes: every copy etcd's `synced` may
 * name (`mayName`: the value the primary knows, and those of its changes whose answers it
 * has not had) is this primary or one the reply waited for (`counted`), so none of them
 * lacks it.
 */
export function syncedCovers(mayName: Iterable<string>, self: string, counted: readonly string[]): boolean {
  for (const node of mayName) if (node !== self && !counted.includes(node)) return false;
  return true;
}

/** Whether `self` may claim a vacant volume by the synced set etcd records (none recorded: the copy's own record decides). */
export function syncedAdmits(recorded: SyncedClaim | null, self: string): boolean {
  return recorded === null || recorded.nodes.includes(self);
}
