// Turns an orders_inbox row into the JSON of one ShipStation v1 order, or says precisely
// which field makes it unsendable. Pure: no I/O, so every rule is unit-testable.
// The payload arrives as the text PostgreSQL stored; numbers stay exactly as stored
// (lossless-json), never rounded through JavaScript doubles.
import { isLosslessNumber, LosslessNumber, parse, stringify } from "lossless-json";
import { z } from "zod";
import { toShipStationTime } from "../../outbound/shipstation-time.js";

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
  /** order_key, or the id when it is null; unique in the table (a generated column). */
  upload_key: string;
  status: string;
  /** The jsonb payload as text; null when it was larger than the claim's limit. */
  payload: string | null;
  payload_bytes: number;
  created_at: Date;
}

export type ShipStationOrder = Record<string, unknown> & {
  orderNumber: string;
  orderKey: string;
  orderStatus: string;
  orderDate: string;
};

/**
 * An ISO 8601 date-time with a zone (Z or ±hh:mm): anything else ("1", "11/23/2026",
 * a date without a time or zone) is ambiguous and refused.
 */
const ISO_DATE_TIME =
  /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})$/;

/** The date-time fields of an order that ShipStation reads, converted the same way. */
const DATE_FIELDS = ["orderDate", "paymentDate", "shipByDate"] as const;

/** Parses an ISO date-time with zone, or returns the reason it is not one. */
export function parseZonedDateTime(value: unknown): Date | string {
  if (typeof value !== "string") return "must be an ISO 8601 date-time string";
  const m = ISO_DATE_TIME.exec(value);
  if (!m)
    return `must be an ISO 8601 date-time with a zone, like 2026-11-23T14:05:00Z (got "${value.slice(0, 40)}")`;
  const [, y, mo, d, h, mi, s] = m;
  const date = new Date(value);
  // Date.parse rolls 2026-02-30 over to March; a real date keeps its fields.
  const check = new Date(
    Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s ?? 0)),
  );
  if (Number(y) < 1900) return `is not a plausible order date (got "${value.slice(0, 40)}")`;
  if (
    Number.isNaN(date.getTime()) ||
    check.getUTCFullYear() !== Number(y) ||
    check.getUTCMonth() !== Number(mo) - 1 ||
    check.getUTCDate() !== Number(d) ||
    Number(h) > 23 ||
    Number(mi) > 59 ||
    Number(s ?? 0) > 59
  ) {
    return `is not a real date-time (got "${value.slice(0, 40)}")`;
  }
  return date;
}

const address = (field: string) =>
  z.record(z.string(), z.unknown(), {
    error: (issue) =>
      issue.input === undefined
        ? `${field} is required (an address object)`
        : `${field} must be an address object`,
  });

const payloadSchema = z.object({
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

export type BuildResult =
  | { ok: true; order: ShipStationOrder; json: string }
  | { ok: false; error: string };

/** Every number as a LosslessNumber: stringify writes back exactly the stored digits. */
const keepDigits = (text: string) => new LosslessNumber(text);

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (isLosslessNumber(value)) return "number";
  return typeof value;
}

/**
 * Builds one order. Never throws: a payload that cannot be parsed or serialised (nested
 * thousands of levels deep, say) fails this row alone, with the reason.
 */
export function buildOrder(row: OrderRow): BuildResult {
  const fail = (error: string): BuildResult => ({ ok: false, error: `invalid order: ${error}` });
  if (row.payload === null) {
    // The claim did not load it (see ClaimedRow.payload_bytes).
    return fail(
      row.payload_bytes > ORDER_MAX_BYTES
        ? `payload is ${row.payload_bytes} bytes; the limit is ${ORDER_MAX_BYTES}`
        : `payload is larger than ${ORDER_MAX_BYTES} bytes as JSON text (${row.payload_bytes} bytes stored), or holds a number beyond ±1e100`,
    );
  }
  try {
    let payload: unknown;
    try {
      payload = parse(row.payload, null, keepDigits);
    } catch (err) {
      return fail(`payload could not be read: ${(err as Error).message}`);
    }
    const isObject =
      payload !== null &&
      typeof payload === "object" &&
      !Array.isArray(payload) &&
      !isLosslessNumber(payload);
    if (!isObject) {
      return fail(`payload must be a JSON object, got ${describe(payload)}`);
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
    if (!parsed.success) return fail(parsed.error.issues.map((i) => i.message).join("; "));
    const { orderId: _ignored, ...rest } = payload as Record<string, unknown>;
    const dates: Record<string, string> = {};
    for (const field of DATE_FIELDS) {
      const value = rest[field];
      if (value === undefined || value === null) continue;
      const date = parseZonedDateTime(value);
      if (typeof date === "string") return fail(`payload.${field} ${date}`);
      dates[field] = toShipStationTime(date);
    }
    const order: ShipStationOrder = {
      ...rest,
      ...dates,
      orderNumber: row.order_number,
      orderKey: row.upload_key,
      orderStatus: row.status,
      orderDate: dates.orderDate ?? toShipStationTime(new Date(row.created_at)),
    };
    const json = stringify(order);
    if (json === undefined) return fail("payload could not be serialised");
    const bytes = Buffer.byteLength(json);
    if (bytes > ORDER_MAX_BYTES)
      return fail(`order is ${bytes} bytes; the limit is ${ORDER_MAX_BYTES}`);
    return { ok: true, order, json };
  } catch (err) {
    // A RangeError from a payload nested too deeply to walk, or anything unforeseen:
    // this row fails alone instead of taking its batch down.
    return fail(`payload could not be processed: ${(err as Error).message}`);
  }
}
