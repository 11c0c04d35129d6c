// Interop with the real NBD clients (nbdinfo, qemu-io, qemu-img, nbdcopy, fio, libnbd)
// against a real `blockmirror serve` process on loopback. Every test checks what a user
// of that client would notice: the fields it reports, its exit code, the bytes it reads
// back, and the bytes that end up in the volume's image file once the server has stopped.
//
// Sizes are kept small so that the whole file runs in well under three minutes on two
// cores; nothing here asserts on timing.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import {
  makeTempDir,
  run,
  runOk,
  startNode,
  type RunResult,
  type TestNode,
  type VolumeSpec,
} from '../helpers/node-process.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Debian's interpreter: the one that has python3-libnbd (see nbd.md §5). */
const python = '/usr/bin/python3';
const toolTimeoutMs = 90_000;

// ---------------------------------------------------------------------------------------
// Helpers

/** Starts a node, runs `body`, and always stops the node and removes its directory. */
async function withNode<T>(volumes: VolumeSpec[], body: (node: TestNode) => Promise<T>): Promise<T> {
  const node = await startNode({ volumes });
  try {
    return await body(node);
  } finally {
    await node.stop('SIGTERM');
    fs.rmSync(node.dir, { recursive: true, force: true });
  }
}

/** Runs `body` with a scratch directory for client-side files, removed afterwards. */
async function withScratch<T>(body: (dir: string) => Promise<T>): Promise<T> {
  const dir = makeTempDir('blockmirror-interop-');
  try {
    return await body(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Stops the node with SIGTERM and asserts that it exited cleanly (code 0, no signal). */
async function stopCleanly(node: TestNode): Promise<void> {
  const exit = await node.stop('SIGTERM');
  assert.deepEqual(exit, { code: 0, signal: null }, `server did not exit cleanly:\n${node.logs}`);
}

/**
 * Runs qemu-io on a raw NBD image. qemu-io's exit status has not always reflected a
 * failed `read -P` check, so the pattern-failure message is checked as well.
 */
async function qemuIo(uri: string, commands: string[], options: string[] = []): Promise<string> {
  const args = [...options, '-f', 'raw', uri, ...commands.flatMap((command) => ['-c', command])];
  const result = await runOk('qemu-io', args, { timeoutMs: toolTimeoutMs });
  assert.ok(
    !result.stdout.includes('Pattern verification failed'),
    `qemu-io ${args.join(' ')} found wrong data:\n${result.stdout}`,
  );
  return result.stdout;
}

/** Asserts two buffers are byte-for-byte equal, naming the first differing offset. */
function assertSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  if (actual.equals(expected)) return;
  let at = 0;
  while (at < actual.length && actual[at] === expected[at]) at += 1;
  const got = actual[at]?.toString(16);
  const want = expected[at]?.toString(16);
  assert.fail(`${what}: first difference at offset ${at}: got 0x${got}, expected 0x${want}`);
}

/** Offset of the first non-zero byte of a file in [start, end), or -1. */
function firstNonZeroByte(filePath: string, start: number, end: number): number {
  const fd = fs.openSync(filePath, 'r');
  try {
    const buffer = Buffer.alloc(8 * MiB);
    const zeroes = Buffer.alloc(buffer.length);
    for (let at = start; at < end; ) {
      const count = fs.readSync(fd, buffer, 0, Math.min(buffer.length, end - at), at);
      assert.ok(count > 0, `${filePath} ends before ${end}`);
      // Buffer.equals is a memcmp; the byte-by-byte search runs only on a mismatch.
      if (!buffer.subarray(0, count).equals(zeroes.subarray(0, count))) {
        return at + buffer.subarray(0, count).findIndex((byte) => byte !== 0);
      }
      at += count;
    }
    return -1;
  } finally {
    fs.closeSync(fd);
  }
}

function readRange(filePath: string, offset: number, lengthBytes: number): Buffer {
  const fd = fs.openSync(filePath, 'r');
  try {
    const buffer = Buffer.alloc(lengthBytes);
    assert.equal(fs.readSync(fd, buffer, 0, lengthBytes, offset), lengthBytes);
    return buffer;
  } finally {
    fs.closeSync(fd);
  }
}

/** Bytes the file system has actually allocated for a file. */
function allocatedBytes(filePath: string): number {
  return fs.statSync(filePath).blocks * 512;
}

interface SourceRegion {
  offset: number;
  lengthBytes: number;
}

/**
 * Random data in a few regions (one of them unaligned) and holes everywhere else: the
 * shape of a real disk image, so copies exercise both data and zero/hole paths.
 */
const sourceRegions: SourceRegion[] = [
  { offset: 0, lengthBytes: 1 * MiB },
  { offset: 5 * MiB + 1000, lengthBytes: 300_001 },
  { offset: 20 * MiB, lengthBytes: 3 * MiB },
  { offset: 63 * MiB, lengthBytes: 1 * MiB },
];

/** Writes a sparse source file of `sizeBytes` and returns its full contents. */
function makeSparseSource(filePath: string, sizeBytes: number): Buffer {
  const image = Buffer.alloc(sizeBytes);
  const fd = fs.openSync(filePath, 'w');
  try {
    fs.ftruncateSync(fd, sizeBytes);
    for (const region of sourceRegions) {
      crypto.randomFillSync(image, region.offset, region.lengthBytes);
      fs.writeSync(fd, image, region.offset, region.lengthBytes, region.offset);
    }
  } finally {
    fs.closeSync(fd);
  }
  return image;
}

interface NbdinfoExport {
  'export-name': string;
  description?: string;
  contexts: string[];
  is_read_only: boolean;
  can_cache: boolean;
  can_df: boolean;
  can_fast_zero: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_multi_conn: boolean;
  can_trim: boolean;
  can_zero: boolean;
  block_size_minimum: number;
  block_size_preferred: number;
  block_size_maximum: number;
  'export-size': number;
}

async function nbdinfoJson(args: string[]): Promise<NbdinfoExport[]> {
  const result = await runOk('nbdinfo', ['--json', ...args], { timeoutMs: toolTimeoutMs });
  const parsed = JSON.parse(result.stdout) as { exports: NbdinfoExport[] };
  return parsed.exports;
}

interface MapExtent {
  offset: number;
  length: number;
  type: number;
}

/** `nbdinfo --map` of base:allocation, with adjacent extents of one type merged. */
async function allocationMap(uri: string): Promise<MapExtent[]> {
  const result = await runOk('nbdinfo', ['--map', '--json', uri], { timeoutMs: toolTimeoutMs });
  const extents = JSON.parse(result.stdout) as MapExtent[];
  const merged: MapExtent[] = [];
  for (const extent of extents) {
    const last = merged[merged.length - 1];
    if (last !== undefined && last.type === extent.type && last.offset + last.length === extent.offset) {
      last.length += extent.length;
    } else {
      merged.push({ offset: extent.offset, length: extent.length, type: extent.type });
    }
  }
  return merged;
}

/** The map types that cover any byte of [offset, offset + lengthBytes). */
function typesIn(map: MapExtent[], offset: number, lengthBytes: number): number[] {
  const types = new Set<number>();
  for (const extent of map) {
    if (extent.offset < offset + lengthBytes && extent.offset + extent.length > offset) types.add(extent.type);
  }
  return [...types].sort();
}

const MAP_DATA = 0;
const MAP_HOLE_ZERO = 3;

interface FioJob {
  error: number;
  read: { io_bytes: number; total_ios: number };
  write: { io_bytes: number; total_ios: number };
}

/** Runs fio with the nbd engine; its JSON goes to a file because the engine prints to stdout. */
async function fio(cwd: string, name: string, args: string[]): Promise<{ result: RunResult; job: FioJob }> {
  const output = path.join(cwd, `${name}.json`);
  const fioArgs = [`--name=${name}`, '--ioengine=nbd', ...args, '--output-format=json', `--output=${output}`];
  const result = await run('fio', fioArgs, { timeoutMs: toolTimeoutMs, cwd });
  const text = fs.existsSync(output) ? fs.readFileSync(output, 'utf8') : '';
  // fio may print notices before the JSON document.
  const start = text.indexOf('{');
  assert.ok(start >= 0, `fio wrote no JSON (exit ${result.code}):\n${result.stdout}\n${result.stderr}`);
  const parsed = JSON.parse(text.slice(start)) as { jobs: FioJob[] };
  const job = parsed.jobs[0];
  assert.ok(job !== undefined, 'fio reported no job');
  return { result, job };
}

// ---------------------------------------------------------------------------------------
// 1. nbdinfo

test('nbdinfo: reported size, block sizes, flags and contexts; read-only export; export list', async () => {
  const volumes: VolumeSpec[] = [
    { name: 'vol0', size: '256MiB', description: 'primary data disk' },
    { name: 'golden', size: '16MiB', readOnly: true, description: 'golden image (read-only)' },
  ];
  await withNode(volumes, async (node) => {
    const [writable] = await nbdinfoJson([node.uri('vol0')]);
    assert.ok(writable !== undefined);
    assert.equal(writable['export-name'], 'vol0');
    assert.equal(writable['export-size'], 256 * MiB);
    assert.equal(writable.block_size_minimum, 1);
    assert.equal(writable.block_size_preferred, 4096);
    assert.equal(writable.block_size_maximum, 32 * MiB);
    assert.equal(writable.is_read_only, false);
    for (const flag of [
      'can_flush',
      'can_fua',
      'can_trim',
      'can_zero',
      'can_fast_zero',
      'can_multi_conn',
      'can_cache',
      'can_df',
    ] as const) {
      assert.equal(writable[flag], true, `${flag} on vol0`);
    }
    assert.ok(writable.contexts.includes('base:allocation'), `contexts: ${writable.contexts.join(', ')}`);

    const [readOnly] = await nbdinfoJson([node.uri('golden')]);
    assert.ok(readOnly !== undefined);
    assert.equal(readOnly['export-size'], 16 * MiB);
    assert.equal(readOnly.is_read_only, true);
    assert.equal(readOnly.can_trim, false);
    assert.equal(readOnly.can_zero, false);
    assert.equal(readOnly.can_fast_zero, false);

    // A writer is turned away from the read-only export and its image stays untouched.
    const refused = await run('qemu-io', ['-f', 'raw', node.uri('golden'), '-c', 'write -P 0x42 0 4k'], {
      timeoutMs: toolTimeoutMs,
    });
    assert.notEqual(refused.code, 0, `qemu-io wrote to a read-only export:\n${refused.stdout}`);
    assert.equal(firstNonZeroByte(node.imagePath('golden'), 0, 16 * MiB), -1);

    // Listing the server shows every configured volume with its description.
    const listUri = `nbd://127.0.0.1:${node.nbdPort}`;
    const listed = await nbdinfoJson(['--list', listUri]);
    assert.deepEqual(
      listed.map((entry) => [entry['export-name'], entry.description, entry['export-size']]).sort(),
      [
        ['golden', 'golden image (read-only)', 16 * MiB],
        ['vol0', 'primary data disk', 256 * MiB],
      ],
    );
    const text = await runOk('nbdinfo', ['--list', listUri], { timeoutMs: toolTimeoutMs });
    for (const volume of volumes) {
      const description = escapeRegExp(volume.description ?? '');
      assert.match(text.stdout, new RegExp(`export="${volume.name}":\\s*\\n\\s*description: ${description}\\n`));
    }
  });
});

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

// ---------------------------------------------------------------------------------------
// 2. qemu-io

test('qemu-io: patterns, aio writes, zeroes with and without unmap, discard, flush; image file bytes', async () => {
  const sizeBytes = 64 * MiB;
  const expected = Buffer.alloc(sizeBytes);
  const fill = (byte: number, offset: number, lengthBytes: number): void => {
    expected.fill(byte, offset, offset + lengthBytes);
  };
  const unalignedOffset = 32 * MiB + 123;
  await withNode([{ name: 'vol0', size: '64MiB' }], async (node) => {
    const uri = node.uri('vol0');
    await qemuIo(uri, [
      // Plain write and read-back, plus a write with FUA and an unaligned write.
      'write -P 0xab 0 1M',
      'read -P 0xab 0 1M',
      'write -f -P 0x66 40M 64k',
      'read -P 0x66 40M 64k',
      `write -P 0x5e ${unalignedOffset} 5000`,
      `read -P 0x5e ${unalignedOffset} 5000`,
      // Several writes in flight at once, then one flush for all of them.
      'aio_write -P 0x11 8M 64k',
      'aio_write -P 0x12 9M 64k',
      'aio_write -P 0x13 10M 4k',
      'aio_write -P 0x14 10244k 4k',
      'aio_flush',
      'read -P 0x11 8M 64k',
      'read -P 0x12 9M 64k',
      'read -P 0x13 10M 4k',
      'read -P 0x14 10244k 4k',
      // 16M..18M: data, then zero (no unmap), zero with unmap, discard; the last 512k stays.
      // The spec leaves trimmed bytes unspecified; this server punches a hole, so zeroes.
      'write -P 0xcd 16M 2M',
      'write -z 16M 512k',
      'write -z -u 16896k 512k',
      'discard 17M 512k',
      'flush',
      'read -P 0 16M 1536k',
      'read -P 0xcd 17920k 512k',
      // Untouched space reads as zeroes.
      'read -P 0 1M 7M',
    ]);
    fill(0xab, 0, 1 * MiB);
    fill(0x66, 40 * MiB, 64 * KiB);
    fill(0x5e, unalignedOffset, 5000);
    fill(0x11, 8 * MiB, 64 * KiB);
    fill(0x12, 9 * MiB, 64 * KiB);
    fill(0x13, 10 * MiB, 4 * KiB);
    fill(0x14, 10 * MiB + 4 * KiB, 4 * KiB);
    fill(0xcd, 17 * MiB + 512 * KiB, 512 * KiB);

    // A second session (a new connection) sees the same bytes.
    await qemuIo(
      uri,
      ['read -P 0xab 0 1M', 'read -P 0x14 10244k 4k', 'read -P 0 16M 1536k', 'read -P 0xcd 17920k 512k'],
      ['-r'],
    );

    // This server punches holes for zeroes that may unmap and for discard, so a thin
    // volume gives that space back; base:allocation reports it as hole,zero.
    const map = await allocationMap(uri);
    assert.deepEqual(typesIn(map, 16 * MiB + 512 * KiB, 1 * MiB), [MAP_HOLE_ZERO], JSON.stringify(map));
    assert.deepEqual(typesIn(map, 0, 1 * MiB), [MAP_DATA], JSON.stringify(map));
    assert.deepEqual(typesIn(map, 17 * MiB + 512 * KiB, 512 * KiB), [MAP_DATA], JSON.stringify(map));

    await stopCleanly(node);
    assertSameBytes(fs.readFileSync(node.imagePath('vol0')), expected, 'image file after qemu-io session');
  });
});

// ---------------------------------------------------------------------------------------
// 3. qemu-img

test('qemu-img: convert into the volume, compare, convert out; a one-byte change makes compare fail', async () => {
  const sizeBytes = 64 * MiB;
  await withScratch(async (scratch) => {
    const sourcePath = path.join(scratch, 'src.img');
    const backPath = path.join(scratch, 'back.img');
    const source = makeSparseSource(sourcePath, sizeBytes);
    await withNode([{ name: 'vol0', size: '64MiB' }], async (node) => {
      const uri = node.uri('vol0');
      await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', sourcePath, uri], {
        timeoutMs: toolTimeoutMs,
      });

      const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', sourcePath, uri], {
        timeoutMs: toolTimeoutMs,
      });
      assert.equal(same.code, 0, `qemu-img compare: ${same.stdout}${same.stderr}`);
      assert.match(same.stdout, /Images are identical/);

      await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, backPath], { timeoutMs: toolTimeoutMs });
      assertSameBytes(fs.readFileSync(backPath), source, 'qemu-img convert out of the volume');

      // Change one byte inside the unaligned region; compare must now find a difference there.
      const changedAt = 5 * MiB + 1000 + 4321;
      const newByte = (source[changedAt] ?? 0) ^ 0xff;
      await qemuIo(uri, [`write -P 0x${newByte.toString(16)} ${changedAt} 1`]);
      const differs = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', sourcePath, uri], {
        timeoutMs: toolTimeoutMs,
      });
      assert.equal(differs.code, 1, `qemu-img compare after a one-byte change: ${differs.stdout}${differs.stderr}`);
      const reported = /Content mismatch at offset (\d+)!/.exec(differs.stdout);
      assert.ok(reported?.[1] !== undefined, differs.stdout);
      // qemu-img reports the start of the 512-byte sector holding the difference.
      const reportedOffset = Number(reported[1]);
      assert.ok(reportedOffset <= changedAt && reportedOffset > changedAt - 512, `reported ${reportedOffset}`);

      await stopCleanly(node);
      const image = fs.readFileSync(node.imagePath('vol0'));
      assert.equal(image[changedAt], newByte);
      image[changedAt] = source[changedAt] ?? 0;
      assertSameBytes(image, source, 'image file after convert');
    });
  });
});

