// The LogSyncer port: a write log's group commit. The log tells it what its writer has
// written (`note`: entries through a sequence number, the last ones in a partition's
// descriptor) and what somebody waits for (`want`); it makes the partitions written since
// its last sync durable, one sync after another while a wanted entry is not durable yet,
// each sync covering what was noted before it started, and reports each sync.
//
// The file system that opened the partitions hands out the syncer (FileSystem.openSyncer):
// NodeFileSystem the native syncer thread (native/log_syncer.c, wrapped here),
// MemoryFileSystem its twin (memory-log-syncer.ts), which makes a partition's bytes
// durable in the simulated file system, so that a simulated crash loses what the log had
// written but not synced. Both pass one suite (test/unit/log-syncer.test.ts).
//
// A failed sync is final: the error is kept and every later sync fails with it (after a
// failed fdatasync Linux may have dropped the pages it could not write and marked them
// clean, so a later sync could succeed without them).

import { native, type SyncerHandle } from './native.js';

/** A sync returned: entries through `durableSeq` are durable (or the first failure, for good). */
export type SyncReport = (durableSeq: number, syncs: number, error: Error | null) => void;

export interface SyncerState {
  durableSeq: number;
  syncs: number;
  error: Error | null;
}

export interface LogSyncer {
  /** Entries through `seq` are written, the last ones in partition `fd`. Starts nothing: want does. */
  note(fd: number, seq: number): void;
  /** Somebody waits for `seq` to be durable: a sync starts if none runs and something noted is not durable. */
  want(seq: number): void;
  /**
   * Syncs what was noted, on the caller's turn, when no sync runs: the seq durable on return,
   * or -1 when a sync runs (its result comes as a report). Throws the failure, now or from before.
   */
  syncNow(): number;
  state(): SyncerState;
  /** Fault injection: the next sync fails with `errno`, as a disk that cannot write makes it. */
  failNext(errno: number): void;
  /** Waits for a sync that runs and stops; no report comes after. Closing twice is allowed. */
  close(): void;
}

/** Opens a syncer for at most `fdsMax` partitions written between two syncs, with entries through `durableSeq` durable. */
export type OpenSyncer = (fdsMax: number, durableSeq: number, onSynced: SyncReport) => LogSyncer;

/** The syncer thread of the native addon. */
export const openNativeSyncer: OpenSyncer = (fdsMax, durableSeq, onSynced) => {
  const handle: SyncerHandle = native.syncerOpen(fdsMax, durableSeq, onSynced);
  return {
    note: (fd, seq) => native.syncerNote(handle, fd, seq),
    want: (seq) => native.syncerWant(handle, seq),
    syncNow: () => native.syncerSyncNow(handle),
    state: () => {
      const [durable, syncs, error] = native.syncerState(handle);
      return { durableSeq: durable, syncs, error };
    },
    failNext: (errno) => native.syncerFailNext(handle, errno),
    close: () => native.syncerClose(handle),
  };
};
