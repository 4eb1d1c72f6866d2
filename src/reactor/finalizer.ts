// Records what became of claimed rows (the finalize half of the lease pattern), for one
// drainer. Group commit: while one batched UPDATE is in flight, units that finish queue
// up and go together in the next one; nothing waits when nothing is in flight.
// Rows an application transaction holds locked are not waited on: the rest of the batch
// is recorded, and those rows are tried again a little later, for as long as we still
// hold their lease. A database error is retried while the lease lasts; after that the
// rows are forgotten and their leases expire (at-least-once: they run again).
import type { Logger } from "../logger.js";
import { exponentialBackoff } from "./backoff.js";
import type { ClaimedRow, LeaseQueue, Outcome } from "./lease-queue.js";

/** Rows locked by another transaction are retried this often at first… */
const LOCKED_RETRY_BASE_MS = 200;
/** …backing off to this. */
const LOCKED_RETRY_CAP_MS = 5_000;
/** A row still locked after this long is given up on: its lease expires and it runs again. */
const LOCKED_GIVE_UP_MS = 10 * 60 * 1000;

export interface FinalizerOptions<Row extends ClaimedRow> {
  queue: LeaseQueue<Row>;
  owner: string;
  /** How long a lease lasts now; database errors are retried within it. */
  leaseMs: () => number;
  logger: Logger;
  /** Outcomes now recorded in the table. */
  onRecorded(outcomes: Outcome[]): void;
  /** Rows that left this process without a recorded outcome (lost lease, given up). */
  onDropped(ids: number[]): void;
}

export interface Finalizer {
  /** Queues outcomes; resolves once they were tried (recorded, or set aside for later). */
  submit(outcomes: Outcome[]): Promise<void>;
  /** Rows set aside because another transaction holds them locked, and since when. */
  waiting(): { rows: number; since: Date | null };
  /** Stops retrying set-aside rows (shutdown); their leases are released or expire. */
  stop(): void;
}

export function makeFinalizer<Row extends ClaimedRow>(options: FinalizerOptions<Row>): Finalizer {
  const { queue, owner, logger: log } = options;
  const queued: Array<{ outcomes: Outcome[]; done: () => void }> = [];
  /** Outcomes whose rows were locked by someone else, by id, with when that was first seen. */
  const setAside = new Map<number, { outcome: Outcome; since: number }>();
  let flushing = false;
  let stopped = false;
  let retryTimer: NodeJS.Timeout | null = null;
  let retryInFlight = false;
  let lockedRound = 0;

  function drop(ids: number[], why: string) {
    if (ids.length === 0) return;
    for (const id of ids) setAside.delete(id);
    queue.forget(ids);
    options.onDropped(ids);
    log.warn({ rows: ids.length, ids: ids.slice(0, 20) }, why);
  }

  /** One batched finalize, retried on database errors while the lease lasts. */
  async function record(outcomes: Outcome[]) {
    const deadline = Date.now() + options.leaseMs();
    for (let attempt = 0; ; attempt++) {
      try {
        const result = await queue.finalize(owner, outcomes);
        const byId = new Map(outcomes.map((o) => [o.id, o]));
        const recorded = result.done.map((id) => byId.get(id) as Outcome);
        for (const id of result.done) setAside.delete(id);
        if (recorded.length > 0) options.onRecorded(recorded);
        const now = Date.now();
        for (const id of result.locked) {
          const outcome = byId.get(id) as Outcome;
          setAside.set(id, { outcome, since: setAside.get(id)?.since ?? now });
        }
        drop(
          result.lost,
          "rows were deleted, or taken over by another reactor, before their results were recorded",
        );
        return;
      } catch (err) {
        if (Date.now() > deadline || stopped) {
          drop(
            outcomes.map((o) => o.id),
            `could not record results (${(err as Error).message}); the leases will expire and these rows will run again`,
          );
          return;
        }
        await new Promise((r) => setTimeout(r, exponentialBackoff(attempt, 250, 5_000)));
      }
    }
  }

  async function flush() {
    flushing = true;
    try {
      while (queued.length > 0) {
        const batch = queued.splice(0);
        await record(batch.flatMap((b) => b.outcomes));
        for (const b of batch) b.done();
      }
    } finally {
      flushing = false;
    }
    scheduleLockedRetry();
  }

  function scheduleLockedRetry() {
    if (setAside.size === 0) lockedRound = 0;
    if (stopped || retryTimer || retryInFlight || setAside.size === 0) return;
    const delay = exponentialBackoff(lockedRound++, LOCKED_RETRY_BASE_MS, LOCKED_RETRY_CAP_MS);
    retryTimer = setTimeout(() => {
      retryTimer = null;
      const now = Date.now();
      const retry: Outcome[] = [];
      const expired: number[] = [];
      for (const [id, entry] of setAside) {
        if (now - entry.since > LOCKED_GIVE_UP_MS) expired.push(id);
        else retry.push(entry.outcome);
      }
      drop(expired, "rows stayed locked by another transaction; giving up on recording them");
      if (retry.length === 0) return;
      retryInFlight = true;
      void submit(retry).then(() => {
        retryInFlight = false;
        scheduleLockedRetry();
      });
    }, delay);
    retryTimer.unref?.();
  }

  function submit(outcomes: Outcome[]): Promise<void> {
    return new Promise<void>((done) => {
      queued.push({ outcomes, done });
      if (!flushing) void flush();
    });
  }

  return {
    submit,
    waiting() {
      let since: number | null = null;
      for (const entry of setAside.values()) since = Math.min(since ?? entry.since, entry.since);
      return { rows: setAside.size, since: since === null ? null : new Date(since) };
    },
    stop() {
      stopped = true;
      if (retryTimer) clearTimeout(retryTimer);
      retryTimer = null;
      const ids = [...setAside.keys()];
      setAside.clear();
      if (ids.length > 0) drop(ids, "shutdown with rows still locked by another transaction");
    },
  };
}
