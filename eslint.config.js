// @ts-check
const tseslint = require('typescript-eslint');

const nodeBuiltins = require('node:module').builtinModules.filter((m) => !m.startsWith('_'));

module.exports = tseslint.config(
  { ignores: ['node_modules/**', 'dist/**', '.tools/**', '.dhm/**', 'coverage/**', 'test-artifacts/**', 'bench/results/**'] },
  {
    files: ['**/*.ts'],
    extends: [tseslint.configs.recommended],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: __dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: false }],
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-console': 'error',
    },
  },
  {
    // Workflow code must be deterministic: no Node built-ins, no I/O libraries, no wall clock or randomness.
    files: ['workflows/**/*.ts', 'bench/system/floor/workflow.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [...nodeBuiltins, ...nodeBuiltins.map((m) => `node:${m}`), 'pg', 'fastify', 'pino'].map((name) => ({
            name,
            message: 'workflows/ must be deterministic: do side effects in activities/',
            allowTypeImports: true,
          })),
          patterns: [
            {
              group: ['node:*', '../activities/*', '../compute/*', '../inventory/*'],
              message: 'workflows/ imports only types from side-effecting code',
              allowTypeImports: true,
            },
          ],
        },
      ],
      'no-restricted-properties': [
        'error',
        {
          object: 'Date',
          property: 'now',
          message: 'use the SDK’s deterministic time (Date.now is replaced inside workflows, but be explicit: workflowInfo / sleep)',
        },
        { object: 'Math', property: 'random', message: 'use uuid4() or the SDK’s deterministic random' },
      ],
    },
  },
  {
    // CLI output is the product there; services log through pino.
    files: ['cli/**/*.ts', 'bench/**/*.ts', 'scripts/**/*.ts'],
    rules: { 'no-console': 'off' },
  },
  {
    files: ['**/*.js'],
    extends: [tseslint.configs.disableTypeChecked],
    languageOptions: { sourceType: 'commonjs', globals: { require: 'readonly', module: 'writable', __dirname: 'readonly', process: 'readonly' } },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
);
