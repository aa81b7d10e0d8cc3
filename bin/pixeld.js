#!/usr/bin/env node
// The published entry point: runs the compiled CLI (npm run build / npm start compile it).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const compiled = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
if (!existsSync(compiled)) {
  console.error('pixeld: dist/cli.js is missing; run `npm run build` first');
  process.exit(1);
}
await import(compiled);
