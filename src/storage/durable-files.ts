// Every change a node makes to which files it has and to what its state files say goes
// through this module, composed so that a crash at any instant leaves a state the next
// start accepts (nothing else in src/ changes durable state through node:fs):
//
//   replaceFile       new content to `<file>.tmp`, fdatasync, rename over the file, fsync
//                     of the directory: a crash leaves the old content or the new, whole.
//   installFile       the same for a file too big to hold in memory, written piece by
//                     piece.
//   makeDir           each missing level made and its parent directory synced.
//   writeNewFile      a file written and synced where no reader looks yet (in a directory
//                     being built); its name is made durable by what installs it.
//   installDirectory  a whole directory built as `<dir>.new`, synced, and swapped into
//                     place through `<dir>.old`; settleDirectory() at the next start
//                     finishes or undoes a swap a crash interrupted, so a reader finds
//                     the old directory or the new one, never a mix.
//   setAside          a damaged directory renamed to `<dir>.damaged` (replacing an
//                     earlier one), for an operator to look at.
//   remove            a file or a tree, its parent synced after.
//
// Each change names its operation ('log-recreate', 'bitmap', ...). A crash point
// (`BLOCKMIRROR_CRASH_POINT=<operation>:<n>`, for crash tests with real processes)
// kills the process with SIGKILL right after the nth mutation of that operation.
// Reads return null for what is not there, so callers decide what a missing file means.

import path from 'node:path';
import { assert } from '../lib/assert.js';
import { NodeFileSystem, type FileKind, type FileSystem } from '../io/file-system.js';

/** The operations that change durable state, as crash points name them. */
export const fileOperations = [
  'log-create',
  'log-recreate',
  'log-set-aside',
  'log-superblock',
  'log-tidy',
  'trail',
  'bitmap',
  'intent',
  'mirror-state',
  'volume-create',
  'volume-epochs',
  'role-change',
  'contact',
  'witness',
  'promise',
  'incarnation',
  'config',
  'split-brain',
] as const;

export type FileOperation = (typeof fileOperations)[number];

export interface CrashPoint {
  operation: FileOperation;
  /** Killed right after this many mutations of the operation (counted across its runs). */
  afterMutations: number;
}

/** Parses `<operation>:<n>` (BLOCKMIRROR_CRASH_POINT); throws a message naming what is wrong. */
export function parseCrashPoint(text: string): CrashPoint {
  const match = /^([a-z-]+):(\d+)$/.exec(text.trim());
  const operation = fileOperations.find((known) => known === match?.[1]);
  const afterMutations = Number(match?.[2]);
  if (operation === undefined || !(afterMutations >= 1)) {
    throw new Error(`BLOCKMIRROR_CRASH_POINT: "${text}" is not <operation>:<n> with n >= 1 and an operation of ${fileOperations.join(', ')}`);
  }
  return { operation, afterMutations };
}

/** What a piece of writeNewFile is: bytes, or a size of zeroes (written, or sparse). */
export type NewFileContents = Buffer | { zeroesBytes: number; pieceBytes: number } | { sparseBytes: number };

/** What settleDirectory found and did at start. */
export type SettleOutcome =
  | 'nothing'
  | 'removed an unfinished new copy'
  | 'removed the replaced copy'
  | 'finished installing the new copy'
  | 'restored the copy being replaced';

export class DurableFiles {
  private readonly counts = new Map<FileOperation, number>();

  constructor(
    readonly fs: FileSystem = new NodeFileSystem(),
    private readonly crashPoint: CrashPoint | null = null,
    /** What a crash point does (the default kills the process). */
    private readonly crash: () => void = () => process.kill(process.pid, 'SIGKILL'),
  ) {}

  // ---- reading ------------------------------------------------------------------------

  /** A file's bytes, or null when there is no such file. */
  read(file: string): Buffer | null {
    try {
      return this.fs.readFile(file);
    } catch (error) {
      if (isMissing(error)) return null;
      throw error;
    }
  }

  kind(file: string): FileKind | null {
    return this.fs.stat(file)?.kind ?? null;
  }

  sizeOf(file: string): number | null {
    const stat = this.fs.stat(file);
    return stat?.kind === 'file' ? stat.sizeBytes : null;
  }

  /** Opens an existing file of the data path (the log's partitions, a volume image). */
  openData(file: string, writable: boolean): number {
    return this.fs.open(file, writable);
  }

