// The invariants of one simulated mirrored volume (README, "Tests"), checked while the
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
//   (f) async mode: a reply never leaves an in-sync peer more than lagBytesMax behind it;
//   (g) at every event, a peer the source reports up to date really is: its image holds,
//       block by block, the primary's version as of the last entry the source counts it
//       as having (or a later one). A peer catching up or resyncing is reported
//       inconsistent, and a peer the source counts for acknowledgements is never
//       outdated or failed. (A peer that crashed and whose crash the source has not
//       noticed yet is exempt: nothing can know before the links say so.)
//   (h) acknowledged writes are never lost: what a sync-mode FUA or FLUSH made durable on
//       a replica that counted for it (it was in sync then) is still in that replica's
//       durable image after any crash of it, and at the end;
//   (i) and on the primary, in either mode: what a FUA or FLUSH was answered for is in
//       what its recovery finds after each of its crashes, and in its image at the end.
//
// "That write or a later one" compares writes by the order the primary logged them in,
// across its crashes: a write a primary crash lost (it had sent it to peers, but never
// made it durable) still counts as later than everything logged before it, so a
// replica holding it keeps its durable promises; but it is not in the primary's history
// any more, so a replica holding it is never up to date (g) nor equal to the primary (c).
// The primary's crash drops the requests in flight (their clients see the connection
// go): those are never answered, and no invariant is asked of them. Every peer must come
// back through a resync after one, and when quiet be byte-identical to the primary (c).
//
// "Counted for" a request means the source held the reply for it (in sync: streaming,
// catching up or resyncing). (a) and (b) are checked on every such replica. A resyncing
// replica is checked only for entries sent to it after its log restarted: regions it
// lacked from before arrive through the resync, and it is reported inconsistent
// meanwhile. The source counts it from its RESET_DONE on (as acknowledged and durable
// through the reset point), so a request that was waiting from before can be answered
// with it counted while it still lacks the request's write: such replies are tallied
// (`countedLacking`), not failed. Nothing is promised through such a replica: it is
// never reported up to date before its resync is done, which (g) checks.
//
// Every violation fails the run: nothing is tallied as a known problem of the cores. (The
// last ones the simulator found — a resync that missed entries a crashed peer had
// acknowledged and then lost, a crashed peer still reported up to date, entries kept for
// a peer refused when it came back — are fixed; sim.test.ts replays the seeds that
// showed them and their reproductions on the core.) Primary crashes found four more,
// since fixed in src/; the deliberate faults of config.ts put each back, and
// sim.test.ts shows that seeds catch them. A violation throws SimFailure; the runner
// prints the seed that replays it.

import type { MirrorSource } from '../../src/core/mirror-source.js';
import type { MirrorTarget } from '../../src/core/mirror-target.js';
import type { ClientRequest, SimConfig } from './cluster.js';
import { ENTRY_HEADER_BYTES } from '../../src/protocol/log-entry.js';
import type { PeerLinks } from './network.js';
import { entryBytes, type BlockImage, type DataFrame, type Frame, type Replica, type WriteFrame } from './volume.js';

export class SimFailure extends Error {
  override name = 'SimFailure';
}

export interface CheckedPeer {
  readonly id: string;
  /** The sim's own view: the source has a session with it (not yet told it ended, not dropped). */
  readonly inSync: boolean;
  /** Running (false from a crash to its restart). */
  readonly up: boolean;
  readonly links: PeerLinks;
  readonly replica: Replica;
  readonly target: Pick<MirrorTarget<Frame>, 'status' | 'ready'>;
}

