// Read side of webhook_delivery_attempts for the admin API and the console: one
// delivery with its event and subscription, its attempts, and the subscriptions' recent
// success rates. The rows are written by the deliveries finalize (queue.ts, attemptLog).
// Secrets are never selected.
import { inTransaction, type Pool } from "../../db/pool.js";

/** A subscription's success rate counts the attempts started this many hours back. */
export const RECENT_HOURS = 24;

export interface AttemptView {
  id: number;
  attempt: number;
  started_at: Date;
  duration_ms: number;
  /** HTTP status, or null when no answer came. */
  status: number | null;
  error: string | null;
  response_excerpt: string | null;
}

export interface RecentAttempts {
  attempts: number;
  /** Attempts answered with a 2xx status. */
  succeeded: number;
  /** succeeded / attempts, or null without attempts. */
  success_rate: number | null;
}

const NO_ATTEMPTS: RecentAttempts = { attempts: 0, succeeded: 0, success_rate: null };

/**
 * The success rates are counted for at most this long. They scan a day of attempts: with
 * millions a day that takes seconds, and the subscriptions list must still answer, so
 * past this the rates are left out (null) rather than waited for.
 */
export const RECENT_TIMEOUT_MS = 2_000;

export function makeAttemptViews(pool: Pool) {
  return {
    /**
     * One delivery as JSON text, or null if there is none. The event's payload is spliced
     * in as stored, so numbers beyond a double's precision come out exactly.
     */
    async delivery(id: number): Promise<string | null> {
      const { rows } = await pool.query(
        `SELECT d.id, d.state, d.attempts, d.next_attempt_at, d.last_status, d.last_error,
           d.delivered_at, d.created_at,
           s.id AS s_id, s.url, s.description, s.enabled, s.disabled_reason, s.event_types,
           e.id AS e_id, e.event_type, e.aggregate_type, e.aggregate_id,
           e.created_at AS e_created_at, e.payload::text AS payload
         FROM webhook_deliveries d
         JOIN webhook_subscriptions s ON s.id = d.subscription_id
         JOIN outbox_events e ON e.id = d.event_id
         WHERE d.id = $1`,
        [id],
      );
      const r = rows[0];
      if (!r) return null;
      const view = {
        id: Number(r.id),
        state: r.state,
        attempts: r.attempts,
        next_attempt_at: r.next_attempt_at,
        last_status: r.last_status,
        last_error: r.last_error,
        delivered_at: r.delivered_at,
        created_at: r.created_at,
        subscription: {
          id: Number(r.s_id),
          url: r.url,
          description: r.description,
          enabled: r.enabled,
          disabled_reason: r.disabled_reason,
          event_types: r.event_types,
        },
        // Last, and never empty: the text ends with its closing brace and the view's.
        event: {
          id: r.e_id,
          event_type: r.event_type,
          aggregate_type: r.aggregate_type,
          aggregate_id: r.aggregate_id,
          created_at: r.e_created_at,
        },
      };
      return `${JSON.stringify(view).slice(0, -2)},"payload":${r.payload}}}`;
    },

    /** A page of a delivery's attempts, oldest first; null if the delivery does not exist. */
    async attempts(
      deliveryId: number,
      page: { limit: number; afterId?: number },
    ): Promise<{ items: AttemptView[]; nextAfterId: number | null } | null> {
      const { rows } = await pool.query(
        `SELECT a.id, a.attempt, a.started_at, a.duration_ms, a.status, a.error, a.response_excerpt
         FROM webhook_deliveries d
         LEFT JOIN LATERAL (
           SELECT * FROM webhook_delivery_attempts a
           WHERE a.delivery_id = d.id AND a.id > $2 ORDER BY a.id LIMIT $3
         ) a ON true
         WHERE d.id = $1
         ORDER BY a.id`,
        [deliveryId, page.afterId ?? 0, page.limit + 1],
      );
      if (rows.length === 0) return null;
      const found = rows.filter((r) => r.id !== null).map((r) => ({ ...r, id: Number(r.id) }));
      const items = found.slice(0, page.limit) as AttemptView[];
      return {
        items,
        nextAfterId: found.length > page.limit ? (items.at(-1)?.id ?? null) : null,
      };
    },

    /**
     * Attempts of the last RECENT_HOURS per subscription, in one grouped query (the
     * started_at index, then each attempt's delivery by primary key).
     */
    async recentBySubscription(ids: number[]): Promise<Map<number, RecentAttempts | null>> {
      const out = new Map<number, RecentAttempts | null>(ids.map((id) => [id, NO_ATTEMPTS]));
      if (ids.length === 0) return out;
      let rows: Array<{ id: string; attempts: number; succeeded: number }>;
      try {
        rows = await inTransaction(pool, async (client) => {
          // SET LOCAL bounds this statement alone, also through PgBouncer in transaction mode.
          await client.query(`SET LOCAL statement_timeout = ${RECENT_TIMEOUT_MS}`);
          const result = await client.query(
            `SELECT d.subscription_id AS id, count(*)::int AS attempts,
               (count(*) FILTER (WHERE a.status BETWEEN 200 AND 299))::int AS succeeded
             FROM webhook_delivery_attempts a
             JOIN webhook_deliveries d ON d.id = a.delivery_id
             WHERE a.started_at > now() - make_interval(hours => $2)
               AND d.subscription_id = ANY ($1::bigint[])
             GROUP BY d.subscription_id`,
            [ids, RECENT_HOURS],
          );
          return result.rows;
        });
      } catch (err) {
        // 57014: cancelled by the statement timeout. Rates unknown, the list answers.
        if ((err as { code?: string }).code === "57014")
          return new Map(ids.map((id) => [id, null]));
        throw err;
      }
      for (const r of rows) {
        out.set(Number(r.id), {
          attempts: r.attempts,
          succeeded: r.succeeded,
          success_rate:
            r.attempts > 0 ? Math.round((r.succeeded / r.attempts) * 10_000) / 10_000 : null,
        });
      }
      return out;
    },
  };
}

export type AttemptViews = ReturnType<typeof makeAttemptViews>;