  closeData(fd: number): void {
    this.fs.close(fd);
  }

  // ---- changing -----------------------------------------------------------------------

  /** Makes `dir` and the levels above it that are missing, each durable in its parent. */
  makeDir(dir: string, operation: FileOperation): void {
    const missing: string[] = [];
    for (let at = path.resolve(dir); this.kind(at) === null; at = path.dirname(at)) {
      assert(at !== path.dirname(at), 'the root directory is missing');
      missing.unshift(at);
    }
    for (const level of missing) {
      this.step(operation, () => this.fs.mkdir(level));
      this.step(operation, () => this.fs.syncDir(path.dirname(level)));
    }
  }

  /** Replaces a file's content atomically and durably (see the module comment). */
  replaceFile(file: string, contents: string | Buffer, operation: FileOperation): void {
    const temporary = `${file}.tmp`;
    this.writeNewFile(temporary, toBuffer(contents), operation);
    this.step(operation, () => this.fs.rename(temporary, file));
    this.step(operation, () => this.fs.syncDir(path.dirname(file)));
  }

  /** replaceFile with its two waits for the disk (fdatasync, directory fsync) off the event loop. */
  async replaceFileAsync(file: string, contents: string | Buffer, operation: FileOperation): Promise<void> {
    const temporary = `${file}.tmp`;
    const fd = this.step(operation, () => this.fs.create(temporary));
    try {
      this.step(operation, () => this.fs.write(fd, toBuffer(contents), 0));
      await this.fs.syncDataAsync(fd);
      this.counted(operation);
    } finally {
      this.fs.close(fd);
    }
    this.step(operation, () => this.fs.rename(temporary, file));
    await this.fs.syncDirAsync(path.dirname(file));
    this.counted(operation);
  }

  /**
   * replaceFileAsync for a file too big to hold in memory: `fill` appends its pieces in
   * order to `<file>.tmp`, which is then synced and renamed over `file`. A crash leaves
   * the old file (or none) or the new one, whole; the `.tmp` it may leave is emptied by
   * the next install of that name. When `fill` or a write fails, the `.tmp` is removed
   * and the error thrown. Returns the bytes written.
   */
  async installFile(file: string, operation: FileOperation, fill: (append: (piece: Buffer) => void) => Promise<void>): Promise<number> {
    const temporary = `${file}.tmp`;
    const fd = this.step(operation, () => this.fs.create(temporary));
    let written = 0;
    try {
      try {
        await fill((piece) => {
          if (piece.length === 0) return;
          this.step(operation, () => this.fs.write(fd, piece, written));
          written += piece.length;
        });
        await this.fs.syncDataAsync(fd);
        this.counted(operation);
      } finally {
        this.fs.close(fd);
      }
    } catch (error) {
      try {
        this.remove(temporary, operation);
      } catch {
        // The first failure is the one to report; the `.tmp` is emptied by the next install.
      }
      throw error;
    }
    this.step(operation, () => this.fs.rename(temporary, file));
    await this.fs.syncDirAsync(path.dirname(file));
    this.counted(operation);
    return written;
  }

  /**
   * Creates (or empties) `file` and writes it, durably. Its name is not made durable:
   * the file must lie where nothing reads it until a rename or a directory sync does.
   */
  writeNewFile(file: string, contents: NewFileContents, operation: FileOperation): void {
    const fd = this.step(operation, () => this.fs.create(file));
    try {
      if (Buffer.isBuffer(contents)) {
        if (contents.length > 0) this.step(operation, () => this.fs.write(fd, contents, 0));
      } else if ('sparseBytes' in contents) {
        this.step(operation, () => this.fs.truncate(fd, contents.sparseBytes));
      } else {
        const zeroes = Buffer.alloc(Math.min(contents.zeroesBytes, contents.pieceBytes));
        for (let at = 0; at < contents.zeroesBytes; at += zeroes.length) {
          const piece = zeroes.subarray(0, Math.min(zeroes.length, contents.zeroesBytes - at));
          this.step(operation, () => this.fs.write(fd, piece, at));
        }
      }
      this.step(operation, () => this.fs.syncData(fd));
    } finally {
      this.fs.close(fd);
    }
  }

  /** Makes the names in `dir` durable (after writeNewFile, where a reader may look next). */
  syncNames(dir: string, operation: FileOperation): void {
    this.step(operation, () => this.fs.syncDir(dir));
  }

