// A deterministic simulation of failover (docs/operations.md, "Failover", "Quorum and
// witnesses", "Split brain", "A failed disk"): two or three data nodes (and a witness) of
// one mirrored volume, whose roles move — primaries crash, are cut off, lose their disk,
// step down; the operator promotes (by the rules or forced), resolves split brains and
// attaches new disks; old primaries come back — while clients write, checked by
// failover-checker.ts. Like cluster.ts it runs on the virtual clock of event-queue.ts with
// every choice drawn from one seeded Prng, and never reads a real clock.
//
// Every decision about roles is the shipped code's, each node running one ReplicaCore
// (src/core/replica-core.ts) as the node does: which history a source's HELLO claims and
// how it stands to this copy's (judgeSource, epochVerdict), the next epoch and the
// promotion (promotion, promote, demote, learn), whether a promotion may lose writes
// (mayLack), the quorum for writes and promotions (writeQuorum, promotionQuorum), where two
// copies part (compareCopies), whether they are in split brain and what the policy decides
// (splitBrainBetween, decideSplitBrain), whether a source's claim is taken at all
// (admitsSource), whether a primary may serve without its disk (disklessRefusal). The
// node's side around them follows src/server/volume-roles.ts (attach, follow, takeOver): a
// copy that is a primary, or stepped down, looks for a split brain with a source of a newer
// or separate history; one that follows a primary refuses another line. The operator's part
// without a quorum is the documented rule: promote by the rules only a copy that was
// streaming from its primary when that primary went away, and only while it stays away.
//
// The data path is a model, smaller than cluster.ts's (which runs the shipped
// MirrorSource and MirrorTarget): each node's log holds every entry (number, epoch, write)
// and is its image; a source sends a new session's peer the entries past the one they
// share (READY, then START, which makes the peer's log end there), then streams; a peer's
// disk makes entries durable in order and it acknowledges what is durable. Every write is
// a FUA write: in sync mode it is answered once it is durable on the primary and
// acknowledged by every peer with a session; in async mode once durable on the primary.
// A reply that leaves while a peer has no session records, first, from which entry that
// peer may lack acknowledged writes (the mirror ledger's `ackedAlone`). Heartbeats are
// ideal: a node hears another exactly while both run and neither is cut off.
//
// Coordinated through etcd (`coordination: etcd`), no operator promotes: each node runs the
// coordinator's loops (etcd-node.ts) against a simulated etcd (etcd-model.ts); a primary's
// replies pass only while its coordinator holds the volume under a lease it knows to live,
// and a secondary that may be promoted by the rules (the shipped `promotable`: a secondary
// with its target, not streaming, with a disk, that `mayLack` clears) claims the volume
// once its primary's lease expired and is promoted to the epoch its claim took; a primary
// that stepped down and was the last to claim (`resumable`: it follows no one, has its disk
// and no full resync waiting) claims after every such copy and takes the volume back in the
// epoch it took, from its own log (`resume`). Its volumes
// may be strict: the primary then refuses changes, and fails those waiting, while a replica
// does not stream in sync (MirrorSource.strictMissing), so it never acknowledges alone.

import { assert } from '../../src/lib/assert.js';
import { compareCopies, EpochHistory, type EpochStart } from '../../src/core/epoch-history.js';
import { disklessRefusal } from '../../src/core/diskless.js';
import { parseEpochClaim, parsePrimaryClaim } from '../../src/core/lease.js';
import { contactHeard, mayLack, type SourceContact } from '../../src/core/promotion.js';
import { hearsLivePrimary, LEARNING, memberHeard, newerPromise, nextCandidacy, promiseFences, promotionQuorum, writeQuorum, type EpochPromise, type MemberView } from '../../src/core/quorum.js';
import { admitsSource, ReplicaCore } from '../../src/core/replica-core.js';
import { decideSplitBrain, splitBrainBetween, type SplitBrain, type SplitBrainDecision } from '../../src/core/split-brain.js';
import { Prng } from '../unit/prng.js';
import { SimFailure } from './checker.js';
import { EPOCH_KEY, PRIMARY_KEY, SimEtcd, type EtcdNetwork } from './etcd-model.js';
import { emptyCoordinatorCounts, SimCoordinator, type CoordinatorCounts } from './etcd-node.js';
import { EventQueue } from './event-queue.js';
import { FailoverChecker, type AckedWrite, type CheckedEntry } from './failover-checker.js';
import type { FailoverConfig, Step, Target } from './failover-config.js';

const TICK_US = 500;
/** How a session ends when its primary goes away (not a lost link, nor the copy's own end). */
const wentAway: readonly string[] = ['source crashed', 'source failed', 'source stepped down'];
const WITNESS = 'w';
/** How fresh a heartbeat must be to count (the ideal detector makes every heard one fresh). */
const FRESH_MS = 1;
/** How long a candidate waits for its promises before its promotion is refused: a few heartbeats. */
const CANDIDACY_US = 5 * TICK_US;

interface Entry {
  seq: number;
  epoch: number;
  writeId: number;
  block: number;
  durable: boolean;
}

/** A source's session with one peer. */
interface OutSession {
  id: number;
  phase: 'hello' | 'starting' | 'streaming';
  /** The peer's log ends here after START (every entry through it is shared). */
  from: number;
  acked: number;
  /** The last entry when the session began streaming: once the peer holds it, it streams up to date. */
  caughtUpAt: number;
  /** The peer was told IN_SYNC: it streams up to date. */
  inSync: boolean;
}

interface Request {
  client: Client;
  writeId: number;
  block: number;
  node: string;
  incarnation: number;
  seq: number;
  epoch: number;
  arrivedUs: number;
  /** Through etcd: its change is mirrored, and its reply waits at the lease gate. */
  mirrored: boolean;
}

interface Client {
  id: number;
  node: string;
  opsLeft: number;
  busy: boolean;
}

interface PendingSplit {
  nodes: [string, string];
  found: SplitBrain;
  /** found.hereEntries belong to nodes[0]. */
}

class SimNode {
  up = true;
  incarnation = 0;
  core: ReplicaCore<never>;
  log: Entry[] = [];
  diskFailed = false;
  diskless = false;
  /** Durable: per peer, the first entry it may lack that this node acknowledged without it. */
  readonly ackedAlone = new Map<string, number>();
  /** Durable: per peer, entries after this one may differ (this primary restarted after a crash). */
  readonly divergedAfter = new Map<string, number>();
  /** Durable: what this copy knew of its primary at their last contact. */
  contact: SourceContact | null = null;
  /** Durable: a split brain's decision that this copy discards its writes and follows `winner`. */
  discardWinner: string | null = null;
  /** Durable (with the data directory): its newest promise of an epoch to a candidate. */
  promise: EpochPromise | null = null;
  /** Started on an empty data directory (a replaced disk), it has not yet learned the newest epoch (durable). */
  learning = false;
  /** Durable: its log was made anew on an empty disk and waits for a full resync (LogStatus.needsFullResync): it cannot be the primary. */
  needsFullResync = false;
  /** The epoch it stands for as a candidate, until when (lost at a crash). */
  candidacy: { epoch: number; untilUs: number; incarnation: number; force: boolean } | null = null;
  // What the process holds (lost at a crash):
  readonly sessions = new Map<string, OutSession>();
  following: { node: string; session: number } | null = null;
  readonly waiting: Request[] = [];
  draining = false;
  diskUs = 0;
  /** When it last answered a client's write (what the operator sees in its log). */
  lastAnswerUs = -1;
  /** Per peer, the highest entry it acknowledged to this node. */
  readonly knownAcked = new Map<string, number>();
  /** Coordinated through etcd: this incarnation's coordinator, and where its clock starts. */
  coordinator: SimCoordinator | null = null;
  clockOffsetUs = 0;

  constructor(
    readonly id: string,
    primary: string,
    private readonly mode: 'sync' | 'async',
  ) {
    this.core = this.open(0, EpochHistory.initial(primary));
  }

  /**
   * The volume's replica core as the node opens it: the primary of its history (which may
   * say it stepped down) is primary; any other copy follows the primary its history names.
   */
  open(lastSeq: number, history: EpochHistory): ReplicaCore<never> {
    const own = history.current.primary === this.id;
    const core = new ReplicaCore<never>({ lastSeq, role: own && !history.ended ? 'primary' : 'secondary', history });
    if (!own) this.followWith(core);
    return core;
  }

  /** The secondary's side starts (after a start, or once it learned a newer history). */
  followWith(core: ReplicaCore<never>): void {
    if (core.role === 'secondary' && core.secondary === null) core.follow({ mode: this.mode, lastSeq: core.local.lastSeq, windowBytesMax: 1 << 20 });
  }

  get lastSeq(): number {
    return this.log.length;
  }

  get durablePrefix(): number {
    let at = 0;
    while (this.log[at]?.durable === true) at += 1;
    return at;
  }

  /** Takes writes now: the primary of its history, running, not stepping down, with a disk (or diskless). */
  get serving(): boolean {
    return this.up && this.core.role === 'primary' && this.core.history.primaryNow === this.id && !this.draining && (!this.diskFailed || this.diskless);
  }

