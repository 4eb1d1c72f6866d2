// The operator CLI (`npx pg-reactor …`): the tasks people otherwise do by hand in psql.
// It talks to the database directly (DATABASE_URL, or the embedded server of npm start),
// so it works even when no reactor is running. It applies the admin API's rules (the
// same input checks, the same SSRF policy, the same retry refusals), bounds every
// connection and statement in time, and reports any failure as one line on stderr.
import { Command, InvalidArgumentError, Option } from "commander";
import pg from "pg";
import { type Env, EnvError, loadEnv } from "./config/env.js";
import {
  CONNECT_TIMEOUT_MS,
  describeDbError,
  isTransientDbError,
  resolveDatabase,
} from "./db/connect.js";
import { migrate } from "./db/migrate.js";
import type { Pool } from "./db/pool.js";
import { redactUrl } from "./logger.js";
import { PrivateAddressError } from "./outbound/ssrf.js";
import { makeFailedRows, retryOneRefusal } from "./reactor/failed-rows.js";
import { SETTINGS_ROWS_SQL } from "./reactor/settings.js";
import {
  defaultSettings,
  formatSetting,
  parseSettingRows,
  type SettingRow,
  WAKE_SOURCES,
  type WakeSource,
} from "./reactor/settings-spec.js";
import {
  currentWakeSource,
  switchWakeSource,
  WakeSourceRefused,
  wakeReaders,
  walMissing,
} from "./reactor/wake-source.js";
import { VERSION } from "./version.js";
import { SETTINGS, SOURCES, WORKLOADS } from "./workloads/index.js";
import type { CliKit } from "./workloads/module.js";

/** A statement gets this long unless --statement-timeout says otherwise. */
const DEFAULT_STATEMENT_TIMEOUT_SECONDS = 30;
/**
 * Closing the connections waits at most this long: a server that stopped answering must
 * not keep the process alive after the error is reported.
 */
const CLOSE_WAIT_MS = 2_000;

/** An expected refusal; its message is printed as it is. */
class CliError extends Error {
  override name = "CliError";
}

const positiveInt = (value: string) => {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < 1)
    throw new InvalidArgumentError("expected a positive integer");
  return n;
};

const print = (value: unknown): void => {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
};

const program = new Command()
  .name("pg-reactor")
  .description(
    "Operate pg-reactor from the shell: migrate, inspect, retry, manage webhook subscriptions.",
  )
  .version(VERSION)
  .option(
    "--statement-timeout <seconds>",
    "give up on a statement the database has not answered after this long",
    positiveInt,
    DEFAULT_STATEMENT_TIMEOUT_SECONDS,
  );

/** `wake-source` waits this long for the running replicas to follow, to say how many did. */
const WAKE_SWITCH_WAIT_MS = 10_000;

const statementTimeoutMs = () =>
  (program.opts<{ statementTimeout: number }>().statementTimeout ?? 30) * 1000;

/** The database URL of the command running, to name it (without a password) in errors. */
let currentUrl: string | null = null;

/**
 * Opens the database for one command and always closes it (and any embedded server).
 * Connects time out after CONNECT_TIMEOUT_MS and statements after --statement-timeout,
 * both in the client, so they also work through PgBouncer (which refuses a
 * statement_timeout startup parameter).
 */
async function withPool<T>(fn: (pool: Pool, env: Env) => Promise<T>): Promise<T> {
  const env = loadEnv();
  const { url, embedded } = await resolveDatabase(env);
  currentUrl = url;
  const pool = new pg.Pool({
    connectionString: url,
    max: 2,
    application_name: "pg-reactor cli",
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    query_timeout: statementTimeoutMs(),
  });
  // An idle connection's error surfaces as the failure of the command's next query.
  pool.on("error", () => undefined);
  try {
    return await fn(pool, env);
  } finally {
    await Promise.race([
      pool.end().catch(() => undefined),
      new Promise((resolve) => setTimeout(resolve, CLOSE_WAIT_MS).unref()),
    ]);
    await embedded?.stop();
  }
}

