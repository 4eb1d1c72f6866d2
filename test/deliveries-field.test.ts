// Deliveries as they must behave in the field: slow endpoints cannot starve the others,
// however many there are; large events are refused unread; receivers' error bodies never
// store a secret; a handler that throws goes through the retry schedule like any failure.
import type pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { newSecret, type Receiver, startReceiver } from "../src/demo/receiver.js";
import { makeLogger } from "../src/logger.js";
import { makeMetrics } from "../src/metrics.js";
import { makeDrainer } from "../src/reactor/drainer.js";
import type { Workload } from "../src/reactor/workload.js";
import { makeDeliveriesQueue } from "../src/workloads/deliveries/queue.js";
import { makeOrdersQueue } from "../src/workloads/uploads/queue.js";
import {
  createTestDatabase,
  insertOrders,
  setSetting,
  subscribe,
  type TestDatabase,
  waitFor,
} from "./helpers/db.js";
import { startReactor } from "./helpers/reactor.js";

async function emit(pool: pg.Pool, count: number, payload = '{"n": 1}'): Promise<void> {
  await pool.query(
    `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
     SELECT 'order', g::text, 'order.created', $2::jsonb FROM generate_series(1, $1::int) g`,
    [count, payload],
  );
}

describe("deliveries in the field", () => {
  let db: TestDatabase;
  let receiver: Receiver;
  let app: App | null = null;

  beforeAll(async () => {
    db = await createTestDatabase();
    receiver = await startReceiver();
    // Requests to /slow hang (longer than the delivery timeout); the rest answer at once.
    receiver.fallback = (req) =>
      req.path.startsWith("/slow") ? { delayMs: 30_000 } : { status: 204 };
  });
  afterEach(async () => {
    await app?.stop(1_000);
    app = null;
    await db.pool.query(
      "TRUNCATE webhook_delivery_attempts, webhook_deliveries, outbox_events, webhook_subscriptions, configuration_params, orders_inbox",
    );
    receiver.requests.length = 0;
    receiver.delivered.clear();
  });
  afterAll(async () => {
    await receiver.close();
    await db.drop();
  });

  const fastDelivered = () => receiver.requests.filter((r) => r.path === "/fast").length;

  it("two hanging endpoints leave slots for a fast one: it gets every event before the slow ones time out", async () => {
    await setSetting(db.pool, "delivery_timeout_seconds", "10");
    await subscribe(db.pool, `${receiver.url}/slow-1`);
    await subscribe(db.pool, `${receiver.url}/slow-2`);
    await subscribe(db.pool, `${receiver.url}/fast`);
    app = await startReactor({ databaseUrl: db.url });
    await emit(db.pool, 20);
    await waitFor(() => fastDelivered() === 20, { timeoutMs: 30_000, what: "20 fast deliveries" });
    const { rows } = await db.pool.query(
      "SELECT count(*)::int AS n FROM webhook_deliveries WHERE last_error LIKE 'timed out%'",
    );
    expect(rows[0].n).toBe(0);
  });

  it("any number of slow endpoints cannot starve a fast one", async () => {
    await setSetting(db.pool, "delivery_timeout_seconds", "1");
    await setSetting(db.pool, "delivery_concurrency", "8");
    for (let i = 0; i < 20; i++) await subscribe(db.pool, `${receiver.url}/slow-${i}`);
    await subscribe(db.pool, `${receiver.url}/fast`);
    app = await startReactor({ databaseUrl: db.url });
    await emit(db.pool, 10);
    await waitFor(() => fastDelivered() === 10, { timeoutMs: 40_000, what: "10 fast deliveries" });
    // The slow endpoints still have most of their 200 deliveries waiting: the fast one
    // did not have to wait for them to drain.
    const { rows } = await db.pool.query(
      "SELECT count(*)::int AS n FROM webhook_deliveries WHERE state = 'pending'",
    );
    expect(rows[0].n).toBeGreaterThan(100);
  }, 60_000);

  it("one endpoint alone uses every slot; a second one gets its share once its rows are claimed", async () => {
    await setSetting(db.pool, "delivery_concurrency", "6");
    // Both answer after 300 ms, so requests overlap and the receiver sees how many at once.
    let open = { a: 0, b: 0 };
    let most = { a: 0, b: 0 };
    receiver.fallback = (req) => {
      const key = req.path === "/a" ? "a" : "b";
      open[key]++;
      most = { ...most, [key]: Math.max(most[key], open[key]) };
      setTimeout(() => open[key]--, 300);
      return { status: 204, delayMs: 300 };
    };
    try {
      await subscribe(db.pool, `${receiver.url}/a`);
      app = await startReactor({ databaseUrl: db.url });
      await emit(db.pool, 30);
      await waitFor(() => most.a === 6, { timeoutMs: 20_000, what: "6 requests to /a at once" });
      await subscribe(db.pool, `${receiver.url}/b`);
      await emit(db.pool, 30);
      await waitFor(() => receiver.requests.length === 30 + 60, {
        timeoutMs: 30_000,
        what: "every delivery",
      });
      // The newcomer had half of the slots while /a still had work; never more than 6.
      expect(most.b).toBe(3);
      expect(most.a).toBe(6);
      // Each sent once, none handed back: recorded as delivered on the first attempt.
      const delivered = await waitFor(async () => {
        const { rows } = await db.pool.query(
          "SELECT count(*)::int AS n, max(attempts)::int AS attempts FROM webhook_deliveries WHERE state = 'delivered'",
        );
        return rows[0].n === 90 ? rows[0] : null;
      });
      expect(delivered).toEqual({ n: 90, attempts: 1 });
      expect(receiver.requests.length).toBe(90);
    } finally {
      receiver.fallback = (req) =>
        req.path.startsWith("/slow") ? { delayMs: 30_000 } : { status: 204 };
      open = { a: 0, b: 0 };
    }
  });

  it("an event over the size limit fails with its size, unread; the next one is delivered", async () => {
    await subscribe(db.pool, `${receiver.url}/fast`);
    await emit(db.pool, 1, JSON.stringify({ blob: "x".repeat(1024 * 1024) }));
    const queue = makeDeliveriesQueue(db.pool as never);
    const [claimed] = await queue.claim("probe/1", { limit: 1, leaseSeconds: 60, maxAttempts: 9 });
    expect(claimed?.event_payload).toBeNull();
    expect(claimed?.payload_bytes).toBeGreaterThan(1024 * 1024);
    await queue.release("probe/1");
    app = await startReactor({ databaseUrl: db.url });
    await emit(db.pool, 1);
    await waitFor(() => fastDelivered() === 1, { what: "the small event" });
    const rows = await waitFor(
      async () => {
        const r = await db.pool.query(
          "SELECT state, last_error FROM webhook_deliveries WHERE state = 'failed'",
        );
        return r.rows.length === 1 ? r.rows : null;
      },
      { what: "the large event failed" },
    );
    expect(rows[0].last_error).toMatch(
      /^event payload is \d+ bytes; webhooks carry at most 262144/,
    );
  });

  it("a receiver's error body that echoes the subscription secret is stored redacted", async () => {
    const secret = newSecret();
    await subscribe(db.pool, `${receiver.url}/echo`, { secret });
    receiver.script.push({ status: 500, body: `bad signature; expected secret ${secret}` });
    app = await startReactor({ databaseUrl: db.url });
    await emit(db.pool, 1);
    const row = await waitFor(
      async () => {
        const { rows } = await db.pool.query("SELECT last_error FROM webhook_deliveries");
        return rows[0]?.last_error ? rows[0] : null;
      },
      { what: "the failed attempt recorded" },
    );
    expect(row.last_error).toContain("[redacted]");
    expect(row.last_error).not.toContain(secret);
  });

  it("a handler that throws sends its rows through the retry schedule, to failed", async () => {
    const ids = await insertOrders(db.pool, 2, { prefix: "crash" });
    const pool = db.pool as never;
    const logger = makeLogger("silent");
    const workload: Workload = {
      name: "uploads",
      channel: "reactor_orders",
      queue: makeOrdersQueue(pool) as unknown as Workload["queue"],
      enabled: () => true,
      disabledReason: () => null,
      unitSize: () => 10,
      concurrency: () => 1,
      retryScheduleSeconds: () => [1],
      pausedUntil: () => 0,
      async process() {
        throw new Error("boom");
      },
    };
    const drainer = makeDrainer({
      workload,
      owner: "crashy/1",
      leaseSeconds: () => 30,
      logger,
      metrics: makeMetrics(),
    });
    try {
      drainer.wake("start");
      const rows = await waitFor(
        async () => {
          const r = await db.pool.query(
            "SELECT upload_state, attempts, last_error FROM orders_inbox WHERE id = ANY($1) ORDER BY id",
            [ids],
          );
          return r.rows.every((x) => x.upload_state === "failed") ? r.rows : null;
        },
        { what: "both rows failed after the schedule" },
      );
      for (const r of rows) {
        expect(r).toMatchObject({ attempts: 2 });
        expect(r.last_error).toBe("internal error: boom (gave up after 2 attempts)");
      }
    } finally {
      await drainer.stop(1_000);
    }
  });
});
