// A strict "at most N calls in any 60-second window" limiter (a sliding log in a ring
// buffer), plus a pause the target can impose (429, or X-Rate-Limit-Remaining: 0).
// A token bucket would allow up to 2N in a window, which ShipStation would answer with 429.

const WINDOW_MS = 60_000;

export interface RateLimiter {
  /**
   * Takes a slot now and returns 0, or returns how many ms to wait before one frees up
   * (taking nothing). Callers wait and ask again, or give their work back if it is long.
   */
  tryTake(now?: number): number;
  /** The target said to stop until `untilMs` (epoch ms); extends, never shortens, a pause. */
  pauseUntil(untilMs: number): void;
  /** Epoch ms until which calls are paused by the target, or 0. */
  pausedUntil(): number;
  setLimit(perMinute: number): void;
}

export function makeRateLimiter(perMinute: number): RateLimiter {
  let limit = perMinute;
  // Send times of the last `limit` calls, oldest at `head` once the ring is full.
  let ring: number[] = [];
  let head = 0;
  let pause = 0;

  return {
    tryTake(now = Date.now()) {
      if (pause > now) return pause - now;
      if (ring.length < limit) {
        ring.push(now);
        return 0;
      }
      const oldest = ring[head] ?? 0;
      if (oldest + WINDOW_MS > now) return oldest + WINDOW_MS - now;
      ring[head] = now;
      head = (head + 1) % limit;
      return 0;
    },
    pauseUntil(untilMs) {
      pause = Math.max(pause, untilMs);
    },
    pausedUntil() {
      return pause > Date.now() ? pause : 0;
    },
    setLimit(perMinute) {
      if (perMinute === limit) return;
      // Keep the newest sends, oldest first, so the window stays honest across a change.
      const ordered = [...ring.slice(head), ...ring.slice(0, head)];
      ring = ordered.slice(-perMinute);
      head = 0;
      limit = perMinute;
      if (ring.length === limit) head = 0;
    },
  };
}
