// pg-reactor's own measurements: pickup latency (with either wake source), drains
// (no-op handler, ShipStation fake, webhook receiver) with each replica in a process of
// its own and the receiver in another, idle cost and config propagation.
import { cpus } from "node:os";
import pg from "pg";
import type { App } from "../src/app.js";
import { startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { newSecret, startReceiver } from "../src/demo/receiver.js";
import { sampleOrderPayload } from "../src/demo/sample-order.js";
import type { WakeSource } from "../src/reactor/settings-spec.js";
import { switchWakeSource, walMissing } from "../src/reactor/wake-source.js";
import { NODE_ENV_DEFAULTS, NODE_FLAGS } from "../src/runtime-flags.js";
import { startReactor, startReplicas } from "../test/helpers/reactor.js";
import {
  coldFigures,
  freshDatabase,
  idlePerHour,
  type Summary,
  sleep,
  stampArrivals,
  summary,
  until,
} from "./lib.js";
import {
  benchChild,
  buildChildren,
  type Child,
  type Said,
  spawnChild,
  startWindow,
  stopAll,
} from "./procs.js";

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

type Pickup = {
  wakeSource: WakeSource;
  handler: Summary;
  target: Summary;
  stages: Record<string, Summary>;
  /** The reactor process's event-loop delay over the samples (ms). */
  eventLoopDelay: { p50: number; p99: number; max: number };
};

/** Epoch milliseconds with sub-millisecond precision: one clock for the bench and its children. */
const clock = () => performance.timeOrigin + performance.now();

/**
 * The service in a process of its own (bench/pickup-child.ts, compiled), reporting when
 * `workload`'s drainer was woken, sent a claim, and claimed which row ids (the handler
 * starts on the same tick as the claim), on the shared clock.
 */
async function startRecordingReactor(url: string, workload: string, shipstationUrl?: string) {
  await buildChildren();
  const claimed = new Map<number, number>();
  const woken: number[] = [];
  const claiming: number[] = [];
  const finalized = new Set<number>();
  const child = spawnChild(
    "pickup reactor",
    benchChild("pickup-child"),
    {
      DATABASE_URL: url,
      SHIPSTATION_BASE_URL: shipstationUrl ?? "http://127.0.0.1:9",
      SHIPSTATION_API_KEY: "bench-key",
      SHIPSTATION_API_SECRET: "bench-secret",
      // The SSRF guard stays on; the bench's receivers listen on loopback.
      WEBHOOK_ALLOWED_NETWORKS: "127.0.0.1/32",
      HTTP_PORT: "0",
      INSTANCE_ID: "pickup",
    },
    { ipc: true },
  );
  child.listen((said) => {
    if (said.workload !== workload) return;
    const at = Number(said.at);
    if (said.type === "claimed") for (const id of said.ids as number[]) claimed.set(id, at);
    else if (said.type === "woken" && (said.reason === "notify" || said.reason === "wal"))
      woken.push(at);
    else if (said.type === "claiming") claiming.push(at);
    else if (said.type === "finalized") for (const id of said.ids as number[]) finalized.add(id);
  });
  await child.when((s) => s.type === "ready", "ready", READY_TIMEOUT_MS);
  const eventLoopDelay = async () => {
    const asked = child.when((s) => s.type === "eventLoopDelay", "event-loop delay", 10_000);
    child.send({ type: "eventLoopDelay" });
    const { p50, p99, max } = (await asked) as { p50: number; p99: number; max: number };
    return { p50, p99, max };
  };
  return { child, marks: { claimed, woken, claiming, finalized }, eventLoopDelay };
}
type Marks = Awaited<ReturnType<typeof startRecordingReactor>>["marks"];

/** The first mark at or after `t`, or NaN. */
const firstAfter = (marks: number[], t: number) => marks.find((m) => m >= t) ?? Number.NaN;

/**
 * Sequential, isolated samples: `insert` commits one row and says which row id the
 * reactor will claim and when the target has it; times are from just before the INSERT
 * is sent, and the next sample starts once the row's result is recorded.
 * Stages per sample: the INSERT's reply (its commit, as the client sees it), the wake-up
 * (the notification or WAL commit reached the drainer), the claim sent, the claim back
 * with the row (the handler starts).
 */
async function measurePickup(
  samples: number,
  marks: Marks,
  insert: (
    i: number,
  ) => Promise<{ rowId: number; committedAt: number; arrivedAt: () => number | undefined }>,
): Promise<Omit<Pickup, "wakeSource" | "eventLoopDelay">> {
  const handler: number[] = [];
  const target: number[] = [];
  const stage = {
    insertReply: [] as number[],
    toWake: [] as number[],
    wakeToClaimSent: [] as number[],
    claimRoundTrip: [] as number[],
  };
  for (let i = 0; i < samples; i++) {
    marks.woken.length = 0;
    marks.claiming.length = 0;
    const t0 = clock();
    const { rowId, committedAt, arrivedAt } = await insert(i);
    await until(() => marks.claimed.has(rowId));
    const claimedAt = marks.claimed.get(rowId) as number;
    handler.push(claimedAt - t0);
    const wokenAt = firstAfter(marks.woken, t0);
    const claimSentAt = marks.claiming.filter((m) => m <= claimedAt).at(-1) ?? Number.NaN;
    stage.insertReply.push(committedAt - t0);
    stage.toWake.push(wokenAt - t0);
    stage.wakeToClaimSent.push(claimSentAt - wokenAt);
    stage.claimRoundTrip.push(claimedAt - claimSentAt);
    await until(() => arrivedAt() !== undefined);
    target.push((arrivedAt() as number) - t0);
    // Isolated samples: the next row is inserted once this one's result is recorded, so
    // each sample is one row arriving at an idle reactor (graphile-worker's likewise).
    await until(() => marks.finalized.has(rowId));
  }
  return {
    handler: summary(handler),
    target: summary(target),
    stages: Object.fromEntries(
      Object.entries(stage).map(([k, v]) => [k, summary(v.filter((x) => Number.isFinite(x)))]),
    ),
  };
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
  const arrivals = stampArrivals(fake.received, clock);
  const reactor = await startRecordingReactor(url, "uploads", fake.url);
  const { marks } = reactor;
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  const result = await measurePickup(samples, marks, async (i) => {
    const key = `lat-${i}`;
    const { rows } = await db.query(
      "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ($1, $1, $2) RETURNING id",
      [key, PAYLOAD],
    );
    const committedAt = clock();
    return { rowId: Number(rows[0].id), committedAt, arrivedAt: () => arrivals.get(key) };
  });
  const eventLoopDelay = await reactor.eventLoopDelay();
  await reactor.child.stop();
  await db.end();
  await fake.close();
  return { wakeSource: mode, ...result, eventLoopDelay };
}

export async function deliveryPickup(adminUrl: string, samples: number): Promise<Pickup> {
  const url = await freshDatabase(adminUrl);
  const receiver = await startReceiver();
  const arrivals = stampArrivals(receiver.delivered, clock);
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  await db.query("INSERT INTO webhook_subscriptions (url, secret) VALUES ($1, $2)", [
    `${receiver.url}/hook`,
    newSecret(),
  ]);
  const reactor = await startRecordingReactor(url, "deliveries");
  const result = await measurePickup(samples, reactor.marks, async (i) => {
    const { rows } = await db.query(
      "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) VALUES ('o', $1, 'order.created', '{}') RETURNING id",
      [String(i)],
    );
    const committedAt = clock();
    const eventId = rows[0].id;
    // The trigger made the delivery row in the same transaction; the claim is on its id.
    const d = await db.query("SELECT id FROM webhook_deliveries WHERE event_id = $1", [eventId]);
    return {
      rowId: Number(d.rows[0].id),
      committedAt,
      arrivedAt: () => arrivals.get(eventId),
    };
  });
  const eventLoopDelay = await reactor.eventLoopDelay();
  await reactor.child.stop();
  await db.end();
  await receiver.close();
  return { wakeSource: "notify", ...result, eventLoopDelay };
}

/** A child must be ready (listening, settings read) within this long. */
const READY_TIMEOUT_MS = 60_000;
/** The whole backlog must be done within this long. */
const DRAIN_TIMEOUT_MS = 600_000;

interface Drain {
  /** Items in the measured window. */
  items: number;
  /** Items drained first, before the window opens (0: the window holds the whole drain). */
  warmup: number;
  replicas: number;
  /** Runtime settings in force, as the in-process drains had them. */
  settings: Record<string, string>;
  /** The workload's switch: off while the backlog is queued, on to start. */
  enable: "uploads_enabled" | "deliveries_enabled";
  receiver: "shipstation" | "webhooks" | null;
  /** Queues `count` items, the whole backlog (`receiver` is the receiver's URL, `secret` its key). */
  queue(db: pg.Client, receiver: string | null, secret: string, count: number): Promise<void>;
  /** Tables VACUUM ANALYZE runs on once the backlog is queued. */
  tables: string[];
  /** Rows finished and failed: `n` and `failed`. */
  countSql: string;
  /** Who says when every item was handled: the no-op replicas, or the receiver. */
  handedBy: "replicas" | "receiver";
  /** Starts replica `i` (the receiver at `receiver`); `ready` is what it says when ready. */
  replica(url: string, i: number, receiver: string | null): { child: Child; ready: ReadyTest };
}
type ReadyTest = (said: Said) => boolean;

/**
 * A drain with each replica in a process of its own and the HTTP receiver in another.
 *
 * The backlog (warmup + items) is queued (one INSERT) while the workload's switch is
 * off, and the tables analyzed; then the replicas start and each says it is ready
 * (settings read, LISTEN in place, nothing claimed). One UPDATE switches the workload on;
 * every replica hears it through NOTIFY reactor_config, reloads its settings and drains.
 * The drain ends when the table says every row is finished (uploaded or delivered),
 * checked as soon as the replicas (no-op) or the receiver say every item was handled.
 *
 * Two figures come of it. `cold`: the whole backlog, from the switch (a commit and a
 * notification, about a millisecond) to the end, in processes that had not run a drain
 * before, so V8 compiles the hot paths during it. The window (`perSecond`, the CPU and
 * RSS figures): from when the first `warmup` items were handled to the end, in replicas
 * that have compiled their hot paths, as a replica that has been running is; its items
 * are those the table had not finished when it opened. Without a warm-up the window is
 * the cold drain.
 */
async function measureDrain(adminUrl: string, d: Drain) {
  await buildChildren();
  const url = await freshDatabase(adminUrl);
  await withSettings(url, { ...d.settings, [d.enable]: "false" });
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  const secret = newSecret();
  const total = d.warmup + d.items;
  const replicas: Child[] = [];
  let receiver: Child | null = null;
  let measuring = false;
  let fail: (err: Error) => void = () => undefined;
  const failed = new Promise<never>((_, reject) => {
    fail = reject;
  });
  failed.catch(() => undefined);
  try {
    let receiverUrl: string | null = null;
    if (d.receiver) {
      receiver = spawnChild(
        "receiver",
        benchChild("receiver-child"),
        {
          RECEIVER: d.receiver,
          EXPECT: String(total),
          WARM: String(d.warmup),
          WEBHOOK_SECRET: secret,
        },
        { ipc: true },
      );
      const ready = await receiver.when((s) => s.type === "ready", "ready", READY_TIMEOUT_MS);
      receiverUrl = String(ready.url);
      receiver.listen((s) => {
        if (s.type === "error") fail(new Error(`bench: receiver: ${String(s.message)}`));
      });
    }
    await d.queue(db, receiverUrl, secret, total);
    for (const table of d.tables) await db.query(`VACUUM ANALYZE ${table}`);
    const ready: Array<Promise<Said>> = [];
    for (let i = 0; i < d.replicas; i++) {
      const r = d.replica(url, i, receiverUrl);
      replicas.push(r.child);
      ready.push(r.child.when(r.ready, "ready", READY_TIMEOUT_MS));
    }
    await Promise.all(ready);
    for (const c of [...replicas, receiver]) {
      c?.process.once("exit", (code, signal) => {
        if (measuring) fail(new Error(`bench: ${c.name} exited (${signal ?? code})\n${c.tail()}`));
      });
    }
    // Items handled (by the receiver, or the no-op replicas): at `warmup`, and at all.
    const at = (count: number) =>
      new Promise<void>((resolve) => {
        if (count <= 0) return resolve();
        if (d.handedBy === "receiver") {
          const says = count >= total ? "done" : "warm";
          receiver?.listen((s) => s.type === says && resolve());
          return;
        }
        let rows = 0;
        for (const r of replicas) {
          r.listen((s) => {
            if (s.type !== "progress") return;
            rows += Number(s.rows);
            if (rows >= count) resolve();
          });
        }
      });
    const warm = at(d.warmup);
    const handled = at(total);
    const pids = replicas.map((r) => r.pid);
    if (receiver) pids.push(receiver.pid);
    measuring = true;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`bench: not every item handled within ${DRAIN_TIMEOUT_MS} ms`)),
        DRAIN_TIMEOUT_MS,
      );
    });
    late.catch(() => undefined);
    const open = () => startWindow(pids, db, cpus().length);
    let window = d.warmup > 0 ? null : await open();
    const t0 = performance.now();
    const switched = await db.query(
      "UPDATE configuration_params SET value = 'true', updated_at = now() WHERE category = 'reactor' AND parameter_name = $1",
      [d.enable],
    );
    if (switched.rowCount !== 1) throw new Error(`bench: ${d.enable} was not stored`);
    let measured = d.items;
    if (!window) {
      await Promise.race([warm, failed, late]);
      window = await open();
      // The rows the table had not finished when the window opened (read just after it
      // opened, so the few finished in between count against the rate, not for it).
      const { rows } = await db.query(d.countSql);
      measured = total - rows[0].n;
    }
    await Promise.race([handled, failed, late]).finally(() => clearTimeout(timer));
    // Finished means finalized in the table, not only handed to the handler or receiver.
    const deadline = performance.now() + 30_000;
    for (;;) {
      const { rows } = await db.query(d.countSql);
      if (rows[0].failed > 0) throw new Error(`bench: ${rows[0].failed} rows failed`);
      if (rows[0].n >= total) break;
      if (performance.now() > deadline) throw new Error("bench: rows not finalized in 30 s");
      await sleep(2);
    }
    const coldSeconds = (performance.now() - t0) / 1000;
    const usage = await window.end();
    measuring = false;
    let counts: Said | null = null;
    if (receiver) {
      const asked = receiver.when((s) => s.type === "counts", "counts", 10_000);
      receiver.send({ type: "counts" });
      counts = await asked;
    }
    const rss = usage.rssPeakMiB;
    return {
      replicas: d.replicas,
      seconds: Number(usage.seconds.toFixed(2)),
      perSecond: Math.round(measured / usage.seconds),
      ...coldFigures(d.warmup, measured, total, coldSeconds),
      cpu: {
        replicas: usage.cores.slice(0, d.replicas),
        ...(receiver ? { receiver: usage.cores[d.replicas] } : {}),
        postgres: usage.postgresCores,
        driver: usage.driverCores,
        machine: usage.machineCores,
      },
      rssPeakMiB: rss.slice(0, d.replicas),
      ...(receiver ? { receiverRssPeakMiB: rss[d.replicas] } : {}),
      ...(counts?.calls ? { calls: counts.calls } : {}),
      ...(counts && Number(counts.received) > Number(counts.distinct)
        ? { duplicates: Number(counts.received) - Number(counts.distinct) }
        : {}),
    };
  } finally {
    measuring = false;
    await stopAll(replicas);
    await stopAll([receiver]);
    await db.end();
  }
}

