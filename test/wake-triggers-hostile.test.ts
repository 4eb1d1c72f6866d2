// The UPDATE wake triggers (row triggers with a WHEN clause, sql/070_wake_source.sql) and
// the work tables' fillfactor (drizzle/0007_queue_fillfactor.sql) attacked as users and
// operators would: every way a row becomes claimable must wake once, the reactor's own
// writes must not, a huge retry must send one notification, installs of earlier versions
// (statement triggers) must upgrade without a wake storm, and switching the wake source
// back and forth must leave the right triggers. Runs on any server: the `wal` side is
// switched with reactor_apply_wake_source, which needs no logical decoding; only the
// configuration row's path to wal needs wal_level = logical and is skipped without it.
import type { AddressInfo } from "node:net";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { migrate } from "../src/db/migrate.js";
import { serverUrl, startStatusServer } from "../src/http/server.js";
import { NOTIFY_TRIGGERS, switchWakeSource, walMissing } from "../src/reactor/wake-source.js";
import { makeDeliveriesQueue } from "../src/workloads/deliveries/queue.js";
import { makeNotificationsQueue } from "../src/workloads/shipments/queue.js";
import { makeOrdersQueue } from "../src/workloads/uploads/queue.js";
import {
  createTestDatabase,
  insertOrders,
  subscribe,
  type TestDatabase,
  waitFor,
} from "./helpers/db.js";
import { startReactor } from "./helpers/reactor.js";

/** Marks every pending row of the three work tables finished: a test starts from none. */
async function finishPending(pool: pg.Pool) {
  await pool.query(
    "UPDATE orders_inbox SET upload_state = 'uploaded' WHERE upload_state = 'pending'",
  );
  await pool.query("UPDATE webhook_deliveries SET state = 'delivered' WHERE state = 'pending'");
  await pool.query("UPDATE shipstation_notifications SET state = 'done' WHERE state = 'pending'");
}

const ORDERS = '{"v":1,"table":"orders_inbox","op":"UPDATE"}';
const DELIVERIES = '{"v":1,"table":"webhook_deliveries","op":"UPDATE"}';
const SHIPMENTS = '{"v":1,"table":"shipstation_notifications","op":"UPDATE"}';
const CHANNELS = ["reactor_orders", "reactor_deliveries", "reactor_shipments"] as const;

/** A LISTEN session on the three work channels, recording payloads per channel. */
async function listenAll(url: string) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const received: Record<string, string[]> = {};
  for (const c of CHANNELS) received[c] = [];
  client.on("notification", (n) => received[n.channel]?.push(n.payload ?? ""));
  for (const c of CHANNELS) await client.query(`LISTEN ${c}`);
  return {
    received,
    /** Everything committed before this call has arrived once a marker on each channel has. */
    async flush(pool: pg.Pool) {
      for (const c of CHANNELS) {
        const marker = `{"marker":"${Date.now()}${Math.random()}"}`;
        await pool.query("SELECT pg_notify($1, $2)", [c, marker]);
        await waitFor(() => received[c]?.includes(marker), { what: `the marker on ${c}` });
        received[c]?.splice(received[c].indexOf(marker), 1);
      }
    },
    clear() {
      for (const c of CHANNELS) received[c]?.splice(0);
    },
    close: () => client.end(),
  };
}

type Listener = Awaited<ReturnType<typeof listenAll>>;

/** One failed delivery (an event fanned out to one subscription). */
async function failedDeliveries(pool: pg.Pool, count: number): Promise<number[]> {
  await pool.query(
    `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
     SELECT 'order', g::text, 'order.hostile', '{}'::jsonb FROM generate_series(1, $1::int) g`,
    [count],
  );
  const { rows } = await pool.query<{ id: string }>(
    `UPDATE webhook_deliveries SET state = 'failed', last_error = 'x'
     WHERE state = 'pending' RETURNING id`,
  );
  return rows.map((r) => Number(r.id));
}

async function failedNotifications(pool: pg.Pool, count: number): Promise<number[]> {
  const { rows } = await pool.query<{ id: string }>(
    `INSERT INTO shipstation_notifications (resource_type, resource_url, state, last_error)
     SELECT 'SHIP_NOTIFY', 'http://127.0.0.1:9/shipments?batch=' || g, 'failed', 'x'
     FROM generate_series(1, $1::int) g RETURNING id`,
    [count],
  );
  return rows.map((r) => Number(r.id));
}

/** The three UPDATE triggers as (name, row level, has transition tables, function). */
async function updateTriggers(pool: pg.Pool) {
  const { rows } = await pool.query<{ name: string; row: boolean; transition: boolean }>(
    `SELECT tgname AS name, (tgtype::int & 1) = 1 AS row,
       (tgoldtable IS NOT NULL OR tgnewtable IS NOT NULL) AS transition
     FROM pg_trigger WHERE tgname IN ('reactor_orders_notify_update',
       'reactor_deliveries_notify_update', 'reactor_shipments_notify_update')
     ORDER BY tgname`,
  );
  return rows.map((r) => `${r.name}:${r.row ? "row" : "statement"}${r.transition ? "+tt" : ""}`);
}

