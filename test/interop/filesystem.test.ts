// A real filesystem on a served volume, the way a user would put one there without the
// kernel NBD module: blockmirror -> nbdfuse -> loop device -> ext4. Files written through
// ext4 must survive unmounting, a clean server restart and a full e2fsck, byte for byte.
// The file data must also be in the server's volume image before the restart, so the
// test cannot pass on a cache that outlives the server. Runs as root (mount, losetup);
// anywhere else it fails and says why, it never skips.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { isDeepStrictEqual } from 'node:util';
import {
  AttachedVolume,
  listMounts,
  requireRootAndTools,
  runCleanupSteps,
  runCommand,
  runCommandOk,
  unmountForcefully,
} from '../helpers/fuse.js';
import { makeTempDir, startNode, type TestNode, type VolumeSpec } from '../helpers/node-process.js';

const seed = process.env['BLOCKMIRROR_TEST_SEED'] ?? randomBytes(8).toString('hex');
const volumes: VolumeSpec[] = [{ name: 'vol0', size: '256MiB' }];
const chunkSizeBytes = 1024;

/** Deterministic bytes for one file: AES-256-CTR keystream keyed by the seed and file name. */
function seededBytes(name: string, lengthBytes: number): Buffer {
  const key = createHash('sha256').update(`${seed}/${name}`).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  return Buffer.concat([cipher.update(Buffer.alloc(lengthBytes)), cipher.final()]);
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

type Entry =
  | { path: string; type: 'dir'; mode: number }
  | { path: string; type: 'file'; mode: number; sizeBytes: number; links: number; sha256: string }
  | { path: string; type: 'symlink'; target: string };

/** What ext4 holds under `root`, sorted by path; `lost+found` belongs to mkfs, not to us. */
async function readTree(root: string): Promise<Entry[]> {
  const entries: Entry[] = [];
  const walk = async (relative: string): Promise<void> => {
    for (const name of (await fsp.readdir(path.join(root, relative))).sort()) {
      const child = relative === '' ? name : `${relative}/${name}`;
      if (child === 'lost+found') continue;
      const full = path.join(root, child);
      const stat = await fsp.lstat(full);
      if (stat.isSymbolicLink()) {
        entries.push({ path: child, type: 'symlink', target: await fsp.readlink(full) });
      } else if (stat.isDirectory()) {
        entries.push({ path: child, type: 'dir', mode: stat.mode & 0o7777 });
        await walk(child);
      } else if (stat.isFile()) {
        const data = await fsp.readFile(full);
        entries.push({ path: child, type: 'file', mode: stat.mode & 0o7777, sizeBytes: data.length, links: stat.nlink, sha256: sha256(data) });
      } else {
        throw new Error(`unexpected file type at ${child}`);
      }
    }
  };
  await walk('');
  return entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** Paths that are missing, unexpected or different in `actual`, one line each. */
function treeDifferences(actual: Entry[], expected: Entry[]): string[] {
  const actualByPath = new Map(actual.map((entry) => [entry.path, entry]));
  const expectedPaths = new Set(expected.map((entry) => entry.path));
  const differences: string[] = [];
  for (const want of expected) {
    const got = actualByPath.get(want.path);
    if (got === undefined) differences.push(`missing: ${want.path}`);
    else if (!isDeepStrictEqual(got, want)) differences.push(`changed: ${JSON.stringify(got)} != expected ${JSON.stringify(want)}`);
  }
  for (const got of actual) if (!expectedPaths.has(got.path)) differences.push(`unexpected: ${got.path}`);
  return differences;
}

/**
 * Writes the test's files under `root` and returns what readTree() must find, plus the
 * file contents whose blocks must later be in the volume image. Async I/O only: a
 * blocking call would stop this process from draining the server's log pipe.
 */
async function writeFiles(root: string): Promise<{ expected: Entry[]; contents: Buffer[] }> {
  const expected: Entry[] = [];
  const contents: Buffer[] = [];
  const addFile = async (relative: string, data: Buffer, mode = 0o644): Promise<void> => {
    const full = path.join(root, relative);
    await fsp.writeFile(full, data);
    await fsp.chmod(full, mode);
    expected.push({ path: relative, type: 'file', mode, sizeBytes: data.length, links: 1, sha256: sha256(data) });
    contents.push(data);
  };
  const addDir = async (relative: string, mode = 0o755): Promise<void> => {
    await fsp.mkdir(path.join(root, relative));
    await fsp.chmod(path.join(root, relative), mode);
    expected.push({ path: relative, type: 'dir', mode });
  };

  // Large seeded files: one block-aligned, one not.
  await addFile('random-4MiB.bin', seededBytes('random-4MiB.bin', 4 * 1024 * 1024));
  await addFile('random-odd.bin', seededBytes('random-odd.bin', 3 * 1024 * 1024 + 1234));

  // A file written in pieces and fsynced, with its directory fsynced too.
  const fsyncedData = seededBytes('fsynced.bin', 2 * 1024 * 1024 + 17);
  const handle = await fsp.open(path.join(root, 'fsynced.bin'), 'w', 0o640);
  try {
    for (let offset = 0; offset < fsyncedData.length; offset += 256 * 1024) {
      const chunk = fsyncedData.subarray(offset, offset + 256 * 1024);
      await handle.write(chunk, 0, chunk.length, offset);
    }
    await handle.chmod(0o640);
    await handle.sync();
  } finally {
    await handle.close();
  }
  const rootHandle = await fsp.open(root, 'r');
  try {
    await rootHandle.sync();
  } finally {
    await rootHandle.close();
  }
  expected.push({ path: 'fsynced.bin', type: 'file', mode: 0o640, sizeBytes: fsyncedData.length, links: 1, sha256: sha256(fsyncedData) });
  contents.push(fsyncedData);

  // A directory tree: nesting, sizes around block boundaries, an empty file and an empty
  // directory, unusual modes, a long name, a symlink and a hard link.
  const sizesBytes = [0, 1, 4095, 4096, 4097, 65_537];
  await addDir('tree');
  for (const dir of ['tree/a', 'tree/a/b', 'tree/a/b/c', 'tree/d']) {
    await addDir(dir);
    for (const [index, sizeBytes] of sizesBytes.entries()) {
      const relative = `${dir}/file-${index}.bin`;
      await addFile(relative, seededBytes(relative, sizeBytes));
    }
  }
  await addDir('tree/empty', 0o700);
  await addFile('tree/d/private.bin', seededBytes('private', 10_000), 0o600);
  await addFile(`tree/a/${'long-name-'.repeat(24)}.bin`, seededBytes('long-name', 333));
  await fsp.symlink('a/b/c/file-5.bin', path.join(root, 'tree/link-to-c'));
  expected.push({ path: 'tree/link-to-c', type: 'symlink', target: 'a/b/c/file-5.bin' });
  await fsp.link(path.join(root, 'tree/a/file-5.bin'), path.join(root, 'tree/d/hard-link.bin'));
  const linked = expected.find((entry) => entry.path === 'tree/a/file-5.bin');
  assert.ok(linked?.type === 'file');
  linked.links = 2;
  expected.push({ ...linked, path: 'tree/d/hard-link.bin' });

  return { expected: expected.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)), contents };
}

