// A fake machine backend for unit tests of the run's orchestration: it boots,
// hangs, dies, drops its connection and prints kernel reports on cue,
// without QEMU, in milliseconds. The guest it pretends to be is the small
// part of a Linux guest hwlab's setup talks to (modprobe, the PCI devices in
// sysfs, vfio-pci binding, the probe runner, poweroff); a test scripts the
// boot and the runner, and reads back every command the run issued. The
// console goes to console.log in the run folder, with printk timestamps, as
// QEMU's serial file does.
import { appendFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { endpointKind } from '../lab/endpoints.ts';
import { PCIE0_SLOTS } from '../lab/slots.ts';
import {
  formatSelftestMarker, GUEST_PRESTART_DIR, GUEST_SELFTEST_RUNNER, PRESTART_SCRIPT_NAME, READY_LINE, RUNNER_EXIT, SELFTEST_RUNNER_KILL, SELFTEST_RUNNER_STACKS,
  type HostRequest,
} from '../protocol/protocol.ts';
import { InfraError } from '../util/errors.ts';
import {
  BLOCKED_TASKS_SCRIPT, BootError, ChannelLostError, diagnoseThroughExec,
  type Diagnosis, type ExecOptions, type ExecResult, type ExitInfo, type HostRequestOutcome,
  type MachineBackend, type MachineConfig, type MachineInstance, type PowerOffOutcome, type UploadFile, type WaitingRunner,
} from './instance.ts';
import { iommuKernelWords } from './cmdline.ts';

/** How the fake boot ends. */
export type FakeBoot =
  | { kind: 'ready' }
  /** The emulator exits during boot (a kernel panic with panic=-1 and -no-reboot looks like this). */
  | { kind: 'exit'; exit: ExitInfo }
  /** The guest never says it is ready. */
  | { kind: 'hang' }
  /** The ready line comes, SSH never answers. */
  | { kind: 'ssh-never' };

/** One step of the scripted probe runner. */
export type RunnerStep =
  | { stdout: string }
  /** A kernel line (timestamped like printk). */
  | { console: string }
  | { delayMs: number }
  /** The runner blocks for good (a probe stuck in the kernel) until the run kills it. */
  | { hang: true }
  /** The machine dies (QEMU exits): the SSH channel drops. */
  | { die: ExitInfo }
  /** The SSH connection drops while the machine lives on. */
  | { dropConnection: true };

export interface FakeScript {
  /** Kernel lines printed while booting. */
  bootConsole?: string[];
  boot?: FakeBoot;
  /** What the probe runner does, step by step. Default: prints an empty TAP plan. */
  runner?: RunnerStep[];
  /** The runner's exit code when its steps are done. */
  runnerExit?: number;
  /**
   * A probe runner waiting in the guest (as in a restored snapshot): it takes
   * the run through prestart.sh go (then does `runner`), or refuses it with
   * this stderr line and RUNNER_EXIT.notPrestarted.
   */
  waitingRunner?: { takes: true } | { refuses: string };
  /** What the guest's blocked-task listing prints (diagnose). */
  blockedTasks?: string;
  /** Commands that fail: argv[0] or the script's first line -> exit code and stderr. */
  failing?: Record<string, { code: number; stderr: string }>;
  /**
   * What each kernel selftest prints (`collection:test` -> steps, its exit code
   * last), run through the selftest wrapper; the fake writes the wrapper's kmsg
   * markers around it. A `hang` step blocks until the host kills the test;
   * `afterKill` is what the wrapper still prints then (run_kselftest.sh
   * reporting its killed child, `# exit=137`, when it outlives it).
   */
  selftests?: Record<string, { steps: RunnerStep[]; exit?: number; afterKill?: string }>;
  /** What the wrapper's --stacks prints for the running test. */
  selftestStacks?: string;
  /** Commands that never return (blocked in the guest kernel), matched by a substring of the command: they print `console` lines and their `stdout` so far, then fail as timed out at once. */
  blocking?: Record<string, { console?: string[]; stdout?: string }>;
  /**
   * What the guest shows of an endpoint in sysfs, where it differs from the model below
   * (null: the link or file is absent). By default each endpoint has its kind's PCI ID
   * and a group of its own behind the lab's vIOMMU, with the domain type the kernel picks
   * from its command line.
   */
  guestDevices?: Record<string, Partial<{ pciId: string; iommu: string | null; group: number | null; domainType: string | null }>>;
}

/** A command the run issued, for assertions. */
export interface FakeCall {
  argv: string[];
}

export class FakeBackend implements MachineBackend {
  readonly name = 'fake';
  readonly instances: FakeInstance[] = [];
  constructor(private readonly script: FakeScript) {}

  async start(config: MachineConfig): Promise<MachineInstance> {
    const m = new FakeInstance(config, this.script);
    this.instances.push(m);
    return m;
  }
}

/** Devfn paths as the QEMU backend lays them out: one root port per endpoint, in lab order. */
function fakePciPaths(config: MachineConfig): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  config.lab.topology.endpoints.forEach((ep, i) => { out[ep.id] = [`${(0x10 + i).toString(16)}.0`, `00.${ep.function ?? 0}`]; });
  return out;
}

