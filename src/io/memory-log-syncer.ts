// The twin of the native log syncer (log-syncer.ts), for MemoryFileSystem: the same
// contract on the event loop instead of a thread. A wanted sync runs on a later turn
// (setImmediate), covers what was noted before it started, and makes each partition
// written since the last sync durable through the file system's own sync, so that the
// simulated file system knows which of the log's bytes a crash may still take away. A
// sync is a mutation of that file system: a test can stop the world at it.

import util from 'node:util';
import type { LogSyncer, SyncReport, SyncerState } from './log-syncer.js';

/** What the syncer asks of the file system that opened the partitions. */
export interface SyncedFiles {
  /** From now on a crash keeps this file's bytes only as of its last sync. */
  track(fd: number): void;
  /** fdatasync of one file (it may throw: a stopped world). */
  sync(fd: number): void;
}

/** An error as Node's fs module makes them for a failed fdatasync. */
function syncError(errno: number): Error {
  const [code, message] = util.getSystemErrorMap().get(-errno) ?? [`E${errno}`, 'unknown error'];
  return Object.assign(new Error(`${code}: ${message}, fdatasync`), { code, errno: -errno, syscall: 'fdatasync' });
}

export class MemoryLogSyncer implements LogSyncer {
  private appended: number;
  private wanted: number;
  private durable: number;
  private syncs = 0;
  private error: Error | null = null;
  private failNextErrno = 0;
  /** Partitions written since the last sync started. */
  private dirty: number[] = [];
  private scheduled = false;
  private closed = false;

  constructor(
    private readonly fdsMax: number,
    durableSeq: number,
    private readonly onSynced: SyncReport,
    private readonly files: SyncedFiles,
  ) {
    if (!Number.isInteger(fdsMax) || fdsMax < 1 || !Number.isSafeInteger(durableSeq) || durableSeq < 0) {
      throw new TypeError('openSyncer(fdsMax, durableSeq, onSynced): bad arguments');
    }
    this.appended = durableSeq;
    this.wanted = durableSeq;
    this.durable = durableSeq;
  }

  note(fd: number, seq: number): void {
    if (!this.dirty.includes(fd)) {
      if (this.dirty.length === this.fdsMax) throw new RangeError('note: more partitions written than the syncer was opened for');
      this.files.track(fd);
      this.dirty.push(fd);
    }
    if (seq > this.appended) this.appended = seq;
  }

  want(seq: number): void {
    if (seq > this.wanted) this.wanted = seq;
    this.schedule();
  }

  syncNow(): number {
    if (this.error === null && this.appended > this.durable) this.syncNoted();
    if (this.error !== null) throw this.error;
    return this.durable;
  }

  state(): SyncerState {
    return { durableSeq: this.durable, syncs: this.syncs, error: this.error };
  }

  failNext(errno: number): void {
    if (!Number.isInteger(errno) || errno <= 0) throw new TypeError('failNext(errno): bad arguments');
    this.failNextErrno = errno;
  }

  close(): void {
    this.closed = true;
  }

  private due(): boolean {
    return this.error === null && this.wanted > this.durable && this.appended > this.durable;
  }

  private schedule(): void {
    if (this.scheduled || this.closed || !this.due()) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      if (this.closed || !this.due()) return;
      this.syncNoted();
      this.onSynced(this.durable, this.syncs, this.error);
      this.schedule();
    });
  }

  private syncNoted(): void {
    const target = this.appended;
    const fds = this.dirty;
    this.dirty = [];
    let failure = this.failNextErrno === 0 ? null : syncError(this.failNextErrno);
    this.failNextErrno = 0;
    for (const fd of fds) {
      if (failure !== null) break;
      try {
        this.files.sync(fd);
      } catch (error) {
        failure = error as Error;
      }
    }
    this.syncs += 1;
    if (failure !== null) this.error ??= failure;
    else if (target > this.durable) this.durable = target;
  }
}
