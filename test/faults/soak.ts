// `npm run soak -- --minutes N`: runs seeds of the pair crash test (pair-crash.ts) one
// after another for N minutes, each with a new random seed, and prints every round as it
// ends (which node was killed, when, and what the client had written) and a summary. The
// first failure stops the soak with the seed that replays it (`--seed S`) and exits 1.
//
//   npm run soak -- --minutes 30 [--rounds 8] [--write-seconds 3]
//   npm run soak -- --seed 123456 [--rounds 8]       one seed, again

import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { killAll } from '../helpers/node-process.js';
import { runPairCrash, type RoundReport } from './pair-crash.js';

function positive(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!(value > 0)) throw new Error(`--${name} must be a positive number, got "${text}"`);
  return value;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string' },
      seed: { type: 'string' },
      rounds: { type: 'string' },
      'write-seconds': { type: 'string' },
    },
  });
  const minutes = positive('minutes', values.minutes, 5);
  const rounds = Math.floor(positive('rounds', values.rounds, 8));
  const writeSeconds = positive('write-seconds', values['write-seconds'], 3);
  const only = values.seed === undefined ? null : Number(values.seed) >>> 0;
  const deadline = Date.now() + minutes * 60_000;
  const kills = new Map<string, number>();
  let seeds = 0;
  let roundsRun = 0;
  const started = Date.now();
  console.log(only === null ? `soak: pair crash seeds for ${minutes} min, ${rounds} rounds each` : `soak: seed ${only}, ${rounds} rounds`);
  do {
    const seed = only ?? randomBytes(4).readUInt32BE(0);
    const report = (round: RoundReport): void => {
      roundsRun += 1;
      const key = `${round.victim} ${round.kind}`;
      kills.set(key, (kills.get(key) ?? 0) + 1);
      console.log(
        `  seed ${seed} round ${round.round}: ${round.note} [${round.kind}]; writes ${round.submitted}, replied ${round.replied}, durable ${round.durable}; ${round.ms} ms`,
      );
    };
    try {
      const result = await runPairCrash(seed, { rounds, writeSeconds, report });
      seeds += 1;
      console.log(`seed ${seed}: passed, ${result.rounds.length} rounds in ${(result.ms / 1000).toFixed(1)} s`);
    } catch (error) {
      console.log(`seed ${seed}: FAILED: ${error instanceof Error ? error.message : String(error)}`);
      console.log(`replay: npm run soak -- --seed ${seed} --rounds ${rounds} --write-seconds ${writeSeconds}`);
      return 1;
    }
  } while (only === null && Date.now() < deadline);
  const summary = [...kills].sort().map(([key, count]) => `${key}: ${count}`).join(', ');
  console.log(`soak: ${seeds} seed(s), ${roundsRun} rounds, no failure in ${((Date.now() - started) / 60_000).toFixed(1)} min (kills: ${summary})`);
  return 0;
}

main().then(
  (code) => {
    killAll();
    process.exit(code);
  },
  (error: unknown) => {
    killAll();
    console.error(error);
    process.exit(2);
  },
);
