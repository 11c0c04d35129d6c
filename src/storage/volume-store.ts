// Opening one volume's files at start, and restarting a replica's log for a resync: the
// storage half of a node's start, kept apart from the sockets so that the crash tests
// run exactly this code over the simulated file system.
//
// What a start accepts of what a crash (or a damaged disk) left:
//   - the volume's image and identity half made: made again or finished (volume-files.ts);
//   - a log directory whose replacement was interrupted: finished or undone (settleLogDirectory, log-layout.ts);
//   - a torn tail in the log: discarded (WriteLog's recovery);
//   - a replica's per-source log that is damaged, half made or missing: it holds nothing
//     the primary cannot send again, so it is set aside as `<dir>.damaged` (replacing an
//     earlier one), a new one is made that asks the primary for every region
//     (LogStatus.needsFullResync, reported as an inconsistent copy), and the node starts;
//   - a primary's own log that is damaged: it may hold acknowledged writes that exist
//     nowhere else, so the start stops with ERR_LOG_CORRUPT and a message saying what an
//     operator can do (docs/operations.md, "Start-up problems").

import path from 'node:path';
import type { VolumeConfig } from '../control/config.js';
import { constants } from '../constants.js';
import type { Logger } from '../lib/log.js';
import { FileDisk } from '../io/file-disk.js';
import type { IoActivity } from '../io/file-io.js';
import type { DurableFiles } from './durable-files.js';
import type { DirtyBitmap } from '../core/dirty-bitmap.js';
import { EntryType } from '../protocol/log-entry.js';
import { applyEntry } from './apply-entry.js';
import { LocalVolume } from './local-volume.js';
import { ReplicaTrail, TRAIL_FILE, type TrailExtent } from '../core/replica-trail.js';
import { prepareEpochHistory, prepareVolumeFiles, type VolumePaths, type VolumeIdentity } from './volume-files.js';
import { encodeEpochHistory, type EpochHistory } from '../core/epoch-history.js';
import { LogCorruptError, WriteLog, type LogGeometry, type LogOptions, type RecoveryReport } from './write-log.js';
import { installLogDirectory, recreateLogDirectory, settleLogDirectory } from './log-layout.js';

export interface VolumeStorageOptions {
  files: DurableFiles;
  dataDir: string;
  /** This node's id (the volume's epoch history says which role and log it has here). */
  nodeId: string;
  config: Pick<VolumeConfig, 'name' | 'sizeBytes' | 'mode' | 'primary'>;
  geometry: LogGeometry;
  activity: IoActivity;
  log: Logger;
  onCheckpointWanted: () => void;
  /** Marked with the regions of the entries the log replays (a mirrored primary's). */
  replayed?: DirtyBitmap | null;
}

export interface OpenedVolume {
  identity: VolumeIdentity;
  paths: VolumePaths;
  /** The image was made at this start. */
  created: boolean;
  /** The volume's epoch history on this node (its role and epoch come from it). */
  history: EpochHistory;
  /** `primary` when the history names this node as the one that takes writes (a local volume always). */
  role: 'primary' | 'secondary';
  volume: LocalVolume;
  recovery: RecoveryReport;
  /** The options the log was opened with (a replica restarts it with them). */
  logOptions: LogOptions;
  /** Where a damaged per-source log was moved, or null. */
  setAside: string | null;
}

/**
 * The directory of a volume's log on `nodeId`: its own (`log/<name>`) while its history
 * names it as the last primary (stepped down or not), else the per-source log of the
 * entries of that primary (`peers/<primary>/<name>`).
 */
export function logDir(dataDir: string, name: string, history: EpochHistory, nodeId: string): string {
  const source = history.current.primary;
  return source === nodeId ? path.join(dataDir, 'log', name) : path.join(dataDir, 'peers', source, name);
}

/** The options of the log in `dir`: a replica's per-source log (`replica`), or a primary's own. */
export function logOptionsAt(base: LogOptions, dir: string, replica: { deferApply: boolean } | null): LogOptions {
  const { replica: _previous, ...rest } = base;
  return { ...rest, dir, ...(replica === null ? {} : { replica }) };
}

/**
 * Opens (creating on first start) a volume's image and log, replays the log after its
 * last consistency point and takes a new one, so the image is durable before anyone is
 * served. A log whose geometry differs from `geometry` is then made anew.
 */
