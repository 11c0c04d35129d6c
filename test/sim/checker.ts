// The invariants of one simulated mirrored volume (DESIGN.md §2–§3), checked while the
// simulation runs and once more when it is quiet. The checker looks only at what a user or
// an operator could see — the bytes of every image, what survives a crash of each node,
// the memory the mirror holds — and at the sim's own record of which peers are in sync;
// it never trusts the cores' word for what a replica holds.
//
//   (a) sync mode: a write acknowledged to a client is on every in-sync secondary (that
//       version of each of its blocks, or a later one) at the moment of the reply;
//   (b) sync mode: a FUA write, or every write acknowledged before a FLUSH was sent, is
//       durable on every in-sync secondary at the reply (and on the primary in any mode);
//       a secondary syncs its log or takes a checkpoint only over entries it has stored,
//       and its replies are true when sent (ACK n: stored through n; FLUSHED/SYNCED n:
//       durable through n), in either mode;
//   (c) when quiet, every in-sync secondary holds exactly the primary's bytes and entries;
//   (d) the writes to each block reach every replica in the primary's order;
//   (e) memory is bounded: the source's queue, the bytes in flight to each peer and each
//       target's reorder buffer stay within limits derived from the options;
//   (f) async mode: a reply never leaves an in-sync peer more than lagBytesMax behind it.
//
// A violation throws SimFailure; the runner prints the seed that replays it.

import type { MirrorSource } from '../../src/core/mirror-source.js';
import type { MirrorTarget } from '../../src/core/mirror-target.js';
import type { ClientRequest, SimConfig } from './cluster.js';
import { ENTRY_HEADER_BYTES } from '../../src/storage/log-entry.js';
import { entryBytes, type BlockImage, type Frame, type Replica, type WriteFrame } from './volume.js';

export class SimFailure extends Error {
  override name = 'SimFailure';
}

export interface CheckedPeer {
  readonly id: string;
  /** The sim's own view: connected, and not dropped by the source. */
  readonly inSync: boolean;
  readonly replica: Replica;
  readonly target: MirrorTarget<Frame>;
}

export interface CheckedCluster {
  readonly config: SimConfig;
  readonly source: MirrorSource<Frame>;
  readonly primary: Replica;
  readonly peers: readonly CheckedPeer[];
  readonly requests: ReadonlyMap<number, ClientRequest>;
  /** Bytes of the primary's log entries 1..seq. */
  bytesThrough(seq: number): number;
  nowUs(): number;
}

/**
 * What the source may hold (e): the entries of requests still waiting for their reply
 * (every client at its limit with the largest write), one consistency point marker (the
 * sim takes a CP only once the last marker is acknowledged), and in async mode what a
 * peer may lag behind an answered request.
 */
export function queuedBytesBound(config: SimConfig): number {
  const largestWriteBytes = ENTRY_HEADER_BYTES + config.writeBlocksMax * config.blockBytes;
  const waiting = config.clients * config.outstandingPerClient * largestWriteBytes;
  // A peer that is away keeps at most catchUpBytesMax of entries queued. One that comes
  // back while entries are still queued for another peer (at most those of the requests
  // waiting then) is caught up from them while new requests wait for it as well: so the
  // waiting requests' entries count twice.
  return 2 * waiting + ENTRY_HEADER_BYTES + (config.mode === 'async' ? config.lagBytesMax : 0) + config.catchUpBytesMax;
}

export class Checker {
  readonly queuedBytesMax: number;
  maxQueuedBytes = 0;
  maxBufferedBytes = 0;
  maxInflightBytes = 0;
  checks = 0;

  constructor(private readonly cluster: CheckedCluster) {
    this.queuedBytesMax = queuedBytesBound(cluster.config);
  }

  private fail(invariant: string, message: string): never {
    throw new SimFailure(`(${invariant}) at ${this.cluster.nowUs()}us: ${message}`);
  }

  // ---- (d) order of writes per block ---------------------------------------------------

  /** A secondary just wrote `frame` to its image. */
  applied(peer: string, image: BlockImage, frame: WriteFrame): void {
    this.checks += 1;
    const primary = this.cluster.primary.image;
    for (let block = frame.firstBlock; block < frame.firstBlock + frame.blockCount; block += 1) {
      const here = image.blockVersions(block);
      const index = here.length - 1;
      const expected = primary.blockVersions(block)[index];
      if (expected !== frame.writeId) {
        this.fail(
          'd',
          `${peer} wrote write ${frame.writeId} as version ${index + 1} of block ${block}, but on the primary that version is ` +
            `${expected === undefined ? 'not written yet' : `write ${expected}`} (primary order ${primary.blockVersions(block).slice(0, index + 2).join(',')}; ${peer}: ${here.join(',')})`,
        );
      }
    }
  }

  // ---- (b) a secondary's syncs and checkpoints ----------------------------------------

  /** A secondary starts syncing its log through `seq` (or taking a checkpoint at it). */
  syncStarted(peer: string, replica: Replica, seq: number, what: string): void {
    this.checks += 1;
    const stored = replica.storedPrefix();
    if (stored < seq) this.fail('b', `${peer} started ${what} through ${seq}, but has stored only through ${stored}: entry ${stored + 1} would not be covered`);
  }

