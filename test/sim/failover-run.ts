// The failover simulator's command line (`npm run sim:failover -- ...`):
//
//   node dist/test/sim/failover-run.js [--seed N | --seeds A..B] [--runs K] [--base B]
//                                      [--mode sync|async] [--quorum off|majority] [--coordination static|etcd]
//                                      [--strict on|off] [--fault F] [--trace] [--keep-going]
//
// With --seed it replays exactly that run and prints its summary (--trace: every event as
// well). Without it, it runs K seeds (default 1000) from a base seed and stops at the
// first failure (--keep-going: reports them all), printing the seed and the command that
// replays it; exit code 1. --fault injects a deliberate fault (failover-config.ts).
// --coordination etcd runs the primaries' leases and claims through a simulated etcd in
// place of the operator's promotions (an etcd fault implies it); --strict chooses whether its
// volumes are strict (else each seed draws it).

import { parseArgs } from 'node:util';
import { runAsProgram, runCaught, type SeedOutcome } from './seed-result.js';
import { emptyCounts, runFailover, type FailoverCounts, type FailoverSummary } from './failover.js';
import { coordinationOf, describeFailoverConfig, failoverConfigFromSeed, failoverFaults, type FailoverChoices, type FailoverFault } from './failover-config.js';

export const defaultFailoverBase = 0xfa11;

export type FailoverResult = SeedOutcome<FailoverSummary>;

export function failoverReplay(seed: number, choices: FailoverChoices): string {
  const mode = choices.mode === undefined ? '' : ` --mode ${choices.mode}`;
  const quorum = choices.quorum === undefined ? '' : ` --quorum ${choices.quorum}`;
  const coordination = coordinationOf(choices) === 'etcd' ? ' --coordination etcd' : '';
  const strict = choices.strict === undefined ? '' : ` --strict ${choices.strict ? 'on' : 'off'}`;
  const fault = choices.fault == null ? '' : ` --fault ${choices.fault}`;
  return `npm run sim:failover -- --seed ${seed}${mode}${quorum}${coordination}${strict}${fault}`;
}

export function runFailoverSeed(seed: number, choices: FailoverChoices = {}, trace: ((line: string) => void) | null = null): FailoverResult {
  return runCaught(seed, failoverReplay(seed, choices), () => runFailover(failoverConfigFromSeed(seed, choices), trace));
}

/** Adds a run's counts to `totals`. */
export function addFailover(totals: FailoverCounts, summary: FailoverSummary): void {
  for (const key of Object.keys(totals) as (keyof FailoverCounts)[]) totals[key] += summary.counts[key];
}

export function describeFailoverTotals(totals: FailoverCounts, seeds: number, coordinated = false): string {
  const etcd = coordinated
    ? [
        `through etcd: ${totals.failovers} failovers (secondaries promoted by their claim), ${totals.resumed} volumes taken back by a primary that stepped down, ` +
          `${totals.claims} claims won, ${totals.claimsLost} lost, ${totals.claimsGivenUp} given up; ` +
          `${totals.leaseFences} primaries fenced by their lease, ${totals.namedNewer} stepped down as etcd named a newer epoch, ${totals.released} keys released`,
        `the synced set: shrunk ${totals.syncedShrunk} times, grown ${totals.syncedGrown} times; ${totals.syncedRefused} changes refused (the value had moved on), ` +
          `${totals.syncedUnanswered} unanswered; ${totals.staleReads} reads not taken (a change raced them)`,
        `etcd: ${totals.renewals} renewals, ${totals.renewalFailures} failed, ${totals.lateRenewals} confirmed late, ${totals.leasesExpired} leases expired; ` +
          `${totals.etcdOutages} outages, ${totals.etcdCuts} nodes cut off from it, ` +
          `${totals.etcdMessagesLost} messages lost; ${totals.gateRefused} replies failed at a closed lease gate`,
        `${totals.leaderless} runs ended with no node taking writes`,
      ]
    : [];
  return [
    `${totals.acknowledged} writes acknowledged`,
    `promotions: ${totals.byRules} by the rules, ${totals.forced} forced, ${totals.promoteRefused} refused; ${totals.switchovers} switchovers`,
    `${totals.crashes} crashes, ${totals.partitions} partitions, ${totals.diskFailures} failed disks (${totals.disklessServed} served diskless, ${totals.disklessRefused} failed, ${totals.attached} attached)`,
    `${totals.fenced} primaries stepped down; ${totals.splitBrains} split brains found, ${totals.resolved} resolved, ${totals.saved} acknowledged writes saved by a loser`,
    `acknowledged writes gone with the only disk that held them: ${totals.lostWithDisk}; dropped following a forced line: ${totals.lostToForce}; ` +
      `epoch numbers two promotions made apart shared: ${totals.sharedEpochNumbers}`,
    ...etcd,
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
      coordination: { type: 'string' },
      strict: { type: 'string' },
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
  if (values.coordination !== undefined) {
    if (values.coordination !== 'static' && values.coordination !== 'etcd') throw new Error(`--coordination must be static or etcd, got "${values.coordination}"`);
    choices.coordination = values.coordination;
  }
  if (values.strict !== undefined) {
    if (values.strict !== 'on' && values.strict !== 'off') throw new Error(`--strict must be on or off, got "${values.strict}"`);
    choices.strict = values.strict === 'on';
  }
  if (values.fault !== undefined) {
    if (!failoverFaults.includes(values.fault as FailoverFault)) throw new Error(`--fault must be one of ${failoverFaults.join(', ')}, got "${values.fault}"`);
    choices.fault = values.fault as FailoverFault;
  }
  if (choices.strict !== undefined && coordinationOf(choices) !== 'etcd') throw new Error('--strict applies to --coordination etcd only (a static run is never strict)');
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
    console.log(describeFailoverTotals(result.summary.counts, 1, coordinationOf(choices) === 'etcd'));
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
  console.log(describeFailoverTotals(totals, runs - failed, coordinationOf(choices) === 'etcd'));
  return failed === 0 ? 0 : 1;
}

runAsProgram(import.meta.url, main);