  writeAt(seq: number): number | null {
    return this.log[seq - 1]?.writeId ?? null;
  }

  /** Its disk holds `write` at its entry (a failed disk holds nothing: a diskless primary's log is only its numbering). */
  holds(write: { seq: number; writeId: number }): boolean {
    return !this.diskFailed && this.writeAt(write.seq) === write.writeId;
  }
}

/** What a run went through (summed over runs by failover-run.ts). */
export interface FailoverCounts {
  acknowledged: number;
  /** Client requests refused or dropped (the client tried another node). */
  refused: number;
  byRules: number;
  forced: number;
  promoteRefused: number;
  switchovers: number;
  crashes: number;
  partitions: number;
  diskFailures: number;
  disklessServed: number;
  disklessRefused: number;
  attached: number;
  fenced: number;
  splitBrains: number;
  resolved: number;
  saved: number;
  lostWithDisk: number;
  lostToForce: number;
  sharedEpochNumbers: number;
  /** 1 when the run ended with every copy following one primary. */
  converged: number;
  // Coordinated through etcd:
  /** Secondaries promoted by their claim in etcd. */
  failovers: number;
  /** Primaries that stepped down and took their volume back by a claim in etcd. */
  resumed: number;
  /** Claims etcd granted (a primary taking its key in its own epoch, or a secondary the next one). */
  claims: number;
  claimsLost: number;
  claimsGivenUp: number;
  /** Primaries that stepped down because their lease may have expired, or etcd named a newer epoch. */
  leaseFences: number;
  namedNewer: number;
  /** Writes of the synced set etcd took: shrunk before a reply left, or grown as copies came up to date. */
  syncedShrunk: number;
  syncedGrown: number;
  /** Changes of the synced set etcd refused (the value had moved on), or whose answer never came; reads whose synced set was not taken (a change raced them). */
  syncedRefused: number;
  syncedUnanswered: number;
  staleReads: number;
  released: number;
  renewals: number;
  renewalFailures: number;
  /** Renewals confirmed after their try gave up (they still move the lease's bound on). */
  lateRenewals: number;
  leasesExpired: number;
  etcdOutages: number;
  etcdCuts: number;
  etcdMessagesLost: number;
  /** Replies that waited at a closed lease gate until they failed. */
  gateRefused: number;
  /** 1 when the run ended with no node taking writes (no primary of its own history, running, with a disk). */
  leaderless: number;
}

export function emptyCounts(): FailoverCounts {
  return {
    acknowledged: 0,
    refused: 0,
    byRules: 0,
    forced: 0,
    promoteRefused: 0,
    switchovers: 0,
    crashes: 0,
    partitions: 0,
    diskFailures: 0,
    disklessServed: 0,
    disklessRefused: 0,
    attached: 0,
    fenced: 0,
    splitBrains: 0,
    resolved: 0,
    saved: 0,
    lostWithDisk: 0,
    lostToForce: 0,
    sharedEpochNumbers: 0,
    converged: 0,
    failovers: 0,
    resumed: 0,
    claims: 0,
    claimsLost: 0,
    claimsGivenUp: 0,
    leaseFences: 0,
    namedNewer: 0,
    syncedShrunk: 0,
    syncedGrown: 0,
    syncedRefused: 0,
    syncedUnanswered: 0,
    staleReads: 0,
    released: 0,
    renewals: 0,
    renewalFailures: 0,
    lateRenewals: 0,
    leasesExpired: 0,
    etcdOutages: 0,
    etcdCuts: 0,
    etcdMessagesLost: 0,
    gateRefused: 0,
    leaderless: 0,
  };
}

export interface FailoverSummary {
  config: FailoverConfig;
  events: number;
  virtualUs: number;
  checks: number;
  counts: FailoverCounts;
}

export class FailoverCluster {
  readonly queue = new EventQueue();
  private readonly prng: Prng;
  readonly nodes: SimNode[];
  private readonly cut = new Map<string, number>();
  readonly checker: FailoverChecker;
  private readonly clients: Client[] = [];
  private nextSession = 1;
  private nextWriteId = 1;
  /** Per ordered pair: when the last message sent will arrive (links keep order). */
  private readonly lastDelivery = new Map<string, number>();
  /** The witness's epoch: the newest it heard in a heartbeat. */
  private witnessEpoch = 0;
  /** The witness's newest promise (durable). */
  private witnessPromise: EpochPromise | null = null;
  /** The primary of the witness's epoch. */
  private witnessPrimary: string | null;
  /** Per member: the synced set its last heartbeat echoed. */
  private readonly echoes = new Map<string, string[]>();
  private readonly pendingSplits: PendingSplit[] = [];
  private horizonUs = 0;
  private readonly tally = emptyCounts();
  /** Coordinated through etcd: etcd, its own Prng (the static run's draws stay as they were), the coordinators' counts. */
  private readonly etcd: SimEtcd | null = null;
  private readonly etcdPrng: Prng;
  private etcdNetwork: EtcdNetwork | null = null;
  private readonly coordination: CoordinatorCounts = emptyCoordinatorCounts();

  constructor(
    readonly config: FailoverConfig,
    private readonly trace: ((line: string) => void) | null = null,
  ) {
    this.prng = new Prng((config.seed ^ 0x7e11fa) >>> 0);
    const primary = config.nodes[0] ?? 'a';
    this.witnessPrimary = primary;
    this.nodes = config.nodes.map((id) => new SimNode(id, primary, config.mode));
    for (const id of [...config.nodes, WITNESS]) this.cut.set(id, 0);
    this.checker = new FailoverChecker(() => this.queue.now, config.quorum === 'majority', config.etcd === null ? null : () => this.etcdHolder());
    for (let id = 1; id <= config.clients; id += 1) this.clients.push({ id, node: primary, opsLeft: config.opsPerClient, busy: false });
    this.etcdPrng = new Prng((config.seed ^ 0x3e7cd) >>> 0);
    const etcd = config.etcd;
    if (etcd !== null) {
      const network = {
        delayUs: { minUs: etcd.delayMs.minMs * etcd.usPerMs, maxUs: etcd.delayMs.maxMs * etcd.usPerMs },
        slowChance: etcd.slowChance,
        lossChance: etcd.lossChance,
        // Set by run(): the last leases of the run live out without losses, so that it may settle.
        lossUntilUs: 0,
      };
      this.etcdNetwork = network;
      this.etcd = new SimEtcd(this.queue, this.etcdPrng, network, etcd.usPerMs, (key, value, atUs) => this.etcdCommitted(key, value, atUs), (text) => this.note(text));
    }
  }

  /** Whom etcd's `primary` key names now (for the checker: a primary acknowledges only while it does). */
  private etcdHolder(): { node: string; epoch: number } | null {
    const text = this.etcd?.peek(PRIMARY_KEY) ?? null;
    const claim = text === null ? null : parsePrimaryClaim(text);
    assert(text === null || claim !== null, `etcd's primary key holds ${text ?? ''}`);
    return claim;
  }

  /** etcd wrote a key: a claim's epoch key goes to the checker, as etcd processed it. */
  private etcdCommitted(key: string, value: string | null, atUs: number): void {
    if (key !== EPOCH_KEY || value === null) return;
    const claim = parseEpochClaim(value);
    assert(claim !== null, `etcd's epoch key holds ${value}`);
    this.checker.claimed(claim.node, claim.epoch, atUs);
  }

  /** Coordinated through etcd: the node's process starts its coordinator, on a clock of its own. */
  private startCoordinator(node: SimNode): void {
    const etcd = this.etcd;
    const shape = this.config.etcd;
    if (etcd === null || shape === null) return;
    node.clockOffsetUs = this.etcdPrng.between(0, 1_000_000_000);
    const offsetUs = node.clockOffsetUs;
    const faults = { ignoresLease: this.config.fault === 'ignores-lease' };
    const coordinator = new SimCoordinator(
      {
        id: node.id,
        priority: shape.priorities[node.id] ?? 0,
        replicas: this.config.nodes,
        mode: this.config.mode,
        clockUs: () => this.queue.now + offsetUs,
        isPrimary: () => node.up && node.core.role === 'primary' && !node.draining,
        changing: () => node.draining,
        isSecondary: () => node.up && node.core.role === 'secondary',
        hasTarget: () => node.core.secondary !== null,
        epoch: () => node.core.epoch,
        durableSeq: () => node.durablePrefix,
        countedPeers: () => [...node.sessions].filter(([, session]) => session.phase === 'streaming').map(([peer]) => peer),
        upToDatePeers: () => [...node.sessions].filter(([peer, session]) => session.phase === 'streaming' && session.inSync && !this.node(peer).diskFailed).map(([peer]) => peer),
        promotable: () => this.claimRefusal(node),
        stepDown: (reason) => this.stepDown(node, reason),
        promoteTo: (epoch) => this.promoteClaimed(node, epoch),
        resumable: () => this.resumeRefusal(node),
        resume: (epoch) => this.resumeClaimed(node, epoch),
      },
      etcd,
      this.queue,
      { ttlMs: shape.ttlMs, usPerMs: shape.usPerMs },
      faults,
      this.coordination,
      (text) => this.note(text),
      () => this.queue.now <= this.horizonUs,
    );
    node.coordinator = coordinator;
    coordinator.start();
  }

