// A fake ShipStation for tests, the demo and the compose demo profile: a real HTTP
// server that speaks enough of the v1 API (createorders, the shipments listing, webhook
// subscriptions) and sends SHIP_NOTIFY when a test ships an order. It records every call
// and answers from a script.
import { once } from "node:events";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { request } from "undici";
import { toShipStationTime } from "../outbound/shipstation-client.js";

export interface RecordedCall {
  at: number;
  authorization: string | undefined;
  userAgent: string | undefined;
  orders: Array<Record<string, unknown>>;
  /** The request body exactly as received. */
  body: string;
}

/** A scripted answer: status, headers, and a body (default: success for every order). */
export interface ScriptedResponse {
  status: number;
  headers?: Record<string, string>;
  body?: unknown;
  /** Delay before answering, ms. */
  delayMs?: number;
  /** Per-order failure: orderKey → error message. */
  failKeys?: Record<string, string>;
  /** Answer with the request's headers in the body (a target that echoes what it got). */
  echoHeaders?: boolean;
}

/** An order the fake accepted, by orderKey; a later upsert of the key keeps its orderId. */
export interface FakeOrder {
  orderId: number;
  orderNumber: string;
}

/** A shipment as ShipStation's JSON has it (the fields the fake fills; the real one has more). */
export interface ShipStationShipmentJson {
  shipmentId: number;
  orderId: number;
  orderKey: string;
  orderNumber: string;
  createDate: string;
  shipDate: string;
  trackingNumber: string;
  carrierCode: string;
  serviceCode: string;
  voided: boolean;
  voidDate: string | null;
  [field: string]: unknown;
}

export interface FakeWebhook {
  id: number;
  url: string;
  /** ShipStation's event name, e.g. SHIP_NOTIFY. */
  event: string;
  active: boolean;
  friendlyName: string;
}

/** One SHIP_NOTIFY POST the fake sent, and how the target answered. */
export interface FakeNotification {
  targetUrl: string;
  at: number;
  /** null when no answer came. */
  status: number | null;
  error?: string;
}

export interface ShipOptions {
  trackingNumber?: string;
  carrierCode?: string;
  serviceCode?: string;
  /** POST SHIP_NOTIFY to every active subscription (default true). */
  notify?: boolean;
  /** The shipment's createDate (default: now, plus clockOffsetMs). */
  createdAt?: Date;
  /** For an order key the fake never received (default: the key itself). */
  orderNumber?: string;
}

export interface FakeShipStation {
  url: string;
  calls: RecordedCall[];
  /** orderKey → times received. */
  received: Map<string, number>;
  /** Answers for the next calls, in order; afterwards every call succeeds. */
  script: ScriptedResponse[];
  /** Applied to every call after the script runs out. */
  defaultResponse: Partial<ScriptedResponse>;
  /**
   * orderKey → message: a call containing any of these orders is refused whole with a
   * 400, as ShipStation does for one invalid order in a createorders batch.
   */
  rejectBatchKeys: Record<string, string>;
  /** Every order received successfully, by orderKey. */
  orders: Map<string, FakeOrder>;
  /**
   * Every shipment, in ShipStation's JSON shape. A test may push malformed entries: the
   * listing serves whatever is here (filters skip entries lacking the filtered field).
   */
  shipments: Array<Record<string, unknown>>;
  /** batchId → the shipments a SHIP_NOTIFY for it lists (the same objects as `shipments`). */
  batches: Map<number, Array<Record<string, unknown>>>;
  /** Subscriptions made through POST /webhooks/subscribe (a test may add or change some). */
  webhooks: FakeWebhook[];
  /** Every SHIP_NOTIFY POST sent. */
  notifications: FakeNotification[];
  /** Every GET received, with its path and query as sent. */
  gets: Array<{ at: number; path: string }>;
  /** POST /webhooks/subscribe calls received, valid or not. */
  subscribeCalls: number;
  /** Answers for the next GET /shipments calls, in order; a 200 without body answers normally. */
  shipmentsScript: ScriptedResponse[];
  /** Added to now for createDate and voidDate: ShipStation's clock running ahead (or behind). */
  clockOffsetMs: number;
  /** When set, any other Authorization header gets a 401 on every route. */
  expectAuthorization: string | undefined;
  /**
   * Ships each order (one shipment per key, one new batch for all) and, when notify,
   * POSTs SHIP_NOTIFY to every active subscription; resolves once every POST was
   * answered or failed.
   */
  ship(orderKeys: string | string[], options?: ShipOptions): Promise<ShipStationShipmentJson[]>;
  /**
   * Subscribes SHIP_NOTIFY to `targetUrl` as POST /webhooks/subscribe would (without
   * counting a subscribe call): for tests and the demo, whose hook URL is known only once
   * their server listens.
   */
  addWebhook(targetUrl: string, friendlyName?: string): FakeWebhook;
  /** Voids a shipment; with notify (default true), sends SHIP_NOTIFY for a new batch holding it. */
  voidShipment(
    shipmentId: number,
    options?: { notify?: boolean },
  ): Promise<ShipStationShipmentJson>;
  close(): Promise<void>;
}

