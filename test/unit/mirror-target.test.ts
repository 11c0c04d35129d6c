// The destination side of mirroring: entries that arrive in any order are stored in
// sequence order, ACKs are cumulative and never run ahead of what is stored, FLUSH and
// SYNC wait for the entries they cover, and a source that breaks its window gets a
// protocol error instead of unbounded memory. Ends with a seeded randomized run; a
// failure prints the seed (replay with BLOCKMIRROR_SEED=<seed>).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { MirrorMode } from '../../src/core/mirror-source.js';
import { MirrorTarget, type TargetAction } from '../../src/core/mirror-target.js';
import { Prng, baseSeed } from './prng.js';

type Action = TargetAction<string>;

function target(lastSeq = 0, windowBytesMax = 64 * 64, mode: MirrorMode = 'sync'): MirrorTarget<string> {
  return new MirrorTarget<string>({ mode, lastSeq, windowBytesMax });
}

/** An entry's frame in these tests names its sequence number. */
function frame(seq: number): string {
  return `entry-${seq}`;
}

function send(t: MirrorTarget<string>, seq: number, bytes = 64): Action[] {
  return t.entry(seq, bytes, frame(seq));
}

function stores(actions: Action[]): number[] {
  return actions.flatMap((action) => (action.kind === 'store' ? [action.seq] : []));
}

function only<K extends Action['kind']>(actions: Action[], kind: K): Extract<Action, { kind: K }>[] {
  return actions.filter((action): action is Extract<Action, { kind: K }> => action.kind === kind);
}

function isProtocolError(actions: Action[]): boolean {
  return actions.length === 1 && actions[0]?.kind === 'protocol-error';
}

describe('MirrorTarget: entries and ACKs', () => {
  test('entries in order are stored at once and acknowledged one by one', () => {
    const t = target(10);
    assert.deepEqual(send(t, 11), [{ kind: 'store', seq: 11, frame: 'entry-11' }]);
    assert.deepEqual(stores(send(t, 12)), [12]);
    assert.deepEqual(t.stored(11, null), [{ kind: 'send-ack', seq: 11, status: 0 }]);
    assert.deepEqual(t.stored(12, null), [{ kind: 'send-ack', seq: 12, status: 0 }]);
    assert.deepEqual(t.status(), { storedSeq: 12, issuedSeq: 12, bufferedEntries: 0, bufferedBytes: 0, failed: false, syncedCpSeq: 0 });
  });

  test('entries out of order wait for their predecessors, and the ACK is cumulative', () => {
    const t = target();
    assert.deepEqual(send(t, 3, 100), []);
    assert.deepEqual(send(t, 2, 200), []);
    assert.equal(t.status().bufferedBytes, 300);
    assert.equal(t.status().bufferedEntries, 2);
    const issued = send(t, 1);
    assert.deepEqual(issued, [
      { kind: 'store', seq: 1, frame: 'entry-1' },
      { kind: 'store', seq: 2, frame: 'entry-2' },
      { kind: 'store', seq: 3, frame: 'entry-3' },
    ]);
    assert.equal(t.status().bufferedBytes, 0);
    // Stores complete out of order: nothing is acknowledged past a gap.
    assert.deepEqual(t.stored(3, null), []);
    assert.deepEqual(t.stored(1, null), [{ kind: 'send-ack', seq: 1, status: 0 }]);
    assert.deepEqual(t.stored(2, null), [{ kind: 'send-ack', seq: 3, status: 0 }]);
  });

  test('a duplicate entry (issued or buffered) is a protocol error, and the target stops until reset', () => {
    const t = target();
    send(t, 1);
    send(t, 3);
    const again = send(t, 1);
    assert.ok(isProtocolError(again), JSON.stringify(again));
    // Stopped: nothing more happens, not even ACKs for stores that complete.
    assert.deepEqual(send(t, 2), []);
    assert.deepEqual(t.stored(1, null), []);
    assert.deepEqual(t.flush(1), []);
    assert.equal(t.status().bufferedEntries, 0);

    const u = target();
    send(u, 3);
    assert.ok(isProtocolError(send(u, 3)));
  });

  test('the reorder buffer is bounded by the window in bytes and in entries', () => {
    // Window of 640 bytes: at most 10 entries ahead of the last ACK, 640 bytes buffered.
    const bytes = target(0, 640);
    assert.deepEqual(send(bytes, 2, 320), []);
    assert.deepEqual(send(bytes, 3, 320), []);
    assert.ok(isProtocolError(send(bytes, 4, 64)));

    const ahead = target(0, 640);
    assert.deepEqual(send(ahead, 10), []);
    assert.ok(isProtocolError(send(ahead, 11)));

    const tiny = target(0, 640);
    assert.ok(isProtocolError(send(tiny, 1, 63)), 'entries are at least a header');

    // One entry larger than the window still goes when it is next: the source always sends one.
    const large = target(0, 640);
    assert.deepEqual(stores(send(large, 1, 1 << 20)), [1]);
  });

  test('the window is measured from the last ACK, so stores in flight count against it', () => {
    const t = target(0, 640);
    for (let seq = 1; seq <= 10; seq += 1) assert.deepEqual(stores(send(t, seq)), [seq]);
    // Ten entries issued, none stored: an eleventh means the source ignored its window.
    assert.ok(isProtocolError(send(t, 11)));
    t.reset();
    for (let seq = 1; seq <= 10; seq += 1) t.stored(seq, null);
    assert.deepEqual(stores(send(t, 11)), [11]);
  });

  test('a failed store is acknowledged with an error once; later entries are ignored', () => {
    const t = target();
    send(t, 1);
    send(t, 2);
    send(t, 3);
    send(t, 5);
    const waitingFlush = t.flush(3);
    assert.deepEqual(waitingFlush, []);
    assert.deepEqual(t.stored(1, null), [{ kind: 'send-ack', seq: 1, status: 0 }]);
    const failed = t.stored(2, 'EIO');
    assert.deepEqual(failed, [
      { kind: 'send-ack', seq: 2, status: 1 },
      { kind: 'send-flushed', seq: 3, status: 1 },
    ]);
    assert.deepEqual(t.stored(3, 'EIO'), [], 'one error ACK only');
    assert.deepEqual(send(t, 4), [], 'ignored, not an error');
    assert.deepEqual(t.flush(1), [{ kind: 'send-flushed', seq: 1, status: 1 }]);
    assert.deepEqual(t.sync(1), [{ kind: 'send-synced', cpSeq: 1, status: 1 }]);
    assert.equal(t.status().failed, true);
    assert.equal(t.status().storedSeq, 1);
    assert.deepEqual(t.ready(), { lastSeq: 3, idle: true });
  });
});

