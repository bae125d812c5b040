// The bad inputs of issue 16 (lab files, image recipes, matrix files, patches
// and fragments), each refused with one located message and no stack trace,
// before anything is downloaded or built. The messages are the ones the
// closing note lists.
import test from 'ava';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadImageRecipe } from '../../src/image/recipe.ts';
import { loadLab, parseLab } from '../../src/lab/load.ts';
import { loadMatrix } from '../../src/matrix/load.ts';
import { FakeBackend } from '../../src/machine/fake.ts';
import { runLab } from '../../src/run/run-lab.ts';
import { InputError } from '../../src/util/errors.ts';
import { Progress } from '../../src/util/progress.ts';
import { escapeForTerminal, quoteForTerminal } from '../../src/util/text.ts';
import { YamlError } from '../../src/util/yaml.ts';
import { tempDir } from './helpers/temp.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const MINIMAL = 'kernel: { debian: linux-image-7.2 }\nimage: bookworm\n';
const SOURCE = 'kernel: { debian: linux-source-7.2 }\nimage: bookworm\n';
const HOST_24G = { hostMemoryMiB: 24 * 1024 };

async function scratch(): Promise<string> {
  return tempDir('hwlab-bad-input-');
}

function refusal(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof YamlError) return e.message;
    throw e;
  }
  throw new Error('expected a YamlError, the lab was accepted');
}

async function refusalOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof InputError) return e.message;
    throw e;
  }
  throw new Error('expected an InputError, the input was accepted');
}

const lab = (text: string) => parseLab(text, 'labs/x.yaml', HOST_24G);

test('an alias bomb is refused at its place, not with a ReferenceError', (t) => {
  const bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]'];
  for (let i = 1; i < 9; i++) bomb.push(`${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${Array(9).fill(`*${String.fromCharCode(96 + i)}`).join(',')}]`);
  const msg = refusal(() => lab(`${MINIMAL}${bomb.join('\n')}\ndescription: *i\n`));
  t.is(msg, 'labs/x.yaml:1:1: aliases expand too far (73 aliases; at most 100 expansions): not a lab-sized document');
  t.is(refusal(() => lab(`${MINIMAL}description: *nowhere\n`)), 'labs/x.yaml:1:1: bad alias: Unresolved alias (the anchor must be set before the alias): nowhere');
});

test('a 5 MB lab is refused by size; 100,000 probes by count, before any is checked', async (t) => {
  const dir = await scratch();
  const big = path.join(dir, 'big.yaml');
  await writeFile(big, `${MINIMAL}probes:\n${'  - dmabuf-export\n'.repeat(300_000)}`);
  t.regex((await t.throwsAsync(loadLab(big), { instanceOf: YamlError })).message,
    /big\.yaml:1:1: not a lab file: \d+ bytes, more than the 131072 a file may have$/);
  t.is(refusal(() => lab(`${MINIMAL}probes: [${Array(50_000).fill('x').join(',')}]\n`)),
    'labs/x.yaml:3:9: probes: must have at most 256 entries (got 50000)');
});

test('100k-character ids and names are refused, quoted short', (t) => {
  const long = 'a'.repeat(100_000);
  const msg = refusal(() => lab(`name: ${long}\n${MINIMAL}topology:\n  root_ports: [rp0]\n  endpoints: [{ id: ${long}, type: edu, port: rp0 }]\n`));
  t.true(msg.length < 1000);
  t.regex(msg, /^labs\/x\.yaml:1:7: name: must be at most 64 characters \(got 100000: "a{80}\.\.\." \(100000 characters\)\)$/m);
  t.regex(msg, /labs\/x\.yaml:6:21: topology\.endpoints\[0\]\.id: must be at most 32 characters/);
});