  /** Renames, durably in both directories. */
  rename(from: string, to: string, operation: FileOperation): void {
    this.step(operation, () => this.fs.rename(from, to));
    this.step(operation, () => this.fs.syncDir(path.dirname(to)));
    if (path.dirname(from) !== path.dirname(to)) this.step(operation, () => this.fs.syncDir(path.dirname(from)));
  }

  /** Removes a file or a whole tree (nothing if missing); its parent is synced after. */
  remove(target: string, operation: FileOperation): void {
    const kind = this.kind(target);
    if (kind === null) return;
    this.removeTree(target, kind, operation);
    this.step(operation, () => this.fs.syncDir(path.dirname(target)));
  }

  private removeTree(target: string, kind: FileKind, operation: FileOperation): void {
    if (kind === 'file') {
      this.step(operation, () => this.fs.unlink(target));
      return;
    }
    for (const name of this.fs.readdir(target)) {
      const child = path.join(target, name);
      this.removeTree(child, this.kind(child) ?? 'file', operation);
    }
    this.step(operation, () => this.fs.rmdir(target));
  }

  /**
   * Puts a new directory at `dir` in one step: `build` fills `<dir>.new` (with
   * writeNewFile), which is synced and swapped in through `<dir>.old`. The parent must
   * exist. At the next start settleDirectory() finishes what a crash interrupted.
   */
  installDirectory(dir: string, operation: FileOperation, build: (staging: string) => void): void {
    const staging = `${dir}.new`;
    const old = `${dir}.old`;
    this.remove(staging, operation);
    this.remove(old, operation);
    this.step(operation, () => this.fs.mkdir(staging));
    build(staging);
    this.step(operation, () => this.fs.syncDir(staging));
    const replacing = this.kind(dir) !== null;
    if (replacing) this.step(operation, () => this.fs.rename(dir, old));
    this.step(operation, () => this.fs.rename(staging, dir));
    this.step(operation, () => this.fs.syncDir(path.dirname(dir)));
    if (replacing) this.remove(old, operation);
  }

  /**
   * At start, before `dir` is read: finishes or undoes an installDirectory that a crash
   * interrupted. `complete(staging)` tells a finished new copy from one still being built.
   */
  settleDirectory(dir: string, operation: FileOperation, complete: (staging: string) => boolean): SettleOutcome {
    const staging = `${dir}.new`;
    const old = `${dir}.old`;
    const has = (file: string): boolean => this.kind(file) !== null;
    if (has(dir)) {
      // The swap did not start (the new copy may be unfinished), or it finished.
      const outcome: SettleOutcome = has(staging) ? 'removed an unfinished new copy' : has(old) ? 'removed the replaced copy' : 'nothing';
      this.remove(staging, operation);
      this.remove(old, operation);
      return outcome;
    }
    if (has(old) && has(staging) && complete(staging)) {
      this.rename(staging, dir, operation);
      this.remove(old, operation);
      return 'finished installing the new copy';
    }
    if (has(old)) {
      this.remove(staging, operation);
      this.rename(old, dir, operation);
      return 'restored the copy being replaced';
    }
    if (has(staging)) {
      // A first creation that did not finish: nothing was ever in it.
      this.remove(staging, operation);
      return 'removed an unfinished new copy';
    }
    return 'nothing';
  }

  /** Moves a damaged directory to `<dir>.damaged` (replacing an earlier one); returns where. */
  setAside(dir: string, operation: FileOperation): string {
    const target = `${dir}.damaged`;
    this.remove(target, operation);
    this.rename(dir, target, operation);
    return target;
  }

  // ---- crash points -------------------------------------------------------------------

  private step<T>(operation: FileOperation, mutate: () => T): T {
    const result = mutate();
    this.counted(operation);
    return result;
  }

  private counted(operation: FileOperation): void {
    if (this.crashPoint === null || this.crashPoint.operation !== operation) return;
    const count = (this.counts.get(operation) ?? 0) + 1;
    this.counts.set(operation, count);
    if (count === this.crashPoint.afterMutations) this.crash();
  }
}

function toBuffer(contents: string | Buffer): Buffer {
  return typeof contents === 'string' ? Buffer.from(contents, 'utf8') : contents;
}

/** Whether an error says the file (or a directory on its path) is not there. */
export function isMissing(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}
