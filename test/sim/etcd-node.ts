// One node's side of coordination through etcd in the failover simulator, as
// src/server/coordinator.ts carries it out, over the simulated etcd of etcd-model.ts: the
// decisions are the shipped ones of src/core/lease.ts (HeldLease, claimsNow,
// preferredCandidate, claimedEpoch, syncedCovers, syncedAdmits, sameNodes, the keys'
// codecs), the loops around them are the coordinator's, step for step:
//
//   - the renewal loop: it grants a lease (none held) or renews it, waiting for a renewal's
//     answer at most a quarter lease (1 s at most); a renewal confirmed counts from when it
//     was sent, on this node's clock (HeldLease.confirmed), even when its answer comes after
//     the try gave up; etcd's "no such lease" loses it (HeldLease.lost), every key held under
//     it and the candidacy announced under it; then a primary whose lease may have expired
//     steps down (`fenceLapsed`); the next try comes a quarter lease after this one began, or
//     within 200 ms when this one failed;
//   - the watch loop: every `watchEveryMs` it reads the keys and takes one step of the
//     volume: the primary holds its key (or claims it, absent, in its own epoch) and, in sync
//     mode, asks etcd to change the `synced` set when the copies up to date changed, or steps
//     down when etcd names a newer epoch; a copy that is no longer the primary releases its own
//     key; a secondary withdraws its candidacy once a primary is there, and while the volume
//     has none, if it may claim (a copy that follows: the rules allow it; a primary that
//     stepped down: etcd's `epoch` names its own claim and it may take its volume back) and
//     `synced` names it, announces itself under its lease, claims when `claimsNow` says so
//     (the claim writes `synced` as itself alone, version 0), and is promoted to exactly the
//     epoch it took, or takes its volume back in it (or releases the claim when that is
//     refused).
//
// A reply passes the node's LeaseGate only while `holds()`: the primary, holding the key as
// last read in its epoch, with `HeldLease.valid` on its own clock, and in sync mode with
// every copy etcd's `synced` may name among those the reply waited for (`syncedCovers`):
// the value it knows, and the copies of its changes whose answers it has not had
// (`pending`); when one is not, `synced` is shrunk first and the reply waits. A change of
// `synced` (one at a time) compares the holder's key and the value it replaces, and carries
// the next version; only its confirmation sets the value the node knows and clears
// `pending`. A read updates that value only if no change of `synced` was under way when it
// was sent and none started before it was processed (`syncedFresh`); the holder asks to
// grow or shrink only on such a read.
//
// Every call has the coordinator's deadline; an answer after it is ignored (etcd may still
// have done what was asked: a transaction whose answer was lost or late applied or not, the
// node cannot tell), but for a renewal's, which still moves the lease's bound on. A request
// may reach etcd late, after requests sent later.
// Clocks: each node's runs at the virtual clock's rate from an offset of its own, new at
// each start; only differences on one clock are used, so offsets do not matter.

import {
  claimedEpoch, claimsNow, encodeClaim, encodeSynced, HeldLease, leaseMarginMs, parseCandidate, parseEpochClaim, parsePrimaryClaim, parseSyncedClaim, renewEveryMs,
  sameNodes, syncedAdmits, syncedCovers, watchEveryMs, type Candidate, type EpochClaim, type PrimaryClaim, type SyncedClaim,
} from '../../src/core/lease.js';
import type { EventQueue } from './event-queue.js';
import { CANDIDATES, EPOCH_KEY, PRIMARY_KEY, SYNCED_KEY, type EtcdAnswer, type EtcdRequest, type SimEtcd } from './etcd-model.js';

