#!/usr/bin/env node
// Entry point for the `hwlab` bin: loads the TypeScript CLI through tsx in
// this same process (no build step, and signals reach hwlab's cleanup directly).
import { register } from 'tsx/esm/api';

register();
const { cliMain } = await import('./main.ts');
await cliMain(process.argv.slice(2));
