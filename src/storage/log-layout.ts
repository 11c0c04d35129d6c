// The layout of a volume's write log on disk, and the changes that create or replace a
// whole log directory. WriteLog (write-log.ts) works inside the layout; scanLog
// (log-scan.ts) reads it back at recovery.
//
// `<dataDir>/log/<volume>/` holds:
//   superblock.json     geometry, the session ids (below), and the last CP: its sequence
//                       number and where the first entry after it lies; replaced atomically
//   partition-<i>.log   `partitions` files of `partitionBytes` each, zero-filled when
//                       created and then reused in turn, so an fdatasync never has to
//                       write file metadata. Partition generation g lives in file
//                       g mod partitions; every entry records its generation, so entries
//                       left from an earlier turn are never mistaken for new ones.
//   trail               (a replica's log only) where the entries since the primary's
//                       last CP landed: src/core/replica-trail.ts
//
// The directory is made whole, by DurableFiles.installDirectory: the files are written
// in `<dir>.new` (the superblock last) and the directory is swapped into place, so a
// crash leaves the old log or the new one (settleLogDirectory settles an interrupted
// swap first).
//
// Every open of the log starts a session with a new random log id, added to the
// superblock's list before anything is appended; a consistency point resets the list to
// the current session. Recovery accepts only entries of listed sessions, in the order
// they are listed, so entries that an earlier session wrote and a crash left behind
// (after a torn tail, or ahead in other partitions) are never replayed, whatever
// sequence number they carry.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { constants } from '../constants.js';
import { crc32c } from '../lib/crc32c.js';
import type { Logger } from '../lib/log.js';
import { TRAIL_FILE } from '../core/replica-trail.js';
import { DurableFiles, isMissing } from './durable-files.js';
import { LogCorruptError } from './log-scan.js';

export interface LogGeometry {
  partitionBytes: number;
  partitions: number;
}

/** What a new log directory starts with (see installLogDirectory). */
export interface NewLogState {
  cpSeq: number;
  needsFullResync: boolean;
  /** The replica trail file to carry over, if any. */
  trail: Buffer | null;
}

/** Where a log lives and what it belongs to: what the functions here need of WriteLog's options. */
export interface LogPlace {
  dir: string;
  /** Where the log's files are changed (the real file system unless a test says otherwise). */
  files?: DurableFiles;
  geometry: LogGeometry;
  volumeUuid: string;
  log: Logger;
  /** Present for a replica's log (which keeps a trail). */
  replica?: unknown;
}

export interface Superblock {
  format: 1;
  /**
   * Ids of the sessions whose entries may lie after the CP, oldest first: along the log,
   * an entry of one session is never followed by an entry of an earlier one.
   */
  logIds: number[];
  volumeUuid: string;
  partitionBytes: number;
  partitions: number;
  cpSeq: number;
  cpTimeMs: number;
  /** Where the first entry after the CP is (or will be) written. */
  replayGeneration: number;
  replayOffset: number;
  /** See LogStatus.needsFullResync (absent in logs written before it existed: false). */
  needsFullResync?: boolean;
}

export interface Partition {
  fd: number;
  /** The generation held by this file, or -1 when it holds nothing that is needed. */
  generation: number;
  firstSeq: number;
  /** Where firstSeq begins in the file (0 unless the entries before it there are an earlier run's, not recovered). */
  firstOffset: number;
  lastSeq: number;
}

export interface Position {
  generation: number;
  offset: number;
}

export const SUPERBLOCK_FILE = 'superblock.json';
/** Sessions a superblock may list: each open adds one, each consistency point resets it. */
export const LOG_IDS_MAX = 16;
/** Log writes cover whole blocks of this size (the file system's block). */
export const LOG_BLOCK_BYTES = 4096;

/** Where a log's files are changed: the options', or the real file system. */
export function filesOf(place: LogPlace): DurableFiles {
  return place.files ?? new DurableFiles();
}

export function partitionFile(dir: string, slot: number): string {
  return path.join(dir, `partition-${slot}.log`);
}

export function superblockText(superblock: Superblock): string {
  const body = JSON.stringify(superblock);
  return JSON.stringify({ ...superblock, crc: crc32c(Buffer.from(body)) }, null, 2) + '\n';
}

