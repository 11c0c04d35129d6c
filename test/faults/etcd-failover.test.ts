// Automatic failover through etcd with real processes (docs/operations.md, "Automatic
// failover through etcd"): each test starts its own etcd on loopback ports and two nodes
// holding vol0 in sync mode, a its first primary, coordinated through that etcd with a
// lease of two seconds (five for the three-member etcd). Nobody types `promote`.
//
//   - a is SIGKILLed while a client writes through it: its lease expires in etcd, b claims
//     the next epoch and promotes itself; every write a replied to reads back through b,
//     b takes writes, the `promoted` hook ran on b with the volume, node, epoch and role in
//     its environment, and a, started again, steps down (its `demoted` hook) and follows b.
//   - etcd is stopped under a healthy primary: a cannot renew its lease, so it fences
//     itself (steps down; a write's reply would fail before the lease could have expired)
//     and refuses clients; once etcd is back, b, in sync, is promoted and a follows it.
//     The same with a `quorum: majority` volume and a witness: its primary fences itself
//     too, though it has its majority (the decision docs/operations.md explains), and b's
//     promotion after the claim still stands for the epoch with the witness's promise.
//   - etcd stopped, then b stopped too: once etcd is back, a, which fenced itself and was
//     the last to claim the volume, takes it back in a new epoch, with every replied write.
//   - `promote` is a claim: refused while a serves the volume, and with --force; `demote`
//     of a is a switchover (b claims the volume within a read or two), and of b one back
//     (a, primary again in the same process, takes writes); a key that is not
//     blockmirror's is left alone and reported in status.
//   - a three-member etcd loses its leader: the members elect another, the leases live
//     on, and no volume fails over; writes through a go on without an error.
// Every wait is for a state, never for a time.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { Etcd3 } from 'etcd3';
import { EtcdProcess } from '../helpers/etcd-process.js';
import { cliPath, makeTempDir, run, startClusterNode, testResources, vol0, writeClusterConfig, type NodeStatusJson, type TestNode } from '../helpers/node-process.js';
import { checkImage, dumpVolume, seed, waitFor, Writer } from './workload.js';

const fastHeartbeat = { intervalMs: 100, timeoutMs: 600, probationMs: 600 };
const leaseTtlMs = 2000;

// The nodes, etcds, namespaces and directories a test makes go when the file ends, however it ends.
const { nodes: started, dirs, first } = testResources();
const etcds: EtcdProcess[] = [];
first.push(async () => {
  for (const etcd of etcds) await etcd.stop('SIGKILL');
});

async function start(dir: string, config: string, id: string): Promise<TestNode> {
  const node = await startClusterNode(dir, config, id);
  started.push(node);
  return node;
}

/** Whether the node holds vol0 in etcd now (its primary, under a live lease). */
function holding(status: NodeStatusJson): boolean {
  return status.coordination.kind === 'etcd' && status.coordination.volumes['vol0']?.holding === true;
}

const synced = (status: NodeStatusJson): string[] => (status.coordination.kind === 'etcd' ? status.coordination.volumes['vol0']?.synced ?? [] : []);

const upToDate = (status: NodeStatusJson, id: string): boolean => {
  const peer = vol0(status).peers.find((candidate) => candidate.node === id);
  return peer?.replication === 'streaming' && peer.disk === 'up-to-date';
};

/** Two nodes coordinated through etcd at `endpoints`, each hook appending what it was told to hooks-<node>.txt. */
async function pair(prefix: string, endpoints: string[], ttlMs = leaseTtlMs, quorum = false): Promise<{ dir: string; config: string }> {
  const dir = makeTempDir(prefix);
  dirs.push(dir);
  const line = '"$BLOCKMIRROR_EVENT $BLOCKMIRROR_VOLUME $BLOCKMIRROR_NODE $BLOCKMIRROR_EPOCH $BLOCKMIRROR_ROLE"';
  const hook = `echo ${line} >> ${dir}/hooks-$BLOCKMIRROR_NODE.txt`;
  const config = await writeClusterConfig(dir, {
    // With `quorum: majority`, a witness w makes the third member.
    nodes: quorum ? [{ id: 'a' }, { id: 'b' }, { id: 'w', witness: true }] : [{ id: 'a' }, { id: 'b' }],
    volumes: [{ name: 'vol0', size: '64MiB', replicas: ['a', 'b'], primary: 'a', mode: 'sync', ...(quorum ? { quorum: 'majority' as const } : {}) }],
    heartbeat: fastHeartbeat,
    log: { partitionSize: '4MiB', partitions: 3, cpIntervalMs: 200 },
    etcd: { endpoints, leaseTtlMs: ttlMs },
    hooks: { promoted: hook, demoted: hook, timeoutMs: 5000 },
  });
  return { dir, config };
}

