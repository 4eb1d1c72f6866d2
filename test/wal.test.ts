// The `wal` wake source (issue: wake from the write-ahead log). On a server with
// wal_level = logical: writers send no NOTIFY (the notify triggers are gone), each replica
// reads the commits from its own temporary slot, uploads and deliveries flow at once,
// switching modes under load and killing the replication connection lose nothing, and a
// SIGKILLed replica leaves no slot behind. On a server with wal_level = replica, `wal` is
// refused with what is missing.
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { type Receiver, startReceiver } from "../src/demo/receiver.js";
import { buildHealth } from "../src/http/health.js";
import { NOTIFY_TRIGGERS, switchWakeSource } from "../src/reactor/wake-source.js";
import { insertOrders, setSetting, subscribe, waitFor } from "./helpers/db.js";
import { spawnEntry } from "./helpers/process.js";
import { metricTotal, startReactor, startReplicas } from "./helpers/reactor.js";
import { type Server, serverWithWalLevel } from "./helpers/servers.js";

async function notifyTriggers(pool: pg.Pool): Promise<string[]> {
  const { rows } = await pool.query<{ tgname: string }>(
    "SELECT tgname FROM pg_trigger WHERE tgname = ANY($1) ORDER BY tgname",
    [NOTIFY_TRIGGERS],
  );
  return rows.map((r) => r.tgname);
}

async function uploadStates(pool: pg.Pool): Promise<Record<string, number>> {
  const { rows } = await pool.query<{ upload_state: string; n: number }>(
    "SELECT upload_state, count(*)::int AS n FROM orders_inbox GROUP BY 1",
  );
  return Object.fromEntries(rows.map((r) => [r.upload_state, r.n]));
}

/** Temporary slots of replicas (the reactor's, by name) on the server. */
async function reactorSlots(
  pool: pg.Pool,
): Promise<Array<{ slot_name: string; active_pid: number | null }>> {
  const { rows } = await pool.query(
    "SELECT slot_name, active_pid FROM pg_replication_slots WHERE slot_name LIKE 'pg_reactor%' AND temporary",
  );
  return rows;
}

