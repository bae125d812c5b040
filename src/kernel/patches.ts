// Patch series: loading (plain files, quilt directories, b4 / git format-patch
// mboxes) and applying them, in order, to a scratch copy of a kernel tree.
//
// Application uses GNU patch rather than `git apply`: it works on any tree (a
// tarball or Debian source is not a git repository, and `git apply` inside a
// directory that happens to sit in some other repository would resolve paths
// against that repository), and its per-hunk messages name the failing hunk.
// Verified (test/unit/patches.test.ts): GNU patch writes each result to a
// temporary file and renames it over the target, so a hard-linked scratch copy
// never writes through to the pristine tree. applySeries also breaks any
// remaining hard link of a file before patching it, so that safety does not
// rest on the tool alone.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { chmod, copyFile, lstat, mkdir, mkdtemp, readFile, readlink, rename, rm, stat, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { sha256 } from '../util/cache.ts';

import type { Step } from '../util/progress.ts';
import { InfraError, InputError } from '../util/errors.ts';

export interface PatchFile {
  /** Short name for results: file name, quilt series entry, or `0001-subject.patch` for mbox messages. */
  name: string;
  /** File it came from; `<mbox>#N` for mbox messages (N = patch number n of [PATCH n/N], else position). */
  origin: string;
  /** sha256 of `text`. */
  sha256: string;
  text: string;
  /** Subject line without the [PATCH ...] prefix, when the patch is an email. */
  subject?: string;
  /** Leading path components to strip (`patch -pN`); 1 unless a quilt series says otherwise. */
  strip: number;
}

export type PatchSourceSpec = { kind: 'file'; path: string } | { kind: 'quilt'; dir: string } | { kind: 'mbox'; path: string };

// ---------------------------------------------------------------------------
// Parsing of unified diffs (enough to name files and hunks, and to know which
// paths a patch touches).

export interface DiffHunk {
  /** The `@@ -a,b +c,d @@ context` line. */
  header: string;
  /** Hunk body lines (without the header). */
  lines: string[];
}

export interface DiffSection {
  /** Paths as written (`a/drivers/x.c`), '/dev/null' for creation/deletion; from ---/+++ or the git header. */
  oldPath: string;
  newPath: string;
  hunks: DiffHunk[];
}

const HUNK_RE = /^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@/;

/** Strips git's quoting and a trailing tab + timestamp (diff -u) from a ---/+++ path. */
function cleanPath(p: string): string {
  let s = p.replace(/\t.*$/, '');
  if (s.startsWith('"') && s.endsWith('"')) s = s.slice(1, -1).replace(/\\(.)/g, '$1');
  return s.trim();
}

/** Splits a patch into per-file sections with their hunks. Text outside diffs (mail, commit message) is ignored. */
export function parseDiff(text: string): DiffSection[] {
  const lines = text.split('\n');
  const sections: DiffSection[] = [];
  let gitHeader: { oldPath: string; newPath: string } | undefined;
  let i = 0;
  const flushGitOnly = () => {
    // A git section without ---/+++ (mode change, pure rename, binary): still a touched path.
    if (gitHeader) sections.push({ ...gitHeader, hunks: [] });
    gitHeader = undefined;
  };
  while (i < lines.length) {
    const line = lines[i].replace(/\r$/, '');
    const git = line.match(/^diff --git (?:"((?:[^"\\]|\\.)*)"|(\S+)) (?:"((?:[^"\\]|\\.)*)"|(\S+))$/);
    if (git) {
      flushGitOnly();
      gitHeader = { oldPath: git[1] ?? git[2], newPath: git[3] ?? git[4] };
      i++;
      continue;
    }
    if (gitHeader) {
      if (/^deleted file mode /.test(line)) gitHeader.newPath = '/dev/null';
      else if (/^new file mode /.test(line)) gitHeader.oldPath = '/dev/null';
    }
    if (line.startsWith('--- ') && i + 1 < lines.length && lines[i + 1].startsWith('+++ ')) {
      const sec: DiffSection = {
        oldPath: cleanPath(line.slice(4)),
        newPath: cleanPath(lines[i + 1].replace(/\r$/, '').slice(4)),
        hunks: [],
      };
      gitHeader = undefined;
      i += 2;
      // Hunks are read by their line counts, so a removed line that starts with "-- " is never taken for a header.
      while (i < lines.length) {
        const h = lines[i].replace(/\r$/, '').match(HUNK_RE);
        if (!h) break;
        let oldLeft = h[2] === undefined ? 1 : Number(h[2]);
        let newLeft = h[4] === undefined ? 1 : Number(h[4]);
        const hunk: DiffHunk = { header: lines[i].replace(/\r$/, ''), lines: [] };
        i++;
        while (i < lines.length && (oldLeft > 0 || newLeft > 0 || lines[i].startsWith('\\'))) {
          const l = lines[i];
          const c = l[0];
          if (c === '\\') { /* "\ No newline at end of file" */ }
          else if (c === '-') oldLeft--;
          else if (c === '+') newLeft--;
          else if (c === ' ' || l === '' || l === '\r') { oldLeft--; newLeft--; } // mailers may strip a context line's space
          else break; // truncated hunk: stop; patch(1) will report it
          hunk.lines.push(l);
          i++;
        }
        sec.hunks.push(hunk);
      }
      sections.push(sec);
      continue;
    }
    i++;
  }
  flushGitOnly();
  return sections;
}

