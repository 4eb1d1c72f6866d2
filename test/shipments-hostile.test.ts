// The shipments workload attacked as a hostile caller, a broken ShipStation and an unlucky
// schedule would: bad tokens and bodies on the hook, garbage pages, ambiguous and split
// shipments, voids in every order, races between webhook and poll, a skewed clock, and a
// database error in the middle of a page. Real reactors, real PostgreSQL, the fake
// ShipStation on loopback, the SSRF guard on.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { FastifyInstance } from "fastify";
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from "vitest";
import type { App } from "../src/app.js";
import { makePool } from "../src/db/pool.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { buildHealth } from "../src/http/health.js";
import { serverUrl, startStatusServer } from "../src/http/server.js";
import { buildStatus } from "../src/http/status.js";
import { makeLogger } from "../src/logger.js";
import type { Shipment } from "../src/outbound/shipstation-client.js";
import { applyShipments } from "../src/workloads/shipments/apply.js";
import { listingPage, shipmentsResourceUrl } from "../src/workloads/shipments/resource-url.js";
import {
  createTestDatabase,
  setSetting,
  type TestDatabase,
  validPayload,
  waitFor,
} from "./helpers/db.js";
import {
  type PgBouncer,
  pgbouncerForTests,
  skipWithoutPgbouncer,
  startPgBouncer,
} from "./helpers/pgbouncer.js";
import { metricTotal, startReactor } from "./helpers/reactor.js";

const TOKEN = "hostile-hook-token_0123456789-abcdefXYZ";

let db: TestDatabase;
let fake: FakeShipStation;
const apps: App[] = [];
const servers: FastifyInstance[] = [];

beforeAll(async () => {
  db = await createTestDatabase();
  fake = await startFakeShipStation();
  // These tests make well over ShipStation's 40 calls a minute and are not about the
  // limit (uploads-field and the shipments bench are): a spent budget would only defer
  // notifications and polls past the tests' deadlines.
  await setSetting(db.pool, "upload_rate_limit_per_minute", "100000");
});

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
  await Promise.all(apps.splice(0).map((a) => a.stop(2_000)));
  fake.webhooks.length = 0;
  fake.shipmentsScript.length = 0;
  fake.expectAuthorization = undefined;
  fake.clockOffsetMs = 0;
});

afterAll(async () => {
  await fake.close();
  await db.drop();
});

/**
 * A reactor with its status server; the fake's SHIP_NOTIFY goes to its hook. Unless told
 * otherwise, returns once its start-up poll has finished, so no poll runs during the test
 * but the ones it runs itself (the interval is two minutes).
 */
async function startWithHook(
  options: {
    env?: Record<string, string>;
    logLines?: string[];
    shipstationUrl?: string;
    waitForPoll?: boolean;
  } = {},
) {
  // An hour-old last poll: the start-up poll does not skip its turn.
  await db.pool.query(
    "UPDATE reactor_sync_state SET updated_at = now() - interval '1 hour' WHERE name = 'shipstation_shipments'",
  );
  const since = (await db.pool.query("SELECT now() AS now")).rows[0].now as Date;
  const app = await startReactor({
    databaseUrl: db.url,
    shipstationUrl: options.shipstationUrl ?? fake.url,
    env: { SHIPSTATION_WEBHOOK_TOKEN: TOKEN, ...options.env },
    logLines: options.logLines,
  });
  apps.push(app);
  const server = await startStatusServer(app, app.logger);
  servers.push(server);
  const base = serverUrl(server);
  fake.addWebhook(`${base}/hooks/shipstation/${TOKEN}`, "hostile");
  if (options.waitForPoll ?? true) {
    await waitFor(
      async () =>
        (await count(
          "SELECT count(*) AS n FROM reactor_sync_state WHERE name = 'shipstation_shipments' AND updated_at >= $1",
          [since],
        )) === 1,
      { what: "start-up poll" },
    );
  }
  return { app, base, hook: `${base}/hooks/shipstation/${TOKEN}` };
}

/** POSTs a body (JSON-encoded unless a string) to a URL. */
async function post(url: string, body: unknown, contentType = "application/json") {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": contentType },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: the status says enough
  }
  return { status: res.status, json, text };
}

const notify = (resourceUrl: unknown, type: unknown = "SHIP_NOTIFY") => ({
  resource_url: resourceUrl,
  resource_type: type,
});

const count = async (sql: string, params: unknown[] = []) =>
  Number((await db.pool.query(sql, params)).rows[0].n);

const notificationCount = () => count("SELECT count(*) AS n FROM shipstation_notifications");

/** Orders inserted as already uploaded (no upload runs for them); ids, keys and numbers. */
async function uploadedOrders(n: number) {
  const prefix = `h-${Math.random().toString(36).slice(2, 8)}`;
  const { rows } = await db.pool.query<{ id: string; upload_key: string; order_number: string }>(
    `INSERT INTO orders_inbox (order_number, payload, upload_state, uploaded_at)
     SELECT $1 || '-' || g, $2::jsonb, 'uploaded', now() FROM generate_series(1, $3::int) g
     RETURNING id, upload_key, order_number`,
    [prefix, JSON.stringify(validPayload()), n],
  );
  return rows
    .sort((a, b) => Number(a.id) - Number(b.id))
    .map((r) => ({ id: Number(r.id), key: r.upload_key, number: r.order_number }));
}

/** The value of one labelled series of a counter. */
async function series(app: App, name: string, labels: Record<string, string>) {
  const metric = app.metrics.registry.getSingleMetric(name) as unknown as {
    get(): Promise<{ values: Array<{ value: number; labels: Record<string, string> }> }>;
  };
  const found = (await metric.get()).values.find((v) =>
    Object.entries(labels).every(([k, want]) => v.labels[k] === want),
  );
  return found?.value ?? 0;
}

const eventsFor = async (key: string, type = "order.shipped") =>
  (
    await db.pool.query(
      "SELECT payload FROM outbox_events WHERE aggregate_id = $1 AND event_type = $2 ORDER BY created_at",
      [key, type],
    )
  ).rows.map((r) => r.payload as Record<string, unknown>);