export async function openVolumeStorage(options: VolumeStorageOptions): Promise<OpenedVolume> {
  const { files, config, log } = options;
  const { identity, paths, created } = prepareVolumeFiles(
    files,
    options.dataDir,
    config.name,
    config.sizeBytes,
    constants.nbdBlockSizePreferredBytes,
  );
  // The cluster file's primary is the first one; from then on the history says.
  const history = prepareEpochHistory(files, paths, config.name, config.primary ?? options.nodeId);
  const ownLog = config.mode === 'local' || history.current.primary === options.nodeId;
  // A primary that stepped down opens as it stopped (its own log, its start's consistency
  // point numbered by it) and steps down again before anything is served.
  const role = ownLog ? 'primary' : 'secondary';
  const disk = await FileDisk.openProbed(paths.image, identity.sizeBytes, {
    inlineReadBytesMax: constants.diskInlineReadBytesMax,
    inlineWriteBytesMax: constants.diskInlineWriteBytesMax,
    writePieceBytes: constants.diskWritePieceBytes,
    activity: options.activity,
    fileSystem: files.fs,
  });
  const logOptions: LogOptions = {
    dir: config.mode === 'local' ? path.join(options.dataDir, 'log', config.name) : logDir(options.dataDir, config.name, history, options.nodeId),
    files,
    geometry: options.geometry,
    volumeUuid: identity.uuid,
    volumeId: Number.parseInt(identity.uuid.slice(0, 8), 16),
    activity: options.activity,
    inlineWriteBytesMax: constants.logInlineWriteBytesMax,
    log,
    onCheckpointWanted: options.onCheckpointWanted,
    ...(role === 'secondary' ? { replica: { deferApply: config.mode === 'logship' } } : {}),
  };
  const apply = (header: Parameters<typeof applyEntry>[1], payload: Buffer): Promise<void> => {
    if (header.type !== EntryType.CONSISTENCY_POINT) options.replayed?.mark(header.offset, header.lengthBytes);
    return applyEntry(disk, header, payload, constants.zeroWriteChunkBytes);
  };
  let opened: { log: WriteLog; recovery: RecoveryReport };
  let setAside: string | null = null;
  try {
    if (role === 'primary') {
      opened = await openPrimaryLog(logOptions, apply, config.name);
    } else {
      ({ opened, setAside } = await openReplicaLog(files, logOptions, apply, created));
    }
  } catch (error) {
    await disk.close();
    throw error;
  }
  let volume = new LocalVolume(config.name, disk, opened.log, constants.zeroWriteChunkBytes, role, history);
  try {
    await volume.checkpoint();
    if (opened.log.geometryDiffers(logOptions.geometry)) {
      // Everything is covered by the CP just taken, so the files can be made anew.
      const status = opened.log.status();
      opened.log.close();
      recreateLogDirectory(logOptions, status.cpSeq, { needsFullResync: status.needsFullResync });
      const reopened = await WriteLog.open(logOptions, nothingToReplay('after a consistency point'));
      volume = new LocalVolume(config.name, disk, reopened.log, constants.zeroWriteChunkBytes, role, history);
      log.info('log geometry changed', { ...logOptions.geometry });
    }
  } catch (error) {
    await volume.close().catch(() => undefined);
    throw error;
  }
  if (history.ended && volume.replica.role === 'primary' && config.mode !== 'local') volume.replica.demote(history);
  if (files.kind(attachingMarker(paths)) !== null) {
    // A replaced disk whose image was never filled whole: nothing is read from it.
    volume.markFailed(new Error(`the disk attached for ${config.name} was not filled from a peer before the node stopped: run blockmirror attach again`));
    log.error('volume image incomplete: an attached disk was not filled before the node stopped', { volume: config.name });
  }
  return { identity, paths, created, history, role: volume.replica.role, volume, recovery: opened.recovery, logOptions, setAside };
}

/** A primary's own log: damage stops the start, with what to do about it. */
async function openPrimaryLog(options: LogOptions, apply: (header: Parameters<typeof applyEntry>[1], payload: Buffer) => Promise<void>, name: string) {
  try {
    return await WriteLog.open(options, apply);
  } catch (error) {
    if (!(error instanceof LogCorruptError)) throw error;
    throw new LogCorruptError(
      `${error.message}. This node is the primary of volume ${name}, and its write log ${options.dir} may hold ` +
        'acknowledged writes that exist nowhere else, so the node does not start from it. ' +
        `To start from the volume image as of its last consistency point instead (losing the writes after it), move ${options.dir} ` +
        'aside and start the node again; its secondaries are then resynced where they may differ from its image ' +
        '(docs/operations.md, "Start-up problems").',
    );
  }
}

