// A FIFO of received bytes for incremental decoders. Chunks are kept as they arrive and
// only copied when a read spans chunks, so a decoder waiting for a large payload does not
// concatenate on every chunk. It owns no limit itself: each decoder bounds what it asks
// to hold before asking.

import { assert } from './assert.js';

export class ByteQueue {
  private chunks: Buffer[] = [];
  private headOffset = 0;
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** Returns the next `count` bytes and removes them. */
  read(count: number): Buffer {
    assert(count >= 0 && count <= this.length, 'ByteQueue.read past end');
    if (count === 0) return Buffer.alloc(0);
    const head = this.chunks[0];
    assert(head !== undefined);
    const available = head.length - this.headOffset;
    if (available >= count) {
      const out = head.subarray(this.headOffset, this.headOffset + count);
      this.advance(count);
      return out;
    }
    const out = Buffer.allocUnsafe(count);
    let written = 0;
    while (written < count) {
      const chunk = this.chunks[0];
      assert(chunk !== undefined);
      const take = Math.min(count - written, chunk.length - this.headOffset);
      chunk.copy(out, written, this.headOffset, this.headOffset + take);
      written += take;
      this.advance(take);
    }
    return out;
  }

  /**
   * Returns the next `count` bytes as slices of the received chunks, without copying,
   * and removes them. The slices keep their chunks alive until they are dropped.
   */
  readSlices(count: number): Buffer[] {
    assert(count >= 0 && count <= this.length, 'ByteQueue.readSlices past end');
    const slices: Buffer[] = [];
    let left = count;
    while (left > 0) {
      const chunk = this.chunks[0];
      assert(chunk !== undefined);
      const take = Math.min(left, chunk.length - this.headOffset);
      slices.push(chunk.subarray(this.headOffset, this.headOffset + take));
      this.advance(take);
      left -= take;
    }
    return slices;
  }

  /** Drops up to `count` bytes; returns how many were dropped. */
  skip(count: number): number {
    const dropped = Math.min(count, this.length);
    let left = dropped;
    while (left > 0) {
      const chunk = this.chunks[0];
      assert(chunk !== undefined);
      const take = Math.min(left, chunk.length - this.headOffset);
      this.advance(take);
      left -= take;
    }
    return dropped;
  }

  /** Everything still queued, as one buffer, leaving the queue empty. */
  drain(): Buffer {
    return this.read(this.length);
  }

  private advance(count: number): void {
    const head = this.chunks[0];
    assert(head !== undefined);
    this.headOffset += count;
    this.length -= count;
    if (this.headOffset === head.length) {
      this.chunks.shift();
      this.headOffset = 0;
    }
  }
}
