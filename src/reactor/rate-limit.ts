// A strict "at most N calls in any 60-second window" budget shared by every replica
// through the database (docs/architecture.md, invariant 9), plus a pause the target can
// impose (429, X-Rate-Limit-Remaining: 0) that stops all replicas until it ends.
// The arithmetic lives in sql/040_rate_limits.sql so the budget is taken atomically.
// A token bucket would allow up to 2N in a window, which ShipStation answers with 429.
import type { Pool } from "../db/pool.js";

const WINDOW = "60 seconds";
/** A target-imposed pause is honoured up to this long; a longer reset hint is clamped. */
export const MAX_PAUSE_MS = 5 * 60 * 1000;
/** …and at least this long, so a reset of 0 cannot turn into a busy loop of 429s. */
const MIN_PAUSE_MS = 1_000;

export interface RateLimiter {
  /** The budget's name in reactor_rate_limits. */
  name: string;
  /**
   * Takes a slot now and returns 0, or returns how many ms to wait before one frees up
   * (taking nothing). Callers wait and ask again, or give their work back if it is long.
   */
  take(perMinute: number): Promise<number>;
  /**
   * The target said to stop for `ms`; pauses every replica (clamped to MAX_PAUSE_MS).
   * Returns the pause in force, as epoch ms.
   */
  pause(ms: number): Promise<number>;
  /** Epoch ms until which calls are paused, as last seen by this replica, or 0. */
  pausedUntil(): number;
}

export function makeSharedRateLimiter(pool: Pool, name: string): RateLimiter {
  // The pause as this replica's clock sees it: the database says how long is left,
  // so a skewed host clock cannot stretch or lose it.
  let pausedUntil = 0;
  const seen = (remainingMs: number | null) => {
    pausedUntil = remainingMs && remainingMs > 0 ? Date.now() + remainingMs : 0;
  };
  return {
    name,
    async take(perMinute) {
      const { rows } = await pool.query<{ wait_ms: number; paused_until: Date | null }>(
        "SELECT wait_ms, paused_until FROM reactor_rate_take($1, $2, $3::interval)",
        [name, perMinute, WINDOW],
      );
      const row = rows[0];
      // While paused, the wait is what is left of the pause.
      seen(row?.paused_until ? row.wait_ms : null);
      return Math.ceil(row?.wait_ms ?? 0);
    },
    async pause(ms) {
      const clamped = Math.min(Math.max(MIN_PAUSE_MS, ms), MAX_PAUSE_MS);
      const { rows } = await pool.query<{ remaining: number }>(
        `SELECT extract(epoch FROM reactor_rate_pause($1, $2::double precision) - clock_timestamp())
           * 1000 AS remaining`,
        [name, clamped],
      );
      seen(Number(rows[0]?.remaining ?? 0));
      return pausedUntil;
    },
    pausedUntil: () => (pausedUntil > Date.now() ? pausedUntil : 0),
  };
}
