// No shell string is ever built from a lab value (issue 16): shell
// metacharacters go through every string field of a lab that reaches a
// command, and the argv arrays are checked. Values reach commands three ways:
// QEMU's argv on the host (execa, no shell), the guest's commands over SSH
// (each argument quoted with shq, so the guest's sh hands it back intact),
// and file names (the run folder). Fields whose values would be ids or names
// in those places are refused by the schema instead.
import test from 'ava';
import { execa } from 'execa';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseLab } from '../../src/lab/load.ts';
import { buildQemuCommand } from '../../src/machine/cmdline.ts';
import { shq } from '../../src/machine/instance.ts';
import { YamlError } from '../../src/util/yaml.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const EVIL = ['a;touch /tmp/hwlab-pwned', '$(touch /tmp/hwlab-pwned)', '`id`', 'x|y&z>w<v', "it's", '"dq"', 'back\\slash', '*?[a]', '~root', '!!', 'a\tb', 'new\nline', '{a,b}', '#comment', '--', '-rf'];
const HOST = { hostMemoryMiB: 64 * 1024 };

const base = (extra: string) => `kernel: { debian: linux-image-7.2 }\nimage: bookworm\ntopology:\n  root_ports: [rp0]\n  endpoints: [{ id: shm0, type: ivshmem-plain, port: rp0 }, { id: nvme0, type: nvme, port: rp0, function: 1 }]\nprobes: [{ name: dmabuf-export, device: shm0 }]\n${extra}`;

function argvOf(extra: string): string[] {
  const lab = parseLab(base(extra), path.join(repo, 'labs', 'x.yaml'), HOST);
  const c = buildQemuCommand({
    lab, accel: 'tcg', kernelImage: '/k/vmlinuz', initrd: '/k/initrd', rootDisk: '/s/root.qcow2', modulesDisk: '/k/mods.ext4',
    consoleLog: '/r/console.log', qmpSocket: '/s/qmp.sock', sshPort: 2222, memoryBackendDir: '/s', append: ['console=ttyS0'],
  });
  return [c.binary, ...c.args];
}

test('kernel command-line words with metacharacters stay inside the one -append argument, every other argument unchanged', (t) => {
  const plain = argvOf('');
  // Whitespace splits words (it is a command line); every other character is kept as written.
  const words = EVIL.map((w) => w.replace(/\s+/g, '_'));
  const evil = argvOf(`machine:\n  cmdline: ${JSON.stringify(words)}\n`);
  t.is(evil.length, plain.length, 'no argument added or split');
  const i = plain.indexOf('-append') + 1;
  t.true(i > 0);
  for (const [k, a] of evil.entries()) if (k !== i) t.is(a, plain[k], `argument ${k} unchanged`);
  t.is(evil[i], `${plain[i]} ${words.join(' ')}`);
});

test('fields that become QEMU ids, device properties, file names or a -cpu value refuse metacharacters', (t) => {
  const cases: Array<[string, RegExp]> = [
    ['machine: { cpu: "EPYC;id" }\n', /machine\.cpu: must be a QEMU CPU model/],
    ['machine: { cpu: "EPYC,+x2apic id" }\n', /machine\.cpu: must be a QEMU CPU model/],
    ['name: "x/../../etc"\n', /name: must be letters, digits/],
    ['modules: ["vfio-pci;id"]\n', /modules\[0\]: must be a kernel module name/],
  ];
  for (const [extra, message] of cases) {
    const err = t.throws(() => parseLab(base(extra), 'labs/x.yaml', HOST), { instanceOf: YamlError });
    t.regex(err!.message, message, extra);
  }
  const image = t.throws(() => parseLab(base('').replace('image: bookworm', 'image: "$(id)"'), 'labs/x.yaml', HOST), { instanceOf: YamlError });
  t.regex(image!.message, /image: must be the name of a recipe/);
  const ids = t.throws(() => parseLab(base('').replace('id: shm0', 'id: "shm0,share=off"').replace('device: shm0', 'device: "shm0,share=off"'), 'labs/x.yaml', HOST), { instanceOf: YamlError });
  t.regex(ids!.message, /topology\.endpoints\[0\]\.id: must be a lowercase letter/);
  const serial = t.throws(() => parseLab(base('').replace('type: nvme, port: rp0', 'type: nvme, serial: "a,drive=x", port: rp0'), 'labs/x.yaml', HOST), { instanceOf: YamlError });
  t.regex(serial!.message, /serial: must be 1-20 characters/);
});

test('guest commands: every argument, metacharacters and all, reaches the program intact through a real sh', async (t) => {
  // What ssh.ts sends is argv.map(shq).join(' '), run by the guest's sh; run it by this host's sh and compare.
  const argv = ['printf', '%s\\0', ...EVIL, ''];
  const r = await execa('sh', ['-c', argv.map(shq).join(' ')]);
  t.deepEqual(r.stdout.split('\0').slice(0, -1), [...EVIL, '']);
});

test('no source file runs a command through a shell built in code (execa with shell:, execaCommand, child_process exec)', async (t) => {
  const files: string[] = [];
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (/\.(ts|js)$/.test(e.name)) files.push(p);
    }
  };
  await walk(path.join(repo, 'src'));
  const offenders: string[] = [];
  for (const f of files) {
    const text = await readFile(f, 'utf8');
    for (const [i, line] of text.split('\n').entries()) {
      // node:child_process is allowed for spawn with an argv (the guest's stress workers); exec/execSync take shell strings.
      if (/\bshell:\s*(true|['"`])|\bexecaCommand(Sync)?\b|\bexecSync\(|\bexec\(\s*['"`]|\{[^}]*\bexec\b[^}]*\} from '(node:)?child_process'/.test(line)) {
        offenders.push(`${path.relative(repo, f)}:${i + 1}: ${line.trim()}`);
      }
    }
  }
  t.deepEqual(offenders, []);
});
