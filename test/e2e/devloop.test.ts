// The developer's loop on real guests (the smoke lab, the default lab's
// build): a kept guest reached with the printed ssh command and hwlab ssh,
// seen by hwlab ps also after its hwlab process was killed (QEMU dies with it), and cleared by
// hwlab stop with no QEMU left; hwlab shell driven through a real PTY (tmux)
// running lspci and uname -r; a failed run with a catalogue patch run again
// from its folder with hwlab rerun, failing at the same points.
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { failingPoints } from '../../src/results/outcome.ts';
import type { RunResults } from '../../src/results/report.ts';
import { hwlab, qemuProcessesMentioning, readRun, cleanUpRunsDirs, repoRoot, runsDir } from './helpers.ts';

cleanUpRunsDirs(test);

const smoke = path.join(repoRoot, 'labs/smoke.yaml');

async function waitFor(read: () => string | Promise<string>, re: RegExp, ms: number): Promise<RegExpMatchArray | null> {
  const deadline = Date.now() + ms;
  for (;;) {
    const m = (await read()).match(re);
    if (m || Date.now() > deadline) return m;
    await sleep(250);
  }
}

/** `hwlab run --keep` of the smoke lab's first probe, until it prints how to stop the guest. */
async function startKept(t: ExecutionContext, dir: string): Promise<{ child: ReturnType<typeof hwlab>; out: () => string; kept: RegExpMatchArray | null }> {
  const child = hwlab(['run', smoke, '--keep', '--only', 'dmabuf-export', '--runs-dir', dir], { timeoutMs: 20 * 60_000 });
  let out = '';
  child.all?.on('data', (d: Buffer) => { out += d.toString(); });
  t.teardown(() => { child.kill('SIGKILL'); });
  const kept = await waitFor(() => out, /^ {2}hwlab stop (\S+)/m, 15 * 60_000);
  t.truthy(kept, out);
  return { child, out: () => out, kept };
}

