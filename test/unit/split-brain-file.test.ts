// The split-brain file (src/storage/split-brain-file.ts), in which the copy that lost a
// split brain keeps its writes, and the commands that read it (`blockmirror split-brain
// show` and `extract`). What matters to an operator: every byte saved comes back at its
// offset, a saved file is never overwritten, a crash while saving leaves the whole file
// or none, and any damage is refused with the file and the byte where it starts, before
// anything is written from it.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, test } from 'node:test';
import { AssertionError } from '../../src/lib/assert.js';
import { BlockmirrorError } from '../../src/lib/errors.js';
import { MemoryFileSystem } from '../../src/io/memory-file-system.js';
import { alignedEntryBytes, ENTRY_HEADER_BYTES } from '../../src/protocol/log-entry.js';
import { DurableFiles } from '../../src/storage/durable-files.js';
import {
  numberedFileName,
  openSplitBrainFile,
  recordPieces,
  splitBrainDir,
  splitBrainFileName,
  SPLIT_BRAIN_HEADER_BYTES,
  SPLIT_BRAIN_META_AT,
  writeSplitBrainFile,
  type SplitBrainMeta,
  type SplitBrainRecord,
} from '../../src/storage/split-brain-file.js';
import { exploreCrashes } from '../helpers/crash-explorer.js';
import { Prng } from './prng.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The `blockmirror` command: dist/test/unit -> bin/blockmirror.cjs (which runs dist/src/cli/main.js). */
const cliPath = path.resolve(here, '../../../bin/blockmirror.cjs');

const KiB = 1024;
const MiB = 1024 * KiB;
const files = new DurableFiles();
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'blockmirror-split-brain-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

/** The loser's volume: 4 MiB of seeded bytes, so that every range saved is distinct. */
const volume = Buffer.alloc(4 * MiB);
{
  const random = new Prng(0x5b_f1_1e_01);
  for (let at = 0; at < volume.length; at += 4) volume.writeUInt32LE(random.u32(), at);
}
const readVolume = async (offset: number, lengthBytes: number): Promise<Buffer> => Buffer.from(volume.subarray(offset, offset + lengthBytes));

const meta: SplitBrainMeta = {
  volume: 'vol0',
  volumeId: 7,
  node: 'b',
  winner: 'a',
  epoch: 3,
  sharedSeq: 120,
  lastSeq: 131,
  savedAt: '2025-01-02T03:04:05.000Z',
  what: "node b's bytes of the ranges it wrote in epoch 3 after entry 120, as its volume held them",
};

/** Odd sizes; the second is over 1 MiB (two records); the last is empty (none). */
const extents = [
  { offset: 4097, lengthBytes: 333 },
  { offset: 64 * KiB, lengthBytes: MiB + 4095 },
  { offset: 3 * MiB + 1, lengthBytes: 1 },
  { offset: 100, lengthBytes: 0 },
];
/** The records those extents make, in file order. */
const expected = [
  { seq: 1, offset: 4097, lengthBytes: 333 },
  { seq: 2, offset: 64 * KiB, lengthBytes: MiB },
  { seq: 3, offset: 64 * KiB + MiB, lengthBytes: 4095 },
  { seq: 4, offset: 3 * MiB + 1, lengthBytes: 1 },
];
/** Where each record starts in the file. */
const recordAt: number[] = [SPLIT_BRAIN_HEADER_BYTES];
for (const record of expected.slice(0, -1)) recordAt.push((recordAt.at(-1) ?? 0) + alignedEntryBytes(record.lengthBytes));
const fileBytes = (recordAt.at(-1) ?? 0) + alignedEntryBytes(1);

let serial = 0;
/** A fresh data directory's split-brain file for `meta`, written from `volume`. */
async function saved(): Promise<string> {
  serial += 1;
  const dataDir = path.join(root, `data-${serial}`);
  const written = await writeSplitBrainFile(files, path.join(splitBrainDir(dataDir), splitBrainFileName(meta.volume, meta.epoch)), meta, extents, readVolume);
  return written.path;
}

