// Scenario 4: a webhook receiver that fails 30 % of requests with 5xx, times out 10 %,
// answers 429 with Retry-After in bursts, and resets connections. Everything must be
// delivered within the schedule, and a 429 must never use up an attempt.
import { describe, expect, it } from "vitest";
import { newSecret, type ReceiverReply, startReceiver } from "../../src/demo/receiver.js";
import { createTestDatabase, setSetting, waitFor } from "../helpers/db.js";
import { startReactor } from "../helpers/reactor.js";
import { reactorConnections, report, scale } from "./scale.js";

describe("fault: target chaos", () => {
  it("delivers everything through 5xx, timeouts, 429 bursts and resets", {
    timeout: 300_000,
  }, async () => {
    const db = await createTestDatabase();
    const receiver = await startReceiver();
    const events = scale(150, 1500);
    // webhook-id → the kind of each answer it got.
    const answers = new Map<string, string[]>();
    let burst = 0;
    receiver.fallback = (req) => {
      const id = String(req.headers["webhook-id"]);
      const roll = Math.random();
      let kind: string;
      let reply: ReceiverReply;
      if (burst > 0 || roll < 0.05) {
        // 429 bursts: once one starts, the next few requests are throttled too.
        burst = burst > 0 ? burst - 1 : 5;
        kind = "429";
        reply = { status: 429, headers: { "retry-after": "1", "x-ratelimit-reset": "1" } };
      } else if (roll < 0.35) {
        kind = "5xx";
        reply = { status: 503 };
      } else if (roll < 0.45) {
        kind = "timeout";
        reply = { status: 204, delayMs: 1_500 };
      } else if (roll < 0.5) {
        kind = "reset";
        reply = { reset: true };
      } else {
        kind = "ok";
        reply = { status: 204 };
      }
      answers.set(id, [...(answers.get(id) ?? []), kind]);
      return reply;
    };
    await setSetting(db.pool, "delivery_timeout_seconds", "1");
    await setSetting(db.pool, "delivery_retry_schedule_seconds", Array(25).fill("1").join(","));
    await db.pool.query("INSERT INTO webhook_subscriptions (url, secret) VALUES ($1, $2)", [
      `${receiver.url}/chaos`,
      newSecret(),
    ]);
    const app = await startReactor({ databaseUrl: db.url });
    const started = Date.now();
    try {
      await db.pool.query(
        `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
         SELECT 'o', g::text, 'order.created', '{}' FROM generate_series(1, $1::int) g`,
        [events],
      );
      await waitFor(
        async () => {
          const r = await db.pool.query(
            "SELECT count(*)::int AS n FROM webhook_deliveries WHERE state <> 'pending'",
          );
          return r.rows[0].n === events;
        },
        { what: "every delivery final", timeoutMs: 240_000, intervalMs: 1_000 },
      );
      const { rows } = await db.pool.query(
        "SELECT event_id, state, attempts FROM webhook_deliveries",
      );
      const failed = rows.filter((r) => r.state !== "delivered");
      expect(failed).toEqual([]);
      let throttled = 0;
      for (const r of rows) {
        const kinds = answers.get(r.event_id) ?? [];
        expect(kinds.at(-1)).toBe("ok");
        const nonThrottled = kinds.filter((k) => k !== "429").length;
        throttled += kinds.length - nonThrottled;
        // Every request except the 429s used an attempt; the 429s used none.
        expect(r.attempts).toBe(nonThrottled);
      }
      const requests = [...answers.values()].reduce((s, k) => s + k.length, 0);
      report("target chaos", {
        connections: await reactorConnections(db.pool),
        workItems: events,
        lost: events - rows.filter((r) => r.state === "delivered").length,
        requests,
        resent: requests - events,
        throttled,
        settleSeconds: (Date.now() - started) / 1000,
      });
    } finally {
      await app.stop(1_000);
      await receiver.close();
      await db.drop();
    }
  });
});
