// pg-reactor's own measurements: pickup latency (with either wake source), drains
// (no-op handler, ShipStation fake, webhook receiver) with 1 and 2 replicas, idle cost
// and config propagation.
import pg from "pg";
import type { App } from "../src/app.js";
import { startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { newSecret, startReceiver } from "../src/demo/receiver.js";
import { sampleOrderPayload } from "../src/demo/sample-order.js";
import { makeLogger } from "../src/logger.js";
import { makeMetrics } from "../src/metrics.js";
import { makeReactor } from "../src/reactor/reactor.js";
import { makeLiveSettings } from "../src/reactor/settings.js";
import type { WakeSource } from "../src/reactor/settings-spec.js";
import { switchWakeSource, walMissing } from "../src/reactor/wake-source.js";
import type { Workload } from "../src/reactor/workload.js";
import { SETTINGS } from "../src/workloads/index.js";
import { makeOrdersQueue } from "../src/workloads/uploads/queue.js";
import { startReactor, startReplicas } from "../test/helpers/reactor.js";
import { freshDatabase, idlePerHour, type Summary, summary, until } from "./lib.js";

const PAYLOAD = JSON.stringify(sampleOrderPayload());

/** Stores reactor settings (an existing value is replaced; running replicas follow). */
export async function withSettings(url: string, settings: Record<string, string>) {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    for (const [k, v] of Object.entries(settings)) {
      await c.query(
        `INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', $1, $2)
         ON CONFLICT (category, parameter_name, sku) DO UPDATE SET value = excluded.value, updated_at = now()`,
        [k, v],
      );
    }
  } finally {
    await c.end();
  }
}

/** Why this server cannot run the `wal` wake source, or null. */
export async function walUnavailable(url: string): Promise<string | null> {
  const pool = new pg.Pool({ connectionString: url, max: 1 });
  try {
    return await walMissing(pool);
  } finally {
    await pool.end();
  }
}

/** Switches the wake source as `npx pg-reactor wake-source` does: the production path. */
export async function setWakeSource(url: string, mode: WakeSource): Promise<void> {
  const pool = new pg.Pool({ connectionString: url, max: 1 });
  try {
    await switchWakeSource(pool, mode);
  } finally {
    await pool.end();
  }
}

type Pickup = { wakeSource: WakeSource; handler: Summary; target: Summary };

/** A reactor that records which row ids its drainers claimed (the handler-start signal). */
async function startRecordingReactor(url: string, shipstationUrl?: string) {
  const claimed = new Set<number>();
  const app = await startReactor({
    databaseUrl: url,
    shipstationUrl,
    onDrainerEvent: (e) => {
      if (e.type === "claimed") for (const id of e.ids) claimed.add(id);
    },
  });
  return { app, claimed };
}

/**
 * Sequential samples: `insert` commits one row and says which row id the reactor will
 * claim and when the target has it; times are from just before the INSERT is sent.
 */
async function measurePickup(
  samples: number,
  claimed: Set<number>,
  insert: (i: number) => Promise<{ rowId: number; arrived: () => boolean }>,
): Promise<Omit<Pickup, "wakeSource">> {
  const handler: number[] = [];
  const target: number[] = [];
  for (let i = 0; i < samples; i++) {
    const t0 = performance.now();
    const { rowId, arrived } = await insert(i);
    await until(() => claimed.has(rowId));
    handler.push(performance.now() - t0);
    await until(arrived);
    target.push(performance.now() - t0);
  }
  return { handler: summary(handler), target: summary(target) };
}

/**
 * INSERT → handler claim and INSERT → fake ShipStation, one order at a time, with the
 * wake source `mode` in force from the start (in `wal` mode the reactor reads the WAL
 * before the first sample).
 */
