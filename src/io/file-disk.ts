// Disk over a raw image file. Plain reads and writes go through the libuv thread pool
// (fs.read/fs.write on one shared descriptor, so every connection sees one view);
// sync is fdatasync; holes use the native addon's fallocate and SEEK_DATA/SEEK_HOLE.

import fs from 'node:fs';
import os from 'node:os';
import { assert } from '../lib/assert.js';
import type { Disk, DiskExtent } from './disk.js';
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

export class FileDisk implements Disk {
  private closed = false;

  private constructor(
    private readonly fd: number,
    readonly sizeBytes: number,
    readonly path: string,
  ) {}

  /** Opens an existing image file whose size must be `sizeBytes`. */
  static open(path: string, sizeBytes: number): FileDisk {
    const fd = fs.openSync(path, 'r+');
    const actual = fs.fstatSync(fd).size;
    if (actual !== sizeBytes) {
      fs.closeSync(fd);
      throw new Error(`${path} is ${actual} bytes, expected ${sizeBytes}`);
    }
    return new FileDisk(fd, sizeBytes, path);
  }

  read(buffer: Buffer, offset: number): Promise<void> {
    this.checkRange(offset, buffer.length);
    if (buffer.length === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const step = (done: number): void => {
        fs.read(this.fd, buffer, done, buffer.length - done, offset + done, (error, count) => {
          if (error) return reject(error);
          if (count === 0) {
            // Past the end of a file that was shortened behind our back: that is an I/O error.
            return reject(Object.assign(new Error(`short read at ${offset + done} in ${this.path}`), { code: 'EIO' }));
          }
          if (done + count < buffer.length) return step(done + count);
          resolve();
        });
      };
      step(0);
    });
  }

  write(buffer: Buffer, offset: number): Promise<void> {
    this.checkRange(offset, buffer.length);
    if (buffer.length === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const step = (done: number): void => {
        fs.write(this.fd, buffer, done, buffer.length - done, offset + done, (error, count) => {
          if (error) return reject(error);
          if (done + count < buffer.length) return step(done + count);
          resolve();
        });
      };
      step(0);
    });
  }

  sync(): Promise<void> {
    return new Promise((resolve, reject) => {
      fs.fdatasync(this.fd, (error) => (error ? reject(error) : resolve()));
    });
  }

  punchHole(offset: number, lengthBytes: number): Promise<boolean> {
    return this.fallocate(native.FALLOC_PUNCH_HOLE, offset, lengthBytes);
  }

  zeroRange(offset: number, lengthBytes: number): Promise<boolean> {
    return this.fallocate(native.FALLOC_ZERO_RANGE, offset, lengthBytes);
  }

  private fallocate(mode: number, offset: number, lengthBytes: number): Promise<boolean> {
    this.checkRange(offset, lengthBytes);
    if (lengthBytes === 0) return Promise.resolve(true);
    return new Promise((resolve, reject) => {
      native.fallocate(this.fd, mode, offset, lengthBytes, (error) => {
        if (unsupported(error)) return resolve(false);
        if (error) return reject(withCode(error));
        resolve(true);
      });
    });
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

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await new Promise<void>((resolve, reject) => fs.close(this.fd, (error) => (error ? reject(error) : resolve())));
  }

  private checkRange(offset: number, lengthBytes: number): void {
    assert(!this.closed, 'disk is closed');
    assert(Number.isSafeInteger(offset) && offset >= 0 && lengthBytes >= 0, 'bad disk range');
    assert(offset + lengthBytes <= this.sizeBytes, 'disk range past the end');
  }
}