/** The service as production runs it: `node dist/main.js`, configured by its environment. */
function serviceReplica(url: string, i: number, shipstationUrl: string | null) {
  const name = String.fromCharCode(97 + i);
  const child = spawnChild(`replica ${name}`, [...NODE_FLAGS, "dist/main.js"], {
    ...NODE_ENV_DEFAULTS,
    DATABASE_URL: url,
    INSTANCE_ID: name,
    HTTP_PORT: "0",
    SHIPSTATION_BASE_URL: shipstationUrl ?? "http://127.0.0.1:9",
    SHIPSTATION_API_KEY: "bench",
    SHIPSTATION_API_SECRET: "bench",
    // The SSRF guard stays on; the bench's receiver listens on loopback.
    WEBHOOK_ALLOWED_NETWORKS: "127.0.0.1/32",
    LOG_LEVEL: "info",
  });
  return { child, ready: (s: Said) => s.msg === "pg-reactor ready" };
}

const ORDERS_COUNT = `SELECT count(*) FILTER (WHERE upload_state = 'uploaded')::int AS n,
  count(*) FILTER (WHERE upload_state = 'failed')::int AS failed FROM orders_inbox`;

/** `orders` orders in one INSERT, numbered `prefix`1…. */
const queueOrders =
  (prefix: string) => (db: pg.Client, _receiver: string | null, _secret: string, orders: number) =>
    db
      .query(
        "INSERT INTO orders_inbox (order_number, payload) SELECT $1 || g, $2::jsonb FROM generate_series(1, $3::int) g",
        [prefix, PAYLOAD, orders],
      )
      .then(() => undefined);

