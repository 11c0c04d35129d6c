// Data and scratch directories the unit and integration tests share.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after } from 'node:test';

/**
 * `length` bytes that depend on `seed` and contain no zero byte, so that they never pass
 * for an unwritten (or zeroed) range.
 */
export function pattern(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  for (let index = 0; index < length; index += 1) out[index] = ((seed * 31 + index * 13) % 251) + 1;
  return out;
}

/**
 * A temporary directory for this test file, removed after its tests; the function
 * returned names a new path inside it at each call (not created).
 */
export function scratchDirs(prefix: string): () => string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  after(() => fs.rmSync(root, { recursive: true, force: true }));
  let count = 0;
  return () => {
    count += 1;
    return path.join(root, `log-${count}`);
  };
}

/**
 * Waits, polling every few milliseconds, until `check` holds; fails naming `what` after
 * `limitMs` (a bound, not a sleep: the test goes on the moment the state is reached).
 */
export async function until(what: string, check: () => boolean, limitMs: number): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${limitMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}
