// Heartbeats (src/server/heartbeats.ts) in one process: two nodes' heartbeats over a
// MemoryNetwork on a ManualClock, so each verdict comes at a time the test knows and a
// cut is exact. It checks what the node acts on: peer up, down after `timeoutMs` of
// silence (not before), up again only after probation, a restart seen through the
// incarnation, and datagrams with another secret dropped and counted, never making a
// silent peer look alive. test/faults/heartbeats.test.ts does the same to real processes.
// For quorum it checks who watches whom (witnesses and the members of a `quorum: majority`
// volume), and that each node's memberViews shows what the other's heartbeats said: the
// peers it hears, its epoch, role and synced set of the volume (null for a volume it did
// not name; an empty set is not null), and how long ago that was.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseClusterConfig, type ClusterConfig } from '../../src/control/config.js';
import { ManualClock } from '../../src/io/clock.js';
import { MemoryNetwork } from '../../src/io/memory-network.js';
import { Logger } from '../../src/lib/log.js';
import { Heartbeats, watchedPeers, type HeartbeatListener, type VolumeView } from '../../src/server/heartbeats.js';

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

function create(config: ClusterConfig, id: string, incarnation: number, network: MemoryNetwork, clock: ManualClock, listener: HeartbeatListener, volumes: () => VolumeView[] = () => []): Heartbeats {
  const local = config.nodes.find((node) => node.id === id);
  assert.ok(local !== undefined);
  const counters = { heartbeatsSent: 0, heartbeatsReceived: 0, heartbeatsDropped: 0 };
  return new Heartbeats(config, local, incarnation, volumes, listener, quiet, counters, { datagrams: network.datagrams, clock });
}

async function start(config: ClusterConfig, id: string, incarnation: number, network: MemoryNetwork, clock: ManualClock, listener: HeartbeatListener, volumes: () => VolumeView[] = () => []): Promise<Heartbeats> {
  const heartbeats = create(config, id, incarnation, network, clock, listener, volumes);
  const local = config.nodes.find((node) => node.id === id);
  assert.ok(local !== undefined);
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
    // Nor do they tell the quorum anything.
    assert.deepEqual(a.memberViews('v'), [{ node: 'b', heardAgoMs: null, hears: [], epoch: null, role: null, synced: null, promise: null }]);
    assert.equal(a.hears('b'), false);
    assert.ok(a.counters.heartbeatsDropped >= (TIMEOUT_MS * 3) / INTERVAL_MS - 1, `dropped ${a.counters.heartbeatsDropped}`);
  } finally {
    a.stop();
    impostor.stop();
  }
});

/** Replicas a and b, witness w (each on its own host), and v a `quorum: majority` volume of a and b. */
function quorumCluster(heartbeat = { intervalMs: INTERVAL_MS, timeoutMs: TIMEOUT_MS }): ClusterConfig {
  return parseClusterConfig(
    `cluster: hb
secret: heartbeat-secret
heartbeat: { intervalMs: ${heartbeat.intervalMs}, timeoutMs: ${heartbeat.timeoutMs}, probationMs: ${PROBATION_MS} }
nodes:
  - { id: a, nbd: "127.0.0.1:0", replication: "10.0.0.1:7000", admin: "127.0.0.1:0", dataDir: ./a }
  - { id: b, nbd: "127.0.0.1:0", replication: "10.0.0.2:7000", admin: "127.0.0.1:0", dataDir: ./b }
  - { id: w, nbd: "127.0.0.1:0", replication: "10.0.0.3:7000", admin: "127.0.0.1:0", dataDir: ./w, witness: true }
volumes:
  - { name: v, size: 1M, replicas: [a, b], primary: a, mode: sync, quorum: majority }
`,
    { baseDir: '/nonexistent' },
  );
}

