// A small seeded PRNG for fuzz and randomized tests (mulberry32). Tests draw every random
// choice from one of these so that a failure is replayed exactly from the printed seed;
// nothing here may call Math.random().

export class Prng {
  private state: number;

  constructor(readonly seed: number) {
    this.state = seed >>> 0;
  }

  /** A uniformly distributed u32. */
  u32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** An integer in [0, bound). */
  below(bound: number): number {
    if (bound <= 1) return 0;
    return Math.floor((this.u32() / 2 ** 32) * bound);
  }

  /** An integer in [low, high] (both inclusive). */
  between(low: number, high: number): number {
    return low + this.below(high - low + 1);
  }

  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }

  pick<T>(items: readonly T[]): T {
    const item = items[this.below(items.length)];
    if (item === undefined) throw new Error('Prng.pick from an empty list');
    return item;
  }

  bytes(count: number): Buffer {
    const out = Buffer.alloc(count);
    for (let index = 0; index < count; index += 1) out[index] = this.u32() & 0xff;
    return out;
  }
}

/**
 * The base seed of a randomized test: BLOCKMIRROR_SEED from the environment when set (to
 * replay a failure), else the given default so that ordinary runs are deterministic.
 */
export function baseSeed(defaultSeed: number): number {
  const text = process.env['BLOCKMIRROR_SEED'];
  if (text === undefined || text === '') return defaultSeed;
  const seed = Number(text);
  if (!Number.isInteger(seed)) throw new Error(`BLOCKMIRROR_SEED must be an integer, got "${text}"`);
  return seed >>> 0;
}