/** Any failure as one line a person can act on: no stack, no PostgreSQL internals. */
export function explain(err: unknown, url: string | null): string {
  if (err instanceof CliError || err instanceof EnvError || err instanceof PrivateAddressError)
    return err.message;
  if (err instanceof pg.DatabaseError) {
    // undefined_table, invalid_schema_name: the tables are not there yet.
    if (err.code === "42P01" || err.code === "3F000")
      return "the database is not migrated: run `pg-reactor migrate` first";
    if (err.code === "57014")
      return "the database cancelled the statement (statement timeout); try again or raise --statement-timeout";
    if (!isTransientDbError(err)) return `the database refused: ${err.message}`;
  }
  const e = err as { message?: string; code?: string; errors?: Array<{ message?: string }> };
  if (e.message === "Query read timeout")
    return `the database did not answer within ${statementTimeoutMs() / 1000} s (statement timeout; --statement-timeout changes it)`;
  if (e.message === "Connection terminated due to connection timeout")
    return `cannot reach the database${url ? ` at ${redactUrl(url)}` : ""}: no answer within ${CONNECT_TIMEOUT_MS / 1000} s (connect timeout: the server accepts TCP but does not speak)`;
  // Node reports a refused connection to several addresses as an AggregateError without a message.
  const text =
    describeDbError(err) ||
    e.errors
      ?.map((x) => x.message)
      .filter(Boolean)
      .join("; ") ||
    e.code ||
    String(err);
  if (isTransientDbError(err))
    return `cannot reach the database${url ? ` at ${redactUrl(url)}` : ""}: ${text}`;
  return text;
}