// ---------------------------------------------------------------------------------------
// 4. nbdcopy

test('nbdcopy: four connections into and out of the volume, round trip byte-equal', async () => {
  await withScratch(async (scratch) => {
    const sourcePath = path.join(scratch, 'src.img');
    const backPath = path.join(scratch, 'back.img');
    const source = makeSparseSource(sourcePath, 64 * MiB);
    await withNode([{ name: 'vol0', size: '64MiB' }], async (node) => {
      const uri = node.uri('vol0');
      for (const [from, to] of [
        [sourcePath, uri],
        [uri, backPath],
      ] as const) {
        // -v makes nbdcopy report the connections it really used (it falls back to one
        // unless both ends allow multi-conn) and log each libnbd connect.
        const copy = await runOk('nbdcopy', ['-v', '--connections=4', '--threads=4', from, to], {
          timeoutMs: toolTimeoutMs,
        });
        assert.match(copy.stderr, /connections=4 /, `nbdcopy ${from} ${to} did not use 4 connections`);
        assert.equal(copy.stderr.match(/nbd_connect_uri: enter/g)?.length, 4);
      }
      assertSameBytes(fs.readFileSync(backPath), source, 'nbdcopy round trip');
      await stopCleanly(node);
      assertSameBytes(fs.readFileSync(node.imagePath('vol0')), source, 'image file after nbdcopy');
    });
  });
});

