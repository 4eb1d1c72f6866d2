// Scenario 3: three real reactor processes; one is SIGKILLed mid-batch again and again
// and restarted. Nothing may be lost, and re-sends are bounded by what the killed
// replicas held (their leases expire, then another replica sends those rows again,
// with the same orderKey).
import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { startFakeShipStation } from "../../src/demo/fake-shipstation.js";
import { createTestDatabase, insertOrders, setSetting, waitFor } from "../helpers/db.js";
import { type Spawned, spawnEntry } from "../helpers/process.js";
import { reactorConnections, report, scale } from "./scale.js";

const BATCH = 10;
const CONCURRENCY = 2;

describe("fault: replica crash", () => {
  it("SIGKILLed replicas lose nothing; re-sends stay within what they held", async () => {
    const db = await createTestDatabase();
    const fake = await startFakeShipStation();
    fake.defaultResponse = { delayMs: 40 };
    // About crashed replicas, not the rate limit (uploads-field.test.ts covers the real 40
    // a minute): thousands of orders at 40 calls a minute would take minutes.
    await setSetting(db.pool, "upload_rate_limit_per_minute", "100000");
    await setSetting(db.pool, "upload_batch_size", String(BATCH));
    await setSetting(db.pool, "upload_concurrency", String(CONCURRENCY));
    await setSetting(db.pool, "lease_seconds", "5");
    const spawnReplica = (name: string): Spawned =>
      spawnEntry("src/main.ts", {
        DATABASE_URL: db.url,
        HTTP_PORT: "0",
        INSTANCE_ID: name,
        SHIPSTATION_BASE_URL: fake.url,
        SHIPSTATION_API_KEY: "k",
        SHIPSTATION_API_SECRET: "s",
        LOG_LEVEL: "warn",
      });
    const replicas = new Map<string, Spawned>();
    const started = Date.now();
    const kills = scale(3, 10);
    const total = scale(600, 6000);
    try {
      for (const name of ["a", "b", "c"]) replicas.set(name, spawnReplica(name));
      await waitFor(
        async () => {
          const r = await db.pool.query(
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'pg-reactor listener' AND datname = current_database()",
          );
          return r.rows[0].n === 3;
        },
        { what: "three listening replicas", timeoutMs: 60_000 },
      );
      const perKill = Math.ceil(total / kills);
      for (let k = 0; k < kills; k++) {
        await insertOrders(db.pool, perKill, { prefix: `k${k}` });
        // Kill while batches are in flight (the fake answers slowly).
        await waitFor(
          async () => {
            const r = await db.pool.query(
              "SELECT count(*)::int AS n FROM orders_inbox WHERE locked_until > now()",
            );
            return r.rows[0].n > 0;
          },
          { what: "work in flight", timeoutMs: 20_000 },
        );
        const name = ["a", "b", "c"][k % 3] as string;
        const victim = replicas.get(name) as Spawned;
        victim.child.kill("SIGKILL");
        await victim.exited;
        replicas.set(name, spawnReplica(name));
      }
      await waitFor(
        async () => {
          const r = await db.pool.query(
            "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'uploaded'",
          );
          return r.rows[0].n === perKill * kills;
        },
        { what: "every order uploaded", timeoutMs: 120_000 },
      );
      const { rows } = await db.pool.query("SELECT id FROM orders_inbox");
      const lost = rows.filter((r) => !fake.received.has(String(r.id))).length;
      const resent = [...fake.received.values()].reduce((s, n) => s + (n - 1), 0);
      expect(lost).toBe(0);
      // A killed replica held at most BATCH × CONCURRENCY rows.
      expect(resent).toBeLessThanOrEqual(kills * BATCH * CONCURRENCY);
      report("replica crash", {
        connections: await reactorConnections(db.pool),
        replicas: 3,
        kills,
        workItems: rows.length,
        lost,
        resent,
        resentBound: kills * BATCH * CONCURRENCY,
        replicaPeakRssMiB: await Promise.all(
          [...replicas.values()].map(async (r) => {
            const status = await readFile(`/proc/${r.child.pid}/status`, "utf8").catch(() => "");
            return Math.round(Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024);
          }),
        ),
        settleSeconds: (Date.now() - started) / 1000,
      });
    } finally {
      for (const r of replicas.values()) r.child.kill("SIGKILL");
      await Promise.all([...replicas.values()].map((r) => r.exited));
      await fake.close();
      await db.drop();
    }
  });
});
