// The primary's durable record of what each peer may lack (docs/architecture.md, "Where
// each decision lives"): one dirty bitmap per peer, the record of how the last run ended
// (`<dataDir>/mirror/<volume>.json`), and the rules that keep both right across crashes
// of either node. MirrorEngine runs it on a node and the simulator (test/sim) runs it on
// its virtual clock, so every rule here is exercised by thousands of seeds.
//
// Pure: it never touches a file. What must be written comes back as actions
// (`write-record`, `write-bitmap`), which the caller carries out at once and in order,
// durably; what it must know of the mirror it asks the MirrorSource it follows.
//
// The rules:
// - At start, a run that did not stop cleanly (the record names no clean stop at the
//   log's last entry) leaves every peer needing a resync, and `divergedAfter` keeps, per
//   peer, the last entry this node recovered (the lower of that and what was kept
//   before): at the peer's reset it names the regions of what it holds past it. Its
//   bitmap then also marks the regions of the entries replayed at this start and every
//   extent the write-intent record names (the volume file may hold writes whose entries
//   the crash lost there).
// - A bitmap file that cannot be read marks every region, and so does a missing one for
//   a peer that needs a resync.
// - An entry placed while a peer is not in sync marks its regions for that peer. A peer
//   in sync lacks it too, should this node crash, until the peer has made it durable: the
//   regions written between two bitmap writes form a generation, and each bitmap file
//   written for a peer in sync also marks the generations it has not made durable.
// - A peer dropped, reset in full, named different by verify, or naming entries in
//   DIVERGED has the regions marked; the bitmaps are written at once.
// - A peer that streams and is up to date lacks nothing: its bitmap is cleared. A resync
//   clears a region once the peer has made its entry durable (ResyncRun).
// - A reply that leaves while a peer is not in sync is recorded first (`ackedAlone`: the
//   first entry the peer may lack, the one after its last durable); the mark goes once
//   the peer is up to date again. A reply held back (a quorum gate) marks nothing.

import { assert } from '../lib/assert.js';
import { DirtyBitmap } from './dirty-bitmap.js';
import type { PeerStatus } from './mirror-source.js';
import { ResyncRun, type RegionBitmap } from './resync-run.js';

/** How the last run of the mirror ended: the state file. */
export interface MirrorRecord {
  /** The log's last entry at a clean stop; null while running. */
  cleanStopSeq: number | null;
  /** Peers that missed writes and can only come back through a resync. */
  resyncNeeded: string[];
  /** Per peer: the last entry its history surely shares with ours (after an unclean start). */
  divergedAfter: Record<string, number>;
  /**
   * Per peer: its bitmap names what it lacks only if it holds every entry up to this one
   * (written by a promotion: see MirrorSourceOptions.bitmapFrom). Absent: always.
   */
  bitmapFrom?: Record<string, number>;
  /**
   * Per peer: the first entry this node may have acknowledged to a client without the
   * peer holding it (written before the first such reply; gone once the peer is up to
   * date again). A split brain is found from it (src/core/split-brain.ts). Absent: never.
   */
  ackedAlone?: Record<string, number>;
}

/** What the ledger asks of the mirror's core (MirrorSource is one). */
export interface LedgerSource {
  readonly lastSeq: number;
  isInSync(id: string): boolean;
  peerStatus(id: string): Pick<PeerStatus, 'durableSeq' | 'syncedSeq' | 'replication' | 'disk' | 'resyncNeeded'>;
  divergedAfter(id: string): number | null;
  bitmapFrom(id: string): number | null;
}

export type LedgerAction = { kind: 'write-record'; record: MirrorRecord } | { kind: 'write-bitmap'; peer: string; bitmap: DirtyBitmap };

export interface LedgerOpening {
  peers: readonly string[];
  sizeBytes: number;
  regionBytes: number;
  /** The log's last entry now (after the start's own consistency point). */
  lastSeq: number;
  /** The last entry recovery found at this start (a crash lost whatever came after it). */
  recoveredSeq: number;
  /** The state file as found (null: none). */
  record: MirrorRecord | null;
  /** Each peer's bitmap file as found (null: none). */
  bitmaps: ReadonlyMap<string, Buffer | null>;
  /** Regions of the entries replayed at this start, or null. */
  replayed: DirtyBitmap | null;
  /** The write-intent record the previous run left (unreadable: every extent), or null. */
  intent: { extents: DirtyBitmap; readable: boolean } | null;
  /** Generations of unsynced regions kept at most (the oldest merge). */
  unsyncedGenerationsMax: number;
}

