// A deterministic simulation of one mirrored volume: a primary (MirrorSource) and one or
// two secondaries (MirrorTarget each) in one process, with clients, disks and links made
// of events on a virtual clock (event-queue.ts) and every choice drawn from one seeded
// Prng. It plays the part src/server plays for real — it performs the cores' actions and
// reports completions back — and lets the Checker look at every step. It must never read
// a real clock, start a timer or call Math.random(): a seed replays a run exactly.
//
// The primary assigns sequence numbers in arrival order, writes its image at once (so
// writes to one block land in seq order) and reports its own disk write, and for FUA and
// FLUSH its fdatasync, after a delay; it takes consistency points as the write log does.
// The secondaries are secondary.ts. disconnect()/reconnect() are the hooks for
// partitions and crashes.

import { MirrorSource, type DiskState, type SourceAction } from '../../src/core/mirror-source.js';
import { Prng } from '../unit/prng.js';
import { Checker, SimFailure, type CheckedCluster } from './checker.js';
import type { SimConfig, UsRange } from './config.js';
import { EventQueue } from './event-queue.js';
import { Secondary } from './secondary.js';
import { Replica, entryBytes, writeFrame, type Frame, type WriteFrame } from './volume.js';

export type { SimConfig } from './config.js';

export interface ClientRequest {
  token: number;
  clientId: number;
  kind: 'write' | 'fua' | 'flush';
  frame: WriteFrame | null;
  /** A write's entry; for a FLUSH, the last entry when it arrived. -1 until it arrives. */
  seq: number;
  sentAtUs: number;
  ackedAtUs: number | null;
  /** FLUSH: the writes answered before it was sent, which it must make durable. */
  ackedBefore: readonly ClientRequest[];
}

interface Client {
  id: number;
  opsLeft: number;
  inFlight: number;
  timerSet: boolean;
  /** Requests of one client arrive in the order sent (one NBD connection). */
  lastArrivalUs: number;
}

export interface RunSummary {
  config: SimConfig;
  events: number;
  virtualUs: number;
  lastSeq: number;
  answered: { write: number; fua: number; flush: number };
  checkpoints: number;
  messages: { sent: number; lost: number };
  maxQueuedBytes: number;
  queuedBytesBound: number;
  maxInflightBytes: number;
  maxBufferedBytes: number;
  checks: number;
  drops: string[];
  faultInjected: boolean;
  peers: { id: string; inSync: boolean; storedSeq: number; durableSeq: number }[];
}

export class Cluster implements CheckedCluster {
  readonly queue = new EventQueue();
  readonly source: MirrorSource<Frame>;
  readonly primary: Replica;
  readonly peers: Secondary[] = [];
  readonly requests = new Map<number, ClientRequest>();
  readonly checker: Checker;
  private readonly prng: Prng;
  private readonly cumulativeBytes: number[] = [0];
  private readonly clients: Client[] = [];
  private readonly answeredWrites: ClientRequest[] = [];
  private readonly answered = { write: 0, fua: 0, flush: 0 };
  private nextToken = 1;
  private nextWriteId = 1;
  /** The peer whose drop the sim itself is causing (a disconnect, or a connect the source refuses). */
  private expectedDrop: string | null = null;
  private checkpointRunning = false;
  private lastMarkerSeq = 0;
  private lastCpSeq = 0;
  private checkpoints = 0;
  private readonly drops: string[] = [];
  private readonly fault = { injected: false };

  constructor(
    readonly config: SimConfig,
    private readonly trace: ((line: string) => void) | null = null,
  ) {
    this.prng = new Prng((config.seed ^ 0x5bd1e995) >>> 0);
    const { mode, windowBytesMax, lagBytesMax, catchUpBytesMax } = config;
    this.source = new MirrorSource<Frame>({ mode, strict: false, peers: config.peers, lastSeq: 0, lagBytesMax, windowBytesMax, catchUpBytesMax });
    this.primary = new Replica('primary', config.blocks, config.blockBytes);
    this.checker = new Checker(this);
    const context = {
      config,
      queue: this.queue,
      prng: this.prng,
      checker: this.checker,
      source: this.source,
      onSource: (actions: SourceAction<Frame>[]): void => this.onSource(actions),
      fault: this.fault,
    };
    for (const id of config.peers) this.peers.push(new Secondary(id, context));
    for (let id = 1; id <= config.clients; id += 1) this.clients.push({ id, opsLeft: config.opsPerClient, inFlight: 0, timerSet: false, lastArrivalUs: 0 });
  }

