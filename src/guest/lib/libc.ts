// koffi bindings to the few libc calls the probes need. Every wrapper throws
// SyscallError on -1 with errno read immediately after the call, so probes can
// assert on errno names. Bindings are created lazily: importing this module
// must not fail on a machine without koffi (the runner turns that into
// not-ok probes instead of a crash).
import koffi from 'koffi';

/** Linux x86_64 (asm-generic) errno numbers. Aliases come after canonical names. */
export const ERRNO: Readonly<Record<string, number>> = {
  EPERM: 1, ENOENT: 2, ESRCH: 3, EINTR: 4, EIO: 5, ENXIO: 6, E2BIG: 7, ENOEXEC: 8, EBADF: 9,
  ECHILD: 10, EAGAIN: 11, ENOMEM: 12, EACCES: 13, EFAULT: 14, ENOTBLK: 15, EBUSY: 16, EEXIST: 17,
  EXDEV: 18, ENODEV: 19, ENOTDIR: 20, EISDIR: 21, EINVAL: 22, ENFILE: 23, EMFILE: 24, ENOTTY: 25,
  ETXTBSY: 26, EFBIG: 27, ENOSPC: 28, ESPIPE: 29, EROFS: 30, EMLINK: 31, EPIPE: 32, EDOM: 33,
  ERANGE: 34, EDEADLK: 35, ENAMETOOLONG: 36, ENOLCK: 37, ENOSYS: 38, ENOTEMPTY: 39, ELOOP: 40,
  ENOMSG: 42, EIDRM: 43, ECHRNG: 44, EL2NSYNC: 45, EL3HLT: 46, EL3RST: 47, ELNRNG: 48, EUNATCH: 49,
  ENOCSI: 50, EL2HLT: 51, EBADE: 52, EBADR: 53, EXFULL: 54, ENOANO: 55, EBADRQC: 56, EBADSLT: 57,
  EBFONT: 59, ENOSTR: 60, ENODATA: 61, ETIME: 62, ENOSR: 63, ENONET: 64, ENOPKG: 65, EREMOTE: 66,
  ENOLINK: 67, EADV: 68, ESRMNT: 69, ECOMM: 70, EPROTO: 71, EMULTIHOP: 72, EDOTDOT: 73,
  EBADMSG: 74, EOVERFLOW: 75, ENOTUNIQ: 76, EBADFD: 77, EREMCHG: 78, ELIBACC: 79, ELIBBAD: 80,
  ELIBSCN: 81, ELIBMAX: 82, ELIBEXEC: 83, EILSEQ: 84, ERESTART: 85, ESTRPIPE: 86, EUSERS: 87,
  ENOTSOCK: 88, EDESTADDRREQ: 89, EMSGSIZE: 90, EPROTOTYPE: 91, ENOPROTOOPT: 92,
  EPROTONOSUPPORT: 93, ESOCKTNOSUPPORT: 94, EOPNOTSUPP: 95, EPFNOSUPPORT: 96, EAFNOSUPPORT: 97,
  EADDRINUSE: 98, EADDRNOTAVAIL: 99, ENETDOWN: 100, ENETUNREACH: 101, ENETRESET: 102,
  ECONNABORTED: 103, ECONNRESET: 104, ENOBUFS: 105, EISCONN: 106, ENOTCONN: 107, ESHUTDOWN: 108,
  ETOOMANYREFS: 109, ETIMEDOUT: 110, ECONNREFUSED: 111, EHOSTDOWN: 112, EHOSTUNREACH: 113,
  EALREADY: 114, EINPROGRESS: 115, ESTALE: 116, EUCLEAN: 117, ENOTNAM: 118, ENAVAIL: 119,
  EISNAM: 120, EREMOTEIO: 121, EDQUOT: 122, ENOMEDIUM: 123, EMEDIUMTYPE: 124, ECANCELED: 125,
  ENOKEY: 126, EKEYEXPIRED: 127, EKEYREVOKED: 128, EKEYREJECTED: 129, EOWNERDEAD: 130,
  ENOTRECOVERABLE: 131, ERFKILL: 132, EHWPOISON: 133,
  // Kernel-internal value that occasionally leaks to userspace; worth naming when it does.
  ENOTSUPP: 524,
  EWOULDBLOCK: 11, EDEADLOCK: 35, ENOTSUP: 95,
};

