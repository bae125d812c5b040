// Files hwlab places in the guest. They are part of the image cache key, so
// editing them rebuilds the image. The lines they log are the protocol's
// (src/protocol/protocol.ts): the host waits for the ready line.
import { BOOT_FAILURE_MESSAGES, INIT_LOG_PREFIX, INITRAMFS_LOG_PREFIX, READY_MESSAGE } from '../protocol/protocol.ts';

/**
 * PID 1 after switch_root: network for the SSH forward, sshd. No systemd: it
 * is the largest cost of a TCG boot and nothing here needs it. The initramfs
 * has already made the mounts (INITRAMFS_INIT); they are made here only when
 * missing. Under TCG every exec of a dynamically linked program costs about
 * 0.1 s (ld.so), so this script uses shell builtins and the image's static
 * busybox where it can: with util-linux mount, hostname and iproute2 it
 * spent 2.9 s from the root mount to sshd (npm run bench:boot, 2026-12-06).
 */
export const GUEST_INIT = `#!/bin/sh
# hwlab guest init (PID 1). Messages go to /dev/kmsg so they land in the console log.
# /usr/local/bin first, as in sshd's sessions: an image's official node lives there.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
bb=/bin/busybox
log() { echo "${INIT_LOG_PREFIX} $*" > /dev/kmsg; }
[ -e /proc/self ] || $bb mount -t proc proc /proc
mounted() { while read -r _ mp _; do [ "$mp" = "$1" ] && return 0; done < /proc/mounts; return 1; }
for m in sysfs:/sys devtmpfs:/dev devpts:/dev/pts tmpfs:/dev/shm tmpfs:/run tmpfs:/tmp debugfs:/sys/kernel/debug; do
  mounted "\${m#*:}" || { $bb mkdir -p "\${m#*:}"; $bb mount -t "\${m%%:*}" "\${m%%:*}" "\${m#*:}" || log "mount \${m#*:} failed"; }
done
# What udev would make on a full system, and tools assume (kselftest's runner
# writes each test's output to /dev/stdout).
[ -e /dev/fd ] || $bb ln -s /proc/self/fd /dev/fd
for n in 0:stdin 1:stdout 2:stderr; do [ -e "/dev/\${n#*:}" ] || $bb ln -s "/proc/self/fd/\${n%%:*}" "/dev/\${n#*:}"; done
echo hwlab > /proc/sys/kernel/hostname
$bb ip link set lo up
modprobe virtio_net || log "modprobe virtio_net failed"
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do $bb usleep 50000; i=$((i+1)); done
$bb ip link set eth0 up && $bb ip addr add 10.0.2.15/24 dev eth0 && $bb ip route add default via 10.0.2.2 || log "network setup failed"
[ -d /run/sshd ] || $bb mkdir -p /run/sshd
/usr/sbin/sshd -E /run/sshd.log && log "${READY_MESSAGE}" || log "${BOOT_FAILURE_MESSAGES.sshd}"
# Benchmarks boot with hwlab.bare to time a bare boot-to-poweroff of the same kernel and image.
read -r cmdline < /proc/cmdline
case " $cmdline " in *" hwlab.bare "*) log "bare boot done, powering off"; $bb poweroff -f ;; esac
# Stay PID 1; hwlab powers the guest off over SSH or QMP.
while :; do wait; $bb sleep 60; done
`;

/**
 * The image's customize step, run by mmdebstrap with the rootfs as $1 (inside
 * its user namespace as an ordinary user): what needs the guest's own
 * binaries. hwlab's files are already synced in (src/image/build.ts).
 */
