// The deliveries workload: one claimed delivery → one signed POST → delivered, retried
// on the schedule, failed when the schedule is exhausted, or cancelled when the
// endpoint is gone. Concurrency is bounded overall and shared fairly between endpoints
// (see EndpointShares), so slow endpoints, however many, cannot starve the others.
import type { Agent } from "undici";
import type { Pool } from "../../db/pool.js";
import type { Logger } from "../../logger.js";
import type { Metrics } from "../../metrics.js";
import { statusClass } from "../../outbound/http.js";
import { redactSecrets } from "../../outbound/redact.js";
import type { AddressPolicy } from "../../outbound/ssrf.js";
import { scheduledDelayMs } from "../../reactor/backoff.js";
import {
  type AttemptRecord,
  type LeaseQueue,
  type Outcome,
  retryOrFail,
} from "../../reactor/lease-queue.js";
import type { Workload } from "../../reactor/workload.js";
import { applyRetention, disableGoneSubscription, RETENTION_BATCH } from "./maintenance.js";
import {
  type ClaimedDelivery,
  DELIVERIES_CHANNEL,
  MAX_WEBHOOK_BODY_BYTES,
  SUBSCRIPTION_SENDING_COLUMNS,
} from "./queue.js";
import type { DeliveriesSettings } from "./settings.js";
import { deliveryBody, signedHeaders } from "./signing.js";
import { sendWebhook, statusSummary, type WebhookResult } from "./webhook-client.js";

/** Retry-After is honoured within this range; outside it is clamped. */
export const RETRY_AFTER_MIN_MS = 1_000;
export const RETRY_AFTER_MAX_MS = 60 * 60 * 1000;
/** Retention runs at most this often unless the last run hit a full batch. */
const RETENTION_EVERY_MS = 60 * 60 * 1000;

export interface DeliveriesOptions {
  pool: Pool;
  queue: LeaseQueue<ClaimedDelivery>;
  settings: Readonly<DeliveriesSettings>;
  agent: Agent;
  /** The SSRF policy: refused targets fail before any connection is opened. */
  addressPolicy: AddressPolicy;
  logger: Logger;
  metrics: Metrics;
}

/**
 * Fair shares of the delivery slots, over the endpoints this replica has work for (in
 * flight or claimed and waiting). With `active` such endpoints each may hold
 * concurrency / active slots, so one endpoint alone uses every slot and a second one
 * gets half as soon as its rows are claimed. Endpoints whose last attempt failed
 * (timeouts, errors: the slow ones) hold one slot each, and together at most half of the
 * slots, so any number of slow endpoints leaves at least half for the healthy ones.
 */
export class EndpointShares {
  /** In-flight requests per subscription. */
  readonly inFlight = new Map<number, number>();
  /** Subscriptions whose last attempt failed or timed out; cleared by a success. */
  readonly failing = new Set<number>();

  constructor(private readonly concurrency: () => number) {}

  private failingInFlight(): number {
    let n = 0;
    for (const [id, k] of this.inFlight) if (this.failing.has(id)) n += k;
    return n;
  }

  private fair(waiting: readonly { subscription_id: number }[]): number {
    const active = new Set(this.inFlight.keys());
    // Asked as each request starts, over up to claimAhead rows, which come in runs of one
    // endpoint: a row like the one before adds nothing.
    let last: number | undefined;
    for (const row of waiting) {
      if (row.subscription_id === last) continue;
      last = row.subscription_id;
      active.add(Number(last));
    }
    return Math.max(1, Math.floor(this.concurrency() / Math.max(1, active.size)));
  }

  /** Whether a request to `endpoint` may start now. */
  admit(endpoint: number, waiting: readonly { subscription_id: number }[]): boolean {
    const n = this.inFlight.get(endpoint) ?? 0;
    if (this.failing.has(endpoint)) {
      return n < 1 && this.failingInFlight() < Math.max(1, Math.floor(this.concurrency() / 2));
    }
    return n < this.fair(waiting);
  }

