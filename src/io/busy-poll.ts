// Busy polling of the event loop before it sleeps (the native busyPoll, which explains
// why and how the window adapts). It is one setting per process: every node running in
// it holds the maximum its cluster file asks for, and the largest one held applies.

import { native, type BusyPollStats } from './native.js';

const held = new Set<{ maxMicros: number }>();

/** Polls for up to `maxMicros` until the returned function is called. */
export function holdBusyPoll(maxMicros: number): () => void {
  const hold = { maxMicros };
  held.add(hold);
  apply();
  return () => {
    if (held.delete(hold)) apply();
  };
}

export function busyPollStats(): BusyPollStats {
  return native.busyPollStats();
}

function apply(): void {
  let maxMicros = 0;
  for (const hold of held) maxMicros = Math.max(maxMicros, hold.maxMicros);
  native.busyPoll(maxMicros);
}