export class FakeInstance implements MachineInstance {
  readonly accel = { accel: 'tcg' as const, note: 'fake backend (no emulator)' };
  readonly pciPaths: Record<string, string[]>;
  readonly calls: FakeCall[] = [];
  readonly uploads: UploadFile[] = [];
  readonly hostRequests: HostRequest[] = [];
  private exitInfo: ExitInfo | null = null;
  private connected = false;
  private dropped = false;
  private readonly startMs = Date.now();
  private lastTs = 0;
  private text = '';
  private readonly consoleLog: string;
  /** Ends commands that are running when the machine dies or the connection drops. */
  private readonly onLost = new Set<() => void>();

  readonly waitingRunner?: WaitingRunner;

  constructor(private readonly config: MachineConfig, private readonly script: FakeScript) {
    if (script.waitingRunner) this.waitingRunner = { bundleHash: '0'.repeat(64), startupSec: 4.5 };
    this.pciPaths = fakePciPaths(config);
    this.consoleLog = path.join(config.runDir, 'console.log');
    writeFileSync(this.consoleLog, '');
  }

  get exited(): ExitInfo | null {
    return this.exitInfo;
  }

  /** No emulator process: nothing a person could ssh or gdb into. */
  readonly access = null;

  async whenExited(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.exitInfo && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return this.exitInfo !== null;
  }

  /** Appends a kernel line with a printk timestamp (seconds since the fake started). */
  printk(message: string): void {
    // Strictly increasing, as printk's microseconds are in practice: two lines never share a time.
    this.lastTs = Math.max((Date.now() - this.startMs) / 1000, this.lastTs + 0.000001);
    const t = this.lastTs.toFixed(6).padStart(12);
    const line = `[${t}] ${message}\n`;
    this.text += line;
    appendFileSync(this.consoleLog, line);
  }

  async console(): Promise<string> {
    return this.text;
  }

  private die(exit: ExitInfo): void {
    this.exitInfo ??= exit;
    this.loseConnection();
  }

  private loseConnection(): void {
    this.dropped = true;
    for (const f of [...this.onLost]) f();
    this.onLost.clear();
  }

  async waitReady(opts: { timeoutMs: number; onProgress?: (line: string) => void }): Promise<void> {
    for (const l of this.script.bootConsole ?? ['Linux version 7.2.13 (fake)']) this.printk(l);
    const boot = this.script.boot ?? { kind: 'ready' };
    if (boot.kind === 'exit') {
      this.die(boot.exit);
      throw new BootError({ kind: 'exited', exit: boot.exit }, `QEMU exited during boot (${boot.exit.signal ?? `exit code ${boot.exit.code}`})`);
    }
    if (boot.kind === 'hang') {
      await new Promise((r) => setTimeout(r, Math.min(opts.timeoutMs, 50)));
      throw new BootError({ kind: 'timeout', seconds: opts.timeoutMs / 1000, lastLine: this.text.trimEnd().split('\n').pop() ?? '' },
        `the guest did not start sshd in ${(opts.timeoutMs / 1000).toFixed(0)} s`);
    }
    this.printk(READY_LINE);
    if (boot.kind === 'ssh-never') {
      throw new BootError({ kind: 'ssh', error: 'connect ECONNREFUSED' }, 'SSH to the guest did not come up (last error: connect ECONNREFUSED)');
    }
    this.connected = true;
  }

  private failing(argv: string[]): { code: number; stderr: string } | undefined {
    const f = this.script.failing ?? {};
    const key = argv[0] === 'sh' && argv[1] === '-c' ? argv[2].split('\n')[0] : argv[0];
    return f[key] ?? f[argv.join(' ')];
  }

