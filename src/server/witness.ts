// What a witness node keeps (docs/operations.md, "Quorum and witnesses"): it stores no
// data, but counts toward the quorum of every `quorum: majority` volume of the cluster,
// and for that it must know each volume's newest epoch: the one a primary's heartbeat
// claimed last. Its heartbeats name it (role `witness`), so that it counts only for the
// primary of that epoch, and votes only for a promotion from it (src/core/quorum.ts). The
// epochs are kept in `<dataDir>/witness/<volume>.json`, written when one grows, so that a
// witness that restarts does not count for a primary it has already seen replaced; with
// them the synced set the primary named last (which copies hold every acknowledged write),
// which the witness echoes and votes by, and its member record: its newest promise (a
// vote it gave a candidate, after which it ignores what older epochs' primaries claim),
// and whether it is still learning. A witness without its file (an empty data directory)
// or with a damaged one learns first: it says `learning` and counts for no one until it
// has heard enough members to know the newest epoch.

import path from 'node:path';
import { quorumMembers, type ClusterConfig } from '../control/config.js';
import { hearsLivePrimary, memberHeard, newerPromise, type MemberRecord } from '../core/quorum.js';
import type { Logger } from '../lib/log.js';
import type { DurableFiles } from '../storage/durable-files.js';
import type { Heartbeats, VolumeView } from './heartbeats.js';
import { parseMemberRecord } from './volume-quorum.js';

interface KnownEpoch extends MemberRecord {
  epoch: number;
  primary: string | null;
  synced: string[];
}

export class WitnessRecord {
  private readonly known = new Map<string, KnownEpoch>();

  constructor(
    private readonly files: DurableFiles,
    private readonly dataDir: string,
    private readonly cluster: ClusterConfig,
    private readonly self: string,
    private readonly log: Logger,
  ) {
    for (const volume of cluster.volumes) {
      if (volume.quorum !== 'majority') continue;
      const read = this.read(volume.name);
      const known = read ?? { epoch: 0, primary: volume.primary, synced: [], promise: null, learning: true };
      if (read === null) this.save(volume.name, known);
      else this.known.set(volume.name, known);
      if (known.learning) this.log.info('witness: learning the newest epoch from the other members before counting toward the quorum', { volume: volume.name });
    }
  }

  private file(volume: string): string {
    return path.join(this.dataDir, 'witness', `${volume}.json`);
  }

  private read(volume: string): KnownEpoch | null {
    const data = this.files.read(this.file(volume));
    if (data === null) return null;
    try {
      const parsed = JSON.parse(data.toString('utf8')) as Partial<KnownEpoch>;
      const synced = Array.isArray(parsed.synced) ? parsed.synced.filter((id): id is string => typeof id === 'string') : [];
      const member = parseMemberRecord(data);
      if (typeof parsed.epoch === 'number' && Number.isSafeInteger(parsed.epoch) && parsed.epoch >= 0 && member !== null) {
        return { epoch: parsed.epoch, primary: typeof parsed.primary === 'string' ? parsed.primary : null, synced, ...member };
      }
    } catch {
      // Damaged: below.
    }
    // A damaged record could hide a newer epoch or a promise: the witness learns them again first.
    this.log.error('witness record damaged: counting for no one until it has learned the newest epoch again', { file: this.file(volume) });
    return { epoch: 0, primary: null, synced: [], promise: null, learning: true };
  }

  private save(volume: string, next: KnownEpoch): void {
    this.files.makeDir(path.dirname(this.file(volume)), 'witness');
    this.files.replaceFile(this.file(volume), JSON.stringify(next) + '\n', 'witness');
    this.known.set(volume, next);
  }

  /** What the witness's heartbeats say of each volume. */
  views(): VolumeView[] {
    return [...this.known.entries()].map(([name, known]) => ({
      name,
      role: known.learning ? 'learning' : 'witness',
      disk: 'diskless',
      epoch: known.epoch,
      lastSeq: 0,
      synced: known.synced,
      promise: known.promise,
    }));
  }

  /** What it knows of each volume, for status. */
  status(): { volume: string; epoch: number; primary: string | null; synced: string[]; promise: { epoch: number; to: string } | null; learning: boolean }[] {
    return [...this.known.entries()].map(([volume, known]) => ({ volume, epoch: known.epoch, primary: known.primary, synced: [...known.synced], promise: known.promise, learning: known.learning }));
  }

  /**
   * A peer's heartbeat: what the primary of the newest epoch claims (the epoch, and its
   * synced set) is kept, durably, before the next heartbeat names it, unless the witness
   * promised a newer epoch; then, with what every member's heartbeats say, the witness
   * learns the newest epoch or promises a candidate its vote (src/core/quorum.ts).
   */
  heard(peer: string, views: readonly VolumeView[], heartbeats: Heartbeats | null): void {
    for (const view of views) {
      const known = this.known.get(view.name);
      if (known === undefined || view.role !== 'primary' || newerPromise(known.promise, view.epoch) !== null) continue;
      const newer = view.epoch > known.epoch;
      // In its own epoch: the primary's new synced set, or the primary itself when a damaged record lost it.
      const same = view.epoch === known.epoch && (known.primary === null || (peer === known.primary && !sameSet(view.synced, known.synced)));
      if (!newer && !same) continue;
      this.save(view.name, { ...known, epoch: view.epoch, primary: peer, synced: [...view.synced] });
      if (newer) this.log.info('witness: a primary claims a newer epoch', { volume: view.name, primary: peer, epoch: view.epoch });
    }
    if (heartbeats === null) return;
    for (const [name, known] of this.known) {
      const volume = this.cluster.volumes.find((each) => each.name === name);
      if (volume === undefined) continue;
      const members = quorumMembers(this.cluster, volume);
      const memberViews = heartbeats.memberViews(name);
      const step = memberHeard(known, { self: this.self, epoch: known.epoch, role: 'witness', hearsLivePrimary: hearsLivePrimary(this.self, known.primary, known.promise, memberViews, (node) => heartbeats.hears(node)), echo: known.synced }, members, memberViews, heartbeats.quorumFreshMs);
      if (step === null) continue;
      this.save(name, { ...known, ...step.record });
      this.log.info(`witness: ${step.change}`, { volume: name });
    }
  }
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((id) => b.includes(id));
}