test.serial('--keep: the printed ssh command and hwlab ssh reach the guest; ps shows a dead owner; stop leaves no QEMU', async (t) => {
  const dir = runsDir();
  const { child, out: output, kept } = await startKept(t, dir);
  if (!kept) return;
  const out = output();
  const name = kept[1];
  const runDir = path.join(dir, name);
  t.log(out.slice(out.indexOf('\nPROBE')).trimEnd());
  // The results come first, then how to reach the guest.
  t.regex(out, /dmabuf-export\s+\d+\/\d+\s+PASS[\s\S]*^PASS$[\s\S]*^guest kept up: /m);
  t.is(JSON.parse(await readFile(path.join(runDir, 'results.json'), 'utf8')).outcome.class, 'pass');

  // The exact command printed, run as a user would paste it.
  const sshLine = out.match(/^ {2}(ssh -i .* root@127\.0\.0\.1)$/m)![1];
  const pasted = await execa('sh', ['-c', `${sshLine} -- uname -r`], { reject: false, timeout: 60_000, stdin: 'ignore' });
  t.is(pasted.exitCode, 0, pasted.stderr);
  t.regex(pasted.stdout, /^7\.2\.\d+/);
  t.regex(sshLine, /-o StrictHostKeyChecking=yes/);
  const viaHwlab = await hwlab(['ssh', name, '--', 'lspci', '-n'], { timeoutMs: 120_000 });
  t.is(viaHwlab.exitCode, 0, viaHwlab.all);
  t.regex(viaHwlab.stdout, /1af4:1110/, 'the ivshmem-plain endpoint');
  // The device stays bound to vfio-pci: the probes can be run again by hand.
  const driver = await hwlab(['ssh', name, '--', 'sh', '-c', 'ls /dev/vfio'], { timeoutMs: 120_000 });
  t.regex(driver.stdout, /\d+/);
  // Without sh -c, CMD is an argument vector: shell syntax reaches the command untouched.
  const literal = await hwlab(['ssh', name, '--', 'printf', '%s\\n', 'a b;c', '$(id -u)', '|', '*'], { timeoutMs: 120_000 });
  t.deepEqual(literal.stdout.split('\n'), ['a b;c', '$(id -u)', '|', '*'], literal.all);

  const ps = await hwlab(['ps', '--json'], { timeoutMs: 60_000 });
  const mine = (JSON.parse(ps.stdout) as Array<{ name: string; qemuAlive: boolean; ownerAlive: boolean }>).find((g) => g.name === name);
  t.like(mine, { qemuAlive: true, ownerAlive: true });

  // The owner dies without cleaning up: QEMU dies with it (setpriv --pdeathsig, so no guest
  // outlives hwlab unattended), ps still lists the entry with a dead owner, stop clears it.
  process.kill(child.pid!, 'SIGKILL');
  await child.catch(() => {});
  const deadline = Date.now() + 15_000;
  while ((await qemuProcessesMentioning(runDir)).length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
  t.deepEqual(await qemuProcessesMentioning(runDir), [], 'QEMU ended with its killed owner');
  const ps2 = await hwlab(['ps'], { timeoutMs: 60_000 });
  t.regex(ps2.stdout, new RegExp(`${name} .* QEMU gone with its hwlab process \\(pid ${child.pid}, OWNER DEAD\\): hwlab stop ${name} clears the entry`));
  const stop = await hwlab(['stop', name], { timeoutMs: 120_000 });
  t.is(stop.exitCode, 0, stop.all);
  t.regex(stop.stdout, /QEMU was not running \(its hwlab process \d+ was gone\)/);
  t.deepEqual(await qemuProcessesMentioning(runDir), [], 'no QEMU left running');
  t.false((await hwlab(['ps'], { timeoutMs: 60_000 })).stdout.includes(name));
});

test.serial('--keep then hwlab stop: the owning run finishes by itself with its exit code', async (t) => {
  const dir = runsDir();
  const { child, kept } = await startKept(t, dir);
  if (!kept) return;
  const stop = await hwlab(['stop'], { timeoutMs: 120_000 });
  t.regex(stop.stdout, /QEMU pid \d+ ended$/m);
  const r = await child;
  t.is(r.exitCode, 0, r.all);
  t.regex(r.all ?? '', /guest \S+ stopped$/m);
  t.deepEqual(await qemuProcessesMentioning(path.join(dir, kept[1])), [], 'no QEMU left running');
});

test.serial('hwlab shell through a real PTY (tmux): lspci, uname -r and the window size reach the guest; exit powers off', async (t) => {
  const dir = runsDir();
  // The server's socket in a folder of its own that the cleanup removes (with -L it stayed in /tmp/tmux-0 after kill-server).
  const sock = path.join(runsDir(), 'tmux.sock');
  const tmux = (...args: string[]) => execa('tmux', ['-S', sock, ...args], { reject: false, timeout: 30_000 });
  t.teardown(async () => { await tmux('kill-server'); });
  const cmd = ['env', 'CI=true', 'node', path.join(repoRoot, 'src/cli/hwlab.js'), 'shell', smoke, '--runs-dir', dir].join(' ');
  t.is((await tmux('new-session', '-d', '-s', 'shell', '-x', '132', '-y', '43', `${cmd}; echo hwlab-exit=$?; sleep 600`)).exitCode, 0);
  const screen = async () => (await tmux('capture-pane', '-p', '-S', '-200', '-t', 'shell')).stdout;
  const prompt = await waitFor(screen, /root@hwlab:~#\s*$/m, 15 * 60_000);
  t.truthy(prompt, await screen());
  t.regex(await screen(), /in the guest, the probes by hand: node \/run\/hwlab\/\S+ \/run\/hwlab\/config\.json/);
  await tmux('send-keys', '-t', 'shell', 'stty size; uname -r; lspci | grep -c 1af4:1110; lspci -n | grep -c 1af4:1110', 'Enter');
  t.truthy(await waitFor(screen, /^43 132$[\s\S]*^7\.2\.\d+\S*$/m, 60_000), await screen());
  // Ctrl-C reaches the guest's shell (a sleep interrupted there), not hwlab.
  await tmux('send-keys', '-t', 'shell', 'sleep 120; echo not-interrupted', 'Enter');
  await sleep(1500);
  await tmux('send-keys', '-t', 'shell', 'C-c');
  await tmux('send-keys', '-t', 'shell', 'echo still-in-guest-$((6*7))', 'Enter');
  t.truthy(await waitFor(screen, /^still-in-guest-42$/m, 30_000), await screen());
  // The command line itself is on the screen; its output line is not.
  t.notRegex(await screen(), /^not-interrupted$/m);
  await tmux('send-keys', '-t', 'shell', 'exit', 'Enter');
  t.truthy(await waitFor(screen, /hwlab-exit=0/, 120_000), await screen());
  const runDir = path.join(dir, readdirSync(dir)[0]);
  t.deepEqual(await qemuProcessesMentioning(runDir), [], 'no QEMU left running');
});

test.serial('a failed run with a catalogue patch: the output ends with the rerun line, and hwlab rerun fails at the same points', async (t) => {
  const dir = runsDir();
  const patch = path.join(repoRoot, 'labs/mutants/16-reserved-flags-ignored.patch');
  const r = await hwlab(['run', smoke, '--patch', patch, '--only', 'dmabuf-bad-inputs', '--runs-dir', dir], { timeoutMs: 40 * 60_000 });
  t.is(r.exitCode, 1, r.all);
  const lines = (r.stdout ?? '').trimEnd().split('\n');
  t.log(lines.slice(-14).join('\n'));
  const { runDir, results } = await readRun(dir);
  t.is(lines.at(-1), `to run it again: hwlab rerun ${runDir}`);
  const first = failingPoints(results.probes);
  t.true(first.length > 0);
  t.deepEqual(results.kernel?.patches?.map((p) => p.name), ['16-reserved-flags-ignored.patch']);

  const again = await hwlab(['rerun', runDir], { timeoutMs: 40 * 60_000 });
  t.is(again.exitCode, 1, again.all);
  const second = readdirSync(dir).map((d) => path.join(dir, d)).find((d) => d !== runDir)!;
  const results2 = JSON.parse(await readFile(path.join(second, 'results.json'), 'utf8')) as RunResults;
  t.deepEqual(failingPoints(results2.probes), first, 'the same failing points');
  t.deepEqual(results2.kernel?.patches?.map((p) => p.sha256), results.kernel?.patches?.map((p) => p.sha256));
  t.is(results2.kernel?.configSha256, results.kernel?.configSha256);
  t.regex(again.all ?? '', /from cache, make not run/);
  t.is(await readFile(path.join(second, 'kernel.config'), 'utf8'), await readFile(path.join(runDir, 'kernel.config'), 'utf8'));
});
