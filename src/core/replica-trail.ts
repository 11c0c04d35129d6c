// Where a replica's entries since its primary's last consistency point landed in the
// volume: sequence number, offset and length of each, kept in memory and written to
// `<per-source log dir>/trail` at every consistency point this replica takes.
//
// What it is for: a primary that crashes loses the entries it had sent but not yet
// written to its own log, and after its restart it reuses their sequence numbers for
// other writes. The replica holds those lost entries in its image, so before the two
// copies can be brought together the replica names the regions of every entry past the
// primary's recovered sequence number, and the primary resends them. Those entries are
// all after the primary's last consistency point (it was durable there), but the
// replica may have taken consistency points of its own since (at a restart, or when its
// log filled), after which its log no longer holds them: this record does.
//
// When the replica restarts its log for a resync, what it named then is kept (as records
// of sequence number 0, named at every reset) until the primary's next consistency
// point: if the primary crashed again before it had made the names durable, they would
// otherwise be lost with the old log.
//
// Two marks go with the list. `trimmedThrough`: the entries up to it are no longer listed
// (a consistency point of the primary trimmed them), so a primary asking for the entries
// after an earlier one is told "every region". `divergedAfter`: the replica followed a
// primary of a newer epoch while it held entries past this one that the new primary's
// history does not hold (they came from the old primary, or it was the old primary); its
// READY says so, the new primary asks for them by name at its reset, and the reset
// clears the mark.
//
// Pure: the write log (src/storage/write-log.ts) writes the file and reads it back; the
// simulator (test/sim) keeps its bytes in memory.
//
// Bounded: past `trailEntriesMax` entries it stops listing and says "everything" (the
// whole volume would then be resent), which only a primary that never takes a
// consistency point could cause.

import { crc32c } from '../lib/crc32c.js';

export const TRAIL_FILE = 'trail';
const TRAIL_MAGIC = 0x424d5432; // 'BMT2'
const HEADER_BYTES = 32;
/** divergedAfter in the file when there is none. */
const NONE = 0xffff_ffff_ffff_ffffn;
const RECORD_BYTES = 24;
export const trailEntriesMax = 262_144;

export interface TrailExtent {
  offset: number;
  lengthBytes: number;
}

export class ReplicaTrail {
  private seqs: number[] = [];
  private offsets: number[] = [];
  private lengths: number[] = [];
  /** Too many entries to list: every region counts. */
  private overflow = false;
  /** Entries up to this one are no longer listed (the primary's consistency points trimmed them). */
  trimmedThrough = 0;
  /** The replica holds entries past this one that the history it follows does not (null: none). */
  divergedAfter: number | null = null;

  /** A record that names every region (a log made anew with nothing known of what came before). */
  static everything(): ReplicaTrail {
    const trail = new ReplicaTrail();
    trail.overflow = true;
    return trail;
  }

  /** An entry stored (or replayed) on this replica; CP markers change no region and are left out. */
  add(seq: number, offset: number, lengthBytes: number): void {
    if (lengthBytes <= 0 || this.overflow) return;
    if (this.seqs.length >= trailEntriesMax) {
      this.overflow = true;
      this.seqs = [];
      this.offsets = [];
      this.lengths = [];
      return;
    }
    this.seqs.push(seq);
    this.offsets.push(offset);
    this.lengths.push(lengthBytes);
  }

  /**
   * The log restarts for a resync after naming `named` (null: every region, here
   * [0, volumeBytes)): only those are kept, to be named again until the primary's next
   * consistency point.
   */
  resetTo(named: TrailExtent[] | null, volumeBytes: number): void {
    const kept = named ?? [{ offset: 0, lengthBytes: volumeBytes }];
    this.overflow = false;
    // The new log follows the primary that asked for the names: nothing before it is listed, nothing diverges.
    this.trimmedThrough = 0;
    this.divergedAfter = null;
    this.seqs = kept.map(() => 0);
    this.offsets = kept.map((extent) => extent.offset);
    this.lengths = kept.map((extent) => extent.lengthBytes);
  }

  /**
   * The primary's consistency point `cpSeq` is durable there: entries up to it can no
   * longer be lost, and names kept from a reset are durable there too.
   */
  trimThrough(cpSeq: number): void {
    this.trimmedThrough = Math.max(this.trimmedThrough, cpSeq);
    let keepFrom = 0;
    while (keepFrom < this.seqs.length && (this.seqs[keepFrom] ?? 0) <= cpSeq) keepFrom += 1;
    if (keepFrom === 0) return;
    this.seqs = this.seqs.slice(keepFrom);
    this.offsets = this.offsets.slice(keepFrom);
    this.lengths = this.lengths.slice(keepFrom);
  }

