import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { makeOrdersQueue } from "../src/workloads/uploads/queue.js";
import {
  createTestDatabase,
  insertOrders,
  setSetting,
  type TestDatabase,
  terminateListener,
  waitFor,
} from "./helpers/db.js";
import { metricTotal, startReactor, startReplicas } from "./helpers/reactor.js";

/** reactor_wakeups_total for uploads with this reason. */
async function wakeups(app: App, reason: string): Promise<number> {
  const { values } = await app.metrics.wakeups.get();
  return (
    values.find((v) => v.labels.workload === "uploads" && v.labels.reason === reason)?.value ?? 0
  );
}

describe("resilience of the core reactor", () => {
  let db: TestDatabase;
  let fake: FakeShipStation;
  const apps: App[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    fake = await startFakeShipStation();
    // About replicas sharing rows, not the rate limit (uploads-field.test.ts covers the
    // real 40 a minute): its hundreds of orders in small calls would take minutes at 40.
    await setSetting(db.pool, "upload_rate_limit_per_minute", "100000");
    // The safety poll must not be what rescues anything in these tests.
    await setSetting(db.pool, "poll_interval_seconds", "3600");
  });
  afterAll(async () => {
    await Promise.all(apps.map((a) => a.stop(1_000)));
    await fake.close();
    await db.drop();
  });

  it("orders whose NOTIFY was lost are uploaded by the catch-up after a listener reconnect, not by the poll", async () => {
    const app = await startReactor({ databaseUrl: db.url, shipstationUrl: fake.url });
    apps.push(app);
    const uploads = app.reactor.drainers.get("uploads");
    // The start-up drain must be over, or it (not the reconnect) would find the orders.
    await waitFor(() => uploads?.state().running === false, { what: "the start-up drain" });
    const reconnectsBefore = app.reactor.listener().state().reconnects;
    const notifyWakesBefore = await wakeups(app, "notify");
    const reconnectWakesBefore = await wakeups(app, "reconnect");
    const pollsBefore = await metricTotal(app.metrics.safetyPolls);
    // Committed with triggers off: exactly what the reactor sees when a NOTIFY is lost.
    const client = await db.pool.connect();
    try {
      await client.query("SET session_replication_role = replica");
      await insertOrders(client, 20, { prefix: "lost" });
      await client.query("RESET session_replication_role");
    } finally {
      client.release();
    }
    expect(await terminateListener(db.pool)).toHaveLength(1);
    await waitFor(
      async () => {
        const r = await db.pool.query(
          "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'uploaded'",
        );
        return r.rows[0].n === 20;
      },
      { timeoutMs: 30_000, what: "orders after reconnect" },
    );
    expect(app.reactor.listener().state().reconnects).toBeGreaterThan(reconnectsBefore);
    expect(await wakeups(app, "reconnect")).toBeGreaterThan(reconnectWakesBefore);
    // No notification announced them and the safety poll never ran: only the catch-up did.
    expect(await wakeups(app, "notify")).toBe(notifyWakesBefore);
    expect(await metricTotal(app.metrics.safetyPolls)).toBe(pollsBefore);
    expect(fake.received.size).toBe(20);
    // And the new connection hears new notifications again.
    await insertOrders(db.pool, 1, { prefix: "after" });
    await waitFor(() => fake.received.size === 21, { what: "the order after reconnect" });
    expect(await wakeups(app, "notify")).toBeGreaterThan(notifyWakesBefore);
    await app.stop(1_000);
    apps.pop();
  });

  it("a row leased by a crashed worker is re-sent with the same orderKey once the lease expires", async () => {
    await db.pool.query("TRUNCATE orders_inbox");
    fake.received.clear();
    const [id] = await insertOrders(db.pool, 1, { prefix: "crash" });
    // A worker claims with a 2 s lease and dies before finalizing.
    const queue = makeOrdersQueue(db.pool as never);
    const claimed = await queue.claim("crashed-worker/dead", {
      limit: 10,
      leaseSeconds: 2,
      maxAttempts: 10,
    });
    expect(claimed.map((r) => r.id)).toEqual([id]);
    const app = await startReactor({ databaseUrl: db.url, shipstationUrl: fake.url });
    apps.push(app);
    // Not while the lease is valid…
    const early = await db.pool.query("SELECT locked_by FROM orders_inbox WHERE id = $1", [id]);
    expect(early.rows[0].locked_by).toBe("crashed-worker/dead");
    // …but right after it expires (the drainer's timer, not the hour-long poll).
    await waitFor(() => fake.received.get(String(id)) === 1, {
      timeoutMs: 10_000,
      what: "re-sent order",
    });
    const row = await waitFor(async () => {
      const r = await db.pool.query(
        "SELECT upload_state, locked_by FROM orders_inbox WHERE id = $1",
        [id],
      );
      return r.rows[0].upload_state === "uploaded" ? r.rows[0] : null;
    });
    expect(row.locked_by).toBeNull();
    // The dead worker's late finalize is ignored: it no longer holds the lease.
    const late = await queue.finalize("crashed-worker/dead", [
      { id: id as number, kind: "failed", error: "late" },
    ]);
    expect(late.done).toEqual([]);
    const after = await db.pool.query("SELECT upload_state FROM orders_inbox WHERE id = $1", [id]);
    expect(after.rows[0].upload_state).toBe("uploaded");
    await app.stop(1_000);
    apps.pop();
  });

  it("two reactors on one database upload each order exactly once", async () => {
    await db.pool.query("TRUNCATE orders_inbox");
    fake.received.clear();
    fake.calls.length = 0;
    await setSetting(db.pool, "upload_batch_size", "10");
    const [a, b] = (await startReplicas(2, { databaseUrl: db.url, shipstationUrl: fake.url })) as [
      App,
      App,
    ];
    apps.push(a, b);
    for (let i = 0; i < 20; i++) await insertOrders(db.pool, 25, { prefix: `r${i}` });
    await waitFor(() => fake.received.size === 500, { timeoutMs: 30_000, what: "500 orders" });
    expect([...fake.received.values()].every((n) => n === 1)).toBe(true);
    const claimedA = await metricTotal(a.metrics.claimed);
    const claimedB = await metricTotal(b.metrics.claimed);
    expect(claimedA + claimedB).toBe(500);
    await db.pool.query(
      "DELETE FROM configuration_params WHERE parameter_name = 'upload_batch_size'",
    );
    await Promise.all(apps.splice(apps.indexOf(a), 2).map((r) => r.stop(1_000)));
  });

  it("uploads stay paused, orders pending, when no ShipStation credentials are configured", async () => {
    const app = await startReactor({
      databaseUrl: db.url,
      shipstationUrl: fake.url,
      env: { SHIPSTATION_API_KEY: "", SHIPSTATION_API_SECRET: "" },
    });
    apps.push(app);
    const uploads = app.reactor.workloads.find((w) => w.name === "uploads");
    expect(uploads?.enabled()).toBe(false);
    expect(uploads?.disabledReason()).toMatch(
      /SHIPSTATION_API_KEY and SHIPSTATION_API_SECRET are not set/,
    );
    await db.pool.query("TRUNCATE orders_inbox");
    fake.calls.length = 0;
    await insertOrders(db.pool, 3, { prefix: "nocreds" });
    // The poll sees the due orders; a drain it (or the NOTIFY) started would have sent them.
    await app.reactor.poll.pollNow();
    await waitFor(() => app.reactor.drainers.get("uploads")?.state().running === false, {
      what: "the uploads drainer idle",
    });
    const { rows } = await db.pool.query("SELECT upload_state FROM orders_inbox");
    expect(rows).toEqual(Array(3).fill({ upload_state: "pending" }));
    expect(fake.calls).toHaveLength(0);
  });
});
