// The failover simulator's command line (`npm run sim:failover -- ...`):
//
//   node dist/test/sim/failover-run.js [--seed N | --seeds A..B] [--runs K] [--base B]
//                                      [--mode sync|async] [--quorum off|majority] [--fault F] [--trace] [--keep-going]
//
// With --seed it replays exactly that run and prints its summary (--trace: every event as
// well). Without it, it runs K seeds (default 1000) from a base seed and stops at the
// first failure (--keep-going: reports them all), printing the seed and the command that
// replays it; exit code 1. --fault injects a deliberate fault (failover-config.ts).

import { pathToFileURL } from 'node:url';
import { runFailover, type FailoverSummary } from './failover.js';
import { describeFailoverConfig, failoverConfigFromSeed, failoverFaults, type FailoverChoices, type FailoverFault } from './failover-config.js';

export const defaultFailoverBase = 0xfa11;

export interface FailoverResult {
  seed: number;
  summary: FailoverSummary | null;
  error: string | null;
  replay: string;
}

export function failoverReplay(seed: number, choices: FailoverChoices): string {
  const mode = choices.mode === undefined ? '' : ` --mode ${choices.mode}`;
  const quorum = choices.quorum === undefined ? '' : ` --quorum ${choices.quorum}`;
  const fault = choices.fault == null ? '' : ` --fault ${choices.fault}`;
  return `npm run sim:failover -- --seed ${seed}${mode}${quorum}${fault}`;
}

export function runFailoverSeed(seed: number, choices: FailoverChoices = {}, trace: ((line: string) => void) | null = null): FailoverResult {
  const replay = failoverReplay(seed, choices);
  try {
    return { seed, summary: runFailover(failoverConfigFromSeed(seed, choices), trace), error: null, replay };
  } catch (error) {
    const message = error instanceof Error ? `${error.name === 'SimFailure' ? '' : `${error.name}: `}${error.message}` : String(error);
    return { seed, summary: null, error: message, replay };
  }
}

/** What a set of runs went through, summed. */
export interface FailoverTotals {
  seeds: number;
  acknowledged: number;
  promotionsByRules: number;
  promotionsForced: number;
  promotionsRefused: number;
  switchovers: number;
  crashes: number;
  partitions: number;
  diskFailures: number;
  disklessServed: number;
  attached: number;
  fenced: number;
  splitBrains: number;
  resolved: number;
  saved: number;
  lostWithDisk: number;
  sharedEpochNumbers: number;
  converged: number;
}

export function emptyFailoverTotals(): FailoverTotals {
  return {
    seeds: 0,
    acknowledged: 0,
    promotionsByRules: 0,
    promotionsForced: 0,
    promotionsRefused: 0,
    switchovers: 0,
    crashes: 0,
    partitions: 0,
    diskFailures: 0,
    disklessServed: 0,
    attached: 0,
    fenced: 0,
    splitBrains: 0,
    resolved: 0,
    saved: 0,
    lostWithDisk: 0,
    sharedEpochNumbers: 0,
    converged: 0,
  };
}

export function addFailover(totals: FailoverTotals, summary: FailoverSummary): void {
  totals.seeds += 1;
  totals.acknowledged += summary.acknowledged;
  totals.promotionsByRules += summary.promotions.byRules;
  totals.promotionsForced += summary.promotions.forced;
  totals.promotionsRefused += summary.promotions.refused;
  totals.switchovers += summary.switchovers;
  totals.crashes += summary.crashes;
  totals.partitions += summary.partitions;
  totals.diskFailures += summary.diskFailures;
  totals.disklessServed += summary.disklessServed;
  totals.attached += summary.attached;
  totals.fenced += summary.fenced;
  totals.splitBrains += summary.splitBrains;
  totals.resolved += summary.resolved;
  totals.saved += summary.saved;
  totals.lostWithDisk += summary.lostWithDisk;
  totals.sharedEpochNumbers += summary.sharedEpochNumbers;
  if (summary.converged) totals.converged += 1;
}

export function describeFailoverTotals(totals: FailoverTotals): string {
  return [
    `${totals.acknowledged} writes acknowledged`,
    `promotions: ${totals.promotionsByRules} by the rules, ${totals.promotionsForced} forced, ${totals.promotionsRefused} refused; ${totals.switchovers} switchovers`,
    `${totals.crashes} crashes, ${totals.partitions} partitions, ${totals.diskFailures} failed disks (${totals.disklessServed} served diskless, ${totals.attached} attached)`,
    `${totals.fenced} primaries stepped down; ${totals.splitBrains} split brains found, ${totals.resolved} resolved, ${totals.saved} acknowledged writes saved by a loser`,
    `${totals.lostWithDisk} acknowledged writes went with the only disk that held them; ${totals.sharedEpochNumbers} acknowledgements in an epoch number two forced promotions shared`,
    `${totals.converged} of ${totals.seeds} runs ended with every copy following one primary`,
  ].join('\n');
}