  /**
   * VolumeRoles.promotable, as the coordinator asks it: why `node` may not be promoted by the
   * rules now, or null. Unlike the operator of a static run, it knows only what its node knows.
   */
  private claimRefusal(node: SimNode): string | null {
    if (!node.up || node.diskFailed) return 'not running with a disk';
    if (node.core.role !== 'secondary') return 'not a secondary';
    if (node.core.secondary === null) return 'it stepped down as the primary: it follows the next one';
    if (node.following !== null) return `streaming from ${node.following.node}`;
    if (this.config.fault === 'promote-ignores-contact') return null;
    return mayLack({ name: 'vol', mode: this.config.mode }, node.contact, node.id);
  }

  /** VolumeRoles.promote(name, false, epoch) after a claim won in etcd: exactly that epoch, or why not. */
  private promoteClaimed(node: SimNode, epoch: number): string | null {
    const refusal = this.claimRefusal(node);
    if (refusal !== null) return refusal;
    const contact = node.contact;
    this.note(`${node.id} is promoted by its claim: in sync with ${contact?.source ?? '?'} through entry ${contact?.lastSeq ?? '?'} when their session ended (${contact?.endedBy ?? 'running'})`);
    const history = node.core.promotion(node.id, node.lastSeq, epoch - 1);
    assert(history.current.epoch === epoch, `a claim of epoch ${epoch} promoted ${node.id} to epoch ${history.current.epoch}`);
    this.becomePrimary(node, history, 'claim');
    return null;
  }

  /**
   * VolumeRoles.resumable: why `node`, a primary that stepped down and follows no one yet,
   * may not take its volume back now, or null. (That it holds every acknowledged write is
   * etcd's to say: its claim was the last, and the synced set names it.)
   */
  private resumeRefusal(node: SimNode): string | null {
    if (!node.up || node.draining) return 'not running, or changing its role';
    if (node.core.role !== 'secondary' || node.core.secondary !== null) return 'not a primary that stepped down';
    if (node.core.history.current.primary !== node.id || node.discardWinner !== null) return 'not the last primary, or lost a split brain';
    if (node.diskFailed) return 'its disk failed';
    if (node.needsFullResync) return 'its copy waits for a full resync';
    return null;
  }

  /** VolumeRoles.resume(name, epoch) after a claim won in etcd: the primary that stepped down begins `epoch` from its own log, or why not. */
  private resumeClaimed(node: SimNode, epoch: number): string | null {
    const refusal = this.resumeRefusal(node);
    if (refusal !== null) return refusal;
    assert(epoch > node.core.epoch, `${node.id} took its volume back in epoch ${epoch}, not past its ${node.core.epoch}`);
    this.note(`${node.id} takes its volume back by its claim, from entry ${node.lastSeq + 1}`);
    const history = node.core.promotion(node.id, node.lastSeq, epoch - 1);
    assert(history.current.epoch === epoch, `a claim of epoch ${epoch} gave ${node.id} epoch ${history.current.epoch}`);
    this.becomePrimary(node, history, 'resume');
    return null;
  }

  private note(text: string): void {
    this.trace?.(`${this.queue.now}us ${text}`);
  }

  private node(id: string): SimNode {
    const node = this.nodes.find((each) => each.id === id);
    if (node === undefined) throw new Error(`no node ${id}`);
    return node;
  }

  private draw(range: { minUs: number; maxUs: number }): number {
    return this.prng.between(range.minUs, range.maxUs);
  }

  /** Both run and neither is cut off (the witness always runs). */
  private reachable(a: string, b: string): boolean {
    const up = (id: string): boolean => id === WITNESS || this.node(id).up;
    return a !== b && up(a) && up(b) && (this.cut.get(a) ?? 0) === 0 && (this.cut.get(b) ?? 0) === 0;
  }

  run(): FailoverSummary {
    const activeUs = this.config.opsPerClient * (this.config.thinkUs.maxUs + 2000);
    const lastStep = Math.max(0, ...this.config.steps.map((step) => step.atUs + Math.max(60_000, 'forUs' in step ? step.forUs : 0)));
    // Through etcd a failover waits for the lease: a few of them more.
    const ttlUs = this.config.etcd === null ? 0 : this.config.etcd.ttlMs * this.config.etcd.usPerMs;
    this.horizonUs = Math.max(activeUs, lastStep) + 100_000 + 4 * ttlUs;
    if (this.etcdNetwork !== null) this.etcdNetwork.lossUntilUs = this.horizonUs - 3 * ttlUs;
    for (const client of this.clients) this.scheduleClient(client);
    for (const step of this.config.steps) this.queue.at(step.atUs, `step ${step.kind}`, () => this.perform(step));
    this.queue.at(0, 'tick', () => this.tick());
    for (const node of this.nodes) this.startCoordinator(node);
    let events = 0;
    for (let label = this.queue.step(); label !== null; label = this.queue.step()) {
      events += 1;
      this.trace?.(`${this.queue.now}us ${label}`);
      if (events > 2_000_000) throw new SimFailure('no quiet after 2,000,000 events (a livelock?)');
    }
    this.tally.converged = this.final() ? 1 : 0;
    this.tally.splitBrains = this.checker.splitBrainsFound;
    this.tally.saved = this.checker.saved.size;
    this.tally.lostWithDisk = this.checker.lostWithDisk.size;
    this.tally.lostToForce = this.checker.lostToForce.size;
    this.tally.sharedEpochNumbers = this.checker.sharedEpochNumbers;
    this.tallyCoordination();
    return { config: this.config, events, virtualUs: this.queue.now, checks: this.checker.checks, counts: { ...this.tally } };
  }

  private tallyCoordination(): void {
    const counts = this.coordination;
    this.tally.failovers = counts.failovers;
    this.tally.resumed = counts.resumed;
    this.tally.claims = counts.claimsWon;
    this.tally.claimsLost = counts.claimsLost;
    this.tally.claimsGivenUp = counts.claimsGivenUp;
    this.tally.leaseFences = counts.leaseFences;
    this.tally.namedNewer = counts.namedNewer;
    this.tally.syncedShrunk = counts.syncedShrunk;
    this.tally.syncedGrown = counts.syncedGrown;
    this.tally.syncedRefused = counts.syncedRefused;
    this.tally.syncedUnanswered = counts.syncedUnanswered;
    this.tally.staleReads = counts.staleReads;
    this.tally.released = counts.released;
    this.tally.renewals = counts.renewals;
    this.tally.renewalFailures = counts.renewalFailures;
    this.tally.lateRenewals = counts.lateRenewals;
    const etcd = this.etcd;
    if (etcd === null) return;
    this.tally.leasesExpired = etcd.counts.leasesExpired;
    this.tally.etcdOutages = etcd.counts.outages;
    this.tally.etcdCuts = etcd.counts.cuts;
    this.tally.etcdMessagesLost = etcd.counts.lost;
  }

  // ---- the steps of the schedule ------------------------------------------------------------

  /** The node a step befalls now (null: none fits). */
  private resolveTarget(target: Target): SimNode | null {
    if (target === 'primary') return this.nodes.find((node) => node.up && node.core.role === 'primary' && node.core.history.primaryNow === node.id) ?? null;
    if (target === 'secondary') return this.nodes.find((node) => node.up && node.core.role === 'secondary') ?? null;
    return this.nodes.find((node) => node.id === target) ?? null;
  }

  private perform(step: Step): void {
    switch (step.kind) {
      case 'crash': {
        const node = this.resolveTarget(step.target);
        if (node === null || !node.up) return;
        const wasPrimary = node.serving;
        this.crash(node);
        this.queue.after(step.restartAfterUs, `${node.id} restarts`, () => this.restart(node));
        // The operator answers a dead primary with a promotion by the rules.
        if (wasPrimary) this.queue.after(this.draw(this.config.operatorUs), 'operator promotes', () => this.promote(null, false));
        return;
      }
      case 'partition': {
        const node = this.resolveTarget(step.target);
        if (node === null) return;
        const wasPrimary = node.serving;
        this.tally.partitions += 1;
        this.cut.set(node.id, (this.cut.get(node.id) ?? 0) + 1);
        this.note(`${node.id} cut off`);
        if (step.etcdToo) this.etcd?.cutOff(node.id, step.healAfterUs);
        this.linksDown(node.id, false);
        this.queue.after(step.healAfterUs, `${node.id} healed`, () => this.cut.set(node.id, (this.cut.get(node.id) ?? 1) - 1));
        // With a quorum the operator may promote a node while the old primary is only cut off.
        if (wasPrimary && this.config.quorum === 'majority') this.queue.after(this.draw(this.config.operatorUs), 'operator promotes', () => this.promote(null, false));
        return;
      }
      case 'disk': {
        const node = this.resolveTarget(step.target);
        if (node === null || node.diskFailed) return;
        this.diskFails(node);
        this.queue.after(step.attachAfterUs, `attach on ${node.id}`, () => this.attach(node));
        return;
      }
      case 'promote':
        this.promote(step.node, step.force);
        return;
      case 'switchover':
        this.switchover();
        return;
      case 'etcd-down':
        this.etcd?.goDown(step.forUs);
        return;
      case 'etcd-cut': {
        const node = this.resolveTarget(step.target);
        if (node !== null) this.etcd?.cutOff(node.id, step.forUs);
        return;
      }
    }
  }

