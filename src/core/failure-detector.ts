// The failure detector of one node (docs/operations.md, heartbeats): from the heartbeats it hears
// and the passing of time, which of its peers are up. A peer silent for longer than the
// timeout is down; a peer heard again is only trusted after a probation during which its
// heartbeats kept coming (no gap longer than the timeout), so a flapping link does not
// make the node tear down and rebuild its mirror connections over and over. The first
// contact after this process started needs no probation. A peer never heard from is
// down once the timeout has passed since the detector started (the node connects to it
// at once, so a peer that goes silent before its first heartbeat must not stay trusted).
//
// Pure: the node reports each authentic heartbeat (`heard`) and the passing of time
// (`tick`), with the time in milliseconds from a monotonic clock, and gets back actions:
// peer-up, peer-down, peer-restarted. It never reads a clock. Heartbeats are refused
// unless they are newer than every one accepted before from that peer (incarnation, then
// counter), so a replayed or reordered datagram never makes a silent peer look alive.
//
// The verdict does not depend on how often `tick` runs: `heard` first applies whatever
// silence has passed, exactly as a tick at the same instant would.

import { assert } from '../lib/assert.js';

export type PeerLiveness = 'unknown' | 'up' | 'down' | 'probation';

export type DetectorAction =
  | { kind: 'peer-up'; peer: string }
  | { kind: 'peer-down'; peer: string; silentMs: number }
  /** Heard a new incarnation while up: the peer restarted, its links are gone. */
  | { kind: 'peer-restarted'; peer: string };

export interface FailureDetectorOptions {
  peers: readonly string[];
  /** Silence longer than this (strictly) makes a peer down. */
  timeoutMs: number;
  /** How long heartbeats must keep coming before a peer that was down is up again. */
  probationMs: number;
}

export interface HeardResult {
  accepted: boolean;
  reason: 'ok' | 'unknown-peer' | 'replay';
  actions: DetectorAction[];
}

/** What `status()` says of one peer; -1 where nothing has been accepted from it yet. */
export interface PeerLivenessStatus {
  peer: string;
  state: PeerLiveness;
  lastHeardMs: number;
  incarnation: number;
  counter: number;
  accepted: number;
  rejected: number;
}

interface Peer {
  state: PeerLiveness;
  /** Time of the last accepted heartbeat; -1 before the first. */
  lastHeardMs: number;
  incarnation: number;
  counter: number;
  probationStartMs: number;
  accepted: number;
  rejected: number;
}

export class FailureDetector {
  private readonly peers = new Map<string, Peer>();
  private readonly timeoutMs: number;
  private readonly probationMs: number;
  private nowMs = -Infinity;
  /** The first time the detector was told; a peer never heard is silent since then. */
  private startMs = -Infinity;

  constructor(options: FailureDetectorOptions) {
    this.timeoutMs = options.timeoutMs;
    this.probationMs = options.probationMs;
    assert(Number.isFinite(this.timeoutMs) && this.timeoutMs > 0, 'timeoutMs must be > 0');
    assert(Number.isFinite(this.probationMs) && this.probationMs >= 0, 'probationMs must be >= 0');
    for (const id of options.peers) {
      assert(id.length > 0, 'peer id must not be empty');
      assert(!this.peers.has(id), `peer ${id} listed twice`);
      this.peers.set(id, { state: 'unknown', lastHeardMs: -1, incarnation: -1, counter: -1, probationStartMs: -1, accepted: 0, rejected: 0 });
    }
  }