const orderRow = async (id: number) =>
  (
    await db.pool.query(
      `SELECT status, tracking_number, shipstation_shipment_id::int AS shipment, upload_state,
         attempts, last_error
       FROM orders_inbox WHERE id = $1`,
      [id],
    )
  ).rows[0];

const shipmentsModule = (app: App) => {
  const found = app.modules.find((m) => m.module.name === "shipments");
  if (!found) throw new Error("no shipments module");
  return found.instance;
};

let counter = 900_000;
/** A fresh shipment id, apart from the fake's own (from 50,000) and the malformed page's (800,000s). */
const nextId = () => ++counter;

/** A shipment as the client reads it, for an order key (null: none). */
function shipment(fields: Partial<Shipment> & { orderKey: string | null }): Shipment {
  const shipmentId = fields.shipmentId ?? nextId();
  return {
    shipmentId,
    orderId: null,
    orderNumber: null,
    createDate: "2026-11-23T06:51:33.6270000",
    createdAt: new Date("2026-11-23T14:51:33.627Z"),
    shipDate: "2026-11-23",
    trackingNumber: `TRK${shipmentId}`,
    carrierCode: "ups",
    serviceCode: "ups_ground",
    voided: false,
    ...fields,
  };
}

/**
 * 24 batches of the same shipments that overlap and touch the same orders in different
 * combinations, so their shipment and order locks cross when applied at once.
 */
const crossingBatches = (shipments: Shipment[]) =>
  Array.from({ length: 24 }, (_, i) =>
    shipments.filter((_, j) => (j + i) % 3 !== 0 || j % 4 === i % 4),
  );

/** Sessions of this database left inside a transaction. */
const idleInTransaction = () =>
  count(
    "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
  );