describe('MirrorTarget: FLUSH', () => {
  test('a FLUSH waits for the gap before it to be stored, then syncs the log once', () => {
    const t = target();
    send(t, 1);
    send(t, 3);
    assert.deepEqual(t.flush(3), []);
    t.stored(1, null);
    assert.deepEqual(send(t, 2).length, 2);
    assert.deepEqual(only(t.stored(3, null), 'sync-log'), []);
    const afterGap = t.stored(2, null);
    assert.deepEqual(afterGap, [
      { kind: 'send-ack', seq: 3, status: 0 },
      { kind: 'sync-log', seq: 3 },
    ]);
    assert.deepEqual(t.logSynced(3, null), [{ kind: 'send-flushed', seq: 3, status: 0 }]);
    // Already durable: answered at once.
    assert.deepEqual(t.flush(2), [{ kind: 'send-flushed', seq: 2, status: 0 }]);
  });

  test('FLUSHes arriving while the log syncs share the next sync', () => {
    const t = target();
    for (let seq = 1; seq <= 4; seq += 1) {
      send(t, seq);
      t.stored(seq, null);
    }
    assert.deepEqual(t.flush(1), [{ kind: 'sync-log', seq: 1 }]);
    assert.deepEqual(t.flush(3), []);
    assert.deepEqual(t.flush(2), []);
    assert.deepEqual(t.flush(6), [], 'beyond what arrived: waits');
    assert.deepEqual(t.ready().idle, false);
    assert.deepEqual(t.logSynced(1, null), [
      { kind: 'send-flushed', seq: 1, status: 0 },
      { kind: 'sync-log', seq: 3 },
    ]);
    assert.deepEqual(t.logSynced(3, null), [
      { kind: 'send-flushed', seq: 2, status: 0 },
      { kind: 'send-flushed', seq: 3, status: 0 },
    ]);
    send(t, 5);
    send(t, 6);
    t.stored(5, null);
    assert.deepEqual(t.stored(6, null), [
      { kind: 'send-ack', seq: 6, status: 0 },
      { kind: 'sync-log', seq: 6 },
    ]);
    assert.deepEqual(t.logSynced(6, null), [{ kind: 'send-flushed', seq: 6, status: 0 }]);
    assert.equal(t.ready().idle, true);
  });

  test('a FLUSH beyond anything the window allows is a protocol error', () => {
    const t = target(0, 640);
    assert.deepEqual(t.flush(11), [], 'a window of entries ahead, plus one: waits');
    assert.ok(isProtocolError(t.flush(12)));
    assert.ok(isProtocolError(target().flush(-1)));
  });

  test('waiting FLUSHes and SYNCs are bounded: FLUSHes past the bound merge into the latest, SYNCs past it are refused', () => {
    const flushes = target(0, 640);
    // Entries arrive and are stored, each followed by a FLUSH, while the first log sync
    // takes its time: more FLUSHes wait than the bound (11), and none is refused.
    const syncLogs: number[] = [];
    const replies: number[] = [];
    const collect = (actions: ReturnType<typeof flushes.flush>): void => {
      for (const action of actions) {
        assert.notEqual(action.kind, 'protocol-error');
        if (action.kind === 'sync-log') syncLogs.push(action.seq);
        if (action.kind === 'send-flushed') replies.push(action.seq);
        if (action.kind === 'store') collect(flushes.stored(action.seq, null));
      }
    };
    for (let seq = 1; seq <= 20; seq += 1) {
      collect(flushes.entry(seq, 64, `e${seq}`));
      collect(flushes.flush(seq));
    }
    for (let rounds = 0; syncLogs.length > 0 && rounds < 100; rounds += 1) {
      const seq = syncLogs.shift() ?? 0;
      collect(flushes.logSynced(seq, null));
    }
    // The replies are cumulative: fewer than the requests, in order, up to the last.
    assert.ok(replies.length < 20, `merged (${replies.length} replies)`);
    assert.equal(replies[replies.length - 1], 20);
    assert.deepEqual([...replies].sort((x, y) => x - y), replies, 'in order');
    const syncs = target(0, 640);
    for (let seq = 1; seq <= 11; seq += 1) assert.deepEqual(syncs.sync(seq), []);
    assert.ok(isProtocolError(syncs.sync(11)));
  });

  test('a failed log sync fails the copy and every waiting FLUSH', () => {
    const t = target();
    send(t, 1);
    t.stored(1, null);
    t.flush(1);
    t.flush(2);
    assert.deepEqual(t.logSynced(1, 'EIO'), [
      { kind: 'send-flushed', seq: 1, status: 1 },
      { kind: 'send-flushed', seq: 2, status: 1 },
    ]);
    assert.equal(t.status().failed, true);
    assert.deepEqual(send(t, 2), []);
  });
});

