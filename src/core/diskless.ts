// Whether a primary whose own disk failed may serve its volume from its peers instead
// (docs/operations.md, "A failed disk"). Pure: the executor (src/server/mirrored-volume.ts)
// gives the facts and carries out the verdict.

/** What the decision looks at. */
export interface DisklessFacts {
  mode: 'sync' | 'async' | 'logship' | 'local';
  /** The last entry the replica core numbered. */
  numberedSeq: number;
  /** The last entry the mirror holds to send (after the log gave up what waited for room). */
  mirroredSeq: number;
  /** Peers that stream up to date and in sync now. */
  upToDatePeers: number;
}

/**
 * Why the volume cannot be served diskless, or null when it can: only in `sync` mode do
 * the peers hold every write acknowledged; every entry numbered must have reached the
 * mirror (else there is a gap no peer can fill); and an up-to-date peer must be there.
 */
export function disklessRefusal(facts: DisklessFacts): string | null {
  if (facts.mode !== 'sync') return `in ${facts.mode} mode the peers may lack writes this node acknowledged`;
  if (facts.mirroredSeq !== facts.numberedSeq) {
    return `entries ${facts.mirroredSeq + 1}..${facts.numberedSeq} were numbered but never reached the peers`;
  }
  if (facts.upToDatePeers === 0) return 'no peer holds an up-to-date copy';
  return null;
}