describe("the hook, attacked", () => {
  it("a wrong, empty, short or long token is answered as a route that does not exist, before the body is read; nothing is stored", async () => {
    const { base } = await startWithHook();
    const before = await notificationCount();
    const wrong = [
      TOKEN.slice(0, -1),
      `${TOKEN}x`,
      `${TOKEN.slice(0, -1)}Y`,
      TOKEN.toLowerCase(),
      "a",
      `${TOKEN}%00`,
      encodeURIComponent(`${TOKEN} `),
    ];
    for (const token of wrong) {
      const path = `/hooks/shipstation/${token}`;
      const res = await post(`${base}${path}`, notify(`${fake.url}/shipments?batchId=1`));
      expect(res.status, token).toBe(404);
      // Word for word what a route that does not exist answers.
      expect(res.json).toEqual({
        message: `Route POST:${path} not found`,
        error: "Not Found",
        statusCode: 404,
      });
    }
    const unknown = await post(`${base}/no/such/route`, {});
    expect(Object.keys(unknown.json).sort()).toEqual(["error", "message", "statusCode"]);
    expect(unknown.json.message).toBe("Route POST:/no/such/route not found");
    expect((await post(`${base}/hooks/shipstation/`, {})).status).toBe(404);
    // The token is checked before the body is read: no 413, 415 or 400 tells a caller
    // without it anything about the body.
    const wrongPath = `${base}/hooks/shipstation/${TOKEN.slice(0, -1)}Q`;
    expect((await post(wrongPath, "x".repeat(200 * 1024))).status).toBe(404);
    expect((await post(wrongPath, "{not json")).status).toBe(404);
    expect(
      (await post(wrongPath, "resource_url=x", "application/x-www-form-urlencoded")).status,
    ).toBe(404);
    expect(await notificationCount()).toBe(before);
  });

  it("bad bodies are 400s naming the field, and nothing is stored or fetched", async () => {
    const { hook } = await startWithHook();
    const port = Number(new URL(fake.url).port);
    const listing = `${fake.url}/shipments?batchId=1`;
    const before = await notificationCount();
    const gets = fake.gets.length;
    const cases: Array<[string, unknown, number, RegExp, string?]> = [
      ["not JSON", "{resource_url:", 400, /JSON/i],
      ["JSON null", "null", 400, /JSON object/],
      ["an array", [notify(listing)], 400, /JSON object/],
      ["a string", JSON.stringify("SHIP_NOTIFY"), 400, /JSON object/],
      [
        "no resource_url",
        { resource_type: "SHIP_NOTIFY" },
        400,
        /required property 'resource_url'/,
      ],
      ["resource_url a number", notify(12345678), 400, /resource_url must be a string/],
      ["resource_url an array", notify([listing]), 400, /resource_url must be a string/],
      ["resource_url an object", notify({ href: listing }), 400, /resource_url must be a string/],
      ["resource_url true", notify(true), 400, /resource_url must be a string/],
      ["resource_url null", notify(null), 400, /resource_url must be a string/],
      [
        "resource_type an array",
        notify(listing, ["SHIP_NOTIFY"]),
        400,
        /resource_type must be a string/,
      ],
      [
        "resource_type missing",
        { resource_url: listing },
        400,
        /required property 'resource_type'/,
      ],
      [
        "another resource_type",
        notify(listing, "ITEM_SHIP_NOTIFY"),
        400,
        /resource_type must be one of SHIP_NOTIFY/,
      ],
      ["NUL in resource_url", notify(`${listing}\u0000`), 400, /NUL/],
      ["a URL of 3000 characters", notify(`${listing}&x=${"a".repeat(3000)}`), 400, /at most 2048/],
      ["not a URL", notify("shipments?batchId=1"), 400, /not a URL/],
      ["file:", notify("file:///etc/passwd"), 400, /http\(s\) URL/],
      ["ftp:", notify(`ftp://127.0.0.1:${port}/shipments`), 400, /http\(s\) URL/],
      ["javascript:", notify("javascript:alert(1)//shipments"), 400, /http\(s\) URL/],
      [
        "user and password",
        notify(`http://user:pass@127.0.0.1:${port}/shipments`),
        400,
        /user name or password/,
      ],
      [
        "a user name only",
        notify(`http://x@127.0.0.1:${port}/shipments`),
        400,
        /user name or password/,
      ],
      [
        "origin hidden as userinfo",
        notify(`http://127.0.0.1:${port}@169.254.169.254/shipments`),
        400,
        /user name or password/,
      ],
      [
        "the metadata service",
        notify("http://169.254.169.254/latest/meta-data/"),
        400,
        /must be on/,
      ],
      ["another port", notify(`http://127.0.0.1:${port + 1}/shipments`), 400, /must be on/],
      ["https on the same port", notify(`https://127.0.0.1:${port}/shipments`), 400, /must be on/],
      [
        "another name for the host",
        notify(`http://localhost:${port}/shipments`),
        400,
        /must be on/,
      ],
      [
        "the public API's shard hosts (base is not the public API)",
        notify("https://ssapi6.shipstation.com/shipments?batchId=1"),
        400,
        /must be on/,
      ],
      [
        "another endpoint",
        notify(`${fake.url}/orders?orderStatus=shipped`),
        400,
        /shipments listing/,
      ],
      ["the webhooks endpoint", notify(`${fake.url}/webhooks`), 400, /shipments listing/],
      [
        "dot segments out of the listing",
        notify(`${fake.url}/shipments/../accounts/listtags`),
        400,
        /shipments listing/,
      ],
      [
        "encoded dot segments",
        notify(`${fake.url}/shipments/%2e%2e/webhooks`),
        400,
        /shipments listing/,
      ],
      ["a longer path", notify(`${fake.url}/shipmentsx`), 400, /shipments listing/],
      ["a body over 64 KiB", notify(`${listing}&x=${"a".repeat(70 * 1024)}`), 413, /./],
      ["text/plain", JSON.stringify(notify(listing)), 400, /JSON object/, "text/plain"],
      [
        "a form",
        "resource_url=x&resource_type=SHIP_NOTIFY",
        415,
        /./,
        "application/x-www-form-urlencoded",
      ],
    ];
    for (const [what, body, status, message, type] of cases) {
      const res = await post(hook, body, type);
      expect(res.status, what).toBe(status);
      expect(String(res.json.message), what).toMatch(message);
      if (status === 400 && !/JSON/.test(what)) {
        expect(String(res.json.message), what).toMatch(/^body(\/|$| )/);
      }
    }
    expect(await notificationCount()).toBe(before);
    expect(fake.gets.length).toBe(gets);
  });

  it("extra fields are ignored; the walk reads 500 a page from page 1 whatever page the URL names", async () => {
    const { hook } = await startWithHook();
    const [order] = await uploadedOrders(1);
    if (!order) throw new Error("no order");
    const [shipment] = await fake.ship(order.key, { notify: false });
    const batch = [...fake.batches.keys()].at(-1);
    const res = await post(hook, {
      resource_url: `${fake.url}/SHIPMENTS/?batchId=${batch}&page=7&pageSize=1#frag`,
      resource_type: "SHIP_NOTIFY",
      store_id: 12,
      extra: { nested: [1, 2, 3] },
    });
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({ received: true });
    const stored = await waitFor(
      async () =>
        (
          await db.pool.query(
            "SELECT resource_type, state FROM shipstation_notifications WHERE id = $1 AND state = 'done'",
            [res.json.id],
          )
        ).rows[0],
      { what: "notification worked" },
    );
    expect(stored.resource_type).toBe("SHIP_NOTIFY");
    expect(await eventsFor(order.key)).toHaveLength(1);
    const fetched = fake.gets.filter((g) => g.path.includes(`batchId=${batch}`));
    expect(fetched).toHaveLength(1);
    const query = new URL(fetched[0]?.path ?? "", fake.url).searchParams;
    expect(query.get("page")).toBe("1");
    expect(query.get("pageSize")).toBe("500");
    expect((await orderRow(order.id)).shipment).toBe(shipment?.shipmentId);
  });

  it("the token appears in no log line, nor in /status, /health or /metrics, whatever is sent", async () => {
    const logLines: string[] = [];
    const { app, base, hook } = await startWithHook({ logLines });
    await post(hook, "{not json");
    await post(hook, notify("http://169.254.169.254/"));
    await post(hook, "x".repeat(100 * 1024));
    await fetch(hook); // GET: no such route
    await post(`${hook}/more`, {});
    await post(`${base}/hooks/shipstation/${TOKEN.slice(0, -1)}`, {});
    await waitFor(
      async () =>
        (await count(
          "SELECT count(*) AS n FROM shipstation_notifications WHERE state = 'pending'",
        )) === 0,
      { what: "notifications worked" },
    );
    const status = JSON.stringify(await buildStatus(app));
    const health = JSON.stringify(await buildHealth(app));
    const metrics = await app.metrics.registry.metrics();
    expect(logLines.length).toBeGreaterThan(0);
    for (const [where, text] of [
      ["logs", logLines.join("\n")],
      ["/status", status],
      ["/health", health],
      ["/metrics", metrics],
    ] as const) {
      expect(text.includes(TOKEN), where).toBe(false);
    }
  });

  it("a subscription refused with the target URL echoed back shows and logs the error without the token", async () => {
    // A ShipStation that lists no webhooks and refuses the subscription, quoting what it got.
    const echo: Server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        res.setHeader("content-type", "application/json");
        if (req.method === "GET" && req.url === "/webhooks") {
          res.end(JSON.stringify({ webhooks: [] }));
          return;
        }
        const body = Buffer.concat(chunks).toString();
        res.statusCode = 400;
        res.end(JSON.stringify({ Message: `The request is invalid: ${body}` }));
      });
    });
    await new Promise<void>((r) => echo.listen(0, "127.0.0.1", r));
    try {
      const echoUrl = `http://127.0.0.1:${(echo.address() as AddressInfo).port}`;
      const logLines: string[] = [];
      const { app } = await startWithHook({
        env: { PUBLIC_URL: "https://reactor.example.com" },
        logLines,
        shipstationUrl: echoUrl,
        waitForPoll: false,
      });
      const status = await waitFor(
        async () => {
          const s = (await buildStatus(app)).workloads.shipments as {
            subscription: { state: string; error?: string };
          };
          return s.subscription.state === "failed" ? s.subscription : null;
        },
        { what: "the subscription failed" },
      );
      expect(status.error).toMatch(/HTTP 400/);
      expect(status.error).toMatch(/hooks\/shipstation\/…/);
      const health = JSON.stringify(await buildHealth(app));
      expect(health).toMatch(/SHIP_NOTIFY subscription failed/);
      for (const text of [JSON.stringify(status), health, logLines.join("\n")]) {
        expect(text.includes(TOKEN)).toBe(false);
      }
    } finally {
      await new Promise<void>((r) => echo.close(() => r()));
    }
  });

  it("a notification naming one of the public API's numbered hosts is fetched from SHIPSTATION_BASE_URL; nothing else is taken", () => {
    const publicApi = "https://ssapi.shipstation.com";
    expect(
      shipmentsResourceUrl(
        publicApi,
        "https://ssapi6.shipstation.com/shipments?storeID=1&batchId=190671332&includeShipmentItems=False",
      ),
    ).toEqual({
      ok: true,
      fetchUrl:
        "https://ssapi.shipstation.com/shipments?storeID=1&batchId=190671332&includeShipmentItems=False",
    });
    for (const refused of [
      "http://ssapi6.shipstation.com/shipments?batchId=1",
      "https://ssapi6.shipstation.com:8443/shipments?batchId=1",
      "https://ssapi6.shipstation.com.evil.example/shipments?batchId=1",
      "https://evilssapi6.shipstation.com/shipments?batchId=1",
      "https://ssapi6.shipstation.co/shipments?batchId=1",
      "https://ssapi6.shipstation.com/orders?batchId=1",
      "https://u:p@ssapi6.shipstation.com/shipments?batchId=1",
    ]) {
      expect(shipmentsResourceUrl(publicApi, refused).ok, refused).toBe(false);
    }
    // A base URL with a path (a proxy): the listing is under it, and only there.
    const proxied = "http://10.0.0.5:8080/shipstation/";
    expect(
      shipmentsResourceUrl(proxied, "http://10.0.0.5:8080/shipstation/shipments?batchId=4"),
    ).toEqual({ ok: true, fetchUrl: "http://10.0.0.5:8080/shipstation/shipments?batchId=4" });
    expect(shipmentsResourceUrl(proxied, "http://10.0.0.5:8080/shipments?batchId=4").ok).toBe(
      false,
    );
    expect(
      listingPage("https://ssapi.shipstation.com/shipments?batchId=4&page=9&pageSize=2", 3),
    ).toBe("https://ssapi.shipstation.com/shipments?batchId=4&page=3&pageSize=500");
  });
});

