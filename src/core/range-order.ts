// Per-range ordering of changes (docs/architecture.md, "Where each decision lives"):
// changes to overlapping byte ranges run in the order they came, others at once, so the
// volume file always matches what replaying the log in sequence order would produce.

/** Runs operations on byte ranges so that overlapping ones run in the order they came. */
export class RangeOrder {
  private readonly inflight: { start: number; end: number; done: Promise<void> }[] = [];

  run<T>(start: number, end: number, operation: () => Promise<T>): Promise<T> {
    const before = this.inflight.filter((other) => other.start < end && start < other.end).map((other) => other.done);
    let finish: () => void = () => undefined;
    const entry = { start, end, done: new Promise<void>((resolve) => (finish = resolve)) };
    this.inflight.push(entry);
    const result = before.length === 0 ? operation() : Promise.all(before).then(operation);
    const settle = (): void => {
      this.inflight.splice(this.inflight.indexOf(entry), 1);
      finish();
    };
    result.then(settle, settle);
    return result;
  }

  get size(): number {
    return this.inflight.length;
  }
}
