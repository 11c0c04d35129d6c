// Quorum of a `quorum: majority` volume (docs/operations.md, "Quorum and witnesses"): who
// counts toward a majority of its members (its replicas and the cluster's witnesses), for
// the primary's writes and for a promotion, from what the heartbeats say.
//
// A member counts for the primary only while it is heard freshly (within `freshMs`, well
// inside the heartbeat timeout), its last heartbeat says it hears the primary too, and it
// knows the primary's epoch and no newer one. A member votes for a promotion only while
// it is heard freshly, knows the candidate's epoch, and says it does not hear the current
// primary, whose silence it has judged for a whole heartbeat timeout. So an old primary cut
// off from a majority stops acknowledging writes (after `freshMs`) before any member of
// that majority can vote to promote another node (after the timeout); a node cut off only
// from the primary, while another member still hears it, is not promoted; and once the
// promoted node's heartbeats have told a member the new epoch (the member trusts the old
// primary again only after a probation of several heartbeats), it no longer counts for the
// old primary, whose own heartbeats then fence it.
//
// Which copies hold every acknowledged write is the quorum's to know as well: the primary's
// heartbeats name its synced set (itself and the replicas streaming in sync), every member
// echoes the set it last heard, and the primary counts a member only while that echo names
// no node outside its set now. So when a replica drops out, the primary acknowledges no
// write without it until a majority has heard that it dropped out; and a candidate gets a
// member's vote only while that member's echo names it. A replica the primary left behind
// while it kept its majority is therefore never promoted by a majority, since every
// majority shares a member with the one that heard it dropped out.
//
// A vote binds the member that gives it (a promise, as a raft follower's vote for a term):
// a node to be promoted first stands as the candidate for the next epoch (its heartbeats
// name a promise of that epoch to itself), each member that would vote for it records,
// durably, a promise of that epoch to it before its heartbeats say so, and the candidate
// is promoted only once a majority have (`promotionQuorum` with `candidacy`). A member
// that promised a newer epoch counts for no primary of an older one, refuses its HELLO,
// and ignores what its heartbeats claim; a primary that hears of such a promise steps
// down (`promiseFences`). So a candidate that is cut off or dies the moment it is promoted,
// before any member has heard its epoch, cannot leave the old primary a majority that
// counts members which already voted it away.
//
// A member started on an empty data directory (a replaced disk) has forgotten its epoch
// and its promises: it says it is `learning` and counts for no one, votes for no one, and
// fences no one, until it has heard more members than a majority leaves out (`learnedFloor`),
// so that one of them belongs to every majority that can have acknowledged a write; the
// newest epoch or promise they name becomes its promise (to no one), as if it had made it.
//
// Pure: the heartbeats' figures come in as values.

/** A member's promise: it votes for no promotion to `epoch` or below but `to`'s, and counts for no primary of an older epoch. */
export interface EpochPromise {
  epoch: number;
  /** The candidate, or '' for none: the floor a copy started empty learned (`learnedFloor`). */
  to: string;
}

/** The role a member names while it learns the newest epoch after starting on an empty data directory. */
export const LEARNING = 'learning';

/** What the heartbeats say of one other member. */
export interface MemberView {
  node: string;
  /** How long ago its last heartbeat was accepted, or null when never. */
  heardAgoMs: number | null;
  /** The nodes its last heartbeat said it hears. */
  hears: readonly string[];
  /** The volume's epoch its last heartbeat named, or null when it named none. */
  epoch: number | null;
  /** Its role for the volume as its last heartbeat named it ('primary', 'secondary', 'witness'), or null. */
  role: string | null;
  /** The synced set it echoed for the volume (see above), or null. */
  synced: readonly string[] | null;
  /** The newest promise its last heartbeat named, or null. */
  promise?: EpochPromise | null;
}

export interface QuorumCount {
  /** Members that count, this node first. */
  counted: string[];
  have: number;
  need: number;
  ok: boolean;
}

/** The majority of `members` (more than half). */
export function majorityOf(members: readonly string[]): number {
  return Math.floor(members.length / 2) + 1;
}

/** Whether the member promised an epoch newer than `epoch`. */
function promisedPast(view: MemberView, epoch: number): boolean {
  return (view.promise?.epoch ?? 0) > epoch;
}

function fresh(view: MemberView | undefined, freshMs: number): view is MemberView {
  return view !== undefined && view.heardAgoMs !== null && view.heardAgoMs <= freshMs;
}

/**
 * Whether `self`, the primary in `epoch` whose synced set is `synced` now, may acknowledge
 * writes: it and the members in its epoch that hear it, are heard, and echo no node
 * outside that set.
 */
