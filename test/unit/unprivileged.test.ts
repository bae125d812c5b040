// What an ordinary user needs for runs (src/util/unprivileged.ts): the
// subordinate id ranges mmdebstrap's unshare mode maps the guest onto, and
// user namespaces. Read from files given to the check, so each case is real
// parsing of a real file, not of the host's /etc.
import test from 'ava';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { MIN_SUBORDINATE_IDS, subordinateRange, unprivilegedChecks } from '../../src/util/unprivileged.ts';
import { tempDir } from './helpers/temp.ts';

test('subordinateRange finds the user by name or uid and refuses ranges too small for a Debian guest', (t) => {
  const text = 'alice:100000:65536\n1002:200000:70000\nbob:300000:1000\n';
  t.deepEqual(subordinateRange(text, 'alice', 1001), { start: 100000, count: 65536 });
  t.deepEqual(subordinateRange(text, 'carol', 1002), { start: 200000, count: 70000 }, 'by uid');
  t.is(subordinateRange(text, 'bob', 1003), null, `bob has 1000 ids, fewer than ${MIN_SUBORDINATE_IDS}`);
  t.is(subordinateRange(text, 'dave', 1004), null);
  t.is(subordinateRange('alice:x:65536\n', 'alice', 1001), null, 'a malformed start');
});

test('unprivilegedChecks says what root must do for each missing piece', async (t) => {
  const dir = tempDir('hwlab-unpriv-');
  const f = (name: string, text: string) => writeFile(path.join(dir, name), text).then(() => path.join(dir, name));
  const files = {
    subuid: await f('subuid', 'hwuser:100000:65536\n'),
    subgid: await f('subgid', 'other:100000:65536\n'),
    maxUserNs: await f('max', '0\n'),
    usernsClone: path.join(dir, 'absent'),
  };
  const checks = await unprivilegedChecks({ user: 'hwuser', uid: 1001 }, files);
  t.deepEqual(checks.map((c) => c.ok), [true, false, false]);
  t.regex(checks[1].what, /subgid: no range of 65536 gids for hwuser/);
  // A free range: above hwuser's and other's 100000..165535.
  t.is(checks[1].fix, 'as root: usermod --add-subuids 165536-231071 --add-subgids 165536-231071 hwuser');
  t.regex(checks[2].what, /user namespaces disabled \(user\.max_user_namespaces = 0\)/);
  t.is(checks[2].fix, 'as root: sysctl -w user.max_user_namespaces=15000');
  await writeFile(files.subgid, 'hwuser:100000:65536\n');
  await writeFile(files.maxUserNs, '15000\n');
  t.true((await unprivilegedChecks({ user: 'hwuser', uid: 1001 }, files)).every((c) => c.ok && !c.fix));
});
