// A sync pair whose nodes are SIGKILLed at seeded random moments while a client writes
// (see pair-crash.ts): every write replied to stays on the primary, the secondary comes
// back up to date, and the images end identical. A few seeds here, about a minute;
// `npm run soak -- --minutes N` runs many more. BLOCKMIRROR_SEED=<n> replays one seed.

import { after, test } from 'node:test';
import { randomBytes } from 'node:crypto';
import { killAll } from '../helpers/node-process.js';
import { runPairCrash } from './pair-crash.js';

after(() => killAll());

const seeds =
  process.env['BLOCKMIRROR_SEED'] !== undefined
    ? [Number(process.env['BLOCKMIRROR_SEED']) >>> 0]
    : Array.from({ length: 3 }, () => randomBytes(4).readUInt32BE(0));

console.log(`pair-crash.test: seeds ${seeds.join(', ')} (BLOCKMIRROR_SEED=<seed> replays one)`);

for (const seed of seeds) {
  test(`either node of a sync pair SIGKILLed at random moments: no replied write lost, b back up to date, images identical (seed ${seed})`, { timeout: 300_000 }, async (t) => {
    const result = await runPairCrash(seed, {
      rounds: 6,
      writeSeconds: 2,
      report: (round) =>
        t.diagnostic(
          `round ${round.round}: ${round.note} (${round.kind}); writes ${round.submitted}, replied ${round.replied}, durable ${round.durable}; ${round.ms} ms`,
        ),
    });
    t.diagnostic(`seed ${seed}: ${result.rounds.length} rounds in ${result.ms} ms`);
  });
}