export function writeQuorum(self: string, epoch: number, synced: readonly string[], members: readonly string[], views: readonly MemberView[], freshMs: number): QuorumCount {
  const counted = [self];
  for (const member of members) {
    if (member === self) continue;
    const view = views.find((candidate) => candidate.node === member);
    if (!fresh(view, freshMs) || view.role === LEARNING || !view.hears.includes(self) || view.epoch !== epoch || promisedPast(view, epoch)) continue;
    if ((view.synced ?? []).every((node) => synced.includes(node))) counted.push(member);
  }
  const need = majorityOf(members);
  return { counted, have: counted.length, need, ok: counted.length >= need };
}

/**
 * Whether `self` may be promoted while `primary` is the volume's primary in `epoch`:
 * `self` does not hear it, and with `self` a majority of members are heard freshly, know
 * `epoch` and no newer one, do not hear it either, and echo a synced set that names
 * `self` (`selfSynced` is the set `self` last heard). A primary whose own fresh heartbeat
 * says it stepped down (role not primary, same epoch) is heard without harm. With
 * `candidacy` (the epoch `self` stands for), a member counts only once its heartbeat names
 * a promise of that epoch to `self`; without, the count says who would vote. `reason` says
 * what is missing.
 */
export function promotionQuorum(
  self: string,
  epoch: number,
  members: readonly string[],
  views: readonly MemberView[],
  freshMs: number,
  primary: string | null,
  selfHearsPrimary: boolean,
  selfSynced: readonly string[],
  candidacy: number | null = null,
): QuorumCount & { reason: string | null } {
  const primaryView = views.find((candidate) => candidate.node === primary);
  const steppedDown = fresh(primaryView, freshMs) && primaryView.epoch === epoch && primaryView.role !== null && primaryView.role !== 'primary';
  const live = steppedDown ? null : primary;
  const counted: string[] = [];
  const left: string[] = [];
  const waiting: string[] = [];
  if (selfSynced.includes(self)) counted.push(self);
  else left.push(self);
  const hearing: string[] = selfHearsPrimary && live !== null ? [self] : [];
  for (const member of members) {
    if (member === self || member === primary) continue;
    const view = views.find((candidate) => candidate.node === member);
    if (!fresh(view, freshMs) || view.role === LEARNING || view.epoch !== epoch) continue;
    if (live !== null && view.hears.includes(live)) hearing.push(member);
    else if (!(view.synced ?? []).includes(self)) left.push(member);
    else if (candidacy === null || (view.promise?.epoch === candidacy && view.promise.to === self)) counted.push(member);
    else waiting.push(member);
  }
  const need = majorityOf(members);
  const ok = hearing.length === 0 && counted.length >= need;
  const reason = ok
    ? null
    : hearing.length > 0
      ? `${hearing.map((node) => `node ${node}`).join(' and ')} still ${hearing.length === 1 ? 'hears' : 'hear'} the primary, node ${live ?? '?'}`
      : `only ${counted.length} of the ${members.length} members (${counted.join(', ') || 'none'}) vote for it, and a majority is ${need}` +
        (left.length > 0 ? `; ${left.map((node) => `node ${node}`).join(' and ')} last heard that node ${self} does not hold every acknowledged write` : '') +
        (waiting.length > 0 ? `; ${waiting.map((node) => `node ${node}`).join(' and ')} did not promise epoch ${candidacy ?? '?'} to it` : '');
  return { counted, have: counted.length, need, ok, reason };
}

/** The epoch a member stands for as a candidate (its heartbeat names a promise of a newer epoch than its own to itself), or null. */
export function candidacyOf(view: MemberView): number | null {
  const promise = view.promise ?? null;
  return promise !== null && promise.to === view.node && view.epoch !== null && promise.epoch > view.epoch ? promise.epoch : null;
}

/** The epoch a candidate in `epoch` stands for: past every promise it knows of, its own (`promised`) and the members'. */
export function nextCandidacy(epoch: number, promised: EpochPromise | null, views: readonly MemberView[]): number {
  return Math.max(epoch, promised?.epoch ?? 0, ...views.map((view) => Math.max(view.epoch ?? 0, view.promise?.epoch ?? 0))) + 1;
}

/** What a member knows that decides whether it promises a candidate its vote. */
export interface MemberState {
  self: string;
  /** The volume's epoch as this member's history has it (a witness: the newest claimed). */
  epoch: number;
  /** Its role: a primary never promises (the one to replace). */
  role: string;
  /** Its newest promise, or null. */
  promise: EpochPromise | null;
  /** Whether it hears the primary of `epoch` still serving (not stepped down), or the node it promised a newer epoch to. */
  hearsLivePrimary: boolean;
  /** The synced set it echoes: the copies that hold every acknowledged write, as it last heard. */
  echo: readonly string[];
}

