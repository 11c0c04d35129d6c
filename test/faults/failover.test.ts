// Failover with real processes (docs/operations.md, "Failover"). Three nodes hold vol0 in
// sync mode, a its first primary. A client (writer.py: a unique, checkable pattern per
// block, every reply recorded) writes through a; a is SIGKILLed while it writes; b is
// promoted with `blockmirror promote`; the client's every replied write must read back
// through b, and b takes writes of its own. c follows b at once, without a full resync.
// a, started again, finds that its peers know a newer epoch: it steps down, becomes a
// secondary of b, and has what it held past b's history resent from b. In the end the
// three images are byte for byte the same. Each run has its own seed (BLOCKMIRROR_SEED
// replays one); every wait is for a state, never for a time.
//
// A second test is the planned switchover: demote a (its client's connection drains and
// closes), then promote b without --force, and a follows b; and the refusals, each a
// clear error that changes nothing: promoting a node that is the primary already or one
// still streaming from it, a volume or node the cluster file does not have; demoting a
// node that is not the primary.
//
// The last two are disaster recovery from a logship copy's per-source log: a killed
// before a consistency point, b promoted (with --force: a logship copy may always lack
// writes) applies every entry it held and reads back every write; with an entry of that
// log damaged, the promotion stops at the entry before it, says so, and the image holds
// exactly the entries before.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { cliPath, killAll, makeTempDir, run, startClusterNode, vol0, writeClusterConfig, type NodeStatusJson, type TestNode } from '../helpers/node-process.js';
import { checkImage, dumpVolume, seed, waitFor, Writer } from './workload.js';
import { decodeEntryHeader, ENTRY_ALIGN_BYTES, ENTRY_HEADER_BYTES, EntryType, type EntryHeader } from '../../src/protocol/log-entry.js';

const MiB = 1024 * 1024;
const fastHeartbeat = { intervalMs: 100, timeoutMs: 600, probationMs: 600 };

const started: TestNode[] = [];
const dirs: string[] = [];
after(async () => {
  killAll();
  for (const node of started) await node.stop('SIGKILL');
  if (process.exitCode === undefined || process.exitCode === 0) for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

async function start(dir: string, config: string, id: string): Promise<TestNode> {
  const node = await startClusterNode(dir, config, id);
  started.push(node);
  return node;
}

function peer(status: NodeStatusJson, id: string): NodeStatusJson['volumes'][number]['peers'][number] | undefined {
  return vol0(status).peers.find((candidate) => candidate.node === id);
}

const upToDate = (status: NodeStatusJson, id: string): boolean => peer(status, id)?.replication === 'streaming' && peer(status, id)?.disk === 'up-to-date';

/** `blockmirror <args>`, asking `node`'s admin API (the test's nodes have admin ports the kernel picked). */
function cli(node: TestNode, ...args: string[]): ReturnType<typeof run> {
  return run(process.execPath, [cliPath, ...args, '--admin', `http://127.0.0.1:${node.adminPort}`], { timeoutMs: 90_000 });
}

async function threeNodes(prefix: string): Promise<{ dir: string; config: string }> {
  const dir = makeTempDir(prefix);
  dirs.push(dir);
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }, { id: 'c' }],
    volumes: [{ name: 'vol0', size: '64MiB', replicas: ['a', 'b', 'c'], primary: 'a', mode: 'sync' }],
    heartbeat: fastHeartbeat,
    log: { partitionSize: '4MiB', partitions: 3, cpIntervalMs: 200 },
  });
  return { dir, config };
}

/** The three images, read as files after a clean stop of every node, are the same bytes. */
function assertSameImages(nodes: TestNode[]): void {
  const [first, ...rest] = nodes.map((node) => ({ id: node.dataDir, image: fs.readFileSync(node.imagePath('vol0')) }));
  assert.ok(first !== undefined);
  for (const other of rest) {
    assert.equal(other.image.length, 64 * MiB);
    if (!other.image.equals(first.image)) {
      let at = 0;
      while (other.image[at] === first.image[at]) at += 1;
      assert.fail(`seed ${seed}: ${other.id} differs from ${first.id} first at byte ${at}`);
    }
  }
}

