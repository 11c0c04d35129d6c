// Hooks (src/server/hooks.ts, docs/operations.md "Hooks"): a command run with /bin/sh on a
// role change, with what happened in its environment; its exit status and output logged;
// a hook that fails is counted and logged; one that hangs is killed, with the processes it
// started, after the time limit; nothing waits for it but `settle`.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { Hooks } from '../../src/server/hooks.js';
import { Logger } from '../../src/lib/log.js';
import type { HooksConfig } from '../../src/control/config.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockmirror-hooks-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function hooksWith(config: Partial<HooksConfig>): { hooks: Hooks; records: Record<string, unknown>[] } {
  const records: Record<string, unknown>[] = [];
  const log = new Logger({ write: (line) => records.push(JSON.parse(line) as Record<string, unknown>) });
  return { hooks: new Hooks({ promoted: null, demoted: null, splitBrain: null, timeoutMs: 5000, ...config }, log), records };
}

test('a hook runs with the volume, node, epoch and role in its environment; its output is logged', async () => {
  const { hooks, records } = hooksWith({ promoted: 'echo "$BLOCKMIRROR_EVENT $BLOCKMIRROR_VOLUME $BLOCKMIRROR_NODE $BLOCKMIRROR_EPOCH $BLOCKMIRROR_ROLE ${BLOCKMIRROR_PEER:-none}"' });
  const run = hooks.fire('promoted', { volume: 'vol0', node: 'b', epoch: 7, role: 'primary' });
  assert.ok(run !== null);
  const outcome = await run;
  assert.equal(outcome.code, 0);
  assert.equal(outcome.output, 'promoted vol0 b 7 primary none');
  assert.deepEqual(hooks.counts, { run: 1, failed: 0 });
  const logged = records.find((record) => record['msg'] === 'hook ran');
  assert.equal(logged?.['output'], 'promoted vol0 b 7 primary none');
  // No command for the event: nothing runs.
  assert.equal(hooks.fire('demoted', { volume: 'vol0', node: 'b', epoch: 7, role: 'secondary' }), null);
});

test('a split brain\'s hook is told the other copy', async () => {
  const { hooks } = hooksWith({ splitBrain: 'echo "$BLOCKMIRROR_PEER"' });
  const outcome = await hooks.fire('splitBrain', { volume: 'vol0', node: 'a', epoch: 2, role: 'primary', peer: 'b' });
  assert.equal(outcome?.output, 'b');
});

test('a failing hook is counted and logged with its status and output', async () => {
  const { hooks, records } = hooksWith({ demoted: 'echo cannot move the address >&2; exit 3' });
  const outcome = await hooks.fire('demoted', { volume: 'vol0', node: 'a', epoch: 1, role: 'secondary' });
  assert.equal(outcome?.code, 3);
  assert.equal(outcome?.timedOut, false);
  assert.deepEqual(hooks.counts, { run: 1, failed: 1 });
  const logged = records.find((record) => record['msg'] === 'hook failed: exit status 3');
  assert.equal(logged?.['output'], 'cannot move the address');
  assert.equal(logged?.['level'], 'error');
});

test('a hook that hangs is killed after the time limit, with what it started', async () => {
  const marker = path.join(dir, 'child.pid');
  // The hook starts a child of its own and waits; both must go at the limit.
  const { hooks, records } = hooksWith({ promoted: `sleep 60 & echo $! > ${marker}; wait`, timeoutMs: 300 });
  const started = performance.now();
  const outcome = await hooks.fire('promoted', { volume: 'vol0', node: 'a', epoch: 1, role: 'primary' });
  assert.equal(outcome?.timedOut, true);
  assert.equal(outcome?.code, null);
  assert.ok(performance.now() - started < 10_000, 'killed, not waited for');
  assert.ok(records.some((record) => record['msg'] === 'hook failed: killed after 300 ms'));
  const child = Number(fs.readFileSync(marker, 'utf8'));
  let alive = true;
  for (let attempt = 0; attempt < 100 && alive; attempt += 1) {
    try {
      process.kill(child, 0);
      await new Promise((resolve) => setTimeout(resolve, 20));
    } catch {
      alive = false;
    }
  }
  assert.equal(alive, false, 'the hook\'s own child was killed too');
  await hooks.settle();
});

test('a hook that cannot run at all is a failure, not a crash', async () => {
  const { hooks } = hooksWith({ promoted: '/nonexistent/hook' });
  const outcome = await hooks.fire('promoted', { volume: 'vol0', node: 'a', epoch: 1, role: 'primary' });
  assert.equal(outcome?.code, 127);
  assert.deepEqual(hooks.counts, { run: 1, failed: 1 });
});
