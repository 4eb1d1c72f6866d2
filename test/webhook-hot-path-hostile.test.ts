// The webhook hot path against receivers that misbehave: the shared whole-request
// deadlines, the body read through events (webhooks and ShipStation), and the SSRF
// pre-check's kept verdicts. sendWebhook and the ShipStation client are called directly,
// against real HTTP servers on loopback, with the SSRF guard on (loopback allowed).
import dns from "node:dns";
import { once } from "node:events";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { syncBuiltinESMExports } from "node:module";
import type { AddressInfo, Socket } from "node:net";
import type { Agent } from "undici";
import { afterEach, describe, expect, it, vi } from "vitest";
import { loadEnv } from "../src/config/env.js";
import { type DeadlineSignal, SharedDeadlines } from "../src/outbound/deadlines.js";
import { makeAgent } from "../src/outbound/http.js";
import { makeShipStationClient } from "../src/outbound/shipstation-client.js";
import { makeAddressPolicy, PrivateAddressError } from "../src/outbound/ssrf.js";
import { USER_AGENT } from "../src/version.js";
import { sendWebhook, type WebhookResult } from "../src/workloads/deliveries/webhook-client.js";

const policy = makeAddressPolicy(loadEnv({ WEBHOOK_ALLOWED_NETWORKS: "127.0.0.1/32" }));

interface Receiver {
  url: string;
  /** TCP connections accepted so far. */
  connections(): number;
  close(): Promise<void>;
}

const open: Array<{ close(): Promise<void> }> = [];

async function receiver(
  handle: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<Receiver> {
  let connections = 0;
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    // Read the whole request first, as a real receiver would, then misbehave.
    req.resume();
    req.on("end", () => handle(req, res));
  });
  server.on("connection", (s: Socket) => {
    connections++;
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  const r = {
    url: `http://127.0.0.1:${port}`,
    connections: () => connections,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((done) => server.close(() => done()));
    },
  };
  open.push(r);
  return r;
}

const agents: Agent[] = [];
function agent(): Agent {
  const a = makeAgent({ connections: 64, guard: policy });
  agents.push(a);
  return a;
}

afterEach(async () => {
  vi.restoreAllMocks();
  vi.useRealTimers();
  await Promise.all(agents.splice(0).map((a) => a.destroy().catch(() => undefined)));
  await Promise.all(open.splice(0).map((r) => r.close()));
});

function send(url: string, a: Agent, timeoutMs = 1000): Promise<WebhookResult> {
  return sendWebhook({
    url,
    body: '{"type":"order.created"}',
    headers: { "content-type": "application/json" },
    timeoutMs,
    agent: a,
    policy,
  });
}

describe("shared deadlines", () => {
  it("never fire before a request's own timeout, and at most 100 ms after it, whatever the mix of timeouts", () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "Date", "performance"] });
    const deadlines = new SharedDeadlines();
    const asked: Array<{ at: number; timeoutMs: number; signal: DeadlineSignal }> = [];
    const start = Date.now();
    // Requests every 7 ms over 1.5 s, with 1 s, 2 s and a timeout that changes as they go.
    for (let t = 0; t <= 1500; t += 7) {
      for (const timeoutMs of [1000, 2000, t < 700 ? 1000 : 3000]) {
        asked.push({ at: Date.now(), timeoutMs, signal: deadlines.signal(timeoutMs) });
      }
      vi.advanceTimersByTime(7);
    }
    const wrong: string[] = [];
    for (let t = Date.now() - start; t <= 5000; t++) {
      const now = Date.now();
      for (const a of asked) {
        const had = now - a.at;
        if (a.signal.aborted ? had < a.timeoutMs : had > a.timeoutMs + 100)
          wrong.push(
            `${a.timeoutMs} ms asked at ${a.at - start}: aborted=${a.signal.aborted} after ${had}`,
          );
      }
      vi.advanceTimersByTime(1);
    }
    expect(wrong.slice(0, 5)).toEqual([]);
    expect(asked.every((a) => a.signal.aborted)).toBe(true);
  });

  it("a wall clock stepped back (NTP, a resumed VM) never hands out a deadline already spent", async () => {
    const deadlines = new SharedDeadlines();
    const first = deadlines.signal(50);
    // The wall clock jumps a minute back and stays there; timers keep their own clock.
    vi.spyOn(Date, "now").mockReturnValue(Date.now() - 60_000);
    await once(first, "abort");
    const later = deadlines.signal(50);
    expect(later.aborted).toBe(false);
    expect(later).not.toBe(first);
  });
});

