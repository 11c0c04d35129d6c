// The FileSystem port: the primitive calls through which a node looks at and changes the
// files that hold its durable state (which files exist, what the small state files
// say). NodeFileSystem is node:fs; MemoryFileSystem (memory-file-system.ts) is its
// simulated twin, which can stop the world after any mutation and say what a crash at
// that moment may leave. Both pass one compliance suite (test/unit/file-system.test.ts).
//
// Nothing here is crash-safe by itself: src/storage/durable-files.ts composes these
// calls into changes that are, and every change to durable state goes through it. The
// data path (the volume image and the log partitions) reads and writes through
// descriptors opened here with open(file, true), by positioned calls of its own
// (src/io/file-io.ts), and the write log makes its partitions durable through the syncer
// this file system opens (`openSyncer`, the LogSyncer port of log-syncer.ts); FileDisk
// also makes and removes a scratch file beside the image
// (its probe of what fallocate can do), which is not durable state.
//
// Errors are Node's system errors, or for the twin errors that carry the same `code`
// (ENOENT, EEXIST, ENOTEMPTY, ENOTDIR, EISDIR).

import fs from 'node:fs';
import { openNativeSyncer, type LogSyncer, type SyncReport } from './log-syncer.js';

export type FileKind = 'file' | 'directory';

export interface FileSystem {
  /** What is at `path`, or null when nothing is. */
  stat(path: string): { kind: FileKind; sizeBytes: number } | null;
  /** The names in a directory, sorted. */
  readdir(dir: string): string[];
  /** The whole of a file. */
  readFile(file: string): Buffer;
  /** Opens an existing file: read-only, or for reads and writes (the data path's files). */
  open(file: string, writable: boolean): number;
  /** Creates a file, or empties an existing one, and opens it for reads and writes. A mutation. */
  create(file: string): number;
  /** Writes all of `buffer` at `position`. A mutation. */
  write(fd: number, buffer: Buffer, position: number): void;
  /** Sets the file's size (growing it with zeroes that take no space). A mutation. */
  truncate(fd: number, sizeBytes: number): void;
  /** fdatasync: the file's bytes and size are durable on return. A mutation (of durability). */
  syncData(fd: number): void;
  syncDataAsync(fd: number): Promise<void>;
  close(fd: number): void;
  /** Renames, replacing a file or an empty directory at `to`. A mutation. */
  rename(from: string, to: string): void;
  /** Removes a file. A mutation. */
  unlink(file: string): void;
  /** Makes one directory; its parent must exist. A mutation. */
  mkdir(dir: string): void;
  /** Removes an empty directory. A mutation. */
  rmdir(dir: string): void;
  /** fsync of a directory: the names in it are durable on return. A mutation (of durability). */
  syncDir(dir: string): void;
  syncDirAsync(dir: string): Promise<void>;
  /** A write log's syncer for partitions opened here (see log-syncer.ts). */
  openSyncer(fdsMax: number, durableSeq: number, onSynced: SyncReport): LogSyncer;
}

/** The real file system, through node:fs. */
export class NodeFileSystem implements FileSystem {
  stat(path: string): { kind: FileKind; sizeBytes: number } | null {
    let stats: fs.Stats | undefined;
    try {
      stats = fs.statSync(path, { throwIfNoEntry: false });
    } catch (error) {
      // A file where a directory on the path should be: nothing is at `path` either.
      if ((error as NodeJS.ErrnoException).code === 'ENOTDIR') return null;
      throw error;
    }
    if (stats === undefined) return null;
    return { kind: stats.isDirectory() ? 'directory' : 'file', sizeBytes: stats.size };
  }

  readdir(dir: string): string[] {
    return fs.readdirSync(dir).sort();
  }

  readFile(file: string): Buffer {
    return fs.readFileSync(file);
  }

  open(file: string, writable: boolean): number {
    return fs.openSync(file, writable ? 'r+' : 'r');
  }

  create(file: string): number {
    return fs.openSync(file, 'w+', 0o644);
  }

  write(fd: number, buffer: Buffer, position: number): void {
    for (let at = 0; at < buffer.length; ) at += fs.writeSync(fd, buffer, at, buffer.length - at, position + at);
  }

  truncate(fd: number, sizeBytes: number): void {
    fs.ftruncateSync(fd, sizeBytes);
  }

  syncData(fd: number): void {
    fs.fdatasyncSync(fd);
  }

  syncDataAsync(fd: number): Promise<void> {
    return new Promise((resolve, reject) => fs.fdatasync(fd, (error) => (error ? reject(error) : resolve())));
  }

  close(fd: number): void {
    fs.closeSync(fd);
  }

  rename(from: string, to: string): void {
    fs.renameSync(from, to);
  }

  unlink(file: string): void {
    fs.unlinkSync(file);
  }

  mkdir(dir: string): void {
    fs.mkdirSync(dir);
  }

  rmdir(dir: string): void {
    fs.rmdirSync(dir);
  }

  syncDir(dir: string): void {
    const fd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  openSyncer(fdsMax: number, durableSeq: number, onSynced: SyncReport): LogSyncer {
    return openNativeSyncer(fdsMax, durableSeq, onSynced);
  }

  async syncDirAsync(dir: string): Promise<void> {
    const handle = await fs.promises.open(dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }
}
