// Timer-driven jobs a workload brings besides its queue (the shipments watermark poll):
// each runs every intervalMs(), never two runs of one job at once, and a failed run is
// logged and tried again at the next interval. Stop waits for a run in progress.
import type { Logger } from "../logger.js";

export interface PeriodicJob {
  name: string;
  /** Read before each wait, so a settings change applies from the next run. */
  intervalMs(): number;
  run(): Promise<void>;
}

export interface PeriodicJobs {
  start(): void;
  /** Stops the timers and waits for runs in progress. */
  stop(): Promise<void>;
}

export function makePeriodicJobs(jobs: readonly PeriodicJob[], logger: Logger): PeriodicJobs {
  const log = logger.child({ component: "periodic" });
  const timers = new Map<string, NodeJS.Timeout>();
  const running = new Set<Promise<void>>();
  let stopped = true;

  function arm(job: PeriodicJob) {
    if (stopped) return;
    const timer = setTimeout(async () => {
      const run = job.run().catch((err) => {
        log.warn({ job: job.name, err: (err as Error).message }, `${job.name} failed`);
      });
      running.add(run);
      await run;
      running.delete(run);
      arm(job);
    }, job.intervalMs());
    // A job never keeps the process alive on its own.
    timer.unref();
    timers.set(job.name, timer);
  }

  return {
    start() {
      stopped = false;
      for (const job of jobs) arm(job);
    },
    async stop() {
      stopped = true;
      for (const timer of timers.values()) clearTimeout(timer);
      await Promise.all(running);
    },
  };
}