/**
 * Counts the 1 KiB chunks of `contents` that appear nowhere (1 KiB-aligned) in the volume
 * image. 1 KiB is ext4's smallest block size, and the one mkfs picks for a small volume,
 * so every data block of every file starts at such an offset.
 */
function chunksMissingFromImage(imagePath: string, contents: Buffer[]): number {
  const image = fs.readFileSync(imagePath);
  // Index image chunks by their first 8 bytes, then confirm a candidate byte for byte.
  const offsetsByPrefix = new Map<bigint, number[]>();
  for (let offset = 0; offset + chunkSizeBytes <= image.length; offset += chunkSizeBytes) {
    const prefix = image.readBigUInt64LE(offset);
    if (prefix === 0n) continue;
    const offsets = offsetsByPrefix.get(prefix);
    if (offsets === undefined) offsetsByPrefix.set(prefix, [offset]);
    else offsets.push(offset);
  }
  let missing = 0;
  for (const data of contents) {
    for (let offset = 0; offset + chunkSizeBytes <= data.length; offset += chunkSizeBytes) {
      const chunk = data.subarray(offset, offset + chunkSizeBytes);
      const candidates = offsetsByPrefix.get(chunk.readBigUInt64LE(0)) ?? [];
      if (!candidates.some((at) => image.subarray(at, at + chunkSizeBytes).equals(chunk))) missing += 1;
    }
  }
  return missing;
}