interface PeerLedger {
  bitmap: DirtyBitmap;
  /** The bitmap differs from its file. */
  changed: boolean;
  /** Its file holds marks of generations it had not made durable (rewritten until it has). */
  unsyncedOnDisk: boolean;
}

export class MirrorLedger {
  /** The previous run stopped cleanly at the log's last entry. */
  readonly clean: boolean;
  /** What the opening found worth a warning (an unclean stop, unreadable files). */
  readonly warnings: { message: string; fields: Record<string, string | number> }[] = [];
  private record: MirrorRecord;
  private readonly peers = new Map<string, PeerLedger>();
  private source: LedgerSource | null = null;
  /** Regions of the entries placed in each stretch between two bitmap writes (`upTo`: its last entry). */
  protected unsyncedGenerations: { upTo: number; regions: DirtyBitmap }[] = [];
  private openGeneration: DirtyBitmap;

  constructor(private readonly opening: LedgerOpening) {
    const { peers, record, lastSeq, recoveredSeq, sizeBytes, regionBytes } = opening;
    this.clean = record === null ? lastSeq === 0 : record.cleanStopSeq === lastSeq;
    const resyncNeeded = this.clean ? (record?.resyncNeeded ?? []).filter((id) => peers.includes(id)) : [...peers];
    const divergedAfter: Record<string, number> = { ...(record?.divergedAfter ?? {}) };
    if (!this.clean) {
      this.warnings.push({ message: 'volume did not stop cleanly: its peers need a resync before they count again', fields: { peers: peers.join(',') } });
      for (const id of peers) divergedAfter[id] = Math.min(divergedAfter[id] ?? recoveredSeq, recoveredSeq);
    }
    this.record = { cleanStopSeq: null, resyncNeeded, divergedAfter, bitmapFrom: { ...(record?.bitmapFrom ?? {}) }, ackedAlone: { ...(record?.ackedAlone ?? {}) } };
    for (const id of peers) {
      const data = opening.bitmaps.get(id) ?? null;
      let bitmap = data === null ? null : DirtyBitmap.decode(data, sizeBytes, regionBytes);
      if (bitmap === null) {
        // No usable record of what the peer lacks: a peer that needs a resync needs all of it.
        bitmap = new DirtyBitmap(sizeBytes, regionBytes);
        if (data !== null) this.warnings.push({ message: 'dirty bitmap unreadable: every region counts as out of sync', fields: { peer: id } });
        if (data !== null || resyncNeeded.includes(id)) bitmap.markAll();
      }
      if (!this.clean && opening.replayed !== null) bitmap.include(opening.replayed);
      const intent = opening.intent;
      if (!this.clean && intent !== null) {
        const { extents } = intent;
        for (let extent = extents.nextDirty(0); extent !== -1; extent = extents.nextDirty(extent + 1)) {
          const offset = extent * extents.regionBytes;
          bitmap.mark(offset, Math.min(extents.regionBytes, sizeBytes - offset));
        }
      }
      this.peers.set(id, { bitmap, changed: true, unsyncedOnDisk: false });
    }
    if (!this.clean && opening.intent?.readable === false) {
      this.warnings.push({ message: 'write-intent record unreadable: every region counts as out of sync', fields: {} });
    }
    this.openGeneration = new DirtyBitmap(sizeBytes, regionBytes);
  }

  /** Peers that need a resync before they count (for the MirrorSource). */
  get resyncNeeded(): readonly string[] {
    return this.record.resyncNeeded;
  }

  /** From which entry on each peer's bitmap covers what it lacks (for the MirrorSource). */
  get bitmapFrom(): Readonly<Record<string, number>> {
    return this.record.bitmapFrom ?? {};
  }

  /** Where each peer's history may part from ours (for the MirrorSource). */
  get divergedAfter(): Readonly<Record<string, number>> {
    return this.record.divergedAfter;
  }

  /**
   * Follows the mirror's core from now on. Returns what must be durable before the first
   * write: the record (a crash from now on is an unclean stop) and every bitmap; only
   * then may a new write-intent record replace the previous one.
   */
  attach(source: LedgerSource): LedgerAction[] {
    assert(this.source === null, 'the ledger follows one source');
    this.source = source;
    return [this.writeRecord(), ...this.persist()];
  }