describe("sendWebhook against hostile receivers", () => {
  it("a receiver that never answers: timed out after 1 s", async () => {
    const r = await receiver(() => undefined);
    const result = await send(`${r.url}/silent`, agent());
    expect(result).toEqual({
      kind: "failed",
      status: null,
      retryAfterMs: null,
      error: "timed out after 1 s",
    });
  });

  it("headers, then a body that never ends: the status counts, and the attempt ends at the deadline", async () => {
    const r = await receiver((_req, res) => {
      res.writeHead(500, { "content-type": "text/plain" });
      res.write("partial ");
    });
    const result = await send(`${r.url}/stuck`, agent());
    expect(result).toMatchObject({ kind: "failed", status: 500, error: "HTTP 500" });
  });

  it("a body cut short (fewer bytes than content-length, then the socket closes): the status counts", async () => {
    const r = await receiver((_req, res) => {
      res.writeHead(503, { "content-length": "1000", "retry-after": "7" });
      res.write("only this much");
      setImmediate(() => res.socket?.destroy());
    });
    const result = await send(`${r.url}/short`, agent());
    expect(result).toMatchObject({ kind: "failed", status: 503, retryAfterMs: 7000 });
  });

  it("a socket reset in the middle of a chunked body: the status counts", async () => {
    const r = await receiver((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.write("a".repeat(10_000));
      setImmediate(() => res.socket?.resetAndDestroy());
    });
    const result = await send(`${r.url}/reset`, agent());
    expect(result).toMatchObject({ kind: "delivered", status: 200 });
  });

  it("a 204 without a body is delivered with no excerpt", async () => {
    const r = await receiver((_req, res) => res.writeHead(204).end());
    const result = await send(`${r.url}/empty`, agent());
    expect(result).toEqual({ kind: "delivered", status: 204 });
  });

  it("a chunked body of many small chunks is read in order, cut on a character boundary", async () => {
    const r = await receiver((_req, res) => {
      res.writeHead(400, { "content-type": "text/plain" });
      // 3-byte characters in 1-7 byte chunks: chunk edges fall inside characters.
      const text = "€".repeat(3000);
      const bytes = Buffer.from(text);
      let i = 0;
      const step = () => {
        if (i >= bytes.length) return res.end();
        const n = 1 + (i % 7);
        res.write(bytes.subarray(i, i + n));
        i += n;
        if (i % 700 < 7) setImmediate(step);
        else step();
      };
      step();
    });
    const result = await send(`${r.url}/chunks`, agent());
    expect(result.kind).toBe("failed");
    const excerpt = (result as { excerpt?: string }).excerpt ?? "";
    expect(excerpt.length).toBeGreaterThan(0);
    expect(excerpt).toMatch(/^€+$/);
    expect(Buffer.byteLength(excerpt)).toBeLessThanOrEqual(1024);
  });

  it("a huge body is capped and drained: the connections are reused", async () => {
    const big = Buffer.alloc(8 * 1024 * 1024, "x");
    const r = await receiver((_req, res) => {
      res.writeHead(500, { "content-length": String(big.length) });
      res.end(big);
    });
    const a = agent();
    for (let i = 0; i < 6; i++) {
      const result = await send(`${r.url}/big`, a, 10_000);
      expect(result).toMatchObject({ kind: "failed", status: 500 });
      const excerpt = (result as { excerpt?: string }).excerpt ?? "";
      expect(excerpt).toMatch(/^x+$/);
      expect(Buffer.byteLength(excerpt)).toBeLessThanOrEqual(1024);
    }
    // Drained bodies keep their connections: undici may open a second one while the first
    // is being handed back (as it did with the async-iterator read), never one per request.
    expect(r.connections()).toBeLessThanOrEqual(2);
  });

  it("many concurrent requests with different timeouts leave no listener on any deadline, and no warning", async () => {
    const signals = vi.spyOn(SharedDeadlines.prototype, "signal");
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on("warning", onWarning);
    try {
      let n = 0;
      const r = await receiver((_req, res) => {
        const kind = n++ % 4;
        if (kind === 0) res.writeHead(204).end();
        else if (kind === 1) res.writeHead(200).end("ok");
        else if (kind === 2) res.writeHead(500).end("x".repeat(9000));
        else {
          res.writeHead(502, { "content-length": "100" });
          res.write("short");
          setImmediate(() => res.socket?.destroy());
        }
      });
      const a = agent();
      const results = await Promise.all(
        Array.from({ length: 400 }, (_, i) =>
          send(`${r.url}/many/${i}`, a, [1000, 2000, 5000][i % 3]),
        ),
      );
      expect(results.filter((x) => x.kind === "refused" || x.status === null)).toEqual([]);
      const used = new Set(signals.mock.results.map((x) => x.value as DeadlineSignal));
      expect(used.size).toBeGreaterThanOrEqual(3);
      // undici lets go of the signal when a body closes: nothing is left to fire on.
      await vi.waitFor(() => {
        for (const s of used) expect(s.listenerCount("abort")).toBe(0);
      });
      expect(warnings.filter((w) => w.name === "MaxListenersExceededWarning")).toEqual([]);
    } finally {
      process.off("warning", onWarning);
    }
  });
});

