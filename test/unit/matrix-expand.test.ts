// GitHub Actions' matrix rules, checked on the examples of GitHub's own
// documentation ("Running variations of jobs in a workflow": include,
// exclude, include-only), with the combinations and order it gives.
import test from 'ava';
import { expandMatrix } from '../../src/matrix/expand.ts';

const combos = (r: ReturnType<typeof expandMatrix>) => r.map((e) => e.combination);

test('the product: the first variable is the outermost loop', (t) => {
  const r = expandMatrix({ variables: [['version', [10, 12, 14]], ['os', ['ubuntu-latest', 'windows-latest']]], include: [], exclude: [] });
  t.deepEqual(combos(r), [
    { version: 10, os: 'ubuntu-latest' }, { version: 10, os: 'windows-latest' },
    { version: 12, os: 'ubuntu-latest' }, { version: 12, os: 'windows-latest' },
    { version: 14, os: 'ubuntu-latest' }, { version: 14, os: 'windows-latest' },
  ]);
});

test('include: the documented fruit/animal example gives its six combinations', (t) => {
  const r = expandMatrix({
    variables: [['fruit', ['apple', 'pear']], ['animal', ['cat', 'dog']]],
    include: [
      { color: 'green' },
      { color: 'pink', animal: 'cat' },
      { fruit: 'apple', shape: 'circle' },
      { fruit: 'banana' },
      { fruit: 'banana', animal: 'cat' },
    ],
    exclude: [],
  });
  t.deepEqual(combos(r), [
    { fruit: 'apple', animal: 'cat', color: 'pink', shape: 'circle' },
    { fruit: 'apple', animal: 'dog', color: 'green', shape: 'circle' },
    { fruit: 'pear', animal: 'cat', color: 'pink' },
    { fruit: 'pear', animal: 'dog', color: 'green' },
    { fruit: 'banana' },
    // Not added to {fruit: banana}: that combination was not an original one.
    { fruit: 'banana', animal: 'cat' },
  ]);
  t.deepEqual(r.map((e) => e.origin.kind), ['product', 'product', 'product', 'product', 'include', 'include']);
  t.deepEqual(r[0].extendedBy, [0, 1, 2]);
});

test('exclude: a partial match removes; the documented example runs nine of twelve', (t) => {
  const r = expandMatrix({
    variables: [['os', ['macos-latest', 'windows-latest']], ['version', [12, 14, 16]], ['environment', ['staging', 'production']]],
    include: [],
    exclude: [{ os: 'macos-latest', version: 12, environment: 'production' }, { os: 'windows-latest', version: 16 }],
  });
  t.is(r.length, 9);
  t.false(combos(r).some((c) => c.os === 'windows-latest' && c.version === 16));
  t.false(combos(r).some((c) => c.os === 'macos-latest' && c.version === 12 && c.environment === 'production'));
});

test('include is processed after exclude, so it adds back an excluded combination', (t) => {
  const r = expandMatrix({
    variables: [['a', [1, 2]], ['b', [3, 4]]],
    exclude: [{ a: 1 }],
    include: [{ a: 1, b: 3 }],
  });
  t.deepEqual(combos(r), [{ a: 2, b: 3 }, { a: 2, b: 4 }, { a: 1, b: 3 }]);
});

test('include adds to a new combination only what fits no original one; the documented perl example makes seven jobs', (t) => {
  const r = expandMatrix({
    variables: [['os', ['ubuntu-latest']], ['perl', ['5.16', '5.20', '5.26', '5.30', 'latest']]],
    include: [{ os: 'macos-latest', perl: '5.26' }, { os: 'macos-latest', perl: 'latest' }],
    exclude: [],
  });
  t.is(r.length, 7);
  t.deepEqual(combos(r).slice(5), [{ os: 'macos-latest', perl: '5.26' }, { os: 'macos-latest', perl: 'latest' }]);
});

test('with no variables every include entry is a combination, and an entry equal to an original one adds nothing', (t) => {
  t.deepEqual(combos(expandMatrix({ variables: [], include: [{ site: 'production', datacenter: 'site-a' }, { site: 'staging', datacenter: 'site-b' }], exclude: [] })), [
    { site: 'production', datacenter: 'site-a' }, { site: 'staging', datacenter: 'site-b' },
  ]);
  t.deepEqual(combos(expandMatrix({ variables: [['a', [1, 2]]], include: [{ a: 1 }], exclude: [] })), [{ a: 1 }, { a: 2 }]);
});

test('values are compared deeply (objects and lists as matrix values)', (t) => {
  const r = expandMatrix({ variables: [['cfg', [{ x: [1, 2] }, { x: [3] }]]], include: [{ cfg: { x: [1, 2] }, extra: true }], exclude: [] });
  t.deepEqual(combos(r), [{ cfg: { x: [1, 2] }, extra: true }, { cfg: { x: [3] } }]);
});
