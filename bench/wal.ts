// The `wal` wake source under faults: nothing may be lost when the replication connection
// is killed over and over, or when a whole replica is SIGKILLed (its temporary slot must
// go with it). Also the helpers the trigger-cost and latency steps share: waits on the
// database, the reactor's slots, and a replica run as its own process.
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import pg from "pg";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { sampleOrderPayload } from "../src/demo/sample-order.js";
import { startReactor } from "../test/helpers/reactor.js";
import { freshDatabase, sleep, summary } from "./lib.js";
import { setWakeSource, walUnavailable, withSettings } from "./reactor.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const PAYLOAD = JSON.stringify(sampleOrderPayload());
/** How often waits on the database look again. */
const POLL_MS = 10;

/** Polls `check` until it returns a truthy value; throws naming `what` at the deadline. */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  what: string,
  timeoutMs = 30_000,
): Promise<NonNullable<T>> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (performance.now() > deadline) throw new Error(`bench: timed out waiting for ${what}`);
    await sleep(POLL_MS);
  }
}

export interface SlotRow {
  slot_name: string;
  active_pid: number | null;
}

/** The reactors' temporary slots on the server (named pg_reactor_<pid>_…). */
export async function reactorSlots(db: pg.ClientBase | pg.Pool): Promise<SlotRow[]> {
  const { rows } = await db.query<SlotRow>(
    "SELECT slot_name, active_pid FROM pg_replication_slots WHERE temporary AND slot_name LIKE 'pg\\_reactor\\_%'",
  );
  return rows;
}

/** A replica as its own process (`npm start` from the sources), output kept. */
interface ReplicaProcess {
  child: ChildProcess;
  output(): string;
  exited: Promise<unknown>;
}

