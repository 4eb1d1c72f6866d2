// The uploads workload: claimed orders → validated one by one → one createorders call per
// unit → each result mapped back to its row. The rate limit is one budget shared by every
// replica; a 4xx for a whole call is split until the order ShipStation refuses is alone;
// rejected credentials pause uploads and are tried again with a back-off.
import type { Logger } from "../../logger.js";
import type { Metrics } from "../../metrics.js";
import { statusClass } from "../../outbound/http.js";
import type { ShipStationClient } from "../../outbound/shipstation-client.js";
import { exponentialBackoff, sleep } from "../../reactor/backoff.js";
import { type LeaseQueue, type Outcome, retryOrFail } from "../../reactor/lease-queue.js";
import { MAX_PAUSE_MS, type RateLimiter } from "../../reactor/rate-limit.js";
import type { Settings } from "../../reactor/settings-spec.js";
import type { Workload, WorkloadCheck } from "../../reactor/workload.js";
import { buildOrder } from "./order.js";
import { type ClaimedOrder, ORDERS_CHANNEL } from "./queue.js";

/**
 * Waits after failed attempt 1, 2, …: 5 s, 15 s, 1 min, 5 min, 15 min, 30 min, 1 h, 2 h
 * (±20 % jitter); a ninth failure is final. About 4 hours in all.
 */
export const UPLOAD_RETRY_SCHEDULE_SECONDS = [5, 15, 60, 300, 900, 1800, 3600, 7200];
/** Wait for a rate-limit slot in place up to this long; longer, give the rows back. */
const MAX_INLINE_WAIT_MS = 5_000;
/**
 * After ShipStation rejects the credentials, one call tries them again after 2 s, 4 s,
 * 8 s … (±20 %), at most every 5 minutes, until they work.
 */
const CREDENTIALS_RETRY_BASE_MS = 2_000;
const CREDENTIALS_RETRY_CAP_MS = 5 * 60 * 1000;

export interface UploadsOptions {
  queue: LeaseQueue<ClaimedOrder>;
  settings: Readonly<Settings>;
  /** null when SHIPSTATION_API_KEY/SECRET are not set: uploads stay paused. */
  client: ShipStationClient | null;
  limiter: RateLimiter;
  logger: Logger;
  metrics: Metrics;
}

