// Disk over a raw image file, one shared descriptor so every connection sees one view.
// Small reads are tried inline without blocking (RWF_NOWAIT); small writes run inline
// (IoActivity says when not); everything else goes through the libuv thread pool;
// sync is fdatasync; holes use the native addon's fallocate and SEEK_DATA/SEEK_HOLE.

import fs from 'node:fs';
import os from 'node:os';
import { assert } from '../lib/assert.js';
import type { Disk, DiskExtent } from './disk.js';
import { IoActivity, readFullyAt, writevAt } from './file-io.js';
import { NodeFileSystem, type FileSystem } from './file-system.js';
import { native } from './native.js';

const EOPNOTSUPP = 95;
const errnoNames = new Map<number, string>(Object.entries(os.constants.errno).map(([name, value]) => [value, name]));

function unsupported(error: Error | null): boolean {
  return error !== null && (error as Error & { errno?: number }).errno === EOPNOTSUPP;
}

/** Gives a native addon error the string `code` (ENOSPC, EIO, ...) that fs errors carry. */
function withCode(error: Error): Error {
  const errno = (error as Error & { errno?: number }).errno;
  const name = errno === undefined ? undefined : errnoNames.get(errno);
  return name === undefined ? error : Object.assign(error, { code: name });
}

export interface FileDiskOptions {
  /** Largest read tried inline with RWF_NOWAIT (a page-cache hit never blocks). */
  inlineReadBytesMax: number;
  /** Largest write run inline on the event loop (see IoActivity). */
  inlineWriteBytesMax: number;
  /**
   * Larger writes are made as one write per piece of the file aligned to this size (0:
   * as one write), so that the page cache holds the file in folios of at most this size.
   */
  writePieceBytes?: number;
  activity: IoActivity;
  /** Where the image lives (the real file system unless a test says otherwise). */
  fileSystem?: FileSystem;
}

export class FileDisk implements Disk {
  private closed = false;
  /** Cleared the first time the kernel says it has no RWF_NOWAIT for reads. */
  private nowaitRead = true;

  private constructor(
    private readonly fd: number,
    readonly sizeBytes: number,
    readonly path: string,
    private readonly options: FileDiskOptions,
    /** Where the image was opened (and is closed). */
    private readonly fileSystem: FileSystem,
  ) {}

  /** What fallocate can do on this file system (see probeZeroing). */
  private readonly zeroFast = { punch: true, zero: true };

  /**
   * Opens an existing image file whose size must be `sizeBytes`, and learns whether its
   * file system can punch holes and zero ranges, on a scratch file beside it.
   */
  static async openProbed(path: string, sizeBytes: number, options: FileDiskOptions): Promise<FileDisk> {
    const disk = FileDisk.open(path, sizeBytes, options);
    const fileSystem = disk.fileSystem;
    // A scratch file, not durable state: one a crash leaves is emptied by the next probe.
    const probe = `${path}.probe`;
    const fd = fileSystem.create(probe);
    try {
      fileSystem.write(fd, Buffer.alloc(8192, 1), 0);
      const works = (mode: number, offset: number): Promise<boolean> =>
        new Promise((resolve) => native.fallocate(fd, mode, offset, 4096, (error) => resolve(error === null)));
      disk.zeroFast.punch = await works(native.FALLOC_PUNCH_HOLE, 0);
      disk.zeroFast.zero = await works(native.FALLOC_ZERO_RANGE, 4096);
    } finally {
      fileSystem.close(fd);
      fileSystem.unlink(probe);
    }
    return disk;
  }

  /** Opens an existing image file whose size must be `sizeBytes`. */
  static open(
    path: string,
    sizeBytes: number,
    options: FileDiskOptions = { inlineReadBytesMax: 0, inlineWriteBytesMax: 0, activity: new IoActivity() },
  ): FileDisk {
    const fileSystem = options.fileSystem ?? new NodeFileSystem();
    const fd = fileSystem.open(path, true);
    const actual = fs.fstatSync(fd).size;
    if (actual !== sizeBytes) {
      fileSystem.close(fd);
      throw new Error(`${path} is ${actual} bytes, expected ${sizeBytes}`);
    }
    return new FileDisk(fd, sizeBytes, path, options, fileSystem);
  }

