// Shared helpers for the benchmark: percentiles, condition waits, fresh databases.
import { randomBytes } from "node:crypto";
import pg from "pg";
import { migrate } from "../src/db/migrate.js";

export interface Summary {
  n: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

export function summary(samples: number[]): Summary {
  const s = [...samples].sort((a, b) => a - b);
  const at = (p: number) =>
    s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? Number.NaN;
  const r = (x: number) => Number(x.toFixed(3));
  return { n: s.length, p50: r(at(50)), p95: r(at(95)), p99: r(at(99)), max: r(s.at(-1) ?? 0) };
}

/**
 * Waits until `check` holds, looking again every millisecond. It never spins: a driver
 * spinning on its event loop takes one of the machine's cores from the processes it
 * measures (and keeps its own loop hot, which flatters anything running inside it). So
 * latencies are taken from timestamps recorded where the event happens (see
 * `stampArrivals`), never from when this wait notices it.
 */
export async function until(check: () => boolean, timeoutMs = 120_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) throw new Error("bench step timed out");
    await new Promise((r) => setTimeout(r, 1));
  }
}

/**
 * When each key was first set in `map` (a fake's record of what it received), on the
 * clock `now`: the arrival time itself, not when a wait noticed it.
 */
export function stampArrivals<K, V>(map: Map<K, V>, now: () => number): Map<K, number> {
  const arrivals = new Map<K, number>();
  const set = map.set.bind(map);
  map.set = (key: K, value: V) => {
    if (!arrivals.has(key)) arrivals.set(key, now());
    return set(key, value);
  };
  return arrivals;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A drain's figures beside its warm window: the warm-up and the window's items, and the
 * whole drain from the start (`cold`); nothing when there was no warm-up.
 */
export function coldFigures(warmup: number, measured: number, total: number, seconds: number) {
  if (warmup <= 0) return {};
  return {
    warmup,
    measured,
    cold: {
      items: total,
      seconds: Number(seconds.toFixed(2)),
      perSecond: Math.round(total / seconds),
    },
  };
}

/** Runs `sql` (one boolean column, `done`) until it is true. */
export async function untilQuery(client: pg.Client, sql: string, timeoutMs = 60_000) {
  const deadline = performance.now() + timeoutMs;
  while (!(await client.query(sql)).rows[0]?.done) {
    if (performance.now() > deadline) throw new Error(`bench: timed out waiting for ${sql}`);
  }
}

/** A new empty database on the bench server; migrated for pg-reactor unless told not to. */
export async function freshDatabase(
  adminUrl: string,
  options: { migrate?: boolean } = {},
): Promise<string> {
  const name = `pgr_bench_${randomBytes(4).toString("hex")}`;
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  await c.query(`CREATE DATABASE ${name}`);
  await c.end();
  const u = new URL(adminUrl);
  u.pathname = `/${name}`;
  if (options.migrate ?? true) await migrate(u.toString());
  return u.toString();
}

/** Committed transactions in the URL's database, as the server counts them. */
export async function xactCommits(client: pg.Client): Promise<number> {
  await client.query("SELECT pg_stat_clear_snapshot()");
  const { rows } = await client.query(
    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
  );
  return Number(rows[0].xact_commit);
}

/**
 * Queries per hour while idle, from the server's own commit counter. Backends report
 * lazily (up to ~10 s late), and a reactor's first safety poll (at 30 s) also runs the
 * hourly retention, so it settles 40 s first; our own two reads are subtracted.
 */
export async function idlePerHour(
  url: string,
  seconds: number,
): Promise<{ seconds: number; transactions: number; perHour: number }> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  await sleep(40_000);
  const x0 = await xactCommits(c);
  await sleep(seconds * 1000);
  const x1 = await xactCommits(c);
  await c.end();
  const transactions = Math.max(0, x1 - x0 - 2);
  return { seconds, transactions, perHour: Math.round((transactions * 3600) / seconds) };
}