export function makeUploadsWorkload(options: UploadsOptions): Workload<ClaimedOrder> {
  const { settings, client, limiter, metrics } = options;
  const log = options.logger.child({ workload: "uploads" });
  const label = { workload: "uploads" };
  /**
   * Set while ShipStation refuses the credentials (auth) or the calls go nowhere useful
   * (endpoint: a wrong base URL): why, and when to try again.
   */
  let credentials: {
    kind: "auth" | "endpoint";
    error: string;
    failures: number;
    retryAt: number;
    since: Date;
  } | null = null;
  /**
   * When the shared budget next has a slot, once a take found it spent: until then the
   * drainer claims nothing, instead of claiming the backlog only to hand it back.
   */
  let budgetFreeAt = 0;

  function disabledReason(): string | null {
    if (!client)
      return "SHIPSTATION_API_KEY and SHIPSTATION_API_SECRET are not set: uploads are paused";
    if (!settings.uploads_enabled) return "reactor.uploads_enabled is false";
    return null;
  }

  function pausedUntil(): number {
    const now = Date.now();
    const retryAt = credentials && credentials.retryAt > now ? credentials.retryAt : 0;
    return Math.max(retryAt, limiter.pausedUntil(), budgetFreeAt > now ? budgetFreeAt : 0);
  }

  function pauseReason(): string | null {
    if (credentials && credentials.retryAt > Date.now()) {
      return `${credentials.error}; trying again at ${new Date(credentials.retryAt).toISOString()}`;
    }
    const until = limiter.pausedUntil();
    if (until) return `paused by ShipStation's rate limit until ${new Date(until).toISOString()}`;
    return budgetFreeAt > Date.now()
      ? `upload_rate_limit_per_minute is used up until ${new Date(budgetFreeAt).toISOString()}`
      : null;
  }

  /** Waits for a slot of the shared budget; a positive result means the wait is long. */
  async function takeSlot(): Promise<number> {
    for (;;) {
      const wait = await limiter.take(settings.upload_rate_limit_per_minute);
      if (wait === 0) return 0;
      if (wait > MAX_INLINE_WAIT_MS) return wait;
      await sleep(wait);
    }
  }

  /** Pauses every replica for a reset ShipStation asked for (clamped) and says so. */
  async function pauseForReset(resetMs: number, why: string) {
    metrics.rateLimitPauses.inc(label);
    if (resetMs > MAX_PAUSE_MS) {
      log.warn(
        { resetMs, pausedMs: MAX_PAUSE_MS },
        `${why}: ShipStation asked for a pause longer than ${MAX_PAUSE_MS / 1000} s; pausing for that long and trying again`,
      );
    }
    const until = await limiter.pause(resetMs);
    log.warn({ until: new Date(until).toISOString() }, `${why}: uploads paused on every replica`);
    return until;
  }

  /**
   * One createorders call for these rows, or, when ShipStation refuses the whole call
   * with a 4xx, two calls for its halves, recursively, so that only the order at fault
   * fails and carries ShipStation's message.
   */
  async function send(rows: ClaimedOrder[], jsons: string[]): Promise<Outcome[]> {
    if (!client) throw new Error("uploads ran without ShipStation credentials");
    const wait = await takeSlot();
    if (wait > 0) {
      metrics.rateLimitPauses.inc(label);
      budgetFreeAt = Math.max(budgetFreeAt, Date.now() + wait);
      const at = new Date(Date.now() + wait);
      return rows.map((r) => ({ id: r.id, kind: "defer", at }));
    }
    const res = await client.createOrders(jsons);
    metrics.httpResponses.inc({ ...label, class: statusClass(res.status) });
    if (res.kind !== "auth" && res.kind !== "endpoint" && credentials) {
      log.info("ShipStation answers again; uploads resume");
      credentials = null;
    }
    switch (res.kind) {
      case "ok": {
        if (res.rate.remaining === 0 && res.rate.resetMs !== null) {
          await pauseForReset(res.rate.resetMs, "X-Rate-Limit-Remaining is 0");
        }
        // Results are matched by orderKey; by position only when none carries a key. A
        // malformed entry (null, a string) counts as no result for its order.
        const results = res.results.map((r) => (r && typeof r === "object" ? r : undefined));
        const keyed = results.some((r) => r?.orderKey !== undefined);
        const byKey = new Map(results.filter((r) => r).map((r) => [r?.orderKey, r]));
        return rows.map((row, i) => {
          const result = keyed ? byKey.get(row.upload_key) : results[i];
          if (!result)
            return retryOrFail(
              row,
              UPLOAD_RETRY_SCHEDULE_SECONDS,
              "ShipStation's response had no result for this order",
            );
          if (result.success === true) {
            return {
              id: row.id,
              kind: "success",
              extra: { shipstation_order_id: result.orderId ?? null },
            };
          }
          return {
            id: row.id,
            kind: "failed",
            error: `ShipStation refused the order: ${result.errorMessage ?? "no reason given"}`,
          };
        });
      }
      case "rate_limited": {
        // No attempt is used: the rows were never considered.
        const until = await pauseForReset(res.resetMs, "ShipStation rate limit hit (429)");
        return rows.map((r) => ({ id: r.id, kind: "defer", at: new Date(until) }));
      }
      case "endpoint":
      case "auth": {
        // Every order would fail the same way: keep them pending and try the credentials
        // again with a back-off, resuming by itself when they work.
        const failures = (credentials?.failures ?? 0) + 1;
        const delay = exponentialBackoff(
          failures - 1,
          CREDENTIALS_RETRY_BASE_MS,
          CREDENTIALS_RETRY_CAP_MS,
        );
        credentials = {
          kind: res.kind,
          error: res.error,
          failures,
          retryAt: Date.now() + delay,
          since: credentials?.since ?? new Date(),
        };
        log.error({ retryInMs: delay, failures }, res.error);
        const at = new Date(credentials.retryAt);
        return rows.map((r) => ({ id: r.id, kind: "defer", at }));
      }
      case "rejected": {
        if (rows.length === 1) {
          const [row] = rows as [ClaimedOrder];
          return [{ id: row.id, kind: "failed", error: res.error }];
        }
        const half = Math.ceil(rows.length / 2);
        log.info(
          { rows: rows.length, status: res.status },
          "ShipStation refused a whole batch; splitting it to find the order at fault",
        );
        return [
          ...(await send(rows.slice(0, half), jsons.slice(0, half))),
          ...(await send(rows.slice(half), jsons.slice(half))),
        ];
      }
      case "transient":
        return rows.map((r) => retryOrFail(r, UPLOAD_RETRY_SCHEDULE_SECONDS, res.error));
    }
  }

  function checks(): WorkloadCheck[] {
    if (!client) {
      return [
        {
          name: "credentials",
          status: "warn",
          observedValue: false,
          output: "SHIPSTATION_API_KEY/SECRET not set: uploads paused",
        },
      ];
    }
    const refused = (name: "auth" | "endpoint"): WorkloadCheck =>
      credentials?.kind === name
        ? {
            name: name === "auth" ? "credentials" : "endpoint",
            status: "fail",
            observedValue: false,
            output: `${credentials.error} (since ${credentials.since.toISOString()}); next try at ${new Date(credentials.retryAt).toISOString()}`,
          }
        : {
            name: name === "auth" ? "credentials" : "endpoint",
            status: "pass",
            observedValue: true,
          };
    return [refused("auth"), refused("endpoint")];
  }

  return {
    name: "uploads",
    channel: ORDERS_CHANNEL,
    queue: options.queue,
    // One list of reasons; enabled() is just "no reason to be paused".
    enabled: () => disabledReason() === null,
    disabledReason,
    unitSize: () => settings.upload_batch_size,
    concurrency: () => settings.upload_concurrency,
    retryScheduleSeconds: () => UPLOAD_RETRY_SCHEDULE_SECONDS,
    pausedUntil,
    pauseReason,
    checks,
    async process(rows) {
      const outcomes: Outcome[] = [];
      const sendable: ClaimedOrder[] = [];
      const jsons: string[] = [];
      for (const row of rows) {
        const built = buildOrder(row);
        if (built.ok) {
          sendable.push(row);
          jsons.push(built.json);
        } else {
          outcomes.push({ id: row.id, kind: "failed", error: built.error });
        }
      }
      if (sendable.length > 0) outcomes.push(...(await send(sendable, jsons)));
      return outcomes;
    },
  };
}
