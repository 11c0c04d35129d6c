// `blockmirror attach VOLUME --node N` (docs/operations.md, "A failed disk"): a replaced,
// empty disk under a copy whose own disk failed while it was the primary, and which serves
// the volume from its peers since. The volume's files are made anew on it (attachStorage)
// and its image is filled from an up-to-date peer while clients go on
// (MirroredVolume.attach). No role changes: the copy was and stays the primary.

import type { ClusterConfig, NodeConfig } from '../control/config.js';
import { BlockmirrorError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import type { IoActivity } from '../io/file-io.js';
import type { DurableFiles } from '../storage/durable-files.js';
import { attached, attachStorage } from '../storage/volume-store.js';
import type { ServedVolume } from './served-volume.js';
import type { AttachResult } from './status.js';

/** What an attach needs of the node. */
export interface AttachParts {
  cluster: ClusterConfig;
  node: NodeConfig;
  files: DurableFiles;
  activity: IoActivity;
  log: Logger;
}

/** Answers once the new disk is in (the fill goes on; `status` shows it), or refuses with why. */
export async function attachDisk(name: string, served: ServedVolume | undefined, parts: AttachParts): Promise<AttachResult> {
  const here = parts.node.id;
  if (served === undefined) throw new BlockmirrorError('ERR_UNKNOWN_VOLUME', `node ${here} holds no volume "${name}"`);
  const { volume, config } = served;
  const mirrored = served.mirrored;
  if (mirrored === null || !mirrored.diskless || served.changing !== null) {
    const why =
      served.role !== 'primary'
        ? 'it is not the primary (a secondary whose disk failed is brought back by restarting the node on the new disk, which is then resynced in full)'
        : served.changing !== null
          ? `its ${served.changing} is under way`
          : `its disk has not failed${mirrored?.filling === true ? ' (a disk attached before is still being filled)' : ''}`;
    throw new BlockmirrorError('ERR_ROLE_REFUSED', `nothing to attach for ${name} on node ${here}: ${why}`);
  }
  const log = parts.log.child({ volume: name });
  let fromSeq = 0;
  const { filled } = await mirrored.attach(
    (lastSeq) => {
      fromSeq = lastSeq;
      return attachStorage(parts.files, served.paths, served.identity, volume.replica.history, served.logOptions, lastSeq, parts.activity);
    },
    parts.cluster.resync.regionBytes,
    () => attached(parts.files, served.paths),
  );
  log.warn('a replaced disk is attached: its image is filled from the peers while clients go on', { fromSeq, bytes: config.sizeBytes });
  const startedMs = Date.now();
  filled.then(
    () => log.warn('the attached disk holds the volume: it is up to date again', { bytes: config.sizeBytes, ms: Date.now() - startedMs }),
    (error: unknown) => log.error('filling the attached disk failed: reads of what it lacks still go to the peers', { error: String(error) }),
  );
  return { volume: name, node: here, totalBytes: config.sizeBytes, fromSeq };
}
