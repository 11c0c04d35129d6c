// Power-cut test: the node's data directory lives on ext4 on a disk that loses every write
// not flushed when the power goes. The disk is a sparse backing file served by nbdkit's
// `file` plugin behind `--filter=cache cache=writeback` (writes sit in nbdkit's cache until
// a flush), presented as a file by nbdfuse, turned into a block device by losetup
// (helpers/nbdkit-disk.ts):
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
import fs from 'node:fs';
import path from 'node:path';
import { requireRootAndTools, runCleanupSteps, runCommandOk, withDeadline } from '../helpers/fuse.js';
import { PoweredStack, type NbdkitOptions } from '../helpers/nbdkit-disk.js';
import { makeTempDir, startNode, type TestNode } from '../helpers/node-process.js';
import { Prng } from '../unit/prng.js';
import { checkImage, dumpVolume, log, logStatus, runUntilFault, seed, volumeOpened, volumes, Writer, type RoundKind } from './workload.js';

const backingSize = '256M';
/** Writes sit in nbdkit's cache until a flush, and die with nbdkit. */
const writebackCache: NbdkitOptions = { filters: ['cache'], params: ['cache=writeback'] };

console.log(`power-cut.test: seed=${seed} (BLOCKMIRROR_SEED=${seed} replays it)`);

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
    stack = (await PoweredStack.powerOn(backing, fuseDir, dataDir, true, writebackCache)).stack;
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
      const on = await PoweredStack.powerOn(backing, fuseDir, dataDir, false, writebackCache);
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
