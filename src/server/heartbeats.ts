// UDP heartbeats between the nodes of a cluster (docs/operations.md): every node sends a
// datagram to each peer every `heartbeat.intervalMs` from its `replication` address (the
// same port number as the mirror links, over UDP), and feeds what it receives to the
// failure detector (src/core/failure-detector.ts), which says when a peer is down and
// when it may be trusted again. Datagrams are authenticated with the cluster secret and
// carry an incarnation that grows with every start of the sender, and a counter, so
// forged, replayed, stale or foreign ones are dropped (and counted) and never make a
// silent peer look alive.
//
// Heartbeats use their own socket and timers, never a mirror connection, so a link busy
// with bulk data does not make its peer look dead. The socket comes from a datagram link
// and the time from a clock (src/io), so a test can run several nodes' heartbeats in one
// process on a MemoryNetwork and a ManualClock.

import path from 'node:path';
import { quorumMembers, type Address, type ClusterConfig, type NodeConfig } from '../control/config.js';
import { FailureDetector, type DetectorAction } from '../core/failure-detector.js';
import type { MemberView } from '../core/quorum.js';
import { BlockmirrorError, errnoCode } from '../lib/errors.js';
import { hmacSha256 } from '../lib/hmac.js';
import type { Logger } from '../lib/log.js';
import { decodeHeartbeat, encodeHeartbeat, type HeartbeatVolume } from '../protocol/heartbeat/datagram.js';
import type { DurableFiles } from '../storage/durable-files.js';
import { systemClock, type Clock, type Timer } from '../io/clock.js';
import { udpDatagramLink, type DatagramLink, type DatagramSocket } from '../io/datagram-link.js';

export interface HeartbeatCounters {
  heartbeatsSent: number;
  heartbeatsReceived: number;
  heartbeatsDropped: number;
}

export interface HeartbeatListener {
  peerUp(peer: string): void;
  peerDown(peer: string, reason: string): void;
  peerRestarted(peer: string): void;
  /** Every accepted heartbeat of `peer` (its connections' last sign of life), with what it says of its volumes. */
  peerHeard(peer: string, nowMs: number, volumes: readonly VolumeView[]): void;
}

/** What a node's heartbeats say of one volume it holds (or, a witness, counts toward the quorum of). */
export type VolumeView = HeartbeatVolume;

/**
 * The peers a node watches: every other node that holds a mirrored volume with it, and for
 * a `quorum: majority` volume every other member of its quorum (the witnesses too; a
 * witness watches the replicas of every such volume).
 */
export function watchedPeers(cluster: ClusterConfig, local: string): NodeConfig[] {
  const ids = new Set<string>();
  for (const volume of cluster.volumes) {
    if (volume.mode === 'local') continue;
    const members = volume.quorum === 'majority' ? quorumMembers(cluster, volume) : volume.replicas;
    if (!members.includes(local)) continue;
    for (const id of members) if (id !== local) ids.add(id);
  }
  return cluster.nodes.filter((node) => ids.has(node.id));
}

/**
 * The incarnation of this start of the node: later than every earlier one (stored in
 * `<dataDir>/incarnation`), so peers can tell a restart from a replayed old datagram.
 */
export function nextIncarnation(files: DurableFiles, dataDir: string, nowMs: number): number {
  const file = path.join(dataDir, 'incarnation');
  // Missing or unreadable (only a damaged disk makes it so): the clock alone decides.
  const previous = Number.parseInt(files.read(file)?.toString('utf8').trim() ?? '', 10) || 0;
  const incarnation = Math.max(nowMs, previous + 1);
  files.makeDir(dataDir, 'incarnation');
  files.replaceFile(file, `${incarnation}\n`, 'incarnation');
  return incarnation;
}

export class Heartbeats {
  private socket: DatagramSocket | null = null;
  private sendTimer: Timer | null = null;
  private tickTimer: Timer | null = null;
  private counter = 0;
  private readonly detector: FailureDetector;
  private readonly peers: NodeConfig[];
  private readonly secret: Buffer;
  /** Senders whose datagrams failed authentication, already reported (bounded). */
  private readonly reported = new Set<string>();
  /** What each peer's last accepted heartbeat said it hears, and when it came (this clock). */
  private readonly heard = new Map<string, { atMs: number; hears: string[]; volumes: HeartbeatVolume[] }>();

  constructor(
    private readonly cluster: ClusterConfig,
    private readonly local: NodeConfig,
    private readonly incarnation: number,
    private readonly volumes: () => VolumeView[],
    private readonly listener: HeartbeatListener,
    private readonly log: Logger,
    readonly counters: HeartbeatCounters,
    private readonly ports: { datagrams: DatagramLink; clock: Clock } = { datagrams: udpDatagramLink, clock: systemClock },
  ) {
    this.peers = watchedPeers(cluster, local.id);
    this.secret = Buffer.from(cluster.secret, 'utf8');
    this.detector = new FailureDetector({
      peers: this.peers.map((peer) => peer.id),
      timeoutMs: cluster.heartbeat.timeoutMs,
      probationMs: cluster.heartbeat.probationMs,
    });
  }

