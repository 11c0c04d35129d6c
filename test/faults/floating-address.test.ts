// Automatic failover through etcd between machines made of network namespaces
// (test/helpers/netns.ts): one for etcd, one for each node, one for the client, joined by
// a bridge, all removed afterwards. Both nodes listen for NBD on 0.0.0.0:10809 of their
// own machine; contrib/floating-address.sh, their `promoted` and `demoted` hook, puts the
// service address (.100) on the primary's eth0 and announces it with gratuitous ARP.
//
// The client (writer.py with --reconnect, in its own namespace) writes to the floating
// address. a's cable is pulled: a can no longer renew its lease, so it stops
// acknowledging and steps down (its hook removes the address); etcd expires the lease,
// b claims the volume, promotes itself and takes the address; the client's connection
// breaks, it connects to the same address again, now b, and carries on. Every write the
// client was answered is on b. Then a's cable is back: a follows b.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { EtcdProcess } from '../helpers/etcd-process.js';
import { NetnsLab } from '../helpers/netns.js';
import { makeTempDir, startClusterNode, testResources, vol0, type NodeStatusJson } from '../helpers/node-process.js';
import { checkImage, dumpUri, seed, waitFor, Writer } from './workload.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const hookPath = path.resolve(here, '../../../contrib/floating-address.sh');

const lab = new NetnsLab('fa');
// The nodes, etcds, namespaces and directories a test makes go when the file ends, however it ends.
const { nodes: started, dirs, first } = testResources();
const etcds: EtcdProcess[] = [];
first.push(async () => {
  for (const etcd of etcds) await etcd.stop('SIGKILL');
  await lab.remove();
});

const holding = (status: NodeStatusJson): boolean => status.coordination.kind === 'etcd' && status.coordination.volumes['vol0']?.holding === true;
const synced = (status: NodeStatusJson): string[] => (status.coordination.kind === 'etcd' ? status.coordination.volumes['vol0']?.synced ?? [] : []);

test('a\'s cable is pulled: b promotes itself, the hook moves the floating address, and a reconnecting client carries on with every answered write', async () => {
  const dir = makeTempDir('blockmirror-floating-');
  dirs.push(dir);
  const etcdAddress = await lab.add('etcd', 5);
  const aAddress = await lab.add('a', 1);
  const bAddress = await lab.add('b', 2);
  await lab.add('client', 9);
  const floating = `${lab.subnet}.100`;

  const etcd = await EtcdProcess.startIn(dir, lab.netns('etcd'), etcdAddress);
  etcds.push(etcd);
  const config = path.join(dir, 'cluster.yaml');
  fs.writeFileSync(config, `cluster: test
secret: test-secret-123
coordination:
  etcd:
    endpoints: [${etcd.clientUrl}]
    leaseTtlMs: 2000
hooks:
  promoted: ${hookPath}
  demoted: ${hookPath}
  timeoutMs: 10000
heartbeat: { intervalMs: 100, timeoutMs: 600, probationMs: 600 }
log: { partitionSize: 4MiB, partitions: 3, cpIntervalMs: 200 }
nodes:
  - id: a
    nbd: 0.0.0.0:10809
    replication: ${aAddress}:7800
    admin: ${aAddress}:0
    dataDir: ./data-a
  - id: b
    nbd: 0.0.0.0:10809
    replication: ${bAddress}:7800
    admin: ${bAddress}:0
    dataDir: ./data-b
volumes:
  - name: vol0
    size: 64MiB
    replicas: [a, b]
    primary: a
    mode: sync
`);
  const env = { BLOCKMIRROR_FLOATING_ADDRESS: `${floating}/24`, BLOCKMIRROR_FLOATING_DEVICE: 'eth0' };
  const a = await startClusterNode(dir, config, 'a', env, lab.netns('a'));
  started.push(a);
  const b = await startClusterNode(dir, config, 'b', env, lab.netns('b'));
  started.push(b);
  await a.waitStatus('a holds vol0, b in the synced set', (status) => holding(status) && synced(status).includes('b'), 30_000);
  await waitFor('the floating address on a', 15_000, async () => (await lab.addresses('a')).includes(floating));
  await b.waitStatus('b in sync', (status) => vol0(status).source?.promotable === true);

  const writer = new Writer(`nbd://${floating}:10809/vol0`, 1, 10_000_000, ['--seconds', '120', '--reconnect', '60', '--reply-timeout', '3'], seed, lab.netns('client'));
  await waitFor('200 replies through a', 30_000, () => writer.count('A') >= 200 || !writer.running);
  assert.ok(writer.running, `the writer ended early: ${writer.stderr}`);

  await lab.cut('a');
  const promoted = await b.waitStatus('b promoted itself', (status) => vol0(status).role === 'primary' && holding(status), 30_000).catch((error: unknown) => {
    throw new Error(`${String(error)}\nb: ${b.logs.slice(-4000)}`);
  });
  assert.equal(vol0(promoted).epoch, 1);
  await waitFor('the floating address on b', 15_000, async () => (await lab.addresses('b')).includes(floating));
  await waitFor('a gave the address up', 15_000, async () => !(await lab.addresses('a')).includes(floating));

  // The client connects again, to b, and its writes are answered there.
  await waitFor('the client connected again', 60_000, () => writer.output.includes('\nR connected again') || !writer.running);
  const atReconnect = writer.count('A');
  await waitFor('200 replies through b', 60_000, () => writer.count('A') >= atReconnect + 200 || !writer.running);
  assert.ok(writer.running, `the writer gave up: ${writer.stderr}${writer.output.slice(-400)}`);
  await writer.finish(0);
  const history = path.join(dir, 'history.txt');
  fs.writeFileSync(history, writer.output);

  // Every write the client was answered, through a or through b, is on b.
  const dumped = path.join(dir, 'b.img');
  await dumpUri(`nbd://${bAddress}:10809/vol0`, dumped);
  const report = await checkImage(null, dumped, [history], { acknowledged: 'replied' });
  assert.equal(report.failure_count, 0, `seed ${seed}: answered writes missing on b: ${report.failures.join('; ')}`);
  assert.ok((report.counts['disconnects'] ?? 0) >= 1, 'the client lost its connection to a');

  // a's cable is back: it stepped down meanwhile, and now follows b.
  await lab.heal('a');
  await a.waitStatus('a follows b', (status) => vol0(status).role === 'secondary' && vol0(status).source?.node === 'b', 30_000);
  assert.ok(a.records().some((record) => record['msg'] === 'hook ran' && record['event'] === 'demoted'), 'a\'s demoted hook ran');
});
