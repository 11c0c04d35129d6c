// Whether a promotion of a secondary can lose a write its primary acknowledged
// (docs/operations.md, "Failover"), from what the copy knew of its primary when they were
// last in touch: the contact record (kept by src/server/source-contact.ts).
//
// Pure: the record comes in as a value.

/** What a secondary knew of its primary at their last contact. */
export interface SourceContact {
  source: string;
  epoch: number;
  /** The primary said this copy was up to date (IN_SYNC), and nothing since said otherwise. */
  inSync: boolean;
  /** The last entry this copy held then. */
  lastSeq: number;
  /** The primary's last entry as its last heartbeat named it, or null. */
  sourceLastSeq: number | null;
  /** When the session ended (ISO time), or null while it runs. */
  endedAt: string | null;
  /** Why it ended, or null. */
  endedBy: string | null;
}

/**
 * Why a promotion of this copy may lose writes the primary acknowledged, or null when it
 * cannot: a sync copy that its primary said was in sync, and that was still in sync when
 * the primary went away (not when this node stopped or restarted, after which the primary
 * may have gone on without it).
 */
export function mayLack(config: { name: string; mode: string }, contact: SourceContact | null, node: string): string | null {
  const name = config.name;
  if (contact === null) return `node ${node} has had no contact with a primary of ${name} since it started following it, so it may lack writes the primary acknowledged`;
  const since = `at its last contact with ${contact.source} (${contact.endedAt ?? 'now'}${contact.endedBy === null ? '' : `: ${contact.endedBy}`})`;
  const lag =
    contact.sourceLastSeq === null
      ? 'how far behind it was is not known'
      : `the primary's last heartbeat named entry ${contact.sourceLastSeq}, ${Math.max(0, contact.sourceLastSeq - contact.lastSeq)} entries past the ${contact.lastSeq} it held`;
  if (config.mode !== 'sync') return `volume ${name} mirrors in ${config.mode} mode, so node ${node} may lack writes ${contact.source} acknowledged: ${since} ${lag}`;
  if (!contact.inSync) return `node ${node} may lack writes ${contact.source} acknowledged: ${since} it was not in sync (it held entry ${contact.lastSeq}; ${lag})`;
  return null;
}

/**
 * The record after a heartbeat of its primary named `sourceLastSeq` as its last entry:
 * during the session it is noted; after the session ended, a primary that names entries
 * past those it had then went on without this copy (it may have acknowledged writes this
 * copy lacks), so the copy is no longer in sync at its last contact.
 */
export function contactHeard(contact: SourceContact, sourceLastSeq: number): SourceContact {
  if (contact.endedAt === null) return { ...contact, sourceLastSeq };
  if (!contact.inSync || sourceLastSeq <= Math.max(contact.sourceLastSeq ?? 0, contact.lastSeq)) return contact;
  return { ...contact, inSync: false, sourceLastSeq, endedBy: `${contact.endedBy ?? 'the session ended'}; the primary went on without it (entry ${sourceLastSeq})` };
}