const ROW_TRIGGERS = [
  "reactor_deliveries_notify_update:row",
  "reactor_orders_notify_update:row",
  "reactor_shipments_notify_update:row",
];

/**
 * Puts the UPDATE triggers back as releases before 983ad9a installed them: statement
 * triggers with transition tables, bound to the functions of those releases' names.
 */
async function installStatementTriggers(pool: pg.Pool) {
  await pool.query(`
    DROP TRIGGER reactor_orders_notify_update ON orders_inbox;
    CREATE TRIGGER reactor_orders_notify_update AFTER UPDATE ON orders_inbox
      REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
      FOR EACH STATEMENT EXECUTE FUNCTION reactor_orders_notify_update();
    DROP TRIGGER reactor_deliveries_notify_update ON webhook_deliveries;
    CREATE TRIGGER reactor_deliveries_notify_update AFTER UPDATE ON webhook_deliveries
      REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
      FOR EACH STATEMENT EXECUTE FUNCTION reactor_deliveries_notify_update();
    DROP TRIGGER reactor_shipments_notify_update ON shipstation_notifications;
    CREATE TRIGGER reactor_shipments_notify_update AFTER UPDATE ON shipstation_notifications
      REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
      FOR EACH STATEMENT EXECUTE FUNCTION reactor_shipments_notify_update();`);
}

