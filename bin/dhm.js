#!/usr/bin/env node
// The `dhm` command. Runs the compiled code in dist/ when it exists (production images), else the TypeScript
// sources through swc, so a fresh clone needs no build step.
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const compiled = path.join(root, 'dist', 'cli', 'main.js');
if (fs.existsSync(compiled)) {
  require(compiled).main(process.argv.slice(2));
} else {
  process.env.SWC_NODE_PROJECT = process.env.SWC_NODE_PROJECT || path.join(root, 'tsconfig.json');
  require('@swc-node/register');
  require(path.join(root, 'cli', 'main.ts')).main(process.argv.slice(2));
}
