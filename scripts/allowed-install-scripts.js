#!/usr/bin/env node
// Runs the install scripts of the packages package.json's `allowScripts` names, and no others: the image installs
// with `npm ci --ignore-scripts` (a compromised dependency's install script would otherwise run at build time), then
// this runs `npm rebuild` for the allowed packages that are installed (the runtime stage omits dev dependencies).
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = process.cwd();
const allowed = require(path.join(root, 'package.json')).allowScripts ?? {};
const names = Object.entries(allowed)
  .filter(([, yes]) => yes === true)
  .map(([name]) => name)
  .filter((name) => fs.existsSync(path.join(root, 'node_modules', name, 'package.json')));
if (names.length === 0) process.exit(0);
process.stdout.write(`install scripts allowed by package.json: ${names.join(', ')}\n`);
execFileSync('npm', ['rebuild', '--ignore-scripts=false', '--foreground-scripts', ...names], { stdio: 'inherit' });
