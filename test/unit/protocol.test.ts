// The host/guest protocol round-trips: what one side formats, the other parses.
import test from 'ava';
import {
  bootFailure, formatHostRequest, formatProbeMarker, isTopLevelPoint, parseHostRequest, parseProbeMarker, READY_LINE, subtestName,
} from '../../src/protocol/protocol.ts';
import { GUEST_INIT, INITRAMFS_INIT } from '../../src/image/guest-files.ts';

test('probe markers: formatted by the runner, parsed by the host', (t) => {
  const m = { edge: 'begin' as const, index: 3, probe: 'dmabuf-fd' };
  t.is(formatProbeMarker(m), 'hwlab-probe: begin 3 dmabuf-fd');
  t.deepEqual(parseProbeMarker(formatProbeMarker(m)), m);
  t.deepEqual(parseProbeMarker('hwlab-probe: end 12 revoke-triggers\r'), { edge: 'end', index: 12, probe: 'revoke-triggers' });
  t.is(parseProbeMarker('hwlab-probe: start 1 x'), null);
  t.is(parseProbeMarker('echo hwlab-probe: begin 1 x'), null);
});

test('host requests: only lab endpoints and known verbs', (t) => {
  const line = formatHostRequest({ verb: 'device_del', id: 'shm2' });
  t.is(line, '# hwlab-request: device_del shm2');
  t.deepEqual(parseHostRequest(line, ['shm2']), { verb: 'device_del', id: 'shm2' });
  t.deepEqual(parseHostRequest(`    ${line}`, ['shm2']), { verb: 'device_del', id: 'shm2' });
  t.regex((parseHostRequest(line, ['shm0']) as { error: string }).error, /not an endpoint of this lab/);
  t.regex((parseHostRequest('# hwlab-request: reboot shm2', ['shm2']) as { error: string }).error, /unknown request "reboot"/);
  t.is(parseHostRequest('# a comment', ['shm2']), null);
  t.throws(() => formatHostRequest({ verb: 'device_del', id: 'a b' }), { message: /not an endpoint id/ });
});

test('TAP conventions: top-level subtests and closing points', (t) => {
  t.is(subtestName('# Subtest: lifetime'), 'lifetime');
  t.is(subtestName('    # Subtest: nested'), null);
  t.true(isTopLevelPoint('not ok 3 - lifetime'));
  t.false(isTopLevelPoint('    ok 1 - nested'));
});

test('the guest init prints the ready line and the failures the host looks for', (t) => {
  // The scripts are shell text; what they log must be what the protocol parses.
  t.true(GUEST_INIT.includes('log "sshd started"') && READY_LINE === 'hwlab-init: sshd started');
  t.true(GUEST_INIT.includes('echo "hwlab-init: $*" > /dev/kmsg'));
  t.true(INITRAMFS_INIT.includes('echo "hwlab-initramfs: $*" > /dev/kmsg'));
  t.is(bootFailure('[    3.1] hwlab-init: sshd failed to start'), 'hwlab-init: sshd failed to start');
  t.is(bootFailure('[    2.0] hwlab-initramfs: root disk (LABEL=hwlab-root) did not appear'), 'hwlab-initramfs: root disk (LABEL=hwlab-root) did not appear');
  t.is(bootFailure('[    2.0] hwlab-initramfs: cannot mount /dev/vda'), 'hwlab-initramfs: cannot mount /dev/vda');
  t.is(bootFailure('[    2.0] hwlab-initramfs: insmod ext4.ko failed'), null);
  t.is(bootFailure(READY_LINE), null);
});
