// The simulated twin of NodeFileSystem: a file system held in memory that knows, after
// every mutation, what is durable and what a crash may still take away, and that can
// stop the world after its Nth mutation (the way ALICE and CrashMonkey test file
// systems: crash at every step, then look at each state the crash may leave).
//
// Files are anonymous memory files (memfd), so the descriptors it hands out are real
// ones: the write log's partitions and the volume image are read and written through
// them as on a disk. The model of durability follows POSIX, not one file system's
// kindness:
//   - a file's bytes are durable as of its last syncData; a crash leaves, for a file
//     changed since, either those bytes or its bytes at the crash;
//   - a name created, removed or renamed is durable once a directory it touches is
//     synced (a file's own sync does not make its name durable); a crash keeps any
//     subset of the name changes not yet durable, applied in their order, each one only
//     if it still fits the state the kept ones before it made;
//   - files opened writable through open() belong to the data path, whose writes bypass
//     this model: a crash keeps their bytes as they were at the crash, until the data
//     path makes the file durable through this file system (the volume image's sync at
//     a consistency point) or the write log's syncer (openSyncer, memory-log-syncer.ts)
//     is told of a write to it. From then on its bytes are durable as of its last sync,
//     like any other file's.
// A crash therefore has 2^n outcomes for n changes not yet durable; afterCrash() builds
// the one the caller picks, as a new file system in which everything is durable.
//
// Why one file of this size: it is one model. Every call reads and changes the same inode
// table and the same list of changes not yet durable, and a crash is built from both;
// split across files, each part would have to expose them to the others.

import path from 'node:path';
import fs from 'node:fs';
import { assert } from '../lib/assert.js';
import type { FileKind, FileSystem } from './file-system.js';
import { native } from './native.js';
import type { LogSyncer, SyncReport } from './log-syncer.js';
import { MemoryLogSyncer } from './memory-log-syncer.js';

/** Thrown by every call after the world stopped (see stopAfter). */
export class SimulatedCrash extends Error {
  override name = 'SimulatedCrash';
  readonly code = 'ESIMCRASH';
  constructor(readonly mutation: number) {
    super(`simulated crash after mutation ${mutation}`);
  }
}

interface FileInode {
  kind: 'file';
  /** The memory file that holds the bytes now. */
  memfd: number;
  /** The bytes as of the last syncData. */
  durable: Buffer;
  /** Opened writable by the data path: its bytes at a crash survive as they are. */
  external: boolean;
}

interface DirectoryInode {
  kind: 'directory';
  entries: Map<string, number>;
}

type Inode = FileInode | DirectoryInode;

/** A change of names, in the order made. */
type NameChange =
  | { kind: 'link'; dir: number; name: string; id: number; text: string }
  | { kind: 'unlink'; dir: number; name: string; id: number; text: string }
  | { kind: 'rename'; fromDir: number; fromName: string; toDir: number; toName: string; id: number; text: string };

/** What a crash at one moment may leave: the state then, and the changes not yet durable. */
interface CrashPoint {
  durableNames: Map<number, Map<string, number>>;
  pending: NameChange[];
  kinds: Map<number, FileKind>;
  /** Per file: its bytes at the crash and as last synced. */
  files: Map<number, { now: Buffer; durable: Buffer; external: boolean }>;
  /** Files whose bytes at the crash differ from their durable bytes, in id order. */
  changedFiles: number[];
}

const ROOT = 0;

function fsError(code: string, syscall: string, file: string): Error {
  return Object.assign(new Error(`${code}: ${syscall} '${file}'`), { code, syscall, path: file });
}

function readAll(fd: number): Buffer {
  const size = fs.fstatSync(fd).size;
  const buffer = Buffer.alloc(size);
  for (let at = 0; at < size; ) {
    const count = fs.readSync(fd, buffer, at, size - at, at);
    if (count === 0) break;
    at += count;
  }
  return buffer;
}