function hookLines(dir: string, node: string): string[] {
  const file = path.join(dir, `hooks-${node}.txt`);
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim().split('\n') : [];
}

/** a the primary holding vol0 in etcd, b streaming from it and in sync. */
async function startPair(dir: string, config: string): Promise<{ a: TestNode; b: TestNode }> {
  const [a, b] = [await start(dir, config, 'a'), await start(dir, config, 'b')];
  await a.waitStatus('a holds vol0 in etcd, b streaming and in the synced set', (status) => holding(status) && upToDate(status, 'b') && synced(status).includes('b'), 30_000);
  await b.waitStatus('b in sync', (status) => vol0(status).source?.promotable === true);
  return { a, b };
}

test('SIGKILL of the primary: its lease expires, b promotes itself in the next epoch with every replied write, and a comes back as b\'s secondary', async () => {
  const dir0 = makeTempDir('blockmirror-etcd-');
  dirs.push(dir0);
  const etcd = await EtcdProcess.start(dir0);
  etcds.push(etcd);
  const { dir, config } = await pair('blockmirror-etcd-failover-', [etcd.clientUrl]);
  const pairStarted = await startPair(dir, config);
  const { b } = pairStarted;
  let { a } = pairStarted;

  const writer = new Writer(a.uri('vol0'), 1, 10_000_000, ['--seconds', '60']);
  await waitFor('300 replies', 30_000, () => writer.count('A') >= 300 || !writer.running);
  assert.ok(writer.running, `the writer ended early: ${writer.stderr}`);
  await a.stop('SIGKILL');
  await writer.finish(15_000);
  const history = path.join(dir, 'history-1.txt');
  fs.writeFileSync(history, writer.output);

  // No command: etcd expires a's lease and b claims the volume.
  const promoted = await b.waitStatus('b promoted itself', (status) => vol0(status).role === 'primary' && holding(status), 30_000).catch((error: unknown) => {
    throw new Error(`${String(error)}\nb: ${b.logs.slice(-4000)}`);
  });
  assert.equal(vol0(promoted).epoch, 1);
  assert.equal(promoted.coordination.kind === 'etcd' ? promoted.coordination.volumes['vol0']?.primary : null, 'b');
  await waitFor('the promoted hook on b', 10_000, () => hookLines(dir, 'b').length > 0);
  assert.deepEqual(hookLines(dir, 'b'), ['promoted vol0 b 1 primary']);

  // etcd holds the claim: b in epoch 1 under its lease, and the newest epoch taken is b's.
  const client = new Etcd3({ hosts: etcd.clientUrl });
  try {
    const primary = JSON.parse((await client.get('blockmirror/volumes/vol0/primary').string()) ?? 'null') as { node: string; epoch: number } | null;
    assert.deepEqual([primary?.node, primary?.epoch], ['b', 1]);
    assert.deepEqual(JSON.parse((await client.get('blockmirror/volumes/vol0/epoch').string()) ?? 'null'), { node: 'b', epoch: 1 });
  } finally {
    client.close();
  }

  // Every write a replied to reads back through b.
  const dumped = path.join(dir, 'b-after-failover.img');
  await dumpVolume(b, dumped);
  const report = await checkImage(null, dumped, [history], { acknowledged: 'replied' });
  assert.equal(report.failure_count, 0, `seed ${seed}: replied writes missing after the failover: ${report.failures.join('; ')}`);
  assert.ok(report.written_blocks > 0);

  // b takes writes, and a, started again, finds etcd naming b: it steps down and follows.
  const second = new Writer(b.uri('vol0'), 2, 20_000_000, ['--max-writes', '300']);
  assert.equal((await second.finish(60_000)).code, 0, `writes through b: ${second.stderr}`);
  a = await start(dir, config, 'a');
  await a.waitStatus('a follows b in epoch 1', (status) => vol0(status).role === 'secondary' && vol0(status).epoch === 1 && vol0(status).source?.node === 'b', 30_000).catch((error: unknown) => {
    throw new Error(`${String(error)}\na: ${a.logs.slice(-4000)}`);
  });
  await b.waitStatus('a up to date under b', (status) => upToDate(status, 'a'), 30_000);
  assert.equal(holding(await a.status()), false);
});

