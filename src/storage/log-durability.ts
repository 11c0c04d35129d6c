// When a write log's entries are durable: the hand-off between the log and its syncer
// (the LogSyncer port, src/io/log-syncer.ts: the native thread, or the simulated file
// system's twin), which makes the partitions written to durable, one sync after another
// while anything wanted is not durable yet, each covering every entry written before it
// started (group commit). WriteLog (write-log.ts) reports what its writer has
// written (`written`) and asks for durability (`syncTo`, `syncAhead`); this module keeps
// the durable mark, the waiters, and the first failure, which is final.

import { assert } from '../lib/assert.js';
import type { IoActivity } from '../io/file-io.js';
import type { LogSyncer, OpenSyncer } from '../io/log-syncer.js';

export class LogDurability {
  /** Every entry through this one is durable in the log. */
  durableSeq: number;
  /** Syncs started ahead of a flush (syncAhead), for status. */
  syncsAhead = 0;
  private readonly waiters: { seq: number; resolve: () => void; reject: (error: Error) => void }[] = [];
  /** Makes the partitions durable (from start() until close()). */
  private syncer: LogSyncer | null = null;
  /** The highest seq somebody waits for (or a sync ahead asked for). */
  private wantedSeq: number;
  /** Whether this log counts in IoActivity.pending (see updatePending). */
  private pending = false;
  /** The first failed fdatasync: the log cannot be made durable any more. */
  private failure: Error | null = null;
  /** Syncs done, as of the syncer's close (syncs() asks a running syncer). */
  private syncsAtClose = 0;

  constructor(
    /** The log's directory, for the error a waiter gets when the log closes first. */
    private readonly dir: string,
    private readonly activity: IoActivity,
    /** The syncer of the file system that holds the partitions. */
    private readonly openSyncer: OpenSyncer,
    /** The last entry the writer has written, with every one before it. */
    private readonly appendedSeq: () => number,
    durableSeq: number,
  ) {
    this.durableSeq = durableSeq;
    this.wantedSeq = durableSeq;
  }

  /** Starts the syncer for `partitions` files, with entries through `durableSeq` durable. */
  start(partitions: number, durableSeq: number): void {
    assert(this.syncer === null, 'the syncer runs already');
    this.durableSeq = durableSeq;
    this.wantedSeq = durableSeq;
    this.syncer = this.openSyncer(partitions, durableSeq, (synced, _syncs, error) => {
      if (error !== null) this.failed(error);
      else this.madeDurable(synced);
    });
  }

  /**
   * The writer wrote entries through `seq` (the last ones into partition `fd`); the next
   * sync covers them. Call `resume` once whatever else the write completes has run.
   */
  written(fd: number, seq: number): void {
    this.syncer?.note(fd, seq);
  }

  /** After a write: a sync somebody waits for and that the write made possible starts now. */
  resume(): void {
    if (this.wantedSeq > this.durableSeq) this.request(this.wantedSeq, true);
  }

  /** Resolves once every entry up to `seq` is durable in the log. */
  syncTo(seq: number): Promise<void> {
    if (seq <= this.durableSeq) return Promise.resolve();
    if (this.failure !== null) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiters.push({ seq, resolve, reject });
      this.request(seq, true);
    });
  }

  /** See WriteLog.syncAhead. */
  syncAhead(seq: number, inlineAllowed: boolean): void {
    if (this.syncer === null || this.failure !== null || seq <= this.durableSeq || seq > this.appendedSeq()) return;
    this.syncsAhead += 1;
    this.request(seq, inlineAllowed);
  }

  /**
   * Asks for the log to be durable through `seq`. When nothing else is in flight on the
   * node and the entry is written, the sync runs here instead of on the thread: a
   * hand-off to the thread and back costs two wake-ups, and the event loop has nothing
   * else to do meanwhile.
   */
  private request(seq: number, inlineAllowed: boolean): void {
    const syncer = this.syncer;
    if (syncer === null || this.failure !== null || seq <= this.durableSeq) return;
    if (seq > this.wantedSeq) this.wantedSeq = seq;
    if (inlineAllowed && seq <= this.appendedSeq() && this.activity.alone) {
      let durableSeq: number;
      try {
        durableSeq = syncer.syncNow();
      } catch (error) {
        this.failed(error as Error);
        return;
      }
      if (durableSeq >= 0) {
        this.madeDurable(durableSeq);
        if (this.wantedSeq <= this.durableSeq) return;
      }
    }
    this.updatePending();
    syncer.want(this.wantedSeq);
  }

  /** A sync returned: entries through `seq` are durable. */
  private madeDurable(seq: number): void {
    if (seq > this.durableSeq) {
      this.durableSeq = seq;
      this.settleWaiters(null);
    }
    this.updatePending();
  }

  /**
   * Not retried: after a failed fdatasync Linux may have dropped the dirty pages it
   * could not write and marked them clean, so a later fdatasync can succeed without
   * them on disk. Every later sync fails with this error instead.
   */
  private failed(error: Error): void {
    if (this.failure === null) this.failure = error;
    this.updatePending();
    this.settleWaiters(this.failure);
  }

  /**
   * A sync somebody waits for on the syncer counts as I/O in flight (IoActivity.alone):
   * from a want that is not durable yet until it is, the log fails, or it closes.
   */
  private updatePending(): void {
    const pending = this.syncer !== null && this.failure === null && this.wantedSeq > this.durableSeq;
    if (pending === this.pending) return;
    this.pending = pending;
    this.activity.pending += pending ? 1 : -1;
  }

  /** Fault injection for tests: the next sync fails with `errno`, as a failing disk would make it. */
  failNext(errno: number): void {
    assert(this.syncer !== null, 'the log has no syncer yet');
    this.syncer.failNext(errno);
  }

  /** Syncs done so far. */
  syncs(): number {
    return this.syncer === null ? this.syncsAtClose : this.syncer.state().syncs;
  }

  private settleWaiters(error: Error | null): void {
    const remaining: typeof this.waiters = [];
    for (const waiter of this.waiters) {
      if (error !== null) waiter.reject(error);
      else if (waiter.seq <= this.durableSeq) waiter.resolve();
      else remaining.push(waiter);
    }
    this.waiters.length = 0;
    this.waiters.push(...remaining);
  }

  /**
   * Stops the syncer, waiting for a sync that runs (the partitions' descriptors are closed
   * next); whoever still waits gets an error.
   */
  close(): void {
    const syncer = this.syncer;
    if (syncer === null) return;
    syncer.close();
    const { durableSeq, syncs, error } = syncer.state();
    this.syncer = null;
    this.syncsAtClose = syncs;
    if (error !== null) this.failed(error);
    else this.madeDurable(durableSeq);
    this.settleWaiters(new Error(`write log ${this.dir} closed before entry ${this.wantedSeq} was durable`));
  }
}