/** What the coordinator asks of its node and volume (failover.ts answers from its SimNode). */
export interface CoordinatedNode {
  readonly id: string;
  readonly priority: number;
  /** The volume's replicas (every data node). */
  readonly replicas: readonly string[];
  readonly mode: 'sync' | 'async';
  /** This incarnation's monotonic clock, in microseconds. */
  clockUs(): number;
  /** `served.role === 'primary'` with its mirror running (not stepping down). */
  isPrimary(): boolean;
  /** A role change is under way (`served.changing`). */
  changing(): boolean;
  /** `served.role === 'secondary'`. */
  isSecondary(): boolean;
  /** `served.target !== null`: a secondary that follows (not a primary that stepped down and waits for the next one). */
  hasTarget(): boolean;
  epoch(): number;
  durableSeq(): number;
  /** MirrorEngine.countedPeers: the peers a reply waits for now (in sync: streaming or catching up). */
  countedPeers(): string[];
  /** MirrorEngine.upToDatePeers: streaming, in sync, up to date. */
  upToDatePeers(): string[];
  /** VolumeRoles.promotable: why this copy may not be promoted by the rules now, or null. */
  promotable(): string | null;
  /** VolumeRoles.resumable: why this copy, a primary that stepped down, may not take its volume back now, or null. */
  resumable(): string | null;
  /** VolumeRoles.stepDown. */
  stepDown(reason: string, byLease: boolean): void;
  /** VolumeRoles.promote(name, false, epoch): null when promoted, else why not. */
  promoteTo(epoch: number): string | null;
  /** VolumeRoles.resume(name, epoch): null when it took its volume back, else why not. */
  resume(epoch: number): string | null;
}

/** Deliberate faults of the node's side (failover-config.ts). */
export interface CoordinatorFaults {
  /** The primary never asks its HeldLease: neither its replies nor its fence do. */
  ignoresLease: boolean;
}

export interface CoordinatorCounts {
  renewals: number;
  renewalFailures: number;
  /** Renewals confirmed only after their try gave up (they still count). */
  lateRenewals: number;
  leasesLost: number;
  /** Claims won: a primary taking its key in its own epoch, or a secondary the next one. */
  claimsWon: number;
  claimsLost: number;
  /** Secondaries promoted by their claim (failovers). */
  failovers: number;
  /** Primaries that stepped down and took their volume back by a claim. */
  resumed: number;
  /** Claims given up when the promotion after them was refused. */
  claimsGivenUp: number;
  announced: number;
  /** Candidacies withdrawn once a primary was there. */
  withdrawn: number;
  released: number;
  /** Primaries that stepped down because their lease may have expired. */
  leaseFences: number;
  /** Primaries that stepped down because etcd named a newer epoch. */
  namedNewer: number;
  /** Changes of the synced set etcd confirmed: shrunk (before a reply, or as copies dropped), or grown. */
  syncedShrunk: number;
  syncedGrown: number;
  /** Changes of the synced set etcd refused (the value had moved on), or whose answer never came. */
  syncedRefused: number;
  syncedUnanswered: number;
  /** Reads whose `synced` was not taken: a change of it raced them. */
  staleReads: number;
  /** Calls that got no answer within their deadline. */
  timeouts: number;
}

export function emptyCoordinatorCounts(): CoordinatorCounts {
  return {
    renewals: 0, renewalFailures: 0, lateRenewals: 0, leasesLost: 0, claimsWon: 0, claimsLost: 0, failovers: 0, resumed: 0, claimsGivenUp: 0, announced: 0, withdrawn: 0, released: 0,
    leaseFences: 0, namedNewer: 0, syncedShrunk: 0, syncedGrown: 0, syncedRefused: 0, syncedUnanswered: 0, staleReads: 0, timeouts: 0,
  };
}

export interface CoordinatorTiming {
  ttlMs: number;
  /** Simulated microseconds per millisecond of the lease's figures. */
  usPerMs: number;
}

/** What one volume's keys said at the last read, and what this node does about them (coordinator.ts VolumeState). */
interface VolumeState {
  primary: PrimaryClaim | null;
  epoch: number;
  holding: boolean;
  heldEpoch: number;
  /** That key's text (the holder's transactions require it unchanged). */
  claimText: string | null;
  /** The `synced` key's value as this node knows it (its own confirmed change, or a read no change of its raced), and its text. */
  synced: SyncedClaim | null;
  syncedText: string | null;
  /** Copies named by this holder's changes of `synced` whose answers it has not had: etcd may name them too, until a later change is confirmed. */
  pending: Set<string>;
  /** A change of `synced` under way (one at a time). */
  syncedWrite: boolean;
  vacantSinceUs: number | null;
  announced: boolean;
}

