// Whether a client makes every write durable (LocalVolume starts the log's sync early for one).

/**
 * Whether a FLUSH is likely to follow the write just done: true once the last two writes
 * were each followed by a flush before the next write (a client that makes every write
 * durable, as a database's log or `fio --fsync=1` does). The volume then starts the log's
 * fdatasync as soon as the write's reply has left (LocalVolume.replied), so that it runs
 * while the client takes the reply and sends the flush (40 to 60 µs on this machine's
 * loopback) instead of after. When that write is the only request on the node the sync
 * runs inline on the event loop: a hand-off to the log's syncer thread costs two thread
 * wake-ups, each an interprocessor interrupt on a virtual machine, and that thread competes
 * for a core with the client that is taking the reply. A mirrored volume starts it on the
 * syncer thread as soon as the write is logged instead: its reply waits for the peers,
 * and the sync runs during that wait.
 */
export class FlushPredictor {
  private followed = 0;
  private writeSinceFlush = false;

  get likely(): boolean {
    return this.followed >= 2;
  }

  wrote(): void {
    // Two writes without a flush between them: the pattern is broken.
    if (this.writeSinceFlush) this.followed = 0;
    this.writeSinceFlush = true;
  }

  flushed(): void {
    if (this.writeSinceFlush) this.followed = Math.min(this.followed + 1, 2);
    this.writeSinceFlush = false;
  }
}