test('watchedPeers: the members of a quorum volume watch each other, witnesses included; without quorum witnesses are not watched', () => {
  const node = (id: string, host: number, witness = false): string =>
    `  - { id: ${id}, nbd: "127.0.0.1:0", replication: "10.0.0.${host}:7000", admin: "127.0.0.1:0", dataDir: ./${id}, witness: ${witness} }\n`;
  const config = (volumes: string): ClusterConfig => parseClusterConfig(
    `cluster: hb\nsecret: heartbeat-secret\nnodes:\n${node('a', 1)}${node('b', 2)}${node('c', 3)}${node('w', 4, true)}${node('x', 5, true)}volumes:\n${volumes}`,
    { baseDir: '/nonexistent' },
  );
  const ids = (cluster: ClusterConfig, local: string): string[] => watchedPeers(cluster, local).map((peer) => peer.id);

  const mixed = config(
    '  - { name: q, size: 1M, replicas: [b, a], primary: a, quorum: majority }\n' +
      '  - { name: p, size: 1M, replicas: [b, c], primary: b, quorum: off }\n' +
      '  - { name: l, size: 1M, replicas: [c], primary: c, mode: local }\n',
  );
  assert.deepEqual(ids(mixed, 'a'), ['b', 'w', 'x']);
  assert.deepEqual(ids(mixed, 'b'), ['a', 'c', 'w', 'x']);
  // c shares only the quorum-less p (and its local l): the witnesses are not its business.
  assert.deepEqual(ids(mixed, 'c'), ['b']);
  // A witness watches the replicas of the quorum volume (and the other witness, a member too).
  assert.deepEqual(ids(mixed, 'w'), ['a', 'b', 'x']);
  assert.deepEqual(ids(mixed, 'x'), ['a', 'b', 'w']);

  const noQuorum = config('  - { name: p, size: 1M, replicas: [a, b], primary: a }\n  - { name: r, size: 1M, replicas: [b, c], primary: b, mode: async }\n');
  assert.deepEqual(ids(noQuorum, 'a'), ['b']);
  assert.deepEqual(ids(noQuorum, 'b'), ['a', 'c']);
  assert.deepEqual(ids(noQuorum, 'w'), []);
  assert.deepEqual(ids(noQuorum, 'x'), []);

  // The config the two-instance test below uses.
  const small = quorumCluster();
  assert.deepEqual(ids(small, 'a'), ['b', 'w']);
  assert.deepEqual(ids(small, 'w'), ['a', 'b']);
});

