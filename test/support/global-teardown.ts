import * as fs from 'node:fs';

export default async function globalTeardown(): Promise<void> {
  const stack = (globalThis as { __dhmStack?: { stop(): Promise<void>; stateDir: string } }).__dhmStack;
  if (!stack) return;
  await stack.stop();
  if (!process.env.DHM_TEST_KEEP_STATE) fs.rmSync(stack.stateDir, { recursive: true, force: true });
}
