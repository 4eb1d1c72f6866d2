// The drain loop (DESIGN.md §3.4), written once for every workload: a wake-up claims
// batches under a lease until nothing is due, runs them with bounded concurrency outside
// any transaction, finalizes each unit, then arms a timer for the next due row.
// One loop per workload per process; wake-ups during a drain coalesce into one more pass.
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import { exponentialBackoff, sleep } from "./backoff.js";
import type { ClaimedRow, Outcome, QueueStats } from "./lease-queue.js";
import type { WakeReason, Workload } from "./workload.js";

/** Never arm a timer further out than this; the safety poll covers longer waits. */
const MAX_TIMER_MS = 60 * 60 * 1000;
/** After a drain, the queue stats query runs at most this often (the poll runs it too). */
const STATS_EVERY_MS = 5_000;
/** A handler that throws (a bug, not a row's fault) retries its rows after this long. */
const HANDLER_CRASH_RETRY_MS = 30_000;

export interface DrainerOptions<Row extends ClaimedRow> {
  workload: Workload<Row>;
  owner: string;
  leaseSeconds: () => number;
  logger: Logger;
  metrics: Metrics;
  /** Test and bench hook: called when rows are claimed and when a unit is finalized. */
  onEvent?: (event: DrainerEvent) => void;
}

export type DrainerEvent =
  /** Rows claimed and about to be handed to the handler. */
  | { type: "claimed"; workload: string; ids: number[] }
  | { type: "finalized"; workload: string; outcomes: Outcome[] };

export interface DrainerState {
  running: boolean;
  inFlightRows: number;
  lastWakeAt: Date | null;
  lastWakeReason: WakeReason | null;
  /** When a NOTIFY last woke this workload. */
  lastNotifyAt: Date | null;
  lastStats: QueueStats | null;
  lastError: string | null;
}

export interface Drainer {
  wake(reason: WakeReason): void;
  /**
   * Takes fresh queue stats (its own, or the safety poll's): records them for /status and
   * the gauges, then wakes now if something is due, or arms the timer for when it will be.
   */
  applyStats(stats: QueueStats, reason: WakeReason): void;
  state(): DrainerState;
  /** Stops claiming, waits up to graceMs for in-flight units, then releases held leases. */
  stop(graceMs: number): Promise<void>;
}