export interface CheckedCluster {
  readonly config: SimConfig;
  readonly source: MirrorSource<Frame>;
  readonly primary: Replica;
  readonly peers: readonly CheckedPeer[];
  readonly requests: ReadonlyMap<number, ClientRequest>;
  /** Bytes of the primary's log entries 1..seq. */
  bytesThrough(seq: number): number;
  /** The index in the primary's history of `block` of its version after entry `seq` (-1: zeroes). */
  primaryVersionAt(block: number, seq: number): number;
  /** The index of write `writeId` in the primary's history of `block` (-1 for 0, zeroes; null: never written there). */
  positionOf(block: number, writeId: number): number | null;
  /** Where write `writeId` stands among every write the primary ever logged, lost ones included (-1: zeroes; null: never logged). */
  ordinalOf(writeId: number): number | null;
  /** Whether a crash of the primary lost write `writeId` in `block`. */
  lostIn(block: number, writeId: number): boolean;
  /** The primary is running (nothing reports on the peers while it is down). */
  readonly primaryUp: boolean;
  readonly primaryCrashes: number;
  /** Running and not cut off: the sim connects to it whenever it can. */
  reachable(peer: CheckedPeer): boolean;
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
  const bound = 2 * waiting + ENTRY_HEADER_BYTES + (config.mode === 'async' ? config.lagBytesMax : 0) + config.catchUpBytesMax;
  if (!config.resync) return bound;
  // Resync entries wait for no client: another in-sync peer that is slower than the
  // resyncing one may be behind on a whole volume's worth of them (per peer resyncing).
  const regions = Math.ceil(config.blocks / config.resyncRegionBlocks);
  const resyncPass = regions * (ENTRY_HEADER_BYTES + config.resyncRegionBlocks * config.blockBytes);
  return bound + 2 * resyncPass * (config.peers.length - 1) + config.resyncInflightMax * (ENTRY_HEADER_BYTES + config.resyncRegionBlocks * config.blockBytes);
}

export class Checker {
  readonly queuedBytesMax: number;
  maxQueuedBytes = 0;
  maxBufferedBytes = 0;
  maxInflightBytes = 0;
  checks = 0;
  /** Replies that counted a resyncing replica which did not hold their write yet (by design; see the header). */
  countedLacking = 0;
  /**
   * Per replica (the primary as 'primary') and block: the write its durable image must
   * hold, or a later one (by ordinalOf), with that write's id; -1: nothing promised.
   */
  private readonly promised = new Map<string, { ordinal: number; writeId: number }[]>();
  /** Per peer: what (g) last looked at, so that it looks again only after a change. */
  private readonly lastLook = new Map<string, string>();

  constructor(private readonly cluster: CheckedCluster) {
    this.queuedBytesMax = queuedBytesBound(cluster.config);
    for (const id of [...cluster.config.peers, 'primary']) {
      this.promised.set(id, Array.from({ length: cluster.config.blocks }, () => ({ ordinal: -1, writeId: 0 })));
    }
  }

  private fail(invariant: string, message: string): never {
    throw new SimFailure(`(${invariant}) at ${this.cluster.nowUs()}us: ${message}`);
  }

  // ---- (d) order of writes per block ---------------------------------------------------

