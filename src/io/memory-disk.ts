// Disk held in memory: the simulated twin of FileDisk, for tests (the deterministic
// simulator has a disk model of its own, test/sim/volume.ts). Allocation is tracked per 4 KiB block, like a file system would, so block
// status tests see holes; sync() is where a later crash model will draw the line.

import { assert } from '../lib/assert.js';
import type { Disk, DiskExtent } from './disk.js';

const BLOCK_BYTES = 4096;

export class MemoryDisk implements Disk {
  private readonly data: Buffer;
  private readonly allocated: Uint8Array;
  syncCount = 0;

  constructor(readonly sizeBytes: number) {
    assert(Number.isSafeInteger(sizeBytes) && sizeBytes >= 0);
    this.data = Buffer.alloc(sizeBytes);
    this.allocated = new Uint8Array(Math.ceil(sizeBytes / BLOCK_BYTES));
  }

  read(buffer: Buffer, offset: number): Promise<void> {
    this.checkRange(offset, buffer.length);
    this.data.copy(buffer, 0, offset, offset + buffer.length);
    return Promise.resolve();
  }

  write(buffer: Buffer, offset: number): Promise<void> {
    this.checkRange(offset, buffer.length);
    buffer.copy(this.data, offset);
    this.markAllocated(offset, buffer.length, 1);
    return Promise.resolve();
  }

  writev(buffers: readonly Buffer[], offset: number): Promise<void> {
    let at = offset;
    for (const buffer of buffers) {
      this.checkRange(at, buffer.length);
      buffer.copy(this.data, at);
      this.markAllocated(at, buffer.length, 1);
      at += buffer.length;
    }
    return Promise.resolve();
  }

  sync(): Promise<void> {
    this.syncCount += 1;
    return Promise.resolve();
  }

  punchHole(offset: number, lengthBytes: number): Promise<boolean> {
    this.checkRange(offset, lengthBytes);
    this.data.fill(0, offset, offset + lengthBytes);
    // Only whole blocks become holes; partial blocks are zeroed in place.
    const first = Math.ceil(offset / BLOCK_BYTES);
    const last = Math.floor((offset + lengthBytes) / BLOCK_BYTES);
    for (let block = first; block < last; block += 1) this.allocated[block] = 0;
    if (offset + lengthBytes === this.sizeBytes && last < this.allocated.length && (offset <= last * BLOCK_BYTES)) {
      this.allocated[last] = 0;
    }
    return Promise.resolve(true);
  }

  zeroRange(offset: number, lengthBytes: number): Promise<boolean> {
    this.checkRange(offset, lengthBytes);
    this.data.fill(0, offset, offset + lengthBytes);
    this.markAllocated(offset, lengthBytes, 1);
    return Promise.resolve(true);
  }

  canZeroFast(): boolean {
    return true;
  }

  extents(offset: number, lengthBytes: number, extentsMax: number): Promise<DiskExtent[]> {
    this.checkRange(offset, lengthBytes);
    assert(lengthBytes > 0 && extentsMax > 0);
    const end = offset + lengthBytes;
    const extents: DiskExtent[] = [];
    let at = offset;
    while (at < end && extents.length < extentsMax) {
      const hole = this.allocated[Math.floor(at / BLOCK_BYTES)] === 0;
      let next = (Math.floor(at / BLOCK_BYTES) + 1) * BLOCK_BYTES;
      while (next < end && (this.allocated[next / BLOCK_BYTES] === 0) === hole) next += BLOCK_BYTES;
      next = Math.min(next, end);
      extents.push({ lengthBytes: next - at, hole });
      at = next;
    }
    return Promise.resolve(extents);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  private markAllocated(offset: number, lengthBytes: number, value: number): void {
    if (lengthBytes === 0) return;
    const first = Math.floor(offset / BLOCK_BYTES);
    const last = Math.floor((offset + lengthBytes - 1) / BLOCK_BYTES);
    this.allocated.fill(value, first, last + 1);
  }

  private checkRange(offset: number, lengthBytes: number): void {
    assert(Number.isSafeInteger(offset) && offset >= 0 && lengthBytes >= 0, 'bad disk range');
    assert(offset + lengthBytes <= this.sizeBytes, 'disk range past the end');
  }
}
