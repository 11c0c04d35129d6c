// One simulated secondary: the shipped SecondaryCore (src/core/secondary-core.ts, around
// MirrorTarget) with the disk and links around it, playing the part of
// src/server/replica-target.ts. It performs the core's actions — stores with a
// random disk delay, log syncs, checkpoints, replies to the source on connection 0 — and
// reports their completions back. A store writes the secondary's image when it
// completes; stores to overlapping blocks complete in the order they were issued (the
// node orders writes per range), others in any order.
//
// A secondary can crash (crash()): its disk keeps what was durable (volume.ts), every
// store, sync and checkpoint under way is lost with the process, and a fresh target is
// made from the recovered log when it restarts (restart()), as the node does at start.
// A source's RESET (a resync) restarts its log once the core says so (it is idle), as
// ReplicaTarget does, and is answered with RESET_DONE. What it names in DIVERGED
// first comes from the shipped ReplicaTrail (src/core/replica-trail.ts), kept as the
// node keeps it: entries added as they are stored, trimmed at each consistency point of
// the primary taken here, written at each consistency point and at a reset, and after a
// crash read back from what was written, plus the entries recovery finds. A primary that crashes
// closes every link: the secondary goes on with the stores it had issued and is reset
// by the restarted primary like any peer that needs a resync.
//
// Deliberate faults (config.ts) are injected here, on the first peer only, so that the
// checker can be shown to catch them. It never reads a real clock or Math.random().

import type { PeerReady } from '../../src/core/mirror-source.js';
import type { PrimaryAction, PrimaryCore } from '../../src/core/primary-core.js';
import type { SecondaryAction, SecondaryCore } from '../../src/core/secondary-core.js';
import { ReplicaCore } from '../../src/core/replica-core.js';
import { EpochHistory } from '../../src/core/epoch-history.js';
import { ReplicaTrail } from '../../src/core/replica-trail.js';
import { copyState } from '../../src/core/volume-core.js';
import type { Prng } from '../unit/prng.js';
import { SimFailure, type Checker, type CheckedPeer } from './checker.js';
import type { SimConfig, UsRange } from './config.js';
import type { EventQueue } from './event-queue.js';
import { PeerLinks } from './network.js';
import { Replica, type Frame } from './volume.js';

/** What a secondary shares with the rest of the simulated cluster. */
export interface SecondaryContext {
  config: SimConfig;
  queue: EventQueue;
  prng: Prng;
  checker: Checker;
  /** The primary's core now (a new one after each of its restarts). */
  readonly core: PrimaryCore<Frame>;
  /** Performs the core's actions (a reply from this peer was delivered). */
  onSource(actions: PrimaryAction<Frame>[]): void;
  /** RESET_DONE from this peer was delivered. */
  onResetDone(peer: string, seq: number, status: number): void;
  /** DIVERGED from this peer was delivered: the blocks of entries it held past the RESET's reportAfter. */
  onDiverged(peer: string, blocks: { firstBlock: number; blockCount: number }[]): void;
  /** FLUSHED from this peer was delivered (after the source was told). */
  onFlushed(peer: string): void;
  /** Set once a deliberate fault has taken effect. */
  fault: { injected: boolean };
}

export class Secondary implements CheckedPeer {
  /** The sim's own view: the source has a session with it (connected, not yet told it ended, not dropped). */
  inSync = false;
  /** The node is running (false from a crash to its restart). */
  up = true;
  /** Counts crashes: what the process had under way dies with it. */
  incarnation = 0;
  /** The last consistency point taken here (recorded durably, so it survives a crash). */
  cpSeq = 0;
  /** Where its entries since the primary's last consistency point landed (WriteLog's trail). */
  private trail = new ReplicaTrail();
  /** The trail file: what the trail was when last written. */
  private trailFile: Buffer | null = null;
  readonly replica: Replica;
  target: SecondaryCore<Frame>;
  readonly links: PeerLinks;
  /** Per block: when the last store issued to it completes. */
  private readonly busyUntilUs: number[];
  /** Faults are injected on the first peer only. */
  private readonly faulty: boolean;

  constructor(
    readonly id: string,
    private readonly context: SecondaryContext,
  ) {
    const { config } = context;
    this.replica = new Replica(id, config.blocks, config.blockBytes);
    this.target = this.follow(0);
    this.links = new PeerLinks(id, config.connections, context.queue, context.prng, config.network);
    this.busyUntilUs = new Array<number>(config.blocks).fill(0);
    this.faulty = config.fault !== null && id === config.peers[0];
  }

  /** The session's READY, as the node sends it (the sim connects only when the core is idle, so it comes at once). */
  ready(): PeerReady {
    const actions = this.target.sessionStarted(this.links.sessionId);
    const action = actions[0];
    if (actions.length !== 1 || action?.kind !== 'send-ready') throw new SimFailure(`${this.id}: no READY at once for a session begun while idle`);
    const { lastSeq } = action;
    if (lastSeq !== this.replica.lastSeq) throw new SimFailure(`${this.id}: the target issued through ${lastSeq}, the log ends at ${this.replica.lastSeq}`);
    // Its log is never made anew here (no damaged log): copyState says up to date.
    const disk = copyState({ failed: false, needsFullResync: false, streaming: null });
    return { lastSeq, durableSeq: Math.min(this.replica.durablePrefix, lastSeq), cpSeq: this.cpSeq, disk };
  }

