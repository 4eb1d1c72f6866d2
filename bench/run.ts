// `npm run bench`: pg-reactor next to its peers, in one run, on one PostgreSQL server
// (BENCH_DATABASE_URL, or embedded Postgres). Prints a table; writes the same numbers
// with machine, Node and Postgres versions to bench/results/<date>.json.
import { randomBytes } from "node:crypto";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { cpus, tmpdir, totalmem } from "node:os";
import path from "node:path";
import pg from "pg";
import { startEmbeddedPostgres } from "../src/db/embedded.js";
import { replicaMemory } from "./memory.js";
import { graphileDrain, graphileLatency, rawNotify } from "./peers.js";
import {
  configPropagation,
  deliveriesDrain,
  deliveryPickup,
  noopDrain,
  reactorIdle,
  shipstationDrain,
  uploadPickup,
} from "./reactor.js";
import { triggerCost } from "./triggers.js";
import { walKill, walSigkill } from "./wal.js";

const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const SAMPLES = env("BENCH_SAMPLES", 1000);
const DRAIN = env("BENCH_DRAIN", 20_000);
const DELIVERIES = env("BENCH_DELIVERIES", 10_000);
/**
 * Items every drain handles before its measured window opens (bench/reactor.ts
 * measureDrain, graphileDrain); the whole drain from the start is reported as `cold`.
 */
const DRAIN_WARMUP = env("BENCH_DRAIN_WARMUP", 10_000);
const IDLE_SECONDS = env("BENCH_IDLE_SECONDS", 120);
const CONFIG_CHANGES = env("BENCH_CONFIG_CHANGES", 200);
const TRIGGER_SECONDS = env("BENCH_TRIGGER_SECONDS", 5);
const MEMORY_BACKLOG = env("BENCH_MEMORY_BACKLOG", 100_000);
const TRIGGER_REPEATS = env("BENCH_TRIGGER_REPEATS", 3);
const WAL_KILLS = env("BENCH_WAL_KILLS", 20);
/** The SIGKILL scenario's lease: the survivor takes the killed replica's rows after it. */
const SIGKILL_LEASE_SECONDS = env("BENCH_SIGKILL_LEASE_SECONDS", 10);
const ONLY = process.env.BENCH_ONLY?.split(",");
const want = (part: string) => !ONLY || ONLY.includes(part);

