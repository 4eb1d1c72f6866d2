import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate } from "../src/db/migrate.js";
import {
  createTestDatabase,
  insertOrders,
  type TestDatabase,
  validPayload,
  waitFor,
} from "./helpers/db.js";

/** A LISTEN session of the test's own, recording what arrives on a channel. */
async function listen(url: string, channel: string) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const received: string[] = [];
  client.on("notification", (n) => {
    if (n.channel === channel) received.push(n.payload ?? "");
  });
  await client.query(`LISTEN ${channel}`);
  return {
    received,
    /** Sends a marker through the same channel and waits for it: everything before it has arrived. */
    async flush(pool: pg.Pool) {
      const marker = `{"marker":${Date.now()}${Math.random()}}`;
      await pool.query("SELECT pg_notify($1, $2)", [channel, marker]);
      await waitFor(() => received.includes(marker), { what: "the marker notification" });
      received.splice(received.indexOf(marker), 1);
    },
    close: () => client.end(),
  };
}

describe("orders_inbox triggers", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db.drop();
  });

  it("a 10,000-row INSERT sends exactly one tiny notification", async () => {
    const l = await listen(db.url, "reactor_orders");
    await insertOrders(db.pool, 10_000);
    await l.flush(db.pool);
    expect(l.received).toHaveLength(1);
    expect(JSON.parse(l.received[0] ?? "")).toEqual({ v: 1, table: "orders_inbox", op: "INSERT" });
    expect(Buffer.byteLength(l.received[0] ?? "")).toBeLessThan(100);
    await l.close();
  });

  it("a rolled-back transaction notifies nothing", async () => {
    const l = await listen(db.url, "reactor_orders");
    const client = await db.pool.connect();
    await client.query("BEGIN");
    await insertOrders(client, 5);
    await client.query("ROLLBACK");
    client.release();
    await l.flush(db.pool);
    expect(l.received).toHaveLength(0);
    await l.close();
  });

  it("re-queues a changed uploaded order, resets attempts, and notifies once per statement", async () => {
    const ids = await insertOrders(db.pool, 3);
    await db.pool.query(
      "UPDATE orders_inbox SET upload_state = 'uploaded', attempts = 2, last_error = 'x' WHERE id = ANY($1)",
      [ids],
    );
    const l = await listen(db.url, "reactor_orders");
    await db.pool.query(
      'UPDATE orders_inbox SET payload = payload || \'{"note":"gift"}\' WHERE id = ANY($1)',
      [ids],
    );
    await l.flush(db.pool);
    expect(l.received).toHaveLength(1);
    const { rows } = await db.pool.query(
      "SELECT upload_state, attempts, last_error FROM orders_inbox WHERE id = ANY($1)",
      [ids],
    );
    expect(
      rows.every((r) => r.upload_state === "pending" && r.attempts === 0 && r.last_error === null),
    ).toBe(true);
    await l.close();
  });

  it("does not re-queue shipped orders, nor notify for updates that change nothing claimable", async () => {
    const [id] = await insertOrders(db.pool, 1);
    await db.pool.query("UPDATE orders_inbox SET upload_state = 'uploaded' WHERE id = $1", [id]);
    const l = await listen(db.url, "reactor_orders");
    await db.pool.query("UPDATE orders_inbox SET status = 'shipped' WHERE id = $1", [id]);
    // A claim-like update (lease stamped) must not wake anyone.
    const [other] = await insertOrders(db.pool, 1, { payload: validPayload() });
    await l.flush(db.pool);
    l.received.length = 0;
    await db.pool.query(
      "UPDATE orders_inbox SET locked_by = 'x', locked_until = now() WHERE id = $1",
      [other],
    );
    await l.flush(db.pool);
    expect(l.received).toHaveLength(0);
    const { rows } = await db.pool.query("SELECT upload_state FROM orders_inbox WHERE id = $1", [
      id,
    ]);
    expect(rows[0].upload_state).toBe("uploaded");
    await l.close();
  });

  it("a retry of 10,000 failed orders sends exactly one notification (row triggers, collapsed by PostgreSQL)", async () => {
    const ids = await insertOrders(db.pool, 10_000);
    await db.pool.query(
      "UPDATE orders_inbox SET upload_state = 'failed', last_error = 'x' WHERE id = ANY($1)",
      [ids],
    );
    const l = await listen(db.url, "reactor_orders");
    await db.pool.query(
      "UPDATE orders_inbox SET upload_state = 'pending', next_attempt_at = now() WHERE id = ANY($1)",
      [ids],
    );
    await l.flush(db.pool);
    expect(l.received).toEqual(['{"v":1,"table":"orders_inbox","op":"UPDATE"}']);
    await l.close();
  });

  it("the UPDATE wake triggers are row triggers with a WHEN clause: claims and finalizes capture no transition table", async () => {
    const { rows } = await db.pool.query<{
      name: string;
      row_level: boolean;
      transition: boolean;
      def: string;
    }>(
      `SELECT tgname AS name, (tgtype::int & 1) = 1 AS row_level,
         (tgoldtable IS NOT NULL OR tgnewtable IS NOT NULL) AS transition,
         pg_get_triggerdef(oid) AS def
       FROM pg_trigger WHERE tgname IN ('reactor_orders_notify_update',
         'reactor_deliveries_notify_update', 'reactor_shipments_notify_update')
       ORDER BY tgname`,
    );
    expect(rows.map((r) => [r.name, r.row_level, r.transition])).toEqual([
      ["reactor_deliveries_notify_update", true, false],
      ["reactor_orders_notify_update", true, false],
      ["reactor_shipments_notify_update", true, false],
    ]);
    for (const r of rows) expect(r.def).toMatch(/WHEN \(\(\(new\.(upload_)?state = 'pending'/);
  });

  it("migrate replaces the statement UPDATE triggers of earlier versions with the row triggers", async () => {
    const old = await createTestDatabase();
    try {
      await old.pool.query(`
        DROP TRIGGER reactor_orders_notify_update ON orders_inbox;
        CREATE TRIGGER reactor_orders_notify_update AFTER UPDATE ON orders_inbox
          REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
          FOR EACH STATEMENT EXECUTE FUNCTION reactor_orders_notify_update();
        UPDATE reactor_sql_files SET checksum = 'an earlier version'`);
      expect((await migrate(old.url)).sqlApplied).toContain("070_wake_source.sql");
      const { rows } = await old.pool.query(
        `SELECT (tgtype::int & 1) = 1 AS row_level, tgoldtable IS NULL AS no_transition
         FROM pg_trigger WHERE tgname = 'reactor_orders_notify_update'`,
      );
      expect(rows).toEqual([{ row_level: true, no_transition: true }]);
      // And it wakes as before: a released lease notifies once.
      const [id] = await insertOrders(old.pool, 1);
      await old.pool.query("UPDATE orders_inbox SET locked_by = 'x' WHERE id = $1", [id]);
      const l = await listen(old.url, "reactor_orders");
      await old.pool.query("UPDATE orders_inbox SET locked_by = NULL WHERE id = $1", [id]);
      await l.flush(old.pool);
      expect(l.received).toHaveLength(1);
      await l.close();
    } finally {
      await old.drop();
    }
  });

  it("the claim query uses the partial index on due pending rows", async () => {
    await db.pool.query("ANALYZE orders_inbox");
    const client = await db.pool.connect();
    try {
      await client.query("SET enable_seqscan = off");
      const { rows } = await client.query(`EXPLAIN SELECT id FROM orders_inbox
        WHERE upload_state = 'pending' AND next_attempt_at <= now()
        ORDER BY next_attempt_at, id LIMIT 100`);
      expect(rows.map((r) => r["QUERY PLAN"]).join("\n")).toMatch(/orders_inbox_due_idx/);
    } finally {
      await client.query("RESET enable_seqscan");
      client.release();
    }
  });

  it("reactor_json_text works in a parallel query (it opens a subtransaction, so it is not parallel safe)", async () => {
    await insertOrders(db.pool, 20_000);
    await db.pool.query("ANALYZE orders_inbox");
    const client = await db.pool.connect();
    try {
      await client.query("BEGIN");
      // Every cost that keeps a small table's scan serial, zeroed: the plan goes parallel
      // whenever the function lets it.
      for (const setting of [
        "parallel_setup_cost = 0",
        "parallel_tuple_cost = 0",
        "min_parallel_table_scan_size = 0",
        "max_parallel_workers_per_gather = 2",
        "enable_seqscan = on",
      ]) {
        await client.query(`SET LOCAL ${setting}`);
      }
      // The same query without the function is planned parallel: the test can fail.
      const plan = await client.query("EXPLAIN SELECT count(payload::text) FROM orders_inbox");
      expect(plan.rows.map((r) => r["QUERY PLAN"]).join("\n")).toMatch(/Gather/);
      const { rows } = await client.query<{ n: string }>(
        "SELECT count(reactor_json_text(payload, 1000000)) AS n FROM orders_inbox",
      );
      expect(Number(rows[0]?.n)).toBeGreaterThanOrEqual(20_000);
    } finally {
      await client.query("ROLLBACK");
      client.release();
    }
  });
});