test('heartbeats: memberViews shows what each member last said it hears, its epoch, role and synced set, and how long ago', async () => {
  const network = new MemoryNetwork();
  const clock = new ManualClock(0);
  const config = quorumCluster();
  let epochAtA = 5;
  let roleAtA: VolumeView['role'] = 'primary';
  let syncedAtA = ['a', 'b'];
  const aSays = (): VolumeView[] => [{ name: 'v', role: roleAtA, disk: 'up-to-date', epoch: epochAtA, lastSeq: 10, synced: syncedAtA, promise: null }];
  // w names v (the set it last heard from a) and a volume u it is secondary of, with another set.
  const wSays = (): VolumeView[] => [
    { name: 'v', role: 'witness', disk: 'diskless', epoch: 4, lastSeq: 0, synced: ['a'], promise: { epoch: 5, to: 'b' } },
    { name: 'u', role: 'secondary', disk: 'outdated', epoch: 9, lastSeq: 3, synced: ['b', 'w'], promise: null },
  ];
  const never = { node: 'b', heardAgoMs: null, hears: [], epoch: null, role: null, synced: null, promise: null };
  const a = await start(config, 'a', 1000, network, clock, recorder(clock), aSays);
  // Nothing heard yet: every view is empty.
  assert.deepEqual(a.memberViews('v'), [never, { ...never, node: 'w' }]);
  assert.equal(a.hears('w'), false);
  const w = await start(config, 'w', 2000, network, clock, recorder(clock), wSays);
  try {
    await pass(clock, 3 * INTERVAL_MS);
    const viewOf = (at: Heartbeats, node: string, volume = 'v') => {
      const view = at.memberViews(volume).find((candidate) => candidate.node === node);
      assert.ok(view !== undefined, `no view of ${node}`);
      return view;
    };
    // Each one's view of the other: the peers the other hears (b is never heard, so it is
    // in no one's hears) and the other's epoch, role and synced set of v; b, never started,
    // stays empty.
    const wAtA = viewOf(a, 'w');
    assert.deepEqual({ ...wAtA, heardAgoMs: null }, { node: 'w', heardAgoMs: null, hears: ['a'], epoch: 4, role: 'witness', synced: ['a'], promise: { epoch: 5, to: 'b' } });
    assert.ok(wAtA.heardAgoMs !== null && wAtA.heardAgoMs >= 0 && wAtA.heardAgoMs <= INTERVAL_MS, `w heard ${wAtA.heardAgoMs} ms ago`);
    const aAtW = viewOf(w, 'a');
    assert.deepEqual({ ...aAtW, heardAgoMs: null }, { node: 'a', heardAgoMs: null, hears: ['w'], epoch: 5, role: 'primary', synced: ['a', 'b'], promise: null });
    assert.ok(aAtW.heardAgoMs !== null && aAtW.heardAgoMs <= INTERVAL_MS);
    assert.deepEqual(viewOf(a, 'b'), never);
    assert.deepEqual(viewOf(w, 'b'), never);
    assert.deepEqual(a.memberViews('v').map((view) => view.node), ['b', 'w']);
    // Of another volume it named: that volume's own epoch, role and set.
    assert.deepEqual({ ...viewOf(a, 'w', 'u'), heardAgoMs: null }, { node: 'w', heardAgoMs: null, hears: ['a'], epoch: 9, role: 'secondary', synced: ['b', 'w'], promise: null });
    // Of a volume the peer named none of: its hears, but no epoch, role or set.
    assert.deepEqual({ ...viewOf(a, 'w', 'other'), heardAgoMs: null }, { node: 'w', heardAgoMs: null, hears: ['a'], epoch: null, role: null, synced: null, promise: null });
    assert.deepEqual({ ...viewOf(w, 'a', 'u'), heardAgoMs: null }, { node: 'a', heardAgoMs: null, hears: ['w'], epoch: null, role: null, synced: null, promise: null });
    assert.equal(a.hears('w'), true);
    assert.equal(w.hears('a'), true);
    assert.equal(a.hears('b'), false);

    // A new epoch and a smaller set reach the other side with the next heartbeats.
    epochAtA = 6;
    syncedAtA = ['a'];
    await pass(clock, 2 * INTERVAL_MS);
    assert.equal(viewOf(w, 'a').epoch, 6);
    assert.deepEqual(viewOf(w, 'a').synced, ['a']);
    // An empty set named is an empty set, not null; a new role comes the same way.
    syncedAtA = [];
    roleAtA = 'secondary';
    await pass(clock, 2 * INTERVAL_MS);
    assert.deepEqual({ ...viewOf(w, 'a'), heardAgoMs: null }, { node: 'a', heardAgoMs: null, hears: ['w'], epoch: 6, role: 'secondary', synced: [], promise: null });
    roleAtA = 'primary';
    syncedAtA = ['a'];
    await pass(clock, 2 * INTERVAL_MS);
    assert.equal(viewOf(w, 'a').role, 'primary');

    // Cut: nothing more arrives, so heardAgoMs grows with the clock, exactly, and the last
    // word (hears, epoch, role, synced set) stays until the views are fresh again, though
    // the sender now says otherwise.
    network.cut('10.0.0.1', '10.0.0.3');
    await pass(clock, INTERVAL_MS);
    const before = { atA: viewOf(a, 'w').heardAgoMs, atW: viewOf(w, 'a').heardAgoMs };
    assert.ok(before.atA !== null && before.atW !== null);
    syncedAtA = ['a', 'b'];
    await pass(clock, 2 * INTERVAL_MS);
    assert.deepEqual(viewOf(a, 'w'), { node: 'w', heardAgoMs: before.atA + 2 * INTERVAL_MS, hears: ['a'], epoch: 4, role: 'witness', synced: ['a'], promise: { epoch: 5, to: 'b' } });
    assert.deepEqual(viewOf(w, 'a'), { node: 'a', heardAgoMs: before.atW + 2 * INTERVAL_MS, hears: ['w'], epoch: 6, role: 'primary', synced: ['a'], promise: null });
    assert.ok(before.atA + 2 * INTERVAL_MS > a.quorumFreshMs, 'stale for the quorum well before the timeout');
    assert.equal(a.hears('w'), true, 'not down before the timeout');
    await pass(clock, TIMEOUT_MS);
    assert.equal(a.hears('w'), false);
    assert.equal(w.hears('a'), false);
    assert.ok((viewOf(a, 'w').heardAgoMs ?? 0) > TIMEOUT_MS);

    // Healed: the heartbeats are fresh at once, but each side is on probation at the
    // other, so neither says it hears the other until the probation has passed.
    network.heal('10.0.0.1', '10.0.0.3');
    await pass(clock, PROBATION_MS - 2 * INTERVAL_MS);
    const onProbation = viewOf(a, 'w');
    assert.ok(onProbation.heardAgoMs !== null && onProbation.heardAgoMs <= INTERVAL_MS, `heard ${onProbation.heardAgoMs} ms ago`);
    assert.deepEqual(onProbation.hears, []);
    assert.deepEqual(viewOf(w, 'a').hears, []);
    assert.equal(a.hears('w'), false);
    await pass(clock, 4 * INTERVAL_MS);
    assert.equal(a.hears('w'), true);
    assert.deepEqual(viewOf(a, 'w').hears, ['a']);
    assert.deepEqual(viewOf(w, 'a').hears, ['w']);

    // One side stops: the other's view of it only ages.
    w.stop();
    await pass(clock, INTERVAL_MS);
    const stoppedAgo = viewOf(a, 'w').heardAgoMs;
    assert.ok(stoppedAgo !== null);
    await pass(clock, 3 * INTERVAL_MS);
    assert.equal(viewOf(a, 'w').heardAgoMs, stoppedAgo + 3 * INTERVAL_MS);
  } finally {
    a.stop();
    w.stop();
  }
});

test('heartbeats: quorumFreshMs is the smaller of two intervals and half the timeout', () => {
  const network = new MemoryNetwork();
  const clock = new ManualClock(0);
  const fresh = (intervalMs: number, timeoutMs: number): number =>
    create(quorumCluster({ intervalMs, timeoutMs }), 'a', 1, network, clock, recorder(clock)).quorumFreshMs;
  assert.equal(fresh(INTERVAL_MS, TIMEOUT_MS), 200);
  assert.equal(fresh(100, 300), 150);
  assert.equal(fresh(100, 301), 150);
  assert.equal(fresh(100, 400), 200);
  assert.equal(fresh(250, 2000), 500);
  assert.equal(fresh(1000, 1500), 750);
});
