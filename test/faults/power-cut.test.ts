// Power-cut test: the node's data directory lives on ext4 on a disk that loses every write
// not flushed when the power goes. The disk is a sparse backing file served by nbdkit's
// `file` plugin behind `--filter=cache cache=writeback` (writes sit in nbdkit's cache until
// a flush), presented as a file by nbdfuse, turned into a block device by losetup:
//
//   blockmirror -> DATA (ext4) -> /dev/loopN -> FUSE/nbd -> nbdkit cache -> backing.img
//
// Each round writes (writer.py: FUA writes, plain writes and FLUSHes, several in flight,
// every durable acknowledgement recorded), then cuts the power: SIGKILL nbdkit (its
// unflushed cache is gone) and the server at once. The stack is torn down, the same
// backing.img attached through a fresh nbdkit (empty cache: only what was flushed is
// there), e2fsck replays the ext4 journal, and the node restarts on the same data
// directory. Every write acknowledged as durable must read back exactly, and nothing may
// read back that was never written. BLOCKMIRROR_SEED=<n> replays the seed's workload and
// cut moments. Runs as root (mount, losetup, FUSE); elsewhere it fails and says why.
//
// Only what this test creates is ever touched: nbdfuse and nbdkit by the PIDs it started
// (nbdkit is found as the child of our nbdfuse), the loop device losetup printed, and
// mounts under its own temporary directory.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  isMountPoint,
  LoopDevice,
  requireRootAndTools,
  runCleanupSteps,
  runCommand,
  runCommandOk,
  unmountForcefully,
  withDeadline,
} from '../helpers/fuse.js';
import { makeTempDir, sleep, startNode, type TestNode } from '../helpers/node-process.js';
import { Prng } from '../unit/prng.js';
import { checkImage, dumpVolume, log, logStatus, runUntilFault, seed, volumeOpened, volumes, Writer, type RoundKind } from './workload.js';

const backingSize = '256M';

console.log(`power-cut.test: seed=${seed} (BLOCKMIRROR_SEED=${seed} replays it)`);

// ---- processes started here, killed by PID if the test process dies -------------------

const liveChildren = new Set<ChildProcess>();
const livePids = new Set<number>();
process.on('exit', () => {
  for (const child of liveChildren) {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }
  for (const pid of livePids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
});

/** `/proc/<pid>/cmdline` as arguments, or null when there is no such process. */
function commandLine(pid: number): string[] | null {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((arg) => arg !== '');
  } catch {
    return null;
  }
}

/** Direct children of `pid`, from /proc (every thread's list). */
function childPids(pid: number): number[] {
  const pids = new Set<number>();
  try {
    for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
      const text = fs.readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').trim();
      for (const word of text.split(/\s+/)) if (word !== '') pids.add(Number(word));
    }
  } catch {
    // The process is gone.
  }
  return [...pids];
}

/**
 * nbdfuse running its own nbdkit (file plugin, writeback cache filter) on `backing`,
 * presenting it as `<mountDir>/nbd`. We own nbdfuse by the PID we spawned and nbdkit as
 * its child; `cut()` SIGKILLs nbdkit, which loses every write it had not flushed.
 */
class CachedDisk {
  private stderrText = '';
  private hasExited = false;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private nbdkitPid: number | null = null;

  private constructor(
    readonly backing: string,
    readonly mountDir: string,
    readonly child: ChildProcess,
  ) {
    liveChildren.add(child);
    child.stderr?.setEncoding('utf8').on('data', (text: string) => (this.stderrText += text));
    this.exited = new Promise((resolve) => {
      const finish = (code: number | null, signal: NodeJS.Signals | null): void => {
        this.hasExited = true;
        liveChildren.delete(child);
        resolve({ code, signal });
      };
      child.once('exit', finish);
      child.once('error', (error) => {
        this.stderrText += String(error);
        finish(null, null);
      });
    });
  }