/**
 * Whether a member promises `candidate` (whose heartbeat is `view`) the epoch it stands
 * for: the candidate is in the member's epoch and stands for a newer one than any the
 * member promised, the member is not a primary and does not hear the primary of its
 * epoch, and its echo names the candidate (it holds every acknowledged write) — what
 * `promotionQuorum` asks of a vote, judged by the member itself.
 */
export function grantsPromise(member: MemberState, view: MemberView): number | null {
  const candidacy = candidacyOf(view);
  if (candidacy === null || view.node === member.self || view.epoch !== member.epoch) return null;
  if (candidacy <= Math.max(member.epoch, member.promise?.epoch ?? 0)) return null;
  if (member.role === 'primary' || member.role === LEARNING || member.hearsLivePrimary || !member.echo.includes(view.node)) return null;
  return candidacy;
}

/** `promise` when it is of an epoch newer than `epoch` (an older epoch's primary is stale to its maker), else null. */
export function newerPromise(promise: EpochPromise | null, epoch: number): EpochPromise | null {
  return promise !== null && promise.epoch > epoch ? promise : null;
}

/**
 * Whether a member hears what a candidate must not be promoted past: the primary of its
 * epoch still serving (heard, and its heartbeat does not say it stepped down), or the node
 * it promised a newer epoch to, standing for it or serving it. `hears` is the member's
 * failure detector.
 */
export function hearsLivePrimary(self: string, primary: string | null, promise: EpochPromise | null, views: readonly MemberView[], hears: (node: string) => boolean): boolean {
  const viewOf = (node: string): MemberView | undefined => views.find((view) => view.node === node);
  if (primary !== null && primary !== self && hears(primary) && (viewOf(primary)?.role ?? 'primary') === 'primary') return true;
  if (promise === null || promise.to === '' || promise.to === self || !hears(promise.to)) return false;
  const view = viewOf(promise.to);
  return view !== undefined && (candidacyOf(view) === promise.epoch || (view.role === 'primary' && view.epoch === promise.epoch));
}

/** A member heard freshly that promised a newer epoch than `epoch` (its primary then steps down), or null. */
export function promiseFences(epoch: number, views: readonly MemberView[], freshMs: number): MemberView | null {
  return views.find((view) => fresh(view, freshMs) && view.role !== LEARNING && promisedPast(view, epoch)) ?? null;
}

/**
 * What a member started on an empty data directory learns once enough members are heard:
 * the newest epoch or promise that more members than a majority leaves out (heard freshly,
 * learning or not) name, or null while too few are heard.
 */
export function learnedFloor(self: string, members: readonly string[], views: readonly MemberView[], freshMs: number): number | null {
  const heard = views.filter((view) => view.node !== self && members.includes(view.node) && fresh(view, freshMs) && view.epoch !== null);
  if (heard.length < members.length - majorityOf(members) + 1) return null;
  return Math.max(0, ...heard.map((view) => Math.max(view.epoch ?? 0, view.promise?.epoch ?? 0)));
}

/** What a member keeps durably for a quorum volume: its newest promise, and whether it is still learning. */
export interface MemberRecord {
  promise: EpochPromise | null;
  learning: boolean;
}

/**
 * What a member's record becomes on a heartbeat, or null when it stays: a member still
 * learning learns the newest epoch once enough members are heard (`learnedFloor`); one
 * that has learned promises the first candidate it would vote for (`grantsPromise`).
 * `change` says what happened, for the log. The caller makes the record durable before
 * its heartbeats name it.
 */
export function memberHeard(record: MemberRecord, member: Omit<MemberState, 'promise'>, members: readonly string[], views: readonly MemberView[], freshMs: number): { record: MemberRecord; change: string } | null {
  if (record.learning) {
    const floor = learnedFloor(member.self, members, views, freshMs);
    if (floor === null) return null;
    const promise = floor > Math.max(member.epoch, record.promise?.epoch ?? 0) ? { epoch: floor, to: '' } : record.promise;
    return { record: { promise, learning: false }, change: `learned the newest epoch: ${floor}` };
  }
  for (const view of views) {
    if (!fresh(view, freshMs)) continue;
    const granted = grantsPromise({ ...member, promise: record.promise }, view);
    if (granted !== null) return { record: { promise: { epoch: granted, to: view.node }, learning: false }, change: `promised epoch ${granted} to node ${view.node}` };
  }
  return null;
}
