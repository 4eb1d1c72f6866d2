// Switching the wake source (docs/architecture.md, "Wake source"): one transaction that
// stores the setting, whose triggers (sql/070_wake_source.sql) create or drop the notify
// triggers; the config NOTIFY that follows tells every replica to follow. `wal` is
// checked first, so the refusal says what the server lacks.
import type { Pool } from "../db/pool.js";
import type { WakeSource } from "./settings-spec.js";
import { WAL_APPLICATION_NAME } from "./wal-waker.js";

/** The DDL of the switch waits at most this long for a table lock (a long transaction). */
const LOCK_TIMEOUT = "5s";

export class WakeSourceRefused extends Error {
  override name = "WakeSourceRefused";
}

/** Why this server cannot run `wal` mode (as the role of `pool`), or null. */
export async function walMissing(pool: Pool): Promise<string | null> {
  const { rows } = await pool.query<{ missing: string | null }>(
    "SELECT reactor_wal_missing() AS missing",
  );
  return rows[0]?.missing ?? null;
}

export async function currentWakeSource(pool: Pool): Promise<WakeSource> {
  const { rows } = await pool.query<{ mode: WakeSource }>("SELECT reactor_wake_source() AS mode");
  return rows[0]?.mode ?? "notify";
}

/** Stores `mode`; returns the mode before. Throws WakeSourceRefused with what is missing. */
export async function switchWakeSource(pool: Pool, mode: WakeSource): Promise<WakeSource> {
  if (mode === "wal") {
    const missing = await walMissing(pool);
    if (missing) throw new WakeSourceRefused(`wal refused: ${missing}`);
  }
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    await client.query("BEGIN");
    await client.query(`SET LOCAL lock_timeout = '${LOCK_TIMEOUT}'`);
    const before = await client.query<{ mode: WakeSource }>("SELECT reactor_wake_source() AS mode");
    await client.query(
      `INSERT INTO configuration_params (category, parameter_name, value)
       VALUES ('reactor', 'wake_source', $1)
       ON CONFLICT (category, parameter_name, sku) DO UPDATE SET value = excluded.value, updated_at = now()`,
      [mode],
    );
    await client.query("COMMIT");
    return before.rows[0]?.mode ?? "notify";
  } catch (err) {
    await client.query("ROLLBACK").catch((e: Error) => {
      broken = e;
    });
    if ((err as { code?: string }).code === "55P03") {
      throw new WakeSourceRefused(
        `a transaction holds one of the reactor's tables (orders_inbox, webhook_deliveries, shipstation_notifications) for more than ${LOCK_TIMEOUT}; nothing was changed, try again`,
      );
    }
    throw err;
  } finally {
    client.release(broken);
  }
}

/** Replicas reading the WAL and replicas listening, as the server sees them. */
export async function wakeReaders(pool: Pool): Promise<{ listening: number; readingWal: number }> {
  const { rows } = await pool.query<{ listening: number; wal: number }>(
    `SELECT count(*) FILTER (WHERE application_name = 'pg-reactor listener')::int AS listening,
            count(*) FILTER (WHERE application_name = $1 AND backend_type = 'walsender')::int AS wal
     FROM pg_stat_activity WHERE datname = current_database()`,
    [WAL_APPLICATION_NAME],
  );
  return { listening: rows[0]?.listening ?? 0, readingWal: rows[0]?.wal ?? 0 };
}