export function makeDrainer<Row extends ClaimedRow>(options: DrainerOptions<Row>): Drainer {
  const { workload, owner, logger, metrics } = options;
  const log = logger.child({ workload: workload.name });
  const label = { workload: workload.name };

  let loop: Promise<void> | null = null;
  let again = false;
  let stopping = false;
  let errorStreak = 0;
  let timer: NodeJS.Timeout | null = null;
  let timerAt = 0;
  let inFlightRows = 0;
  let lastStatsAt = 0;
  let futureWork = false;
  let wakeWaiter: (() => void) | null = null;
  const units = new Set<Promise<void>>();
  const state: Omit<DrainerState, "running" | "inFlightRows"> = {
    lastWakeAt: null,
    lastWakeReason: null,
    lastNotifyAt: null,
    lastStats: null,
    lastError: null,
  };

  function wake(reason: WakeReason) {
    if (stopping) return;
    metrics.wakeups.inc({ ...label, reason });
    state.lastWakeAt = new Date();
    // A timer drain takes only what is due by now; later rows need the next timer,
    // which the stats query at the end of the drain arms.
    if (reason === "timer") futureWork = true;
    state.lastWakeReason = reason;
    if (reason === "notify") state.lastNotifyAt = state.lastWakeAt;
    if (loop) {
      again = true;
      wakeWaiter?.();
      return;
    }
    loop = drain().finally(() => {
      loop = null;
      if (again && !stopping) wake("retry");
    });
  }

  function armTimer(atMs: number) {
    if (stopping) return;
    const delay = Math.min(Math.max(0, atMs - Date.now()), MAX_TIMER_MS);
    const target = Date.now() + delay;
    if (timer && timerAt <= target) return; // an earlier timer is already armed
    if (timer) clearTimeout(timer);
    timerAt = target;
    timer = setTimeout(() => {
      timer = null;
      timerAt = 0;
      wake("timer");
    }, delay);
    timer.unref?.();
  }

  function applyStats(stats: QueueStats, reason: WakeReason) {
    state.lastStats = stats;
    metrics.backlog.set(label, stats.backlog);
    metrics.oldestPendingAge.set(label, stats.oldestDueAgeSeconds);
    if (!workload.enabled() || !stats.nextDueAt) return;
    if (stats.nextDueAt.getTime() <= Date.now()) wake(reason);
    else armTimer(stats.nextDueAt.getTime());
  }

  async function finalizeUnit(rows: Row[], outcomes: Outcome[]) {
    // Retry the finalize while our lease lasts; after that another replica may own the rows.
    const deadline = Date.now() + options.leaseSeconds() * 1000;
    for (let attempt = 0; ; attempt++) {
      try {
        await workload.queue.finalize(owner, outcomes);
        return;
      } catch (err) {
        if (Date.now() > deadline || stopping) {
          workload.queue.forget(rows.map((r) => r.id));
          log.error(
            { err: (err as Error).message, rows: rows.length },
            "could not record results; the leases will expire and these rows will be retried",
          );
          return;
        }
        await sleep(exponentialBackoff(attempt, 250, 5_000));
      }
    }
  }

  // Group commit for finalizes: while one batched UPDATE is in flight, units that finish
  // queue up and go together in the next one. No waiting is added when nothing is in flight.
  const finalQueue: Array<{ rows: Row[]; outcomes: Outcome[]; done: () => void }> = [];
  let flushing = false;

  function finalizeBatched(rows: Row[], outcomes: Outcome[]): Promise<void> {
    return new Promise<void>((done) => {
      finalQueue.push({ rows, outcomes, done });
      if (!flushing) void flushFinalizes();
    });
  }

  async function flushFinalizes() {
    flushing = true;
    try {
      while (finalQueue.length > 0) {
        const batch = finalQueue.splice(0);
        await finalizeUnit(
          batch.flatMap((b) => b.rows),
          batch.flatMap((b) => b.outcomes),
        );
        for (const b of batch) b.done();
      }
    } finally {
      flushing = false;
    }
  }

  function startUnit(rows: Row[]) {
    inFlightRows += rows.length;
    metrics.inFlight.inc(label, rows.length);
    const unit = (async () => {
      const end = metrics.processing.startTimer(label);
      let outcomes: Outcome[];
      try {
        outcomes = await workload.process(rows);
      } catch (err) {
        log.error({ err }, "handler threw; its rows will be retried");
        const at = new Date(Date.now() + HANDLER_CRASH_RETRY_MS);
        const error = `internal error: ${(err as Error).message}`.slice(0, 1000);
        outcomes = rows.map((r) => ({ id: r.id, kind: "retry", at, error }));
      }
      end();
      await finalizeBatched(rows, outcomes);
      for (const o of outcomes) {
        // A retry or a hand-back is due again at `at`: be awake for it.
        if (o.kind === "retry" || o.kind === "defer") {
          armTimer(o.at.getTime());
          // Only the earliest timer is kept; the stats query at the end of the drain
          // finds the next due row after it.
          futureWork = true;
        }
        if (o.kind === "defer") metrics.deferred.inc(label);
        else
          metrics.completed.inc({ ...label, outcome: o.kind === "cancel" ? "cancelled" : o.kind });
      }
      options.onEvent?.({ type: "finalized", workload: workload.name, outcomes });
    })().finally(() => {
      inFlightRows -= rows.length;
      metrics.inFlight.dec(label, rows.length);
      units.delete(unit);
    });
    units.add(unit);
  }

  /** Resolves when a unit finishes or a wake-up arrives, whichever is first. */
  function nextEvent(): Promise<unknown> {
    return Promise.race([...units, new Promise<void>((resolve) => (wakeWaiter = resolve))]).finally(
      () => {
        wakeWaiter = null;
      },
    );
  }

  async function drain() {
    try {
      while (!stopping) {
        again = false;
        if (!workload.enabled()) break;
        const paused = workload.pausedUntil();
        if (paused > Date.now()) {
          armTimer(paused);
          break;
        }
        const free = workload.concurrency() - units.size;
        if (free <= 0) {
          await nextEvent();
          continue;
        }
        const want = free * workload.unitSize();
        const excluded = workload.excludedKeys?.() ?? [];
        const rows = await workload.queue.claim(owner, want, options.leaseSeconds(), excluded);
        errorStreak = 0;
        state.lastError = null;
        if (rows.length > 0) {
          options.onEvent?.({
            type: "claimed",
            workload: workload.name,
            ids: rows.map((r) => r.id),
          });
          metrics.claimed.inc(label, rows.length);
          for (const row of rows) metrics.pickupLatency.observe(label, row.pickup_lag);
          for (let i = 0; i < rows.length; i += workload.unitSize()) {
            startUnit(rows.slice(i, i + workload.unitSize()));
          }
        }
        if (rows.length < want) {
          // Nothing more was claimable. New rows announce themselves (NOTIFY sets
          // `again`, also for rows a finalize hands back as due now), so without a
          // wake-up there is no point in claiming again; just let the units finish.
          // Rows held back because their endpoint was full are the exception: a
          // finishing unit frees a slot, so look again then.
          if (excluded.length === 0) {
            while (!again && units.size > 0 && !stopping) await nextEvent();
            if (!again) break;
          } else if (!again && units.size > 0) {
            await nextEvent();
          }
        }
      }
    } catch (err) {
      metrics.drainErrors.inc(label);
      state.lastError = (err as Error).message;
      const delay = exponentialBackoff(errorStreak++, 500, 30_000);
      log.warn({ err: state.lastError, retryInMs: delay }, "drain failed; backing off");
      armTimer(Date.now() + delay);
      return;
    }
    if (stopping) return;
    // The stats query (next due row, gauges, leases of crashed replicas) runs when rows
    // were scheduled for later during this drain, else at most every STATS_EVERY_MS
    // here; the safety poll runs it too.
    if (futureWork || Date.now() - lastStatsAt >= STATS_EVERY_MS) {
      futureWork = false;
      await refreshStats();
    }
  }

  async function refreshStats() {
    lastStatsAt = Date.now();
    try {
      applyStats(await workload.queue.stats(), "timer");
    } catch (err) {
      log.warn({ err: (err as Error).message }, "could not read queue stats");
    }
  }

  return {
    wake,
    applyStats,
    state: () => ({ ...state, running: loop !== null, inFlightRows }),
    async stop(graceMs) {
      stopping = true;
      if (timer) clearTimeout(timer);
      const settled = Promise.all([loop, ...units]);
      const graceOver = new AbortController();
      const timedOut = await Promise.race([
        settled.then(() => false),
        sleep(graceMs, graceOver.signal).then(() => true),
      ]);
      graceOver.abort();
      if (timedOut) log.warn({ inFlightRows }, "shutdown grace ran out with work in flight");
      try {
        const released = await workload.queue.release(owner);
        if (released > 0) log.info({ released }, "released unfinished leases");
      } catch (err) {
        log.warn({ err: (err as Error).message }, "could not release leases; they will expire");
      }
    },
  };
}