describe("every way a row becomes claimable wakes once; the reactor's own writes never", () => {
  let db: TestDatabase;
  let l: Listener;
  beforeAll(async () => {
    db = await createTestDatabase();
    await subscribe(db.pool, "http://127.0.0.1:9/hook");
    l = await listenAll(db.url);
  });
  afterAll(async () => {
    await l?.close();
    await db?.drop();
  });

  it("manual retries of failed rows on all three tables, in SQL: one notification per channel", async () => {
    const orders = await insertOrders(db.pool, 50);
    await db.pool.query(
      "UPDATE orders_inbox SET upload_state = 'failed', last_error = 'x' WHERE id = ANY($1)",
      [orders],
    );
    const deliveries = await failedDeliveries(db.pool, 50);
    const notes = await failedNotifications(db.pool, 50);
    await l.flush(db.pool);
    l.clear();
    await db.pool.query(
      "UPDATE orders_inbox SET upload_state = 'pending', attempts = 0, next_attempt_at = now() WHERE id = ANY($1)",
      [orders],
    );
    await db.pool.query(
      "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = now() WHERE id = ANY($1)",
      [deliveries],
    );
    await db.pool.query(
      "UPDATE shipstation_notifications SET state = 'pending', next_attempt_at = now() WHERE id = ANY($1)",
      [notes],
    );
    await l.flush(db.pool);
    expect(l.received).toEqual({
      reactor_orders: [ORDERS],
      reactor_deliveries: [DELIVERIES],
      reactor_shipments: [SHIPMENTS],
    });
  });

  it("a lease released at shutdown, and a content change of an uploaded or failed order, wake", async () => {
    const [leased, uploaded, failed] = await insertOrders(db.pool, 3);
    await db.pool.query(
      "UPDATE orders_inbox SET locked_by = 'stopping', locked_until = now() + interval '1 min' WHERE id = $1",
      [leased],
    );
    await db.pool.query(
      "UPDATE orders_inbox SET upload_state = 'uploaded', uploaded_at = now() WHERE id = $1",
      [uploaded],
    );
    await db.pool.query("UPDATE orders_inbox SET upload_state = 'failed' WHERE id = $1", [failed]);
    for (const [what, sql, id] of [
      [
        "release",
        "UPDATE orders_inbox SET locked_by = NULL, locked_until = NULL WHERE id = $1",
        leased,
      ],
      ["uploaded changed", "UPDATE orders_inbox SET status = 'on_hold' WHERE id = $1", uploaded],
      [
        "failed changed",
        "UPDATE orders_inbox SET payload = payload || '{\"x\":1}' WHERE id = $1",
        failed,
      ],
    ] as const) {
      await l.flush(db.pool);
      l.clear();
      await db.pool.query(sql, [id]);
      await l.flush(db.pool);
      expect([what, l.received.reactor_orders]).toEqual([what, [ORDERS]]);
    }
  });

  // FIXED (was): the WHEN clause (as the statement triggers before it) woke only rows
  // that were in another state or leased. An operator moving waiting retries to now
  // (`UPDATE ... SET next_attempt_at = now()` after fixing an endpoint) made them
  // claimable without a wake: the reactor's retry timer still pointed at the old time,
  // so they waited for the safety poll (30 s by default), while the `wal` reader wakes
  // on the same commit. Expected one notification per table, got none.
  it("waiting retries moved to now wake once per table; moved to another later time, or a due row touched, do not", async () => {
    await finishPending(db.pool);
    const orders = await insertOrders(db.pool, 5);
    const deliveries = await failedDeliveries(db.pool, 5);
    const notes = await failedNotifications(db.pool, 5);
    const tables = [
      ["orders_inbox", "upload_state", orders],
      ["webhook_deliveries", "state", deliveries],
      ["shipstation_notifications", "state", notes],
    ] as const;
    for (const [table, state, ids] of tables) {
      await db.pool.query(
        `UPDATE ${table} SET ${state} = 'pending', next_attempt_at = now() + interval '1 hour' WHERE id = ANY($1)`,
        [ids],
      );
    }
    await l.flush(db.pool);
    l.clear();
    for (const [table, , ids] of tables) {
      await db.pool.query(
        `UPDATE ${table} SET next_attempt_at = now() + interval '2 hours' WHERE id = ANY($1)`,
        [ids],
      );
    }
    await l.flush(db.pool);
    expect(l.received).toEqual({
      reactor_orders: [],
      reactor_deliveries: [],
      reactor_shipments: [],
    });
    for (const [table, , ids] of tables) {
      await db.pool.query(`UPDATE ${table} SET next_attempt_at = now() WHERE id = ANY($1)`, [ids]);
    }
    await l.flush(db.pool);
    expect(l.received).toEqual({
      reactor_orders: [ORDERS],
      reactor_deliveries: [DELIVERIES],
      reactor_shipments: [SHIPMENTS],
    });
    l.clear();
    // Already claimable: moving the time earlier still, or touching the row, wakes nothing.
    for (const [table, , ids] of tables) {
      await db.pool.query(
        `UPDATE ${table} SET next_attempt_at = next_attempt_at - interval '1 minute', last_error = 'touched' WHERE id = ANY($1)`,
        [ids],
      );
    }
    await l.flush(db.pool);
    expect(l.received).toEqual({
      reactor_orders: [],
      reactor_deliveries: [],
      reactor_shipments: [],
    });
  });

  it("many statements of one transaction send one notification; a rollback or a rolled-back savepoint sends none", async () => {
    const ids = await insertOrders(db.pool, 30);
    await db.pool.query("UPDATE orders_inbox SET upload_state = 'failed' WHERE id = ANY($1)", [
      ids,
    ]);
    const client = await db.pool.connect();
    const retry = "UPDATE orders_inbox SET upload_state = 'pending' WHERE id = $1";
    try {
      await l.flush(db.pool);
      l.clear();
      await client.query("BEGIN");
      for (const id of ids.slice(0, 10)) await client.query(retry, [id]);
      await client.query("COMMIT");
      await l.flush(db.pool);
      expect(l.received.reactor_orders).toEqual([ORDERS]);

      l.clear();
      await client.query("BEGIN");
      for (const id of ids.slice(10, 15)) await client.query(retry, [id]);
      await client.query("ROLLBACK");
      await l.flush(db.pool);
      expect(l.received.reactor_orders).toEqual([]);

      // Only the savepoint's retries: rolled back, nothing.
      await client.query("BEGIN");
      await client.query("SAVEPOINT a");
      for (const id of ids.slice(15, 20)) await client.query(retry, [id]);
      await client.query("ROLLBACK TO SAVEPOINT a");
      await client.query("COMMIT");
      await l.flush(db.pool);
      expect(l.received.reactor_orders).toEqual([]);

      // Retries in released savepoints and outside them: still one.
      await client.query("BEGIN");
      for (const id of ids.slice(20, 25)) {
        await client.query("SAVEPOINT b");
        await client.query(retry, [id]);
        await client.query("RELEASE SAVEPOINT b");
      }
      await client.query(retry, [ids[25]]);
      await client.query("COMMIT");
      await l.flush(db.pool);
      expect(l.received.reactor_orders).toEqual([ORDERS]);
    } finally {
      await client.query("ROLLBACK").catch(() => undefined);
      client.release();
    }
  });

  it("the reactor's claims, renewals, finalizes (success, retry later, failed) and a release of nothing send nothing on any table", async () => {
    await finishPending(db.pool);
    await insertOrders(db.pool, 6);
    await failedDeliveries(db.pool, 6);
    await db.pool.query("UPDATE webhook_deliveries SET state = 'pending' WHERE state = 'failed'");
    await failedNotifications(db.pool, 6);
    await db.pool.query(
      "UPDATE shipstation_notifications SET state = 'pending' WHERE state = 'failed'",
    );
    await l.flush(db.pool);
    l.clear();
    const later = new Date(Date.now() + 3_600_000);
    for (const queue of [
      makeOrdersQueue(db.pool),
      makeDeliveriesQueue(db.pool),
      makeNotificationsQueue(db.pool),
    ]) {
      const rows = await queue.claim("me", { limit: 10, leaseSeconds: 60, maxAttempts: 5 });
      expect(rows.length, queue.spec.table).toBe(6);
      expect(
        await queue.renew(
          "me",
          rows.map((r) => r.id),
          120,
        ),
      ).toHaveLength(6);
      const [a, b, c, d, e, f] = rows.map((r) => r.id) as [number, ...number[]];
      const result = await queue.finalize("me", [
        { id: a, kind: "success" },
        { id: b as number, kind: "retry", at: later, error: "later" },
        { id: c as number, kind: "failed", error: "no" },
        { id: d as number, kind: "defer", at: later },
      ]);
      expect(result.done).toHaveLength(4);
      // A claim that finds nothing, and a release of what is left in the future.
      expect(await queue.claim("me", { limit: 10, leaseSeconds: 60, maxAttempts: 5 })).toEqual([]);
      await queue.finalize("me", [
        { id: e as number, kind: "retry", at: later, error: "later" },
        { id: f as number, kind: "success" },
      ]);
      expect(await queue.release("me")).toBe(0);
    }
    await l.flush(db.pool);
    expect(l.received).toEqual({
      reactor_orders: [],
      reactor_deliveries: [],
      reactor_shipments: [],
    });
  });

  // As with the statement triggers before: a row handed back due now is claimable now, so
  // it wakes (once per transaction). The reactor defers only to a future time (a pause's or
  // a rate limit's end), so this is no loop; a defer to the past is a retry asked for.
  it("a finalize that hands rows back due now (defer or retry at a past time) wakes once, as the statement triggers did", async () => {
    await db.pool.query(
      "UPDATE orders_inbox SET upload_state = 'uploaded' WHERE upload_state = 'pending'",
    );
    await insertOrders(db.pool, 3);
    const queue = makeOrdersQueue(db.pool);
    const rows = await queue.claim("me", { limit: 10, leaseSeconds: 60, maxAttempts: 5 });
    expect(rows).toHaveLength(3);
    await l.flush(db.pool);
    l.clear();
    const past = new Date(Date.now() - 60_000);
    await queue.finalize("me", [
      { id: rows[0]?.id as number, kind: "defer", at: past },
      { id: rows[1]?.id as number, kind: "retry", at: past, error: "now" },
      { id: rows[2]?.id as number, kind: "success" },
    ]);
    await l.flush(db.pool);
    expect(l.received.reactor_orders).toEqual([ORDERS]);
  });

  it("a retry of 100,000 failed orders sends one notification (time reported)", async () => {
    await db.pool.query(
      "UPDATE orders_inbox SET upload_state = 'uploaded' WHERE upload_state <> 'uploaded'",
    );
    const ids = await insertOrders(db.pool, 100_000);
    await db.pool.query(
      "UPDATE orders_inbox SET upload_state = 'failed', last_error = 'x' WHERE id = ANY($1)",
      [ids],
    );
    await l.flush(db.pool);
    l.clear();
    const started = performance.now();
    const { rowCount } = await db.pool.query(
      "UPDATE orders_inbox SET upload_state = 'pending', attempts = 0, next_attempt_at = now() WHERE upload_state = 'failed'",
    );
    const ms = performance.now() - started;
    expect(rowCount).toBe(100_000);
    await l.flush(db.pool);
    expect(l.received.reactor_orders).toEqual([ORDERS]);
    process.stdout.write(
      `retry of 100,000 failed orders with the row wake trigger: ${ms.toFixed(0)} ms\n`,
    );
    // The same retry through the statement trigger with transition tables of earlier
    // versions, and without any UPDATE wake trigger, for comparison.
    await db.pool.query(
      "UPDATE orders_inbox SET upload_state = 'failed' WHERE upload_state = 'pending'",
    );
    await installStatementTriggers(db.pool);
    try {
      const t0 = performance.now();
      await db.pool.query(
        "UPDATE orders_inbox SET upload_state = 'pending', attempts = 0, next_attempt_at = now() WHERE upload_state = 'failed'",
      );
      process.stdout.write(
        `the same retry with the earlier statement trigger: ${(performance.now() - t0).toFixed(0)} ms\n`,
      );
    } finally {
      await db.pool.query("SELECT reactor_apply_wake_source('notify')");
    }
    expect(await updateTriggers(db.pool)).toEqual(ROW_TRIGGERS);
    await db.pool.query(
      "UPDATE orders_inbox SET upload_state = 'failed' WHERE upload_state = 'pending'",
    );
    await db.pool.query("ALTER TABLE orders_inbox DISABLE TRIGGER reactor_orders_notify_update");
    try {
      const t0 = performance.now();
      await db.pool.query(
        "UPDATE orders_inbox SET upload_state = 'pending', attempts = 0, next_attempt_at = now() WHERE upload_state = 'failed'",
      );
      process.stdout.write(
        `the same retry with no wake trigger: ${(performance.now() - t0).toFixed(0)} ms\n`,
      );
    } finally {
      await db.pool.query("ALTER TABLE orders_inbox ENABLE TRIGGER reactor_orders_notify_update");
    }
    await db.pool.query("DELETE FROM orders_inbox WHERE id = ANY($1)", [ids]);
  }, 40_000);
});

