// Errors that stop hwlab before a run has results of its own, sorted by whose
// fault they are. An InputError is the user's: a lab, patch, fragment or
// command line that is wrong, or a patch that does not build (outcome class
// "error", exit 2). An InfraError is the host's or the emulator's: a tool
// missing, a download failing, the disk full, QEMU dying, SSH lost (outcome
// class "infra", exit 3). A KernelFaultError is the kernel's, seen without a
// report (outcome class "kernel", exit 1). Outcome classes and exit codes come from the type
// of the error, never from matching its text.

/** The outcome class an error gives a run. */
export type ErrorClass = 'error' | 'infra' | 'kernel';

export abstract class HwlabError extends Error {
  abstract readonly errorClass: ErrorClass;
  /** A short machine-readable reason, e.g. `patch-does-not-apply`, kept in results.json. */
  readonly code: string;
  constructor(message: string, readonly hint?: string, code?: string) {
    super(message);
    this.name = new.target.name;
    this.code = code ?? (new.target === InputError ? 'bad-input' : new.target === InfraError ? 'infra' : kebab(new.target.name));
  }
}

function kebab(name: string): string {
  return name.replace(/Error$/, '').replace(/[A-Z]/g, (c, i) => `${i ? '-' : ''}${c.toLowerCase()}`);
}

/** Bad input: the user can fix it by changing the lab, the patches, the fragments or the command line. */
export class InputError extends HwlabError {
  readonly errorClass = 'error' as const;
}

/** The host or the emulator let the run down; running again (or fixing the host) may help, the kernel is not to blame. */
export class InfraError extends HwlabError {
  readonly errorClass = 'infra' as const;
}

/**
 * The kernel under test misbehaved in a way hwlab sees from outside rather
 * than as a report on the console: an unbind from vfio-pci that never
 * returns after every probe's process has exited, so only a reference the
 * kernel took and never dropped can hold the device (outcome class "kernel",
 * exit 1).
 */
export class KernelFaultError extends HwlabError {
  readonly errorClass = 'kernel' as const;
}

/** The class of any thrown value: hwlab's own errors say; anything else is a bug in hwlab or the host, so infra. */
export function classOfError(err: unknown): ErrorClass {
  return err instanceof HwlabError ? err.errorClass : 'infra';
}

/** `ENOSPC` anywhere in an error or a tool's output: the disk is full, whatever the step was. */
export function isDiskFull(text: string): boolean {
  return /\bENOSPC\b|No space left on device/.test(text);
}
