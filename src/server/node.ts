// The composition root of one blockmirror node: it opens the volumes this node holds,
// serves them over NBD, and answers the admin API. This module creates the node's parts
// (mirror engines, replica targets, heartbeats, listeners) and connects them; those that
// hold sockets or timers own them (docs/architecture.md).

import net from 'node:net';
import { checkConstants, constants } from '../constants.js';
import { formatAddress, type Address, type ClusterConfig, type NodeConfig, type VolumeConfig } from '../control/config.js';
import { BufferPool } from '../lib/buffer-pool.js';
import { BlockmirrorError, ConfigError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import type { ExportLookup } from '../protocol/nbd/negotiation.js';
import { IoActivity } from '../io/file-io.js';
import { systemClock, type Clock } from '../io/clock.js';
import { udpDatagramLink, type DatagramLink } from '../io/datagram-link.js';
import { tcpStreamLink, type StreamLink } from '../io/stream-link.js';
import { holdBusyPoll } from '../io/busy-poll.js';
import { DirtyBitmap } from '../core/dirty-bitmap.js';
import { DurableFiles } from '../storage/durable-files.js';
import { openVolumeStorage } from '../storage/volume-store.js';
import { AdminServer } from './admin.js';
import { Heartbeats, nextIncarnation, type HeartbeatListener, type VolumeView } from './heartbeats.js';
import { attachDisk } from './attach-disk.js';
import type { ClientVolume } from './mirrored-volume.js';
import { NbdConnection, type ConnectionCounters, type VolumeCatalog } from './nbd-connection.js';
import { PeerServer } from './peer-server.js';
import { VolumeRoles } from './volume-roles.js';
import { WitnessRecord } from './witness.js';
import type { DemotionResult, PromotionResult, ResolveResult, AttachResult } from './status.js';
import { closeServer, listen } from './listen.js';
import { diskState, type NodeView, type ServedVolume } from './served-volume.js';
import { EtcdCoordinator } from './coordinator.js';
import { Hooks } from './hooks.js';

/** What a node reaches its peers and time through: the real network and clock unless a test gives twins. */
export interface NodePorts {
  /** The mirror links. */
  streams: StreamLink;
  /** The heartbeats. */
  datagrams: DatagramLink;
  /** The heartbeats' and mirror engines' time. */
  clock: Clock;
}

export const systemPorts: NodePorts = { streams: tcpStreamLink, datagrams: udpDatagramLink, clock: systemClock };

export class BlockmirrorNode implements NodeView {
  readonly node: NodeConfig;
  readonly volumes = new Map<string, ServedVolume>();
  readonly counters: ConnectionCounters = { requests: 0, errorReplies: 0, protocolErrors: 0 };
  readonly peerCounters = { peerProtocolErrors: 0, peerRefusals: 0 };
  private readonly roles: VolumeRoles;
  private readonly hooks: Hooks;
  /** Coordination through etcd (null: static, promotion by command). */
  private readonly coordinator: EtcdCoordinator | null;
  /** On a witness node: the epochs it knows of the quorum volumes. */
  private readonly witness: WitnessRecord | null;
  private peerServer: PeerServer | null = null;
  private heartbeats: Heartbeats | null = null;
  readonly heartbeatCounters = { heartbeatsSent: 0, heartbeatsReceived: 0, heartbeatsDropped: 0 };
  replicationAddress: Address | null = null;
  private readonly connections = new Set<NbdConnection>();
  readonly ioActivity = new IoActivity();
  private readonly buffers = new BufferPool(constants.bufferPoolMinBytes, constants.bufferPoolBytesMax);
  private nbdServer: net.Server | null = null;
  private admin: AdminServer | null = null;
  private stopping: Promise<void> | null = null;
  private checkpointTimer: NodeJS.Timeout | null = null;
  private releaseBusyPoll: (() => void) | null = null;
  private readonly checkpointsWanted = new Set<string>();
  readonly startedAtMs = Date.now();
  nbdAddress: Address | null = null;
  adminAddress: Address | null = null;

  constructor(
    readonly config: ClusterConfig,
    nodeId: string,
    private readonly log: Logger,
    /** Every change to the node's durable files goes through here. */
    private readonly files: DurableFiles = new DurableFiles(),
    private readonly ports: NodePorts = systemPorts,
  ) {
    checkConstants();
    const node = config.nodes.find((candidate) => candidate.id === nodeId);
    if (node === undefined) throw new ConfigError('--node', `no node "${nodeId}" in the cluster file`);
    this.node = node;
    this.hooks = new Hooks(config.hooks, log.child({ node: node.id }));
    this.roles = new VolumeRoles(
      {
        cluster: config,
        node,
        files,
        streams: ports.streams,
        clock: ports.clock,
        log,
        counters: this.peerCounters,
        available: (peer) => this.heartbeats?.mayConnect(peer) === true,
        closeClients: (name) => this.closeClients(name),
        heartbeats: () => this.heartbeats,
        hooks: this.hooks,
        leaseGate: (name) => this.coordinator?.gate(name) ?? null,
      },
      this.volumes,
    );
    const { coordination } = config;
    this.coordinator = coordination.kind === 'etcd' ? new EtcdCoordinator(coordination, node, this.volumes, this.roles, this.hooks, ports.clock, log.child({ node: node.id })) : null;
    this.witness = node.witness ? new WitnessRecord(files, node.dataDir, config, node.id, log.child({ node: node.id })) : null;
    config.volumes.forEach((volume, index) => {
      if (volume.replicas.includes(nodeId) && volume.mode !== 'local' && volume.multiPrimary) {
        throw new ConfigError(
          `volumes[${index}].multiPrimary`,
          'writes on several nodes need region tokens, which this version does not have yet; name one primary',
        );
      }
    });
  }

  async start(): Promise<void> {
    for (const config of this.config.volumes) {
      if (!config.replicas.includes(this.node.id)) continue;
      await this.openVolume(config);
    }
    this.peerServer = new PeerServer(this.config, this.node, this.roles, this.log, this.peerCounters, this.ports.streams);
    this.replicationAddress = await this.peerServer.start();
    const heartbeats = new Heartbeats(
      this.config,
      this.node,
      nextIncarnation(this.files, this.node.dataDir, Date.now()),
      () => this.volumeViews(),
      this.heartbeatListener,
      this.log,
      this.heartbeatCounters,
      this.ports,
    );
    this.heartbeats = heartbeats;
    await heartbeats.start(this.replicationAddress.port);
    for (const served of this.volumes.values()) served.mirrored?.engine.start();
    this.coordinator?.start();
    this.checkpointTimer = setInterval(() => {
      for (const served of this.volumes.values()) this.checkpoint(served);
    }, this.config.log.cpIntervalMs);
    this.nbdServer = net.createServer({ noDelay: true }, (socket) => this.onConnection(socket));
    this.nbdServer.maxConnections = constants.nbdConnectionsMax;
    this.nbdAddress = await listen(this.nbdServer, this.node.nbd, 'nbd');
    this.admin = new AdminServer(this, this.log);
    this.adminAddress = await this.admin.start(this.node.admin);
    this.releaseBusyPoll = holdBusyPoll(this.config.busyPollMicros);
    this.log.info('node ready', {
      node: this.node.id,
      cluster: this.config.cluster,
      nbd: formatAddress(this.nbdAddress),
      admin: formatAddress(this.adminAddress),
      replication: formatAddress(this.replicationAddress),
      volumes: [...this.volumes.keys()].join(','),
    });
  }

  /**
   * Opens a volume's files and its log, replays the log after the last consistency
   * point, and takes a new one, so the volume file is durable before anyone is served.
   */
  private async openVolume(config: VolumeConfig): Promise<void> {
    const log = this.log.child({ volume: config.name });
    // Regions the log replays at this start: after a crash the peers may hold other data there.
    const replayed = config.mode !== 'local' && config.replicas.length > 1 ? new DirtyBitmap(config.sizeBytes, this.config.resync.regionBytes) : null;
    const started = Date.now();
    const opened = await openVolumeStorage({
      files: this.files,
      dataDir: this.node.dataDir,
      nodeId: this.node.id,
      config,
      geometry: { partitionBytes: this.config.log.partitionBytes, partitions: this.config.log.partitions },
      activity: this.ioActivity,
      log,
      onCheckpointWanted: () => this.checkpointSoon(config.name),
      replayed,
    });
    const { identity, paths, created, recovery } = opened;
    this.volumes.set(config.name, this.roles.serve(config, opened, replayed));
    log.info(created ? 'volume created' : 'volume opened', {
      uuid: identity.uuid,
      sizeBytes: identity.sizeBytes,
      image: paths.image,
      cpSeq: recovery.cpSeq,
      replayedEntries: recovery.replayedEntries,
      replayedBytes: recovery.replayedBytes,
      tornBytes: recovery.tornBytes,
      lastSeq: recovery.lastSeq,
      role: opened.role,
      epoch: opened.history.current.epoch,
      recoveryMs: Date.now() - started,
    });
  }

  /** A checkpoint soon (coalesced), when a log partition has filled up. */
  private checkpointSoon(name: string): void {
    if (this.checkpointsWanted.has(name)) return;
    this.checkpointsWanted.add(name);
    setImmediate(() => {
      this.checkpointsWanted.delete(name);
      const served = this.volumes.get(name);
      if (served !== undefined) this.checkpoint(served);
    });
  }

  private checkpoint(served: ServedVolume): void {
    // A diskless primary's consistency points are its peers' alone (their logs are released).
    if ((served.volume.failed && served.mirrored?.diskless !== true) || served.changing !== null || !VolumeRoles.active(served)) return;
    (served.mirrored?.checkpoint() ?? served.volume.checkpoint()).catch((error: unknown) => {
      this.log.error('consistency point failed', { volume: served.config.name, error: String(error) });
    });
  }

  /** Stops accepting, drains in-flight requests, syncs and closes every volume. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    this.log.info('node stopping', { connections: this.connections.size });
    this.releaseBusyPoll?.();
    const serverClosed = this.nbdServer === null ? Promise.resolve() : closeServer(this.nbdServer);
    // Replies a quorum gate holds fail now, so that their connections drain.
    for (const served of this.volumes.values()) served.mirrored?.gate?.stopping('the node is stopping');
    await Promise.all([...this.connections].map((connection) => connection.shutdown(constants.shutdownDrainMs)));
    await serverClosed;
    // The lease is left to expire: another copy is promoted once it has (docs/operations.md).
    await this.coordinator?.stop();
    if (this.checkpointTimer !== null) clearInterval(this.checkpointTimer);
    for (const served of this.volumes.values()) {
      const { volume, config, mirrored, target } = served;
      target?.close();
      let clean = false;
      try {
        // A final CP: the next start has nothing to replay, here or on the peers.
        if (!volume.failed && VolumeRoles.active(served)) {
          await (mirrored?.checkpoint() ?? volume.checkpoint());
          clean = true;
        }
      } catch (error) {
        this.log.error('consistency point failed at shutdown', { volume: config.name, error: String(error) });
      }
      await mirrored?.engine.stop(clean ? volume.log.lastSeq : null);
      await volume.close().catch((error: unknown) => this.log.error('closing the volume failed', { volume: config.name, error: String(error) }));
    }
    await this.peerServer?.stop();
    this.heartbeats?.stop();
    await this.admin?.stop();
    await this.hooks.settle();
    this.log.info('node stopped', { node: this.node.id });
  }

  /** What this node's heartbeats say about its volumes (a witness: the epochs it knows). */
  private volumeViews(): VolumeView[] {
    const views: VolumeView[] = [...this.volumes.values()].map((served) => ({
      name: served.config.name,
      ...this.roles.quorum.view(served),
      disk: diskState(served),
      epoch: served.volume.replica.epoch,
      lastSeq: served.volume.log.lastSeq,
      synced: served.config.quorum === 'majority' ? this.roles.quorum.synced(served) : [],
    }));
    return this.witness === null ? views : [...views, ...this.witness.views()];
  }

  /** The failure detector's verdicts, passed to every mirror engine and replica target that involves the peer. */
  private readonly heartbeatListener: HeartbeatListener = {
    peerUp: (peer) => {
      for (const served of this.volumes.values()) served.mirrored?.engine.peerUp(peer);
    },
    peerDown: (peer, reason) => {
      for (const served of this.volumes.values()) {
        served.mirrored?.engine.peerDown(peer, reason);
        if (served.target?.source === peer) served.target.sourceDown(reason);
      }
    },
    peerRestarted: (peer) => {
      for (const served of this.volumes.values()) served.mirrored?.engine.peerRestarted(peer);
    },
    peerHeard: (peer, nowMs, views) => {
      for (const served of this.volumes.values()) {
        served.mirrored?.engine.peerHeard(peer, nowMs);
        const view = views.find((candidate) => candidate.name === served.config.name);
        if (served.target?.source === peer) served.target.sourceHeard(nowMs, view?.lastSeq ?? null);
        if (view?.role === 'primary') this.roles.quorum.heardSynced(served, peer, view.epoch, view.synced);
        this.roles.quorum.heard(served);
        // A primary of a newer epoch, or a member's promise of one: this node is no longer the primary (fenced).
        const promised = this.roles.quorum.fence(served);
        const fencedBy =
          view?.role === 'primary' && view.epoch > served.volume.replica.epoch && served.volume.replica.role === 'primary'
            ? `node ${peer} is primary in epoch ${view.epoch}`
            : promised !== null
              ? `node ${promised.node} promised epoch ${promised.promise?.epoch ?? '?'} to ${promised.promise?.to ? `node ${promised.promise.to}` : 'no one (it learned it)'}`
              : null;
        if (fencedBy !== null) {
          void this.roles.stepDown(served.config.name, fencedBy).catch((error: unknown) => {
            this.log.error('could not step down', { volume: served.config.name, error: String(error) });
          });
        }
      }
      this.witness?.heard(peer, views, this.heartbeats);
    },
  };

  /** Makes this node's copy of `name` the primary in the next epoch (see VolumeRoles.promote). */
  promote(name: string, force: boolean): Promise<PromotionResult> {
    if (this.coordinator === null) return this.roles.promote(name, force);
    // Through etcd a promotion is a claim there: one that bypassed it could make two primaries.
    if (force) return Promise.reject(new BlockmirrorError('ERR_ROLE_REFUSED', `the cluster's primaries are chosen through etcd, which a forced promotion would bypass; to promote by hand without etcd, set coordination: static in the cluster file on every node`));
    return this.coordinator.promoteByCommand(name);
  }

  /** This node, the primary of `name`, steps down (see VolumeRoles.demote). */
  demote(name: string): Promise<DemotionResult> {
    return this.roles.demote(name);
  }

  resolve(name: string, discard: string): Promise<ResolveResult> {
    return this.roles.resolve(name, discard);
  }

  attach(name: string): Promise<AttachResult> {
    return attachDisk(name, this.volumes.get(name), { cluster: this.config, node: this.node, files: this.files, activity: this.ioActivity, log: this.log });
  }

  coordinationStatus(): ReturnType<NodeView['coordinationStatus']> {
    return this.coordinator?.status() ?? { kind: 'static' };
  }

  get hookCounts(): NodeView['hookCounts'] {
    return this.hooks.counts;
  }

  witnessStatus(): ReturnType<NodeView['witnessStatus']> {
    return this.witness?.status() ?? null;
  }

  /** A `quorum: majority` volume's quorum here (VolumeQuorum.of), or null. */
  quorumOf(served: ServedVolume): ReturnType<NodeView['quorumOf']> {
    const count = this.roles.quorum.of(served);
    if (count === null) return null;
    const record = this.roles.quorum.record(served.config.name);
    return { ...count, promise: record?.promise ?? null, learning: record?.learning ?? false };
  }

  /** Drains the NBD connections of a volume and closes them (a demotion). */
  private async closeClients(name: string): Promise<void> {
    const attached = [...this.connections].filter((connection) => connection.exportName === name);
    await Promise.all(attached.map((connection) => connection.shutdown(constants.shutdownDrainMs)));
  }

  heartbeatStatus(): ReturnType<Heartbeats['status']> {
    return this.heartbeats?.status() ?? [];
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  private onConnection(socket: net.Socket): void {
    if (this.stopping !== null) {
      socket.destroy();
      return;
    }
    const peer = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    const connection = new NbdConnection(socket, this.catalog, this.log.child({ client: peer }), this.counters, this.buffers, this.ioActivity);
    this.connections.add(connection);
    socket.once('close', () => this.connections.delete(connection));
    connection.start();
  }

  private readonly catalog: VolumeCatalog = {
    lookup: (name: string): ExportLookup => {
      const served = this.exportOf(name);
      if (served === undefined) return { kind: 'unknown' };
      if (served.role === 'secondary') {
        const primary = served.volume.replica.history.primaryNow ?? '?';
        const where = this.config.nodes.find((node) => node.id === primary);
        const at = where === undefined ? '' : ` at ${formatAddress(where.nbd)}`;
        if (served.config.secondaryAccess !== 'read-only') {
          return { kind: 'refused', message: `volume ${served.config.name} is served by its primary, node ${primary}${at}; this node holds a secondary copy` };
        }
        if (served.target?.status().session !== true) {
          return { kind: 'refused', message: `the secondary copy of ${served.config.name} on this node is not up to date; use the primary, node ${primary}${at}` };
        }
      }
      return {
        kind: 'ok',
        export: {
          name: served.config.name,
          description: served.config.description,
          sizeBytes: served.identity.sizeBytes,
          readOnly: served.config.readOnly || served.role === 'secondary',
        },
      };
    },
    list: () => [...this.volumes.values()].map(({ config }) => ({ name: config.name, description: config.description })),
    volume: (name: string): ClientVolume => {
      const served = this.volumes.get(name);
      if (served === undefined) throw new BlockmirrorError('ERR_VOLUME_IO', `volume ${name} is not served here`);
      return served.mirrored ?? served.volume;
    },
  };

  /** '' (the default export of NBD clients given no name) is the first volume this node is primary of. */
  private exportOf(name: string): ServedVolume | undefined {
    if (name === '') return [...this.volumes.values()].find((served) => served.role === 'primary') ?? this.volumes.values().next().value;
    return this.volumes.get(name);
  }
}