/**
 * A replica's per-source log: whatever is wrong with it, the primary holds the entries,
 * so a damaged or missing log is set aside and replaced by one that asks for a full resync.
 */
async function openReplicaLog(
  files: DurableFiles,
  options: LogOptions,
  apply: (header: Parameters<typeof applyEntry>[1], payload: Buffer) => Promise<void>,
  imageCreated: boolean,
): Promise<{ opened: { log: WriteLog; recovery: RecoveryReport }; setAside: string | null }> {
  settleLogDirectory(options);
  if (files.kind(options.dir) === null && !imageCreated) {
    // The image was written before (by an earlier start), so its log must have been too.
    options.log.warn('per-source log missing: starting a new one and asking the primary for a full resync', { dir: options.dir });
    startAfresh(options);
    return { opened: await WriteLog.open(options, nothingToReplay('in a new log')), setAside: null };
  }
  try {
    return { opened: await WriteLog.open(options, apply), setAside: null };
  } catch (error) {
    if (!(error instanceof LogCorruptError)) throw error;
    const setAside = files.setAside(options.dir, 'log-set-aside');
    options.log.warn('per-source log damaged: set aside; starting a new one and asking the primary for a full resync', {
      dir: options.dir,
      problem: error.message,
      setAside,
    });
    startAfresh(options);
    return { opened: await WriteLog.open(options, nothingToReplay('in a new log')), setAside };
  }
}

/** A new per-source log that knows nothing of what the copy holds: every region is named to the primary. */
function startAfresh(options: LogOptions): void {
  installLogDirectory(options, 'log-create', { cpSeq: 0, needsFullResync: true, trail: ReplicaTrail.everything().encode() });
}

function nothingToReplay(where: string): () => Promise<void> {
  return () => Promise.reject(new Error(`nothing to replay ${where}`));
}

/**
 * A replica's log restarts after `seq` for a resync (the primary's RESET): what was
 * received is applied and made durable first, then the log is made anew; the regions the
 * copy lacks arrive afterwards as entries. The new log no longer needs a full resync:
 * the primary recorded, before it asked for the reset, that the whole copy is to be sent.
 */
export async function restartReplicaLog(volume: LocalVolume, options: LogOptions, seq: number, logship: boolean): Promise<void> {
  if (logship) await volume.applyLoggedThrough(volume.log.lastSeq);
  await volume.checkpoint();
  // The new log is made whole beside the old one, which stays in service until the new
  // one is in place (nothing runs in between: the making is synchronous). A failure to
  // make it, a full disk say, fails the reset and leaves the old log as it was.
  recreateLogDirectory(options, seq, { needsFullResync: false });
  volume.log.close();
  const restarted = await WriteLog.open(options, nothingToReplay('after a reset'));
  volume.replaceLog(restarted.log);
}

// ---- role changes ----------------------------------------------------------------------
//
// Each moves the volume's log to where its new role keeps it (see logDir): the new
// directory is made whole beside the old one, `commit` then makes the volume's new epoch
// history durable (from that moment a start opens the new directory), and only then does
// the volume switch logs and the old directory go. A crash before `commit` leaves the old
// role and log in place (the new directory is replaced when the change is made again); a
// crash after it finds the new log, which continues after the last entry the image holds.

/** What a promotion applied of the per-source log before it took writes. */
export interface PromotionReport {
  /** Entries applied to the image at the promotion (a logship copy's held entries). */
  appliedEntries: number;
  appliedBytes: number;
  /** The last entry of the copy: the new epoch starts after it. */
  lastSeq: number;
  /** The per-source log was damaged: why the promotion stopped at lastSeq, and how many entries it held past it. */
  damage: { problem: string; lostEntries: number } | null;
}

/**
 * A secondary becomes the primary: every entry its per-source log holds is applied to
 * the image in sequence order (a logship copy applies them only at its primary's
 * consistency points, so it may hold many) and made durable by a consistency point; its
 * own log (`own`) continues after the last one. An entry that cannot be read back (the
 * log was damaged) ends it: the copy is the primary as of the entry before, and the
 * report says so. `commit` gets that last entry.
 */
