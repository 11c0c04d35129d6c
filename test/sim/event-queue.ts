// The simulator's clock: a priority queue of events by virtual time in microseconds.
// Events at the same time run in the order they were scheduled, so a run depends only on
// its seed. Nothing here reads a real clock or starts a timer: time moves only when the
// next event is taken from the queue.

interface Scheduled {
  timeUs: number;
  order: number;
  label: string;
  run: () => void;
}

export class EventQueue {
  private readonly heap: Scheduled[] = [];
  private nextOrder = 0;
  private nowUs = 0;
  /** Events run so far. */
  executed = 0;

  get now(): number {
    return this.nowUs;
  }

  get pending(): number {
    return this.heap.length;
  }

  /** Runs `run` `delayUs` from now (0: after everything already scheduled for now). */
  after(delayUs: number, label: string, run: () => void): void {
    this.at(this.nowUs + delayUs, label, run);
  }

  at(timeUs: number, label: string, run: () => void): void {
    if (!Number.isSafeInteger(timeUs) || timeUs < this.nowUs) throw new Error(`event "${label}" scheduled at ${timeUs}, before now (${this.nowUs})`);
    this.push({ timeUs, order: this.nextOrder, label, run });
    this.nextOrder += 1;
  }

  /** Runs the next event; returns its label, or null when nothing is left. */
  step(): string | null {
    const next = this.pop();
    if (next === undefined) return null;
    this.nowUs = next.timeUs;
    this.executed += 1;
    next.run();
    return next.label;
  }

  private before(a: Scheduled, b: Scheduled): boolean {
    return a.timeUs < b.timeUs || (a.timeUs === b.timeUs && a.order < b.order);
  }

  private push(item: Scheduled): void {
    const heap = this.heap;
    heap.push(item);
    let at = heap.length - 1;
    while (at > 0) {
      const parent = (at - 1) >> 1;
      const above = heap[parent] as Scheduled;
      if (!this.before(item, above)) break;
      heap[at] = above;
      at = parent;
    }
    heap[at] = item;
  }

  private pop(): Scheduled | undefined {
    const heap = this.heap;
    const top = heap[0];
    const last = heap.pop();
    if (top === undefined || last === undefined || heap.length === 0) return top;
    let at = 0;
    for (;;) {
      const left = 2 * at + 1;
      if (left >= heap.length) break;
      const right = left + 1;
      const leftItem = heap[left] as Scheduled;
      const rightItem = heap[right];
      const child = rightItem !== undefined && this.before(rightItem, leftItem) ? right : left;
      const childItem = heap[child] as Scheduled;
      if (!this.before(childItem, last)) break;
      heap[at] = childItem;
      at = child;
    }
    heap[at] = last;
    return top;
  }
}