export async function uploadPickup(
  adminUrl: string,
  samples: number,
  mode: WakeSource = "notify",
): Promise<Pickup | { skipped: string }> {
  const url = await freshDatabase(adminUrl);
  await withSettings(url, { upload_rate_limit_per_minute: "100000" });
  if (mode === "wal") {
    const missing = await walUnavailable(url);
    if (missing) return { skipped: `wal mode unavailable: ${missing}` };
    await setWakeSource(url, "wal");
  }
  const fake = await startFakeShipStation();
  const { app, claimed } = await startRecordingReactor(url, fake.url);
  if (mode === "wal") await until(() => app.reactor.wal.state().connected, 30_000);
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  const result = await measurePickup(samples, claimed, async (i) => {
    const key = `lat-${i}`;
    const { rows } = await db.query(
      "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ($1, $1, $2) RETURNING id",
      [key, PAYLOAD],
    );
    return { rowId: Number(rows[0].id), arrived: () => fake.received.has(key) };
  });
  await app.stop(1_000);
  await db.end();
  await fake.close();
  return { wakeSource: mode, ...result };
}

export async function deliveryPickup(adminUrl: string, samples: number): Promise<Pickup> {
  const url = await freshDatabase(adminUrl);
  const receiver = await startReceiver();
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  await db.query("INSERT INTO webhook_subscriptions (url, secret) VALUES ($1, $2)", [
    `${receiver.url}/hook`,
    newSecret(),
  ]);
  const { app, claimed } = await startRecordingReactor(url);
  const result = await measurePickup(samples, claimed, async (i) => {
    const { rows } = await db.query(
      "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) VALUES ('o', $1, 'order.created', '{}') RETURNING id",
      [String(i)],
    );
    const eventId = rows[0].id;
    // The trigger made the delivery row in the same transaction; the claim is on its id.
    const d = await db.query("SELECT id FROM webhook_deliveries WHERE event_id = $1", [eventId]);
    return { rowId: Number(d.rows[0].id), arrived: () => receiver.delivered.has(eventId) };
  });
  await app.stop(1_000);
  await db.end();
  await receiver.close();
  return { wakeSource: "notify", ...result };
}

/** A reactor whose only workload finalizes every claimed order as success at once. */
async function startNoopReactor(url: string, name: string, onDone: (n: number) => void) {
  const logger = makeLogger("silent");
  const metrics = makeMetrics();
  const pool = new pg.Pool({ connectionString: url, max: 10, application_name: "pg-reactor" });
  const settings = makeLiveSettings(pool, SETTINGS, logger, metrics);
  const workload: Workload = {
    name: "uploads",
    channel: "reactor_orders",
    queue: makeOrdersQueue(pool) as unknown as Workload["queue"],
    enabled: () => true,
    disabledReason: () => null,
    unitSize: () => settings.current.upload_batch_size,
    concurrency: () => settings.current.upload_concurrency,
    pausedUntil: () => 0,
    retryScheduleSeconds: () => [1],
    async process(rows) {
      onDone(rows.length);
      return rows.map((r) => ({ id: r.id, kind: "success" as const }));
    },
  };
  const reactor = makeReactor({
    pool,
    listenUrl: url,
    owner: `${name}/noop`,
    settings,
    workloads: [workload],
    logger,
    metrics,
  });
  await reactor.start();
  return {
    stop: async () => {
      await reactor.stop(1_000);
      await pool.end();
    },
  };
}

export async function noopDrain(adminUrl: string, orders: number, replicas: number) {
  const url = await freshDatabase(adminUrl);
  // The machinery alone: full batches (100, ShipStation's maximum) and the most units in
  // flight the settings allow, the equivalent of graphile-worker's localQueue.
  await withSettings(url, { upload_concurrency: process.env.NOOP_CONCURRENCY ?? "16" });
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  // Queued first, like graphile-worker's drain: the clock runs from start to empty.
  await db.query(
    "INSERT INTO orders_inbox (order_number, payload) SELECT 'n-' || g, $1::jsonb FROM generate_series(1, $2::int) g",
    [PAYLOAD, orders],
  );
  await db.query("VACUUM ANALYZE orders_inbox");
  let done = 0;
  const t0 = performance.now();
  const running = await Promise.all(
    Array.from({ length: replicas }, (_, r) => startNoopReactor(url, `r${r}`, (n) => (done += n))),
  );
  await until(() => done >= orders, 600_000);
  // Done means finalized in the table, not only handed to the handler.
  for (;;) {
    const { rows } = await db.query(
      "SELECT count(*)::int AS n FROM orders_inbox WHERE upload_state = 'uploaded'",
    );
    if (rows[0].n >= orders) break;
  }
  const seconds = (performance.now() - t0) / 1000;
  await db.end();
  await Promise.all(running.map((r) => r.stop()));
  return {
    orders,
    replicas,
    seconds: Number(seconds.toFixed(2)),
    perSecond: Math.round(orders / seconds),
  };
}

