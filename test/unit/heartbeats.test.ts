// Heartbeats (src/server/heartbeats.ts) in one process: two nodes' heartbeats over a
// MemoryNetwork on a ManualClock, so each verdict comes at a time the test knows and a
// cut is exact. It checks what the node acts on: peer up, down after `timeoutMs` of
// silence (not before), up again only after probation, a restart seen through the
// incarnation, and datagrams with another secret dropped and counted, never making a
// silent peer look alive. test/faults/heartbeats.test.ts does the same to real processes.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseClusterConfig, type ClusterConfig } from '../../src/control/config.js';
import { ManualClock } from '../../src/io/clock.js';
import { MemoryNetwork } from '../../src/io/memory-network.js';
import { Logger } from '../../src/lib/log.js';
import { Heartbeats, type HeartbeatListener } from '../../src/server/heartbeats.js';

const INTERVAL_MS = 100;
const TIMEOUT_MS = 500;
const PROBATION_MS = 1000;

function cluster(secret = 'heartbeat-secret'): ClusterConfig {
  return parseClusterConfig(
    `cluster: hb
secret: ${secret}
heartbeat: { intervalMs: ${INTERVAL_MS}, timeoutMs: ${TIMEOUT_MS}, probationMs: ${PROBATION_MS} }
nodes:
  - { id: a, nbd: "127.0.0.1:0", replication: "10.0.0.1:7000", admin: "127.0.0.1:0", dataDir: ./a }
  - { id: b, nbd: "127.0.0.1:0", replication: "10.0.0.2:7000", admin: "127.0.0.1:0", dataDir: ./b }
volumes:
  - { name: v, size: 1M, replicas: [a, b], primary: a, mode: sync }
`,
    { baseDir: '/nonexistent' },
  );
}

/** The verdicts one node reached, with the clock's time of each. */
function recorder(clock: ManualClock): HeartbeatListener & { events: string[] } {
  const events: string[] = [];
  return {
    events,
    peerUp: (peer) => events.push(`${clock.nowMs()} up ${peer}`),
    peerDown: (peer) => events.push(`${clock.nowMs()} down ${peer}`),
    peerRestarted: (peer) => events.push(`${clock.nowMs()} restarted ${peer}`),
    peerHeard: () => undefined,
  };
}

const quiet = new Logger({ write: () => undefined }, 'error');

async function start(config: ClusterConfig, id: string, incarnation: number, network: MemoryNetwork, clock: ManualClock, listener: HeartbeatListener): Promise<Heartbeats> {
  const local = config.nodes.find((node) => node.id === id);
  assert.ok(local !== undefined);
  const counters = { heartbeatsSent: 0, heartbeatsReceived: 0, heartbeatsDropped: 0 };
  const heartbeats = new Heartbeats(config, local, incarnation, () => [], listener, quiet, counters, { datagrams: network.datagrams, clock });
  await heartbeats.start(local.replication.port);
  return heartbeats;
}

/** Moves the clock on by `ms` in steps, letting the network deliver between steps. */
async function pass(clock: ManualClock, ms: number): Promise<void> {
  for (let done = 0; done < ms; done += 10) {
    clock.advance(10);
    for (let turn = 0; turn < 3; turn += 1) await new Promise((resolve) => setImmediate(resolve));
  }
}

test('heartbeats: up, down after the timeout of silence, up again after probation, restart by incarnation', async () => {
  const network = new MemoryNetwork();
  const clock = new ManualClock(0);
  const config = cluster();
  const atA = recorder(clock);
  const a = await start(config, 'a', 1000, network, clock, atA);
  let b = await start(config, 'b', 2000, network, clock, recorder(clock));
  try {
    await pass(clock, 200);
    assert.deepEqual(atA.events.map((event) => event.split(' ').slice(1).join(' ')), ['up b']);
    assert.equal(a.mayConnect('b'), true);

    network.cut('10.0.0.1', '10.0.0.2');
    const cutAtMs = clock.nowMs();
    await pass(clock, TIMEOUT_MS - 2 * INTERVAL_MS);
    assert.equal(atA.events.length, 1, 'not down before the timeout');
    await pass(clock, 3 * INTERVAL_MS);
    const down = atA.events[1];
    assert.ok(down !== undefined && down.endsWith('down b'), `down: ${atA.events.join(', ')}`);
    const downAtMs = Number(down.split(' ')[0]);
    assert.ok(downAtMs - cutAtMs >= TIMEOUT_MS - INTERVAL_MS && downAtMs - cutAtMs <= TIMEOUT_MS + INTERVAL_MS, `down ${downAtMs - cutAtMs} ms after the cut`);
    assert.equal(a.mayConnect('b'), false);
    assert.ok(network.datagramsLost > 0);

    network.heal('10.0.0.1', '10.0.0.2');
    const healedAtMs = clock.nowMs();
    await pass(clock, PROBATION_MS - 2 * INTERVAL_MS);
    assert.equal(a.mayConnect('b'), false, 'on probation');
    await pass(clock, 4 * INTERVAL_MS);
    const up = atA.events[2];
    assert.ok(up !== undefined && up.endsWith('up b'), `up again: ${atA.events.join(', ')}`);
    assert.ok(Number(up.split(' ')[0]) - healedAtMs >= PROBATION_MS, 'after the probation');
    assert.equal(a.mayConnect('b'), true);

    // b restarts (a later incarnation) before a could notice any silence.
    b.stop();
    b = await start(config, 'b', 3000, network, clock, recorder(clock));
    await pass(clock, 3 * INTERVAL_MS);
    assert.ok(atA.events.slice(3).some((event) => event.endsWith('restarted b')), `restart: ${atA.events.join(', ')}`);
    assert.deepEqual(
      a.status().map(({ peer, incarnation }) => ({ peer, incarnation })),
      [{ peer: 'b', incarnation: 3000 }],
    );
  } finally {
    a.stop();
    b.stop();
  }
});

test('heartbeats: datagrams made with another secret are dropped and counted, and never keep a peer up', async () => {
  const network = new MemoryNetwork();
  const clock = new ManualClock(0);
  const atA = recorder(clock);
  const a = await start(cluster(), 'a', 1000, network, clock, atA);
  const impostor = await start(cluster('some-other-secret'), 'b', 2000, network, clock, recorder(clock));
  try {
    await pass(clock, TIMEOUT_MS * 3);
    // Exactly as a silent peer: down once the timeout has passed since the start, never up.
    assert.equal(atA.events.length, 1, atA.events.join(', '));
    assert.ok(atA.events[0]?.endsWith('down b'));
    assert.equal(a.status()[0]?.state, 'down');
    assert.equal(a.mayConnect('b'), false);
    assert.equal(a.counters.heartbeatsReceived, 0);
    assert.ok(a.counters.heartbeatsDropped >= (TIMEOUT_MS * 3) / INTERVAL_MS - 1, `dropped ${a.counters.heartbeatsDropped}`);
  } finally {
    a.stop();
    impostor.stop();
  }
});
