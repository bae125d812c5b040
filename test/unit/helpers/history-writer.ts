// A second process writing into a results history, for the unit tests of
// concurrent writers and of a crash inside a transaction:
//   history-writer.ts write <db> <tag> <n>    records n runs, one transaction each
//   history-writer.ts crash <db> <tag> <n>    records n runs, then starts one more
//                                             inside a transaction, says "inside"
//                                             and waits to be killed
import { openHistory } from '../../../src/history/db.ts';
import { recordRun } from '../../../src/history/record.ts';
import { cell, report } from './history-cells.ts';

const [mode, file, tag, nText] = process.argv.slice(2);
const n = Number(nText);
const db = openHistory(file);
const one = (i: number) => cell(`/runs/${tag}-${i}`, new Date(Date.UTC(2026, 11, 1, 0, 0, i)).toISOString(), [
  { name: 'dmabuf-export', device: 'shm0', points: ['export=pass', 'size=pass', `case ${i}=fail`], reports: i % 2 ? [report(`WARNING in writer_${tag}`)] : [] },
]);
for (let i = 0; i < n; i++) recordRun(db, one(i), { purpose: 'import' });
if (mode === 'crash') {
  db.transaction(() => {
    recordRun(db, one(n), { purpose: 'import' });
    process.stdout.write('inside\n');
    // Block inside the open transaction (synchronously, as a long write would) until killed.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 120_000);
  })();
}
db.close();
process.stdout.write('done\n');
