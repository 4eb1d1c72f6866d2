// Connection pools. Every connection names itself in pg_stat_activity (docs/architecture.md §3) so
// operators and fault tests can find the reactor's sessions.
import pg from "pg";
import type { Logger } from "../logger.js";

export const POOL_APPLICATION_NAME = "pg-reactor";
export const LISTENER_APPLICATION_NAME = "pg-reactor listener";

export type Pool = pg.Pool;

export interface PoolOptions {
  max?: number;
  applicationName?: string;
  /**
   * The pool reaches PostgreSQL directly (no transaction-mode pooler between), so the
   * hot statements may be named, prepared once per connection (see canPrepare).
   */
  direct?: boolean;
}

/** Pools whose connections are the server's own sessions. */
const directPools = new WeakSet<object>();

/**
 * Whether statements on this pool may be prepared by name. Only where the connection is
 * a real session: PgBouncer in transaction mode (1.18, as Debian ships it) hands the next
 * statement to another server connection that never saw the PREPARE. The claim and the
 * finalize are planned once instead of at every call, about 0.5-1.5 ms each.
 */
export const canPrepare = (pool: object): boolean => directPools.has(pool);

/**
 * A named statement failed as only a transaction-mode pooler makes it fail (it exists
 * already, or not at all, on the server connection we were handed): the pool is not
 * direct after all. From now on its statements are unnamed; the error says why.
 */
export function preparedStatementTrouble(pool: object, err: unknown, named: boolean): Error | null {
  const code = (err as { code?: string }).code;
  // `named`: this statement was sent by name (another one may have turned names off since).
  if (!named || (code !== "42P05" && code !== "26000")) return null;
  directPools.delete(pool);
  return new Error(
    `${(err as Error).message}: DATABASE_URL looks like a transaction-mode pooler (PgBouncer), which shares server connections, so named statements cannot be used; the reactor now sends them unnamed. Set LISTEN_DATABASE_URL to the server itself (LISTEN needs it too; see the README, PgBouncer)`,
  );
}

/** A connection attempt that gets no answer is an error after this long. */
export const CONNECT_TIMEOUT_MS = 5_000;
/**
 * No statement of the reactor's should take this long; one that does (a server that
 * accepts connections and never answers, a lock nobody releases) fails, and the pool
 * discards that connection. Client-side, so it works through PgBouncer in transaction
 * mode, which refuses a statement_timeout startup parameter.
 */
export const QUERY_TIMEOUT_MS = 30_000;

/**
 * A pool for short statements (claims, finalizes, probes). Idle-client errors (a
 * restarted server) are logged, not thrown: the next query reconnects.
 */
export function makePool(url: string, logger: Logger, options: PoolOptions = {}): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    application_name: options.applicationName ?? POOL_APPLICATION_NAME,
    max: options.max ?? 10,
    // Fail fast when the server is down so drain loops back off instead of hanging.
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    query_timeout: QUERY_TIMEOUT_MS,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
  });
  pool.on("error", (err) => logger.warn({ err: err.message }, "idle database connection lost"));
  if (options.direct) directPools.add(pool);
  return pool;
}

/**
 * Runs `fn` in a transaction on one pooled connection. Nothing here sets session state
 * (SET LOCAL inside `fn` ends with the transaction), so it works through PgBouncer in
 * transaction mode. A connection that dies meanwhile
 * (a restarted server, a terminated backend) is discarded instead of going back to the
 * pool, and its error event is caught here: the pool listens only to idle connections,
 * and an unheard error event would end the process.
 */
export async function inTransaction<T>(pool: Pool, fn: (client: pg.PoolClient) => Promise<T>) {
  const client = await pool.connect();
  let broken: Error | undefined;
  const onError = (err: Error) => {
    broken ??= err;
  };
  client.on("error", onError);
  try {
    await client.query("BEGIN");
    const value = await fn(client);
    await client.query("COMMIT");
    return value;
  } catch (err) {
    await client.query("ROLLBACK").catch((rollbackError: Error) => {
      broken ??= rollbackError;
    });
    throw err;
  } finally {
    client.release(broken);
    // A discarded connection keeps the listener: it may still report its end.
    if (!broken) client.removeListener("error", onError);
  }
}
