// Deliveries housekeeping run from the safety poll: the effects of a 410 Gone, and
// retention (final rows and fully delivered events older than retention_days), deleted
// in bounded batches so no statement holds locks for long.
import type { Pool } from "../../db/pool.js";

/** Rows deleted per statement; a full batch means more remain and the next poll continues. */
export const RETENTION_BATCH = 1000;

/** Disables a subscription whose endpoint answered 410 and cancels its waiting deliveries. */
export async function disableGoneSubscription(
  pool: Pool,
  subscriptionId: number,
  reason: string,
): Promise<number> {
  await pool.query(
    "UPDATE webhook_subscriptions SET enabled = false, disabled_reason = $2 WHERE id = $1 AND enabled",
    [subscriptionId, reason],
  );
  // Rows leased by another replica finish their own attempt and learn the same thing.
  const res = await pool.query(
    `UPDATE webhook_deliveries SET state = 'cancelled', last_error = $2, locked_by = NULL, locked_until = NULL
     WHERE subscription_id = $1 AND state = 'pending' AND (locked_until IS NULL OR locked_until < now())`,
    [subscriptionId, `cancelled: ${reason}`],
  );
  return res.rowCount ?? 0;
}

/** Deletes one batch of each kind; returns how many rows went. */
export async function applyRetention(
  pool: Pool,
  retentionDays: number,
): Promise<{ deliveries: number; events: number }> {
  const deliveries = await pool.query(
    `DELETE FROM webhook_deliveries WHERE id IN (
       SELECT id FROM webhook_deliveries
       WHERE state IN ('delivered', 'cancelled')
         AND coalesce(delivered_at, created_at) < now() - make_interval(days => $1)
       LIMIT $2)`,
    [retentionDays, RETENTION_BATCH],
  );
  // An event goes once nothing about it is still open: no pending or failed delivery
  // (failed ones are kept for a manual retry, and they need their event).
  const events = await pool.query(
    `DELETE FROM outbox_events WHERE id IN (
       SELECT e.id FROM outbox_events e
       WHERE e.created_at < now() - make_interval(days => $1)
         AND NOT EXISTS (
           SELECT 1 FROM webhook_deliveries d
           WHERE d.event_id = e.id AND d.state IN ('pending', 'failed'))
       LIMIT $2)`,
    [retentionDays, RETENTION_BATCH],
  );
  return { deliveries: deliveries.rowCount ?? 0, events: events.rowCount ?? 0 };
}
