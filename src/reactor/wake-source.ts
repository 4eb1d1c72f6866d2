// Switching the wake source (docs/architecture.md, "Wake source"): one transaction that
// stores the setting, whose triggers (sql/070_wake_source.sql) create or drop the notify
// triggers; the config NOTIFY that follows tells every replica to follow. `wal` is
// checked first, so the refusal says what the server lacks.
import type { Pool } from "../db/pool.js";
import type { WakeSource } from "./settings-spec.js";
import { WAL_APPLICATION_NAME } from "./wal-waker.js";

/** The triggers `notify` mode has and `wal` mode drops (sql/070_wake_source.sql), sorted. */
export const NOTIFY_TRIGGERS: readonly string[] = [
  "reactor_deliveries_notify_update",
  "reactor_orders_notify_insert",
  "reactor_orders_notify_update",
  "reactor_shipments_notify_insert",
  "reactor_shipments_notify_update",
];

/** The DDL of the switch waits at most this long for a table lock (a long transaction). */
const LOCK_TIMEOUT = "5s";
/** A switch that deadlocks (nothing changed) is tried this many times in all. */
const MAX_TRIES = 3;

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

/**
 * Stores `mode` and puts the triggers and the publication in its state (again, where it
 * is in force already: that repairs a publication someone dropped or altered). Returns
 * the mode before. Throws WakeSourceRefused with what is missing.
 */
export async function switchWakeSource(pool: Pool, mode: WakeSource): Promise<WakeSource> {
  // Where wal is in force, its replicas hold the slots the check would count.
  if (mode === "wal" && (await currentWakeSource(pool)) !== "wal") {
    const missing = await walMissing(pool);
    if (missing) throw new WakeSourceRefused(`wal refused: ${missing}`);
  }
  for (let attempt = 1; ; attempt++) {
    try {
      return await storeWakeSource(pool, mode);
    } catch (err) {
      // The DDL locks three tables; a transaction taking them in another order (an app
      // writing two of them, a concurrent switch) can deadlock with it. Nothing was
      // changed: try again.
      if ((err as { code?: string }).code !== "40P01" || attempt >= MAX_TRIES) throw err;
    }
  }
}

async function storeWakeSource(pool: Pool, mode: WakeSource): Promise<WakeSource> {
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
    await client.query("SELECT reactor_apply_wake_source($1)", [mode]);
    await client.query("COMMIT");
    return before.rows[0]?.mode ?? "notify";
  } catch (err) {
    await client.query("ROLLBACK").catch((e: Error) => {
      broken = e;
    });
    if ((err as { code?: string }).code === "55P03") {
      throw new WakeSourceRefused(
        `switching needs an instant's lock on orders_inbox, webhook_deliveries and shipstation_notifications, and a transaction held one for ${LOCK_TIMEOUT} (lock timeout); nothing was changed, try again`,
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
