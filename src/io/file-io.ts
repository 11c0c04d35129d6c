// File primitives shared by the volume disk and the write log: small vectored positional
// writes run inline on the event loop, fdatasync runs inline when its request is alone
// on the node, and everything else runs on the libuv thread pool (see IoActivity).

import fs from 'node:fs';
import { constants } from '../constants.js';

/**
 * What is in flight across a whole node (client requests being served, and thread-pool
 * file operations), and where small writes run.
 *
 * A small write into the page cache takes a few microseconds; handing it to a libuv
 * thread and back costs more than that (a mutex, a wake-up of the worker thread, and a
 * wake-up of the event loop; on a virtual machine the wake-ups are interprocessor
 * interrupts). So writes up to the caller's inline size run on the event loop whatever
 * else is in flight: 4 KiB random writes at depth 32 went from 36,000 to 69,000 per
 * second, and FUA writes at depth 32 from 20,400 to 28,200 (2 cores, docs/performance.md).
 * A page-cache write can block, though: when the kernel throttles writers for dirty
 * pages, or a page is being written back. An inline write that takes longer than
 * `slowWriteMs` therefore sends small writes back to the pool for `slowBackoffMs`, so
 * that one slow write stalls the node's other requests once, not for as long as the
 * throttling lasts. A request that is alone (queue depth 1) has nobody to stall and
 * always runs inline.
 *
 * fdatasync runs inline only when its request is alone: it waits for the disk, and
 * other requests must not wait behind it.
 */
export class IoActivity {
  /** Client requests being executed, across every connection. */
  requests = 0;
  /** Thread-pool file operations in flight, and log syncs waited for on their syncer threads. */
  pending = 0;
  /** Inline writes that took longer than slowWriteMs. */
  slowWrites = 0;
  /** Until this time (performance.now()), small writes go to the pool unless alone. */
  private pooledUntilMs = 0;

  constructor(
    readonly slowWriteMs: number = constants.inlineWriteSlowMs,
    readonly slowBackoffMs: number = constants.inlineWriteSlowBackoffMs,
  ) {}

  get alone(): boolean {
    return this.requests <= 1 && this.pending === 0;
  }

  /** Whether a write of `bytes` (at most the caller's inline size) runs inline now. */
  writeInline(bytes: number, inlineBytesMax: number): boolean {
    if (bytes > inlineBytesMax) return false;
    return this.alone || performance.now() >= this.pooledUntilMs;
  }

  /** Notes how long an inline write took (from performance.now() before it). */
  wroteInline(startedMs: number): void {
    const now = performance.now();
    if (now - startedMs <= this.slowWriteMs) return;
    this.slowWrites += 1;
    this.pooledUntilMs = now + this.slowBackoffMs;
  }

  /** Runs a thread-pool operation, counted while it runs. */
  pooled(start: (done: (error: Error | null) => void) => void): Promise<void> {
    this.pending += 1;
    return new Promise((resolve, reject) => {
      start((error) => {
        this.pending -= 1;
        if (error) reject(error);
        else resolve();
      });
    });
  }
}

/** The buffers left after the first `count` bytes (after a short vectored write). */
export function dropBytes(buffers: readonly Buffer[], count: number): Buffer[] {
  const rest: Buffer[] = [];
  let skip = count;
  for (const buffer of buffers) {
    if (skip >= buffer.length) {
      skip -= buffer.length;
      continue;
    }
    rest.push(skip > 0 ? buffer.subarray(skip) : buffer);
    skip = 0;
  }
  return rest;
}

/**
 * Fills `buffer[from..]` from `position + from` of the file on the thread pool, reading
 * again after a short read. A file that ends first gets `pastEnd(at)` (the file offset
 * where it ended) as the error.
 */
export function readFullyAt(
  fd: number,
  buffer: Buffer,
  position: number,
  from: number,
  activity: IoActivity,
  pastEnd: (at: number) => Error,
): Promise<void> {
  return activity.pooled((done) => {
    const step = (at: number): void => {
      if (at === buffer.length) return done(null);
      fs.read(fd, buffer, at, buffer.length - at, position + at, (error, count) => {
        if (error) return done(error);
        if (count === 0) return done(pastEnd(position + at));
        step(at + count);
      });
    };
    step(from);
  });
}

/** Writes all of `buffers` at `position`; inline when at most `inlineBytesMax` (see IoActivity). */
export function writevAt(
  fd: number,
  buffers: readonly Buffer[],
  position: number,
  activity: IoActivity,
  inlineBytesMax: number,
): Promise<void> {
  const total = buffers.reduce((sum, buffer) => sum + buffer.length, 0);
  if (total === 0) return Promise.resolve();
  if (activity.writeInline(total, inlineBytesMax)) {
    const startedMs = performance.now();
    try {
      let pending: readonly Buffer[] = buffers;
      let at = position;
      while (pending.length > 0) {
        const count = fs.writevSync(fd, pending as Buffer[], at);
        pending = dropBytes(pending, count);
        at += count;
      }
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(error);
    } finally {
      activity.wroteInline(startedMs);
    }
  }
  return activity.pooled((done) => {
    const step = (pending: readonly Buffer[], at: number): void => {
      fs.writev(fd, pending as Buffer[], at, (error, count) => {
        if (error) return done(error);
        const rest = dropBytes(pending, count);
        if (rest.length > 0) return step(rest, at + count);
        done(null);
      });
    };
    step(buffers, position);
  });
}

