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
    expect(body.settings.upload_rate_limit_per_minute).toBe(40);
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
    for (const rows of ["orders", "deliveries", "notifications"]) {
      expect((await api(`/admin/${rows}/failed`, { token: null })).status).toBe(401);
      expect((await api(`/admin/${rows}/1/retry`, { method: "POST", token: null })).status).toBe(
        401,
      );
      expect(
        (await api(`/admin/${rows}/retry`, { method: "POST", json: { all: true }, token: null }))
          .status,
      ).toBe(401);
    }
    const ok = await api("/admin/subscriptions");
    expect(ok.status).toBe(200);
    // Admin answers (failed rows, payloads, a secret shown once) are never cached.
    expect(ok.headers.get("cache-control")).toBe("no-store");
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
      /^body\/colour is not a field of this route \(must NOT have additional properties\)$/,
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
    [
      "POST",
      "/admin/orders/retry",
      {},
      /^body needs a filter: one of all, ids, error_contains, created_after, created_before, status, order_number$/,
    ],
    [
      "GET",
      "/admin/notifications/failed?status=failed",
      undefined,
      /^querystring\/status is not a field of this route/,
    ],
    [
      "POST",
      "/admin/notifications/retry",
      { event_type: "order.shipped" },
      /^body\/event_type is not a field of this route/,
    ],
    [
      "POST",
      "/admin/notifications/retry",
      {},
      /^body needs a filter: one of all, ids, error_contains, created_after, created_before$/,
    ],
    ["POST", "/admin/deliveries/retry", { all: false }, /^body\/all must be true$/],
    [
      "GET",
      "/admin/notifications/failed?created_after=2026-01-01T00:00:00+01:00",
      undefined,
      /^querystring\/created_after must be a date-time with a zone, such as 2026-01-31T00:00:00Z \(in a query string, write \+ as %2B\)$/,
    ],
    [
      "POST",
      "/admin/notifications/retry",
      { created_before: "yesterday" },
      /^body\/created_before must be a date-time with a zone, such as 2026-01-31T00:00:00Z$/,
    ],
    ["POST", "/admin/notifications/abc/retry", undefined, /^params\/id must be integer$/],
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
    // Each of these answered 500 (or PostgreSQL's own text) before.
    [
      "GET",
      "/admin/orders/failed?error_contains=%00",
      undefined,
      /^querystring\/error_contains must not contain NUL characters$/,
    ],
    [
      "GET",
      "/admin/orders/failed?status=a%00b",
      undefined,
      /^querystring\/status must not contain NUL characters$/,
    ],
    [
      "GET",
      "/admin/orders/failed?after_id=99999999999999999999",
      undefined,
      /^querystring\/after_id must be <= 9007199254740991$/,
    ],
    [
      "GET",
      "/admin/orders/failed?after_id=1e30",
      undefined,
      /^querystring\/after_id must be <= 9007199254740991$/,
    ],
    [
      "GET",
      "/admin/deliveries/failed?subscription_id=9223372036854775808",
      undefined,
      /^querystring\/subscription_id must be <= 9007199254740991$/,
    ],
    [
      "GET",
      "/admin/subscriptions?after_id=9223372036854775808",
      undefined,
      /^querystring\/after_id must be <= 9007199254740991$/,
    ],
    [
      "GET",
      "/admin/orders/failed?created_after=0000-01-01T00:00:00Z",
      undefined,
      /^querystring\/created_after must be a date-time from year 0001 to 9999$/,
    ],
    [
      "POST",
      "/admin/deliveries/retry",
      { ids: [2 ** 63] },
      /^body\/ids\/0 must be <= 9007199254740991$/,
    ],
    ["POST", "/admin/orders/99999999999999999999/retry", undefined, /^params\/id must be <= /],
    ["GET", "/admin/subscriptions/Infinity", undefined, /^params\/id must be a finite number$/],
    [
      "GET",
      "/admin/orders/failed?after_id=1e400",
      undefined,
      /^querystring\/after_id must be a finite number$/,
    ],
    [
      "POST",
      "/admin/orders/retry",
      { ids: ["Infinity"] },
      /^body\/ids\/0 must be a finite number$/,
    ],
    [
      "POST",
      "/admin/subscriptions",
      { url: "https://example.com/\u0000" },
      /^body\/url must match pattern/,
    ],
    [
      "POST",
      "/admin/subscriptions",
      { url: "https://example.com/", description: "a\u0000b" },
      /^body\/description must not contain NUL characters$/,
    ],
    [
      "PATCH",
      "/admin/subscriptions/1",
      { description: "\u0000" },
      /^body\/description must not contain NUL characters$/,
    ],
  ])("%s %s with a bad request → 400 naming the field", async (method, p, json, message) => {
    const res = await api(p, { method, json });
    expect(res.status).toBe(400);
    expect((await res.json()).message).toMatch(message);
  });

  it("a date-time with an offset PostgreSQL would refuse is read as the instant it names", async () => {
    const res = await api("/admin/orders/failed?created_after=2024-01-01T00:00:00%2B23:59");
    expect(res.status).toBe(200);
  });

  it("a value the database refuses past the schema comes back in words, not PostgreSQL's text", async () => {
    // Passes the schema's shape (whsec_ + 33 base64 characters) but is not 24-64 bytes of base64.
    const res = await api("/admin/subscriptions", {
      method: "POST",
      json: { url: `${receiver.url}/words`, secret: `whsec_${"A".repeat(33)}` },
    });
    expect(res.status).toBe(400);
    const { message } = await res.json();
    expect(message).toBe("refused: secret must be whsec base64 of 24 to 64 bytes");
  });

  it("retrying a row that is not failed says what state it is in", async () => {
    const [id] = await insertOrders(db.pool, 1, { prefix: "not-failed" });
    await waitFor(async () => {
      const r = await db.pool.query("SELECT upload_state FROM orders_inbox WHERE id = $1", [id]);
      return r.rows[0]?.upload_state === "uploaded";
    });
    const res = await api(`/admin/orders/${id}/retry`, { method: "POST" });
    expect(res.status).toBe(409);
    expect((await res.json()).message).toBe(
      `orders row ${id} is uploaded, not failed; only failed rows can be retried`,
    );
  });

  it("refuses a subscription to a private address when private networks are not allowed", async () => {
    const strict = await startReactor({
      databaseUrl: db.url,
      env: { ADMIN_TOKEN, WEBHOOK_ALLOW_PRIVATE_NETWORKS: "false", WEBHOOK_ALLOWED_NETWORKS: "" },
    });
    const s = await startStatusServer(strict, strict.logger);
    try {
      for (const url of [
        "http://127.0.0.1/x",
        "http://localhost/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
        "http://[::127.0.0.1]/h",
        "http://[::ffff:10.0.0.1]/h",
        "http://[64:ff9b::a9fe:a9fe]/h",
      ]) {
        const res = await fetch(`${serverUrl(s)}/admin/subscriptions`, {
          method: "POST",
          headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
          body: JSON.stringify({ url }),
        });
        expect(res.status, url).toBe(400);
        expect((await res.json()).message).toMatch(
          /body\/url refused: .* resolves to .*WEBHOOK_ALLOWED_NETWORKS.*WEBHOOK_ALLOW_PRIVATE_NETWORKS=true/,
        );
      }
    } finally {
      await s.close();
      await strict.stop(1_000);
    }
  });

  it("accepts a subscription inside WEBHOOK_ALLOWED_NETWORKS, and only there", async () => {
    const listed = await startReactor({
      databaseUrl: db.url,
      env: {
        ADMIN_TOKEN,
        WEBHOOK_ALLOW_PRIVATE_NETWORKS: "false",
        WEBHOOK_ALLOWED_NETWORKS: "127.0.0.1/32",
      },
    });
    const s = await startStatusServer(listed, listed.logger);
    const post = (url: string) =>
      fetch(`${serverUrl(s)}/admin/subscriptions`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify({ url, enabled: false }),
      });
    try {
      expect((await post(`${receiver.url}/listed`)).status).toBe(201);
      for (const url of ["http://127.0.0.2/x", "http://10.0.0.1/x", "http://[::127.0.0.1]/x"])
        expect((await post(url)).status, url).toBe(400);
    } finally {
      await s.close();
      await listed.stop(1_000);
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

  it("Retry-After is honoured on 503 (up to the clamp) and ignored on 500: the retry follows the schedule", async () => {
    const previous = receiver.fallback;
    receiver.fallback = (req) =>
      req.path === "/ra-500"
        ? { status: 500, headers: { "retry-after": "3000" } }
        : req.path === "/ra-503"
          ? { status: 503, headers: { "retry-after": "3000" } }
          : { status: 204 };
    const ids: number[] = [];
    try {
      for (const p of ["/ra-500", "/ra-503"]) {
        const res = await api("/admin/subscriptions", {
          method: "POST",
          json: { url: `${receiver.url}${p}`, event_types: ["retry_after.test"] },
        });
        ids.push((await res.json()).id);
      }
      await db.pool.query(
        "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) VALUES ('o', '1', 'retry_after.test', '{}')",
      );
      const rows = await waitFor(
        async () => {
          const r = await db.pool.query(
            `SELECT subscription_id::int AS sub, last_status,
               extract(epoch FROM next_attempt_at - now())::float8 AS wait_s
             FROM webhook_deliveries WHERE subscription_id = ANY ($1::bigint[]) AND attempts = 1
               AND state = 'pending' AND locked_by IS NULL ORDER BY subscription_id`,
            [ids],
          );
          return r.rows.length === 2 ? r.rows : null;
        },
        { what: "both deliveries attempted once" },
      );
      // 500: the schedule's first step (5 s, with jitter), not the 50 minutes asked for.
      expect(rows[0]).toMatchObject({ sub: ids[0], last_status: 500 });
      expect(rows[0].wait_s).toBeLessThan(60);
      // 503: the 50 minutes asked for (within the 1 s-1 h clamp).
      expect(rows[1]).toMatchObject({ sub: ids[1], last_status: 503 });
      expect(rows[1].wait_s).toBeGreaterThan(2_900);
      expect(rows[1].wait_s).toBeLessThanOrEqual(3_000);
    } finally {
      receiver.fallback = previous;
      for (const id of ids) await api(`/admin/subscriptions/${id}`, { method: "DELETE" });
    }
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

/** Values people and scanners send; every one must get a 4xx naming the field, never a 500. */
const HOSTILE_TEXT = [
  "\u0000",
  "a\u0000b",
  "99999999999999999999",
  "9223372036854775808",
  "-9223372036854775809",
  "9007199254740992",
  "1e30",
  "1e308",
  "1e400",
  "-1",
  "0",
  "1.5",
  "NaN",
  "Infinity",
  "0x10",
  "",
  " ",
  "true",
  "null",
  "[]",
  "{}",
  "é✓😀",
  "\u202e\ufeff",
  "x".repeat(5_000),
  "' OR 1=1 --",
  "%",
  "\\",
  "0000-01-01T00:00:00Z",
  "2024-01-01T00:00:00+23:59",
  "9999-12-31T23:59:60Z",
  "2024-02-30T00:00:00Z",
];

/** Raw query-string text that no encoder produces: NUL, a lone surrogate, invalid UTF-8. */
const HOSTILE_RAW = ["%00", "%ED%A0%80", "%FF", "%", "%%", "a&a=b"];

/** JSON values of every type, for bodies. */
const HOSTILE_JSON: unknown[] = [
  ...HOSTILE_TEXT,
  null,
  true,
  false,
  0,
  -1,
  1.5,
  2 ** 53,
  2 ** 63,
  1e30,
  -1e308,
  [],
  [1, 2],
  ["\u0000"],
  [2 ** 63],
  [null],
  {},
  { a: 1 },
  [[[[]]]],
];

/** Whole bodies that are not the object a route expects. */
const HOSTILE_BODIES = ["null", "[]", '"x"', "1", "{", '{"__proto__":{"x":1}}', "", '{"a":1}'];

describe("admin API under hostile input", () => {
  it("no 500 and no PostgreSQL text for any hostile value in any param, query field or body field", async () => {
    const db = await createTestDatabase();
    const receiver = await startReceiver();
    const app = await startReactor({ databaseUrl: db.url, env: { ADMIN_TOKEN } });
    const server = await startStatusServer(app, app.logger);
    const base = serverUrl(server);
    const problems: string[] = [];
    let requests = 0;
    const send = async (method: string, path: string, body?: string) => {
      requests++;
      const res = await fetch(`${base}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${ADMIN_TOKEN}`,
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
        body,
      });
      const text = await res.text();
      const shown = `${method} ${path.slice(0, 120)} ${body?.slice(0, 120) ?? ""} → ${res.status} ${text.slice(0, 200)}`;
      if (res.status >= 500) problems.push(shown);
      else if (
        /violates|syntax for type|out of range for type|invalid byte sequence|relation "|column "|SQLSTATE/i.test(
          text,
        )
      )
        problems.push(`PostgreSQL text: ${shown}`);
    };
    try {
      // A row of each kind, so filters and retries have something to touch.
      await insertOrders(db.pool, 2, { prefix: "fuzz" });
      await db.pool.query(
        "INSERT INTO shipstation_notifications (resource_type, resource_url, state, last_error) VALUES ('SHIP_NOTIFY', 'http://127.0.0.1:9/shipments?batchId=1', 'failed', 'fuzz')",
      );
      await db.pool.query("INSERT INTO webhook_subscriptions (url, secret) VALUES ($1, $2)", [
        `${receiver.url}/fuzz`,
        `whsec_${Buffer.alloc(32, 1).toString("base64")}`,
      ]);

      const queryRoutes: Array<[string, string[]]> = [
        [
          "/admin/orders/failed",
          [
            "limit",
            "after_id",
            "error_contains",
            "created_after",
            "created_before",
            "status",
            "order_number",
          ],
        ],
        [
          "/admin/deliveries/failed",
          [
            "limit",
            "after_id",
            "error_contains",
            "created_after",
            "created_before",
            "subscription_id",
            "event_type",
          ],
        ],
        [
          "/admin/notifications/failed",
          ["limit", "after_id", "error_contains", "created_after", "created_before"],
        ],
        ["/admin/subscriptions", ["limit", "after_id", "enabled"]],
      ];
      for (const [path, keys] of queryRoutes) {
        for (const key of [...keys, "unknown_field"]) {
          for (const v of HOSTILE_TEXT)
            await send("GET", `${path}?${key}=${encodeURIComponent(v)}`);
          for (const raw of HOSTILE_RAW) await send("GET", `${path}?${key}=${raw}`);
          await send("GET", `${path}?${key}=1&${key}=2`);
          await send("GET", `${path}?${key}[]=1`);
        }
      }

      const paramRoutes: Array<[string, string, string | undefined]> = [
        ["POST", "/admin/orders/:id/retry", undefined],
        ["POST", "/admin/deliveries/:id/retry", undefined],
        ["POST", "/admin/notifications/:id/retry", undefined],
        ["GET", "/admin/subscriptions/:id", undefined],
        ["PATCH", "/admin/subscriptions/:id", '{"enabled":false}'],
        ["DELETE", "/admin/subscriptions/:id", undefined],
        ["POST", "/admin/subscriptions/:id/rotate", "{}"],
        ["GET", "/admin/deliveries/:id/attempts", undefined],
      ];
      for (const [method, path, body] of paramRoutes) {
        for (const v of [...HOSTILE_TEXT, "1"])
          await send(method, path.replace(":id", encodeURIComponent(v) || "%20"), body);
        for (const raw of HOSTILE_RAW) await send(method, path.replace(":id", raw), body);
      }

      const bodyRoutes: Array<[string, string, Record<string, unknown>, string[]]> = [
        [
          "POST",
          "/admin/orders/retry",
          { ids: [999999] },
          [
            "all",
            "ids",
            "error_contains",
            "created_after",
            "created_before",
            "limit",
            "status",
            "order_number",
          ],
        ],
        [
          "POST",
          "/admin/deliveries/retry",
          { ids: [999999] },
          [
            "all",
            "ids",
            "error_contains",
            "created_after",
            "created_before",
            "limit",
            "subscription_id",
            "event_type",
          ],
        ],
        [
          "POST",
          "/admin/notifications/retry",
          { ids: [999999] },
          ["all", "ids", "error_contains", "created_after", "created_before", "limit"],
        ],
        [
          "POST",
          "/admin/subscriptions",
          { url: `${receiver.url}/fuzz`, enabled: false },
          ["url", "event_types", "enabled", "description", "secret"],
        ],
        ["PATCH", "/admin/subscriptions/1", {}, ["url", "event_types", "enabled", "description"]],
        ["POST", "/admin/subscriptions/1/rotate", {}, ["grace_hours"]],
      ];
      for (const [method, path, baseBody, keys] of bodyRoutes) {
        for (const key of [...keys, "unknown_field"]) {
          for (const v of HOSTILE_JSON)
            await send(method, path, JSON.stringify({ ...baseBody, [key]: v }));
          // Numbers past 2^64 as JSON text, which no JavaScript number can spell exactly.
          await send(method, path, `{"${key}": 99999999999999999999999}`);
          await send(method, path, `{"${key}": [99999999999999999999999]}`);
        }
        for (const raw of HOSTILE_BODIES) await send(method, path, raw);
      }
      expect(problems, problems.join("\n")).toEqual([]);
      expect(requests).toBeGreaterThan(1_500);
    } finally {
      await server.close();
      await app.stop(1_000);
      await receiver.close();
      await db.drop();
    }
  });
});