/** ShipStation's page size limit on GET /shipments. */
const MAX_PAGE_SIZE = 500;
const DEFAULT_PAGE_SIZE = 100;
/** Events POST /webhooks/subscribe accepts (ShipStation v1's list). */
const EVENTS = ["ORDER_NOTIFY", "ITEM_ORDER_NOTIFY", "SHIP_NOTIFY", "ITEM_SHIP_NOTIFY"];
/** A SHIP_NOTIFY target answers within this long or the POST is recorded as failed. */
const NOTIFY_TIMEOUT_MS = 10_000;

/**
 * ShipStation local time text as a key that sorts as the clock reads: dates without a
 * time are midnight, fractions padded to 7 digits. null when it is not such text (an
 * offset or Z included: ShipStation's clock has none).
 */
function localTimeKey(value: unknown): string | null {
  if (typeof value !== "string") return null;
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?)?$/.exec(
    value,
  );
  if (!m) return null;
  const [, y, mo, d, h = "00", mi = "00", s = "00", f = ""] = m;
  return `${y}-${mo}-${d}T${h}:${mi}:${s}.${f.padEnd(7, "0")}`;
}

export async function startFakeShipStation(
  options: {
    host?: string;
    port?: number;
    clockOffsetMs?: number;
    expectAuthorization?: string;
    /** The base that resource_url points at (default: the fake's own url). */
    publicUrl?: string;
  } = {},
): Promise<FakeShipStation> {
  let nextOrderId = 1000;
  let nextShipmentId = 50_000;
  let nextBatchId = 700_000;
  let nextWebhookId = 9000;
  let publicUrl = options.publicUrl;
  const state = {
    calls: [] as RecordedCall[],
    received: new Map<string, number>(),
    script: [] as ScriptedResponse[],
    defaultResponse: {} as Partial<ScriptedResponse>,
    rejectBatchKeys: {} as Record<string, string>,
    orders: new Map<string, FakeOrder>(),
    shipments: [] as Array<Record<string, unknown>>,
    batches: new Map<number, Array<Record<string, unknown>>>(),
    webhooks: [] as FakeWebhook[],
    notifications: [] as FakeNotification[],
    gets: [] as Array<{ at: number; path: string }>,
    subscribeCalls: 0,
    shipmentsScript: [] as ScriptedResponse[],
    clockOffsetMs: options.clockOffsetMs ?? 0,
    expectAuthorization: options.expectAuthorization,
  };
  const now = () => new Date(Date.now() + fake.clockOffsetMs);

  const send = (
    res: ServerResponse,
    status: number,
    body: unknown,
    headers: Record<string, string> = {},
  ) => {
    res.writeHead(status, { "content-type": "application/json", ...headers });
    res.end(JSON.stringify(body));
  };
  const invalid = (res: ServerResponse, field: string, message: string) =>
    send(res, 400, { Message: "The request is invalid.", ModelState: { [field]: [message] } });

  async function createOrders(req: IncomingMessage, res: ServerResponse, body: string) {
    let orders: Array<Record<string, unknown>>;
    try {
      orders = JSON.parse(body) as Array<Record<string, unknown>>;
      if (!Array.isArray(orders)) throw new Error("not an array");
    } catch {
      invalid(res, "orders", "The body must be a JSON array of orders.");
      return;
    }
    fake.calls.push({
      at: Date.now(),
      authorization: req.headers.authorization,
      userAgent: req.headers["user-agent"],
      orders,
      body,
    });
    if (!authorized(req, res)) return;
    const refused = orders.find((o) => fake.rejectBatchKeys[String(o.orderKey)]);
    if (refused) {
      send(res, 400, {
        Message: "The request is invalid.",
        ModelState: { "orders[0]": [fake.rejectBatchKeys[String(refused.orderKey)]] },
      });
      return;
    }
    const scripted = fake.script.shift() ?? { status: 200, ...fake.defaultResponse };
    if (scripted.delayMs) await new Promise((r) => setTimeout(r, scripted.delayMs));
    const status = scripted.status ?? 200;
    if (status === 200 && scripted.body === undefined) {
      const results = orders.map((o) => {
        const key = String(o.orderKey);
        const error = scripted.failKeys?.[key];
        let orderId = 0;
        if (!error) {
          fake.received.set(key, (fake.received.get(key) ?? 0) + 1);
          // createorders is an upsert on orderKey: the order keeps its id.
          orderId = fake.orders.get(key)?.orderId ?? nextOrderId++;
          fake.orders.set(key, { orderId, orderNumber: String(o.orderNumber) });
        }
        return {
          orderId,
          orderNumber: o.orderNumber,
          orderKey: key,
          success: !error,
          errorMessage: error ?? null,
        };
      });
      send(
        res,
        200,
        { hasErrors: results.some((r) => !r.success), results },
        scripted.headers ?? {},
      );
      return;
    }
    const answer = scripted.echoHeaders
      ? { Message: `scripted ${status}`, request: { headers: req.headers } }
      : (scripted.body ?? { Message: `scripted ${status}` });
    send(res, status, answer, scripted.headers ?? {});
  }

  function authorized(req: IncomingMessage, res: ServerResponse): boolean {
    if (fake.expectAuthorization === undefined) return true;
    if (req.headers.authorization === fake.expectAuthorization) return true;
    send(res, 401, { Message: "Authorization has been denied for this request." });
    return false;
  }

  async function listShipments(query: URLSearchParams, res: ServerResponse) {
    const scripted = fake.shipmentsScript.shift();
    if (scripted?.delayMs) await new Promise((r) => setTimeout(r, scripted.delayMs));
    if (scripted && !(scripted.status === 200 && scripted.body === undefined)) {
      send(res, scripted.status, scripted.body ?? { Message: `scripted ${scripted.status}` }, {
        ...scripted.headers,
      });
      return;
    }
    const integer = (
      name: string,
      fallback: number,
      min: number,
      max = Number.MAX_SAFE_INTEGER,
    ) => {
      const raw = query.get(name);
      if (raw === null || raw === "") return fallback;
      const n = Number(raw);
      return /^\d+$/.test(raw) && n >= min && n <= max ? n : null;
    };
    const pageSize = integer("pageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE);
    if (pageSize === null) {
      return invalid(res, "pageSize", `pageSize must be between 1 and ${MAX_PAGE_SIZE}.`);
    }
    const page = integer("page", 1, 1);
    if (page === null) return invalid(res, "page", "page must be 1 or more.");
    const bounds: Array<[string, (key: string, bound: string) => boolean]> = [
      ["createDateStart", (key, bound) => key >= bound],
      ["createDateEnd", (key, bound) => key <= bound],
    ];
    let entries: Array<Record<string, unknown>> = fake.shipments;
    const batchId = query.get("batchId");
    if (batchId !== null) entries = fake.batches.get(Number(batchId)) ?? [];
    for (const [name, keep] of bounds) {
      const raw = query.get(name);
      if (raw === null || raw === "") continue;
      const bound = localTimeKey(raw);
      if (bound === null) {
        return invalid(res, name, `${name} must be a date-time like 2026-11-23T06:51:33.`);
      }
      entries = entries.filter((e) => {
        const key = localTimeKey(e?.createDate);
        return key !== null && keep(key, bound);
      });
    }
    const orderNumber = query.get("orderNumber");
    if (orderNumber !== null) entries = entries.filter((e) => e?.orderNumber === orderNumber);
    const orderId = query.get("orderId");
    if (orderId !== null) entries = entries.filter((e) => String(e?.orderId) === orderId);
    const sortBy = query.get("sortBy");
    const sortField = { CreateDate: "createDate", ShipDate: "shipDate" }[sortBy ?? ""];
    if (sortBy !== null && sortBy !== "" && !sortField) {
      return invalid(res, "sortBy", "sortBy must be CreateDate or ShipDate.");
    }
    const descending = query.get("sortDir")?.toUpperCase() === "DESC";
    const id = (e: Record<string, unknown>) =>
      typeof e?.shipmentId === "number" ? e.shipmentId : Number.MAX_SAFE_INTEGER;
    const sorted = [...entries].sort((a, b) => {
      if (sortField) {
        const ka = localTimeKey(a?.[sortField]) ?? "";
        const kb = localTimeKey(b?.[sortField]) ?? "";
        if (ka !== kb) return (ka < kb ? -1 : 1) * (descending ? -1 : 1);
      }
      return id(a) - id(b);
    });
    const total = sorted.length;
    send(
      res,
      200,
      {
        shipments: sorted.slice((page - 1) * pageSize, page * pageSize),
        total,
        page,
        pages: Math.ceil(total / pageSize),
      },
      scripted?.headers ?? {},
    );
  }

  function addWebhook(url: string, friendlyName: string, event = "SHIP_NOTIFY"): FakeWebhook {
    const webhook = { id: nextWebhookId++, url, event, active: true, friendlyName };
    fake.webhooks.push(webhook);
    return webhook;
  }

  function subscribe(res: ServerResponse, body: string) {
    let input: Record<string, unknown>;
    try {
      input = JSON.parse(body) as Record<string, unknown>;
      if (input === null || typeof input !== "object") throw new Error("not an object");
    } catch {
      return invalid(res, "body", "The body must be a JSON object.");
    }
    const target = input.target_url;
    if (typeof target !== "string" || !URL.canParse(target) || !/^https?:/i.test(target)) {
      return invalid(res, "target_url", "target_url must be an http or https URL.");
    }
    if (typeof input.event !== "string" || !EVENTS.includes(input.event)) {
      return invalid(res, "event", `event must be one of ${EVENTS.join(", ")}.`);
    }
    const { id } = addWebhook(
      target,
      typeof input.friendly_name === "string" ? input.friendly_name : "",
      input.event,
    );
    send(res, 201, { id });
  }

  /** POSTs SHIP_NOTIFY for a batch to every active subscription, recording each answer. */
  async function notify(batchId: number) {
    const body = JSON.stringify({
      resource_url: `${publicUrl}/shipments?batchId=${batchId}&includeShipmentItems=False`,
      resource_type: "SHIP_NOTIFY",
    });
    const targets = fake.webhooks.filter((w) => w.active && w.event === "SHIP_NOTIFY");
    await Promise.all(
      targets.map(async (w) => {
        const at = Date.now();
        try {
          const res = await request(w.url, {
            method: "POST",
            headers: { "content-type": "application/json", "user-agent": "fake-shipstation" },
            body,
            signal: AbortSignal.timeout(NOTIFY_TIMEOUT_MS),
          });
          await res.body.dump();
          fake.notifications.push({ targetUrl: w.url, at, status: res.statusCode });
        } catch (err) {
          fake.notifications.push({
            targetUrl: w.url,
            at,
            status: null,
            error: (err as Error).message,
          });
        }
      }),
    );
  }

  function newBatch(entries: Array<Record<string, unknown>>): number {
    const batchId = nextBatchId++;
    fake.batches.set(batchId, entries);
    return batchId;
  }

  const server = createServer(async (req: IncomingMessage, res: ServerResponse) => {
    try {
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      const body = Buffer.concat(chunks).toString("utf8");
      const path = req.url ?? "/";
      const url = new URL(path, "http://fake.invalid");
      if (req.method === "GET") fake.gets.push({ at: Date.now(), path });
      if (req.method === "POST" && path === "/orders/createorders") {
        await createOrders(req, res, body);
      } else if (req.method === "GET" && url.pathname === "/shipments") {
        if (authorized(req, res)) await listShipments(url.searchParams, res);
      } else if (req.method === "GET" && url.pathname === "/webhooks") {
        if (!authorized(req, res)) return;
        send(res, 200, {
          webhooks: fake.webhooks.map((w) => ({
            IsLabelAPIHook: false,
            WebHookID: w.id,
            SellerID: 1,
            StoreID: null,
            HookType: w.event,
            MessageFormat: "Json",
            Url: w.url,
            Name: w.friendlyName,
            BulkCopyBatchID: null,
            BulkCopyRecordID: null,
            Active: w.active,
            WebhookLogs: [],
            Seller: null,
            Store: null,
          })),
        });
      } else if (req.method === "POST" && url.pathname === "/webhooks/subscribe") {
        fake.subscribeCalls++;
        if (authorized(req, res)) subscribe(res, body);
      } else {
        res.writeHead(404).end("not found");
      }
    } catch (err) {
      if (!res.headersSent) send(res, 500, { Message: `fake failed: ${(err as Error).message}` });
      else res.destroy();
    }
  });
  server.keepAliveTimeout = 60_000;
  server.listen(options.port ?? 0, options.host ?? "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;
  publicUrl = (publicUrl ?? url).replace(/\/+$/, "");

  const fake: FakeShipStation = Object.assign(state, {
    url,
    async ship(orderKeys: string | string[], shipOptions: ShipOptions = {}) {
      const createdAt = shipOptions.createdAt ?? now();
      const createDate = toShipStationTime(createdAt);
      const created = (Array.isArray(orderKeys) ? orderKeys : [orderKeys]).map((orderKey) => {
        const order = fake.orders.get(orderKey);
        const shipmentId = nextShipmentId++;
        const shipment: ShipStationShipmentJson = {
          shipmentId,
          // An order this fake never received was created in ShipStation some other way.
          orderId: order?.orderId ?? nextOrderId++,
          orderKey,
          userId: null,
          customerEmail: null,
          orderNumber: order?.orderNumber ?? shipOptions.orderNumber ?? orderKey,
          createDate,
          shipDate: createDate.slice(0, 10),
          shipmentCost: 7.65,
          insuranceCost: 0,
          trackingNumber:
            shipOptions.trackingNumber ?? `9400${String(shipmentId).padStart(18, "0")}`,
          isReturnLabel: false,
          batchNumber: null,
          carrierCode: shipOptions.carrierCode ?? "usps",
          serviceCode: shipOptions.serviceCode ?? "usps_priority_mail",
          packageCode: "package",
          confirmation: "delivery",
          warehouseId: null,
          voided: false,
          voidDate: null,
          marketplaceNotified: false,
          notifyErrorMessage: null,
          shipTo: null,
          weight: { value: 16, units: "ounces", WeightUnits: 1 },
          dimensions: null,
          insuranceOptions: { provider: null, insureShipment: false, insuredValue: 0 },
          advancedOptions: null,
          shipmentItems: null,
          labelData: null,
          formData: null,
        };
        return shipment;
      });
      fake.shipments.push(...created);
      const batchId = newBatch([...created]);
      if (shipOptions.notify ?? true) await notify(batchId);
      return created;
    },
    addWebhook: (targetUrl: string, friendlyName = "test") => addWebhook(targetUrl, friendlyName),
    async voidShipment(shipmentId: number, voidOptions: { notify?: boolean } = {}) {
      const shipment = fake.shipments.find((s) => s?.shipmentId === shipmentId) as
        | ShipStationShipmentJson
        | undefined;
      if (!shipment) throw new Error(`the fake has no shipment ${shipmentId}`);
      shipment.voided = true;
      shipment.voidDate = toShipStationTime(now());
      const batchId = newBatch([shipment]);
      if (voidOptions.notify ?? true) await notify(batchId);
      return shipment;
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  });
  return fake;
}