describe("a running reactor and the admin API", () => {
  let db: TestDatabase;
  let app: App;
  let base: string;
  let server: Awaited<ReturnType<typeof startStatusServer>>;
  const token = "wake-triggers-admin-token-0123456789";
  beforeAll(async () => {
    db = await createTestDatabase();
    app = await startReactor({ databaseUrl: db.url, env: { ADMIN_TOKEN: token } });
    server = await startStatusServer(app, app.logger);
    base = serverUrl(server);
  });
  afterAll(async () => {
    await server?.close();
    await app?.stop(1_000);
    await db?.drop();
  });

  it("POST /admin/orders/:id/retry and /admin/orders/retry each wake once; the reactor's claim and scheduled retry of them do not", async () => {
    expect((server.server.address() as AddressInfo).port).toBeGreaterThan(0);
    const ids = await insertOrders(db.pool, 3);
    // Nothing answers at 127.0.0.1:9: each upload fails and is retried later, then failed here.
    await waitFor(
      async () =>
        (
          await db.pool.query(
            "SELECT count(*)::int AS n FROM orders_inbox WHERE id = ANY($1) AND attempts >= 1 AND locked_by IS NULL",
            [ids],
          )
        ).rows[0].n === 3,
      { what: "the first upload attempts" },
    );
    await db.pool.query("UPDATE orders_inbox SET upload_state = 'failed' WHERE id = ANY($1)", [
      ids,
    ]);
    const l = await listenAll(db.url);
    try {
      const post = (path: string, body?: unknown) =>
        fetch(`${base}${path}`, {
          method: "POST",
          headers: {
            authorization: `Bearer ${token}`,
            ...(body ? { "content-type": "application/json" } : {}),
          },
          body: body ? JSON.stringify(body) : undefined,
        });
      const attemptsOf = async (id: number) =>
        (
          await db.pool.query(
            "SELECT upload_state, attempts, locked_by FROM orders_inbox WHERE id = $1",
            [id],
          )
        ).rows[0];

      expect((await post(`/admin/orders/${ids[0]}/retry`)).status).toBe(200);
      // The reactor was woken: it claims and tries the row again, and schedules a retry.
      await waitFor(
        async () => {
          const r = await attemptsOf(ids[0] as number);
          return r.upload_state === "pending" && r.attempts >= 1 && r.locked_by === null;
        },
        { what: "the retried order's new attempt", timeoutMs: 10_000 },
      );
      await l.flush(db.pool);
      expect(l.received.reactor_orders).toEqual([ORDERS]);

      l.clear();
      const bulk = await post("/admin/orders/retry", { all: true });
      expect(bulk.status).toBe(200);
      await waitFor(
        async () =>
          (
            await db.pool.query(
              "SELECT count(*)::int AS n FROM orders_inbox WHERE id = ANY($1) AND upload_state = 'pending' AND attempts >= 1 AND locked_by IS NULL",
              [ids.slice(1)],
            )
          ).rows[0].n === 2,
        { what: "the bulk-retried orders' new attempts", timeoutMs: 10_000 },
      );
      await l.flush(db.pool);
      expect(l.received.reactor_orders).toEqual([ORDERS]);
    } finally {
      await l.close();
    }
  });
});

