// Whether a promotion can lose an acknowledged write (src/core/promotion.ts, mayLack):
// only a sync copy whose primary said it was in sync, and was still in sync when the
// primary went away, is promoted without --force; every other case says why, with how far
// behind the primary's last heartbeat put the copy when that is known.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mayLack, type SourceContact } from '../../src/core/promotion.js';

const sync = { name: 'vol0', mode: 'sync' };
const contact = (change: Partial<SourceContact> = {}): SourceContact => ({
  source: 'a',
  epoch: 0,
  inSync: true,
  lastSeq: 40,
  sourceLastSeq: 40,
  endedAt: '2026-12-07T10:00:00.000Z',
  endedBy: 'connection closed by the peer',
  ...change,
});

test('a sync copy in sync when its primary went away may be promoted', () => {
  assert.equal(mayLack(sync, contact(), 'b'), null);
});

test('every other case says why', () => {
  assert.match(mayLack(sync, null, 'b') ?? '', /^node b has had no contact with a primary of vol0 since it started following it/);
  assert.match(
    mayLack(sync, contact({ inSync: false, lastSeq: 30, sourceLastSeq: 42 }), 'b') ?? '',
    /^node b may lack writes a acknowledged: at its last contact with a \(2026-12-07T10:00:00.000Z: connection closed by the peer\) it was not in sync \(it held entry 30; the primary's last heartbeat named entry 42, 12 entries past the 30 it held\)$/,
  );
  assert.match(mayLack(sync, contact({ inSync: false, sourceLastSeq: null }), 'b') ?? '', /how far behind it was is not known/);
  for (const mode of ['async', 'logship']) {
    assert.match(mayLack({ name: 'vol0', mode }, contact(), 'b') ?? '', new RegExp(`^volume vol0 mirrors in ${mode} mode, so node b may lack writes a acknowledged`), `${mode}, even in sync at the end`);
  }
});