export class SimCoordinator {
  private readonly held: HeldLease;
  private leaseId: string | null = null;
  private readonly state: VolumeState = {
    primary: null, epoch: 0, holding: false, heldEpoch: 0, claimText: null, synced: null, syncedText: null, pending: new Set(), syncedWrite: false, vacantSinceUs: null, announced: false,
  };
  /** Changes of `synced` started, and under way: a read sent while one was (or answered after one started) may be stale. */
  private syncedChangesStarted = 0;
  private syncedChangesUnderWay = 0;
  private stopped = false;
  private readonly ttlUs: number;
  private readonly renewEveryUs: number;
  private readonly renewWaitUs: number;
  private readonly renewRetryUs: number;
  private readonly watchEveryUs: number;
  private readonly callTimeoutUs: number;
  private readonly ttlMs: number;
  private readonly usPerMs: number;

  constructor(
    private readonly node: CoordinatedNode,
    private readonly etcd: SimEtcd,
    private readonly queue: EventQueue,
    timing: CoordinatorTiming,
    private readonly faults: CoordinatorFaults,
    private readonly counts: CoordinatorCounts,
    private readonly note: (text: string) => void,
    /** Whether the loops go on (the run's horizon not reached). */
    private readonly active: () => boolean,
  ) {
    const { ttlMs, usPerMs } = timing;
    this.ttlMs = ttlMs;
    this.usPerMs = usPerMs;
    this.ttlUs = ttlMs * usPerMs;
    this.held = new HeldLease(this.ttlUs, leaseMarginMs(ttlMs) * usPerMs);
    const everyMs = renewEveryMs(ttlMs);
    this.renewEveryUs = everyMs * usPerMs;
    this.renewWaitUs = Math.min(everyMs, 1000) * usPerMs;
    this.renewRetryUs = Math.min(200, Math.floor(everyMs / 4)) * usPerMs;
    this.watchEveryUs = watchEveryMs(ttlMs) * usPerMs;
    this.callTimeoutUs = Math.max(500, Math.min(2000, Math.floor(ttlMs / 4))) * usPerMs;
  }

  start(): void {
    this.renewTurn();
    this.watchTurn();
  }

  /** The process ends (a crash): nothing it sent is answered to it any more. */
  stop(): void {
    this.stopped = true;
  }

  /**
   * Whether a reply of the primary may leave now (the LeaseGate's `holds`): holding its key
   * under a lease known to live and, in sync mode, no copy etcd's `synced` may name that the
   * reply did not wait for (when there is one, `synced` is shrunk first unless `shrink` is
   * false).
   */
  holds(shrink = true): boolean {
    const state = this.state;
    if (this.stopped || !state.holding || !this.node.isPrimary() || state.heldEpoch !== this.node.epoch()) return false;
    if (!this.faults.ignoresLease && !this.held.valid(this.node.clockUs())) return false;
    if (this.node.mode !== 'sync') return true;
    const counted = this.node.countedPeers();
    const mayName = [...(state.synced?.nodes ?? []), ...state.pending];
    if (syncedCovers(mayName, this.node.id, counted)) return true;
    if (shrink) this.recordSynced((state.synced?.nodes ?? []).filter((node) => node === this.node.id || counted.includes(node)));
    return false;
  }

