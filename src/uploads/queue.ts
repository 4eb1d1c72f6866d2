// orders_inbox as a lease queue: how the generic claim/finalize SQL spells this table.
import type { Pool } from "../db/pool.js";
import { type ClaimedRow, makeLeaseQueue } from "../reactor/lease-queue.js";
import type { OrderRow } from "./order.js";

export const ORDERS_CHANNEL = "reactor_orders";

export type ClaimedOrder = ClaimedRow & OrderRow;

export function makeOrdersQueue(pool: Pool) {
  return makeLeaseQueue<ClaimedOrder>(pool, {
    table: "orders_inbox",
    stateColumn: "upload_state",
    states: { pending: "pending", done: "uploaded", failed: "failed" },
    doneAtColumn: "uploaded_at",
    // An app change during an upload moves updated_at: the row is then sent again.
    versionColumn: "updated_at",
    extraColumns: [{ name: "shipstation_order_id", type: "bigint", keepOld: true }],
  });
}