  static async start(backing: string, mountDir: string, timeoutMs = 10_000): Promise<CachedDisk> {
    fs.mkdirSync(mountDir, { recursive: true });
    const child = spawn(
      'nbdfuse',
      [mountDir, '--command', 'nbdkit', '-s', '--filter=cache', 'file', backing, 'cache=writeback'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const disk = new CachedDisk(backing, mountDir, child);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      await sleep(20);
      if (disk.hasExited) throw new Error(`nbdfuse on ${backing} exited early: ${disk.stderrText}`);
      if (disk.nbdkitPid === null && child.pid !== undefined) {
        const nbdkit = childPids(child.pid).find((pid) => commandLine(pid)?.[0]?.endsWith('nbdkit') === true);
        if (nbdkit !== undefined) {
          disk.nbdkitPid = nbdkit;
          livePids.add(nbdkit);
        }
      }
      if (disk.nbdkitPid !== null && isMountPoint(mountDir) && fs.existsSync(disk.filePath)) return disk;
    }
    await disk.close().catch(() => undefined);
    throw new Error(`nbdfuse on ${backing}: ${disk.filePath} (and its nbdkit) did not appear within ${timeoutMs} ms: ${disk.stderrText}`);
  }

  get filePath(): string {
    return path.join(this.mountDir, 'nbd');
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get logs(): string {
    return this.stderrText;
  }

  /** True while `pid` is still the nbdkit we started on our backing file. */
  private nbdkitAlive(): boolean {
    if (this.nbdkitPid === null) return false;
    const args = commandLine(this.nbdkitPid);
    return args !== null && args[0]?.endsWith('nbdkit') === true && args.includes(this.backing);
  }

  /** The power cut, for this disk: nbdkit dies with its unflushed cache. */
  cut(): void {
    if (this.nbdkitPid !== null && this.nbdkitAlive()) process.kill(this.nbdkitPid, 'SIGKILL');
  }

  /** Clean way out: unmount, after which nbdfuse flushes nbdkit and exits. */
  async unmount(timeoutMs = 20_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.hasExited && isMountPoint(this.mountDir)) await runCommandOk('umount', [this.mountDir], { timeoutMs });
    const exit = await withDeadline(this.exited, timeoutMs, `nbdfuse (pid ${this.pid}) exit after umount`);
    await this.reapNbdkit(timeoutMs);
    return exit;
  }

  private async reapNbdkit(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.nbdkitAlive() && Date.now() < deadline) await sleep(20);
    if (this.nbdkitAlive() && this.nbdkitPid !== null) {
      process.kill(this.nbdkitPid, 'SIGKILL');
      await sleep(50);
    }
    if (this.nbdkitPid !== null && !this.nbdkitAlive()) livePids.delete(this.nbdkitPid);
  }

  /** Cleanup: unmount (lazily if need be), then SIGTERM/SIGKILL nbdfuse and nbdkit by PID. */
  async close(): Promise<void> {
    const problems: string[] = [];
    if (!this.hasExited) {
      try {
        await unmountForcefully(this.mountDir, 5_000);
      } catch (error) {
        problems.push(String(error));
      }
      const waitExit = (ms: number): Promise<boolean> =>
        withDeadline(this.exited, ms, 'nbdfuse exit').then(
          () => true,
          () => false,
        );
      if (!(await waitExit(5_000))) {
        problems.push(`nbdfuse pid ${this.pid} still running after unmount; sent SIGTERM`);
        this.child.kill('SIGTERM');
        if (!(await waitExit(3_000))) {
          this.child.kill('SIGKILL');
          await waitExit(3_000);
        }
      }
    }
    await this.reapNbdkit(3_000);
    if (isMountPoint(this.mountDir)) await runCommand('umount', ['-l', this.mountDir], { timeoutMs: 5_000 });
    if (problems.length > 0) throw new Error(problems.join('; '));
  }
}

/** The whole stack under the node's data directory, for one power-on period. */
class PoweredStack {
  private constructor(
    readonly disk: CachedDisk,
    readonly loop: LoopDevice,
    readonly dataDir: string,
  ) {}

