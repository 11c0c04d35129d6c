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
import { ReplicaTrail } from '../core/replica-trail.js';
import { prepareEpochHistory, prepareVolumeFiles, type VolumePaths, type VolumeIdentity } from './volume-files.js';
import type { EpochHistory } from '../core/epoch-history.js';
import { VolumeMismatchError } from '../lib/errors.js';
import { LogCorruptError, WriteLog, type LogGeometry, type LogOptions, type RecoveryReport } from './write-log.js';
import { installLogDirectory, recreateLogDirectory, settleLogDirectory } from './log-layout.js';

export interface VolumeStorageOptions {
  files: DurableFiles;
  dataDir: string;
  /** This node's id (the role decides which log the volume has here). */
  nodeId: string;
  config: Pick<VolumeConfig, 'name' | 'sizeBytes' | 'mode' | 'primary'>;
  role: 'primary' | 'secondary';
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
  volume: LocalVolume;
  recovery: RecoveryReport;
  /** The options the log was opened with (a replica restarts it with them). */
  logOptions: LogOptions;
  /** Where a damaged per-source log was moved, or null. */
  setAside: string | null;
}

/** The directory of a volume's log on this node: its own, or the per-source log of its primary's entries. */
export function logDir(dataDir: string, config: Pick<VolumeConfig, 'name' | 'primary'>, role: 'primary' | 'secondary'): string {
  return role === 'primary' ? path.join(dataDir, 'log', config.name) : path.join(dataDir, 'peers', config.primary ?? '', config.name);
}

/**
 * Opens (creating on first start) a volume's image and log, replays the log after its
 * last consistency point and takes a new one, so the image is durable before anyone is
 * served. A log whose geometry differs from `geometry` is then made anew.
 */
export async function openVolumeStorage(options: VolumeStorageOptions): Promise<OpenedVolume> {
  const { files, config, role, log } = options;
  const { identity, paths, created } = prepareVolumeFiles(
    files,
    options.dataDir,
    config.name,
    config.sizeBytes,
    constants.nbdBlockSizePreferredBytes,
  );
  const history = prepareEpochHistory(files, paths, config.name, config.primary ?? options.nodeId);
  const { epoch, primary, firstSeq } = history.current;
  if (config.primary !== null && primary !== config.primary) {
    throw new VolumeMismatchError(
      `volume ${config.name}: the cluster file names ${config.primary} as its primary, but its epoch history ` +
        `(${paths.epochs}) says ${primary} is, since epoch ${epoch} (entry ${firstSeq}); the cluster file's primary ` +
        'is only the first one: name it there again',
    );
  }
  const disk = await FileDisk.openProbed(paths.image, identity.sizeBytes, {
    inlineReadBytesMax: constants.diskInlineReadBytesMax,
    inlineWriteBytesMax: constants.diskInlineWriteBytesMax,
    writePieceBytes: constants.diskWritePieceBytes,
    activity: options.activity,
    fileSystem: files.fs,
  });
  const logOptions: LogOptions = {
    dir: logDir(options.dataDir, config, role),
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
  let volume = new LocalVolume(config.name, disk, opened.log, constants.zeroWriteChunkBytes, role, epoch);
  try {
    await volume.checkpoint();
    if (opened.log.geometryDiffers(logOptions.geometry)) {
      // Everything is covered by the CP just taken, so the files can be made anew.
      const status = opened.log.status();
      opened.log.close();
      recreateLogDirectory(logOptions, status.cpSeq, { needsFullResync: status.needsFullResync });
      const reopened = await WriteLog.open(logOptions, nothingToReplay('after a consistency point'));
      volume = new LocalVolume(config.name, disk, reopened.log, constants.zeroWriteChunkBytes, role, epoch);
      log.info('log geometry changed', { ...logOptions.geometry });
    }
  } catch (error) {
    await volume.close().catch(() => undefined);
    throw error;
  }
  return { identity, paths, created, history, volume, recovery: opened.recovery, logOptions, setAside };
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