test('memory beyond the host, and beyond any number, is refused with the numbers', (t) => {
  t.is(refusal(() => lab(`${MINIMAL}machine: { memory: 1024G }\n`)),
    "labs/x.yaml:3:20: machine.memory: 1048576M does not fit in this host's 24576M of RAM less 1024M for the host (at most 23552M)");
  t.is(refusal(() => lab(`${MINIMAL}machine: { memory: 99999999999999999999G }\n`)),
    'labs/x.yaml:3:20: machine.memory: must be at most 1048576M (got "99999999999999999999G")');
  t.is(refusal(() => lab(`${MINIMAL}machine: { memory: 20G }\ntopology:\n  root_ports: [rp0]\n  endpoints: [{ id: shm0, type: ivshmem-plain, port: rp0, memory: 4096M }]\n`)),
    "labs/x.yaml:3:20: machine.memory: 20480M plus 4096M of endpoint memory does not fit in this host's 24576M of RAM less 1024M for the host (at most 19456M)");
});

test('infinite and absurd timeouts are refused (Node would clamp them to 1 ms)', (t) => {
  t.is(refusal(() => lab(`${MINIMAL}timeouts: { probe: .inf, boot: 3000000 }\n`)),
    'labs/x.yaml:3:20: timeouts.probe: must be at most 86400 (got Infinity)\nlabs/x.yaml:3:32: timeouts.boot: must be at most 86400 (got 3000000)');
  t.is(refusal(() => lab(`${MINIMAL}probes: [{ name: dmabuf-export, timeout: 3000000 }]\n`)),
    'labs/x.yaml:3:42: probes[0].timeout: must be at most 86400 (got 3000000)');
});

test('a patch path that is a directory, and a fragment that is one, are refused at their place', (t) => {
  const dir = path.join(repo, 'labs');
  t.is(refusal(() => parseLab(`kernel: { debian: linux-source-7.2, patches: [configs], config: { fragments: [mutants] } }\nimage: bookworm\n`, path.join(dir, 'x.yaml'), HOST_24G)),
    [`${path.join(dir, 'x.yaml')}:1:47: kernel.patches[0]: ${path.join(dir, 'configs')} is a directory; expected a file`,
      `${path.join(dir, 'x.yaml')}:1:79: kernel.config.fragments[0]: ${path.join(dir, 'mutants')} is a directory; expected a file`].join('\n'));
});

test('a CPU model with shell characters is refused', (t) => {
  t.is(refusal(() => lab(`${MINIMAL}machine: { cpu: "EPYC;rm -rf /" }\n`)),
    'labs/x.yaml:3:17: machine.cpu: must be a QEMU CPU model such as EPYC or Skylake-Server, optionally with ,+feature or ,-feature (got "EPYC;rm -rf /")');
  t.notThrows(() => lab(`${MINIMAL}machine: { cpu: "EPYC,+x2apic,-svm" }\n`));
});

test('duplicate keys name the key and its first occurrence', (t) => {
  t.is(refusal(() => lab(`${MINIMAL}machine:\n  smp: 2\n  memory: 1G\n  smp: 4\n`)),
    'labs/x.yaml:6:3: machine.smp: duplicate key "smp" (first at line 4, column 3)');
});

test('non-YAML and binary files are "not a lab file"', async (t) => {
  const dir = await scratch();
  const bin = path.join(dir, 'bin.yaml');
  await writeFile(bin, Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00, 0x00]));
  t.is((await t.throwsAsync(loadLab(bin), { instanceOf: YamlError })).message, `${bin}:1:1: not a lab file: binary content (a NUL byte at offset 7)`);
  const latin1 = path.join(dir, 'latin1.yaml');
  await writeFile(latin1, Buffer.from('description: caf\xe9\n', 'latin1'));
  t.is((await t.throwsAsync(loadLab(latin1), { instanceOf: YamlError })).message, `${latin1}:1:1: not a lab file: not UTF-8 text`);
  t.is(refusal(() => lab('just some words\n')), 'labs/x.yaml:1:1: not a lab file: expected a map of keys (got "just some words")');
  t.is(refusal(() => lab('int main(void) {\n  return 0;\n}\n')), 'labs/x.yaml:1:1: not a lab file: expected a map of keys (got "int main(void) { return 0; }")');
  t.is((await t.throwsAsync(loadLab(dir), { instanceOf: YamlError })).message, `${dir}:1:1: not a lab file: it is a directory`);
});

