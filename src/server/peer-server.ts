// The node's listener on its `replication` address: accepts mirror connections from the
// primaries of the volumes this node holds, authenticates them, and hands each to the
// volume (its ReplicaTarget, through VolumeRoles). A connection that is not from a known
// node of this cluster, for a mirrored volume this node holds, from the primary of an
// epoch this copy can follow (VolumeRoles.check), is refused with a reason and a log line
// before any volume data can move.

import { constants } from '../constants.js';
import { formatAddress, type Address, type ClusterConfig, type NodeConfig } from '../control/config.js';
import { BlockmirrorError, errnoCode } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import type { ByteStream, StreamLink, StreamListener } from '../io/stream-link.js';
import { RefuseCode } from '../protocol/peer/frames.js';
import { acceptAsTarget, PeerLink, type HelloMessage } from './peer-link.js';

/** The volumes this node holds, as the peer server asks about them (VolumeRoles). */
export interface PeerVolumes {
  /** Why a HELLO for the volume cannot go on, or null (see VolumeRoles.check). */
  check(name: string, hello: HelloMessage): { code: RefuseCode; message: string } | null;
  /** An authenticated connection of the volume's source. */
  attach(name: string, hello: HelloMessage, link: PeerLink): void;
}

export class PeerServer {
  private listener: StreamListener | null = null;
  private readonly links = new Set<PeerLink>();
  private readonly secret: Buffer;

  constructor(
    private readonly cluster: ClusterConfig,
    private readonly local: NodeConfig,
    private readonly volumes: PeerVolumes,
    private readonly log: Logger,
    private readonly counters: { peerProtocolErrors: number; peerRefusals: number },
    private readonly streams: StreamLink,
  ) {
    this.secret = Buffer.from(cluster.secret, 'utf8');
  }

  async start(): Promise<Address> {
    const address = this.local.replication;
    const connectionsMax = constants.peerConnectionsMax * Math.max(1, this.cluster.volumes.length) * this.cluster.nodes.length;
    try {
      this.listener = await this.streams.listen(address, connectionsMax, (stream) => this.onConnection(stream));
    } catch (error) {
      if (errnoCode(error) === 'EADDRINUSE') {
        throw new BlockmirrorError('ERR_ADDRESS_IN_USE', `replication address ${formatAddress(address)} is already in use`);
      }
      throw error;
    }
    return this.listener.address;
  }

  async stop(): Promise<void> {
    const closed = this.listener === null ? Promise.resolve() : this.listener.close();
    for (const link of this.links) link.close('node stopping');
    await closed;
  }

  private onConnection(stream: ByteStream): void {
    const link = new PeerLink(stream, this.counters);
    this.links.add(link);
    link.onClose(() => this.links.delete(link));
    const log = this.log.child({ remote: stream.remote });
    acceptAsTarget(link, { cluster: this.cluster.cluster, secret: this.secret, localNode: this.local.id, check: (hello) => this.check(hello) }, log).then(
      (hello) => this.volumes.attach(hello.volume, hello, link),
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
    if (!volume.replicas.includes(hello.fromNode)) {
      return { code: RefuseCode.ROLE, message: `node ${hello.fromNode} holds no copy of volume ${volume.name}` };
    }
    return this.volumes.check(volume.name, hello);
  }
}
