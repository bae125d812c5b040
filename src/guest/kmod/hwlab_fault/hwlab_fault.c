// SPDX-License-Identifier: GPL-2.0
/*
 * hwlab_fault: kernel faults on request, for hwlab's own fault suite (the
 * fault-inject probe, labs/faults/). It exists so the suite can check, on a
 * real guest, that a panic, a soft lockup and a hung task in the middle of a
 * probe end the run as a kernel failure titled and attributed to that probe;
 * the lab kernels have no MAGIC_SYSRQ, and changing their config would mean
 * a rebuild. Never loaded by the default labs.
 *
 * Write one command to /sys/kernel/debug/hwlab_fault/trigger:
 *
 *   panic          panic() at once, from the writer's context
 *   softlockup N   spin N seconds with preemption disabled (interrupts on,
 *                  so the watchdog's hrtimer runs and sees its stopper
 *                  thread starved: "BUG: soft lockup")
 *   hung N         sleep N seconds in TASK_UNINTERRUPTIBLE (the hung-task
 *                  detector reports the writer if N is over its timeout)
 *
 * N is 1..600. The write returns when the fault is over (never, for panic).
 */
#include <linux/debugfs.h>
#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/panic.h>
#include <linux/preempt.h>
#include <linux/sched.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#define HWF_MAX_SECONDS 600

static struct dentry *hwf_dir;

/*
 * Busy-waits without touching any watchdog: the point is to be caught. The
 * loop reads only jiffies (the tick keeps running, interrupts are on), so the
 * interrupted instruction, which names the report, is always in this
 * function and the title is the same every run.
 */
static noinline void hwf_spin_preempt_off(unsigned int seconds)
{
	unsigned long end = jiffies + (unsigned long)seconds * HZ;

	preempt_disable();
	while (time_before(READ_ONCE(jiffies), end))
		cpu_relax();
	preempt_enable();
}

static noinline void hwf_sleep_uninterruptible(unsigned int seconds)
{
	schedule_timeout_uninterruptible((long)seconds * HZ);
}

static ssize_t hwf_trigger_write(struct file *file, const char __user *ubuf, size_t len, loff_t *ppos)
{
	char buf[32];
	char *cmd, *arg;
	unsigned int seconds = 0;

	if (len == 0 || len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = '\0';
	arg = strim(buf);
	cmd = strsep(&arg, " ");
	if (arg && (kstrtouint(strim(arg), 10, &seconds) || seconds == 0 || seconds > HWF_MAX_SECONDS))
		return -EINVAL;

	if (!strcmp(cmd, "panic") && !arg) {
		/* No PID in the panic line: it is the report's title, compared across runs. */
		pr_emerg("hwlab_fault: panic requested by %s[%d]\n", current->comm, task_pid_nr(current));
		panic("hwlab_fault: panic requested (hwlab fault suite)");
	} else if (!strcmp(cmd, "softlockup") && arg) {
		pr_info("hwlab_fault: spinning %u s with preemption disabled on CPU %d\n", seconds, raw_smp_processor_id());
		hwf_spin_preempt_off(seconds);
	} else if (!strcmp(cmd, "hung") && arg) {
		pr_info("hwlab_fault: sleeping %u s uninterruptibly\n", seconds);
		hwf_sleep_uninterruptible(seconds);
	} else {
		return -EINVAL;
	}
	pr_info("hwlab_fault: %s %u s over\n", cmd, seconds);
	return len;
}

static const struct file_operations hwf_trigger_fops = {
	.owner = THIS_MODULE,
	.open = simple_open,
	.write = hwf_trigger_write,
	.llseek = noop_llseek,
};

static int __init hwf_init(void)
{
	hwf_dir = debugfs_create_dir("hwlab_fault", NULL);
	if (IS_ERR(hwf_dir))
		return PTR_ERR(hwf_dir);
	debugfs_create_file("trigger", 0200, hwf_dir, NULL, &hwf_trigger_fops);
	return 0;
}

static void __exit hwf_exit(void)
{
	debugfs_remove_recursive(hwf_dir);
}

module_init(hwf_init);
module_exit(hwf_exit);
MODULE_DESCRIPTION("hwlab fault suite: panic, soft lockup and hung task on request");
MODULE_LICENSE("GPL");
