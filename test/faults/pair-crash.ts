// A sync pair killed at seeded random moments, with real processes: node a is the
// primary of vol0, mirrored to b. Each round a client (writer.py, libnbd) writes through
// a with FUA writes and flushes; at a moment the seed picks, a or b is SIGKILLed (while
// the client writes, while it is starting again, or while a resyncs b), restarted, and
// the client reconnects for the next round. After each round every write a replied to
// must read back from a (a killed process keeps the page cache, so a reply is enough);
// at the end b must be streaming and up to date again, and after a clean stop of both the
// two images must be identical. pair-crash.test.ts runs a few seeds; `npm run soak`
// runs seeds for as long as it is told, and reports each seed and what was killed when.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { makeTempDir, sleep, spawnClusterNode, startClusterNode, writeClusterConfig, type NodeStatusJson, type TestNode } from '../helpers/node-process.js';
import { withDeadline } from '../helpers/fuse.js';
import { Prng } from '../unit/prng.js';
import { checkImage, dumpVolume, Writer } from './workload.js';

export type KillKind = 'writing' | 'starting' | 'resyncing';

export interface RoundReport {
  round: number;
  victim: 'a' | 'b';
  kind: KillKind;
  /** When the kill landed, in words. */
  note: string;
  submitted: number;
  replied: number;
  durable: number;
  ms: number;
}

export interface PairCrashOptions {
  rounds: number;
  /** How long each round's client writes when the primary is not killed. */
  writeSeconds: number;
  /** Told each round as it ends. */
  report?: (round: RoundReport) => void;
}

export interface PairCrashResult {
  seed: number;
  rounds: RoundReport[];
  ms: number;
}

const fastHeartbeat = { intervalMs: 100, timeoutMs: 600, probationMs: 600 };

function peerB(status: NodeStatusJson): NodeStatusJson['volumes'][number]['peers'][number] | undefined {
  return status.volumes.find((volume) => volume.name === 'vol0')?.peers[0];
}

/** How long the last restart of a per-source log took on `node` ('per-source log restarted'), if it logged one. */
function lastResetMs(node: TestNode): number | null {
  const done = node.records().filter((record) => record['msg'] === 'per-source log restarted').at(-1);
  return typeof done?.['ms'] === 'number' ? done['ms'] : null;
}

const bUpToDate = (status: NodeStatusJson): boolean => peerB(status)?.replication === 'streaming' && peerB(status)?.disk === 'up-to-date';

/**
 * Runs one seed. Throws, naming the seed and the round, when a node does not start,
 * a replied write is missing, b does not come back, or the images differ; the data
 * directory is then kept (its path is in the message).
 */
