// The coordination service the failover through etcd builds on, with a real one-member
// etcd (test/helpers/etcd-process.ts) and the `etcd3` client blockmirror uses: what the
// design relies on holds there. A key put under a lease lives while the lease does and
// goes with it, revoked or expired; a compare-and-swap transaction that creates a key only
// if it is absent succeeds once, and a second one fails and changes nothing; and a stopped
// etcd is an error the client reports, not a hang.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import { EtcdProcess } from '../helpers/etcd-process.js';
import { makeTempDir, sleep } from '../helpers/node-process.js';
import fs from 'node:fs';

const dir = makeTempDir('blockmirror-etcd-');
const started: EtcdProcess[] = [];
const clients: Etcd3[] = [];
after(async () => {
  for (const client of clients) client.close();
  for (const etcd of started) await etcd.remove();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function etcdWithClient(): Promise<{ etcd: EtcdProcess; client: Etcd3 }> {
  const etcd = await EtcdProcess.start(dir, `etcd${started.length}`);
  started.push(etcd);
  const client = new Etcd3({ hosts: etcd.clientUrl, dialTimeout: 2000 });
  clients.push(client);
  return { etcd, client };
}

test('a key under a lease lives while the lease does, and goes when it is revoked or expires', async () => {
  const { client } = await etcdWithClient();
  const lease = client.lease(60, { autoKeepAlive: false });
  await lease.put('blockmirror/test/vol0/primary').value('a');
  assert.equal(await client.get('blockmirror/test/vol0/primary').string(), 'a');
  await lease.revoke();
  assert.equal(await client.get('blockmirror/test/vol0/primary').string(), null, 'gone with its revoked lease');

  // A lease of one second, never renewed: the key is gone once etcd expires it (bounded wait).
  const short = client.lease(1, { autoKeepAlive: false });
  await short.put('blockmirror/test/vol1/primary').value('b');
  assert.equal(await client.get('blockmirror/test/vol1/primary').string(), 'b');
  let value: string | null = 'b';
  for (let attempt = 0; attempt < 100 && value !== null; attempt += 1) {
    await sleep(100);
    value = await client.get('blockmirror/test/vol1/primary').string();
  }
  assert.equal(value, null, 'gone within 10 s of its 1 s lease');
});

test('create-if-absent succeeds once; a second one fails and changes nothing', async () => {
  const { client } = await etcdWithClient();
  const key = 'blockmirror/test/vol0/epoch';
  const claim = (node: string) => client.if(key, 'Create', '==', 0).then(client.put(key).value(node)).commit();
  const first = await claim('a');
  assert.equal(first.succeeded, true);
  const second = await claim('b');
  assert.equal(second.succeeded, false);
  assert.equal(await client.get(key).string(), 'a');
  // A swap that names the value it expects: only the holder's succeeds.
  const swap = (expected: string, next: string) => client.if(key, 'Value', '==', expected).then(client.put(key).value(next)).commit();
  assert.equal((await swap('b', 'c')).succeeded, false);
  assert.equal((await swap('a', 'b')).succeeded, true);
  assert.equal(await client.get(key).string(), 'b');
});

test('a stopped etcd is an error the client reports within its time limit', async () => {
  const { etcd, client } = await etcdWithClient();
  await client.put('blockmirror/test/alive').value('1');
  const stopped = await etcd.stop();
  assert.ok(stopped.code !== null || stopped.signal !== null, 'etcd exited');
  let timer: NodeJS.Timeout | undefined;
  const outcome = await Promise.race([
    client.get('blockmirror/test/alive').string().then(
      () => 'answered',
      (error: unknown) => `error: ${String(error)}`,
    ),
    new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve('no answer in 15 s'), 15_000);
    }),
  ]);
  clearTimeout(timer);
  assert.match(outcome, /^error: /);
});
