// Scenario 1: the LISTEN backend is terminated again and again under a steady insert
// stream. Nothing may be lost, and work committed while the listener is down must be
// picked up by the reconnect catch-up, long before the (hour-long) safety poll.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../../src/demo/fake-shipstation.js";
import {
  createTestDatabase,
  insertOrders,
  setSetting,
  type TestDatabase,
  terminateListener,
  waitFor,
} from "../helpers/db.js";
import { metricTotal, startReactor } from "../helpers/reactor.js";
import { reactorConnections, report, scale } from "./scale.js";

describe("fault: listener cut", () => {
  let db: TestDatabase;
  let fake: FakeShipStation;
  let app: App;
  const reconnectWakes = async () =>
    (await app.metrics.wakeups.get()).values.find(
      (v) => v.labels.workload === "uploads" && v.labels.reason === "reconnect",
    )?.value ?? 0;

  beforeAll(async () => {
    db = await createTestDatabase();
    fake = await startFakeShipStation();
    // About listener cuts, not the rate limit (uploads-field.test.ts covers the real 40 a
    // minute): every streamed single-row insert is a call of its own.
    await setSetting(db.pool, "upload_rate_limit_per_minute", "100000");
    await setSetting(db.pool, "poll_interval_seconds", "3600");
    app = await startReactor({ databaseUrl: db.url, shipstationUrl: fake.url });
  });
  afterAll(async () => {
    await app?.stop(1_000);
    await fake.close();
    await db.drop();
  });

  it(`terminating the listener ${scale(5, 50)} times under load loses nothing`, async () => {
    const cuts = scale(5, 50);
    const started = Date.now();
    const pollsBefore = await metricTotal(app.metrics.safetyPolls);
    const reconnectWakesBefore = await reconnectWakes();
    let streaming = true;
    let streamed = 0;
    const stream = (async () => {
      while (streaming) {
        await insertOrders(db.pool, 1, { prefix: `s${streamed}` });
        streamed++;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    const catchUpMs: number[] = [];
    for (let i = 0; i < cuts; i++) {
      await waitFor(() => app.reactor.listener().state().connected, {
        what: "listener up",
        timeoutMs: 20_000,
      });
      const client = await db.pool.connect();
      try {
        // Waits until the backend is gone, so the next commit's NOTIFY reaches no one.
        expect(await terminateListener(client, 5000)).toEqual([{ ok: true }]);
        const t0 = Date.now();
        const [id] = await insertOrders(client, 1, { prefix: `cut${i}` });
        await waitFor(() => fake.received.has(String(id)), {
          what: `order after cut ${i}`,
          timeoutMs: 20_000,
        });
        catchUpMs.push(Date.now() - t0);
      } finally {
        client.release();
      }
    }
    streaming = false;
    await stream;
    // Settled means no row is waiting or held; only then is "lost" a finding.
    await waitFor(
      async () => {
        const r = await db.pool.query(
          "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'pending' OR locked_by IS NOT NULL",
        );
        return r.rows[0].n === 0;
      },
      { what: "every order settled", timeoutMs: 30_000 },
    );
    const { rows } = await db.pool.query("SELECT id, upload_state FROM orders_inbox");
    expect(rows).toHaveLength(streamed + cuts);
    expect(rows.filter((r) => r.upload_state !== "uploaded")).toEqual([]);
    const lost = rows.filter((r) => !fake.received.has(String(r.id))).length;
    const resent = [...fake.received.values()].filter((n) => n > 1).length;
    expect(lost).toBe(0);
    expect(resent).toBe(0);
    expect(app.reactor.listener().state().reconnects).toBeGreaterThanOrEqual(cuts);
    // Every reconnect ran a catch-up (the last one may still be counting: wait for it);
    // the hour-long safety poll never ran, so it rescued nothing.
    await waitFor(async () => (await reconnectWakes()) - reconnectWakesBefore >= cuts, {
      what: `${cuts} catch-up wake-ups`,
    });
    expect(await metricTotal(app.metrics.safetyPolls)).toBe(pollsBefore);
    report("listener cut", {
      connections: await reactorConnections(db.pool),
      cuts,
      workItems: rows.length,
      lost,
      resent,
      catchUpMsMax: Math.max(...catchUpMs),
      catchUpMsMedian: catchUpMs.sort((a, b) => a - b)[Math.floor(catchUpMs.length / 2)],
      settleSeconds: (Date.now() - started) / 1000,
    });
  });
});
