// orders_inbox as a lease queue: how the generic claim/finalize SQL spells this table.
import type { Pool } from "../../db/pool.js";
import { type ClaimedRow, makeLeaseQueue } from "../../reactor/lease-queue.js";
import { ORDER_MAX_BYTES, type OrderRow } from "./order.js";

export const ORDERS_CHANNEL = "reactor_orders";

export type ClaimedOrder = ClaimedRow & OrderRow;

export function makeOrdersQueue(pool: Pool) {
  return makeLeaseQueue<ClaimedOrder>(pool, {
    table: "orders_inbox",
    stateColumn: "upload_state",
    states: { pending: "pending", done: "uploaded", failed: "failed" },
    doneAtColumn: "uploaded_at",
    // A content change moves updated_at (and re-queues the order): it waits from then.
    pendingSinceColumn: "updated_at",
    // An app change during an upload moves updated_at: the row is then sent again.
    versionColumn: "updated_at",
    extraColumns: [{ name: "shipstation_order_id", type: "bigint", keepOld: true }],
    returning: "t.id, t.order_number, t.order_key, t.upload_key, t.status, t.created_at",
    payload: { sql: "t.payload", as: "payload", maxBytes: ORDER_MAX_BYTES },
  });
}
