// An etcd for a test, of one member or of several (coordination through etcd,
// docs/operations.md): Debian's `etcd` (scripts/ensure-tools.sh installs it), started on
// loopback ports chosen for it, with a data directory of its own per member, and ended by
// the PID it was started with, whatever happens to the test process.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { freePort, reapAtExit, sleep } from './node-process.js';

interface Member {
  name: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
  /** The network namespace it runs in (`ip netns exec`, which becomes etcd: the same PID); none: the test's. */
  netns?: string;
}

export class EtcdProcess {
  private stderrText = '';
  private readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  /** Where clients reach it: http://127.0.0.1:<port>. */
  readonly clientUrl: string;
  readonly dataDir: string;

  private constructor(
    private readonly child: ChildProcess,
    private readonly member: Member,
    private readonly initial: string,
  ) {
    this.clientUrl = member.clientUrl;
    this.dataDir = member.dataDir;
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
    const [member] = await EtcdProcess.plan(dir, [name]);
    if (member === undefined) throw new Error('no member planned');
    return EtcdProcess.launch(member, `${name}=${member.peerUrl}`, 'new');
  }

  /** A one-member cluster inside network namespace `netns`, at `host` (one of its addresses) on etcd's usual ports. */
  static async startIn(dir: string, netns: string, host: string, name = 'etcd0'): Promise<EtcdProcess> {
    const member: Member = { name, clientUrl: `http://${host}:2379`, peerUrl: `http://${host}:2380`, dataDir: path.join(dir, `${name}.etcd`), netns };
    return EtcdProcess.launch(member, `${name}=${member.peerUrl}`, 'new');
  }

  /** Starts a cluster of `size` members (etcd0, etcd1, ...) under `dir`, and waits until each answers. */
  static async startCluster(dir: string, size: number): Promise<EtcdProcess[]> {
    const members = await EtcdProcess.plan(dir, Array.from({ length: size }, (_, index) => `etcd${index}`));
    const initial = members.map((member) => `${member.name}=${member.peerUrl}`).join(',');
    const children = members.map((member) => EtcdProcess.spawnMember(member, initial, 'new'));
    try {
      // The members elect a leader only once a majority runs: each waits for the others.
      await Promise.all(children.map((etcd) => etcd.waitHealthy(30_000)));
    } catch (error) {
      await Promise.all(children.map((etcd) => etcd.stop('SIGKILL')));
      throw error;
    }
    return children;
  }

  /** Ports on loopback for each member's clients and peers, all distinct. */
  private static async plan(dir: string, names: string[]): Promise<Member[]> {
    const host = '127.0.0.1';
    const taken = new Set<number>();
    const port = async (): Promise<number> => {
      let chosen = await freePort(host);
      while (taken.has(chosen)) chosen = await freePort(host);
      taken.add(chosen);
      return chosen;
    };
    const members: Member[] = [];
    for (const name of names) {
      members.push({ name, clientUrl: `http://${host}:${await port()}`, peerUrl: `http://${host}:${await port()}`, dataDir: path.join(dir, `${name}.etcd`) });
    }
    return members;
  }

  private static async launch(member: Member, initial: string, state: 'new' | 'existing'): Promise<EtcdProcess> {
    const etcd = EtcdProcess.spawnMember(member, initial, state);
    try {
      await etcd.waitHealthy(20_000);
    } catch (error) {
      await etcd.stop('SIGKILL');
      throw error;
    }
    return etcd;
  }

  private static spawnMember(member: Member, initial: string, state: 'new' | 'existing'): EtcdProcess {
    const child = spawn(
      member.netns === undefined ? 'etcd' : 'ip',
      [
        ...(member.netns === undefined ? [] : ['netns', 'exec', member.netns, 'etcd']),
        '--name', member.name,
        '--data-dir', member.dataDir,
        '--listen-client-urls', member.clientUrl,
        '--advertise-client-urls', member.clientUrl,
        '--listen-peer-urls', member.peerUrl,
        '--initial-advertise-peer-urls', member.peerUrl,
        '--initial-cluster', initial,
        '--initial-cluster-state', state,
        '--logger', 'zap',
        '--log-level', 'warn',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    return new EtcdProcess(child, member, initial);
  }

  /** The same member started again on its data directory and ports (after `stop`). */
  async restart(): Promise<EtcdProcess> {
    await this.stop();
    return EtcdProcess.launch(this.member, this.initial, 'existing');
  }

  get name(): string {
    return this.member.name;
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