async function main() {
  const given = process.env.BENCH_DATABASE_URL;
  if (given) return measure(given);
  const dir = path.join(tmpdir(), `pg-reactor-bench-${randomBytes(4).toString("hex")}`);
  const e = await startEmbeddedPostgres({ dir, persistent: false, database: "postgres" });
  // A failed step still stops the server and removes its folder.
  try {
    await measure(e.url);
  } finally {
    await e.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

async function measure(adminUrl: string) {
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  const postgres = (await c.query("SHOW server_version")).rows[0].server_version;
  await c.end();

  const r: Record<string, unknown> = {};
  const step = async (name: string, fn: () => Promise<unknown>) => {
    if (!want(name.split(".")[0] as string)) return;
    process.stderr.write(`bench: ${name}…\n`);
    r[name] = await fn();
  };
  await step("latency.rawNotify", () => rawNotify(adminUrl, SAMPLES));
  await step("latency.graphileWorker", () => graphileLatency(adminUrl, SAMPLES));
  await step("latency.uploads", () => uploadPickup(adminUrl, SAMPLES, "notify"));
  await step("latency.uploadsWal", () => uploadPickup(adminUrl, SAMPLES, "wal"));
  const walVsNotify = compareLatency(r["latency.uploads"], r["latency.uploadsWal"]);
  if (walVsNotify) r["latency.uploadsWalVsNotify"] = walVsNotify;
  await step("latency.deliveries", () => deliveryPickup(adminUrl, SAMPLES));
  await step("drain.graphileWorker", () =>
    graphileDrain(adminUrl, DRAIN, IDLE_SECONDS, DRAIN_WARMUP),
  );
  // Each replica is a process of its own, the receivers another (bench/reactor.ts).
  for (const replicas of [1, 2, 3]) {
    await step(`drain.noop${replicas}`, () => noopDrain(adminUrl, DRAIN, replicas, DRAIN_WARMUP));
    await step(`drain.shipstation${replicas}`, () =>
      shipstationDrain(adminUrl, DRAIN, replicas, DRAIN_WARMUP),
    );
    await step(`drain.deliveries${replicas}`, () =>
      deliveriesDrain(adminUrl, DELIVERIES, replicas, DRAIN_WARMUP),
    );
  }
  await step("idle.reactor", () => reactorIdle(adminUrl, IDLE_SECONDS, false));
  await step("idle.withShipStation", () => reactorIdle(adminUrl, IDLE_SECONDS, true));
  await step("memory.replica", () => replicaMemory(adminUrl, MEMORY_BACKLOG));
  await step("config.propagation", () => configPropagation(adminUrl, CONFIG_CHANGES));
  await step("triggers.cost", () => triggerCost(adminUrl, TRIGGER_SECONDS, TRIGGER_REPEATS));
  await step("faults.walKill", () => walKill(adminUrl, WAL_KILLS));
  await step("faults.walSigkill", () => walSigkill(adminUrl, SIGKILL_LEASE_SECONDS));

  const report = {
    date: new Date().toISOString(),
    machine: {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model,
      memoryGiB: Math.round(totalmem() / 2 ** 30),
    },
    node: process.version,
    postgres,
    database: process.env.BENCH_DATABASE_URL ? "BENCH_DATABASE_URL" : "embedded",
    poller15s: { queriesPerHourPerWorkflow: 240, latencySeconds: "0-15" },
    drainWarmup: DRAIN_WARMUP,
    results: r,
  };
  const flat = Object.entries(r).flatMap(([name, v]) => {
    const o = v as Record<string, unknown>;
    if (o && typeof o === "object" && "handler" in o) {
      return [
        { measurement: `${name} (→ handler, ms)`, ...(o.handler as object) },
        { measurement: `${name} (→ target, ms)`, ...(o.target as object) },
      ];
    }
    if (o && typeof o === "object" && "results" in o) {
      return (o.results as object[]).map((x) => ({ measurement: name, ...x }));
    }
    const { idle, ...rest } = o as Record<string, unknown>;
    return [
      {
        measurement: name,
        ...rest,
        ...(idle ? { idlePerHour: (idle as { perHour: number }).perHour } : {}),
      },
    ];
  });
  console.table(flat);
  const dir = new URL("./results/", import.meta.url);
  await mkdir(dir, { recursive: true });
  // A partial run (BENCH_ONLY) never overwrites the day's full run.
  const file = `${report.date.slice(0, 10)}${ONLY ? `-${ONLY.join("-")}` : ""}.json`;
  await writeFile(new URL(file, dir), `${JSON.stringify(report, null, 2)}\n`);
  console.log(`written to bench/results/${file}`);
}

type Pickup = { handler: { p50: number; p99: number }; target: { p50: number; p99: number } };

/** wal against notify pickup latency (targets: p50 at most 1.3 times notify's, p99 ≤ 10 ms). */
function compareLatency(notify: unknown, wal: unknown) {
  const has = (x: unknown): x is Pickup => typeof x === "object" && x !== null && "handler" in x;
  if (!has(notify) || !has(wal)) return null;
  const ratio = (a: number, b: number) => Number((a / b).toFixed(2));
  return {
    handlerP50Ratio: ratio(wal.handler.p50, notify.handler.p50),
    targetP50Ratio: ratio(wal.target.p50, notify.target.p50),
    walHandlerP99: wal.handler.p99,
    walTargetP99: wal.target.p99,
    target: "p50 ratio ≤ 1.3, wal p99 ≤ 10 ms",
  };
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