export const IMAGE_CUSTOMIZE_SCRIPT = `#!/bin/sh
set -e
root="$1"
# An ordinary user's PATH may lack the sbin directories ssh-keygen's chroot resolves in;
# /usr/local/bin holds the recipe's official node, when it names one.
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# sync-in keeps the staging tree's owner and modes, on /etc, /etc/ssh and /root
# themselves too; sshd's StrictModes refuses a /root that is not root's.
chown 0:0 "$root/etc" "$root/etc/ssh" "$root/root"
chmod 0755 "$root/etc" "$root/etc/ssh"
chmod 0700 "$root/root"
chown -R 0:0 "$root/root/.ssh" "$root/root/.profile" "$root/etc/ssh/sshd_config.d" "$root/etc/hostname" "$root/etc/hosts" "$root/etc/fstab"
# Uploaded to /tmp: /sbin and /lib may be merged-usr symlinks, which a synced-in tree would replace.
install -m 0755 -o 0 -g 0 "$root/tmp/hwlab-init" "$root/sbin/hwlab-init"
rm -f "$root/tmp/hwlab-init"
mkdir -p "$root/lib/modules"
# Debian's sshd_config names the external sftp-server (not installed); ours uses internal-sftp.
sed -E -i 's/^Subsystem[[:space:]]+sftp[[:space:]].*$/# & (hwlab: internal-sftp, see sshd_config.d)/' "$root/etc/ssh/sshd_config"
rm -f "$root/etc/ssh/ssh_host_rsa_key"
chroot "$root" ssh-keygen -q -A
mkdir -p "$root/run/sshd"
chroot "$root" /usr/sbin/sshd -t
# Root's login shell is dash: sshd runs every hwlab guest command through it
# ($SHELL -c CMD), and under TCG bash -c costs 0.14 s, dash -c 0.08 s.
# (Not busybox's ash, 0.02 s: Debian builds it to prefer its own applets, so
# modprobe, mount or setsid would silently be busybox's.) A person's
# interactive login still gets bash (ROOT_PROFILE).
if [ -x "$root/bin/dash" ]; then chroot "$root" usermod -s /bin/dash root; fi
# The recipe's official Node.js build (src/image/node-dist.ts), when it names one.
if [ -f "$root/tmp/hwlab-node" ]; then
  mkdir -p "$root/usr/local/bin"
  install -m 0755 -o 0 -g 0 "$root/tmp/hwlab-node" "$root/usr/local/bin/node"
  rm -f "$root/tmp/hwlab-node"
fi
chroot "$root" node --version > "$root/tmp/hwlab-node-version"
`;

/**
 * Root's ~/.profile, read by a login shell: an interactive login (hwlab ssh,
 * hwlab shell, ssh by hand) starts in dash (root's login shell, faster for
 * hwlab's commands: IMAGE_CUSTOMIZE_SCRIPT) and moves on to bash, which
 * reads this file again and then ~/.bashrc as Debian's own profile does.
 */
export const ROOT_PROFILE = `# hwlab: root's login shell is dash, for the speed of hwlab's guest commands; people get bash.
if [ -z "$BASH_VERSION" ] && [ -t 0 ] && [ -x /bin/bash ]; then exec /bin/bash -l; fi
if [ -n "$BASH_VERSION" ] && [ -f ~/.bashrc ]; then . ~/.bashrc; fi
mesg n 2> /dev/null || true
`;

/**
 * Key-only root login; internal-sftp so no sftp-server package is needed; no
 * PAM or DNS delays. Only the ed25519 host key, the one hwlab pins
 * (src/image/build.ts), so sshd loads one key at start and per connection.
 */
export const SSHD_CONFIG = `HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
Subsystem sftp internal-sftp
MaxStartups 100
`;

/**
 * The initramfs /init: load the disk and filesystem modules a prebuilt
 * kernel keeps out of the image, mount the root and modules disks by label,
 * switch to the guest init.
 */
export const INITRAMFS_INIT = `#!/bin/busybox sh
bb=/bin/busybox
$bb mkdir -p /proc /sys /dev /newroot
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
fail() { echo "${INITRAMFS_LOG_PREFIX} $*" > /dev/kmsg; $bb sleep 1; $bb poweroff -f; }
for m in $($bb cat /modules.list); do
  $bb insmod /mods/$m || echo "${INITRAMFS_LOG_PREFIX} insmod $m failed" > /dev/kmsg
done
i=0
until root=$($bb findfs LABEL=hwlab-root 2>/dev/null); do
  i=$((i+1)); [ $i -gt 200 ] && fail "${BOOT_FAILURE_MESSAGES.rootDisk}"
  $bb sleep 0.05
done
$bb mount -t ext4 -o rw "$root" /newroot || fail "${BOOT_FAILURE_MESSAGES.mount} $root"
mods=$($bb findfs LABEL=hwlab-mods 2>/dev/null) && { $bb mount -t ext4 -o ro "$mods" /newroot/lib/modules || fail "${BOOT_FAILURE_MESSAGES.mount} modules disk $mods"; }
# The guest init's mounts, made here by the static busybox (the guest init
# makes only those missing): under TCG each exec of a dynamically linked
# mount costs about 0.1 s.
$bb mount --move /dev /newroot/dev
$bb mount --move /proc /newroot/proc
$bb mount --move /sys /newroot/sys
$bb mount -t debugfs debugfs /newroot/sys/kernel/debug
$bb mkdir -p /newroot/dev/pts /newroot/dev/shm
$bb mount -t devpts devpts /newroot/dev/pts
$bb mount -t tmpfs tmpfs /newroot/dev/shm
$bb mount -t tmpfs tmpfs /newroot/run
$bb mount -t tmpfs tmpfs /newroot/tmp
$bb mkdir -p /newroot/run/sshd
exec $bb switch_root /newroot /sbin/hwlab-init
`;