async function readAll(file: string): Promise<{ meta: SplitBrainMeta; records: SplitBrainRecord[] }> {
  const opened = await openSplitBrainFile(file);
  const records: SplitBrainRecord[] = [];
  for await (const record of opened.records()) records.push(record);
  return { meta: opened.meta, records };
}

/** A copy of `file` with `change` made to its bytes. */
function damagedCopy(file: string, name: string, change: (bytes: Buffer) => Buffer): string {
  const copy = path.join(path.dirname(file), name);
  fs.writeFileSync(copy, change(fs.readFileSync(file)));
  return copy;
}

function flipByte(at: number): (bytes: Buffer) => Buffer {
  return (bytes) => {
    bytes[at] = (bytes[at] ?? 0) ^ 0x40;
    return bytes;
  };
}

/** The reader refuses `file` with ERR_BAD_FILE naming it and `at`, after yielding the records before the damage. */
async function assertRefused(file: string, at: number, problem: RegExp, recordsBefore: number): Promise<void> {
  const yielded: number[] = [];
  await assert.rejects(
    (async () => {
      const opened = await openSplitBrainFile(file);
      for await (const record of opened.records()) yielded.push(record.seq);
    })(),
    (error: unknown) => {
      assert.ok(error instanceof BlockmirrorError, `not a BlockmirrorError: ${String(error)}`);
      assert.equal(error.code, 'ERR_BAD_FILE');
      assert.ok(error.message.startsWith(`${file}, byte ${at}: `), error.message);
      assert.match(error.message, problem);
      return true;
    },
  );
  assert.equal(yielded.length, recordsBefore, `records read before the damage at byte ${at}`);
}

