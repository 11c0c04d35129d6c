// Hooks (docs/operations.md, "Hooks"): commands the cluster file names for a volume's
// role changes on this node (`promoted`, `demoted`, `splitBrain`), run like DRBD's
// handlers with what happened in their environment: BLOCKMIRROR_EVENT, BLOCKMIRROR_VOLUME,
// BLOCKMIRROR_NODE, BLOCKMIRROR_EPOCH, BLOCKMIRROR_ROLE (and BLOCKMIRROR_PEER for a split
// brain). A hook runs after the change it reports and nothing waits for it: a fenced
// primary has stopped acknowledging before its `demoted` hook starts, and a hook that
// hangs or fails is killed after `hooks.timeoutMs`, logged, and counted, never a reason
// to hold a role change. Its output is logged (the last hookOutputBytesMax bytes).

import { spawn } from 'node:child_process';
import { constants } from '../constants.js';
import type { HooksConfig } from '../control/config.js';
import type { Logger } from '../lib/log.js';

export type HookEvent = 'promoted' | 'demoted' | 'splitBrain';

export interface HookContext {
  volume: string;
  node: string;
  epoch: number;
  role: string;
  /** The other copy of a split brain. */
  peer?: string;
}

export interface HookOutcome {
  event: HookEvent;
  command: string;
  /** The exit status, or null when it was killed or could not start. */
  code: number | null;
  timedOut: boolean;
  output: string;
  durationMs: number;
}

export class Hooks {
  /** Hooks run so far, and how many of them failed (status and metrics). */
  readonly counts = { run: 0, failed: 0 };
  private readonly running = new Set<Promise<HookOutcome>>();

  constructor(
    private readonly config: HooksConfig,
    private readonly log: Logger,
  ) {}

  /** Starts the hook of `event`, if the cluster file names one; never throws, never blocks. */
  fire(event: HookEvent, context: HookContext): Promise<HookOutcome> | null {
    const command = this.config[event];
    if (command === null) return null;
    const run = this.run(event, command, context);
    this.running.add(run);
    void run.finally(() => this.running.delete(run));
    return run;
  }

  /** Waits for the hooks still running (a node's stop; each is bounded by its time limit). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.running]);
  }

  private run(event: HookEvent, command: string, context: HookContext): Promise<HookOutcome> {
    const startedMs = performance.now();
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      BLOCKMIRROR_EVENT: event,
      BLOCKMIRROR_VOLUME: context.volume,
      BLOCKMIRROR_NODE: context.node,
      BLOCKMIRROR_EPOCH: String(context.epoch),
      BLOCKMIRROR_ROLE: context.role,
      ...(context.peer === undefined ? {} : { BLOCKMIRROR_PEER: context.peer }),
    };
    this.counts.run += 1;
    return new Promise<HookOutcome>((resolve) => {
      let output = '';
      let timedOut = false;
      const keep = (chunk: Buffer): void => {
        output = (output + chunk.toString('utf8')).slice(-constants.hookOutputBytesMax);
      };
      const child = spawn('/bin/sh', ['-c', command], { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
      child.stdout.on('data', keep);
      child.stderr.on('data', keep);
      // The whole process group goes at the time limit: a hook's own children too.
      const timer = setTimeout(() => {
        timedOut = true;
        try {
          if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
        } catch {
          child.kill('SIGKILL');
        }
      }, this.config.timeoutMs);
      let finished = false;
      const done = (code: number | null, problem: string | null): void => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        const outcome: HookOutcome = { event, command, code, timedOut, output: output.trimEnd(), durationMs: Math.round(performance.now() - startedMs) };
        const fields = { event, volume: context.volume, epoch: context.epoch, code: code ?? 'none', durationMs: outcome.durationMs, output: outcome.output };
        if (code === 0) {
          this.log.info('hook ran', fields);
        } else {
          this.counts.failed += 1;
          const why = timedOut ? `killed after ${this.config.timeoutMs} ms` : problem ?? `exit status ${code ?? 'none'}`;
          this.log.error(`hook failed: ${why}`, fields);
        }
        resolve(outcome);
      };
      child.once('error', (error) => done(null, `could not start: ${error.message}`));
      child.once('close', (code) => done(code, null));
    });
  }
}