  private crash(node: SimNode): void {
    this.tally.crashes += 1;
    node.up = false;
    node.incarnation += 1;
    this.linksDown(node.id, true);
    this.dropWaiting(node);
    node.draining = false;
    node.candidacy = null;
    node.knownAcked.clear();
    node.coordinator?.stop();
    node.coordinator = null;
    if (node.diskFailed) {
      // Its disk had failed: nothing of the volume is readable at its start (until attach).
      this.replaceDisk(node);
    } else {
      node.log.length = node.durablePrefix;
    }
    // A primary starts again after a crash: it restarts its epoch after what it recovered (peers may hold what it lost).
    const history = node.core.history;
    const restarted = this.config.fault === 'renumbers-unmarked' ? null : history.restartAfterCrash(node.id, node.lastSeq);
    node.core = node.open(node.lastSeq, restarted ?? history);
    const role = node.core.role;
    node.diskless = false;
    // A primary's start that was not clean: every peer may hold entries past what it recovered.
    if (role === 'primary') for (const other of this.nodes) if (other !== node) node.divergedAfter.set(other.id, Math.min(node.divergedAfter.get(other.id) ?? node.lastSeq, node.lastSeq));
    this.note(`${node.id} crashed (${role}); its log recovers through ${node.lastSeq}`);
  }

  private restart(node: SimNode): void {
    node.up = true;
    this.note(`${node.id} restarted`);
    this.startCoordinator(node);
  }

  /** Sessions to and from `id` end: it crashed, or its links were cut. */
  private linksDown(id: string, crashed: boolean): void {
    for (const node of this.nodes) {
      for (const [peer, session] of [...node.sessions]) {
        if (node.id === id || peer === id) this.endSession(node, this.node(peer), session.id, !crashed ? 'link lost' : node.id === id ? 'source crashed' : 'peer crashed');
      }
    }
  }

  private endSession(source: SimNode, target: SimNode, session: number, why: string): void {
    if (source.sessions.get(target.id)?.id === session) source.sessions.delete(target.id);
    if (target.following?.session === session) {
      target.following = null;
      if (target.contact !== null && target.contact.source === source.id && target.contact.endedAt === null) {
        // ContactRecord.ended: a session the copy's own end closed (a crash, read back at its start; its disk failed) says nothing of what the source acknowledged after it.
        const sourceWent = why !== 'peer crashed' && why !== 'disk failed';
        target.contact = { ...target.contact, inSync: target.contact.inSync && sourceWent, lastSeq: target.lastSeq, endedAt: String(this.queue.now), endedBy: why };
      }
    }
    this.replyAll(source);
  }

  private diskFails(node: SimNode): void {
    this.tally.diskFailures += 1;
    this.checker.disksFailed += 1;
    node.diskFailed = true;
    if (!node.serving && node.core.role !== 'primary') {
      // A secondary without its disk stops following.
      if (node.following !== null) this.endSession(this.node(node.following.node), node, node.following.session, 'disk failed');
      this.note(`${node.id}'s disk failed (secondary)`);
      return;
    }
    const upToDatePeers = [...node.sessions.values()].filter((session) => session.inSync).length;
    const refusal = disklessRefusal({ mode: this.config.mode, numberedSeq: node.lastSeq, mirroredSeq: node.lastSeq, upToDatePeers });
    if (refusal === null && node.up && node.core.role === 'primary') {
      node.diskless = true;
      this.tally.disklessServed += 1;
      this.note(`${node.id}'s disk failed: it serves from its peers`);
      this.replyAll(node);
      return;
    }
    this.tally.disklessRefused += 1;
    this.note(`${node.id}'s disk failed: the volume fails (${refusal ?? 'not running'})`);
    this.dropWaiting(node);
    for (const [peer, session] of [...node.sessions]) this.endSession(node, this.node(peer), session.id, 'source failed');
    this.queue.after(this.draw(this.config.operatorUs), 'operator promotes', () => this.promote(null, false));
  }

  /** The failed disk is replaced by an empty one: what only it held is gone. */
  private replaceDisk(node: SimNode): void {
    const dropped = node.log.map((entry) => ({ seq: entry.seq, writeId: entry.writeId }));
    node.log = [];
    node.ackedAlone.clear();
    node.divergedAfter.clear();
    node.contact = null;
    node.promise = null;
    this.checker.diskReplaced(dropped, (write) => this.nodes.some((other) => other !== node && other.holds(write)));
  }

  /** `blockmirror attach`: a new disk, filled from an up-to-date peer while serving, or empty to be resynced. */
  private attach(node: SimNode): void {
    if (this.queue.now > this.horizonUs) return;
    if (!node.up) {
      this.queue.after(1000, `attach on ${node.id} (down)`, () => this.attach(node));
      return;
    }
    if (!node.diskFailed) return;
    if (node.diskless && node.core.role === 'primary') {
      const source = [...node.sessions].find(([, session]) => session.inSync);
      if (source === undefined) {
        this.queue.after(1000, `attach on ${node.id} (no up-to-date peer)`, () => this.attach(node));
        return;
      }
      // Filled from the peer: every entry it acknowledged is on the new disk.
      for (const entry of node.log) entry.durable = true;
      node.diskFailed = false;
      node.diskless = false;
      this.tally.attached += 1;
      this.note(`${node.id} attached a new disk, filled from ${source[0]}`);
      this.replyAll(node);
      return;
    }
    this.replaceDisk(node);
    // As a copy started on an empty data directory: a fresh history, resynced in full by the primary.
    // (The cluster file's first primary starts it stepped down: an empty copy never takes writes as the primary of epoch 0.)
    const fresh = EpochHistory.initial(this.config.nodes[0] ?? 'a');
    node.core = node.open(0, fresh.current.primary === node.id ? fresh.stepDown() : fresh);
    node.diskFailed = false;
    node.learning = this.config.fault !== 'forgets-epoch';
    node.needsFullResync = true;
    this.dropWaiting(node);
    this.tally.attached += 1;
    this.note(`${node.id} attached an empty disk`);
  }

  /** The operator's promote: `id`, or the first secondary whose promotion is allowed. */
  private promote(id: string | null, force: boolean): void {
    // Through etcd nobody promotes by hand: a claim does.
    if (this.queue.now > this.horizonUs || this.etcd !== null) return;
    // Forced, the operator picks the copy with the most entries.
    const secondaries = this.nodes.filter((node) => node.core.role === 'secondary');
    if (force) secondaries.sort((x, y) => y.lastSeq - x.lastSeq);
    const candidates = id === null ? secondaries : [this.node(id)];
    const primaryAlive = this.nodes.some((node) => node.serving);
    for (const node of candidates) {
      const refusal = this.promotionRefusal(node, force, primaryAlive);
      if (refusal !== null) {
        this.tally.promoteRefused += 1;
        this.note(`promote ${node.id}${force ? ' --force' : ''} refused: ${refusal}`);
        continue;
      }
      if (this.config.quorum === 'majority' && !force && this.config.fault !== 'passive-votes') {
        this.stand(node);
        return;
      }
      // Forced, a quorum volume's copy takes an epoch past every promise it hears of.
      const above = this.config.quorum === 'majority' ? nextCandidacy(node.core.epoch, node.promise, this.views(node.id)) - 1 : node.core.epoch;
      this.becomePrimary(node, node.core.promotion(node.id, node.lastSeq, above), force ? 'forced' : 'rules');
      return;
    }
    // The rules refused every copy: this operator forces the best one (the one with the most entries).
    if (id === null && !force && this.config.operatorForces) this.promote(null, true);
  }

  /** A quorum volume's copy the rules allow stands as the candidate for the next epoch: promoted once a majority promised it. */
  private stand(node: SimNode): void {
    const epoch = nextCandidacy(node.core.epoch, node.promise, this.views(node.id));
    node.promise = { epoch, to: node.id };
    node.candidacy = { epoch, untilUs: this.queue.now + CANDIDACY_US, incarnation: node.incarnation, force: false };
    this.note(`${node.id} stands for epoch ${epoch}`);
  }