  /** Attaches backing.img, then makes ext4 (first time) or checks it, and mounts it. */
  static async powerOn(backing: string, fuseDir: string, dataDir: string, first: boolean): Promise<{ stack: PoweredStack; fsck: string }> {
    const disk = await CachedDisk.start(backing, fuseDir);
    let loop: LoopDevice | null = null;
    try {
      loop = await LoopDevice.attach(disk.filePath);
      let fsck = '';
      if (first) {
        await runCommandOk('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0,nodiscard', loop.device], { timeoutMs: 60_000 });
      } else {
        // Journal replay and a full check: 0 clean, 1 corrected, 2 corrected (reboot advised).
        const result = await runCommand('e2fsck', ['-f', '-y', loop.device], { timeoutMs: 60_000 });
        fsck = `e2fsck exit ${result.code ?? result.signal}`;
        if (result.code === null || result.code >= 4) {
          throw new Error(`e2fsck -fy ${loop.device} exited ${result.code ?? result.signal}:\n${result.stdout}\n${result.stderr}`);
        }
        if (result.code !== 0) fsck += `: ${result.stdout.trim().split('\n').slice(-3).join(' / ')}`;
      }
      fs.mkdirSync(dataDir, { recursive: true });
      await runCommandOk('mount', ['-t', 'ext4', loop.device, dataDir], { timeoutMs: 30_000 });
      return { stack: new PoweredStack(disk, loop, dataDir), fsck };
    } catch (error) {
      await loop?.detach().catch(() => undefined);
      await disk.close().catch(() => undefined);
      throw error;
    }
  }

  /** After the cut: nothing can be flushed any more; detach everything. */
  async tearDownAfterCut(): Promise<void> {
    if (isMountPoint(this.dataDir)) await runCommandOk('umount', ['-l', this.dataDir], { timeoutMs: 10_000 });
    // The lazily unmounted ext4 lets go of the loop device once it has given up writing.
    const deadline = Date.now() + 15_000;
    await this.loop.detach();
    while (this.loop.stillOurs() && Date.now() < deadline) await sleep(50);
    if (this.loop.stillOurs()) throw new Error(`${this.loop.device} still attached 15 s after the cut`);
    await this.disk.close();
  }

  /** Clean shutdown: unmount ext4, detach, unmount FUSE (nbdfuse flushes and exits 0). */
  async powerOff(): Promise<void> {
    await runCommandOk('umount', [this.dataDir], { timeoutMs: 30_000 });
    await this.loop.detach();
    const exit = await this.disk.unmount();
    assert.deepEqual(exit, { code: 0, signal: null }, `nbdfuse exits 0 after umount: ${this.disk.logs}`);
  }

  cleanupSteps(): Array<readonly [string, () => Promise<void>]> {
    return [
      [`unmount ${this.dataDir}`, () => unmountForcefully(this.dataDir, 5_000)],
      [`losetup -d ${this.loop.device}`, () => this.loop.detach()],
      [`nbdfuse ${this.disk.mountDir} (pid ${this.disk.pid ?? '?'})`, () => this.disk.close()],
    ];
  }
}

// ---- the test --------------------------------------------------------------------------