  /** A new session may be answered with READY: nothing of the last one is under way. */
  get idle(): boolean {
    return this.up && this.target.idle;
  }

  /** The session ends: links closed (what is in flight is lost) and the target reset. */
  cut(): void {
    this.inSync = false;
    this.links.close();
    this.target.sessionEnded();
  }

  /**
   * The node crashes: its links die with it (the source is not told here; it notices
   * later), and its disk keeps the durable log, plus `keepFraction` of the stored entries
   * past it. Returns the recovered log's last entry.
   */
  crash(keepFraction: number): number {
    this.up = false;
    this.incarnation += 1;
    this.links.close();
    const durable = this.replica.durablePrefix;
    const keep = durable + Math.floor(keepFraction * (this.replica.storedPrefix() - durable));
    // The deliberate fault: its recovery loses the last entry it had made durable.
    const losesDurable = this.faulty && this.context.config.fault === 'secondary-loses-durable' && this.replica.base === 0 && durable > 0;
    if (losesDurable) this.context.fault.injected = true;
    const last = losesDurable ? this.replica.crashTo(durable - 1) : this.replica.crash(keep);
    // (What it lost went with its consistency point, if that was among it.)
    if (losesDurable) this.cpSeq = Math.min(this.cpSeq, last);
    this.busyUntilUs.fill(0);
    // At its start the log reads the trail file back and adds every entry it replays
    // (those after its last consistency point), and its start's consistency point writes it.
    this.trail = ReplicaTrail.decode(this.trailFile);
    for (let seq = Math.max(this.cpSeq, this.replica.base) + 1; seq <= last; seq += 1) this.addToTrail(seq, this.replica.record(seq).frame);
    this.trailFile = this.trail.encode();
    // What a restart will find (made now: nothing happens to it while the node is down).
    this.target = this.follow(last);
    return last;
  }

  /** The node's replica core for the volume, as LocalVolume makes one at start, following the primary from `lastSeq`. */
  private follow(lastSeq: number): SecondaryCore<Frame> {
    const { mode, windowBytesMax } = this.context.config;
    return new ReplicaCore<Frame>({ lastSeq, role: 'secondary', history: EpochHistory.initial('p') }).follow({ mode, lastSeq, windowBytesMax });
  }

  restart(): void {
    this.up = true;
  }

  // ---- the source's messages, as they arrive -----------------------------------------

  entry(seq: number, bytes: number, frame: Frame): void {
    this.perform(this.target.entry(seq, bytes, frame));
  }

  flush(seq: number): void {
    this.perform(this.target.flush(seq));
  }

  sync(cpSeq: number): void {
    this.perform(this.target.sync(cpSeq));
  }

  /** The source's RESET: the core carries it out once idle (a RESET during one breaks the protocol). */
  reset(seq: number, reportAfter: number): void {
    this.perform(this.target.resetAsked(this.links.sessionId, seq, reportAfter));
  }

  /**
   * The core's name-and-keep, as ReplicaTarget does it: the trail names the regions of
   * entries past reportAfter, and those named at an earlier RESET until a consistency
   * point of the primary is taken (the trail: entries since the primary's last CP it took,
   * which its own checkpoints do not drop). Kept, durably, before they are named
   * (WriteLog.keepNamed): the log about to be made anew no longer holds them. The
   * deliberate fault forgets them.
   */
  private nameDiverged(reportAfter: number): void {
    const { blockBytes, blocks, fault } = this.context.config;
    const extents = this.trail.extentsAfter(reportAfter) ?? [{ offset: 0, lengthBytes: blocks * blockBytes }];
    if (fault === 'target-forgets-named') {
      if (this.trail.extentsAfter(Number.MAX_SAFE_INTEGER)?.length !== 0) this.context.fault.injected = true;
      this.trail.resetTo([], blocks * blockBytes);
    } else {
      this.trail.resetTo(extents, blocks * blockBytes);
    }
    this.trailFile = this.trail.encode();
    const held = extents.map(({ offset, lengthBytes }) => ({ firstBlock: offset / blockBytes, blockCount: lengthBytes / blockBytes }));
    if (held.length > 0) this.links.send('to-source', 0, `diverged (${held.length} entries)`, () => this.context.onDiverged(this.id, held));
  }

  // ---- the target's actions -----------------------------------------------------------

  private draw(range: UsRange): number {
    return this.context.prng.between(range.minUs, range.maxUs);
  }

  private reply(what: 'ack' | 'flushed' | 'synced', seq: number, status: number, deliver: () => PrimaryAction<Frame>[]): void {
    if (status === 0) this.context.checker.replied(this.id, this.replica, what, seq);
    this.links.send('to-source', 0, `${what} ${seq}`, () => this.context.onSource(deliver()));
  }

