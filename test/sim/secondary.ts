// One simulated secondary: a MirrorTarget with the disk and links around it, playing the
// part of src/server/replica-target.ts. It performs the target's actions — stores with a
// random disk delay, log syncs, checkpoints, replies to the source on connection 0 — and
// reports their completions back. A store writes the secondary's image when it
// completes; stores to overlapping blocks complete in the order they were issued (the
// node orders writes per range), others in any order.
//
// Deliberate faults (config.ts) are injected here, on the first peer only, so that the
// checker can be shown to catch them. It never reads a real clock or Math.random().

import type { MirrorSource, PeerReady, SourceAction } from '../../src/core/mirror-source.js';
import { MirrorTarget, type TargetAction } from '../../src/core/mirror-target.js';
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
  source: MirrorSource<Frame>;
  /** Performs the source's actions (a reply from this peer was delivered). */
  onSource(actions: SourceAction<Frame>[]): void;
  /** Set once a deliberate fault has taken effect. */
  fault: { injected: boolean };
}

export class Secondary implements CheckedPeer {
  /** The sim's own view: connected, and not dropped by the source. */
  inSync = false;
  readonly replica: Replica;
  readonly target: MirrorTarget<Frame>;
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
    this.target = new MirrorTarget<Frame>({ mode: config.mode, lastSeq: 0, windowBytesMax: config.windowBytesMax });
    this.links = new PeerLinks(id, config.connections, context.queue, context.prng, config.network);
    this.busyUntilUs = new Array<number>(config.blocks).fill(0);
    this.faulty = config.fault !== null && id === config.peers[0];
  }

  /** What the node reports in its READY, once the target is idle. */
  ready(): PeerReady {
    const { lastSeq } = this.target.ready();
    return { lastSeq, durableSeq: Math.min(this.replica.durablePrefix, lastSeq), cpSeq: this.target.status().syncedCpSeq, disk: 'up-to-date' };
  }

  /** The session ends: links closed (what is in flight is lost) and the target reset. */
  cut(): void {
    this.inSync = false;
    this.links.close();
    this.target.reset();
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

  // ---- the target's actions -----------------------------------------------------------

  private draw(range: UsRange): number {
    return this.context.prng.between(range.minUs, range.maxUs);
  }

  private reply(what: 'ack' | 'flushed' | 'synced', seq: number, status: number, deliver: () => SourceAction<Frame>[]): void {
    if (status === 0) this.context.checker.replied(this.id, this.replica, what, seq);
    this.links.send('to-source', 0, `${what} ${seq}`, () => this.context.onSource(deliver()));
  }

  private perform(actions: TargetAction<Frame>[]): void {
    const { config, queue, checker, source } = this.context;
    for (const action of actions) {
      switch (action.kind) {
        case 'store':
          this.store(action.seq, action.frame);
          break;
        case 'send-ack': {
          const { seq, status } = action;
          this.reply('ack', seq, status, () => source.acked(this.id, seq, status));
          break;
        }
        case 'send-flushed': {
          const { seq, status } = action;
          this.reply('flushed', seq, status, () => source.flushed(this.id, seq, status));
          break;
        }
        case 'send-synced': {
          const { cpSeq, status } = action;
          this.reply('synced', cpSeq, status, () => source.synced(this.id, cpSeq, status));
          break;
        }
        case 'sync-log': {
          const { seq } = action;
          checker.syncStarted(this.id, this.replica, seq, 'a log sync');
          const lying = this.faulty && config.fault === 'lying-log-sync';
          queue.after(this.draw(config.diskSyncUs), `${this.id} log synced ${seq}`, () => {
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
            this.replica.syncThrough(cpSeq);
            this.perform(this.target.checkpointDone(cpSeq, null));
          });
          break;
        }
        case 'protocol-error':
          throw new SimFailure(`${this.id} reports a protocol error: ${action.reason}`);
      }
    }
  }

  /** Appends to the per-source log now, and writes the image when the store completes. */
  private store(seq: number, frame: Frame): void {
    const { config, queue, checker, fault } = this.context;
    const record = this.replica.append(seq, frame);
    const blocks: number[] = [];
    if (frame.kind === 'write') for (let block = frame.firstBlock; block < frame.firstBlock + frame.blockCount; block += 1) blocks.push(block);
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
    queue.at(doneUs, `${this.id} stored ${seq}`, () => {
      if (frame.kind === 'write' && !dropData) {
        this.replica.image.write(frame);
        checker.applied(this.id, this.replica.image, frame);
      }
      record.stored = true;
      this.perform(this.target.stored(seq, null));
    });
  }
}
