// Outcome classes: every combination of what a run produced ends in exactly
// one class, the strongest evidence about the kernel winning.
import test from 'ava';
import { PatchApplyError } from '../../src/kernel/patches.ts';
import { KernelBuildError } from '../../src/kernel/build.ts';
import { BootError } from '../../src/machine/instance.ts';
import { classifyRun, EXIT_CODE, failureFromError, type RunFailure } from '../../src/results/outcome.ts';
import type { KernelReport } from '../../src/report/kernel-report.ts';
import { markHungProbe, markUnreachedProbes, parseProbeTap, type ProbeResult } from '../../src/results/tap.ts';
import { classOfError, InfraError, InputError } from '../../src/util/errors.ts';

const probe = (name: string, extra: Partial<ProbeResult> = {}): ProbeResult => ({ name, ok: true, subtests: [{ id: 1, name: 'x', ok: true }], kernelReports: [], ...extra });
const failing = (name: string, sub: string): ProbeResult => probe(name, { ok: false, subtests: [{ id: 1, name: 'x', ok: true }, { id: 2, name: sub, ok: false }] });
const warn: KernelReport = { kind: 'WARNING', title: 'WARNING in vfio_pci_dma_buf_move', count: 1, line: 9, fatal: false, excerpt: '' };
const oops: KernelReport = { kind: 'BUG', title: 'BUG: kernel NULL pointer dereference in vfio_pci_dma_buf_map', count: 1, line: 20, fatal: true, excerpt: '' };
const sshLost: RunFailure = { phase: 'probes', class: 'infra', code: 'ssh-lost', message: 'the SSH channel closed without an exit status' };

test('pass: every probe passed, no kernel report', (t) => {
  const o = classifyRun([probe('a'), probe('b', { skip: 'no device', subtests: [] })], []);
  t.is(o.class, 'pass');
  t.is(o.title, '2 probes, 1 points passed');
  t.is(EXIT_CODE[o.class], 0);
});

test('a TODO (known kernel bug) does not fail the run', (t) => {
  const probes = parseProbeTap('TAP version 14\n1..1\n# Subtest: k\n    1..1\n    not ok 1 - x # TODO known\nnot ok 1 - k # TODO known on 7.2\n');
  t.is(classifyRun(probes, []).class, 'pass');
});

test('fail: a failing point; the title names the first, the detail every one', (t) => {
  const o = classifyRun([probe('ok'), failing('dmabuf-bad-inputs', 'zero_length: EINVAL'), failing('lifetime', 'refcnt back')], []);
  t.deepEqual([o.class, o.code, o.title], ['fail', 'probe-failed', 'dmabuf-bad-inputs: zero_length: EINVAL (and 1 more failing point)']);
  t.deepEqual(o.detail.split('\n'), ['probe dmabuf-bad-inputs failed: zero_length: EINVAL', 'probe lifetime failed: refcnt back']);
  t.is(EXIT_CODE[o.class], 1);
});

test('kernel: a report wins over failing points; a fatal one is the title', (t) => {
  const o = classifyRun([failing('a', 'x')], [warn, oops]);
  t.deepEqual([o.class, o.code], ['kernel', 'BUG']);
  t.is(o.title, 'BUG: kernel NULL pointer dereference in vfio_pci_dma_buf_map (and 1 more kernel report title)');
  t.true(o.detail.includes('kernel WARNING: WARNING in vfio_pci_dma_buf_move'));
  t.true(o.detail.includes('probe a failed: x'));
  t.is(EXIT_CODE[o.class], 1);
});

test('boot timeout: infra without a kernel report, kernel with one', (t) => {
  const boot = failureFromError('boot', new BootError({ kind: 'timeout', seconds: 180, lastLine: 'x' }, 'the guest did not start sshd in 180 s'));
  t.deepEqual([boot.class, boot.code], ['infra', 'boot-timeout']);
  const quiet = classifyRun([], [], boot);
  t.deepEqual([quiet.class, quiet.code, quiet.title], ['infra', 'boot-timeout', 'the guest did not start sshd in 180 s']);
  t.is(EXIT_CODE.infra, 3);
  const stall: KernelReport = { kind: 'RCU stall', title: 'INFO: rcu detected stall in vfio_pci_dma_buf_move', count: 1, line: 3, fatal: false, excerpt: '' };
  t.is(classifyRun([], [stall], boot).class, 'kernel');
});

test('infra: the channel lost with no failing point; a point that failed before it is still a fail', (t) => {
  const cut = parseProbeTap('TAP version 14\n1..2\n# Subtest: a\n    ok 1 - x\n');
  t.deepEqual([classifyRun(cut, [], sshLost).class, classifyRun(cut, [], sshLost).code], ['infra', 'ssh-lost']);
  t.is(classifyRun([failing('a', 'x')], [], sshLost).class, 'fail');
});

