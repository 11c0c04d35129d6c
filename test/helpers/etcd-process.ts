// One etcd member for a test (coordination through etcd, docs/operations.md): Debian's
// `etcd` (scripts/ensure-tools.sh installs it), started on loopback ports chosen for it,
// with a data directory of its own, and ended by the PID it was started with, whatever
// happens to the test process.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { freePort, reapAtExit, sleep } from './node-process.js';

export class EtcdProcess {
  private stderrText = '';
  private readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(
    private readonly child: ChildProcess,
    /** Where clients reach it: http://127.0.0.1:<port>. */
    readonly clientUrl: string,
    readonly dataDir: string,
  ) {
    reapAtExit(child);
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (text: string) => {
      // Bounded: only the tail matters when it fails.
      this.stderrText = (this.stderrText + text).slice(-16_384);
    });
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  /** Starts a one-member cluster named `name` with its data under `dir`, and waits (at most 20 s) until it answers. */
  static async start(dir: string, name = 'etcd0'): Promise<EtcdProcess> {
    const host = '127.0.0.1';
    const clientPort = await freePort(host);
    let peerPort = await freePort(host);
    while (peerPort === clientPort) peerPort = await freePort(host);
    const clientUrl = `http://${host}:${clientPort}`;
    const peerUrl = `http://${host}:${peerPort}`;
    const dataDir = path.join(dir, `${name}.etcd`);
    const child = spawn(
      'etcd',
      [
        '--name', name,
        '--data-dir', dataDir,
        '--listen-client-urls', clientUrl,
        '--advertise-client-urls', clientUrl,
        '--listen-peer-urls', peerUrl,
        '--initial-advertise-peer-urls', peerUrl,
        '--initial-cluster', `${name}=${peerUrl}`,
        '--initial-cluster-state', 'new',
        '--logger', 'zap',
        '--log-level', 'warn',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const etcd = new EtcdProcess(child, clientUrl, dataDir);
    try {
      await etcd.waitHealthy(20_000);
    } catch (error) {
      await etcd.stop('SIGKILL');
      throw error;
    }
    return etcd;
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error('etcd has no pid');
    return this.child.pid;
  }

  /** What etcd wrote to stderr last (for a failure's message). */
  get stderr(): string {
    return this.stderrText;
  }

  private async waitHealthy(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = 'no answer yet';
    while (Date.now() < deadline) {
      if (this.child.exitCode !== null || this.child.signalCode !== null) throw new Error(`etcd exited before it was healthy: ${this.stderrText}`);
      try {
        const answer = await fetch(`${this.clientUrl}/health`, { signal: AbortSignal.timeout(1000) });
        const body = (await answer.json()) as { health?: string };
        if (answer.ok && body.health === 'true') return;
        last = `HTTP ${answer.status} ${JSON.stringify(body)}`;
      } catch (error) {
        last = String(error);
      }
      await sleep(50);
    }
    throw new Error(`etcd at ${this.clientUrl} not healthy after ${timeoutMs} ms (${last}): ${this.stderrText}`);
  }

  /** Ends it by its PID (`SIGTERM`, then `SIGKILL` after 5 s) and waits for it; the data directory stays. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill(signal);
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000);
      try {
        return await this.exited;
      } finally {
        clearTimeout(timer);
      }
    }
    return this.exited;
  }

  /** Stops it and removes its data directory. */
  async remove(): Promise<void> {
    await this.stop('SIGKILL');
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }
}