function spawnReplica(env: Record<string, string>): ReplicaProcess {
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  const keep = (d: Buffer) => {
    out = (out + d.toString()).slice(-20_000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise((resolve) => child.on("exit", resolve));
  return { child, output: () => out, exited };
}

/** Inserts one order at a time, keys `<prefix>-<n>`, until stopped. */
function startWriter(url: string, prefix: string) {
  const db = new pg.Client({ connectionString: url });
  let running = true;
  let written = 0;
  const done = (async () => {
    await db.connect();
    try {
      while (running) {
        const key = `${prefix}-${written}`;
        await db.query(
          "INSERT INTO orders_inbox (order_number, order_key, payload) VALUES ($1, $1, $2)",
          [key, PAYLOAD],
        );
        written++;
        // A steady stream, not a flood: a few hundred orders a second.
        await sleep(2);
      }
    } finally {
      await db.end();
    }
  })();
  return {
    written: () => written,
    keys: () => Array.from({ length: written }, (_, i) => `${prefix}-${i}`),
    async stop() {
      running = false;
      await done;
    },
  };
}

/**
 * Waits until the fake holds every key (or the deadline); counts what is missing and
 * re-sent, and says where the first missing rows stand (never claimed, or leased).
 */
async function settle(db: pg.Client, fake: FakeShipStation, keys: string[], timeoutMs: number) {
  const t0 = performance.now();
  const deadline = t0 + timeoutMs;
  let missing = keys.filter((k) => !fake.received.has(k)).length;
  while (missing > 0 && performance.now() < deadline) {
    await sleep(POLL_MS);
    missing = keys.filter((k) => !fake.received.has(k)).length;
  }
  const settleMs = missing === 0 ? Math.round(performance.now() - t0) : null;
  const resent = keys.filter((k) => (fake.received.get(k) ?? 0) > 1).length;
  const { rows: lostRows } = await db.query(
    `SELECT order_key, upload_state, attempts, locked_by, locked_until, created_at
     FROM orders_inbox WHERE order_key = ANY($1) ORDER BY id LIMIT 5`,
    [keys.filter((k) => !fake.received.has(k))],
  );
  return {
    workItems: keys.length,
    lost: missing,
    resent,
    settleMs,
    ...(lostRows.length > 0 ? { lostRows } : {}),
  };
}

/** A fresh database in `wal` mode with the safety poll an hour away: only wakes move work. */
async function walDatabase(adminUrl: string, extra: Record<string, string> = {}) {
  const url = await freshDatabase(adminUrl);
  const missing = await walUnavailable(url);
  if (missing) return { url, skipped: `wal mode unavailable: ${missing}` };
  await withSettings(url, {
    poll_interval_seconds: "3600",
    upload_rate_limit_per_minute: "100000",
    ...extra,
  });
  await setWakeSource(url, "wal");
  return { url, skipped: null };
}

/** Waits until no reactor slot is left on the server; returns how many there were at the end. */
async function slotsLeft(db: pg.Client, timeoutMs = 10_000): Promise<number> {
  await waitFor(async () => (await reactorSlots(db)).length === 0, "no slot left", timeoutMs).catch(
    () => undefined,
  );
  return (await reactorSlots(db)).length;
}

/**
 * The walsender of one replica terminated `kills` times while orders stream in: every
 * restart must catch up on what was committed while the stream was down.
 */
export async function walKill(adminUrl: string, kills: number) {
  const { url, skipped } = await walDatabase(adminUrl);
  if (skipped) return { skipped };
  const fake = await startFakeShipStation();
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  let app: App | null = null;
  try {
    app = await startReactor({ databaseUrl: url, shipstationUrl: fake.url });
    const reactor = app.reactor;
    await waitFor(() => reactor.wal.state().connected, "the replica reading the WAL");
    const writer = startWriter(url, "kill");
    const reconnect: number[] = [];
    try {
      for (let k = 0; k < kills; k++) {
        const pid = await waitFor(() => reactor.wal.backendPid(), "the walsender");
        // Let orders flow through the stream a little before the next cut.
        await sleep(150);
        const t0 = performance.now();
        await db.query("SELECT pg_terminate_backend($1)", [pid]);
        await waitFor(
          () => reactor.wal.state().restarts >= k + 1 && reactor.wal.state().connected,
          `restart ${k + 1}`,
        );
        reconnect.push(performance.now() - t0);
      }
    } finally {
      await writer.stop();
    }
    const outcome = await settle(db, fake, writer.keys(), 60_000);
    const restarts = reactor.wal.state().restarts;
    await app.stop(1_000);
    app = null;
    // Kill → stream running again (the catch-up is under way from then on).
    const back = summary(reconnect);
    return {
      kills,
      restarts,
      ...outcome,
      reconnectP50Ms: back.p50,
      reconnectMaxMs: back.max,
      leftoverSlots: await slotsLeft(db),
    };
  } finally {
    await app?.stop(1_000);
    await db.end();
    await fake.close();
  }
}

/**
 * Two replicas in `wal` mode, one of them its own process, SIGKILLed while orders stream
 * in. The survivor takes the killed one's leased rows once their lease ends (lease_seconds
 * is set low so the step is short); the killed one's temporary slot must disappear with
 * its connection.
 */
export async function walSigkill(adminUrl: string, leaseSeconds: number) {
  // The production safety poll (30 s): rows a killed replica held become claimable when
  // their lease ends, which no commit announces; the poll (or a timer armed by an earlier
  // stats read) takes them, as in notify mode.
  const { url, skipped } = await walDatabase(adminUrl, {
    lease_seconds: String(leaseSeconds),
    poll_interval_seconds: "30",
  });
  if (skipped) return { skipped };
  const fake = await startFakeShipStation();
  // A target that takes a little time, so the killed replica has calls in flight.
  fake.defaultResponse = { delayMs: 20 };
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  let survivor: App | null = null;
  let victim: ReplicaProcess | null = null;
  try {
    survivor = await startReactor({
      databaseUrl: url,
      shipstationUrl: fake.url,
      env: { INSTANCE_ID: "survivor" },
    });
    const reactor = survivor.reactor;
    await waitFor(() => reactor.wal.state().connected, "the surviving replica reading the WAL");
    const proc = spawnReplica({
      DATABASE_URL: url,
      HTTP_PORT: "0",
      INSTANCE_ID: "victim",
      LOG_LEVEL: "warn",
      SHIPSTATION_BASE_URL: fake.url,
      SHIPSTATION_API_KEY: "bench-key",
      SHIPSTATION_API_SECRET: "bench-secret",
    });
    victim = proc;
    const prefix = `pg_reactor_${proc.child.pid}_`;
    const slot = await waitFor(
      async () =>
        (await reactorSlots(db)).find((s) => s.slot_name.startsWith(prefix) && s.active_pid),
      "the second replica's slot, active",
      60_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}; its output: ${proc.output().slice(-2_000)}`);
    });
    const writer = startWriter(url, "sigkill");
    let leasedByKilled = 0;
    let slotGoneMs: number | null = null;
    try {
      const victimLeases = async () => {
        const { rows } = await db.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM orders_inbox WHERE locked_by LIKE 'victim/%'",
        );
        return rows[0]?.n ?? 0;
      };
      // The stream under way, then the kill while the victim holds leases if it can be
      // caught doing so within a few seconds (how many it held is reported).
      await waitFor(() => fake.received.size >= 200, "200 orders uploaded", 60_000);
      await waitFor(
        async () => (await victimLeases()) > 0,
        "the victim holding leases",
        5_000,
      ).catch(() => undefined);
      proc.child.kill("SIGKILL");
      const t0 = performance.now();
      await proc.exited;
      leasedByKilled = await victimLeases();
      // Null when the slot outlived the deadline (reported, not thrown: that is a finding).
      slotGoneMs = await waitFor(
        async () => !(await reactorSlots(db)).some((s) => s.slot_name === slot.slot_name),
        "the killed replica's slot gone",
        30_000,
      ).then(
        () => Math.round(performance.now() - t0),
        () => null,
      );
      // The survivor alone for a while, past the killed replica's leases.
      await sleep(1_000);
    } finally {
      await writer.stop();
    }
    const outcome = await settle(db, fake, writer.keys(), (leaseSeconds + 60) * 1000);
    await survivor.stop(1_000);
    survivor = null;
    return {
      leaseSeconds,
      ...outcome,
      leasedByKilled,
      slotGone: slotGoneMs !== null,
      slotGoneMs,
      leftoverSlots: await slotsLeft(db),
    };
  } finally {
    victim?.child.kill("SIGKILL");
    await survivor?.stop(1_000);
    await db.end();
    await fake.close();
  }
}
