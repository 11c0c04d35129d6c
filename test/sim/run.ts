// The simulator's command line (`npm run sim -- ...`):
//
//   node dist/test/sim/run.js [--seed N | --seeds A..B] [--runs K] [--base B] [--mode sync|async] [--fault F]
//                             [--no-crash] [--resync on|off] [--primary-crash on|off] [--trace] [--keep-going]
//
// With --seed it replays exactly that run and prints a short summary (--trace: every
// event as well). Without it, it runs K seeds (default 200) from a base seed and stops
// at the first failure (--keep-going: reports them all), printing the seed and the command that replays it; exit code 1.
// --seeds A..B runs seeds A to B (both included). The mode, and whether the primary
// resyncs peers, are drawn from each seed unless --mode / --resync force them;
// --no-crash leaves out the seed's secondary crashes; --primary-crash on|off forces the
// seed's primary crashes in or out (drawn per seed otherwise; on brings resync with it,
// as a real primary always resyncs its peers after a crash); --fault injects a deliberate
// fault (config.ts Fault), in a simulated part or in the shipped core. Any broken
// invariant of checker.ts fails the run.

import { emptyPrimaryTally, runCluster, type PrimaryTally, type RunSummary } from './cluster.js';
import { runAsProgram, runCaught, type SeedOutcome } from './seed-result.js';
import { configFromSeed, describeConfig, faults, type ConfigChoices, type Fault, type SimMode } from './config.js';

export const defaultBaseSeed = 0x51d0;

export type SeedResult = SeedOutcome<RunSummary>;

export function replayCommand(seed: number, choices: ConfigChoices): string {
  const mode = choices.mode === undefined ? '' : ` --mode ${choices.mode}`;
  const fault = choices.fault === undefined || choices.fault === null ? '' : ` --fault ${choices.fault}`;
  const crash = choices.crashes === false ? ' --no-crash' : '';
  const resync = choices.resync === undefined ? '' : ` --resync ${choices.resync ? 'on' : 'off'}`;
  const primary = choices.primaryCrashes === undefined ? '' : ` --primary-crash ${choices.primaryCrashes ? 'on' : 'off'}`;
  return `npm run sim -- --seed ${seed}${mode}${fault}${crash}${resync}${primary}`;
}

/** Runs one seed and reports, rather than throws, what went wrong. */
export function runSeed(seed: number, choices: ConfigChoices = {}, trace: ((line: string) => void) | null = null): SeedResult {
  return runCaught(seed, replayCommand(seed, choices), () => runCluster(configFromSeed(seed, choices), trace));
}

export function failureText(result: SeedResult): string {
  return `FAILED seed ${result.seed}: ${result.error ?? 'no error'}\nreplay: ${result.replay}`;
}

export function describeSummary(summary: RunSummary): string {
  const { answered } = summary;
  const peers = summary.peers.map((peer) => `${peer.id} ${peer.inSync ? 'in sync' : 'excluded'}, ${peer.disk} (stored ${peer.storedSeq}, durable ${peer.durableSeq})`);
  return [
    `config: ${describeConfig(summary.config)}`,
    `events ${summary.events}, virtual time ${(summary.virtualUs / 1000).toFixed(1)} ms, final seq ${summary.lastSeq}, ${summary.checkpoints} consistency points`,
    `acknowledged: ${answered.write} writes, ${answered.fua} FUA writes, ${answered.flush} flushes (${summary.checks} checks)`,
    `messages ${summary.messages.sent} sent, ${summary.messages.lost} lost to closed links`,
    `memory: source queue max ${summary.maxQueuedBytes} B (bound ${summary.queuedBytesBound}), in flight max ${summary.maxInflightBytes} B, target buffer max ${summary.maxBufferedBytes} B`,
    `peers: ${peers.join('; ')}`,
    `${summary.crashes} crashes; resyncs: ${summary.resyncs.started} started, ${summary.resyncs.done} done, ${summary.resyncs.regions} regions sent; ` +
      `${summary.countedLacking} replies counted a resyncing peer that lacked their write`,
    `primary: ${describePrimary(summary.primary)}`,
    ...summary.drops.map((drop) => `dropped: ${drop}`),
    ...(summary.config.fault === null ? [] : [`fault ${summary.config.fault} ${summary.faultInjected ? 'injected' : 'never injected'}`]),
  ].join('\n');
}

export function describePrimary(tally: PrimaryTally): string {
  return (
    `${tally.crashes} crashes, ${tally.lostEntries} entries lost, ${tally.keptInImage} lost writes kept in its image, ` +
    `${tally.droppedRequests} requests dropped, ${tally.startMarkers} start markers, ${tally.peersAhead} peers ahead of it, ` +
    `${tally.divergedReports} DIVERGED reports (${tally.divergedEntries} entries), ${tally.resyncsDone} resyncs done after a crash`
  );
}

interface Arguments {
  seed: number | null;
  runs: number;
  base: number;
  choices: ConfigChoices;
  trace: boolean;
  keepGoing: boolean;
}