  async exec(argv: string[], opts: ExecOptions): Promise<ExecResult> {
    if (!this.connected || this.dropped) {
      throw new ChannelLostError(`guest command "${argv.join(' ').slice(0, 80)}": ${this.connected ? 'the connection is gone' : 'not connected'}`, '', '');
    }
    this.calls.push({ argv });
    const start = Date.now();
    const done = (stdout: string, code = 0, stderr = ''): ExecResult => ({ code, stdout, stderr, durationMs: Date.now() - start });
    const bad = this.failing(argv);
    if (bad) return done('', bad.code, bad.stderr);
    const joined = argv.join(' ');
    const blocks = Object.entries(this.script.blocking ?? {}).find(([k]) => joined.includes(k))?.[1];
    if (blocks) {
      for (const l of blocks.console ?? []) this.printk(l);
      // A line per chunk, as a stream may deliver them.
      for (const chunk of blocks.stdout?.match(/[^\n]*\n|[^\n]+$/g) ?? []) opts.onStdout?.(chunk);
      throw new InfraError(`guest command "${argv.join(' ').slice(0, 80)}": timed out after ${(opts.timeoutMs / 1000).toFixed(0)} s`, undefined, 'timeout');
    }
    if (argv[0] === 'sh' && argv[1] === `${GUEST_PRESTART_DIR}/${PRESTART_SCRIPT_NAME}` && argv[2] === 'go') {
      const w = this.script.waitingRunner;
      if (!w || 'refuses' in w) return done('', RUNNER_EXIT.notPrestarted, `${w ? w.refuses : 'no waiting probe runner'}\n`);
      return this.runRunner(opts, start, this.script.runner ?? [{ stdout: 'TAP version 14\n1..0\n' }], this.script.runnerExit ?? 0);
    }
    if (argv[0] === 'node' && argv.some((a) => a.endsWith('config.json'))) return this.runRunner(opts, start, this.script.runner ?? [{ stdout: 'TAP version 14\n1..0\n' }], this.script.runnerExit ?? 0);
    if (argv[0] === GUEST_SELFTEST_RUNNER) return this.runSelftest(argv, opts, start);
    if (argv[0] === 'busybox' && argv[1] === 'poweroff') {
      this.printk('reboot: Power down');
      setTimeout(() => this.die({ code: 0, signal: null }), 1);
      return done('');
    }
    if (argv[0] === 'sh' && argv[1] === '-c') return done(this.script_(argv[2], argv.slice(4)));
    return done('');
  }

  /** Answers hwlab's fixed guest scripts by what they do. */
  private script_(script: string, args: string[]): string {
    if (script === BLOCKED_TASKS_SCRIPT) return this.script.blockedTasks ?? '';
    if (script.includes('iommu_group') && script.includes('vendor')) {
      // Arguments are devfn paths; one record per endpoint found at one of them.
      const bdfs = this.sysfsBdfs();
      const paths = Object.values(this.pciPaths).map((p) => p.join('/').toLowerCase());
      return args.flatMap((a) => (paths.includes(a) ? [`${a}|${bdfs[paths.indexOf(a)]}|${this.deviceInfo(bdfs[paths.indexOf(a)])}`] : [])).join('');
    }
    if (script.includes('driver_override') && script.includes('vfio-pci >')) return args.map((b) => `${b}|\n`).join('');
    if (script.includes('pidof node')) {
      this.killRunner?.();
      return '';
    }
    return '';
  }

  /**
   * A model of what Linux shows for an endpoint: its kind's PCI ID; with a vIOMMU, the unit's
   * name the driver registers (dmar0, ivhd0, the virtio-iommu-pci function's BDF) and the default domain type the kernel
   * derives from its command line (the AMD driver forcing strict under QEMU's NpCache, the Intel one under caching mode).
   */
  private deviceInfo(bdf: string): string {
    const i = this.sysfsBdfs().indexOf(bdf);
    const ep = this.config.lab.topology.endpoints[i];
    const words = [...this.config.append, ...iommuKernelWords(this.config.lab.iommu), ...this.config.lab.machine.cmdline];
    const kind = this.config.lab.iommu.kind;
    const unit = { intel: 'dmar0', amd: 'ivhd0', virtio: `0000:00:${PCIE0_SLOTS.iommu.toString(16).padStart(2, '0')}.0`, none: null }[kind];
    const type = kind === 'none' ? null
      : words.includes('iommu.passthrough=1') ? 'identity'
        : words.includes('iommu.strict=1') || kind === 'amd' || (kind === 'intel' && this.config.lab.iommu.cachingMode) ? 'DMA' : 'DMA-FQ';
    const o = this.script.guestDevices?.[ep.id] ?? {};
    const pick = <T>(k: keyof typeof o, v: T): T => (k in o ? (o[k] as T) : v);
    const group = pick('group', unit ? i + 1 : null);
    const pciId = pick('pciId', endpointKind(ep.type).pciId).split(':').map((x) => `0x${x}`).join(':');
    return `${group ?? ''}||${pciId}|${pick('iommu', unit) ?? ''}|${pick('domainType', type) ?? ''}\n`;
  }