  /**
   * Asks etcd to write `nodes` as the volume's synced set, if this node still holds its key
   * and the set is as it knows it (one change at a time). Until the answer says it applied,
   * etcd may name `nodes` as well as the set it replaces (`pending`).
   */
  private recordSynced(nodes: string[]): void {
    const state = this.state;
    if (state.syncedWrite || state.claimText === null) return;
    const previous = state.syncedText;
    const known = state.synced;
    const next: SyncedClaim = { epoch: state.heldEpoch, version: (known?.epoch === state.heldEpoch ? known.version : 0) + 1, nodes: [...new Set(nodes)] };
    const text = encodeSynced(next);
    const growing = next.nodes.some((node) => !(known?.nodes ?? []).includes(node));
    for (const node of next.nodes) state.pending.add(node);
    this.syncedChangesStarted += 1;
    this.syncedChangesUnderWay += 1;
    state.syncedWrite = true;
    const request: EtcdRequest = {
      kind: 'txn',
      compares: [
        { key: PRIMARY_KEY, value: state.claimText },
        { key: SYNCED_KEY, value: previous },
      ],
      puts: [{ key: SYNCED_KEY, value: text, lease: null }],
      deletes: [],
    };
    this.call(`synced v${next.version} ${next.nodes.join(',')}`, request, this.callTimeoutUs, (answer) => {
      this.syncedChangesUnderWay -= 1;
      state.syncedWrite = false;
      if (answer?.kind !== 'done') {
        this.counts.syncedUnanswered += 1;
        return;
      }
      if (!answer.succeeded) {
        this.counts.syncedRefused += 1;
        return;
      }
      state.synced = next;
      state.syncedText = text;
      state.pending.clear();
      this.note(`${this.node.id} wrote the synced set as ${next.nodes.join(',')} (epoch ${next.epoch} version ${next.version})`);
      if (growing) this.counts.syncedGrown += 1;
      else this.counts.syncedShrunk += 1;
    });
  }

  /** How long a reply waits at the gate for a lease before it fails (LeaseGate's `waitMs`). */
  get gateWaitUs(): number {
    return this.ttlUs;
  }

  // ---- calls ------------------------------------------------------------------------------

  /**
   * One request with a deadline: `done` gets the answer, or null when none came in time;
   * `late`, if given, gets an answer that came after the deadline (else it is ignored).
   */
  private call(label: string, request: EtcdRequest, timeoutUs: number, done: (answer: EtcdAnswer | null) => void, late: ((answer: EtcdAnswer) => void) | null = null): void {
    let settled = false;
    const settle = (answer: EtcdAnswer | null): void => {
      if (this.stopped) return;
      if (settled) {
        if (answer !== null) late?.(answer);
        return;
      }
      settled = true;
      if (answer === null) this.counts.timeouts += 1;
      done(answer);
    };
    this.etcd.send(this.node.id, label, request, () => !this.stopped, settle);
    this.queue.after(timeoutUs, `${this.node.id} ${label} deadline`, () => settle(null));
  }

  // ---- the lease ----------------------------------------------------------------------------

  private renewTurn(): void {
    if (this.stopped || !this.active()) return;
    const startedUs = this.node.clockUs();
    this.renew((renewed) => {
      this.fenceLapsed();
      const waitUs = renewed ? Math.max(0, startedUs + this.renewEveryUs - this.node.clockUs()) : this.renewRetryUs;
      this.queue.after(waitUs, `${this.node.id} renews`, () => this.renewTurn());
    });
  }

  /** Grants the lease when there is none, or renews it; a confirmation moves the fence on. `then` with whether it did. */
  private renew(then: (renewed: boolean) => void): void {
    const sentAtUs = this.node.clockUs();
    if (this.leaseId === null) {
      this.call('grant', { kind: 'grant', ttlMs: this.ttlMs }, this.callTimeoutUs, (answer) => {
        if (answer?.kind !== 'granted') {
          this.counts.renewalFailures += 1;
          return then(false);
        }
        this.leaseId = answer.lease;
        this.held.confirmed(sentAtUs, this.ttlUs);
        this.note(`${this.node.id} holds lease ${answer.lease}`);
        then(true);
      });
      return;
    }
    const lease = this.leaseId;
    // A confirmation that comes after the try gave up still counts, from when it was sent.
    const confirmed = (answer: EtcdAnswer): boolean => {
      if (answer.kind !== 'renewed') return false;
      if (this.leaseId === lease) this.held.confirmed(sentAtUs, answer.ttlMs * this.usPerMs);
      return true;
    };
    const late = (answer: EtcdAnswer): void => {
      if (confirmed(answer)) this.counts.lateRenewals += 1;
    };
    this.call(`keepalive ${lease}`, { kind: 'keepalive', lease }, this.renewWaitUs, (answer) => {
      if (answer !== null && confirmed(answer)) {
        this.counts.renewals += 1;
        return then(true);
      }
      this.counts.renewalFailures += 1;
      if (answer?.kind === 'lease-not-found') {
        // etcd expired it: nothing is acknowledged under it, and a new one is granted next turn.
        this.held.lost();
        this.leaseId = null;
        this.state.holding = false;
        // Its candidacy went with the lease: announced again under the next one.
        this.state.announced = false;
        this.counts.leasesLost += 1;
        this.note(`${this.node.id}: its lease expired in etcd`);
      }
      then(false);
    }, late);
  }