for (const quorum of [false, true]) {
test(`etcd stopped under a healthy primary${quorum ? ' of a quorum: majority volume (a witness, too)' : ''}: a fences itself and steps down; once etcd is back, b is promoted and a follows it`, async () => {
  const dir0 = makeTempDir('blockmirror-etcd-');
  dirs.push(dir0);
  let etcd = await EtcdProcess.start(dir0);
  etcds.push(etcd);
  const { dir, config } = await pair('blockmirror-etcd-outage-', [etcd.clientUrl], leaseTtlMs, quorum);
  // The witness takes no part in etcd (it serves no volume), but counts toward the quorum.
  if (quorum) await start(dir, config, 'w');
  const { a, b } = await startPair(dir, config);
  if (quorum) await a.waitStatus('a has its quorum', (status) => vol0(status).quorum?.ok === true);
  const writer = new Writer(a.uri('vol0'), 1, 10_000_000, ['--seconds', '60']);
  await waitFor('100 replies', 30_000, () => writer.count('A') >= 100 || !writer.running);

  await etcd.stop();
  // a cannot renew: it stops acknowledging before the lease could expire, then steps down.
  const fenced = await a.waitStatus('a stepped down', (status) => vol0(status).role === 'secondary', 4 * leaseTtlMs + 10_000);
  assert.equal(holding(fenced), false);
  assert.ok(fenced.coordination.kind === 'etcd' && fenced.coordination.error !== null, 'status names the trouble with etcd');
  assert.ok(fenced.coordination.kind === 'etcd' && fenced.coordination.counters.fenced >= 1);
  await writer.finish(20_000);
  const history = path.join(dir, 'history-1.txt');
  fs.writeFileSync(history, writer.output);
  assert.ok(a.records().some((record) => record['msg'] === 'stepping down as the primary' && String(record['reason']).includes('lease in etcd')));
  // b, without etcd, stays a secondary: nobody may take the volume without a claim.
  assert.equal(vol0(await b.status()).role, 'secondary');

  etcd = await etcd.restart();
  etcds.push(etcd);
  await b.waitStatus('b promoted once etcd is back', (status) => vol0(status).role === 'primary' && holding(status), 30_000);
  await a.waitStatus('a follows b', (status) => vol0(status).role === 'secondary' && vol0(status).source?.node === 'b', 30_000);
  await waitFor('the demoted hook on a', 10_000, () => hookLines(dir, 'a').length > 0);
  assert.deepEqual(hookLines(dir, 'a'), ['promoted vol0 a 0 primary', 'demoted vol0 a 0 secondary'], 'a started as the primary, then stepped down');

  const dumped = path.join(dir, 'b-after-outage.img');
  await dumpVolume(b, dumped);
  const report = await checkImage(null, dumped, [history], { acknowledged: 'replied' });
  assert.equal(report.failure_count, 0, `seed ${seed}: replied writes missing: ${report.failures.join('; ')}`);
});
}

