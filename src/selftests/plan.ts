// Which kernel selftests a run executes, in order: the lab's `selftests:`
// entries checked against the kernel tree (the collection exists, a named test
// is one of its programs) and expanded (an entry without `test` is every test
// of the collection), each with its timeout and the endpoints it is given.
// Checked twice: against the collection's Makefile before anything is built,
// and against kselftest-list.txt, the list the build installs, after.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { SelftestSpec } from '../lab/types.ts';
import { InputError } from '../util/errors.ts';
import type { CollectionConfig } from './config.ts';

export const SELFTESTS_DIR = 'tools/testing/selftests';

/** One test program to run, with what it is given. */
export interface PlannedSelftest {
  /** 1-based position in the run (the kmsg markers carry it). */
  index: number;
  collection: string;
  test: string;
  /** Endpoint ids whose BDFs go on the test's command line. */
  devices: string[];
  timeoutSec: number;
  expectFail?: string;
  /** The lab entry it came from (file:line:col). */
  at: string;
}

/** The collections a lab's selftests need built, in first-use order. */
export function collectionsOf(specs: readonly SelftestSpec[]): string[] {
  return [...new Set(specs.map((s) => s.collection))];
}

// TEST_PROGS, TEST_GEN_PROGS, TEST_CUSTOM_PROGS are what lib.mk's emit_tests
// lists in kselftest-list.txt (the _EXTENDED and _FILES lists are helpers).
const PROG_VAR = /^\s*(TEST_PROGS|TEST_GEN_PROGS|TEST_CUSTOM_PROGS)\s*(?::=|\+=|=)\s*(.*)$/;

/**
 * Test names a collection's Makefile lists literally (words with make
 * variables or paths are left out); an approximation for the check before
 * building, which kselftest-list.txt confirms after.
 */
export function makefileTestNames(makefile: string): string[] {
  const out: string[] = [];
  const text = makefile.replace(/\\\n/g, ' ');
  for (const line of text.split('\n')) {
    const m = PROG_VAR.exec(line);
    if (!m) continue;
    for (const w of m[2].split(/\s+/)) {
      if (w && !w.includes('$') && !w.startsWith('#')) out.push(path.basename(w));
      if (w.startsWith('#')) break;
    }
  }
  return [...new Set(out)];
}

/**
 * Before building: every collection is a directory of the tree with a
 * Makefile, and a named test is among its programs. Returns each collection's
 * config file (absent for collections without one). Throws one InputError
 * naming every problem at its lab-file location.
 */
export async function checkSelftestsAgainstTree(specs: readonly SelftestSpec[], treeDir: string): Promise<CollectionConfig[]> {
  const problems: string[] = [];
  const configs: CollectionConfig[] = [];
  const names = new Map<string, string[] | null>();
  for (const c of collectionsOf(specs)) {
    const makefile = path.join(treeDir, SELFTESTS_DIR, c, 'Makefile');
    if (!existsSync(makefile)) {
      names.set(c, null);
      continue;
    }
    names.set(c, makefileTestNames(await readFile(makefile, 'utf8')));
    const file = `${SELFTESTS_DIR}/${c}/config`;
    if (existsSync(path.join(treeDir, file))) configs.push({ collection: c, file, text: await readFile(path.join(treeDir, file), 'utf8') });
  }
  for (const s of specs) {
    const known = names.get(s.collection);
    if (known === null) problems.push(`${s.at}: selftests collection "${s.collection}": no ${SELFTESTS_DIR}/${s.collection}/Makefile in the kernel tree`);
    else if (s.test !== undefined && known && known.length && !known.includes(s.test)) {
      problems.push(`${s.at}: "${s.test}" is not a test of the ${s.collection} selftests (its Makefile lists: ${known.join(', ')})`);
    }
  }
  if (problems.length) throw new InputError(problems.join('\n'), undefined, 'bad-selftest');
  return configs;
}

/** kselftest-list.txt (`collection:test` per line) as collection -> tests, in order. */
export function parseKselftestList(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    const c = line.slice(0, i).trim();
    const t = line.slice(i + 1).trim();
    if (!t) continue;
    out.set(c, [...(out.get(c) ?? []), t]);
  }
  return out;
}

/** The lab's entries expanded against the built list, in lab order; unknown tests are an InputError at their entry. */
export function planSelftests(specs: readonly SelftestSpec[], list: Map<string, string[]>): PlannedSelftest[] {
  const out: PlannedSelftest[] = [];
  const problems: string[] = [];
  for (const s of specs) {
    const tests = list.get(s.collection) ?? [];
    if (!tests.length) {
      problems.push(`${s.at}: the ${s.collection} selftests built no test for this architecture and config (nothing in kselftest-list.txt)`);
      continue;
    }
    if (s.test !== undefined && !tests.includes(s.test)) {
      problems.push(`${s.at}: "${s.test}" is not a test of the ${s.collection} selftests (built: ${tests.join(', ')})`);
      continue;
    }
    for (const test of s.test !== undefined ? [s.test] : tests) {
      out.push({
        index: out.length + 1, collection: s.collection, test, devices: [...s.devices], timeoutSec: s.timeoutSec,
        ...(s.expectFail !== undefined ? { expectFail: s.expectFail } : {}), at: s.at,
      });
    }
  }
  if (problems.length) throw new InputError(problems.join('\n'), undefined, 'bad-selftest');
  return out;
}
