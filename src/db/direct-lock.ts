// "Only one replica at a time" without a leader: a session advisory lock, taken on a
// short-lived connection of its own to the direct database URL. A pooled connection
// would not do: through PgBouncer in transaction mode, the lock and the unlock could
// land on different server connections and the lock would leak. If the process dies,
// its connection closes and the lock is released with it.
import pg from "pg";

/** Connecting for the lock gives up after this long (the job runs again next interval). */
const CONNECT_TIMEOUT_MS = 5_000;

export type Locked<T> = { locked: true; value: T } | { locked: false };

/** Tries one lock on an open session: runs `run` while holding it, or returns at once. */
export type TryLock = <T>(key: bigint, run: () => Promise<T>) => Promise<Locked<T>>;

async function connect(url: string, name: string): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: url,
    application_name: `pg-reactor ${name}`,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
  });
  // An error on the idle connection surfaces as the failure of the next query.
  client.on("error", () => undefined);
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw err;
  }
  return client;
}

async function holding<T>(client: pg.Client, key: bigint, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } finally {
    await client.query("SELECT pg_advisory_unlock($1)", [key.toString()]).catch(() => undefined);
  }
}

/**
 * Runs `fn` while holding advisory lock `key`, or returns `{ locked: false }` at once if
 * another session holds it (wait: false) or after `waitMs` (wait: true).
 */
export async function withDirectLock<T>(
  url: string,
  key: bigint,
  options: { name: string; waitMs?: number },
  fn: () => Promise<T>,
): Promise<Locked<T>> {
  const client = await connect(url, options.name);
  try {
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
    return { locked: true, value: await holding(client, key, fn) };
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * One direct connection for a series of short locks (one per file of a folder pass), so
 * each costs a round trip rather than a connection. Never waits for a lock: another
 * session holding it means another replica is doing that piece of work.
 */
export async function withDirectSession<T>(
  url: string,
  name: string,
  fn: (tryLock: TryLock) => Promise<T>,
): Promise<T> {
  const client = await connect(url, name);
  try {
    return await fn(async (key, run) => {
      const { rows } = await client.query<{ ok: boolean }>(
        "SELECT pg_try_advisory_lock($1) AS ok",
        [key.toString()],
      );
      if (rows[0]?.ok !== true) return { locked: false };
      return { locked: true, value: await holding(client, key, run) };
    });
  } finally {
    await client.end().catch(() => undefined);
  }
}
