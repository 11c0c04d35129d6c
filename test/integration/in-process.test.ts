// Two whole nodes in one process: BlockmirrorNode with its MirrorEngine, ReplicaTarget,
// PeerServer and Heartbeats, their mirror links and heartbeats on a MemoryNetwork
// (src/io/memory-network.ts) instead of sockets, their volumes in real files. The test
// cuts and resets the link between the two hosts exactly, and checks what an operator
// would: the states the primary reports, and after a clean stop that both images hold
// every byte written, before, during and after the outage.

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

const KiB = 1024;
const VOLUME_BYTES = 8 * 1024 * KiB;
const dirs: string[] = [];
after(() => {
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** Waits for `check` to hold, polling, for at most `limitMs`; says what it waited for when it gives up. */
async function until(what: string, check: () => boolean, limitMs = 20_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function served(node: BlockmirrorNode): ServedVolume {
  const volume = node.volumes.get('v');
  assert.ok(volume !== undefined);
  return volume;
}

function replication(node: BlockmirrorNode): string {
  return served(node).mirrored?.engine.status()[0]?.replication ?? 'none';
}

test('two nodes in one process mirror every write through a cut and a reset of their link', async () => {
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
  - { name: v, size: 8M, replicas: [a, b], primary: a, mode: sync }
`,
  );
  const config = loadClusterConfig(configPath);
  const network = new MemoryNetwork();
  const lines: string[] = [];
  const log = new Logger({ write: (line) => lines.push(line) }, 'info');
  const ports = { streams: network.streams, datagrams: network.datagrams, clock: systemClock };
  const a = new BlockmirrorNode(config, 'a', log.child({ node: 'a' }), new DurableFiles(), ports);
  const b = new BlockmirrorNode(config, 'b', log.child({ node: 'b' }), new DurableFiles(), ports);
  const logged = (node: string, msg: string, detail = ''): number =>
    lines.filter((line) => {
      const record = JSON.parse(line) as { msg: string; node: string; reason?: string };
      return record.node === node && record.msg === msg && (record.reason ?? '').includes(detail);
    }).length;
  const expected = Buffer.alloc(VOLUME_BYTES);
  let round = 0;
  /** Writes 32 KiB blocks across the volume, each stamped with the round, and remembers them. */
  const writeRound = async (blocks: number): Promise<void> => {
    round += 1;
    const volume = served(a).mirrored;
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
  };
  try {
    await b.start();
    await a.start();
    await until('a streams to b', () => replication(a) === 'streaming');
    await writeRound(64);
    assert.equal(replication(a), 'streaming');

    // A cut link: the heartbeats call b down, a goes on alone, and catches b up after the heal.
    network.cut('10.0.0.1', '10.0.0.2');
    await until('a notices the cut', () => replication(a) !== 'streaming');
    await writeRound(64);
    assert.notEqual(replication(a), 'streaming', 'the writes during the cut completed without b');
    network.heal('10.0.0.1', '10.0.0.2');
    await until('a streams to b again', () => replication(a) === 'streaming');
    await writeRound(64);

    // A reset link: the connections break at once, the heartbeats go on, and a reconnects.
    const connected = logged('a', 'peer connected');
    network.reset('10.0.0.1', '10.0.0.2');
    await until('a notices the reset', () => logged('a', 'peer connection lost', 'ECONNRESET') === 1);
    await until('a connects again', () => logged('a', 'peer connected') === connected + 1);
    await until('a streams to b after the reset', () => replication(a) === 'streaming');
    await writeRound(64);
    const peer = served(a).mirrored?.engine.status()[0];
    assert.ok(peer !== undefined && peer.ackedSeq === served(a).volume.log.lastSeq, `b acknowledged everything: ${JSON.stringify(peer)}`);
  } finally {
    await a.stop();
    await b.stop();
  }
  for (const id of ['a', 'b']) {
    const image = fs.readFileSync(volumePaths(path.join(dir, `data-${id}`), 'v').image);
    assert.equal(image.length, VOLUME_BYTES);
    assert.ok(image.equals(expected), `node ${id}'s image holds every write (${round} rounds)`);
  }
  assert.equal(logged('a', 'peer down: no heartbeat'), 1, 'the cut was seen by the heartbeats, the reset was not');
});
