// Split brain on one node (docs/operations.md, "Split brain"): what this node found, or
// was told by a peer, about a volume whose copies went separate ways, and the durable
// record that this copy's writes are to be discarded in favour of another's. The rule
// that finds a split brain and the policies are the core's (src/core/split-brain.ts);
// VolumeRoles acts on them (it follows the winner, or takes over as it); the losing
// copy's writes are saved first (src/storage/split-brain-file.ts).

import path from 'node:path';
import type { NodeConfig, VolumeConfig } from '../control/config.js';
import { parseMirrorRecord } from '../core/mirror-ledger.js';
import type { EpochHistory } from '../core/epoch-history.js';
import type { SplitBrainCopy } from '../core/split-brain.js';
import type { Logger } from '../lib/log.js';
import type { DurableFiles } from '../storage/durable-files.js';
import { splitBrainDir } from '../storage/split-brain-file.js';

/** What `status` shows of a split brain (null when there is none). */
export interface SplitBrainStatus {
  /** The node whose copy went separate ways from this one. */
  peer: string;
  /** Every entry through this one is the same on both copies. */
  sharedSeq: number;
  /** The writes past sharedSeq on this copy and on the peer's: entries, and bytes of the regions they changed (null: not known here). */
  here: { entries: number; bytes: number | null; epoch: number };
  other: { entries: number; bytes: number | null; epoch: number };
  /** The epoch the peer's copy is in now (a winner here must take a higher one). */
  peerEpoch: number;
  /** `disconnect` (they stay apart until `blockmirror resolve`), `discard-here` or `discard-other`. */
  decision: 'disconnect' | 'discard-here' | 'discard-other';
  /** How it was decided: the volume's policy, or an operator. */
  by: string;
  /** When this node found it (or was told), ISO 8601. */
  since: string;
  /** Once this copy's writes were saved before they were discarded: the file. */
  saved: string | null;
}

/** The copy of a volume on this node, as splitBrainBetween (src/core/split-brain.ts) compares it. */
export function copyForSplitBrain(node: NodeConfig, config: VolumeConfig, history: EpochHistory, lastSeq: number, files: DurableFiles): SplitBrainCopy {
  let record: ReturnType<typeof parseMirrorRecord> | null = null;
  return {
    node: node.id,
    history,
    lastSeq,
    mode: config.mode === 'local' ? 'sync' : config.mode,
    // What this node's mirror ledger recorded while it was a primary (kept when it stepped down).
    ackedAloneFrom: (peer) => (record ??= readRecord()).ackedAlone?.[peer] ?? null,
    divergedAfter: (peer) => (record ??= readRecord()).divergedAfter[peer] ?? null,
  };

  function readRecord(): ReturnType<typeof parseMirrorRecord> {
    const data = files.read(path.join(node.dataDir, 'mirror', `${config.name}.json`));
    return data === null ? { cleanStopSeq: null, resyncNeeded: [], divergedAfter: {} } : parseMirrorRecord(data);
  }
}

/**
 * `<dataDir>/split-brain/<volume>.discard.json`: this copy's writes past the point it
 * shares with `winner` are to be discarded (a policy or `blockmirror resolve` said so). It
 * is written before the copy stops taking writes and removed once it follows the winner,
 * so that a restart in between neither forgets the decision nor takes it again
 * differently.
 */
export class DiscardRecord {
  private readonly file: string;
  private current: { winner: string; by: string; decidedAt: string } | null;

  constructor(
    private readonly files: DurableFiles,
    dataDir: string,
    volume: string,
    private readonly log: Logger,
  ) {
    this.file = path.join(splitBrainDir(dataDir), `${volume}.discard.json`);
    this.current = null;
    const data = files.read(this.file);
    if (data === null) return;
    try {
      const parsed = JSON.parse(data.toString('utf8')) as { winner?: unknown; by?: unknown; decidedAt?: unknown };
      if (typeof parsed.winner !== 'string' || parsed.winner === '') throw new Error('it names no winner');
      this.current = { winner: parsed.winner, by: typeof parsed.by === 'string' ? parsed.by : 'unknown', decidedAt: typeof parsed.decidedAt === 'string' ? parsed.decidedAt : '' };
    } catch (error) {
      // A record that cannot be read discards nothing: the split brain is found again at the next contact.
      log.error('split-brain discard record unreadable: ignored', { file: this.file, error: String(error) });
    }
  }

  /** The node whose copy wins over this one, or null. */
  get winner(): string | null {
    return this.current?.winner ?? null;
  }

  get by(): string {
    return this.current?.by ?? '';
  }

  /** This copy discards its writes in favour of `winner`'s (durably, before anything else changes). */
  set(winner: string, by: string, now: Date): void {
    this.files.makeDir(path.dirname(this.file), 'split-brain');
    this.current = { winner, by, decidedAt: now.toISOString() };
    this.files.replaceFile(this.file, JSON.stringify(this.current, null, 2) + '\n', 'split-brain');
    this.log.warn('this copy\'s writes since its split from the winner will be saved and discarded', { winner, by });
  }

  /** The copy follows its winner: the decision is carried out. */
  clear(): void {
    if (this.current === null) return;
    this.current = null;
    this.files.remove(this.file, 'split-brain');
  }
}