/** `a/drivers/x.c` with strip 1 -> `drivers/x.c`, as patch(1) does (runs of '/' count as one). */
export function stripPath(p: string, strip: number): string | undefined {
  if (p === '/dev/null') return undefined;
  const parts = p.split('/').filter((s, idx) => s !== '' || idx === 0);
  if (parts[0] === '') parts.shift(); // absolute path: patch strips the leading '/' as a component
  if (parts.length <= strip) return undefined;
  return parts.slice(strip).join('/');
}

// ---------------------------------------------------------------------------
// Mail headers

interface Mail {
  headers: Map<string, string>;
  body: string;
}

/** RFC 5322 headers up to the first blank line, with folded lines unfolded. */
function parseMail(text: string): Mail {
  const lines = text.split('\n');
  const headers = new Map<string, string>();
  let i = 0;
  if (lines[0]?.startsWith('From ')) i = 1; // mbox separator line
  let last: string | undefined;
  for (; i < lines.length; i++) {
    const l = lines[i].replace(/\r$/, '');
    if (l === '') { i++; break; }
    if (/^[ \t]/.test(l) && last) {
      headers.set(last, `${headers.get(last)} ${l.trim()}`);
      continue;
    }
    const m = l.match(/^([!-9;-~]+):[ \t]?(.*)$/);
    if (!m) { i = 0; headers.clear(); break; } // not a mail: no headers at all
    last = m[1].toLowerCase();
    // Keep the first occurrence (a later "Subject:" in the body is not a header anyway).
    if (!headers.has(last)) headers.set(last, m[2].trim());
  }
  return { headers, body: lines.slice(i).join('\n') };
}

/** "[PATCH v2 3/7] vfio/pci: fix x" -> "vfio/pci: fix x". */
function cleanSubject(s: string): string {
  return s.replace(/^\s*((re|fwd?):\s*)*/i, '').replace(/^(\s*\[[^\]]*\]\s*)+/, '').trim();
}

/** [PATCH n/N] numbering, if any. */
function numbering(subject: string): { n: number; of: number } | undefined {
  const m = subject.match(/\[[^\]]*?\b(\d+)\/(\d+)\s*\]/);
  return m ? { n: Number(m[1]), of: Number(m[2]) } : undefined;
}

/** git format-patch's file name: 0001-vfio-pci-fix-x.patch. */
function formatPatchName(n: number, subject: string): string {
  const slug = subject.replace(/[^A-Za-z0-9._]+/g, '-').replace(/\.+/g, '.').replace(/^[-.]+|[-.]+$/g, '').slice(0, 52).replace(/[-.]+$/, '');
  return `${String(n).padStart(4, '0')}-${slug || 'patch'}.patch`;
}