export async function noopDrain(
  adminUrl: string,
  orders: number,
  replicas: number,
  warmup: number,
) {
  const result = await measureDrain(adminUrl, {
    items: orders,
    warmup,
    replicas,
    // The machinery alone: full batches (100, ShipStation's maximum) and the most units in
    // flight the settings allow, the equivalent of graphile-worker's localQueue.
    settings: { upload_concurrency: process.env.NOOP_CONCURRENCY ?? "16" },
    enable: "uploads_enabled",
    receiver: null,
    queue: queueOrders("n-"),
    tables: ["orders_inbox"],
    countSql: ORDERS_COUNT,
    handedBy: "replicas",
    replica: (url, i) => ({
      child: spawnChild(
        `noop replica ${i}`,
        benchChild("replica-child"),
        { DATABASE_URL: url, INSTANCE_ID: String.fromCharCode(97 + i) },
        { ipc: true },
      ),
      ready: (s) => s.type === "ready",
    }),
  });
  return { orders, ...result };
}

export async function shipstationDrain(
  adminUrl: string,
  orders: number,
  replicas: number,
  warmup: number,
) {
  const result = await measureDrain(adminUrl, {
    items: orders,
    warmup,
    replicas,
    settings: { upload_rate_limit_per_minute: "100000" },
    enable: "uploads_enabled",
    receiver: "shipstation",
    queue: queueOrders("s-"),
    tables: ["orders_inbox"],
    countSql: ORDERS_COUNT,
    handedBy: "receiver",
    replica: serviceReplica,
  });
  return { orders, ...result };
}