describe('MirrorTarget: SYNC', () => {
  test('SYNCs wait for their entries, run one at a time and coalesce', () => {
    const t = target();
    assert.deepEqual(t.sync(2), []);
    send(t, 1);
    send(t, 2);
    t.stored(1, null);
    assert.deepEqual(only(t.stored(2, null), 'checkpoint'), [{ kind: 'checkpoint', cpSeq: 2 }]);
    assert.deepEqual(t.sync(4), []);
    assert.deepEqual(t.sync(6), []);
    for (let seq = 3; seq <= 6; seq += 1) {
      send(t, seq);
      assert.deepEqual(only(t.stored(seq, null), 'checkpoint'), [], 'one checkpoint at a time');
    }
    assert.deepEqual(t.checkpointDone(2, null), [
      { kind: 'send-synced', cpSeq: 2, status: 0 },
      { kind: 'checkpoint', cpSeq: 6 },
    ]);
    assert.deepEqual(t.checkpointDone(6, null), [
      { kind: 'send-synced', cpSeq: 4, status: 0 },
      { kind: 'send-synced', cpSeq: 6, status: 0 },
    ]);
    assert.equal(t.status().syncedCpSeq, 6);
    assert.deepEqual(t.sync(5), [{ kind: 'send-synced', cpSeq: 5, status: 0 }]);
  });

  test('a failed checkpoint fails the copy', () => {
    const t = target(0, 4096, 'logship');
    assert.equal(t.mode, 'logship');
    send(t, 1);
    t.stored(1, null);
    assert.deepEqual(t.sync(1), [{ kind: 'checkpoint', cpSeq: 1 }]);
    assert.deepEqual(t.sync(1), [], 'waits for the running checkpoint');
    assert.deepEqual(t.checkpointDone(1, 'ENOSPC'), [
      { kind: 'send-synced', cpSeq: 1, status: 1 },
      { kind: 'send-synced', cpSeq: 1, status: 1 },
    ]);
    assert.equal(t.status().failed, true);
  });
});

