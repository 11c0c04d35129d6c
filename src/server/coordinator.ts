// Automatic failover through etcd (docs/operations.md, "Automatic failover through
// etcd"): this node's side of it, carrying out the decisions of src/core/lease.ts with
// the `etcd3` client.
//
// The node holds one lease in etcd, renewed four times in its time to live (its own loop,
// so that a slow read never delays a renewal). Each of its volumes' keys lives under
// `<prefix>/volumes/<name>/`:
//   - `primary` (under the holder's lease): who is the primary, in which epoch, under
//     which lease. The primary's replies pass its LeaseGate only while this node's view
//     of the lease (`HeldLease`) says the key is still its own: it stops acknowledging
//     before etcd can expire the lease, and steps down once it may have (`fenceLapsed`).
//   - `synced`: the copies that hold every write the primary acknowledged. It shrinks
//     before a reply leaves that a copy it names may lack (the LeaseGate waits for it),
//     and grows when a copy is up to date again; only a copy it names may claim.
//   - `epoch`: the newest epoch a claim took. Each claim writes both keys in one
//     transaction that requires `primary` absent and `epoch` unchanged since it was read,
//     so no two nodes ever take the same epoch.
//   - `candidates/<node>` (under each candidate's lease): the copies that may be promoted
//     announce themselves while the volume has no primary; `claimsNow` says which one
//     claims first.
// Every read of the keys (all volumes in one range request, every `watchEveryMs`) drives
// each volume here one step: the primary claims or keeps its key, or steps down when etcd
// names a newer epoch; a secondary that may be promoted by the rules (`promotable`)
// competes for a vacancy and, having won, promotes itself to the epoch it took.
//
// Why one file of this size: the lease, the gate's answer (`holds`) and every claim and
// change of a volume's keys read and write one state (the lease's id and HeldLease, each
// volume's keys as last read); apart, each would have to reach into the others' fields.

