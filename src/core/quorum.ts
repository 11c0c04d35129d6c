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
// Pure: the heartbeats' figures come in as values.

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
    if (!fresh(view, freshMs) || !view.hears.includes(self) || view.epoch !== epoch) continue;
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
 * says it stepped down (role not primary, same epoch) is heard without harm. `reason`
 * says what is missing.
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
): QuorumCount & { reason: string | null } {
  const primaryView = views.find((candidate) => candidate.node === primary);
  const steppedDown = fresh(primaryView, freshMs) && primaryView.epoch === epoch && primaryView.role !== null && primaryView.role !== 'primary';
  const live = steppedDown ? null : primary;
  const counted: string[] = [];
  const left: string[] = [];
  if (selfSynced.includes(self)) counted.push(self);
  else left.push(self);
  const hearing: string[] = selfHearsPrimary && live !== null ? [self] : [];
  for (const member of members) {
    if (member === self || member === primary) continue;
    const view = views.find((candidate) => candidate.node === member);
    if (!fresh(view, freshMs) || view.epoch !== epoch) continue;
    if (live !== null && view.hears.includes(live)) hearing.push(member);
    else if ((view.synced ?? []).includes(self)) counted.push(member);
    else left.push(member);
  }
  const need = majorityOf(members);
  const ok = hearing.length === 0 && counted.length >= need;
  const reason = ok
    ? null
    : hearing.length > 0
      ? `${hearing.map((node) => `node ${node}`).join(' and ')} still ${hearing.length === 1 ? 'hears' : 'hear'} the primary, node ${live ?? '?'}`
      : `only ${counted.length} of the ${members.length} members (${counted.join(', ') || 'none'}) vote for it, and a majority is ${need}` +
        (left.length > 0 ? `; ${left.map((node) => `node ${node}`).join(' and ')} last heard that node ${self} does not hold every acknowledged write` : '');
  return { counted, have: counted.length, need, ok, reason };
}
