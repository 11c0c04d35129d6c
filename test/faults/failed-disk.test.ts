// A primary whose own disk fails while clients write goes diskless: it serves the volume
// from its peer instead of failing every request. Nodes a and b hold vol0 in sync mode, a
// the primary. a's data directory is ext4 on a disk that works until the test says it
// breaks: a sparse backing file served by nbdkit's `file` plugin behind its `error` filter,
// which fails every request with EIO while a trigger file exists (helpers/nbdkit-disk.ts):
//
//   a -> data-a (ext4) -> /dev/loopN -> FUSE/nbd -> nbdkit error -> backing.img
//
// b's data directory is a plain one. Every wait is for a state a node or a client
// reports, never for a time.
//
// The first test has two clients write through a and keep going across the failure:
// writer.py (FUA writes, plain writes and FLUSHes, every reply recorded) in the first
// 32 MiB, and fio in rounds (random writes verified by reading them back, some while it
// writes, the rest at the end of the round) in the next 8 MiB, so that reads are asked of
// a both before and after its disk broke.
//
// 1. b streams from a and says it may be promoted (it holds every acknowledged write);
// 2. once both clients are under way, the trigger is created: whatever a next asks of its
//    disk fails (a sync of its log, a write once ext4 gave up and went read-only, a
//    consistency point, a read the page cache does not hold), and a's status must show
//    vol0's disk as `diskless`;
// 3. the clients go on for a bounded number of writes after that and must see no error at
//    all: requests under way when the disk broke are answered like the rest;
// 4. through a (whose reads now come from b): every write the writer had a reply for reads
//    back, fio's last round verifies again, and blocks written, zeroed and trimmed with
//    qemu-io after the failure, and one of the writer's, read back with qemu-img;
// 5. both nodes stop; b's image must equal what a served, byte for byte.
//
// The second test breaks the disk while a's log is full and its writes wait for a
// consistency point to free a partition (large writes, consistency points only when a
// partition fills): entries numbered then are in no file and on no peer yet, and the
// consistency point that would have placed them can never come: a gives them up to its
// peers (they still go to b, in order) and makes them again diskless. fio's writes must
// all be answered and read back all the same.
//
// Runs as root (mount, losetup, FUSE); elsewhere it fails and says why. Only what this test
// creates is ever touched (see helpers/nbdkit-disk.ts), and cleanup always runs, each step
// bounded in time; the trigger is removed before the unmount, so that the disk works again
// and ext4 lets go of it.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { requireRootAndTools, runCleanupSteps, runCommandOk, withDeadline } from '../helpers/fuse.js';
import { PoweredStack, type NbdkitOptions } from '../helpers/nbdkit-disk.js';
import { cliPath, makeTempDir, readVolumeRange, run, sleep, startClusterNode, vol0, writeClusterConfig, type LogSpec, type NodeStatusJson, type TestNode } from '../helpers/node-process.js';
import { checkImage, dumpVolume, seed, waitFor, Writer } from './workload.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const fast = { intervalMs: 100, timeoutMs: 600, probationMs: 600 };

// Where each client of the first test writes in the 64 MiB volume; the rest must read
// back as zeroes.
const writerBlocks = (32 * MiB) / (4 * KiB);
const fioOffset = 32 * MiB;
const fioRoundBytes = 8 * MiB;
const qemuOffset = 60 * MiB;
const qemuByte = 0x5a;
// Then 64 KiB written, its first half zeroed (WRITE_ZEROES) and its second trimmed.
const zeroOffset = 61 * MiB;

/** How far the writer gets before the disk breaks, and how many of its writes must come after. */
const writesBefore = 2_000;
const writesAfter = 3_000;
const writerBudget = 16_000;

console.log(`failed-disk.test: seed=${seed} (BLOCKMIRROR_SEED=${seed} replays the writer's workload)`);

// ---- the two nodes, a's failing disk, and their cleanup ---------------------------------

/**
 * One test's nodes and a's disk. Everything it starts is listed as it starts, so that
 * `cleanUp` can end it whatever failed half way.
 */
