// The files of one volume on a node: `<dataDir>/volumes/<name>.img`, the raw volume
// byte for byte (created sparse), `<name>.identity.json` beside it with the
// volume's uuid, size and block size, and `<name>.epochs.json`, the volume's epoch
// history as this replica knows it (src/core/epoch-history.ts). The identity decides: a
// config that names another size is refused, never met by truncating or growing the
// image. The epoch history decides which node is the primary: the cluster file's
// `primary:` is only the first one.
//
// First creation is crash-safe: the image is made as `<name>.img.new`, synced, the
// identity is written atomically (DurableFiles.replaceFile), and only then is the image
// renamed into place. A start finds the identity missing (the image is made again), or
// the identity and `<name>.img.new` (the rename is finished), or both in place.

import crypto from 'node:crypto';
import path from 'node:path';
import { VolumeMismatchError } from '../lib/errors.js';
import { formatBytes } from '../lib/size.js';
import type { DurableFiles } from './durable-files.js';
import { EpochHistory, encodeEpochHistory, parseEpochHistory } from '../core/epoch-history.js';

export interface VolumeIdentity {
  format: 1;
  uuid: string;
  name: string;
  sizeBytes: number;
  blockSizeBytes: number;
  createdAt: string;
}

export interface VolumePaths {
  dir: string;
  image: string;
  imageNew: string;
  identity: string;
  epochs: string;
}

export function volumePaths(dataDir: string, name: string): VolumePaths {
  const dir = path.join(dataDir, 'volumes');
  return {
    dir,
    image: path.join(dir, `${name}.img`),
    imageNew: path.join(dir, `${name}.img.new`),
    identity: path.join(dir, `${name}.identity.json`),
    epochs: path.join(dir, `${name}.epochs.json`),
  };
}

function readIdentity(files: DurableFiles, file: string): VolumeIdentity {
  let parsed: unknown;
  try {
    parsed = JSON.parse((files.read(file) ?? Buffer.alloc(0)).toString('utf8'));
  } catch (error) {
    throw new VolumeMismatchError(`${file}: unreadable volume identity (${(error as Error).message})`);
  }
  const identity = parsed as Partial<VolumeIdentity>;
  if (
    identity.format !== 1 ||
    typeof identity.uuid !== 'string' ||
    typeof identity.name !== 'string' ||
    !Number.isSafeInteger(identity.sizeBytes) ||
    !Number.isSafeInteger(identity.blockSizeBytes)
  ) {
    throw new VolumeMismatchError(`${file}: not a blockmirror volume identity (format 1)`);
  }
  return identity as VolumeIdentity;
}

/**
 * Makes sure the volume's image and identity exist and match the configured size,
 * creating them on first start. Returns the identity.
 */
export function prepareVolumeFiles(
  files: DurableFiles,
  dataDir: string,
  name: string,
  sizeBytes: number,
  blockSizeBytes: number,
): { identity: VolumeIdentity; paths: VolumePaths; created: boolean } {
  const paths = volumePaths(dataDir, name);
  files.makeDir(paths.dir, 'volume-create');

  if (files.kind(paths.identity) === null) {
    if (files.kind(paths.image) !== null) {
      throw new VolumeMismatchError(
        `${paths.image} exists without ${path.basename(paths.identity)}: refusing to adopt an image of unknown origin`,
      );
    }
    // A leftover .img.new is from a first start that crashed before it finished.
    files.writeNewFile(paths.imageNew, { sparseBytes: sizeBytes }, 'volume-create');
    // Durable under its name before the identity is: a start that finds the identity
    // must find the image, by one name or the other.
    files.syncNames(paths.dir, 'volume-create');
    const identity: VolumeIdentity = {
      format: 1,
      uuid: crypto.randomUUID(),
      name,
      sizeBytes,
      blockSizeBytes,
      createdAt: new Date().toISOString(),
    };
    files.replaceFile(paths.identity, JSON.stringify(identity, null, 2) + '\n', 'volume-create');
    files.rename(paths.imageNew, paths.image, 'volume-create');
    return { identity, paths, created: true };
  }

  const identity = readIdentity(files, paths.identity);
  if (identity.name !== name) {
    throw new VolumeMismatchError(`${paths.identity} belongs to volume "${identity.name}", not "${name}"`);
  }
  if (identity.sizeBytes !== sizeBytes) {
    throw new VolumeMismatchError(
      `volume ${name}: the cluster file says size ${formatBytes(sizeBytes)} (${sizeBytes} bytes) but the volume ` +
        `was created with ${formatBytes(identity.sizeBytes)} (${identity.sizeBytes} bytes); ` +
        'resizing is not supported, restore the size in the cluster file',
    );
  }
  if (files.kind(paths.image) === null && files.kind(paths.imageNew) !== null) {
    // Crash between writing the identity and the final rename.
    files.rename(paths.imageNew, paths.image, 'volume-create');
  }
  const actual = files.sizeOf(paths.image);
  if (actual === null) {
    throw new VolumeMismatchError(`volume ${name}: ${paths.image} is missing but its identity exists`);
  }
  if (actual !== identity.sizeBytes) {
    throw new VolumeMismatchError(
      `volume ${name}: ${paths.image} is ${actual} bytes but its identity says ${identity.sizeBytes}`,
    );
  }
  return { identity, paths, created: false };
}

/**
 * The volume's epoch history on this replica: read, or written as epoch 0 under
 * `initialPrimary` when there is none (a first start, or a volume made before epoch
 * histories were kept: no promotion can have happened). A damaged history is refused,
 * never guessed at.
 */
export function prepareEpochHistory(files: DurableFiles, paths: VolumePaths, name: string, initialPrimary: string): EpochHistory {
  const data = files.read(paths.epochs);
  if (data === null) {
    const history = EpochHistory.initial(initialPrimary);
    files.replaceFile(paths.epochs, encodeEpochHistory(history), 'volume-epochs');
    return history;
  }
  const parsed = parseEpochHistory(data);
  if (!(parsed instanceof EpochHistory)) {
    throw new VolumeMismatchError(
      `volume ${name}: ${paths.epochs} is damaged (${parsed.problem}); it says which node is the volume's primary, ` +
        'so the node does not start without it: restore it from a backup of this node, or, if the volume was never ' +
        "promoted, remove it (it is made again with the cluster file's primary in epoch 0)",
    );
  }
  return parsed;
}