describe("what a resource_url page can answer", () => {
  /** Ships one order without a webhook; the resource_url of its batch. */
  async function shippedBatch() {
    const [order] = await uploadedOrders(1);
    if (!order) throw new Error("no order");
    await fake.ship(order.key, { notify: false });
    const batch = [...fake.batches.keys()].at(-1) as number;
    return { order, batch, url: `${fake.url}/shipments?batchId=${batch}` };
  }

  const notificationRow = async (id: unknown) =>
    (
      await db.pool.query(
        "SELECT state, attempts, last_error, shipments, applied FROM shipstation_notifications WHERE id = $1",
        [id],
      )
    ).rows[0];

  it("a page that is not a listing (HTML, a bare string, a 500) is retried on the schedule, applying nothing, then applied once", async () => {
    const { hook } = await startWithHook();
    const a = await shippedBatch();
    const b = await shippedBatch();
    fake.shipmentsScript.push(
      { status: 200, body: "<html>maintenance</html>" },
      { status: 500, body: { Message: "An error has occurred." } },
    );
    const ids: unknown[] = [];
    for (const n of [a, b]) ids.push((await post(hook, notify(n.url))).json.id);
    const failed = await waitFor(
      async () => {
        const rows = await Promise.all(ids.map(notificationRow));
        return rows.every((r) => r.attempts === 1 && r.last_error) ? rows : null;
      },
      { what: "both attempts failed" },
    );
    for (const row of failed) {
      expect(row.state).toBe("pending");
      expect(row.last_error).toMatch(/no shipments array|HTTP 500/);
    }
    expect(await eventsFor(a.order.key)).toHaveLength(0);
    expect(await eventsFor(b.order.key)).toHaveLength(0);
    // The first retry comes 5 s (±20 %) later.
    await waitFor(
      async () => (await Promise.all(ids.map(notificationRow))).every((r) => r.state === "done"),
      { what: "retried and applied", timeoutMs: 15_000 },
    );
    expect(await eventsFor(a.order.key)).toHaveLength(1);
    expect(await eventsFor(b.order.key)).toHaveLength(1);
  });

  it("malformed shipments are skipped one by one with a log line, one PostgreSQL cannot store is left out alone, and the good ones are applied", async () => {
    const logLines: string[] = [];
    const { hook } = await startWithHook({ logLines });
    const orders = await uploadedOrders(4);
    const [good, nul, surrogate, noDate] = orders as [
      (typeof orders)[0],
      (typeof orders)[0],
      (typeof orders)[0],
      (typeof orders)[0],
    ];
    const valid = (id: number, key: string, extra: Record<string, unknown> = {}) => ({
      shipmentId: id,
      orderId: 1,
      orderKey: key,
      orderNumber: "n",
      createDate: "2026-11-23T06:51:33.6270000",
      shipDate: "2026-11-23",
      trackingNumber: `T${id}`,
      carrierCode: "usps",
      serviceCode: "usps_priority_mail",
      voided: false,
      ...extra,
    });
    const batch = 990_001;
    fake.batches.set(batch, [
      valid(800_001, good.key),
      { shipmentId: "800002", orderKey: good.key },
      { orderKey: good.key, trackingNumber: "no id" },
      { shipmentId: -3, orderKey: good.key },
      { shipmentId: 1.5, orderKey: good.key },
      { shipmentId: 2 ** 60, orderKey: good.key },
      { shipmentId: 800_004, orderKey: 5 },
      { shipmentId: 800_005, orderKey: good.key, voided: "yes" },
      { shipmentId: 800_006, orderKey: good.key, trackingNumber: { x: 1 } },
      null as unknown as Record<string, unknown>,
      "a string" as unknown as Record<string, unknown>,
      [1, 2] as unknown as Record<string, unknown>,
      valid(800_007, nul.key, { trackingNumber: "94\u000000" }),
      valid(800_008, surrogate.key, { trackingNumber: "94\ud80000" }),
      valid(800_009, noDate.key, { createDate: "yesterday" }),
    ]);
    const res = await post(hook, notify(`${fake.url}/shipments?batchId=${batch}`));
    expect(res.status).toBe(200);
    const row = await waitFor(
      async () => {
        const r = await notificationRow(res.json.id);
        return r.state === "done" ? r : null;
      },
      { what: "notification worked" },
    );
    expect(row).toMatchObject({ shipments: 4, applied: 2 });
    expect(await orderRow(good.id)).toMatchObject({ status: "shipped", shipment: 800_001 });
    expect(await orderRow(noDate.id)).toMatchObject({ status: "shipped", shipment: 800_009 });
    // Left out, and rolled back whole: not shipped, not recorded, no event.
    for (const order of [nul, surrogate]) {
      expect(await orderRow(order.id)).toMatchObject({
        status: "awaiting_shipment",
        shipment: null,
      });
      expect(await eventsFor(order.key)).toHaveLength(0);
    }
    expect(
      await count(
        "SELECT count(*) AS n FROM shipstation_shipments WHERE shipment_id IN (800007, 800008)",
      ),
    ).toBe(0);
    const warnings = logLines.filter((l) => l.includes("cannot be applied"));
    expect(warnings.length).toBe(11);
    const refused = logLines.filter((l) => l.includes("PostgreSQL refused a shipment"));
    expect(refused.join("\n")).toMatch(/800007[\s\S]*NUL/);
    expect(refused.join("\n")).toMatch(/800008/);
  });

  it("401, 404 and 429 on a page pause the notification, which then completes by itself; a 400 fails it with ShipStation's words", async () => {
    const { app, hook } = await startWithHook();
    const responses = app.metrics.registry.getSingleMetric("reactor_http_responses_total");
    for (const scripted of [
      { status: 401 },
      { status: 404 },
      { status: 429, headers: { "X-Rate-Limit-Reset": "1", "X-Rate-Limit-Remaining": "0" } },
    ]) {
      const n = await shippedBatch();
      const before = await metricTotal(responses as never);
      fake.shipmentsScript.push(scripted);
      const { id } = (await post(hook, notify(n.url))).json;
      const row = await waitFor(
        async () => {
          const r = await notificationRow(id);
          return r.state === "done" ? r : null;
        },
        { what: `done after a ${scripted.status}`, timeoutMs: 10_000 },
      );
      expect(await eventsFor(n.order.key), String(scripted.status)).toHaveLength(1);
      // A pause is not a failed attempt.
      expect(row.attempts, String(scripted.status)).toBeLessThanOrEqual(1);
      expect(fake.gets.filter((g) => g.path.includes(`batchId=${n.batch}&`)).length).toBe(2);
      expect(await metricTotal(responses as never)).toBeGreaterThanOrEqual(before + 2);
    }
    const n = await shippedBatch();
    fake.shipmentsScript.push({ status: 400, body: { Message: "batchId is not valid" } });
    const { id } = (await post(hook, notify(n.url))).json;
    const row = await waitFor(
      async () => {
        const r = await notificationRow(id);
        return r.state === "failed" ? r : null;
      },
      { what: "failed" },
    );
    expect(row.last_error).toMatch(/HTTP 400.*batchId is not valid/);
    expect(await eventsFor(n.order.key)).toHaveLength(0);
  });
});