  /**
   * A reply to a client is about to leave (sync mode): for each peer not in sync, the
   * first entry it may lack (the one after its last durable) is recorded, unless an
   * earlier one is; the record is written before the reply leaves.
   */
  replying(): LedgerAction[] {
    let marked = false;
    for (const id of this.peers.keys()) {
      if (this.core.isInSync(id)) continue;
      if (this.ackedAloneFrom(id, this.core.peerStatus(id).durableSeq + 1)) marked = true;
    }
    return marked ? [this.writeRecord()] : [];
  }

  /** From which entry on this node may have acknowledged writes without the peer holding them, or null. */
  ackedAlone(id: string): number | null {
    return this.record.ackedAlone?.[id] ?? null;
  }

  private ackedAloneFrom(id: string, seq: number): boolean {
    const marks = (this.record.ackedAlone ??= {});
    const before = marks[id];
    if (before !== undefined && before <= seq) return false;
    marks[id] = seq;
    return true;
  }

  private get core(): LedgerSource {
    assert(this.source !== null, 'the ledger follows no source yet');
    return this.source;
  }

  private peer(id: string): PeerLedger {
    const peer = this.peers.get(id);
    assert(peer !== undefined, `unknown peer ${id}`);
    return peer;
  }

  private writeRecord(): LedgerAction {
    const { cleanStopSeq, resyncNeeded, divergedAfter, bitmapFrom, ackedAlone } = this.record;
    const record: MirrorRecord = { cleanStopSeq, resyncNeeded: [...resyncNeeded], divergedAfter: { ...divergedAfter } };
    if (bitmapFrom !== undefined && Object.keys(bitmapFrom).length > 0) record.bitmapFrom = { ...bitmapFrom };
    if (ackedAlone !== undefined && Object.keys(ackedAlone).length > 0) record.ackedAlone = { ...ackedAlone };
    return { kind: 'write-record', record };
  }

  /** The regions the peer may lack (read only: change them through the ledger). */
  bitmap(id: string): DirtyBitmap {
    return this.peer(id).bitmap;
  }

  /** Bytes of the volume the peer may lack. */
  dirtyBytes(id: string): number {
    return this.peer(id).bitmap.dirtyBytes;
  }

  /**
   * An entry was placed (a CP marker changes no region: lengthBytes 0). A peer that does
   * not get it now will lack its regions; one that does lacks them, should this node
   * crash, until it has made the entry durable.
   */
  placed(offset: number, lengthBytes: number): void {
    if (lengthBytes <= 0) return;
    for (const id of this.peers.keys()) if (!this.core.isInSync(id)) this.lacks(id, offset, lengthBytes);
    this.openGeneration.mark(offset, lengthBytes);
  }

  /** The peer may lack [offset, offset + lengthBytes). */
  lacks(id: string, offset: number, lengthBytes: number): void {
    if (lengthBytes <= 0) return;
    const peer = this.peer(id);
    peer.bitmap.mark(offset, lengthBytes);
    peer.changed = true;
  }

  /** Nothing about the peer's copy can be trusted: every region is to be resent. */
  lacksAll(id: string): void {
    const peer = this.peer(id);
    peer.bitmap.markAll();
    peer.changed = true;
  }

  /**
   * A peer that streams and is up to date lacks nothing, and from now on no reply leaves
   * without it: its bitmap is cleared, and its `ackedAlone` mark goes (the record is
   * written). Call after every change of its state.
   */
  clearIfCurrent(id: string): LedgerAction[] {
    const peer = this.peer(id);
    const marked = this.record.ackedAlone?.[id] !== undefined;
    if (peer.bitmap.dirtyRegions === 0 && !marked) return [];
    const status = this.core.peerStatus(id);
    if (status.replication !== 'streaming' || status.disk !== 'up-to-date') return [];
    if (peer.bitmap.dirtyRegions > 0) {
      peer.bitmap.clearAll();
      peer.changed = true;
    }
    if (!marked) return [];
    delete this.record.ackedAlone?.[id];
    return [this.writeRecord()];
  }

  /**
   * The bitmap files now hold what is in memory, plus for each peer in sync the
   * generations it has not made durable. Runs in every consistency point before it is
   * recorded (marks for entries the CP covers must not depend on the log) and at once
   * after any mark that a crash must not lose.
   */
  persist(): LedgerAction[] {
    this.closeUnsyncedGeneration();
    const actions: LedgerAction[] = [];
    for (const [id, peer] of this.peers) {
      const status = this.core.peerStatus(id);
      const durable = Math.max(status.durableSeq, status.syncedSeq);
      const unsynced = this.core.isInSync(id) ? this.unsyncedGenerations.filter((generation) => generation.upTo > durable) : [];
      if (!peer.changed && unsynced.length === 0 && !peer.unsyncedOnDisk) continue;
      let written = peer.bitmap;
      if (unsynced.length > 0) {
        written = peer.bitmap.clone();
        for (const generation of unsynced) written.include(generation.regions);
      }
      actions.push({ kind: 'write-bitmap', peer: id, bitmap: written });
      peer.changed = false;
      peer.unsyncedOnDisk = unsynced.length > 0;
    }
    return actions;
  }

