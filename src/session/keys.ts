// hwlab's own SSH identity for guests: generated once into the cache, never
// a user's key. Guests accept only this key; hwlab accepts only the host key
// recorded when the image was built.
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile, chmod } from 'node:fs/promises';
import path from 'node:path';
import ssh2 from 'ssh2';
import { cacheRoot } from '../util/cache.ts';

export interface HwlabKey {
  privateKey: string;
  /** OpenSSH public key line. */
  publicKey: string;
}

/** The private key file, for an ssh a person runs (`hwlab ssh`, the printed command). */
export function hwlabKeyFile(): string {
  return path.join(cacheRoot(), 'ssh', 'id_ed25519');
}

export async function ensureHwlabKey(): Promise<HwlabKey> {
  const priv = hwlabKeyFile();
  const dir = path.dirname(priv);
  const pub = `${priv}.pub`;
  if (!existsSync(priv) || !existsSync(pub)) {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const pair = ssh2.utils.generateKeyPairSync('ed25519', { comment: 'hwlab' });
    await writeFile(`${priv}.tmp`, pair.private, { mode: 0o600 });
    await writeFile(pub, `${pair.public}\n`);
    // rename last: a half-written key is never picked up
    const { rename } = await import('node:fs/promises');
    await rename(`${priv}.tmp`, priv);
  }
  await chmod(priv, 0o600);
  return { privateKey: await readFile(priv, 'utf8'), publicKey: (await readFile(pub, 'utf8')).trim() };
}