export async function deliveriesDrain(
  adminUrl: string,
  events: number,
  replicas: number,
  warmup: number,
) {
  const result = await measureDrain(adminUrl, {
    items: events,
    warmup,
    replicas,
    settings: {},
    enable: "deliveries_enabled",
    receiver: "webhooks",
    async queue(db, receiverUrl, secret, count) {
      await db.query("INSERT INTO webhook_subscriptions (url, secret) VALUES ($1, $2)", [
        `${receiverUrl}/hook`,
        secret,
      ]);
      // The trigger makes each event's delivery row in the same statement.
      await db.query(
        `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
         SELECT 'o', g::text, 'order.created', '{}' FROM generate_series(1, $1::int) g`,
        [count],
      );
    },
    tables: ["outbox_events", "webhook_deliveries"],
    countSql: `SELECT count(*) FILTER (WHERE state = 'delivered')::int AS n,
      count(*) FILTER (WHERE state IN ('failed', 'cancelled'))::int AS failed FROM webhook_deliveries`,
    handedBy: "receiver",
    // Deliveries only: no ShipStation behind port 9, as in the in-process drain.
    replica: (url, i) => serviceReplica(url, i, null),
  });
  return { events, ...result };
}

/**
 * Queries an hour of one idle replica with every workload. With `shipstation`, a fake
 * ShipStation answers, so the shipment poll (every shipment_sync_interval_seconds, 120 s)
 * runs in full; the window then covers at least two of its turns. Without, shipments are
 * switched off: the reactor's own cost, the safety poll.
 */
export async function reactorIdle(adminUrl: string, seconds: number, shipstation: boolean) {
  const url = await freshDatabase(adminUrl);
  if (!shipstation) await withSettings(url, { shipments_enabled: "false" });
  const fake = shipstation ? await startFakeShipStation() : null;
  const app = await startReactor({ databaseUrl: url, shipstationUrl: fake?.url });
  try {
    return await idlePerHour(url, shipstation ? Math.max(seconds, 240) : seconds);
  } finally {
    await app.stop(1_000);
    await fake?.close();
  }
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
