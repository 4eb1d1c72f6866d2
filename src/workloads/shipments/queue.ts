// shipstation_notifications as a lease queue: one row per SHIP_NOTIFY received, worked
// like any other table (claim with a lease, fetch, finalize).
import type { Pool } from "../../db/pool.js";
import { type ClaimedRow, makeLeaseQueue } from "../../reactor/lease-queue.js";

export const SHIPMENTS_CHANNEL = "reactor_shipments";

export interface ClaimedNotification extends ClaimedRow {
  resource_type: string;
  resource_url: string;
  received_at: Date;
}

export function makeNotificationsQueue(pool: Pool) {
  return makeLeaseQueue<ClaimedNotification>(pool, {
    table: "shipstation_notifications",
    stateColumn: "state",
    states: { pending: "pending", done: "done", failed: "failed" },
    doneAtColumn: "processed_at",
    pendingSinceColumn: "received_at",
    extraColumns: [
      { name: "shipments", type: "integer" },
      { name: "applied", type: "integer" },
    ],
    returning: "t.id, t.resource_type, t.resource_url, t.received_at",
    // A notification carries no body of its own: the shipments are fetched from resource_url.
    payload: { sql: "'{}'::jsonb", as: "payload", maxBytes: 64 },
  });
}