describe("applying shipments", () => {
  const recorded = async (shipmentId: number) =>
    (
      await db.pool.query(
        "SELECT order_id::int AS order_id, voided FROM shipstation_shipments WHERE shipment_id = $1",
        [shipmentId],
      )
    ).rows[0];

  it("a shipment of an unknown order is recorded unmatched once; again, or voided, it changes nothing", async () => {
    const s = shipment({ orderKey: "no-such-order-key", orderNumber: "no-such-number" });
    const first = await applyShipments(db.pool, [s], "webhook");
    expect(first).toMatchObject({ applied: 0, unchanged: 0, refused: [] });
    expect(first.unmatched.map((u) => u.shipmentId)).toEqual([s.shipmentId]);
    expect(await recorded(s.shipmentId)).toEqual({ order_id: null, voided: false });
    const again = await applyShipments(db.pool, [s], "poll");
    expect(again).toMatchObject({ applied: 0, unchanged: 1, unmatched: [] });
    const voided = await applyShipments(db.pool, [{ ...s, voided: true }], "poll");
    expect(voided).toMatchObject({ applied: 0, unchanged: 1, unmatched: [] });
    expect(await eventsFor("no-such-order-key", "order.shipment_voided")).toHaveLength(0);
  });

  it("orderNumber matches only a shipment without an orderKey, and only when one order has that number", async () => {
    const [single] = await uploadedOrders(1);
    const twins = await uploadedOrders(2);
    if (!single || twins.length !== 2) throw new Error("no orders");
    await db.pool.query("UPDATE orders_inbox SET order_number = 'TWIN-1' WHERE id = ANY($1)", [
      twins.map((t) => t.id),
    ]);
    // Another store's order with our number: its own orderKey says it is not ours.
    const foreign = shipment({ orderKey: "amazon-123-456", orderNumber: single.number });
    const ambiguous = shipment({ orderKey: null, orderNumber: "TWIN-1" });
    const byNumber = shipment({ orderKey: null, orderNumber: single.number });
    const result = await applyShipments(db.pool, [foreign, ambiguous, byNumber], "poll");
    expect(result.applied).toBe(1);
    expect(result.unmatched.map((u) => u.shipmentId).sort()).toEqual(
      [foreign.shipmentId, ambiguous.shipmentId].sort(),
    );
    expect(await orderRow(single.id)).toMatchObject({
      status: "shipped",
      shipment: byNumber.shipmentId,
    });
    for (const twin of twins) {
      expect(await orderRow(twin.id)).toMatchObject({
        status: "awaiting_shipment",
        shipment: null,
      });
      expect(await eventsFor(twin.key)).toHaveLength(0);
    }
    expect((await eventsFor(single.key)).map((e) => e.shipmentId)).toEqual([byNumber.shipmentId]);
  });

  it("a shipment first seen voided changes nothing, and its earlier, unvoided view seen later changes nothing either", async () => {
    const [order] = await uploadedOrders(1);
    if (!order) throw new Error("no order");
    const s = shipment({ orderKey: order.key });
    expect(await applyShipments(db.pool, [{ ...s, voided: true }], "webhook")).toMatchObject({
      applied: 0,
      unchanged: 1,
    });
    expect(await recorded(s.shipmentId)).toEqual({ order_id: order.id, voided: true });
    expect(await applyShipments(db.pool, [s], "poll")).toMatchObject({ applied: 0, unchanged: 1 });
    expect(await orderRow(order.id)).toMatchObject({
      status: "awaiting_shipment",
      shipment: null,
      upload_state: "uploaded",
    });
    expect(await eventsFor(order.key)).toHaveLength(0);
    expect(await eventsFor(order.key, "order.shipment_voided")).toHaveLength(0);
  });

  it("voiding a shipment of an order since shipped again leaves the order shipped by the new one", async () => {
    const [order] = await uploadedOrders(1);
    if (!order) throw new Error("no order");
    const first = shipment({ orderKey: order.key });
    const second = shipment({ orderKey: order.key });
    await applyShipments(db.pool, [first], "webhook");
    await applyShipments(db.pool, [second], "webhook");
    const result = await applyShipments(db.pool, [{ ...first, voided: true }], "webhook");
    expect(result.applied).toBe(1);
    expect(await orderRow(order.id)).toMatchObject({
      status: "shipped",
      shipment: second.shipmentId,
      tracking_number: second.trackingNumber,
      upload_state: "uploaded",
      attempts: 0,
    });
    expect((await eventsFor(order.key, "order.shipment_voided")).map((e) => e.shipmentId)).toEqual([
      first.shipmentId,
    ]);
  });

  it("split shipments: each is an event, the order shows the newest in whatever order they come, and voids fall back to what still stands; never an upload", async () => {
    const [order] = await uploadedOrders(1);
    if (!order) throw new Error("no order");
    const older = shipment({ orderKey: order.key });
    const newer = shipment({ orderKey: order.key });
    // The newer one is seen first (a webhook), the older one later (the poll).
    await applyShipments(db.pool, [newer], "webhook");
    await applyShipments(db.pool, [older], "poll");
    expect(await orderRow(order.id)).toMatchObject({
      status: "shipped",
      shipment: newer.shipmentId,
      tracking_number: newer.trackingNumber,
    });
    expect((await eventsFor(order.key)).map((e) => e.shipmentId)).toEqual([
      newer.shipmentId,
      older.shipmentId,
    ]);
    // The label the order shows is voided: the older shipment still stands, with its tracking.
    await applyShipments(db.pool, [{ ...newer, voided: true }], "webhook");
    expect(await orderRow(order.id)).toMatchObject({
      status: "shipped",
      shipment: older.shipmentId,
      tracking_number: older.trackingNumber,
    });
    await applyShipments(db.pool, [{ ...older, voided: true }], "webhook");
    expect(await orderRow(order.id)).toMatchObject({
      status: "awaiting_shipment",
      shipment: null,
      upload_state: "uploaded",
      attempts: 0,
      last_error: null,
    });
    expect(await eventsFor(order.key, "order.shipment_voided")).toHaveLength(2);
    // Not one of these changes put the order back in the upload queue.
    expect(
      await count(
        "SELECT count(*) AS n FROM orders_inbox WHERE id = $1 AND upload_state = 'pending'",
        [order.id],
      ),
    ).toBe(0);
  });

  it("many transactions applying the same and crossing shipments at once write exactly one event per shipment, with no error", async () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 12 });
    pool.on("error", () => undefined);
    try {
      const orders = await uploadedOrders(6);
      const shipments = orders.flatMap((o) => [
        shipment({ orderKey: o.key }),
        shipment({ orderKey: o.key }),
      ]);
      const batches = crossingBatches(shipments);
      const results = await Promise.all(
        batches.map((b, i) => applyShipments(pool, b, i % 2 ? "poll" : "webhook")),
      );
      expect(results.reduce((sum, r) => sum + r.applied, 0)).toBe(shipments.length);
      for (const o of orders) {
        expect((await eventsFor(o.key)).length).toBe(2);
        const newest = Math.max(
          ...shipments.filter((s) => s.orderKey === o.key).map((s) => s.shipmentId),
        );
        expect(await orderRow(o.id)).toMatchObject({ status: "shipped", shipment: newest });
      }
    } finally {
      await pool.end();
    }
  });

  it("an error in the middle of a batch rolls all of it back, and the connection goes back to the pool usable (or not at all)", async () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    pool.on("error", () => undefined);
    const [a, b, c] = await uploadedOrders(3);
    if (!a || !b || !c) throw new Error("no orders");
    const sa = shipment({ orderKey: a.key });
    const sb = shipment({ orderKey: b.key });
    const sc = shipment({ orderKey: c.key });
    try {
      // A failure that is not about the data: the batch is not applied at all.
      await db.pool.query(`
        CREATE FUNCTION hostile_fail() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.shipment_id = ${sb.shipmentId} THEN RAISE EXCEPTION 'injected failure'; END IF;
          IF NEW.shipment_id = ${sc.shipmentId} THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER hostile_fail BEFORE INSERT ON shipstation_shipments
          FOR EACH ROW EXECUTE FUNCTION hostile_fail();`);
      await expect(applyShipments(pool, [sa, sb], "poll")).rejects.toThrow(/injected failure/);
      expect(await recorded(sa.shipmentId)).toBeUndefined();
      expect(await orderRow(a.id)).toMatchObject({ status: "awaiting_shipment" });
      expect(await eventsFor(a.key)).toHaveLength(0);
      // The pool's only connection is usable: not left inside the failed transaction.
      expect(await idleInTransaction()).toBe(0);
      expect((await pool.query("SELECT 1 AS one")).rows[0].one).toBe(1);
      // The connection dies mid-batch: it is discarded, and the next batch gets a new one.
      await expect(applyShipments(pool, [sa, sc], "poll")).rejects.toThrow();
      expect(await recorded(sa.shipmentId)).toBeUndefined();
      await db.pool.query("DROP TRIGGER hostile_fail ON shipstation_shipments");
      const result = await applyShipments(pool, [sa, sb, sc], "poll");
      expect(result.applied).toBe(3);
      for (const o of [a, b, c]) expect((await eventsFor(o.key)).length).toBe(1);
    } finally {
      await db.pool.query("DROP TRIGGER IF EXISTS hostile_fail ON shipstation_shipments");
      await db.pool.query("DROP FUNCTION IF EXISTS hostile_fail()");
      await pool.end();
    }
  });
});

