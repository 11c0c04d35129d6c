// The failover simulator's command line (`npm run sim:failover -- ...`):
//
//   node dist/test/sim/failover-run.js [--seed N | --seeds A..B] [--runs K] [--base B]
//                                      [--mode sync|async] [--quorum off|majority] [--fault F] [--trace] [--keep-going]
//
// With --seed it replays exactly that run and prints its summary (--trace: every event as
// well). Without it, it runs K seeds (default 1000) from a base seed and stops at the
// first failure (--keep-going: reports them all), printing the seed and the command that
// replays it; exit code 1. --fault injects a deliberate fault (failover-config.ts).

import { parseArgs } from 'node:util';
import { runAsProgram, runCaught, type SeedOutcome } from './seed-result.js';
import { emptyCounts, runFailover, type FailoverCounts, type FailoverSummary } from './failover.js';
import { describeFailoverConfig, failoverConfigFromSeed, failoverFaults, type FailoverChoices, type FailoverFault } from './failover-config.js';

export const defaultFailoverBase = 0xfa11;

export type FailoverResult = SeedOutcome<FailoverSummary>;

export function failoverReplay(seed: number, choices: FailoverChoices): string {
  const mode = choices.mode === undefined ? '' : ` --mode ${choices.mode}`;
  const quorum = choices.quorum === undefined ? '' : ` --quorum ${choices.quorum}`;
  const fault = choices.fault == null ? '' : ` --fault ${choices.fault}`;
  return `npm run sim:failover -- --seed ${seed}${mode}${quorum}${fault}`;
}

export function runFailoverSeed(seed: number, choices: FailoverChoices = {}, trace: ((line: string) => void) | null = null): FailoverResult {
  return runCaught(seed, failoverReplay(seed, choices), () => runFailover(failoverConfigFromSeed(seed, choices), trace));
}

/** Adds a run's counts to `totals`. */
export function addFailover(totals: FailoverCounts, summary: FailoverSummary): void {
  for (const key of Object.keys(totals) as (keyof FailoverCounts)[]) totals[key] += summary.counts[key];
}

export function describeFailoverTotals(totals: FailoverCounts, seeds: number): string {
  return [
    `${totals.acknowledged} writes acknowledged`,
    `promotions: ${totals.byRules} by the rules, ${totals.forced} forced, ${totals.promoteRefused} refused; ${totals.switchovers} switchovers`,
    `${totals.crashes} crashes, ${totals.partitions} partitions, ${totals.diskFailures} failed disks (${totals.disklessServed} served diskless, ${totals.disklessRefused} failed, ${totals.attached} attached)`,
    `${totals.fenced} primaries stepped down; ${totals.splitBrains} split brains found, ${totals.resolved} resolved, ${totals.saved} acknowledged writes saved by a loser`,
    `acknowledged writes gone with the only disk that held them: ${totals.lostWithDisk}; dropped following a forced line: ${totals.lostToForce}; ` +
      `epoch numbers two promotions made apart shared: ${totals.sharedEpochNumbers}`,
    `${totals.converged} of ${seeds} runs ended with every copy following one primary`,
  ].join('\n');
}

function main(argv: string[]): number {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      seed: { type: 'string' },
      seeds: { type: 'string' },
      runs: { type: 'string' },
      base: { type: 'string' },
      mode: { type: 'string' },
      quorum: { type: 'string' },
      fault: { type: 'string' },
      trace: { type: 'boolean', default: false },
      'keep-going': { type: 'boolean', default: false },
    },
  });
  const integer = (name: string, text: string | undefined, fallback: number): number => {
    if (text === undefined) return fallback;
    const number = Number(text);
    if (!Number.isSafeInteger(number) || number < 0) throw new Error(`--${name} must be a non-negative integer, got "${text}"`);
    return number;
  };
  const choices: FailoverChoices = {};
  if (values.mode !== undefined) {
    if (values.mode !== 'sync' && values.mode !== 'async') throw new Error(`--mode must be sync or async, got "${values.mode}"`);
    choices.mode = values.mode;
  }
  if (values.quorum !== undefined) {
    if (values.quorum !== 'off' && values.quorum !== 'majority') throw new Error(`--quorum must be off or majority, got "${values.quorum}"`);
    choices.quorum = values.quorum;
  }
  if (values.fault !== undefined) {
    if (!failoverFaults.includes(values.fault as FailoverFault)) throw new Error(`--fault must be one of ${failoverFaults.join(', ')}, got "${values.fault}"`);
    choices.fault = values.fault as FailoverFault;
  }
  let base = integer('base', values.base, defaultFailoverBase) >>> 0;
  let runs = integer('runs', values.runs, 1000);
  if (values.seeds !== undefined) {
    const range = /^(\d+)\.\.(\d+)$/.exec(values.seeds);
    if (range === null || Number(range[2]) < Number(range[1])) throw new Error(`--seeds must be A..B with A <= B, got "${values.seeds}"`);
    base = Number(range[1]) >>> 0;
    runs = Number(range[2]) - Number(range[1]) + 1;
  }
  if (values.seed !== undefined) {
    const seed = integer('seed', values.seed, 0) >>> 0;
    const result = runFailoverSeed(seed, choices, values.trace ? (line) => console.log(line) : null);
    console.log(`config: ${describeFailoverConfig(failoverConfigFromSeed(seed, choices))}`);
    if (result.summary === null) {
      console.log(`FAILED seed ${seed}: ${result.error ?? ''}\nreplay: ${result.replay}`);
      return 1;
    }
    console.log(`seed ${seed}: ok (${result.summary.events} events, ${(result.summary.virtualUs / 1000).toFixed(1)} ms virtual, ${result.summary.checks} checks)`);
    console.log(describeFailoverTotals(result.summary.counts, 1));
    return 0;
  }
  const startedMs = performance.now();
  const totals = emptyCounts();
  let failed = 0;
  for (let run = 0; run < runs; run += 1) {
    const result = runFailoverSeed((base + run) >>> 0, choices);
    if (result.summary === null) {
      console.log(`FAILED seed ${result.seed}: ${result.error ?? ''}\nreplay: ${result.replay}`);
      failed += 1;
      if (!values['keep-going']) return 1;
      continue;
    }
    addFailover(totals, result.summary);
  }
  console.log(`${runs} failover seeds from ${base} ${failed === 0 ? 'passed' : `run, ${failed} failed`} (${(performance.now() - startedMs).toFixed(0)} ms)`);
  console.log(describeFailoverTotals(totals, runs - failed));
  return failed === 0 ? 0 : 1;
}

runAsProgram(import.meta.url, main);
