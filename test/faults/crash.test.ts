// Crash test: SIGKILL the server at seeded random moments while a client writes, restart
// it on the same data directory, and read the whole volume back over NBD. Every write
// acknowledged as durable (FUA reply, or replied before a FLUSH whose reply came back)
// must be there, and no block may hold anything but what it held before the round or
// exactly one of the writes sent to it (and never one older than the last durable one).
//
// The client is test/faults/writer.py (libnbd); it prints every submission and
// acknowledgement as it happens, and its `check` mode compares the read-back image with
// those histories. The volume carries over from round to round; the log is small (3 × 4
// MiB, a CP every 200 ms) so CPs and partition reuse happen during every round, and one
// round waits for both before it kills. BLOCKMIRROR_SEED=<n> replays the seed's
// workload and kill moments (the server's own timing still varies).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { withDeadline } from '../helpers/fuse.js';
import { makeTempDir, startNode, type TestNode } from '../helpers/node-process.js';
import { Prng } from '../unit/prng.js';
import { checkImage, dumpVolume, log, logStatus, runUntilFault, seed, volumeOpened, volumes, Writer, type RoundKind } from './workload.js';

const roundCount = Number(process.env['BLOCKMIRROR_CRASH_ROUNDS'] ?? 5);

console.log(`crash.test: seed=${seed} (BLOCKMIRROR_SEED=${seed} replays it), rounds=${roundCount}`);

async function restart(dir: string, round: number, context: string): Promise<TestNode> {
  try {
    return await startNode({ dir, volumes, log });
  } catch (error) {
    throw new Error(
      `seed ${seed} round ${round}: the node did not restart after SIGKILL (${context}): ` +
        `${error instanceof Error ? error.message : String(error)}`,
    );
  }
}

// ---- the test --------------------------------------------------------------------------

test(`SIGKILL at random moments loses no durable write (seed ${seed})`, { timeout: 400_000 }, async (t) => {
  const rng = new Prng(seed);
  const dir = makeTempDir('blockmirror-crash-');
  const work = makeTempDir('blockmirror-crash-work-');
  const kinds: RoundKind[] = ['after-cp', 'idle'];
  while (kinds.length < roundCount) kinds.push('random');
  for (let i = kinds.length - 1; i > 0; i -= 1) {
    const j = rng.below(i + 1);
    [kinds[i], kinds[j]] = [kinds[j] as RoundKind, kinds[i] as RoundKind];
  }
  let node: TestNode | null = null;
  let writer: Writer | null = null;
  let before: string | null = null;
  const started = Date.now();
  try {
    node = await startNode({ dir, volumes, log });
    for (let round = 0; round < kinds.length; round += 1) {
      const kind = kinds[round] as RoundKind;
      const roundStarted = Date.now();
      const current: TestNode = node;
      const history = path.join(work, `history-${round}.txt`);
      const { writer: roundWriter, note: killNote } = await runUntilFault(current, round, kind, rng, { maxWrites: 4000, wrapTimeoutMs: 30_000 }, (started) => (writer = started));
      const atKill = await logStatus(current).catch(() => null);
      assert.equal(current.child.exitCode, null, `seed ${seed} round ${round}: the node died by itself before the kill:\n${current.logs.slice(-3000)}`);
      process.kill(current.pid, 'SIGKILL');
      const exit = await withDeadline(current.exited, 10_000, 'node exit after SIGKILL');
      assert.equal(exit.signal, 'SIGKILL', 'the node died of SIGKILL');
      node = null;
      await roundWriter.finish(20_000);
      fs.writeFileSync(history, roundWriter.output);
      const acked = roundWriter.count('D');
      writer = null;

      node = await restart(dir, round, killNote);
      const opened = volumeOpened(node);
      const after = path.join(work, `after-${round}.img`);
      await dumpVolume(node, after);
      const report = await checkImage(before, after, [history]);
      if (before !== null) fs.rmSync(before);
      before = after;
      t.diagnostic(
        `round ${round} (${kind}): killed ${killNote} (log before kill: ${JSON.stringify(atKill)}); ` +
          `writes ${report.counts['submitted']}, replied ${report.counts['replied']}, failed ${report.counts['failed']}, durable ${acked}; ` +
          `replayed ${String(opened['replayedEntries'])} entries from cpSeq ${String(opened['cpSeq'])} ` +
          `(torn ${String(opened['tornBytes'])} B); blocks ${JSON.stringify(report.held)}; ${Date.now() - roundStarted} ms`,
      );
      assert.equal(
        report.failure_count,
        0,
        `seed ${seed} round ${round} (killed ${killNote}): ${report.failure_count} block(s) wrong after restart; ` +
          `history ${history}; first:\n${report.failures.join('\n')}`,
      );
      assert(report.counts['submitted'] !== undefined && report.counts['submitted'] > 0, 'the round wrote something');
    }

    // A clean stop after all that: exit 0, and the next start replays nothing and reads
    // back the same volume.
    const last: TestNode = node;
    const stopped = await last.stop('SIGTERM', 30_000);
    node = null;
    assert.deepEqual(stopped, { code: 0, signal: null }, `clean stop exits 0:\n${last.logs.slice(-2000)}`);
    node = await startNode({ dir, volumes, log });
    const reopened = volumeOpened(node);
    assert.equal(reopened['replayedEntries'], 0, 'nothing to replay after a clean stop');
    const final = path.join(work, 'final.img');
    await dumpVolume(node, final);
    const report = await checkImage(before, final, []);
    assert.equal(report.failure_count, 0, `volume changed across a clean restart:\n${report.failures.join('\n')}`);
    const finalNode: TestNode = node;
    const finalStop = await finalNode.stop('SIGTERM', 30_000);
    node = null;
    assert.deepEqual(finalStop, { code: 0, signal: null }, `final SIGTERM exits 0:\n${finalNode.logs.slice(-2000)}`);
    t.diagnostic(`seed ${seed}: ${kinds.length} rounds in ${Date.now() - started} ms`);
  } catch (error) {
    t.diagnostic(`seed ${seed}: data dir ${dir}, histories and images in ${work} (kept)`);
    throw error;
  } finally {
    // Set by runUntilFault's callback, which the compiler cannot follow.
    const w = writer as Writer | null;
    if (w !== null) await w.finish(1).catch(() => undefined);
    if (node !== null) await node.stop('SIGKILL', 5_000).catch(() => undefined);
  }
  fs.rmSync(work, { recursive: true, force: true });
  fs.rmSync(dir, { recursive: true, force: true });
});