  /** A primary whose lease may have expired in etcd steps down (its gate lets nothing pass already). */
  private fenceLapsed(): void {
    if (this.faults.ignoresLease) return;
    if (!this.state.holding || this.held.valid(this.node.clockUs())) return;
    if (!this.node.isPrimary() || this.node.changing()) return;
    this.state.holding = false;
    this.counts.leaseFences += 1;
    this.node.stepDown(`its lease in etcd could not be renewed for ${this.held.ttlMs - this.held.marginMs}us`, true);
  }

  // ---- the volume's keys --------------------------------------------------------------------

  private watchTurn(): void {
    if (this.stopped || !this.active()) return;
    // A read sent while a change of `synced` was under way, or answered after one started, may not show it.
    const quietAtSend = this.syncedChangesUnderWay === 0;
    const startedAtSend = this.syncedChangesStarted;
    this.call('range', { kind: 'range' }, this.callTimeoutUs, (answer) => {
      const next = (): void => this.queue.after(this.watchEveryUs, `${this.node.id} reads etcd`, () => this.watchTurn());
      if (answer?.kind !== 'keys') return next();
      const syncedFresh = quietAtSend && this.syncedChangesStarted === startedAtSend;
      if (!syncedFresh) this.counts.staleReads += 1;
      this.step(answer.keys, syncedFresh, (error) => {
        if (error !== null) this.note(`${this.node.id}: ${error}`);
        next();
      });
    });
  }

