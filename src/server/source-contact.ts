// What a secondary knew of its primary when they were last in touch (whether that lets it
// be promoted without losing a write the primary acknowledged is src/core/promotion.ts's
// `mayLack`; docs/operations.md, "Failover"). The ReplicaTarget tells the record when a session is
// up (READY sent: not in sync yet), when the primary says it is in sync (IN_SYNC), what
// the primary's heartbeats name as its last entry, and when the session ends and why. It
// is kept in `<dataDir>/volumes/<name>.contact.json`, written at each change (a few per
// session), so that a node restarted after its primary died can still be promoted.

import type { Logger } from '../lib/log.js';
import { contactHeard, type SourceContact } from '../core/promotion.js';
import type { DurableFiles } from '../storage/durable-files.js';

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

  /**
   * A heartbeat of the primary named its last entry: during the session kept in memory
   * (written with the next change); after it, a primary that went on without this copy
   * takes its "in sync" away, written at once (contactHeard).
   */
  heard(sourceLastSeq: number): void {
    if (this.record === null) return;
    const next = contactHeard(this.record, sourceLastSeq);
    if (this.record.endedAt === null) this.record = next;
    else if (next !== this.record) {
      this.log.warn('the primary went on after this copy\'s session ended: a promotion of this copy will need --force', { source: next.source, lastSeq: next.lastSeq, sourceLastSeq });
      this.save(next);
    }
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