test('control and bidi characters are escaped in messages', (t) => {
  const msg = refusal(() => lab(`${MINIMAL}machine: { accel: "fast\\u202e\\u001b[2Jtcg" }\n`));
  t.is(msg, 'labs/x.yaml:3:19: machine.accel: must be one of auto, kvm, tcg (got "fast\\u{202e}\\u001b[2Jtcg")');
  t.false(/[\u0000-\u0008\u000b-\u001f\u202e]/.test(msg));
  t.is(escapeForTerminal('a\u202eb\u0007c\nd'), 'a\\u{202e}b\\u{0007}c\nd');
  t.is(quoteForTerminal('shm0\u0430'), '"shm0\\u{0430}"');
});

test('a valid lab outside labs/ is accepted, with hwlab\'s image recipes', async (t) => {
  const dir = await scratch();
  const file = path.join(dir, 'mine.yaml');
  await writeFile(file, MINIMAL);
  const l = await loadLab(file, HOST_24G);
  t.is(l.image, 'bookworm');
  t.is(l.name, 'mine');
});

test('--patch and --fragment naming missing files, directories or garbage stop the run before its folder exists', async (t) => {
  const dir = await scratch();
  const runsDir = path.join(dir, 'runs');
  const garbage = path.join(dir, 'garbage.config');
  await writeFile(garbage, 'CONFIG_VFIO=y\nthis is not kconfig\n\u0001\u0002binary-ish\n');
  const notPatch = path.join(dir, 'notes.patch');
  await writeFile(notPatch, 'just notes, no diff\n');
  const spec = parseLab(SOURCE, path.join(repo, 'labs', 'x.yaml'), HOST_24G);
  const msg = await refusalOf(runLab(spec, {
    progress: new Progress(), runsDir, backend: new FakeBackend({} as never),
    extraPatches: [path.join(dir, 'missing.patch'), dir, notPatch],
    extraFragments: [garbage, path.join(dir, 'missing.config')],
  }));
  t.is(msg, [
    `--patch: patch: ${path.join(dir, 'missing.patch')} does not exist`,
    `--patch: patch: ${dir} is not a file`,
    `--patch: patch ${notPatch}: no diff found in it (is it a patch?)`,
    `--fragment ${path.join(dir, 'missing.config')} does not exist`,
    'kernel config fragments have lines kconfig would ignore:',
    `  ${garbage}:2: not a config line: this is not kconfig`,
    `  ${garbage}:3: not a config line: \\u{0001}\\u{0002}binary-ish`,
  ].join('\n'));
  t.false(existsSync(runsDir), 'no run folder');
});

test('image recipes and matrix files get the same checks', async (t) => {
  const dir = await scratch();
  await mkdir(path.join(dir, 'images'));
  await writeFile(path.join(dir, 'images', 'bin.yaml'), Buffer.from([1, 2, 0, 3]));
  t.is((await t.throwsAsync(loadImageRecipe('bin', path.join(dir, 'images')), { instanceOf: YamlError })).message,
    `${path.join(dir, 'images', 'bin.yaml')}:1:1: not an image recipe file: binary content (a NUL byte at offset 2)`);
  await writeFile(path.join(dir, 'images', 'dup.yaml'), 'suite: bookworm\nsuite: sid\n');
  t.is((await t.throwsAsync(loadImageRecipe('dup', path.join(dir, 'images')), { instanceOf: YamlError })).message,
    `${path.join(dir, 'images', 'dup.yaml')}:2:1: suite: duplicate key "suite" (first at line 1, column 1)`);
  const m = path.join(dir, 'm.yaml');
  await writeFile(m, `a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n`);
  t.regex((await t.throwsAsync(loadMatrix(m), { instanceOf: YamlError })).message, /m\.yaml:1:1: aliases expand too far \(30 aliases; at most 100 expansions\)/);
  t.deepEqual(await readdir(dir), ['images', 'm.yaml']);
});
