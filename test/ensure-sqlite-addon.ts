// npm's pretest hook: builds better-sqlite3's native addon when the `hwlab`
// wrapper's install left it for later (src/history/addon.ts), so the tests of
// the results history find it. A file check when it is built.
import { ensureSqliteAddon } from '../src/history/addon.ts';

await ensureSqliteAddon();