describe("the watermark poll", () => {
  /** Runs one poll now, as if its interval had passed. */
  async function pollNow(app: App) {
    await db.pool.query(
      "UPDATE reactor_sync_state SET updated_at = now() - interval '1 hour' WHERE name = 'shipstation_shipments'",
    );
    const job = shipmentsModule(app).jobs?.[0];
    if (!job) throw new Error("no poll job");
    await job.run();
  }

  const shipped = async (ids: number[]) =>
    count("SELECT count(*) AS n FROM orders_inbox WHERE id = ANY($1) AND status = 'shipped'", [
      ids,
    ]);

  it("finds every shipment while ShipStation's clock runs 30 minutes behind, then ahead, then behind again", async () => {
    const { app } = await startWithHook();
    const orders = await uploadedOrders(4);
    const steps: Array<[number, typeof orders]> = [
      [-30 * 60_000, orders.slice(0, 2)],
      [30 * 60_000, orders.slice(2, 3)],
      [-30 * 60_000, orders.slice(3, 4)],
    ];
    for (const [offset, batch] of steps) {
      fake.clockOffsetMs = offset;
      await fake.ship(
        batch.map((o) => o.key),
        { notify: false },
      );
      await pollNow(app);
      expect(await shipped(batch.map((o) => o.id)), `offset ${offset}`).toBe(batch.length);
    }
    for (const o of orders) expect(await eventsFor(o.key)).toHaveLength(1);
  });

  it("a createDate far in the future does not move the watermark past the shipments still to come", async () => {
    const logLines: string[] = [];
    const { app } = await startWithHook({ logLines });
    const bogus = {
      shipmentId: 990_000_001,
      orderKey: "not-ours-future",
      orderNumber: "F-1",
      createDate: "2999-01-01T00:00:00.0000000",
      voided: false,
    };
    fake.shipments.push(bogus);
    try {
      await pollNow(app);
      const { rows } = await db.pool.query(
        "SELECT watermark FROM reactor_sync_state WHERE name = 'shipstation_shipments'",
      );
      expect((rows[0]?.watermark as Date | null)?.getTime() ?? 0).toBeLessThan(
        Date.now() + 24 * 3600_000,
      );
      expect(logLines.join("\n")).toMatch(/more than a day ahead/);
      const [order] = await uploadedOrders(1);
      if (!order) throw new Error("no order");
      await fake.ship(order.key, { notify: false });
      await pollNow(app);
      expect(await shipped([order.id])).toBe(1);
    } finally {
      fake.shipments.splice(fake.shipments.indexOf(bogus), 1);
    }
  });

  it("a webhook and a poll applying the same shipments at the same moment write one event each", async () => {
    const { app } = await startWithHook();
    const applied = app.metrics.registry.getSingleMetric("reactor_shipments_applied_total");
    const before = await metricTotal(applied as never);
    const orders = await uploadedOrders(5);
    for (const o of orders) {
      await Promise.all([fake.ship(o.key), pollNow(app)]);
      await pollNow(app);
    }
    await waitFor(
      async () =>
        (await count(
          "SELECT count(*) AS n FROM shipstation_notifications WHERE state = 'pending'",
        )) === 0,
      { what: "notifications worked" },
    );
    for (const o of orders) expect(await eventsFor(o.key)).toHaveLength(1);
    expect((await metricTotal(applied as never)) - before).toBe(orders.length);
  });

  it("with shipments_enabled=false notifications wait and nothing is fetched; enabled again, they are applied", async () => {
    const { app } = await startWithHook();
    await setSetting(db.pool, "shipments_enabled", "false");
    try {
      await waitFor(() => app.settings.current.shipments_enabled === false, { what: "disabled" });
      const notified = { workload: "shipments", reason: "notify" };
      const woken = await series(app, "reactor_wakeups_total", notified);
      const [order] = await uploadedOrders(1);
      if (!order) throw new Error("no order");
      const gets = fake.gets.length;
      await fake.ship(order.key);
      expect(fake.notifications.at(-1)?.status).toBe(200);
      await pollNow(app);
      // The stored notification woke the drainer, which claimed nothing.
      await waitFor(async () => (await series(app, "reactor_wakeups_total", notified)) > woken, {
        what: "woken",
      });
      expect(fake.gets.length).toBe(gets);
      expect(
        await count(
          "SELECT count(*) AS n FROM shipstation_notifications WHERE state = 'pending' AND attempts = 0 AND locked_by IS NULL",
        ),
      ).toBe(1);
      expect(await shipped([order.id])).toBe(0);
      await setSetting(db.pool, "shipments_enabled", "true");
      await waitFor(async () => (await shipped([order.id])) === 1, {
        what: "applied when enabled",
      });
      expect(await eventsFor(order.key)).toHaveLength(1);
    } finally {
      await setSetting(db.pool, "shipments_enabled", "true");
    }
  });

  it("without ShipStation credentials notifications are kept, never failed, and the poll calls nothing", async () => {
    const since = new Date();
    const app = await startReactor({
      databaseUrl: db.url,
      shipstationUrl: fake.url,
      env: {
        SHIPSTATION_WEBHOOK_TOKEN: TOKEN,
        SHIPSTATION_API_KEY: undefined as unknown as string,
        SHIPSTATION_API_SECRET: undefined as unknown as string,
      },
    });
    apps.push(app);
    expect(shipmentsModule(app).workload.disabledReason?.()).toMatch(/SHIPSTATION_API_KEY/);
    const server = await startStatusServer(app, app.logger);
    servers.push(server);
    const hook = `${serverUrl(server)}/hooks/shipstation/${TOKEN}`;
    const gets = fake.gets.length;
    const res = await post(hook, notify(`${fake.url}/shipments?batchId=424242`));
    expect(res.status).toBe(200);
    await pollNow(app);
    const health = (await buildHealth(app)) as {
      checks: Record<string, Array<{ status: string }>>;
    };
    expect(health.checks["shipments:credentials"]?.[0]?.status).toBe("warn");
    expect(fake.gets.length).toBe(gets);
    expect(
      (
        await db.pool.query("SELECT state, attempts FROM shipstation_notifications WHERE id = $1", [
          res.json.id,
        ])
      ).rows[0],
    ).toEqual({ state: "pending", attempts: 0 });
    expect(
      await count(
        "SELECT count(*) AS n FROM reactor_sync_state WHERE name = 'shipstation_shipments' AND updated_at >= $1",
        [since],
      ),
    ).toBe(0);
    // Leave nothing pending for later tests.
    await db.pool.query("UPDATE shipstation_notifications SET state = 'done' WHERE id = $1", [
      res.json.id,
    ]);
  });
});

