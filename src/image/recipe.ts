// Image recipes (images/<name>.yaml), parsed once into a validated ImageRecipe.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { InputError } from '../util/errors.ts';
import { quoteForTerminal } from '../util/text.ts';
import { parseYamlWith, readYamlFile, YamlError } from '../util/yaml.ts';

export interface ImageRecipe {
  name: string;
  file: string;
  description: string;
  suite: string;
  mirror: string;
  variant: 'minbase' | 'buildd';
  packages: string[];
}

const schema = z
  .object({
    description: z.string().default(''),
    suite: z.string().regex(/^[a-z][a-z0-9-]*$/, 'a Debian suite name such as bookworm'),
    mirror: z.string().url().default('http://deb.debian.org/debian'),
    variant: z.enum(['minbase', 'buildd']).default('minbase'),
    packages: z.array(z.string().max(100).regex(/^[a-z0-9][a-z0-9+.-]+$/, 'a Debian package name')).max(500).default([]),
  })
  .strict();

/** Packages hwlab's init, session and probe runner cannot work without. */
export const REQUIRED_PACKAGES = ['openssh-server', 'nodejs', 'kmod', 'iproute2', 'busybox-static'];

export function imagesDir(): string {
  return path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../images');
}

export async function loadImageRecipe(name: string, dir = imagesDir()): Promise<ImageRecipe> {
  const file = name.endsWith('.yaml') ? path.resolve(name) : path.join(dir, `${name}.yaml`);
  if (!existsSync(file)) throw new InputError(`image recipe ${quoteForTerminal(name)}: ${file} does not exist`, `recipes live in ${dir}`, 'no-image-recipe');
  const data = parseYamlWith(await readYamlFile(file, 'image recipe'), file, schema, 'image recipe');
  const missing = REQUIRED_PACKAGES.filter((p) => !data.packages.includes(p));
  if (missing.length) {
    throw new YamlError([{ file, line: 1, col: 1, path: 'packages', message: `must include ${missing.join(', ')} (hwlab's guest init and probes need them)` }]);
  }
  return { name: path.basename(file, '.yaml'), file, ...data };
}