test('SIGKILL of the primary during writes: b is promoted and holds every replied write, c follows it without a full resync, and a comes back as b\'s secondary', async () => {
  const { dir, config } = await threeNodes('blockmirror-failover-');
  const [b, c] = [await start(dir, config, 'b'), await start(dir, config, 'c')];
  let a = await start(dir, config, 'a');
  await a.waitStatus('b and c streaming', (status) => upToDate(status, 'b') && upToDate(status, 'c'));
  // b has heard from a that it is in sync: its promotion can lose nothing a replies to.
  await b.waitStatus('b in sync', (status) => vol0(status).source?.promotable === true);

  const writer = new Writer(a.uri('vol0'), 1, 10_000_000, ['--seconds', '60']);
  await waitFor('300 replies', 30_000, () => writer.count('A') >= 300 || !writer.running);
  assert.ok(writer.running, `the writer ended early: ${writer.stderr}`);
  await a.stop('SIGKILL');
  await writer.finish(15_000);
  const history = path.join(dir, 'history-1.txt');
  fs.writeFileSync(history, writer.output);
  await b.waitStatus('b sees a gone', (status) => vol0(status).source?.connected === false);

  const promoted = await cli(b, 'promote', 'vol0', '--node', 'b', '--json');
  assert.equal(promoted.code, 0, `promote: ${promoted.stdout}${promoted.stderr}`);
  const result = JSON.parse(promoted.stdout) as { epoch: number; previousPrimary: string; mayLack: string | null; node: string };
  assert.deepEqual([result.node, result.epoch, result.previousPrimary, result.mayLack], ['b', 1, 'a', null]);
  const bStatus = await b.waitStatus('b primary in epoch 1', (status) => vol0(status).role === 'primary' && vol0(status).epoch === 1);
  assert.equal(vol0(bStatus).primary, 'b');

  // Every write a replied to reads back through b, the new primary.
  const dumped = path.join(dir, 'b-after-promotion.img');
  await dumpVolume(b, dumped);
  const report = await checkImage(null, dumped, [history], { acknowledged: 'replied' });
  assert.equal(report.failure_count, 0, `seed ${seed}: replied writes missing after the promotion: ${report.failures.join('; ')}`);
  assert.ok(report.written_blocks > 0);

  // c follows b in epoch 1: streaming, and not by a full resync.
  await b.waitStatus('c streaming from b', (status) => upToDate(status, 'c'), 30_000);
  const cStatus = await c.waitStatus('c in epoch 1', (status) => vol0(status).epoch === 1 && vol0(status).source?.node === 'b');
  assert.equal(vol0(cStatus).role, 'secondary');
  const resent = b.records().filter((record) => record['msg'] === 'peer needs a resync: it restarts its log here and is sent the regions it lacks' && record['peer'] === 'c');
  for (const record of resent) assert.ok(Number(record['bytes']) < 64 * MiB, `c was not resynced in full: ${JSON.stringify(record)}`);
  assert.ok(fs.existsSync(path.join(c.dataDir, 'peers', 'b', 'vol0')), 'c\'s per-source log moved to b\'s directory');
  assert.ok(!fs.existsSync(path.join(c.dataDir, 'peers', 'a', 'vol0')), 'and a\'s is gone');

  // b takes writes.
  const second = new Writer(b.uri('vol0'), 2, 20_000_000, ['--max-writes', '400']);
  assert.equal((await second.finish(60_000)).code, 0, `writes through b: ${second.stderr}`);
  const secondHistory = path.join(dir, 'history-2.txt');
  fs.writeFileSync(secondHistory, second.output);

  // a comes back: fenced by its peers' newer epoch, it steps down and follows b.
  a = await start(dir, config, 'a');
  await a.waitStatus('a follows b in epoch 1', (status) => vol0(status).role === 'secondary' && vol0(status).epoch === 1 && vol0(status).source?.node === 'b', 30_000).catch((error: unknown) => {
    throw new Error(`${String(error)}\na: ${a.logs.slice(-4000)}\nb: ${b.logs.slice(-3000)}`);
  });
  await b.waitStatus('a streaming from b', (status) => upToDate(status, 'a') && upToDate(status, 'c'), 60_000);
  assert.ok(a.records().some((record) => record['msg'] === 'stepping down as the primary'), 'a says it stepped down');
  const history0 = JSON.parse(fs.readFileSync(path.join(a.dataDir, 'volumes', 'vol0.epochs.json'), 'utf8')) as { epochs: { epoch: number; primary: string }[] };
  assert.deepEqual(history0.epochs.map((start) => [start.epoch, start.primary]), [[0, 'a'], [1, 'b']]);

  const final = path.join(dir, 'b-final.img');
  await dumpVolume(b, final);
  const finalReport = await checkImage(null, final, [history, secondHistory], { acknowledged: 'replied' });
  assert.equal(finalReport.failure_count, 0, `seed ${seed}: ${finalReport.failures.join('; ')}`);
  const resyncs = (id: string): string =>
    b.records().filter((record) => String(record['msg']).startsWith('peer needs a resync') && record['peer'] === id).map((record) => `${String(record['bytes'])} bytes`).join(', ') || 'none';
  console.log(`  seed ${seed}: ${writer.count('A')} replies before the kill; b took entries from ${result.epoch === 1 ? 'epoch 1' : '?'}; resyncs from b: c ${resyncs('c')}, a ${resyncs('a')}`);
  for (const node of [a, b, c]) assert.equal((await node.stop()).code, 0, `${node.dataDir} stops cleanly`);
  assertSameImages([a, b, c]);
});

