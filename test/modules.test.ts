// The workload list as an operator meets it: every module's failed rows behind the same
// admin routes (notifications filtered on received_at, as the table has no created_at),
// the shipments module's /status and /health entries with the hook on and off, and its
// counters on /metrics as production serves them. Real reactors, a real fake ShipStation.
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { serverUrl, startStatusServer } from "../src/http/server.js";
import { fromShipStationTime } from "../src/outbound/shipstation-time.js";
import { WORKLOADS } from "../src/workloads/index.js";
import { createTestDatabase, insertOrders, type TestDatabase, waitFor } from "./helpers/db.js";
import { promtool, requirePromtool } from "./helpers/promtool.js";
import { startReactor } from "./helpers/reactor.js";

const ADMIN_TOKEN = "modules-admin-token-0123456789";
const HOOK_TOKEN = "modules-hook-token-abcdefghijklmnop";
const API_KEY = "modules-api-key-NEVER-SHOWN";
const API_SECRET = "modules-api-secret-NEVER-SHOWN";
const SECRETS = [ADMIN_TOKEN, HOOK_TOKEN, API_KEY, API_SECRET];
/** Where the reactor says ShipStation reaches it; .invalid never resolves. */
const PUBLIC_URL = "https://reactor.invalid";

describe("workload modules, as an operator meets them", () => {
  let db: TestDatabase;
  let fake: FakeShipStation;
  let app: App;
  let server: FastifyInstance;
  let base: string;

  const api = (p: string, init: { method?: string; json?: unknown; token?: string | null } = {}) =>
    fetch(`${base}${p}`, {
      method: init.method ?? "GET",
      headers: {
        ...(init.token === null ? {} : { authorization: `Bearer ${init.token ?? ADMIN_TOKEN}` }),
        ...(init.json === undefined ? {} : { "content-type": "application/json" }),
      },
      body: init.json === undefined ? undefined : JSON.stringify(init.json),
    });
  const getJson = async (p: string) => (await api(p)).json();
  const shipmentsStatus = async (at = base) =>
    (await (await fetch(`${at}/status`)).json()).workloads.shipments;
  /** A metric's value as a scrape reads it, 0 when the line is absent. */
  const metric = async (line: string) => {
    const text = await (await fetch(`${base}/metrics`)).text();
    const found = text.split("\n").find((l) => l.startsWith(`${line} `));
    return found ? Number(found.split(" ").at(-1)) : 0;
  };
  const shipmentsModule = () => {
    const running = app.modules.find((m) => m.module.name === "shipments");
    if (!running) throw new Error("no shipments module");
    return running;
  };
  /** One watermark poll now, as its timer runs it, once the last one looks an hour old. */
  const pollNow = async () => {
    await db.pool.query(
      "UPDATE reactor_sync_state SET updated_at = now() - interval '1 hour' WHERE name = 'shipstation_shipments'",
    );
    const job = shipmentsModule().instance.jobs?.find((j) => j.name === "shipment poll");
    if (!job) throw new Error("no shipment poll job");
    await job.run();
  };
  /** Inserts orders and returns their orderKeys once ShipStation (the fake) has them. */
  const uploaded = async (count: number) => {
    const ids = await insertOrders(db.pool, count);
    return waitFor(
      async () => {
        const { rows } = await db.pool.query(
          "SELECT upload_key FROM orders_inbox WHERE id = ANY($1) AND upload_state = 'uploaded' ORDER BY id",
          [ids],
        );
        return rows.length === count ? rows.map((r) => String(r.upload_key)) : null;
      },
      { what: "orders uploaded" },
    );
  };
  const orderStatus = async (key: string) =>
    (await db.pool.query("SELECT status FROM orders_inbox WHERE upload_key = $1", [key])).rows[0]
      ?.status;

  beforeAll(async () => {
    db = await createTestDatabase();
    fake = await startFakeShipStation();
    app = await startReactor({
      databaseUrl: db.url,
      shipstationUrl: fake.url,
      env: {
        ADMIN_TOKEN,
        SHIPSTATION_API_KEY: API_KEY,
        SHIPSTATION_API_SECRET: API_SECRET,
        SHIPSTATION_WEBHOOK_TOKEN: HOOK_TOKEN,
        PUBLIC_URL,
      },
    });
    server = await startStatusServer(app, app.logger);
    base = serverUrl(server);
    // The start-up subscription goes to PUBLIC_URL, which nothing answers: ShipStation's
    // notifications go to this test's own server instead.
    await waitFor(() => fake.webhooks.length === 1, { what: "SHIP_NOTIFY subscribed at start" });
    for (const w of fake.webhooks) w.active = false;
    fake.addWebhook(`${base}/hooks/shipstation/${HOOK_TOKEN}`, "test");
    await waitFor(async () => (await shipmentsStatus()).lastShipmentPollAt !== null, {
      what: "start-up poll",
    });
  });
  afterAll(async () => {
    await server?.close();
    await app?.stop(1_000);
    await fake?.close();
    await db?.drop();
  });

  it("every module's failed rows have the list, retry-one and bulk-retry routes, each behind the token", async () => {
    expect(WORKLOADS.map((m) => m.rows)).toEqual(["orders", "deliveries", "notifications"]);
    for (const { rows } of WORKLOADS) {
      expect(await getJson(`/admin/${rows}/failed`), rows).toEqual({
        items: [],
        next_after_id: null,
      });
      expect((await api(`/admin/${rows}/failed`, { token: null })).status, rows).toBe(401);
      expect((await api(`/admin/${rows}/failed`, { token: "x".repeat(30) })).status, rows).toBe(
        401,
      );
      const missing = await api(`/admin/${rows}/999999999/retry`, { method: "POST" });
      expect(missing.status, rows).toBe(404);
      expect((await missing.json()).message).toBe(`no ${rows} row with id 999999999`);
      const noFilter = await api(`/admin/${rows}/retry`, { method: "POST", json: {} });
      expect(noFilter.status, rows).toBe(400);
      expect((await noFilter.json()).message).toMatch(/^body needs a filter: one of all, ids, /);
      const unknown = await api(`/admin/${rows}/failed?colour=red`);
      expect(unknown.status, rows).toBe(400);
      expect((await unknown.json()).message).toBe(
        "querystring/colour is not a field of this route (must NOT have additional properties)",
      );
    }
  });

  it("failed notifications: filtered by received_at, error text and pages; retry one (404, 409) and by filter; a retried one is fetched and applied", async () => {
    const [key] = (await uploaded(1)) as [string];
    await fake.ship(key, { notify: false, trackingNumber: "TRK-RETRIED" });
    const batch = [...fake.batches.keys()].at(-1);
    const resourceUrl = `${fake.url}/shipments?batchId=${batch}&includeShipmentItems=False`;
    const { rows } = await db.pool.query<{ id: number }>(
      `INSERT INTO shipstation_notifications (resource_type, resource_url, received_at, state, last_error)
       VALUES ('SHIP_NOTIFY', $1, '2026-01-10T00:00:00Z', 'failed', 'HTTP 503 from ShipStation'),
              ('SHIP_NOTIFY', $1, '2026-02-10T00:00:00Z', 'failed', 'HTTP 400: Bad batch'),
              ('SHIP_NOTIFY', $1, '2026-03-10T00:00:00Z', 'failed', 'HTTP 400: Bad batch'),
              ('SHIP_NOTIFY', $1, '2026-03-11T00:00:00Z', 'done', NULL)
       RETURNING id::int AS id`,
      [resourceUrl],
    );
    const [jan, feb, mar, done] = rows.map((r) => r.id) as [number, number, number, number];
    const ids = async (query: string) =>
      ((await getJson(`/admin/notifications/failed${query}`)).items as Array<{ id: number }>).map(
        (i) => i.id,
      );

    const listed = await getJson("/admin/notifications/failed");
    expect(listed.items[0]).toEqual({
      id: jan,
      resource_type: "SHIP_NOTIFY",
      resource_url: resourceUrl,
      attempts: 0,
      last_error: "HTTP 503 from ShipStation",
      received_at: "2026-01-10T00:00:00.000Z",
    });
    expect(await ids("?created_after=2026-02-10T00:00:00Z")).toEqual([feb, mar]);
    expect(await ids("?created_before=2026-02-10T00:00:00Z")).toEqual([jan]);
    expect(
      await ids("?created_after=2026-02-01T00:00:00%2B01:00&created_before=2026-03-01T00:00:00Z"),
    ).toEqual([feb]);
    expect(await ids("?error_contains=bad%20BATCH")).toEqual([feb, mar]);
    const page = await getJson("/admin/notifications/failed?limit=2");
    expect(page.items.map((i: { id: number }) => i.id)).toEqual([jan, feb]);
    expect(page.next_after_id).toBe(feb);
    expect(await ids(`?after_id=${feb}`)).toEqual([mar]);

    const notFailed = await api(`/admin/notifications/${done}/retry`, { method: "POST" });
    expect(notFailed.status).toBe(409);
    expect((await notFailed.json()).message).toBe(
      `notifications row ${done} is done, not failed; only failed rows can be retried`,
    );

    // Retried, the notification is claimed, its listing fetched and the shipment applied.
    const retried = await api(`/admin/notifications/${jan}/retry`, { method: "POST" });
    expect(await retried.json()).toEqual({ id: jan, retried: true });
    await waitFor(async () => (await orderStatus(key)) === "shipped", { what: "order shipped" });
    await waitFor(
      async () =>
        (await db.pool.query("SELECT state FROM shipstation_notifications WHERE id = $1", [jan]))
          .rows[0]?.state === "done",
      { what: "retried notification done" },
    );
    expect((await api(`/admin/notifications/${jan}/retry`, { method: "POST" })).status).toBe(409);

    const bulk = async (json: unknown) =>
      (await api("/admin/notifications/retry", { method: "POST", json })).json();
    expect(
      await bulk({ created_before: "2026-03-01T00:00:00Z", error_contains: "bad batch" }),
    ).toEqual({ retried: 1 });
    expect(await bulk({ all: true })).toEqual({ retried: 1 });
    await waitFor(async () => (await ids("")).length === 0, { what: "no failed notification" });
  });

  it("/status shows the shipments hook, the SHIP_NOTIFY subscription and the watermark; /health checks the poll; a reactor without the token shows the hook off", async () => {
    const [key] = (await uploaded(1)) as [string];
    const [shipment] = await fake.ship(key, { notify: false });
    await pollNow();
    const status = await shipmentsStatus();
    expect(status).toMatchObject({
      enabled: true,
      hook: "on",
      subscription: { state: "created", id: expect.any(Number), at: expect.any(String) },
      watermarkAgeSeconds: expect.any(Number),
      lastShipmentPollAgeSeconds: expect.any(Number),
      failed: expect.any(Number),
    });
    // The newest createDate the poll saw: this shipment's, ShipStation's Pacific time read as an instant.
    expect(Date.parse(status.watermark)).toBe(
      fromShipStationTime(String(shipment?.createDate))?.getTime(),
    );
    expect(Date.now() - Date.parse(status.lastShipmentPollAt)).toBeLessThan(60_000);
    expect(status.watermarkAgeSeconds).toBeGreaterThanOrEqual(0);
    expect(status.watermarkAgeSeconds).toBeLessThan(600);
    expect(await orderStatus(key)).toBe("shipped");

    const health = await (await fetch(`${base}/health`)).json();
    for (const check of [
      "backlog",
      "oldestPendingAge",
      "progress",
      "credentials",
      "endpoint",
      "watermark",
    ]) {
      expect(health.checks[`shipments:${check}`]?.[0].status, check).toBe("pass");
    }
    // No failed subscription, so no subscription check.
    expect(health.checks["shipments:subscription"]).toBeUndefined();

    const plain = await startReactor({
      databaseUrl: db.url,
      shipstationUrl: fake.url,
      env: { ADMIN_TOKEN, SHIPSTATION_API_KEY: API_KEY, SHIPSTATION_API_SECRET: API_SECRET },
    });
    const plainServer = await startStatusServer(plain, plain.logger);
    try {
      const plainBase = serverUrl(plainServer);
      expect(await shipmentsStatus(plainBase)).toMatchObject({
        hook: "off (SHIPSTATION_WEBHOOK_TOKEN is not set)",
        subscription: { state: "off", reason: "PUBLIC_URL is not set" },
      });
      const hook = await fetch(`${plainBase}/hooks/shipstation/${HOOK_TOKEN}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          resource_url: `${fake.url}/shipments?batchId=1`,
          resource_type: "SHIP_NOTIFY",
        }),
      });
      expect(hook.status).toBe(404);
      for (const at of [base, plainBase]) {
        for (const p of ["/status", "/health", "/health/ready", "/metrics"]) {
          const text = await (await fetch(`${at}${p}`)).text();
          for (const secret of SECRETS) expect(text, `${p} shows a secret`).not.toContain(secret);
        }
      }
    } finally {
      await plainServer.close();
      await plain.stop(1_000);
    }
  });

  it("/status answers on a database that does not answer, saying so, within one timeout rather than one per part", async () => {
    const locker = await db.pool.connect();
    try {
      await locker.query("BEGIN");
      await locker.query("LOCK TABLE orders_inbox, reactor_sync_state IN ACCESS EXCLUSIVE MODE");
      const started = Date.now();
      const status = await (await fetch(`${base}/status`)).json();
      const took = Date.now() - started;
      expect(status.countsError).toMatch(/^database unreachable: no answer within 2000 ms$/);
      expect(status.workloads.shipments.statusError).toBe("no answer within 2000 ms");
      expect(status.workloads.uploads.countsByState).toBeNull();
      // The counts and the shipments entry each give up after 2 s, side by side: one after
      // the other took 4 s.
      expect(took).toBeLessThan(3_900);
    } finally {
      await locker.query("ROLLBACK");
      locker.release();
    }
  });

  it("/metrics counts shipments applied by source and unmatched ones, from 0, and promtool accepts the exposition", async (ctx) => {
    const applied = (source: string) =>
      metric(`reactor_shipments_applied_total{source="${source}"}`);
    const before = {
      webhook: await applied("webhook"),
      poll: await applied("poll"),
      unmatched: await metric("reactor_shipments_unmatched_total"),
    };
    const [byHook, byPoll] = (await uploaded(2)) as [string, string];
    await fake.ship(byHook);
    await waitFor(async () => (await applied("webhook")) === before.webhook + 1, {
      what: "applied by the webhook",
    });
    await fake.ship(byPoll, { notify: false });
    await fake.ship("never-uploaded-here", { notify: false });
    await pollNow();
    expect(await applied("poll")).toBe(before.poll + 1);
    expect(await metric("reactor_shipments_unmatched_total")).toBe(before.unmatched + 1);
    expect([await orderStatus(byHook), await orderStatus(byPoll)]).toEqual(["shipped", "shipped"]);

    const text = await (await fetch(`${base}/metrics`)).text();
    expect(text).toContain("# TYPE reactor_shipments_applied_total counter");
    expect(text).toContain("# TYPE reactor_shipments_unmatched_total counter");
    await requirePromtool(ctx);
    const checked = await promtool(["check", "metrics"], { input: text });
    expect(checked.output.trim()).toBe("");
    expect(checked.code).toBe(0);
  });
});
