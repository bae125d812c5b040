// Prints "N passed, N failed, N skipped" from ava's TAP output, the line CI reads.
import { readFileSync } from 'node:fs';
import { Parser } from 'tap-parser';

const text = readFileSync(process.argv[2], 'utf8');
const result = Parser.parse(text);
const asserts = result.filter((e) => e[0] === 'assert').map((e) => e[1]);
const skipped = asserts.filter((a) => a.skip).length;
const failed = asserts.filter((a) => !a.ok && !a.todo && !a.skip).length;
const passed = asserts.length - failed - skipped;
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