// ---------------------------------------------------------------------------------------
// 5. Sparseness

test('sparse volume: map shows data and hole,zero; qemu-img convert and nbdcopy give sparse files', async () => {
  const sizeBytes = 1 * GiB;
  const dataOffset = 512 * MiB;
  const dataBytes = 2 * MiB;
  await withScratch(async (scratch) => {
    await withNode([{ name: 'big', size: '1GiB' }], async (node) => {
      const uri = node.uri('big');
      await qemuIo(uri, [`write -P 0x3c ${dataOffset} ${dataBytes}`]);

      assert.deepEqual(await allocationMap(uri), [
        { offset: 0, length: dataOffset, type: MAP_HOLE_ZERO },
        { offset: dataOffset, length: dataBytes, type: MAP_DATA },
        { offset: dataOffset + dataBytes, length: sizeBytes - dataOffset - dataBytes, type: MAP_HOLE_ZERO },
      ]);

      const converted = path.join(scratch, 'qemu-img.img');
      await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, converted], { timeoutMs: toolTimeoutMs });
      const copied = path.join(scratch, 'nbdcopy.img');
      await runOk('nbdcopy', ['--connections=4', '--threads=4', uri, copied], { timeoutMs: toolTimeoutMs });

      const pattern = Buffer.alloc(dataBytes, 0x3c);
      for (const file of [converted, copied]) {
        const name = path.basename(file);
        assert.equal(fs.statSync(file).size, sizeBytes, name);
        const allocated = allocatedBytes(file);
        assert.ok(allocated < 16 * MiB, `${name} allocates ${allocated} bytes for 2 MiB of data`);
        assertSameBytes(readRange(file, dataOffset, dataBytes), pattern, `${name} data region`);
        assert.equal(firstNonZeroByte(file, 0, dataOffset), -1, `${name} before the data`);
        assert.equal(firstNonZeroByte(file, dataOffset + dataBytes, sizeBytes), -1, `${name} after the data`);
      }

      await stopCleanly(node);
      const image = node.imagePath('big');
      assert.ok(allocatedBytes(image) < 16 * MiB, `the volume's image allocates ${allocatedBytes(image)} bytes`);
    });
  });
});

