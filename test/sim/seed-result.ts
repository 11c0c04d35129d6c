// One seed's run, reported rather than thrown: what both simulators' runners return; and
// how each runner starts when it is the program.

import { pathToFileURL } from 'node:url';

export interface SeedOutcome<Summary> {
  seed: number;
  summary: Summary | null;
  error: string | null;
  /** The command that replays the seed. */
  replay: string;
}

/** Runs one seed; a failure (a SimFailure, or an assertion of a core) becomes `error`. */
export function runCaught<Summary>(seed: number, replay: string, run: () => Summary): SeedOutcome<Summary> {
  try {
    return { seed, summary: run(), error: null, replay };
  } catch (error) {
    const message = error instanceof Error ? `${error.name === 'SimFailure' ? '' : `${error.name}: `}${error.message}` : String(error);
    return { seed, summary: null, error: message, replay };
  }
}

/** Runs `main` with the command line when the module at `moduleUrl` is the program (not imported by a test); a thrown error exits 2. */
export function runAsProgram(moduleUrl: string, main: (argv: string[]) => number): void {
  if (process.argv[1] === undefined || moduleUrl !== pathToFileURL(process.argv[1]).href) return;
  try {
    process.exitCode = main(process.argv.slice(2));
  } catch (error) {
    console.error(error instanceof Error ? error.message : String(error));
    process.exitCode = 2;
  }
}
