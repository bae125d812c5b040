import test from 'ava';
import { z } from 'zod';
import { parseYamlWith, YamlError } from '../../src/util/yaml.ts';

test('parseYamlWith: the same located errors for any schema', (t) => {
  const schema = z.object({ suite: z.string(), packages: z.array(z.string()).default([]) }).strict();
  t.deepEqual(parseYamlWith('suite: sid\n', 'images/x.yaml', schema), { suite: 'sid', packages: [] });
  const e = t.throws(() => parseYamlWith('suite: 1\nextra: 2\npackages: [a, 3]\n', 'images/x.yaml', schema), { instanceOf: YamlError });
  t.is(e.message, [
    'images/x.yaml:1:8: suite: expected a string (got 1)',
    'images/x.yaml:2:1: extra: unknown key "extra"',
    'images/x.yaml:3:15: packages[1]: expected a string (got 3)',
  ].join('\n'));
});