describe("installs of earlier versions, switching the wake source, migrate", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });

  // FIXED (was): migrate applies the sql/ files one transaction each. Once 010/020/060
  // had replaced the functions with ones that notify unconditionally, the statement
  // triggers of an earlier install still called them until 070 replaced the triggers;
  // when 070 could not (a transaction holding one of the tables past its 5 s lock
  // timeout), every UPDATE statement, a claim that found nothing included, sent a NOTIFY:
  // the replicas woke themselves in a loop. Expected no notification from the claim,
  // got one per statement.
  it("a migrate whose 070 gives up on a lock leaves an earlier install's statement triggers working, without waking on claims", async () => {
    const old = await createTestDatabase();
    const l = await listenAll(old.url);
    const holder = await old.pool.connect();
    try {
      await installStatementTriggers(old.pool);
      await old.pool.query("UPDATE reactor_sql_files SET checksum = 'an earlier version'");
      await holder.query("BEGIN");
      await holder.query("LOCK TABLE shipstation_notifications IN ROW EXCLUSIVE MODE");
      await expect(migrate(old.url)).rejects.toThrow(/070_wake_source/);
      await holder.query("ROLLBACK");
      expect(await updateTriggers(old.pool)).toEqual([
        "reactor_deliveries_notify_update:statement+tt",
        "reactor_orders_notify_update:statement+tt",
        "reactor_shipments_notify_update:statement+tt",
      ]);
      const [id] = await insertOrders(old.pool, 1);
      await l.flush(old.pool);
      l.clear();
      const queue = makeOrdersQueue(old.pool);
      const claimed = await queue.claim("me", { limit: 5, leaseSeconds: 60, maxAttempts: 5 });
      expect(claimed.map((r) => r.id)).toEqual([id]);
      expect(await queue.claim("me", { limit: 5, leaseSeconds: 60, maxAttempts: 5 })).toEqual([]);
      await queue.finalize("me", [
        { id: id as number, kind: "retry", at: new Date(Date.now() + 60_000), error: "later" },
      ]);
      await old.pool.query("UPDATE webhook_deliveries SET state = state WHERE false");
      await old.pool.query("UPDATE shipstation_notifications SET state = state WHERE false");
      await l.flush(old.pool);
      expect(l.received).toEqual({
        reactor_orders: [],
        reactor_deliveries: [],
        reactor_shipments: [],
      });
      // A manual retry still wakes, through the old trigger.
      await old.pool.query("UPDATE orders_inbox SET upload_state = 'failed' WHERE id = $1", [id]);
      await l.flush(old.pool);
      expect(l.received.reactor_orders).toEqual([]);
      await old.pool.query(
        "UPDATE orders_inbox SET upload_state = 'pending', next_attempt_at = now() WHERE id = $1",
        [id],
      );
      await l.flush(old.pool);
      expect(l.received.reactor_orders).toEqual([ORDERS]);
      // The next migrate finishes the job.
      expect((await migrate(old.url)).sqlApplied).toContain("070_wake_source.sql");
      expect(await updateTriggers(old.pool)).toEqual(ROW_TRIGGERS);
    } finally {
      await holder.query("ROLLBACK").catch(() => undefined);
      holder.release();
      await l.close();
      await old.drop();
    }
  }, 30_000);

  // FIXED (was): the row triggers called the functions of the statement triggers' names,
  // with new bodies. A replica of the earlier version that started again (a rolling
  // deploy, a crash) re-ran its own sql/ files: its 010 put back a body that reads the
  // transition tables, and its 070, counting five triggers by name, kept the row
  // triggers. Every manual retry and released lease then failed with `relation
  // "new_rows" does not exist`. Expected the retry to succeed, got that error.
  it("an earlier version's function bodies put back by its migrate do not break the row triggers", async () => {
    const l = await listenAll(db.url);
    try {
      // Those releases' function, as their 010 defines it.
      await db.pool.query(`
        CREATE OR REPLACE FUNCTION reactor_orders_notify_update() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
          IF EXISTS (
            SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
            WHERE n.upload_state = 'pending' AND n.locked_by IS NULL AND n.next_attempt_at <= now()
              AND (o.upload_state <> 'pending' OR o.locked_by IS NOT NULL)
          ) THEN
            PERFORM pg_notify('reactor_orders', '{"v":1,"table":"orders_inbox","op":"UPDATE"}');
          END IF;
          RETURN NULL;
        END
        $$;`);
      const [id] = await insertOrders(db.pool, 1);
      await db.pool.query("UPDATE orders_inbox SET upload_state = 'failed' WHERE id = $1", [id]);
      await l.flush(db.pool);
      l.clear();
      await db.pool.query("UPDATE orders_inbox SET upload_state = 'pending' WHERE id = $1", [id]);
      await l.flush(db.pool);
      expect(l.received.reactor_orders).toEqual([ORDERS]);
    } finally {
      await l.close();
      await db.pool.query("UPDATE reactor_sql_files SET checksum = 'changed'");
      await migrate(db.url);
    }
  });

  it("an install of 983ad9a (row triggers calling the functions earlier versions redefine) is rebound by migrate", async () => {
    await db.pool.query(`
      DROP TRIGGER reactor_orders_notify_update ON orders_inbox;
      CREATE TRIGGER reactor_orders_notify_update AFTER UPDATE ON orders_inbox FOR EACH ROW
        WHEN (NEW.upload_state = 'pending' AND NEW.locked_by IS NULL AND NEW.next_attempt_at <= now()
              AND (OLD.upload_state <> 'pending' OR OLD.locked_by IS NOT NULL))
        EXECUTE FUNCTION reactor_orders_notify_update();
      UPDATE reactor_sql_files SET checksum = 'an earlier version' WHERE name = '070_wake_source.sql';`);
    expect((await migrate(db.url)).sqlApplied).toEqual(["070_wake_source.sql"]);
    const { rows } = await db.pool.query(
      `SELECT tgfoid::regproc::text AS fn, pg_get_triggerdef(oid) AS def FROM pg_trigger
       WHERE tgname = 'reactor_orders_notify_update'`,
    );
    expect(rows).toHaveLength(1);
    expect(rows[0].fn).toBe("reactor_orders_wake_update");
    expect(rows[0].def).toContain("old.next_attempt_at > now()");
  });

  it("notify -> wal -> notify, repeated and over an earlier install's statement triggers, ends with the row triggers that wake", async () => {
    const notifyTriggers = async () =>
      (
        await db.pool.query<{ tgname: string }>(
          "SELECT tgname FROM pg_trigger WHERE tgname = ANY($1) ORDER BY tgname",
          [NOTIFY_TRIGGERS],
        )
      ).rows.map((r) => r.tgname);
    await installStatementTriggers(db.pool);
    for (let i = 0; i < 3; i++) {
      await db.pool.query("SELECT reactor_apply_wake_source('wal')");
      expect(await notifyTriggers()).toEqual([]);
      await db.pool.query("SELECT reactor_apply_wake_source('notify')");
      expect(await notifyTriggers()).toEqual([...NOTIFY_TRIGGERS]);
      expect(await updateTriggers(db.pool)).toEqual(ROW_TRIGGERS);
      if (i === 0) await installStatementTriggers(db.pool);
    }
    // Applying notify where it is in force changes nothing (no DDL, no table lock).
    const client = await db.pool.connect();
    try {
      await client.query("BEGIN");
      await client.query("SELECT reactor_apply_wake_source('notify')");
      const { rows } = await client.query(
        `SELECT count(*)::int AS n FROM pg_locks WHERE pid = pg_backend_pid()
         AND relation IN ('orders_inbox'::regclass, 'webhook_deliveries'::regclass,
                          'shipstation_notifications'::regclass)`,
      );
      expect(rows[0].n).toBe(0);
      await client.query("COMMIT");
    } finally {
      client.release();
    }
    const l = await listenAll(db.url);
    try {
      const [id] = await insertOrders(db.pool, 1);
      await db.pool.query("UPDATE orders_inbox SET locked_by = 'x' WHERE id = $1", [id]);
      await l.flush(db.pool);
      l.clear();
      await db.pool.query("UPDATE orders_inbox SET locked_by = NULL WHERE id = $1", [id]);
      await l.flush(db.pool);
      expect(l.received.reactor_orders).toEqual([ORDERS]);
    } finally {
      await l.close();
    }
  });

  it("switching through the configuration row (wal needs wal_level = logical)", async (ctx) => {
    const missing = await walMissing(db.pool);
    if (missing) ctx.skip(`this server cannot run wal mode: ${missing}`);
    await installStatementTriggers(db.pool);
    for (let i = 0; i < 2; i++) {
      await switchWakeSource(db.pool, "wal");
      expect(await updateTriggers(db.pool)).toEqual([]);
      await switchWakeSource(db.pool, "notify");
      expect(await updateTriggers(db.pool)).toEqual(ROW_TRIGGERS);
    }
    await db.pool.query(
      "DELETE FROM configuration_params WHERE category = 'reactor' AND parameter_name = 'wake_source'",
    );
    expect(await updateTriggers(db.pool)).toEqual(ROW_TRIGGERS);
  });

  it("migrate twice applies nothing the second time; two concurrent migrates of an earlier install both succeed", async () => {
    expect((await migrate(db.url)).sqlApplied).toEqual([]);
    await installStatementTriggers(db.pool);
    await db.pool.query("UPDATE reactor_sql_files SET checksum = 'an earlier version'");
    const [a, b] = await Promise.all([migrate(db.url), migrate(db.url)]);
    expect([a.sqlApplied.length > 0, b.sqlApplied.length > 0].sort()).toEqual([false, true]);
    expect(await updateTriggers(db.pool)).toEqual(ROW_TRIGGERS);
    expect((await migrate(db.url)).sqlApplied).toEqual([]);
  });
});

