// Subscription management for the admin API (and later the CLI). Secrets are generated
// here, returned once on create and rotate, and never selected by list or get.
import { randomBytes } from "node:crypto";
import type { Pool } from "../db/pool.js";

/** How long a rotated-out secret keeps signing, so receivers can switch over. */
export const DEFAULT_ROTATION_GRACE_HOURS = 24;

/** `whsec_` + base64 of 32 random bytes, the Standard Webhooks secret format. */
export function generateSecret(): string {
  return `whsec_${randomBytes(32).toString("base64")}`;
}

/** The public columns: everything but the secrets themselves. */
const PUBLIC_COLUMNS = `id::int AS id, url, event_types, enabled, disabled_reason, description,
  previous_secret IS NOT NULL AND (previous_secret_expires_at IS NULL OR previous_secret_expires_at > now())
    AS rotation_in_progress,
  previous_secret_expires_at, created_at, updated_at`;

export interface SubscriptionInput {
  url: string;
  event_types?: string[];
  secret?: string;
  enabled?: boolean;
  description?: string | null;
}

export interface SubscriptionPatch {
  url?: string;
  event_types?: string[];
  enabled?: boolean;
  description?: string | null;
}

export function makeSubscriptions(pool: Pool) {
  return {
    async create(input: SubscriptionInput) {
      const secret = input.secret ?? generateSecret();
      const { rows } = await pool.query(
        `INSERT INTO webhook_subscriptions (url, secret, event_types, enabled, description)
         VALUES ($1, $2, $3, $4, $5) RETURNING ${PUBLIC_COLUMNS}`,
        [
          input.url,
          secret,
          input.event_types ?? [],
          input.enabled ?? true,
          input.description ?? null,
        ],
      );
      return { ...rows[0], secret };
    },
    async list(page: { limit: number; afterId?: number; enabled?: boolean }) {
      const { rows } = await pool.query(
        `SELECT ${PUBLIC_COLUMNS} FROM webhook_subscriptions
         WHERE id > $1 AND ($2::boolean IS NULL OR enabled = $2) ORDER BY id LIMIT $3`,
        [page.afterId ?? 0, page.enabled ?? null, page.limit + 1],
      );
      const items = rows.slice(0, page.limit);
      return { items, nextAfterId: rows.length > page.limit ? (items.at(-1)?.id ?? null) : null };
    },
    async get(id: number) {
      const { rows } = await pool.query(
        `SELECT ${PUBLIC_COLUMNS} FROM webhook_subscriptions WHERE id = $1`,
        [id],
      );
      return rows[0] ?? null;
    },
    async update(id: number, patch: SubscriptionPatch) {
      const { rows } = await pool.query(
        `UPDATE webhook_subscriptions SET
           url = coalesce($2, url),
           event_types = coalesce($3, event_types),
           enabled = coalesce($4, enabled),
           description = CASE WHEN $6 THEN $5 ELSE description END,
           disabled_reason = CASE
             WHEN $4 IS TRUE THEN NULL
             WHEN $4 IS FALSE AND enabled THEN 'disabled by an operator'
             ELSE disabled_reason END
         WHERE id = $1 RETURNING ${PUBLIC_COLUMNS}`,
        [
          id,
          patch.url ?? null,
          patch.event_types ?? null,
          patch.enabled ?? null,
          patch.description ?? null,
          "description" in patch,
        ],
      );
      return rows[0] ?? null;
    },
    async remove(id: number): Promise<boolean> {
      const res = await pool.query("DELETE FROM webhook_subscriptions WHERE id = $1", [id]);
      return (res.rowCount ?? 0) > 0;
    },
    /** New secret now; the old one keeps signing (as a second signature) for the grace period. */
    async rotate(id: number, graceHours = DEFAULT_ROTATION_GRACE_HOURS) {
      const secret = generateSecret();
      const { rows } = await pool.query(
        `UPDATE webhook_subscriptions SET previous_secret = secret, secret = $2,
           previous_secret_expires_at = now() + make_interval(hours => $3)
         WHERE id = $1 RETURNING ${PUBLIC_COLUMNS}`,
        [id, secret, graceHours],
      );
      return rows[0] ? { ...rows[0], secret } : null;
    },
  };
}

export type Subscriptions = ReturnType<typeof makeSubscriptions>;
