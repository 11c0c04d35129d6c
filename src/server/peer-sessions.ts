// The sessions of a primary's mirror with each of its peers, for one volume: the array of
// connections a session has (connected through the StreamLink port, each one's handshake
// in peer-link.ts), when to connect again (each peer's PeerConnector, src/core/
// peer-connector.ts, told of the failure detector's verdicts and of failed, lost and
// dropped sessions; its waits run on the Clock), and the frames that arrive. What a
// session's READY, frames and loss mean is the mirror engine's (mirror-engine.ts), which
// hears of them through SessionEvents.

import crypto from 'node:crypto';
import { constants } from '../constants.js';
import type { NodeConfig } from '../control/config.js';
import { assert } from '../lib/assert.js';
import type { Logger } from '../lib/log.js';
import { PeerConnector, type ConnectorAction } from '../core/peer-connector.js';
import type { PeerEpochStart, PeerMessage } from '../protocol/peer/frames.js';
import type { Clock, Timer } from '../io/clock.js';
import type { StreamLink } from '../io/stream-link.js';
import { RefuseCode } from '../protocol/peer/frames.js';
import { connectAsSource, HandshakeRefused, type PeerLink, type ReadyMessage, type SplitBrainMessage } from './peer-link.js';

/** One peer's connection array, its session and its reconnect schedule. */
export interface PeerSession {
  node: NodeConfig;
  links: PeerLink[];
  /** A new random number per session: transfers of an earlier session stop (see MirrorEngine.transferPeer). */
  session: number;
  up: boolean;
  /** When to connect again (PeerConnector's decisions). */
  connector: PeerConnector;
  /** The connector's wait, while one is set. */
  timer: Timer | null;
  /** Wakes a resync waiting for the peer to make regions durable. */
  progress: (() => void) | null;
  /** The resync under way: when it started and how much it had to send. */
  resyncStart: { atMs: number; bytes: number } | null;
  /** IN_SYNC went out in this session. */
  toldInSync: boolean;
}

/** What the mirror engine hears of its sessions. */
export interface SessionEvents {
  /** A session is being set up (its links are not up yet). */
  connecting(peer: PeerSession): void;
  /** A session is up, with the target's READY. */
  ready(peer: PeerSession, ready: ReadyMessage): void;
  /** A frame from the target, on one of the session's links. */
  message(peer: PeerSession, link: PeerLink, message: PeerMessage): void;
  /** The session's links went down (they are closed already); `stopping` once the mirror stops. */
  lost(peer: PeerSession, reason: string, stopping: boolean): void;
  /** The peer refused the session: it knows a newer epoch, in which this node is not the primary. */
  stale(peer: PeerSession, message: string): void;
  /** The peer found the copies in split brain (it tries again later unless told to discard). */
  splitBrain(peer: PeerSession, found: SplitBrainMessage): void;
}

export interface SessionParts {
  clusterName: string;
  secret: Buffer;
  local: NodeConfig;
  peers: NodeConfig[];
  volume: string;
  /** Connections per session (the connection array). */
  connections: number;
  /** This node's history of the volume, whose last epoch (the one it is primary in) HELLO names. */
  history: () => PeerEpochStart[];
  /** The last entry this node's copy holds (HELLO names it). */
  lastSeq: () => number;
  streams: StreamLink;
  clock: Clock;
  log: Logger;
  counters: { peerProtocolErrors: number };
  /** Whether the failure detector currently trusts the peer (heartbeats). */
  available: (peer: string) => boolean;
  events: SessionEvents;
}

export class PeerSessions {
  private readonly peers = new Map<string, PeerSession>();
  private stopped = false;

  constructor(private readonly parts: SessionParts) {
    for (const node of parts.peers) {
      this.peers.set(node.id, {
        node,
        links: [],
        session: 0,
        up: false,
        connector: new PeerConnector(constants.peerReconnectDelayMsMin, constants.peerReconnectDelayMsMax),
        timer: null,
        progress: null,
        resyncStart: null,
        toldInSync: false,
      });
    }
  }

  get(id: string): PeerSession | undefined {
    return this.peers.get(id);
  }

  /** The session of a peer of this volume (any other is a bug). */
  of(id: string): PeerSession {
    const peer = this.peers.get(id);
    assert(peer !== undefined, `unknown peer ${id}`);
    return peer;
  }

  all(): PeerSession[] {
    return [...this.peers.values()];
  }

  /** The mirror starts: connect to every peer the heartbeats allow. */
  start(): void {
    for (const peer of this.peers.values()) this.reconnect(peer, peer.connector.start(this.parts.available(peer.node.id)));
  }

  // ---- the failure detector's verdicts --------------------------------------------------------

  /** Heartbeats say the peer is up (first contact, or after its probation): connect. */
  peerUp(id: string): void {
    const peer = this.peers.get(id);
    if (peer !== undefined) this.reconnect(peer, peer.connector.heartbeatUp());
  }