describe('the split-brain file', () => {
  test('its name and directory', () => {
    assert.equal(splitBrainFileName('vol0', 3), 'vol0-3.log');
    assert.equal(splitBrainDir('/data/b'), '/data/b/split-brain');
    assert.equal(numberedFileName('/d/vol0-3.log', 1), '/d/vol0-3.log');
    assert.equal(numberedFileName('/d/vol0-3.log', 2), '/d/vol0-3.2.log');
    assert.equal(numberedFileName('/d/vol0-3.log', 10), '/d/vol0-3.10.log');
    assert.deepEqual([...recordPieces(extents)], expected.map(({ offset, lengthBytes }) => ({ offset, lengthBytes })));
  });

  test('round trip: every range comes back at its offset, cut into records of at most 1 MiB, numbered in file order', async () => {
    const dataDir = path.join(root, 'round-trip');
    const filePath = path.join(splitBrainDir(dataDir), splitBrainFileName(meta.volume, meta.epoch));
    const written = await writeSplitBrainFile(files, filePath, { ...meta, extra: 'not saved' } as SplitBrainMeta, extents, readVolume);
    assert.deepEqual(written, { path: filePath, records: 4, bytes: fileBytes });
    assert.equal(fs.statSync(filePath).size, fileBytes);
    assert.deepEqual(fs.readdirSync(path.dirname(filePath)), ['vol0-3.log'], 'no temporary file left');
    const header = fs.readFileSync(filePath).subarray(0, SPLIT_BRAIN_HEADER_BYTES);
    assert.equal(header.toString('latin1', 0, 4), 'BMSB');
    assert.equal(header.readUInt16BE(4), 1);
    const back = await readAll(filePath);
    assert.deepEqual(back.meta, meta, 'the meta, and only its fields');
    assert.deepEqual(
      back.records.map(({ seq, offset, lengthBytes }) => ({ seq, offset, lengthBytes })),
      expected,
    );
    for (const record of back.records) {
      assert.ok(record.payload.equals(volume.subarray(record.offset, record.offset + record.lengthBytes)), `record ${record.seq}'s bytes`);
    }
  });

  test('no ranges: a header block alone, which reads back with no records', async () => {
    const filePath = path.join(root, 'empty', 'vol9-1.log');
    const written = await writeSplitBrainFile(files, filePath, meta, [], readVolume);
    assert.deepEqual(written, { path: filePath, records: 0, bytes: SPLIT_BRAIN_HEADER_BYTES });
    assert.deepEqual((await readAll(filePath)).records, []);
  });

  test('a saved file is never overwritten: the next saves of that volume and epoch go to .2.log, .3.log', async () => {
    const filePath = path.join(root, 'again', splitBrainFileName('vol0', 3));
    const first = await writeSplitBrainFile(files, filePath, meta, extents, readVolume);
    const firstBytes = fs.readFileSync(first.path);
    const other = { ...meta, savedAt: '2025-01-02T04:00:00.000Z' };
    const second = await writeSplitBrainFile(files, filePath, other, extents.slice(0, 1), readVolume);
    const third = await writeSplitBrainFile(files, filePath, other, extents.slice(2), readVolume);
    assert.deepEqual([first.path, second.path, third.path], [filePath, path.join(root, 'again', 'vol0-3.2.log'), path.join(root, 'again', 'vol0-3.3.log')]);
    assert.ok(fs.readFileSync(filePath).equals(firstBytes), 'the first file is as it was');
    assert.equal((await readAll(second.path)).records.length, 1);
    assert.equal((await readAll(third.path)).records.length, 1);
    assert.deepEqual(fs.readdirSync(path.join(root, 'again')), ['vol0-3.2.log', 'vol0-3.3.log', 'vol0-3.log']);
  });

  test('a meta that does not fit the header block is a bug: refused before any file is made', async () => {
    const filePath = path.join(root, 'too-big', 'vol0-3.log');
    await assert.rejects(writeSplitBrainFile(files, filePath, { ...meta, what: 'x'.repeat(SPLIT_BRAIN_HEADER_BYTES) }, extents, readVolume), AssertionError);
    assert.equal(fs.existsSync(path.dirname(filePath)), false);
  });

  test('a failed read leaves no file behind, not even the temporary one', async () => {
    const filePath = path.join(root, 'failed-read', 'vol0-3.log');
    const failing = async (offset: number, lengthBytes: number): Promise<Buffer> => {
      if (offset >= 3 * MiB) throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' });
      return readVolume(offset, lengthBytes);
    };
    await assert.rejects(writeSplitBrainFile(files, filePath, meta, extents, failing), /EIO/);
    assert.deepEqual(fs.readdirSync(path.dirname(filePath)), []);
  });

  test('a crash at any point of a save leaves the whole file or none, and the next save succeeds', async () => {
    const dataDir = '/data';
    const filePath = path.join(splitBrainDir(dataDir), splitBrainFileName(meta.volume, meta.epoch));
    const small = [{ offset: 5, lengthBytes: 70 }, { offset: 4096, lengthBytes: 128 }];
    const clean = new MemoryFileSystem();
    await writeSplitBrainFile(new DurableFiles(clean), filePath, meta, small, readVolume);
    const whole = clean.readFile(filePath);
    clean.dispose();
    const before = new MemoryFileSystem();
    let none = 0;
    const report = await exploreCrashes({
      before,
      seed: 0x5b_f1_1e_02,
      operation: async (fs) => {
        await writeSplitBrainFile(new DurableFiles(fs), filePath, meta, small, readVolume);
      },
      check: async (fs, where) => {
        const there = fs.stat(filePath) !== null;
        if (there) assert.ok(fs.readFile(filePath).equals(whole), `${where}: the file is not whole`);
        else none += 1;
        const next = await writeSplitBrainFile(new DurableFiles(fs), filePath, meta, small, readVolume);
        assert.equal(next.path, there ? numberedFileName(filePath, 2) : filePath, where);
        assert.ok(fs.readFile(next.path).equals(whole), `${where}: the next save is not whole`);
        assert.ok(fs.readdir(path.dirname(filePath)).every((name) => !name.endsWith('.tmp')), `${where}: the next save leaves a .tmp`);
      },
    });
    before.dispose();
    assert.ok(report.mutations >= 10, `${report.mutations} mutations`);
    assert.ok(none > 0, 'some crash points leave no file');
  });
});

