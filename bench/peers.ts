// The yardsticks measured in the same run: the physical limit (a raw NOTIFY from an
// AFTER INSERT trigger to a LISTEN session) and graphile-worker with its documented
// fast settings (LISTEN/NOTIFY for latency; localQueue + batched completion for drains).

import { cpus } from "node:os";
import { Logger, run, runMigrations } from "graphile-worker";
import pg from "pg";
import {
  coldFigures,
  freshDatabase,
  idlePerHour,
  type Summary,
  sleep,
  summary,
  until,
  untilQuery,
} from "./lib.js";
import { startWindow } from "./procs.js";

export async function rawNotify(adminUrl: string, samples: number): Promise<Summary> {
  const url = await freshDatabase(adminUrl, { migrate: false });
  const setup = new pg.Client({ connectionString: url });
  await setup.connect();
  await setup.query(`
    CREATE TABLE raw_events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int);
    CREATE FUNCTION raw_notify() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN PERFORM pg_notify('raw_events', NEW.id::text); RETURN NULL; END $$;
    CREATE TRIGGER raw_notify AFTER INSERT ON raw_events FOR EACH ROW EXECUTE FUNCTION raw_notify();`);
  const listener = new pg.Client({ connectionString: url });
  await listener.connect();
  let last = "";
  let lastAt = 0;
  listener.on("notification", (n) => {
    last = n.payload ?? "";
    lastAt = performance.now();
  });
  await listener.query("LISTEN raw_events");
  const lat: number[] = [];
  for (let i = 0; i < samples; i++) {
    const t0 = performance.now();
    const { rows } = await setup.query("INSERT INTO raw_events (v) VALUES ($1) RETURNING id", [i]);
    const id = String(rows[0].id);
    await until(() => last === id);
    lat.push(lastAt - t0);
  }
  await listener.end();
  await setup.end();
  return summary(lat);
}

/** add_job committed → task starts, sequential, with graphile-worker's LISTEN/NOTIFY wake-up. */
export async function graphileLatency(adminUrl: string, samples: number): Promise<Summary> {
  const url = await freshDatabase(adminUrl, { migrate: false });
  let started = "";
  let startedAt = 0;
  const runner = await run({
    connectionString: url,
    concurrency: 1,
    noHandleSignals: true,
    pollInterval: 2000,
    logger: quietLogger(),
    taskList: {
      bench: async (payload) => {
        started = String((payload as { i: number }).i);
        startedAt = performance.now();
      },
    },
  });
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  await sleep(500);
  const lat: number[] = [];
  for (let i = 0; i < samples; i++) {
    const t0 = performance.now();
    await c.query("SELECT graphile_worker.add_job('bench', json_build_object('i', $1::int))", [i]);
    await until(() => started === String(i));
    lat.push(startedAt - t0);
    // Isolated samples, as pg-reactor's: the next job is added once this one is complete
    // (deleted), so each sample is one job arriving at an idle worker.
    await untilQuery(c, "SELECT NOT EXISTS (SELECT 1 FROM graphile_worker._private_jobs) AS done");
  }
  await c.end();
  await runner.stop();
  return summary(lat);
}

/** Drain of `jobs` no-op jobs queued up front, with localQueue and batched completion. */
/**
 * graphile-worker draining `jobs` no-op jobs in this process, after `warmup` more (all
 * queued together): the window opens once `warmup` jobs have run, as pg-reactor's drains
 * do (bench/reactor.ts measureDrain). `cold` is the whole drain from the runner's start.
 */
export async function graphileDrain(
  adminUrl: string,
  jobs: number,
  idleSeconds: number,
  warmup = 0,
) {
  const url = await freshDatabase(adminUrl, { migrate: false });
  const total = warmup + jobs;
  let done = 0;
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  // Let graphile-worker install its schema first, then queue everything in one statement.
  await runMigrations({ connectionString: url, logger: quietLogger() });
  await c.query(
    `SELECT graphile_worker.add_jobs(array_agg(spec)) FROM (
       SELECT (
         'noop', json_build_object('i', g), NULL::text, NULL::timestamptz, NULL::int, NULL::text, NULL::int, NULL::text[]
       )::graphile_worker.job_spec AS spec FROM generate_series(1, $1::int) g) s`,
    [total],
  );
  // CPU over the window: graphile-worker runs in this process (the driver), the database's
  // backends and the whole machine as for pg-reactor's drains.
  let window = warmup > 0 ? null : await startWindow([], c, cpus().length);
  const t0 = performance.now();
  const runner = await run({
    connectionString: url,
    noHandleSignals: true,
    logger: quietLogger(),
    preset: {
      worker: {
        concurrentJobs: 24,
        maxPoolSize: 12,
        localQueue: { size: 500 },
        completeJobBatchDelay: 0,
        failJobBatchDelay: 0,
        pollInterval: 2000,
      },
    },
    taskList: {
      noop: async () => {
        done++;
      },
    },
  });
  let measured = jobs;
  let tw = t0;
  if (!window) {
    await until(() => done >= warmup, 600_000);
    tw = performance.now();
    measured = total - done;
    window = await startWindow([], c, cpus().length);
  }
  await until(() => done >= total, 600_000);
  const end = performance.now();
  const seconds = (end - tw) / 1000;
  const usage = await window.end();
  await c.end();
  const idle = await idlePerHour(url, idleSeconds);
  await runner.stop();
  const coldSeconds = (end - t0) / 1000;
  return {
    jobs,
    seconds: Number(seconds.toFixed(2)),
    perSecond: Math.round(measured / seconds),
    ...coldFigures(warmup, measured, total, coldSeconds),
    cpu: { worker: usage.driverCores, postgres: usage.postgresCores, machine: usage.machineCores },
    idle,
  };
}

function quietLogger() {
  // graphile-worker's Logger takes a factory; this one drops everything but errors.
  return new Logger(() => (level: string, message: string) => {
    if (level === "error") process.stderr.write(`graphile-worker: ${message}\n`);
  });
}