  /** Each tick, a candidate counts its promises: promoted with a majority, refused when its time is up. */
  private candidacyTick(node: SimNode): void {
    const candidacy = node.candidacy;
    if (candidacy === null) return;
    if (!node.up || node.incarnation !== candidacy.incarnation || node.core.role !== 'secondary') {
      node.candidacy = null;
      return;
    }
    const primaryAlive = this.nodes.some((other) => other.serving);
    // Its own vote is gone once it promised a newer epoch to another candidate meanwhile.
    const own = node.promise;
    if (own?.epoch !== candidacy.epoch || own.to !== node.id) {
      node.candidacy = null;
      this.tally.promoteRefused += 1;
      this.note(`promote ${node.id} refused: it promised epoch ${own?.epoch ?? '?'} to ${own?.to ?? '?'} meanwhile`);
      return;
    }
    const refusal = this.promotionRefusal(node, false, primaryAlive, candidacy.epoch);
    if (refusal === null) {
      node.candidacy = null;
      this.becomePrimary(node, node.core.promotion(node.id, node.lastSeq, candidacy.epoch - 1), 'rules');
      return;
    }
    if (this.queue.now < candidacy.untilUs) return;
    node.candidacy = null;
    this.tally.promoteRefused += 1;
    this.note(`promote ${node.id} refused: ${refusal}`);
    if (this.config.operatorForces) this.promote(null, true);
  }

  /** Why `node` may not be promoted now (standing for `candidacy`, when it does), or null. */
  private promotionRefusal(node: SimNode, force: boolean, primaryAlive: boolean, candidacy: number | null = null): string | null {
    if (!node.up || node.diskFailed) return 'not running with a disk';
    if (node.core.role !== 'secondary') return 'not a secondary';
    if (node.following !== null) return 'still streaming from a live primary';
    if (force) return null;
    // Without a quorum, the operator promotes by the rules only a copy that was streaming from
    // its primary when that primary went away (crashed, failed or stepped down: the end its
    // contact record names), and while no node takes writes (docs/operations.md, "Failover").
    if (this.config.quorum === 'off') {
      if (primaryAlive) return 'the primary is alive';
      const ended = node.contact?.endedBy ?? null;
      if (ended !== null && !wentAway.includes(ended)) return `its session with node ${node.contact?.source ?? '?'} ended by "${ended}", not with the primary going away`;
      // ... for the last time: a primary that came back and took writes without it went on.
      const source = this.nodes.find((other) => other.id === node.contact?.source);
      if (source !== undefined && source.lastAnswerUs > Number(node.contact?.endedAt ?? Number.POSITIVE_INFINITY)) return `node ${source.id} took writes after its session with this copy ended`;
    }
    if (this.config.fault !== 'promote-ignores-contact') {
      const lack = mayLack({ name: 'vol', mode: this.config.mode }, node.contact, node.id);
      if (lack !== null) return lack;
    }
    if (this.config.quorum === 'majority') {
      const primary = node.core.history.primaryNow;
      const hears = primary !== null && this.reachable(node.id, primary);
      const check = promotionQuorum(node.id, node.core.epoch, this.members(), this.views(node.id), FRESH_MS, primary, hears, this.echoes.get(node.id) ?? [], candidacy);
      if (!check.ok) return check.reason ?? 'no quorum';
    }
    return null;
  }

  /**
   * `how`: by the rules, forced, a split brain's winner taking over, or a claim won in etcd
   * (by the rules; or `resume`: a primary that stepped down takes its volume back, from its
   * own log as after a clean stop, which held a consistency point).
   */
  private becomePrimary(node: SimNode, history: EpochHistory, how: 'rules' | 'forced' | 'take-over' | 'claim' | 'resume'): void {
    // The promotion takes a consistency point: what the copy holds is durable.
    for (const entry of node.log) entry.durable = true;
    const before = node.core.history;
    node.core.promote(history);
    node.draining = false;
    // Sessions of an earlier epoch end: the peers hear the new history in new ones.
    for (const [peer, session] of [...node.sessions]) this.endSession(node, this.node(peer), session.id, 'a new epoch');
    if (how === 'forced') this.tally.forced += 1;
    else if (how === 'rules') this.tally.byRules += 1;
    this.note(`${node.id} promoted to epoch ${history.current.epoch} from entry ${history.current.firstSeq} (${how})`);
    this.checker.promoted(node.id, history.current.epoch, how === 'claim' || how === 'resume' ? 'rules' : how, (seq) => node.writeAt(seq), (write) => this.inLine(before, write));
  }

  /** The write's epoch (number and primary) is the one `history` (the copy's before its promotion) puts its entry in. */
  private inLine(history: EpochHistory, write: AckedWrite): boolean {
    const start = history.epochOf(write.seq);
    return start.epoch === write.epoch && start.primary === write.epochKey;
  }

  private switchover(): void {
    const primary = this.nodes.find((node) => node.serving);
    if (primary === undefined) return;
    this.tally.switchovers += 1;
    primary.draining = true;
    this.note(`${primary.id} steps down (switchover)`);
    this.finishDemote(primary);
  }

  /** A demotion by command finishes once the requests in flight are answered. */
  private finishDemote(node: SimNode): void {
    if (!node.up || !node.draining || this.queue.now > this.horizonUs) return;
    if (node.waiting.length > 0) {
      this.queue.after(200, `${node.id} drains`, () => this.finishDemote(node));
      return;
    }
    node.draining = false;
    if (node.core.role !== 'primary') return;
    node.core.demote(node.core.history.stepDown());
    for (const [peer, session] of [...node.sessions]) this.endSession(node, this.node(peer), session.id, 'source stepped down');
    this.queue.after(this.draw(this.config.operatorUs), 'operator promotes', () => this.promote(null, false));
  }

  // ---- quorum: the members and what their (ideal) heartbeats say ---------------------------

  private members(): string[] {
    return [...this.config.nodes, ...(this.config.witness ? [WITNESS] : [])];
  }

  private views(self: string): MemberView[] {
    return this.members()
      .filter((member) => member !== self && this.reachable(self, member))
      .map((member) => {
        const node = member === WITNESS ? null : this.node(member);
        return {
          node: member,
          heardAgoMs: 0,
          hears: this.members().filter((other) => this.reachable(member, other)),
          epoch: node === null ? this.witnessEpoch : node.core.epoch,
          role: node === null ? 'witness' : node.learning ? LEARNING : node.core.role,
          synced: this.echoes.get(member) ?? null,
          promise: node === null ? this.witnessPromise : node.promise,
        };
      });
  }

  /** A primary's synced set: itself and the peers streaming in sync. */
  private syncedSet(node: SimNode): string[] {
    return [node.id, ...[...node.sessions].filter(([, session]) => session.inSync).map(([peer]) => peer)];
  }

  /** Heartbeats go round: each member echoes the synced set of the primary it hears, the witness learns epochs. */
  private heartbeats(): void {
    // A copy hears its primary's last entry (ContactRecord.heard).
    for (const node of this.nodes) {
      const contact = node.contact;
      if (contact === null || !this.reachable(node.id, contact.source)) continue;
      const source = this.node(contact.source);
      if (source.core.role === 'primary') node.contact = contactHeard(contact, source.lastSeq);
    }
    for (const node of this.nodes) {
      if (!node.serving) continue;
      const synced = this.syncedSet(node);
      this.echoes.set(node.id, synced);
      for (const member of this.members()) {
        if (!this.reachable(node.id, member)) continue;
        const epoch = member === WITNESS ? this.witnessEpoch : this.node(member).core.epoch;
        // A member that promised a newer epoch ignores what an older one's primary claims.
        if (newerPromise(member === WITNESS ? this.witnessPromise : this.node(member).promise, node.core.epoch) !== null) continue;
        if (epoch !== node.core.epoch) {
          if (member === WITNESS && node.core.epoch > this.witnessEpoch) {
            this.witnessEpoch = node.core.epoch;
            this.witnessPrimary = node.id;
          } else continue;
        }
        this.echoes.set(member, synced);
      }
    }
    // Each member learns the newest epoch or judges the candidates it hears (the shipped
    // memberHeard), and records its promise before its heartbeats name it.
    for (const member of this.members()) {
      const node = member === WITNESS ? null : this.node(member);
      if (node !== null && (!node.up || node.diskFailed || node.core.role === 'primary')) continue;
      const record = node === null ? { promise: this.witnessPromise, learning: false } : { promise: node.promise, learning: node.learning };
      const primary = node === null ? this.witnessPrimary : node.core.history.primaryNow;
      const hearsLive = hearsLivePrimary(member, primary, record.promise, this.views(member), (other) => this.reachable(member, other));
      const state = { self: member, epoch: node === null ? this.witnessEpoch : node.core.epoch, role: node === null ? 'witness' : node.core.role, hearsLivePrimary: hearsLive, echo: this.echoes.get(member) ?? [] };
      const step = memberHeard(record, state, this.members(), this.views(member), FRESH_MS);
      if (step === null) continue;
      if (node === null) this.witnessPromise = step.record.promise;
      else {
        node.promise = step.record.promise;
        node.learning = step.record.learning;
      }
      this.note(`${member} ${step.change}`);
    }
  }

  private quorumOk(node: SimNode): boolean {
    if (this.config.quorum !== 'majority' || this.config.fault === 'no-write-quorum') return true;
    return writeQuorum(node.id, node.core.epoch, this.syncedSet(node), this.members(), this.views(node.id), FRESH_MS).ok;
  }

  // ---- the clock: connections, fencing, heartbeats ------------------------------------------

