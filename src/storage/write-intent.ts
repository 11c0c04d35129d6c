// The write-intent record of a mirrored volume on its primary (DRBD calls it the activity
// log): the extents of the volume where writes may be in flight, made durable before the
// volume file is written there. A primary writes its volume file while the entry is being
// appended to its log, so after a crash the volume file may hold a write whose log entry
// was lost; recovery cannot mark that region, and no peer may have received the entry.
// After a start that was not clean, every extent of the record counts as out of sync
// for every peer.
//
// An extent joins the record on the first write to it (the writes to it wait for the
// record to be durable: one file write for all that joined in the same turn of the event
// loop) and leaves it at a consistency point once it has not been written since the one
// before and every entry written there is durable in the log (so recovery would replay,
// and mark, it) or covered by a consistency point.
//
// File `<dataDir>/mirror/<volume>.intent`: a DirtyBitmap (src/core/dirty-bitmap.ts) with one bit
// per extent, replaced atomically.

import { DirtyBitmap } from '../core/dirty-bitmap.js';
import type { DurableFiles } from './durable-files.js';

export class WriteIntent {
  /** The extents in the record (durable once `flushing` is null and nothing is pending). */
  private readonly record: DirtyBitmap;
  /** Per extent: the last entry written there. */
  private readonly lastSeq: Float64Array;
  /** Per extent: written since the last cool(). */
  private readonly touched: Uint8Array;
  private waiting: { resolve: () => void; reject: (error: Error) => void }[] = [];
  /** Extents that joined the record since it was last written. */
  private readonly pending = new Set<number>();
  private scheduled = false;
  /** A write of the record on the thread pool (the event loop goes on meanwhile). */
  private saving: Promise<void> | null = null;
  writes = 0;

  constructor(
    private readonly files: DurableFiles,
    private readonly file: string,
    readonly sizeBytes: number,
    readonly extentBytes: number,
  ) {
    this.record = new DirtyBitmap(sizeBytes, extentBytes);
    this.lastSeq = new Float64Array(this.record.regions);
    this.touched = new Uint8Array(this.record.regions);
    this.save();
  }

  /** The record a previous run left (null: none, or unreadable: every extent counts). */
  static load(files: DurableFiles, file: string, sizeBytes: number, extentBytes: number): { extents: DirtyBitmap; readable: boolean } | null {
    const data = files.read(file);
    if (data === null) return null;
    const extents = DirtyBitmap.decode(data, sizeBytes, extentBytes);
    if (extents !== null) return { extents, readable: true };
    const all = new DirtyBitmap(sizeBytes, extentBytes);
    all.markAll();
    return { extents: all, readable: false };
  }

  /**
   * Entry `seq` changes [offset, offset + lengthBytes): resolves once its extents are in
   * the durable record, or returns null when they already are (the volume file may be
   * written at once).
   */
  intend(offset: number, lengthBytes: number, seq: number): Promise<void> | null {
    if (lengthBytes <= 0) return null;
    const first = Math.floor(offset / this.extentBytes);
    const last = Math.floor((offset + lengthBytes - 1) / this.extentBytes);
    let missing = false;
    for (let extent = first; extent <= last; extent += 1) {
      this.lastSeq[extent] = seq;
      this.touched[extent] = 1;
      if (!this.record.isDirty(extent)) {
        this.record.mark(extent * this.extentBytes, Math.min(this.extentBytes, this.sizeBytes - extent * this.extentBytes));
        this.pending.add(extent);
      }
      // Joined now, or earlier and its record write is still to come.
      if (this.pending.has(extent)) missing = true;
    }
    if (!missing) return null;
    return new Promise<void>((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      if (this.scheduled) return;
      this.scheduled = true;
      // After the record write under way, if any: it may predate these extents.
      // A failed save under way fails its own waiters; these wait for the next one.
      setImmediate(() => void (this.saving ?? Promise.resolve()).catch(() => undefined).then(() => this.flush()));
    });
  }

  /**
   * At a consistency point: extents not written since the last call whose entries are all
   * up to `durableSeq` (durable in the log, or covered by a consistency point) leave the record.
   */
  cool(durableSeq: number): void {
    let changed = false;
    for (let extent = this.record.nextDirty(0); extent !== -1; extent = this.record.nextDirty(extent + 1)) {
      if (this.touched[extent] === 1) {
        this.touched[extent] = 0;
        continue;
      }
      if ((this.lastSeq[extent] ?? 0) > durableSeq || this.pending.has(extent)) continue;
      this.record.clear(extent);
      changed = true;
    }
    // A write of the record pending takes these changes with it.
    if (changed && !this.scheduled && this.saving === null) this.save();
  }

  get extents(): number {
    return this.record.dirtyRegions;
  }

  private async flush(): Promise<void> {
    this.scheduled = false;
    const waiting = this.waiting;
    this.waiting = [];
    const joined = [...this.pending];
    this.pending.clear();
    const saving = this.saveAsync();
    this.saving = saving;
    try {
      await saving;
      for (const waiter of waiting) waiter.resolve();
    } catch (error) {
      // Still not durable: a later write to these extents must wait again.
      for (const extent of joined) this.pending.add(extent);
      for (const waiter of waiting) waiter.reject(error instanceof Error ? error : new Error(String(error)));
    } finally {
      if (this.saving === saving) this.saving = null;
    }
  }

  /** The record replaced, its waits for the disk on the thread pool. */
  private async saveAsync(): Promise<void> {
    await this.files.replaceFileAsync(this.file, this.record.encode(), 'intent');
    this.writes += 1;
  }

  private save(): void {
    this.files.replaceFile(this.file, this.record.encode(), 'intent');
    this.writes += 1;
  }
}