  /**
   * The regions of every entry after `seq` (and the names kept from a reset), merged where
   * they touch and sorted; null when the record overflowed or no longer lists every entry
   * after `seq` (every region).
   */
  extentsAfter(seq: number): TrailExtent[] | null {
    if (this.overflow || seq < this.trimmedThrough) return null;
    const found: TrailExtent[] = [];
    for (let index = 0; index < this.seqs.length; index += 1) {
      const recorded = this.seqs[index] ?? 0;
      if (recorded > seq || recorded === 0) found.push({ offset: this.offsets[index] ?? 0, lengthBytes: this.lengths[index] ?? 0 });
    }
    found.sort((a, b) => a.offset - b.offset);
    const merged: TrailExtent[] = [];
    for (const extent of found) {
      const last = merged[merged.length - 1];
      if (last !== undefined && extent.offset <= last.offset + last.lengthBytes) {
        last.lengthBytes = Math.max(last.lengthBytes, extent.offset + extent.lengthBytes - last.offset);
      } else {
        merged.push({ ...extent });
      }
    }
    return merged;
  }

  get entries(): number {
    return this.seqs.length;
  }

  /**
   * A record of the entries of a primary's own log after `sharedSeq` (read back from it),
   * for the per-source log it becomes when that primary follows a newer epoch: entries
   * before are not listed, and any listed diverge.
   */
  static ofOwnEntries(sharedSeq: number, entries: readonly { seq: number; offset: number; lengthBytes: number }[], lastSeq: number): ReplicaTrail {
    const trail = new ReplicaTrail();
    trail.trimmedThrough = sharedSeq;
    for (const entry of entries) trail.add(entry.seq, entry.offset, entry.lengthBytes);
    if (lastSeq > sharedSeq) trail.divergedAfter = sharedSeq;
    return trail;
  }

  /** The replica now follows a history that holds none of its entries after `seq` (see divergedAfter). */
  divergesAfter(seq: number): void {
    this.divergedAfter = Math.min(this.divergedAfter ?? seq, seq);
  }

  /** The record as written to its file. */
  encode(): Buffer {
    const body = Buffer.alloc(HEADER_BYTES + this.seqs.length * RECORD_BYTES);
    body.writeUInt32BE(TRAIL_MAGIC, 0);
    body.writeUInt32BE(this.overflow ? 1 : 0, 4);
    body.writeUInt32BE(this.seqs.length, 8);
    body.writeBigUInt64BE(BigInt(this.trimmedThrough), 16);
    body.writeBigUInt64BE(this.divergedAfter === null ? NONE : BigInt(this.divergedAfter), 24);
    for (let index = 0; index < this.seqs.length; index += 1) {
      const at = HEADER_BYTES + index * RECORD_BYTES;
      body.writeBigUInt64BE(BigInt(this.seqs[index] ?? 0), at);
      body.writeBigUInt64BE(BigInt(this.offsets[index] ?? 0), at + 8);
      body.writeBigUInt64BE(BigInt(this.lengths[index] ?? 0), at + 16);
    }
    // The checksum covers the whole file with its own field zero.
    body.writeUInt32BE(crc32c(body) >>> 0, 12);
    return body;
  }

  /**
   * Reads the record written at the last consistency point. A missing file (null) is an
   * empty record (a log that never had one); an unreadable one (or one of the earlier
   * format, without the marks) counts as "every region".
   */
  static decode(data: Buffer | null): ReplicaTrail {
    const trail = new ReplicaTrail();
    if (data === null) return trail;
    const count = data.length >= HEADER_BYTES ? data.readUInt32BE(8) : -1;
    const valid =
      count >= 0 &&
      data.readUInt32BE(0) === TRAIL_MAGIC &&
      data.length === HEADER_BYTES + count * RECORD_BYTES &&
      data.readUInt32BE(12) === crc32c(Buffer.concat([data.subarray(0, 12), Buffer.alloc(4), data.subarray(16)])) >>> 0;
    const trimmed = valid ? data.readBigUInt64BE(16) : 0n;
    const diverged = valid ? data.readBigUInt64BE(24) : NONE;
    const marksValid = trimmed <= BigInt(Number.MAX_SAFE_INTEGER) && (diverged === NONE || diverged <= BigInt(Number.MAX_SAFE_INTEGER));
    if (!valid || !marksValid) {
      // Nothing of it can be trusted, the divergence mark included: every region, diverged from the start.
      trail.overflow = true;
      trail.divergedAfter = 0;
      return trail;
    }
    trail.trimmedThrough = Number(trimmed);
    trail.divergedAfter = diverged === NONE ? null : Number(diverged);
    if (data.readUInt32BE(4) !== 0) {
      trail.overflow = true;
      return trail;
    }
    for (let index = 0; index < count; index += 1) {
      const at = HEADER_BYTES + index * RECORD_BYTES;
      trail.add(Number(data.readBigUInt64BE(at)), Number(data.readBigUInt64BE(at + 8)), Number(data.readBigUInt64BE(at + 16)));
    }
    return trail;
  }
}