export function readSuperblock(files: DurableFiles, file: string): Superblock {
  const data = files.read(file);
  if (data === null) throw new LogCorruptError(`${file} is missing`);
  let parsed: Superblock & { crc: number };
  try {
    parsed = JSON.parse(data.toString('utf8')) as Superblock & { crc: number };
  } catch (error) {
    throw new LogCorruptError(`${file}: unreadable superblock (${(error as Error).message})`);
  }
  const { crc, ...superblock } = parsed;
  if (
    superblock.format !== 1 ||
    crc32c(Buffer.from(JSON.stringify(superblock))) !== crc ||
    !Array.isArray(superblock.logIds) ||
    superblock.logIds.length === 0 ||
    !Number.isSafeInteger(superblock.partitions) ||
    superblock.partitions < 2 ||
    !Number.isSafeInteger(superblock.partitionBytes) ||
    superblock.partitionBytes % LOG_BLOCK_BYTES !== 0
  ) {
    throw new LogCorruptError(`${file}: superblock checksum or format mismatch`);
  }
  return superblock;
}

/** A new session id, none of `avoid`. */
export function newLogId(avoid: readonly number[]): number {
  for (;;) {
    const id = crypto.randomBytes(4).readUInt32BE(0);
    if (!avoid.includes(id)) return id;
  }
}

/**
 * Finishes or undoes a replacement of the log directory that a crash interrupted (see
 * DurableFiles.installDirectory); a new copy is complete once it has its superblock.
 */
export function settleLogDirectory(options: LogPlace): void {
  const files = filesOf(options);
  const outcome = files.settleDirectory(options.dir, 'log-tidy', (staging) => files.kind(path.join(staging, SUPERBLOCK_FILE)) === 'file');
  if (outcome !== 'nothing') options.log.warn('log: a change of the log directory was interrupted', { dir: options.dir, outcome });
}

/**
 * Puts a new, empty log in `options.dir` (replacing what is there) whose sequence
 * numbers continue after `state.cpSeq`: the partitions zero-filled and synced, the
 * superblock last, then the whole directory swapped into place.
 */
export function installLogDirectory(options: LogPlace, operation: 'log-create' | 'log-recreate' | 'role-change', state: NewLogState): void {
  const { geometry } = options;
  const files = filesOf(options);
  files.makeDir(path.dirname(options.dir), operation);
  files.installDirectory(options.dir, operation, (staging) => {
    // Written in 64 KiB pieces, so that the page cache holds the partitions in folios no
    // larger (see constants.diskWritePieceBytes): each append writes into them.
    for (let slot = 0; slot < geometry.partitions; slot += 1) {
      const contents = { zeroesBytes: geometry.partitionBytes, pieceBytes: constants.diskWritePieceBytes };
      files.writeNewFile(partitionFile(staging, slot), contents, operation);
    }
    if (state.trail !== null) files.writeNewFile(path.join(staging, TRAIL_FILE), state.trail, operation);
    const superblock: Superblock = {
      format: 1,
      logIds: [newLogId([])],
      volumeUuid: options.volumeUuid,
      partitionBytes: geometry.partitionBytes,
      partitions: geometry.partitions,
      cpSeq: state.cpSeq,
      cpTimeMs: Date.now(),
      replayGeneration: 0,
      replayOffset: 0,
      ...(state.needsFullResync ? { needsFullResync: true } : {}),
    };
    files.writeNewFile(path.join(staging, SUPERBLOCK_FILE), Buffer.from(superblockText(superblock)), operation);
  });
}

/** Opens every partition file the superblock names, checking each one's size. */
export function openPartitions(files: DurableFiles, dir: string, superblock: Superblock): Partition[] {
  const slots: Partition[] = [];
  const fail = (problem: string): never => {
    for (const open of slots) files.closeData(open.fd);
    throw new LogCorruptError(problem);
  };
  for (let slot = 0; slot < superblock.partitions; slot += 1) {
    const file = partitionFile(dir, slot);
    let fd: number;
    try {
      fd = files.openData(file, true);
    } catch (error) {
      if (isMissing(error)) fail(`${file} is missing (the superblock names ${superblock.partitions} partitions)`);
      throw error;
    }
    const size = fs.fstatSync(fd).size;
    if (size !== superblock.partitionBytes) {
      files.closeData(fd);
      fail(`${file} is ${size} bytes, the superblock says ${superblock.partitionBytes}`);
    }
    slots.push({ fd, generation: -1, firstSeq: 0, firstOffset: 0, lastSeq: 0 });
  }
  return slots;
}

/**
 * Replaces the log with an empty one (of `options.geometry`) whose sequence numbers
 * continue after `cpSeq`: after a CP that covers every entry (at start, when the
 * geometry changed), or on a replica restarting its log for a resync. A replica's
 * trail is carried over: what it records is still to be named to the primary. The
 * caller says whether the new log still needs a full resync (see LogStatus).
 */
export function recreateLogDirectory(options: LogPlace, cpSeq: number, state: { needsFullResync: boolean }): void {
  const files = filesOf(options);
  const trail = options.replica === undefined ? null : files.read(path.join(options.dir, TRAIL_FILE));
  installLogDirectory(options, 'log-recreate', { cpSeq, needsFullResync: state.needsFullResync, trail });
}
