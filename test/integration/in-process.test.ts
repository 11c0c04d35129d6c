// Two whole nodes in one process: BlockmirrorNode with its MirrorEngine, ReplicaTarget,
// PeerServer and Heartbeats, their mirror links and heartbeats on a MemoryNetwork
// (src/io/memory-network.ts) instead of sockets, their volumes in real files. The tests
// cut and reset the link between the two hosts exactly, and stop and start the secondary
// again (in sync and async mode), and check what an operator would: the states the
// primary reports, and after a clean stop that both images hold every byte written,
// before, during and after the outage.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { loadClusterConfig } from '../../src/control/config.js';
import { systemClock } from '../../src/io/clock.js';
import { MemoryNetwork } from '../../src/io/memory-network.js';
import { Logger } from '../../src/lib/log.js';
import { BlockmirrorNode } from '../../src/server/node.js';
import type { ServedVolume } from '../../src/server/served-volume.js';
import { DurableFiles } from '../../src/storage/durable-files.js';
import { volumePaths } from '../../src/storage/volume-files.js';
import { until } from '../helpers/test-data.js';

/** The longest a test waits for a state it expects (a bound, not a pace). */
const WAIT_MS = 20_000;

const KiB = 1024;
const VOLUME_BYTES = 8 * 1024 * KiB;
const dirs: string[] = [];
after(() => {
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

function served(node: BlockmirrorNode): ServedVolume {
  const volume = node.volumes.get('v');
  assert.ok(volume !== undefined);
  return volume;
}

function replication(node: BlockmirrorNode): string {
  return served(node).mirrored?.engine.status()[0]?.replication ?? 'none';
}

/** Two nodes of one cluster in this process on a MemoryNetwork, a volume `v` mirrored from a to b in `mode`. */
function inProcessPair(mode: 'sync' | 'async') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockmirror-in-process-'));
  dirs.push(dir);
  const configPath = path.join(dir, 'cluster.yaml');
  fs.writeFileSync(
    configPath,
    `cluster: in-process
secret: in-process-secret
connections: 2
heartbeat: { intervalMs: 40, timeoutMs: 300, probationMs: 200 }
nodes:
  - { id: a, nbd: "127.0.0.1:0", replication: "10.0.0.1:7000", admin: "127.0.0.1:0", dataDir: ./data-a }
  - { id: b, nbd: "127.0.0.1:0", replication: "10.0.0.2:7000", admin: "127.0.0.1:0", dataDir: ./data-b }
volumes:
  - { name: v, size: 8M, replicas: [a, b], primary: a, mode: ${mode} }
`,
  );
  const config = loadClusterConfig(configPath);
  const network = new MemoryNetwork();
  const lines: string[] = [];
  const log = new Logger({ write: (line) => lines.push(line) }, 'info');
  const ports = { streams: network.streams, datagrams: network.datagrams, clock: systemClock };
  /** A node as the process would start it: its own files object, the shared network. */
  const node = (id: string): BlockmirrorNode => new BlockmirrorNode(config, id, log.child({ node: id }), new DurableFiles(), ports);
  const expected = Buffer.alloc(VOLUME_BYTES);
  let round = 0;
  return {
    network,
    node,
    expected,
    get rounds(): number {
      return round;
    },
    /** How many of `node`'s log lines say `msg` (with `detail` in their reason). */
    logged: (id: string, msg: string, detail = ''): number =>
      lines.filter((line) => {
        const record = JSON.parse(line) as { msg: string; node: string; reason?: string };
        return record.node === id && record.msg === msg && (record.reason ?? '').includes(detail);
      }).length,
    /** Writes 32 KiB blocks across the volume through the primary's client side, each stamped with the round, and remembers them. */
    writeRound: async (primary: BlockmirrorNode, blocks: number): Promise<void> => {
      round += 1;
      const volume = served(primary).mirrored;
      assert.ok(volume !== null, 'a is the mirrored primary');
      const writes: Promise<void>[] = [];
      for (let i = 0; i < blocks; i += 1) {
        const offset = ((i * 37 + round * 11) % (VOLUME_BYTES / (32 * KiB))) * 32 * KiB;
        const block = Buffer.alloc(32 * KiB, (round * 16 + i) & 0xff);
        block.write(`round ${round} block ${i}`);
        block.copy(expected, offset);
        writes.push(volume.write([block], offset, false));
      }
      await Promise.all(writes);
      await volume.flush();
    },
    /** After a clean stop: both images hold exactly the bytes written. */
    checkImages: (): void => {
      for (const id of ['a', 'b']) {
        const image = fs.readFileSync(volumePaths(path.join(dir, `data-${id}`), 'v').image);
        assert.equal(image.length, VOLUME_BYTES);
        assert.ok(image.equals(expected), `node ${id}'s image holds every write (${round} rounds)`);
      }
    },
  };
}

test('two nodes in one process mirror every write through a cut and a reset of their link', async () => {
  const pair = inProcessPair('sync');
  const { network, logged } = pair;
  const a = pair.node('a');
  const b = pair.node('b');
  try {
    await b.start();
    await a.start();
    await until('a streams to b', () => replication(a) === 'streaming', WAIT_MS);
    await pair.writeRound(a, 64);
    assert.equal(replication(a), 'streaming');

    // A cut link: the heartbeats call b down, a goes on alone, and catches b up after the heal.
    network.cut('10.0.0.1', '10.0.0.2');
    await until('a notices the cut', () => replication(a) !== 'streaming', WAIT_MS);
    await pair.writeRound(a, 64);
    assert.notEqual(replication(a), 'streaming', 'the writes during the cut completed without b');
    network.heal('10.0.0.1', '10.0.0.2');
    await until('a streams to b again', () => replication(a) === 'streaming', WAIT_MS);
    await pair.writeRound(a, 64);

    // A reset link: the connections break at once, the heartbeats go on, and a reconnects.
    const connected = logged('a', 'peer connected');
    network.reset('10.0.0.1', '10.0.0.2');
    await until('a notices the reset', () => logged('a', 'peer connection lost', 'ECONNRESET') === 1, WAIT_MS);
    await until('a connects again', () => logged('a', 'peer connected') === connected + 1, WAIT_MS);
    await until('a streams to b after the reset', () => replication(a) === 'streaming', WAIT_MS);
    await pair.writeRound(a, 64);
    const peer = served(a).mirrored?.engine.status()[0];
    assert.ok(peer !== undefined && peer.ackedSeq === served(a).volume.log.lastSeq, `b acknowledged everything: ${JSON.stringify(peer)}`);
  } finally {
    await a.stop();
    await b.stop();
  }
  pair.checkImages();
  assert.equal(logged('a', 'peer down: no heartbeat'), 1, 'the cut was seen by the heartbeats, the reset was not');
});

for (const mode of ['sync', 'async'] as const) {
  test(`${mode}: a secondary stopped while the primary writes and started again (a new process on the same files) is brought back up to date`, async () => {
    const pair = inProcessPair(mode);
    const a = pair.node('a');
    let b = pair.node('b');
    try {
      await b.start();
      await a.start();
      await until('a streams to b', () => replication(a) === 'streaming', WAIT_MS);
      await pair.writeRound(a, 64);
      await b.stop();
      await until('a notices b is gone', () => replication(a) !== 'streaming', WAIT_MS);
      await until('the heartbeats call b down', () => pair.logged('a', 'peer down: no heartbeat') === 1, WAIT_MS);
      // 20 MiB while b is away: a keeps them in memory for it, and b catches up on them.
      for (let round = 0; round < 10; round += 1) await pair.writeRound(a, 64);
      b = pair.node('b');
      await b.start();
      await until('a streams to the restarted b', () => replication(a) === 'streaming', WAIT_MS);
      assert.equal(pair.logged('a', 'peer up'), 2, 'the heartbeats took b back (after its probation)');
      assert.equal(pair.logged('a', 'peer catching up'), 1, 'b caught up on what it missed (no resync)');
      assert.equal(pair.logged('a', 'resync started'), 0);
      await pair.writeRound(a, 64);
    } finally {
      await a.stop();
      await b.stop();
    }
    pair.checkImages();
  });
}