// ---------------------------------------------------------------------------------------
// 6. fio

test('fio: random writes and a mixed run verified with crc32c; verification catches a corrupted block', async () => {
  const blockBytes = 4 * KiB;
  const runBytes = 32 * MiB;
  const blocks = runBytes / blockBytes;
  await withScratch(async (scratch) => {
    await withNode([{ name: 'vol0', size: '128MiB' }], async (node) => {
      const uri = node.uri('vol0');
      const common = [`--uri=${uri}`, '--bs=4k', '--iodepth=16', `--size=${runBytes}`, '--verify=crc32c'];

      // Every block carries a header (offset, length, seed) and a crc32c of its contents;
      // the verify pass reads each block back and fails the job (EILSEQ, exit 1) on any
      // block whose header or checksum does not match.
      const write = await fio(scratch, 'w', [...common, '--rw=randwrite', '--do_verify=1']);
      assert.equal(write.result.code, 0, `fio randwrite: ${write.result.stderr}`);
      assert.equal(write.job.error, 0);
      assert.equal(write.job.write.io_bytes, runBytes);
      // The verify pass read every block that was written.
      assert.equal(write.job.read.io_bytes, runBytes);

      // Replaying the same job in verify-only mode passes on untouched data...
      const replay = await fio(scratch, 'w', [...common, '--rw=randwrite', '--verify_only']);
      assert.equal(replay.result.code, 0, `fio verify_only: ${replay.result.stderr}`);
      assert.equal(replay.job.error, 0);
      assert.equal(replay.job.read.io_bytes, runBytes);
      // ...and fails once one block is overwritten behind fio's back.
      await qemuIo(uri, [`write -P 0 ${1 * MiB} 4k`]);
      const corrupted = await fio(scratch, 'w', [...common, '--rw=randwrite', '--verify_only']);
      assert.notEqual(corrupted.result.code, 0, 'fio verify did not notice a corrupted block');
      assert.notEqual(corrupted.job.error, 0);
      assert.match(corrupted.result.stderr, /verify: bad magic header/);

      // Mixed random reads and writes on another range, then a verify pass over the writes.
      const mixedArgs = ['--rw=randrw', '--rwmixread=50', `--offset=${64 * MiB}`, '--do_verify=1'];
      const mixed = await fio(scratch, 'm', [...common, ...mixedArgs]);
      assert.equal(mixed.result.code, 0, `fio randrw: ${mixed.result.stderr}`);
      assert.equal(mixed.job.error, 0);
      assert.ok(mixed.job.write.total_ios > 0 && mixed.job.write.total_ios < blocks, JSON.stringify(mixed.job.write));
      // Each block is touched once (read or written); the verify pass then reads every
      // written block, so the reads add up to every block of the range.
      assert.equal(mixed.job.read.total_ios, blocks);
    });
  });
});

