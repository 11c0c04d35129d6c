// The secondary's record of its last contact with its primary (src/server/source-contact.ts):
// what a promotion by the rules trusts. A primary that went on after the session ended
// (its heartbeats name entries past those it had then) takes "in sync" away, on disk, so
// that a restart does not bring it back; heartbeats during the session change nothing of it.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { mayLack } from '../../src/core/promotion.js';
import { Logger } from '../../src/lib/log.js';
import { ContactRecord } from '../../src/server/source-contact.js';
import { DurableFiles } from '../../src/storage/durable-files.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bm-contact-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
const files = new DurableFiles();
const lines: string[] = [];
const log = new Logger({ write: (line) => lines.push(line) }, 'warn');

test('a primary heard going on after the session ended makes the copy need --force, across a restart', () => {
  const file = path.join(dir, 'vol0.contact.json');
  const record = new ContactRecord(files, file, log);
  record.started('a', 0, 10);
  record.inSync(12);
  record.heard(15);
  record.ended(15, 'link lost', true);
  assert.equal(mayLack({ name: 'vol0', mode: 'sync' }, record.current, 'b'), null, 'in sync when the session ended');
  record.heard(15);
  assert.equal(record.current?.inSync, true, 'the entry it named before the end changes nothing');
  assert.equal(lines.length, 0, lines.join('\n'));
  record.heard(19);
  assert.equal(record.current?.inSync, false);
  assert.match(record.current?.endedBy ?? '', /went on without it \(entry 19\)/);
  assert.ok(lines.some((line) => line.includes('the primary went on after this copy')), lines.join('\n'));
  const reopened = new ContactRecord(files, file, log);
  assert.equal(reopened.current?.inSync, false, 'written at once');
  assert.match(mayLack({ name: 'vol0', mode: 'sync' }, reopened.current, 'b') ?? '', /was not in sync/);
});
