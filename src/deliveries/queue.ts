// webhook_deliveries as a lease queue. The claim joins the event and the subscription,
// so a claimed row carries everything needed to send it.
import type { Pool } from "../db/pool.js";
import { type ClaimedRow, makeLeaseQueue } from "../reactor/lease-queue.js";

export const DELIVERIES_CHANNEL = "reactor_deliveries";

export interface ClaimedDelivery extends ClaimedRow {
  event_id: string;
  subscription_id: number;
  event_type: string;
  event_payload: unknown;
  event_created_at: Date;
  url: string;
  secret: string;
  previous_secret: string | null;
  subscription_enabled: boolean;
  disabled_reason: string | null;
}

export function makeDeliveriesQueue(pool: Pool) {
  return makeLeaseQueue<ClaimedDelivery>(pool, {
    table: "webhook_deliveries",
    stateColumn: "state",
    states: { pending: "pending", done: "delivered", failed: "failed", cancelled: "cancelled" },
    doneAtColumn: "delivered_at",
    extraColumns: [{ name: "last_status", type: "integer" }],
    excludeColumn: "subscription_id",
    claimFrom: ", outbox_events e, webhook_subscriptions s",
    claimWhere: "AND e.id = t.event_id AND s.id = t.subscription_id",
    claimColumns: `e.event_type, e.payload AS event_payload, e.created_at AS event_created_at,
      s.url, s.secret, s.enabled AS subscription_enabled, s.disabled_reason,
      CASE WHEN s.previous_secret_expires_at IS NULL OR s.previous_secret_expires_at > now()
        THEN s.previous_secret END AS previous_secret`,
  });
}