  /** An authentic heartbeat from `id`, sent in its `incarnation` as number `counter`. */
  heard(id: string, incarnation: number, counter: number, nowMs: number): HeardResult {
    this.advance(nowMs);
    assert(Number.isSafeInteger(incarnation) && incarnation >= 0, 'incarnation must be a safe non-negative integer');
    assert(Number.isSafeInteger(counter) && counter >= 0, 'counter must be a safe non-negative integer');
    const peer = this.peers.get(id);
    if (peer === undefined) return { accepted: false, reason: 'unknown-peer', actions: [] };
    const newer = peer.accepted === 0 || incarnation > peer.incarnation || (incarnation === peer.incarnation && counter > peer.counter);
    if (!newer) {
      peer.rejected += 1;
      return { accepted: false, reason: 'replay', actions: [] };
    }

    const actions: DetectorAction[] = [];
    this.expire(id, peer, nowMs, actions);
    const first = peer.accepted === 0;
    const restarted = peer.accepted > 0 && incarnation !== peer.incarnation;
    peer.incarnation = incarnation;
    peer.counter = counter;
    peer.lastHeardMs = nowMs;
    peer.accepted += 1;
    switch (peer.state) {
      case 'unknown':
        this.becomeUp(id, peer, actions);
        break;
      case 'down':
        // Down without ever being heard: this is its first contact, not a return.
        if (first) {
          this.becomeUp(id, peer, actions);
          break;
        }
        peer.state = 'probation';
        peer.probationStartMs = nowMs;
        this.completeProbation(id, peer, actions);
        break;
      case 'probation':
        this.completeProbation(id, peer, actions);
        break;
      case 'up':
        if (restarted) actions.push({ kind: 'peer-restarted', peer: id });
        break;
    }
    return { accepted: true, reason: 'ok', actions };
  }

  /** The passing of time: peers silent for longer than the timeout go down. */
  tick(nowMs: number): DetectorAction[] {
    this.advance(nowMs);
    const actions: DetectorAction[] = [];
    for (const [id, peer] of this.peers) this.expire(id, peer, nowMs, actions);
    return actions;
  }

  state(id: string): PeerLiveness {
    return this.peer(id).state;
  }

  isUp(id: string): boolean {
    return this.peer(id).state === 'up';
  }

  status(): PeerLivenessStatus[] {
    return [...this.peers].map(([id, peer]) => ({
      peer: id,
      state: peer.state,
      lastHeardMs: peer.lastHeardMs,
      incarnation: peer.incarnation,
      counter: peer.counter,
      accepted: peer.accepted,
      rejected: peer.rejected,
    }));
  }

  private peer(id: string): Peer {
    const peer = this.peers.get(id);
    assert(peer !== undefined, `unknown peer ${id}`);
    return peer;
  }

  private advance(nowMs: number): void {
    assert(Number.isFinite(nowMs), 'time must be a finite number of milliseconds');
    assert(nowMs >= this.nowMs, `time went backwards from ${this.nowMs} to ${nowMs} ms`);
    if (this.startMs === -Infinity) this.startMs = nowMs;
    this.nowMs = nowMs;
  }

  /** An up, probation or never-heard peer silent for longer than the timeout is down. */
  private expire(id: string, peer: Peer, nowMs: number, actions: DetectorAction[]): void {
    if (peer.state === 'unknown') {
      const silentMs = nowMs - this.startMs;
      if (silentMs <= this.timeoutMs) return;
      actions.push({ kind: 'peer-down', peer: id, silentMs });
      peer.state = 'down';
      return;
    }
    if (peer.state !== 'up' && peer.state !== 'probation') return;
    const silentMs = nowMs - peer.lastHeardMs;
    if (silentMs <= this.timeoutMs) return;
    // A peer on probation was never announced up, so its failing probation is silent.
    if (peer.state === 'up') actions.push({ kind: 'peer-down', peer: id, silentMs });
    peer.state = 'down';
    peer.probationStartMs = -1;
  }

  /**
   * Probation ends on evidence, not on the clock: only a heartbeat heard at least
   * `probationMs` after it began (with none of the gaps in between longer than the
   * timeout, or it would have restarted) proves the peer kept talking all along. A tick
   * alone never ends it, so a peer that fell silent just before the end stays out.
   */
  private completeProbation(id: string, peer: Peer, actions: DetectorAction[]): void {
    assert(peer.state === 'probation', 'completeProbation outside probation');
    if (peer.lastHeardMs - peer.probationStartMs >= this.probationMs) this.becomeUp(id, peer, actions);
  }

  private becomeUp(id: string, peer: Peer, actions: DetectorAction[]): void {
    peer.state = 'up';
    peer.probationStartMs = -1;
    actions.push({ kind: 'peer-up', peer: id });
  }
}