describe("wake source wal", () => {
  let server: Server;
  let db: { url: string; pool: pg.Pool };
  let fake: FakeShipStation;
  let receiver: Receiver;
  let apps: App[] = [];

  beforeAll(async () => {
    server = await serverWithWalLevel("logical");
    fake = await startFakeShipStation();
    receiver = await startReceiver();
  }, 120_000);
  afterAll(async () => {
    await fake?.close();
    await receiver?.close();
    await server?.stop();
  });
  afterEach(async () => {
    await Promise.all(apps.map((a) => a.stop(2_000)));
    apps = [];
    fake.received.clear();
    fake.calls.length = 0;
    receiver.requests.length = 0;
    receiver.delivered.clear();
  });

  /** A fresh database in `wal` mode, the safety poll an hour away: only wakes move work. */
  async function walDatabase() {
    db = await server.database();
    await setSetting(db.pool, "poll_interval_seconds", "3600");
    // These tests are about wakes, not the ShipStation budget: hundreds of orders in
    // seconds would otherwise wait minutes on the real 40 calls a minute (the rate limit
    // has its own tests in uploads-field.test.ts).
    await setSetting(db.pool, "upload_rate_limit_per_minute", "100000");
    expect(await switchWakeSource(db.pool, "wal")).toBe("notify");
    return db;
  }

  async function start(count = 1): Promise<App[]> {
    const started = await startReplicas(count, { databaseUrl: db.url, shipstationUrl: fake.url });
    apps.push(...started);
    await waitFor(() => started.every((a) => a.reactor.wal.state().connected), {
      what: "every replica reading the WAL",
    });
    return started;
  }

  it("uploads and deliveries flow from the WAL; writers send no NOTIFY and fire no notify trigger", async () => {
    await walDatabase();
    expect(await notifyTriggers(db.pool)).toEqual([]);
    const [app] = (await start()) as [App];
    expect(app.reactor.wakeSource()).toBe("wal");

    // A session that LISTENs on every channel hears nothing from the writers.
    const listener = new pg.Client({ connectionString: db.url });
    await listener.connect();
    const heard: string[] = [];
    listener.on("notification", (n) => heard.push(n.channel));
    for (const channel of ["reactor_orders", "reactor_deliveries", "reactor_shipments"]) {
      await listener.query(`LISTEN ${channel}`);
    }
    try {
      await insertOrders(db.pool, 5);
      await waitFor(async () => (await uploadStates(db.pool)).uploaded === 5, {
        what: "5 orders uploaded",
      });
      await subscribe(db.pool, `${receiver.url}/wal`);
      await db.pool.query(
        `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
         VALUES ('order', '1', 'order.created', '{}'), ('order', '2', 'order.created', '{}')`,
      );
      await waitFor(() => receiver.delivered.size === 2, { what: "2 webhooks delivered" });
      // A NOTIFY sent now would arrive after the writers' (one round trip orders them).
      await listener.query("SELECT pg_notify('reactor_orders', 'probe')");
      await waitFor(() => heard.length > 0, { what: "the probe" });
      expect(heard).toEqual(["reactor_orders"]);
    } finally {
      await listener.end();
    }
    const wakeups = app.metrics.registry.getSingleMetric("reactor_wakeups_total");
    const byReason = ((await wakeups?.get())?.values ?? []).filter(
      (v) => v.labels.reason === "wal" && v.value > 0,
    );
    expect(byReason.map((v) => v.labels.workload).sort()).toEqual(["deliveries", "uploads"]);
    const status = (await buildHealth(app)).checks["wal:stream"]?.[0];
    expect(status?.status).toBe("pass");
  });

  it("isolated commits are each picked up, though a commit can reach the stream before it is visible", async () => {
    await walDatabase();
    await start();
    // One order at a time, nothing else committing: no later commit's wake can find an
    // earlier row the first claim missed, and the safety poll is an hour away.
    for (let i = 0; i < 150; i++) {
      await insertOrders(db.pool, 1, { prefix: `iso-${i}` });
      await waitFor(async () => (await uploadStates(db.pool)).uploaded === i + 1, {
        what: `order ${i + 1} uploaded from its own commit`,
        timeoutMs: 10_000,
      });
    }
  });

  it("switching notify → wal → notify under a steady stream of orders loses none", async () => {
    db = await server.database();
    await setSetting(db.pool, "poll_interval_seconds", "3600");
    await setSetting(db.pool, "upload_rate_limit_per_minute", "100000");
    const replicas = await startReplicas(2, { databaseUrl: db.url, shipstationUrl: fake.url });
    apps.push(...replicas);
    let writing = true;
    let written = 0;
    const writer = (async () => {
      while (writing) {
        await insertOrders(db.pool, 3);
        written += 3;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    for (const mode of ["wal", "notify", "wal", "notify"] as const) {
      await switchWakeSource(db.pool, mode);
      await waitFor(() => replicas.every((a) => a.reactor.wakeSource() === mode), {
        what: `both replicas on ${mode}`,
      });
      if (mode === "wal") {
        await waitFor(() => replicas.every((a) => a.reactor.wal.state().connected), {
          what: "both replicas reading the WAL",
        });
      }
      await new Promise((r) => setTimeout(r, 300));
    }
    writing = false;
    await writer;
    await waitFor(async () => (await uploadStates(db.pool)).uploaded === written, {
      what: `all ${written} orders uploaded without the safety poll`,
      timeoutMs: 30_000,
    });
    expect(await uploadStates(db.pool)).toEqual({ uploaded: written });
    expect([...fake.received.values()].every((n) => n === 1)).toBe(true);
    expect(await notifyTriggers(db.pool)).toEqual([...NOTIFY_TRIGGERS].sort());
    await waitFor(async () => (await reactorSlots(db.pool)).length === 0, {
      what: "no slot left after switching back",
    });
  });

  it("the replication connection killed 20 times under load: nothing lost, every restart catches up", async () => {
    await walDatabase();
    const [app] = (await start()) as [App];
    let total = 0;
    for (let cut = 0; cut < 20; cut++) {
      const pid = await waitFor(() => app.reactor.wal.backendPid(), { what: "the walsender" });
      await insertOrders(db.pool, 5);
      total += 5;
      await db.pool.query("SELECT pg_terminate_backend($1)", [pid]);
      // Written while the stream is down: only the restart's catch-up can find these.
      await insertOrders(db.pool, 5);
      total += 5;
      await waitFor(() => app.reactor.wal.state().restarts >= cut + 1, {
        what: `restart ${cut + 1}`,
      });
    }
    await waitFor(async () => (await uploadStates(db.pool)).uploaded === total, {
      what: `all ${total} orders uploaded`,
      timeoutMs: 30_000,
    });
    expect([...fake.received.values()].every((n) => n === 1)).toBe(true);
    expect(await metricTotal(app.metrics.listenerReconnects)).toBe(0);
  });

  it("a SIGKILLed replica's slot disappears with its connection", async () => {
    await walDatabase();
    const proc = spawnEntry("src/main.ts", {
      DATABASE_URL: db.url,
      HTTP_PORT: "0",
      SHIPSTATION_BASE_URL: fake.url,
      SHIPSTATION_API_KEY: "k",
      SHIPSTATION_API_SECRET: "s",
    });
    try {
      const slot = await waitFor(
        async () => (await reactorSlots(db.pool)).find((s) => s.active_pid !== null),
        { what: "the replica's slot, active", timeoutMs: 30_000 },
      );
      proc.child.kill("SIGKILL");
      await proc.exited;
      await waitFor(
        async () => !(await reactorSlots(db.pool)).some((s) => s.slot_name === slot.slot_name),
        { what: "the slot gone" },
      );
    } finally {
      proc.child.kill("SIGKILL");
    }
  }, 60_000);

  it("a role that may not replicate: /health warns saying so, and work still flows from the poll", async () => {
    await walDatabase();
    const role = `pgr_norepl_${Date.now()}`;
    await db.pool.query(`CREATE ROLE ${role} LOGIN PASSWORD 'x' NOREPLICATION`);
    await db.pool.query(`GRANT ALL ON ALL TABLES IN SCHEMA public TO ${role}`);
    await db.pool.query(`GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO ${role}`);
    await db.pool.query(`GRANT ALL ON SCHEMA public TO ${role}`);
    await setSetting(db.pool, "poll_interval_seconds", "1");
    const url = new URL(db.url);
    url.username = role;
    url.password = "x";
    const app = await startReactor({ databaseUrl: url.toString(), shipstationUrl: fake.url });
    apps.push(app);
    const check = await waitFor(
      async () => {
        const c = (await buildHealth(app)).checks["wal:stream"]?.[0];
        return c?.status === "warn" && /REPLICATION/.test(String(c.output)) ? c : null;
      },
      { what: "wal:stream warning naming the missing REPLICATION attribute" },
    );
    expect(check.output).toMatch(/replication stream is down: .*ALTER ROLE/);
    await insertOrders(db.pool, 3);
    await waitFor(async () => (await uploadStates(db.pool)).uploaded === 3, {
      what: "orders uploaded by the safety poll",
    });
    await app.stop(1_000);
    apps = apps.filter((a) => a !== app);
    await db.pool.query(`DROP OWNED BY ${role}`);
    await db.pool.query(`DROP ROLE ${role}`);
  });
});

describe("wake source wal on a server without wal_level = logical", () => {
  let server: Server;
  beforeAll(async () => {
    server = await serverWithWalLevel("replica");
  }, 120_000);
  afterAll(async () => {
    await server?.stop();
  });

  it("is refused at once, by the CLI and by a plain UPDATE, saying what is missing", async () => {
    const db = await server.database();
    const proc = spawnEntry("src/cli.ts", { DATABASE_URL: db.url }, ["wake-source", "wal"]);
    const { code } = await proc.exited;
    expect(code).toBe(1);
    expect(proc.output()).toMatch(
      /^pg-reactor: wal refused: wal_level is replica; set wal_level = logical and restart PostgreSQL\n$/,
    );
    await expect(setSetting(db.pool, "wake_source", "wal")).rejects.toThrow(
      "reactor.wake_source cannot be wal: wal_level is replica; set wal_level = logical and restart PostgreSQL",
    );
    expect(await notifyTriggers(db.pool)).toEqual([...NOTIFY_TRIGGERS].sort());
  });
});
