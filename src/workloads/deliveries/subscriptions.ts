// Subscription management for the admin API and the CLI: the input rules both apply,
// and the statements. Secrets are generated here, returned once on create and rotate,
// and never selected by list or get. A value the database refuses comes back as a
// SubscriptionInputError in words, never as PostgreSQL's text.
import { randomBytes } from "node:crypto";
import pg from "pg";
import type { Pool } from "../../db/pool.js";

/**
 * The input rules, as JSON-schema patterns (the admin API's schemas use them) and as the
 * checks the CLI runs, so both refuse the same values. Whitespace and control characters
 * (NUL above all: PostgreSQL cannot store it) are refused anywhere in a URL.
 */
export const SUBSCRIPTION_RULES = {
  urlPattern:
    "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s\\u0000-\\u001f\\u007f/?#]+[^\\s\\u0000-\\u001f\\u007f]*$",
  urlMaxLength: 2048,
  eventTypePattern: "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*(\\.\\*)?$",
  eventTypeMaxLength: 200,
  eventTypesMax: 100,
  descriptionMaxLength: 500,
  secretPattern: "^whsec_[A-Za-z0-9+/]{32,88}={0,2}$",
} as const;

/** A refused subscription value; `statusCode` makes the status server answer 400. */
export class SubscriptionInputError extends Error {
  override name = "SubscriptionInputError";
  readonly statusCode = 400;
}

const urlRule = new RegExp(SUBSCRIPTION_RULES.urlPattern, "u");
const eventTypeRule = new RegExp(SUBSCRIPTION_RULES.eventTypePattern, "u");

/** The first problem with `input` in words naming the field, or null (used by the CLI). */
export function subscriptionInputProblem(input: SubscriptionPatch): string | null {
  const r = SUBSCRIPTION_RULES;
  if (input.url !== undefined) {
    if (input.url.length > r.urlMaxLength)
      return `url must be at most ${r.urlMaxLength} characters`;
    if (!urlRule.test(input.url) || !URL.canParse(input.url))
      return "url must be an http:// or https:// URL without spaces or control characters";
    const parsed = new URL(input.url);
    if (parsed.username || parsed.password)
      return "url must not contain user:password@ (it would be stored and shown in plain text, and is never sent)";
  }
  if (input.event_types !== undefined) {
    if (input.event_types.length > r.eventTypesMax)
      return `event types must be at most ${r.eventTypesMax}`;
    for (const t of input.event_types) {
      if (t.length > r.eventTypeMaxLength || !eventTypeRule.test(t))
        return `event type ${JSON.stringify(t)} must be a dot-separated name (order.shipped) or a prefix with .* (order.*)`;
    }
    if (new Set(input.event_types).size !== input.event_types.length)
      return "event types must not repeat";
  }
  if (typeof input.description === "string") {
    if (input.description.length > r.descriptionMaxLength)
      return `description must be at most ${r.descriptionMaxLength} characters`;
    if (input.description.includes("\u0000")) return "description must not contain NUL characters";
  }
  return null;
}

/**
 * A value PostgreSQL refused, in words. Check constraints on webhook_subscriptions are
 * named for what they expect (url_must_be_http_or_https), so the name is the message.
 */
function refusedInput(err: unknown): never {
  if (!(err instanceof pg.DatabaseError)) throw err;
  const code = err.code ?? "";
  if (code === "23514" && err.constraint)
    throw new SubscriptionInputError(`refused: ${err.constraint.replaceAll("_", " ")}`);
  if (code === "22021" || code === "22P05")
    throw new SubscriptionInputError(
      "refused: a value contains a character PostgreSQL cannot store (NUL)",
    );
  if (code.startsWith("22") || code.startsWith("23"))
    throw new SubscriptionInputError(
      `refused: a value does not fit the subscriptions table${err.constraint ? ` (rule ${err.constraint.replaceAll("_", " ")})` : ""}`,
    );
  throw err;
}

/** How long a rotated-out secret keeps signing, so receivers can switch over. */
export const DEFAULT_ROTATION_GRACE_HOURS = 24;

/** `whsec_` + base64 of 32 random bytes, the Standard Webhooks secret format. */
export function generateSecret(): string {
  return `whsec_${randomBytes(32).toString("base64")}`;
}

/** A bigint id as a JSON number (ids stay below 2^53: the API refuses larger ones). */
const withNumericId = <T extends { id: unknown }>(row: T) => ({ ...row, id: Number(row.id) });

/** The public columns: everything but the secrets themselves. */
const PUBLIC_COLUMNS = `id, url, event_types, enabled, disabled_reason, description,
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
      const { rows } = await pool
        .query(
          `INSERT INTO webhook_subscriptions (url, secret, event_types, enabled, description)
           VALUES ($1, $2, $3, $4, $5) RETURNING ${PUBLIC_COLUMNS}`,
          [
            input.url,
            secret,
            input.event_types ?? [],
            input.enabled ?? true,
            input.description ?? null,
          ],
        )
        .catch(refusedInput);
      return { ...withNumericId(rows[0]), secret };
    },
    async list(page: { limit: number; afterId?: number; enabled?: boolean }) {
      const { rows } = await pool.query(
        `SELECT ${PUBLIC_COLUMNS} FROM webhook_subscriptions
         WHERE id > $1 AND ($2::boolean IS NULL OR enabled = $2) ORDER BY id LIMIT $3`,
        [page.afterId ?? 0, page.enabled ?? null, page.limit + 1],
      );
      const items = rows.slice(0, page.limit).map(withNumericId);
      return { items, nextAfterId: rows.length > page.limit ? (items.at(-1)?.id ?? null) : null };
    },
    async get(id: number) {
      const { rows } = await pool.query(
        `SELECT ${PUBLIC_COLUMNS} FROM webhook_subscriptions WHERE id = $1`,
        [id],
      );
      return rows[0] ? withNumericId(rows[0]) : null;
    },
    async update(id: number, patch: SubscriptionPatch) {
      const { rows } = await pool
        .query(
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
        )
        .catch(refusedInput);
      return rows[0] ? withNumericId(rows[0]) : null;
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
      return rows[0] ? { ...withNumericId(rows[0]), secret } : null;
    },
  };
}

export type Subscriptions = ReturnType<typeof makeSubscriptions>;
