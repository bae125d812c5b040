// `hwlab check <lab.yaml|matrix.yaml>`: validate a lab or matrix file and
// nothing else (no download, no build, no guest), so an editor, a pre-commit
// hook or CI can refuse a broken file in a second. Every problem is printed
// at file:line:col, all at once; exit 0 when the file is fine, 2 when not.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse } from 'yaml';
import { loadImageRecipe } from '../image/recipe.ts';
import { loadPatchSeries } from '../kernel/patches.ts';
import { imagesDirFor, loadLab } from '../lab/load.ts';
import { loadMatrix } from '../matrix/load.ts';
import { HwlabError } from '../util/errors.ts';
import { YamlError, type YamlIssue } from '../util/yaml.ts';
import { flag, type CommandSpec } from './command.ts';

export interface CheckReport {
  file: string;
  kind: 'lab' | 'matrix';
  ok: boolean;
  /** Located problems (file:line:col), then problems without a place (a patch that does not parse, a refused cell). */
  problems: Array<YamlIssue | { file: string; message: string }>;
  /** What the file holds, when it is fine: probes of a lab, cells of a matrix. */
  summary?: string;
}

/** A matrix file says so by its top-level keys; anything else is read as a lab. */
async function kindOf(file: string): Promise<'lab' | 'matrix'> {
  try {
    const data = parse(await readFile(file, 'utf8')) as unknown;
    return data && typeof data === 'object' && ('axes' in data || 'matrix' in data) ? 'matrix' : 'lab';
  } catch {
    return 'lab'; // unreadable or not YAML: the lab loader says where
  }
}

export async function checkFile(file: string): Promise<CheckReport> {
  const abs = path.resolve(file);
  const kind = await kindOf(abs);
  const problems: CheckReport['problems'] = [];
  let summary: string | undefined;
  const keep = (err: unknown) => {
    if (err instanceof YamlError) problems.push(...err.issues);
    else if (err instanceof HwlabError || err instanceof Error) problems.push({ file, message: err.message });
    else throw err;
  };
  try {
    if (kind === 'matrix') {
      const m = await loadMatrix(abs);
      for (const r of m.refused) problems.push({ file, message: `cell ${r.id} refused (${r.at}): ${r.reasons.join('; ')}` });
      summary = `matrix ${m.name}: ${m.cells.length} runnable cell${m.cells.length === 1 ? '' : 's'}, ${m.refused.length} refused`;
    } else {
      const lab = await loadLab(abs);
      // The loader checked that patch files exist; here they must also parse as patches.
      await loadPatchSeries(lab.kernel.patches).catch(keep);
      await loadImageRecipe(lab.image, imagesDirFor(lab.file, lab.image)).catch(keep);
      summary = `lab ${lab.name}: ${lab.probes.length} probe${lab.probes.length === 1 ? '' : 's'} on ${lab.topology.endpoints.length} endpoint${lab.topology.endpoints.length === 1 ? '' : 's'}, kernel ${lab.kernel.kind === 'source' ? 'built from source' : lab.kernel.package}`;
    }
  } catch (err) {
    keep(err);
    summary = undefined;
  }
  return { file, kind, ok: problems.length === 0, problems, ...(problems.length === 0 && summary ? { summary } : {}) };
}

export const checkCommand: CommandSpec = {
  name: 'check',
  summary: 'validate a lab or matrix file only (no download, no build): exit 0, or 2 with every problem at file:line',
  args: '<lab.yaml|matrix.yaml>',
  positionals: { min: 1, max: 1 },
  options: { json: { type: 'boolean', help: 'stdout: the report as JSON only' } },
  async handler(a) {
    const r = await checkFile(a.positionals[0]);
    if (flag(a, 'json')) process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
    else if (r.ok) process.stdout.write(`ok ${r.file}: ${r.summary}\n`);
    else {
      const lines = r.problems.map((p) => ('line' in p ? `${p.file}:${p.line}:${p.col}: ${p.path ? `${p.path}: ` : ''}${p.message}` : `${p.file}: ${p.message}`));
      process.stderr.write(`${lines.join('\n')}\n${r.problems.length} problem${r.problems.length === 1 ? '' : 's'} in ${r.file}\n`);
    }
    return r.ok ? 0 : 2;
  },
};
