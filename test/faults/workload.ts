// What the crash and power-cut tests share: the seeded workload (test/faults/writer.py,
// a libnbd client that prints every submission and acknowledgement), the volume and log
// they run on, the node's log figures, and the read-back check against the writers'
// histories. BLOCKMIRROR_SEED=<n> replays a seed's workload.

import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runCommand } from '../helpers/fuse.js';
import type { Prng } from '../unit/prng.js';
import { sleep, type LogSpec, type TestNode, type VolumeSpec } from '../helpers/node-process.js';
import type { NodeStatus } from '../../src/server/status.js';
import type { LogStatus } from '../../src/storage/write-log.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const writerPath = path.resolve(here, '../../../test/faults/writer.py');
const python = '/usr/bin/python3';

export const seed =
  process.env['BLOCKMIRROR_SEED'] !== undefined ? Number(process.env['BLOCKMIRROR_SEED']) >>> 0 : randomBytes(4).readUInt32BE(0);

/** A small log (3 × 4 MiB, a CP every 200 ms), so CPs and partition reuse happen every round. */
export const volumes: VolumeSpec[] = [{ name: 'vol0', size: '64MiB' }];
export const log: LogSpec = { partitionSize: '4MiB', partitions: 3, cpIntervalMs: 200 };
/** Entries that fill the whole log once (4 KiB payload + header, aligned): a wrap. */
export const entriesPerLogWrap = Math.ceil((3 * 4 * 1024 * 1024) / (4096 + 64));

const liveWriters = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of liveWriters) {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }
});

/** writer.py `write`, its output kept in memory as it arrives. */
export class Writer {
  output = '';
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly child: ChildProcess;

