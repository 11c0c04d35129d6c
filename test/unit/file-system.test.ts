// One compliance suite for the FileSystem port, run against both twins: NodeFileSystem in
// a temporary directory and MemoryFileSystem. What a caller can see is checked (names,
// bytes, sizes, the error codes of calls that must fail), so that code tested over the
// twin behaves the same over the real file system.
//
// Then the twin's crash model: what survives a crash at a given moment (synced bytes,
// names made durable by a directory sync, either outcome for the rest), stopping the
// world after the Nth mutation, and the data path's files, whose bytes survive as they are
// until the data path syncs them through the file system.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { NodeFileSystem, type FileSystem } from '../../src/io/file-system.js';
import { MemoryFileSystem, SimulatedCrash } from '../../src/io/memory-file-system.js';

interface Twin {
  name: string;
  make: () => { fs: FileSystem; root: string; done: () => void };
}

const twins: Twin[] = [
  {
    name: 'NodeFileSystem',
    make: () => {
      const root = fs.mkdtempSync(path.join(os.tmpdir(), 'blockmirror-fs-'));
      return { fs: new NodeFileSystem(), root, done: () => fs.rmSync(root, { recursive: true, force: true }) };
    },
  },
  {
    name: 'MemoryFileSystem',
    make: () => {
      const memory = new MemoryFileSystem();
      memory.mkdir('/root');
      return { fs: memory, root: '/root', done: () => memory.dispose() };
    },
  },
];

function codeOf(run: () => unknown): string | undefined {
  try {
    run();
  } catch (error) {
    return (error as { code?: string }).code;
  }
  return undefined;
}

function writeFile(system: FileSystem, file: string, text: string): void {
  const fd = system.create(file);
  system.write(fd, Buffer.from(text), 0);
  system.syncData(fd);
  system.close(fd);
}

