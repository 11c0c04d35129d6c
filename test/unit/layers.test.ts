// The layers of src/ (docs/architecture.md) and the rule between them: a module imports
// only from its own layer or from a lower one, and no chain of imports, type-only ones
// included, leads back to where it started. Read from the sources, so a new upward
// import or circle fails here before anyone has to find it by hand.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const here = path.dirname(fileURLToPath(import.meta.url));
/** dist/test/unit -> the repository's src/. */
const srcDir = path.resolve(here, '../../../src');

/** Lower numbers are lower layers; a layer may import from lower ones only (and itself). */
const layerRanks: Record<string, number> = {
  lib: 0,
  'constants.ts': 1,
  protocol: 2,
  core: 3,
  io: 3,
  control: 3,
  storage: 4,
  server: 5,
  cli: 6,
};

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return sources(full);
    return entry.name.endsWith('.ts') ? [full] : [];
  });
}

function layerOf(file: string): string {
  const top = path.relative(srcDir, file).split(path.sep)[0] ?? '';
  assert.ok(top in layerRanks, `${path.relative(srcDir, file)} is in no known layer: add its directory to layerRanks`);
  return top;
}

/** The src/ files `file` imports (relative imports, type-only ones too). */
function importsOf(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  const found: string[] = [];
  for (const match of text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+'(\.[^']+)'/g)) {
    const target = path.resolve(path.dirname(file), (match[1] ?? '').replace(/\.js$/, '.ts'));
    found.push(target);
  }
  return found;
}

const files = sources(srcDir);
const graph = new Map(files.map((file) => [file, importsOf(file)]));

test('every module of src/ imports only from its own layer or lower ones', () => {
  const upward: string[] = [];
  for (const [file, targets] of graph) {
    const from = layerOf(file);
    for (const target of targets) {
      const to = layerOf(target);
      if (to !== from && (layerRanks[to] ?? 0) >= (layerRanks[from] ?? 0)) {
        upward.push(`${path.relative(srcDir, file)} (${from}) imports ${path.relative(srcDir, target)} (${to})`);
      }
    }
  }
  assert.deepEqual(upward, [], `imports that go up or sideways:\n${upward.join('\n')}`);
});

test('no import circle in src/', () => {
  // Tarjan's strongly connected components: any of more than one file is a circle.
  let index = 0;
  const indices = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const circles: string[][] = [];
  const visit = (file: string): void => {
    indices.set(file, index);
    low.set(file, index);
    index += 1;
    stack.push(file);
    onStack.add(file);
    for (const target of graph.get(file) ?? []) {
      if (!graph.has(target)) continue;
      if (!indices.has(target)) {
        visit(target);
        low.set(file, Math.min(low.get(file) ?? 0, low.get(target) ?? 0));
      } else if (onStack.has(target)) {
        low.set(file, Math.min(low.get(file) ?? 0, indices.get(target) ?? 0));
      }
    }
    if (low.get(file) === indices.get(file)) {
      const component: string[] = [];
      for (let member = stack.pop(); member !== undefined; member = stack.pop()) {
        onStack.delete(member);
        component.push(path.relative(srcDir, member));
        if (member === file) break;
      }
      if (component.length > 1) circles.push(component.sort());
    }
  };
  for (const file of files) if (!indices.has(file)) visit(file);
  assert.deepEqual(circles, [], `import circles:\n${circles.map((circle) => circle.join(' -> ')).join('\n')}`);
});

test('the layer map knows every file it checks (the check is not empty)', () => {
  assert.ok(files.length > 50, `${files.length} files read from ${srcDir}`);
  const edges = [...graph.values()].reduce((sum, targets) => sum + targets.length, 0);
  assert.ok(edges > 100, `${edges} imports read`);
});

// A file over this many lines says at its top (in its opening comment) why it is one file.
const linesWithoutReasonMax = 500;

test(`a file in src/ over ${linesWithoutReasonMax} lines says at its top why it is one file`, () => {
  const silent: string[] = [];
  for (const file of files) {
    const lines = fs.readFileSync(file, 'utf8').split('\n');
    if (lines.length <= linesWithoutReasonMax) continue;
    const opening = lines.slice(0, lines.findIndex((line) => !line.startsWith('//')));
    if (!opening.some((line) => line.startsWith('// Why one file'))) silent.push(`${path.relative(srcDir, file)} (${lines.length} lines)`);
  }
  assert.deepEqual(silent, [], 'add "// Why one file ..." to the opening comment, or split the file');
});