  /**
   * A secondary is about to write `frame` to its image. One whose log never restarted has
   * gone through exactly the primary's versions of each block so far: a write must be the
   * next one, and a resync entry must find the block as it carries it. After a restart
   * (a resync) versions were skipped, but none may go backwards in the primary's order;
   * once the primary has crashed, the order is the one it logged writes in, across its
   * crashes, and a block holding a write it lost may take anything (the resync brings
   * it back to the primary's version).
   */
  applying(peer: string, replica: Replica, frame: DataFrame): void {
    this.checks += 1;
    const primary = this.cluster.primary.image;
    for (let block = frame.firstBlock; block < frame.firstBlock + frame.blockCount; block += 1) {
      const here = replica.image.blockVersions(block);
      const order = primary.blockVersions(block);
      const id = frame.kind === 'write' ? frame.writeId : (frame.ids[block - frame.firstBlock] ?? -1);
      const what = frame.kind === 'write' ? `write ${id}` : `resync data of ${id === 0 ? 'zeroes' : `write ${id}`}`;
      const history = `(primary order ${order.join(',')}; ${peer}: ${here.join(',')})`;
      if (replica.resets === 0 && this.cluster.primaryCrashes === 0) {
        if (frame.kind === 'write') {
          const index = here.length;
          const expected = order[index];
          if (expected !== id) {
            this.fail(
              'd',
              `${peer} wrote write ${id} as version ${index + 1} of block ${block}, but on the primary that version is ` +
                `${expected === undefined ? 'not written yet' : `write ${expected}`} (primary order ${order.slice(0, index + 2).join(',')}; ${peer}: ${here.join(',')})`,
            );
          }
        } else if ((here[here.length - 1] ?? 0) !== id) {
          this.fail('d', `${peer} writes ${what} to block ${block}, which holds ${here[here.length - 1] ?? 0} there ${history}`);
        }
        continue;
      }
      const held = here[here.length - 1] ?? 0;
      const position = this.cluster.ordinalOf(id);
      const before = this.cluster.ordinalOf(held);
      if (position === null || before === null || (position < before && !this.cluster.lostIn(block, held))) {
        this.fail(
          'd',
          `${peer} (its log restarted ${replica.resets} times, the primary crashed ${this.cluster.primaryCrashes} times) writes ${what} over ${held} in block ${block} ${history}`,
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

  // ---- (h) a crash keeps what was promised durable -----------------------------------

  /** A secondary crashed: its durable image (all it has now) still holds every durable promise. */
  crashed(peer: CheckedPeer): void {
    this.checks += 1;
    this.keptPromises(peer, 'after its crash');
  }

  /** (i) The primary crashed: what its recovery found (its image now) holds every durable promise. */
  primaryCrashed(): void {
    this.checks += 1;
    this.keptPromisesOf('primary', this.cluster.primary.durableImage, 'i', 'after its crash');
    this.keptPromisesOf('primary', this.cluster.primary.image, 'i', 'after its crash (image)');
  }

  private keptPromises(peer: CheckedPeer, when: string): void {
    this.keptPromisesOf(peer.id, peer.replica.durableImage, 'h', when);
  }

  private keptPromisesOf(id: string, image: BlockImage, invariant: string, when: string): void {
    const promised = this.promised.get(id) ?? [];
    const order = this.cluster.primary.image;
    for (let block = 0; block < promised.length; block += 1) {
      const wanted = promised[block];
      if (wanted === undefined || wanted.ordinal < 0) continue;
      const holds = image.writeIdAt(block);
      const ordinal = this.cluster.ordinalOf(holds);
      if (ordinal === null || ordinal < wanted.ordinal) {
        this.fail(
          invariant,
          `${when}, ${id}'s durable block ${block} holds ${holds === 0 ? 'zeroes' : `write ${holds}`}, but write ${wanted.writeId} ` +
            `was acknowledged durable${id === 'primary' ? '' : ` with ${id} counted`} (primary order ${order.blockVersions(block).join(',')})`,
        );
      }
    }
  }

  private promise(id: string, frame: WriteFrame): void {
    const promised = this.promised.get(id);
    if (promised === undefined) return;
    const ordinal = this.cluster.ordinalOf(frame.writeId) ?? -1;
    for (let block = frame.firstBlock; block < frame.firstBlock + frame.blockCount; block += 1) {
      if (ordinal > (promised[block]?.ordinal ?? -1)) promised[block] = { ordinal, writeId: frame.writeId };
    }
  }

  // ---- (a), (b), (f), (h) at each reply ----------------------------------------------------

  completed(request: ClientRequest): void {
    this.checks += 1;
    const { config, primary, source } = this.cluster;
    const what = `${request.kind} ${request.token} of client ${request.clientId} (seq ${request.seq})`;
    if (request.incarnation !== this.cluster.primaryCrashes || request.dropped) this.fail('c', `${what} answered, but it was sent to a primary that crashed since`);
    if (request.frame !== null) {
      const record = primary.record(request.seq);
      if (!record.stored) this.fail('a', `${what} answered before the primary's own write finished`);
      if (request.kind === 'fua' && !record.durable) this.fail('b', `${what} answered before it was durable on the primary`);
      if (request.kind === 'fua') this.promise('primary', request.frame);
    }
    if (request.kind === 'flush') {
      for (const write of request.ackedBefore) {
        if (write.incarnation !== request.incarnation) this.fail('c', `${what} answered covering write seq ${write.seq}, sent to a primary that crashed since`);
        if (!primary.record(write.seq).durable) this.fail('b', `${what} answered, but write seq ${write.seq} acknowledged before it was sent is not durable on the primary`);
        if (write.frame !== null) this.promise('primary', write.frame);
      }
    }
    for (const peer of this.cluster.peers) {
      if (!source.isInSync(peer.id)) continue;
      const status = source.peerStatus(peer.id);
      if (status.disk !== 'up-to-date' && status.disk !== 'inconsistent') this.fail('g', `${what} answered counting ${peer.id}, whose copy is ${status.disk}`);
      // Running, and in the session the source counts: else it crashed and the source does not know yet.
      const live = peer.up && peer.inSync && peer.links.isUp;
      if (config.mode === 'sync') this.mirroredSync(peer, request, what, live, status.replication === 'resyncing');
      else if (live) this.withinLag(peer, request, what);
    }
  }

  private mirroredSync(peer: CheckedPeer, request: ClientRequest, what: string, live: boolean, resyncing: boolean): void {
    const replica = peer.replica;
    // A resyncing replica is sent what comes after its log restarted; the rest comes by regions.
    const sent = (seq: number): boolean => !resyncing || seq > replica.base;
    if (!sent(request.seq) && request.frame !== null) this.countedLacking += 1;
    if (request.frame !== null && live && sent(request.seq)) {
      if (request.seq > replica.base && (!replica.has(request.seq) || !replica.record(request.seq).stored)) this.fail('a', `${what} answered, but ${peer.id} has not stored entry ${request.seq}`);
      this.present(peer, replica.image, request.frame, 'a', `${what} answered`);
    }
    if (request.kind === 'fua' || request.kind === 'flush') {
      if (sent(request.seq) && replica.durablePrefix < request.seq) this.fail('b', `${what} answered, but ${peer.id} is durable only through ${replica.durablePrefix}`);
      if (request.frame !== null && sent(request.seq)) {
        this.present(peer, replica.durableImage, request.frame, 'b', `${what} answered (durable image)`);
        this.promise(peer.id, request.frame);
      }
      for (const write of request.ackedBefore) {
        if (write.frame === null || !sent(write.seq)) continue;
        this.present(peer, replica.durableImage, write.frame, 'b', `${what} answered after write ${write.frame.writeId} (durable image)`);
        this.promise(peer.id, write.frame);
      }
    }
  }

  /**
   * Every block of `frame` holds that write's bytes or a later version's (by the
   * primary's order).
   */
  private present(peer: CheckedPeer, image: BlockImage, frame: WriteFrame, invariant: string, context: string): void {
    const primary = this.cluster.primary.image;
    for (let block = frame.firstBlock; block < frame.firstBlock + frame.blockCount; block += 1) {
      const order = primary.blockVersions(block);
      const wanted = order.indexOf(frame.writeId);
      const holds = image.writeIdAt(block);
      const position = holds === 0 ? -1 : order.indexOf(holds);
      if (wanted < 0 || position < wanted) {
        this.fail(invariant, `${context}: ${peer.id}'s block ${block} holds ${holds === 0 ? 'zeroes' : `write ${holds}`}, not write ${frame.writeId} or a later one (primary order ${order.join(',')})`);
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

  // ---- (e) bounded memory and (g) up to date means up to date, after every event ---------

  afterEvent(): void {
    const { source, config } = this.cluster;
    for (const peer of this.cluster.peers) {
      const buffered = peer.target.status().bufferedBytes;
      this.maxBufferedBytes = Math.max(this.maxBufferedBytes, buffered);
      if (buffered > config.windowBytesMax) this.fail('e', `${peer.id} buffers ${buffered} bytes, more than the window ${config.windowBytesMax}`);
    }
    // A primary that is down reports nothing (its mirror core died with it).
    if (!this.cluster.primaryUp) return;
    const queued = source.queued.bytes;
    this.maxQueuedBytes = Math.max(this.maxQueuedBytes, queued);
    if (queued > this.queuedBytesMax) this.fail('e', `the source holds ${queued} bytes (${source.queued.entries} entries), more than the bound ${this.queuedBytesMax}`);
    for (const status of source.status()) {
      const peer = this.cluster.peers.find((each) => each.id === status.peer);
      if (peer === undefined) this.fail('g', `the source reports an unknown peer ${status.peer}`);
      if ((status.replication === 'catching-up' || status.replication === 'resyncing') && status.disk !== 'inconsistent') {
        this.fail('g', `${status.peer} is ${status.replication} but its copy is reported ${status.disk}`);
      }
      const counted = source.isInSync(status.peer);
      if (counted && status.disk !== 'up-to-date' && status.disk !== 'inconsistent') this.fail('g', `${status.peer} counts for acknowledgements, but its copy is ${status.disk}`);
      if (status.disk === 'up-to-date') this.upToDate(peer, status.ackedSeq, status.replication, counted);
      if (status.replication !== 'streaming' && status.replication !== 'resyncing') continue;
      const inflight = this.cluster.bytesThrough(status.sentSeq) - this.cluster.bytesThrough(status.ackedSeq);
      this.maxInflightBytes = Math.max(this.maxInflightBytes, inflight);
      if (inflight > config.windowBytesMax && status.sentSeq - status.ackedSeq > 1) {
        this.fail('e', `${inflight} bytes (entries ${status.ackedSeq + 1}..${status.sentSeq}) in flight to ${status.peer}, more than the window ${config.windowBytesMax}`);
      }
    }
  }

  /**
   * (g) The source reports `peer` up to date, having (it counts) every entry through
   * `ackedSeq`: its image must hold, in every block, the primary's version as of that
   * entry or a later one, and its log every entry through it.
   */
  private upToDate(peer: CheckedPeer, ackedSeq: number, replication: string, counted: boolean): void {
    // A crash the source has not noticed yet: its links are dead, it just does not know.
    if (counted && !(peer.up && peer.inSync && peer.links.isUp)) return;
    const image = peer.replica.image;
    const look = `${ackedSeq}/${image.changes}/${peer.replica.lastSeq}/${peer.replica.storedPrefix()}`;
    if (this.lastLook.get(peer.id) === look) return;
    this.lastLook.set(peer.id, look);
    this.checks += 1;
    const stored = peer.replica.storedPrefix();
    if (stored < ackedSeq) {
      this.fail('g', `${peer.id} is reported up to date (${replication}) through entry ${ackedSeq}, but has stored only through ${stored}${peer.up ? '' : ' (it crashed)'}`);
    }
    const primary = this.cluster.primary.image;
    for (let block = 0; block < primary.blocks; block += 1) {
      const wanted = this.cluster.primaryVersionAt(block, ackedSeq);
      const holds = image.writeIdAt(block);
      const position = this.cluster.positionOf(block, holds);
      if (position === null || position < wanted) {
        this.fail(
          'g',
          `${peer.id} is reported up to date (${replication}) through entry ${ackedSeq}, but its block ${block} holds ${holds === 0 ? 'zeroes' : `write ${holds}`}` +
            `${this.cluster.lostIn(block, holds) ? ' (a write the primary lost in a crash)' : ''}, ` +
            `not ${wanted < 0 ? 'zeroes' : `write ${primary.blockVersions(block)[wanted]}`} or a later one (primary order ${primary.blockVersions(block).join(',')})${peer.up ? '' : '; it crashed'}`,
        );
      }
    }
  }

  // ---- (c) when everything is quiet ----------------------------------------------------

  final(): void {
    const { source, primary, requests, config } = this.cluster;
    if (!this.cluster.primaryUp) this.fail('c', 'the primary is still down');
    for (const request of requests.values()) {
      if (request.ackedAtUs === null && !request.dropped) this.fail('c', `${request.kind} ${request.token} of client ${request.clientId} (seq ${request.seq}) was never answered`);
    }
    this.keptPromisesOf('primary', primary.durableImage, 'i', 'at the end');
    this.keptPromisesOf('primary', primary.image, 'i', 'at the end (image)');
    if (source.waiting !== 0) this.fail('c', `the source still has ${source.waiting} requests waiting`);
    const lastSeq = source.lastSeq;
    if (lastSeq !== primary.lastSeq) this.fail('c', `the source's last seq ${lastSeq} is not the primary log's ${primary.lastSeq}`);
    let inSync = 0;
    for (const peer of this.cluster.peers) {
      this.keptPromises(peer, 'at the end');
      // Every peer that can be reached is brought back: with resync all of them, else those that need none.
      const away = source.peerStatus(peer.id);
      if (this.cluster.reachable(peer) && !peer.inSync && (config.resync || !away.resyncNeeded)) {
        this.fail('c', `${peer.id} is reachable but was never brought back (${away.replication}, ${away.disk}${away.resyncNeeded ? ', needs a resync' : ''})`);
      }
      if (!peer.inSync) continue;
      inSync += 1;
      if (!source.isInSync(peer.id)) this.fail('c', `${peer.id} has a session, but the source does not count it`);
      const ready = peer.target.ready();
      if (ready.lastSeq !== lastSeq || !ready.idle) this.fail('c', `${peer.id} is not quiet: issued through ${ready.lastSeq} of ${lastSeq}, idle ${ready.idle}`);
      const stored = peer.replica.storedPrefix();
      if (stored !== lastSeq || peer.replica.lastSeq !== lastSeq) this.fail('c', `${peer.id} stored through ${stored} of ${lastSeq} (its log ends at ${peer.replica.lastSeq})`);
      for (let seq = peer.replica.base + 1; seq <= lastSeq; seq += 1) {
        const here = peer.replica.record(seq);
        const there = primary.record(seq);
        if (here.frame !== there.frame && !sameFrame(here.frame, there.frame)) this.fail('c', `${peer.id}'s entry ${seq} differs from the primary's`);
      }
      const status = source.status().find((each) => each.peer === peer.id);
      if (status?.ackedSeq !== lastSeq || status.disk !== 'up-to-date' || status.replication !== 'streaming') {
        this.fail('c', `the source sees ${peer.id} acknowledged through ${String(status?.ackedSeq)} (${String(status?.disk)}, ${String(status?.replication)}), not ${lastSeq}`);
      }
      this.sameImage(peer);
    }
    // Entries may stay queued only for a peer that is away and may still catch up from them.
    const away = source.status().filter((status) => status.replication !== 'streaming' && !status.resyncNeeded);
    const keptFor = away.length === 0 || config.catchUpBytesMax === 0 ? 0 : this.cluster.bytesThrough(lastSeq) - this.cluster.bytesThrough(Math.min(...away.map((status) => status.ackedSeq)));
    if (inSync > 0 && source.queued.bytes !== keptFor) {
      this.fail('c', `the source still holds ${source.queued.entries} entries (${source.queued.bytes} bytes) when quiet, ${keptFor} bytes kept for peers away`);
    }
  }

  private sameImage(checked: CheckedPeer): void {
    const { id: peer, replica } = checked;
    const image = replica.image;
    const primary = this.cluster.primary.image;
    if (image.bytes.equals(primary.bytes)) {
      // After a resync the history skipped versions: only the bytes can be compared.
      if (replica.resets > 0) return;
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
        const holds = image.writeIdAt(block);
        this.fail(
          'c',
          `${peer}'s block ${block} holds write ${holds}${this.cluster.lostIn(block, holds) ? ' (lost by the primary in a crash)' : ''}, ` +
            `the primary's holds write ${primary.writeIdAt(block)} (primary order ${primary.blockVersions(block).join(',')}; ${peer}: ${image.blockVersions(block).join(',')})`,
        );
      }
    }
  }
}

function sameFrame(a: Frame, b: Frame): boolean {
  if (a.kind === 'cp') return b.kind === 'cp' && a.targetSeq === b.targetSeq;
  if (a.kind === 'resync') return b.kind === 'resync' && a.firstBlock === b.firstBlock && a.data.equals(b.data);
  return b.kind === 'write' && a.writeId === b.writeId && a.firstBlock === b.firstBlock && entryBytes(a) === entryBytes(b) && a.data.equals(b.data);
}