test(`power cut (server and unflushed disk cache die together) loses no durable write (seed ${seed})`, { timeout: 300_000 }, async (t) => {
  requireRootAndTools(['nbdkit', 'nbdfuse', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'umount']);
  const rng = new Prng(seed);
  const base = makeTempDir('blockmirror-powercut-');
  const backing = path.join(base, 'backing.img');
  const fuseDir = path.join(base, 'fuse');
  const nodeDir = path.join(base, 'node');
  const dataDir = path.join(nodeDir, 'data'); // the harness's dataDir: ./data next to cluster.yaml
  const work = path.join(base, 'work');
  fs.mkdirSync(nodeDir);
  fs.mkdirSync(work);
  await runCommandOk('truncate', ['-s', backingSize, backing]);

  const kinds: RoundKind[] = ['after-cp', 'random', 'idle'];
  for (let i = kinds.length - 1; i > 0; i -= 1) {
    const j = rng.below(i + 1);
    [kinds[i], kinds[j]] = [kinds[j] as RoundKind, kinds[i] as RoundKind];
  }
  let stack: PoweredStack | null = null;
  let node: TestNode | null = null;
  let writer: Writer | null = null;
  let before: string | null = null;
  let passed = false;
  const started = Date.now();
  try {
    stack = (await PoweredStack.powerOn(backing, fuseDir, dataDir, true)).stack;
    node = await startNode({ dir: nodeDir, volumes, log });
    assert.equal(node.dataDir, dataDir);

    for (let round = 0; round < kinds.length; round += 1) {
      const kind = kinds[round] as RoundKind;
      const roundStarted = Date.now();
      const current: TestNode = node;
      const powered: PoweredStack = stack;
      const history = path.join(work, `history-${round}.txt`);
      const { writer: roundWriter, note: cutNote } = await runUntilFault(current, round, kind, rng, { maxWrites: 2000, wrapTimeoutMs: 60_000 }, (started) => (writer = started));
      const atCut = await logStatus(current).catch(() => null);

      assert.equal(current.child.exitCode, null, `seed ${seed} round ${round}: the node died by itself before the cut:\n${current.logs.slice(-3000)}`);
      // The cut: the disk's volatile cache and the server die together.
      powered.disk.cut();
      process.kill(current.pid, 'SIGKILL');
      const exit = await withDeadline(current.exited, 10_000, 'node exit after SIGKILL');
      assert.equal(exit.signal, 'SIGKILL', 'the node died of SIGKILL');
      node = null;
      await roundWriter.finish(20_000);
      fs.writeFileSync(history, roundWriter.output);
      const durable = roundWriter.count('D');
      writer = null;
      await powered.tearDownAfterCut();
      stack = null;

      // Power back on: the same backing file, a fresh nbdkit whose cache is empty.
      const on = await PoweredStack.powerOn(backing, fuseDir, dataDir, false);
      stack = on.stack;
      try {
        node = await startNode({ dir: nodeDir, volumes, log });
      } catch (error) {
        throw new Error(
          `seed ${seed} round ${round}: the node did not restart after the power cut (${cutNote}): ` +
            `${error instanceof Error ? error.message : String(error)}`,
        );
      }
      const opened = volumeOpened(node);
      const after = path.join(work, `after-${round}.img`);
      await dumpVolume(node, after);
      const report = await checkImage(before, after, [history]);
      if (before !== null) fs.rmSync(before);
      before = after;
      t.diagnostic(
        `round ${round} (${kind}): cut ${cutNote} (log before cut: ${JSON.stringify(atCut)}); ` +
          `writes ${report.counts['submitted']}, replied ${report.counts['replied']}, failed ${report.counts['failed']}, durable ${durable}; ${on.fsck}; ` +
          `replayed ${String(opened['replayedEntries'])} entries from cpSeq ${String(opened['cpSeq'])} ` +
          `(torn ${String(opened['tornBytes'])} B); blocks ${JSON.stringify(report.held)}; ${Date.now() - roundStarted} ms`,
      );
      assert.equal(
        report.failure_count,
        0,
        `seed ${seed} round ${round} (cut ${cutNote}): ${report.failure_count} block(s) wrong after power-on; ` +
          `history ${history}; first:\n${report.failures.join('\n')}`,
      );
    }

    // Clean end: SIGTERM exits 0, then the stack comes down in order, nbdfuse exiting 0.
    const last: TestNode = node;
    const stopped = await last.stop('SIGTERM', 30_000);
    node = null;
    assert.deepEqual(stopped, { code: 0, signal: null }, `SIGTERM exits 0:\n${last.logs.slice(-2000)}`);
    const powered: PoweredStack = stack;
    await powered.powerOff();
    stack = null;
    t.diagnostic(`seed ${seed}: ${kinds.length} power cuts in ${Date.now() - started} ms`);
    passed = true;
  } finally {
    const steps: Array<readonly [string, () => Promise<void>]> = [];
    // Set by runUntilFault's callback, which the compiler cannot follow.
    const w = writer as Writer | null;
    if (w !== null) steps.push(['writer', () => w.finish(1).then(() => undefined)]);
    const n = node;
    if (n !== null) steps.push([`node pid ${n.pid}`, () => n.stop('SIGKILL', 5_000).then(() => undefined)]);
    if (stack !== null) steps.push(...stack.cleanupSteps());
    const failures = await runCleanupSteps(steps);
    if (passed) {
      fs.rmSync(base, { recursive: true, force: true });
    } else {
      t.diagnostic(`seed ${seed}: kept ${base} (backing.img, histories and images in work/)`);
    }
    if (failures.length > 0) {
      const message = failures.map((failure) => failure.message).join('; ');
      // A failed test keeps its own error; cleanup trouble is reported beside it.
      if (passed) throw new AggregateError(failures, message);
      t.diagnostic(`cleanup: ${message}`);
    }
  }
});