function parseArguments(argv: readonly string[]): Arguments {
  const parsed: Arguments = { seed: null, runs: 200, base: defaultBaseSeed, choices: {}, trace: false, keepGoing: false };
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
        parsed.seed = integer() >>> 0;
        break;
      case '--runs':
        parsed.runs = integer();
        break;
      case '--base':
        parsed.base = integer() >>> 0;
        break;
      case '--seeds': {
        const text = value();
        const range = /^(\d+)\.\.(\d+)$/.exec(text);
        const from = Number(range?.[1]);
        const to = Number(range?.[2]);
        if (range === null || !Number.isSafeInteger(from) || !Number.isSafeInteger(to) || to < from) throw new Error(`--seeds must be A..B with A <= B, got "${text}"`);
        parsed.base = from >>> 0;
        parsed.runs = to - from + 1;
        break;
      }
      case '--no-crash':
        parsed.choices.crashes = false;
        break;
      case '--resync': {
        const resync = value();
        if (resync !== 'on' && resync !== 'off') throw new Error(`--resync must be on or off, got "${resync}"`);
        parsed.choices.resync = resync === 'on';
        break;
      }
      case '--primary-crash': {
        const crash = value();
        if (crash !== 'on' && crash !== 'off') throw new Error(`--primary-crash must be on or off, got "${crash}"`);
        parsed.choices.primaryCrashes = crash === 'on';
        break;
      }
      case '--mode': {
        const mode = value();
        if (mode !== 'sync' && mode !== 'async') throw new Error(`--mode must be sync or async, got "${mode}"`);
        parsed.choices.mode = mode satisfies SimMode;
        break;
      }
      case '--fault': {
        const fault = value();
        if (!faults.includes(fault as Fault)) throw new Error(`--fault must be one of ${faults.join(', ')}, got "${fault}"`);
        parsed.choices.fault = fault as Fault;
        break;
      }
      case '--trace':
        parsed.trace = true;
        break;
      case '--keep-going':
        parsed.keepGoing = true;
        break;
      default:
        throw new Error(
          `unknown argument "${String(name)}" (usage: run.js [--seed N | --seeds A..B] [--runs K] [--base B] [--mode sync|async] [--fault F] [--no-crash] [--resync on|off] [--primary-crash on|off] [--fix F,...|all] [--trace] [--keep-going])`,
        );
    }
  }
  if (parsed.choices.primaryCrashes === true && parsed.choices.resync === false) {
    throw new Error('--primary-crash on needs resync (a restarted primary resyncs every peer): leave out --resync off');
  }
  return parsed;
}

function main(argv: readonly string[]): number {
  const args = parseArguments(argv);
  if (args.seed !== null) {
    const result = runSeed(args.seed, args.choices, args.trace ? (line) => console.log(line) : null);
    if (result.summary !== null) {
      console.log(`seed ${args.seed}: ok`);
      console.log(describeSummary(result.summary));
      return 0;
    }
    console.log(describeConfigOf(args.seed, args.choices));
    console.log(failureText(result));
    return 1;
  }
  const startedMs = performance.now();
  let events = 0;
  let failed = 0;
  const totals = { crashes: 0, resyncsDone: 0, regions: 0, givenUpWhileAway: 0, countedLacking: 0 };
  const primary: PrimaryTally = emptyPrimaryTally();
  let primarySeeds = 0;
  for (let run = 0; run < args.runs; run += 1) {
    const seed = (args.base + run) >>> 0;
    const result = runSeed(seed, args.choices);
    if (result.summary === null) {
      console.log(failureText(result));
      failed += 1;
      if (!args.keepGoing) return 1;
      continue;
    }
    const { summary } = result;
    events += summary.events;
    totals.crashes += summary.crashes;
    totals.resyncsDone += summary.resyncs.done;
    totals.regions += summary.resyncs.regions;
    totals.givenUpWhileAway += summary.drops.filter((drop) => drop.includes('while away')).length;
    totals.countedLacking += summary.countedLacking;
    if (summary.primary.crashes > 0) primarySeeds += 1;
    for (const key of Object.keys(primary) as (keyof PrimaryTally)[]) primary[key] += summary.primary[key];
  }
  const elapsedMs = performance.now() - startedMs;
  const outcome = failed === 0 ? 'passed' : `run, ${failed} failed`;
  console.log(`${args.runs} seeds from ${args.base} ${outcome} (${events} events, ${elapsedMs.toFixed(0)} ms)`);
  console.log(
    `${totals.crashes} secondary crashes, ${totals.givenUpWhileAway} peers given up on while away, ${totals.resyncsDone} resyncs done ` +
      `(${totals.regions} regions sent), ${totals.countedLacking} replies counted a resyncing peer that lacked their write`,
  );
  console.log(`primary (in ${primarySeeds} seeds): ${describePrimary(primary)}`);
  return failed === 0 ? 0 : 1;
}

function describeConfigOf(seed: number, choices: ConfigChoices): string {
  return `config: ${describeConfig(configFromSeed(seed, choices))}`;
}

// Only as a program: sim.test.ts imports the functions above.
runAsProgram(import.meta.url, main);