  private perform(actions: SecondaryAction<Frame>[]): void {
    const { config, queue, checker } = this.context;
    const incarnation = this.incarnation;
    for (const action of actions) {
      switch (action.kind) {
        case 'store':
          this.store(action.seq, action.frame);
          break;
        case 'send-ack': {
          const { seq, status } = action;
          this.reply('ack', seq, status, () => this.context.core.acked(this.id, seq, status));
          break;
        }
        case 'send-flushed': {
          const { seq, status } = action;
          this.reply('flushed', seq, status, () => {
            const after = this.context.core.flushed(this.id, seq, status);
            this.context.onFlushed(this.id);
            return after;
          });
          break;
        }
        case 'send-synced': {
          const { cpSeq, status } = action;
          this.reply('synced', cpSeq, status, () => this.context.core.synced(this.id, cpSeq, status));
          break;
        }
        case 'sync-log': {
          const { seq } = action;
          checker.syncStarted(this.id, this.replica, seq, 'a log sync');
          const lying = this.faulty && config.fault === 'lying-log-sync';
          queue.after(this.draw(config.diskSyncUs), `${this.id} log synced ${seq}`, () => {
            if (this.incarnation !== incarnation) return;
            if (lying) this.context.fault.injected = true;
            else this.replica.syncThrough(seq);
            this.perform(this.target.logSynced(seq, null));
          });
          break;
        }
        case 'checkpoint': {
          const { cpSeq } = action;
          checker.syncStarted(this.id, this.replica, cpSeq, 'a checkpoint');
          queue.after(this.draw(config.diskSyncUs), `${this.id} checkpoint ${cpSeq}`, () => {
            if (this.incarnation !== incarnation) return;
            this.replica.syncThrough(cpSeq);
            this.cpSeq = Math.max(this.cpSeq, cpSeq);
            // ReplicaTarget.checkpoint: the primary wrote its bitmaps before this CP (and after
            // the RESET_DONE that followed the names), so the trail lets go of what it covers.
            this.trail.trimThrough(cpSeq);
            this.trailFile = this.trail.encode();
            this.perform(this.target.checkpointDone(cpSeq, null));
          });
          break;
        }
        case 'protocol-error':
          throw new SimFailure(`${this.id} reports a protocol error: ${action.reason}`);
        case 'send-ready':
          throw new SimFailure(`${this.id}: a READY owed past its session's start`);
        case 'name-and-keep':
          this.nameDiverged(action.reportAfter);
          this.perform(this.target.named(null));
          break;
        case 'restart-log': {
          // What was stored is made durable, then the log restarts after seq (the trail with it).
          const { seq } = action;
          queue.after(this.draw(config.diskSyncUs), `${this.id} log restarted after ${seq}`, () => {
            if (this.incarnation !== incarnation) return;
            this.replica.resetLog(seq);
            this.cpSeq = seq;
            this.perform(this.target.logRestarted(seq, null));
          });
          break;
        }
        case 'send-reset-done': {
          // Only to the session that asked (the core checks; its links are this session's).
          const { seq, status } = action;
          if (this.links.sessionId === action.session) this.links.send('to-source', 0, `reset-done ${seq}`, () => this.context.onResetDone(this.id, seq, status));
          break;
        }
      }
    }
  }

  private addToTrail(seq: number, frame: Frame): void {
    if (frame.kind !== 'cp') this.trail.add(seq, frame.firstBlock * this.context.config.blockBytes, frame.blockCount * this.context.config.blockBytes);
  }

  /** Appends to the per-source log now, and writes the image when the store completes. */
  private store(seq: number, frame: Frame): void {
    const { config, queue, checker, fault } = this.context;
    const record = this.replica.append(seq, frame);
    this.addToTrail(seq, frame);
    const blocks: number[] = [];
    if (frame.kind !== 'cp') for (let block = frame.firstBlock; block < frame.firstBlock + frame.blockCount; block += 1) blocks.push(block);
    const faulty = this.faulty && !fault.injected;
    const now = queue.now;
    const startUs = Math.max(now, ...blocks.map((block) => this.busyUntilUs[block] ?? 0));
    let doneUs = startUs + this.draw(config.secondaryDiskWriteUs);
    if (faulty && config.fault === 'reorder-same-block' && startUs > now + 1) {
      fault.injected = true;
      doneUs = now + 1;
    }
    for (const block of blocks) this.busyUntilUs[block] = Math.max(doneUs, this.busyUntilUs[block] ?? 0);
    const dropData = faulty && config.fault === 'drop-store-data' && frame.kind === 'write';
    if (dropData) fault.injected = true;
    const incarnation = this.incarnation;
    queue.at(doneUs, `${this.id} stored ${seq}`, () => {
      // A store under way when the node crashed never completes (recovery decided what is left).
      if (this.incarnation !== incarnation) return;
      if (frame.kind !== 'cp' && !dropData) {
        checker.applying(this.id, this.replica, frame);
        this.replica.image.write(frame);
      }
      record.stored = true;
      this.perform(this.target.stored(seq, null));
    });
  }
}
