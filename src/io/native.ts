// Loads the native addon (native/blockmirror_native.c, built by `npm install` through
// node-gyp) that provides lseek(SEEK_DATA/SEEK_HOLE), fallocate, non-blocking preadv2, CRC32C and
// a large write split into aligned pieces in one thread-pool job, which Node's fs module does not expose,
// and busy polling of the event loop before it sleeps.

import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import fs from 'node:fs';

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
  SEEK_DATA: number;
  SEEK_HOLE: number;
  FALLOC_PUNCH_HOLE: number;
  FALLOC_ZERO_RANGE: number;
}

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