class Rig {
  readonly base: string;
  readonly work: string;
  readonly trigger: string;
  private stack: PoweredStack | null = null;
  /** Failed disks replaced by a new one: torn down last, once a lets go of their files. */
  private readonly replaced: PoweredStack[] = [];
  private readonly nodes: TestNode[] = [];

  constructor(prefix: string) {
    this.base = makeTempDir(prefix);
    this.work = path.join(this.base, 'work');
    this.trigger = path.join(this.base, 'disk-fails');
    fs.mkdirSync(this.work);
  }

  /** a's data directory (./data-a beside the cluster file) on the failing disk's ext4, then b and a. */
  async start(log: LogSpec): Promise<{ a: TestNode; b: TestNode }> {
    const config = await writeClusterConfig(this.base, {
      nodes: [{ id: 'a' }, { id: 'b' }],
      volumes: [{ name: 'vol0', size: '64MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' }],
      heartbeat: fast,
      log,
    });
    const backing = path.join(this.base, 'backing.img');
    await runCommandOk('truncate', ['-s', '256M', backing]);
    const failingDisk: NbdkitOptions = { filters: ['error'], params: ['error-rate=100%', `error-file=${this.trigger}`, 'error=EIO'] };
    this.stack = (await PoweredStack.powerOn(backing, path.join(this.base, 'fuse'), path.join(this.base, 'data-a'), true, failingDisk)).stack;
    const b = await startClusterNode(this.base, config, 'b');
    this.nodes.push(b);
    const a = await startClusterNode(this.base, config, 'a');
    this.nodes.push(a);
    assert.equal(a.dataDir, this.stack.dataDir);
    await a.waitStatus('b streaming, up to date', (status) => vol0(status).peers[0]?.replication === 'streaming' && vol0(status).peers[0]?.disk === 'up-to-date');
    await b.waitStatus('b knows it is in sync', (status) => vol0(status).source?.promotable === true);
    return { a, b };
  }

  /** The disk breaks: every request to it fails with EIO from now on. */
  breakDisk(): void {
    fs.writeFileSync(this.trigger, '');
  }

  /**
   * The failed disk is replaced: its ext4 is detached from a's data directory (lazily: a
   * still holds its files open until `attach` lets them go) and a new, empty disk's ext4
   * (an nbdkit without the error filter) is mounted in its place.
   */
  async replaceDisk(): Promise<void> {
    const failed = this.stack;
    assert.ok(failed !== null);
    await runCommandOk('umount', ['-l', failed.dataDir], { timeoutMs: 10_000 });
    this.replaced.push(failed);
    const backing = path.join(this.base, `backing-${this.replaced.length + 1}.img`);
    await runCommandOk('truncate', ['-s', '256M', backing]);
    this.stack = (await PoweredStack.powerOn(backing, path.join(this.base, `fuse-${this.replaced.length + 1}`), failed.dataDir, true, { filters: [], params: [] })).stack;
  }

  /**
   * Ends the clients (`clientSteps`), the nodes and the disk, each step bounded; keeps the
   * directory and prints the nodes' last log lines when the test failed.
   */
  async cleanUp(t: TestContext, passed: boolean, clientSteps: Array<readonly [string, () => Promise<void>]>): Promise<void> {
    const steps = [...clientSteps];
    for (const node of this.nodes) steps.push([`node ${path.basename(node.dataDir)} pid ${node.pid}`, () => node.stop('SIGKILL', 5_000).then(() => undefined)]);
    // The disk works again, so that ext4 lets go of it.
    steps.push(['remove the trigger', async () => fs.rmSync(this.trigger, { force: true })]);
    if (this.stack !== null) steps.push(...this.stack.cleanupSteps());
    for (const failed of this.replaced) steps.push(...failed.cleanupSteps());
    const failures = await runCleanupSteps(steps);
    if (passed) {
      fs.rmSync(this.base, { recursive: true, force: true });
    } else {
      t.diagnostic(`seed ${seed}: kept ${this.base} (backing.img, the clients' records in work/)`);
      for (const node of this.nodes) {
        t.diagnostic(`node ${path.basename(node.dataDir)}'s log, last 30 lines:`);
        for (const line of node.logs.trim().split('\n').slice(-30)) t.diagnostic(line);
      }
    }
    if (failures.length > 0) {
      const message = failures.map((failure) => failure.message).join('; ');
      // A failed test keeps its own error; cleanup trouble is reported beside it.
      if (passed) throw new AggregateError(failures, message);
      t.diagnostic(`cleanup: ${message}`);
    }
  }
}