  private tick(): void {
    this.heartbeats();
    for (const node of this.nodes) this.candidacyTick(node);
    for (const node of this.nodes) {
      if (!node.serving && !(node.up && node.core.role === 'primary' && node.draining)) continue;
      // A primary that hears a newer epoch's primary steps down at once (fenced).
      const newer = this.nodes.find((other) => other.up && other.core.role === 'primary' && other.core.epoch > node.core.epoch && this.reachable(node.id, other.id));
      if (newer !== undefined) {
        this.stepDown(node, `heard ${newer.id}, primary of epoch ${newer.core.epoch}`);
        continue;
      }
      // ... and so does one that hears of a member's promise of a newer epoch.
      const promised = this.config.quorum === 'majority' ? promiseFences(node.core.epoch, this.views(node.id), FRESH_MS) : null;
      if (promised !== null) {
        this.stepDown(node, `${promised.node} promised epoch ${promised.promise?.epoch ?? '?'} to ${promised.promise?.to ?? '?'}`);
        continue;
      }
      for (const peer of this.nodes) {
        if (peer !== node && !node.sessions.has(peer.id) && this.reachable(node.id, peer.id)) this.hello(node, peer);
      }
      this.replyAll(node);
      this.gateTimeouts(node);
    }
    if (this.queue.now < this.horizonUs) this.queue.after(TICK_US, 'tick', () => this.tick());
  }

  /** A primary is fenced: it stops taking writes (what waits is never answered) and ends its sessions. */
  private stepDown(node: SimNode, why: string): void {
    if (node.core.role !== 'primary') return;
    this.tally.fenced += 1;
    this.note(`${node.id} steps down: ${why}`);
    this.dropWaiting(node);
    node.draining = false;
    node.diskless = false;
    // Through etcd its history says it stepped down, as VolumeRoles.stepDown writes it: it
    // takes writes again only if promoted (a claim), and follows the next primary meanwhile.
    node.core.demote(this.etcd !== null ? node.core.history.stepDown() : node.core.history);
    for (const [peer, session] of [...node.sessions]) this.endSession(node, this.node(peer), session.id, 'source stepped down');
  }

  // ---- messages -------------------------------------------------------------------------------

  /** Sends from `from` to `to`; delivered in order, unless the link went down or either restarted. */
  private send(from: SimNode, to: SimNode, label: string, deliver: () => void): void {
    if (!this.reachable(from.id, to.id)) return;
    const key = `${from.id}>${to.id}`;
    const atUs = Math.max(this.queue.now + this.draw(this.config.networkUs), this.lastDelivery.get(key) ?? 0);
    this.lastDelivery.set(key, atUs);
    const incarnations = [from.incarnation, to.incarnation];
    this.queue.at(atUs, `${label} ${from.id}->${to.id}`, () => {
      if (from.incarnation !== incarnations[0] || to.incarnation !== incarnations[1] || !this.reachable(from.id, to.id)) return;
      deliver();
    });
  }

  private hello(source: SimNode, target: SimNode): void {
    const session: OutSession = { id: this.nextSession++, phase: 'hello', from: 0, acked: 0, caughtUpAt: 0, inSync: false };
    source.sessions.set(target.id, session);
    const starts = source.core.history.starts.map((start) => ({ ...start }));
    const lastSeq = source.lastSeq;
    this.send(source, target, 'hello', () => {
      if (source.sessions.get(target.id) !== session) return;
      this.helloArrived(target, source, session.id, starts, lastSeq);
    });
  }

  /** The target's side of a HELLO, as VolumeRoles.check and attach decide it. */
  private helloArrived(target: SimNode, source: SimNode, session: number, starts: EpochStart[], sourceLastSeq: number): void {
    if (target.diskFailed) return this.refuse(target, source, session, 'its disk failed');
    const verdict = target.core.judgeSource(source.id, starts);
    const winner = target.following === null && target.discardWinner === source.id;
    const theirs = EpochHistory.of(starts);
    // A copy that promised a newer epoch refuses an older one's primary, as stale (VolumeRoles.check).
    if (!winner && newerPromise(target.promise, theirs.current.epoch) !== null) {
      this.send(target, source, 'stale-epoch', () => {
        if (source.sessions.get(target.id)?.id !== session) return;
        this.stepDown(source, `${target.id} promised epoch ${target.promise?.epoch ?? '?'}`);
      });
      return;
    }
    const joined = target.core.history.knowsEpochOf(theirs) ? target.core.history.joinedWith(theirs) : theirs;
    // VolumeRoles.check: whether the claim is taken at all (the shipped admitsSource).
    if (!admitsSource(verdict, { following: target.following !== null, winner, splitFound: () => this.splitWith(target, joined, sourceLastSeq) !== null })) {
      if (verdict.kind !== 'stale') return this.refuse(target, source, session, verdict.kind);
      this.send(target, source, 'stale-epoch', () => {
        if (source.sessions.get(target.id)?.id !== session) return;
        this.stepDown(source, `${target.id} knows epoch ${target.core.epoch}`);
      });
      return;
    }
    // ReplicaTarget.attach: the session of the primary it follows, in its epoch.
    if (verdict.kind === 'current' && !winner) {
      if (target.following !== null) this.endSession(this.node(target.following.node), target, target.following.session, 'a new session');
      target.following = { node: source.id, session };
      this.ready(target, source, session);
      return;
    }
    // VolumeRoles.attach: a copy that is not following looks for a split brain first.
    let discard: number | null = null;
    let history: EpochHistory | null = verdict.kind === 'newer' ? verdict.history : null;
    const found = target.following === null ? this.splitWith(target, joined, sourceLastSeq) : null;
    if (found !== null) {
      const decision: SplitBrainDecision = target.discardWinner === source.id ? 'discard-here' : decideSplitBrain(this.config.afterSplitBrain, found);
      this.note(`split brain found by ${target.id} with ${source.id}: ${found.hereEntries} entries here, ${found.otherEntries} there past ${found.sharedSeq}; ${decision}`);
      this.checker.splitBrain(target.id, source.id, this.ackedPast(target, found.sharedSeq) && this.ackedPast(source, found.sharedSeq));
      if (decision !== 'discard-here') {
        this.send(target, source, 'split-brain', () => {
          if (source.sessions.get(target.id)?.id !== session) return;
          this.splitBrainTold(source, target, decision === 'discard-other');
        });
        if (decision === 'disconnect') {
          if (verdict.kind === 'newer' && target.core.role === 'primary') this.stepDown(target, `${source.id} is primary in epoch ${theirs.current.epoch}; split brain`);
          this.leaveApart(target.id, source.id, found);
        } else {
          this.takeOver(target, source.id, found.sharedSeq, theirs.current.epoch);
        }
        return;
      }
      target.discardWinner = source.id;
      discard = found.sharedSeq;
      history = joined;
    } else if (target.discardWinner === source.id && verdict.kind !== 'newer') {
      history = joined;
      discard = compareCopies({ history: target.core.history, lastSeq: target.lastSeq }, { history: theirs, lastSeq: sourceLastSeq }).sharedSeq;
    }
    if (history === null) return this.refuse(target, source, session, 'cannot follow now');
    if (target.following !== null) this.endSession(this.node(target.following.node), target, target.following.session, 'a newer primary');
    this.follow(target, source, history, discard);
    target.following = { node: source.id, session };
    this.ready(target, source, session);
  }

  /** `node` holds a write it acknowledged itself past entry `seq`. */
  private ackedPast(node: SimNode, seq: number): boolean {
    return node.log.slice(seq).some((entry) => this.checker.acked.get(entry.writeId)?.node === node.id);
  }

  /** The split brain `here` has with a source of history `theirs`, or null (the fault split-brain-unseen: never one). */
  private splitWith(here: SimNode, theirs: EpochHistory, otherLastSeq: number): SplitBrain | null {
    if (this.config.fault === 'split-brain-unseen') return null;
    return splitBrainBetween(
      {
        node: here.id,
        history: here.core.history,
        lastSeq: here.lastSeq,
        mode: this.config.mode,
        ackedAloneFrom: (peer) => here.ackedAlone.get(peer) ?? null,
        divergedAfter: (peer) => here.divergedAfter.get(peer) ?? null,
      },
      { node: theirs.current.primary, history: theirs, lastSeq: otherLastSeq },
    );
  }

  /** VolumeRoles.follow: a primary steps down, the copy takes the history and its log ends at the shared entry. */
  private follow(target: SimNode, source: SimNode, history: EpochHistory, discard: number | null): void {
    if (target.core.role === 'primary') this.stepDown(target, `follows ${source.id} in epoch ${history.current.epoch}`);
    // Entries past what it recovered at a restart as primary are not the new primary's under the same numbers (its trail names them).
    const compared = compareCopies({ history: target.core.history, lastSeq: target.lastSeq }, { history, lastSeq: history.current.firstSeq - 1 }).sharedSeq;
    const sharedSeq = discard ?? Math.min(compared, target.divergedAfter.get(source.id) ?? Number.POSITIVE_INFINITY);
    if (discard !== null) {
      this.tally.resolved += 1;
      this.checker.splitEnded(target.id, source.id);
      this.removeSplit(target.id, source.id);
      this.note(`${target.id} discards its writes past ${sharedSeq} (saved) and follows ${source.id}`);
    }
    const forcedLine = history.starts.some((start) => start.firstSeq > sharedSeq && this.checker.forced(start.epoch));
    this.truncate(target, sharedSeq, discard !== null, `follows ${source.id} in epoch ${history.current.epoch}`, forcedLine);
    // Its records as a primary go with its role (the mirror ledger of a copy that follows is made anew).
    target.ackedAlone.clear();
    target.divergedAfter.clear();
    if (history !== target.core.history) target.core.learn(history, discard !== null);
    target.followWith(target.core);
    target.discardWinner = discard !== null ? source.id : target.discardWinner;
  }

