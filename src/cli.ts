// The operator CLI (`npx pg-reactor …`): the tasks people otherwise do by hand in psql.
// It talks to the database directly (DATABASE_URL, or the embedded server of npm start),
// so it works even when no reactor is running.
import { Command, InvalidArgumentError } from "commander";
import pg from "pg";
import { EnvError, loadEnv } from "./config/env.js";
import { resolveDatabase } from "./db/connect.js";
import { migrate } from "./db/migrate.js";
import type { Pool } from "./db/pool.js";
import { makeDeliveriesQueue } from "./deliveries/queue.js";
import { makeSubscriptions } from "./deliveries/subscriptions.js";
import { redactUrl } from "./logger.js";
import { makeFailedRows } from "./reactor/failed-rows.js";
import { SETTINGS_ROWS_SQL } from "./reactor/settings.js";
import {
  defaultSettings,
  formatSetting,
  parseSettingRows,
  type SettingRow,
} from "./reactor/settings-spec.js";
import { makeOrdersQueue } from "./uploads/queue.js";
import { VERSION } from "./version.js";

/** Opens the database for one command and always closes it (and any embedded server). */
async function withPool<T>(fn: (pool: Pool, url: string) => Promise<T>): Promise<T> {
  const { url, embedded } = await resolveDatabase(loadEnv());
  const pool = new pg.Pool({ connectionString: url, max: 2, application_name: "pg-reactor cli" });
  try {
    return await fn(pool, url);
  } finally {
    await pool.end();
    await embedded?.stop();
  }
}

const positiveInt = (value: string) => {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1)
    throw new InvalidArgumentError("expected a positive integer");
  return n;
};

const print = (value: unknown): void => {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
};

export async function status(pool: Pool) {
  const leases = await pool.query(
    `SELECT locked_by, count(*)::int AS n FROM (
       SELECT locked_by FROM orders_inbox WHERE locked_until > now()
       UNION ALL SELECT locked_by FROM webhook_deliveries WHERE locked_until > now()) x GROUP BY locked_by`,
  );
  const listeners = await pool.query(
    `SELECT count(*)::int AS n FROM pg_stat_activity
     WHERE application_name = 'pg-reactor listener' AND datname = current_database()`,
  );
  const rows = await pool.query<SettingRow>(SETTINGS_ROWS_SQL);
  const parsed = parseSettingRows(rows.rows);
  const settings = { ...defaultSettings(), ...parsed.values };
  const invalid = parsed.problems.map((p) => p.message);
  const queues = { uploads: makeOrdersQueue(pool), deliveries: makeDeliveriesQueue(pool) };
  const workloads: Record<string, Record<string, unknown>> = {};
  for (const [name, queue] of Object.entries(queues)) {
    const stats = await queue.stats();
    workloads[name] = {
      ...(await queue.countsByState()),
      oldestPendingAgeSeconds: Math.round(stats.oldestPendingAgeSeconds),
    };
  }
  return {
    version: VERSION,
    reactorsListening: listeners.rows[0]?.n ?? 0,
    workloads,
    leasesHeld: Object.fromEntries(leases.rows.map((r) => [r.locked_by, r.n])),
    settings: Object.fromEntries(Object.entries(settings).map(([k, v]) => [k, formatSetting(v)])),
    invalidSettings: invalid,
  };
}

const program = new Command()
  .name("pg-reactor")
  .description(
    "Operate pg-reactor from the shell: migrate, inspect, retry, manage webhook subscriptions.",
  )
  .version(VERSION);

program
  .command("migrate")
  .description("apply migrations and trigger SQL to DATABASE_URL (or the embedded database)")
  .action(async () => {
    const { url, embedded } = await resolveDatabase(loadEnv());
    try {
      const { sqlApplied } = await migrate(url);
      process.stdout.write(
        `pg-reactor: ${redactUrl(url)} is migrated${sqlApplied.length ? ` (applied ${sqlApplied.join(", ")})` : " (nothing to do)"}\n`,
      );
    } finally {
      await embedded?.stop();
    }
  });

program
  .command("status")
  .description("backlog, failures, leases and settings, straight from the database")
  .action(() => withPool(async (pool) => print(await status(pool))));

program
  .command("retry")
  .description("put failed rows back to pending (the reactors pick them up at once)")
  .requiredOption("--failed <workload>", "orders or deliveries", (v) => {
    if (v !== "orders" && v !== "deliveries")
      throw new InvalidArgumentError("expected orders or deliveries");
    return v;
  })
  .option("--id <id>", "only this row", positiveInt)
  .option("--error-contains <text>", "only rows whose last_error contains this text")
  .option("--limit <n>", "at most this many rows", positiveInt, 10_000)
  .action(
    (opts: {
      failed: "orders" | "deliveries";
      id?: number;
      errorContains?: string;
      limit: number;
    }) =>
      withPool(async (pool) => {
        const spec =
          opts.failed === "orders" ? makeOrdersQueue(pool).spec : makeDeliveriesQueue(pool).spec;
        const rows = makeFailedRows(pool, spec, { columns: "t.id", allowedEquals: {} });
        const retried = await rows.retryMatching(
          { ids: opts.id ? [opts.id] : undefined, errorContains: opts.errorContains },
          opts.limit,
        );
        process.stdout.write(`retried ${retried} failed ${opts.failed}\n`);
      }),
  );

const subscriptions = program.command("subscriptions").description("manage webhook subscriptions");
subscriptions
  .command("add <url>")
  .description("create a subscription; prints its secret once")
  .option("--event-types <list>", "comma-separated event types or prefix.* (default: all)", (v) =>
    v
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean),
  )
  .option("--description <text>")
  .action((url: string, opts: { eventTypes?: string[]; description?: string }) =>
    withPool(async (pool) =>
      print(
        await makeSubscriptions(pool).create({
          url,
          event_types: opts.eventTypes,
          description: opts.description,
        }),
      ),
    ),
  );
subscriptions
  .command("list")
  .description("list subscriptions (secrets are never shown)")
  .action(() =>
    withPool(async (pool) => print((await makeSubscriptions(pool).list({ limit: 1000 })).items)),
  );
subscriptions
  .command("rotate <id>")
  .description("new secret; the old one keeps signing for the grace period")
  .option("--grace-hours <n>", "hours the old secret keeps signing", positiveInt, 24)
  .action((id: string, opts: { graceHours: number }) =>
    withPool(async (pool) => {
      const sub = await makeSubscriptions(pool).rotate(positiveInt(id), opts.graceHours);
      if (!sub) throw new Error(`no subscription with id ${id}`);
      print(sub);
    }),
  );
subscriptions
  .command("disable <id>")
  .description("stop delivering to a subscription")
  .action((id: string) =>
    withPool(async (pool) => {
      const sub = await makeSubscriptions(pool).update(positiveInt(id), { enabled: false });
      if (!sub) throw new Error(`no subscription with id ${id}`);
      print(sub);
    }),
  );

try {
  await program.parseAsync(process.argv);
} catch (err) {
  const message = err instanceof EnvError ? err.message : (err as Error).message;
  process.stderr.write(`pg-reactor: ${message}\n`);
  process.exitCode = 1;
}