  nowUs(): number {
    return this.queue.now;
  }

  bytesThrough(seq: number): number {
    const bytes = this.cumulativeBytes[seq];
    if (bytes === undefined) throw new Error(`no entry ${seq} on the primary`);
    return bytes;
  }

  run(): RunSummary {
    for (const peer of this.peers) this.connect(peer);
    for (const client of this.clients) this.scheduleClient(client);
    this.scheduleCheckpoint();
    for (const cut of this.config.cuts) {
      const peer = this.peer(cut.peer);
      this.queue.at(cut.atUs, `cut ${peer.id}`, () => this.disconnect(peer, 'links cut by the simulator'));
      const after = cut.reconnectAfterUs;
      if (after !== null) this.queue.at(cut.atUs + after, `reconnect ${peer.id}`, () => this.reconnect(peer));
    }
    for (let label = this.queue.step(); label !== null; label = this.queue.step()) {
      this.trace?.(`${this.queue.now}us ${label}`);
      this.checker.afterEvent();
      if (this.queue.executed > this.config.eventsMax) throw new SimFailure(`no quiet after ${this.config.eventsMax} events (a livelock?)`);
    }
    this.checker.final();
    return this.summary();
  }

  // ---- peers --------------------------------------------------------------------------

  private peer(id: string): Secondary {
    const peer = this.peers.find((each) => each.id === id);
    if (peer === undefined) throw new Error(`no peer ${id}`);
    return peer;
  }

  private connect(peer: Secondary): void {
    peer.links.open();
    peer.inSync = true;
    this.expectedDrop = peer.id;
    this.onSource(this.source.connected(peer.id, peer.ready()));
    this.expectedDrop = null;
  }

  /** The peer's links go down: what is in flight is lost, and the target's session ends. */
  disconnect(peer: Secondary, reason: string): void {
    if (!peer.inSync) return;
    peer.cut();
    this.expectedDrop = peer.id;
    this.onSource(this.source.disconnected(peer.id, reason));
    this.expectedDrop = null;
  }

  /** As the node does: once the target is idle, a new session with its READY. */
  reconnect(peer: Secondary): void {
    if (peer.inSync) return;
    if (!peer.target.ready().idle) {
      this.queue.after(200, `reconnect ${peer.id} (target busy)`, () => this.reconnect(peer));
      return;
    }
    this.source.connecting(peer.id);
    this.connect(peer);
  }

  private onPeerDropped(id: string, disk: DiskState, reason: string): void {
    this.drops.push(`${id} (${disk}) at ${this.queue.now}us: ${reason}`);
    const peer = this.peer(id);
    // A peer that is away may be given up on when it misses more than the source keeps for it.
    const givenUpWhileAway = !peer.inSync && reason.includes('while away');
    if (this.expectedDrop !== id && !givenUpWhileAway) throw new SimFailure(`the source dropped ${id} (${disk}) unexpectedly: ${reason}`);
    if (peer.inSync) peer.cut();
  }

  // ---- clients ------------------------------------------------------------------------

  private draw(range: UsRange): number {
    return this.prng.between(range.minUs, range.maxUs);
  }

  private scheduleClient(client: Client): void {
    if (client.timerSet || client.opsLeft === 0 || client.inFlight >= this.config.outstandingPerClient) return;
    client.timerSet = true;
    this.queue.after(this.draw(this.config.thinkUs), `client ${client.id} sends`, () => {
      client.timerSet = false;
      this.send(client);
      this.scheduleClient(client);
    });
  }