describe("the ShipStation client's body reads", () => {
  function client(url: string) {
    return makeShipStationClient({
      baseUrl: url,
      apiKey: "k",
      apiSecret: "s",
      agent: agent(),
      userAgent: USER_AGENT,
    });
  }

  it("an error body cut short is a transient failure that says so", async () => {
    const r = await receiver((_req, res) => {
      res.writeHead(500, { "content-length": "500" });
      res.write("internal");
      setImmediate(() => res.socket?.destroy());
    });
    const result = await client(r.url).createOrders(["{}"]);
    expect(result).toMatchObject({ kind: "transient", status: 500 });
    expect((result as { error: string }).error).toMatch(/^ShipStation response cut off: /);
  });

  it("a huge chunked error body is kept short", async () => {
    const r = await receiver((_req, res) => {
      res.writeHead(400, { "content-type": "text/plain" });
      for (let i = 0; i < 200; i++) res.write(`bad order ${i} `.repeat(100));
      res.end();
    });
    const result = await client(r.url).createOrders(["{}"]);
    expect(result).toMatchObject({ kind: "rejected", status: 400 });
    expect((result as { error: string }).error.length).toBeLessThanOrEqual(1100);
    expect((result as { error: string }).error).toMatch(/^ShipStation HTTP 400: bad order 0 /);
  });

  it("a 2xx JSON body in many chunks is read whole", async () => {
    const r = await receiver((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      const body = JSON.stringify({
        results: Array.from({ length: 2000 }, (_, i) => ({
          orderKey: `k${i}`,
          orderId: i,
          orderNumber: `n${i}`,
          success: true,
          errorMessage: null,
        })),
        hasErrors: false,
      });
      for (let i = 0; i < body.length; i += 1000) res.write(body.slice(i, i + 1000));
      res.end();
    });
    const result = await client(r.url).createOrders(["{}"]);
    expect(result).toMatchObject({ kind: "ok", status: 200 });
    expect((result as { results: unknown[] }).results).toHaveLength(2000);
  });
});