/** a's warnings and errors, each message once with its count, for the diagnostics. */
function complaints(node: TestNode): string {
  const counts = new Map<string, number>();
  for (const record of node.records()) {
    if (record['level'] !== 'warn' && record['level'] !== 'error') continue;
    const key = `${String(record['level'])}: ${String(record['msg'])}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts].map(([key, count]) => `${key} (${count})`).join('; ');
}

/** Waits until a's status shows vol0 diskless; says so plainly when a's process ended instead. */
async function waitDiskless(a: TestNode): Promise<NodeStatusJson> {
  try {
    return await a.waitStatus('a diskless', (status) => vol0(status).disk === 'diskless', 30_000);
  } catch (error) {
    const exit = await withDeadline(a.exited, 2_000, 'a\'s exit').catch(() => null);
    if (exit === null) throw error;
    throw new Error(`a's process ended (${JSON.stringify(exit)}) instead of going diskless; its last lines:\n${a.logs.trim().split('\n').slice(-12).join('\n')}`);
  }
}

function wentDiskless(node: TestNode): boolean {
  return node.records().some((record) => record['msg'] === 'local disk failed: the volume is served from its peers (diskless)' && record['volume'] === 'vol0');
}

// ---- fio ----------------------------------------------------------------------------------

interface FioJob {
  error: number;
  read: { io_bytes: number; total_ios: number };
  write: { io_bytes: number; total_ios: number };
}

interface FioRun {
  name: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  job: FioJob | null;
  stderr: string;
  startedMs: number;
  endedMs: number;
}

/**
 * fio through the nbd engine. `--thread` keeps its jobs in one process, so that the
 * timeout's SIGKILL ends all of it (a forked job would live on, holding our pipes). Its
 * JSON goes to a file, since the engine prints to stdout.
 */
async function runFio(work: string, name: string, uri: string, args: string[], timeoutMs: number): Promise<FioRun> {
  const output = path.join(work, `fio-${name}.json`);
  const startedMs = Date.now();
  const result = await run('fio', [`--name=${name}`, '--thread', '--ioengine=nbd', `--uri=${uri}`, ...args, '--output-format=json', `--output=${output}`], { timeoutMs });
  const text = fs.existsSync(output) ? fs.readFileSync(output, 'utf8') : '';
  const start = text.indexOf('{');
  let job: FioJob | null = null;
  if (start >= 0) {
    try {
      job = (JSON.parse(text.slice(start)) as { jobs: FioJob[] }).jobs[0] ?? null;
    } catch {
      // Cut short: no figures.
    }
  }
  return { name, code: result.code, signal: result.signal, job, stderr: result.stderr, startedMs, endedMs: Date.now() };
}

/** Whether fio wrote `bytes`, read every one back (its verify), and saw no error. */
function fioOk(fio: FioRun, bytes: number): boolean {
  return fio.code === 0 && fio.job !== null && fio.job.error === 0 && fio.job.write.io_bytes === bytes && fio.job.read.io_bytes === bytes;
}

function describeFio(fio: FioRun): string {
  const job = fio.job;
  const figures = job === null ? 'no JSON' : `error ${job.error}, wrote ${job.write.io_bytes} B, read back ${job.read.io_bytes} B`;
  const problem = fio.code === 0 ? '' : `: ${fio.stderr.trim().slice(-600)}`;
  return `fio ${fio.name}: exit ${fio.code ?? fio.signal}, ${figures}, ${fio.endedMs - fio.startedMs} ms${problem}`;
}