test('etcd stopped, then the secondary stopped too: once etcd is back, a, the primary that fenced itself, takes its volume back', async () => {
  const dir0 = makeTempDir('blockmirror-etcd-');
  dirs.push(dir0);
  let etcd = await EtcdProcess.start(dir0);
  etcds.push(etcd);
  const { dir, config } = await pair('blockmirror-etcd-resume-', [etcd.clientUrl]);
  const { a, b } = await startPair(dir, config);
  const writer = new Writer(a.uri('vol0'), 1, 10_000_000, ['--seconds', '60']);
  await waitFor('100 replies', 30_000, () => writer.count('A') >= 100 || !writer.running);
  await etcd.stop();
  await a.waitStatus('a stepped down', (status) => vol0(status).role === 'secondary', 4 * leaseTtlMs + 10_000);
  await writer.finish(20_000);
  const history = path.join(dir, 'history-1.txt');
  fs.writeFileSync(history, writer.output);
  await b.stop();

  // Only a is left; it was the last to claim the volume, so it holds every acknowledged write.
  etcd = await etcd.restart();
  etcds.push(etcd);
  const back = await a.waitStatus('a took the volume back', (status) => vol0(status).role === 'primary' && holding(status), 30_000).catch((error: unknown) => {
    throw new Error(`${String(error)}\na: ${a.logs.slice(-3000)}`);
  });
  assert.equal(vol0(back).epoch, 1);
  assert.ok(a.records().some((record) => record['msg'] === 'took the volume back as the primary'));
  const dumped = path.join(dir, 'a-after-outage.img');
  await dumpVolume(a, dumped);
  const report = await checkImage(null, dumped, [history], { acknowledged: 'replied' });
  assert.equal(report.failure_count, 0, `seed ${seed}: replied writes missing: ${report.failures.join('; ')}`);
  const second = new Writer(a.uri('vol0'), 2, 20_000_000, ['--max-writes', '200']);
  assert.equal((await second.finish(60_000)).code, 0, `writes through a: ${second.stderr}`);

  // b comes back and follows a in its new epoch.
  const b2 = await start(dir, config, 'b');
  await b2.waitStatus('b follows a in epoch 1', (status) => vol0(status).role === 'secondary' && vol0(status).epoch === 1 && vol0(status).source?.node === 'a', 30_000);
});

/** `blockmirror <args>` asking `node`'s admin API. */
function cli(node: TestNode, ...args: string[]): ReturnType<typeof run> {
  return run(process.execPath, [cliPath, ...args, '--admin', `http://127.0.0.1:${node.adminPort}`], { timeoutMs: 60_000 });
}

test('promote is a claim in etcd: refused while a serves the volume and when forced; demote a and b takes over; a key that is not blockmirror\'s is reported', async () => {
  const dir0 = makeTempDir('blockmirror-etcd-');
  dirs.push(dir0);
  const etcd = await EtcdProcess.start(dir0);
  etcds.push(etcd);
  const { dir, config } = await pair('blockmirror-etcd-commands-', [etcd.clientUrl]);
  const { a, b } = await startPair(dir, config);

  // `status` says what a holds in etcd.
  const shown = await cli(a, 'status');
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, /node a: etcd lease good for [0-9.]+ s; vol0: held here, epoch 0, synced a,b/);

  const held = await cli(b, 'promote', 'vol0', '--node', 'b');
  assert.notEqual(held.code, 0);
  assert.match(held.stderr, /ERR_ROLE_REFUSED.*demote it first \(blockmirror demote vol0 --node a\)/);
  const forced = await cli(b, 'promote', 'vol0', '--node', 'b', '--force');
  assert.notEqual(forced.code, 0);
  assert.match(forced.stderr, /chosen through etcd/);
  assert.equal(vol0(await b.status()).role, 'secondary', 'the refusals changed nothing');

  // A switchover: a steps down and gives its key up; b, in sync, claims the volume.
  const demoted = await cli(a, 'demote', 'vol0', '--node', 'a');
  assert.equal(demoted.code, 0, `demote: ${demoted.stdout}${demoted.stderr}`);
  await b.waitStatus('b promoted itself', (status) => vol0(status).role === 'primary' && holding(status) && vol0(status).epoch === 1, 30_000);
  await a.waitStatus('a follows b', (status) => vol0(status).role === 'secondary' && vol0(status).source?.node === 'b', 30_000);
  const second = new Writer(b.uri('vol0'), 1, 10_000_000, ['--max-writes', '200']);
  assert.equal((await second.finish(60_000)).code, 0, `writes through b: ${second.stderr}`);

  // And back: a, which stepped down in this process, takes writes again once it claims the volume.
  await a.waitStatus('a up to date under b', (status) => vol0(status).source?.promotable === true, 30_000);
  await b.waitStatus('a in the synced set', (status) => synced(status).includes('a'), 30_000);
  const back = await cli(b, 'demote', 'vol0', '--node', 'b');
  assert.equal(back.code, 0, `demote b: ${back.stdout}${back.stderr}`);
  await a.waitStatus('a promoted itself again', (status) => vol0(status).role === 'primary' && holding(status) && vol0(status).epoch === 2, 30_000);
  const third = new Writer(a.uri('vol0'), 2, 20_000_000, ['--max-writes', '200']);
  assert.equal((await third.finish(60_000)).code, 0, `writes through a again: ${third.stderr}`);

  // Something else wrote the epoch key: it is reported, and nobody acts on it.
  const client = new Etcd3({ hosts: etcd.clientUrl });
  try {
    const good = await client.get('blockmirror/volumes/vol0/epoch').string();
    await client.put('blockmirror/volumes/vol0/epoch').value('not a claim');
    const reported = await a.waitStatus('the damaged key reported', (status) => status.coordination.kind === 'etcd' && (status.coordination.error ?? '').includes('is not blockmirror\'s'));
    assert.ok(reported.coordination.kind === 'etcd' && reported.coordination.error?.includes('volume vol0'));
    assert.equal(vol0(reported).role, 'primary');
    await client.put('blockmirror/volumes/vol0/epoch').value(good ?? '');
    await a.waitStatus('the error gone once the key is right again', (status) => status.coordination.kind === 'etcd' && status.coordination.error === null);
  } finally {
    client.close();
  }
});

