// Scenario 2: the database server restarts in the middle of a burst. The reactor must
// recover on its own: readiness 503 while down, 200 after; nothing lost; no row left
// locked after its lease.
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { startEmbeddedPostgres } from "../../src/db/embedded.js";
import { migrate } from "../../src/db/migrate.js";
import { startFakeShipStation } from "../../src/demo/fake-shipstation.js";
import { buildHealth } from "../../src/http/health.js";
import { insertOrders, waitFor } from "../helpers/db.js";
import { startReactor } from "../helpers/reactor.js";
import { reactorConnections, report, scale } from "./scale.js";

describe("fault: database restart mid-burst", () => {
  it("recovers without a restart of its own and loses nothing", async () => {
    const dir = path.join(tmpdir(), `pg-reactor-restart-${process.pid}-${Date.now()}`);
    let server = await startEmbeddedPostgres({ dir, persistent: true, database: "restart" });
    await migrate(server.url);
    const fake = await startFakeShipStation();
    // Slow calls keep batches in flight when the server goes away.
    fake.defaultResponse = { delayMs: 50 };
    const setup = new pg.Client({ connectionString: server.url });
    await setup.connect();
    // About a database restart, not the rate limit (uploads-field.test.ts covers the real
    // 40 a minute): the batches of 20 would take minutes at 40 calls a minute.
    await setup.query(
      `INSERT INTO configuration_params (category, parameter_name, value) VALUES
       ('reactor', 'upload_rate_limit_per_minute', '100000'), ('reactor', 'upload_batch_size', '20'),
       ('reactor', 'lease_seconds', '10')`,
    );
    await setup.end();
    const app = await startReactor({ databaseUrl: server.url, shipstationUrl: fake.url });
    const started = Date.now();
    const total = scale(1000, 10000);
    try {
      const pool = new pg.Pool({ connectionString: server.url, max: 2 });
      pool.on("error", () => undefined);
      await insertOrders(pool, total / 2, { prefix: "before" });
      await waitFor(() => fake.received.size > 0, { what: "uploads under way" });
      await pool.end();
      await server.stop();
      const down = await waitFor(
        async () => {
          const h = await buildHealth(app);
          return h.status === "fail" ? h : null;
        },
        { what: "readiness fail", timeoutMs: 20_000 },
      );
      expect(down.checks["postgres:responseTime"]?.[0]?.status).toBe("fail");
      server = await startEmbeddedPostgres({ dir, persistent: true, database: "restart" });
      const after = new pg.Pool({ connectionString: server.url, max: 2 });
      await insertOrders(after, total / 2, { prefix: "after" });
      await waitFor(async () => (await buildHealth(app)).status !== "fail", {
        what: "readiness back",
        timeoutMs: 30_000,
      });
      await waitFor(
        async () => {
          const r = await after.query(
            "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'uploaded'",
          );
          return r.rows[0].n === total;
        },
        { what: "every order uploaded", timeoutMs: 90_000 },
      );
      const { rows } = await after.query("SELECT id FROM orders_inbox");
      const lost = rows.filter((r) => !fake.received.has(String(r.id))).length;
      const resent = [...fake.received.values()].filter((n) => n > 1).length;
      const stuck = await after.query(
        "SELECT count(*)::int AS n FROM orders_inbox WHERE locked_by IS NOT NULL",
      );
      expect(lost).toBe(0);
      expect(stuck.rows[0].n).toBe(0);
      expect(app.reactor.listener().state().connected).toBe(true);
      report("database restart", {
        connections: await reactorConnections(after),
        workItems: total,
        lost,
        resent,
        stuck: stuck.rows[0].n,
        settleSeconds: (Date.now() - started) / 1000,
      });
      await after.end();
    } finally {
      await app.stop(1_000);
      await fake.close();
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
