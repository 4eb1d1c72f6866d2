// Turns an orders_inbox row into a ShipStation v1 order, or says precisely which field
// makes it unsendable. Pure: no I/O, so every rule is unit-testable.
import { z } from "zod";

/** Statuses ShipStation accepts on createorder. 'shipped' is ShipStation's to set. */
export const OPEN_STATUSES = [
  "awaiting_payment",
  "awaiting_shipment",
  "pending_fulfillment",
  "on_hold",
  "cancelled",
] as const;

/** ShipStation's limit on orderNumber, in characters. */
export const ORDER_NUMBER_MAX = 50;
/** Far above any real order; a larger one is a bug upstream, not something to send. */
export const ORDER_MAX_BYTES = 256 * 1024;

export interface OrderRow {
  id: number;
  order_number: string;
  order_key: string | null;
  status: string;
  payload: unknown;
  created_at: Date;
}

export type ShipStationOrder = Record<string, unknown> & {
  orderNumber: string;
  orderKey: string;
  orderStatus: string;
  orderDate: string;
};

const address = (field: string) =>
  z.record(z.string(), z.unknown(), {
    error: (issue) =>
      issue.input === undefined
        ? `${field} is required (an address object)`
        : `${field} must be an address object`,
  });

const payloadSchema = z.object({
  orderDate: z
    .string({ error: "payload.orderDate must be an ISO-8601 date string" })
    .refine((v) => !Number.isNaN(Date.parse(v)), {
      message: "payload.orderDate is not a valid date",
    })
    .optional(),
  billTo: address("payload.billTo"),
  shipTo: address("payload.shipTo").refine(
    (v) => typeof v.name === "string" && v.name.trim() !== "",
    { message: "payload.shipTo.name is required (the recipient's name)" },
  ),
  items: z
    .array(z.record(z.string(), z.unknown()), {
      error: "payload.items must be an array of item objects",
    })
    .optional(),
});

export type BuildResult = { ok: true; order: ShipStationOrder } | { ok: false; error: string };

/** The orderKey ShipStation upserts on: order_key, or the row id when it is null. */
export function orderKeyOf(row: Pick<OrderRow, "id" | "order_key">): string {
  return row.order_key ?? String(row.id);
}

export function buildOrder(row: OrderRow): BuildResult {
  const fail = (error: string): BuildResult => ({ ok: false, error: `invalid order: ${error}` });
  const { payload } = row;
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    const kind = payload === null ? "null" : Array.isArray(payload) ? "an array" : typeof payload;
    return fail(`payload must be a JSON object, got ${kind}`);
  }
  const numberLength = [...row.order_number].length;
  if (numberLength === 0 || row.order_number.trim() === "") return fail("order_number is empty");
  if (numberLength > ORDER_NUMBER_MAX) {
    return fail(
      `order_number is ${numberLength} characters; ShipStation allows at most ${ORDER_NUMBER_MAX}`,
    );
  }
  if (row.status === "shipped") {
    return fail("status 'shipped' is not sent: ShipStation marks orders shipped itself");
  }
  if (!(OPEN_STATUSES as readonly string[]).includes(row.status)) {
    return fail(`status '${row.status}' is not one of ${OPEN_STATUSES.join(", ")}`);
  }
  const parsed = payloadSchema.safeParse(payload);
  if (!parsed.success) {
    return fail(parsed.error.issues.map((i) => i.message).join("; "));
  }
  const { orderId: _ignored, ...rest } = payload as Record<string, unknown>;
  const order: ShipStationOrder = {
    ...rest,
    orderNumber: row.order_number,
    orderKey: orderKeyOf(row),
    orderStatus: row.status,
    orderDate: parsed.data.orderDate ?? new Date(row.created_at).toISOString(),
  };
  const bytes = Buffer.byteLength(JSON.stringify(order));
  if (bytes > ORDER_MAX_BYTES)
    return fail(`order is ${bytes} bytes; the limit is ${ORDER_MAX_BYTES}`);
  return { ok: true, order };
}