const NAME_BY_NUMBER = new Map<number, string>();
for (const [name, num] of Object.entries(ERRNO)) if (!NAME_BY_NUMBER.has(num)) NAME_BY_NUMBER.set(num, name);

export function errnoName(errno: number): string {
  return NAME_BY_NUMBER.get(errno) ?? `E${errno}`;
}

export class SyscallError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly syscall: string;
  constructor(syscall: string, errno: number, detail?: string) {
    const code = errnoName(errno);
    super(`${syscall}${detail ? ` ${detail}` : ''}: ${code} (${errno})`);
    this.name = 'SyscallError';
    this.errno = errno;
    this.code = code;
    this.syscall = syscall;
  }
}

export type SysResult<T> = { ok: true; value: T } | { ok: false; errno: number; name: string };

/** Runs fn; a SyscallError becomes {ok:false, errno, name}, any other error propagates. */
export function trySyscall<T>(fn: () => T): SysResult<T> {
  try {
    return { ok: true, value: fn() };
  } catch (e) {
    if (e instanceof SyscallError) return { ok: false, errno: e.errno, name: e.code };
    throw e;
  }
}

// x86_64 Linux constants.
export const O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_CREAT = 0o100, O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;
export const SEEK_SET = 0, SEEK_CUR = 1, SEEK_END = 2;
export const PROT_READ = 1, PROT_WRITE = 2, MAP_SHARED = 1, MAP_PRIVATE = 2;
export const RLIMIT_NOFILE = 7;
const _SC_PAGESIZE = 30;

interface Fns {
  open: (path: string, flags: number, ...va: unknown[]) => number;
  close: (fd: number) => number;
  ioctl: (fd: number, req: number, ...va: unknown[]) => number;
  pread: (fd: number, buf: Buffer, n: number, off: number | bigint) => number;
  pwrite: (fd: number, buf: Buffer, n: number, off: number | bigint) => number;
  read: (fd: number, buf: Buffer, n: number) => number;
  write: (fd: number, buf: Buffer, n: number) => number;
  lseek: (fd: number, off: number | bigint, whence: number) => number;
  mmap: (addr: number, len: number, prot: number, flags: number, fd: number, off: number | bigint) => number | bigint;
  munmap: (addr: number | bigint, len: number) => number;
  getrlimit: (res: number, buf: Buffer) => number;
  setrlimit: (res: number, buf: Buffer) => number;
  sysconf: (name: number) => number;
  memfd_create: (name: string, flags: number) => number;
  ftruncate: (fd: number, length: number | bigint) => number;
  eventfd: (initval: number, flags: number) => number;
}

let fns: Fns | undefined;
function c(): Fns {
  if (fns) return fns;
  const lib = koffi.load('libc.so.6');
  // ssize_t/off_t are 64-bit on x86_64; mmap returns intptr_t so MAP_FAILED compares as -1.
  fns = {
    open: lib.func('int open(const char *path, int flags, ...)'),
    close: lib.func('int close(int fd)'),
    ioctl: lib.func('int ioctl(int fd, unsigned long req, ...)'),
    pread: lib.func('int64_t pread(int fd, void *buf, size_t n, int64_t off)'),
    pwrite: lib.func('int64_t pwrite(int fd, const void *buf, size_t n, int64_t off)'),
    read: lib.func('int64_t read(int fd, void *buf, size_t n)'),
    write: lib.func('int64_t write(int fd, const void *buf, size_t n)'),
    lseek: lib.func('int64_t lseek(int fd, int64_t off, int whence)'),
    mmap: lib.func('intptr_t mmap(intptr_t addr, size_t len, int prot, int flags, int fd, int64_t off)'),
    munmap: lib.func('int munmap(intptr_t addr, size_t len)'),
    getrlimit: lib.func('int getrlimit(int res, void *rlim)'),
    setrlimit: lib.func('int setrlimit(int res, const void *rlim)'),
    sysconf: lib.func('long sysconf(int name)'),
    memfd_create: lib.func('int memfd_create(const char *name, unsigned int flags)'),
    ftruncate: lib.func('int ftruncate(int fd, int64_t length)'),
    eventfd: lib.func('int eventfd(unsigned int initval, int flags)'),
  };
  return fns;
}

