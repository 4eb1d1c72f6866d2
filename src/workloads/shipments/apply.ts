// Applies ShipStation shipments to orders_inbox, in one transaction per batch: the order
// becomes `shipped` with its tracking, and an `order.shipped` outbox event is written in
// the same transaction, so subscribers hear of it exactly when it is true. A voided
// shipment takes its tracking off the order (back to awaiting_shipment unless another
// shipment of the order still stands) and writes `order.shipment_voided`.
// shipstation_shipments remembers every shipment id, so applying one again (a repeated
// webhook, the poll's overlap, a race between the two) changes nothing and emits nothing.
// A shipment PostgreSQL cannot store is skipped alone, never the page it came in.
import type pg from "pg";
import { inTransaction, type Pool } from "../../db/pool.js";
import { SHIPMENT_TEXT_FIELDS, type Shipment } from "../../outbound/shipstation-client.js";

export type ShipmentSource = "webhook" | "poll";

export interface ApplyResult {
  /** Shipments that changed an order (shipped, or voided) and wrote an event. */
  applied: number;
  /** Shipments seen before: nothing changed. */
  unchanged: number;
  /** Shipments of orders this database does not know (counted once, when first seen). */
  unmatched: Shipment[];
  /** Shipments PostgreSQL cannot store (a NUL character, a value out of range): nothing of them was written. */
  refused: Array<{ shipment: Shipment; error: string }>;
}

/**
 * Records the shipment id and finds its order: the one whose upload_key is the shipment's
 * orderKey (what every upload sends). Only a shipment without an orderKey is matched by
 * orderNumber, and only when exactly one order has it: a shipment carrying another
 * orderKey belongs to an order someone else created (another store in the same account),
 * whatever its number. Returns a row only when something is new: the shipment was not
 * known, or it was known and is now voided. The primary key serialises two replicas
 * applying the same shipment: the second sees the first's row.
 */
const RECORD_SQL = `
  WITH target AS (
    SELECT coalesce(
      (SELECT id FROM orders_inbox WHERE upload_key = $2),
      (SELECT min(id) FROM orders_inbox
        WHERE $2::text IS NULL AND order_number = $3 HAVING count(*) = 1)
    ) AS order_id
  )
  INSERT INTO shipstation_shipments AS s (shipment_id, order_id, voided, source,
    shipped_at, tracking_number, carrier_code, service_code)
  SELECT $1, order_id, $4, $5, $6, $7, $8, $9 FROM target
  ON CONFLICT (shipment_id) DO UPDATE SET voided = true, updated_at = now()
    WHERE excluded.voided AND NOT s.voided
  RETURNING s.order_id, s.voided, (xmax = 0) AS inserted`;

/**
 * Marks the order shipped by this shipment, unless it already records a later one
 * (ShipStation's ids increase): with split shipments, the order shows the newest,
 * whichever order they were seen in.
 */
const SHIP_SQL = `
  UPDATE orders_inbox SET status = 'shipped', shipped_at = $2, tracking_number = $3,
    carrier_code = $4, service_code = $5, shipstation_shipment_id = $6
  WHERE id = $1 AND (shipstation_shipment_id IS NULL OR shipstation_shipment_id < $6)
  RETURNING order_number, upload_key`;

/** Locks the order before a void reads which of its shipments still stand. */
const LOCK_ORDER_SQL = "SELECT order_number, upload_key FROM orders_inbox WHERE id = $1 FOR UPDATE";

/**
 * Takes the voided shipment off the order, only if the order still records it (not a
 * later shipment). The newest other shipment of the order that still stands keeps it
 * shipped, with that shipment's tracking; with none, the order goes back to
 * awaiting_shipment. Changing shipstation_shipment_id is what keeps the re-queue rule
 * (sql/010_orders_inbox.sql) from uploading the order again.
 */
const VOID_SQL = `
  WITH standing AS (
    SELECT (SELECT ss FROM shipstation_shipments ss
            WHERE ss.order_id = $1 AND NOT ss.voided AND ss.shipment_id <> $2
            ORDER BY ss.shipment_id DESC LIMIT 1) AS ss
  )
  UPDATE orders_inbox o SET
    status = CASE WHEN (standing.ss).shipment_id IS NULL THEN 'awaiting_shipment' ELSE 'shipped' END,
    shipped_at = (standing.ss).shipped_at,
    tracking_number = (standing.ss).tracking_number,
    carrier_code = (standing.ss).carrier_code,
    service_code = (standing.ss).service_code,
    shipstation_shipment_id = (standing.ss).shipment_id
  FROM standing
  WHERE o.id = $1 AND o.shipstation_shipment_id = $2`;

const ORDER_SQL = "SELECT order_number, upload_key FROM orders_inbox WHERE id = $1";

const EVENT_SQL = `
  INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
  VALUES ('order', $1, $2, $3::jsonb)`;

/** Deadlock and serialization failures: the whole batch is tried again, this many times in all. */
const TRANSACTION_ATTEMPTS = 3;
const RETRYABLE = new Set(["40P01", "40001"]);
/**
 * SQLSTATE classes that mean "this data cannot be stored" (data exception, integrity
 * constraint, program limit): the batch is applied one shipment at a time instead, and
 * only the shipment at fault is skipped.
 */