  /**
   * coordinator.ts `step`: one step of the volume from what its keys say now (`syncedFresh`:
   * no change of `synced` raced the read); `done` with the error that ended it early, if any.
   */
  private step(keys: Record<string, string>, syncedFresh: boolean, done: (error: string | null) => void): void {
    const state = this.state;
    const primaryText = keys[PRIMARY_KEY] ?? null;
    const epochText = keys[EPOCH_KEY] ?? null;
    const syncedText = keys[SYNCED_KEY] ?? null;
    const primary = primaryText === null ? null : parsePrimaryClaim(primaryText);
    const recorded = epochText === null ? null : parseEpochClaim(epochText);
    const synced = syncedText === null ? null : parseSyncedClaim(syncedText);
    if ((primaryText !== null && primary === null) || (epochText !== null && recorded === null) || (syncedText !== null && synced === null)) return done('a key is not blockmirror\'s');
    state.primary = primary;
    state.epoch = recorded?.epoch ?? 0;
    if (syncedFresh) {
      if (syncedText !== state.syncedText && state.holding) this.note(`${this.node.id} reads the synced set as ${synced?.nodes.join(',') ?? 'none'} (version ${synced?.version ?? '-'})`);
      state.synced = synced;
      state.syncedText = syncedText;
    }
    if (this.node.changing()) return done(null);
    const epoch = this.node.epoch();
    const self = this.node.id;

    if (this.node.isPrimary()) {
      state.vacantSinceUs = null;
      if (primary !== null && primary.node === self && primary.epoch === epoch && primary.lease === this.leaseId) {
        state.holding = true;
        state.heldEpoch = epoch;
        state.claimText = primaryText;
        // The synced set follows the copies that are up to date (it shrinks at once when a reply needs it to).
        const wanted = this.node.mode === 'sync' ? [self, ...this.node.upToDatePeers()] : [self];
        if (syncedFresh && (state.synced === null || !sameNodes(state.synced.nodes, wanted))) this.recordSynced(wanted);
        return done(null);
      }
      state.holding = false;
      const newer =
        primary !== null && primary.node !== self && primary.epoch > epoch
          ? primary
          : recorded !== null && (recorded.epoch > epoch || (recorded.epoch === epoch && recorded.node !== self))
            ? recorded
            : null;
      if (newer !== null) {
        this.counts.namedNewer += 1;
        this.node.stepDown(`etcd names node ${newer.node} for epoch ${newer.epoch}`, false);
        return done(null);
      }
      // Another node's key of an older epoch: its lease has yet to expire.
      if (primary !== null && primary.node !== self) return done(null);
      if (this.leaseId === null) return done(null);
      // The key is absent, or this node's of an earlier lease (a restart): it takes it under its lease.
      this.claim(epoch, primaryText, epochText, syncedText, (won) => {
        if (won === null) return done('the claim of its own epoch failed');
        if (won) {
          state.holding = true;
          state.heldEpoch = epoch;
          this.note(`${self} holds the volume in etcd in epoch ${epoch}`);
        }
        done(null);
      });
      return;
    }

    if (primary !== null && primary.node === self && primaryText !== null) {
      // Its own key, though it is no longer the primary (it stepped down while its lease lived on): given up.
      state.holding = false;
      this.release(primaryText, () => done(null));
      return;
    }
    if (!this.node.isSecondary()) return done(null);
    if (primary !== null) {
      state.vacantSinceUs = null;
      if (!state.announced) return done(null);
      // The vacancy is filled: this copy's candidacy is withdrawn (it would make the next one wait).
      state.announced = false;
      const request: EtcdRequest = { kind: 'txn', compares: [], puts: [], deletes: [`${CANDIDATES}${self}`] };
      this.call('withdraw', request, this.callTimeoutUs, (answer) => {
        if (answer?.kind !== 'done') return done('withdrawing its candidacy failed');
        this.counts.withdrawn += 1;
        done(null);
      });
      return;
    }
    if (this.leaseId === null || !syncedAdmits(synced, self) || this.refusal(recorded) !== null) {
      state.vacantSinceUs = null;
      return done(null);
    }
    const nowUs = this.node.clockUs();
    state.vacantSinceUs ??= nowUs;
    const vacantSinceUs = state.vacantSinceUs;
    const candidate: Candidate = { node: self, priority: this.node.priority, lastSeq: this.node.durableSeq(), ...(this.node.hasTarget() ? {} : { steppedDown: true }) };
    const compete = (): void => {
      const others = Object.entries(keys)
        .filter(([key]) => key.startsWith(CANDIDATES) && key !== `${CANDIDATES}${self}`)
        .map(([, text]) => parseCandidate(text))
        .filter((each): each is Candidate => each !== null);
      // The copies that could announce themselves: every replica but this one and the last primary.
      const expected = this.node.replicas.filter((id) => id !== self && id !== recorded?.node).length;
      const gatherUs = others.length >= expected ? 0 : 3 * this.watchEveryUs;
      if (!claimsNow(candidate, others, nowUs - vacantSinceUs, gatherUs, this.ttlUs)) return done(null);
      const next = claimedEpoch(recorded?.epoch ?? 0, epoch);
      this.claim(next, null, epochText, syncedText, (won) => {
        if (won === null) return done(`the claim of epoch ${next} failed`);
        if (!won) return done(null);
        this.note(`${self} claimed the volume in etcd: ${this.node.hasTarget() ? 'promoting itself' : 'taking it back'} in epoch ${next}`);
        this.promoteClaimed(next, () => done(null));
      });
    };
    if (state.announced) return compete();
    const leaseId = this.leaseId;
    this.call('announce', { kind: 'put', put: { key: `${CANDIDATES}${self}`, value: encodeClaim(candidate), lease: leaseId } }, this.callTimeoutUs, (answer) => {
      if (answer?.kind !== 'done') return done('announcing itself failed');
      state.announced = true;
      this.counts.announced += 1;
      compete();
    });
  }

