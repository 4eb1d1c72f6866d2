// A fake ShipStation for tests, the demo and the compose demo profile: a real HTTP
// server that speaks enough of createorders, records every call and answers from a script.
import { once } from "node:events";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

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
  close(): Promise<void>;
}

export async function startFakeShipStation(
  options: { host?: string; port?: number } = {},
): Promise<FakeShipStation> {
  let nextOrderId = 1000;
  const fake: Omit<FakeShipStation, "url" | "close"> = {
    calls: [],
    received: new Map(),
    script: [],
    defaultResponse: {},
    rejectBatchKeys: {},
  };
  const server = createServer(async (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    if (req.method !== "POST" || req.url !== "/orders/createorders") {
      res.writeHead(404).end("not found");
      return;
    }
    const body = Buffer.concat(chunks).toString("utf8");
    const orders = JSON.parse(body) as Array<Record<string, unknown>>;
    fake.calls.push({
      at: Date.now(),
      authorization: req.headers.authorization,
      userAgent: req.headers["user-agent"],
      orders,
      body,
    });
    const refused = orders.find((o) => fake.rejectBatchKeys[String(o.orderKey)]);
    if (refused) {
      res.writeHead(400, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          Message: "The request is invalid.",
          ModelState: { "orders[0]": [fake.rejectBatchKeys[String(refused.orderKey)]] },
        }),
      );
      return;
    }
    const scripted = fake.script.shift() ?? { status: 200, ...fake.defaultResponse };
    if (scripted.delayMs) await new Promise((r) => setTimeout(r, scripted.delayMs));
    const status = scripted.status ?? 200;
    if (status === 200 && scripted.body === undefined) {
      const results = orders.map((o) => {
        const key = String(o.orderKey);
        const error = scripted.failKeys?.[key];
        if (!error) fake.received.set(key, (fake.received.get(key) ?? 0) + 1);
        return {
          orderId: error ? 0 : nextOrderId++,
          orderNumber: o.orderNumber,
          orderKey: key,
          success: !error,
          errorMessage: error ?? null,
        };
      });
      res.writeHead(200, { "content-type": "application/json", ...scripted.headers });
      res.end(JSON.stringify({ hasErrors: results.some((r) => !r.success), results }));
      return;
    }
    res.writeHead(status, { "content-type": "application/json", ...scripted.headers });
    const answer = scripted.echoHeaders
      ? { Message: `scripted ${status}`, request: { headers: req.headers } }
      : (scripted.body ?? { Message: `scripted ${status}` });
    res.end(JSON.stringify(answer));
  });
  server.keepAliveTimeout = 60_000;
  server.listen(options.port ?? 0, options.host ?? "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return Object.assign(fake, {
    url: `http://127.0.0.1:${port}`,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  });
}