export async function promoteStorage(files: DurableFiles, volume: LocalVolume, own: LogOptions, from: LogOptions, commit: (lastSeq: number) => void): Promise<PromotionReport> {
  const held = volume.log.lastSeq;
  const report: PromotionReport = { appliedEntries: 0, appliedBytes: 0, lastSeq: held, damage: null };
  for (let seq = volume.log.appliedThrough + 1; seq <= held; seq += 1) {
    try {
      const applied = await volume.applyLoggedThrough(seq);
      report.appliedEntries += applied.entries;
      report.appliedBytes += applied.bytes;
    } catch (error) {
      if (!(error instanceof LogCorruptError)) throw error;
      report.lastSeq = seq - 1;
      report.damage = { problem: error.message, lostEntries: held - report.lastSeq };
      break;
    }
  }
  await volume.checkpoint();
  const lastSeq = report.lastSeq;
  installLogDirectory(own, 'role-change', { cpSeq: lastSeq, needsFullResync: false, trail: null });
  commit(lastSeq);
  volume.log.close();
  volume.replaceLog((await WriteLog.open(own, nothingToReplay('in a promoted copy\'s new log'))).log);
  files.remove(from.dir, 'role-change');
  return report;
}

/**
 * A primary that stepped down (or was fenced by a newer epoch) becomes a secondary of the
 * new history's primary: its own log (`own`, whose last entry the image holds: the
 * demotion took a consistency point) gives way to a per-source log (`to`) that continues
 * after it, whose trail names the regions of every entry after `sharedSeq`, the last
 * entry the new primary holds too, and the regions its mirror ledger said the new primary
 * may lack (`mayDiffer`: writes in its image whose entries a crash lost, entries placed
 * while that node was away; null when unknown: every region), so that they can be named
 * to the new primary and resent.
 */
export async function demoteStorage(
  files: DurableFiles,
  volume: LocalVolume,
  own: LogOptions,
  to: LogOptions,
  sharedSeq: number,
  mayDiffer: DirtyBitmap | null,
  commit: () => void,
): Promise<void> {
  // The image is durable through the last consistency point (the step down takes one, but
  // it may have failed): entries after it are named too, so that a crash, which the new
  // log would not replay them after, cannot leave the image without them unnoticed.
  const trail = await trailAfter(volume.log, Math.min(sharedSeq, volume.log.status().cpSeq), mayDiffer);
  const lastSeq = volume.log.lastSeq;
  installLogDirectory(to, 'role-change', { cpSeq: lastSeq, needsFullResync: false, trail: trail.encode() });
  commit();
  volume.log.close();
  volume.replaceLog((await WriteLog.open(to, nothingToReplay('in a demoted copy\'s new log'))).log);
  files.remove(own.dir, 'role-change');
}

/**
 * A secondary follows a new primary (it learned a newer epoch): its per-source log moves
 * from the old primary's directory (`from`) to the new one's (`to`). What it holds is
 * applied and made durable first; the trail and the need for a full resync go with it,
 * and the entries it holds past `sharedSeq` (the last the new history holds) are marked
 * as diverged.
 */
export async function moveReplicaLog(files: DurableFiles, volume: LocalVolume, from: LogOptions, to: LogOptions, sharedSeq: number, commit: () => void): Promise<void> {
  await volume.applyLoggedThrough(volume.log.lastSeq);
  await volume.checkpoint();
  const status = volume.log.status();
  // The trail as the consistency point wrote it, marked: entries past the new history's
  // start came from the old primary, and are named at the new one's reset.
  const trail = ReplicaTrail.decode(files.read(path.join(from.dir, TRAIL_FILE)));
  if (volume.log.lastSeq > sharedSeq) trail.divergesAfter(sharedSeq);
  installLogDirectory(to, 'role-change', { cpSeq: volume.log.lastSeq, needsFullResync: status.needsFullResync, trail: trail.encode() });
  commit();
  volume.log.close();
  volume.replaceLog((await WriteLog.open(to, nothingToReplay('in a moved per-source log'))).log);
  files.remove(from.dir, 'role-change');
}

/** The marker that a volume's image is being filled from a peer (`blockmirror attach`): until it goes, the image is not whole. */
export function attachingMarker(paths: VolumePaths): string {
  return `${paths.image}.attaching`;
}

