// One volume served from this node's disk: the operations an NBD session needs, on a
// Disk, with group commit for FLUSH and FUA. Every connection to the volume shares this
// object, so a flush covers writes completed on any of them (NBD multi-conn).
//
// Errors are the disk's own (Node system errors); the NBD edge turns them into errno
// values on the wire.

import { assert } from '../lib/assert.js';
import type { Disk, DiskExtent } from '../io/disk.js';
import { SyncBatcher } from './sync-batcher.js';

export interface ZeroOptions {
  /** The range must stay allocated (NBD_CMD_FLAG_NO_HOLE). */
  noHole: boolean;
  /** Fail with 'slow' rather than writing zeroes (NBD_CMD_FLAG_FAST_ZERO). */
  fast: boolean;
  fua: boolean;
}

export interface VolumeStats {
  readOps: number;
  readBytes: number;
  writeOps: number;
  writeBytes: number;
  zeroOps: number;
  trimOps: number;
  flushOps: number;
  syncs: number;
  errors: number;
}

export class LocalVolume {
  private readonly batcher: SyncBatcher;
  private zeroChunk: Buffer | null = null;
  readonly stats: VolumeStats = {
    readOps: 0,
    readBytes: 0,
    writeOps: 0,
    writeBytes: 0,
    zeroOps: 0,
    trimOps: 0,
    flushOps: 0,
    syncs: 0,
    errors: 0,
  };

  constructor(
    readonly name: string,
    private readonly disk: Disk,
    private readonly zeroChunkBytes: number,
  ) {
    this.batcher = new SyncBatcher(async () => {
      this.stats.syncs += 1;
      await this.disk.sync();
    });
  }

  get sizeBytes(): number {
    return this.disk.sizeBytes;
  }

  async read(offset: number, lengthBytes: number): Promise<Buffer> {
    const buffer = Buffer.allocUnsafe(lengthBytes);
    await this.readInto(buffer, offset);
    return buffer;
  }

  /** Fills `buffer` from `offset`. */
  async readInto(buffer: Buffer, offset: number): Promise<void> {
    await this.counted(this.disk.read(buffer, offset));
    this.stats.readOps += 1;
    this.stats.readBytes += buffer.length;
  }

  /** Writes `payload` (slices written back to back) at `offset`. */
  async write(payload: readonly Buffer[], offset: number, fua: boolean): Promise<void> {
    await this.counted(this.disk.writev(payload, offset));
    this.stats.writeOps += 1;
    for (const slice of payload) this.stats.writeBytes += slice.length;
    if (fua) await this.flush();
  }

  /** Zeroes a range. Returns 'slow' when `fast` was asked and only writing zeroes would do. */
  async writeZeroes(offset: number, lengthBytes: number, options: ZeroOptions): Promise<'done' | 'slow'> {
    this.stats.zeroOps += 1;
    const done = options.noHole
      ? await this.counted(this.disk.zeroRange(offset, lengthBytes))
      : await this.counted(this.disk.punchHole(offset, lengthBytes));
    if (!done) {
      if (options.fast) return 'slow';
      await this.writeZeroBytes(offset, lengthBytes);
    }
    if (options.fua) await this.flush();
    return 'done';
  }

  async trim(offset: number, lengthBytes: number, fua: boolean): Promise<void> {
    this.stats.trimOps += 1;
    // TRIM is a hint: a disk that cannot punch holes keeps the data, which is allowed.
    await this.counted(this.disk.punchHole(offset, lengthBytes));
    if (fua) await this.flush();
  }

  async flush(): Promise<void> {
    this.stats.flushOps += 1;
    await this.counted(this.batcher.sync());
  }

  /**
   * NBD_CMD_CACHE: reads the start of the range (up to `prefetchBytesMax`) so that it is
   * in the page cache; the data is dropped.
   */
  async prefetch(offset: number, lengthBytes: number, prefetchBytesMax: number): Promise<void> {
    const end = offset + Math.min(lengthBytes, prefetchBytesMax);
    const buffer = Buffer.allocUnsafe(Math.min(this.zeroChunkBytes, end - offset));
    for (let at = offset; at < end; at += buffer.length) {
      await this.counted(this.disk.read(buffer.subarray(0, Math.min(buffer.length, end - at)), at));
    }
  }

  extents(offset: number, lengthBytes: number, extentsMax: number): Promise<DiskExtent[]> {
    return this.counted(this.disk.extents(offset, lengthBytes, extentsMax));
  }

  close(): Promise<void> {
    return this.disk.close();
  }

  private async writeZeroBytes(offset: number, lengthBytes: number): Promise<void> {
    this.zeroChunk ??= Buffer.alloc(this.zeroChunkBytes);
    const end = offset + lengthBytes;
    for (let at = offset; at < end; at += this.zeroChunk.length) {
      const count = Math.min(this.zeroChunk.length, end - at);
      await this.counted(this.disk.write(this.zeroChunk.subarray(0, count), at));
    }
    assert(this.zeroChunk.every((byte) => byte === 0), 'zero buffer was modified');
  }

  private async counted<T>(operation: Promise<T>): Promise<T> {
    try {
      return await operation;
    } catch (error) {
      this.stats.errors += 1;
      throw error;
    }
  }
}
