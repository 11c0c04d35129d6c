// What a witness node keeps (docs/operations.md, "Quorum and witnesses"): it stores no
// data, but counts toward the quorum of every `quorum: majority` volume of the cluster,
// and for that it must know each volume's newest epoch: the one a primary's heartbeat
// claimed last. Its heartbeats name it (role `witness`), so that it counts only for the
// primary of that epoch, and votes only for a promotion from it (src/core/quorum.ts). The
// epochs are kept in `<dataDir>/witness/<volume>.json`, written when one grows, so that a
// witness that restarts does not count for a primary it has already seen replaced; with
// them the synced set the primary named last (which copies hold every acknowledged write),
// which the witness echoes, and votes by.

import path from 'node:path';
import type { ClusterConfig } from '../control/config.js';
import type { Logger } from '../lib/log.js';
import type { DurableFiles } from '../storage/durable-files.js';
import type { VolumeView } from './heartbeats.js';

interface KnownEpoch {
  epoch: number;
  primary: string | null;
  synced: string[];
}

export class WitnessRecord {
  private readonly known = new Map<string, KnownEpoch>();

  constructor(
    private readonly files: DurableFiles,
    private readonly dataDir: string,
    cluster: ClusterConfig,
    private readonly log: Logger,
  ) {
    for (const volume of cluster.volumes) {
      if (volume.quorum !== 'majority') continue;
      this.known.set(volume.name, this.read(volume.name) ?? { epoch: 0, primary: volume.primary, synced: [] });
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
      if (typeof parsed.epoch === 'number' && Number.isSafeInteger(parsed.epoch) && parsed.epoch >= 0) return { epoch: parsed.epoch, primary: typeof parsed.primary === 'string' ? parsed.primary : null, synced };
    } catch {
      // Damaged: below.
    }
    // A damaged record could hide a newer epoch: the witness counts for nobody until a primary claims one.
    this.log.error('witness record damaged: counting for no primary until one claims an epoch', { file: this.file(volume) });
    return { epoch: 0xffff_ffff, primary: null, synced: [] };
  }

  /** What the witness's heartbeats say of each volume. */
  views(): VolumeView[] {
    return [...this.known.entries()].map(([name, known]) => ({ name, role: 'witness', disk: 'diskless', epoch: known.epoch, lastSeq: 0, synced: known.synced }));
  }

  /**
   * A peer's heartbeat: what the primary of the newest epoch claims (the epoch, and its
   * synced set) is kept, durably, before the next heartbeat names it.
   */
  heard(peer: string, views: readonly VolumeView[]): void {
    for (const view of views) {
      const known = this.known.get(view.name);
      if (known === undefined || view.role !== 'primary') continue;
      const damaged = known.epoch === 0xffff_ffff && known.primary === null;
      const newer = view.epoch > known.epoch || damaged;
      const same = view.epoch === known.epoch && peer === known.primary && !sameSet(view.synced, known.synced);
      if (!newer && !same) continue;
      const next = { epoch: view.epoch, primary: peer, synced: [...view.synced] };
      this.files.makeDir(path.dirname(this.file(view.name)), 'witness');
      this.files.replaceFile(this.file(view.name), JSON.stringify(next) + '\n', 'witness');
      this.known.set(view.name, next);
      if (newer) this.log.info('witness: a primary claims a newer epoch', { volume: view.name, primary: peer, epoch: view.epoch });
    }
  }
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((id) => b.includes(id));
}