  private send(client: Client): void {
    const { config, prng } = this;
    client.opsLeft -= 1;
    client.inFlight += 1;
    const roll = prng.below(100);
    const kind = roll < 10 ? 'flush' : roll < 25 ? 'fua' : 'write';
    let frame: WriteFrame | null = null;
    if (kind !== 'flush') {
      const firstBlock = prng.chance(config.hotChance) ? prng.below(config.hotBlocks) : prng.below(config.blocks);
      const blockCount = Math.min(prng.between(1, config.writeBlocksMax), config.blocks - firstBlock);
      frame = writeFrame(this.nextWriteId, client.id, firstBlock, blockCount, config.blockBytes);
      this.nextWriteId += 1;
    }
    const request: ClientRequest = {
      token: this.nextToken,
      clientId: client.id,
      kind,
      frame,
      seq: -1,
      sentAtUs: this.queue.now,
      ackedAtUs: null,
      ackedBefore: kind === 'flush' ? [...this.answeredWrites] : [],
    };
    this.nextToken += 1;
    this.requests.set(request.token, request);
    const delayUs = prng.between(config.clientNetwork.minUs, config.clientNetwork.maxUs);
    client.lastArrivalUs = Math.max(client.lastArrivalUs, this.queue.now + delayUs);
    this.queue.at(client.lastArrivalUs, `${kind} ${request.token} arrives`, () => this.arrived(request));
  }

  private clientsActive(): boolean {
    return this.clients.some((client) => client.opsLeft > 0 || client.inFlight > 0);
  }

  // ---- the primary --------------------------------------------------------------------

  private arrived(request: ClientRequest): void {
    const { token, frame } = request;
    if (frame === null) {
      request.seq = this.source.lastSeq;
      this.onSource(this.source.request(token, request.seq, true));
      this.primarySync(() => this.onSource(this.source.localDone(token, null)));
      return;
    }
    request.seq = this.append(frame);
    this.primary.image.write(frame);
    this.onSource(this.source.request(token, request.seq, request.kind === 'fua'));
    this.primaryWrite(request.seq, () => {
      if (request.kind === 'fua') this.primarySync(() => this.onSource(this.source.localDone(token, null)));
      else this.onSource(this.source.localDone(token, null));
    });
  }

  /** Appends an entry to the primary's log and hands it to the mirror. */
  private append(frame: Frame): number {
    const seq = this.source.lastSeq + 1;
    this.primary.append(seq, frame);
    const bytes = entryBytes(frame);
    this.cumulativeBytes.push(this.bytesThrough(seq - 1) + bytes);
    // A CP marker's offset field is a sequence number: it is routed like offset 0.
    const offset = frame.kind === 'write' ? frame.firstBlock * this.config.blockBytes : 0;
    this.onSource(this.source.appended({ seq, bytes, offset, frame }));
    return seq;
  }

  private primaryWrite(seq: number, done: () => void): void {
    this.queue.after(this.draw(this.config.diskWriteUs), `primary writes ${seq}`, () => {
      this.primary.record(seq).stored = true;
      done();
    });
  }

  /** An fdatasync: it covers the entries written when it starts. */
  private primarySync(done: () => void): void {
    const covered: number[] = [];
    for (let seq = this.primary.durablePrefix + 1; seq <= this.primary.lastSeq; seq += 1) {
      const record = this.primary.record(seq);
      if (record.stored && !record.durable) covered.push(seq);
    }
    this.queue.after(this.draw(this.config.diskSyncUs), 'primary fdatasync', () => {
      for (const seq of covered) if (!this.primary.record(seq).durable) this.primary.markDurable(seq);
      done();
    });
  }

  /**
   * Consistency points, as the write log takes them: sync, append a marker, and tell the
   * mirror the CP (the marker's seq if nothing came between). A new CP waits until the
   * last marker is acknowledged by every streaming peer; a node's CP interval (seconds)
   * is far longer than a round trip, and this keeps the bound of invariant (e) exact.
   */
  private scheduleCheckpoint(): void {
    this.queue.after(this.draw(this.config.checkpointIntervalUs), 'checkpoint timer', () => {
      if (!this.clientsActive()) return;
      this.takeCheckpoint();
      this.scheduleCheckpoint();
    });
  }

