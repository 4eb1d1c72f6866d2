// Applies ShipStation shipments to orders_inbox, in one transaction per batch: the order
// becomes `shipped` with its tracking, and an `order.shipped` outbox event is written in
// the same transaction, so subscribers hear of it exactly when it is true. A voided
// shipment puts the order back to awaiting_shipment and writes `order.shipment_voided`.
// shipstation_shipments remembers every shipment id, so applying one again (a repeated
// webhook, the poll's overlap, a race between the two) changes nothing and emits nothing.
import type { Pool } from "../../db/pool.js";
import type { Shipment } from "../../outbound/shipstation-client.js";

export type ShipmentSource = "webhook" | "poll";

export interface ApplyResult {
  /** Shipments that changed an order (shipped, or voided) and wrote an event. */
  applied: number;
  /** Shipments seen before: nothing changed. */
  unchanged: number;
  /** Shipments of orders this database does not know (counted once, when first seen). */
  unmatched: Shipment[];
}

/**
 * Records the shipment id, matching its order by orderKey (our upload_key), else by
 * orderNumber when exactly one order has it. Returns a row only when something is new:
 * the shipment was not known, or it was known and is now voided. The primary key
 * serialises two replicas applying the same shipment: the second sees the first's row.
 */
const RECORD_SQL = `
  WITH target AS (
    SELECT coalesce(
      (SELECT id FROM orders_inbox WHERE upload_key = $2),
      (SELECT min(id) FROM orders_inbox WHERE order_number = $3 HAVING count(*) = 1)
    ) AS order_id
  )
  INSERT INTO shipstation_shipments AS s (shipment_id, order_id, voided, source)
  SELECT $1, order_id, $4, $5 FROM target
  ON CONFLICT (shipment_id) DO UPDATE SET voided = true, updated_at = now()
    WHERE excluded.voided AND NOT s.voided
  RETURNING s.order_id, s.voided, (xmax = 0) AS inserted`;

/** Marks the order shipped by this shipment; nothing when it already is (same id). */
const SHIP_SQL = `
  UPDATE orders_inbox SET status = 'shipped', shipped_at = $2, tracking_number = $3,
    carrier_code = $4, service_code = $5, shipstation_shipment_id = $6
  WHERE id = $1
  RETURNING order_number, upload_key`;

/** Clears the shipment, only if the order still records this one (not a later shipment). */
const VOID_SQL = `
  UPDATE orders_inbox SET status = 'awaiting_shipment', shipped_at = NULL,
    tracking_number = NULL, carrier_code = NULL, service_code = NULL,
    shipstation_shipment_id = NULL
  WHERE id = $1 AND shipstation_shipment_id = $2
  RETURNING order_number, upload_key`;

const ORDER_SQL = "SELECT order_number, upload_key FROM orders_inbox WHERE id = $1";

const EVENT_SQL = `
  INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
  VALUES ('order', $1, $2, $3::jsonb)`;

function eventPayload(order: { order_number: string; upload_key: string }, s: Shipment) {
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

export async function applyShipments(
  pool: Pool,
  shipments: readonly Shipment[],
  source: ShipmentSource,
): Promise<ApplyResult> {
  const result: ApplyResult = { applied: 0, unchanged: 0, unmatched: [] };
  if (shipments.length === 0) return result;
  // One order of locks for every transaction (shipment id), so two replicas applying
  // overlapping batches wait for each other instead of deadlocking.
  const sorted = [...shipments].sort((a, b) => a.shipmentId - b.shipmentId);
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    for (const s of sorted) {
      const recorded = await client.query<{
        order_id: string | null;
        voided: boolean;
        inserted: boolean;
      }>(RECORD_SQL, [s.shipmentId, s.orderKey, s.orderNumber, s.voided, source]);
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
      if (row.inserted) {
        const shipped = await client.query(SHIP_SQL, [
          row.order_id,
          s.createdAt ?? new Date(),
          s.trackingNumber,
          s.carrierCode,
          s.serviceCode,
          s.shipmentId,
        ]);
        const order = shipped.rows[0];
        if (order) {
          await client.query(EVENT_SQL, [
            order.upload_key,
            "order.shipped",
            eventPayload(order, s),
          ]);
          result.applied++;
        }
        continue;
      }
      // Known before and voided now. The order goes back only if this shipment is still
      // the one it records; subscribers hear of the void either way, as they heard of
      // the shipment.
      const cleared = await client.query(VOID_SQL, [row.order_id, s.shipmentId]);
      const order = cleared.rows[0] ?? (await client.query(ORDER_SQL, [row.order_id])).rows[0];
      if (order) {
        await client.query(EVENT_SQL, [
          order.upload_key,
          "order.shipment_voided",
          eventPayload(order, s),
        ]);
        result.applied++;
      }
    }
    await client.query("COMMIT");
    return result;
  } catch (err) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}