describe("fillfactor 50 and 40 (drizzle/0007_queue_fillfactor.sql)", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
    await subscribe(db.pool, "http://127.0.0.1:9/hook");
  });
  afterAll(async () => {
    await db?.drop();
  });

  /** Claims 300 fresh rows of the table in one transaction; counts its (HOT) updates. */
  async function claimCounts(
    make: typeof makeOrdersQueue | typeof makeDeliveriesQueue | typeof makeNotificationsQueue,
  ) {
    const client = await db.pool.connect();
    try {
      const queue = make(client as unknown as pg.Pool);
      await client.query("BEGIN");
      const rows = await queue.claim("hot", { limit: 300, leaseSeconds: 60, maxAttempts: 5 });
      expect(rows).toHaveLength(300);
      const { rows: counts } = await client.query(
        `SELECT pg_stat_get_xact_tuples_updated($1::regclass)::int AS updated,
           pg_stat_get_xact_tuples_hot_updated($1::regclass)::int AS hot`,
        [queue.spec.table],
      );
      return counts[0];
    } finally {
      await client.query("ROLLBACK");
      client.release();
    }
  }

  // A claim changes no indexed column, so with room on the row's page it adds no index
  // entry at all; on full pages (the default fillfactor of 100) every claim wrote one into
  // each of the table's indexes.
  it("a claim of 300 freshly inserted orders updates every row in place, without index entries", async () => {
    await insertOrders(db.pool, 300);
    expect(await claimCounts(makeOrdersQueue)).toEqual({ updated: 300, hot: 300 });
  });

  // FIXED (was: 280 of 300 claims HOT at fillfactor 50, PostgreSQL 15): fillfactor 40.
  it("a claim of 300 fresh shipment notifications is HOT throughout", async () => {
    await db.pool.query(
      `INSERT INTO shipstation_notifications (resource_type, resource_url)
       SELECT 'SHIP_NOTIFY', 'http://127.0.0.1:9/shipments?batch=' || g FROM generate_series(1, 300) g`,
    );
    expect(await claimCounts(makeNotificationsQueue)).toEqual({ updated: 300, hot: 300 });
  });

  // FIXED (was: 265 of 300 claims HOT at fillfactor 50, PostgreSQL 15): a delivery row
  // (as a notification row) is small (about 100 bytes) and a claim makes it longer
  // (locked_by and locked_until go from NULL to values). A batch claim takes every row of
  // a page in one transaction, where no old version can be pruned, so half a page free
  // did not hold the longer new versions of all of them; these tables now keep 60 % free.
  it("a claim of 300 fresh webhook deliveries is HOT throughout", async () => {
    await db.pool.query(
      `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
       SELECT 'order', g::text, 'order.hot', '{}'::jsonb FROM generate_series(1, 300) g`,
    );
    expect(await claimCounts(makeDeliveriesQueue)).toEqual({ updated: 300, hot: 300 });
  });

  it("over a populated database with a writer's transaction open, the migration neither waits for it nor blocks writers", async () => {
    await insertOrders(db.pool, 2_000);
    await db.pool.query(`
      ALTER TABLE orders_inbox RESET (fillfactor);
      ALTER TABLE webhook_deliveries RESET (fillfactor);
      ALTER TABLE shipstation_notifications RESET (fillfactor);`);
    // drizzle runs what is newer than the last recorded migration: forget 0007.
    await db.pool.query(
      `DELETE FROM drizzle.__drizzle_migrations
       WHERE created_at = (SELECT max(created_at) FROM drizzle.__drizzle_migrations)`,
    );
    const writer = await db.pool.connect();
    const watcher = await db.pool.connect();
    try {
      await writer.query("BEGIN");
      await writer.query(
        "UPDATE orders_inbox SET status = status WHERE id IN (SELECT id FROM orders_inbox LIMIT 10)",
      );
      await writer.query(
        "INSERT INTO shipstation_notifications (resource_type, resource_url) VALUES ('SHIP_NOTIFY', 'http://127.0.0.1:9/x')",
      );
      await writer.query(
        "UPDATE webhook_deliveries SET state = state WHERE id IN (SELECT id FROM webhook_deliveries LIMIT 10)",
      );
      // The lock the ALTER takes, seen from inside its transaction.
      await watcher.query("BEGIN");
      await watcher.query("ALTER TABLE orders_inbox SET (fillfactor = 50)");
      const { rows: locks } = await watcher.query(
        `SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND relation = 'orders_inbox'::regclass`,
      );
      expect(locks.map((r) => r.mode)).toEqual(["ShareUpdateExclusiveLock"]);
      // A writer is not blocked by it.
      await db.pool.query(
        "UPDATE orders_inbox SET status = status WHERE id = (SELECT max(id) FROM orders_inbox)",
      );
      await watcher.query("ROLLBACK");
      // The migration itself completes while the writer's transaction stays open.
      await migrate(db.url);
      await writer.query("COMMIT");
    } finally {
      await writer.query("ROLLBACK").catch(() => undefined);
      await watcher.query("ROLLBACK").catch(() => undefined);
      writer.release();
      watcher.release();
    }
    const { rows } = await db.pool.query(
      `SELECT relname, reloptions FROM pg_class
       WHERE relname IN ('orders_inbox', 'webhook_deliveries', 'shipstation_notifications') ORDER BY relname`,
    );
    expect(rows).toEqual([
      { relname: "orders_inbox", reloptions: ["fillfactor=50"] },
      { relname: "shipstation_notifications", reloptions: ["fillfactor=40"] },
      { relname: "webhook_deliveries", reloptions: ["fillfactor=40"] },
    ]);
  }, 20_000);
});