/** Reads errno right after a failed call and throws. */
function check<T extends number | bigint>(ret: T, syscall: string, detail?: string): T {
  if (Number(ret) === -1) throw new SyscallError(syscall, koffi.errno(), detail);
  return ret;
}

export function open(path: string, flags: number, mode = 0o600): number {
  return check(c().open(path, flags, 'uint32_t', mode), 'open', path);
}
export function close(fd: number): void {
  check(c().close(fd), 'close');
}
/** ioctl with no argument, an integer argument, or a pointer to a Buffer (kernel may write into it). */
export function ioctl(fd: number, req: number, arg?: Buffer | number | bigint): number {
  const f = c().ioctl;
  const ret = arg === undefined ? f(fd, req)
    : Buffer.isBuffer(arg) ? f(fd, req, 'void *', arg)
    : f(fd, req, 'unsigned long', arg);
  return check(ret, 'ioctl', `0x${req.toString(16)}`);
}
export function pread(fd: number, buf: Buffer, offset: number | bigint): number {
  return Number(check(c().pread(fd, buf, buf.length, offset), 'pread'));
}
export function pwrite(fd: number, buf: Buffer, offset: number | bigint): number {
  return Number(check(c().pwrite(fd, buf, buf.length, offset), 'pwrite'));
}
export function read(fd: number, buf: Buffer, n = buf.length): number {
  return Number(check(c().read(fd, buf, Math.min(n, buf.length)), 'read'));
}
export function write(fd: number, buf: Buffer): number {
  return Number(check(c().write(fd, buf, buf.length), 'write'));
}
export function lseek(fd: number, offset: number | bigint, whence: number): number {
  return Number(check(c().lseek(fd, offset, whence), 'lseek'));
}
/** Returns the mapped address; pair with munmap. */
export function mmap(len: number, prot: number, flags: number, fd: number, offset: number | bigint = 0): bigint {
  return BigInt(check(c().mmap(0, len, prot, flags, fd, offset), 'mmap'));
}
export function munmap(addr: bigint, len: number): void {
  check(c().munmap(addr, len), 'munmap');
}
export function getrlimit(resource: number): { cur: bigint; max: bigint } {
  const b = Buffer.alloc(16);
  check(c().getrlimit(resource, b), 'getrlimit');
  return { cur: b.readBigUInt64LE(0), max: b.readBigUInt64LE(8) };
}
export function setrlimit(resource: number, cur: bigint, max: bigint): void {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(cur, 0);
  b.writeBigUInt64LE(max, 8);
  check(c().setrlimit(resource, b), 'setrlimit');
}
export const MFD_CLOEXEC = 1;
export const EFD_NONBLOCK = 0o4000, EFD_CLOEXEC = 0o2000000;
/** An anonymous shmem file: the kind of file IOMMU_IOAS_MAP_FILE can pin (memfd_pin_folios). */
export function memfdCreate(name: string, flags = MFD_CLOEXEC): number {
  return check(c().memfd_create(name, flags), 'memfd_create', name);
}
export function ftruncate(fd: number, length: number): void {
  check(c().ftruncate(fd, length), 'ftruncate');
}
export function eventfd(initval = 0, flags = EFD_CLOEXEC): number {
  return check(c().eventfd(initval, flags), 'eventfd');
}
export function pageSize(): number {
  return check(c().sysconf(_SC_PAGESIZE), 'sysconf');
}