test('switchover: demote a (its client drains), promote b without --force, a follows b; refusals are clear errors that change nothing', async () => {
  const { dir, config } = await threeNodes('blockmirror-switchover-');
  const [b, c] = [await start(dir, config, 'b'), await start(dir, config, 'c')];
  const a = await start(dir, config, 'a');
  await a.waitStatus('b and c streaming', (status) => upToDate(status, 'b') && upToDate(status, 'c'));

  // Refusals, each leaving every role as it was.
  const byConfig = (...args: string[]): ReturnType<typeof run> => run(process.execPath, [cliPath, ...args, '--config', config], { timeoutMs: 30_000 });
  const refusals: { answer: () => ReturnType<typeof run>; message: RegExp }[] = [
    { answer: () => cli(a, 'promote', 'vol0', '--node', 'a'), message: /^blockmirror: promote refused \(ERR_ROLE_REFUSED\): node a is the primary of vol0 already \(epoch 0\)$/m },
    { answer: () => cli(b, 'promote', 'vol0', '--node', 'b'), message: /^blockmirror: promote refused \(ERR_ROLE_REFUSED\): node b is streaming from a, the primary of vol0: demote it first/m },
    { answer: () => cli(c, 'demote', 'vol0', '--node', 'c'), message: /^blockmirror: demote refused \(ERR_ROLE_REFUSED\): node c is not the primary of vol0 \(a is\)$/m },
    { answer: () => byConfig('promote', 'vol9', '--node', 'b'), message: /^blockmirror: the cluster file has no volume "vol9"$/m },
    { answer: () => byConfig('promote', 'vol0', '--node', 'z'), message: /^blockmirror: the cluster file has no node "z"$/m },
    { answer: () => byConfig('promote', 'vol0', '--node', 'b'), message: /^blockmirror: node b's admin address in the cluster file has port 0 \(the kernel picks one at start\): give --admin URL$/m },
  ];
  for (const refusal of refusals) {
    const answer = await refusal.answer();
    assert.notEqual(answer.code, 0, `${String(refusal.message)} is refused`);
    assert.match(answer.stderr, refusal.message);
  }
  const admin = await fetch(`http://127.0.0.1:${b.adminPort}/api/v1/volumes/vol9/promote`, { method: 'POST', body: '{}' });
  assert.equal(admin.status, 404);
  assert.equal(((await admin.json()) as { error: { code: string } }).error.code, 'ERR_UNKNOWN_VOLUME');
  const badBody = await fetch(`http://127.0.0.1:${b.adminPort}/api/v1/volumes/vol0/promote`, { method: 'POST', body: '{"force": "yes"}' });
  assert.equal(badBody.status, 400);
  for (const [node, role] of [[a, 'primary'], [b, 'secondary'], [c, 'secondary']] as const) {
    const status = await node.status();
    assert.deepEqual([vol0(status).role, vol0(status).epoch], [role, 0], 'no refusal changed a role or an epoch');
  }

  // A client writes through a while it is demoted: its connection drains and closes.
  const writer = new Writer(a.uri('vol0'), 1, 10_000_000, ['--seconds', '60']);
  await waitFor('100 replies', 30_000, () => writer.count('A') >= 100 || !writer.running);
  const demoted = await cli(a, 'demote', 'vol0', '--node', 'a', '--json');
  assert.equal(demoted.code, 0, `demote: ${demoted.stdout}${demoted.stderr}`);
  await writer.finish(15_000);
  assert.ok(!writer.running);
  const history = path.join(dir, 'history-1.txt');
  fs.writeFileSync(history, writer.output);
  const aStatus = await a.status();
  assert.deepEqual([vol0(aStatus).role, vol0(aStatus).primary], ['secondary', null], 'a stepped down, and no node is primary');
  const refusedClient = await run('qemu-io', ['-f', 'raw', a.uri('vol0'), '-c', 'write 0 4k'], { timeoutMs: 30_000 });
  assert.notEqual(refusedClient.code, 0, 'a takes no writes');

  // b was in sync when a stepped down: no --force needed.
  await b.waitStatus('b sees a gone', (status) => vol0(status).source?.connected === false);
  const promoted = await cli(b, 'promote', 'vol0', '--node', 'b');
  assert.equal(promoted.code, 0, `promote: ${promoted.stdout}${promoted.stderr}`);
  assert.match(promoted.stdout, /^node b is the primary of vol0 in epoch 1 \(entries from \d+; node a was\)$/m);
  await b.waitStatus('a and c follow b', (status) => upToDate(status, 'a') && upToDate(status, 'c'), 60_000);
  assert.equal(vol0(await a.status()).source?.node, 'b');

  const dumped = path.join(dir, 'b.img');
  await dumpVolume(b, dumped);
  const report = await checkImage(null, dumped, [history], { acknowledged: 'replied' });
  assert.equal(report.failure_count, 0, `seed ${seed}: ${report.failures.join('; ')}`);
  for (const node of [a, b, c]) assert.equal((await node.stop()).code, 0);
  assertSameImages([a, b, c]);
});

/** Every entry header in the partition files of the log in `dir`, newest generation first for a repeated number. */
function logEntries(dir: string): Map<number, { file: string; offset: number; header: EntryHeader }> {
  const found = new Map<number, { file: string; offset: number; header: EntryHeader }>();
  for (const name of fs.readdirSync(dir).filter((file) => file.startsWith('partition-'))) {
    const file = path.join(dir, name);
    const bytes = fs.readFileSync(file);
    for (let offset = 0; offset + ENTRY_HEADER_BYTES <= bytes.length; offset += ENTRY_ALIGN_BYTES) {
      const header = decodeEntryHeader(bytes, offset);
      if (typeof header === 'string') continue;
      const known = found.get(header.seq);
      if (known === undefined || header.generation > known.header.generation) found.set(header.seq, { file, offset, header });
    }
  }
  return found;
}

/**
 * Two nodes, vol0 in logship mode with no consistency point in reach: a client writes
 * through a, b acknowledges every entry (held in its per-source log, not yet in its
 * image), and a is SIGKILLed. Returns the history of the client's writes.
 */
async function logshipThenKill(prefix: string): Promise<{ dir: string; a: TestNode; b: TestNode; history: string; held: number }> {
  const dir = makeTempDir(prefix);
  dirs.push(dir);
  const config = await writeClusterConfig(dir, {
    nodes: [{ id: 'a' }, { id: 'b' }],
    volumes: [{ name: 'vol0', size: '64MiB', replicas: ['a', 'b'], primary: 'a', mode: 'logship' }],
    heartbeat: fastHeartbeat,
    log: { partitionSize: '16MiB', partitions: 3, cpIntervalMs: 600_000 },
  });
  const b = await start(dir, config, 'b');
  const a = await start(dir, config, 'a');
  await a.waitStatus('b streaming', (status) => upToDate(status, 'b'));
  const writer = new Writer(a.uri('vol0'), 1, 10_000_000, ['--max-writes', '600']);
  assert.equal((await writer.finish(60_000)).code, 0, `writer: ${writer.stderr}`);
  const history = path.join(dir, 'history.txt');
  fs.writeFileSync(history, writer.output);
  const held = vol0(await a.status()).log.lastSeq;
  // b has acknowledged every entry a holds; none is in its image yet.
  await b.waitStatus('b holds every entry', (status) => vol0(status).source?.storedSeq === held);
  assert.equal(vol0(await b.status()).log.cpSeq < held, true, 'no consistency point of a covered the writes');
  await a.stop('SIGKILL');
  await b.waitStatus('b sees a gone', (status) => vol0(status).source?.connected === false);
  return { dir, a, b, history, held };
}

test('disaster recovery of a logship copy: a SIGKILLed before a consistency point, b promoted applies every entry it held and reads back every write', async () => {
  const { dir, b, history, held } = await logshipThenKill('blockmirror-logship-dr-');
  const refused = await cli(b, 'promote', 'vol0', '--node', 'b');
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /promote refused \(ERR_MAY_LOSE_WRITES\): volume vol0 mirrors in logship mode, so node b may lack writes a acknowledged/);
  const promoted = await cli(b, 'promote', 'vol0', '--node', 'b', '--force', '--json');
  assert.equal(promoted.code, 0, `promote: ${promoted.stdout}${promoted.stderr}`);
  const result = JSON.parse(promoted.stdout) as { appliedEntries: number; appliedBytes: number; firstSeq: number; sourceLogDamage: string | null; mayLack: string };
  assert.equal(result.sourceLogDamage, null);
  assert.ok(result.appliedEntries >= 600, `every write's entry applied at the promotion: ${result.appliedEntries}`);
  assert.equal(result.appliedBytes, result.appliedEntries * 4096);
  assert.equal(result.firstSeq, held + 1);
  assert.match(result.mayLack, /logship mode/);
  const dumped = path.join(dir, 'b.img');
  await dumpVolume(b, dumped);
  const report = await checkImage(null, dumped, [history], { acknowledged: 'replied' });
  assert.equal(report.failure_count, 0, `seed ${seed}: ${report.failures.join('; ')}`);
  assert.ok(report.written_blocks > 0);
});