export async function runPairCrash(seed: number, options: PairCrashOptions): Promise<PairCrashResult> {
  const rng = new Prng(seed);
  const started = Date.now();
  const dir = makeTempDir('blockmirror-pair-crash-');
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }],
    volumes: [{ name: 'vol0', size: '64MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync' }],
    heartbeat: fastHeartbeat,
    // A small log and frequent consistency points: resets, partition reuse and CPs in every round.
    log: { partitionSize: '4MiB', partitions: 3, cpIntervalMs: 200 },
  });
  const nodes: { a: TestNode | null; b: TestNode | null } = { a: null, b: null };
  /** How long b's last restart of its log took, as far as seen (for aiming kills into one). */
  let resetMs = 150;
  /** The clients of the round under way (stopped if it fails). */
  let writers: Writer[] = [];
  const rounds: RoundReport[] = [];
  const fail = (round: number, note: string, problem: string): never => {
    throw new Error(`seed ${seed} round ${round} (${note}): ${problem}; data kept in ${dir} (BLOCKMIRROR_SEED=${seed} replays the seed)`);
  };
  const start = async (id: 'a' | 'b', round: number, note: string): Promise<TestNode> => {
    try {
      const node = await startClusterNode(dir, config, id);
      nodes[id] = node;
      return node;
    } catch (error) {
      return fail(round, note, `node ${id} did not start again: ${error instanceof Error ? error.message : String(error)}`);
    }
  };
  const kill = async (id: 'a' | 'b'): Promise<void> => {
    const node = nodes[id];
    if (node === null) return;
    nodes[id] = null;
    if (node.child.exitCode === null && node.child.signalCode === null) process.kill(node.pid, 'SIGKILL');
    await withDeadline(node.exited, 10_000, `node ${id} exit after SIGKILL`);
  };
  try {
    await start('b', -1, 'first start');
    const first = await start('a', -1, 'first start');
    await first.waitStatus('b streaming', bUpToDate, 30_000);
    let before: string | null = null;
    for (let round = 0; round < options.rounds; round += 1) {
      const roundStarted = Date.now();
      const kind: KillKind = rng.pick(['writing', 'writing', 'starting', 'resyncing'] as const);
      // A resync of b follows a restart of a that was not clean: 'resyncing' kills a first.
      const victim: 'a' | 'b' = kind === 'resyncing' ? 'b' : rng.chance(0.5) ? 'a' : 'b';
      writers = [];
      const startWriter = async (phase: number): Promise<Writer> => {
        const primary = nodes.a;
        assert.ok(primary !== null);
        const started = new Writer(primary.uri('vol0'), round, (round + 1) * 10_000_000 + phase * 1_000_000, ['--seconds', String(options.writeSeconds)], seed);
        writers.push(started);
        const deadline = Date.now() + 15_000;
        while (started.count('A') === 0 && started.running && Date.now() < deadline) await sleep(10);
        if (started.count('A') === 0) fail(round, 'before the kill', `the client got no reply: ${started.output.slice(-300)} ${started.stderr}`);
        return started;
      };
      await startWriter(0);
      let note: string;
      if (kind === 'resyncing') {
        const delayMs = rng.between(0, 1000);
        const b = nodes.b;
        assert.ok(b !== null);
        const resetsBefore = (): number => b.logs.split('restarting the per-source log').length - 1;
        const resets = resetsBefore();
        await sleep(delayMs);
        await kill('a');
        const a = await start('a', round, `a killed ${delayMs} ms after the first reply`);
        // The client reconnects, and writes while a resyncs b.
        await startWriter(1);
        const until = Date.now() + 10_000;
        let seen = false;
        if (rng.chance(0.5)) {
          // Inside b's reset: its log is being made anew (the moment it logs that, then a little later).
          while (!seen && Date.now() < until) {
            seen = resetsBefore() > resets;
            if (!seen) await sleep(1);
          }
          // Anywhere in the restart, which takes about as long as the ones b logged before
          // (or 150 ms); half the time in its second half, where the log is made anew (the
          // image is made durable first).
          const expectedMs = lastResetMs(b) ?? resetMs;
          const extraMs = rng.chance(0.5) ? rng.between(0, Math.round(1.2 * expectedMs)) : rng.between(Math.round(expectedMs / 2), Math.round(1.1 * expectedMs));
          await sleep(extraMs);
          note = `a killed ${delayMs} ms after the first reply and restarted; b killed ${seen ? `${extraMs} ms into the restart of its log` : 'while streaming (no reset seen within 10 s)'}`;
        } else {
          while (!seen && Date.now() < until) {
            seen = peerB(await a.status())?.replication === 'resyncing';
            if (!seen) await sleep(5);
          }
          const extraMs = rng.between(0, 200);
          await sleep(extraMs);
          note = `a killed ${delayMs} ms after the first reply and restarted; b killed ${seen ? `${extraMs} ms after a started resyncing it` : 'while streaming (no resync seen within 10 s)'}`;
        }
      } else {
        const delayMs = rng.chance(0.3) ? rng.between(0, 30) : rng.between(30, 1500);
        await sleep(delayMs);
        note = `${victim} killed ${delayMs} ms after the first reply`;
      }
      await kill(victim);
      if (kind === 'starting') {
        // Killed again while it starts: while it opens its files, recovers, or connects.
        const again = spawnClusterNode(dir, config, victim);
        nodes[victim] = again;
        const startMs = rng.between(0, 700);
        await sleep(startMs);
        await kill(victim);
        note += `, then again ${startMs} ms into its restart`;
      }
      if (victim === 'b') await sleep(rng.between(0, 1000));
      await start(victim, round, note);
      const histories: string[] = [];
      for (const [index, client] of writers.entries()) {
        const exit = await client.finish(options.writeSeconds * 1000 + 30_000);
        const last = index === writers.length - 1;
        if (victim === 'b' && last && exit.code !== 0) fail(round, note, `the client failed though its server was not killed: ${client.stderr} ${client.output.slice(-300)}`);
        const history = path.join(dir, `history-${round}-${index}.txt`);
        fs.writeFileSync(history, client.output);
        histories.push(history);
      }
      writers = [];
      const after = path.join(dir, `after-${round}.img`);
      const primary = nodes.a;
      assert.ok(primary !== null);
      await dumpVolume(primary, after);
      const checked = await checkImage(before, after, histories, { seed, acknowledged: 'replied' });
      resetMs = (nodes.b === null ? null : lastResetMs(nodes.b)) ?? resetMs;
      if (checked.failure_count > 0) fail(round, note, `${checked.failure_count} block(s) wrong on a: ${checked.failures.join('\n')}`);
      if (before !== null) fs.rmSync(before);
      before = after;
      const report: RoundReport = {
        round,
        victim,
        kind,
        note,
        submitted: checked.counts['submitted'] ?? 0,
        replied: checked.counts['replied'] ?? 0,
        durable: checked.counts['durable'] ?? 0,
        ms: Date.now() - roundStarted,
      };
      rounds.push(report);
      options.report?.(report);
    }
    const a = nodes.a;
    assert.ok(a !== null);
    try {
      await a.waitStatus('b up to date', bUpToDate, 120_000);
    } catch (error) {
      fail(options.rounds, 'at the end', `b did not return to up to date: ${String(error)}`);
    }
    const last = nodes.b;
    nodes.a = null;
    const aStopped = await a.stop('SIGTERM', 30_000);
    if (aStopped.code !== 0) fail(options.rounds, 'at the end', `a did not stop cleanly: ${JSON.stringify(aStopped)}\n${a.logs.slice(-2000)}`);
    nodes.b = null;
    const bStopped = await last?.stop('SIGTERM', 30_000);
    if (bStopped?.code !== 0) fail(options.rounds, 'at the end', `b did not stop cleanly: ${JSON.stringify(bStopped)}`);
    const imageA = fs.readFileSync(a.imagePath('vol0'));
    const imageB = fs.readFileSync(path.join(dir, 'data-b', 'volumes', 'vol0.img'));
    if (before !== null && !imageA.equals(fs.readFileSync(before))) fail(options.rounds, 'at the end', 'a\'s image changed after the last check');
    if (!imageB.equals(imageA)) {
      let differing = 0;
      for (let at = 0; at < imageA.length; at += 4096) if (!imageA.subarray(at, at + 4096).equals(imageB.subarray(at, at + 4096))) differing += 1;
      fail(options.rounds, 'at the end', `the images differ in ${differing} block(s) of 4 KiB`);
    }
  } finally {
    for (const client of writers) await client.finish(1).catch(() => undefined);
    for (const id of ['a', 'b'] as const) await kill(id).catch(() => undefined);
  }
  fs.rmSync(dir, { recursive: true, force: true });
  return { seed, rounds, ms: Date.now() - started };
}
