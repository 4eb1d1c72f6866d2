// Brings a database to the current schema: drizzle migrations (drizzle/), then the
// trigger SQL (sql/), all under one advisory lock so replicas may start together.
import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { drizzle } from "drizzle-orm/node-postgres";
import { migrate as drizzleMigrate } from "drizzle-orm/node-postgres/migrator";
import pg from "pg";
import { CONNECT_TIMEOUT_MS } from "./connect.js";
import { POOL_APPLICATION_NAME } from "./pool.js";

const MIGRATIONS_FOLDER = fileURLToPath(new URL("../../drizzle", import.meta.url));
const SQL_FOLDER = fileURLToPath(new URL("../../sql", import.meta.url));

/** Arbitrary constant key of the session advisory lock that serialises migrate runs. */
const MIGRATE_LOCK_KEY = 7_391_027_466;
/**
 * A server that stops answering mid-migration fails the run after this long instead of
 * hanging the start for ever (main retries). Generous: a migration may build an index, and
 * the advisory lock waits for another replica's run. No statement_timeout, for the same
 * reasons. Once we hold the advisory lock, lock_timeout keeps our DDL from queueing behind
 * an app's long transaction (and every query on that table behind us); main retries.
 */
const MIGRATE_QUERY_TIMEOUT_MS = 10 * 60_000;
const MIGRATE_LOCK_TIMEOUT_MS = 60_000;

export interface MigrateResult {
  /** sql/ files executed this run (unchanged files are skipped by checksum). */
  sqlApplied: string[];
}

/** Applies drizzle migrations and changed sql/ files. Safe to call concurrently. */
export async function migrate(databaseUrl: string): Promise<MigrateResult> {
  const client = new pg.Client({
    connectionString: databaseUrl,
    application_name: `${POOL_APPLICATION_NAME} migrate`,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    query_timeout: MIGRATE_QUERY_TIMEOUT_MS,
    keepAlive: true,
  });
  // A connection lost mid-run fails the pending query, which is what we report; without a
  // listener, the same loss would also be thrown as an unhandled 'error' event.
  client.on("error", () => undefined);
  await client.connect();
  try {
    await client.query("SELECT pg_advisory_lock($1)", [MIGRATE_LOCK_KEY]);
    await client.query(`SET lock_timeout = ${MIGRATE_LOCK_TIMEOUT_MS}`);
    try {
      await drizzleMigrate(drizzle(client), { migrationsFolder: MIGRATIONS_FOLDER });
      return { sqlApplied: await applySqlFiles(client) };
    } finally {
      // Leave nothing behind on the session: a pooler may hand it to someone else.
      await client.query("RESET lock_timeout");
      await client.query("SELECT pg_advisory_unlock($1)", [MIGRATE_LOCK_KEY]);
    }
  } finally {
    await client.end();
  }
}

async function applySqlFiles(client: pg.Client): Promise<string[]> {
  const names = (await readdir(SQL_FOLDER)).filter((n) => n.endsWith(".sql")).sort();
  const { rows } = await client.query<{ name: string; checksum: string }>(
    "SELECT name, checksum FROM reactor_sql_files",
  );
  const known = new Map(rows.map((r) => [r.name, r.checksum]));
  const applied: string[] = [];
  for (const name of names) {
    const text = await readFile(`${SQL_FOLDER}/${name}`, "utf8");
    const checksum = createHash("sha256").update(text).digest("hex");
    if (known.get(name) === checksum) continue;
    await client.query("BEGIN");
    try {
      await client.query(text);
      await client.query(
        `INSERT INTO reactor_sql_files (name, checksum) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, applied_at = now()`,
        [name, checksum],
      );
      await client.query("COMMIT");
    } catch (err) {
      await client.query("ROLLBACK");
      throw new Error(`applying sql/${name} failed: ${(err as Error).message}`, { cause: err });
    }
    applied.push(name);
  }
  return applied;
}
