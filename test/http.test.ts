import { rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { startEmbeddedPostgres } from "../src/db/embedded.js";
import { migrate } from "../src/db/migrate.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { type Receiver, startReceiver } from "../src/demo/receiver.js";
import { serverUrl, startStatusServer } from "../src/http/server.js";
import {
  createTestDatabase,
  insertOrders,
  setSetting,
  type TestDatabase,
  validPayload,
  waitFor,
} from "./helpers/db.js";
import { hasPromtool, run } from "./helpers/promtool.js";
import { startReactor } from "./helpers/reactor.js";

const ADMIN_TOKEN = "test-admin-token-0123456789";
const SHIPSTATION_SECRET = "shipstation-secret-value-xyz";

describe("status server", () => {
  let db: TestDatabase;
  let fake: FakeShipStation;
  let receiver: Receiver;
  let app: App;
  let server: FastifyInstance;
  let base: string;
  const logLines: string[] = [];
  const webhookSecrets: string[] = [];

  const api = (p: string, init: RequestInit & { token?: string | null; json?: unknown } = {}) => {
    const headers: Record<string, string> = {};
    if (init.token !== null) headers.authorization = `Bearer ${init.token ?? ADMIN_TOKEN}`;
    if (init.json !== undefined) headers["content-type"] = "application/json";
    return fetch(`${base}${p}`, {
      ...init,
      headers: { ...headers, ...(init.headers as Record<string, string>) },
      body: init.json !== undefined ? JSON.stringify(init.json) : init.body,
    });
  };

  beforeAll(async () => {
    db = await createTestDatabase();
    fake = await startFakeShipStation();
    receiver = await startReceiver();
    await setSetting(db.pool, "upload_rate_limit_per_minute", "100000");
    app = await startReactor({
      databaseUrl: db.url,
      shipstationUrl: fake.url,
      env: { ADMIN_TOKEN, SHIPSTATION_API_SECRET: SHIPSTATION_SECRET },
      logLines,
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

  it("GET /health/live answers without touching the database", async () => {
    const res = await fetch(`${base}/health/live`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: "pass" });
  });

  it("GET /health/ready is health+json with postgres, listener and workload checks", async () => {
    const res = await fetch(`${base}/health/ready`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^application\/health\+json/);
    const body = await res.json();
    expect(body.status).toBe("pass");
    expect(Object.keys(body.checks)).toEqual(
      expect.arrayContaining([
        "postgres:responseTime",
        "listener:connected",
        "uploads:backlog",
        "uploads:oldestPendingAge",
        "deliveries:backlog",
        "uploads:credentials",
      ]),
    );
    expect(body.checks["postgres:responseTime"][0]).toMatchObject({
      status: "pass",
      observedUnit: "ms",
    });
  });

  it("counters on /metrics move with real work, and the exposition is Prometheus-clean", async () => {
    const metric = async (line: RegExp) => {
      const text = await (await fetch(`${base}/metrics`)).text();
      const m = text.split("\n").find((l) => line.test(l));
      return m ? Number(m.split(" ").at(-1)) : 0;
    };
    const successBefore = await metric(
      /^reactor_completed_total\{workload="uploads",outcome="success"\}/,
    );
    await insertOrders(db.pool, 3);
    await waitFor(
      async () =>
        (await metric(/^reactor_completed_total\{workload="uploads",outcome="success"\}/)) ===
        successBefore + 3,
    );
    expect(
      await metric(/^reactor_notifications_total\{channel="reactor_orders"\}/),
    ).toBeGreaterThanOrEqual(1);
    expect(await metric(/^reactor_claimed_total\{workload="uploads"\}/)).toBeGreaterThanOrEqual(3);
    expect(await metric(/^reactor_listener_connected /)).toBe(1);
    expect(
      await metric(/^reactor_http_responses_total\{workload="uploads",class="2xx"\}/),
    ).toBeGreaterThanOrEqual(1);
    expect(
      await metric(/^reactor_pickup_latency_seconds_count\{workload="uploads"\}/),
    ).toBeGreaterThanOrEqual(3);
    const text = await (await fetch(`${base}/metrics`)).text();
    for (const name of [
      "reactor_wakeups_total",
      "reactor_backlog",
      "reactor_oldest_pending_age_seconds",
      "reactor_config_reloads_total",
      "reactor_safety_polls_total",
      "reactor_processing_seconds_bucket",
      "reactor_listener_reconnects_total",
      "reactor_config_rejected_total",
      "reactor_rate_limit_pauses_total",
    ]) {
      expect(text, name).toContain(name);
    }
    if (!(await hasPromtool())) {
      // Reason, not silence: promtool comes from Debian's `prometheus` package (.ci/run installs it when it can).
      console.warn("promtool not installed: skipped `promtool check metrics`");
      return;
    }
    const file = path.join(tmpdir(), `metrics-${process.pid}.txt`);
    await writeFile(file, text);
    const { stdout, stderr } = await run("sh", ["-c", `promtool check metrics < ${file}`]).catch(
      (e) => e,
    );
    expect(`${stdout}${stderr}`.trim()).toBe("");
  });

  it("GET /status shows typed settings and per-workload figures, and no secret", async () => {
    const body = await (await fetch(`${base}/status`)).json();
    expect(body.settings.poll_interval_seconds).toBe(30);
    expect(body.settings.uploads_enabled).toBe(true);
    expect(body.settings.upload_rate_limit_per_minute).toBe(100000);
    expect(body.listener.connected).toBe(true);
    expect(body.workloads.uploads).toMatchObject({
      enabled: true,
      inFlight: expect.any(Number),
      failed: expect.any(Number),
    });
    expect(body.environment.shipstationCredentials).toBe(true);
  });

  it("admin routes need the bearer token", async () => {
    expect((await api("/admin/subscriptions", { token: null })).status).toBe(401);
    expect((await api("/admin/subscriptions", { token: "wrong-token-wrong-token" })).status).toBe(
      401,
    );
    expect((await api("/admin/orders/failed", { token: null })).status).toBe(401);
    const ok = await api("/admin/subscriptions");
    expect(ok.status).toBe(200);
  });

  it("subscriptions: create (secret once), list and get (never the secret), update, rotate, delete", async () => {
    const created = await api("/admin/subscriptions", {
      method: "POST",
      json: { url: `${receiver.url}/admin`, event_types: ["order.*"], description: "test" },
    });
    expect(created.status).toBe(201);
    const sub = await created.json();
    expect(sub.secret).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    webhookSecrets.push(sub.secret);
    expect(sub).toMatchObject({
      url: `${receiver.url}/admin`,
      event_types: ["order.*"],
      enabled: true,
    });

    const list = await (await api("/admin/subscriptions")).json();
    expect(list.items.map((s: { id: number }) => s.id)).toContain(sub.id);
    expect(JSON.stringify(list)).not.toContain("whsec_");
    const got = await (await api(`/admin/subscriptions/${sub.id}`)).json();
    expect(got).not.toHaveProperty("secret");
    expect(got).not.toHaveProperty("previous_secret");

    const patched = await (
      await api(`/admin/subscriptions/${sub.id}`, { method: "PATCH", json: { enabled: false } })
    ).json();
    expect(patched).toMatchObject({ enabled: false, disabled_reason: "disabled by an operator" });
    const enabled = await (
      await api(`/admin/subscriptions/${sub.id}`, {
        method: "PATCH",
        json: { enabled: true, event_types: [] },
      })
    ).json();
    expect(enabled).toMatchObject({ enabled: true, disabled_reason: null, event_types: [] });

    const rotated = await (
      await api(`/admin/subscriptions/${sub.id}/rotate`, {
        method: "POST",
        json: { grace_hours: 2 },
      })
    ).json();
    expect(rotated.secret).toMatch(/^whsec_/);
    expect(rotated.secret).not.toBe(sub.secret);
    expect(rotated.rotation_in_progress).toBe(true);
    webhookSecrets.push(rotated.secret);

    // A delivery during the grace period is signed with both secrets.
    const { Webhook } = await import("standardwebhooks");
    const { rows } = await db.pool.query(
      "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) VALUES ('o', '1', 'order.created', '{}') RETURNING id",
    );
    await waitFor(() => receiver.delivered.has(rows[0].id));
    const req = receiver.requests.find((r) => r.headers["webhook-id"] === rows[0].id);
    const headers = req?.headers as Record<string, string>;
    expect(new Webhook(sub.secret).verify(req?.body ?? "", headers)).toBeTruthy();
    expect(new Webhook(rotated.secret).verify(req?.body ?? "", headers)).toBeTruthy();

    expect((await api(`/admin/subscriptions/${sub.id}`, { method: "DELETE" })).status).toBe(204);
    expect((await api(`/admin/subscriptions/${sub.id}`)).status).toBe(404);
    expect((await api(`/admin/subscriptions/${sub.id}`, { method: "DELETE" })).status).toBe(404);
    expect((await api(`/admin/subscriptions/${sub.id}/rotate`, { method: "POST" })).status).toBe(
      404,
    );
    expect(
      (await api(`/admin/subscriptions/${sub.id}`, { method: "PATCH", json: { enabled: true } }))
        .status,
    ).toBe(404);
  });

  it.each([
    ["POST", "/admin/subscriptions", { url: "ftp://x.example" }, /body\/url must match pattern/],
    [
      "POST",
      "/admin/subscriptions",
      { url: "https://example.com", colour: "red" },
      /must NOT have additional properties/,
    ],
    [
      "POST",
      "/admin/subscriptions",
      { url: "https://example.com", event_types: ["order..x"] },
      /body\/event_types\/0 must match pattern/,
    ],
    [
      "POST",
      "/admin/subscriptions",
      { url: "https://example.com", secret: "whsec_short" },
      /body\/secret must match pattern/,
    ],
    ["POST", "/admin/subscriptions", {}, /body must have required property 'url'/],
    ["PATCH", "/admin/subscriptions/1", {}, /body must NOT have fewer than 1 properties/],
    ["GET", "/admin/subscriptions/abc", undefined, /params\/id must be integer/],
    ["GET", "/admin/orders/failed?limit=0", undefined, /querystring\/limit must be >= 1/],
    ["POST", "/admin/orders/retry", {}, /body must NOT have fewer than 1 properties/],
    [
      "POST",
      "/admin/orders/retry",
      { limit: 5 },
      /body needs a filter: one of all, ids, error_contains/,
    ],
    [
      "POST",
      "/admin/deliveries/retry",
      { ids: ["1; DROP TABLE orders_inbox"] },
      /body\/ids\/0 must be integer/,
    ],
  ])("%s %s with a bad request → 400 naming the field", async (method, p, json, message) => {
    const res = await api(p, { method, json });
    expect(res.status).toBe(400);
    expect((await res.json()).message).toMatch(message);
  });

  it("refuses a subscription to a private address when private networks are not allowed", async () => {
    const strict = await startReactor({
      databaseUrl: db.url,
      env: { ADMIN_TOKEN, WEBHOOK_ALLOW_PRIVATE_NETWORKS: "false" },
    });
    const s = await startStatusServer(strict, strict.logger);
    try {
      for (const url of [
        "http://127.0.0.1/x",
        "http://localhost/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
      ]) {
        const res = await fetch(`${serverUrl(s)}/admin/subscriptions`, {
          method: "POST",
          headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
          body: JSON.stringify({ url }),
        });
        expect(res.status, url).toBe(400);
        expect((await res.json()).message).toMatch(
          /body\/url refused: .* resolves to .*WEBHOOK_ALLOW_PRIVATE_NETWORKS=true/,
        );
      }
    } finally {
      await s.close();
      await strict.stop(1_000);
    }
  });

  it("failed rows: list with filters and pages, retry one (404/409), retry by filter", async () => {
    await db.pool.query("TRUNCATE orders_inbox");
    await db.pool.query(
      `INSERT INTO orders_inbox (order_number, order_key, payload, upload_state, last_error)
       SELECT 'F-' || g, 'f' || g, $1::jsonb, 'failed', CASE WHEN g % 2 = 0 THEN 'invalid order: even' ELSE 'ShipStation refused' END
       FROM generate_series(1, 5) g`,
      [JSON.stringify(validPayload())],
    );
    const page1 = await (await api("/admin/orders/failed?limit=2")).json();
    expect(page1.items).toHaveLength(2);
    const page2 = await (
      await api(`/admin/orders/failed?limit=2&after_id=${page1.next_after_id}`)
    ).json();
    expect(page2.items[0].id).toBeGreaterThan(page1.items[1].id);
    const even = await (await api("/admin/orders/failed?error_contains=EVEN")).json();
    expect(even.items.map((i: { order_number: string }) => i.order_number)).toEqual(["F-2", "F-4"]);

    const [first] = page1.items;
    const retried = await api(`/admin/orders/${first.id}/retry`, { method: "POST" });
    expect(retried.status).toBe(200);
    await waitFor(() => fake.received.has("f1") || fake.received.has(String(first.order_key)));
    expect((await api(`/admin/orders/${first.id}/retry`, { method: "POST" })).status).toBe(409);
    expect((await api("/admin/orders/999999/retry", { method: "POST" })).status).toBe(404);
    const bulk = await (
      await api("/admin/orders/retry", { method: "POST", json: { error_contains: "even" } })
    ).json();
    expect(bulk).toEqual({ retried: 2 });
    const all = await (
      await api("/admin/orders/retry", { method: "POST", json: { all: true } })
    ).json();
    expect(all.retried).toBeGreaterThanOrEqual(0);
    await waitFor(async () => {
      const r = await db.pool.query(
        "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'pending'",
      );
      return r.rows[0].n === 0;
    });
    const deliveries = await (await api("/admin/deliveries/failed?subscription_id=1")).json();
    expect(deliveries).toEqual({ items: [], next_after_id: null });
  });

  it("a huge body is refused with 413, and nothing secret reached the log", async () => {
    const res = await api("/admin/subscriptions", {
      method: "POST",
      json: { url: `https://example.com/${"x".repeat(100_000)}` },
    });
    expect(res.status).toBe(413);
    const logs = logLines.join("\n");
    expect(logs.length).toBeGreaterThan(0);
    for (const secret of [ADMIN_TOKEN, SHIPSTATION_SECRET, ...webhookSecrets]) {
      expect(logs).not.toContain(secret);
      expect(await (await fetch(`${base}/status`)).text()).not.toContain(secret);
      expect(await (await fetch(`${base}/metrics`)).text()).not.toContain(secret);
    }
  });
});

describe("status server without ADMIN_TOKEN", () => {
  it("does not register admin routes at all", async () => {
    const db = await createTestDatabase();
    const app = await startReactor({ databaseUrl: db.url });
    const server = await startStatusServer(app, app.logger);
    try {
      const res = await fetch(`${serverUrl(server)}/admin/subscriptions`, {
        headers: { authorization: "Bearer x" },
      });
      expect(res.status).toBe(404);
    } finally {
      await server.close();
      await app.stop(1_000);
      await db.drop();
    }
  });
});

describe("readiness follows the database", () => {
  it("goes 503 when the database stops and back to 200 when it returns, without a restart", async () => {
    const dir = path.join(tmpdir(), `pg-reactor-ready-${process.pid}-${Date.now()}`);
    let pg = await startEmbeddedPostgres({ dir, persistent: true, database: "ready" });
    await migrate(pg.url);
    const app = await startReactor({ databaseUrl: pg.url });
    const server = await startStatusServer(app, app.logger);
    const url = `${serverUrl(server)}/health/ready`;
    try {
      expect((await fetch(url)).status).toBe(200);
      await pg.stop();
      const down = await waitFor(
        async () => {
          const res = await fetch(url);
          return res.status === 503 ? res.json() : null;
        },
        { timeoutMs: 20_000, what: "503" },
      );
      expect(down.checks["postgres:responseTime"][0].status).toBe("fail");
      expect((await fetch(url.replace("/ready", "/live"))).status).toBe(200);
      pg = await startEmbeddedPostgres({ dir, persistent: true, database: "ready" });
      await waitFor(async () => (await fetch(url)).status === 200, {
        timeoutMs: 30_000,
        what: "200 again",
      });
      await waitFor(() => app.reactor.listener().state().connected, {
        timeoutMs: 20_000,
        what: "listener back",
      });
    } finally {
      await server.close();
      await app.stop(1_000);
      await pg.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
