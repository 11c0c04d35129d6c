// Crash at every mutation point: runs an operation over a copy of a simulated file
// system once to count its mutations, then once more for each N, with the world
// stopped right after the Nth; for each crash it builds the states the crash may leave
// (nothing pending kept, everything kept, each prefix of the pending changes in order,
// and a few seeded random subsets) and hands each to a check that reopens it.
// ALICE and CrashMonkey test file systems and the programs above them this way.

import { MemoryFileSystem, SimulatedCrash } from '../../src/io/memory-file-system.js';
import { Prng } from '../unit/prng.js';

export interface CrashExploration {
  /** The state before the operation; copied for every run, never changed. */
  before: MemoryFileSystem;
  /** Runs the operation over `fs`. It must release what it opened when a call throws SimulatedCrash. */
  operation: (fs: MemoryFileSystem) => Promise<void>;
  /** Checks a state the crash may have left (and the state after the operation completed). */
  check: (fs: MemoryFileSystem, where: string) => Promise<void>;
  seed: number;
  /** Seeded random subsets of the pending changes per crash point (besides none, all and the prefixes). */
  randomOutcomes?: number;
}

export interface ExplorationReport {
  /** Mutations the operation makes when nothing stops it. */
  mutations: number;
  /** States checked in all. */
  states: number;
  /** The most changes left pending at one crash point. */
  mostPending: number;
  /** Every change some crash point left to chance, described (crashChanges()). */
  changesSeen: Set<string>;
}

/** Runs the exploration; a failed check throws with the crash point and the outcome in its message. */
export async function exploreCrashes(exploration: CrashExploration): Promise<ExplorationReport> {
  const random = new Prng(exploration.seed);
  const whole = exploration.before.copy();
  await exploration.operation(whole);
  const mutations = whole.mutations;
  const history = whole.history.slice(-mutations);
  const completed = whole.copy();
  whole.dispose();
  let states = 0;
  let mostPending = 0;
  const changesSeen = new Set<string>();
  try {
    await exploration.check(completed, `after the operation completed (${mutations} mutations)`);
    states += 1;
  } finally {
    completed.dispose();
  }
  for (let point = 1; point <= mutations; point += 1) {
    const run = exploration.before.copy();
    try {
      run.stopAfter(point);
      try {
        await exploration.operation(run);
      } catch (error) {
        if (!(error instanceof SimulatedCrash) && !run.crashed) throw error;
      }
      if (!run.crashed) continue;
      const changes = run.crashChanges();
      mostPending = Math.max(mostPending, changes.length);
      for (const change of changes) changesSeen.add(change);
      const outcomes = new Map<string, boolean[]>();
      const add = (keep: boolean[]): void => void outcomes.set(keep.map((kept) => (kept ? '1' : '0')).join(''), keep);
      add(changes.map(() => false));
      add(changes.map(() => true));
      for (let prefix = 1; prefix < changes.length; prefix += 1) add(changes.map((_, index) => index < prefix));
      for (let draw = 0; draw < (exploration.randomOutcomes ?? 4); draw += 1) add(changes.map(() => random.below(2) === 1));
      for (const keep of outcomes.values()) {
        const after = run.afterCrash((index) => keep[index] === true);
        const kept = changes.filter((_, index) => keep[index]);
        const lost = changes.filter((_, index) => !keep[index]);
        const where =
          `crash after mutation ${point} of ${mutations} (${history[point - 1] ?? '?'}); ` +
          `kept: [${kept.join('; ')}], lost: [${lost.join('; ')}]`;
        try {
          await exploration.check(after, where);
          states += 1;
        } finally {
          after.dispose();
        }
      }
    } finally {
      run.dispose();
    }
  }
  return { mutations, states, mostPending, changesSeen };
}

/** Runs `body`, then `release` whatever happened, keeping the body's error (the release's is dropped after a crash). */
export async function releasing<T>(body: () => Promise<T>, release: () => Promise<void> | void): Promise<T> {
  let result: T;
  try {
    result = await body();
  } catch (error) {
    await Promise.resolve()
      .then(release)
      .catch(() => undefined);
    throw error;
  }
  await release();
  return result;
}

export { SimulatedCrash };
