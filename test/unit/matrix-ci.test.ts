// The generated CI files, checked by the engines' own validators: the GitHub
// workflow by @action-validator/core (GitHub's workflow schema plus job
// references), the GitLab pipeline against GitLab's published CI schema
// (test/fixtures/schemas/gitlab-ci.json, see SOURCES.md) with ajv. Each
// validator is shown to reject a broken file first, so a pass means
// something; then the structure the issue asks for is checked.
import test from 'ava';
import { validateWorkflow } from '@action-validator/core';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { githubWorkflow, gitlabPipeline } from '../../src/matrix/ci.ts';
import { loadMatrix } from '../../src/matrix/load.ts';
import type { MatrixSpec } from '../../src/matrix/types.ts';
import { jsonSchemaValidator } from './helpers/validators.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
process.chdir(repo);

// labs/matrix.yaml's runnable cells (the refused ones wait for their fragments; the generator takes a valid matrix).
async function matrix(): Promise<MatrixSpec> {
  const m = await loadMatrix('labs/matrix.yaml');
  return { ...m, refused: [] };
}

const gitlabValidator = () => jsonSchemaValidator('gitlab-ci.json');

test('the GitHub validator rejects a broken workflow (so passing it means something)', (t) => {
  const broken = 'on: pushy\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    needs: [nowhere]\n    steps:\n      - run: true\n';
  const errs = validateWorkflow(broken).errors;
  t.true(errs.some((e) => e.code === 'unresolved_job'));
  t.true(errs.length >= 2);
});

test('GitHub: a valid workflow, a job per cell over strategy.matrix, the cache keyed by the build, artifacts, a merge, nightly', async (t) => {
  const m = await matrix();
  const text = githubWorkflow(m, { matrixArg: 'labs/matrix.yaml' });
  t.deepEqual(validateWorkflow(text).errors, []);
  const w = parse(text);
  t.deepEqual(Object.keys(w.on).sort(), ['pull_request', 'push', 'schedule', 'workflow_dispatch']);
  t.regex(w.on.schedule[0].cron, /^\d+ \d+ \* \* \*$/);
  const cell = w.jobs.cell;
  t.deepEqual(cell.strategy.matrix.cell, m.cells.map((c) => c.id));
  t.false(cell.strategy['fail-fast']);
  const steps = cell.steps as Array<Record<string, any>>;
  const run = steps.map((s) => s.run ?? '').join('\n');
  t.regex(run, /hwlab matrix key labs\/matrix\.yaml --cell "\$CELL"/);
  t.regex(run, /hwlab matrix run labs\/matrix\.yaml --cell "\$CELL" --whole-matrix --out "hwlab-cell\/\$CELL"/);
  t.false(/\$\{\{\s*matrix/.test(run), 'cell ids reach the shell through env, not template expansion');
  const cache = steps.find((s) => s.uses === 'actions/cache@v4')!;
  t.is(cache.with.key, 'hwlab-${{ runner.os }}-${{ steps.key.outputs.key }}');
  t.is(cache.with.path, '.hwlab-cache');
  t.is(cell.env.HWLAB_CACHE, '${{ github.workspace }}/.hwlab-cache');
  const upload = steps.find((s) => s.uses === 'actions/upload-artifact@v4')!;
  t.is(upload.if, 'always()');
  t.is(upload.with.path, 'hwlab-cell/${{ matrix.cell }}');
  const merge = w.jobs.merge;
  t.is(merge.needs, 'cell');
  t.is(merge.if, 'always()');
  const mrun = (merge.steps as Array<Record<string, any>>);
  t.truthy(mrun.find((s) => s.uses === 'actions/download-artifact@v4' && s.with.pattern === 'hwlab-cell-*'));
  t.truthy(mrun.find((s) => /hwlab merge hwlab-cell --out hwlab-merged/.test(s.run ?? '')));
  t.truthy(mrun.find((s) => /GITHUB_STEP_SUMMARY/.test(s.run ?? '')));
  // In a kernel tree's repository, hwlab lives in a folder of its own.
  const inTree = githubWorkflow(m, { matrixArg: '.hwlab/matrix.yaml', hwlabDir: 'hwlab', runsOn: 'self-hosted' });
  t.deepEqual(validateWorkflow(inTree).errors, []);
  t.regex(inTree, /hwlab\/hwlab matrix run \.hwlab\/matrix\.yaml/);
  t.deepEqual(parse(inTree).jobs.cell.steps[0], { uses: 'actions/checkout@v4', with: { submodules: 'recursive' } });
});

test('GitLab\'s schema rejects a broken pipeline (so passing it means something)', (t) => {
  const validate = gitlabValidator();
  t.false(validate(parse('cell:\n  script: []\n  when: sometimes\n')));
  t.true((validate.errors ?? []).length > 0);
  t.false(validate(parse('cell:\n  script: [x]\n  parallel: { matrix: [] , max: 3 }\n')));
});

test('GitLab: valid against GitLab\'s CI schema; parallel:matrix over the cells, cache per build key, artifacts and JUnit, a merge', async (t) => {
  const m = await matrix();
  const text = gitlabPipeline(m, { matrixArg: 'labs/matrix.yaml', tags: ['kvm'] });
  const validate = gitlabValidator();
  const p = parse(text);
  t.true(validate(p), JSON.stringify(validate.errors, null, 2));
  t.deepEqual(p.stages, ['cells', 'merge']);
  const sources = (p.workflow.rules as Array<{ if: string }>).map((r) => r.if).join('\n');
  for (const s of ['merge_request_event', 'schedule', 'push']) t.true(sources.includes(`"${s}"`), `runs on ${s}`);
  t.deepEqual(p.cell.parallel.matrix.map((x: { HWLAB_CELL: string }) => x.HWLAB_CELL), m.cells.map((c) => c.id));
  t.deepEqual(p.cell.parallel.matrix.map((x: { HWLAB_BUILD_KEY: string }) => x.HWLAB_BUILD_KEY), m.cells.map((c) => c.build.key));
  t.is(p.cell.cache.key, 'hwlab-$HWLAB_BUILD_KEY');
  t.deepEqual(p.cell.cache.paths, ['.hwlab-cache/']);
  t.is(p.variables.HWLAB_CACHE, '$CI_PROJECT_DIR/.hwlab-cache');
  t.regex(p.cell.script[0], /hwlab matrix run labs\/matrix\.yaml --cell "\$HWLAB_CELL" --whole-matrix --out "hwlab-cell\/\$HWLAB_CELL"/);
  t.is(p.cell.artifacts.when, 'always');
  t.is(p.cell.artifacts.reports.junit, 'hwlab-cell/*/junit.xml');
  t.deepEqual(p.merge.needs, [{ job: 'cell', artifacts: true }]);
  t.is(p.merge.when, 'always');
  t.regex(p.merge.script[0], /hwlab merge hwlab-cell --out hwlab-merged/);
  t.deepEqual(p.default.tags, ['kvm']);
  const inTree = parse(gitlabPipeline(m, { matrixArg: '.hwlab/matrix.yaml', hwlabDir: 'hwlab' }));
  t.true(validate(inTree), JSON.stringify(validate.errors, null, 2));
  t.is(inTree.variables.GIT_SUBMODULE_STRATEGY, 'recursive');
  t.regex(inTree.merge.script[0], /^hwlab\/hwlab merge/);
});
