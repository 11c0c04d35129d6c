// `blockmirror split-brain show` and `blockmirror split-brain extract`: what a copy that
// lost a split brain saved of its writes (src/storage/split-brain-file.ts), read on the
// node's own disk, with no node running needed.

import fs from 'node:fs';
import path from 'node:path';
import { BlockmirrorError, errnoCode } from '../lib/errors.js';
import { openSplitBrainFile, type SplitBrainFile, type SplitBrainMeta } from '../storage/split-brain-file.js';
import { parseFlags, required } from './flags.js';

/** `split-brain show FILE` and `split-brain extract FILE --to PATH`. Exit 0 when done; a damaged file is an error (exit 1). */
export async function splitBrain(args: string[]): Promise<number> {
  const [action, file, ...rest] = args;
  if (action !== 'show' && action !== 'extract') {
    throw new BlockmirrorError('ERR_USAGE', `split-brain needs show or extract${action === undefined ? '' : `, not "${action}"`} (see blockmirror --help)`);
  }
  if (file === undefined || file.startsWith('-')) throw new BlockmirrorError('ERR_USAGE', `split-brain ${action} needs a FILE (see blockmirror --help)`);
  const flags = parseFlags(rest, action === 'extract' ? ['--to'] : [], ['--json']);
  const json = flags.switches.has('--json');
  const to = action === 'extract' ? required(flags, '--to') : null;
  checkIsFile(file);
  return readingFiles(async () => {
    const opened = await openSplitBrainFile(file);
    return to === null ? show(file, opened, json) : extract(file, opened, to, json);
  });
}

async function show(file: string, opened: SplitBrainFile, json: boolean): Promise<number> {
  const records: { seq: number; offset: number; lengthBytes: number }[] = [];
  let totalBytes = 0;
  for await (const record of opened.records()) {
    records.push({ seq: record.seq, offset: record.offset, lengthBytes: record.lengthBytes });
    totalBytes += record.lengthBytes;
  }
  if (json) {
    process.stdout.write(JSON.stringify({ meta: opened.meta, records, totalBytes }, null, 2) + '\n');
  } else {
    process.stdout.write(showText(file, opened.meta, records, totalBytes));
  }
  return 0;
}

/** What `show` prints without --json: the meta, one line per record, the totals. */
export function showText(file: string, meta: SplitBrainMeta, records: readonly { seq: number; offset: number; lengthBytes: number }[], totalBytes: number): string {
  const lines = [
    `split-brain file ${file}`,
    `  volume     ${meta.volume} (id ${meta.volumeId})`,
    `  node       ${meta.node} (the copy that lost)`,
    `  winner     ${meta.winner}`,
    `  epoch      ${meta.epoch}`,
    `  sharedSeq  ${meta.sharedSeq} (the last entry both copies share)`,
    `  lastSeq    ${meta.lastSeq} (the loser's last entry)`,
    `  savedAt    ${meta.savedAt}`,
    `  what       ${meta.what}`,
    '',
  ];
  const rows = [['SEQ', 'OFFSET', 'LENGTH'], ...records.map((record) => [String(record.seq), String(record.offset), String(record.lengthBytes)])];
  const widths = [0, 1, 2].map((column) => Math.max(...rows.map((row) => (row[column] ?? '').length)));
  for (const row of rows) lines.push(row.map((cell, column) => (column === 0 ? cell.padEnd(widths[0] ?? 0) : cell.padStart(widths[column] ?? 0))).join('  '));
  lines.push(`${records.length} record(s), ${totalBytes} bytes`);
  return lines.join('\n') + '\n';
}

/**
 * Writes every record's payload at its offset into `to`. The whole file is checked
 * first, so that a damaged one writes nothing. `to` is the operator's file, not a node's
 * state, and is written in place (created 0600 if absent, never truncated), so that it
 * can be a copy of the volume the writes are put back into: DurableFiles, which replaces
 * files whole, is not for it.
 */
async function extract(file: string, opened: SplitBrainFile, to: string, json: boolean): Promise<number> {
  for await (const record of opened.records()) void record;
  const existing = fs.statSync(to, { throwIfNoEntry: false });
  if (existing?.isDirectory() === true) throw new BlockmirrorError('ERR_USAGE', `--to ${to} is a directory; name a file`);
  const source = fs.statSync(file);
  if (existing !== undefined && existing.ino === source.ino && existing.dev === source.dev) {
    throw new BlockmirrorError('ERR_USAGE', `--to ${to} is the split-brain file itself`);
  }
  const handle = await fs.promises.open(to, fs.constants.O_WRONLY | fs.constants.O_CREAT, 0o600);
  let records = 0;
  let bytes = 0;
  try {
    for await (const record of opened.records()) {
      for (let done = 0; done < record.payload.length; ) {
        const { bytesWritten } = await handle.write(record.payload, done, record.payload.length - done, record.offset + done);
        done += bytesWritten;
      }
      records += 1;
      bytes += record.lengthBytes;
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
  // A file made here is durable only once its name is.
  if (existing === undefined) await syncDir(path.dirname(path.resolve(to)));
  if (json) {
    process.stdout.write(JSON.stringify({ file, to, volume: opened.meta.volume, records, bytes }, null, 2) + '\n');
  } else {
    process.stdout.write(`wrote ${records} record(s), ${bytes} bytes of volume ${opened.meta.volume} from ${file} into ${to}, each at its offset\n`);
  }
  return 0;
}

/** FILE must name a file: what is missing or a directory is the caller's mistake (exit 2). */
function checkIsFile(file: string): void {
  const stat = fs.statSync(file, { throwIfNoEntry: false });
  if (stat === undefined) throw new BlockmirrorError('ERR_USAGE', `${file}: no such file`);
  if (!stat.isFile()) throw new BlockmirrorError('ERR_USAGE', `${file} is not a file`);
}

/** Runs `work`, turning a failed system call (EACCES, EIO, ENOSPC...) into an error that names it (exit 1). */
async function readingFiles(work: () => Promise<number>): Promise<number> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof BlockmirrorError || errnoCode(error) === undefined) throw error;
    throw new BlockmirrorError('ERR_BAD_FILE', (error as Error).message, { cause: error });
  }
}

async function syncDir(dir: string): Promise<void> {
  const handle = await fs.promises.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
