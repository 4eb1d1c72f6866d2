// A webhook receiver for tests, the demo and the compose demo profile: a real HTTP server
// that records each request (raw body, headers) and answers from a script.
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";

export interface ReceivedRequest {
  at: number;
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
}

export interface ReceiverReply {
  status?: number;
  headers?: Record<string, string>;
  body?: string;
  delayMs?: number;
  /** Destroy the socket without answering (a connection reset). */
  reset?: boolean;
}

export interface Receiver {
  url: string;
  port: number;
  requests: ReceivedRequest[];
  /** Replies for the next requests in order; then `fallback`. */
  script: ReceiverReply[];
  fallback: ReceiverReply | ((req: ReceivedRequest) => ReceiverReply);
  /** webhook-id → times received with a 2xx answer. */
  delivered: Map<string, number>;
  close(): Promise<void>;
}

export async function startReceiver(
  options: { host?: string; port?: number } = {},
): Promise<Receiver> {
  const r: Omit<Receiver, "url" | "port" | "close"> = {
    requests: [],
    script: [],
    fallback: { status: 204 },
    delivered: new Map(),
  };
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const entry: ReceivedRequest = {
      at: Date.now(),
      path: req.url ?? "/",
      headers: req.headers,
      body: Buffer.concat(chunks).toString("utf8"),
    };
    r.requests.push(entry);
    const reply =
      r.script.shift() ?? (typeof r.fallback === "function" ? r.fallback(entry) : r.fallback);
    if (reply.delayMs) await new Promise((done) => setTimeout(done, reply.delayMs));
    if (reply.reset) {
      req.socket.destroy();
      return;
    }
    const status = reply.status ?? 204;
    if (status >= 200 && status < 300) {
      const id = String(req.headers["webhook-id"]);
      r.delivered.set(id, (r.delivered.get(id) ?? 0) + 1);
    }
    if (res.destroyed) return;
    res.writeHead(status, reply.headers);
    res.end(reply.body ?? "");
  });
  server.listen(options.port ?? 0, options.host ?? "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return Object.assign(r, {
    url: `http://127.0.0.1:${port}`,
    port,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((done) => server.close(() => done()));
    },
  });
}

/** A fresh Standard Webhooks secret: whsec_ + base64 of 32 random bytes. */
export function newSecret(bytes = 32): string {
  return `whsec_${randomBytes(bytes).toString("base64")}`;
}