test('disaster recovery from a damaged per-source log: the promotion stops at the last entry it can read, says so, and the image holds exactly the entries before', async () => {
  const { dir, b, held } = await logshipThenKill('blockmirror-logship-damaged-');
  const logDir = path.join(b.dataDir, 'peers', 'a', 'vol0');
  const entries = logEntries(logDir);
  // A payload byte of an entry in the middle of what b holds.
  const damagedSeq = [...entries.keys()].filter((seq) => entries.get(seq)?.header.type === EntryType.WRITE && seq > held / 2).sort((x, y) => x - y)[0];
  assert.ok(damagedSeq !== undefined);
  const damaged = entries.get(damagedSeq);
  assert.ok(damaged !== undefined);
  // What b's volume must read once promoted: the entries before the damaged one, applied in order over zeroes.
  const expected = Buffer.alloc(64 * MiB);
  for (let seq = 1; seq < damagedSeq; seq += 1) {
    const entry = entries.get(seq);
    if (entry === undefined || entry.header.type !== EntryType.WRITE) continue;
    const bytes = fs.readFileSync(entry.file);
    bytes.copy(expected, entry.header.offset, entry.offset + ENTRY_HEADER_BYTES, entry.offset + ENTRY_HEADER_BYTES + entry.header.lengthBytes);
  }
  const fd = fs.openSync(damaged.file, 'r+');
  try {
    const at = damaged.offset + ENTRY_HEADER_BYTES + 100;
    const byte = Buffer.alloc(1);
    fs.readSync(fd, byte, 0, 1, at);
    byte[0] = (byte[0] ?? 0) ^ 0xff;
    fs.writeSync(fd, byte, 0, 1, at);
  } finally {
    fs.closeSync(fd);
  }
  const promoted = await cli(b, 'promote', 'vol0', '--node', 'b', '--force', '--json');
  assert.equal(promoted.code, 0, `promote: ${promoted.stdout}${promoted.stderr}`);
  const result = JSON.parse(promoted.stdout) as { firstSeq: number; sourceLogDamage: string | null };
  assert.equal(result.firstSeq, damagedSeq, 'the new epoch starts at the entry it could not read');
  assert.match(result.sourceLogDamage ?? '', new RegExp(`the ${held - damagedSeq + 1} entries from ${damagedSeq} on are lost`));
  assert.ok(b.records().some((record) => record['msg'] === 'the per-source log is damaged: promoted as of the last entry it could read' && record['lastSeq'] === damagedSeq - 1));
  const dumped = path.join(dir, 'b.img');
  await dumpVolume(b, dumped);
  const image = fs.readFileSync(dumped);
  if (!image.equals(expected)) {
    let at = 0;
    while (image[at] === expected[at]) at += 1;
    assert.fail(`seed ${seed}: b's volume differs from the entries before ${damagedSeq} first at byte ${at}`);
  }
});