/** The first test's fio round `round` (its seed makes each round's blocks differ from the last's). */
function fioRound(work: string, uri: string, round: number, extra: string[] = []): Promise<FioRun> {
  const args = [
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=8',
    `--offset=${fioOffset}`,
    `--size=${fioRoundBytes}`,
    `--randseed=${seed + round}`,
    '--verify=crc32c',
    '--verify_backlog=64',
    '--verify_fatal=1',
    '--do_verify=1',
    ...extra,
  ];
  return runFio(work, `round${round}${extra.length > 0 ? '-again' : ''}`, uri, args, 120_000);
}

// ---- reading back -------------------------------------------------------------------------

/** `size` bytes at `offset` of vol0, read through `node` (see readVolumeRange). */
function readBlock(node: TestNode, work: string, offset: number, size = 4096): Promise<Buffer> {
  return readVolumeRange(node, work, offset, size);
}

function filled(data: Buffer, byte: number): boolean {
  return data.every((value) => value === byte);
}

/** The writer's writes submitted after `fromChar` of its output that no later write of the same block followed. */
function lastWritesAfter(output: string, fromChar: number): Array<{ id: number; block: number }> {
  const last = new Map<number, number>();
  const late = new Set<number>();
  let at = 0;
  for (const line of output.split('\n')) {
    const parts = line.split(' ');
    if (parts[0] === 'S') {
      const id = Number(parts[1]);
      const block = Number(parts[2]);
      last.set(block, id);
      if (at >= fromChar) late.add(id);
    }
    at += line.length + 1;
  }
  return [...last.entries()].filter(([, id]) => late.has(id)).map(([block, id]) => ({ id, block }));
}

/** b's image after both stopped, against what a served: byte for byte. */
function assertSameImage(b: TestNode, served: Buffer): Buffer {
  const image = fs.readFileSync(b.imagePath('vol0'));
  const firstDifference = image.findIndex((byte, at) => byte !== served[at]);
  assert.equal(firstDifference, -1, `b's image equals what a served (first difference at byte ${firstDifference})`);
  return image;
}

const tools = ['nbdkit', 'nbdfuse', 'losetup', 'mkfs.ext4', 'mount', 'umount', 'fio', 'qemu-io', 'qemu-img'];

// ---- the tests ------------------------------------------------------------------------------

