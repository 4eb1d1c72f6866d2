// Uploads as they must behave in the field: orders are never merged or lost, a bad order
// fails alone, credentials and rate limits pause without losing anything, and leases,
// locks and crashes never make an order go out twice or stall the rest.
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { buildHealth } from "../src/http/health.js";
import { buildStatus } from "../src/http/status.js";
import type { DrainerEvent } from "../src/reactor/drainer.js";
import { CLAIM_MAX_BYTES } from "../src/reactor/lease-queue.js";
import { makeOrdersQueue } from "../src/workloads/uploads/queue.js";
import {
  createTestDatabase,
  insertOrders,
  setSetting,
  type TestDatabase,
  validPayload,
  waitFor,
} from "./helpers/db.js";
import { metricTotal, startReactor, startReplicas } from "./helpers/reactor.js";

type Health = Awaited<ReturnType<typeof buildHealth>>;
const check = (health: Health, name: string) => health.checks[name]?.[0];

describe("uploads in the field", () => {
  let db: TestDatabase;
  let fake: FakeShipStation;
  let apps: App[] = [];

  const start = async (
    env: Record<string, string> = {},
    onDrainerEvent?: (e: DrainerEvent) => void,
  ) => {
    const app = await startReactor({
      databaseUrl: db.url,
      shipstationUrl: fake.url,
      env,
      onDrainerEvent,
    });
    apps.push(app);
    return app;
  };
  const states = async () =>
    (
      await db.pool.query<{
        order_key: string;
        upload_state: string;
        attempts: number;
        last_error: string | null;
      }>("SELECT order_key, upload_state, attempts, last_error FROM orders_inbox ORDER BY id")
    ).rows;
  const settled = () =>
    waitFor(
      async () => {
        const rows = await states();
        return rows.length > 0 && rows.every((r) => r.upload_state !== "pending") ? rows : null;
      },
      { what: "every order uploaded or failed" },
    );

  beforeAll(async () => {
    db = await createTestDatabase();
    fake = await startFakeShipStation();
  });
  afterEach(async () => {
    await Promise.all(apps.map((a) => a.stop(1_000)));
    apps = [];
    await db.pool.query("TRUNCATE orders_inbox, reactor_rate_limits, configuration_params");
    fake.calls.length = 0;
    fake.gets.length = 0;
    fake.received.clear();
    fake.script.length = 0;
    fake.defaultResponse = {};
    fake.rejectBatchKeys = {};
  });
  afterAll(async () => {
    await fake.close();
    await db.drop();
  });

  it("a row without order_key can never share its orderKey with another row", async () => {
    const [id] = await insertOrders(db.pool, 1);
    await expect(
      db.pool.query(
        "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ('X', $1, $2)",
        [String(id), JSON.stringify(validPayload())],
      ),
    ).rejects.toThrow(/order_key_must_differ_from_other_orders_keys_and_ids/);
    // The other way round: a row without order_key whose id another row holds as its key
    // gets a key of its own instead of being refused.
    const { rows } = await db.pool.query<{ id: string }>(
      // Y takes the id after this one; the unkeyed order, the one after that.
      "SELECT nextval(pg_get_serial_sequence('orders_inbox', 'id')) + 2 AS id",
    );
    const next = String(rows[0]?.id);
    await db.pool.query(
      "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ('Y', $1, $2)",
      [next, JSON.stringify(validPayload())],
    );
    const [unkeyed] = await insertOrders(db.pool, 1);
    expect(String(unkeyed)).toBe(next);
    const keys = await db.pool.query(
      "SELECT order_key, upload_key FROM orders_inbox WHERE id = $1",
      [unkeyed],
    );
    expect(keys.rows[0]).toEqual({ order_key: `pgr-id-${next}`, upload_key: `pgr-id-${next}` });
    await start();
    await waitFor(() => fake.received.size === 3, { what: "three orders, three keys" });
    expect([...fake.received.values()]).toEqual([1, 1, 1]);
  });

  it("a 4xx for a whole batch is split until the bad order is alone; the others upload", async () => {
    fake.rejectBatchKeys = { "k-5": "The orderDate field is not a valid date" };
    await db.pool.query(
      `INSERT INTO orders_inbox (order_number, order_key, payload)
       SELECT 'B-' || g, 'k-' || g, $1::jsonb FROM generate_series(1, 10) g`,
      [JSON.stringify(validPayload())],
    );
    await start();
    const rows = await settled();
    const failed = rows.filter((r) => r.upload_state === "failed");
    expect(failed.map((r) => r.order_key)).toEqual(["k-5"]);
    expect(failed[0]?.last_error).toMatch(
      /^ShipStation HTTP 400: .*The orderDate field is not a valid date/,
    );
    expect(rows.filter((r) => r.upload_state === "uploaded")).toHaveLength(9);
    for (const [, n] of fake.received) expect(n).toBe(1);
    // 10 → 5+5 → the good half once, the bad half 3+2 → 2+1 → 1+1: 1 + 2 + 2 + 2 calls.
    expect(fake.calls.length).toBeLessThanOrEqual(9);
  });

  it("numbers reach ShipStation exactly as stored in jsonb", async () => {
    await db.pool.query(
      "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ('N-1', 'n1', $1::jsonb)",
      [
        JSON.stringify(validPayload()).replace(
          '"amountPaid":12.5',
          '"amountPaid":12345678901234567.891,"taxAmount":0.30000000000000000001',
        ),
      ],
    );
    await start();
    await waitFor(() => fake.received.has("n1"), { what: "the order" });
    expect(fake.calls[0]?.body).toContain('"amountPaid":12345678901234567.891');
    expect(fake.calls[0]?.body).toContain('"taxAmount":0.30000000000000000001');
  });

  it("401 pauses uploads with orders kept pending, /health says why, and uploads resume by themselves", async () => {
    fake.script.push({ status: 401 }, { status: 401 });
    const app = await start();
    await insertOrders(db.pool, 3, { prefix: "c" });
    const during = await waitFor(
      async () => {
        const h = await buildHealth(app);
        return check(h, "uploads:credentials")?.status === "fail" ? h : null;
      },
      { what: "credentials check failing" },
    );
    expect(check(during, "uploads:credentials")?.output).toMatch(
      /rejected the credentials \(HTTP 401\)/,
    );
    expect(during.status).toBe("fail");
    expect((await states()).every((r) => r.upload_state === "pending")).toBe(true);
    // Tried again after ~2 s and ~4 s: the second 401, then success, with no restart.
    const rows = await settled();
    expect(rows.every((r) => r.upload_state === "uploaded" && r.attempts === 1)).toBe(true);
    expect(fake.calls).toHaveLength(3);
    expect(check(await buildHealth(app), "uploads:credentials")?.status).toBe("pass");
  });

  it("a ShipStation URL that answers 404 pauses uploads and fails no order", async () => {
    const app = await startReactor({ databaseUrl: db.url, shipstationUrl: `${fake.url}/wrong` });
    apps.push(app);
    await insertOrders(db.pool, 5, { prefix: "nf" });
    const health = await waitFor(
      async () => {
        const h = await buildHealth(app);
        return check(h, "uploads:endpoint")?.status === "fail" ? h : null;
      },
      { what: "uploads:endpoint failing" },
    );
    expect(check(health, "uploads:endpoint")?.output).toMatch(
      /HTTP 404 .*check SHIPSTATION_BASE_URL/,
    );
    // Handed back without using an attempt, once the refused call is recorded.
    await waitFor(
      async () =>
        (await states()).every(
          (r) => r.upload_state === "pending" && r.attempts === 0 && !r.last_error,
        ),
      { what: "every order pending, no attempt used" },
    );
    expect(fake.calls.length).toBe(0); // the fake records createorders calls only
  });

  it("a spent rate budget holds claims instead of handing the backlog back again and again", async () => {
    await setSetting(db.pool, "upload_rate_limit_per_minute", "2");
    await setSetting(db.pool, "upload_batch_size", "1");
    const app = await start();
    await insertOrders(db.pool, 200, { prefix: "ch" });
    await waitFor(async () => (await metricTotal(app.metrics.deferred)) > 0, {
      what: "the first hand-back at the limit",
    });
    const polls = await metricTotal(app.metrics.safetyPolls);
    await setSetting(db.pool, "poll_interval_seconds", "1");
    await waitFor(async () => (await metricTotal(app.metrics.safetyPolls)) >= polls + 2, {
      what: "two safety polls while the budget is spent",
    });
    // The budget is ShipStation's: the shipment poll's GET, when its turn falls in this
    // test (run alone, it does), takes a slot as createorders calls do.
    expect(fake.calls.length + fake.gets.length).toBe(2);
    // One claim's worth at most was handed back, not the backlog once per poll.
    expect(await metricTotal(app.metrics.claimed)).toBeLessThanOrEqual(2 + 4);
  });

  it("at the default budget (40 calls a minute, not set here) the 41st call waits for the next window", async () => {
    // Only the batch size is lowered, so 45 orders are 45 calls; the limit is the shipped one.
    await setSetting(db.pool, "upload_batch_size", "1");
    const app = await start();
    await insertOrders(db.pool, 45, { prefix: "dl" });
    await waitFor(async () => (await metricTotal(app.metrics.deferred)) > 0, {
      what: "a hand-back at the default limit",
    });
    // Every ShipStation call counts, the shipment poll's GET included when its turn falls here.
    expect(fake.calls.length + fake.gets.length).toBe(40);
    const { rows } = await db.pool.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'pending' AND attempts = 0",
    );
    // The orders over the budget wait with no attempt used.
    expect(rows[0]?.n).toBe(45 - fake.calls.length);
  });

  it("upload_rate_limit_per_minute is one budget for all replicas", async () => {
    await setSetting(db.pool, "upload_rate_limit_per_minute", "6");
    await setSetting(db.pool, "upload_batch_size", "1");
    const replicas = await startReplicas(2, { databaseUrl: db.url, shipstationUrl: fake.url });
    apps.push(...replicas);
    await insertOrders(db.pool, 20, { prefix: "rl" });
    // Both replicas reached the limit (each handed rows back) before the window ended.
    await waitFor(
      async () =>
        (await metricTotal(replicas[0]?.metrics.deferred as never)) > 0 &&
        (await metricTotal(replicas[1]?.metrics.deferred as never)) > 0,
      { what: "both replicas deferring at the shared limit" },
    );
    expect(fake.calls).toHaveLength(6);
    expect(fake.calls.at(-1)?.at ?? 0).toBeLessThan((fake.calls[0]?.at ?? 0) + 60_000);
  });

  it("X-Rate-Limit-Remaining: 0 seen by one replica pauses every replica until the reset", async () => {
    await setSetting(db.pool, "upload_batch_size", "1");
    fake.script.push({
      status: 200,
      headers: { "X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": "3" },
    });
    const replicas = await startReplicas(2, { databaseUrl: db.url, shipstationUrl: fake.url });
    apps.push(...replicas);
    await insertOrders(db.pool, 6, { prefix: "pz" });
    await settled();
    const [first, second] = fake.calls;
    expect(fake.calls).toHaveLength(6);
    // Calls already in flight when the pause was recorded may land next to the first.
    const afterPause = fake.calls.filter((c) => c.at > (first?.at ?? 0) + 500);
    expect(afterPause.length).toBeGreaterThan(0);
    expect(Math.min(...afterPause.map((c) => c.at)) - (first?.at ?? 0)).toBeGreaterThanOrEqual(
      2_500,
    );
    expect(second).toBeDefined();
  });

  it("a 429 with an absurd reset is clamped, and /health warns while paused", async () => {
    fake.script.push({ status: 429, headers: { "X-Rate-Limit-Reset": "999999" } });
    const app = await start();
    await insertOrders(db.pool, 1, { prefix: "z" });
    const status = await waitFor(
      async () => {
        const s = await buildStatus(app);
        return s.workloads.uploads &&
          (s.workloads.uploads as { pausedUntil: Date | null }).pausedUntil
          ? s
          : null;
      },
      { what: "uploads paused" },
    );
    const until = (status.workloads.uploads as { pausedUntil: Date }).pausedUntil.getTime();
    expect(until - Date.now()).toBeLessThanOrEqual(5 * 60_000);
    expect(until - Date.now()).toBeGreaterThan(4 * 60_000);
    const health = await buildHealth(app);
    expect(check(health, "uploads:backlog")).toMatchObject({ status: "warn" });
    expect(check(health, "uploads:backlog")?.output).toMatch(
      /paused by ShipStation's rate limit until/,
    );
    expect(health.status).not.toBe("pass");
  });

  it("a target's error body that echoes the Authorization header is stored redacted", async () => {
    fake.script.push({ status: 400, echoHeaders: true });
    await insertOrders(db.pool, 1, { prefix: "sec" });
    await start();
    const [row] = await settled();
    expect(row?.upload_state).toBe("failed");
    expect(row?.last_error).toMatch(/\[redacted\]/);
    const token = Buffer.from("test-key:test-secret").toString("base64");
    expect(row?.last_error).not.toContain(token);
    expect(row?.last_error).not.toContain("test-secret");
  });

  it("backlog and oldest pending age count orders waiting for credentials", async () => {
    const app = await start({ SHIPSTATION_API_KEY: "", SHIPSTATION_API_SECRET: "" });
    await db.pool.query(
      "INSERT INTO orders_inbox (order_number, payload, updated_at) VALUES ('W-1', $1, now() - interval '90 seconds')",
      [JSON.stringify(validPayload())],
    );
    await insertOrders(db.pool, 4, { prefix: "w" });
    const stats = await waitFor(
      () => {
        const s = app.reactor.drainers.get("uploads")?.state().lastStats;
        return s?.backlog === 5 ? s : null;
      },
      { timeoutMs: 10_000, what: "backlog 5 without waiting for the safety poll" },
    );
    // now() is each transaction's start: allow the stats read to have begun a hair earlier.
    expect(stats.oldestPendingAgeSeconds).toBeGreaterThan(89);
    const gauge = (await app.metrics.backlog.get()).values.find(
      (v) => v.labels.workload === "uploads",
    );
    expect(gauge?.value).toBe(5);
    const health = await buildHealth(app);
    expect(check(health, "uploads:credentials")?.status).toBe("warn");
    expect(check(health, "uploads:backlog")).toMatchObject({ status: "warn", observedValue: 5 });
  });

  it("oversized orders are refused unread and fail alone", async () => {
    const big = validPayload({ notes: "x".repeat(2 * 1024 * 1024) });
    await db.pool.query(
      `INSERT INTO orders_inbox (order_number, order_key, payload)
       VALUES ('O-1', 'big1', $1), ('O-2', 'ok1', $2), ('O-3', 'big2', $1), ('O-4', 'ok2', $2)`,
      [JSON.stringify(big), JSON.stringify(validPayload())],
    );
    // The claim itself measures the payload and does not return it.
    const queue = makeOrdersQueue(db.pool as never);
    const claimed = await queue.claim("probe/1", { limit: 10, leaseSeconds: 60, maxAttempts: 9 });
    const bigRow = claimed.find((r) => r.order_key === "big1");
    expect(bigRow?.payload).toBeNull();
    expect(bigRow?.payload_bytes).toBeGreaterThan(2 * 1024 * 1024);
    await queue.release("probe/1");
    await start();
    const rows = await settled();
    expect(rows.map((r) => [r.order_key, r.upload_state])).toEqual([
      ["big1", "failed"],
      ["ok1", "uploaded"],
      ["big2", "failed"],
      ["ok2", "uploaded"],
    ]);
    expect(rows[0]?.last_error).toMatch(
      /^invalid order: payload is \d+ bytes; the limit is 262144$/,
    );
  });

  it("orders of 16 MB each are refused without the process loading them", async () => {
    await db.pool.query(
      `INSERT INTO orders_inbox (order_number, order_key, payload)
       SELECT 'H-' || g, 'huge-' || g, $1::jsonb || jsonb_build_object('notes', repeat(md5(g::text), 500000))
       FROM generate_series(1, 20) g`,
      [JSON.stringify(validPayload())],
    );
    await insertOrders(db.pool, 5, { prefix: "small" });
    const heapBefore = process.memoryUsage().heapUsed;
    await start();
    const rows = await settled();
    expect(rows.filter((r) => r.upload_state === "failed")).toHaveLength(20);
    expect(rows.filter((r) => r.upload_state === "uploaded")).toHaveLength(5);
    expect(rows[0]?.last_error).toMatch(
      /^invalid order: payload is 16\d{6} bytes; the limit is 262144$/,
    );
    // 320 MB of payloads never reached this process.
    expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(100 * 1024 * 1024);
  });

  it("an order whose numbers PostgreSQL would print as megabytes of digits fails alone, unprinted; the queue keeps flowing", async () => {
    // 8,300 numbers of 68 bytes each as stored, each 131 KB as text: over 1 GB.
    await db.pool.query(
      `INSERT INTO orders_inbox (order_number, order_key, payload)
       VALUES ('E-1', 'exp', $1::jsonb || jsonb_build_object('notes', ('[' || repeat('1e131071,', 8299) || '1e131071]')::jsonb))`,
      [JSON.stringify(validPayload())],
    );
    // One such number is small as text, yet refused the same way: see sql/050_json_text.sql.
    await db.pool.query(
      `INSERT INTO orders_inbox (order_number, order_key, payload)
       VALUES ('E-2', 'exp1', $1::jsonb || '{"notes": [1e-101]}'::jsonb)`,
      [JSON.stringify(validPayload())],
    );
    await insertOrders(db.pool, 3, { prefix: "fine" });
    const app = await start();
    const rows = await settled();
    for (const row of rows.slice(0, 2)) {
      expect(row).toMatchObject({ upload_state: "failed" });
      expect(row.last_error).toMatch(
        /^invalid order: payload is larger than 262144 bytes as JSON text \(\d+ bytes stored\), or holds a number beyond ±1e100$/,
      );
    }
    expect(rows.slice(2).every((r) => r.upload_state === "uploaded")).toBe(true);
    expect(await metricTotal(app.metrics.drainErrors)).toBe(0);
  });

  it("a claim stops adding rows once their payloads reach CLAIM_MAX_BYTES", async () => {
    // 200 orders of ~200 KB each (40 MB), built server-side.
    await db.pool.query(
      `INSERT INTO orders_inbox (order_number, payload)
       SELECT 'M-' || g, $1::jsonb || jsonb_build_object('notes', repeat('x', 200000))
       FROM generate_series(1, 200) g`,
      [JSON.stringify(validPayload())],
    );
    const queue = makeOrdersQueue(db.pool as never);
    const claimed = await queue.claim("probe/2", { limit: 200, leaseSeconds: 60, maxAttempts: 9 });
    const bytes = claimed.reduce((sum, r) => sum + r.payload_bytes, 0);
    expect(claimed.length).toBeGreaterThan(100);
    expect(claimed.length).toBeLessThan(200);
    expect(bytes).toBeLessThanOrEqual(CLAIM_MAX_BYTES);
    await queue.release("probe/2");
  });

  it("a row whose process died on every attempt ends failed instead of being leased forever", async () => {
    await db.pool.query(
      `INSERT INTO orders_inbox (order_number, order_key, payload, attempts, locked_by, locked_until)
       VALUES ('P-1', 'poison', $1, 9, 'dead/1', now() - interval '1 second'),
              ('P-2', 'survivor', $1, 3, 'dead/1', now() - interval '1 second')`,
      [JSON.stringify(validPayload())],
    );
    const app = await start();
    const rows = await settled();
    expect(rows).toMatchObject([
      { order_key: "poison", upload_state: "failed", attempts: 9 },
      { order_key: "survivor", upload_state: "uploaded", attempts: 4 },
    ]);
    expect(rows[0]?.last_error).toMatch(
      /^abandoned: attempt 9 of 9 did not finish \(its lease expired/,
    );
    expect(fake.received.has("poison")).toBe(false);
    const failed = (await app.metrics.completed.get()).values.find(
      (v) => v.labels.workload === "uploads" && v.labels.outcome === "failed",
    );
    expect(failed?.value).toBe(1);
  });

  it("a call longer than lease_seconds keeps its lease: the order is sent once", async () => {
    await setSetting(db.pool, "lease_seconds", "5");
    fake.script.push({ status: 200, delayMs: 12_000 });
    await start();
    await insertOrders(db.pool, 1, { prefix: "slow" });
    await settled();
    expect(fake.calls).toHaveLength(1);
  }, 40_000);

  it("an app transaction holding one in-flight order locked does not stall the others", async () => {
    await setSetting(db.pool, "upload_batch_size", "50");
    fake.defaultResponse = { delayMs: 300 };
    let firstClaim: number[] = [];
    await start({}, (e) => {
      if (e.type === "claimed" && firstClaim.length === 0) firstClaim = e.ids;
    });
    const ids = await insertOrders(db.pool, 220, { prefix: "lk" });
    const victim = await waitFor(() => firstClaim[0], { what: "the first claim" });
    const appTx = new pg.Client({ connectionString: db.url });
    await appTx.connect();
    try {
      await appTx.query("BEGIN");
      // Locks the row (no content change), then sits idle in the transaction.
      await appTx.query("SELECT 1 FROM orders_inbox WHERE id = $1 FOR UPDATE", [victim]);
      await waitFor(() => fake.received.size === 220, { what: "all 220 orders at ShipStation" });
      // Every other order is recorded while the lock is held; the locked one waits.
      await waitFor(
        async () =>
          (
            await db.pool.query(
              "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'uploaded'",
            )
          ).rows[0].n === 219,
        { what: "219 orders recorded uploaded" },
      );
      const { rows } = await db.pool.query("SELECT upload_state FROM orders_inbox WHERE id = $1", [
        victim,
      ]);
      expect(rows[0].upload_state).toBe("pending");
      await appTx.query("COMMIT");
    } finally {
      await appTx.end();
    }
    const all = await settled();
    expect(all.every((r) => r.upload_state === "uploaded")).toBe(true);
    expect(ids).toContain(victim);
    for (const [, n] of fake.received) expect(n).toBe(1);
  });
});
