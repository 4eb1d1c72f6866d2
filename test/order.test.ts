// Order building, as a unit: what a row must hold to be sent, and exactly what is sent.
import { describe, expect, it } from "vitest";
import { toShipStationTime } from "../src/outbound/shipstation-time.js";
import { buildOrder, type OrderRow, parseZonedDateTime } from "../src/workloads/uploads/order.js";

const base: Omit<OrderRow, "payload" | "payload_bytes"> = {
  id: 7,
  order_number: "N-1",
  order_key: null,
  upload_key: "7",
  status: "awaiting_shipment",
  created_at: new Date("2026-01-02T03:04:05Z"),
};
const row = (payload: unknown, extra: Partial<OrderRow> = {}): OrderRow => {
  const text = typeof payload === "string" ? payload : JSON.stringify(payload);
  return { ...base, payload: text, payload_bytes: Buffer.byteLength(text), ...extra };
};
const payload = { billTo: { name: "A" }, shipTo: { name: "B" } };

describe("order building", () => {
  it("uses upload_key as orderKey and created_at as orderDate when absent, in ShipStation's form", () => {
    const r = buildOrder(row(payload));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(JSON.parse(r.json)).toEqual({
      ...payload,
      orderNumber: "N-1",
      orderKey: "7",
      orderStatus: "awaiting_shipment",
      // 03:04:05Z on 2 January is 19:04:05 the day before in Los Angeles (PST, UTC-8).
      orderDate: "2026-01-01T19:04:05.0000000",
    });
  });

  it("sends numbers exactly as stored: no rounding through doubles", () => {
    const text =
      '{"billTo": {"name": "A"}, "shipTo": {"name": "B"}, "amountPaid": 12345678901234567.891, "items": [{"unitPrice": 0.1000000000000000055511151231257827}]}';
    const r = buildOrder(row(text));
    expect(r.ok ? r.json : r.error).toContain('"amountPaid":12345678901234567.891');
    expect(r.ok ? r.json : r.error).toContain('"unitPrice":0.1000000000000000055511151231257827');
  });

  it.each([
    ["1"],
    ["11/23/2026"],
    ["2026-11-23"],
    ["2026-11-23T10:00:00"],
    ["2026-02-30T10:00:00Z"],
    ["2026-11-23T25:00:00Z"],
    ["0999-05-31T16:07:02Z"],
    ["yesterday"],
  ])("refuses orderDate %s, naming the field", (value) => {
    const r = buildOrder(row({ ...payload, orderDate: value }));
    expect(r.ok ? "" : r.error).toMatch(/^invalid order: payload\.orderDate /);
  });

  it("refuses a non-string orderDate and converts paymentDate and shipByDate too", () => {
    expect(buildOrder(row({ ...payload, orderDate: 20261123 })).ok).toBe(false);
    const r = buildOrder(
      row({
        ...payload,
        orderDate: "2026-07-01T12:00:00+02:00",
        paymentDate: "2026-07-01T10:30:00Z",
      }),
    );
    expect(r.ok && JSON.parse(r.json)).toMatchObject({
      orderDate: "2026-07-01T03:00:00.0000000", // 10:00Z in PDT (UTC-7)
      paymentDate: "2026-07-01T03:30:00.0000000",
    });
  });

  it("a payload nested thousands of levels deep fails alone, without throwing", () => {
    const deep = `${"[".repeat(6000)}${"]".repeat(6000)}`;
    const r = buildOrder(
      row(`{"billTo": {"name": "A"}, "shipTo": {"name": "B"}, "notes": ${deep}}`),
    );
    expect(r.ok).toBe(false);
    expect(r.ok ? "" : r.error).toMatch(/^invalid order: payload could not be (read|processed)/);
  });

  it("an oversized payload (not loaded by the claim) fails with its size", () => {
    const r = buildOrder({ ...base, payload: null, payload_bytes: 16 * 1024 * 1024 });
    expect(r.ok ? "" : r.error).toBe(
      "invalid order: payload is 16777216 bytes; the limit is 262144",
    );
  });

  it("counts characters, not bytes, in order_number (emoji are one each)", () => {
    expect(buildOrder(row(payload, { order_number: "📦".repeat(50) })).ok).toBe(true);
    expect(buildOrder(row(payload, { order_number: "📦".repeat(51) })).ok).toBe(false);
  });

  it.each([
    [{ shipTo: { name: "B" } }, /payload\.billTo is required/],
    [{ billTo: "x", shipTo: { name: "B" } }, /payload\.billTo must be an address object/],
    [{ billTo: {}, shipTo: {} }, /payload\.shipTo\.name is required/],
    [{ ...payload, items: "many" }, /payload\.items must be an array/],
    [{ ...payload, notes: "x".repeat(300_000) }, /bytes; the limit is/],
    [[1, 2], /payload must be a JSON object, got an array/],
  ])("refuses %#", (p, message) => {
    const r = buildOrder(row(p));
    expect(r.ok).toBe(false);
    expect(r.ok ? "" : r.error).toMatch(message);
  });

  it("refuses unknown statuses by name", () => {
    const r = buildOrder(row(payload, { status: "lost" }));
    expect(r.ok ? "" : r.error).toMatch(/status 'lost' is not one of awaiting_payment/);
  });
});

describe("ShipStation dates", () => {
  it("parses only zoned ISO date-times and formats them in Pacific time", () => {
    expect(parseZonedDateTime("2026-11-23T14:05:00Z")).toEqual(new Date("2026-11-23T14:05:00Z"));
    expect(typeof parseZonedDateTime("2026-11-23 14:05")).toBe("string");
    expect(toShipStationTime(new Date("2026-11-23T14:05:06.789Z"))).toBe(
      "2026-11-23T06:05:06.7890000",
    );
  });

  it("formats every minute across both DST changes as Pacific wall time (offsets are cached per UTC hour)", () => {
    const wall = new Intl.DateTimeFormat("sv-SE", {
      timeZone: "America/Los_Angeles",
      dateStyle: "short",
      timeStyle: "medium",
    });
    for (const change of ["2026-03-08T10:00:00Z", "2026-11-01T09:00:00Z", "2027-03-14T10:00:00Z"]) {
      const at = new Date(change).getTime();
      // Out of order on purpose: a cached hour must not leak into its neighbours.
      const minutes = Array.from({ length: 6 * 60 }, (_, i) => (i * 37) % (6 * 60));
      for (const m of minutes) {
        const instant = new Date(at + (m - 3 * 60) * 60_000 + 1_234);
        const expected = `${wall.format(instant).replace(" ", "T")}.2340000`;
        expect(toShipStationTime(instant), instant.toISOString()).toBe(expected);
      }
    }
  });
});
