// Connection pools. Every connection names itself in pg_stat_activity (DESIGN.md §4) so
// operators and fault tests can find the reactor's sessions.
import pg from "pg";
import type { Logger } from "../logger.js";

export const POOL_APPLICATION_NAME = "pg-reactor";
export const LISTENER_APPLICATION_NAME = "pg-reactor listener";

export type Pool = pg.Pool;

export interface PoolOptions {
  max?: number;
  applicationName?: string;
}

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
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
  });
  pool.on("error", (err) => logger.warn({ err: err.message }, "idle database connection lost"));
  return pool;
}
