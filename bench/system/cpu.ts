import * as fs from 'node:fs';
import * as os from 'node:os';
import type { BenchStack } from './stack';
import { cpuBetween, treeCpu } from './stack';

/** CPU use of each part of the system over a window, in % of one core (the machine has os.cpus().length of them). */
export interface CpuFigures {
  temporal: number;
  postgres: number;
  workers: number;
  /** This process: the bench's client, the host service and every sim agent. */
  agentsAndBench: number;
  /** The whole machine, other people's work included, from /proc/stat. */
  machine: number;
  cores: number;
}

/** Busy CPU seconds of the whole machine since boot, from /proc/stat (user, nice, system, irq, softirq). */
function machineBusySeconds(): number {
  try {
    const cpu = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    return (cpu[0]! + cpu[1]! + cpu[2]! + cpu[5]! + cpu[6]!) / 100;
  } catch {
    return os.cpus().reduce((s, c) => s + (c.times.user + c.times.nice + c.times.sys + c.times.irq) / 1000, 0);
  }
}

export function cpuMeter(stack: BenchStack): () => CpuFigures {
  const pids = stack.serverPids();
  const workers = stack.workerPids();
  const start = {
    wall: performance.now(),
    temporal: treeCpu(pids.temporal),
    postgres: treeCpu(pids.postgres),
    workers: treeCpu(workers),
    me: process.cpuUsage(),
    machine: machineBusySeconds(),
  };
  return () => {
    const wallS = (performance.now() - start.wall) / 1000;
    const pct = (cpuS: number) => (100 * cpuS) / wallS;
    const me = process.cpuUsage(start.me);
    return {
      temporal: pct(cpuBetween(start.temporal, treeCpu(pids.temporal))),
      postgres: pct(cpuBetween(start.postgres, treeCpu(pids.postgres))),
      workers: pct(cpuBetween(start.workers, treeCpu(workers))),
      agentsAndBench: pct((me.user + me.system) / 1e6),
      machine: pct(machineBusySeconds() - start.machine),
      cores: os.cpus().length,
    };
  };
}