test('a three-member etcd loses its leader: no volume fails over, and writes through the primary go on', async () => {
  const dir0 = makeTempDir('blockmirror-etcd3-');
  dirs.push(dir0);
  const members = await EtcdProcess.startCluster(dir0, 3);
  etcds.push(...members);
  // The default lease (5 s): a lease must outlast etcd's election of a new leader (about a second here) and a renewal or two.
  const { dir, config } = await pair('blockmirror-etcd-leader-', members.map((member) => member.clientUrl), 5000);
  const { a, b } = await startPair(dir, config);
  const writer = new Writer(a.uri('vol0'), 1, 10_000_000, ['--seconds', '60']);
  await waitFor('100 replies', 30_000, () => writer.count('A') >= 100 || !writer.running);

  // The leader, as the members themselves report it.
  const leader = await leaderOf(members);
  await leader.stop('SIGKILL');
  const rest = members.filter((member) => member !== leader);
  // Wait until the other two have elected a new leader, and then for two whole leases.
  await leaderOf(rest);
  const renewedBefore = await renewals(a);
  await waitFor('two leases renewed after the election', 30_000, async () => (await renewals(a)) >= renewedBefore + 8);
  const replies = writer.count('A');
  await waitFor('writes go on', 30_000, () => writer.count('A') >= replies + 100 || !writer.running);
  assert.ok(writer.running, `the writer stopped: ${writer.stderr}${writer.output.slice(-500)}\na: ${a.logs.slice(-3000)}`);
  for (const [node, role] of [[a, 'primary'], [b, 'secondary']] as const) {
    const status = await node.status();
    assert.equal(vol0(status).role, role);
    assert.equal(vol0(status).epoch, 0, 'no new epoch: no failover');
  }
  assert.equal(holding(await a.status()), true);
  assert.deepEqual(hookLines(dir, 'a'), ['promoted vol0 a 0 primary'], 'a started as the primary, and stayed it');
  assert.deepEqual(hookLines(dir, 'b'), []);
  await writer.finish(0);
});

async function renewals(node: TestNode): Promise<number> {
  const status = await node.status();
  return status.coordination.kind === 'etcd' ? status.coordination.counters.renewals : 0;
}

/** The member the others follow, once a majority of `members` agrees on one (bounded wait). */
async function leaderOf(members: EtcdProcess[]): Promise<EtcdProcess> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const seen = new Map<string, EtcdProcess>();
    let leaderId: string | null = null;
    for (const member of members) {
      const client = new Etcd3({ hosts: member.clientUrl, dialTimeout: 1000 });
      try {
        const status = await client.maintenance.status();
        seen.set(status.header.member_id, member);
        if (status.leader !== '0') leaderId = status.leader;
      } catch {
        // Not answering (yet): asked again.
      } finally {
        client.close();
      }
    }
    const leader = leaderId === null ? undefined : seen.get(leaderId);
    if (leader !== undefined) return leader;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error('no etcd leader within 30 s');
}