export class MemoryFileSystem implements FileSystem {
  private readonly inodes = new Map<number, Inode>();
  private nextId = 1;
  /** Names as of the last sync of each directory (every directory has its map). */
  private readonly durableNames = new Map<number, Map<string, number>>();
  /** Name changes not yet durable, in order. */
  private pending: NameChange[] = [];
  /** Descriptors handed out, and the inode each reaches. */
  private readonly descriptors = new Map<number, number>();
  private mutationCount = 0;
  private stopAt: number | null = null;
  private crash: CrashPoint | null = null;
  /** Every mutation, described (the last `historyMax`). */
  readonly history: string[] = [];
  private static readonly historyMax = 10_000;

  constructor() {
    this.inodes.set(ROOT, { kind: 'directory', entries: new Map() });
    this.durableNames.set(ROOT, new Map());
  }

  /** Mutations made so far. */
  get mutations(): number {
    return this.mutationCount;
  }

  /** The world stops right after mutation number `count` (counted from this file system's start); null: never. */
  stopAfter(count: number | null): void {
    assert(count === null || count > this.mutationCount, 'the world cannot stop in the past');
    this.stopAt = count;
  }

  get crashed(): boolean {
    return this.crash !== null;
  }

  /**
   * The changes a crash leaves to chance, described: the name changes not yet durable, in
   * order, then the files whose bytes changed since their last sync. afterCrash() takes a
   * choice for each, by index.
   */
  crashChanges(): string[] {
    const point = this.crash ?? this.capture();
    const paths = this.pathsNow();
    return [
      ...point.pending.map((change) => change.text),
      ...point.changedFiles.map((id) => `bytes of ${paths.get(id) ?? `file #${id}`}`),
    ];
  }

  /**
   * The file system as it comes back after the crash (or, before one, after a crash now):
   * change `i` of crashChanges() is kept when `keep(i)`. Everything in it is durable.
   */
  afterCrash(keep: (index: number) => boolean): MemoryFileSystem {
    const point = this.crash ?? this.capture();
    const names = new Map([...point.durableNames].map(([dir, entries]) => [dir, new Map(entries)]));
    point.pending.forEach((change, index) => {
      if (keep(index)) applyNameChange(names, change);
    });
    const keptBytes = new Set(point.changedFiles.filter((_, index) => keep(point.pending.length + index)));
    const next = new MemoryFileSystem();
    const made = new Map<number, number>([[ROOT, ROOT]]);
    const visit = (oldDir: number, newDir: number): void => {
      const target = next.inodes.get(newDir);
      assert(target?.kind === 'directory');
      for (const [name, id] of [...(names.get(oldDir) ?? new Map<string, number>())].sort(([a], [b]) => (a < b ? -1 : 1))) {
        let copy = made.get(id);
        if (copy === undefined) {
          copy = next.nextId++;
          made.set(id, copy);
          if (point.kinds.get(id) === 'directory') {
            next.inodes.set(copy, { kind: 'directory', entries: new Map() });
            next.durableNames.set(copy, new Map());
            visit(id, copy);
          } else {
            const file = point.files.get(id);
            assert(file !== undefined, `no bytes for file #${id}`);
            const bytes = file.external || keptBytes.has(id) ? file.now : file.durable;
            const memfd = native.memfd();
            if (bytes.length > 0) fs.writeSync(memfd, bytes, 0, bytes.length, 0);
            next.inodes.set(copy, { kind: 'file', memfd, durable: Buffer.from(bytes), external: false });
          }
        }
        target.entries.set(name, copy);
        next.durableNames.get(newDir)?.set(name, copy);
      }
    };
    visit(ROOT, ROOT);
    return next;
  }

  /** A copy of the file system as it is now, all of it durable. */
  copy(): MemoryFileSystem {
    return this.afterCrash(() => true);
  }

  /** Closes every memory file (the file system is unusable after). */
  dispose(): void {
    for (const fd of this.descriptors.keys()) fs.closeSync(fd);
    this.descriptors.clear();
    for (const inode of this.inodes.values()) if (inode.kind === 'file') fs.closeSync(inode.memfd);
    this.inodes.clear();
  }

  // ---- FileSystem: reading --------------------------------------------------------------

  stat(file: string): { kind: FileKind; sizeBytes: number } | null {
    this.checkRunning();
    const id = this.lookup(file, 'stat', true);
    if (id === null) return null;
    const inode = this.inode(id);
    return inode.kind === 'directory' ? { kind: 'directory', sizeBytes: 0 } : { kind: 'file', sizeBytes: fs.fstatSync(inode.memfd).size };
  }

  readdir(dir: string): string[] {
    this.checkRunning();
    return [...this.directory(dir, 'scandir').entries.keys()].sort();
  }

  readFile(file: string): Buffer {
    this.checkRunning();
    return readAll(this.file(file, 'open').memfd);
  }

  open(file: string, writable: boolean): number {
    this.checkRunning();
    const id = this.lookup(file, 'open', false);
    assert(id !== null);
    const inode = this.inode(id);
    if (inode.kind === 'directory') throw fsError('EISDIR', 'open', file);
    if (writable) inode.external = true;
    return this.descriptor(id, inode, writable);
  }

  // ---- FileSystem: mutations ----------------------------------------------------------

  create(file: string): number {
    return this.mutation(`create ${file}`, () => {
      const { dir, id: dirId, name } = this.parent(file, 'open');
      const existing = dir.entries.get(name);
      if (existing !== undefined) {
        const inode = this.inode(existing);
        if (inode.kind === 'directory') throw fsError('EISDIR', 'open', file);
        fs.ftruncateSync(inode.memfd, 0);
        return this.descriptor(existing, inode, true);
      }
      const id = this.nextId++;
      const inode: FileInode = { kind: 'file', memfd: native.memfd(), durable: Buffer.alloc(0), external: false };
      this.inodes.set(id, inode);
      this.link(dirId, name, id, `create ${file}`);
      return this.descriptor(id, inode, true);
    });
  }

  write(fd: number, buffer: Buffer, position: number): void {
    this.mutation(`write ${buffer.length} bytes at ${position} of ${this.describeFd(fd)}`, () => {
      for (let at = 0; at < buffer.length; ) at += fs.writeSync(fd, buffer, at, buffer.length - at, position + at);
    });
  }

  truncate(fd: number, sizeBytes: number): void {
    this.mutation(`truncate ${this.describeFd(fd)} to ${sizeBytes} bytes`, () => fs.ftruncateSync(fd, sizeBytes));
  }

  syncData(fd: number): void {
    this.mutation(`sync ${this.describeFd(fd)}`, () => {
      const inode = this.inode(this.openInode(fd));
      assert(inode.kind === 'file');
      inode.durable = readAll(inode.memfd);
      inode.external = false;
    });
  }

  syncDataAsync(fd: number): Promise<void> {
    return settled(() => this.syncData(fd));
  }

  close(fd: number): void {
    // Allowed after a crash too: a test must not leak descriptors.
    if (!this.descriptors.delete(fd)) throw fsError('EBADF', 'close', String(fd));
    fs.closeSync(fd);
  }

  rename(from: string, to: string): void {
    this.mutation(`rename ${from} to ${to}`, () => {
      const source = this.parent(from, 'rename');
      const id = source.dir.entries.get(source.name);
      if (id === undefined) throw fsError('ENOENT', 'rename', from);
      const target = this.parent(to, 'rename');
      const replaced = target.dir.entries.get(target.name);
      if (replaced === id) return;
      const moving = this.inode(id);
      if (replaced !== undefined) {
        const old = this.inode(replaced);
        if (moving.kind === 'file' && old.kind === 'directory') throw fsError('EISDIR', 'rename', to);
        if (moving.kind === 'directory' && old.kind === 'file') throw fsError('ENOTDIR', 'rename', to);
        if (old.kind === 'directory' && old.entries.size > 0) throw fsError('ENOTEMPTY', 'rename', to);
      }
      if (moving.kind === 'directory' && (to + '/').startsWith(path.posix.normalize(from) + '/')) throw fsError('EINVAL', 'rename', to);
      source.dir.entries.delete(source.name);
      target.dir.entries.set(target.name, id);
      this.pending.push({
        kind: 'rename',
        fromDir: source.id,
        fromName: source.name,
        toDir: target.id,
        toName: target.name,
        id,
        text: `rename ${from} to ${to}`,
      });
    });
  }

  unlink(file: string): void {
    this.mutation(`unlink ${file}`, () => {
      const { dir, id: dirId, name } = this.parent(file, 'unlink');
      const id = dir.entries.get(name);
      if (id === undefined) throw fsError('ENOENT', 'unlink', file);
      if (this.inode(id).kind === 'directory') throw fsError('EISDIR', 'unlink', file);
      dir.entries.delete(name);
      this.pending.push({ kind: 'unlink', dir: dirId, name, id, text: `unlink ${file}` });
    });
  }

  mkdir(dir: string): void {
    this.mutation(`mkdir ${dir}`, () => {
      const parent = this.parent(dir, 'mkdir');
      if (parent.dir.entries.has(parent.name)) throw fsError('EEXIST', 'mkdir', dir);
      const id = this.nextId++;
      this.inodes.set(id, { kind: 'directory', entries: new Map() });
      this.durableNames.set(id, new Map());
      this.link(parent.id, parent.name, id, `mkdir ${dir}`);
    });
  }

  rmdir(dir: string): void {
    this.mutation(`rmdir ${dir}`, () => {
      const parent = this.parent(dir, 'rmdir');
      const id = parent.dir.entries.get(parent.name);
      if (id === undefined) throw fsError('ENOENT', 'rmdir', dir);
      const inode = this.inode(id);
      if (inode.kind !== 'directory') throw fsError('ENOTDIR', 'rmdir', dir);
      if (inode.entries.size > 0) throw fsError('ENOTEMPTY', 'rmdir', dir);
      parent.dir.entries.delete(parent.name);
      this.pending.push({ kind: 'unlink', dir: parent.id, name: parent.name, id, text: `rmdir ${dir}` });
    });
  }

  syncDir(dir: string): void {
    this.mutation(`sync directory ${dir}`, () => {
      const id = this.lookup(dir, 'fsync', false);
      assert(id !== null);
      if (this.inode(id).kind !== 'directory') throw fsError('ENOTDIR', 'fsync', dir);
      // Every change that touches this directory is durable now (a rename touches two).
      const durable: NameChange[] = [];
      const still: NameChange[] = [];
      for (const change of this.pending) {
        const touches = change.kind === 'rename' ? change.fromDir === id || change.toDir === id : change.dir === id;
        (touches ? durable : still).push(change);
      }
      for (const change of durable) applyNameChange(this.durableNames, change);
      this.pending = still;
    });
  }

  syncDirAsync(dir: string): Promise<void> {
    return settled(() => this.syncDir(dir));
  }

  openSyncer(fdsMax: number, durableSeq: number, onSynced: SyncReport): LogSyncer {
    return new MemoryLogSyncer(fdsMax, durableSeq, onSynced, {
      track: (fd) => {
        const inode = this.inode(this.openInode(fd));
        assert(inode.kind === 'file');
        inode.external = false;
      },
      sync: (fd) => this.syncData(fd),
    });
  }

  // ---- internals ----------------------------------------------------------------------

  private mutation<T>(text: string, change: () => T): T {
    this.checkRunning();
    const result = change();
    this.mutationCount += 1;
    this.history.push(text);
    if (this.history.length > MemoryFileSystem.historyMax) this.history.shift();
    if (this.stopAt !== null && this.mutationCount >= this.stopAt) {
      this.crash = this.capture();
      throw new SimulatedCrash(this.mutationCount);
    }
    return result;
  }

  private checkRunning(): void {
    if (this.crash !== null) throw new SimulatedCrash(this.mutationCount);
  }

  private capture(): CrashPoint {
    const files = new Map<number, { now: Buffer; durable: Buffer; external: boolean }>();
    const kinds = new Map<number, FileKind>();
    const changedFiles: number[] = [];
    for (const [id, inode] of this.inodes) {
      kinds.set(id, inode.kind);
      if (inode.kind !== 'file') continue;
      const now = readAll(inode.memfd);
      files.set(id, { now, durable: inode.durable, external: inode.external });
      if (!inode.external && !now.equals(inode.durable)) changedFiles.push(id);
    }
    return {
      durableNames: new Map([...this.durableNames].map(([dir, entries]) => [dir, new Map(entries)])),
      pending: [...this.pending],
      kinds,
      files,
      changedFiles,
    };
  }

  /** A path for each inode named now (for descriptions; after a crash, as the crash left them). */
  private pathsNow(): Map<number, string> {
    const out = new Map<number, string>();
    const walk = (dir: number, prefix: string): void => {
      const inode = this.inodes.get(dir);
      if (inode?.kind !== 'directory') return;
      for (const [name, id] of inode.entries) {
        const full = `${prefix}/${name}`;
        if (!out.has(id)) out.set(id, full);
        walk(id, full);
      }
    };
    walk(ROOT, '');
    return out;
  }

  private link(dir: number, name: string, id: number, text: string): void {
    const inode = this.inode(dir);
    assert(inode.kind === 'directory');
    inode.entries.set(name, id);
    this.pending.push({ kind: 'link', dir, name, id, text });
  }

  private inode(id: number): Inode {
    const inode = this.inodes.get(id);
    assert(inode !== undefined, `no inode #${id}`);
    return inode;
  }

  private descriptor(id: number, inode: FileInode, writable: boolean): number {
    const fd = fs.openSync(`/proc/self/fd/${inode.memfd}`, writable ? 'r+' : 'r');
    this.descriptors.set(fd, id);
    return fd;
  }

  private openInode(fd: number): number {
    const id = this.descriptors.get(fd);
    if (id === undefined) throw fsError('EBADF', 'fd', String(fd));
    return id;
  }

  private describeFd(fd: number): string {
    const id = this.descriptors.get(fd);
    if (id === undefined) return `descriptor ${fd}`;
    return this.pathsNow().get(id) ?? `file #${id}`;
  }

  /** The inode at `file`, or null when missing and `missingOk` (else ENOENT). */
  private lookup(file: string, syscall: string, missingOk: boolean): number | null {
    assert(path.posix.isAbsolute(file), `the simulated file system takes absolute paths, not ${file}`);
    let id = ROOT;
    for (const part of path.posix.normalize(file).split('/')) {
      if (part === '') continue;
      const inode = this.inode(id);
      if (inode.kind !== 'directory') {
        if (missingOk) return null;
        throw fsError('ENOTDIR', syscall, file);
      }
      const next = inode.entries.get(part);
      if (next === undefined) {
        if (missingOk) return null;
        throw fsError('ENOENT', syscall, file);
      }
      id = next;
    }
    return id;
  }

  private file(file: string, syscall: string): FileInode {
    const id = this.lookup(file, syscall, false);
    assert(id !== null);
    const inode = this.inode(id);
    if (inode.kind === 'directory') throw fsError('EISDIR', syscall, file);
    return inode;
  }

  private directory(dir: string, syscall: string): DirectoryInode {
    const id = this.lookup(dir, syscall, false);
    assert(id !== null);
    const inode = this.inode(id);
    if (inode.kind !== 'directory') throw fsError('ENOTDIR', syscall, dir);
    return inode;
  }

  /** The directory that holds `file` (which must exist) and the name in it. */
  private parent(file: string, syscall: string): { dir: DirectoryInode; id: number; name: string } {
    const normal = path.posix.normalize(file);
    const name = path.posix.basename(normal);
    assert(name !== '' && name !== '.' && name !== '..', `no name in ${file}`);
    const id = this.lookup(path.posix.dirname(normal), syscall, false);
    assert(id !== null);
    const dir = this.inode(id);
    if (dir.kind !== 'directory') throw fsError('ENOTDIR', syscall, file);
    return { dir, id, name };
  }
}

/** A call of the twin, which never waits, as a settled promise. */
function settled(run: () => void): Promise<void> {
  try {
    run();
    return Promise.resolve();
  } catch (error) {
    return Promise.reject(error as Error);
  }
}

/** Applies a name change to a set of directories, if it still fits them. */
function applyNameChange(names: Map<number, Map<string, number>>, change: NameChange): void {
  const entries = (dir: number): Map<string, number> => {
    let found = names.get(dir);
    if (found === undefined) {
      found = new Map();
      names.set(dir, found);
    }
    return found;
  };
  switch (change.kind) {
    case 'link':
      entries(change.dir).set(change.name, change.id);
      return;
    case 'unlink':
      if (entries(change.dir).get(change.name) === change.id) entries(change.dir).delete(change.name);
      return;
    case 'rename': {
      const from = entries(change.fromDir);
      if (from.get(change.fromName) !== change.id) return;
      from.delete(change.fromName);
      entries(change.toDir).set(change.toName, change.id);
      return;
    }
  }
}