for (const twin of twins) {
  describe(`FileSystem: ${twin.name}`, () => {
    const made: (() => void)[] = [];
    after(() => made.forEach((done) => done()));
    const setup = (): { fs: FileSystem; root: string } => {
      const { fs: system, root, done } = twin.make();
      made.push(done);
      return { fs: system, root };
    };

    test('a file is created, written, read back, and its size and kind are reported', () => {
      const { fs: system, root } = setup();
      const file = path.join(root, 'a');
      assert.equal(system.stat(file), null);
      const fd = system.create(file);
      system.write(fd, Buffer.from('hello world'), 0);
      system.write(fd, Buffer.from('HELLO'), 0);
      system.syncData(fd);
      system.close(fd);
      assert.equal(system.readFile(file).toString(), 'HELLO world');
      assert.deepEqual(system.stat(file), { kind: 'file', sizeBytes: 11 });
      assert.deepEqual(system.stat(root), { kind: 'directory', sizeBytes: system.stat(root)?.sizeBytes });
      // create() empties an existing file.
      system.close(system.create(file));
      assert.equal(system.readFile(file).length, 0);
    });

    test('truncate grows a file with zeroes; open(writable) gives a descriptor the data path writes through', () => {
      const { fs: system, root } = setup();
      const file = path.join(root, 'image');
      const fd = system.create(file);
      system.truncate(fd, 8192);
      system.close(fd);
      assert.deepEqual(system.readFile(file), Buffer.alloc(8192));
      const data = system.open(file, true);
      fs.writeSync(data, Buffer.from('xyz'), 0, 3, 4096);
      const back = Buffer.alloc(3);
      fs.readSync(data, back, 0, 3, 4096);
      system.close(data);
      assert.equal(back.toString(), 'xyz');
      assert.equal(system.readFile(file).subarray(4096, 4099).toString(), 'xyz');
      const readOnly = system.open(file, false);
      assert.equal(fs.fstatSync(readOnly).size, 8192);
      system.close(readOnly);
    });

    test('directories: made, listed sorted, removed when empty; the calls that must fail say why', () => {
      const { fs: system, root } = setup();
      const dir = path.join(root, 'd');
      system.mkdir(dir);
      assert.equal(codeOf(() => system.mkdir(dir)), 'EEXIST');
      assert.equal(codeOf(() => system.mkdir(path.join(root, 'missing', 'x'))), 'ENOENT');
      writeFile(system, path.join(dir, 'b'), 'b');
      writeFile(system, path.join(dir, 'a'), 'a');
      system.syncDir(dir);
      assert.deepEqual(system.readdir(dir), ['a', 'b']);
      assert.equal(codeOf(() => system.rmdir(dir)), 'ENOTEMPTY');
      assert.equal(codeOf(() => system.unlink(dir)), 'EISDIR');
      assert.equal(codeOf(() => system.rmdir(path.join(dir, 'a'))), 'ENOTDIR');
      assert.equal(codeOf(() => system.readFile(dir)), 'EISDIR');
      assert.equal(codeOf(() => system.readFile(path.join(root, 'none'))), 'ENOENT');
      assert.equal(codeOf(() => system.readdir(path.join(root, 'none'))), 'ENOENT');
      assert.equal(codeOf(() => system.open(path.join(root, 'none'), false)), 'ENOENT');
      assert.equal(codeOf(() => system.unlink(path.join(root, 'none'))), 'ENOENT');
      assert.equal(system.stat(path.join(dir, 'a', 'below')), null);
      system.unlink(path.join(dir, 'a'));
      system.unlink(path.join(dir, 'b'));
      system.rmdir(dir);
      assert.equal(system.stat(dir), null);
      assert.deepEqual(system.readdir(root), []);
    });

    test('rename: replaces a file, moves a directory onto an empty one, and refuses a full one', () => {
      const { fs: system, root } = setup();
      writeFile(system, path.join(root, 'new'), 'new');
      writeFile(system, path.join(root, 'old'), 'old');
      system.rename(path.join(root, 'new'), path.join(root, 'old'));
      assert.equal(system.readFile(path.join(root, 'old')).toString(), 'new');
      assert.equal(system.stat(path.join(root, 'new')), null);
      assert.equal(codeOf(() => system.rename(path.join(root, 'none'), path.join(root, 'x'))), 'ENOENT');
      const a = path.join(root, 'a');
      const b = path.join(root, 'b');
      system.mkdir(a);
      writeFile(system, path.join(a, 'inside'), 'inside');
      system.mkdir(b);
      system.rename(a, b);
      assert.equal(system.readFile(path.join(b, 'inside')).toString(), 'inside');
      system.mkdir(a);
      writeFile(system, path.join(a, 'other'), 'other');
      assert.equal(codeOf(() => system.rename(a, b)), 'ENOTEMPTY');
      assert.equal(codeOf(() => system.rename(path.join(root, 'old'), b)), 'EISDIR');
      assert.equal(codeOf(() => system.rename(a, path.join(root, 'old'))), 'ENOTDIR');
    });

    test('the async syncs resolve', async () => {
      const { fs: system, root } = setup();
      const fd = system.create(path.join(root, 'f'));
      system.write(fd, Buffer.from('x'), 0);
      await system.syncDataAsync(fd);
      system.close(fd);
      await system.syncDirAsync(root);
      assert.equal(system.readFile(path.join(root, 'f')).toString(), 'x');
    });
  });
}

