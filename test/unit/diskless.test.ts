// Whether a primary whose disk failed may serve its volume from its peers
// (src/core/diskless.ts): only a sync volume, with every entry numbered in the mirror and an
// up-to-date peer; each refusal says why.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { disklessRefusal } from '../../src/core/diskless.js';

const facts = { mode: 'sync' as const, numberedSeq: 40, mirroredSeq: 40, upToDatePeers: 1 };

test('a sync volume with every entry mirrored and an up-to-date peer goes diskless', () => {
  assert.equal(disklessRefusal(facts), null);
  assert.equal(disklessRefusal({ ...facts, upToDatePeers: 2 }), null);
});

test('every other case is refused, saying why', () => {
  assert.equal(disklessRefusal({ ...facts, mode: 'async' }), 'in async mode the peers may lack writes this node acknowledged');
  assert.equal(disklessRefusal({ ...facts, mode: 'logship' }), 'in logship mode the peers may lack writes this node acknowledged');
  assert.equal(disklessRefusal({ ...facts, mirroredSeq: 37 }), 'entries 38..40 were numbered but never reached the peers');
  assert.equal(disklessRefusal({ ...facts, upToDatePeers: 0 }), 'no peer holds an up-to-date copy');
});
