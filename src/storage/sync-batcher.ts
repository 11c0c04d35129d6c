// Group commit: many callers that need "everything completed so far is durable" share
// one sync. A caller that arrives while a sync is running waits for the next one, since
// the running sync may have started before the caller's writes completed. At most one
// sync runs and at most one is pending, however many callers wait.

export class SyncBatcher {
  private running: Promise<void> | null = null;
  private pending: Promise<void> | null = null;
  syncCount = 0;

  constructor(private readonly syncOnce: () => Promise<void>) {}

  /** Resolves once a sync that started after this call has completed. */
  sync(): Promise<void> {
    if (this.pending !== null) return this.pending;
    if (this.running === null) return this.launch();
    const pending = this.running
      .catch(() => undefined)
      .then(() => {
        this.pending = null;
        return this.launch();
      });
    this.pending = pending;
    return pending;
  }

  private launch(): Promise<void> {
    this.syncCount += 1;
    const running: Promise<void> = Promise.resolve()
      .then(() => this.syncOnce())
      .finally(() => {
        if (this.running === running) this.running = null;
      });
    this.running = running;
    return running;
  }
}
