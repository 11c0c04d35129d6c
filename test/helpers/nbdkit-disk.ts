// A disk whose faults a test controls, under a node's data directory. The disk is a sparse
// backing file served by nbdkit's `file` plugin behind the filters a test names (`cache`
// with `cache=writeback` loses every write not flushed when nbdkit dies: a power cut;
// `error` with an `error-file` fails every request while that file exists: a disk that
// breaks), presented as a file by nbdfuse, turned into a block device by losetup, with
// ext4 on it:
//
//   blockmirror -> DATA (ext4) -> /dev/loopN -> FUSE/nbd -> nbdkit <filters> -> backing.img
//
// Only what this module creates is ever touched: nbdfuse and nbdkit by the PIDs it started
// (nbdkit is found as the child of our nbdfuse), the loop device losetup printed, and
// mounts under the directories it is given.

import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { isMountPoint, LoopDevice, runCommand, runCommandOk, unmountForcefully, withDeadline } from './fuse.js';
import { sleep } from './node-process.js';

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
 * What nbdkit runs between the file plugin and nbdfuse: `--filter=<f>` for each of
 * `filters` (in order: the first is nearest the client), and `params` (`key=value`) after
 * the plugin's file name.
 */
export interface NbdkitOptions {
  filters: readonly string[];
  params: readonly string[];
}

/**
 * nbdfuse running its own nbdkit (file plugin, the filters asked for) on `backing`,
 * presenting it as `<mountDir>/nbd`. We own nbdfuse by the PID we spawned and nbdkit as
 * its child; `cut()` SIGKILLs nbdkit, which (with a writeback cache) loses every write it
 * had not flushed.
 */
export class NbdkitDisk {
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

  static async start(backing: string, mountDir: string, nbdkit: NbdkitOptions, timeoutMs = 10_000): Promise<NbdkitDisk> {
    fs.mkdirSync(mountDir, { recursive: true });
    const filters = nbdkit.filters.map((filter) => `--filter=${filter}`);
    const child = spawn('nbdfuse', [mountDir, '--command', 'nbdkit', '-s', ...filters, 'file', backing, ...nbdkit.params], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const disk = new NbdkitDisk(backing, mountDir, child);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      await sleep(20);
      if (disk.hasExited) throw new Error(`nbdfuse on ${backing} exited early: ${disk.stderrText}`);
      if (disk.nbdkitPid === null && child.pid !== undefined) {
        const nbdkitPid = childPids(child.pid).find((pid) => commandLine(pid)?.[0]?.endsWith('nbdkit') === true);
        if (nbdkitPid !== undefined) {
          disk.nbdkitPid = nbdkitPid;
          livePids.add(nbdkitPid);
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
export class PoweredStack {
  private constructor(
    readonly disk: NbdkitDisk,
    readonly loop: LoopDevice,
    readonly dataDir: string,
  ) {}

  /** Attaches backing.img, then makes ext4 (first time) or checks it, and mounts it. */
  static async powerOn(
    backing: string,
    fuseDir: string,
    dataDir: string,
    first: boolean,
    nbdkit: NbdkitOptions,
  ): Promise<{ stack: PoweredStack; fsck: string }> {
    const disk = await NbdkitDisk.start(backing, fuseDir, nbdkit);
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
