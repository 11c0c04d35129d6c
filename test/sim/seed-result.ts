// One seed's run, reported rather than thrown: what both simulators' runners return.

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
