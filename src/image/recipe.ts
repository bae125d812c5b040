// Image recipes (images/<name>.yaml), parsed once into a validated ImageRecipe.
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { parseYamlWith } from '../util/yaml.ts';

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
    packages: z.array(z.string().regex(/^[a-z0-9][a-z0-9+.-]+$/, 'a Debian package name')).default([]),
  })
  .strict();

/** Packages hwlab's init, session and probe runner cannot work without. */
export const REQUIRED_PACKAGES = ['openssh-server', 'nodejs', 'kmod', 'iproute2', 'busybox-static'];

export function imagesDir(): string {
  return path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../images');
}

export async function loadImageRecipe(name: string, dir = imagesDir()): Promise<ImageRecipe> {
  const file = name.endsWith('.yaml') ? path.resolve(name) : path.join(dir, `${name}.yaml`);
  if (!existsSync(file)) throw new Error(`image recipe "${name}": ${file} does not exist`);
  const text = await readFile(file, 'utf8');
  const data = parseYamlWith(text, file, schema);
  const missing = REQUIRED_PACKAGES.filter((p) => !data.packages.includes(p));
  if (missing.length) {
    throw new Error(`${file}: packages: must include ${missing.join(', ')} (hwlab's guest init and probes need them)`);
  }
  return { name: path.basename(file, '.yaml'), file, ...data };
}
