// The claim and finalize statements must stay linear in the batch size whatever the
// planner believes. Table statistics taken while no row is leased say `locked_by = $1`
// matches one row; a finalize that filtered on it chose a nested loop comparing every
// row of a 1,600-row batch with every other (2.5 million comparisons, 1.5 s instead of
// 20 ms). These tests read the executed plan (EXPLAIN ANALYZE, rolled back) with such
// statistics in place and fail if any join compares more rows than it keeps. Their
// commits do not wait for the WAL flush (a forgotten claim or finalize reruns the row).
// The deliveries finalize also logs each row's HTTP attempt (webhook_delivery_attempts)
// in the same statement, without joining the updated rows back to the batch.
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newSecret } from "../src/demo/receiver.js";
import type { ClaimedRow, LeaseQueue, Outcome } from "../src/reactor/lease-queue.js";
import { makeDeliveriesQueue } from "../src/workloads/deliveries/queue.js";
import { makeOrdersQueue } from "../src/workloads/uploads/queue.js";
import { createTestDatabase, insertOrders, type TestDatabase } from "./helpers/db.js";

const BATCH = 1_500;
/** Rows in the table: at this size the misled planner picked the nested loop. */
const TABLE_ROWS = 20_000;

type Captured = { text: string; values: unknown[] };

/** A pool whose queries are recorded, so the test can EXPLAIN exactly what the queue sends. */
function recordingPool(pool: pg.Pool, log: Captured[]) {
  return {
    query(q: string | { text: string; values?: unknown[] }, values?: unknown[]) {
      const text = typeof q === "string" ? q : q.text;
      log.push({ text, values: (typeof q === "string" ? values : q.values) ?? [] });
      return pool.query(q as string, values);
    },
  } as unknown as pg.Pool;
}

interface PlanNode {
  "Node Type": string;
  "Actual Rows": number;
  "Actual Loops": number;
  "Rows Removed by Join Filter"?: number;
  Plans?: PlanNode[];
}

/** The most rows any node threw away after a join compared them, over the whole plan. */
function worstJoinFilter(node: PlanNode): number {
  const own = node["Rows Removed by Join Filter"] ?? 0;
  return Math.max(own, ...(node.Plans ?? []).map(worstJoinFilter));
}

async function explain(pool: pg.Pool, q: Captured): Promise<PlanNode> {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    const { rows } = await client.query(
      `EXPLAIN (ANALYZE, FORMAT JSON) ${q.text}`,
      q.values as unknown[],
    );
    return rows[0]["QUERY PLAN"][0].Plan as PlanNode;
  } finally {
    await client.query("ROLLBACK");
    client.release();
  }
}

async function checkQueue<Row extends ClaimedRow>(
  db: TestDatabase,
  make: (pool: pg.Pool) => LeaseQueue<Row>,
  table: string,
) {
  // Statistics from a moment when no row is leased: what a quiet production table has.
  await db.pool.query(`VACUUM ANALYZE ${table}`);
  const log: Captured[] = [];
  const queue = make(recordingPool(db.pool, log));
  const claimOptions = { limit: BATCH, leaseSeconds: 60, maxAttempts: 5 };

  const rows = await queue.claim("plan-test", claimOptions);
  expect(rows.length).toBe(BATCH);
  // Run again (rolled back), the claim takes the other half of the rows.
  const claimPlan = await explain(db.pool, log[log.length - 1] as Captured);
  expect(claimPlan["Actual Rows"]).toBe(BATCH);
  expect(worstJoinFilter(claimPlan)).toBeLessThan(BATCH);

  const outcomes: Outcome[] = rows.map((r, i) => {
    const attempt = queue.spec.attemptLog
      ? {
          attempt: {
            number: r.attempts,
            startedAt: new Date(),
            durationMs: 5,
            status: i % 3 === 0 ? 500 : 204,
            error: i % 3 === 0 ? "HTTP 500" : null,
            excerpt: i % 3 === 0 ? "boom" : null,
          },
        }
      : {};
    return i % 3 === 0
      ? { id: r.id, kind: "retry", at: new Date(Date.now() + 60_000), error: "again", ...attempt }
      : { id: r.id, kind: "success", ...attempt };
  });
  const result = await queue.finalize("plan-test", outcomes);
  expect(result.done.length).toBe(BATCH);
  const attemptLog = queue.spec.attemptLog;
  if (attemptLog) {
    const { rows: logged } = await db.pool.query(
      `SELECT count(*)::int AS n, count(DISTINCT ${attemptLog.key})::int AS rows,
         count(*) FILTER (WHERE status = 500 AND response_excerpt = 'boom')::int AS failed
       FROM ${attemptLog.table}`,
    );
    expect(logged[0]).toEqual({ n: BATCH, rows: BATCH, failed: BATCH / 3 });
  }
  const finalize = log.find((q) => /FOR UPDATE OF l SKIP LOCKED/.test(q.text)) as Captured;
  expect(finalize).toBeDefined();
  // A table without an attempt log keeps the plain UPDATE.
  expect(/\bINSERT INTO\b/.test(finalize.text)).toBe(Boolean(attemptLog));
  // The same statement again over rows leased to the same owner (re-leased for the test).
  await db.pool.query(`UPDATE ${table} SET locked_by = 'plan-test' WHERE id = ANY ($1::bigint[])`, [
    rows.map((r) => r.id),
  ]);
  const plan = await explain(db.pool, finalize);
  expect(plan["Actual Rows"]).toBe(BATCH);
  expect(worstJoinFilter(plan)).toBeLessThan(BATCH);
}

describe("claim and finalize plans", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });

  it("orders: no join compares the batch with itself", async () => {
    await insertOrders(db.pool, TABLE_ROWS);
    await checkQueue(db, makeOrdersQueue, "orders_inbox");
  });

  it("deliveries: no join compares the batch with itself", async () => {
    await db.pool.query("INSERT INTO webhook_subscriptions (url, secret) VALUES ($1, $2)", [
      "https://receiver.example/hook",
      newSecret(),
    ]);
    await db.pool.query(
      `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
       SELECT 'order', g::text, 'order.created', '{"n": 1}' FROM generate_series(1, $1::int) g`,
      [TABLE_ROWS],
    );
    await checkQueue(db, makeDeliveriesQueue, "webhook_deliveries");
  });
});

describe("claim and finalize commits", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });

  it("do not wait for the WAL flush; the session's other statements keep the server's setting", async () => {
    await insertOrders(db.pool, 3);
    const client = await db.pool.connect();
    try {
      const setting = async () =>
        (await client.query("SHOW synchronous_commit")).rows[0].synchronous_commit;
      const server = await setting();
      expect(server).not.toBe("off");
      // The statements run inside a transaction here, so the setting they make is visible.
      const queue = makeOrdersQueue(client as unknown as pg.Pool);
      await client.query("BEGIN");
      const rows = await queue.claim("sync-test", { limit: 3, leaseSeconds: 60, maxAttempts: 5 });
      expect(rows).toHaveLength(3);
      expect(await setting()).toBe("off");
      await client.query("COMMIT");
      expect(await setting()).toBe(server);
      await client.query("BEGIN");
      const result = await queue.finalize(
        "sync-test",
        rows.map((r) => ({ id: r.id, kind: "success" as const })),
      );
      expect(result.done).toHaveLength(3);
      expect(await setting()).toBe("off");
      await client.query("COMMIT");
      expect(await setting()).toBe(server);
    } finally {
      client.release();
    }
  });
});
