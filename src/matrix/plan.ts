// The plan of a matrix run, shown before anything is built: the cells, the
// distinct kernel builds they need (cells with the same source, patches and
// config share one), the cells refused and why, and how many guests run at
// once on this machine. Jobs are bounded by what the host has: a TCG guest
// keeps about two cores busy and needs its memory plus QEMU's, and builds
// run alone (a build wants every core; a guest starved of CPU misses its
// timer checks and boot timeouts).
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { LabSpec } from '../lab/types.ts';
import type { CellMeta } from '../reports/summary.ts';
import { iommuWords } from './cells.ts';
import type { CellSpec, Expectation, MatrixSpec, RefusedCell } from './types.ts';

export interface PlannedBuild {
  key: string;
  label: string;
  source: boolean;
  /** Ids of the cells that share it, in cell order. */
  cells: string[];
}

export function plannedBuilds(cells: readonly CellSpec[]): PlannedBuild[] {
  const out: PlannedBuild[] = [];
  for (const c of cells) {
    const b = out.find((x) => x.key === c.build.key);
    if (b) b.cells.push(c.id);
    else out.push({ key: c.build.key, label: c.build.label, source: c.build.source, cells: [c.id] });
  }
  return out;
}

/** The one command that runs a cell alone (what the reports print for each cell). */
export function reproduceCommand(matrixArg: string, id: string): string {
  const q = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
  return `./hwlab matrix run ${q(matrixArg)} --cell ${q(id)}`;
}

export function describeExpectation(e: Expectation): string {
  const parts: string[] = [];
  if (e.params) parts.push(`params ${JSON.stringify(e.params)}${e.where ? ` where ${JSON.stringify(e.where)}` : ''}`);
  if (e.expectFail !== undefined) parts.push(`expected to fail${e.points ? ` (only points ${e.points.map((x) => JSON.stringify(x)).join(', ')})` : ''}: ${e.expectFail}`);
  return parts.join('; ');
}

/** cell.json; `planned` is every cell of the run this cell is part of (a CI job's run is the whole workflow's). */
export function cellMeta(m: MatrixSpec, cell: CellSpec, matrixArg: string, planned: readonly string[]): CellMeta {
  return {
    id: cell.id,
    matrix: { name: m.name, file: matrixArg, cells: [...planned] },
    axes: { ...cell.axes } as Record<string, string>,
    expectations: cell.expectations.map((e) => ({ probe: e.probe, ...(e.device ? { device: e.device } : {}), what: describeExpectation(e), reason: e.reason, at: e.at })),
    build: { key: cell.build.key, label: cell.build.label },
    reproduce: reproduceCommand(matrixArg, cell.id),
  };
}

// ---------------------------------------------------------------------------
// How many guests at once.

export interface HostResources {
  cpus: number;
  /** MemAvailable, MiB. */
  availMiB: number;
}

export function hostResources(): HostResources {
  let availMiB = Math.floor(os.freemem() / 1048576);
  try {
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
    if (m) availMiB = Math.floor(Number(m[1]) / 1024);
  } catch { /* not Linux: freemem */ }
  return { cpus: os.cpus().length, availMiB };
}

/** Cores one TCG guest keeps busy (QEMU's vCPU threads and its I/O thread; the labs use smp 2). */
export const CORES_PER_GUEST = 2;
/** QEMU's own memory beside the guest's RAM under TCG (translation cache, device models), MiB. */
export const QEMU_OVERHEAD_MIB = 512;
/** Memory kept free for the host, hwlab and the page cache, MiB. */
export const HOST_RESERVE_MIB = 2048;

/** A guest's memory as the host sees it: its RAM, the RAM-backed BAR files in /dev/shm, QEMU itself. */
export function guestMemoryMiB(lab: LabSpec): number {
  const shm = lab.topology.endpoints.reduce((n, e) => n + (e.type === 'ivshmem-plain' ? e.memoryMiB : 0), 0);
  return lab.machine.memoryMiB + shm + QEMU_OVERHEAD_MIB;
}

export interface JobsDecision {
  jobs: number;
  /** What the host allows: by cores, by memory. */
  byCores: number;
  byMemory: number;
  perGuestMiB: number;
  notes: string[];
}

export function decideJobs(requested: number | undefined, cells: readonly CellSpec[], host: HostResources): JobsDecision {
  const perGuestMiB = Math.max(0, ...cells.map((c) => guestMemoryMiB(c.lab)));
  const byCores = Math.max(1, Math.floor(host.cpus / CORES_PER_GUEST));
  const byMemory = Math.max(1, Math.floor((host.availMiB - HOST_RESERVE_MIB) / Math.max(1, perGuestMiB)));
  const notes: string[] = [];
  const auto = Math.min(byCores, byMemory);
  let jobs = requested ?? auto;
  if (jobs > byMemory) {
    notes.push(`--jobs ${jobs} lowered to ${byMemory}: ${host.availMiB} MiB available, ${HOST_RESERVE_MIB} MiB kept for the host, up to ${perGuestMiB} MiB per guest`);
    jobs = byMemory;
  }
  if (jobs > byCores) notes.push(`${jobs} guests on ${host.cpus} cores: each TCG guest keeps about ${CORES_PER_GUEST} busy, so they will slow each other down (boot and probe timeouts are the labs' own)`);
  jobs = Math.max(1, Math.min(jobs, cells.length || 1));
  return { jobs, byCores, byMemory, perGuestMiB, notes };
}

export function formatPlan(m: MatrixSpec, cells: readonly CellSpec[], refused: readonly RefusedCell[], builds: readonly PlannedBuild[], jobs?: JobsDecision): string {
  const rel = path.relative(process.cwd(), m.file) || m.file;
  const lines = [`matrix ${m.name} (${rel}): ${cells.length} cell${cells.length === 1 ? '' : 's'}, ${builds.length} kernel build${builds.length === 1 ? '' : 's'}${refused.length ? `, ${refused.length} refused` : ''}${jobs ? `, ${jobs.jobs} at a time` : ''}`];
  if (m.description) lines.push(`  ${m.description}`);
  lines.push('builds (each built once, or taken from the cache, before the cells that share it):');
  builds.forEach((b, i) => lines.push(`  b${i + 1} ${b.key}  ${b.label}  (${b.cells.length} cell${b.cells.length === 1 ? '' : 's'})`));
  const idW = Math.max(4, ...cells.map((c) => c.id.length));
  lines.push('cells:');
  for (const c of cells) {
    const b = builds.findIndex((x) => x.key === c.build.key) + 1;
    const i = c.lab.iommu;
    const iommu = iommuWords(i);
    lines.push(`  ${c.id.padEnd(idW)}  lab ${c.lab.name}, ${iommu}, ${c.lab.probes.length} probe${c.lab.probes.length === 1 ? '' : 's'}, build b${b}`);
    for (const e of c.expectations) lines.push(`  ${' '.repeat(idW)}    expects ${e.probe}${e.device ? ` on ${e.device}` : ''}: ${describeExpectation(e)}`);
  }
  if (refused.length) {
    lines.push('refused (nothing is built for them):');
    for (const r of refused) {
      lines.push(`  ${r.id}`);
      for (const why of r.reasons) lines.push(`      ${why}`);
    }
  }
  for (const n of jobs?.notes ?? []) lines.push(`note: ${n}`);
  return lines.join('\n');
}
