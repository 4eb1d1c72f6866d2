// The slow safety net (docs/architecture.md §1): every poll_interval_seconds, ONE query asks every
// workload table what is due and re-reads the settings (a config notification may have
// been lost). Due work is woken; future work arms the drainers' timers. The same query
// notifies the listener's private ping channel, which proves the LISTEN connection
// without a query of its own. At idle this is the only query the reactor makes.
import type { Pool } from "../db/pool.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { Drainer } from "./drainer.js";
import { toStats } from "./lease-queue.js";
import type { Listener } from "./listener.js";
import { type LiveSettings, SETTINGS_ROWS_SQL, type SettingRow } from "./settings.js";
import type { Workload } from "./workload.js";

export interface SafetyPoll {
  start(): void;
  /** Re-arms the timer with the current interval (after a settings change). */
  reschedule(): void;
  stop(): void;
  /** Runs one poll now (tests, and the first pass at start). */
  pollNow(): Promise<void>;
  lastPollAt(): Date | null;
}

export function makeSafetyPoll(options: {
  pool: Pool;
  workloads: ReadonlyArray<{ workload: Workload; drainer: Drainer }>;
  intervalSeconds: () => number;
  settings: LiveSettings;
  logger: Logger;
  metrics: Metrics;
  /** The listener to ping, if any (see Listener.pingChannel). */
  listener?: () => Pick<Listener, "pingChannel" | "expectPing"> | null;
}): SafetyPoll {
  const { pool, workloads, metrics } = options;
  const log = options.logger.child({ component: "safety-poll" });
  const statsSql = workloads
    .map(({ workload }) => workload.queue.statsSql(workload.name))
    .join("\nUNION ALL\n");
  const sql = `SELECT
    (SELECT coalesce(json_agg(s), '[]') FROM (${statsSql}) s) AS stats,
    (SELECT coalesce(json_agg(c), '[]') FROM (${SETTINGS_ROWS_SQL}) c) AS config`;
  const pingSql = `${sql}, pg_notify($1, '') AS ping`;
  let timer: NodeJS.Timeout | null = null;
  let stopped = true;
  let last: Date | null = null;
  let maintaining = false;

  async function pollNow() {
    metrics.safetyPolls.inc();
    last = new Date();
    const listener = options.listener?.() ?? null;
    const channel = listener?.pingChannel() ?? null;
    const sentAt = Date.now();
    const { rows } = await pool.query<{ stats: Record<string, unknown>[]; config: SettingRow[] }>(
      channel ? pingSql : sql,
      channel ? [channel] : [],
    );
    if (channel) listener?.expectPing(sentAt);
    const result = rows[0];
    if (!result) return;
    options.settings.apply(result.config);
    for (const row of result.stats) {
      const entry = workloads.find((w) => w.workload.name === row.workload);
      if (!entry) continue;
      entry.drainer.applyStats(toStats(row), "poll");
    }
    if (!maintaining) {
      maintaining = true;
      void Promise.all(workloads.map(({ workload }) => workload.maintain?.()))
        .catch((err) => log.warn({ err: (err as Error).message }, "maintenance failed"))
        .finally(() => {
          maintaining = false;
        });
    }
  }

  function arm() {
    if (stopped) return;
    if (timer) clearTimeout(timer);
    timer = setTimeout(async () => {
      try {
        await pollNow();
      } catch (err) {
        log.warn({ err: (err as Error).message }, "safety poll failed");
      }
      arm();
    }, options.intervalSeconds() * 1000);
  }

  return {
    start() {
      stopped = false;
      arm();
    },
    reschedule: arm,
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
    },
    pollNow,
    lastPollAt: () => last,
  };
}