test(`a sync primary whose disk fails while clients write serves them from its peer, losing nothing (seed ${seed})`, { timeout: 300_000 }, async (t) => {
  requireRootAndTools(tools);
  const rig = new Rig('blockmirror-failed-disk-');
  const { work } = rig;
  let writer: Writer | null = null;
  let stopFio = false;
  let fioLoop: Promise<void> | null = null;
  let passed = false;
  const started = Date.now();
  try {
    const { a, b } = await rig.start({ partitionSize: '4MiB', partitions: 3, cpIntervalMs: 200 });

    // Both clients under way: the writer, and fio round after round until told to stop.
    const history = path.join(work, 'history.txt');
    const running: Writer = new Writer(a.uri('vol0'), 1, 10_000_000, ['--blocks', String(writerBlocks), '--max-writes', String(writerBudget), '--seconds', '240']);
    writer = running;
    const rounds: FioRun[] = [];
    fioLoop = (async () => {
      for (let round = 0; !stopFio; round += 1) {
        const done = await fioRound(work, a.uri('vol0'), round);
        rounds.push(done);
        if (!fioOk(done, fioRoundBytes)) return;
      }
    })();
    await waitFor(
      `the writer's first ${writesBefore} replies and a whole fio round`,
      60_000,
      () => (running.count('A') >= writesBefore && rounds.length > 0) || !running.running || rounds.some((round) => !fioOk(round, fioRoundBytes)),
    );
    assert.ok(running.running, `the writer ended before the disk failed: ${running.output.slice(-500)} ${running.stderr}`);
    assert.ok(rounds.every((round) => fioOk(round, fioRoundBytes)), `fio failed before the disk failed: ${rounds.map(describeFio).join('; ')}`);

    const brokeMs = Date.now();
    const repliedAtBreak = running.count('A');
    rig.breakDisk();
    const diskless = await waitDiskless(a);
    const disklessMs = Date.now();
    const outputAtDiskless = running.output.length;
    const repliedAtDiskless = running.count('A');
    const ackedAtDiskless = vol0(diskless).peers[0]?.ackedSeq ?? 0;
    assert.ok(running.running, `the writer ended before a went diskless: raise writerBudget (${running.output.slice(-300)})`);
    const roundsAtDiskless = rounds.length;
    t.diagnostic(
      `a went diskless ${disklessMs - brokeMs} ms after the disk broke (writer replies: ${repliedAtBreak} then, ${repliedAtDiskless} at diskless); ` +
        `status: ${JSON.stringify({ disk: vol0(diskless).disk, diskless: vol0(diskless).diskless, peers: vol0(diskless).peers })}`,
    );
    assert.ok(wentDiskless(a), `a logs that it went diskless:\n${a.logs.slice(-3000)}`);

    // A bounded number of writes after that: the writer's budget, and fio until the writer ends.
    await waitFor(`${writesAfter} writer replies after a went diskless`, 120_000, () => running.count('A') >= repliedAtDiskless + writesAfter || !running.running);
    const writerExit = await running.finish(120_000);
    writer = null;
    stopFio = true;
    await withDeadline(fioLoop, 150_000, 'the last fio round');
    fioLoop = null;
    fs.writeFileSync(history, running.output);
    t.diagnostic(
      `writer: ${running.count('S')} writes, ${running.count('A')} replies (${running.count('A') - repliedAtDiskless} after diskless), ` +
        `${running.count('FD')} flushes; ${rounds.map(describeFio).join('; ')}`,
    );
    const errors = running.output.split('\n').filter((line) => /^(E|FE|X) /.test(line));
    assert.deepEqual(errors.slice(0, 10), [], `the writer saw no error at all (${errors.length} lines); a's log:\n${a.logs.slice(-4000)}`);
    assert.equal(writerExit.code, 0, `the writer exits 0: ${running.stderr}`);
    assert.match(running.output, new RegExp(`^END ${writerBudget}$`, 'm'), 'the writer spent its budget, every request answered');
    assert.equal(running.count('A'), writerBudget, 'every write replied to');
    assert.ok(running.count('A') - repliedAtDiskless >= writesAfter, `at least ${writesAfter} writes after a went diskless`);
    assert.deepEqual(rounds.filter((round) => !fioOk(round, fioRoundBytes)).map(describeFio), [], `every fio round wrote and read back its blocks; a's log:\n${a.logs.slice(-4000)}`);
    assert.ok(rounds.length > roundsAtDiskless, 'a fio round ran across the failure or after it');
    const lastRound = rounds[rounds.length - 1];
    assert.ok(lastRound !== undefined && lastRound.startedMs >= disklessMs, `a whole fio round ran after a went diskless: ${rounds.map(describeFio).join('; ')}`);

    // a is still diskless, b still streams from it, up to date, and takes its consistency
    // points (so that b's log is released).
    const after = vol0(await a.waitStatus('b synced past the failure', (status) => (vol0(status).peers[0]?.syncedSeq ?? 0) > ackedAtDiskless, 10_000));
    assert.ok(
      after.disk === 'diskless' && after.peers[0]?.replication === 'streaming' && after.peers[0].disk === 'up-to-date',
      `a diskless, b streaming and up to date: ${JSON.stringify({ disk: after.disk, peers: after.peers })}`,
    );

    // Through a, served from b: fio's last round once more, blocks written, zeroed and
    // trimmed now, and the writer's last write of a block it wrote after the failure.
    const again = await fioRound(work, a.uri('vol0'), Number(lastRound.name.replace('round', '')), ['--verify_only']);
    assert.ok(again.code === 0 && again.job?.error === 0 && again.job.read.io_bytes === fioRoundBytes, `fio verify_only of the last round: ${describeFio(again)}`);
    const commands = [
      `write -f -P 0x${qemuByte.toString(16)} ${qemuOffset} 4k`,
      `write -P 0x6b ${zeroOffset} 64k`,
      `write -z ${zeroOffset} 32k`,
      `discard ${zeroOffset + 32 * KiB} 32k`,
      'flush',
    ];
    const written = await run('qemu-io', ['-f', 'raw', '-t', 'none', a.uri('vol0'), ...commands.flatMap((command) => ['-c', command])], { timeoutMs: 60_000 });
    assert.equal(written.code, 0, `qemu-io through a (${commands.join('; ')}): ${written.stdout}${written.stderr}`);
    assert.doesNotMatch(written.stdout + written.stderr, /error|failed/i, `qemu-io through a: ${written.stdout}${written.stderr}`);
    assert.ok(filled(await readBlock(a, work, qemuOffset), qemuByte), 'the block qemu-io wrote after the failure reads back through a');
    assert.ok(filled(await readBlock(a, work, zeroOffset, 32 * KiB), 0), 'the range zeroed after the failure reads back as zeroes through a');
    const served = path.join(work, 'served-by-a.img');
    await dumpVolume(a, served);
    const image = fs.readFileSync(served);
    const late = lastWritesAfter(running.output, outputAtDiskless);
    const lateWrite = late[late.length - 1];
    assert.ok(lateWrite !== undefined, 'the writer wrote blocks after a went diskless');
    const lateBlock = await readBlock(a, work, lateWrite.block * 4096);
    assert.ok(lateBlock.equals(image.subarray(lateWrite.block * 4096, lateWrite.block * 4096 + 4096)), `block ${lateWrite.block} reads the same through qemu-img and the dump`);
    assert.equal(lateBlock.readBigUInt64LE(16), BigInt(lateWrite.id), `block ${lateWrite.block} holds write ${lateWrite.id}, written after the failure`);

    // What a served: the writer's blocks, fio's (verified above), qemu-io's, zeroes elsewhere.
    const writerPart = path.join(work, 'served-by-a.writer.img');
    fs.writeFileSync(writerPart, image.subarray(0, writerBlocks * 4096));
    const report = await checkImage(null, writerPart, [history], { acknowledged: 'replied' });
    t.diagnostic(`read back through a: ${JSON.stringify(report.counts)}; blocks ${JSON.stringify(report.held)}`);
    assert.equal(report.failure_count, 0, `seed ${seed}: ${report.failure_count} block(s) wrong through a; history ${history}; first:\n${report.failures.join('\n')}`);
    // (The trimmed half is a hole on b's file system if it can punch one: not checked here,
    // only that b's image ends equal to what a served.)
    const untouched = [
      image.subarray(fioOffset + fioRoundBytes, qemuOffset),
      image.subarray(qemuOffset + 4096, zeroOffset),
      image.subarray(zeroOffset, zeroOffset + 32 * KiB),
      image.subarray(zeroOffset + 64 * KiB),
    ];
    assert.ok(untouched.every((range) => filled(range, 0)), 'nothing else was written, and the zeroed range is zeroes');

    // b's image, after both stop, holds all of it.
    const aExit = await a.stop('SIGTERM', 30_000);
    const bExit = await b.stop('SIGTERM', 30_000);
    t.diagnostic(`a (diskless) stopped with ${JSON.stringify(aExit)}, b with ${JSON.stringify(bExit)}`);
    assert.deepEqual(bExit, { code: 0, signal: null }, `b stops cleanly:\n${b.logs.slice(-2000)}`);
    assert.notEqual(aExit.signal, 'SIGKILL', `a stops on SIGTERM, not killed after 30 s:\n${a.logs.slice(-2000)}`);
    const bImage = assertSameImage(b, image);
    const bWriterPart = path.join(work, 'b.writer.img');
    fs.writeFileSync(bWriterPart, bImage.subarray(0, writerBlocks * 4096));
    const bReport = await checkImage(null, bWriterPart, [history], { acknowledged: 'replied' });
    assert.equal(bReport.failure_count, 0, `seed ${seed}: ${bReport.failure_count} block(s) wrong in b's image; first:\n${bReport.failures.join('\n')}`);
    t.diagnostic(`a's warnings and errors: ${complaints(a)}`);
    t.diagnostic(`seed ${seed}: ${Date.now() - started} ms`);
    passed = true;
  } finally {
    stopFio = true;
    const steps: Array<readonly [string, () => Promise<void>]> = [];
    // Set inside the body, which the compiler cannot follow.
    const w = writer as Writer | null;
    if (w !== null) steps.push(['writer', () => w.finish(1).then(() => undefined)]);
    const loop = fioLoop as Promise<void> | null;
    if (loop !== null) steps.push(['fio', () => loop]);
    await rig.cleanUp(t, passed, steps);
  }
});

