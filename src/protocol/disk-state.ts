// What a node says of its copy of a volume, in READY frames, heartbeats, the status and
// the metrics: the same five words everywhere (DRBD's disk states).
//   up-to-date    holds every acknowledged write
//   outdated      may lack writes (it was away, or its primary crashed)
//   inconsistent  being brought back (catch-up or resync), or knows nothing of what it holds
//   failed        its disk failed
//   diskless      has no copy

export const DISK_STATES = ['up-to-date', 'outdated', 'inconsistent', 'failed', 'diskless'] as const;

export type DiskState = (typeof DISK_STATES)[number];