describe('MemoryFileSystem: what a crash leaves', () => {
  const all = (): boolean => true;
  const none = (): boolean => false;

  function fresh(): MemoryFileSystem {
    const memory = new MemoryFileSystem();
    memory.mkdir('/d');
    memory.syncDir('/');
    return memory;
  }

  test('bytes written but not synced come back as before or as written; synced ones always', () => {
    const memory = fresh();
    writeFile(memory, '/d/f', 'one');
    memory.syncDir('/d');
    const fd = memory.open('/d/f', false);
    memory.close(fd);
    const rewrite = memory.create('/d/f');
    memory.write(rewrite, Buffer.from('two'), 0);
    memory.close(rewrite);
    assert.deepEqual(memory.crashChanges(), ['bytes of /d/f']);
    const kept = memory.afterCrash(all);
    const lost = memory.afterCrash(none);
    assert.equal(kept.readFile('/d/f').toString(), 'two');
    assert.equal(lost.readFile('/d/f').toString(), 'one');
    // After a crash everything is durable: a second crash changes nothing.
    assert.deepEqual(lost.crashChanges(), []);
    for (const memoryFs of [memory, kept, lost]) memoryFs.dispose();
  });

  test('a name is durable only once its directory is synced (a file sync is not enough)', () => {
    const memory = fresh();
    writeFile(memory, '/d/f', 'data');
    assert.deepEqual(memory.crashChanges(), ['create /d/f']);
    const lost = memory.afterCrash(none);
    assert.equal(lost.stat('/d/f'), null);
    memory.syncDir('/d');
    assert.deepEqual(memory.crashChanges(), []);
    const kept = memory.afterCrash(none);
    assert.equal(kept.readFile('/d/f').toString(), 'data');
    for (const memoryFs of [memory, lost, kept]) memoryFs.dispose();
  });

  test('a rename not yet durable leaves the old name or the new one, never both and never neither', () => {
    const memory = fresh();
    writeFile(memory, '/d/old', 'old');
    writeFile(memory, '/d/new.tmp', 'new');
    memory.syncDir('/d');
    memory.rename('/d/new.tmp', '/d/old');
    assert.deepEqual(memory.crashChanges(), ['rename /d/new.tmp to /d/old']);
    const before = memory.afterCrash(none);
    const afterRename = memory.afterCrash(all);
    assert.equal(before.readFile('/d/old').toString(), 'old');
    assert.equal(before.readFile('/d/new.tmp').toString(), 'new');
    assert.equal(afterRename.readFile('/d/old').toString(), 'new');
    assert.equal(afterRename.stat('/d/new.tmp'), null);
    for (const memoryFs of [memory, before, afterRename]) memoryFs.dispose();
  });

  test('changes kept out of order are applied only where they still fit: a rename of a name never made is dropped', () => {
    const memory = fresh();
    writeFile(memory, '/d/a', 'a');
    memory.rename('/d/a', '/d/b');
    memory.rename('/d/b', '/d/c');
    // Keep only the second rename: /d/b never existed in that state, so nothing moves.
    const odd = memory.afterCrash((index) => index === 2);
    assert.deepEqual(odd.readdir('/d'), []);
    const prefix = memory.afterCrash((index) => index <= 1);
    assert.deepEqual(prefix.readdir('/d'), ['b']);
    for (const memoryFs of [memory, odd, prefix]) memoryFs.dispose();
  });

  test('a directory sync makes the renames into and out of it durable', () => {
    const memory = fresh();
    memory.mkdir('/e');
    memory.syncDir('/');
    writeFile(memory, '/d/f', 'f');
    memory.syncDir('/d');
    memory.rename('/d/f', '/e/f');
    memory.syncDir('/e');
    assert.deepEqual(memory.crashChanges(), []);
    const after = memory.afterCrash(none);
    assert.deepEqual(after.readdir('/d'), []);
    assert.equal(after.readFile('/e/f').toString(), 'f');
    for (const memoryFs of [memory, after]) memoryFs.dispose();
  });

  test('the data path\'s files keep the bytes they had at the crash, until they are synced through the file system', () => {
    const memory = fresh();
    writeFile(memory, '/d/image', 'zzzz');
    memory.syncDir('/d');
    const fd = memory.open('/d/image', true);
    fs.writeSync(fd, Buffer.from('ab'), 0, 2, 0);
    assert.deepEqual(memory.crashChanges(), [], 'the data path\'s bytes are not a choice');
    const after = memory.afterCrash(none);
    assert.equal(after.readFile('/d/image').toString(), 'abzz');
    // Once the data path makes the file durable through the file system (the image at a
    // consistency point), what it writes after is a choice again, until the next sync.
    memory.syncData(fd);
    fs.writeSync(fd, Buffer.from('cd'), 0, 2, 2);
    assert.deepEqual(memory.crashChanges(), ['bytes of /d/image']);
    const lost = memory.afterCrash(none);
    const kept = memory.afterCrash(all);
    assert.equal(lost.readFile('/d/image').toString(), 'abzz');
    assert.equal(kept.readFile('/d/image').toString(), 'abcd');
    memory.close(fd);
    for (const memoryFs of [memory, after, lost, kept]) memoryFs.dispose();
  });

  test('the world stops right after the Nth mutation: the state is the one after it, every later call throws', () => {
    const memory = fresh();
    const start = memory.mutations;
    memory.stopAfter(start + 3);
    const fd = memory.create('/d/f');
    memory.write(fd, Buffer.from('x'), 0);
    assert.throws(() => memory.syncData(fd), SimulatedCrash);
    assert.ok(memory.crashed);
    assert.throws(() => memory.readFile('/d/f'), SimulatedCrash);
    assert.throws(() => memory.mkdir('/d/g'), SimulatedCrash);
    memory.close(fd);
    assert.equal(memory.mutations, start + 3);
    assert.deepEqual(memory.crashChanges(), ['create /d/f']);
    const kept = memory.afterCrash(all);
    assert.equal(kept.readFile('/d/f').toString(), 'x', 'the sync happened before the world stopped');
    assert.deepEqual(
      memory.history.slice(-3),
      ['create /d/f', 'write 1 bytes at 0 of /d/f', 'sync /d/f'],
    );
    for (const memoryFs of [memory, kept]) memoryFs.dispose();
  });
});
