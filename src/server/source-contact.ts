// What a secondary knew of its primary when they were last in touch, and whether that
// lets it be promoted without losing a write the primary acknowledged (`mayLack`;
// docs/operations.md, "Failover"). The ReplicaTarget tells the record when a session is
// up (READY sent: not in sync yet), when the primary says it is in sync (IN_SYNC), what
// the primary's heartbeats name as its last entry, and when the session ends and why. It
// is kept in `<dataDir>/volumes/<name>.contact.json`, written at each change (a few per
// session), so that a node restarted after its primary died can still be promoted.

import type { VolumeConfig } from '../control/config.js';
import type { Logger } from '../lib/log.js';
import type { DurableFiles } from '../storage/durable-files.js';

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

export class ContactRecord {
  private record: SourceContact | null;

  constructor(
    private readonly files: DurableFiles,
    private readonly file: string,
    private readonly log: Logger,
  ) {
    this.record = readContact(files, file);
  }

  /** The record as it stands (null: no contact since the copy started following its primary). */
  get current(): SourceContact | null {
    return this.record;
  }

  /** A session is up: not in sync until the primary says so. */
  started(source: string, epoch: number, lastSeq: number): void {
    this.save({ source, epoch, inSync: false, lastSeq, sourceLastSeq: null, endedAt: null, endedBy: null });
  }

  /** IN_SYNC: the copy is up to date from `seq` on, and counts for acknowledgements. */
  inSync(seq: number): void {
    if (this.record !== null && this.record.endedAt === null) this.save({ ...this.record, inSync: true, lastSeq: seq });
  }

  /** A heartbeat of the primary named its last entry (kept in memory: written with the next change). */
  heard(sourceLastSeq: number): void {
    if (this.record !== null && this.record.endedAt === null) this.record.sourceLastSeq = sourceLastSeq;
  }

  /** The session ended with `lastSeq` stored; `sourceWent`: the primary went away (else this node ended it). */
  ended(lastSeq: number, reason: string, sourceWent: boolean): void {
    if (this.record === null || this.record.endedAt !== null) return;
    this.save({ ...this.record, inSync: this.record.inSync && sourceWent, lastSeq, endedAt: new Date().toISOString(), endedBy: reason });
  }

  /** The copy follows a new primary: nothing is known of its contact with it yet. */
  forget(): void {
    this.record = null;
    this.remove();
  }

  /** Written at once; a copy whose record cannot be written no longer vouches for itself. */
  private save(record: SourceContact): void {
    this.record = record;
    try {
      this.files.replaceFile(this.file, JSON.stringify(record, null, 2) + '\n', 'contact');
    } catch (error) {
      // A full or failing disk: an older record on disk could say it was in sync, so it
      // goes, and a promotion of this copy needs --force.
      this.record = { ...record, inSync: false };
      this.log.error('could not write the contact record; a promotion of this copy will need --force', { file: this.file, error: String(error) });
      this.remove();
    }
  }

  private remove(): void {
    try {
      this.files.remove(this.file, 'contact');
    } catch (error) {
      // The next start reads what is there; a record of a session that did not end says "not in sync".
      this.log.error('could not remove the contact record', { file: this.file, error: String(error) });
    }
  }
}

/** The contact file as the last session left it; a copy that stopped during a session was not in touch at its end. */
function readContact(files: DurableFiles, file: string): SourceContact | null {
  const data = files.read(file);
  if (data === null) return null;
  try {
    const record = JSON.parse(data.toString('utf8')) as SourceContact;
    if (typeof record.source !== 'string' || typeof record.inSync !== 'boolean' || !Number.isSafeInteger(record.lastSeq)) return null;
    if (record.endedAt === null) return { ...record, inSync: false, endedAt: 'unknown', endedBy: 'this node stopped during the session' };
    return record;
  } catch {
    return null;
  }
}

/**
 * Why a promotion of this copy may lose writes the primary acknowledged, or null when it
 * cannot: a sync copy that its primary said was in sync, and that was still in sync when
 * the primary went away (not when this node stopped or restarted, after which the primary
 * may have gone on without it).
 */
export function mayLack(config: VolumeConfig, contact: SourceContact | null, node: string): string | null {
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
