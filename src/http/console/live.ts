// The console's live figures, for this replica: one sample a second per workload
// (backlog, in flight, failed, oldest pending age, throughput, pickup latency p50/p99),
// kept for 15 minutes, and a fuller snapshot (listener, wake source, safety poll,
// shipment watermark, import folder, health) every few seconds while a console watches.
// Samples come from memory (the drainers' state and the metrics registry), so sampling
// costs no query; the snapshot's queries run only while someone is connected. Every
// connected console gets the same serialised text: ten consoles cost ten socket writes a
// second, not ten samplings.
import type { ServerResponse } from "node:http";
import type { App } from "../../app.js";
import { withTimeout } from "../../reactor/backoff.js";
import { quoteIdent } from "../../reactor/lease-queue.js";
import { buildHealth } from "../health.js";
import { buildStatus } from "../status.js";

/** Seconds of history kept and sent to a console when it connects. */
export const HISTORY_SECONDS = 15 * 60;
const SAMPLE_MS = 1_000;
/** The snapshot (with its queries) is refreshed this often while consoles are connected. */
const SNAPSHOT_MS = 5_000;
/** Pickup latency quantiles cover the pickups of this many seconds. */
const LATENCY_WINDOW = 10;
/** A console whose socket holds this much unsent data is too slow to follow: it is closed. */
const MAX_BUFFERED_BYTES = 1024 * 1024;
/** More consoles than this on one replica are refused (each holds a socket open). */
export const MAX_CONSOLES = 50;
/** Failed rows are counted up to this many (on the failed-rows index): more shows as the cap. */
const FAILED_COUNT_CAP = 100_000;

/** The figures of one workload at one second, named as in /status and /metrics. */
export interface WorkloadSample {
  backlog: number | null;
  inFlight: number;
  failed: number | null;
  oldestPendingAgeSeconds: number | null;
  /** Rows finished per second (reactor_completed_total, every outcome). */
  completedPerSecond: number;
  /** From reactor_pickup_latency_seconds over the last LATENCY_WINDOW seconds; null without pickups. */
  pickupLatencyP50Seconds: number | null;
  pickupLatencyP99Seconds: number | null;
}

export interface LiveSample {
  /** Epoch milliseconds. */
  t: number;
  workloads: Record<string, WorkloadSample>;
}

export interface LiveFeed {
  /**
   * Starts sending samples to a response (already hijacked); ends with the response, or
   * at the first second `authorised` answers false (the session that opened it ended).
   */
  attach(res: ServerResponse, authorised?: () => boolean): boolean;
  clients(): number;
  history(): LiveSample[];
  stop(): void;
}

type Buckets = Map<string, number[]>;

/**
 * A quantile from cumulative bucket counts, interpolated inside its bucket as Prometheus'
 * histogram_quantile does; the +Inf bucket answers with the largest finite bound.
 */
export function bucketQuantile(q: number, bounds: number[], cumulative: number[]): number | null {
  const total = cumulative.at(-1) ?? 0;
  if (total <= 0) return null;
  const rank = q * total;
  for (let i = 0; i < cumulative.length; i++) {
    const count = cumulative[i] ?? 0;
    if (count >= rank) {
      const upper = bounds[i] ?? Number.POSITIVE_INFINITY;
      if (!Number.isFinite(upper)) return bounds[i - 1] ?? null;
      const lower = i === 0 ? 0 : (bounds[i - 1] ?? 0);
      const below = i === 0 ? 0 : (cumulative[i - 1] ?? 0);
      const inBucket = count - below;
      return inBucket > 0 ? lower + (upper - lower) * ((rank - below) / inBucket) : upper;
    }
  }
  return null;
}

/**
 * Samples as columns ({t: [...], workloads: {name: {figure: [...]}}}): the 15 minutes a
 * console gets when it connects, without repeating every name 900 times.
 */
export function columns(samples: readonly LiveSample[]) {
  const workloads: Record<string, Record<string, Array<number | null>>> = {};
  for (const s of samples) {
    for (const [name, figures] of Object.entries(s.workloads)) {
      const w = workloads[name] ?? {};
      workloads[name] = w;
      for (const [key, value] of Object.entries(figures)) {
        const list = w[key] ?? [];
        w[key] = list;
        list.push(value);
      }
    }
  }
  return { t: samples.map((s) => s.t), workloads };
}

/** Rounds to 4 significant digits: the charts need no more, and history stays small. */
const round = (n: number | null) => (n === null ? null : Number(n.toPrecision(4)));

