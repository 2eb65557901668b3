import { execFile } from 'node:child_process';

/** Runs `ip`/`tc`/`bridge`/`iptables` (iproute2 and friends); rejects with the command and its stderr. */
export function run(cmd: string, args: string[], timeoutMs = 15_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 8 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${stderr.trim() || err.message}`));
      else resolve(stdout);
    });
  });
}

export const ipIn = (ns: string, ...args: string[]) => run('ip', ['-n', ns, ...args]);
export const tcIn = (ns: string, ...args: string[]) => run('tc', ['-n', ns, ...args]);
export const bridgeIn = (ns: string, ...args: string[]) => run('bridge', ['-n', ns, ...args]);
/** A command inside a namespace (`ip netns exec` execs it: the pid is the command's own). */
export const inNs = (ns: string, cmd: string, args: string[], timeoutMs?: number) => run('ip', ['netns', 'exec', ns, cmd, ...args], timeoutMs);

export async function listNamespaces(): Promise<string[]> {
  const out = await run('ip', ['netns', 'list']).catch(() => '');
  return out
    .split('\n')
    .map((l) => l.split(' ')[0]!.trim())
    .filter(Boolean);
}

export async function deleteNamespace(ns: string): Promise<void> {
  await run('ip', ['netns', 'del', ns]).catch(() => undefined);
}

export async function linkExists(name: string): Promise<boolean> {
  return run('ip', ['link', 'show', 'dev', name]).then(
    () => true,
    () => false,
  );
}