// ---------------------------------------------------------------------------------------
// 7. Multi-conn

const multiConnScript = `
import json, subprocess, sys
import nbd

uri = sys.argv[1]
writer = nbd.NBD()
writer.connect_uri(uri)
reader = nbd.NBD()
reader.connect_uri(uri)
out = {"multiConn": [writer.can_multi_conn(), reader.can_multi_conn()]}

# A write on one connection, neither flushed nor FUA, read on the other while both are open.
writer.pwrite(b"\\x77" * 65536, 0)
out["readerSees0x77"] = reader.pread(65536, 0).count(0x77)

# A third client (qemu-io, its own connection) reads it too while the writer is still open.
qemu = subprocess.run(
    ["qemu-io", "-r", "-f", "raw", uri, "-c", "read -P 0x77 0 64k"],
    capture_output=True, text=True, timeout=60)
out["qemuIo"] = {"code": qemu.returncode, "stdout": qemu.stdout, "stderr": qemu.stderr}

# The other direction, with the flush sent on the connection that did not write.
reader.pwrite(b"\\x88" * 65536, 1048576)
writer.flush()
out["writerSees0x88"] = writer.pread(65536, 1048576).count(0x88)

writer.shutdown()
reader.shutdown()
print(json.dumps(out))
`;

interface MultiConnReport {
  multiConn: boolean[];
  readerSees0x77: number;
  qemuIo: { code: number; stdout: string; stderr: string };
  writerSees0x88: number;
}

