// One ShipStation account as every workload that calls it sees it (docs/architecture.md,
// invariant 9): the client, the budget of 40 calls a minute shared by all replicas, the
// pause ShipStation imposes (429, X-Rate-Limit-Remaining: 0), and what is known about
// the credentials. Uploads and shipments both go through it, so a 429 seen by one pauses
// both, and rejected credentials pause both until they work again.
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import { exponentialBackoff, sleep } from "../reactor/backoff.js";
import { MAX_PAUSE_MS, type RateLimiter } from "../reactor/rate-limit.js";
import { integer } from "../reactor/settings-spec.js";
import type { WorkloadCheck } from "../reactor/workload.js";
import { statusClass } from "./http.js";
import type { RateHeaders, ShipStationClient } from "./shipstation-client.js";

/** The account's settings; the key keeps its first name (uploads were its only user). */
export const SHIPSTATION_SETTINGS = {
  upload_rate_limit_per_minute: integer(
    1,
    100000,
    40,
    "ShipStation calls per minute, shared by all replicas and by uploads and shipments (one budget in the database).",
  ),
} as const;

/** Wait for a budget slot in place up to this long; longer, the caller gives its rows back. */
const MAX_INLINE_WAIT_MS = 5_000;
/**
 * After ShipStation rejects the credentials, one call tries them again after 2 s, 4 s,
 * 8 s … (±20 %), at most every 5 minutes, until they work.
 */
const CREDENTIALS_RETRY_BASE_MS = 2_000;
const CREDENTIALS_RETRY_CAP_MS = 5 * 60 * 1000;

/** The parts of any ShipStation answer the account learns from. */
export type ShipStationAnswer =
  | { kind: "ok"; status: number; rate?: RateHeaders }
  | { kind: "rate_limited"; status: 429; resetMs: number }
  | { kind: "auth" | "endpoint"; status: number; error: string }
  | { kind: "rejected" | "transient"; status: number | null; error: string };

export interface ShipStationAccount {
  /** null when SHIPSTATION_API_KEY/SECRET are not set. */
  client: ShipStationClient | null;
  /** Why no call can be made at all (no credentials), or null. */
  unavailable(): string | null;
  /** Epoch ms before which no call should be made (credentials back-off, pause, budget), or 0. */
  pausedUntil(): number;
  pauseReason(): string | null;
  /**
   * Takes a slot of the shared budget, waiting in place up to 5 s. Returns 0 with a slot
   * taken, or the ms until one frees up (nothing taken: give the work back until then).
   */
  takeSlot(workload: string): Promise<number>;
  /**
   * Learns from an answer: credentials refused or working again, a pause ShipStation
   * asked for. Returns the epoch ms until which calls are paused, or 0.
   */
  observe(workload: string, answer: ShipStationAnswer): Promise<number>;
  /** /health checks: credentials and endpoint. */
  checks(): WorkloadCheck[];
}

