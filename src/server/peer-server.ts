// The node's listener on its `replication` address: accepts mirror connections from the
// primaries of the volumes this node holds as a secondary, authenticates them, and hands
// each to that volume's ReplicaTarget. A connection that is not from a known node of
// this cluster, for a volume this node mirrors from that node, is refused with a reason
// and a log line before any volume data can move.

import net from 'node:net';
import { constants } from '../constants.js';
import type { Address, ClusterConfig, NodeConfig } from '../control/config.js';
import type { Logger } from '../lib/log.js';
import { RefuseCode } from '../protocol/peer/frames.js';
import { closeServer, listen } from './listen.js';
import { acceptAsTarget, PeerLink, type HelloMessage } from './peer-link.js';
import type { ReplicaTarget } from './replica-target.js';

export class PeerServer {
  private server: net.Server | null = null;
  private readonly links = new Set<PeerLink>();
  private readonly secret: Buffer;

  constructor(
    private readonly cluster: ClusterConfig,
    private readonly local: NodeConfig,
    private readonly targets: ReadonlyMap<string, ReplicaTarget>,
    private readonly log: Logger,
    private readonly counters: { peerProtocolErrors: number; peerRefusals: number },
  ) {
    this.secret = Buffer.from(cluster.secret, 'utf8');
  }

  async start(): Promise<Address> {
    this.server = net.createServer({ noDelay: true }, (socket) => this.onConnection(socket));
    this.server.maxConnections = constants.peerConnectionsMax * Math.max(1, this.cluster.volumes.length) * this.cluster.nodes.length;
    return listen(this.server, this.local.replication, 'replication');
  }

  async stop(): Promise<void> {
    const closed = this.server === null ? Promise.resolve() : closeServer(this.server);
    for (const link of this.links) link.close('node stopping');
    await closed;
  }

  private onConnection(socket: net.Socket): void {
    const link = new PeerLink(socket, this.counters);
    this.links.add(link);
    link.onClose(() => this.links.delete(link));
    const log = this.log.child({ remote: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}` });
    acceptAsTarget(link, { cluster: this.cluster.cluster, secret: this.secret, localNode: this.local.id, check: (hello) => this.check(hello) }, log).then(
      (hello) => {
        const target = this.targets.get(hello.volume);
        if (target === undefined) {
          link.close('volume went away');
          return;
        }
        target.attach(hello, link);
      },
      () => {
        this.counters.peerRefusals += 1;
      },
    );
  }

  /** Whether the node a HELLO claims to be may mirror that volume to this node. */
  private check(hello: HelloMessage): { code: RefuseCode; message: string } | null {
    const from = this.cluster.nodes.find((node) => node.id === hello.fromNode);
    if (from === undefined || from.id === this.local.id) {
      return { code: RefuseCode.UNKNOWN_NODE, message: `"${hello.fromNode}" is not a node of cluster ${this.cluster.cluster}` };
    }
    const volume = this.cluster.volumes.find((candidate) => candidate.name === hello.volume);
    if (volume === undefined || !volume.replicas.includes(this.local.id)) {
      return { code: RefuseCode.VOLUME, message: `node ${this.local.id} holds no volume "${hello.volume}"` };
    }
    if (volume.mode === 'local') {
      return { code: RefuseCode.ROLE, message: `volume ${volume.name} is local (not mirrored)` };
    }
    if (volume.primary !== hello.fromNode) {
      return { code: RefuseCode.ROLE, message: `node ${hello.fromNode} is not the primary of volume ${volume.name} (${volume.primary ?? 'none'} is)` };
    }
    if (!this.targets.has(volume.name)) {
      return { code: RefuseCode.STATE, message: `volume ${volume.name} is not open on node ${this.local.id}` };
    }
    return null;
  }
}
