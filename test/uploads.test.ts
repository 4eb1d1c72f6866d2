import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import {
  insertOrders,
  setSetting,
  type TestDatabase,
  validPayload,
  waitFor,
} from "./helpers/db.js";
import { startReactor } from "./helpers/reactor.js";
import {
  clearSettingsKeepingWakeSource,
  databaseForWakeSource,
  WAKE_SOURCES,
  wakeSourceLive,
} from "./helpers/servers.js";

describe.each(WAKE_SOURCES)("uploads: orders_inbox → ShipStation (wake source %s)", (mode) => {
  let db: TestDatabase;
  let fake: FakeShipStation;
  let app: App | null = null;

  /** Starts the case's reactor; returns once the suite's wake source is live. */
  async function start(): Promise<void> {
    app = await startReactor({ databaseUrl: db.url, shipstationUrl: fake.url });
    await wakeSourceLive([app], mode);
  }

  beforeAll(async () => {
    db = await databaseForWakeSource(mode);
    fake = await startFakeShipStation();
  });
  afterEach(async () => {
    await app?.stop(1_000);
    app = null;
    await db.pool.query("TRUNCATE orders_inbox, reactor_rate_limits");
    await clearSettingsKeepingWakeSource(db.pool);
    fake.calls.length = 0;
    fake.received.clear();
    fake.script.length = 0;
  });
  afterAll(async () => {
    await fake?.close();
    await db?.drop();
  });

  it("an inserted and committed order reaches ShipStation once, with orderKey, status, date and Basic auth", async () => {
    await start();
    const { rows } = await db.pool.query(
      `INSERT INTO orders_inbox (order_number, order_key, status, payload)
       VALUES ('A-1', 'key-a1', 'awaiting_payment', $1), ('A-2', NULL, 'on_hold', $2) RETURNING id`,
      [
        JSON.stringify(validPayload({ orderId: 42 })),
        JSON.stringify(validPayload({ orderDate: undefined })),
      ],
    );
    const id2 = String(rows[1].id);
    await waitFor(() => fake.received.size === 2, { what: "two orders at the fake" });
    const sent = fake.calls.flatMap((c) => c.orders);
    expect(sent).toHaveLength(2);
    const a1 = sent.find((o) => o.orderKey === "key-a1");
    const a2 = sent.find((o) => o.orderKey === id2);
    expect(a1).toMatchObject({
      orderNumber: "A-1",
      orderStatus: "awaiting_payment",
      // ShipStation's documented form: US Pacific time, no zone (10:00Z is 02:00 PST).
      orderDate: "2026-11-20T02:00:00.0000000",
    });
    expect(a1).not.toHaveProperty("orderId");
    expect(a1?.shipTo).toMatchObject({ name: "Ada Lovelace" });
    expect(a2).toMatchObject({ orderNumber: "A-2", orderStatus: "on_hold" });
    expect(Number.isNaN(Date.parse(String(a2?.orderDate)))).toBe(false);
    const auth = fake.calls[0]?.authorization ?? "";
    expect(Buffer.from(auth.replace(/^Basic /, ""), "base64").toString()).toBe(
      "test-key:test-secret",
    );
    expect(fake.calls[0]?.userAgent).toMatch(/^pg-reactor\//);
    const states = await waitFor(async () => {
      const r = await db.pool.query(
        "SELECT upload_state, shipstation_order_id, uploaded_at, locked_by FROM orders_inbox ORDER BY id",
      );
      return r.rows.every((x) => x.upload_state === "uploaded") ? r.rows : null;
    });
    for (const s of states) {
      expect(Number(s.shipstation_order_id)).toBeGreaterThanOrEqual(1000);
      expect(s.uploaded_at).toBeInstanceOf(Date);
      expect(s.locked_by).toBeNull();
    }
  });

  it("a 10,000-row INSERT is uploaded completely in at most 100 calls", async () => {
    // About batching, not the limit (uploads-field.test.ts covers the real 40 a minute):
    // 100 calls at 40 a minute would take 2.5 minutes.
    await setSetting(db.pool, "upload_rate_limit_per_minute", "1000");
    await start();
    await insertOrders(db.pool, 10_000);
    await waitFor(() => fake.received.size === 10_000, {
      timeoutMs: 60_000,
      what: "10,000 orders",
    });
    expect(fake.calls.length).toBeLessThanOrEqual(100);
    expect([...fake.received.values()].every((n) => n === 1)).toBe(true);
    await waitFor(async () => {
      const r = await db.pool.query(
        "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'uploaded'",
      );
      return r.rows[0].n === 10_000;
    });
  });

  it("a rolled-back insert sends nothing", async () => {
    await start();
    const client = await db.pool.connect();
    await client.query("BEGIN");
    await client.query(
      "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ('RB-1', 'rolled-back', $1)",
      [JSON.stringify(validPayload())],
    );
    await client.query("ROLLBACK");
    client.release();
    await db.pool.query(
      "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ('M-1', 'marker', $1)",
      [JSON.stringify(validPayload())],
    );
    await waitFor(() => fake.received.has("marker"), { what: "the marker order" });
    expect(fake.received.has("rolled-back")).toBe(false);
    expect(fake.calls.flatMap((c) => c.orders).map((o) => o.orderKey)).toEqual(["marker"]);
  });

  it("an invalid order ends failed with a message naming the field, while the others flow", async () => {
    await start();
    const good = JSON.stringify(validPayload());
    const { shipTo: _s, ...noShipTo } = validPayload();
    await db.pool.query(
      `INSERT INTO orders_inbox (order_number, order_key, status, payload) VALUES
        ('G-1', 'good-1', 'awaiting_shipment', $1),
        ('B-1', 'no-ship-to', 'awaiting_shipment', $2),
        ($3, 'long-number', 'awaiting_shipment', $1),
        ('B-3', 'array-payload', 'awaiting_shipment', '[1,2]'),
        ('B-4', 'shipped', 'shipped', $1),
        ('G-2', 'good-2', 'awaiting_shipment', $1)`,
      [good, JSON.stringify(noShipTo), "N".repeat(51)],
    );
    await waitFor(async () => {
      const r = await db.pool.query(
        "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'pending'",
      );
      return r.rows[0].n === 0;
    });
    expect([...fake.received.keys()].sort()).toEqual(["good-1", "good-2"]);
    const { rows } = await db.pool.query(
      "SELECT order_key, upload_state, last_error FROM orders_inbox WHERE upload_state = 'failed' ORDER BY order_key",
    );
    const errors = Object.fromEntries(rows.map((r) => [r.order_key, r.last_error]));
    expect(errors["no-ship-to"]).toMatch(/payload\.shipTo is required/);
    expect(errors["long-number"]).toMatch(/order_number is 51 characters.*at most 50/);
    expect(errors["array-payload"]).toMatch(/payload must be a JSON object, got an array/);
    expect(errors.shipped).toMatch(/status 'shipped' is not sent/);
  });

  it("ShipStation's per-order failure marks only that order failed, with its errorMessage", async () => {
    fake.script.push({ status: 200, failKeys: { "bad-sku": "Item SKU not found" } });
    await start();
    await db.pool.query(
      `INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ('S-1', 'bad-sku', $1), ('S-2', 'fine', $1)`,
      [JSON.stringify(validPayload())],
    );
    const rows = await waitFor(async () => {
      const r = await db.pool.query(
        "SELECT order_key, upload_state, last_error FROM orders_inbox ORDER BY order_key",
      );
      return r.rows.every((x) => x.upload_state !== "pending") ? r.rows : null;
    });
    expect(rows).toEqual([
      {
        order_key: "bad-sku",
        upload_state: "failed",
        last_error: "ShipStation refused the order: Item SKU not found",
      },
      { order_key: "fine", upload_state: "uploaded", last_error: null },
    ]);
  });

  it("a 429 with X-Rate-Limit-Reset pauses uploads until the reset and does not use an attempt", async () => {
    fake.script.push({
      status: 429,
      headers: { "X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": "1" },
    });
    await start();
    await db.pool.query(
      "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ('R-1', 'r1', $1)",
      [JSON.stringify(validPayload())],
    );
    await waitFor(() => fake.received.has("r1"), { what: "the order after the reset" });
    expect(fake.calls).toHaveLength(2);
    const gap = (fake.calls[1]?.at ?? 0) - (fake.calls[0]?.at ?? 0);
    expect(gap).toBeGreaterThanOrEqual(900);
    const row = await waitFor(async () => {
      const r = await db.pool.query(
        "SELECT upload_state, attempts FROM orders_inbox WHERE order_key = 'r1'",
      );
      return r.rows[0]?.upload_state === "uploaded" ? r.rows[0] : null;
    });
    expect(row.attempts).toBe(1);
  });

  it("a 5xx is retried on the schedule and then succeeds", async () => {
    fake.script.push({ status: 503 });
    await start();
    await db.pool.query(
      "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ('T-1', 't1', $1)",
      [JSON.stringify(validPayload())],
    );
    const failedOnce = await waitFor(async () => {
      const r = await db.pool.query(
        "SELECT attempts, last_error, upload_state FROM orders_inbox WHERE order_key = 't1'",
      );
      return r.rows[0]?.attempts === 1 && r.rows[0].last_error ? r.rows[0] : null;
    });
    expect(failedOnce.upload_state).toBe("pending");
    expect(failedOnce.last_error).toMatch(/ShipStation HTTP 503/);
    await waitFor(() => fake.received.has("t1"), { timeoutMs: 15_000, what: "the retried order" });
    const row = await waitFor(async () => {
      const r = await db.pool.query(
        "SELECT upload_state, attempts, last_error FROM orders_inbox WHERE order_key = 't1'",
      );
      return r.rows[0]?.upload_state === "uploaded" ? r.rows[0] : null;
    });
    expect(row).toEqual({ upload_state: "uploaded", attempts: 2, last_error: null });
  });

  it("a later change of an uploaded open order sends it again with the same orderKey", async () => {
    await start();
    await db.pool.query(
      "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ('U-1', 'u1', $1)",
      [JSON.stringify(validPayload())],
    );
    await waitFor(async () => {
      const r = await db.pool.query("SELECT upload_state FROM orders_inbox WHERE order_key = 'u1'");
      return r.rows[0]?.upload_state === "uploaded";
    });
    await db.pool.query("UPDATE orders_inbox SET status = 'on_hold' WHERE order_key = 'u1'");
    await waitFor(() => fake.received.get("u1") === 2, { what: "the re-sent order" });
    expect(fake.calls.at(-1)?.orders[0]).toMatchObject({ orderKey: "u1", orderStatus: "on_hold" });
    // The fake counts the call before the reactor records it: wait for the record.
    await waitFor(
      async () =>
        (await db.pool.query("SELECT upload_state FROM orders_inbox WHERE order_key = 'u1'"))
          .rows[0]?.upload_state === "uploaded",
      { what: "the re-sent order recorded as uploaded" },
    );
    // ShipStation marking it shipped is not a change to send back.
    await db.pool.query("UPDATE orders_inbox SET status = 'shipped' WHERE order_key = 'u1'");
    const r = await db.pool.query("SELECT upload_state FROM orders_inbox WHERE order_key = 'u1'");
    expect(r.rows[0].upload_state).toBe("uploaded");
  });
});