test('multi-conn: a write on one connection is seen on others; nbdcopy --flush on 4 connections lands', async () => {
  await withScratch(async (scratch) => {
    const sourcePath = path.join(scratch, 'src.img');
    const source = makeSparseSource(sourcePath, 64 * MiB);
    await withNode([{ name: 'vol0', size: '64MiB' }], async (node) => {
      const uri = node.uri('vol0');
      const script = await runOk(python, ['-c', multiConnScript, uri], { timeoutMs: toolTimeoutMs });
      const report = JSON.parse(script.stdout) as MultiConnReport;
      assert.deepEqual(report.multiConn, [true, true]);
      assert.equal(report.readerSees0x77, 64 * KiB);
      assert.equal(report.qemuIo.code, 0, report.qemuIo.stderr);
      assert.ok(!report.qemuIo.stdout.includes('Pattern verification failed'), report.qemuIo.stdout);
      assert.equal(report.writerSees0x88, 64 * KiB);

      const copy = await runOk('nbdcopy', ['-v', '--connections=4', '--threads=4', '--flush', sourcePath, uri], {
        timeoutMs: toolTimeoutMs,
      });
      assert.match(copy.stderr, /connections=4 /);
      // --flush sends one FLUSH on each connection.
      assert.equal(copy.stderr.match(/nbd_flush: enter/g)?.length, 4);

      await stopCleanly(node);
      assertSameBytes(fs.readFileSync(node.imagePath('vol0')), source, 'image file after nbdcopy --flush and SIGTERM');
    });
  });
});

// ---------------------------------------------------------------------------------------
// 8. Restart

test('restart: data written before a SIGTERM is read back after the node starts again', async () => {
  const volumes: VolumeSpec[] = [{ name: 'vol0', size: '64MiB', description: 'survives restarts' }];
  const first = await startNode({ volumes });
  const dir = first.dir;
  try {
    await qemuIo(first.uri('vol0'), ['write -P 0x42 1M 256k', 'write -P 0x43 3000001 777']);
    await stopCleanly(first);

    const second = await startNode({ dir, volumes });
    try {
      await qemuIo(second.uri('vol0'), [
        'read -P 0x42 1M 256k',
        'read -P 0x43 3000001 777',
        'read -P 0 0 1M',
        'read -P 0 1280k 1M',
      ]);
      const [info] = await nbdinfoJson([second.uri('vol0')]);
      assert.equal(info?.['export-size'], 64 * MiB);
      assert.equal(info?.description, 'survives restarts');
      await stopCleanly(second);
    } finally {
      await second.stop('SIGTERM');
    }
  } finally {
    await first.stop('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