  /** BDFs in endpoint order: bus = 1 + index, the endpoint's function. */
  private sysfsBdfs(): string[] {
    return Object.values(this.pciPaths).map((p, i) => `0000:${(i + 1).toString(16).padStart(2, '0')}:00.${p[1].slice(-1)}`);
  }



  private killRunner: (() => void) | undefined;
  private killSelftest: (() => void) | undefined;

  /** The selftest wrapper (src/guest/kselftest/run-one.sh): a test's scripted output between its kmsg markers; --stacks, --kill. */
  private async runSelftest(argv: string[], opts: ExecOptions, start: number): Promise<ExecResult> {
    if (argv[1] === SELFTEST_RUNNER_STACKS) return { code: 0, stdout: this.script.selftestStacks ?? '(no test running)\n', stderr: '', durationMs: 0 };
    if (argv[1] === SELFTEST_RUNNER_KILL) {
      this.killSelftest?.();
      return { code: 0, stdout: '', stderr: '', durationMs: 0 };
    }
    const [index, collection, test] = argv.slice(1, 4);
    const name = `${collection}:${test}`;
    const t = this.script.selftests?.[name] ?? { steps: [{ stdout: `TAP version 13\n1..1\n# selftests: ${collection}: ${test}\nok 1 selftests: ${collection}: ${test}\n` }] };
    this.printk(formatSelftestMarker({ edge: 'begin', index: Number(index), test: name }));
    const r = await this.runRunner(opts, start, t.steps, t.exit ?? 0, (kill) => { this.killSelftest = () => kill(t.afterKill); });
    if (!this.dropped) this.printk(formatSelftestMarker({ edge: 'end', index: Number(index), test: name }));
    return r;
  }

  private runRunner(opts: ExecOptions, start: number, steps: RunnerStep[], exitCode: number, onKill?: (kill: (lastWords?: string) => void) => void): Promise<ExecResult> {
    let stdout = '';
    return new Promise<ExecResult>((resolve, reject) => {
      let finished = false;
      const finish = (r: () => void) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        this.onLost.delete(lost);
        r();
      };
      const timer = setTimeout(() => finish(() => reject(new InfraError(`guest command "node runner": timed out after ${(opts.timeoutMs / 1000).toFixed(0)} s`, undefined, 'timeout'))), opts.timeoutMs);
      const lost = () => finish(() => reject(new ChannelLostError('guest command "node runner": the SSH channel closed without an exit status', stdout, '')));
      this.onLost.add(lost);
      opts.signal?.addEventListener('abort', () => finish(() => resolve({ code: null, stdout, stderr: '', durationMs: Date.now() - start, aborted: true })), { once: true });
      const kill = (lastWords = '') => finish(() => resolve({ code: null, signal: 'KILL', stdout: stdout + lastWords, stderr: '', durationMs: Date.now() - start }));
      if (onKill) onKill(kill);
      else this.killRunner = kill;
      void (async () => {
        for (const step of steps) {
          if (finished) return;
          if ('stdout' in step) {
            stdout += step.stdout;
            opts.onStdout?.(step.stdout);
          } else if ('console' in step) this.printk(step.console);
          else if ('delayMs' in step) await new Promise((r) => setTimeout(r, step.delayMs));
          else if ('hang' in step) return;
          else if ('die' in step) return this.die(step.die);
          else if ('dropConnection' in step) return this.loseConnection();
          // Let the run's stream handlers see each chunk before the next.
          await new Promise((r) => setImmediate(r));
        }
        finish(() => resolve({ code: exitCode, stdout, stderr: '', durationMs: Date.now() - start }));
      })();
    });
  }

  async upload(files: UploadFile[]): Promise<void> {
    if (!this.connected || this.dropped) throw new ChannelLostError('SFTP upload: the connection is gone', '', '');
    this.uploads.push(...files);
  }

  async hostRequest(req: HostRequest): Promise<HostRequestOutcome> {
    this.hostRequests.push(req);
    return this.exitInfo ? { ok: false, error: 'QEMU has exited' } : { ok: true };
  }

  diagnose(): Promise<Diagnosis> {
    return diagnoseThroughExec(this);
  }

  async powerOff(timeoutMs: number): Promise<PowerOffOutcome> {
    if (!this.exitInfo && this.connected && !this.dropped) await this.exec(['busybox', 'poweroff', '-f'], { timeoutMs: 5000 }).catch(() => {});
    await new Promise((r) => setTimeout(r, Math.min(5, timeoutMs)));
    const clean = this.exitInfo !== null;
    await this.kill();
    return { clean };
  }

  async kill(): Promise<void> {
    this.die({ code: null, signal: 'SIGKILL' });
  }
}