test('filesystem: ext4 on nbdfuse + loop survives unmount, a clean restart and e2fsck -fn', async (t) => {
  requireRootAndTools(['nbdfuse', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'umount']);
  t.diagnostic(`seed ${seed} (replay with BLOCKMIRROR_TEST_SEED=${seed})`);

  // Resolved, because /proc/self/mountinfo (how mounts are found) lists real paths.
  const workDir = fs.realpathSync(makeTempDir('blockmirror-fs-'));
  const fuseDir = path.join(workDir, 'fuse');
  const mountDir = path.join(workDir, 'mnt');
  fs.mkdirSync(fuseDir);
  fs.mkdirSync(mountDir);

  let node: TestNode | undefined;
  let attached: AttachedVolume | undefined;
  const timingsMs: Record<string, number> = {};
  const phase = async <T>(name: string, body: () => Promise<T>): Promise<T> => {
    const started = performance.now();
    try {
      return await body();
    } finally {
      timingsMs[name] = Math.round(performance.now() - started);
    }
  };
  let bodyFailed = false;

  try {
    node = await phase('start server', () => startNode({ volumes }));
    const firstNode = node;
    attached = await phase('attach (nbdfuse + losetup)', () => AttachedVolume.attach(firstNode.uri('vol0'), fuseDir));
    const device = attached.device;
    await phase('mkfs.ext4', () => runCommandOk('mkfs.ext4', ['-q', '-F', device], { timeoutMs: 60_000 }));
    await runCommandOk('mount', ['-t', 'ext4', device, mountDir], { timeoutMs: 20_000 });

    const { expected, contents } = await phase('write files', () => writeFiles(mountDir));
    assert.deepEqual(treeDifferences(await readTree(mountDir), expected), [], 'the tree as written, read back before unmounting');

    await phase('umount ext4', () => runCommandOk('umount', [mountDir], { timeoutMs: 30_000 }));
    const firstAttach = attached;
    await phase('detach (losetup -d + nbdfuse exit)', () => firstAttach.detach());
    attached = undefined;

    const firstExit = await phase('SIGTERM server', () => firstNode.stop('SIGTERM'));
    assert.deepEqual(firstExit, { code: 0, signal: null }, `server exit after SIGTERM; logs:\n${firstNode.logs}`);
    const missingChunks = await phase('check image', async () => chunksMissingFromImage(firstNode.imagePath('vol0'), contents));
    assert.equal(missingChunks, 0, 'every full 1 KiB chunk of every written file is in the volume image after a clean stop');

    node = await phase('restart server', () => startNode({ dir: firstNode.dir, volumes }));
    const secondNode = node;
    attached = await phase('re-attach', () => AttachedVolume.attach(secondNode.uri('vol0'), fuseDir));
    const reattached = attached.device;
    const fsck = await phase('e2fsck -fn', () => runCommand('e2fsck', ['-fn', reattached], { timeoutMs: 60_000 }));
    assert.equal(fsck.code, 0, `e2fsck -fn ${reattached} must find a clean filesystem:\n${fsck.stdout}\n${fsck.stderr}`);

    await runCommandOk('mount', ['-t', 'ext4', reattached, mountDir], { timeoutMs: 20_000 });
    const after = await phase('read back', () => readTree(mountDir));
    assert.deepEqual(treeDifferences(after, expected), [], `the tree and every sha256 after restart (seed ${seed})`);
  } catch (error) {
    bodyFailed = true;
    throw error;
  } finally {
    // Reverse order of set-up; every step runs even when one before it failed.
    const failures = await runCleanupSteps([
      ['umount ext4', () => unmountForcefully(mountDir)],
      ...(attached?.cleanupSteps() ?? []),
      [
        'stop server',
        async () => {
          if (node === undefined) return;
          const exit = await node.stop('SIGTERM');
          if (exit.code !== 0) throw new Error(`server exit status ${exit.code ?? exit.signal}, not 0, after SIGTERM; logs:\n${node.logs}`);
        },
      ],
      [
        'remove temp dirs',
        async () => {
          const dirs = [workDir, ...(node === undefined ? [] : [node.dir])];
          const stillMounted = listMounts().filter((mount) => dirs.some((dir) => mount.mountPoint.startsWith(`${dir}/`)));
          if (stillMounted.length > 0) {
            throw new Error(`left in place, still mounted: ${stillMounted.map((mount) => mount.mountPoint).join(', ')}`);
          }
          for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
        },
      ],
    ]);
    t.diagnostic(`timings ms: ${JSON.stringify(timingsMs)}`);
    if (failures.length > 0) {
      for (const failure of failures) t.diagnostic(failure.message);
      // A test that passed but leaked a mount, loop device or process still fails.
      if (!bodyFailed) throw new AggregateError(failures, `cleanup failed: ${failures.map((failure) => failure.message).join('; ')}`);
    }
  }
});