test('the disk fails while a\'s log is full and waits for a consistency point: every write is answered all the same', { timeout: 300_000 }, async (t) => {
  requireRootAndTools(tools);
  const rig = new Rig('blockmirror-failed-disk-stall-');
  const bytes = 64 * MiB;
  let fio: Promise<FioRun> | null = null;
  let passed = false;
  try {
    // A consistency point only when a partition fills; 1 MiB writes fill the 12 MiB log
    // long before the first one has made the image durable.
    const { a, b } = await rig.start({ partitionSize: '4MiB', partitions: 3, cpIntervalMs: 600_000 });
    fio = runFio(
      rig.work,
      'stall',
      a.uri('vol0'),
      ['--rw=randwrite', '--bs=1M', '--iodepth=8', `--size=${bytes}`, `--randseed=${seed}`, '--verify=crc32c', '--verify_fatal=1', '--do_verify=1'],
      60_000,
    );
    // A stall under way: its time grows between two looks, and no new one began.
    let last: NodeStatusJson['volumes'][number]['log'] | null = null;
    await waitFor('a\'s log waiting for room', 30_000, async () => {
      const log = vol0(await a.status()).log;
      const stalled = last !== null && log.stalls > 0 && log.stalls === last.stalls && log.stallMs > last.stallMs;
      last = log;
      if (!stalled) await sleep(5);
      return stalled;
    });
    t.diagnostic(`a's log when the disk broke: ${JSON.stringify(last)}`);
    rig.breakDisk();
    await waitDiskless(a);
    const done = await withDeadline(fio, 90_000, 'fio after a went diskless');
    fio = null;
    t.diagnostic(`${describeFio(done)}; a's warnings and errors: ${complaints(a)}`);
    assert.ok(fioOk(done, bytes), `every write answered and read back through a: ${describeFio(done)}; a ${a.child.exitCode === null ? 'runs' : `exited ${a.child.exitCode}`}`);
    const status = vol0(await a.status());
    assert.ok(status.disk === 'diskless' && status.peers[0]?.disk === 'up-to-date', JSON.stringify({ disk: status.disk, peers: status.peers }));
    const served = path.join(rig.work, 'served-by-a.img');
    await dumpVolume(a, served);
    await a.stop('SIGTERM', 30_000);
    assert.equal((await b.stop('SIGTERM', 30_000)).code, 0, 'b stops cleanly');
    assertSameImage(b, fs.readFileSync(served));
    passed = true;
  } finally {
    const running = fio as Promise<FioRun> | null;
    await rig.cleanUp(t, passed, running === null ? [] : [['fio', () => running.then(() => undefined)]]);
  }
});