  constructor(uri: string, round: number, firstId: number, extra: string[], writerSeed: number = seed, netns: string | null = null) {
    // In a network namespace through `ip netns exec`, which becomes the writer (the same PID).
    this.child = spawn(
      netns === null ? python : 'ip',
      [...(netns === null ? [] : ['netns', 'exec', netns, python]), writerPath, 'write', uri, '--seed', String(writerSeed), '--round', String(round), '--first-id', String(firstId), ...extra],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    liveWriters.add(this.child);
    this.child.stdout?.setEncoding('utf8').on('data', (text: string) => (this.output += text));
    this.child.stderr?.setEncoding('utf8').on('data', (text: string) => (this.stderr += text));
    this.exited = new Promise((resolve) => {
      this.child.once('close', (code, signal) => {
        liveWriters.delete(this.child);
        resolve({ code, signal });
      });
      this.child.once('error', (error) => {
        this.stderr += String(error);
        liveWriters.delete(this.child);
        resolve({ code: null, signal: null });
      });
    });
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  count(kind: string): number {
    let count = 0;
    for (const line of this.output.split('\n')) if (line.startsWith(`${kind} `)) count += 1;
    return count;
  }

  /** Waits for the writer to end (it does once the server is gone), SIGKILLing it after `timeoutMs`. */
  async finish(timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

export async function waitFor(what: string, timeoutMs: number, condition: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`seed ${seed}: ${what}: not within ${timeoutMs} ms`);
    await sleep(10);
  }
}

export type { LogStatus };

export async function logStatus(node: TestNode): Promise<LogStatus> {
  const response = await fetch(`http://127.0.0.1:${node.adminPort}/api/v1/status`, { signal: AbortSignal.timeout(3_000) });
  const body = (await response.json()) as NodeStatus;
  const volume = body.volumes.find((candidate) => candidate.name === 'vol0');
  if (volume === undefined) throw new Error('admin status lists no vol0');
  return volume.log;
}

/** Reads the whole of a volume (vol0 unless named) into `file`, as a client reads it. */
export async function dumpVolume(node: TestNode, file: string, volume = 'vol0'): Promise<void> {
  await dumpUri(node.uri(volume), file);
}

/** Reads the whole export at `uri` into `file`, as a client reads it. */
export async function dumpUri(uri: string, file: string): Promise<void> {
  const result = await runCommand(python, [writerPath, 'dump', uri, file], { timeoutMs: 60_000 });
  assert.equal(result.code, 0, `dump of ${uri} failed: ${result.stdout}${result.stderr}`);
}

export interface CheckReport {
  blocks: number;
  written_blocks: number;
  durable_blocks: number;
  counts: Record<string, number>;
  held: Record<string, number>;
  failure_count: number;
  failures: string[];
}

/**
 * writer.py `check`: the image `after` against `before` (null: all zeroes) and the
 * histories. `acknowledged: 'replied'` holds every write replied to (a killed process
 * keeps the page cache), not only those acknowledged as durable (a power cut).
 */
export async function checkImage(
  before: string | null,
  after: string,
  histories: string[],
  options: { seed?: number; acknowledged?: 'durable' | 'replied' } = {},
): Promise<CheckReport> {
  const args = [writerPath, 'check', '--before', before ?? '-', '--after', after, '--seed', String(options.seed ?? seed), '--acknowledged', options.acknowledged ?? 'durable'];
  for (const history of histories) args.push('--history', history);
  const result = await runCommand(python, args, { timeoutMs: 120_000 });
  assert.equal(result.code, 0, `writer.py check failed: ${result.stdout}${result.stderr}`);
  return JSON.parse(result.stdout) as CheckReport;
}

/** The restarted node's "volume opened" record for vol0, with no error logged at start. */
export function volumeOpened(node: TestNode): Record<string, unknown> {
  const records = node.records().filter((record) => record['msg'] === 'volume opened' && record['volume'] === 'vol0');
  assert.equal(records.length, 1, `one "volume opened" record for vol0 (not "volume created"):\n${node.logs}`);
  const record = records[0];
  assert(record !== undefined);
  const replayed = record['replayedEntries'];
  assert(typeof replayed === 'number' && Number.isInteger(replayed) && replayed >= 0, `replayedEntries reported: ${JSON.stringify(record)}`);
  assert.deepEqual(
    node.records().filter((r) => r['level'] === 'error'),
    [],
    'no error logged at start',
  );
  return record;
}

/**
 * How a round ends: `random`, a seeded moment after the first acknowledgement; `after-cp`,
 * shortly after two CPs and a wrap of the log during the round; `idle`, a moment after
 * the writer finished, while the node takes CPs.
 */
export type RoundKind = 'random' | 'after-cp' | 'idle';

/**
 * Starts round `round`'s writer on `node` (handed to `started` at once, so the caller can
 * always stop it) and returns when the fault should strike: the writer, and a note saying
 * when that is.
 */
export async function runUntilFault(
  node: TestNode,
  round: number,
  kind: RoundKind,
  rng: Prng,
  choices: { maxWrites: number; wrapTimeoutMs: number },
  started: (writer: Writer) => void,
): Promise<{ writer: Writer; note: string }> {
  const atStart = await logStatus(node);
  const firstId = (round + 1) * 10_000_000;
  if (kind === 'idle') {
    const writer = new Writer(node.uri('vol0'), round, firstId, ['--max-writes', String(rng.between(200, choices.maxWrites))]);
    started(writer);
    const exit = await writer.finish(60_000);
    assert.equal(exit.code, 0, `writer: ${writer.stderr}`);
    const idleMs = rng.between(0, 600);
    await sleep(idleMs);
    return { writer, note: `idle ${idleMs} ms after the writer finished` };
  }
  const writer = new Writer(node.uri('vol0'), round, firstId, ['--seconds', '60']);
  started(writer);
  await waitFor('first acknowledgement', 15_000, () => writer.count('A') > 0 || !writer.running);
  assert(writer.running, `writer ended early: ${writer.output.slice(-500)} ${writer.stderr}`);
  if (kind === 'after-cp') {
    // CPs and a wrap of the log (partitions reused) during this round.
    await waitFor('two CPs and a log wrap', choices.wrapTimeoutMs, async () => {
      const now = await logStatus(node);
      return now.checkpoints >= atStart.checkpoints + 2 && now.lastSeq - atStart.lastSeq >= entriesPerLogWrap + 100;
    });
    const extraMs = rng.between(0, 150);
    await sleep(extraMs);
    return { writer, note: `${extraMs} ms after two CPs and a log wrap` };
  }
  const delayMs = rng.chance(0.3) ? rng.between(0, 30) : rng.between(30, 2500);
  await sleep(delayMs);
  return { writer, note: `${delayMs} ms after the first acknowledgement` };
}
