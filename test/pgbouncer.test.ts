// The pooled path as the README documents it: DATABASE_URL through a real PgBouncer in
// transaction mode (server connections shared between clients, so a statement's session
// state never survives it), LISTEN_DATABASE_URL direct.
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import type { FastifyInstance } from "fastify";
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from "vitest";
import type { App } from "../src/app.js";
import { makePool, type Pool } from "../src/db/pool.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { startReceiver } from "../src/demo/receiver.js";
import { serverUrl, startStatusServer } from "../src/http/server.js";
import { makeLogger } from "../src/logger.js";
import { makeOrdersQueue } from "../src/workloads/uploads/queue.js";
import {
  createTestDatabase,
  insertOrders,
  subscribe,
  type TestDatabase,
  waitFor,
} from "./helpers/db.js";
import {
  PGBOUNCER_POOL_SIZE,
  type PgBouncer,
  pgbouncerForTests,
  skipWithoutPgbouncer,
  startPgBouncer,
} from "./helpers/pgbouncer.js";
import { metricTotal, startReactor, startReplicas } from "./helpers/reactor.js";
import { doc, order } from "./helpers/xml.js";

/** Orders the two replicas upload; at the default 100 per call that is 10 calls. */
const ORDERS = 1_000;

describe("through PgBouncer in transaction mode (DATABASE_URL pooled, LISTEN direct)", () => {
  let bouncer: PgBouncer | null = null;
  let queueDb: TestDatabase;
  let uploadDb: TestDatabase;
  let failDb: TestDatabase;
  let shipDb: TestDatabase;
  let importDb: TestDatabase;
  let consoleDb: TestDatabase;
  let fake: FakeShipStation;
  let apps: App[] = [];
  let server: FastifyInstance | null = null;
  let pools: Pool[] = [];

  beforeAll(async () => {
    const bin = await pgbouncerForTests();
    fake = await startFakeShipStation();
    // One database per test: each has its own rate-limit budget and its own rows.
    [queueDb, uploadDb, failDb, shipDb, importDb, consoleDb] = await Promise.all([
      createTestDatabase(),
      createTestDatabase(),
      createTestDatabase(),
      createTestDatabase(),
      createTestDatabase(),
      createTestDatabase(),
    ]);
    if (!bin) return;
    bouncer = await startPgBouncer({
      bin,
      adminUrl: inject("adminUrl"),
      databases: [
        queueDb.name,
        uploadDb.name,
        failDb.name,
        shipDb.name,
        importDb.name,
        consoleDb.name,
      ],
    });
  });
  afterEach(async () => {
    await server?.close();
    server = null;
    await Promise.all(apps.map((app) => app.stop(1_000)));
    apps = [];
    await Promise.all(pools.map((pool) => pool.end()));
    pools = [];
    fake.calls.length = 0;
    fake.received.clear();
  });
  afterAll(async () => {
    await bouncer?.stop();
    await fake?.close();
    await Promise.all(
      [queueDb, uploadDb, failDb, shipDb, importDb, consoleDb].map((db) => db?.drop()),
    );
  });

  /** PgBouncer's clients and server connections for one database, from its admin console. */
  async function connections(database: string) {
    if (!bouncer) throw new Error("no pgbouncer");
    const clients = (await bouncer.show("CLIENTS")).filter((c) => c.database === database);
    const servers = (await bouncer.show("SERVERS")).filter((s) => s.database === database);
    return { clients, servers };
  }

  it("claim, renew, finalize, release, stats and counts work from many clients sharing few server connections", async (ctx) => {
    skipWithoutPgbouncer(ctx, bouncer);
    const url = bouncer.urlFor(queueDb.name);
    const logger = makeLogger("silent");
    // Two "replicas" with five connections each: ten clients over four server connections.
    pools = [makePool(url, logger, { max: 5 }), makePool(url, logger, { max: 5 })];
    const queues = pools.map((pool) => makeOrdersQueue(pool));
    await insertOrders(queueDb.pool, 500);

    const worker = async (queueIndex: number, owner: string) => {
      const queue = queues[queueIndex % queues.length];
      if (!queue) throw new Error("no queue");
      let finished = 0;
      for (;;) {
        const rows = await queue.claim(owner, { limit: 10, leaseSeconds: 60, maxAttempts: 5 });
        if (rows.length === 0) return finished;
        const ids = rows.map((r) => r.id);
        // Another client's claim may hold one of our rows' locks for an instant (its scan
        // locked it, then found it leased): renew and finalize skip such rows, not wait.
        const renewed = await queue.renew(owner, ids, 60);
        expect(ids).toEqual(expect.arrayContaining(renewed));
        let outcomes = rows.map((r) => ({ id: r.id, kind: "success" as const }));
        while (outcomes.length > 0) {
          const result = await queue.finalize(owner, outcomes);
          expect(result.lost).toEqual([]);
          const locked = new Set(result.locked);
          outcomes = outcomes.filter((o) => locked.has(o.id));
        }
        finished += rows.length;
      }
    };
    const perWorker = await Promise.all(Array.from({ length: 10 }, (_, i) => worker(i, `w${i}`)));
    expect(perWorker.reduce((a, b) => a + b, 0)).toBe(500);

    // Server connections really were shared: more clients than PgBouncer's pool.
    const seen = await connections(queueDb.name);
    expect(seen.servers.length).toBeGreaterThan(0);
    expect(seen.servers.length).toBeLessThanOrEqual(PGBOUNCER_POOL_SIZE);
    expect(seen.clients.length).toBeGreaterThan(PGBOUNCER_POOL_SIZE);

    // A shutdown's release gives back what an owner holds; stats and counts see it.
    await insertOrders(queueDb.pool, 20);
    const [first] = queues;
    if (!first) throw new Error("no queue");
    expect(
      await first.claim("leaver", { limit: 50, leaseSeconds: 60, maxAttempts: 5 }),
    ).toHaveLength(20);
    expect((await first.stats()).claimable).toBe(0);
    expect(await first.release("leaver")).toBe(20);
    expect(await first.stats()).toMatchObject({ backlog: 20, due: 20, claimable: 20 });
    expect(await first.countsByState()).toEqual({ uploaded: 500, pending: 20 });
    const { rows } = await queueDb.pool.query(
      "SELECT count(*)::int AS n FROM orders_inbox WHERE attempts <> 1 OR locked_by IS NOT NULL",
    );
    expect(rows[0].n).toBe(0);
  });

  it(`two replicas upload ${ORDERS} orders with no failed drain and nothing sent twice`, async (ctx) => {
    skipWithoutPgbouncer(ctx, bouncer);
    // The real defaults: 100 orders a call, 40 calls a minute (10 calls fit).
    apps = await startReplicas(2, {
      databaseUrl: bouncer.urlFor(uploadDb.name),
      shipstationUrl: fake.url,
      env: { LISTEN_DATABASE_URL: uploadDb.url },
    });
    const started = performance.now();
    await insertOrders(uploadDb.pool, ORDERS);
    await waitFor(
      async () => {
        const { rows } = await uploadDb.pool.query(
          "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'uploaded'",
        );
        return rows[0].n === ORDERS;
      },
      { timeoutMs: 90_000, what: `${ORDERS} orders uploaded` },
    );
    const wallMs = performance.now() - started;

    const sent = fake.calls.flatMap((c) => c.orders.map((o) => String(o.orderKey)));
    const resent = sent.length - new Set(sent).size;
    const drainErrors = await Promise.all(apps.map((app) => metricTotal(app.metrics.drainErrors)));
    await ctx.annotate(
      `${ORDERS} orders uploaded in ${Math.round(wallMs)} ms, ${fake.calls.length} ShipStation calls, ` +
        `${resent} re-sent, drain errors per replica ${drainErrors.join("/")}`,
    );
    expect(drainErrors).toEqual([0, 0]);
    expect(fake.received.size).toBe(ORDERS);
    expect([...fake.received.values()].every((n) => n === 1)).toBe(true);
    expect(sent).toHaveLength(ORDERS);
    expect(resent).toBe(0);
    const { rows } = await uploadDb.pool.query(
      `SELECT count(*)::int AS n FROM orders_inbox
       WHERE upload_state <> 'uploaded' OR attempts <> 1 OR locked_by IS NOT NULL`,
    );
    expect(rows[0].n).toBe(0);
    // The reactors' pools really went through PgBouncer, sharing its few server connections.
    const seen = await connections(uploadDb.name);
    expect(seen.clients.filter((c) => c.application_name === "pg-reactor").length).toBeGreaterThan(
      0,
    );
    expect(seen.servers.length).toBeLessThanOrEqual(PGBOUNCER_POOL_SIZE);
  });

  it("shipments come back through the pool: SHIP_NOTIFY and the watermark poll apply each shipment once", async (ctx) => {
    skipWithoutPgbouncer(ctx, bouncer);
    const token = "pgbouncer-hook-token-000000000000";
    await shipDb.pool.query(
      "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'shipment_sync_interval_seconds', '10')",
    );
    apps = await startReplicas(2, {
      databaseUrl: bouncer.urlFor(shipDb.name),
      shipstationUrl: fake.url,
      env: { LISTEN_DATABASE_URL: shipDb.url, SHIPSTATION_WEBHOOK_TOKEN: token },
    });
    server = await startStatusServer(apps[0] as App, (apps[0] as App).logger);
    const ids = await insertOrders(shipDb.pool, 200);
    await waitFor(
      async () =>
        (
          await shipDb.pool.query(
            "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'uploaded'",
          )
        ).rows[0].n === 200,
      { timeoutMs: 60_000, what: "200 orders uploaded" },
    );
    const { rows: keyed } = await shipDb.pool.query(
      "SELECT upload_key FROM orders_inbox WHERE id = ANY($1) ORDER BY id",
      [ids],
    );
    const keys = keyed.map((r) => r.upload_key as string);
    fake.addWebhook(`${serverUrl(server)}/hooks/shipstation/${token}`, "pgbouncer test");
    // Half by webhook, in batches of 20; half only the poll can find.
    for (let i = 0; i < 100; i += 20) await fake.ship(keys.slice(i, i + 20));
    await fake.ship(keys.slice(100), { notify: false });
    await waitFor(
      async () =>
        (
          await shipDb.pool.query(
            "SELECT count(*)::int AS n FROM orders_inbox WHERE status = 'shipped'",
          )
        ).rows[0].n === 200,
      { timeoutMs: 30_000, what: "200 orders shipped" },
    );
    const { rows } = await shipDb.pool.query(
      `SELECT count(*)::int AS events, count(DISTINCT aggregate_id)::int AS orders
       FROM outbox_events WHERE event_type = 'order.shipped'`,
    );
    expect(rows[0]).toEqual({ events: 200, orders: 200 });
    const drainErrors = await Promise.all(apps.map((app) => metricTotal(app.metrics.drainErrors)));
    expect(drainErrors).toEqual([0, 0]);
    // The fake is shared by the file: its shipments (order keys 1…200) would otherwise be
    // found by the next test's start-up poll and ship that database's orders 1…5.
    fake.webhooks.length = 0;
    fake.shipments.length = 0;
    fake.batches.clear();
  });

  it("the console's API through the pool: attempts logged by the finalize, success rates, settings, failed counts, the live status", async (ctx) => {
    skipWithoutPgbouncer(ctx, bouncer);
    const token = "pgbouncer-console-token-0123456789";
    const receiver = await startReceiver();
    try {
      receiver.script.push({ status: 500, body: "not yet" });
      await consoleDb.pool.query(
        "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'delivery_retry_schedule_seconds', '1')",
      );
      const app = await startReactor({
        databaseUrl: bouncer.urlFor(consoleDb.name),
        env: { LISTEN_DATABASE_URL: consoleDb.url, ADMIN_TOKEN: token },
      });
      apps = [app];
      server = await startStatusServer(app, app.logger);
      const base = serverUrl(server);
      const api = async (route: string, init: { method?: string; json?: unknown } = {}) => {
        const res = await fetch(`${base}${route}`, {
          method: init.method ?? "GET",
          headers: {
            authorization: `Bearer ${token}`,
            ...(init.json === undefined ? {} : { "content-type": "application/json" }),
          },
          body: init.json === undefined ? undefined : JSON.stringify(init.json),
        });
        return { status: res.status, json: await res.json() };
      };
      const sub = await subscribe(consoleDb.pool, `${receiver.url}/hook`);
      await consoleDb.pool.query(
        "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', 'P-1', 'order.created', '{}')",
      );
      const id = await waitFor(
        async () =>
          (
            await consoleDb.pool.query(
              "SELECT id FROM webhook_deliveries WHERE state = 'delivered'",
            )
          ).rows[0]?.id,
        { what: "the delivery delivered on its second attempt", timeoutMs: 20_000 },
      );
      const attempts = await api(`/admin/deliveries/${id}/attempts`);
      expect(attempts.json.items.map((a: { status: number }) => a.status)).toEqual([500, 204]);
      const subs = await api("/admin/subscriptions");
      expect(subs.json.items.find((s: { id: number }) => s.id === sub).recent).toEqual({
        attempts: 2,
        succeeded: 1,
        success_rate: 0.5,
      });
      const refused = await api("/admin/settings/lease_seconds", {
        method: "PUT",
        json: { value: "abc" },
      });
      expect(refused.status).toBe(400);
      expect(refused.json.message).toBe(
        "reactor.lease_seconds must be an integer from 5 to 3600, got 'abc'",
      );
      const saved = await api("/admin/settings/lease_seconds", {
        method: "PUT",
        json: { value: "60" },
      });
      expect(saved.json.value).toBe("60");
      expect((await api("/admin/deliveries/failed/count")).json).toEqual({
        count: 0,
        capped: false,
      });
      // The live feed's status (failed counts and the status, through the pool).
      const events = await fetch(`${base}/console/events`, {
        headers: { authorization: `Bearer ${token}` },
      });
      const reader = events.body?.getReader();
      let text = "";
      while (reader && !text.includes("event: status")) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      await reader?.cancel();
      expect(text).toContain("event: status");
      expect(await metricTotal(app.metrics.drainErrors)).toBe(0);
    } finally {
      await receiver.close();
    }
  });

  it("XML files in a shared folder are imported through the pool, each once, by two replicas", async (ctx) => {
    skipWithoutPgbouncer(ctx, bouncer);
    const dir = await mkdtemp(path.join(tmpdir(), "pg-reactor-pgbouncer-import-"));
    try {
      apps = await startReplicas(2, {
        databaseUrl: bouncer.urlFor(importDb.name),
        shipstationUrl: fake.url,
        // The per-file lock needs a session: it is taken on the direct URL.
        env: { LISTEN_DATABASE_URL: importDb.url, IMPORT_DIR: dir },
      });
      await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          writeFile(path.join(dir, `pool-${i}.xml`), doc(order(`pb${i}-1`), order(`pb${i}-2`))),
        ),
      );
      await waitFor(async () => (await readdir(path.join(dir, "processed"))).length === 20, {
        what: "20 files in processed/",
      });
      await waitFor(() => fake.received.size === 40, { what: "40 orders at ShipStation" });
      expect([...fake.received.values()].every((n) => n === 1)).toBe(true);
      const { rows } = await importDb.pool.query(
        "SELECT count(*)::int AS files, sum(orders)::int AS orders FROM import_files WHERE state = 'imported'",
      );
      expect(rows[0]).toEqual({ files: 20, orders: 40 });
      const drainErrors = await Promise.all(
        apps.map((app) => metricTotal(app.metrics.drainErrors)),
      );
      expect(drainErrors).toEqual([0, 0]);
    } finally {
      await Promise.all(apps.map((app) => app.stop(1_000)));
      apps = [];
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("failing drains make /health/ready 503 and count in /metrics, and both recover once fixed", async (ctx) => {
    skipWithoutPgbouncer(ctx, bouncer);
    const app = await startReactor({
      databaseUrl: bouncer.urlFor(failDb.name),
      shipstationUrl: fake.url,
      env: { LISTEN_DATABASE_URL: failDb.url },
    });
    apps = [app];
    server = await startStatusServer(app, app.logger);
    const base = serverUrl(server);
    const ready = async () => {
      const res = await fetch(`${base}/health/ready`);
      return { status: res.status, body: await res.json() };
    };
    const drainErrorsMetric = async () => {
      const text = await (await fetch(`${base}/metrics`)).text();
      const match = text.match(/^reactor_drain_errors_total\{workload="uploads"\} (\S+)$/m);
      if (!match) throw new Error('reactor_drain_errors_total{workload="uploads"} not served');
      return Number(match[1]);
    };
    const uploaded = async (n: number) => {
      const { rows } = await failDb.pool.query(
        "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'uploaded'",
      );
      return rows[0].n === n;
    };

    await insertOrders(failDb.pool, 5);
    await waitFor(() => uploaded(5), { what: "the first orders uploaded" });
    expect((await ready()).status).toBe(200);
    expect(await drainErrorsMetric()).toBe(0);

    // Every claim now fails in the database: a real failing drain, not a simulated one.
    await failDb.pool.query(
      "ALTER TABLE orders_inbox RENAME COLUMN locked_until TO locked_until_x",
    );
    await insertOrders(failDb.pool, 3);
    const failing = await waitFor(
      async () => {
        const r = await ready();
        return r.status === 503 ? r : null;
      },
      { what: "/health/ready 503 while drains fail" },
    );
    const progress = failing.body.checks["uploads:progress"]?.[0];
    expect(progress).toMatchObject({ status: "fail" });
    expect(progress.output).toMatch(/^drains have failed for \d+ s: .*locked_until/);
    expect(failing.body.status).toBe("fail");
    expect(await drainErrorsMetric()).toBeGreaterThan(0);

    await failDb.pool.query(
      "ALTER TABLE orders_inbox RENAME COLUMN locked_until_x TO locked_until",
    );
    // The drain's back-off retries by itself; readiness follows the first good drain.
    await waitFor(async () => (await ready()).status === 200, {
      timeoutMs: 60_000,
      what: "/health/ready 200 again",
    });
    await waitFor(() => uploaded(8), { timeoutMs: 60_000, what: "the waiting orders uploaded" });
    expect(fake.received.size).toBe(8);
    expect([...fake.received.values()].every((n) => n === 1)).toBe(true);
    expect((await ready()).body.checks["uploads:progress"]?.[0]).toMatchObject({ status: "pass" });
  });
});
