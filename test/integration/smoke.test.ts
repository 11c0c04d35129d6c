// The node as a user meets it: start, serve one write and read through qemu-io, stop
// cleanly with exit code 0.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { runOk, startNode } from '../helpers/node-process.js';

test('serve: write and read back through qemu-io, then a clean SIGTERM exit', async () => {
  const node = await startNode();
  try {
    await runOk('qemu-io', ['-f', 'raw', node.uri('vol0'), '-c', 'write -P 0x5a 4096 8192', '-c', 'read -P 0x5a 4096 8192']);
  } finally {
    const exit = await node.stop('SIGTERM');
    assert.deepEqual(exit, { code: 0, signal: null });
  }
  const image = fs.readFileSync(node.imagePath('vol0'));
  assert.equal(image.length, 64 * 1024 * 1024);
  assert.ok(image.subarray(4096, 4096 + 8192).every((byte) => byte === 0x5a));
  assert.ok(image.subarray(0, 4096).every((byte) => byte === 0));
  fs.rmSync(node.dir, { recursive: true, force: true });
});
