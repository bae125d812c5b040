// A second process for the lock tests: takes the lock named on its command
// line with hwlab's withLock, prints "held" and holds it until killed (or for
// the milliseconds given), so the tests can kill a real holder.
import { withLock } from '../../../src/util/lock.ts';

const [file, ms] = process.argv.slice(2);
await withLock(file, 'test lock', 60_000, async () => {
  process.stdout.write('held\n');
  await new Promise((r) => setTimeout(r, Number(ms ?? 600_000)));
});
