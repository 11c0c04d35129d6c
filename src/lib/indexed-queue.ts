// A FIFO queue whose elements are also read by position, with O(1) removal from the front.
// Array.prototype.shift moves every remaining element once an array is too large for V8
// to trim it in place (the mirror's queue of entries, thousands long under async writes,
// spent 5% of the primary's CPU there). Here the front advances over a backing array that
// is compacted once the consumed part is at least half of it (amortised O(1)).

export class IndexedQueue<T> {
  private items: (T | undefined)[] = [];
  private head = 0;
  /** Times the elements were moved down to the start of a new backing array. */
  compactions = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    this.items.push(item);
  }

  /** The element `index` places from the front, or undefined outside the queue. */
  at(index: number): T | undefined {
    return index < 0 || index >= this.length ? undefined : this.items[this.head + index];
  }

  shift(): T | undefined {
    if (this.head === this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head] = undefined;
    this.head += 1;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= COMPACT_AFTER && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
      this.compactions += 1;
    }
    return item;
  }

  /** The elements from position `from` (0: the front) to the end, as a new array. */
  slice(from: number): T[] {
    return this.items.slice(this.head + Math.max(0, from)) as T[];
  }
}

/** Front slots consumed before a compaction is considered. */
const COMPACT_AFTER = 1024;