describe('MirrorTarget: sessions', () => {
  test('reset drops what waits, lets issued stores finish silently, and a new session resumes after the issued mark', () => {
    const t = target();
    send(t, 1);
    send(t, 2);
    send(t, 4);
    t.flush(2);
    t.sync(2);
    t.stored(1, null);
    t.reset();
    assert.deepEqual(t.status().bufferedEntries, 0);
    assert.deepEqual(t.ready(), { lastSeq: 2, idle: false });
    // The old session's store completes: no ACK, no sync-log, no checkpoint for dropped requests.
    assert.deepEqual(t.stored(2, null), []);
    assert.deepEqual(t.ready(), { lastSeq: 2, idle: true });
    // New session, from entry 3.
    assert.ok(isProtocolError(send(t, 2)));
    t.reset();
    assert.deepEqual(stores(send(t, 3)), [3]);
    assert.deepEqual(t.stored(3, null), [{ kind: 'send-ack', seq: 3, status: 0 }]);
    assert.deepEqual(t.flush(3), [{ kind: 'sync-log', seq: 3 }]);
  });

  test('after a protocol error, reset starts over from the issued mark', () => {
    const t = target(0, 640);
    send(t, 1);
    assert.ok(isProtocolError(send(t, 12)));
    t.reset();
    t.stored(1, null);
    assert.deepEqual(t.ready(), { lastSeq: 1, idle: true });
    assert.deepEqual(stores(send(t, 2)), [2]);
  });
});

describe('MirrorTarget: randomized arrival and completion', () => {
  const seed0 = baseSeed(0x7a59e7);
  for (let run = 0; run < 40; run += 1) {
    const seed = (seed0 + run) >>> 0;
    test(`seed ${seed}`, () => {
      try {
        randomRun(new Prng(seed));
      } catch (error) {
        console.error(`mirror-target randomized run failed; replay with BLOCKMIRROR_SEED=${seed}`);
        throw error;
      }
    });
  }
});

/**
 * A source that keeps its window (like MirrorSource.pump) sends entries over several
 * connections; the test delivers them in random order, completes stores, log syncs and
 * checkpoints in random order, and checks every reply against what is really stored.
 */