describe("the SSRF pre-check's kept verdicts", () => {
  it("a refused literal stays refused, an allowed one allowed, hosts never share a verdict", async () => {
    const p = makeAddressPolicy(loadEnv({ WEBHOOK_ALLOWED_NETWORKS: "127.0.0.1/32" }));
    for (let i = 0; i < 3; i++) {
      await expect(p.check("http://127.0.0.1:1/")).resolves.toBeUndefined();
      await expect(p.check("http://127.0.0.2:1/")).rejects.toBeInstanceOf(PrivateAddressError);
      await expect(p.check("http://[::ffff:127.0.0.2]:1/")).rejects.toBeInstanceOf(
        PrivateAddressError,
      );
      await expect(p.check("http://10.0.0.1/")).rejects.toThrow(/10\.0\.0\.1/);
    }
  });

  it("an allowed host is kept 10 s of elapsed time, whatever the wall clock does; a refusal is not kept", async () => {
    vi.useFakeTimers({ toFake: ["Date", "performance"] });
    const lookup = vi.spyOn(dns, "lookup");
    syncBuiltinESMExports();
    try {
      // localhost resolves to loopback: allowed by one policy, refused by the other.
      const open = makeAddressPolicy(loadEnv({ WEBHOOK_ALLOWED_NETWORKS: "127.0.0.0/8,::1/128" }));
      await expect(open.check("http://localhost/")).resolves.toBeUndefined();
      await expect(open.check("http://localhost/")).resolves.toBeUndefined();
      expect(lookup).toHaveBeenCalledTimes(1);
      // The wall clock steps an hour back; 10 s pass: the host is looked up anew.
      vi.setSystemTime(Date.now() - 3_600_000);
      vi.advanceTimersByTime(10_001);
      await expect(open.check("http://localhost/")).resolves.toBeUndefined();
      expect(lookup).toHaveBeenCalledTimes(2);
      // A refusal fails a delivery for good: it is looked up again every time, so a name
      // fixed after pointing at a private address for a moment is allowed at once.
      const strict = makeAddressPolicy(loadEnv({ WEBHOOK_ALLOWED_NETWORKS: "127.0.0.2/32" }));
      await expect(strict.check("http://localhost/")).rejects.toBeInstanceOf(PrivateAddressError);
      await expect(strict.check("http://localhost/")).rejects.toBeInstanceOf(PrivateAddressError);
      expect(lookup).toHaveBeenCalledTimes(4);
    } finally {
      lookup.mockRestore();
      syncBuiltinESMExports();
    }
  });

  it("a failed lookup is not kept as a verdict either way", async () => {
    const p = makeAddressPolicy(loadEnv({ WEBHOOK_ALLOWED_NETWORKS: "127.0.0.1/32" }));
    for (let i = 0; i < 2; i++) {
      const err = await p.check("http://no-such-host.invalid/").catch((e: Error) => e);
      expect(err).toBeInstanceOf(Error);
      expect(err).not.toBeInstanceOf(PrivateAddressError);
    }
  });

  it("a kept allowed verdict does not let the connect guard through to a refused address", async () => {
    // The pre-check allowed the host; the address actually dialled is judged anew.
    const r = await receiver((_req, res) => res.writeHead(200).end());
    const port = new URL(r.url).port;
    const strict = makeAddressPolicy(loadEnv({ WEBHOOK_ALLOWED_NETWORKS: "127.0.0.2/32" }));
    const guarded = makeAgent({ guard: strict });
    agents.push(guarded);
    const result = await sendWebhook({
      url: `http://127.0.0.1:${port}/`,
      body: "{}",
      headers: {},
      timeoutMs: 1000,
      agent: guarded,
      policy, // a pre-check that allows loopback, as a stale kept verdict would
    });
    expect(result.kind).toBe("refused");
  });
});