export async function status(pool: Pool) {
  const queues = WORKLOADS.map((m) => [m.name, m.queue(pool)] as const);
  const leases = await pool.query(
    `SELECT locked_by, count(*)::int AS n FROM (
       ${queues.map(([, q]) => `SELECT locked_by FROM ${q.spec.table} WHERE locked_until > now()`).join("\n       UNION ALL ")}
     ) x GROUP BY locked_by`,
  );
  const listeners = await pool.query(
    `SELECT count(*)::int AS n FROM pg_stat_activity
     WHERE application_name = 'pg-reactor listener' AND datname = current_database()`,
  );
  const rows = await pool.query<SettingRow>(SETTINGS_ROWS_SQL);
  const parsed = parseSettingRows(SETTINGS, rows.rows);
  const settings = { ...defaultSettings(SETTINGS), ...parsed.values };
  const invalid = parsed.problems.map((p) => p.message);
  const workloads: Record<string, Record<string, unknown>> = {};
  for (const [name, queue] of queues) {
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

program
  .command("migrate")
  .description("apply migrations and trigger SQL to DATABASE_URL (or the embedded database)")
  .action(async () => {
    const env = loadEnv();
    const { url: resolved, embedded } = await resolveDatabase(env);
    // Over the direct connection when there is one: the advisory lock needs a session,
    // which PgBouncer in transaction mode does not keep (as npm start does).
    const url = env.listenDatabaseUrl ?? resolved;
    currentUrl = url;
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

const rowNames = WORKLOADS.map((m) => m.rows);
/**
 * "orders, deliveries or notifications (workload uploads → orders, shipments →
 * notifications)": `status` counts rows under workload names, so where the two differ
 * the refusal says which is which.
 */
const rowChoices = (() => {
  const list = rowNames.join(", ").replace(/, ([^,]*)$/, " or $1");
  const renamed = WORKLOADS.filter((m) => m.rows !== m.name).map((m) => `${m.name} → ${m.rows}`);
  return renamed.length ? `${list} (workload ${renamed.join(", ")})` : list;
})();
program
  .command("retry")
  .description(
    "put failed rows back to pending (the reactors pick them up at once); say which: --id, --error-contains or --all",
  )
  .requiredOption("--failed <rows>", `whose failed rows: ${rowChoices}`, (v) => {
    if (!rowNames.includes(v)) throw new InvalidArgumentError(`expected ${rowChoices}`);
    return v;
  })
  .addOption(
    new Option("--id <id>", "only this row (it must be failed)")
      .argParser(positiveInt)
      .conflicts(["errorContains", "all"]),
  )
  .addOption(
    new Option(
      "--error-contains <text>",
      "only rows whose last_error contains this text",
    ).conflicts("all"),
  )
  .option("--all", "every failed row (up to --limit)")
  .option("--limit <n>", "at most this many rows", positiveInt, 10_000)
  .action(
    (opts: { failed: string; id?: number; errorContains?: string; all?: boolean; limit: number }) =>
      withPool(async (pool) => {
        const module = WORKLOADS.find((m) => m.rows === opts.failed);
        if (!module) throw new CliError(`expected ${rowChoices}`);
        const rows = makeFailedRows(pool, module.queue(pool).spec, {
          columns: "t.id",
          allowedEquals: {},
        });
        if (opts.id !== undefined) {
          const refusal = retryOneRefusal(opts.failed, opts.id, await rows.retryOne(opts.id));
          if (refusal) throw new CliError(refusal);
          process.stdout.write(`retried ${opts.failed} row ${opts.id}\n`);
          return;
        }
        // Like the admin API's bulk retry: it must say what it retries.
        if (!opts.errorContains && !opts.all)
          throw new CliError(
            "say which failed rows to retry: --id <id>, --error-contains <text> or --all",
          );
        const retried = await rows.retryMatching({ errorContains: opts.errorContains }, opts.limit);
        process.stdout.write(`retried ${retried} failed ${opts.failed}\n`);
      }),
  );

program
  .command("wake-source")
  .description(
    "show, or switch every running replica (live) to, the wake source: notify (NOTIFY triggers) or wal (logical replication; writers pay nothing)",
  )
  .argument("[mode]", "notify or wal", (v: string) => {
    if (!WAKE_SOURCES.includes(v as WakeSource))
      throw new InvalidArgumentError("expected notify or wal");
    return v as WakeSource;
  })
  .action((mode: WakeSource | undefined) =>
    withPool(async (pool) => {
      if (mode === undefined) {
        const readers = await wakeReaders(pool);
        const missing = await walMissing(pool);
        print({
          wakeSource: await currentWakeSource(pool),
          ...readers,
          walPossible: missing ?? true,
        });
        return;
      }
      const before = await switchWakeSource(pool, mode).catch((err: unknown) => {
        if (err instanceof WakeSourceRefused) throw new CliError(err.message);
        throw err;
      });
      // Replicas follow within a moment (the config NOTIFY); say how many have.
      let readers = await wakeReaders(pool);
      const deadline = Date.now() + WAKE_SWITCH_WAIT_MS;
      const done = () =>
        mode === "wal" ? readers.readingWal >= readers.listening : readers.readingWal === 0;
      while (!done() && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        readers = await wakeReaders(pool);
      }
      const followed =
        mode === "wal"
          ? `${readers.readingWal} of ${readers.listening} running replicas read the write-ahead log`
          : `${readers.listening - readers.readingWal} of ${readers.listening} running replicas wake from NOTIFY`;
      process.stdout.write(
        `wake source ${before === mode ? "stays" : "is now"} ${mode}; ${followed}${done() ? "" : " (the others follow once connected; /status shows wakeSource)"}\n`,
      );
    }),
  );

// Commands a workload or source brings (webhook subscriptions, XML import).
const kit: CliKit = {
  withPool,
  print,
  fail(message) {
    throw new CliError(message);
  },
  positiveInt,
};
for (const module of [...WORKLOADS, ...SOURCES]) module.cli?.(program, kit);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  process.stderr.write(`pg-reactor: ${explain(err, currentUrl).replace(/\s*\n\s*/g, " ")}\n`);
  // Exit now: a connection the server never answered may still hold the event loop.
  process.exit(1);
}