const DATA_ERROR_CLASSES = ["22", "23", "54"];

interface OrderRef {
  order_number: string;
  upload_key: string;
}

function eventPayload(order: OrderRef, s: Shipment) {
  return JSON.stringify({
    orderNumber: order.order_number,
    orderKey: order.upload_key,
    trackingNumber: s.trackingNumber,
    carrierCode: s.carrierCode,
    serviceCode: s.serviceCode,
    shipDate: s.shipDate,
    shipmentId: s.shipmentId,
  });
}

const sqlState = (err: unknown) => (err as { code?: unknown }).code;
const isDataError = (err: unknown) => {
  const code = sqlState(err);
  return typeof code === "string" && DATA_ERROR_CLASSES.includes(code.slice(0, 2));
};

/** Applies shipments in one transaction; throws (everything rolled back) on any error. */
async function applyBatch(
  client: pg.PoolClient,
  shipments: readonly Shipment[],
  source: ShipmentSource,
): Promise<Omit<ApplyResult, "refused">> {
  const result = { applied: 0, unchanged: 0, unmatched: [] as Shipment[] };
  for (const s of shipments) {
    const recorded = await client.query<{
      order_id: string | null;
      voided: boolean;
      inserted: boolean;
    }>(RECORD_SQL, [
      s.shipmentId,
      s.orderKey,
      s.orderNumber,
      s.voided,
      source,
      s.createdAt ?? new Date(),
      s.trackingNumber,
      s.carrierCode,
      s.serviceCode,
    ]);
    const row = recorded.rows[0];
    if (!row) {
      result.unchanged++;
      continue;
    }
    if (row.order_id === null) {
      if (row.inserted) result.unmatched.push(s);
      else result.unchanged++;
      continue;
    }
    if (row.inserted && s.voided) {
      // First seen already voided: it never shipped the order here, nothing to undo.
      result.unchanged++;
      continue;
    }
    let order: OrderRef | undefined;
    let event: string;
    if (row.inserted) {
      const shipped = await client.query<OrderRef>(SHIP_SQL, [
        row.order_id,
        s.createdAt ?? new Date(),
        s.trackingNumber,
        s.carrierCode,
        s.serviceCode,
        s.shipmentId,
      ]);
      // The order records a later shipment: this one is still news to subscribers.
      order = shipped.rows[0] ?? (await client.query<OrderRef>(ORDER_SQL, [row.order_id])).rows[0];
      event = "order.shipped";
    } else {
      // Known before and voided now. Subscribers hear of the void either way, as they
      // heard of the shipment.
      order = (await client.query<OrderRef>(LOCK_ORDER_SQL, [row.order_id])).rows[0];
      if (order) await client.query(VOID_SQL, [row.order_id, s.shipmentId]);
      event = "order.shipment_voided";
    }
    // No order: the app deleted it since the shipment was first recorded.
    if (order) {
      await client.query(EVENT_SQL, [order.upload_key, event, eventPayload(order, s)]);
      result.applied++;
    } else {
      result.unchanged++;
    }
  }
  return result;
}

/** One batch in one transaction, tried again on a deadlock or serialization failure. */
async function applyWithRetry(
  pool: Pool,
  shipments: readonly Shipment[],
  source: ShipmentSource,
): Promise<Omit<ApplyResult, "refused">> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await inTransaction(pool, (client) => applyBatch(client, shipments, source));
    } catch (err) {
      const code = sqlState(err);
      if (attempt >= TRANSACTION_ATTEMPTS || typeof code !== "string" || !RETRYABLE.has(code)) {
        throw err;
      }
    }
  }
}

export async function applyShipments(
  pool: Pool,
  shipments: readonly Shipment[],
  source: ShipmentSource,
): Promise<ApplyResult> {
  const result: ApplyResult = { applied: 0, unchanged: 0, unmatched: [], refused: [] };
  // PostgreSQL text cannot hold NUL: such a shipment would fail its whole batch.
  const storable: Shipment[] = [];
  for (const s of shipments) {
    const field = SHIPMENT_TEXT_FIELDS.find((f) => s[f]?.includes("\u0000"));
    if (field) result.refused.push({ shipment: s, error: `${field} contains a NUL character` });
    else storable.push(s);
  }
  if (storable.length === 0) return result;
  // One order of locks for every transaction (shipment id), so two replicas applying
  // overlapping batches mostly wait for each other instead of deadlocking; the order
  // rows they touch in between can still cross, which the retry covers.
  const sorted = storable.sort((a, b) => a.shipmentId - b.shipmentId);
  const add = (part: Omit<ApplyResult, "refused">) => {
    result.applied += part.applied;
    result.unchanged += part.unchanged;
    result.unmatched.push(...part.unmatched);
  };
  try {
    add(await applyWithRetry(pool, sorted, source));
    return result;
  } catch (err) {
    if (!isDataError(err)) throw err;
  }
  // Something in the batch cannot be stored: nothing of it was written. Each shipment
  // alone now, so only the one at fault is left out.
  for (const s of sorted) {
    try {
      add(await applyWithRetry(pool, [s], source));
    } catch (err) {
      if (!isDataError(err)) throw err;
      result.refused.push({ shipment: s, error: (err as Error).message.slice(0, 300) });
    }
  }
  return result;
}