function randomRun(prng: Prng): void {
  const windowBytesMax = prng.pick([64 * 4, 64 * 16, 4096, 65536]);
  const lastSeq = prng.below(1000);
  const total = prng.between(50, 400);
  const t = new MirrorTarget<string>({ mode: prng.pick(['sync', 'async', 'logship'] as const), lastSeq, windowBytesMax });
  const bytesOf = new Map<number, number>();
  for (let seq = lastSeq + 1; seq <= lastSeq + total; seq += 1) {
    bytesOf.set(seq, prng.chance(0.7) ? 64 : 64 * prng.between(2, 40));
  }
  const entryBytes = (seq: number): number => bytesOf.get(seq) ?? assert.fail(`no entry ${seq}`);

  let sentSeq = lastSeq;
  let sourceAckedSeq = lastSeq;
  const inTransit: number[] = [];
  const storing: number[] = [];
  const stored = new Set<number>();
  let nextStore = lastSeq + 1;
  let lastAck = lastSeq;
  const flushes: number[] = [];
  let flushAskedSeq = lastSeq;
  const syncs: number[] = [];
  let syncLog: number | null = null;
  let checkpoint: number | null = null;
  let durableSeq = 0;
  let cpTakenSeq = 0;

  const contiguous = (): number => {
    let seq = lastSeq;
    while (stored.has(seq + 1)) seq += 1;
    return seq;
  };
  const handle = (actions: Action[]): void => {
    for (const action of actions) {
      switch (action.kind) {
        case 'store':
          assert.equal(action.seq, nextStore, 'stores are issued in strict sequence order');
          assert.equal(action.frame, frame(action.seq));
          nextStore += 1;
          storing.push(action.seq);
          break;
        case 'send-ack':
          assert.equal(action.status, 0);
          assert.ok(action.seq > lastAck, `ACK ${action.seq} after ${lastAck}: not monotonic`);
          assert.ok(action.seq <= contiguous(), `ACK ${action.seq} ahead of stored ${contiguous()}`);
          lastAck = action.seq;
          // ACKs come back after a while; the source opens its window when they do.
          if (prng.chance(0.8)) sourceAckedSeq = lastAck;
          break;
        case 'sync-log':
          assert.equal(syncLog, null, 'one log sync at a time');
          assert.ok(action.seq <= contiguous());
          syncLog = action.seq;
          break;
        case 'send-flushed': {
          assert.equal(action.status, 0);
          assert.ok(action.seq <= durableSeq, `FLUSHED ${action.seq} but the log is durable through ${durableSeq}`);
          const at = flushes.indexOf(action.seq);
          assert.ok(at >= 0, `FLUSHED ${action.seq} never asked`);
          flushes.splice(at, 1);
          break;
        }
        case 'checkpoint':
          assert.equal(checkpoint, null, 'one checkpoint at a time');
          assert.ok(action.cpSeq <= contiguous());
          checkpoint = action.cpSeq;
          break;
        case 'send-synced': {
          assert.equal(action.status, 0);
          assert.ok(action.cpSeq <= cpTakenSeq);
          const at = syncs.indexOf(action.cpSeq);
          assert.ok(at >= 0, `SYNCED ${action.cpSeq} never asked`);
          syncs.splice(at, 1);
          break;
        }
        case 'protocol-error':
          assert.fail(`a source that keeps its window got ${action.reason}`);
      }
    }
  };
  const take = (list: number[]): number => {
    const at = prng.below(list.length);
    const [item] = list.splice(at, 1);
    return item ?? assert.fail('empty list');
  };

  for (let step = 0; step < 100_000; step += 1) {
    // The source sends while its window has room (one entry always goes).
    while (sentSeq < lastSeq + total && prng.chance(0.7)) {
      let inflight = 0;
      for (let seq = sourceAckedSeq + 1; seq <= sentSeq; seq += 1) inflight += entryBytes(seq);
      if (inflight > 0 && inflight + entryBytes(sentSeq + 1) > windowBytesMax) break;
      sentSeq += 1;
      inTransit.push(sentSeq);
    }
    // Like MirrorSource, FLUSH only above every earlier FLUSH, possibly for an entry the
    // window has not let out yet, and SYNC only for a new consistency point; like a
    // client, only a few at once.
    const flushMaxSeq = Math.min(sentSeq + 1, lastSeq + total);
    if (prng.chance(0.05) && flushMaxSeq > flushAskedSeq && flushes.length < 4) {
      const seq = prng.between(Math.max(flushAskedSeq + 1, flushMaxSeq - 5), flushMaxSeq);
      flushAskedSeq = seq;
      flushes.push(seq);
      handle(t.flush(seq));
    }
    if (prng.chance(0.02) && sentSeq > (syncs.at(-1) ?? lastSeq) && syncs.length < 4) {
      const cpSeq = sentSeq;
      syncs.push(cpSeq);
      handle(t.sync(cpSeq));
    }
    const choice = prng.below(5);
    if (choice <= 1 && inTransit.length > 0) {
      const seq = take(inTransit);
      handle(t.entry(seq, entryBytes(seq), frame(seq)));
    } else if (choice === 2 && storing.length > 0) {
      const seq = take(storing);
      stored.add(seq);
      handle(t.stored(seq, null));
    } else if (choice === 3 && syncLog !== null) {
      const seq = syncLog;
      syncLog = null;
      durableSeq = Math.max(durableSeq, seq);
      handle(t.logSynced(seq, null));
    } else if (choice === 4 && checkpoint !== null) {
      const cpSeq = checkpoint;
      checkpoint = null;
      cpTakenSeq = Math.max(cpTakenSeq, cpSeq);
      handle(t.checkpointDone(cpSeq, null));
    } else if (prng.chance(0.1)) {
      sourceAckedSeq = lastAck;
    }
    const status = t.status();
    assert.ok(status.bufferedBytes <= windowBytesMax);
    assert.ok(status.storedSeq <= status.issuedSeq);
    if (sentSeq === lastSeq + total && inTransit.length === 0 && storing.length === 0 && syncLog === null && checkpoint === null) {
      if (flushes.length === 0 && syncs.length === 0) break;
    }
  }
  assert.equal(nextStore, lastSeq + total + 1, 'every entry was issued');
  assert.equal(lastAck, lastSeq + total, 'every entry was acknowledged');
  assert.deepEqual(flushes, [], 'every FLUSH was answered');
  assert.deepEqual(syncs, [], 'every SYNC was answered');
  assert.deepEqual(t.ready(), { lastSeq: lastSeq + total, idle: true });
  assert.deepEqual(t.status().bufferedEntries, 0);
}