  /**
   * Endpoints not to claim for now: those whose rows here (in flight and waiting) fill
   * their share plus their part of the rows held ahead (`ahead`), and failing endpoints
   * with one row in flight or waiting.
   */
  excluded(waiting: readonly { subscription_id: number }[], ahead: number): number[] {
    const local = new Map(this.inFlight);
    for (const row of waiting) {
      const id = Number(row.subscription_id);
      local.set(id, (local.get(id) ?? 0) + 1);
    }
    const fair = this.fair(waiting);
    const extra = Math.ceil(ahead / Math.max(1, local.size));
    const out: number[] = [];
    for (const [id, n] of local) {
      if (n >= (this.failing.has(id) ? 1 : fair + extra)) out.push(id);
    }
    return out;
  }

  start(endpoint: number): void {
    this.inFlight.set(endpoint, (this.inFlight.get(endpoint) ?? 0) + 1);
  }

  finish(endpoint: number): void {
    const left = (this.inFlight.get(endpoint) ?? 1) - 1;
    if (left <= 0) this.inFlight.delete(endpoint);
    else this.inFlight.set(endpoint, left);
  }
}

/** A row that starts this long after its claim re-reads its subscription first. */
const FRESH_FOR_MS = 100;
/** Rows of one endpoint starting within this window share one read. */
const SHARED_READ_MS = 20;

type SubscriptionNow = Pick<
  ClaimedDelivery,
  "url" | "secret" | "previous_secret" | "subscription_enabled" | "disabled_reason"
>;

/** A subscription's sending state now (as the claim reads it), or null if it is gone. */
async function readSubscription(pool: Pool, id: number): Promise<SubscriptionNow | null> {
  const { rows } = await pool.query<SubscriptionNow>(
    `SELECT ${SUBSCRIPTION_SENDING_COLUMNS} FROM webhook_subscriptions s WHERE s.id = $1`,
    [id],
  );
  return rows[0] ?? null;
}

function clampRetryAfter(ms: number): number {
  return Math.min(RETRY_AFTER_MAX_MS, Math.max(RETRY_AFTER_MIN_MS, ms));
}

/**
 * What an attempt failed with, for its row in webhook_delivery_attempts: the status in
 * words when an answer came (its body is the excerpt), else the error; null on success.
 */
function attemptError(result: WebhookResult, clean: (text: string) => string): string | null {
  switch (result.kind) {
    case "delivered":
      return null;
    case "gone":
      return "HTTP 410 Gone: the subscription was disabled";
    case "throttled":
      return "HTTP 429: throttled, sent again later without using an attempt";
    case "failed":
      return result.status === null ? clean(result.error) : statusSummary(result.status);
    case "refused":
      return clean(result.error);
  }
}