  /** A secondary replies to the source: ACK n means stored through n, FLUSHED n durable through n. */
  replied(peer: string, replica: Replica, what: 'ack' | 'flushed' | 'synced', seq: number): void {
    this.checks += 1;
    if (what === 'ack' && replica.storedPrefix() < seq) this.fail('a', `${peer} acknowledges entry ${seq}, but has stored only through ${replica.storedPrefix()}`);
    if (what !== 'ack' && replica.durablePrefix < seq) this.fail('b', `${peer} replies ${what} ${seq}, but is durable only through ${replica.durablePrefix}`);
  }

  // ---- (a), (b), (f) at each reply -----------------------------------------------------

  completed(request: ClientRequest): void {
    this.checks += 1;
    const { config, primary } = this.cluster;
    const what = `${request.kind} ${request.token} of client ${request.clientId} (seq ${request.seq})`;
    if (request.frame !== null) {
      const record = primary.record(request.seq);
      if (!record.stored) this.fail('a', `${what} answered before the primary's own write finished`);
      if (request.kind === 'fua' && !record.durable) this.fail('b', `${what} answered before it was durable on the primary`);
    }
    if (request.kind === 'flush') {
      for (const write of request.ackedBefore) {
        if (!primary.record(write.seq).durable) this.fail('b', `${what} answered, but write seq ${write.seq} acknowledged before it was sent is not durable on the primary`);
      }
    }
    for (const peer of this.cluster.peers) {
      if (!peer.inSync) continue;
      if (config.mode === 'sync') this.mirroredSync(peer, request, what);
      else this.withinLag(peer, request, what);
    }
  }

  private mirroredSync(peer: CheckedPeer, request: ClientRequest, what: string): void {
    const replica = peer.replica;
    if (request.frame !== null) {
      if (replica.lastSeq < request.seq || !replica.record(request.seq).stored) this.fail('a', `${what} answered, but ${peer.id} has not stored entry ${request.seq}`);
      this.present(peer.id, replica.image, request.frame, 'a', `${what} answered`);
    }
    if (request.kind === 'fua' || request.kind === 'flush') {
      if (replica.durablePrefix < request.seq) this.fail('b', `${what} answered, but ${peer.id} is durable only through ${replica.durablePrefix}`);
      if (request.frame !== null) this.present(peer.id, replica.durableImage, request.frame, 'b', `${what} answered (durable image)`);
      for (const write of request.ackedBefore) {
        if (write.frame !== null) this.present(peer.id, replica.durableImage, write.frame, 'b', `${what} answered after write ${write.frame.writeId} (durable image)`);
      }
    }
  }

  /** Every block of `frame` holds that write's bytes or a later version's (by the primary's order). */
  private present(peer: string, image: BlockImage, frame: WriteFrame, invariant: string, context: string): void {
    const primary = this.cluster.primary.image;
    for (let block = frame.firstBlock; block < frame.firstBlock + frame.blockCount; block += 1) {
      const order = primary.blockVersions(block);
      const wanted = order.indexOf(frame.writeId);
      const holds = image.writeIdAt(block);
      const position = holds === 0 ? -1 : order.indexOf(holds);
      if (wanted < 0 || position < wanted) {
        this.fail(invariant, `${context}: ${peer}'s block ${block} holds ${holds === 0 ? 'zeroes' : `write ${holds}`}, not write ${frame.writeId} or a later one (primary order ${order.join(',')})`);
      }
    }
  }

  private withinLag(peer: CheckedPeer, request: ClientRequest, what: string): void {
    const stored = peer.replica.storedPrefix();
    if (stored >= request.seq) return;
    const lagBytes = this.cluster.bytesThrough(request.seq) - this.cluster.bytesThrough(stored);
    if (lagBytes > this.cluster.config.lagBytesMax) {
      this.fail('f', `${what} answered while ${peer.id} has stored only through ${stored}, ${lagBytes} bytes behind (lagBytesMax ${this.cluster.config.lagBytesMax})`);
    }
  }

  // ---- (e) bounded memory, after every event -------------------------------------------