/** Seconds from `start` (an INSERT of the whole backlog) until `done` holds. */
async function timeDrain(start: () => Promise<unknown>, done: () => boolean, items: number) {
  const t0 = performance.now();
  await start();
  await until(done, 600_000);
  const seconds = (performance.now() - t0) / 1000;
  return { seconds: Number(seconds.toFixed(2)), perSecond: Math.round(items / seconds) };
}

export async function shipstationDrain(adminUrl: string, orders: number, replicas: number) {
  const url = await freshDatabase(adminUrl);
  await withSettings(url, { upload_rate_limit_per_minute: "100000" });
  const fake = await startFakeShipStation();
  const apps = await startReplicas(replicas, { databaseUrl: url, shipstationUrl: fake.url });
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  const timing = await timeDrain(
    () =>
      db.query(
        "INSERT INTO orders_inbox (order_number, payload) SELECT 's-' || g, $1::jsonb FROM generate_series(1, $2::int) g",
        [PAYLOAD, orders],
      ),
    () => fake.received.size >= orders,
    orders,
  );
  await db.end();
  await Promise.all(apps.map((a) => a.stop(1_000)));
  await fake.close();
  return { orders, replicas, ...timing, calls: fake.calls.length };
}

export async function deliveriesDrain(adminUrl: string, events: number, replicas: number) {
  const url = await freshDatabase(adminUrl);
  const receiver = await startReceiver();
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  await db.query("INSERT INTO webhook_subscriptions (url, secret) VALUES ($1, $2)", [
    `${receiver.url}/hook`,
    newSecret(),
  ]);
  const apps = await startReplicas(replicas, { databaseUrl: url });
  const timing = await timeDrain(
    () =>
      db.query(
        `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
         SELECT 'o', g::text, 'order.created', '{}' FROM generate_series(1, $1::int) g`,
        [events],
      ),
    () => receiver.delivered.size >= events,
    events,
  );
  await db.end();
  await Promise.all(apps.map((a) => a.stop(1_000)));
  await receiver.close();
  return { events, replicas, ...timing };
}

export async function reactorIdle(adminUrl: string, seconds: number) {
  const url = await freshDatabase(adminUrl);
  const app = await startReactor({ databaseUrl: url });
  const idle = await idlePerHour(url, seconds);
  await app.stop(1_000);
  return idle;
}

export async function configPropagation(adminUrl: string, changes: number): Promise<Summary> {
  const url = await freshDatabase(adminUrl);
  await withSettings(url, { retention_days: "1" });
  const [a, b] = (await startReplicas(2, { databaseUrl: url })) as [App, App];
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  const lat: number[] = [];
  for (let i = 0; i < changes; i++) {
    const value = 2 + (i % 300);
    const t0 = performance.now();
    await db.query(
      "UPDATE configuration_params SET value = $1 WHERE parameter_name = 'retention_days'",
      [String(value)],
    );
    await until(
      () =>
        a.settings.current.retention_days === value && b.settings.current.retention_days === value,
    );
    lat.push(performance.now() - t0);
    // Spaced out so each change is measured alone, not coalesced into a burst.
    await new Promise((r) => setTimeout(r, 25));
  }
  await db.end();
  await Promise.all([a.stop(1_000), b.stop(1_000)]);
  return summary(lat);
}
