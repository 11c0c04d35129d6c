// Puts a served volume under a real filesystem without the kernel NBD module: nbdfuse
// exposes the NBD export as the file MOUNTDIR/nbd, and losetup turns that file into a
// /dev/loopN block device that mkfs, e2fsck and mount can use. This module owns the
// nbdfuse processes and loop devices it creates and tears down only those: nbdfuse by the
// PID it spawned, the loop device by the name losetup printed (and only while it is still
// backed by our file). It never detaches, unmounts or kills anything found by name.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { sleep, type RunResult } from './node-process.js';

const liveCommands = new Set<ChildProcess>();

/**
 * Runs a tool to completion, SIGKILLing it (by PID) after `timeoutMs`. Unlike the
 * harness's run(), stdin is /dev/null: writing to the stdin of a tool that has already
 * exited (losetup, umount) raises EPIPE as an uncaught exception in the test process.
 */
export function runCommand(command: string, args: string[], options: { timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    liveCommands.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
    child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.once('error', (error) => {
      clearTimeout(timer);
      liveCommands.delete(child);
      reject(error);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      liveCommands.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Like runCommand(), but throws with the output when the tool does not exit 0. */
export async function runCommandOk(command: string, args: string[], options: { timeoutMs?: number } = {}): Promise<RunResult> {
  const result = await runCommand(command, args, options);
  if (result.code !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited ${result.code ?? result.signal}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  }
  return result;
}

/** Fails, naming what is missing, unless the test runs as root with every tool it needs. */
export function requireRootAndTools(commands: readonly string[]): void {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    throw new Error(
      'this test mounts filesystems (nbdfuse, losetup, mount) and must run as root; ' +
        `it is running as uid ${process.getuid?.() ?? 'unknown'}. Run it as root (CI does).`,
    );
  }
  const searchPath = [...(process.env['PATH'] ?? '').split(':'), '/usr/sbin', '/sbin'];
  const missing = commands.filter(
    (command) => !searchPath.some((dir) => dir !== '' && isExecutable(path.join(dir, command))),
  );
  if (missing.length > 0) {
    throw new Error(`missing tools: ${missing.join(', ')}; run scripts/ensure-tools.sh as root`);
  }
  if (!fs.existsSync('/dev/fuse')) throw new Error('/dev/fuse is missing: FUSE is not available here');
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** Resolves with the promise, or rejects after `timeoutMs` so no cleanup step can hang. */
export function withDeadline<T>(promise: Promise<T>, timeoutMs: number, label: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${label}: no result after ${timeoutMs} ms`)), timeoutMs);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/**
 * Runs every cleanup step in order, each bounded in time, and returns the failures instead
 * of stopping at the first one: a failed unmount must not leave the server running.
 */
export async function runCleanupSteps(
  steps: ReadonlyArray<readonly [label: string, step: () => Promise<void>]>,
  stepTimeoutMs = 20_000,
): Promise<Error[]> {
  const failures: Error[] = [];
  for (const [label, step] of steps) {
    try {
      await withDeadline(step(), stepTimeoutMs, label);
    } catch (error) {
      failures.push(new Error(`cleanup step "${label}" failed: ${String(error instanceof Error ? error.message : error)}`));
    }
  }
  return failures;
}

/** Mount points and their filesystem types, read from /proc so a dead FUSE mount cannot hang us. */
export function listMounts(): Array<{ mountPoint: string; fsType: string; source: string }> {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  const unescape = (field: string): string =>
    field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
  const mounts: Array<{ mountPoint: string; fsType: string; source: string }> = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const [before, after] = line.split(' - ');
    const mountPoint = before?.split(' ')[4];
    const [fsType, source] = (after ?? '').split(' ');
    if (mountPoint !== undefined) mounts.push({ mountPoint: unescape(mountPoint), fsType: fsType ?? '', source: source ?? '' });
  }
  return mounts;
}

export function isMountPoint(dir: string): boolean {
  return listMounts().some((mount) => mount.mountPoint === dir);
}

/**
 * Unmounts `dir` if something is mounted there; a busy mount is retried, then detached
 * lazily so later steps can proceed. Throws when a normal unmount never succeeded.
 */
export async function unmountForcefully(dir: string, timeoutMs = 5_000): Promise<void> {
  if (!isMountPoint(dir)) return;
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  while (Date.now() < deadline) {
    const result = await runCommand('umount', [dir], { timeoutMs: Math.max(1_000, deadline - Date.now()) });
    if (result.code === 0 || !isMountPoint(dir)) return;
    lastError = result.stderr.trim();
    await sleep(200);
  }
  await runCommand('umount', ['-l', dir], { timeoutMs: 5_000 });
  throw new Error(`umount ${dir} kept failing (${lastError}); detached it lazily`);
}

/** An NBD export presented by nbdfuse as the file `<mountDir>/nbd`. */
export class FuseExport {
  private stderrText = '';
  private hasExited = false;
  private readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(
    readonly mountDir: string,
    readonly child: ChildProcess,
  ) {
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (text: string) => {
      this.stderrText += text;
    });
    this.exited = new Promise((resolve) => {
      const finish = (code: number | null, signal: NodeJS.Signals | null): void => {
        this.hasExited = true;
        liveFuse.delete(this);
        resolve({ code, signal });
      };
      child.once('exit', finish);
      // A failed spawn emits 'error' and never 'exit'.
      child.once('error', (error) => {
        this.stderrText += String(error);
        finish(null, null);
      });
    });
    liveFuse.add(this);
  }

  /** Starts nbdfuse in the foreground (so we own its PID) and waits until the file exists. */
  static async start(uri: string, mountDir: string, timeoutMs = 10_000): Promise<FuseExport> {
    fs.mkdirSync(mountDir, { recursive: true });
    const child = spawn('nbdfuse', [mountDir, uri], { stdio: ['ignore', 'ignore', 'pipe'] });
    const fuse = new FuseExport(mountDir, child);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      await sleep(20);
      if (!fuse.running) {
        throw new Error(`nbdfuse ${uri} exited early (${child.exitCode ?? child.signalCode}): ${fuse.stderrText}`);
      }
      if (isMountPoint(mountDir) && fs.existsSync(fuse.filePath)) return fuse;
    }
    await fuse.close().catch(() => undefined);
    throw new Error(`nbdfuse ${uri}: ${fuse.filePath} did not appear within ${timeoutMs} ms: ${fuse.stderrText}`);
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

  get running(): boolean {
    return !this.hasExited;
  }

  /**
   * The normal way out: unmount, after which nbdfuse flushes and exits by itself. Returns
   * its exit status so a test can insist on a clean one.
   */
  async unmount(timeoutMs = 10_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.running && isMountPoint(this.mountDir)) {
      const result = await runCommand('umount', [this.mountDir], { timeoutMs });
      if (result.code !== 0) throw new Error(`umount ${this.mountDir} exited ${result.code ?? result.signal}: ${result.stderr}`);
    }
    return withDeadline(this.exited, timeoutMs, `nbdfuse (pid ${this.pid}) exit after umount`);
  }

  /**
   * Cleanup: unmount if still mounted, give nbdfuse time to exit, then SIGTERM and SIGKILL
   * it by its PID, and remove a mount its death left behind. Safe to call twice.
   */
  async close(): Promise<void> {
    const problems: string[] = [];
    if (this.running) {
      try {
        await unmountForcefully(this.mountDir, 5_000);
      } catch (error) {
        problems.push(String(error));
      }
      const waitExit = async (ms: number): Promise<boolean> =>
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
    if (isMountPoint(this.mountDir)) await runCommand('umount', ['-l', this.mountDir], { timeoutMs: 5_000 });
    if (problems.length > 0) throw new Error(problems.join('; '));
  }
}

const liveFuse = new Set<FuseExport>();
// If the test process dies without cleanup, do not leave nbdfuse, its mount or a tool behind.
process.on('exit', () => {
  for (const child of liveCommands) {
    try {
      if (child.pid !== undefined && child.exitCode === null) process.kill(child.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
  for (const fuse of liveFuse) {
    spawnSync('umount', ['-l', fuse.mountDir], { timeout: 3_000 });
    try {
      if (fuse.pid !== undefined) process.kill(fuse.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
});

/** A loop device attached by `losetup -f --show`; only that device is ever detached. */
export class LoopDevice {
  private detached = false;

  private constructor(
    readonly device: string,
    readonly backingFile: string,
  ) {}

  static async attach(file: string, timeoutMs = 10_000): Promise<LoopDevice> {
    const result = await runCommand('losetup', ['-f', '--show', file], { timeoutMs });
    const device = result.stdout.trim();
    if (result.code !== 0 || !/^\/dev\/loop\d+$/.test(device)) {
      throw new Error(`losetup -f --show ${file} exited ${result.code ?? result.signal}: ${result.stdout} ${result.stderr}`);
    }
    return new LoopDevice(device, file);
  }

  /** True while the kernel still says this device is backed by our file. */
  stillOurs(): boolean {
    try {
      const name = path.basename(this.device);
      const backing = fs.readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim();
      return backing === this.backingFile || backing === fs.realpathSync(this.backingFile);
    } catch {
      return false;
    }
  }

  async detach(timeoutMs = 10_000): Promise<void> {
    if (this.detached) return;
    if (!this.stillOurs()) {
      this.detached = true;
      return;
    }
    const result = await runCommand('losetup', ['-d', this.device], { timeoutMs });
    if (result.code !== 0) throw new Error(`losetup -d ${this.device} exited ${result.code ?? result.signal}: ${result.stderr}`);
    this.detached = true;
  }
}

/** nbdfuse plus a loop device on its file: a served volume as a local block device. */
export class AttachedVolume {
  private constructor(
    readonly fuse: FuseExport,
    readonly loop: LoopDevice,
  ) {}

  static async attach(uri: string, fuseDir: string): Promise<AttachedVolume> {
    const fuse = await FuseExport.start(uri, fuseDir);
    try {
      return new AttachedVolume(fuse, await LoopDevice.attach(fuse.filePath));
    } catch (error) {
      await fuse.close().catch(() => undefined);
      throw error;
    }
  }

  get device(): string {
    return this.loop.device;
  }

  /** Strict teardown for the test body: detach, unmount, and nbdfuse must exit 0. */
  async detach(): Promise<void> {
    await this.loop.detach();
    const exit = await this.fuse.unmount();
    if (exit.code !== 0) throw new Error(`nbdfuse exited ${exit.code ?? exit.signal} after umount: ${this.fuse.logs}`);
  }

  /** Forgiving teardown steps for `finally`, in order, for runCleanupSteps(). */
  cleanupSteps(): Array<readonly [string, () => Promise<void>]> {
    return [
      [`losetup -d ${this.loop.device}`, () => this.loop.detach()],
      [`unmount nbdfuse ${this.fuse.mountDir} (pid ${this.fuse.pid ?? '?'})`, () => this.fuse.close()],
    ];
  }
}
