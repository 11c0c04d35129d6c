// Loads the native addon (native/blockmirror_native.c, built by `npm install` through
// node-gyp) that provides lseek(SEEK_DATA/SEEK_HOLE), fallocate, non-blocking preadv2, CRC32C and
// a large write split into aligned pieces in one thread-pool job, which Node's fs module does not expose,
// busy polling of the event loop before it sleeps, a write log's syncer thread, and
// anonymous in-memory files (the simulated file system's).

import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import fs from 'node:fs';
import { useCrc32c } from '../lib/crc32c.js';

export interface NativeBindings {
  crc32c(data: Buffer, crc: number, software?: boolean): number;
  seek(fd: number, offset: number, whence: number): number;
  /** Bytes read, -1 if it would block, -2 if RWF_NOWAIT is unsupported. */
  preadNowait(fd: number, buffer: Buffer, position: number): number;
  fallocate(fd: number, mode: number, offset: number, length: number, callback: (error: Error | null) => void): void;
  /** Writes `buffers` back to back at `position`, one pwritev per `pieceBytes`-aligned piece, on the thread pool. */
  writePieces(fd: number, buffers: readonly Buffer[], position: number, pieceBytes: number, callback: (error: Error | null) => void): void;
  /** Polls for up to `maxMicros` before the event loop sleeps, adapting how long (0: never). */
  busyPoll(maxMicros: number): void;
  busyPollStats(): BusyPollStats;
  /**
   * A write log's syncer thread (native/log_syncer.c): fdatasyncs the partitions noted,
   * one sync after another while a seq wanted is not durable, and calls `onSynced` on the
   * event loop after each. At most `fdsMax` partitions between two syncs.
   */
  syncerOpen(fdsMax: number, durableSeq: number, onSynced: (durableSeq: number, syncs: number, error: Error | null) => void): SyncerHandle;
  /** Entries through `seq` are written; the last ones in partition `fd`. Wakes nothing: syncerWant does. */
  syncerNote(syncer: SyncerHandle, fd: number, seq: number): void;
  /** Somebody waits for `seq` to be durable: the thread syncs if it is idle. */
  syncerWant(syncer: SyncerHandle, seq: number): void;
  /** Syncs what was noted on this thread: the seq durable on return, -1 if the thread is syncing. Throws a failed fdatasync's error. */
  syncerSyncNow(syncer: SyncerHandle): number;
  /** [durableSeq, syncs, first error or null]. */
  syncerState(syncer: SyncerHandle): [number, number, Error | null];
  /** Fault injection: the next sync fails with `errno` without calling fdatasync. */
  syncerFailNext(syncer: SyncerHandle, errno: number): void;
  /** Waits for a sync that runs and stops the thread; onSynced is not called again. */
  syncerClose(syncer: SyncerHandle): void;
  /** A new, empty, read-write anonymous file held in memory (memfd_create). */
  memfd(): number;
  SEEK_DATA: number;
  SEEK_HOLE: number;
  FALLOC_PUNCH_HOLE: number;
  FALLOC_ZERO_RANGE: number;
}

/** A native syncer (opaque). */
export type SyncerHandle = { readonly __syncer: unique symbol };

export interface BusyPollStats {
  /** The longest a wait may poll (0: polling is off). */
  maxMicros: number;
  /** Waits that ended while the loop was polling. */
  hits: number;
  /** Waits that outlasted the poll; the loop then slept. */
  misses: number;
  /** Polls ended because another thread needed the CPU; the loop then slept. */
  yields: number;
  /** Time spent polling. */
  pollSeconds: number;
  /** How long the next wait polls. */
  windowMicros: number;
}

function findAddon(): string {
  // The compiled file sits under dist/src/io/; the sources under src/io/. Walk up to the
  // package root, the directory that holds binding.gyp.
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 5; depth += 1) {
    if (fs.existsSync(path.join(dir, 'binding.gyp'))) {
      return path.join(dir, 'build', 'Release', 'blockmirror_native.node');
    }
    dir = path.dirname(dir);
  }
  throw new Error('blockmirror: cannot find the package root (binding.gyp) to load the native addon');
}

const require = createRequire(import.meta.url);
export const native = require(findAddon()) as NativeBindings;

// Checksums run on the addon's CRC32C (the hardware instruction) from now on.
useCrc32c((data, crc) => native.crc32c(data, crc));
