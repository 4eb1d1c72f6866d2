// The ShipStation client's shipment and webhook calls against the fake ShipStation on
// loopback: what the shipments workload relies on (listings, SHIP_NOTIFY, the SSRF guard
// on resource_url, classification, redaction) and ShipStation's offset-less Pacific time.
import { once } from "node:events";
import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import type { Agent } from "undici";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { makeAgent } from "../src/outbound/http.js";
import {
  fromShipStationTime,
  isShipStationUrl,
  makeShipStationClient,
  type ShipmentsPageResponse,
  type ShipStationClient,
  toShipStationTime,
} from "../src/outbound/shipstation-client.js";
import { USER_AGENT } from "../src/version.js";

const KEY = "ss-key-7Hq2Lw9";
const SECRET = "ss-secret-+p/Xc4";
const AUTH = `Basic ${Buffer.from(`${KEY}:${SECRET}`).toString("base64")}`;
const CREDENTIALS = [KEY, SECRET, AUTH.slice("Basic ".length)];

const at = (iso: string) => new Date(iso);

/** A webhook target on loopback that records what it is sent. */
async function startHookReceiver(status = 200) {
  const requests: Array<{
    method?: string;
    path?: string;
    headers: IncomingHttpHeaders;
    body: string;
  }> = [];
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    requests.push({
      method: req.method,
      path: req.url,
      headers: req.headers,
      body: Buffer.concat(chunks).toString("utf8"),
    });
    res.writeHead(status).end("ok");
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

function ok(res: ShipmentsPageResponse) {
  if (res.kind !== "ok") throw new Error(`expected ok, got ${JSON.stringify(res)}`);
  return res;
}

function expectNoCredentials(text: string) {
  for (const secret of CREDENTIALS) expect(text).not.toContain(secret);
}

describe("ShipStation time", () => {
  it("renders an instant as offset-less Pacific time with 7 fraction digits", () => {
    expect(toShipStationTime(at("2026-11-23T14:51:33.627Z"))).toBe("2026-11-23T06:51:33.6270000");
    expect(toShipStationTime(at("2026-07-04T19:00:00Z"))).toBe("2026-07-04T12:00:00.0000000");
    expect(toShipStationTime(at("2026-01-01T08:00:00.005Z"))).toBe("2026-01-01T00:00:00.0050000");
    // The clock changes of 2026: 2:00 PST → 3:00 PDT on March 8, 2:00 PDT → 1:00 PST on November 1.
    expect(toShipStationTime(at("2026-03-08T09:59:59.999Z"))).toBe("2026-03-08T01:59:59.9990000");
    expect(toShipStationTime(at("2026-03-08T10:00:00Z"))).toBe("2026-03-08T03:00:00.0000000");
    expect(toShipStationTime(at("2026-11-01T08:30:00Z"))).toBe("2026-11-01T01:30:00.0000000");
    expect(toShipStationTime(at("2026-11-01T09:30:00Z"))).toBe("2026-11-01T01:30:00.0000000");
  });

  it("reads 0 to 7 fraction digits, or none, to the millisecond", () => {
    const cases: Array<[string, string]> = [
      ["2026-11-23T06:51:33.6270000", "2026-11-23T14:51:33.627Z"],
      ["2026-11-23T06:51:33.6279999", "2026-11-23T14:51:33.627Z"],
      ["2026-11-23T06:51:33.62", "2026-11-23T14:51:33.620Z"],
      ["2026-11-23T06:51:33.6", "2026-11-23T14:51:33.600Z"],
      ["2026-11-23T06:51:33", "2026-11-23T14:51:33.000Z"],
      ["2026-11-23T06:51", "2026-11-23T14:51:00.000Z"],
      ["2026-11-23 06:51:33.627", "2026-11-23T14:51:33.627Z"],
      ["2026-07-04T12:00:00.0000000", "2026-07-04T19:00:00.000Z"],
    ];
    for (const [text, iso] of cases)
      expect(fromShipStationTime(text)?.toISOString(), text).toBe(iso);
  });

  it("honours a trailing Z or offset", () => {
    expect(fromShipStationTime("2026-11-23T06:51:33.627Z")?.toISOString()).toBe(
      "2026-11-23T06:51:33.627Z",
    );
    expect(fromShipStationTime("2026-11-23T06:51:33-05:00")?.toISOString()).toBe(
      "2026-11-23T11:51:33.000Z",
    );
    expect(fromShipStationTime("2026-11-23T06:51:33.1234567+0530")?.toISOString()).toBe(
      "2026-11-23T01:21:33.123Z",
    );
  });

  it("refuses what is not a real date-time", () => {
    for (const text of [
      "",
      "yesterday",
      "2026-11-23",
      "2026-02-30T00:00:00",
      "2026-11-23T24:00:00",
      "2026-11-23T06:60:00",
      "2026-11-23T06:51:33.",
      "2026-11-23T06:51:33.1234567890",
      "11/23/2026 06:51",
    ]) {
      expect(fromShipStationTime(text), text).toBeNull();
    }
  });

  it("reads the skipped hour in March one hour later and the repeated hour in November as its first pass", () => {
    // 02:30 never happens on March 8: read with PST's offset, it is 03:30 PDT.
    expect(fromShipStationTime("2026-03-08T02:30:00")?.toISOString()).toBe(
      "2026-03-08T10:30:00.000Z",
    );
    expect(fromShipStationTime("2026-03-08T01:59:59.999")?.toISOString()).toBe(
      "2026-03-08T09:59:59.999Z",
    );
    expect(fromShipStationTime("2026-03-08T03:00:00")?.toISOString()).toBe(
      "2026-03-08T10:00:00.000Z",
    );
    // 01:30 happens twice on November 1: the PDT one comes first.
    expect(fromShipStationTime("2026-11-01T01:30:00")?.toISOString()).toBe(
      "2026-11-01T08:30:00.000Z",
    );
    expect(fromShipStationTime("2026-11-01T00:59:59.999")?.toISOString()).toBe(
      "2026-11-01T07:59:59.999Z",
    );
    expect(fromShipStationTime("2026-11-01T02:00:00")?.toISOString()).toBe(
      "2026-11-01T10:00:00.000Z",
    );
  });

  it("round-trips every minute across both clock changes, except the second pass of the repeated hour", () => {
    for (const day of ["2026-03-08T06:00:00Z", "2026-11-01T05:00:00Z"]) {
      const start = Date.parse(day);
      for (let ms = start; ms < start + 8 * 3_600_000; ms += 60_000 + 7) {
        const instant = new Date(ms);
        const back = fromShipStationTime(toShipStationTime(instant));
        const secondPass =
          ms >= Date.parse("2026-11-01T09:00:00Z") && ms < Date.parse("2026-11-01T10:00:00Z");
        expect(back?.getTime(), instant.toISOString()).toBe(secondPass ? ms - 3_600_000 : ms);
      }
    }
  });
});

describe("isShipStationUrl", () => {
  const base = "https://ssapi.shipstation.com";
  it.each([
    ["the same origin", "https://ssapi.shipstation.com/shipments?batchId=1", true],
    ["the default port spelled out", "https://ssapi.shipstation.com:443/shipments", true],
    ["another scheme", "http://ssapi.shipstation.com/shipments", false],
    ["another port", "https://ssapi.shipstation.com:8443/shipments", false],
    ["another host", "https://ssapi.shipstation.com.evil.test/shipments", false],
    ["a subdomain", "https://x.ssapi.shipstation.com/shipments", false],
    ["userinfo", "https://user:pw@ssapi.shipstation.com/shipments", false],
    ["a bare username", "https://ssapi.shipstation.com@evil.test/shipments", false],
    ["a relative URL", "/shipments?batchId=1", false],
    ["not a URL", "not a url", false],
  ])("%s", (_name, url, expected) => {
    expect(isShipStationUrl(base, url)).toBe(expected);
  });
  it("is false when the base itself does not parse", () => {
    expect(isShipStationUrl("nonsense", "https://ssapi.shipstation.com/shipments")).toBe(false);
  });
});

describe("the ShipStation client's shipments and webhooks, against the fake", () => {
  let fake: FakeShipStation;
  let agent: Agent;
  let client: ShipStationClient;
  const receivers: Array<{ close(): Promise<void> }> = [];
  const clientFor = (baseUrl: string) =>
    makeShipStationClient({
      baseUrl,
      apiKey: KEY,
      apiSecret: SECRET,
      agent,
      userAgent: USER_AGENT,
    });

  beforeAll(() => {
    agent = makeAgent();
  });
  afterAll(async () => {
    await agent.close();
  });
  beforeEach(async () => {
    fake = await startFakeShipStation({ expectAuthorization: AUTH });
    client = clientFor(fake.url);
  });
  afterEach(async () => {
    await fake.close();
    await Promise.all(receivers.splice(0).map((r) => r.close()));
  });

  async function receiver(status = 200) {
    const r = await startHookReceiver(status);
    receivers.push(r);
    return r;
  }

  it("subscribes SHIP_NOTIFY and lists the subscription back", async () => {
    expect(await client.listWebhooks()).toEqual({ kind: "ok", status: 200, webhooks: [] });
    const sub = await client.subscribeWebhook({
      targetUrl: "https://reactor.example/hooks/shipstation/tok",
      event: "SHIP_NOTIFY",
      friendlyName: "pg-reactor",
    });
    expect(sub).toMatchObject({ kind: "ok", id: expect.any(Number) });
    const id = sub.kind === "ok" ? sub.id : null;
    expect(await client.listWebhooks()).toEqual({
      kind: "ok",
      status: 200,
      webhooks: [
        {
          id,
          url: "https://reactor.example/hooks/shipstation/tok",
          event: "SHIP_NOTIFY",
          active: true,
        },
      ],
    });
    expect(fake.subscribeCalls).toBe(1);
    expect(fake.webhooks[0]).toMatchObject({ id, friendlyName: "pg-reactor" });

    const bad = await client.subscribeWebhook({
      targetUrl: "not a url",
      event: "SHIP_NOTIFY",
      friendlyName: "x",
    });
    expect(bad).toMatchObject({ kind: "rejected", status: 400 });
    expect(bad.kind === "rejected" && bad.error).toMatch(/target_url/);
    expect(fake.subscribeCalls).toBe(2);
    expect(fake.webhooks).toHaveLength(1);
  });

  it("a shipped order's SHIP_NOTIFY reaches a loopback receiver, and its resource_url lists the shipment", async () => {
    const hooks = await receiver();
    const upload = await client.createOrders([
      JSON.stringify({
        orderNumber: "A-100",
        orderKey: "key-100",
        orderStatus: "awaiting_shipment",
      }),
    ]);
    expect(upload).toMatchObject({ kind: "ok", results: [{ orderKey: "key-100", success: true }] });
    const orderId = fake.orders.get("key-100")?.orderId;
    expect(orderId).toBeGreaterThan(0);
    await client.subscribeWebhook({
      targetUrl: `${hooks.url}/hooks/shipstation/tok`,
      event: "SHIP_NOTIFY",
      friendlyName: "pg-reactor",
    });

    const shippedAt = new Date(Date.now() - 1000);
    const [shipped] = await fake.ship("key-100", { trackingNumber: "1Z999", createdAt: shippedAt });
    // ship() resolves after the POST was answered.
    expect(hooks.requests).toHaveLength(1);
    const hook = hooks.requests[0];
    expect(hook?.method).toBe("POST");
    expect(hook?.path).toBe("/hooks/shipstation/tok");
    expect(hook?.headers["content-type"]).toBe("application/json");
    const body = JSON.parse(hook?.body ?? "") as { resource_url: string; resource_type: string };
    const batchId = [...fake.batches.keys()].at(-1);
    expect(body).toEqual({
      resource_url: `${fake.url}/shipments?batchId=${batchId}&includeShipmentItems=False`,
      resource_type: "SHIP_NOTIFY",
    });
    expect(fake.notifications).toEqual([
      { targetUrl: `${hooks.url}/hooks/shipstation/tok`, at: expect.any(Number), status: 200 },
    ]);

    const page = ok(await client.getShipments(body.resource_url));
    expect(page).toMatchObject({ status: 200, invalid: [], page: 1, pages: 1, total: 1 });
    expect(page.shipments).toEqual([
      {
        shipmentId: shipped?.shipmentId,
        orderId,
        orderKey: "key-100",
        orderNumber: "A-100",
        createDate: toShipStationTime(shippedAt),
        createdAt: shippedAt,
        shipDate: toShipStationTime(shippedAt).slice(0, 10),
        trackingNumber: "1Z999",
        carrierCode: "usps",
        serviceCode: "usps_priority_mail",
        voided: false,
      },
    ]);
    // The fake checks the Basic credentials; the GET is the one recorded.
    expect(fake.gets.map((g) => g.path)).toEqual([
      `/shipments?batchId=${batchId}&includeShipmentItems=False`,
    ]);

    // A void is notified as a new batch listing the voided shipment.
    await fake.voidShipment(shipped?.shipmentId ?? 0);
    expect(hooks.requests).toHaveLength(2);
    const voidUrl = (JSON.parse(hooks.requests[1]?.body ?? "") as { resource_url: string })
      .resource_url;
    expect(voidUrl).not.toBe(body.resource_url);
    const voided = ok(await client.getShipments(voidUrl));
    expect(voided.shipments).toMatchObject([{ shipmentId: shipped?.shipmentId, voided: true }]);
  });

  it("ships an order it never received, and records a target that does not answer", async () => {
    const down = await receiver();
    await down.close();
    receivers.pop();
    fake.webhooks.push({
      id: 1,
      url: `${down.url}/gone`,
      event: "SHIP_NOTIFY",
      active: true,
      friendlyName: "",
    });
    fake.webhooks.push({
      id: 2,
      url: `${down.url}/off`,
      event: "SHIP_NOTIFY",
      active: false,
      friendlyName: "",
    });
    const [s] = await fake.ship("elsewhere-1", { orderNumber: "EXT-1", carrierCode: "ups" });
    expect(s).toMatchObject({ orderKey: "elsewhere-1", orderNumber: "EXT-1", carrierCode: "ups" });
    expect(fake.notifications).toEqual([
      {
        targetUrl: `${down.url}/gone`,
        at: expect.any(Number),
        status: null,
        error: expect.any(String),
      },
    ]);
    await fake.ship("elsewhere-2", { notify: false });
    expect(fake.notifications).toHaveLength(1);
    expect(fake.shipments.at(-1)).toMatchObject({
      orderKey: "elsewhere-2",
      orderNumber: "elsewhere-2",
    });
  });

  it("pages through a listing: 1,100 shipments at 500 a page are 3 pages, every shipment once", async () => {
    const keys = Array.from({ length: 1100 }, (_, i) => `bulk-${i}`);
    await fake.ship(keys, { notify: false, createdAt: at("2026-06-01T12:00:00Z") });
    const createDateStart = toShipStationTime(at("2026-06-01T11:00:00Z"));
    const first = client.shipmentsListUrl({ createDateStart, page: 1 });
    expect(first).toBe(
      `${fake.url}/shipments?createDateStart=2026-06-01T04%3A00%3A00.0000000&sortBy=CreateDate&sortDir=ASC&pageSize=500&page=1`,
    );
    const seen: number[] = [];
    let pages = Number.POSITIVE_INFINITY;
    for (let page = 1; page <= pages; page++) {
      const res = ok(await client.getShipments(client.shipmentsListUrl({ createDateStart, page })));
      expect(res).toMatchObject({ page, pages: 3, total: 1100, invalid: [] });
      expect(res.shipments.length).toBe(page < 3 ? 500 : 100);
      pages = res.pages;
      seen.push(...res.shipments.map((s) => s.shipmentId));
    }
    expect(seen).toHaveLength(1100);
    expect(new Set(seen).size).toBe(1100);
    expect(fake.gets).toHaveLength(3);
    expect(() => client.shipmentsListUrl({ createDateStart, page: 0 })).toThrow(RangeError);
    expect(() => client.shipmentsListUrl({ createDateStart, page: 1, pageSize: 501 })).toThrow(
      RangeError,
    );
    // Asked directly, ShipStation refuses a page over 500 as a bad request.
    const tooBig = await client.getShipments(`${fake.url}/shipments?pageSize=501`);
    expect(tooBig).toMatchObject({ kind: "rejected", status: 400 });
  });

  it("createDateStart in ShipStation's local time, taken back one hour, misses no shipment across either clock change", async () => {
    // Every 20 minutes over the four hours around each change of 2026.
    const instants: Date[] = [];
    for (const from of ["2026-03-08T08:00:00Z", "2026-11-01T07:00:00Z"]) {
      for (let i = 0; i < 12; i++) instants.push(new Date(Date.parse(from) + i * 20 * 60_000));
    }
    const idOf = new Map<number, number>();
    for (const createdAt of instants) {
      const [s] = await fake.ship(`dst-${createdAt.toISOString()}`, { notify: false, createdAt });
      idOf.set(createdAt.getTime(), s?.shipmentId ?? 0);
    }
    const list = async (instant: Date) =>
      ok(
        await client.getShipments(
          client.shipmentsListUrl({ createDateStart: toShipStationTime(instant), page: 1 }),
        ),
      );

    // Why: ShipStation filters on its clock, which repeats 01:00-01:59 in November, so a
    // shipment at 01:00 PST (09:00Z) sorts before a watermark at 01:20 PDT (08:20Z).
    const naive = await list(at("2026-11-01T08:20:00Z"));
    expect(naive.shipments.map((s) => s.shipmentId)).not.toContain(
      idOf.get(Date.parse("2026-11-01T09:00:00Z")),
    );

    const HOUR = 3_600_000;
    for (const watermark of instants) {
      const res = await list(new Date(watermark.getTime() - HOUR));
      const listed = new Set(res.shipments.map((s) => s.shipmentId));
      for (const due of instants.filter((i) => i >= watermark)) {
        expect(
          listed.has(idOf.get(due.getTime()) ?? -1),
          `${watermark.toISOString()} lists ${due.toISOString()}`,
        ).toBe(true);
      }
      // What comes back from before the watermark is at most two hours older.
      for (const s of res.shipments) {
        expect(s.createdAt?.getTime()).toBeGreaterThanOrEqual(watermark.getTime() - 2 * HOUR);
      }
      // Oldest first, by ShipStation's clock.
      const dates = res.shipments.map((s) => s.createDate ?? "");
      expect(dates).toEqual([...dates].sort());
    }

    // createdAt is the instant, except in the repeated hour, which reads as its first pass.
    const page = ok(await client.getShipments(`${fake.url}/shipments?pageSize=500`));
    for (const s of page.shipments) {
      const created = at(String(s.orderKey).slice("dst-".length));
      const repeated =
        created >= at("2026-11-01T09:00:00Z") && created < at("2026-11-01T10:00:00Z");
      expect(s.createdAt?.getTime()).toBe(created.getTime() - (repeated ? HOUR : 0));
    }
  });

  it("createDate follows the fake's clock offset, and createDateStart/createDateEnd bound a listing", async () => {
    fake.clockOffsetMs = 3 * 3_600_000;
    const before = Date.now();
    const [s] = await fake.ship("skewed", { notify: false });
    const created = fromShipStationTime(String(s?.createDate));
    expect(created?.getTime()).toBeGreaterThanOrEqual(before + 3 * 3_600_000 - 1);
    const early = await fake.ship("early", {
      notify: false,
      createdAt: at("2026-02-01T10:00:00Z"),
    });
    const res = ok(
      await client.getShipments(
        `${fake.url}/shipments?createDateStart=2026-02-01&createDateEnd=2026-02-01T02:00:00.0000000`,
      ),
    );
    expect(res.shipments.map((x) => x.shipmentId)).toEqual([early[0]?.shipmentId]);
    const bad = await client.getShipments(
      `${fake.url}/shipments?createDateStart=2026-02-01T00:00:00Z`,
    );
    expect(bad).toMatchObject({ kind: "rejected", status: 400 });
  });

  it("refuses a resource_url off ShipStation's origin without sending a request", async () => {
    const { port } = new URL(fake.url);
    for (const url of [
      `http://127.0.0.2:${port}/shipments?batchId=1`,
      `http://localhost:${port}/shipments?batchId=1`,
      `https://127.0.0.1:${port}/shipments?batchId=1`,
      `http://${KEY}:${SECRET}@127.0.0.1:${port}/shipments?batchId=1`,
      "/shipments?batchId=1",
    ]) {
      const res = await client.getShipments(url);
      expect(res, url).toMatchObject({ kind: "rejected", status: 0 });
      const error = res.kind === "rejected" ? res.error : "";
      expect(error).toMatch(/not on ShipStation's origin .*SHIPSTATION_BASE_URL.*never requested/);
      expectNoCredentials(error);
    }
    expect(fake.gets).toEqual([]);
  });

  it("reports entries that are not usable shipments in `invalid`, and passes the valid ones", async () => {
    const [good] = await fake.ship("good", { notify: false });
    fake.shipments.push(
      { orderNumber: "NO-ID", trackingNumber: "T1" },
      { shipmentId: "123", orderKey: "string-id" },
      { shipmentId: -4 },
      { shipmentId: 9_000_001, trackingNumber: 42, voided: "no" },
      null as unknown as Record<string, unknown>,
      { shipmentId: 9_000_002, orderKey: SECRET },
      { shipmentId: 9_000_003, orderId: 5, createDate: "yesterday", trackingNumber: "" },
    );
    fake.shipments.push({ shipmentId: 9_000_004, orderKey: SECRET, orderNumber: 7 });
    const res = ok(await client.getShipments(`${fake.url}/shipments?pageSize=500`));
    expect(res.total).toBe(9);
    expect(res.shipments.map((s) => s.shipmentId)).toEqual([
      good?.shipmentId,
      9_000_002,
      9_000_003,
    ]);
    expect(res.shipments[2]).toMatchObject({
      orderId: 5,
      createDate: "yesterday",
      createdAt: null,
      trackingNumber: null,
      voided: false,
    });
    expect(res.invalid).toHaveLength(6);
    const lines = res.invalid.join("\n");
    expect(lines).toMatch(
      /shipmentId is missing; got \{"orderNumber":"NO-ID","trackingNumber":"T1"\}/,
    );
    expect(lines).toMatch(/shipmentId must be a positive integer \(got "123"\)/);
    expect(lines).toMatch(/shipmentId must be a positive integer \(got -4\)/);
    expect(lines).toMatch(/trackingNumber must be text \(got 42\); voided must be true or false/);
    expect(lines).toMatch(/not a shipment object; got null/);
    expect(lines).toMatch(/orderNumber must be text \(got 7\)/);
    expectNoCredentials(lines);
  });

  it("classifies a wrong key as auth, a wrong base URL as endpoint, 429 as rate_limited with its reset, 5xx as transient", async () => {
    const wrong = makeShipStationClient({
      baseUrl: fake.url,
      apiKey: KEY,
      apiSecret: "not-the-secret",
      agent,
      userAgent: USER_AGENT,
    });
    for (const res of [
      await wrong.getShipments(`${fake.url}/shipments`),
      await wrong.listWebhooks(),
      await wrong.subscribeWebhook({
        targetUrl: "https://x.example/h",
        event: "SHIP_NOTIFY",
        friendlyName: "x",
      }),
    ]) {
      expect(res).toMatchObject({ kind: "auth", status: 401 });
      expect(res.kind === "auth" && res.error).toMatch(
        /SHIPSTATION_API_KEY and SHIPSTATION_API_SECRET/,
      );
    }
    expect(fake.webhooks).toEqual([]);

    const misplaced = clientFor(`${fake.url}/wrong`);
    for (const res of [
      await misplaced.getShipments(`${fake.url}/wrong/shipments?batchId=1`),
      await misplaced.listWebhooks(),
    ]) {
      expect(res).toMatchObject({ kind: "endpoint", status: 404 });
      expect(res.kind === "endpoint" && res.error).toMatch(
        /HTTP 404 to .*\/wrong\/.*check SHIPSTATION_BASE_URL/,
      );
    }

    fake.shipmentsScript.push(
      { status: 429, headers: { "X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": "17" } },
      { status: 429 },
      { status: 503, body: { Message: "try later" } },
      { status: 200, headers: { "X-Rate-Limit-Remaining": "39", "X-Rate-Limit-Reset": "60" } },
    );
    const url = `${fake.url}/shipments`;
    expect(await client.getShipments(url)).toEqual({
      kind: "rate_limited",
      status: 429,
      resetMs: 17_000,
    });
    expect(await client.getShipments(url)).toEqual({
      kind: "rate_limited",
      status: 429,
      resetMs: 60_000,
    });
    expect(await client.getShipments(url)).toMatchObject({
      kind: "transient",
      status: 503,
      error: expect.stringMatching(/try later/),
    });
    expect(ok(await client.getShipments(url)).rate).toEqual({ remaining: 39, resetMs: 60_000 });
    expect(ok(await client.getShipments(url)).rate).toEqual({ remaining: null, resetMs: null });

    fake.shipmentsScript.push({ status: 200, body: { notShipments: true } });
    expect(await client.getShipments(url)).toMatchObject({
      kind: "transient",
      status: 200,
      error: expect.stringMatching(/unreadable body \(no shipments array\)/),
    });

    const { port } = new URL(fake.url);
    await fake.close();
    const gone = await client.getShipments(`http://127.0.0.1:${port}/shipments`);
    expect(gone).toMatchObject({ kind: "transient", status: null });
    fake = await startFakeShipStation(); // for afterEach
  });

  it("createOrders answers as before: ok with results, upserts keep the orderId, refusals classified", async () => {
    const order = (key: string) => JSON.stringify({ orderNumber: `N-${key}`, orderKey: key });
    const first = await client.createOrders([order("a"), order("b")]);
    expect(first).toMatchObject({
      kind: "ok",
      status: 200,
      results: [
        { orderKey: "a", orderNumber: "N-a", success: true },
        { orderKey: "b", success: true },
      ],
      rate: { remaining: null, resetMs: null },
    });
    const again = await client.createOrders([order("a")]);
    expect(again.kind === "ok" && again.results[0]?.orderId).toBe(fake.orders.get("a")?.orderId);
    expect(fake.received.get("a")).toBe(2);
    expect(fake.calls[0]?.authorization).toBe(AUTH);
    expect(fake.calls[0]?.userAgent).toBe(USER_AGENT);

    fake.rejectBatchKeys.c = "orderDate is invalid";
    expect(await client.createOrders([order("c")])).toMatchObject({
      kind: "rejected",
      status: 400,
      error: expect.stringMatching(/orderDate is invalid/),
    });
    fake.script.push(
      { status: 429, headers: { "X-Rate-Limit-Reset": "5" } },
      { status: 401 },
      { status: 502 },
    );
    expect(await client.createOrders([order("d")])).toEqual({
      kind: "rate_limited",
      status: 429,
      resetMs: 5000,
    });
    expect(await client.createOrders([order("d")])).toMatchObject({ kind: "auth", status: 401 });
    expect(await client.createOrders([order("d")])).toMatchObject({
      kind: "transient",
      status: 502,
    });
    expect(await clientFor(`${fake.url}/wrong`).createOrders([order("d")])).toMatchObject({
      kind: "endpoint",
      status: 404,
      error: expect.stringMatching(/HTTP 404 .*check SHIPSTATION_BASE_URL/),
    });
    expect(fake.received.has("d")).toBe(false);
  });

  it("never puts a credential in an error, whatever ShipStation echoes", async () => {
    const echo = {
      Message: `key ${KEY} secret ${SECRET}`,
      request: { headers: { Authorization: [AUTH] } },
      escaped: JSON.stringify(SECRET).replace(/\//g, "\\/"),
    };
    fake.shipmentsScript.push(
      { status: 500, body: echo },
      { status: 400, body: echo },
      { status: 418, body: echo },
    );
    const url = `${fake.url}/shipments`;
    const errors: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await client.getShipments(url);
      expect(res.kind).toMatch(/transient|rejected|endpoint/);
      errors.push("error" in res ? res.error : "");
    }
    fake.script.push({ status: 500, echoHeaders: true });
    const upload = await client.createOrders([JSON.stringify({ orderKey: "k", orderNumber: "n" })]);
    errors.push("error" in upload ? upload.error : "");
    const misplaced = clientFor(`${fake.url}/${SECRET}`);
    const listed = await misplaced.listWebhooks();
    errors.push("error" in listed ? listed.error : "");
    for (const error of errors) {
      expect(error).not.toBe("");
      expectNoCredentials(error);
    }
    expect(errors.join("\n")).toContain("[redacted]");
  });
});