  private takeCheckpoint(): void {
    if (this.checkpointRunning) return;
    if (this.source.status().some((peer) => peer.replication === 'streaming' && peer.ackedSeq < this.lastMarkerSeq)) return;
    this.checkpointRunning = true;
    this.primarySync(() => {
      const targetSeq = this.primary.durablePrefix;
      const markerSeq = this.append({ kind: 'cp', targetSeq });
      this.lastMarkerSeq = markerSeq;
      this.primaryWrite(markerSeq, () => {
        this.primary.markDurable(markerSeq);
        this.checkpointRunning = false;
        const cpSeq = markerSeq === targetSeq + 1 && this.primary.durablePrefix >= markerSeq ? markerSeq : targetSeq;
        if (cpSeq <= this.lastCpSeq) return;
        this.lastCpSeq = cpSeq;
        this.checkpoints += 1;
        this.onSource(this.source.checkpoint(cpSeq));
      });
    });
  }

  private onSource(actions: SourceAction<Frame>[]): void {
    for (const action of actions) {
      switch (action.kind) {
        case 'send-entry': {
          const peer = this.peer(action.peer);
          const { seq, bytes, offset, frame } = action.entry;
          const connection = Math.floor(offset / this.config.regionBytes) % this.config.connections;
          const send = (): void => peer.links.send('to-peer', connection, `entry ${seq}`, () => peer.entry(seq, bytes, frame));
          send();
          if (this.config.fault === 'duplicate-entry' && !this.fault.injected && seq >= 2) {
            this.fault.injected = true;
            send();
          }
          break;
        }
        case 'send-flush': {
          const peer = this.peer(action.peer);
          peer.links.send('to-peer', 0, `flush ${action.seq}`, () => peer.flush(action.seq));
          break;
        }
        case 'send-sync': {
          const peer = this.peer(action.peer);
          peer.links.send('to-peer', 0, `sync ${action.cpSeq}`, () => peer.sync(action.cpSeq));
          break;
        }
        case 'complete':
          this.completed(action.token, action.error);
          break;
        case 'peer-dropped':
          this.onPeerDropped(action.peer, action.disk, action.reason);
          break;
        case 'release':
          break;
      }
    }
  }

  private completed(token: number, error: string | null): void {
    const request = this.requests.get(token);
    if (request === undefined) throw new SimFailure(`the source completed unknown request ${token}`);
    if (request.ackedAtUs !== null) throw new SimFailure(`the source completed request ${token} twice`);
    if (error !== null) throw new SimFailure(`${request.kind} ${token} failed: ${error}`);
    request.ackedAtUs = this.queue.now;
    this.checker.completed(request);
    this.answered[request.kind] += 1;
    if (request.frame !== null) this.answeredWrites.push(request);
    const client = this.clients[request.clientId - 1];
    if (client === undefined) throw new Error(`no client ${request.clientId}`);
    client.inFlight -= 1;
    this.scheduleClient(client);
  }

  private summary(): RunSummary {
    const sent = this.peers.reduce((sum, peer) => sum + peer.links.sent, 0);
    const lost = this.peers.reduce((sum, peer) => sum + peer.links.lost, 0);
    return {
      config: this.config,
      events: this.queue.executed,
      virtualUs: this.queue.now,
      lastSeq: this.source.lastSeq,
      answered: { ...this.answered },
      checkpoints: this.checkpoints,
      messages: { sent, lost },
      maxQueuedBytes: this.checker.maxQueuedBytes,
      queuedBytesBound: this.checker.queuedBytesMax,
      maxInflightBytes: this.checker.maxInflightBytes,
      maxBufferedBytes: this.checker.maxBufferedBytes,
      checks: this.checker.checks,
      drops: [...this.drops],
      faultInjected: this.fault.injected,
      peers: this.peers.map((peer) => ({ id: peer.id, inSync: peer.inSync, storedSeq: peer.replica.storedPrefix(), durableSeq: peer.replica.durablePrefix })),
    };
  }
}

/** Runs one seed; throws SimFailure (or an assertion from a core) when something breaks. */
export function runCluster(config: SimConfig, trace: ((line: string) => void) | null = null): RunSummary {
  return new Cluster(config, trace).run();
}