export function makeLiveFeed(app: App): LiveFeed {
  const names = app.reactor.workloads.map((w) => w.name);
  const samples: LiveSample[] = [];
  /** Each connected console, with the check that it may still watch. */
  const consoles = new Map<ServerResponse, () => boolean>();
  let bounds: number[] = [];
  /** Cumulative pickup buckets per workload, for the last LATENCY_WINDOW + 1 seconds. */
  const bucketHistory: Buckets[] = [];
  let lastCompleted: Map<string, number> | null = null;
  let failed: Record<string, number> = {};
  let snapshot = "";
  let lastSnapshotAt = 0;
  let snapshotRunning = false;

  async function completedNow(): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for (const v of (await app.metrics.completed.get()).values) {
      const w = String(v.labels.workload);
      out.set(w, (out.get(w) ?? 0) + v.value);
    }
    return out;
  }

  async function bucketsNow(): Promise<Buckets> {
    const out: Buckets = new Map();
    const les: number[] = [];
    for (const v of (await app.metrics.pickupLatency.get()).values) {
      if (!v.metricName?.endsWith("_bucket")) continue;
      const w = String(v.labels.workload);
      const raw = (v.labels as Record<string, string | number | undefined>).le;
      const le = raw === "+Inf" ? Number.POSITIVE_INFINITY : Number(raw);
      if (w === names[0]) les.push(le);
      const list = out.get(w) ?? [];
      list.push(v.value);
      out.set(w, list);
    }
    if (les.length > 0) bounds = les;
    return out;
  }

  function send(text: string) {
    for (const res of consoles.keys()) {
      if (res.writableLength > MAX_BUFFERED_BYTES) {
        res.end();
        consoles.delete(res);
        continue;
      }
      res.write(text);
    }
  }

  async function sample() {
    const now = Date.now();
    const completed = await completedNow();
    const buckets = await bucketsNow();
    bucketHistory.push(buckets);
    if (bucketHistory.length > LATENCY_WINDOW + 1) bucketHistory.shift();
    const oldest = bucketHistory[0] ?? buckets;
    const workloads: Record<string, WorkloadSample> = {};
    for (const name of names) {
      const d = app.reactor.drainers.get(name)?.state();
      const newer = buckets.get(name) ?? [];
      const older = oldest.get(name) ?? [];
      const window = newer.map((n, i) => n - (older[i] ?? 0));
      const done =
        (completed.get(name) ?? 0) - (lastCompleted?.get(name) ?? completed.get(name) ?? 0);
      workloads[name] = {
        backlog: d?.lastStats?.backlog ?? null,
        inFlight: d?.inFlightRows ?? 0,
        failed: failed[name] ?? null,
        oldestPendingAgeSeconds: round(d?.lastStats?.oldestPendingAgeSeconds ?? null),
        completedPerSecond: done,
        pickupLatencyP50Seconds: round(bucketQuantile(0.5, bounds, window)),
        pickupLatencyP99Seconds: round(bucketQuantile(0.99, bounds, window)),
      };
    }
    lastCompleted = completed;
    const s: LiveSample = { t: now, workloads };
    samples.push(s);
    if (samples.length > HISTORY_SECONDS) samples.shift();
    // A console whose session ended is let go within a second.
    for (const [res, authorised] of consoles) {
      if (!authorised()) {
        res.end();
        consoles.delete(res);
      }
    }
    if (consoles.size > 0) {
      send(`event: sample\ndata: ${JSON.stringify(s)}\n\n`);
      if (now - lastSnapshotAt >= SNAPSHOT_MS) void refreshSnapshot();
    }
  }

  /** Failed rows per workload, each counted on its partial failed-rows index. */
  async function countFailed(): Promise<Record<string, number>> {
    const parts = app.modules.map(({ module }, i) => {
      const spec = module.queue(app.pool).spec;
      return `(SELECT count(*)::int FROM (SELECT 1 FROM ${quoteIdent(spec.table)}
        WHERE ${quoteIdent(spec.stateColumn)} = '${spec.states.failed}' LIMIT $1) f) AS w${i}`;
    });
    const { rows } = await app.pool.query(`SELECT ${parts.join(", ")}`, [FAILED_COUNT_CAP]);
    return Object.fromEntries(
      app.modules.map(({ module }, i) => [module.name, rows[0]?.[`w${i}`]]),
    );
  }

  /** Everything but the per-second figures: what is connected, when it last ran, health. */
  async function refreshSnapshot() {
    if (snapshotRunning) return;
    snapshotRunning = true;
    lastSnapshotAt = Date.now();
    try {
      const [status, health, counts] = await Promise.all([
        buildStatus(app, { counts: false }),
        buildHealth(app),
        withTimeout(countFailed(), 2_000, "no answer within 2000 ms").catch(() => null),
      ]);
      if (counts) failed = counts;
      const checks = Object.entries(health.checks).flatMap(([name, list]) =>
        (list as Array<{ status: string; output?: string }>).map((c) => ({
          name,
          status: c.status,
          output: c.output ?? null,
        })),
      );
      snapshot = `event: status\ndata: ${JSON.stringify({
        at: new Date(),
        pollIntervalSeconds: app.settings.current.poll_interval_seconds,
        failedCountCap: FAILED_COUNT_CAP,
        health: { status: health.status, checks },
        status,
      })}\n\n`;
      send(snapshot);
    } catch (err) {
      app.logger.warn({ err: (err as Error).message }, "console status snapshot failed");
    } finally {
      snapshotRunning = false;
    }
  }

  const timer = setInterval(() => {
    sample().catch((err: Error) =>
      app.logger.warn({ err: err.message }, "console live sample failed"),
    );
  }, SAMPLE_MS);
  timer.unref();

  return {
    attach(res, authorised = () => true) {
      if (consoles.size >= MAX_CONSOLES) return false;
      consoles.set(res, authorised);
      res.on("close", () => consoles.delete(res));
      // Reconnect after 2 s if the stream breaks; then the history so far, and the
      // snapshot (fresh, or the last one until the fresh one comes).
      res.write(`retry: 2000\nevent: history\ndata: ${JSON.stringify(columns(samples))}\n\n`);
      if (snapshot) res.write(snapshot);
      void refreshSnapshot();
      return true;
    },
    clients: () => consoles.size,
    history: () => samples.slice(),
    stop() {
      clearInterval(timer);
      for (const res of consoles.keys()) res.end();
      consoles.clear();
    },
  };
}
