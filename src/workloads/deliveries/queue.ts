// webhook_deliveries as a lease queue. The claim joins the event and the subscription,
// so a claimed row carries everything needed to send it.
import type { Pool } from "../../db/pool.js";
import { type ClaimedRow, makeLeaseQueue } from "../../reactor/lease-queue.js";

export const DELIVERIES_CHANNEL = "reactor_deliveries";
/** Largest event payload sent; a larger event fails with a clear error, unread. */
export const MAX_WEBHOOK_BODY_BYTES = 256 * 1024;

export interface ClaimedDelivery extends ClaimedRow {
  event_id: string;
  subscription_id: number;
  event_type: string;
  /** The event's jsonb payload as stored (text); null when over MAX_WEBHOOK_BODY_BYTES. */
  event_payload: string | null;
  event_created_at: Date;
  url: string;
  secret: string;
  previous_secret: string | null;
  subscription_enabled: boolean;
  disabled_reason: string | null;
}

/**
 * What a delivery is sent with, read from its subscription `s`: by the claim, and again
 * for a delivery that waited after its claim (the previous secret only until it expires).
 */
export const SUBSCRIPTION_SENDING_COLUMNS = `s.url, s.secret, s.enabled AS subscription_enabled,
  s.disabled_reason,
  CASE WHEN s.previous_secret_expires_at IS NULL OR s.previous_secret_expires_at > now()
    THEN s.previous_secret END AS previous_secret`;

export function makeDeliveriesQueue(pool: Pool) {
  return makeLeaseQueue<ClaimedDelivery>(pool, {
    table: "webhook_deliveries",
    stateColumn: "state",
    states: { pending: "pending", done: "delivered", failed: "failed", cancelled: "cancelled" },
    doneAtColumn: "delivered_at",
    // A delivery waits from its creation, through retries and hand-backs.
    pendingSinceColumn: "created_at",
    extraColumns: [{ name: "last_status", type: "integer" }],
    excludeColumn: "subscription_id",
    // Every HTTP attempt, for the console and the admin API; written by the finalize.
    attemptLog: { table: "webhook_delivery_attempts", key: "delivery_id" },
    claimFrom: ", outbox_events e, webhook_subscriptions s",
    claimWhere: "AND e.id = t.event_id AND s.id = t.subscription_id",
    payload: {
      sql: "e.payload",
      join: "JOIN outbox_events e ON e.id = t.event_id",
      as: "event_payload",
      maxBytes: MAX_WEBHOOK_BODY_BYTES,
    },
    returning: `t.id, t.event_id, t.subscription_id, e.event_type, e.created_at AS event_created_at,
      ${SUBSCRIPTION_SENDING_COLUMNS}`,
  });
}
