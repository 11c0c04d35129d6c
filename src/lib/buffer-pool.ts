// Reusable buffers for large reads. A fresh multi-megabyte Buffer is a new mapping whose
// pages fault in on first touch and are unmapped again at garbage collection; at
// gigabytes per second that costs more than the copy itself. Buffers from
// `bufferPoolMinBytes` up are kept in power-of-two classes, up to `maxBytes` in all;
// smaller ones come from Node's own pool.

import { assert } from './assert.js';

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;

  constructor(
    private readonly minBytes: number,
    private readonly maxBytes: number,
  ) {
    assert(minBytes > 0 && (minBytes & (minBytes - 1)) === 0, 'pool minimum must be a power of two');
  }

  /** A buffer of exactly `size` bytes (contents undefined). Give it back with release(). */
  acquire(size: number): Buffer {
    if (size < this.minBytes) return Buffer.allocUnsafe(size);
    const classBytes = 2 ** Math.ceil(Math.log2(size));
    const reused = this.free.get(classBytes)?.pop();
    if (reused !== undefined) {
      this.pooledBytes -= classBytes;
      return reused.subarray(0, size);
    }
    return Buffer.allocUnsafeSlow(classBytes).subarray(0, size);
  }

  /** Returns a buffer from acquire(); nothing may use it afterwards. */
  release(buffer: Buffer): void {
    if (buffer.length < this.minBytes) return;
    const classBytes = buffer.buffer.byteLength;
    assert(buffer.byteOffset === 0 && (classBytes & (classBytes - 1)) === 0, 'not a pooled buffer');
    if (this.pooledBytes + classBytes > this.maxBytes) return;
    const list = this.free.get(classBytes) ?? [];
    this.free.set(classBytes, list);
    list.push(Buffer.from(buffer.buffer, 0, classBytes));
    this.pooledBytes += classBytes;
  }

  get bytes(): number {
    return this.pooledBytes;
  }
}