  /** The peer went silent: its connections are closed and it is not retried until it is up again. */
  peerDown(id: string, reason: string): void {
    const peer = this.peers.get(id);
    if (peer === undefined) return;
    this.reconnect(peer, peer.connector.heartbeatDown());
    for (const link of peer.links) link.close(`peer down: ${reason}`);
  }

  /** The peer restarted: connections to its earlier run are dead; set them up anew. */
  peerRestarted(id: string): void {
    const peer = this.peers.get(id);
    if (peer === undefined) return;
    for (const link of peer.links) link.close('peer restarted');
    this.peerUp(id);
  }

  /** A heartbeat from the peer: the time goes into every element of its connection array. */
  peerHeard(id: string, nowMs: number): void {
    for (const link of this.peers.get(id)?.links ?? []) link.lastHeartbeatMs = nowMs;
  }

  /** The mirror no longer counts the peer (the core dropped it while its links were up): close them, retry later. */
  drop(id: string, reason: string): void {
    const peer = this.of(id);
    if (!peer.up) return;
    peer.up = false;
    for (const link of peer.links) link.close(`dropped: ${reason}`);
    peer.links = [];
    this.retry(peer, reason);
  }

  /** No more connections, retries or events: every link closes. */
  stop(): void {
    this.stopped = true;
    for (const peer of this.peers.values()) {
      peer.timer?.cancel();
      for (const link of peer.links) link.close('node stopping');
    }
  }

  /** Carries out the peer's connector's actions. */
  private reconnect(peer: PeerSession, actions: ConnectorAction[]): void {
    for (const action of actions) {
      if (this.stopped) return;
      switch (action.kind) {
        case 'connect':
          this.connect(peer);
          break;
        case 'wait':
          peer.timer = this.parts.clock.after(action.delayMs, () => {
            peer.timer = null;
            this.reconnect(peer, peer.connector.timerFired(this.parts.available(peer.node.id)));
          });
          break;
        case 'cancel-wait':
          peer.timer?.cancel();
          peer.timer = null;
          break;
        case 'report':
          this.parts.log.warn('peer connection failed', { peer: peer.node.id, problem: action.problem });
          break;
      }
    }
  }

  private connect(peer: PeerSession): void {
    peer.session = crypto.randomBytes(4).readUInt32BE(0);
    const session = peer.session;
    const { connections, local } = this.parts;
    this.parts.events.connecting(peer);
    const attempts = Array.from({ length: connections }, (_, index) =>
      connectAsSource(
        this.parts.streams,
        local.replication,
        peer.node.replication,
        {
          cluster: this.parts.clusterName,
          secret: this.parts.secret,
          fromNode: local.id,
          toNode: peer.node.id,
          volume: this.parts.volume,
          session,
          connectionIndex: index,
          connections,
          history: this.parts.history(),
          lastSeq: this.parts.lastSeq(),
        },
        this.parts.counters,
      ),
    );
    void Promise.allSettled(attempts).then((results) => {
      const links = results.flatMap((result) => (result.status === 'fulfilled' ? [result.value.link] : []));
      const failure = results.find((result): result is PromiseRejectedResult => result.status === 'rejected');
      const last = results[results.length - 1];
      if (this.stopped || failure !== undefined || last === undefined || last.status !== 'fulfilled') {
        for (const link of links) link.close('session incomplete');
        const reason: unknown = failure?.reason;
        if (!this.stopped && reason instanceof HandshakeRefused && reason.code === RefuseCode.STALE_EPOCH) {
          this.parts.events.stale(peer, reason.message);
          return;
        }
        if (!this.stopped && reason instanceof HandshakeRefused && reason.splitBrain !== null) this.parts.events.splitBrain(peer, reason.splitBrain);
        const problem = failure === undefined ? 'node stopping' : String((failure.reason as Error).message);
        this.retry(peer, problem);
        return;
      }
      peer.links = links;
      peer.up = true;
      peer.toldInSync = false;
      peer.connector.connected();
      for (const link of links) {
        link.receive((message) => this.parts.events.message(peer, link, message));
        link.onClose((reason) => this.linkLost(peer, session, reason));
      }
      this.parts.events.ready(peer, last.value.ready);
    });
  }

  /** The session failed, was lost or dropped: the connector says when to try again. */
  private retry(peer: PeerSession, problem: string): void {
    if (this.stopped) return;
    this.reconnect(peer, peer.connector.failed(problem, this.parts.available(peer.node.id)));
  }

  private linkLost(peer: PeerSession, session: number, reason: string): void {
    if (peer.session !== session || !peer.up) return;
    peer.up = false;
    for (const link of peer.links) link.close(reason);
    peer.links = [];
    if (!this.stopped) this.parts.log.warn('peer connection lost', { peer: peer.node.id, reason });
    this.parts.events.lost(peer, reason, this.stopped);
    this.retry(peer, reason);
  }
}

/**
 * The connection that carries the entries of the region `offset` falls in: always the same
 * one, so that per-block order holds while the connections share the load.
 */
export function linkFor(peer: PeerSession, offset: number): PeerLink | undefined {
  return peer.links[Math.floor(offset / constants.mirrorRegionBytes) % Math.max(1, peer.links.length)];
}