test('infra: a broken TAP stream or no probe at all, with no failure recorded', (t) => {
  const o = classifyRun(parseProbeTap(''), []);
  t.deepEqual([o.class, o.code], ['infra', 'tap-stream']);
  t.deepEqual([classifyRun([], []).class, classifyRun([], []).code], ['infra', 'no-probe-ran']);
});

test('a hung probe is a fail through its own point; the probes it kept from running are not', (t) => {
  const probes = parseProbeTap('TAP version 14\n1..3\n# Subtest: a\n    1..1\n    ok 1 - x\nok 1 - a\n# Subtest: b\n    ok 1 - y\n');
  markHungProbe(probes, { index: 1, name: 'b', timeoutSec: 120, blockedTasks: 'task node' }, ['a', 'b', 'c']);
  const o = classifyRun(probes, []);
  t.deepEqual([o.class, o.title], ['fail', 'b: finishes within 120 s']);
  t.true(o.detail.includes('1 probe(s) not run: c'));
});

test('a run stopped mid-probe (a panic): the probes the TAP never reached are not run, before the stream entry', (t) => {
  const probes = parseProbeTap('TAP version 14\n1..3\n# Subtest: a\n    1..1\n    ok 1 - x\nok 1 - a\n# Subtest: b\n    ok 1 - y\n');
  markUnreachedProbes(probes, ['a', 'b', 'c'], 'the run stopped');
  t.deepEqual(probes.map((p) => [p.name, p.notRun]), [['a', undefined], ['b', undefined], ['c', 'not run: the run stopped during b'], ['(tap stream)', undefined]]);
  t.true(classifyRun(probes, [oops]).detail.includes('1 probe(s) not run: c'));
  const whole = parseProbeTap('TAP version 14\n1..1\n# Subtest: a\n    1..1\n    ok 1 - x\nok 1 - a\n');
  markUnreachedProbes(whole, ['a'], 'the run stopped');
  t.is(whole.length, 1, 'nothing added when every probe has a result');
});

test('error: bad input or a patch that does not build outranks everything, with the error code', (t) => {
  const pf = { name: '0001.patch', origin: '/x/0001.patch', sha256: '0', text: '', strip: 1 };
  const apply = failureFromError('prepare', new PatchApplyError(pf, 0, 1, [{ file: 'a.c', hunk: 1, reason: 'FAILED' }], [], ''));
  t.deepEqual([apply.class, apply.code], ['error', 'patch-does-not-apply']);
  t.deepEqual([classifyRun([], [], apply).class, classifyRun([], [], apply).code], ['error', 'patch-does-not-apply']);
  t.is(failureFromError('prepare', new KernelBuildError('make failed')).code, 'build-failed');
  t.is(failureFromError('prepare', new InputError('kernel.tarball x is not a file')).code, 'bad-input');
  t.is(EXIT_CODE.error, 2);
});

test('errors say whose fault they are; anything that is not hwlab\'s own error is infra', (t) => {
  t.is(classOfError(new InputError('x')), 'error');
  t.is(classOfError(new InfraError('x', undefined, 'disk-full')), 'infra');
  t.is(classOfError(new TypeError('x is undefined')), 'infra');
  const f = failureFromError('setup', new TypeError('boom'));
  t.deepEqual([f.class, f.code], ['infra', 'internal']);
  t.is(new InfraError('x', 'free space').hint, 'free space');
});

test('infra: a point the guest harness could not judge (a stress worker never started) is neither fail nor pass', async (t) => {
  const { Tap } = await import('../../src/guest/lib/tap.ts');
  const lines: string[] = [];
  const tap = new Tap((l) => lines.push(l));
  tap.header(2);
  await tap.subtest('dmabuf-export', (s) => { s.pass('export'); });
  await tap.subtest('stress', (s) => {
    s.pass('region 2 has at least eight pages');
    s.harness('every worker process started its threads within 60 s', 'the guest did not start 3 node worker processes in 60 s', { ready: [false, true, false] });
  });
  const probes = parseProbeTap(`${lines.join('\n')}\n`);
  const stress = probes.find((p) => p.name === 'stress')!;
  t.false(stress.ok, 'the probe is not ok: nothing was judged');
  t.is(stress.subtests[1].harness, 'the guest did not start 3 node worker processes in 60 s');
  const o = classifyRun(probes, []);
  t.deepEqual([o.class, o.code], ['infra', 'probe-harness']);
  t.is(o.title, 'stress could not judge "every worker process started its threads within 60 s": the guest did not start 3 node worker processes in 60 s');
  t.deepEqual(o.detail.split('\n'), ['probe stress could not judge "every worker process started its threads within 60 s": the guest did not start 3 node worker processes in 60 s']);
  // Real evidence still wins: a failing point elsewhere, or a kernel report.
  t.is(classifyRun([...probes, failing('lifetime', 'refcnt back')], []).class, 'fail');
  t.is(classifyRun(probes, [warn]).class, 'kernel');
});
