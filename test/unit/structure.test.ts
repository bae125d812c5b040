// The shape of the import graph under src/: no cycles (type-only and dynamic
// imports count, since a cycle of either still ties the stages together), and
// nothing outside src/cli imports src/cli (the command line sits on top of
// everything; a stage that needs something from it means that thing belongs
// in a stage or in src/util). The checks are tested on tiny synthetic file
// sets first, so that a check that can never fail does not pass unnoticed.
// Also: the in-guest probe bundle holds no host-only code (zod, the lab
// parser), though the guest imports the table of endpoint kinds from src/lab.
import test from 'ava';
import * as esbuild from 'esbuild';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** File (repo-relative, posix) -> its text. */
type Files = Record<string, string>;
/** File -> the files it imports, among those given. */
type Graph = Map<string, string[]>;

function sourceFiles(dir: string): Files {
  const out: Files = {};
  const walk = (d: string) => {
    for (const e of readdirSync(path.join(repo, d), { withFileTypes: true })) {
      const rel = path.posix.join(d, e.name);
      if (e.isDirectory()) walk(rel);
      else if (/\.(ts|js|mjs|cjs)$/.test(e.name)) out[rel] = readFileSync(path.join(repo, rel), 'utf8');
    }
  };
  walk(dir);
  return out;
}

/**
 * Every relative import of every file, resolved among `files`: static,
 * `import type`, `export ... from`, side-effect and `import(...)` (the
 * TypeScript scanner ignores comments and strings).
 */
function importGraph(files: Files): Graph {
  const graph: Graph = new Map();
  for (const [file, text] of Object.entries(files)) {
    const targets = new Set<string>();
    for (const { fileName } of ts.preProcessFile(text, true, true).importedFiles) {
      if (!fileName.startsWith('.')) continue; // packages and node: builtins
      const base = path.posix.normalize(path.posix.join(path.posix.dirname(file), fileName));
      const found = [base, `${base}.ts`, `${base}.js`, `${base}/index.ts`].find((f) => f in files);
      if (found) targets.add(found);
    }
    graph.set(file, [...targets].sort());
  }
  return graph;
}

/** One cycle per strongly connected component with more than one file (or a file importing itself), as a path a -> b -> ... -> a. */
function findCycles(graph: Graph): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  let next = 0;
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) !== index.get(v)) return;
    const scc: string[] = [];
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      scc.push(w);
    } while (w !== v);
    if (scc.length > 1 || (graph.get(v) ?? []).includes(v)) cycles.push(cycleThrough(graph, new Set(scc), v));
  };
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) visit(v);
  return cycles;
}

/** A shortest path from `start` back to itself inside one component (breadth first), for the message. */
function cycleThrough(graph: Graph, scc: Set<string>, start: string): string[] {
  const prev = new Map<string, string>();
  const queue = [start];
  while (queue.length) {
    const v = queue.shift()!;
    for (const w of graph.get(v) ?? []) {
      if (!scc.has(w)) continue;
      if (w === start) {
        const p = [v];
        while (p[0] !== start) p.unshift(prev.get(p[0])!);
        return [...p, start];
      }
      if (!prev.has(w)) {
        prev.set(w, v);
        queue.push(w);
      }
    }
  }
  return [start];
}

/** Imports of src/cli/ from files outside it, as `from -> to`. */
function cliImports(graph: Graph): string[] {
  const out: string[] = [];
  for (const [from, tos] of graph) {
    if (from.startsWith('src/cli/')) continue;
    for (const to of tos) if (to.startsWith('src/cli/')) out.push(`${from} -> ${to}`);
  }
  return out;
}

test('the cycle check finds cycles through type-only, re-export and dynamic imports', (t) => {
  const files: Files = {
    'src/a/one.ts': "import type { Two } from '../b/two.ts';\nexport const one = 1;\n",
    'src/b/two.ts': "export { three } from './three.ts';\nexport type Two = number;\n",
    // A dynamic import closes the loop; the commented and quoted ones must not count.
    'src/b/three.ts': "// import('./four.ts')\nconst s = \"import('./four.ts')\";\nexport const three = async () => (await import('../a/one.ts')).one;\n",
    'src/b/four.ts': "import './four.ts';\n",
    'src/c/leaf.ts': "import { one } from '../a/one.ts';\nimport { z } from 'zod';\n",
  };
  const cycles = findCycles(importGraph(files));
  t.deepEqual(cycles.map((c) => c.join(' -> ')).sort(), [
    'src/a/one.ts -> src/b/two.ts -> src/b/three.ts -> src/a/one.ts',
    'src/b/four.ts -> src/b/four.ts',
  ]);
  // Break the dynamic import and only the self-import is left.
  files['src/b/three.ts'] = 'export const three = 3;\n';
  t.deepEqual(findCycles(importGraph(files)), [['src/b/four.ts', 'src/b/four.ts']]);
});

test('the src/cli check finds a stage importing the command line', (t) => {
  const graph = importGraph({
    'src/cli/main.ts': "import { run } from '../run/run.ts';\nimport { doc } from './doctor.ts';\n",
    'src/cli/doctor.ts': 'export const doc = 1;\n',
    'src/run/run.ts': "import type { doc } from '../cli/doctor.ts';\nexport const run = 1;\n",
  });
  t.deepEqual(cliImports(graph), ['src/run/run.ts -> src/cli/doctor.ts']);
});

test('src/: no import cycles', (t) => {
  const graph = importGraph(sourceFiles('src'));
  t.true(graph.size > 50, 'the walk found the sources');
  t.true([...graph.values()].some((tos) => tos.length > 0), 'imports are resolved');
  t.deepEqual(findCycles(graph).map((c) => c.join(' -> ')), []);
});

test('src/: only src/cli imports src/cli', (t) => {
  t.deepEqual(cliImports(importGraph(sourceFiles('src'))), []);
});

test('the in-guest bundle (src/guest/runner.ts) pulls in no zod and no host-only lab code', async (t) => {
  // The same entry and options as src/probes/bundle.ts, without writing the file.
  const r = await esbuild.build({
    entryPoints: [path.join(repo, 'src/guest/runner.ts')], bundle: true, platform: 'node', format: 'cjs', target: 'node18',
    external: ['koffi'], write: false, metafile: true, logLevel: 'silent',
  });
  const inputs = Object.keys(r.metafile.inputs);
  t.true(inputs.some((i) => i.endsWith('src/lab/endpoints.ts')), 'the table of endpoint kinds is in (the guest needs its facts)');
  t.deepEqual(inputs.filter((i) => /node_modules\/zod\/|src\/lab\/(schema|checks|load|slots)\.ts$|src\/util\/yaml\.ts$|src\/cli\//.test(i)), []);
});