  read(buffer: Buffer, offset: number): Promise<void> {
    this.checkRange(offset, buffer.length);
    if (buffer.length === 0) return Promise.resolve();
    let start = 0;
    if (this.nowaitRead && buffer.length <= this.options.inlineReadBytesMax) {
      // Served from the page cache without a thread-pool round trip, or not at all.
      const count = native.preadNowait(this.fd, buffer, offset);
      if (count === -2) this.nowaitRead = false;
      if (count === buffer.length) return Promise.resolve();
      if (count > 0) start = count;
    }
    // Past the end of a file that was shortened behind our back: an I/O error.
    return readFullyAt(this.fd, buffer, offset, start, this.options.activity, (at) =>
      Object.assign(new Error(`short read at ${at} in ${this.path}`), { code: 'EIO' }),
    );
  }

  write(buffer: Buffer, offset: number): Promise<void> {
    return this.writev([buffer], offset);
  }

  writev(buffers: readonly Buffer[], offset: number): Promise<void> {
    const total = buffers.reduce((sum, buffer) => sum + buffer.length, 0);
    this.checkRange(offset, total);
    const { activity, inlineWriteBytesMax, writePieceBytes = 0 } = this.options;
    if (writePieceBytes > 0 && total > inlineWriteBytesMax && total > writePieceBytes) {
      return this.pooled((done) =>
        native.writePieces(this.fd, buffers, offset, writePieceBytes, (error) => done(error === null ? null : withCode(error))),
      );
    }
    return writevAt(this.fd, buffers, offset, activity, inlineWriteBytesMax);
  }

  /**
   * fdatasync of the whole volume file, at consistency points: through the file system
   * that opened it, so that the simulated one knows what of the image is durable.
   */
  sync(): Promise<void> {
    return this.pooled((done) => this.fileSystem.syncDataAsync(this.fd).then(() => done(null), done));
  }

  private pooled(start: (done: (error: Error | null) => void) => void): Promise<void> {
    return this.options.activity.pooled(start);
  }

  async punchHole(offset: number, lengthBytes: number): Promise<boolean> {
    const done = await this.fallocate(native.FALLOC_PUNCH_HOLE, offset, lengthBytes);
    if (!done) this.zeroFast.punch = false;
    return done;
  }

  async zeroRange(offset: number, lengthBytes: number): Promise<boolean> {
    const done = await this.fallocate(native.FALLOC_ZERO_RANGE, offset, lengthBytes);
    if (!done) this.zeroFast.zero = false;
    return done;
  }

  canZeroFast(noHole: boolean): boolean {
    return noHole ? this.zeroFast.zero : this.zeroFast.punch;
  }

  private fallocate(mode: number, offset: number, lengthBytes: number): Promise<boolean> {
    this.checkRange(offset, lengthBytes);
    if (lengthBytes === 0) return Promise.resolve(true);
    let supported = true;
    return this.pooled((done) => {
      native.fallocate(this.fd, mode, offset, lengthBytes, (error) => {
        if (unsupported(error)) {
          supported = false;
          return done(null);
        }
        done(error === null ? null : withCode(error));
      });
    }).then(() => supported);
  }

  extents(offset: number, lengthBytes: number, extentsMax: number): Promise<DiskExtent[]> {
    this.checkRange(offset, lengthBytes);
    assert(lengthBytes > 0 && extentsMax > 0);
    const end = offset + lengthBytes;
    const extents: DiskExtent[] = [];
    // lseek on extent metadata does not block on data I/O; it runs inline.
    try {
      this.scanExtents(offset, end, extentsMax, extents);
    } catch (error) {
      return Promise.reject(withCode(error as Error));
    }
    return Promise.resolve(extents);
  }

  private scanExtents(offset: number, end: number, extentsMax: number, extents: DiskExtent[]): void {
    let at = offset;
    while (at < end && extents.length < extentsMax) {
      const data = native.seek(this.fd, at, native.SEEK_DATA);
      if (data < 0 || data >= end) {
        extents.push({ lengthBytes: end - at, hole: true });
        break;
      }
      if (data > at) {
        extents.push({ lengthBytes: data - at, hole: true });
        at = data;
        continue;
      }
      const hole = native.seek(this.fd, at, native.SEEK_HOLE);
      const dataEnd = hole < 0 ? end : Math.min(hole, end);
      assert(dataEnd > at, 'SEEK_HOLE went backwards');
      extents.push({ lengthBytes: dataEnd - at, hole: false });
      at = dataEnd;
    }
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    try {
      this.fileSystem.close(this.fd);
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(error as Error);
    }
  }

  private checkRange(offset: number, lengthBytes: number): void {
    assert(!this.closed, 'disk is closed');
    assert(Number.isSafeInteger(offset) && offset >= 0 && lengthBytes >= 0, 'bad disk range');
    assert(offset + lengthBytes <= this.sizeBytes, 'disk range past the end');
  }
}