test(`a replaced disk is attached while the writer goes on: its image is filled from b, and a and b end the same (seed ${seed})`, { timeout: 300_000 }, async (t) => {
  requireRootAndTools(tools);
  const rig = new Rig('blockmirror-attach-');
  const { work } = rig;
  let writer: Writer | null = null;
  let passed = false;
  try {
    const { a, b } = await rig.start({ partitionSize: '4MiB', partitions: 3, cpIntervalMs: 200 });
    const history = path.join(work, 'history.txt');
    const running: Writer = new Writer(a.uri('vol0'), 1, 10_000_000, ['--blocks', String(writerBlocks), '--max-writes', String(writerBudget), '--seconds', '240']);
    writer = running;
    await waitFor(`the writer's first ${writesBefore} replies`, 60_000, () => running.count('A') >= writesBefore || !running.running);
    rig.breakDisk();
    await waitDiskless(a);
    const repliedAtDiskless = running.count('A');

    // A new disk in its place, and `attach` while the writer goes on.
    await rig.replaceDisk();
    const attach = (): ReturnType<typeof run> => run(process.execPath, [cliPath, 'attach', 'vol0', '--node', 'a', '--admin', `http://127.0.0.1:${a.adminPort}`], { timeoutMs: 60_000 });
    const attached = await attach();
    assert.equal(attached.code, 0, `attach: ${attached.stdout}${attached.stderr}`);
    assert.match(attached.stdout, /a new disk is attached for vol0 on node a: its 64MiB are being filled from the peers/);
    const whole = await a.waitStatus(
      'the attached disk filled, a up to date again',
      (status) => vol0(status).disk === 'up-to-date' && vol0(status).attach?.filledBytes === 64 * MiB && vol0(status).diskless === null,
      120_000,
    );
    assert.equal(vol0(whole).attach?.error, null);
    const repliedAtWhole = running.count('A');
    t.diagnostic(`writer replies: ${repliedAtDiskless} at diskless, ${repliedAtWhole} once the new disk was whole`);
    // A second attach has nothing to do, and says so.
    const again = await attach();
    assert.equal(again.code, 1);
    assert.match(again.stderr, /attach refused \(ERR_ROLE_REFUSED\): nothing to attach for vol0 on node a: its disk has not failed/);

    await waitFor(`${writesAfter} writer replies after the disk was whole`, 120_000, () => running.count('A') >= repliedAtWhole + writesAfter || !running.running);
    const writerExit = await running.finish(120_000);
    writer = null;
    fs.writeFileSync(history, running.output);
    const errors = running.output.split('\n').filter((line) => /^(E|FE|X) /.test(line));
    assert.deepEqual(errors.slice(0, 10), [], `the writer saw no error at all (${errors.length} lines); a's log:\n${a.logs.slice(-4000)}`);
    assert.equal(writerExit.code, 0, `the writer exits 0: ${running.stderr}`);
    assert.equal(running.count('A'), writerBudget, 'every write replied to');

    const served = path.join(work, 'served-by-a.img');
    await dumpVolume(a, served);
    const image = fs.readFileSync(served);
    const writerPart = path.join(work, 'served-by-a.writer.img');
    fs.writeFileSync(writerPart, image.subarray(0, writerBlocks * 4096));
    const report = await checkImage(null, writerPart, [history], { acknowledged: 'replied' });
    assert.equal(report.failure_count, 0, `seed ${seed}: ${report.failure_count} block(s) wrong through a; first:\n${report.failures.join('\n')}`);
    assert.ok(filled(image.subarray(writerBlocks * 4096), 0), 'nothing else was written');

    assert.deepEqual(await a.stop('SIGTERM', 30_000), { code: 0, signal: null }, `a stops cleanly:\n${a.logs.slice(-2000)}`);
    assert.deepEqual(await b.stop('SIGTERM', 30_000), { code: 0, signal: null }, `b stops cleanly:\n${b.logs.slice(-2000)}`);
    const aImage = fs.readFileSync(a.imagePath('vol0'));
    assert.equal(aImage.findIndex((byte, at) => byte !== image[at]), -1, 'a\'s new image equals what it served');
    assertSameImage(b, image);
    t.diagnostic(`a's warnings and errors: ${complaints(a)}`);
    passed = true;
  } finally {
    const steps: Array<readonly [string, () => Promise<void>]> = [];
    const w = writer as Writer | null;
    if (w !== null) steps.push(['writer', () => w.finish(1).then(() => undefined)]);
    await rig.cleanUp(t, passed, steps);
  }
});
