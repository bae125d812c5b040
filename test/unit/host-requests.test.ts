import test from 'ava';
import { HostRequestScanner } from '../../src/session/host-requests.ts';

test('a request line is recognised, also when split across chunks and indented inside a subtest', (t) => {
  const s = new HostRequestScanner(['shm0', 'nvme0']);
  t.deepEqual(s.push('    ok 1 - before\n    # hwlab-req'), []);
  t.deepEqual(s.push('uest: device_del nvme0\n    ok 2 - after\n'), [{ verb: 'device_del', id: 'nvme0' }]);
});

test('unknown verbs and ids that are not lab endpoints are refused with the reason', (t) => {
  const s = new HostRequestScanner(['shm0']);
  const out = s.push('# hwlab-request: quit shm0\n# hwlab-request: device_del rp0\n# hwlab-request: device_del shm0\n');
  t.is(out.length, 3);
  t.regex((out[0] as { error: string }).error, /unknown request "quit"/);
  t.regex((out[1] as { error: string }).error, /rp0: not an endpoint of this lab \(shm0\)/);
  t.deepEqual(out[2], { verb: 'device_del', id: 'shm0' });
});

test('ordinary TAP and comments are not requests', (t) => {
  const s = new HostRequestScanner(['shm0']);
  t.deepEqual(s.push('# Subtest: x\n    # device_del shm0\nok 1 - hwlab-request: device_del shm0\n'), []);
});
