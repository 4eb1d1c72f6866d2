// "Only one replica at a time" without a leader: a session advisory lock, taken on a
// short-lived connection of its own to the direct database URL. A pooled connection
// would not do: through PgBouncer in transaction mode, the lock and the unlock could
// land on different server connections and the lock would leak. If the process dies,
// its connection closes and the lock is released with it.
import pg from "pg";

/** Connecting for the lock gives up after this long (the job runs again next interval). */
const CONNECT_TIMEOUT_MS = 5_000;

/**
 * Runs `fn` while holding advisory lock `key`, or returns `{ locked: false }` at once if
 * another session holds it (wait: false) or after `waitMs` (wait: true).
 */
export async function withDirectLock<T>(
  url: string,
  key: bigint,
  options: { name: string; waitMs?: number },
  fn: () => Promise<T>,
): Promise<{ locked: true; value: T } | { locked: false }> {
  const client = new pg.Client({
    connectionString: url,
    application_name: `pg-reactor ${options.name}`,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
  });
  // An error on the idle connection surfaces as the failure of the next query.
  client.on("error", () => undefined);
  try {
    await client.connect();
    let locked: boolean;
    if (options.waitMs) {
      await client.query(`SET lock_timeout = ${Math.max(1, Math.round(options.waitMs))}`);
      try {
        await client.query("SELECT pg_advisory_lock($1)", [key.toString()]);
        locked = true;
      } catch (err) {
        if ((err as { code?: string }).code !== "55P03") throw err;
        locked = false;
      }
    } else {
      const { rows } = await client.query<{ ok: boolean }>(
        "SELECT pg_try_advisory_lock($1) AS ok",
        [key.toString()],
      );
      locked = rows[0]?.ok === true;
    }
    if (!locked) return { locked: false };
    try {
      return { locked: true, value: await fn() };
    } finally {
      await client.query("SELECT pg_advisory_unlock($1)", [key.toString()]).catch(() => undefined);
    }
  } finally {
    await client.end().catch(() => undefined);
  }
}