export function makeDeliveriesWorkload(options: DeliveriesOptions): Workload<ClaimedDelivery> {
  const { settings, metrics } = options;
  const log = options.logger.child({ workload: "deliveries" });
  const label = { workload: "deliveries" };
  const shares = new EndpointShares(() => settings.delivery_concurrency);
  // Rows held claimed ahead of free slots: a finished request starts the next without a
  // claim round trip, and claims come in batches although each unit is one request.
  const claimAhead = () => settings.delivery_concurrency * 8;
  let lastRetention = 0;
  // Endpoints that answered 410, and when: their rows claimed before then are cancelled
  // without another request (rows claimed later saw the subscription disabled).
  const gone = new Map<number, { at: number; reason: string }>();
  // Endpoints that answered 429, and until when: their waiting rows go back until then
  // without a request (and without using an attempt).
  const throttledUntil = new Map<number, number>();
  // The subscription as it is now, for rows that waited here (see current()).
  const fresh = new Map<number, { at: number; sub: Promise<SubscriptionNow | null> }>();

  /**
   * A row that waited here after its claim is sent with its subscription as it is now,
   * not as it was at the claim: an operator's disable, new URL or rotated secret applies
   * to every request that starts after it committed. One primary-key read per endpoint,
   * shared by rows that start together.
   */
  async function current(row: ClaimedDelivery): Promise<ClaimedDelivery | null> {
    if (row.claimedAt === undefined || Date.now() - row.claimedAt < FRESH_FOR_MS) return row;
    const id = Number(row.subscription_id);
    let entry = fresh.get(id);
    if (!entry || entry.at < Date.now() - SHARED_READ_MS) {
      if (fresh.size > 1000) fresh.clear();
      entry = { at: Date.now(), sub: readSubscription(options.pool, id) };
      fresh.set(id, entry);
      entry.sub.catch(() => fresh.delete(id));
    }
    const sub = await entry.sub;
    return sub ? { ...row, ...sub } : null;
  }

  /**
   * One delivery. `tried.attempt` is set as soon as a request was made, so an internal
   * error after it (see process) still logs the attempt with the outcome.
   */
  async function deliver(
    claimed: ClaimedDelivery,
    tried: { attempt?: AttemptRecord },
  ): Promise<Outcome> {
    const endpoint = Number(claimed.subscription_id);
    const wentAway = gone.get(endpoint);
    if (wentAway && (claimed.claimedAt ?? 0) <= wentAway.at) {
      return { id: claimed.id, kind: "cancel", error: `cancelled: ${wentAway.reason}` };
    }
    const quietUntil = throttledUntil.get(endpoint) ?? 0;
    if (quietUntil > Date.now()) return { id: claimed.id, kind: "defer", at: new Date(quietUntil) };
    throttledUntil.delete(endpoint);
    const row = await current(claimed);
    if (!row) {
      return {
        id: claimed.id,
        kind: "cancel",
        error: `cancelled: subscription ${claimed.subscription_id} was deleted`,
      };
    }
    if (!row.subscription_enabled) {
      return {
        id: row.id,
        kind: "cancel",
        error: `cancelled: subscription ${row.subscription_id} is disabled${row.disabled_reason ? ` (${row.disabled_reason})` : ""}`,
      };
    }
    if (row.event_payload === null) {
      // Not loaded by the claim (see ClaimedRow.payload_bytes). Receivers commonly cap
      // bodies well below the limit; retrying would only repeat it.
      const size =
        row.payload_bytes > MAX_WEBHOOK_BODY_BYTES
          ? `is ${row.payload_bytes} bytes`
          : `is larger than ${MAX_WEBHOOK_BODY_BYTES} bytes as JSON text (${row.payload_bytes} bytes stored), or holds a number beyond ±1e100`;
      return {
        id: row.id,
        kind: "failed",
        error: `event payload ${size}; webhooks carry at most ${MAX_WEBHOOK_BODY_BYTES} (send a reference to the data instead)`,
      };
    }
    const event = {
      eventId: row.event_id,
      eventType: row.event_type,
      createdAt: row.event_created_at,
      payloadJson: row.event_payload,
    };
    const body = deliveryBody(event);
    const bytes = Buffer.byteLength(body);
    if (bytes > MAX_WEBHOOK_BODY_BYTES) {
      // Receivers commonly cap bodies well below this; retrying would only repeat it.
      return {
        id: row.id,
        kind: "failed",
        error: `event body is ${bytes} bytes; webhooks carry at most ${MAX_WEBHOOK_BODY_BYTES} (send a reference to the data instead)`,
      };
    }
    const headers = signedHeaders(event, body, {
      secret: row.secret,
      previousSecret: row.previous_secret,
    });
    // A receiver's answer and error text are stored and shown: never with a secret in it.
    const clean = (text: string) => redactSecrets(text, [row.secret, row.previous_secret]);
    const startedAt = new Date();
    const started = performance.now();
    const result = await sendWebhook({
      url: row.url,
      body,
      headers,
      timeoutMs: settings.delivery_timeout_seconds * 1000,
      agent: options.agent,
      policy: options.addressPolicy,
      redact: clean,
    });
    const status = "status" in result ? result.status : null;
    const attempt: AttemptRecord = {
      number: row.attempts,
      startedAt,
      durationMs: Math.round(performance.now() - started),
      status,
      error: attemptError(result, clean),
      excerpt: ("excerpt" in result ? result.excerpt : null) ?? null,
    };
    tried.attempt = attempt;
    metrics.httpResponses.inc({ ...label, class: statusClass(status) });
    if (result.kind === "failed") shares.failing.add(endpoint);
    else shares.failing.delete(endpoint);
    switch (result.kind) {
      case "delivered":
        return { id: row.id, kind: "success", extra: { last_status: result.status }, attempt };
      case "gone": {
        const reason = `endpoint answered 410 Gone at ${new Date().toISOString()}`;
        gone.set(endpoint, { at: Date.now(), reason });
        const cancelled = await disableGoneSubscription(options.pool, row.subscription_id, reason);
        log.warn(
          { subscriptionId: row.subscription_id, cancelled },
          "subscription disabled: endpoint answered 410 Gone",
        );
        return {
          id: row.id,
          kind: "cancel",
          error: `cancelled: ${reason}`,
          extra: { last_status: 410 },
          attempt,
        };
      }
      case "throttled": {
        // Backpressure, not failure: hand the row back without using an attempt.
        metrics.rateLimitPauses.inc(label);
        const fallback =
          scheduledDelayMs(settings.delivery_retry_schedule_seconds, Math.max(1, row.attempts)) ??
          60_000;
        const delay = clampRetryAfter(result.retryAfterMs ?? fallback);
        if (throttledUntil.size > 1000) throttledUntil.clear();
        throttledUntil.set(endpoint, Date.now() + delay);
        return { id: row.id, kind: "defer", at: new Date(Date.now() + delay), attempt };
      }
      case "refused":
        return {
          id: row.id,
          kind: "failed",
          error: clean(result.error),
          extra: { last_status: null },
          attempt,
        };
      case "failed":
        return {
          ...retryOrFail(row, settings.delivery_retry_schedule_seconds, clean(result.error), {
            delayMs: result.retryAfterMs === null ? null : clampRetryAfter(result.retryAfterMs),
            extra: { last_status: result.status },
          }),
          attempt,
        };
    }
  }

  return {
    name: "deliveries",
    channel: DELIVERIES_CHANNEL,
    queue: options.queue,
    enabled: () => settings.deliveries_enabled,
    disabledReason: () =>
      settings.deliveries_enabled ? null : "reactor.deliveries_enabled is false",
    unitSize: () => 1,
    concurrency: () => settings.delivery_concurrency,
    retryScheduleSeconds: () => settings.delivery_retry_schedule_seconds,
    pausedUntil: () => 0,
    claimAhead,
    admit: (row, waiting) => shares.admit(Number(row.subscription_id), waiting),
    excludedKeys: (waiting, ahead) => shares.excluded(waiting, ahead),
    async process(rows) {
      return Promise.all(
        rows.map(async (row): Promise<Outcome> => {
          const endpoint = Number(row.subscription_id);
          // Synchronously, before any await: the drainer admits the next row on this count.
          shares.start(endpoint);
          const tried: { attempt?: AttemptRecord } = {};
          try {
            return await deliver(row, tried);
          } catch (err) {
            // A bug or a database error while handling this one delivery: it alone goes
            // through the retry schedule; the others in flight are unaffected.
            log.error({ err, deliveryId: row.id }, "delivery failed with an internal error");
            return {
              ...retryOrFail(
                row,
                settings.delivery_retry_schedule_seconds,
                `internal error: ${(err as Error).message}`.slice(0, 1000),
              ),
              attempt: tried.attempt,
            };
          } finally {
            shares.finish(endpoint);
          }
        }),
      );
    },
    async maintain() {
      if (Date.now() - lastRetention < RETENTION_EVERY_MS) return;
      const removed = await applyRetention(options.pool, settings.retention_days);
      const full = removed.deliveries === RETENTION_BATCH || removed.events === RETENTION_BATCH;
      // A full batch means more is waiting: let the next poll continue at once.
      lastRetention = full ? 0 : Date.now();
      if (removed.deliveries + removed.events > 0)
        log.info(removed, "retention removed old deliveries and events");
    },
  };
}