describe("a shipment and an upload of the same order", () => {
  // The re-queue trigger (sql/010_orders_inbox.sql) leaves a shipment's change alone: no
  // new version stamp, so the upload in flight is not sent again, nor failed at its claim
  // ("status 'shipped' is not sent").
  it("a shipment applied while the order's re-upload is in flight does not send it again or fail it", async () => {
    await startWithHook();
    const { rows } = await db.pool.query<{ id: string; upload_key: string }>(
      `INSERT INTO orders_inbox (order_number, payload) VALUES ($1, $2::jsonb) RETURNING id, upload_key`,
      [`inflight-${Date.now()}`, JSON.stringify(validPayload())],
    );
    const id = Number(rows[0]?.id);
    const key = rows[0]?.upload_key as string;
    await waitFor(async () => (await orderRow(id)).upload_state === "uploaded", {
      what: "uploaded",
    });
    // The app changes the order: it is sent again, and ShipStation takes its time answering.
    fake.script.push({ status: 200, delayMs: 1_500 });
    const calls = fake.calls.length;
    await db.pool.query(
      `UPDATE orders_inbox SET payload = payload || '{"customerNotes":"leave at door"}' WHERE id = $1`,
      [id],
    );
    await waitFor(() => fake.calls.length > calls, { what: "re-upload in flight" });
    await fake.ship(key);
    await waitFor(async () => (await eventsFor(key)).length === 1, { what: "shipped" });
    const settled = await waitFor(
      async () => {
        const r = (
          await db.pool.query(
            "SELECT upload_state, locked_by, last_error, status FROM orders_inbox WHERE id = $1",
            [id],
          )
        ).rows[0];
        return r.locked_by === null && r.upload_state !== "pending" ? r : null;
      },
      { what: "upload finalized", timeoutMs: 10_000 },
    );
    expect(settled).toMatchObject({
      status: "shipped",
      upload_state: "uploaded",
      last_error: null,
    });
    expect(fake.calls.length).toBe(calls + 1);
  });
});