  /** The log ends at `seq`. `forcedLine`: the copy follows a line a forced promotion began, which may lose writes it did not acknowledge itself. */
  private truncate(node: SimNode, seq: number, saving: boolean, why: string, forcedLine = false): void {
    if (node.lastSeq <= seq) return;
    const dropped = node.log.slice(seq).map((entry): CheckedEntry => ({ seq: entry.seq, writeId: entry.writeId }));
    const aloneFrom = Math.min(...node.ackedAlone.values());
    this.checker.dropping(
      node.id,
      dropped,
      saving,
      why,
      (write) => this.nodes.some((other) => other !== node && other.holds(write)),
      forcedLine,
      (write) => write.seq >= aloneFrom,
    );
    node.log.length = seq;
    node.core.local.restartAt(seq);
  }

  private refuse(target: SimNode, source: SimNode, session: number, why: string): void {
    this.note(`${target.id} refuses ${source.id}: ${why}`);
    this.send(target, source, 'refused', () => {
      if (source.sessions.get(target.id)?.id === session) source.sessions.delete(target.id);
    });
  }

  /** What the source does with the target's SPLIT_BRAIN: when its writes are to be discarded, it steps down and waits for the winner. */
  private splitBrainTold(source: SimNode, target: SimNode, discardSource: boolean): void {
    source.sessions.delete(target.id);
    if (!discardSource) return;
    source.discardWinner = target.id;
    if (source.core.role === 'primary') this.stepDown(source, `split brain: ${target.id} wins`);
  }

  /** A split brain left apart: the operator resolves it later (the copy with fewer writes loses). */
  private leaveApart(here: string, other: string, found: SplitBrain): void {
    if (this.pendingSplits.some((split) => split.nodes.includes(here) && split.nodes.includes(other))) return;
    this.pendingSplits.push({ nodes: [here, other], found });
    const after = this.config.resolveAfterUs;
    if (after !== null) this.queue.after(after, 'operator resolves', () => this.resolve(here, other, found));
  }

  private removeSplit(a: string, b: string): void {
    const at = this.pendingSplits.findIndex((split) => split.nodes.includes(a) && split.nodes.includes(b));
    if (at >= 0) this.pendingSplits.splice(at, 1);
  }

  /** `blockmirror resolve`: the copy with fewer entries past the fork is discarded; the winner takes over if it stepped down. */
  private resolve(here: string, other: string, found: SplitBrain): void {
    if (this.queue.now > this.horizonUs || !this.pendingSplits.some((split) => split.nodes.includes(here) && split.nodes.includes(other))) return;
    const [loser, winner] = found.hereEntries <= found.otherEntries ? [this.node(here), this.node(other)] : [this.node(other), this.node(here)];
    if (!loser.up || !winner.up) {
      this.queue.after(1000, 'operator resolves (a node is down)', () => this.resolve(here, other, found));
      return;
    }
    this.note(`operator resolves: ${loser.id} discards, ${winner.id} wins`);
    loser.discardWinner = winner.id;
    if (loser.core.role === 'primary') this.stepDown(loser, 'resolve: its writes are discarded');
    if (winner.core.role !== 'primary' || winner.core.history.primaryNow !== winner.id) this.takeOver(winner, loser.id, found.sharedSeq, loser.core.epoch);
  }

  /** VolumeRoles.takeOver: the winner that stepped down takes writes again in an epoch above the loser's. */
  private takeOver(node: SimNode, loser: string, sharedSeq: number, aboveEpoch: number): void {
    if (!node.up || node.diskFailed) return;
    if (node.core.role === 'primary' && node.core.history.primaryNow === node.id && node.core.epoch > aboveEpoch) return;
    // Through etcd, as VolumeRoles.takeOver does: the primary steps down first (its replies in flight fail).
    if (node.core.role === 'primary' && this.etcd !== null) this.stepDown(node, `split brain with ${loser}: it wins in a new epoch`);
    if (node.core.role === 'primary') node.core.demote();
    node.following = null;
    const history = node.core.promotion(node.id, node.lastSeq, aboveEpoch);
    node.divergedAfter.set(loser, Math.min(node.divergedAfter.get(loser) ?? sharedSeq, sharedSeq));
    this.becomePrimary(node, history, 'take-over');
  }

  private ready(target: SimNode, source: SimNode, session: number): void {
    const lastSeq = target.lastSeq;
    // ContactRecord.started: a session is up, not in sync until the primary says so.
    target.contact = { source: source.id, epoch: source.core.epoch, inSync: false, lastSeq, sourceLastSeq: null, endedAt: null, endedBy: null };
    this.send(target, source, 'ready', () => {
      const out = source.sessions.get(target.id);
      if (out?.id !== session || out.phase !== 'hello') return;
      const from = Math.min(lastSeq, source.lastSeq, source.divergedAfter.get(target.id) ?? Number.POSITIVE_INFINITY);
      out.phase = 'starting';
      out.from = from;
      const epoch = source.core.epoch;
      this.send(source, target, `start ${from}`, () => this.started(target, source, session, from, epoch));
      for (let seq = from + 1; seq <= source.lastSeq; seq += 1) this.sendEntry(source, target, out, seq);
      out.phase = 'streaming';
      out.caughtUpAt = source.lastSeq;
    });
  }

  private started(target: SimNode, source: SimNode, session: number, from: number, epoch: number): void {
    if (target.following?.session !== session) return;
    this.truncate(target, from, false, `START from ${source.id}`);
    if (target.contact?.source === source.id && target.contact.endedAt === null) target.contact = { ...target.contact, epoch, lastSeq: from };
    this.acknowledge(target);
  }

  private sendEntry(source: SimNode, target: SimNode, session: OutSession, seq: number): void {
    const entry = source.log[seq - 1];
    assert(entry !== undefined, `no entry ${seq} on ${source.id}`);
    const copy = { seq: entry.seq, epoch: entry.epoch, writeId: entry.writeId, block: entry.block };
    this.send(source, target, `entry ${seq}`, () => {
      if (target.following?.session !== session.id) return;
      // An entry numbered in an epoch later than the one the copy knows is refused (older ones come with a catch-up).
      if (target.core.epochVerdict(copy.epoch) === 'newer') throw new SimFailure(`${target.id} was sent entry ${seq} of epoch ${copy.epoch}, newer than its ${target.core.epoch}`);
      if (seq !== target.lastSeq + 1) throw new SimFailure(`${target.id} was sent entry ${seq} after ${target.lastSeq}`);
      target.core.local.acceptSeq(seq);
      const stored: Entry = { ...copy, durable: false };
      target.log.push(stored);
      this.diskWrite(target, stored, () => this.acknowledge(target));
    });
  }

  /** A disk completes writes in order; a crash loses what it had not completed. */
  private diskWrite(node: SimNode, entry: Entry, done: () => void): void {
    const incarnation = node.incarnation;
    const atUs = Math.max(this.queue.now + this.draw(this.config.diskUs), node.diskUs);
    node.diskUs = atUs;
    this.queue.at(atUs, `${node.id} writes ${entry.seq}`, () => {
      if (node.incarnation !== incarnation || node.diskFailed || node.log[entry.seq - 1] !== entry) return;
      entry.durable = true;
      done();
    });
  }

  /** A following copy acknowledges what it holds durably. */
  private acknowledge(target: SimNode): void {
    const following = target.following;
    if (following === null) return;
    const source = this.node(following.node);
    const seq = target.durablePrefix;
    this.send(target, source, `ack ${seq}`, () => {
      const out = source.sessions.get(target.id);
      if (out?.id !== following.session || out.phase !== 'streaming' || seq < out.from) return;
      out.acked = Math.max(out.acked, seq);
      source.knownAcked.set(target.id, Math.max(source.knownAcked.get(target.id) ?? 0, seq));
      if (seq >= out.from) source.divergedAfter.delete(target.id);
      if (!out.inSync && out.acked >= out.caughtUpAt) {
        out.inSync = true;
        // The peer holds everything: the ledger's mark goes (MirrorLedger.clearIfCurrent).
        source.ackedAlone.delete(target.id);
        this.send(source, target, 'in-sync', () => {
          if (target.following?.session !== following.session || target.contact?.source !== source.id) return;
          target.contact = { ...target.contact, inSync: true };
          // A copy on a new disk holds all of it now: its full resync is done.
          target.needsFullResync = false;
        });
      }
      this.replyAll(source);
    });
  }