  /**
   * Closes the generation of regions written since the last bitmap write, and lets go of
   * those every peer in sync has made durable. Peers not in sync have their own marks
   * (written while away, or lacking at their drop).
   */
  protected closeUnsyncedGeneration(): void {
    const closed = this.openGeneration;
    this.openGeneration = new DirtyBitmap(this.opening.sizeBytes, this.opening.regionBytes);
    if (closed.dirtyRegions > 0) this.unsyncedGenerations.push({ upTo: this.core.lastSeq, regions: closed });
    const inSync = [...this.peers.keys()].filter((id) => this.core.isInSync(id));
    const durable = Math.min(...inSync.map((id) => Math.max(this.core.peerStatus(id).durableSeq, this.core.peerStatus(id).syncedSeq)));
    while (this.unsyncedGenerations.length > 0 && (inSync.length === 0 || (this.unsyncedGenerations[0]?.upTo ?? 0) <= durable)) {
      this.unsyncedGenerations.shift();
    }
    while (this.unsyncedGenerations.length > this.opening.unsyncedGenerationsMax) {
      const oldest = this.unsyncedGenerations.shift();
      const next = this.unsyncedGenerations[0];
      if (oldest !== undefined && next !== undefined) next.regions.include(oldest.regions);
    }
  }

  /**
   * The record and every bitmap, written again whole (a replaced disk lost the files:
   * `blockmirror attach`).
   */
  rewriteAll(): LedgerAction[] {
    for (const peer of this.peers.values()) peer.changed = true;
    return [this.writeRecord(), ...this.persist()];
  }

  /** The peer can only come back through a resync: the record says so. */
  needsResync(id: string): LedgerAction[] {
    if (this.record.resyncNeeded.includes(id)) return [];
    this.record.resyncNeeded.push(id);
    return [this.writeRecord()];
  }

  /**
   * The core dropped the peer: it lacks the entries that were in flight or queued for it
   * (`lost`), or everything (`full`); written at once, not at the next CP, since a CP
   * already under way may cover these entries and a crash would then not replay them.
   */
  peerDropped(id: string, full: boolean, lost: readonly { offset: number; lengthBytes: number }[]): LedgerAction[] {
    if (full) this.lacksAll(id);
    for (const entry of lost) this.lacks(id, entry.offset, entry.lengthBytes);
    const actions = this.persist();
    if (this.core.peerStatus(id).resyncNeeded) actions.push(...this.needsResync(id));
    return actions;
  }

  /** The core resets the peer for a resync (in full: every region). */
  resetPeer(id: string, full: boolean): LedgerAction[] {
    const actions: LedgerAction[] = [];
    if (full) {
      this.lacksAll(id);
      actions.push(...this.persist());
    }
    actions.push(...this.needsResync(id));
    return actions;
  }

  /** DIVERGED: the peer holds entries past divergedAfter in these extents (or anywhere). Returns the bytes named. */
  diverged(id: string, all: boolean, extents: readonly { offset: number; lengthBytes: number }[]): number {
    if (all) this.lacksAll(id);
    for (const extent of extents) this.lacks(id, extent.offset, extent.lengthBytes);
    return all ? this.opening.sizeBytes : extents.reduce((sum, extent) => sum + extent.lengthBytes, 0);
  }

  /** RESET_DONE arrived: what the peer named is durable here before the core forgets where its history was cut. */
  beforeResetDone(): LedgerAction[] {
    return this.persist();
  }

  /** After the core took RESET_DONE: the record forgets divergedAfter for the peer once the core has. */
  afterResetDone(id: string): LedgerAction[] {
    const forgets =
      (this.record.divergedAfter[id] !== undefined && this.core.divergedAfter(id) === null) ||
      (this.record.bitmapFrom?.[id] !== undefined && this.core.bitmapFrom(id) === null);
    if (!forgets) return [];
    this.record.divergedAfter = this.fromCore((other) => this.core.divergedAfter(other));
    this.record.bitmapFrom = this.fromCore((other) => this.core.bitmapFrom(other));
    return [this.writeRecord()];
  }

