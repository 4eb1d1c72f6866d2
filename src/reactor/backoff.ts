// Delay arithmetic shared by every retry in the process (reconnects, drain-loop errors,
// both workloads' retry schedules) and the small timing helpers built on it.

/** Scales `ms` by a random factor in [1 - ratio, 1 + ratio]. */
export function jitter(ms: number, ratio = 0.2): number {
  return Math.max(0, Math.round(ms * (1 - ratio + Math.random() * 2 * ratio)));
}

/**
 * Capped exponential backoff with ±20 % jitter: attempt 0 → base, then doubling up to cap.
 * With base 250 ms and cap 30 s: ~0.25, 0.5, 1, 2, 4, 8, 16, 30, 30 … seconds.
 */
export function exponentialBackoff(attempt: number, baseMs: number, capMs: number): number {
  // The cap holds after jitter too: a documented "at most every 5 s" is never 5.7 s.
  return Math.min(capMs, jitter(Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30))));
}

/**
 * The delay before the next attempt after `attemptsMade` failed attempts, from a schedule
 * of seconds (entry i is the wait after attempt i+1), with ±20 % jitter; null when the
 * schedule is exhausted and the row should end failed.
 */
export function scheduledDelayMs(
  scheduleSeconds: readonly number[],
  attemptsMade: number,
): number | null {
  const seconds = scheduleSeconds[attemptsMade - 1];
  return seconds === undefined ? null : jitter(seconds * 1000);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Rejects with `message` if `promise` has not settled within `ms`; the timer never outlives it. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(message)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
