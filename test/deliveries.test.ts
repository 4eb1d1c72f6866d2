import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import pg from "pg";
import { Webhook } from "standardwebhooks";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { newSecret, type Receiver, startReceiver } from "../src/demo/receiver.js";
import { applyRetention } from "../src/workloads/deliveries/maintenance.js";
import { makeDeliveriesQueue } from "../src/workloads/deliveries/queue.js";
import { setSetting, subscribe, type TestDatabase, waitFor } from "./helpers/db.js";
import { startReactor, startReplicas } from "./helpers/reactor.js";
import {
  clearSettingsKeepingWakeSource,
  databaseForWakeSource,
  WAKE_SOURCES,
  wakeSourceLive,
} from "./helpers/servers.js";

async function emit(
  pool: pg.Pool | pg.PoolClient,
  eventType: string,
  data: unknown = { n: 1 },
): Promise<string> {
  const { rows } = await pool.query(
    `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
     VALUES ('order', '42', $1, $2) RETURNING id`,
    [eventType, JSON.stringify(data)],
  );
  return rows[0].id;
}

async function deliveryRows(pool: pg.Pool) {
  const { rows } = await pool.query(
    `SELECT d.id, d.event_id, d.subscription_id, d.state, d.attempts, d.last_status, d.last_error
     FROM webhook_deliveries d ORDER BY d.id`,
  );
  return rows;
}