describe('damage is refused with the file and the byte where it starts', () => {
  test('a byte of the meta', async () => {
    const file = damagedCopy(await saved(), 'meta.log', flipByte(SPLIT_BRAIN_META_AT + 5));
    await assert.rejects(openSplitBrainFile(file), (error: unknown) => error instanceof BlockmirrorError && error.code === 'ERR_BAD_FILE' && error.message === `${file}, byte 16: the meta does not match its CRC32C`);
  });

  test('the magic, the version, and a header block cut short', async () => {
    const file = await saved();
    await assert.rejects(openSplitBrainFile(damagedCopy(file, 'magic.log', flipByte(1))), /byte 0: not a split-brain file \(magic 0x420d5342\)/);
    await assert.rejects(openSplitBrainFile(damagedCopy(file, 'version.log', flipByte(5))), /byte 4: format version 65; this build reads version 1/);
    await assert.rejects(openSplitBrainFile(damagedCopy(file, 'short.log', (bytes) => bytes.subarray(0, 100))), /byte 0: the header block is cut short \(100 of 4096 bytes\)/);
  });

  test('a byte of a record header (the second record)', async () => {
    const file = damagedCopy(await saved(), 'record-header.log', flipByte((recordAt[1] ?? 0) + 30));
    await assertRefused(file, recordAt[1] ?? 0, /the record header does not match its CRC32C/, 1);
  });

  test('a byte of a payload (the third record)', async () => {
    const file = damagedCopy(await saved(), 'payload.log', flipByte((recordAt[2] ?? 0) + ENTRY_HEADER_BYTES + 100));
    await assertRefused(file, recordAt[2] ?? 0, /record 3's payload does not match its CRC32C/, 2);
  });

  test('a byte of a record padding (the first record)', async () => {
    const file = damagedCopy(await saved(), 'padding.log', flipByte((recordAt[0] ?? 0) + ENTRY_HEADER_BYTES + 340));
    await assertRefused(file, recordAt[0] ?? 0, /record 1's padding is not zero/, 0);
  });

  test('a file cut short in a record payload, and in a record header', async () => {
    const file = await saved();
    await assertRefused(damagedCopy(file, 'cut-payload.log', (bytes) => bytes.subarray(0, (recordAt[2] ?? 0) + ENTRY_HEADER_BYTES + 10)), recordAt[2] ?? 0, /the record is cut short: it needs 4160 bytes/, 2);
    await assertRefused(damagedCopy(file, 'cut-header.log', (bytes) => bytes.subarray(0, (recordAt[3] ?? 0) + 20)), recordAt[3] ?? 0, /the record is cut short: the file ends at byte \d+, within its 64-byte header/, 3);
  });

  test('records out of order (the second and third swapped whole)', async () => {
    const file = damagedCopy(await saved(), 'swapped.log', (bytes) => {
      const [second, third, fourth] = [recordAt[1] ?? 0, recordAt[2] ?? 0, recordAt[3] ?? 0];
      return Buffer.concat([bytes.subarray(0, second), bytes.subarray(third, fourth), bytes.subarray(second, third), bytes.subarray(fourth)]);
    });
    await assertRefused(file, recordAt[1] ?? 0, /record 3 where record 2 belongs/, 1);
  });
});

describe('blockmirror split-brain', () => {
  function run(...args: string[]): { status: number | null; stdout: string; stderr: string } {
    const result = spawnSync(process.execPath, [cliPath, 'split-brain', ...args], { encoding: 'utf8', timeout: 30_000 });
    return { status: result.status, stdout: result.stdout, stderr: result.stderr };
  }

  /** What the extracted file must hold over `base`: each record's bytes at its offset. */
  function extracted(base: Buffer): Buffer {
    const size = Math.max(base.length, ...expected.map((record) => record.offset + record.lengthBytes));
    const out = Buffer.alloc(size);
    base.copy(out);
    for (const record of expected) volume.copy(out, record.offset, record.offset, record.offset + record.lengthBytes);
    return out;
  }

  test('show: the meta, a line per record, the totals; --json the same as one object', async () => {
    const file = await saved();
    const text = run('show', file);
    assert.equal(text.status, 0, text.stderr);
    for (const line of [
      `split-brain file ${file}`,
      '  volume     vol0 (id 7)',
      '  node       b (the copy that lost)',
      '  winner     a',
      '  epoch      3',
      '  sharedSeq  120 (the last entry both copies share)',
      '  lastSeq    131 (the loser\'s last entry)',
      '  savedAt    2025-01-02T03:04:05.000Z',
      `  what       ${meta.what}`,
      'SEQ   OFFSET   LENGTH',
      '1       4097      333',
      '2      65536  1048576',
      '3    1114112     4095',
      '4    3145729        1',
      '4 record(s), 1053005 bytes',
    ]) {
      assert.ok(text.stdout.split('\n').includes(line), `no line ${JSON.stringify(line)} in:\n${text.stdout}`);
    }
    const json = run('show', file, '--json');
    assert.equal(json.status, 0, json.stderr);
    assert.deepEqual(JSON.parse(json.stdout), { meta, records: expected.map(({ seq, offset, lengthBytes }) => ({ seq, offset, lengthBytes })), totalBytes: 1053005 });
  });

  test('extract: each record at its offset into a new file (mode 0600), zeroes elsewhere', async () => {
    const file = await saved();
    const to = path.join(root, 'extracted.img');
    const result = run('extract', file, '--to', to);
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stdout, `wrote 4 record(s), 1053005 bytes of volume vol0 from ${file} into ${to}, each at its offset\n`);
    assert.equal(fs.statSync(to).mode & 0o777, 0o600);
    assert.ok(fs.readFileSync(to).equals(extracted(Buffer.alloc(0))), 'the records at their offsets, zeroes between');
  });

  test('extract into an existing file: never truncated, only the records\' bytes change; --json says what went where', async () => {
    const file = await saved();
    const to = path.join(root, 'existing.img');
    const before = Buffer.alloc(4 * MiB, 0xee);
    fs.writeFileSync(to, before, { mode: 0o644 });
    const result = run('extract', file, '--to', to, '--json');
    assert.equal(result.status, 0, result.stderr);
    assert.deepEqual(JSON.parse(result.stdout), { file, to, volume: 'vol0', records: 4, bytes: 1053005 });
    assert.ok(fs.readFileSync(to).equals(extracted(before)));
    assert.equal(fs.statSync(to).mode & 0o777, 0o644, 'an existing file keeps its mode');
  });

  test('a damaged file: exit 1 with the file and byte, and extract writes nothing', async () => {
    const file = damagedCopy(await saved(), 'cli-damaged.log', flipByte((recordAt[3] ?? 0) + ENTRY_HEADER_BYTES));
    const shown = run('show', file);
    assert.equal(shown.status, 1);
    assert.equal(shown.stderr, `blockmirror: ${file}, byte ${recordAt[3] ?? 0}: record 4's payload does not match its CRC32C\n`);
    const to = path.join(root, 'not-written.img');
    const extractedRun = run('extract', file, '--to', to);
    assert.equal(extractedRun.status, 1);
    assert.equal(fs.existsSync(to), false, 'nothing written from a damaged file');
  });

  test('usage errors: exit 2, naming what is wrong', async () => {
    const file = await saved();
    const cases: [string[], string][] = [
      [[], 'split-brain needs show or extract'],
      [['list', file], 'split-brain needs show or extract, not "list"'],
      [['show'], 'split-brain show needs a FILE'],
      [['extract', file], '--to is required'],
      [['extract', file, '--to'], '--to needs a value'],
      [['show', file, '--to', 'x'], 'unknown argument "--to"'],
      [['show', path.join(root, 'missing.log')], `${path.join(root, 'missing.log')}: no such file`],
      [['extract', file, '--to', root], `--to ${root} is a directory`],
      [['extract', file, '--to', file], `--to ${file} is the split-brain file itself`],
    ];
    for (const [args, message] of cases) {
      const result = run(...args);
      assert.equal(result.status, 2, `${args.join(' ')}: ${result.stderr}`);
      assert.ok(result.stderr.startsWith('blockmirror: ') && result.stderr.includes(message), `${args.join(' ')}: ${result.stderr}`);
    }
    assert.ok((await readAll(file)).records.length === 4, 'the file extracted onto itself is as it was');
  });
});