function main(argv: readonly string[]): number {
  let seed: number | null = null;
  let runs = 1000;
  let base = defaultFailoverBase;
  let trace = false;
  let keepGoing = false;
  const choices: FailoverChoices = {};
  for (let at = 0; at < argv.length; at += 1) {
    const name = argv[at];
    const value = (): string => {
      at += 1;
      const text = argv[at];
      if (text === undefined) throw new Error(`${name} needs a value`);
      return text;
    };
    const integer = (): number => {
      const text = value();
      const number = Number(text);
      if (!Number.isSafeInteger(number) || number < 0) throw new Error(`${name} must be a non-negative integer, got "${text}"`);
      return number;
    };
    switch (name) {
      case '--seed':
        seed = integer() >>> 0;
        break;
      case '--runs':
        runs = integer();
        break;
      case '--base':
        base = integer() >>> 0;
        break;
      case '--seeds': {
        const text = value();
        const range = /^(\d+)\.\.(\d+)$/.exec(text);
        const from = Number(range?.[1]);
        const to = Number(range?.[2]);
        if (range === null || to < from) throw new Error(`--seeds must be A..B with A <= B, got "${text}"`);
        base = from >>> 0;
        runs = to - from + 1;
        break;
      }
      case '--mode': {
        const mode = value();
        if (mode !== 'sync' && mode !== 'async') throw new Error(`--mode must be sync or async, got "${mode}"`);
        choices.mode = mode;
        break;
      }
      case '--quorum': {
        const quorum = value();
        if (quorum !== 'off' && quorum !== 'majority') throw new Error(`--quorum must be off or majority, got "${quorum}"`);
        choices.quorum = quorum;
        break;
      }
      case '--fault': {
        const fault = value();
        if (!failoverFaults.includes(fault as FailoverFault)) throw new Error(`--fault must be one of ${failoverFaults.join(', ')}, got "${fault}"`);
        choices.fault = fault as FailoverFault;
        break;
      }
      case '--trace':
        trace = true;
        break;
      case '--keep-going':
        keepGoing = true;
        break;
      default:
        throw new Error(`unknown argument "${String(name)}" (usage: failover-run.js [--seed N | --seeds A..B] [--runs K] [--base B] [--mode sync|async] [--quorum off|majority] [--fault F] [--trace] [--keep-going])`);
    }
  }
  if (seed !== null) {
    const result = runFailoverSeed(seed, choices, trace ? (line) => console.log(line) : null);
    console.log(`config: ${describeFailoverConfig(failoverConfigFromSeed(seed, choices))}`);
    if (result.summary === null) {
      console.log(`FAILED seed ${seed}: ${result.error ?? ''}\nreplay: ${result.replay}`);
      return 1;
    }
    const totals = emptyFailoverTotals();
    addFailover(totals, result.summary);
    console.log(`seed ${seed}: ok (${result.summary.events} events, ${(result.summary.virtualUs / 1000).toFixed(1)} ms virtual, ${result.summary.checks} checks)`);
    console.log(describeFailoverTotals(totals));
    return 0;
  }
  const startedMs = performance.now();
  const totals = emptyFailoverTotals();
  let failed = 0;
  for (let run = 0; run < runs; run += 1) {
    const result = runFailoverSeed((base + run) >>> 0, choices);
    if (result.summary === null) {
      console.log(`FAILED seed ${result.seed}: ${result.error ?? ''}\nreplay: ${result.replay}`);
      failed += 1;
      if (!keepGoing) return 1;
      continue;
    }
    addFailover(totals, result.summary);
  }
  console.log(`${runs} failover seeds from ${base} ${failed === 0 ? 'passed' : `run, ${failed} failed`} (${(performance.now() - startedMs).toFixed(0)} ms)`);
  console.log(describeFailoverTotals(totals));
  return failed === 0 ? 0 : 1;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    process.exitCode = main(process.argv.slice(2));
  } catch (error) {
    console.error(error instanceof Error ? error.message : String(error));
    process.exitCode = 2;
  }
}
