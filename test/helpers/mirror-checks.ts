// Checks shared by the tests that run a primary and a secondary as real processes.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import type { TestNode } from './node-process.js';

/** After both stopped: a's image of `volume` holds `expected` from offset 0, and b's image equals a's. */
export function assertConverged(a: TestNode, b: TestNode, expected: Buffer, volume = 'v1'): void {
  const imageA = fs.readFileSync(a.imagePath(volume));
  const imageB = fs.readFileSync(b.imagePath(volume));
  assert.ok(imageA.subarray(0, expected.length).equals(expected), 'a holds what the client wrote');
  assert.ok(imageB.equals(imageA), 'b has everything a has');
}
