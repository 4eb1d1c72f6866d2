// Shipments come back: ShipStation's SHIP_NOTIFY (and, as the safety net, the watermark
// poll) marks the order shipped with its tracking, and subscribers get `order.shipped`.
// Real reactors, a real fake ShipStation and a real webhook receiver on loopback.
import type { FastifyInstance } from "fastify";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { type Receiver, startReceiver } from "../src/demo/receiver.js";
import { serverUrl, startStatusServer } from "../src/http/server.js";
import {
  createTestDatabase,
  insertOrders,
  setSetting,
  subscribe,
  type TestDatabase,
  waitFor,
} from "./helpers/db.js";
import { metricTotal, startReactor, startReplicas } from "./helpers/reactor.js";

const TOKEN = "hook-token-0123456789abcdefghij";

describe("shipments in", () => {
  let db: TestDatabase;
  let fake: FakeShipStation;
  let receiver: Receiver;
  const apps: App[] = [];
  const servers: FastifyInstance[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    fake = await startFakeShipStation();
    receiver = await startReceiver();
    await subscribe(db.pool, `${receiver.url}/hooks`, { eventTypes: ["order.*"] });
  });

  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => s.close()));
    await Promise.all(apps.splice(0).map((a) => a.stop(2_000)));
    fake.webhooks.length = 0;
    receiver.requests.length = 0;
  });

  afterAll(async () => {
    await fake.close();
    await receiver.close();
    await db.drop();
  });

  /**
   * A reactor with its status server, the fake's SHIP_NOTIFY pointed at its hook. Returns
   * once its start-up poll has finished: a poll still running when a test ships an order
   * could apply the shipment before the webhook does.
   */
  async function startWithHook(env: Record<string, string> = {}) {
    // An hour-old last poll, so the start-up poll runs instead of skipping its turn.
    await db.pool.query(
      "UPDATE reactor_sync_state SET updated_at = now() - interval '1 hour' WHERE name = 'shipstation_shipments'",
    );
    const since = (await db.pool.query("SELECT now() AS now")).rows[0].now as Date;
    const app = await startReactor({
      databaseUrl: db.url,
      shipstationUrl: fake.url,
      env: { SHIPSTATION_WEBHOOK_TOKEN: TOKEN, ...env },
    });
    apps.push(app);
    const server = await startStatusServer(app, app.logger);
    servers.push(server);
    const base = serverUrl(server);
    fake.addWebhook(`${base}/hooks/shipstation/${TOKEN}`, "test");
    await waitFor(
      async () =>
        (
          await db.pool.query(
            "SELECT 1 FROM reactor_sync_state WHERE name = 'shipstation_shipments' AND updated_at >= $1",
            [since],
          )
        ).rows.length === 1,
      { what: "start-up poll" },
    );
    return { app, base };
  }

  async function uploadedKeys(ids: number[]): Promise<string[]> {
    await waitFor(
      async () => {
        const { rows } = await db.pool.query(
          "SELECT count(*)::int AS n FROM orders_inbox WHERE id = ANY($1) AND upload_state = 'uploaded'",
          [ids],
        );
        return rows[0].n === ids.length;
      },
      { what: "orders uploaded" },
    );
    const { rows } = await db.pool.query(
      "SELECT upload_key FROM orders_inbox WHERE id = ANY($1) ORDER BY id",
      [ids],
    );
    return rows.map((r) => r.upload_key as string);
  }

  const eventsFor = async (key: string, type = "order.shipped") =>
    (
      await db.pool.query(
        "SELECT payload FROM outbox_events WHERE aggregate_id = $1 AND event_type = $2",
        [key, type],
      )
    ).rows.map((r) => r.payload);

  it("a SHIP_NOTIFY marks the order shipped and the subscriber gets order.shipped with the tracking number", async () => {
    const { app } = await startWithHook();
    const [id] = await insertOrders(db.pool, 1);
    const [key] = await uploadedKeys([id as number]);
    const [shipment] = await fake.ship(key as string, { trackingNumber: "9400TEST0001" });
    const order = await waitFor(
      async () =>
        (
          await db.pool.query(
            "SELECT status, tracking_number, carrier_code, service_code, shipstation_shipment_id, shipped_at, upload_state FROM orders_inbox WHERE id = $1 AND status = 'shipped'",
            [id],
          )
        ).rows[0],
      { what: "order shipped" },
    );
    expect(order).toMatchObject({
      tracking_number: "9400TEST0001",
      carrier_code: shipment?.carrierCode,
      service_code: shipment?.serviceCode,
      upload_state: "uploaded",
    });
    expect(Number(order.shipstation_shipment_id)).toBe(shipment?.shipmentId);
    const hook = await waitFor(
      () =>
        receiver.requests.find(
          (r) => r.body.includes('"order.shipped"') && r.body.includes("9400TEST0001"),
        ),
      { what: "order.shipped webhook" },
    );
    const body = JSON.parse(hook.body);
    expect(body.data ?? body.payload ?? body).toMatchObject({
      orderKey: key,
      trackingNumber: "9400TEST0001",
      shipmentId: shipment?.shipmentId,
    });
    expect(
      await metricTotal(
        app.metrics.registry.getSingleMetric("reactor_shipments_applied_total") as never,
      ),
    ).toBe(1);
    // The notification row is done, with what it held.
    const { rows } = await db.pool.query(
      "SELECT state, shipments, applied FROM shipstation_notifications ORDER BY id DESC LIMIT 1",
    );
    expect(rows[0]).toEqual({ state: "done", shipments: 1, applied: 1 });
  });

  it("the same webhook twice applies once and emits one event", async () => {
    const { base } = await startWithHook();
    const [id] = await insertOrders(db.pool, 1);
    const [key] = await uploadedKeys([id as number]);
    await fake.ship(key as string);
    await waitFor(async () => (await eventsFor(key as string)).length === 1, { what: "event" });
    const batch = [...fake.batches.keys()].at(-1);
    const resource = `${fake.url}/shipments?batchId=${batch}&includeShipmentItems=False`;
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${base}/hooks/shipstation/${TOKEN}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ resource_url: resource, resource_type: "SHIP_NOTIFY" }),
      });
      expect(res.status).toBe(200);
    }
    await waitFor(
      async () =>
        (
          await db.pool.query(
            "SELECT count(*)::int AS n FROM shipstation_notifications WHERE state = 'pending'",
          )
        ).rows[0].n === 0,
      { what: "notifications worked" },
    );
    expect(await eventsFor(key as string)).toHaveLength(1);
  });

  it("a voided label puts the order back to awaiting_shipment without a re-upload, and emits order.shipment_voided", async () => {
    await startWithHook();
    const [id] = await insertOrders(db.pool, 1);
    const [key] = await uploadedKeys([id as number]);
    const calls = fake.calls.length;
    const [shipment] = await fake.ship(key as string);
    await waitFor(async () => (await eventsFor(key as string)).length === 1, { what: "shipped" });
    await fake.voidShipment(shipment?.shipmentId as number);
    const voided = await waitFor(
      async () => (await eventsFor(key as string, "order.shipment_voided"))[0],
      { what: "voided event" },
    );
    expect(voided).toMatchObject({ shipmentId: shipment?.shipmentId, orderKey: key });
    const { rows } = await db.pool.query(
      "SELECT status, tracking_number, shipstation_shipment_id, upload_state FROM orders_inbox WHERE id = $1",
      [id],
    );
    expect(rows[0]).toEqual({
      status: "awaiting_shipment",
      tracking_number: null,
      shipstation_shipment_id: null,
      upload_state: "uploaded",
    });
    expect(fake.calls.length).toBe(calls);
  });

  it("a wrong token is a 404 and stores nothing; a foreign resource_url is refused and never fetched", async () => {
    const { base } = await startWithHook();
    const before = (await db.pool.query("SELECT count(*)::int AS n FROM shipstation_notifications"))
      .rows[0].n;
    const wrong = await fetch(`${base}/hooks/shipstation/not-the-token-at-all-xxxxxxxx`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ resource_url: `${fake.url}/shipments`, resource_type: "SHIP_NOTIFY" }),
    });
    expect(wrong.status).toBe(404);
    const gets = fake.gets.length;
    const foreign = await fetch(`${base}/hooks/shipstation/${TOKEN}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        resource_url: "http://169.254.169.254/latest/meta-data/",
        resource_type: "SHIP_NOTIFY",
      }),
    });
    expect(foreign.status).toBe(400);
    expect((await foreign.json()).message).toMatch(/resource_url must be on/);
    const bad = await fetch(`${base}/hooks/shipstation/${TOKEN}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ resource_type: "SHIP_NOTIFY" }),
    });
    expect(bad.status).toBe(400);
    expect((await bad.json()).message).toMatch(/resource_url/);
    const after = (await db.pool.query("SELECT count(*)::int AS n FROM shipstation_notifications"))
      .rows[0].n;
    expect(after).toBe(before);
    expect(fake.gets.length).toBe(gets);
  });

  it("a shipment with no webhook is applied by the poll within one interval; two replicas poll once and apply it once", async () => {
    await setSetting(db.pool, "shipment_sync_interval_seconds", "10");
    const [a, b] = await startReplicas(2, { databaseUrl: db.url, shipstationUrl: fake.url });
    apps.push(a as App, b as App);
    const ids = await insertOrders(db.pool, 3);
    const keys = await uploadedKeys(ids);
    const listings = () => fake.gets.filter((g) => g.path.startsWith("/shipments?createDateStart"));
    const before = listings().length;
    await fake.ship(keys, { notify: false });
    // The deadline is one interval (10 s) plus the time one poll takes.
    await waitFor(
      async () =>
        (
          await db.pool.query(
            "SELECT count(*)::int AS n FROM orders_inbox WHERE id = ANY($1) AND status = 'shipped'",
            [ids],
          )
        ).rows[0].n === 3,
      { what: "poll applied the shipments", timeoutMs: 15_000 },
    );
    for (const key of keys) expect(await eventsFor(key)).toHaveLength(1);
    // One replica polled per interval: never two listings within a fraction of one.
    const times = listings()
      .slice(before)
      .map((g) => g.at);
    for (let i = 1; i < times.length; i++) {
      expect((times[i] as number) - (times[i - 1] as number)).toBeGreaterThan(5_000);
    }
    const applied =
      (await metricTotal(
        a?.metrics.registry.getSingleMetric("reactor_shipments_applied_total") as never,
      )) +
      (await metricTotal(
        b?.metrics.registry.getSingleMetric("reactor_shipments_applied_total") as never,
      ));
    expect(applied).toBe(3);
    await setSetting(db.pool, "shipment_sync_interval_seconds", "120");
  });

  it("with PUBLIC_URL set, SHIP_NOTIFY is subscribed once, however many replicas start", async () => {
    const calls = fake.subscribeCalls;
    const env = { SHIPSTATION_WEBHOOK_TOKEN: TOKEN, PUBLIC_URL: "https://reactor.example.com/" };
    const replicas = await Promise.all(
      ["a", "b", "c"].map((name) =>
        startReactor({
          databaseUrl: db.url,
          shipstationUrl: fake.url,
          env: { ...env, INSTANCE_ID: name },
        }),
      ),
    );
    apps.push(...replicas);
    await waitFor(() => fake.webhooks.length === 1 && fake.subscribeCalls === calls + 1, {
      what: "one subscription",
    });
    expect(fake.webhooks[0]?.url).toBe(`https://reactor.example.com/hooks/shipstation/${TOKEN}`);
    // Every replica saw it made or found; a restart finds it and does not subscribe again.
    await waitFor(async () => {
      for (const app of replicas) {
        const entry = (await import("../src/http/status.js")).buildStatus(app);
        const sub = ((await entry).workloads.shipments as { subscription: { state: string } })
          .subscription;
        if (sub.state !== "created" && sub.state !== "exists") return false;
      }
      return true;
    });
    const again = await startReactor({ databaseUrl: db.url, shipstationUrl: fake.url, env });
    apps.push(again);
    await waitFor(async () => {
      const status = await (await import("../src/http/status.js")).buildStatus(again);
      return (
        (status.workloads.shipments as { subscription: { state: string } }).subscription.state ===
        "exists"
      );
    });
    expect(fake.subscribeCalls).toBe(calls + 1);
  });
});
