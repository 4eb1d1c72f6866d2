// One no-op replica of the drain benchmark, in a process of its own: the reactor core
// (listener, drainer, safety poll, live settings) with a single workload that finalizes
// every claimed order as uploaded at once. Production has no such handler; this measures
// the machinery alone. Started by bench/reactor.ts with an IPC channel: it says `ready`
// once listening, and how many rows each unit finalized.
import pg from "pg";
import { makeLogger } from "../src/logger.js";
import { makeMetrics } from "../src/metrics.js";
import { makeReactor } from "../src/reactor/reactor.js";
import { makeLiveSettings } from "../src/reactor/settings.js";
import type { Workload } from "../src/reactor/workload.js";
import { SETTINGS } from "../src/workloads/index.js";
import { makeOrdersQueue } from "../src/workloads/uploads/queue.js";

const url = process.env.DATABASE_URL;
const name = process.env.INSTANCE_ID ?? `noop-${process.pid}`;
if (!url || !process.send) {
  process.stderr.write("replica-child: run by the bench, with DATABASE_URL and an IPC channel\n");
  process.exit(2);
}
const tell = (message: Record<string, unknown>) => process.send?.(message);

const logger = makeLogger("silent");
const metrics = makeMetrics();
const pool = new pg.Pool({ connectionString: url, max: 10, application_name: "pg-reactor" });
const settings = makeLiveSettings(pool, SETTINGS, logger, metrics);
const workload: Workload = {
  name: "uploads",
  channel: "reactor_orders",
  queue: makeOrdersQueue(pool) as unknown as Workload["queue"],
  // The bench queues the backlog with uploads switched off and switches them on to start.
  enabled: () => settings.current.uploads_enabled,
  disabledReason: () => (settings.current.uploads_enabled ? null : "uploads_enabled is false"),
  unitSize: () => settings.current.upload_batch_size,
  concurrency: () => settings.current.upload_concurrency,
  pausedUntil: () => 0,
  retryScheduleSeconds: () => [1],
  async process(rows) {
    tell({ type: "progress", rows: rows.length });
    return rows.map((r) => ({ id: r.id, kind: "success" as const }));
  },
};
const reactor = makeReactor({
  pool,
  listenUrl: url,
  owner: `${name}/noop`,
  settings,
  workloads: [workload],
  logger,
  metrics,
});

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  try {
    await reactor.stop(1_000);
    await pool.end();
    process.exit(0);
  } catch (err) {
    process.stderr.write(`replica-child: stop failed: ${(err as Error).message}\n`);
    process.exit(1);
  }
}
process.on("SIGTERM", () => void stop());
// The bench went away without stopping us.
process.on("disconnect", () => void stop());

await reactor.start();
tell({ type: "ready" });