  /** Binds the UDP socket on the replication address's host and `port` (the TCP listener's). */
  async start(port: number): Promise<void> {
    const host = this.local.replication.host;
    try {
      this.socket = await this.ports.datagrams.bind(
        { host, port },
        (datagram, from) => this.onDatagram(datagram, from),
        (error) => this.log.warn('heartbeat socket error', { error: error.message }),
      );
    } catch (error) {
      if (errnoCode(error) === 'EADDRINUSE') {
        throw new BlockmirrorError('ERR_ADDRESS_IN_USE', `replication address ${host}:${port} (UDP, for heartbeats) is already in use`);
      }
      throw error;
    }
    const { intervalMs, timeoutMs } = this.cluster.heartbeat;
    const clock = this.ports.clock;
    const sendLoop = (): void => {
      this.sendAll();
      this.sendTimer = clock.after(intervalMs, sendLoop);
    };
    // Checked several times per timeout, so a silent peer is declared down promptly.
    // The detector's time is monotonic: a wall clock stepped back must not look like silence.
    const tickMs = Math.max(10, Math.min(intervalMs, Math.floor(timeoutMs / 4)));
    const tickLoop = (): void => {
      this.tickTimer = clock.after(tickMs, tickLoop);
      this.run(this.detector.tick(clock.nowMs()));
    };
    this.tickTimer = clock.after(tickMs, tickLoop);
    sendLoop();
  }

  stop(): void {
    this.sendTimer?.cancel();
    this.tickTimer?.cancel();
    this.sendTimer = null;
    this.tickTimer = null;
    this.socket?.close();
    this.socket = null;
  }

  /**
   * Whether mirror links to `peer` may be set up: while it is up, and before it has ever
   * been heard (so that a peer whose heartbeats cannot be verified, a wrong secret say,
   * still gets a handshake that says what is wrong). A peer that went down is trusted
   * again only after its probation.
   */
  mayConnect(peer: string): boolean {
    const state = this.detector.state(peer);
    return state === 'up' || state === 'unknown';
  }

  /** Whether the failure detector trusts `peer` now (it is up). */
  hears(peer: string): boolean {
    return this.detector.state(peer) === 'up';
  }

  /** What the heartbeats say of each watched peer and of `volume` there, for its quorum (src/core/quorum.ts). */
  memberViews(volume: string): MemberView[] {
    const nowMs = this.ports.clock.nowMs();
    return this.peers.map((peer) => {
      const last = this.heard.get(peer.id);
      const view = last?.volumes.find((candidate) => candidate.name === volume);
      return { node: peer.id, heardAgoMs: last === undefined ? null : nowMs - last.atMs, hears: last?.hears ?? [], epoch: view?.epoch ?? null, role: view?.role ?? null, synced: view?.synced ?? null, promise: view?.promise ?? null };
    });
  }

  /** How recent a member's heartbeat must be to count toward a quorum: well inside the timeout. */
  get quorumFreshMs(): number {
    const { intervalMs, timeoutMs } = this.cluster.heartbeat;
    return Math.min(2 * intervalMs, Math.floor(timeoutMs / 2));
  }

  /** Each watched peer: its state and how long ago it was last heard (-1: never). */
  status(): { peer: string; state: string; lastHeardAgoMs: number; incarnation: number }[] {
    const nowMs = this.ports.clock.nowMs();
    return this.detector.status().map((peer) => ({
      peer: peer.peer,
      state: peer.state,
      lastHeardAgoMs: peer.lastHeardMs < 0 ? -1 : Math.round(nowMs - peer.lastHeardMs),
      incarnation: peer.incarnation,
    }));
  }

  private sendAll(): void {
    const socket = this.socket;
    if (socket === null) return;
    const volumes = this.volumes();
    const hears = this.detector.status().filter((peer) => peer.state === 'up').map((peer) => peer.peer);
    for (const peer of this.peers) {
      const address: Address = peer.replication;
      if (address.port === 0) continue;
      this.counter += 1;
      const datagram = encodeHeartbeat(hmacSha256, this.secret, {
        incarnation: this.incarnation,
        counter: this.counter,
        cluster: this.cluster.cluster,
        fromNode: this.local.id,
        toNode: peer.id,
        volumes,
        hears,
      });
      socket.send(datagram, address, (ok) => {
        if (ok) this.counters.heartbeatsSent += 1;
      });
    }
  }

  private onDatagram(datagram: Buffer, sender: string): void {
    const decoded = decodeHeartbeat(hmacSha256, this.secret, datagram);
    const drop = (reason: string): void => {
      this.counters.heartbeatsDropped += 1;
      this.log.debug('heartbeat dropped', { from: sender, reason });
    };
    if (!decoded.ok) {
      if (decoded.reason === 'mac' && !this.reported.has(sender) && this.reported.size < 64) {
        this.reported.add(sender);
        this.log.warn('heartbeat failed authentication (a different cluster secret?)', { from: sender });
      }
      return drop(decoded.reason);
    }
    const { heartbeat } = decoded;
    if (heartbeat.cluster !== this.cluster.cluster || heartbeat.toNode !== this.local.id) return drop('foreign');
    const result = this.detector.heard(heartbeat.fromNode, heartbeat.incarnation, heartbeat.counter, this.ports.clock.nowMs());
    if (!result.accepted) return drop(result.reason);
    this.counters.heartbeatsReceived += 1;
    this.heard.set(heartbeat.fromNode, { atMs: this.ports.clock.nowMs(), hears: heartbeat.hears, volumes: heartbeat.volumes });
    this.listener.peerHeard(heartbeat.fromNode, Date.now(), heartbeat.volumes);
    this.run(result.actions);
  }

  private run(actions: DetectorAction[]): void {
    for (const action of actions) {
      switch (action.kind) {
        case 'peer-up':
          this.log.info('peer up', { peer: action.peer });
          this.listener.peerUp(action.peer);
          break;
        case 'peer-down':
          this.log.warn('peer down: no heartbeat', { peer: action.peer, silentMs: action.silentMs });
          this.listener.peerDown(action.peer, `no heartbeat for ${action.silentMs} ms`);
          break;
        case 'peer-restarted':
          this.log.info('peer restarted', { peer: action.peer });
          this.listener.peerRestarted(action.peer);
          break;
      }
    }
  }
}
