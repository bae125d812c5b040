// Guest entry of a stress worker process: `node stress-worker.cjs <json>`,
// started by the stress probe (src/guest/probes/stress.ts) with the VFIO
// group as fd 3. Its own bundle file, apart from the runner's: a worker loads
// only the stress code, not every probe and the YAML library.
import { stressWorkerMain, type StressWorkerArgs } from './probes/stress.ts';

// exitCode rather than exit(): the report line on stdout must drain first.
stressWorkerMain(JSON.parse(process.argv[2] ?? '') as StressWorkerArgs).then(
  (code) => { process.exitCode = code; },
  (e) => {
    process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
    process.exitCode = 1;
  },
);
