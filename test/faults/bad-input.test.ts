// Scenario 5: a corpus of bad input, fed to a running reactor next to good work. Each
// class must end with its own specific error, and nothing good may be held up.
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../../src/demo/fake-shipstation.js";
import { newSecret, type Receiver, startReceiver } from "../../src/demo/receiver.js";
import { serverUrl, startStatusServer } from "../../src/http/server.js";
import {
  createTestDatabase,
  setSetting,
  type TestDatabase,
  validPayload,
  waitFor,
} from "../helpers/db.js";
import { metricTotal, startReactor } from "../helpers/reactor.js";
import { report } from "./scale.js";

const TOKEN = "fault-admin-token-0123456789";

describe("fault: bad-input corpus", () => {
  let db: TestDatabase;
  let fake: FakeShipStation;
  let receiver: Receiver;
  let app: App;
  let server: FastifyInstance;
  let base: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    fake = await startFakeShipStation();
    receiver = await startReceiver();
    await setSetting(db.pool, "poll_interval_seconds", "3600");
    app = await startReactor({
      databaseUrl: db.url,
      shipstationUrl: fake.url,
      env: { ADMIN_TOKEN: TOKEN },
    });
    server = await startStatusServer(app, app.logger);
    base = serverUrl(server);
  });
  afterAll(async () => {
    await server.close();
    await app.stop(1_000);
    await fake.close();
    await receiver.close();
    await db.drop();
  });

  it("orders: each malformed class fails with its own message; good orders flow", async () => {
    const { billTo: _b, ...noBillTo } = validPayload();
    const corpus: Array<[string, string, unknown, RegExp | null]> = [
      ["missing-bill-to", "M-1", noBillTo, /payload\.billTo is required/],
      [
        "ship-to-string",
        "M-2",
        validPayload({ shipTo: "Main St" }),
        /payload\.shipTo must be an address object/,
      ],
      [
        "items-object",
        "M-3",
        validPayload({ items: { sku: 1 } }),
        /payload\.items must be an array/,
      ],
      [
        "date-number",
        "M-4",
        validPayload({ orderDate: 20261123 }),
        /payload\.orderDate must be an ISO 8601 date-time string/,
      ],
      ["payload-string", "M-5", "just text", /payload must be a JSON object, got string/],
      ["payload-number", "M-6", 42, /payload must be a JSON object, got number/],
      ["payload-null", "M-7", null, /payload must be a JSON object, got null/],
      ["long-number", "N".repeat(51), validPayload(), /order_number is 51 characters/],
      ["emoji-number", "📦🚚✨".repeat(10), validPayload(), null],
      [
        "huge",
        "M-9",
        validPayload({ notes: "x".repeat(1024 * 1024) }),
        /payload is \d+ bytes; the limit is 262144/,
      ],
      ["good-1", "G-1", validPayload(), null],
      ["good-2", "G-2", validPayload({ shipTo: { name: "Grace 👩‍💻 Hopper" } }), null],
    ];
    for (const [key, number, payload] of corpus) {
      await db.pool.query(
        "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ($1, $2, $3::jsonb)",
        [number, key, JSON.stringify(payload)],
      );
    }
    await waitFor(async () => {
      const r = await db.pool.query(
        "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'pending'",
      );
      return r.rows[0].n === 0;
    });
    const { rows } = await db.pool.query(
      "SELECT order_key, upload_state, last_error FROM orders_inbox",
    );
    const byKey = new Map(rows.map((r) => [r.order_key, r]));
    for (const [key, , , error] of corpus) {
      const row = byKey.get(key);
      if (error) {
        expect(row?.upload_state, key).toBe("failed");
        expect(row?.last_error, key).toMatch(error);
        expect(fake.received.has(key), key).toBe(false);
      } else {
        expect(row?.upload_state, key).toBe("uploaded");
        expect(fake.received.get(key), key).toBe(1);
      }
    }
    report("bad input: orders", {
      workItems: corpus.length,
      failedAsExpected: corpus.filter((c) => c[3]).length,
      lost: 0,
    });
  });

  it("events: a 1 MB event fails with its size; the next event is delivered", async () => {
    await db.pool.query("INSERT INTO webhook_subscriptions (url, secret) VALUES ($1, $2)", [
      `${receiver.url}/in`,
      newSecret(),
    ]);
    const big = await db.pool.query(
      "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) VALUES ('o', '1', 'big.one', $1) RETURNING id",
      [JSON.stringify({ blob: "y".repeat(1024 * 1024) })],
    );
    const small = await db.pool.query(
      "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) VALUES ('o', '2', 'small.one', '{}') RETURNING id",
    );
    await waitFor(() => receiver.delivered.has(small.rows[0].id), { what: "the small event" });
    const row = await waitFor(async () => {
      const r = await db.pool.query(
        "SELECT state, last_error FROM webhook_deliveries WHERE event_id = $1",
        [big.rows[0].id],
      );
      return r.rows[0]?.state === "failed" ? r.rows[0] : null;
    });
    expect(row.last_error).toMatch(/event payload is \d+ bytes; webhooks carry at most 262144/);
    expect(receiver.delivered.has(big.rows[0].id)).toBe(false);
  });

  it("garbage and oversized NOTIFY payloads are counted and change nothing; work still flows", async () => {
    const rejectedBefore = await metricTotal(app.metrics.notificationsRejected);
    await db.pool.query("SELECT pg_notify('reactor_orders', 'garbage')");
    await db.pool.query("SELECT pg_notify('reactor_deliveries', $1)", ["{".repeat(7_999)]);
    await db.pool.query("SELECT pg_notify('reactor_config', '[1,2,3]')");
    await db.pool.query("SELECT pg_notify('reactor_orders', '')");
    await waitFor(
      async () => (await metricTotal(app.metrics.notificationsRejected)) >= rejectedBefore + 4,
    );
    await db.pool.query(
      "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ('A-1', 'after-garbage', $1)",
      [JSON.stringify(validPayload())],
    );
    await waitFor(() => fake.received.has("after-garbage"), { what: "an order after the garbage" });
    expect(app.reactor.listener().state().connected).toBe(true);
  });

  it("configuration values out of range are refused at write time; the value in force stays", async () => {
    for (const [key, value] of [
      ["upload_concurrency", "17"],
      ["lease_seconds", "-5"],
      ["delivery_timeout_seconds", "1e3"],
      ["retention_days", "365 days"],
    ]) {
      await expect(
        db.pool.query(
          "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', $1, $2)",
          [key, value],
        ),
      ).rejects.toThrow(
        new RegExp(`^reactor\\.${key} must be an integer from \\d+ to \\d+, got '${value}'$`),
      );
    }
    expect(app.settings.current.upload_concurrency).toBe(2);
  });

  it("admin: invalid bodies, huge bodies and SQL-looking strings are refused or harmless", async () => {
    const call = (path: string, init: RequestInit = {}) =>
      fetch(`${base}${path}`, {
        ...init,
        headers: {
          authorization: `Bearer ${TOKEN}`,
          "content-type": "application/json",
          ...init.headers,
        },
      });
    expect((await call("/admin/orders/retry", { method: "POST", body: "{not json" })).status).toBe(
      400,
    );
    expect(
      (
        await call("/admin/orders/retry", {
          method: "POST",
          body: JSON.stringify({ ids: "1 OR 1=1" }),
        })
      ).status,
    ).toBe(400);
    expect(
      (
        await call("/admin/subscriptions", {
          method: "POST",
          body: JSON.stringify({ url: `https://x.example/${"a".repeat(200_000)}` }),
        })
      ).status,
    ).toBe(413);
    const sqlish = "'; DROP TABLE orders_inbox; --";
    const retried = await call("/admin/orders/retry", {
      method: "POST",
      body: JSON.stringify({ error_contains: sqlish }),
    });
    expect(await retried.json()).toEqual({ retried: 0 });
    const listed = await call(
      `/admin/orders/failed?order_number=${encodeURIComponent("' OR '1'='1")}`,
    );
    expect(await listed.json()).toEqual({ items: [], next_after_id: null });
    const subs = await call("/admin/subscriptions", {
      method: "POST",
      body: JSON.stringify({
        // An address literal: the SSRF check needs no DNS for it.
        url: "https://93.184.215.14/x",
        description: "Robert'); DROP TABLE webhook_subscriptions;--",
      }),
    });
    expect(subs.status).toBe(201);
    const { rows } = await db.pool.query("SELECT count(*)::int AS n FROM orders_inbox");
    expect(rows[0].n).toBeGreaterThan(0);
  });
});