// mbox separator lines: git format-patch writes "From <sha> Mon Sep 17 00:00:00 2001",
// b4 "From git@z Thu Jan  1 00:00:00 1970"; both are asctime dates. Requiring the date keeps a
// commit-message line that merely starts with "From " from splitting a message.
const MBOX_FROM_RE = /^From \S+ +(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +\d{1,2} \d{1,2}:\d{2}(:\d{2})?( [+-]?\w+)? \d{4}\r?$/;

/** Splits an mbox into message texts (each starting with its separator line). */
export function splitMbox(text: string): string[] {
  const lines = text.split('\n');
  const starts: number[] = [];
  lines.forEach((l, i) => {
    if (MBOX_FROM_RE.test(l) && (i === 0 || lines[i - 1].replace(/\r$/, '') === '')) starts.push(i);
  });
  if (starts.length === 0) return text.trim() ? [text] : []; // a single message saved without a separator
  return starts.map((s, k) => {
    const end = k + 1 < starts.length ? starts[k + 1] : lines.length;
    return lines.slice(s, end).join('\n').replace(/\n*$/, '\n');
  });
}

function refuseEncoded(mail: Mail, where: string): void {
  const cte = mail.headers.get('content-transfer-encoding')?.toLowerCase();
  if (cte === 'base64' || cte === 'quoted-printable') {
    throw new InputError(
      `${where}: the message body is ${cte}-encoded; hwlab applies patches as plain text`,
      'save the series with `b4 am` or `git format-patch`, which write 8bit text',
    );
  }
}

/** Patches of an mbox, cover letter dropped, in [PATCH n/N] order. */
export function parseMbox(text: string, origin: string): PatchFile[] {
  const msgs = splitMbox(text).map((m, idx) => {
    const mail = parseMail(m);
    const rawSubject = mail.headers.get('subject') ?? '';
    return { text: m, idx: idx + 1, mail, rawSubject, num: numbering(rawSubject), hasDiff: parseDiff(mail.body).length > 0 };
  });
  const patches = msgs.filter((m) => m.num?.n !== 0 && m.hasDiff);
  if (patches.length === 0) throw new InputError(`${origin}: no patches found in the mbox (${msgs.length} message(s), none with a diff)`);
  const numbered = patches.filter((m) => m.num);
  if (numbered.length > 0) {
    if (numbered.length !== patches.length) {
      throw new InputError(`${origin}: some messages are numbered [PATCH n/N] and some are not; cannot tell the order`);
    }
    const total = numbered[0].num!.of;
    const seen = new Map<number, number>();
    for (const m of numbered) {
      if (m.num!.of !== total) throw new InputError(`${origin}: message #${m.idx} is [PATCH ${m.num!.n}/${m.num!.of}] but others are n/${total} (mixed series?)`);
      if (seen.has(m.num!.n)) throw new InputError(`${origin}: patch ${m.num!.n}/${total} appears twice (messages #${seen.get(m.num!.n)} and #${m.idx}; mixed versions?)`);
      seen.set(m.num!.n, m.idx);
    }
    const missing = Array.from({ length: total }, (_, k) => k + 1).filter((n) => !seen.has(n));
    if (missing.length) throw new InputError(`${origin}: incomplete series: patch(es) ${missing.join(', ')} of ${total} missing`);
    patches.sort((a, b) => a.num!.n - b.num!.n);
  }
  return patches.map((m, k) => {
    refuseEncoded(m.mail, `${origin}#${m.num?.n ?? m.idx}`);
    const subject = cleanSubject(m.rawSubject);
    const n = m.num?.n ?? k + 1;
    return {
      name: formatPatchName(n, subject),
      origin: `${origin}#${m.num?.n ?? m.idx}`,
      sha256: sha256(m.text),
      text: m.text,
      subject: subject || undefined,
      strip: 1,
    };
  });
}

export interface QuiltEntry {
  /** Patch path relative to the series file's directory. */
  patch: string;
  strip: number;
  /** 1-based line in the series file. */
  line: number;
}

/** A quilt `series` file: one patch per line, `#` comments (whole line or trailing), blank lines, `-pN` options. */
export function parseQuiltSeries(text: string, where = 'series'): QuiltEntry[] {
  const out: QuiltEntry[] = [];
  text.split('\n').forEach((raw, idx) => {
    const line = raw.replace(/\r$/, '').replace(/(^|\s)#.*$/, '').trim();
    if (!line) return;
    const [patch, ...opts] = line.split(/\s+/);
    let strip = 1;
    for (let k = 0; k < opts.length; k++) {
      const o = opts[k];
      const m = o.match(/^-p(\d+)$/);
      if (m) strip = Number(m[1]);
      else if (o === '-p' && /^\d+$/.test(opts[k + 1] ?? '')) strip = Number(opts[++k]);
      else if (o === '-R') throw new InputError(`${where}:${idx + 1}: reversed patches (-R) are not supported: ${patch}`);
      else throw new InputError(`${where}:${idx + 1}: unknown option "${o}" for ${patch} (quilt series supports -pN)`);
    }
    out.push({ patch, strip, line: idx + 1 });
  });
  return out;
}

async function readPatchText(file: string, what: string): Promise<string> {
  try {
    const st = await stat(file);
    if (!st.isFile()) throw new InputError(`${what}: ${file} is not a file`);
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new InputError(`${what}: ${file} does not exist`);
    throw err;
  }
}

function fileToPatch(text: string, file: string, name: string, strip: number): PatchFile {
  if (parseDiff(text).length === 0) throw new InputError(`patch ${file}: no diff found in it (is it a patch?)`);
  // Several mails in one file would reach patch(1) as one diff: refuse rather than apply them as one.
  const mails = splitMbox(text).filter((m) => parseDiff(m).length > 0);
  if (mails.length > 1) throw new InputError(`patch ${file} holds ${mails.length} patch mails (an mbox)`, 'list it as an mbox (mbox: <file>) so each patch is applied and recorded on its own');
  const mail = parseMail(text);
  refuseEncoded(mail, `patch ${file}`);
  const subject = mail.headers.has('subject') ? cleanSubject(mail.headers.get('subject')!) : undefined;
  return { name, origin: file, sha256: sha256(text), text, subject: subject || undefined, strip };
}

/** Loads all patch sources, in order, into one flat series. */
export async function loadPatchSeries(specs: PatchSourceSpec[]): Promise<PatchFile[]> {
  const out: PatchFile[] = [];
  for (const spec of specs) {
    if (spec.kind === 'file') {
      const file = path.resolve(spec.path);
      out.push(fileToPatch(await readPatchText(file, 'patch'), file, path.basename(file), 1));
    } else if (spec.kind === 'mbox') {
      const file = path.resolve(spec.path);
      out.push(...parseMbox(await readPatchText(file, 'mbox'), file));
    } else {
      const dir = path.resolve(spec.dir);
      // quilt's own layout keeps the series inside patches/; accept pointing at either directory.
      const seriesDir = [dir, path.join(dir, 'patches')].find((d) => existsSync(path.join(d, 'series')));
      if (!seriesDir) throw new InputError(`quilt: no series file in ${dir} (nor in ${path.join(dir, 'patches')})`);
      const seriesFile = path.join(seriesDir, 'series');
      const entries = parseQuiltSeries(await readFile(seriesFile, 'utf8'), seriesFile);
      if (entries.length === 0) throw new InputError(`quilt: ${seriesFile} lists no patches`);
      for (const e of entries) {
        const file = path.resolve(seriesDir, e.patch);
        const text = await readPatchText(file, `quilt: ${seriesFile}:${e.line}`);
        out.push(fileToPatch(text, file, e.patch, e.strip));
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Application

export interface PatchFailure {
  /** Path inside the tree (after stripping). */
  file: string;
  /** 1-based hunk number within that file's section, when a hunk failed. */
  hunk?: number;
  /** Line patch(1) tried it at. */
  at?: number;
  /** The hunk's @@ line and first lines, when known. */
  hunkHeader?: string;
  hunkExcerpt?: string[];
  reason: string;
}

const EXCERPT_LINES = 6;

export class PatchApplyError extends InputError {
  constructor(
    readonly patch: PatchFile,
    readonly index: number,
    readonly total: number,
    readonly failures: PatchFailure[],
    readonly appliedBefore: PatchFile[],
    readonly toolOutput: string,
  ) {
    super(PatchApplyError.format(patch, index, total, failures, appliedBefore, toolOutput), 'refresh the patch against this kernel tree, or drop it from the series', 'patch-does-not-apply');
  }

  private static format(patch: PatchFile, index: number, total: number, failures: PatchFailure[], before: PatchFile[], out: string): string {
    const lines = [`patch ${index + 1}/${total} "${patch.name}" (${patch.origin}) does not apply:`];
    for (const f of failures) {
      if (f.hunk !== undefined) {
        lines.push(`  ${f.file}: hunk #${f.hunk} ${f.reason}${f.at !== undefined ? ` (tried at line ${f.at})` : ''}`);
        if (f.hunkHeader) lines.push(`    ${f.hunkHeader}`);
        for (const l of f.hunkExcerpt ?? []) lines.push(`    ${l}`);
      } else {
        lines.push(`  ${f.file}: ${f.reason}`);
      }
    }
    if (failures.length === 0) lines.push(...out.trim().split('\n').map((l) => `  ${l}`));
    lines.push(
      before.length
        ? `applied cleanly before it: ${before.map((p) => p.name).join(', ')}`
        : 'no patch before it in the series',
    );
    lines.push(`nothing of "${patch.name}" was applied`);
    return lines.join('\n');
  }
}

const PATCH_TIMEOUT_MS = 120_000;

async function runPatch(treeDir: string, p: PatchFile, dryRun: boolean) {
  return execa(
    'patch',
    [
      '-d', treeDir, `-p${p.strip}`, '--batch', '--forward',
      // No fuzz: like `git am`, a hunk whose context moved is wrong, not "close enough" (offsets are still fine).
      '--fuzz=0', '--no-backup-if-mismatch', '--reject-file=-', '--quoting-style=literal',
      ...(dryRun ? ['--dry-run'] : []),
    ],
    { input: p.text, reject: false, all: true, timeout: PATCH_TIMEOUT_MS, env: { LC_ALL: 'C', POSIXLY_CORRECT: undefined }, extendEnv: true },
  );
}

/** Reads GNU patch's (LC_ALL=C) output into failures, with the hunks looked up in the patch text. */
export function describeFailures(output: string, p: PatchFile): PatchFailure[] {
  const sections = parseDiff(p.text).map((s) => ({
    ...s,
    names: [stripPath(s.newPath, p.strip), stripPath(s.oldPath, p.strip)].filter((x): x is string => !!x),
  }));
  const seenCount = new Map<string, number>();
  let current: string | undefined;
  let currentSection: (typeof sections)[number] | undefined;
  const failures: PatchFailure[] = [];
  const lines = output.split('\n');
  const setCurrent = (file: string) => {
    current = file;
    // The k-th "checking file X" is the k-th section naming X (a file can appear more than once in a patch).
    const k = seenCount.get(file) ?? 0;
    seenCount.set(file, k + 1);
    currentSection = sections.filter((s) => s.names.includes(file))[k];
  };
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i];
    let m: RegExpMatchArray | null;
    if ((m = l.match(/^(?:checking|patching) file (.+?)(?: \((?:renamed|copied|read) from .+\))?$/))) {
      setCurrent(m[1]);
    } else if ((m = l.match(/^Hunk #(\d+) FAILED at (\d+)(.*)\.$/))) {
      const n = Number(m[1]);
      const hunk = currentSection?.hunks[n - 1];
      failures.push({
        file: current ?? '?',
        hunk: n,
        at: Number(m[2]),
        reason: `FAILED${m[3] ? ` ${m[3].trim()}` : ''}: its context does not match`,
        hunkHeader: hunk?.header,
        hunkExcerpt: hunk?.lines.slice(0, EXCERPT_LINES),
      });
    } else if (/^Reversed \(or previously applied\) patch detected!/.test(l)) {
      failures.push({ file: current ?? '?', reason: 'already applied? patch found its changes already present (a hunk matches reversed) and skipped the file' });
    } else if ((m = l.match(/^can't find file to patch at input line (\d+)/))) {
      // The quoted text that follows (the whole mail header, possibly) ends with the file's header lines.
      let plus: string | undefined;
      let minus: string | undefined;
      let gitNew: string | undefined;
      for (let j = i + 1; j < lines.length && !/^(No file to patch|File to patch:)/.test(lines[j]); j++) {
        const q = lines[j].match(/^\|(\+\+\+|---) (.+)$/);
        if (q && q[1] === '+++') plus = stripPath(cleanPath(q[2]), p.strip);
        if (q && q[1] === '---') minus = stripPath(cleanPath(q[2]), p.strip);
        const g = lines[j].match(/^\|diff --git \S+ (\S+)$/);
        if (g) gitNew = stripPath(g[1], p.strip);
      }
      const name = plus ?? minus ?? gitNew;
      failures.push({ file: name ?? `(input line ${m[1]})`, reason: `no such file in the tree (patch strips ${p.strip} leading path component(s))` });
    } else if ((m = l.match(/^The next patch would create the file (.+),$/))) {
      failures.push({ file: m[1], reason: 'the patch creates it, but it already exists' });
    } else if ((m = l.match(/^The next patch would delete the file (.+),$/))) {
      failures.push({ file: m[1], reason: 'the patch deletes it, but it does not exist' });
    } else if ((m = l.match(/^Not deleting file (.+) as content differs from patch$/))) {
      failures.push({ file: m[1], reason: 'the patch deletes it, but its content differs from the patch' });
    } else if ((m = l.match(/^patch: \*{4} (.*)$/))) {
      failures.push({ file: current ?? '(patch)', reason: m[1] });
    } else if ((m = l.match(/^File (.+) is not a regular file -- (?:refusing to patch|can't patch)/))) {
      failures.push({ file: m[1], reason: 'not a regular file' });
    } else if ((m = l.match(/^Ignoring potentially dangerous file name (.+)$/))) {
      failures.push({ file: m[1], reason: 'path leaves the tree; refused' });
    }
  }
  return failures;
}

/** Paths inside the tree a patch may write (old and new names), for snapshot and link breaking. */
function touchedPaths(p: PatchFile, treeDir: string): string[] {
  const root = path.resolve(treeDir);
  const out = new Set<string>();
  for (const s of parseDiff(p.text)) {
    for (const raw of [s.oldPath, s.newPath]) {
      const rel = stripPath(raw, p.strip);
      if (!rel) continue;
      const full = path.resolve(root, rel);
      if (full.startsWith(root + path.sep)) out.add(full);
    }
  }
  return [...out];
}

type Saved = { full: string; kind: 'file'; copy: string; mode: number } | { full: string; kind: 'link'; target: string } | { full: string; kind: 'absent'; createdDir?: string };

/** Copies every file the patch may touch, so a failed real run can be undone. */
async function snapshot(paths: string[], snapDir: string, treeDir: string): Promise<Saved[]> {
  const saved: Saved[] = [];
  let k = 0;
  for (const full of paths) {
    const st = await lstat(full).catch(() => undefined);
    if (!st) {
      // Remember the topmost directory patch would have to create, to remove it again.
      let d = path.dirname(full);
      let createdDir: string | undefined;
      while (d.startsWith(path.resolve(treeDir) + path.sep) && !existsSync(d)) { createdDir = d; d = path.dirname(d); }
      saved.push({ full, kind: 'absent', createdDir });
    } else if (st.isSymbolicLink()) {
      saved.push({ full, kind: 'link', target: await readlink(full) });
    } else if (st.isFile()) {
      const copy = path.join(snapDir, String(k++));
      await copyFile(full, copy);
      saved.push({ full, kind: 'file', copy, mode: st.mode & 0o7777 });
      if (st.nlink > 1) await breakLink(full, st.mode & 0o7777);
    }
  }
  return saved;
}

/** Replaces a hard-linked file by a private copy, so nothing written to it can reach the pristine tree. */
async function breakLink(full: string, mode: number): Promise<void> {
  const tmp = `${full}.hwlab-unlink-${process.pid}`;
  await copyFile(full, tmp);
  await chmod(tmp, mode);
  await rename(tmp, full);
}

async function restore(saved: Saved[]): Promise<void> {
  for (const s of saved) {
    await rm(s.full, { force: true });
    // Deleting a tree's last file makes patch remove the emptied directory too.
    if (s.kind !== 'absent') await mkdir(path.dirname(s.full), { recursive: true });
    if (s.kind === 'file') {
      await copyFile(s.copy, s.full);
      await chmod(s.full, s.mode);
    } else if (s.kind === 'link') {
      await symlink(s.target, s.full);
    } else if (s.createdDir) {
      await rm(s.createdDir, { recursive: true, force: true });
    }
  }
}

/**
 * True when some file appears in more than one section. GNU patch's --dry-run
 * does not see its own earlier sections, so it would refuse a plain (non-git)
 * diff that a real run applies. (Git-style diffs read every file from its
 * original state in both modes, so such a patch fails either way.)
 */
function repeatsAFile(p: PatchFile): boolean {
  const seen = new Set<string>();
  for (const s of parseDiff(p.text)) {
    const n = stripPath(s.newPath, p.strip) ?? stripPath(s.oldPath, p.strip);
    if (!n) continue;
    if (seen.has(n)) return true;
    seen.add(n);
  }
  return false;
}

/**
 * Applies the series in order to treeDir (a scratch copy the caller owns).
 * A patch that does not apply throws PatchApplyError and leaves the tree as
 * the patches before it left it: the patch is dry-run first, and the real run
 * is additionally protected by a snapshot of the files it touches.
 */
export async function applySeries(treeDir: string, patches: PatchFile[], opts: { step?: Step } = {}): Promise<void> {
  if (!(await stat(treeDir).catch(() => undefined))?.isDirectory()) throw new InfraError(`applySeries: ${treeDir} is not a directory`);
  const snapRoot = await mkdtemp(path.join(os.tmpdir(), 'hwlab-patch-'));
  try {
    for (let i = 0; i < patches.length; i++) {
      const p = patches[i];
      opts.step?.update(`patch ${i + 1}/${patches.length}: ${p.name}`);
      const fail = (out: string) => new PatchApplyError(p, i, patches.length, describeFailures(out, p), patches.slice(0, i), out);
      // GNU patch's dry run does not see its own earlier sections, so it would wrongly fail a patch
      // that edits one file in two sections; for those the snapshot alone guarantees atomicity.
      if (!repeatsAFile(p)) {
        const dry = await runPatch(treeDir, p, true);
        if (dry.exitCode !== 0) throw fail(dry.all ?? '');
      }
      const snapDir = path.join(snapRoot, String(i));
      await mkdir(snapDir);
      const saved = await snapshot(touchedPaths(p, treeDir), snapDir, treeDir);
      const real = await runPatch(treeDir, p, false);
      if (real.exitCode !== 0) {
        await restore(saved);
        throw fail(real.all ?? '');
      }
      await rm(snapDir, { recursive: true, force: true });
    }
  } finally {
    await rm(snapRoot, { recursive: true, force: true });
  }
}

/**
 * A copy of `pristine` at `dest` (which must not exist) for patching: directories
 * are new, files are hard links (`cp -al`), so a kernel-sized tree copies in a
 * second or two. Safe only for writers that replace files (GNU patch, and
 * applySeries breaks links of touched files anyway); never edit the copy in place.
 */
export async function scratchCopy(pristine: string, dest: string): Promise<void> {
  const src = path.resolve(pristine);
  const dst = path.resolve(dest);
  if (!(await stat(src).catch(() => undefined))?.isDirectory()) throw new InfraError(`scratchCopy: ${src} is not a directory`);
  if (existsSync(dst)) throw new InfraError(`scratchCopy: ${dst} already exists`);
  if (dst === src || dst.startsWith(src + path.sep)) throw new InfraError(`scratchCopy: ${dst} is inside ${src}`);
  await mkdir(path.dirname(dst), { recursive: true });
  const r = await execa('cp', ['-al', '--', src, dst], { reject: false, timeout: 600_000 });
  if (r.exitCode !== 0) {
    await rm(dst, { recursive: true, force: true });
    throw new InfraError(`scratchCopy: cp -al ${src} ${dst} failed: ${r.stderr.trim()}`, 'the cache and the scratch directory must be on one filesystem');
  }
}