  /**
   * coordinator.ts `refusal`: why this copy may not claim the volume, or null: a secondary
   * that follows, by the rules; a primary that stepped down, only if etcd's `epoch` names
   * its own claim (of its epoch, or a later one whose answer it lost), and it may take the
   * volume back.
   */
  private refusal(recorded: EpochClaim | null): string | null {
    if (this.node.hasTarget()) return this.node.promotable();
    const own = recorded !== null && recorded.node === this.node.id && recorded.epoch >= this.node.epoch();
    if (!own) return 'it stepped down, and etcd names a later claim';
    return this.node.resumable();
  }

  /** coordinator.ts `promoteClaimed`: promoted to the epoch its claim took (or takes its volume back in it), or the claim is given up. */
  private promoteClaimed(epoch: number, done: () => void): void {
    const state = this.state;
    state.holding = true;
    state.heldEpoch = epoch;
    state.vacantSinceUs = null;
    const resuming = !this.node.hasTarget();
    const refusal = resuming ? this.node.resume(epoch) : this.node.promoteTo(epoch);
    if (refusal === null) {
      if (resuming) this.counts.resumed += 1;
      else this.counts.failovers += 1;
      return done();
    }
    state.holding = false;
    this.counts.claimsGivenUp += 1;
    this.note(`${this.node.id}: ${resuming ? 'taking the volume back' : 'promotion'} after the claim refused (${refusal}): the claim is given up`);
    if (this.leaseId === null) return done();
    this.release(encodeClaim({ node: this.node.id, epoch, lease: this.leaseId }), done);
  }

  /**
   * The claim's transaction: `primary` as read (absent, or this node's earlier key),
   * `epoch` and `synced` as read, or nothing changes; then `primary` and `epoch` name this
   * node in `epoch`, and `synced` it alone (version 0). `done` with whether it won, or null
   * when the call failed (no answer, or the lease is gone).
   */
  private claim(epoch: number, primaryText: string | null, epochText: string | null, syncedText: string | null, done: (won: boolean | null) => void): void {
    const leaseId = this.leaseId;
    if (leaseId === null) return done(false);
    const claimText = encodeClaim({ node: this.node.id, epoch, lease: leaseId });
    // The claimant alone holds every write of its epoch so far: the others join the synced set once up to date.
    const synced: SyncedClaim = { epoch, version: 0, nodes: [this.node.id] };
    const request: EtcdRequest = {
      kind: 'txn',
      compares: [
        { key: PRIMARY_KEY, value: primaryText },
        { key: EPOCH_KEY, value: epochText },
        { key: SYNCED_KEY, value: syncedText },
      ],
      puts: [
        { key: PRIMARY_KEY, value: claimText, lease: leaseId },
        { key: EPOCH_KEY, value: encodeClaim({ node: this.node.id, epoch }), lease: null },
        { key: SYNCED_KEY, value: encodeSynced(synced), lease: null },
      ],
      deletes: [],
    };
    this.call(`claim ${epoch}`, request, this.callTimeoutUs, (answer) => {
      if (answer?.kind !== 'done') return done(null);
      if (!answer.succeeded) {
        this.counts.claimsLost += 1;
        return done(false);
      }
      this.counts.claimsWon += 1;
      const state = this.state;
      state.primary = { node: this.node.id, epoch, lease: leaseId };
      state.epoch = epoch;
      state.claimText = claimText;
      state.synced = synced;
      state.syncedText = encodeSynced(synced);
      state.pending.clear();
      done(true);
    });
  }

  /** Gives up this node's key (`claimText`, as read or written); a failure is only noted. */
  private release(claimText: string, done: () => void): void {
    this.call('release', { kind: 'txn', compares: [{ key: PRIMARY_KEY, value: claimText }], puts: [], deletes: [PRIMARY_KEY] }, this.callTimeoutUs, (answer) => {
      if (answer?.kind === 'done' && answer.succeeded) this.counts.released += 1;
      done();
    });
  }
}
