// Per-run options that change what gets built are refused where they cannot apply,
// before anything is fetched or built.
import test from 'ava';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadLab } from '../../src/lab/load.ts';
import { prepareLab } from '../../src/run/prepare.ts';
import { silentProgress } from '../../src/util/progress.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

test('--fragment on a prebuilt Debian kernel is refused, naming the lab and the package', async (t) => {
  const lab = await loadLab(path.join(repo, 'test/fixtures/labs/shorthand.yaml'));
  t.is(lab.kernel.kind, 'debian-prebuilt');
  const err = await t.throwsAsync(prepareLab(lab, { progress: silentProgress(), extraFragments: [path.join(repo, 'labs/configs/kasan.config')] }, repo));
  t.regex(err!.message, /--fragment needs a kernel built from source; .*shorthand\.yaml uses the prebuilt linux-image-7\.2/);
});
