// The long transfers a primary's mirror engine runs for one peer, each carrying out
// PrimaryCore's decisions turn by turn: a resync (resyncNext: which regions to send, when
// to pause for the pace, when to wait for the peer), a catch-up from the log files (the
// entries read back in order, a SendWindow's worth unacknowledged at a time), and reading
// back the regions of entries a dropped peer had not made durable. MirrorEngine starts
// them from its action runner and gives them what they act through.

import { constants } from '../constants.js';
import type { Logger } from '../lib/log.js';
import type { Clock } from '../io/clock.js';
import type { PrimaryAction, PrimaryCore, ResyncPace } from '../core/primary-core.js';
import { SendWindow } from '../core/send-window.js';
import { encodeEntryFrame } from '../protocol/peer/frames.js';
import { EntryType } from '../protocol/log-entry.js';
import type { LocalVolume } from '../storage/local-volume.js';
import type { WriteLog } from '../storage/write-log.js';

type Frame = Buffer[];

/** What the transfers act through: the engine's core, clock, log, volume and write log. */
export interface TransferPorts {
  core: PrimaryCore<Frame>;
  clock: Clock;
  log: Logger;
  /** The volume's current contents of a range, logged as an entry (a resync's data). */
  regions: Pick<LocalVolume, 'logCurrent'>;
  entries: Pick<WriteLog, 'readRange' | 'syncTo'>;
  /** Carries out the core's actions (the engine's action runner). */
  run(actions: PrimaryAction<Frame>[]): void;
}

/** One peer as a transfer sees it, for one session of its links. */
export interface TransferPeer {
  id: string;
  /** Whether the session the transfer started in is still up (and the engine running). */
  live(): boolean;
  /** Resolves on the peer's next ACK or FLUSHED, or after a short while (a bounded wait). */
  progress(): Promise<void>;
  /** Sends a frame on the connection that carries the region of `offset`. */
  send(offset: number, frame: Frame): void;
}

/**
 * Sends a resyncing peer every region its bitmap marks, as entries that carry the regions'
 * current contents (logged in order with live writes, so a live write is never
 * overwritten by older resync data), a few at a time. A region's bit is cleared once the
 * peer has made its entry durable; so a resync that is interrupted (links, or either node
 * crashing) resumes from the bitmap. `pace` gives the limits of the next turn.
 */
export async function runResync(ports: TransferPorts, peer: TransferPeer, volumeBytes: number, pace: () => ResyncPace): Promise<'done' | 'interrupted'> {
  const { core, clock, log } = ports;
  const startedMs = clock.nowMs();
  const startBytes = core.dirtyBytes(peer.id);
  log.info('resync started', { peer: peer.id, regions: core.bitmap(peer.id).dirtyRegions, bytes: startBytes });
  while (peer.live()) {
    const limits = pace();
    const step = core.resyncNext(peer.id, limits, clock.nowMs());
    if (step.kind === 'stopped') break;
    if (step.kind === 'pause') {
      await clock.sleep(step.untilMs - clock.nowMs());
      continue;
    }
    if (step.kind === 'log') {
      const { runs } = step;
      const { regionBytes } = limits;
      // Several runs are read at once (distinct regions: their order does not matter).
      const logged = await Promise.all(
        runs.map((run) => {
          const offset = (run[0] ?? 0) * regionBytes;
          return ports.regions.logCurrent(offset, Math.min(run.length * regionBytes, volumeBytes - offset));
        }),
      );
      // A failed log write fails the volume; the loop then ends with the peer's links.
      for (const { written } of logged) written.catch(() => undefined);
      // A later session has a plan of its own: these entries are not its.
      if (!peer.live()) break;
      logged.forEach(({ seq }, index) => core.resyncLogged(peer.id, seq, runs[index] ?? []));
      continue;
    }
    ports.run(step.actions);
    if (step.kind === 'done') {
      log.info('resync done', { peer: peer.id, bytes: startBytes, ms: clock.nowMs() - startedMs });
      return 'done';
    }
    // Wait for the peer to make what was sent durable (bounded: a FLUSHED or a short while).
    // It was asked for what it has stored so far, so that regions are cleared (and new
    // ones sent) while the rest is still on its way, rather than in lockstep batches.
    await peer.progress();
  }
  log.warn('resync interrupted', { peer: peer.id, bytesLeft: core.dirtyBytes(peer.id) });
  return 'interrupted';
}

/**
 * Sends a peer that was away the entries `fromSeq`..`toSeq` it lacks that are no longer in
 * memory, read back from the log files in order, at most a window's worth unacknowledged
 * at a time; then the core has it catch up on the rest from the queue.
 */
export async function catchUpFromLog(ports: TransferPorts, peer: TransferPeer, fromSeq: number, toSeq: number): Promise<void> {
  const { core, clock, log } = ports;
  const startedMs = clock.nowMs();
  log.info('peer catching up from the log', { peer: peer.id, fromSeq, toSeq });
  let bytes = 0;
  try {
    // Written to the log files before they are read back (they were sent to the in-sync
    // peers as they were placed).
    await ports.entries.syncTo(toSeq);
    const window = new SendWindow(constants.mirrorWindowBytesMax);
    for await (const entry of ports.entries.readRange(fromSeq, toSeq)) {
      const frame = encodeEntryFrame(entry.header, entry.payload.length === 0 ? [] : [entry.payload]);
      const frameBytes = entry.header.length + entry.payload.length;
      for (;;) {
        if (!peer.live()) return;
        window.acked(core.peerStatus(peer.id).ackedSeq);
        if (window.fits(frameBytes)) break;
        await peer.progress();
      }
      const marker = entry.fields.type === EntryType.CONSISTENCY_POINT;
      peer.send(marker ? 0 : entry.fields.offset, frame);
      window.sent(entry.seq, frameBytes);
      bytes += frameBytes;
    }
    while (peer.live() && core.peerStatus(peer.id).ackedSeq < toSeq) await peer.progress();
    if (!peer.live()) return;
    log.info('peer caught up from the log', { peer: peer.id, toSeq, bytes, ms: clock.nowMs() - startedMs });
    ports.run(core.loggedCaughtUp(peer.id, toSeq));
  } catch (error) {
    if (!peer.live()) return;
    log.warn('catching up from the log failed', { peer: peer.id, error: String(error) });
    ports.run(core.logCatchUpFailed(peer.id, String(error instanceof Error ? error.message : error)));
  }
}

/**
 * The regions of entries `fromSeq`..`toSeq`, which a peer acknowledged but had not made
 * durable when it dropped (it may have crashed and lost them), read back from the log;
 * null when they cannot be read (every region then counts). The caller keeps the log's
 * partitions from being reused meanwhile.
 */
export async function readUnsynced(ports: TransferPorts, id: string, fromSeq: number, toSeq: number): Promise<{ offset: number; lengthBytes: number }[] | null> {
  const extents: { offset: number; lengthBytes: number }[] = [];
  try {
    await ports.entries.syncTo(toSeq);
    for await (const entry of ports.entries.readRange(fromSeq, toSeq)) {
      if (entry.fields.type !== EntryType.CONSISTENCY_POINT) extents.push({ offset: entry.fields.offset, lengthBytes: entry.fields.lengthBytes });
    }
    return extents;
  } catch (error) {
    ports.log.warn('entries a dropped peer had not made durable cannot be read back: every region counts as out of sync for it', {
      peer: id,
      fromSeq,
      toSeq,
      error: String(error),
    });
    return null;
  }
}