  // ---- clients ------------------------------------------------------------------------------

  private scheduleClient(client: Client): void {
    if (client.busy || client.opsLeft === 0) return;
    client.busy = true;
    this.queue.after(this.draw(this.config.thinkUs), `client ${client.id} sends`, () => this.sendWrite(client));
  }

  private sendWrite(client: Client): void {
    const node = this.node(client.node);
    const request: Request = {
      client,
      writeId: this.nextWriteId++,
      block: this.prng.below(this.config.blocks),
      node: node.id,
      incarnation: node.incarnation,
      seq: 0,
      epoch: 0,
      arrivedUs: 0,
      mirrored: false,
    };
    this.queue.after(this.prng.between(5, 50), `write ${request.writeId} arrives at ${node.id}`, () => this.arrived(node, request, client));
  }

  /** Requests never to be answered: their clients see an error and try again. */
  private dropWaiting(node: SimNode): void {
    for (const request of node.waiting.splice(0)) this.retry(request.client);
  }

  /** The client's connection failed or was refused: it tries the next node after a while. */
  private retry(client: Client): void {
    this.tally.refused += 1;
    const at = this.config.nodes.indexOf(client.node);
    client.node = this.config.nodes[(at + 1) % this.config.nodes.length] ?? client.node;
    client.busy = false;
    if (this.queue.now > this.horizonUs) return;
    this.queue.after(this.prng.between(200, 2000), `client ${client.id} retries`, () => this.scheduleClient(client));
  }

  private arrived(node: SimNode, request: Request, client: Client): void {
    if (!node.up || node.incarnation !== request.incarnation || !node.serving || node.core.refusal() !== null || this.strictMissing(node) !== null) return this.retry(client);
    request.seq = node.core.local.assignSeq();
    request.epoch = node.core.epoch;
    request.arrivedUs = this.queue.now;
    const entry: Entry = { seq: request.seq, epoch: request.epoch, writeId: request.writeId, block: request.block, durable: false };
    node.log.push(entry);
    node.waiting.push(request);
    if (!node.diskless) this.diskWrite(node, entry, () => this.replyAll(node));
    for (const [peer, session] of node.sessions) if (session.phase === 'streaming') this.sendEntry(node, this.node(peer), session, request.seq);
    this.replyAll(node);
  }

  /** A strict volume's primary refuses changes while a replica does not stream in sync (MirrorSource.strictMissing), or null. */
  private strictMissing(node: SimNode): string | null {
    if (!this.config.strict) return null;
    for (const peer of this.nodes) {
      if (peer === node) continue;
      const session = node.sessions.get(peer.id);
      if (session?.phase !== 'streaming' || !session.inSync) return `replica ${peer.id} is not in sync and the volume is strict`;
    }
    return null;
  }

  /** Answers every waiting request whose write is where the mode needs it. */
  private replyAll(node: SimNode): void {
    if (!node.up || node.core.role !== 'primary' || (node.diskFailed && !node.diskless)) return;
    // A strict volume fails what waits for its peers once a replica is not in sync (the change stays in the log, unacknowledged).
    if (node.waiting.some((request) => !request.mirrored) && this.strictMissing(node) !== null) {
      for (const request of node.waiting.filter((each) => !each.mirrored)) this.retry(request.client);
      node.waiting.splice(0, node.waiting.length, ...node.waiting.filter((each) => each.mirrored));
    }
    for (let index = 0; index < node.waiting.length; ) {
      const request = node.waiting[index];
      assert(request !== undefined);
      if (!this.replyMayLeave(node, request)) {
        index += 1;
        continue;
      }
      node.waiting.splice(index, 1);
      this.answer(node, request);
    }
  }

  private replyMayLeave(node: SimNode, request: Request): boolean {
    // Through etcd the reply, once mirrored, passes the LeaseGate (MirroredVolume.finish):
    // only while this node holds the volume under a lease it knows to live, and the synced
    // set names no copy the reply did not wait for (the peers counted now, at the gate).
    if (this.etcd !== null) {
      request.mirrored ||= this.mirrored(node, request);
      return request.mirrored && node.coordinator?.holds() === true;
    }
    return this.mirrored(node, request) && this.quorumOk(node);
  }

  /** The request's change is where the mode needs it: durable here and acknowledged by every streaming peer (sync), or by an up-to-date one (diskless). */
  private mirrored(node: SimNode, request: Request): boolean {
    const entry = node.log[request.seq - 1];
    if (entry === undefined || entry.writeId !== request.writeId) return false;
    if (!node.diskless && !entry.durable) return false;
    const sessions = [...node.sessions.values()].filter((session) => session.phase === 'streaming');
    if (this.config.mode === 'sync' && sessions.some((session) => session.acked < request.seq)) return false;
    if (node.diskless && !sessions.some((session) => session.inSync && session.acked >= request.seq)) return false;
    return true;
  }

  /** Through etcd, a reply that waited at the closed lease gate for as long as a lease lives fails (ERR_FENCED): its client tries again. */
  private gateTimeouts(node: SimNode): void {
    const coordinator = node.coordinator;
    if (coordinator === null || coordinator.holds(false)) return;
    for (let index = 0; index < node.waiting.length; ) {
      const request = node.waiting[index];
      assert(request !== undefined);
      if (this.queue.now - request.arrivedUs < coordinator.gateWaitUs) {
        index += 1;
        continue;
      }
      node.waiting.splice(index, 1);
      this.tally.gateRefused += 1;
      this.retry(request.client);
    }
  }

  private answer(node: SimNode, request: Request): void {
    let alone = true;
    for (const peer of this.nodes) {
      if (peer === node) continue;
      const session = node.sessions.get(peer.id);
      const counted = this.config.mode === 'sync' && session !== undefined && session.phase === 'streaming' && session.acked >= request.seq;
      if (counted) alone = false;
      // MirrorLedger.replying: a reply that leaves without the peer is recorded first.
      else if (this.config.mode === 'sync' && !node.ackedAlone.has(peer.id)) node.ackedAlone.set(peer.id, (node.knownAcked.get(peer.id) ?? 0) + 1);
    }
    this.tally.acknowledged += 1;
    node.lastAnswerUs = this.queue.now;
    const start = node.core.history.epochOf(request.seq);
    this.checker.acknowledged({ writeId: request.writeId, node: node.id, epoch: request.epoch, epochKey: start.primary, seq: request.seq, block: request.block, alone: alone || this.config.mode === 'async' });
    request.client.opsLeft -= 1;
    request.client.busy = false;
    this.scheduleClient(request.client);
  }

  // ---- the end --------------------------------------------------------------------------------

  private final(): boolean {
    this.checker.final((write) => this.nodes.some((node) => node.holds(write)));
    // Two copies that can reach each other, one of them a primary, each holding acknowledged writes the other lacks, were found.
    for (const x of this.nodes) {
      for (const y of this.nodes) {
        if (x.id >= y.id || !this.reachable(x.id, y.id) || !(x.serving || y.serving)) continue;
        // A copy that follows a third one is that one's to defend (it holds that line now).
        if ((x.following !== null && x.following.node !== y.id) || (y.following !== null && y.following.node !== x.id)) continue;
        const alone = (write: AckedWrite): boolean => {
          if (this.config.mode === 'async') return true;
          const acker = write.node === x.id ? x : y;
          return (acker.ackedAlone.get(acker === x ? y.id : x.id) ?? Number.POSITIVE_INFINITY) <= write.seq;
        };
        this.checker.detected(x.id, y.id, (write) => x.holds(write), (write) => y.holds(write), alone);
      }
    }
    const primaries = this.nodes.filter((node) => node.serving);
    this.tally.leaderless = primaries.length === 0 ? 1 : 0;
    const everyoneUp = this.nodes.every((node) => node.up && !node.diskFailed) && [...this.cut.values()].every((count) => count === 0);
    const primary = primaries[0];
    if (primaries.length !== 1 || primary === undefined || this.pendingSplits.length > 0 || !everyoneUp) return false;
    let converged = true;
    for (const node of this.nodes) {
      if (node === primary) continue;
      const session = primary.sessions.get(node.id);
      if (session === undefined || session.phase !== 'streaming') {
        // A copy that stays apart (the third copy of a discarded line): tallied, not failed.
        converged = false;
        continue;
      }
      if (node.lastSeq !== primary.lastSeq) throw new SimFailure(`(c) ${node.id} follows ${primary.id} but holds ${node.lastSeq} entries of its ${primary.lastSeq}`);
      for (let seq = 1; seq <= primary.lastSeq; seq += 1) {
        if (node.writeAt(seq) !== primary.writeAt(seq)) throw new SimFailure(`(c) ${node.id}'s entry ${seq} is write ${String(node.writeAt(seq))}, ${primary.id}'s is write ${String(primary.writeAt(seq))}`);
      }
    }
    return converged;
  }
}

export function runFailover(config: FailoverConfig, trace: ((line: string) => void) | null = null): FailoverSummary {
  return new FailoverCluster(config, trace).run();
}