/**
 * A replaced disk under a primary that serves its volume from its peers (`blockmirror
 * attach`): the volume's files made anew in `paths` with the identity and history it has,
 * a new sparse image and a new log whose numbers continue after `lastSeq`, the marker
 * first (a start that finds it opens the volume failed: its image is not whole). Returns
 * the opened disk and log; `attached` removes the marker once the image is whole.
 */
export async function attachStorage(
  files: DurableFiles,
  paths: VolumePaths,
  identity: VolumeIdentity,
  history: EpochHistory,
  logOptions: LogOptions,
  lastSeq: number,
  activity: IoActivity,
): Promise<{ disk: FileDisk; log: WriteLog }> {
  files.makeDir(paths.dir, 'volume-create');
  files.replaceFile(attachingMarker(paths), `${JSON.stringify({ since: new Date().toISOString(), lastSeq })}\n`, 'volume-create');
  files.remove(paths.image, 'volume-create');
  files.remove(paths.imageNew, 'volume-create');
  files.writeNewFile(paths.imageNew, { sparseBytes: identity.sizeBytes }, 'volume-create');
  files.rename(paths.imageNew, paths.image, 'volume-create');
  files.replaceFile(paths.identity, JSON.stringify(identity, null, 2) + '\n', 'volume-create');
  files.replaceFile(paths.epochs, encodeEpochHistory(history), 'volume-epochs');
  installLogDirectory(logOptions, 'log-recreate', { cpSeq: lastSeq, needsFullResync: false, trail: null });
  const disk = await FileDisk.openProbed(paths.image, identity.sizeBytes, {
    inlineReadBytesMax: constants.diskInlineReadBytesMax,
    inlineWriteBytesMax: constants.diskInlineWriteBytesMax,
    writePieceBytes: constants.diskWritePieceBytes,
    activity,
    fileSystem: files.fs,
  });
  try {
    return { disk, log: (await WriteLog.open(logOptions, nothingToReplay('in an attached disk\'s new log'))).log };
  } catch (error) {
    await disk.close();
    throw error;
  }
}

/** The attached image is whole (filled and made durable): the marker goes. */
export function attached(files: DurableFiles, paths: VolumePaths): void {
  files.remove(attachingMarker(paths), 'volume-create');
}

/**
 * The extents of this copy that may differ from another's that shares every entry through
 * `sharedSeq` with it: the regions of its own entries past it, and those `mayDiffer` marks
 * (its ledger's bitmap for that copy); null when it cannot name them (every region).
 */
export async function changedSince(volume: LocalVolume, sharedSeq: number, mayDiffer: DirtyBitmap | null): Promise<TrailExtent[] | null> {
  return (await trailAfter(volume.log, sharedSeq, mayDiffer)).extentsAfter(sharedSeq);
}

/**
 * What a primary's own log names of the entries after `seq` (the last the new primary
 * shares): each one's region, read back, or "every region" when it no longer holds them all.
 */
async function trailAfter(log: WriteLog, seq: number, mayDiffer: DirtyBitmap | null): Promise<ReplicaTrail> {
  const entries: { seq: number; offset: number; lengthBytes: number }[] = [];
  if (mayDiffer === null) return everything();
  // Named as if written by an entry right after the shared one (before the entries read back).
  for (let region = mayDiffer.nextDirty(0); region !== -1; region = mayDiffer.nextDirty(region + 1)) {
    const offset = region * mayDiffer.regionBytes;
    entries.push({ seq: seq + 1, offset, lengthBytes: Math.min(mayDiffer.regionBytes, mayDiffer.sizeBytes - offset) });
  }
  if (seq < log.lastSeq) {
    if (!log.holdsFrom(seq + 1)) return everything();
    try {
      for await (const { fields } of log.readRange(seq + 1, log.lastSeq)) {
        if (fields.type !== EntryType.CONSISTENCY_POINT) entries.push({ seq: fields.seq, offset: fields.offset, lengthBytes: fields.lengthBytes });
      }
    } catch (error) {
      // Entries it cannot read back are regions it cannot name: every region counts.
      if (!(error instanceof LogCorruptError)) throw error;
      return everything();
    }
  }
  // Regions it names make it diverge even when it holds no entry past the shared one.
  return ReplicaTrail.ofOwnEntries(seq, entries, entries.length > 0 ? Math.max(log.lastSeq, seq + 1) : log.lastSeq);

  function everything(): ReplicaTrail {
    const trail = ReplicaTrail.everything();
    trail.divergesAfter(seq);
    return trail;
  }
}
