// The LISTEN connection is proven by pings: the safety poll's query notifies the
// listener's private channel. While pings arrive, the listener sends no query of its own
// (the idle cost is the poll alone); without them it checks pg_listening_channels(); a
// ping that does not arrive makes it reconnect.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { makeLogger } from "../src/logger.js";
import { makeMetrics } from "../src/metrics.js";
import { type Listener, makeListener } from "../src/reactor/listener.js";
import { createTestDatabase, type TestDatabase, waitFor } from "./helpers/db.js";
import { startReactor } from "./helpers/reactor.js";

describe("listener pings", () => {
  let db: TestDatabase;
  let listener: Listener | null = null;

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterEach(async () => {
    await listener?.close();
    listener = null;
  });
  afterAll(async () => {
    await db.drop();
  });

  const start = async (checkIntervalMs: number) => {
    listener = makeListener({
      url: db.url,
      channels: ["reactor_orders"],
      logger: makeLogger(process.env.TEST_LOG_LEVEL ?? "silent"),
      metrics: makeMetrics(),
      checkIntervalMs,
      onNotification: () => undefined,
      onConnected: () => undefined,
    });
    await listener.start();
    return listener;
  };

  /** The statement the listener's backend ran last, as the server reports it. */
  const lastQuery = async (l: Listener) => {
    const { rows } = await db.pool.query("SELECT query FROM pg_stat_activity WHERE pid = $1", [
      l.backendPid(),
    ]);
    return String(rows[0]?.query ?? "");
  };

  it("while pings arrive the listener sends no query; without them it checks its channels", async () => {
    const l = await start(400);
    const channel = l.pingChannel();
    expect(channel).toMatch(/^reactor_ping_[0-9a-f]{12}$/);
    // Pings every 100 ms for 1.5 s: several check intervals pass without a query.
    const until = Date.now() + 1_500;
    while (Date.now() < until) {
      const sentAt = Date.now();
      await db.pool.query("SELECT pg_notify($1, '')", [channel]);
      l.expectPing(sentAt);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await lastQuery(l)).toMatch(/^LISTEN /);
    // No more pings: the next interval runs the channel check on the connection.
    await waitFor(async () => /pg_listening_channels/.test(await lastQuery(l)), {
      timeoutMs: 5_000,
      what: "the channel check",
    });
    expect(l.state()).toMatchObject({ connected: true, reconnects: 0 });
  });

  it("a ping that does not arrive makes the listener reconnect", async () => {
    const l = await start(60_000);
    const before = l.backendPid();
    l.expectPing(Date.now()); // nothing is sent
    await waitFor(() => l.state().reconnects === 1 && l.state().connected, {
      timeoutMs: 20_000,
      what: "a reconnect",
    });
    expect(l.backendPid()).not.toBe(before);
  }, 30_000);

  it("a running reactor's safety poll pings its listener: no channel check query", async () => {
    await db.pool.query(
      "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'poll_interval_seconds', '1')",
    );
    const app = await startReactor({ databaseUrl: db.url, listenerCheckIntervalMs: 1_500 });
    try {
      const l = app.reactor.listener();
      // Four polls, so two check intervals: each saw a ping, so no check ran.
      const polls = () => Number(app.reactor.poll.lastPollAt()?.getTime() ?? 0);
      const first = await waitFor(() => polls() || null, { what: "a first poll" });
      await waitFor(() => polls() - first >= 4_000, { timeoutMs: 15_000, what: "four polls" });
      expect(await lastQuery(l)).toMatch(/^LISTEN /);
      expect(l.state().reconnects).toBe(0);
    } finally {
      await app.stop(1_000);
    }
  }, 30_000);
});