  afterEvent(): void {
    const { source, config } = this.cluster;
    const queued = source.queued.bytes;
    this.maxQueuedBytes = Math.max(this.maxQueuedBytes, queued);
    if (queued > this.queuedBytesMax) this.fail('e', `the source holds ${queued} bytes (${source.queued.entries} entries), more than the bound ${this.queuedBytesMax}`);
    for (const status of source.status()) {
      // (g) No replica that may lack an entry is ever counted as up to date.
      if (status.disk === 'up-to-date') {
        const replica = this.cluster.peers.find((peer) => peer.id === status.peer)?.replica;
        const has = replica?.storedPrefix() ?? 0;
        const lacking = status.replication === 'streaming' ? status.ackedSeq > has : source.lastSeq > has;
        if (lacking) this.fail('g', `${status.peer} is counted as up to date (${status.replication}) but has stored only through ${has}`);
      }
      if (status.replication === 'catching-up' && status.disk !== 'inconsistent') {
        this.fail('g', `${status.peer} is catching up but its copy is reported ${status.disk}`);
      }
      if (status.replication !== 'streaming') continue;
      const inflight = this.cluster.bytesThrough(status.sentSeq) - this.cluster.bytesThrough(status.ackedSeq);
      this.maxInflightBytes = Math.max(this.maxInflightBytes, inflight);
      if (inflight > config.windowBytesMax && status.sentSeq - status.ackedSeq > 1) {
        this.fail('e', `${inflight} bytes (entries ${status.ackedSeq + 1}..${status.sentSeq}) in flight to ${status.peer}, more than the window ${config.windowBytesMax}`);
      }
    }
    for (const peer of this.cluster.peers) {
      const buffered = peer.target.status().bufferedBytes;
      this.maxBufferedBytes = Math.max(this.maxBufferedBytes, buffered);
      if (buffered > config.windowBytesMax) this.fail('e', `${peer.id} buffers ${buffered} bytes, more than the window ${config.windowBytesMax}`);
    }
  }

  // ---- (c) when everything is quiet ----------------------------------------------------

  final(): void {
    const { source, primary, requests, config } = this.cluster;
    for (const request of requests.values()) {
      if (request.ackedAtUs === null) this.fail('c', `${request.kind} ${request.token} of client ${request.clientId} (seq ${request.seq}) was never answered`);
    }
    if (source.waiting !== 0) this.fail('c', `the source still has ${source.waiting} requests waiting`);
    const lastSeq = source.lastSeq;
    if (lastSeq !== primary.lastSeq) this.fail('c', `the source's last seq ${lastSeq} is not the primary log's ${primary.lastSeq}`);
    let inSync = 0;
    for (const peer of this.cluster.peers) {
      if (!peer.inSync) continue;
      inSync += 1;
      const ready = peer.target.ready();
      if (ready.lastSeq !== lastSeq || !ready.idle) this.fail('c', `${peer.id} is not quiet: issued through ${ready.lastSeq} of ${lastSeq}, idle ${ready.idle}`);
      const stored = peer.replica.storedPrefix();
      if (stored !== lastSeq || peer.replica.lastSeq !== lastSeq) this.fail('c', `${peer.id} stored through ${stored} of ${lastSeq} (its log ends at ${peer.replica.lastSeq})`);
      for (let seq = 1; seq <= lastSeq; seq += 1) {
        const here = peer.replica.record(seq);
        const there = primary.record(seq);
        if (here.frame !== there.frame && !sameFrame(here.frame, there.frame)) this.fail('c', `${peer.id}'s entry ${seq} differs from the primary's`);
      }
      const status = source.status().find((each) => each.peer === peer.id);
      if (status?.ackedSeq !== lastSeq || status.disk !== 'up-to-date') {
        this.fail('c', `the source sees ${peer.id} acknowledged through ${String(status?.ackedSeq)} (${String(status?.disk)}), not ${lastSeq}`);
      }
      this.sameImage(peer.id, peer.replica.image);
    }
    // Entries may stay queued only for a peer that is away and may still catch up from them.
    const away = source.status().filter((status) => status.replication !== 'streaming' && !status.resyncNeeded);
    const keptFor = away.length === 0 || config.catchUpBytesMax === 0 ? 0 : this.cluster.bytesThrough(lastSeq) - this.cluster.bytesThrough(Math.min(...away.map((status) => status.ackedSeq)));
    if (inSync > 0 && source.queued.bytes !== keptFor) {
      this.fail('c', `the source still holds ${source.queued.entries} entries (${source.queued.bytes} bytes) when quiet, ${keptFor} bytes kept for peers away`);
    }
  }

  private sameImage(peer: string, image: BlockImage): void {
    const primary = this.cluster.primary.image;
    if (image.bytes.equals(primary.bytes)) {
      for (let block = 0; block < primary.blocks; block += 1) {
        if (image.blockVersions(block).join(',') !== primary.blockVersions(block).join(',')) {
          this.fail('d', `${peer}'s block ${block} went through writes ${image.blockVersions(block).join(',')}, the primary's through ${primary.blockVersions(block).join(',')}`);
        }
      }
      return;
    }
    for (let block = 0; block < primary.blocks; block += 1) {
      const at = block * primary.blockBytes;
      if (!image.bytes.subarray(at, at + primary.blockBytes).equals(primary.bytes.subarray(at, at + primary.blockBytes))) {
        this.fail('c', `${peer}'s block ${block} holds write ${image.writeIdAt(block)}, the primary's holds write ${primary.writeIdAt(block)}`);
      }
    }
  }
}

function sameFrame(a: Frame, b: Frame): boolean {
  if (a.kind === 'cp') return b.kind === 'cp' && a.targetSeq === b.targetSeq;
  return b.kind === 'write' && a.writeId === b.writeId && a.firstBlock === b.firstBlock && entryBytes(a) === entryBytes(b) && a.data.equals(b.data);
}
