// ava for npm run test:bisect alone: the bisect end-to-end test is not part of npm test (its first run builds a kernel cold).
export default {
  files: ['test/bisect/**/*.test.ts'],
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx'],
  timeout: '240m',
  concurrency: 1,
  workerThreads: false,
};