  /** A per-peer number as the core has it now (peers without one left out). */
  private fromCore(get: (id: string) => number | null): Record<string, number> {
    const found: Record<string, number> = {};
    for (const id of this.peers.keys()) {
      const seq = get(id);
      if (seq !== null) found[id] = seq;
    }
    return found;
  }

  /** The plan of a resync of the peer over its bitmap; a bit it clears is written at the next persist. */
  resyncPlan(id: string): ResyncRun {
    const peer = this.peer(id);
    const { bitmap } = peer;
    const view: RegionBitmap = {
      regions: bitmap.regions,
      get dirtyRegions() {
        return bitmap.dirtyRegions;
      },
      nextDirty: (from) => bitmap.nextDirty(from),
      isDirty: (region) => bitmap.isDirty(region),
      clear: (region) => {
        if (!bitmap.isDirty(region)) return;
        bitmap.clear(region);
        peer.changed = true;
      },
    };
    return new ResyncRun(view);
  }

  /** The resync of the peer is done (the core was told): it no longer needs one. */
  resyncDone(id: string): LedgerAction[] {
    const actions: LedgerAction[] = [];
    if (this.record.resyncNeeded.includes(id)) {
      this.record.resyncNeeded = this.record.resyncNeeded.filter((other) => other !== id);
      actions.push(this.writeRecord());
    }
    actions.push(...this.persist());
    return actions;
  }

  /** Verify found [offset, offset + lengthBytes) different on the peer (the core was told). */
  outOfSync(id: string, offset: number, lengthBytes: number): LedgerAction[] {
    this.lacks(id, offset, lengthBytes);
    return [...this.persist(), ...this.needsResync(id)];
  }

  /**
   * A clean stop at `finalSeq`, after the final consistency point that every peer in sync
   * has taken: the bitmaps no longer mark what they had not made durable, and the record
   * names the stop.
   */
  cleanStop(finalSeq: number, resyncNeeded: readonly string[]): LedgerAction[] {
    const divergedAfter = this.fromCore((id) => this.core.divergedAfter(id));
    const bitmapFrom = this.fromCore((id) => this.core.bitmapFrom(id));
    const actions = this.persist();
    this.record = { cleanStopSeq: finalSeq, resyncNeeded: [...resyncNeeded], divergedAfter, bitmapFrom, ackedAlone: { ...(this.record.ackedAlone ?? {}) } };
    actions.push(this.writeRecord());
    return actions;
  }
}

/** Reads the state file; one that cannot be parsed says nothing about a clean stop (an unclean one). */
export function parseMirrorRecord(data: Buffer): MirrorRecord {
  try {
    const parsed = JSON.parse(data.toString('utf8')) as Partial<MirrorRecord>;
    const divergedAfter: Record<string, number> = {};
    if (typeof parsed.divergedAfter === 'object' && parsed.divergedAfter !== null) {
      for (const [id, seq] of Object.entries(parsed.divergedAfter)) if (Number.isSafeInteger(seq) && seq >= 0) divergedAfter[id] = seq;
    }
    const bitmapFrom = seqsOf(parsed.bitmapFrom, 0);
    const ackedAlone = seqsOf(parsed.ackedAlone, 1);
    return {
      cleanStopSeq: typeof parsed.cleanStopSeq === 'number' ? parsed.cleanStopSeq : null,
      resyncNeeded: Array.isArray(parsed.resyncNeeded) ? parsed.resyncNeeded.filter((id): id is string => typeof id === 'string') : [],
      divergedAfter,
      ...(Object.keys(bitmapFrom).length > 0 ? { bitmapFrom } : {}),
      ...(Object.keys(ackedAlone).length > 0 ? { ackedAlone } : {}),
    };
  } catch {
    return { cleanStopSeq: null, resyncNeeded: [], divergedAfter: {} };
  }
}

/** A per-peer map of entry numbers from the state file (values that are not one left out). */
function seqsOf(value: unknown, least: number): Record<string, number> {
  const found: Record<string, number> = {};
  if (typeof value !== 'object' || value === null) return found;
  for (const [id, seq] of Object.entries(value)) if (Number.isSafeInteger(seq) && (seq as number) >= least) found[id] = seq as number;
  return found;
}

/** The state file's text. */
export function encodeMirrorRecord(record: MirrorRecord): string {
  return JSON.stringify(record, null, 2) + '\n';
}
