// The files of one volume on a node: `<dataDir>/volumes/<name>.img`, the raw volume
// byte for byte (created sparse), and `<name>.identity.json` beside it with the
// volume's uuid, size and block size. The identity decides: a config that names another
// size is refused, never met by truncating or growing the image.
//
// First creation is crash-safe: the image is made as `<name>.img.new`, synced, the
// identity is written atomically (temporary file, fsync, rename, fsync of the
// directory), and only then is the image renamed into place.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { VolumeMismatchError } from '../lib/errors.js';
import { formatBytes } from '../lib/size.js';

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
}

export function volumePaths(dataDir: string, name: string): VolumePaths {
  const dir = path.join(dataDir, 'volumes');
  return {
    dir,
    image: path.join(dir, `${name}.img`),
    imageNew: path.join(dir, `${name}.img.new`),
    identity: path.join(dir, `${name}.identity.json`),
  };
}

export function writeFileAtomic(file: string, contents: string | Buffer): void {
  const temporary = `${file}.tmp`;
  const fd = fs.openSync(temporary, 'w', 0o644);
  try {
    fs.writeSync(fd, typeof contents === 'string' ? Buffer.from(contents, 'utf8') : contents);
    fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(temporary, file);
  syncDirectory(path.dirname(file));
}

export function syncDirectory(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function readIdentity(file: string): VolumeIdentity {
  let parsed: unknown;
  try {
    parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
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
  dataDir: string,
  name: string,
  sizeBytes: number,
  blockSizeBytes: number,
): { identity: VolumeIdentity; paths: VolumePaths; created: boolean } {
  const paths = volumePaths(dataDir, name);
  fs.mkdirSync(paths.dir, { recursive: true });

  if (!fs.existsSync(paths.identity)) {
    if (fs.existsSync(paths.image)) {
      throw new VolumeMismatchError(
        `${paths.image} exists without ${path.basename(paths.identity)}: refusing to adopt an image of unknown origin`,
      );
    }
    // A leftover .img.new is from a first start that crashed before it finished.
    const fd = fs.openSync(paths.imageNew, 'w', 0o644);
    try {
      fs.ftruncateSync(fd, sizeBytes);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    const identity: VolumeIdentity = {
      format: 1,
      uuid: crypto.randomUUID(),
      name,
      sizeBytes,
      blockSizeBytes,
      createdAt: new Date().toISOString(),
    };
    writeFileAtomic(paths.identity, JSON.stringify(identity, null, 2) + '\n');
    fs.renameSync(paths.imageNew, paths.image);
    syncDirectory(paths.dir);
    return { identity, paths, created: true };
  }

  const identity = readIdentity(paths.identity);
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
  if (!fs.existsSync(paths.image) && fs.existsSync(paths.imageNew)) {
    // Crash between writing the identity and the final rename.
    fs.renameSync(paths.imageNew, paths.image);
    syncDirectory(paths.dir);
  }
  if (!fs.existsSync(paths.image)) {
    throw new VolumeMismatchError(`volume ${name}: ${paths.image} is missing but its identity exists`);
  }
  const actual = fs.statSync(paths.image).size;
  if (actual !== identity.sizeBytes) {
    throw new VolumeMismatchError(
      `volume ${name}: ${paths.image} is ${actual} bytes but its identity says ${identity.sizeBytes}`,
    );
  }
  return { identity, paths, created: false };
}
