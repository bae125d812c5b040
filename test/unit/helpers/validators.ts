// The real validators of the formats hwlab writes, for the unit tests:
// ajv (draft-07) with ajv-formats for JSON schemas (KCIDB, GitLab CI), and
// xmllint --schema for XML schemas (JUnit), installed from Debian when it is
// missing, as hwlab installs its own host packages.
import { Ajv, type ValidateFunction } from 'ajv';
import formatsImport from 'ajv-formats';
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { installPackages, which } from '../../../src/util/host-tools.ts';

export const schemasDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../fixtures/schemas');

// ajv-formats is CommonJS with a default export; under NodeNext its default import is the module object.
const addFormats = ((formatsImport as unknown as { default?: unknown }).default ?? formatsImport) as (ajv: Ajv) => Ajv;

export function jsonSchemaValidator(file: string): ValidateFunction {
  const ajv = new Ajv({ strict: false, allErrors: true });
  addFormats(ajv);
  return ajv.compile(JSON.parse(readFileSync(path.join(schemasDir, file), 'utf8')));
}

/** xmllint's verdict on `xml` against the XSD in the fixtures: ok, and what it said. */
export async function xmlValidate(xml: string, xsd: string): Promise<{ ok: boolean; output: string }> {
  if (!(await which('xmllint'))) await installPackages(['libxml2-utils'], () => {});
  const dir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-xsd-'));
  try {
    const file = path.join(dir, 'doc.xml');
    await writeFile(file, xml);
    const r = await execa('xmllint', ['--noout', '--schema', path.join(schemasDir, xsd), file], { reject: false, timeout: 60_000 });
    return { ok: r.exitCode === 0, output: `${r.stdout}${r.stderr}` };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