describe.each(WAKE_SOURCES)("outbox → webhook deliveries (wake source %s)", (mode) => {
  let db: TestDatabase;
  let receiver: Receiver;
  let app: App | null = null;

  /** Starts the case's reactor; returns once the suite's wake source is live. */
  async function start(env?: Record<string, string>): Promise<void> {
    app = await startReactor({ databaseUrl: db.url, env });
    await wakeSourceLive([app], mode);
  }

  beforeAll(async () => {
    db = await databaseForWakeSource(mode);
    receiver = await startReceiver();
  });
  afterEach(async () => {
    await app?.stop(1_000);
    app = null;
    await db.pool.query(
      "TRUNCATE webhook_delivery_attempts, webhook_deliveries, outbox_events, webhook_subscriptions",
    );
    await clearSettingsKeepingWakeSource(db.pool);
    receiver.requests.length = 0;
    receiver.script.length = 0;
    receiver.delivered.clear();
    receiver.fallback = { status: 204 };
  });
  afterAll(async () => {
    await receiver?.close();
    await db?.drop();
  });

  it("fans out one delivery per matching enabled subscription: exact, prefix.*, all; disabled skipped", async () => {
    // The writers' wake: one NOTIFY for the statement that fanned out (notify), none at
    // all (wal: the reactors read the commit from the WAL instead).
    const writerNotifications = mode === "notify" ? 1 : 0;
    const exact = await subscribe(db.pool, `${receiver.url}/a`, { eventTypes: ["order.created"] });
    const prefix = await subscribe(db.pool, `${receiver.url}/b`, { eventTypes: ["order.*"] });
    const all = await subscribe(db.pool, `${receiver.url}/c`);
    await subscribe(db.pool, `${receiver.url}/d`, { enabled: false });
    const invoices = await subscribe(db.pool, `${receiver.url}/e`, {
      eventTypes: ["invoice.*", "user.deleted"],
    });
    const listener = new pg.Client({ connectionString: db.url });
    await listener.connect();
    const notes: string[] = [];
    listener.on("notification", (n) => notes.push(n.payload ?? ""));
    await listener.query("LISTEN reactor_deliveries");
    await db.pool.query(
      `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) VALUES
       ('order', '1', 'order.created', '{}'), ('order', '1', 'order.item.added', '{}'),
       ('invoice', '2', 'invoice.paid', '{}'), ('user', '3', 'user.created', '{}'), ('x', '4', 'orders', '{}')`,
    );
    const { rows } = await db.pool.query(
      `SELECT s.id AS sub, array_agg(e.event_type ORDER BY e.event_type) AS types
       FROM webhook_deliveries d JOIN outbox_events e ON e.id = d.event_id
       JOIN webhook_subscriptions s ON s.id = d.subscription_id GROUP BY s.id`,
    );
    const bySub = Object.fromEntries(rows.map((r) => [Number(r.sub), r.types]));
    expect(bySub).toEqual({
      [exact]: ["order.created"],
      [prefix]: ["order.created", "order.item.added"],
      [all]: ["invoice.paid", "order.created", "order.item.added", "orders", "user.created"],
      [invoices]: ["invoice.paid"],
    });
    // An event nobody wants creates nothing and sends no notification.
    await db.pool.query("UPDATE webhook_subscriptions SET enabled = false");
    await emit(db.pool, "order.created");
    await db.pool.query("SELECT pg_notify('reactor_deliveries', 'marker')");
    await waitFor(() => notes.includes("marker"));
    expect(notes.filter((n) => n !== "marker")).toHaveLength(writerNotifications);
    expect(await deliveryRows(db.pool)).toHaveLength(9);
    await listener.end();
  });

  it("refuses malformed subscriptions with constraint names that say what is expected", async () => {
    await expect(subscribe(db.pool, "ftp://example.com/x")).rejects.toThrow(
      /url_must_be_http_or_https/,
    );
    await expect(
      subscribe(db.pool, "https://example.com", { secret: "whsec_c2hvcnQ=" }),
    ).rejects.toThrow(/secret_must_be_whsec_base64_of_24_to_64_bytes/);
    await expect(subscribe(db.pool, "https://example.com", { secret: "plain" })).rejects.toThrow(
      /secret_must_be_whsec_base64_of_24_to_64_bytes/,
    );
    await expect(
      subscribe(db.pool, "https://example.com", { eventTypes: ["order.*.x"] }),
    ).rejects.toThrow(/event_types_must_be_dot_names_or_prefix_star/);
    await expect(
      subscribe(db.pool, "https://example.com", { secret: newSecret(64) }),
    ).resolves.toBeGreaterThan(0);
  });

  it("delivers a signed request that standardwebhooks verifies, with both secrets during rotation", async () => {
    const secret = newSecret();
    const previous = newSecret(24);
    await subscribe(db.pool, `${receiver.url}/hook`, { secret, previousSecret: previous });
    await start();
    const id = await emit(db.pool, "order.created", { orderId: 42, note: "ünïcode ✓" });
    await waitFor(() => receiver.delivered.get(id) === 1, { what: "the webhook" });
    const req = receiver.requests[0];
    if (!req) throw new Error("no request");
    const headers = req.headers as Record<string, string>;
    expect(headers["webhook-id"]).toBe(id);
    expect(headers["content-type"]).toBe("application/json");
    expect(headers["user-agent"]).toMatch(/^pg-reactor\/\d/);
    expect(headers["webhook-signature"]?.split(" ")).toHaveLength(2);
    const verified = new Webhook(secret).verify(req.body, headers) as Record<string, unknown>;
    expect(new Webhook(previous).verify(req.body, headers)).toEqual(verified);
    expect(() => new Webhook(newSecret()).verify(req.body, headers)).toThrow();
    expect(verified).toEqual({
      type: "order.created",
      timestamp: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
      data: { orderId: 42, note: "ünïcode ✓" },
    });
    expect(Object.keys(JSON.parse(req.body))).toEqual(["type", "timestamp", "data"]);
    const rows = await waitFor(async () => {
      const r = await deliveryRows(db.pool);
      return r[0]?.state === "delivered" ? r : null;
    });
    expect(rows[0]).toMatchObject({ attempts: 1, last_status: 204, last_error: null });
  });

  it("a rolled-back event sends nothing", async () => {
    await subscribe(db.pool, `${receiver.url}/hook`);
    await start();
    const client = await db.pool.connect();
    await client.query("BEGIN");
    const rolledBack = await emit(client, "order.created");
    await client.query("ROLLBACK");
    client.release();
    const marker = await emit(db.pool, "order.created");
    await waitFor(() => receiver.delivered.has(marker), { what: "the marker event" });
    expect(receiver.requests.map((r) => r.headers["webhook-id"])).toEqual([marker]);
    expect(receiver.delivered.has(rolledBack)).toBe(false);
  });

  it("retries with the same webhook-id and a fresh timestamp, then succeeds", async () => {
    await setSetting(db.pool, "delivery_retry_schedule_seconds", "1,1,1");
    await subscribe(db.pool, `${receiver.url}/hook`);
    receiver.script.push({ status: 500, body: "boom" }, { reset: true });
    await start();
    const id = await emit(db.pool, "order.created");
    await waitFor(() => receiver.delivered.get(id) === 1, {
      timeoutMs: 15_000,
      what: "the third attempt",
    });
    expect(receiver.requests.map((r) => r.headers["webhook-id"])).toEqual([id, id, id]);
    const stamps = receiver.requests.map((r) => Number(r.headers["webhook-timestamp"]));
    expect(stamps[2]).toBeGreaterThan(stamps[0] as number);
    const rows = await waitFor(async () => {
      const r = await deliveryRows(db.pool);
      return r[0]?.state === "delivered" ? r : null;
    });
    expect(rows[0]).toMatchObject({ attempts: 3, last_status: 204, last_error: null });
  });

  it("honours Retry-After on 503, and a 429 does not use an attempt", async () => {
    await setSetting(db.pool, "delivery_retry_schedule_seconds", "1,1,1");
    await subscribe(db.pool, `${receiver.url}/hook`);
    receiver.script.push(
      { status: 503, headers: { "retry-after": "3" } },
      { status: 429, headers: { "retry-after": "1" } },
    );
    await start();
    const id = await emit(db.pool, "order.created");
    await waitFor(() => receiver.delivered.get(id) === 1, { timeoutMs: 15_000, what: "delivery" });
    const [first, second] = receiver.requests;
    // The schedule alone would retry after about 1 s; Retry-After said 3.
    expect((second?.at ?? 0) - (first?.at ?? 0)).toBeGreaterThanOrEqual(2_900);
    const rows = await waitFor(async () => {
      const r = await deliveryRows(db.pool);
      return r[0]?.state === "delivered" ? r : null;
    });
    expect(rows[0]?.attempts).toBe(2);
  });

  it("410 Gone disables the subscription and cancels its waiting deliveries", async () => {
    const sub = await subscribe(db.pool, `${receiver.url}/gone`);
    receiver.fallback = { status: 410 };
    await db.pool.query(
      `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
       SELECT 'order', g::text, 'order.created', '{}' FROM generate_series(1, 5) g`,
    );
    await start();
    const rows = await waitFor(async () => {
      const r = await deliveryRows(db.pool);
      return r.every((x) => x.state === "cancelled") ? r : null;
    });
    expect(rows).toHaveLength(5);
    expect(rows.some((r) => r.last_status === 410)).toBe(true);
    expect(rows.every((r) => /cancelled: .*410 Gone/.test(r.last_error))).toBe(true);
    const { rows: subs } = await db.pool.query(
      "SELECT enabled, disabled_reason FROM webhook_subscriptions WHERE id = $1",
      [sub],
    );
    expect(subs[0].enabled).toBe(false);
    expect(subs[0].disabled_reason).toMatch(/410 Gone/);
    // New events no longer fan out to it.
    await emit(db.pool, "order.created");
    expect(await deliveryRows(db.pool)).toHaveLength(5);
  });

  it("a timeout is retried, a 3xx is a failure, and an exhausted schedule ends failed", async () => {
    await setSetting(db.pool, "delivery_timeout_seconds", "1");
    await setSetting(db.pool, "delivery_retry_schedule_seconds", "1");
    await subscribe(db.pool, `${receiver.url}/slow`);
    receiver.script.push(
      { delayMs: 2_500, status: 204 },
      { status: 302, headers: { location: "http://127.0.0.1:1/" } },
    );
    await start();
    const id = await emit(db.pool, "order.created");
    const row = await waitFor(
      async () => {
        const r = await deliveryRows(db.pool);
        return r[0]?.state === "failed" ? r[0] : null;
      },
      { timeoutMs: 15_000, what: "failed delivery" },
    );
    expect(row).toMatchObject({ attempts: 2, last_status: 302 });
    expect(row.last_error).toMatch(
      /HTTP 302 \(redirects are not followed\).*gave up after 2 attempts/,
    );
    expect(receiver.requests.filter((r) => r.headers["webhook-id"] === id)).toHaveLength(2);
    expect(receiver.requests.some((r) => r.path !== "/slow")).toBe(false);
  });

  it("records a timeout as such", async () => {
    await setSetting(db.pool, "delivery_timeout_seconds", "1");
    await setSetting(db.pool, "delivery_retry_schedule_seconds", "60");
    await subscribe(db.pool, `${receiver.url}/slow`);
    receiver.fallback = { delayMs: 2_500, status: 204 };
    await start();
    await emit(db.pool, "order.created");
    const row = await waitFor(async () => {
      const r = await deliveryRows(db.pool);
      // The claim counts the attempt; the finalize records its error.
      return r[0]?.attempts === 1 && r[0].last_error !== null ? r[0] : null;
    });
    expect(row).toMatchObject({
      state: "pending",
      last_status: null,
      last_error: "timed out after 1 s",
    });
  });

  it("a receiver that answers 200 and trickles its body forever is delivered, and let go at the deadline", async () => {
    // A byte every 200 ms: undici's gap timeout (1 s between chunks) never fires, so only
    // the attempt's whole-request deadline ends it.
    const timers = new Set<NodeJS.Timeout>();
    const trickle = createServer((req, res) => {
      req.resume();
      res.writeHead(200, { "content-type": "text/plain" });
      const t = setInterval(() => res.write("."), 200);
      timers.add(t);
      res.on("close", () => clearInterval(t));
    });
    await new Promise<void>((r) => trickle.listen(0, "127.0.0.1", r));
    try {
      const port = (trickle.address() as AddressInfo).port;
      await setSetting(db.pool, "delivery_timeout_seconds", "1");
      await setSetting(db.pool, "delivery_retry_schedule_seconds", "60");
      await subscribe(db.pool, `http://127.0.0.1:${port}/drip`);
      await start();
      await emit(db.pool, "order.created");
      // The 200 came: the receiver took the event. The deadline ends the read of the rest.
      const row = await waitFor(async () => {
        const r = await deliveryRows(db.pool);
        return r[0]?.state !== "pending" ? r[0] : null;
      });
      expect(row).toMatchObject({ state: "delivered", attempts: 1, last_status: 200 });
      const { rows: attempts } = await db.pool.query(
        "SELECT status, error, response_excerpt FROM webhook_delivery_attempts",
      );
      expect(attempts).toHaveLength(1);
      expect(attempts[0]).toMatchObject({ status: 200, error: null });
    } finally {
      for (const t of timers) clearInterval(t);
      trickle.closeAllConnections();
      await new Promise((r) => trickle.close(r));
    }
  });

  it("refuses loopback targets, by literal IP and by a hostname resolving to loopback", async () => {
    await subscribe(db.pool, `${receiver.url}/ip`);
    await subscribe(db.pool, `http://localhost:${receiver.port}/name`);
    await subscribe(db.pool, `http://[::1]:${receiver.port}/v6`);
    await start({ WEBHOOK_ALLOW_PRIVATE_NETWORKS: "false", WEBHOOK_ALLOWED_NETWORKS: "" });
    await emit(db.pool, "order.created");
    const rows = await waitFor(async () => {
      const r = await deliveryRows(db.pool);
      return r.length === 3 && r.every((x) => x.state === "failed") ? r : null;
    });
    for (const r of rows) {
      expect(r.last_error).toMatch(
        /^refused: .* resolves to .*, a loopback address; .*WEBHOOK_ALLOW_PRIVATE_NETWORKS=true/,
      );
      expect(r.attempts).toBe(1);
    }
    expect(receiver.requests).toHaveLength(0);
  });

  it("a delivery leased by a crashed worker is re-sent with the same webhook-id after the lease", async () => {
    await subscribe(db.pool, `${receiver.url}/hook`);
    const id = await emit(db.pool, "order.created");
    const queue = makeDeliveriesQueue(db.pool as never);
    const claimed = await queue.claim("crashed/dead", {
      limit: 10,
      leaseSeconds: 2,
      maxAttempts: 10,
    });
    expect(claimed).toHaveLength(1);
    expect(claimed[0]?.event_id).toBe(id);
    await start();
    await waitFor(() => receiver.delivered.get(id) === 1, {
      timeoutMs: 10_000,
      what: "re-sent delivery",
    });
    expect(receiver.requests.map((r) => r.headers["webhook-id"])).toEqual([id]);
  });

  it("two reactors deliver each (event, subscription) exactly once", async () => {
    await subscribe(db.pool, `${receiver.url}/one`);
    await subscribe(db.pool, `${receiver.url}/two`);
    const [a, b] = (await startReplicas(2, { databaseUrl: db.url })) as [App, App];
    try {
      await wakeSourceLive([a, b], mode);
      for (let i = 0; i < 15; i++) {
        await db.pool.query(
          `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
           SELECT 'order', g::text, 'order.created', '{}' FROM generate_series(1, 20) g`,
        );
      }
      await waitFor(() => receiver.requests.length >= 600, {
        timeoutMs: 30_000,
        what: "600 requests",
      });
      const seen = new Map<string, number>();
      for (const r of receiver.requests) {
        const key = `${r.headers["webhook-id"]}${r.path}`;
        seen.set(key, (seen.get(key) ?? 0) + 1);
      }
      expect(seen.size).toBe(600);
      expect([...seen.values()].every((n) => n === 1)).toBe(true);
    } finally {
      await Promise.all([a.stop(1_000), b.stop(1_000)]);
    }
  });

  it("retention deletes only final, old deliveries and events with nothing left open", async () => {
    const sub = await subscribe(db.pool, `${receiver.url}/hook`);
    const ids: Record<string, string> = {};
    for (const name of [
      "oldDelivered",
      "oldCancelled",
      "oldFailed",
      "oldPending",
      "newDelivered",
      "oldNoSubscriber",
    ]) {
      ids[name] = await emit(db.pool, name === "oldNoSubscriber" ? "x.y" : "order.created");
    }
    await db.pool.query("DELETE FROM webhook_deliveries WHERE event_id = $1", [
      ids.oldNoSubscriber,
    ]);
    const set = async (name: string, state: string, age: string) => {
      await db.pool.query(
        `UPDATE webhook_deliveries SET state = $2, created_at = now() - $3::interval,
           delivered_at = CASE WHEN $2 = 'delivered' THEN now() - $3::interval END WHERE event_id = $1`,
        [ids[name], state, age],
      );
      await db.pool.query(
        "UPDATE outbox_events SET created_at = now() - $2::interval WHERE id = $1",
        [ids[name], age],
      );
    };
    await set("oldDelivered", "delivered", "8 days");
    await set("oldCancelled", "cancelled", "8 days");
    await set("oldFailed", "failed", "8 days");
    await set("oldPending", "pending", "8 days");
    await set("newDelivered", "delivered", "1 day");
    await set("oldNoSubscriber", "pending", "8 days");
    const removed = await applyRetention(db.pool as never, 7);
    expect(removed).toEqual({ deliveries: 2, events: 3 });
    const { rows: events } = await db.pool.query("SELECT id FROM outbox_events");
    const left = new Set(events.map((e) => e.id));
    expect(
      Object.entries(ids)
        .filter(([, id]) => left.has(id))
        .map(([n]) => n)
        .sort(),
    ).toEqual(["newDelivered", "oldFailed", "oldPending"]);
    const { rows: deliveries } = await db.pool.query(
      "SELECT state FROM webhook_deliveries WHERE subscription_id = $1 ORDER BY state",
      [sub],
    );
    expect(deliveries.map((d) => d.state)).toEqual(["delivered", "failed", "pending"]);
  });
});
