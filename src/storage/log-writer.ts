// The write log's writer: it writes the entries WriteLog has placed (write-log.ts), one
// write at a time, each covering every entry queued since the last one that follows it in
// the same partition, and always whole file-system blocks: it starts with the bytes
// already in the block where the log ends (kept in memory, `tail`) and ends with zeroes
// to the next block boundary. A write that covers part of a block makes ext4 prepare the
// whole block, which costs ten times a whole-block write; with 64-byte entry alignment
// almost every entry would do that. Rewriting the already written start of a block is
// harmless even if torn: those bytes are rewritten with the same values. One write at a
// time, so the block where the log ends is never written by two writes at once.

import { assert } from '../lib/assert.js';
import { writevAt, type IoActivity } from '../io/file-io.js';
import { LOG_BLOCK_BYTES, type Position } from './log-layout.js';

/** One log write carries at most this many bytes of queued entries (one entry may be larger). */
const WRITE_BYTES_MAX = 4 * 1024 * 1024;
/** ...and at most this many buffers (Linux's IOV_MAX is 1024). */
const WRITE_BUFFERS_MAX = 1000;

export interface QueuedEntry {
  position: Position;
  /** The encoded entry: header, payload and padding, `bytes` in all. */
  buffers: Buffer[];
  bytes: number;
  seq: number;
  resolve: () => void;
  reject: (error: Error) => void;
}

export interface WriterHooks {
  /** The partition file of `generation`. */
  fdOf(generation: number): number;
  /** A write finished: `run` is in partition `fd` (called before the next write starts). */
  written(run: readonly QueuedEntry[], fd: number): void;
  /** A write's entries have been told (called after the next write started). */
  settled(): void;
}

/** A copy of the `count` bytes that end `skipFromEnd` bytes before the end of `buffers`. */
function lastBytes(buffers: readonly Buffer[], skipFromEnd: number, count: number): Buffer {
  const out = Buffer.alloc(count);
  let need = count;
  let skip = skipFromEnd;
  for (let index = buffers.length - 1; index >= 0 && need > 0; index -= 1) {
    const buffer = buffers[index];
    assert(buffer !== undefined);
    if (skip >= buffer.length) {
      skip -= buffer.length;
      continue;
    }
    const take = Math.min(need, buffer.length - skip);
    buffer.copy(out, need - take, buffer.length - skip - take, buffer.length - skip);
    need -= take;
    skip = 0;
  }
  assert(need === 0, 'fewer bytes than the tail block needs');
  return out;
}

export class LogWriter {
  /** Entries placed and waiting for the writer, in position order. */
  private readonly queue: QueuedEntry[] = [];
  private writing = false;
  /** The bytes of the block where the log currently ends, up to its end (the write point). */
  private tail: { generation: number; blockStart: number; bytes: Buffer } = { generation: -1, blockStart: 0, bytes: Buffer.alloc(0) };

  constructor(
    private readonly partitionBytes: number,
    private readonly activity: IoActivity,
    /** Writes up to this size run inline on the event loop (see IoActivity). */
    private readonly inlineWriteBytesMax: number,
    private readonly hooks: WriterHooks,
  ) {}

  /** Where the log ends at its opening: the bytes of the block before `offset` in `generation`. */
  startAt(generation: number, blockStart: number, bytes: Buffer): void {
    this.tail = { generation, blockStart, bytes };
  }

  /** Queues a placed entry (in position order) and writes it as soon as the writer is free. */
  enqueue(entry: QueuedEntry): void {
    this.queue.push(entry);
    this.start();
  }

  private start(): void {
    if (this.writing || this.queue.length === 0) return;
    const first = this.queue[0];
    assert(first !== undefined);
    const { generation } = first.position;
    const start = first.position.offset;
    let end = start;
    let count = 0;
    let buffers = 0;
    for (const entry of this.queue) {
      if (entry.position.generation !== generation || entry.position.offset !== end) break;
      if (count > 0 && (end - start + entry.bytes > WRITE_BYTES_MAX || buffers + entry.buffers.length > WRITE_BUFFERS_MAX)) break;
      end += entry.bytes;
      buffers += entry.buffers.length;
      count += 1;
    }
    const run = this.queue.splice(0, count);
    const blockStart = start - (start % LOG_BLOCK_BYTES);
    const out: Buffer[] = [];
    if (blockStart < start) {
      assert(
        this.tail.generation === generation && this.tail.blockStart === blockStart && this.tail.bytes.length === start - blockStart,
        `log tail block not known at ${start}`,
      );
      out.push(this.tail.bytes);
    }
    for (const entry of run) out.push(...entry.buffers);
    const blockEnd = Math.min(Math.ceil(end / LOG_BLOCK_BYTES) * LOG_BLOCK_BYTES, this.partitionBytes);
    if (blockEnd > end) out.push(Buffer.alloc(blockEnd - end));
    this.tail = { generation, blockStart: end - (end % LOG_BLOCK_BYTES), bytes: lastBytes(out, blockEnd - end, end % LOG_BLOCK_BYTES) };
    this.writing = true;
    const fd = this.hooks.fdOf(generation);
    writevAt(fd, out, blockStart, this.activity, this.inlineWriteBytesMax).then(
      () => {
        this.writing = false;
        this.hooks.written(run, fd);
        // The entries queued meanwhile are written first: written inline, they are noted
        // before this run's FUA writes and flushes ask for a sync, which then covers them
        // too instead of leaving them to a second sync.
        this.start();
        for (const entry of run) entry.resolve();
        this.hooks.settled();
      },
      (error: Error) => {
        this.writing = false;
        for (const entry of run) entry.reject(error);
        this.start();
      },
    );
  }
}