export function makeShipStationAccount(options: {
  client: ShipStationClient | null;
  limiter: RateLimiter;
  perMinute: () => number;
  logger: Logger;
  metrics: Metrics;
}): ShipStationAccount {
  const { client, limiter, metrics } = options;
  const log = options.logger.child({ component: "shipstation" });
  /**
   * Set while ShipStation refuses the credentials (auth) or the calls go nowhere useful
   * (endpoint: a wrong base URL): why, and when to try again.
   */
  let refused: {
    kind: "auth" | "endpoint";
    error: string;
    failures: number;
    retryAt: number;
    since: Date;
  } | null = null;
  /**
   * When the shared budget next has a slot, once a take found it spent: until then no
   * workload claims, instead of claiming its backlog only to hand it back.
   */
  let budgetFreeAt = 0;

  async function pauseForReset(workload: string, resetMs: number, why: string) {
    metrics.rateLimitPauses.inc({ workload });
    if (resetMs > MAX_PAUSE_MS) {
      log.warn(
        { resetMs, pausedMs: MAX_PAUSE_MS },
        `${why}: ShipStation asked for a pause longer than ${MAX_PAUSE_MS / 1000} s; pausing for that long and trying again`,
      );
    }
    const until = await limiter.pause(resetMs);
    log.warn(
      { workload, until: new Date(until).toISOString() },
      `${why}: ShipStation calls paused on every replica`,
    );
    return until;
  }

  return {
    client,
    unavailable: () =>
      client
        ? null
        : "SHIPSTATION_API_KEY and SHIPSTATION_API_SECRET are not set: ShipStation calls are paused",
    pausedUntil() {
      const now = Date.now();
      const retryAt = refused && refused.retryAt > now ? refused.retryAt : 0;
      return Math.max(retryAt, limiter.pausedUntil(), budgetFreeAt > now ? budgetFreeAt : 0);
    },
    pauseReason() {
      if (refused && refused.retryAt > Date.now()) {
        return `${refused.error}; trying again at ${new Date(refused.retryAt).toISOString()}`;
      }
      const until = limiter.pausedUntil();
      if (until) return `paused by ShipStation's rate limit until ${new Date(until).toISOString()}`;
      return budgetFreeAt > Date.now()
        ? `upload_rate_limit_per_minute is used up until ${new Date(budgetFreeAt).toISOString()}`
        : null;
    },
    async takeSlot(workload) {
      for (;;) {
        const wait = await limiter.take(options.perMinute());
        if (wait === 0) return 0;
        if (wait > MAX_INLINE_WAIT_MS) {
          metrics.rateLimitPauses.inc({ workload });
          budgetFreeAt = Math.max(budgetFreeAt, Date.now() + wait);
          return wait;
        }
        await sleep(wait);
      }
    },
    async observe(workload, answer) {
      metrics.httpResponses.inc({ workload, class: statusClass(answer.status) });
      if (answer.kind !== "auth" && answer.kind !== "endpoint" && refused) {
        log.info("ShipStation answers again; calls resume");
        refused = null;
      }
      switch (answer.kind) {
        case "ok":
          if (answer.rate?.remaining === 0 && answer.rate.resetMs !== null) {
            return pauseForReset(workload, answer.rate.resetMs, "X-Rate-Limit-Remaining is 0");
          }
          return 0;
        case "rate_limited":
          return pauseForReset(workload, answer.resetMs, "ShipStation rate limit hit (429)");
        case "auth":
        case "endpoint": {
          // Every call would fail the same way: try again with a back-off, resuming by
          // itself when the credentials (or the base URL) work.
          const failures = (refused?.failures ?? 0) + 1;
          const delay = exponentialBackoff(
            failures - 1,
            CREDENTIALS_RETRY_BASE_MS,
            CREDENTIALS_RETRY_CAP_MS,
          );
          refused = {
            kind: answer.kind,
            error: answer.error,
            failures,
            retryAt: Date.now() + delay,
            since: refused?.since ?? new Date(),
          };
          log.error({ workload, retryInMs: delay, failures }, answer.error);
          return refused.retryAt;
        }
        default:
          return 0;
      }
    },
    checks() {
      if (!client) {
        return [
          {
            name: "credentials",
            status: "warn",
            observedValue: false,
            output: "SHIPSTATION_API_KEY/SECRET not set: ShipStation calls paused",
          },
        ];
      }
      const check = (kind: "auth" | "endpoint"): WorkloadCheck => {
        const name = kind === "auth" ? "credentials" : "endpoint";
        return refused?.kind === kind
          ? {
              name,
              status: "fail",
              observedValue: false,
              output: `${refused.error} (since ${refused.since.toISOString()}); next try at ${new Date(refused.retryAt).toISOString()}`,
            }
          : { name, status: "pass", observedValue: true };
      };
      return [check("auth"), check("endpoint")];
    },
  };
}