import { Etcd3, EtcdLeaseInvalidError, isRecoverableError, type Lease } from 'etcd3';
import { circuitBreaker, ConsecutiveBreaker, handleWhen, retry } from 'cockatiel';
import type { ClusterConfig, NodeConfig } from '../control/config.js';
import { BlockmirrorError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import type { Clock } from '../io/clock.js';
import {
  claimedEpoch, claimsNow, encodeClaim, encodeSynced, HeldLease, leaseMarginMs, parseCandidate, parseEpochClaim, parsePrimaryClaim, parseSyncedClaim, renewEveryMs,
  sameNodes, syncedAdmits, syncedCovers, watchEveryMs, type Candidate, type EpochClaim, type PrimaryClaim, type SyncedClaim,
} from '../core/lease.js';
import { LeaseGate, type ReplyGate } from './reply-gate.js';
import type { ServedVolume } from './served-volume.js';
import type { VolumeRoles } from './volume-roles.js';
import type { Hooks } from './hooks.js';
import type { CoordinationStatus, PromotionResult } from './status.js';

/** Lease renewals that may wait for an answer at once. */
const renewalsUnderWayMax = 4;

type EtcdCoordination = Extract<ClusterConfig['coordination'], { kind: 'etcd' }>;

/** What one volume's keys said at the last read, and what this node does about them. */
interface VolumeState {
  primary: PrimaryClaim | null;
  epoch: number;
  /** This node's key is the volume's `primary`, under its current lease, in `heldEpoch`. */
  holding: boolean;
  heldEpoch: number;
  /** That key's text (the holder's transactions require it unchanged). */
  claimText: string | null;
  /** The `synced` key's value as this node knows it (its own confirmed change, or a read no change of its raced), and its text. */
  synced: SyncedClaim | null;
  syncedText: string | null;
  /**
   * Copies named by this holder's changes of `synced` whose answers it has not had (one
   * under way, or lost): etcd may name them too, until a later change is confirmed (its
   * compare proves the value moved past the one the lost change expected).
   */
  pending: Set<string>;
  /** A change of `synced` under way (one at a time). */
  syncedWrite: Promise<void> | null;
  /** When this node, a candidate, first saw the volume without a primary. */
  vacantSinceMs: number | null;
  announced: boolean;
  /** Whether the `promoted` hook ran for this node's start as the primary (a claim of its own key). */
  announcedStart: boolean;
}

export class EtcdCoordinator {
  private readonly client: Etcd3;
  private readonly held: HeldLease;
  private lease: Lease | null = null;
  private leaseId: string | null = null;
  private readonly states = new Map<string, VolumeState>();
  private stopped = false;
  private loops: Promise<void>[] = [];
  /** The last error of each loop (status shows the renewal's first), cleared by its next success. */
  private renewError: string | null = null;
  private watchError: string | null = null;
  /** Errors noted by the watch loop's current turn. */
  private watchErrors = 0;
  /** Changes of `synced` started, and under way: a read sent while one was (or answered after one started) may be stale. */
  private syncedChangesStarted = 0;
  /** Lease renewals sent and not yet answered (bounded by renewalsUnderWayMax). */
  private renewalsUnderWay = 0;
  private syncedChangesUnderWay = 0;
  private lastLoggedError: { text: string; atMs: number } | null = null;
  private readonly counters = { renewals: 0, renewalFailures: 0, claimsWon: 0, claimsLost: 0, fenced: 0 };

  constructor(
    private readonly config: EtcdCoordination,
    private readonly node: NodeConfig,
    private readonly volumes: Map<string, ServedVolume>,
    private readonly roles: VolumeRoles,
    private readonly hooks: Hooks,
    private readonly clock: Clock,
    private readonly log: Logger,
  ) {
    this.held = new HeldLease(config.leaseTtlMs, leaseMarginMs(config.leaseTtlMs));
    const callMs = this.callTimeoutMs;
    this.client = new Etcd3({
      hosts: config.endpoints,
      dialTimeout: callMs,
      defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + callMs }),
      faultHandling: {
        // A member that fails three calls in a row is left alone for a second; a call is tried on two members.
        host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: 1000, breaker: new ConsecutiveBreaker(3) }),
        global: retry(handleWhen(isRecoverableError), { maxAttempts: 1 }),
      },
    });
  }

  /** How long one request to etcd may take. */
  private get callTimeoutMs(): number {
    return Math.max(500, Math.min(2000, Math.floor(this.config.leaseTtlMs / 4)));
  }

  /**
   * The gate a primary's replies of `name` pass: only while this node holds the volume
   * under a live lease. A new one for each time the node becomes the volume's primary (a
   * step down closes the gate of that time for good).
   */
  gate(name: string): ReplyGate {
    return new LeaseGate(name, () => this.holds(name), this.clock, Math.max(5, Math.floor(watchEveryMs(this.config.leaseTtlMs) / 2)), this.config.leaseTtlMs);
  }

  /**
   * Whether this node may acknowledge a change of `name` now: its primary, holding its key
   * under a lease known to live, with no copy named in `synced` that the reply did not
   * wait for (when there is one, `synced` is shrunk first, and the reply waits for that).
   */
  holds(name: string, shrink = true): boolean {
    const served = this.volumes.get(name);
    const state = this.states.get(name);
    if (served === undefined || state === undefined || !state.holding) return false;
    if (served.role !== 'primary' || state.heldEpoch !== served.volume.replica.epoch || !this.held.valid(this.clock.nowMs())) return false;
    if (served.config.mode !== 'sync') return true;
    const counted = served.mirrored?.engine.countedPeers() ?? [];
    const mayName = [...(state.synced?.nodes ?? []), ...state.pending];
    if (syncedCovers(mayName, this.node.id, counted)) return true;
    if (shrink) this.recordSynced(served, (state.synced?.nodes ?? []).filter((node) => node === this.node.id || counted.includes(node)));
    return false;
  }

  /**
   * Writes `nodes` as the volume's synced set, if this node still holds its key and the
   * set is as it knows it (one change at a time). Until the answer says it applied, etcd
   * may name `nodes` as well as the set it replaces (`pending`, which `holds` counts).
   */
  private recordSynced(served: ServedVolume, nodes: string[]): void {
    const { name } = served.config;
    const state = this.stateOf(name);
    if (state.syncedWrite !== null || state.claimText === null) return;
    const claimText = state.claimText;
    const previous = state.syncedText;
    const next: SyncedClaim = { epoch: state.heldEpoch, version: (state.synced?.epoch === state.heldEpoch ? state.synced.version : 0) + 1, nodes: [...new Set(nodes)] };
    const text = encodeSynced(next);
    const syncedKey = this.keyOf(name, 'synced');
    for (const node of next.nodes) state.pending.add(node);
    this.syncedChangesStarted += 1;
    this.syncedChangesUnderWay += 1;
    state.syncedWrite = (async () => {
      try {
        const result = await this.client
          .if(this.keyOf(name, 'primary'), 'Value', '==', claimText)
          .and(syncedKey, previous === null ? 'Create' : 'Value', '==', previous ?? 0)
          .then(this.client.put(syncedKey).value(text))
          .commit();
        if (result.succeeded) {
          state.synced = next;
          state.syncedText = text;
          state.pending.clear();
          this.log.info('the synced set in etcd changed', { volume: name, epoch: next.epoch, version: next.version, synced: next.nodes.join(',') });
        }
      } catch (error) {
        this.noteError(`recording the synced set of ${name}: ${describe(error)}`);
      } finally {
        this.syncedChangesUnderWay -= 1;
        state.syncedWrite = null;
      }
    })();
  }

  start(): void {
    if (this.coordinated().length === 0) return;
    this.log.info('coordination through etcd', { endpoints: this.config.endpoints.join(','), prefix: this.config.prefix, leaseTtlMs: this.config.leaseTtlMs });
    this.loops = [this.renewLoop(), this.watchLoop()];
  }

  /** Ends the loops (the lease is left to expire: the volumes stay where they are until it does). */
  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.allSettled(this.loops);
    this.client.close();
  }

  status(): CoordinationStatus {
    const volumes: CoordinationStatus['volumes'] = {};
    for (const [name, state] of this.states) volumes[name] = { primary: state.primary?.node ?? null, epoch: state.epoch, holding: this.holds(name, false), synced: state.synced?.nodes ?? null };
    const fenceAt = this.held.fenceAtMs;
    return {
      kind: 'etcd',
      endpoints: this.config.endpoints,
      prefix: this.config.prefix,
      leaseTtlMs: this.config.leaseTtlMs,
      lease: { id: this.leaseId, validForMs: Number.isFinite(fenceAt) ? Math.round(fenceAt - this.clock.nowMs()) : null },
      error: this.renewError ?? this.watchError,
      volumes,
      counters: { ...this.counters },
    };
  }

  /** The mirrored volumes here: those whose primary is chosen through etcd. */
  private coordinated(): ServedVolume[] {
    return [...this.volumes.values()].filter((served) => served.config.mode !== 'local' && served.config.replicas.length > 1);
  }

  private keyOf(name: string, leaf: string): string {
    return `${this.config.prefix}/volumes/${name}/${leaf}`;
  }

  // ---- the lease ----------------------------------------------------------------------

  private async renewLoop(): Promise<void> {
    const everyMs = renewEveryMs(this.config.leaseTtlMs);
    // A failed renewal is tried again soon (each try may reach another member: one that is
    // down fails at once, and the others answer once they have a leader again).
    const retryMs = Math.min(200, Math.floor(everyMs / 4));
    while (!this.stopped) {
      const startedMs = this.clock.nowMs();
      const renewed = await this.renew(Math.min(everyMs, 1000));
      this.fenceLapsed();
      await this.clock.sleep(renewed ? Math.max(0, startedMs + everyMs - this.clock.nowMs()) : retryMs);
    }
  }

  /** Grants the lease when there is none, or renews it; a confirmation moves the fence on. Whether it did. */
  private async renew(timeoutMs: number): Promise<boolean> {
    const sentAtMs = this.clock.nowMs();
    try {
      if (this.lease === null) {
        const lease = this.client.lease(Math.ceil(this.config.leaseTtlMs / 1000), { autoKeepAlive: false });
        const id = await lease.grant();
        this.lease = lease;
        this.leaseId = id;
        this.held.confirmed(sentAtMs, this.config.leaseTtlMs);
        this.log.info('lease granted in etcd', { lease: id, ttlMs: this.config.leaseTtlMs });
        return true;
      }
      const lease = this.lease;
      // Tries that gave up may still be waiting for an answer: a few at most, so that a long
      // outage does not pile up requests.
      if (this.renewalsUnderWay >= renewalsUnderWayMax) throw new Error(`${renewalsUnderWayMax} lease renewals are still waiting for an answer`);
      this.renewalsUnderWay += 1;
      // A confirmation that comes after the try gave up still counts, from when it was sent.
      const attempt = lease.keepaliveOnce().then((answer) => {
        if (this.lease === lease) this.held.confirmed(sentAtMs, Number(answer.TTL) * 1000);
        return answer;
      });
      attempt.catch(() => undefined).finally(() => {
        this.renewalsUnderWay -= 1;
      });
      await withTimeout(attempt, timeoutMs, 'the lease renewal');
      this.counters.renewals += 1;
      if (this.renewError !== null) {
        this.log.warn('etcd renews the lease again', { after: this.renewError });
        this.renewError = null;
      }
    } catch (error) {
      this.counters.renewalFailures += 1;
      if (error instanceof EtcdLeaseInvalidError) {
        // etcd expired it: nothing is acknowledged under it, and a new one is granted next turn.
        this.held.lost();
        this.lease = null;
        this.leaseId = null;
        for (const state of this.states.values()) {
          state.holding = false;
          // Its candidacy went with the lease: announced again under the next one.
          state.announced = false;
        }
        this.log.error('the lease in etcd expired: this node holds no volume until it claims one again', {});
      }
      this.renewError = `renewing the lease: ${describe(error)}`;
      this.noteError(this.renewError, 'renewal');
      return false;
    }
    return true;
  }

  /** A primary whose lease may have expired in etcd steps down (its gate already lets nothing pass). */
  private fenceLapsed(): void {
    const nowMs = this.clock.nowMs();
    for (const served of this.coordinated()) {
      const state = this.states.get(served.config.name);
      if (state === undefined || !state.holding || this.held.valid(nowMs)) continue;
      if (served.role !== 'primary' || served.changing !== null) continue;
      state.holding = false;
      this.counters.fenced += 1;
      const reason = `its lease in etcd could not be renewed for ${this.config.leaseTtlMs - this.held.marginMs} ms`;
      this.roles.stepDown(served.config.name, reason).catch((error: unknown) => this.log.error('stepping down failed', { volume: served.config.name, error: String(error) }));
    }
  }

  // ---- the volumes' keys --------------------------------------------------------------

  private async watchLoop(): Promise<void> {
    const everyMs = watchEveryMs(this.config.leaseTtlMs);
    while (!this.stopped) {
      this.watchErrors = 0;
      try {
        // A read sent while a change of `synced` was under way, or answered after one started, may not show it.
        const quietAtSend = this.syncedChangesUnderWay === 0;
        const startedAtSend = this.syncedChangesStarted;
        const keys = await this.client.getAll().prefix(`${this.config.prefix}/volumes/`).strings();
        for (const served of this.coordinated()) {
          if (this.stopped) break;
          await this.step(served, keys, quietAtSend && this.syncedChangesStarted === startedAtSend);
        }
      } catch (error) {
        this.noteError(`reading the volumes' keys: ${describe(error)}`);
      }
      if (this.watchErrors === 0 && this.watchError !== null) {
        this.log.warn('the volumes\' keys in etcd read well again', { after: this.watchError });
        this.watchError = null;
      }
      await this.clock.sleep(everyMs);
    }
  }

  /** One step of one volume from what its keys say now (`syncedFresh`: no change of `synced` raced the read). */
  private async step(served: ServedVolume, keys: Record<string, string>, syncedFresh: boolean): Promise<void> {
    const { name } = served.config;
    const state = this.stateOf(name);
    const primaryText = keys[this.keyOf(name, 'primary')] ?? null;
    const epochText = keys[this.keyOf(name, 'epoch')] ?? null;
    const syncedText = keys[this.keyOf(name, 'synced')] ?? null;
    const primary = primaryText === null ? null : parsePrimaryClaim(primaryText);
    const recorded = epochText === null ? null : parseEpochClaim(epochText);
    const synced = syncedText === null ? null : parseSyncedClaim(syncedText);
    if ((primaryText !== null && primary === null) || (epochText !== null && recorded === null) || (syncedText !== null && synced === null)) {
      this.noteError(`volume ${name}: a key under ${this.keyOf(name, '')} is not blockmirror's; it is left alone`);
      return;
    }
    state.primary = primary;
    state.epoch = recorded?.epoch ?? 0;
    if (syncedFresh) {
      state.synced = synced;
      state.syncedText = syncedText;
    }
    if (served.changing !== null) return;
    const epoch = served.volume.replica.epoch;

    if (served.role === 'primary' && served.mirrored !== null) {
      state.vacantSinceMs = null;
      if (primary !== null && primary.node === this.node.id && primary.epoch === epoch && primary.lease === this.leaseId) {
        state.holding = true;
        state.heldEpoch = epoch;
        state.claimText = primaryText;
        // The synced set follows the copies that are up to date (it shrinks at once when a reply needs it to).
        const wanted = served.config.mode === 'sync' ? [this.node.id, ...(served.mirrored.engine.upToDatePeers())] : [this.node.id];
        if (syncedFresh && (state.synced === null || !sameNodes(state.synced.nodes, wanted))) this.recordSynced(served, wanted);
        return;
      }
      state.holding = false;
      const newer = primary !== null && primary.node !== this.node.id && primary.epoch > epoch ? primary : recorded !== null && (recorded.epoch > epoch || (recorded.epoch === epoch && recorded.node !== this.node.id)) ? recorded : null;
      if (newer !== null) {
        await this.roles.stepDown(name, `etcd names node ${newer.node} for epoch ${newer.epoch}`);
        return;
      }
      // Another node's key of an older epoch: its lease has yet to expire.
      if (primary !== null && primary.node !== this.node.id) return;
      if (this.leaseId === null) return;
      // The key is absent, or this node's of an earlier lease (a restart): it takes it under its lease.
      const won = await this.claim(name, epoch, primaryText, epochText, syncedText);
      if (won) {
        state.holding = true;
        state.heldEpoch = epoch;
        this.log.info('holds the volume in etcd', { volume: name, epoch, lease: this.leaseId });
        if (!state.announcedStart) this.hooks.fire('promoted', { volume: name, node: this.node.id, epoch, role: 'primary' });
        state.announcedStart = true;
      }
      return;
    }

    if (primary !== null && primary.node === this.node.id && primaryText !== null) {
      // Its own key, though it is no longer the primary (it stepped down while its lease lived on): given up.
      state.holding = false;
      await this.release(name, primaryText);
      return;
    }
    if (served.role !== 'secondary') return;
    if (primary !== null) {
      state.vacantSinceMs = null;
      if (state.announced) {
        // The vacancy is filled: this copy's candidacy is withdrawn (it would make the next one wait).
        state.announced = false;
        await this.client.delete().key(this.keyOf(name, `candidates/${this.node.id}`));
      }
      return;
    }
    if (this.leaseId === null || !syncedAdmits(synced, this.node.id) || this.refusal(served, recorded) !== null) {
      state.vacantSinceMs = null;
      return;
    }
    const nowMs = this.clock.nowMs();
    state.vacantSinceMs ??= nowMs;
    const self: Candidate = { node: this.node.id, priority: this.node.priority, lastSeq: served.volume.log.status().durableSeq, ...(served.target === null ? { steppedDown: true } : {}) };
    if (!state.announced) {
      await this.client.put(this.keyOf(name, `candidates/${this.node.id}`)).value(encodeClaim(self)).lease(this.leaseId);
      state.announced = true;
    }
    const prefix = this.keyOf(name, 'candidates/');
    const others = Object.entries(keys)
      .filter(([key]) => key.startsWith(prefix) && key !== `${prefix}${this.node.id}`)
      .map(([, text]) => parseCandidate(text))
      .filter((candidate): candidate is Candidate => candidate !== null);
    // The copies that could announce themselves: every replica but this one and the last primary.
    const expected = served.config.replicas.filter((id) => id !== this.node.id && id !== recorded?.node).length;
    const gatherMs = others.length >= expected ? 0 : 3 * watchEveryMs(this.config.leaseTtlMs);
    if (!claimsNow(self, others, nowMs - state.vacantSinceMs, gatherMs, this.config.leaseTtlMs)) return;
    const known = served.config.quorum === 'majority' ? this.roles.quorum.candidacy(served) - 1 : epoch;
    const next = claimedEpoch(recorded?.epoch ?? 0, known);
    if (!(await this.claim(name, next, null, epochText, syncedText))) return;
    this.log.warn('claimed the volume in etcd: promoting this copy', { volume: name, epoch: next, previous: recorded?.node ?? 'none' });
    await this.promoteClaimed(served, next).catch(() => undefined);
  }

  /**
   * `blockmirror promote` under coordination through etcd: this node's copy claims the
   * volume now, if it may be promoted by the rules and no node holds it (the copy to
   * replace steps down first: `blockmirror demote`), and is promoted to the epoch it took.
   */
  async promoteByCommand(name: string): Promise<PromotionResult> {
    const [primaryText, epochText, syncedText] = await Promise.all([
      this.client.get(this.keyOf(name, 'primary')).string(),
      this.client.get(this.keyOf(name, 'epoch')).string(),
      this.client.get(this.keyOf(name, 'synced')).string(),
    ]).catch((error: unknown) => {
      throw new BlockmirrorError('ERR_COORDINATION', `cannot read the keys of ${name} in etcd: ${describe(error)}`);
    });
    const primary = primaryText === null ? null : parsePrimaryClaim(primaryText);
    if (primaryText !== null) {
      throw new BlockmirrorError('ERR_ROLE_REFUSED', `node ${primary?.node ?? '?'} holds ${name} in etcd (epoch ${primary?.epoch ?? '?'}): demote it first (blockmirror demote ${name} --node ${primary?.node ?? '?'})`);
    }
    const recorded = epochText === null ? null : parseEpochClaim(epochText);
    const synced = syncedText === null ? null : parseSyncedClaim(syncedText);
    if ((epochText !== null && recorded === null) || (syncedText !== null && synced === null)) throw new BlockmirrorError('ERR_COORDINATION', `a key of ${name} in etcd is not blockmirror's`);
    const served = this.volumes.get(name);
    if (served === undefined) throw new BlockmirrorError('ERR_UNKNOWN_VOLUME', `no volume ${name} on node ${this.node.id}`);
    const refusal = this.refusal(served, recorded);
    if (refusal !== null) throw refusal;
    if (!syncedAdmits(synced, this.node.id)) {
      throw new BlockmirrorError('ERR_MAY_LOSE_WRITES', `etcd records that only ${synced?.nodes.join(', ') ?? ''} hold every write the primary of epoch ${synced?.epoch ?? '?'} acknowledged: node ${this.node.id} may lack some`);
    }
    if (this.leaseId === null) throw new BlockmirrorError('ERR_COORDINATION', `node ${this.node.id} holds no lease in etcd: ${this.renewError ?? 'not granted yet'}`);
    const known = served.config.quorum === 'majority' ? this.roles.quorum.candidacy(served) - 1 : served.volume.replica.epoch;
    const next = claimedEpoch(recorded?.epoch ?? 0, known);
    if (!(await this.claim(name, next, null, epochText, syncedText))) throw new BlockmirrorError('ERR_ROLE_REFUSED', `another copy claimed ${name} in etcd first`);
    return this.promoteClaimed(served, next);
  }

  /**
   * Why this node's copy may not claim the volume, or null: a secondary that may be
   * promoted by the rules, or a primary that stepped down and was the last to claim the
   * volume in etcd (no epoch was taken since its own: it holds every acknowledged write).
   */
  private refusal(served: ServedVolume, recorded: EpochClaim | null): BlockmirrorError | null {
    const { name } = served.config;
    if (served.target !== null) return this.roles.promotable(name);
    // Its own claim: of the epoch it stepped down in, or of a later one whose answer it never had (it never took
    // that epoch up, so nobody acknowledged in it).
    const own = recorded !== null && recorded.node === this.node.id && recorded.epoch >= served.volume.replica.epoch;
    if (!own) return new BlockmirrorError('ERR_ROLE_REFUSED', `node ${this.node.id} stepped down as the primary of ${name}, and etcd names a later claim (${recorded === null ? 'none recorded' : `epoch ${recorded.epoch} of node ${recorded.node}`})`);
    return this.roles.resumable(name);
  }

  /** Promotes this node's copy to the epoch its claim took (a stepped-down primary takes its volume back); gives the claim up if that fails. */
  private async promoteClaimed(served: ServedVolume, epoch: number): Promise<PromotionResult> {
    const { name } = served.config;
    const state = this.stateOf(name);
    state.holding = true;
    state.heldEpoch = epoch;
    state.vacantSinceMs = null;
    try {
      return await (served.target === null ? this.roles.resume(name, epoch) : this.roles.promote(name, false, epoch));
    } catch (error) {
      state.holding = false;
      this.log.error('promotion after the claim failed: the claim is given up', { volume: name, epoch, error: String(error) });
      if (this.leaseId !== null) await this.release(name, encodeClaim({ node: this.node.id, epoch, lease: this.leaseId }));
      throw error;
    }
  }

  /**
   * The transaction of a claim: `primary` as read (absent, or this node's earlier key)
   * and `epoch` as read, or nothing changes; then both name this node in `epoch`.
   */
  private async claim(name: string, epoch: number, primaryText: string | null, epochText: string | null, syncedText: string | null): Promise<boolean> {
    const leaseId = this.leaseId;
    if (leaseId === null) return false;
    const primaryKey = this.keyOf(name, 'primary');
    const epochKey = this.keyOf(name, 'epoch');
    const syncedKey = this.keyOf(name, 'synced');
    const claimText = encodeClaim({ node: this.node.id, epoch, lease: leaseId });
    // The claimant alone holds every write of its epoch so far: the others join the synced set once up to date.
    const synced: SyncedClaim = { epoch, version: 0, nodes: [this.node.id] };
    const result = await this.client
      .if(primaryKey, primaryText === null ? 'Create' : 'Value', '==', primaryText ?? 0)
      .and(epochKey, epochText === null ? 'Create' : 'Value', '==', epochText ?? 0)
      .and(syncedKey, syncedText === null ? 'Create' : 'Value', '==', syncedText ?? 0)
      .then(
        this.client.put(primaryKey).value(claimText).lease(leaseId),
        this.client.put(epochKey).value(encodeClaim({ node: this.node.id, epoch })),
        this.client.put(syncedKey).value(encodeSynced(synced)),
      )
      .commit();
    if (!result.succeeded) {
      this.counters.claimsLost += 1;
      return false;
    }
    this.counters.claimsWon += 1;
    const state = this.stateOf(name);
    state.primary = { node: this.node.id, epoch, lease: leaseId };
    state.epoch = epoch;
    state.claimText = claimText;
    state.synced = synced;
    state.syncedText = encodeSynced(synced);
    state.pending.clear();
    return true;
  }

  /**
   * Gives up this node's key of `name` (`claimText`, as read or written: a failed
   * promotion, or a primary that stepped down), so that another copy may claim.
   */
  private async release(name: string, claimText: string): Promise<void> {
    const primaryKey = this.keyOf(name, 'primary');
    try {
      await this.client
        .if(primaryKey, 'Value', '==', claimText)
        .then(this.client.delete().key(primaryKey))
        .commit();
    } catch (error) {
      this.noteError(`giving up the claim of ${name}: ${describe(error)}`);
    }
  }

  private stateOf(name: string): VolumeState {
    let state = this.states.get(name);
    if (state === undefined) {
      state = { primary: null, epoch: 0, holding: false, heldEpoch: 0, claimText: null, synced: null, syncedText: null, pending: new Set(), syncedWrite: null, vacantSinceMs: null, announced: false, announcedStart: false };
      this.states.set(name, state);
    }
    return state;
  }

  /** Logs an error (the same one at most every 10 s); one of the watch loop is kept for status until a turn goes well. */
  private noteError(text: string, from: 'renewal' | 'watch' = 'watch'): void {
    if (from === 'watch') {
      this.watchError = text;
      this.watchErrors += 1;
    }
    const nowMs = this.clock.nowMs();
    if (this.lastLoggedError?.text === text && nowMs - this.lastLoggedError.atMs < 10_000) return;
    this.lastLoggedError = { text, atMs: nowMs };
    this.log.error('coordination through etcd', { problem: text });
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** `promise`, or a rejection after `ms` (it may still settle later: nothing waits for it then). */
async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} got no answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