describe("through PgBouncer in transaction mode", () => {
  let bouncer: PgBouncer | null = null;

  beforeAll(async () => {
    const bin = await pgbouncerForTests();
    if (bin)
      bouncer = await startPgBouncer({ bin, adminUrl: inject("adminUrl"), databases: [db.name] });
  });

  afterAll(async () => {
    await bouncer?.stop();
  });

  it("batches applied at once from many pooled clients, one failing mid-batch, write one event per shipment and leave no server connection in a transaction", async (ctx) => {
    skipWithoutPgbouncer(ctx, bouncer);
    const pool = makePool(bouncer.urlFor(db.name), makeLogger("silent"), { max: 10 });
    const orders = await uploadedOrders(6);
    const shipments = orders.flatMap((o) => [
      shipment({ orderKey: o.key }),
      shipment({ orderKey: o.key }),
    ]);
    const failing = shipment({ orderKey: orders[0]?.key ?? null });
    try {
      await db.pool.query(`
        CREATE FUNCTION hostile_fail_pooled() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.shipment_id = ${failing.shipmentId} THEN RAISE EXCEPTION 'injected failure'; END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER hostile_fail_pooled BEFORE INSERT ON shipstation_shipments
          FOR EACH ROW EXECUTE FUNCTION hostile_fail_pooled();`);
      const batches = crossingBatches(shipments);
      const outcomes = await Promise.allSettled([
        ...batches.map((b, i) => applyShipments(pool, b, i % 2 ? "poll" : "webhook")),
        applyShipments(pool, [...shipments.slice(0, 3), failing], "poll"),
      ]);
      const refused = outcomes.filter((o) => o.status === "rejected");
      expect(refused).toHaveLength(1);
      expect(String((refused[0] as PromiseRejectedResult).reason)).toMatch(/injected failure/);
      const applied = outcomes
        .filter((o) => o.status === "fulfilled")
        .reduce(
          (sum, o) => sum + (o as PromiseFulfilledResult<{ applied: number }>).value.applied,
          0,
        );
      expect(applied).toBe(shipments.length);
      for (const o of orders) expect((await eventsFor(o.key)).length).toBe(2);
      expect(await idleInTransaction()).toBe(0);
      // Every pooled client still works, through whichever server connection it gets.
      const ones = await Promise.all(
        Array.from({ length: 10 }, () => pool.query("SELECT 1 AS one")),
      );
      expect(ones.every((r) => r.rows[0].one === 1)).toBe(true);
    } finally {
      await db.pool.query("DROP TRIGGER IF EXISTS hostile_fail_pooled ON shipstation_shipments");
      await db.pool.query("DROP FUNCTION IF EXISTS hostile_fail_pooled()");
      await pool.end();
    }
  });
});
