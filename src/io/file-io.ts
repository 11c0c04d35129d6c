// File primitives shared by the volume disk and the write log: vectored positional
// writes and fdatasync that run inline when their request is alone on the node, and on
// the libuv thread pool otherwise (see IoActivity).

import fs from 'node:fs';

/**
 * What is in flight across a whole node: client requests being served, and thread-pool
 * file operations. When one request is alone (the queue-depth-1 case: a write, then a
 * flush, then the next write) nobody can wait behind the disk, so its small write or
 * its sync runs inline and saves two thread hand-offs (about 100 µs on a small
 * machine). With anything else in flight, work goes to the pool so that no request
 * waits behind another's I/O.
 */
export class IoActivity {
  /** Client requests being executed, across every connection. */
  requests = 0;
  /** Thread-pool file operations in flight. */
  pending = 0;

  get alone(): boolean {
    return this.requests <= 1 && this.pending === 0;
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

/** Writes all of `buffers` at `position`; inline when alone and at most `inlineBytesMax`. */
export function writevAt(
  fd: number,
  buffers: readonly Buffer[],
  position: number,
  activity: IoActivity,
  inlineBytesMax: number,
): Promise<void> {
  const total = buffers.reduce((sum, buffer) => sum + buffer.length, 0);
  if (total === 0) return Promise.resolve();
  if (activity.alone && total <= inlineBytesMax) {
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

/** fdatasync; inline when alone (and `inlineAllowed`), on the pool otherwise. */
export function syncData(fd: number, activity: IoActivity, inlineAllowed: boolean): Promise<void> {
  if (inlineAllowed && activity.alone) {
    try {
      fs.fdatasyncSync(fd);
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(error);
    }
  }
  return activity.pooled((done) => fs.fdatasync(fd, done));
}
