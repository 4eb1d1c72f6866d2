// The drain loop (docs/architecture.md, invariant 4), written once for every workload: a
// wake-up claims batches under a lease until nothing is due, runs them with bounded
// concurrency outside any transaction, hands the outcomes to the finalizer, then arms a
// timer for the next due row. Leases of rows in flight are renewed, so work that takes
// longer than lease_seconds is not claimed a second time.
// One loop per workload per process; wake-ups during a drain coalesce into one more pass.
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import { exponentialBackoff, sleep } from "./backoff.js";
import { makeFinalizer } from "./finalizer.js";
import { type ClaimedRow, type Outcome, type QueueStats, retryOrFail } from "./lease-queue.js";
import type { WakeReason, Workload } from "./workload.js";

/** Never arm a timer further out than this; the safety poll covers longer waits. */
const MAX_TIMER_MS = 60 * 60 * 1000;
/** After a drain, the queue stats query runs at most this often (the poll runs it too). */
const STATS_EVERY_MS = 5_000;
/**
 * While the workload is disabled or paused, a wake-up refreshes the stats (at most this
 * often) instead of claiming, so backlog and oldest age keep counting the rows that wait.
 */
const HELD_STATS_EVERY_MS = 1_000;
/** A lease renewal that missed rows (locked by an app, or an error) is tried again this soon. */
const RENEW_RETRY_MS = 1_000;
/** A waiting row is not started within this much of its lease's end. */
const LEASE_MARGIN_MS = 1_000;
/** Finished units whose results may wait to be recorded before no new unit starts. */
const MAX_RECORDING_UNITS = 4;
/** Progress is logged as one summary line at most this often while work flows. */
const SUMMARY_EVERY_MS = 5_000;

export interface DrainerOptions<Row extends ClaimedRow> {
  workload: Workload<Row>;
  owner: string;
  leaseSeconds: () => number;
  logger: Logger;
  metrics: Metrics;
  /** Test and bench hook: called when rows are claimed and when outcomes are recorded. */
  onEvent?: (event: DrainerEvent) => void;
}

export type DrainerEvent =
  /** A wake-up arrived (the first step of pickup, for the bench's stage timings). */
  | { type: "woken"; workload: string; reason: WakeReason }
  /** A claim is about to be sent. */
  | { type: "claiming"; workload: string }
  /** Rows claimed and about to be handed to the handler. */
  | { type: "claimed"; workload: string; ids: number[] }
  /** Outcomes recorded in the table. */
  | { type: "finalized"; workload: string; outcomes: Outcome[] };

export interface DrainerState {
  running: boolean;
  inFlightRows: number;
  lastWakeAt: Date | null;
  lastWakeReason: WakeReason | null;
  /** When a NOTIFY last woke this workload. */
  lastNotifyAt: Date | null;
  lastStats: QueueStats | null;
  /** The last drain's database error, while drains keep failing; null once one succeeds. */
  lastError: string | null;
  /** Since when drains have been failing, or null. */
  failingSince: Date | null;
  /** When rows were last claimed or recorded. */
  lastProgressAt: Date | null;
  /** When a claim last ran, whether or not it found rows. */
  lastClaimAt: Date | null;
  /** Finished rows whose results wait for another transaction's row lock. */
  waitingOnLocks: { rows: number; since: Date | null };
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

type Counts = Record<Outcome["kind"], number>;
const zeroCounts = (): Counts => ({ success: 0, retry: 0, failed: 0, cancel: 0, defer: 0 });

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
  let lastStatsAt = 0;
  let futureWork = false;
  let wakeWaiter: (() => void) | null = null;
  /** Claimed rows not yet recorded: their leases are renewed while they are here. */
  const inFlight = new Set<number>();
  const units = new Set<Promise<void>>();
  /** Finalizes of finished units not yet committed, and how many rows they carry. */
  const recording = new Set<Promise<void>>();
  let recordingRows = 0;
  /** Claimed rows not yet handed to a unit (they are in inFlight too, and leased). */
  const waiting: Row[] = [];
  /**
   * When each held row's lease ends, as far as this process knows (claim or last renewal,
   * on its own clock). A waiting row whose lease may have ended is not started: another
   * replica may have it now (renewals failed, say, through a database outage).
   */
  const leaseEnds = new Map<number, number>();
  const state = {
    lastWakeAt: null as Date | null,
    lastWakeReason: null as WakeReason | null,
    lastNotifyAt: null as Date | null,
    lastStats: null as QueueStats | null,
    lastError: null as string | null,
    failingSince: null as Date | null,
    lastProgressAt: null as Date | null,
    lastClaimAt: null as Date | null,
  };
  let summary = { counts: zeroCounts(), since: 0 };
  let summaryTimer: NodeJS.Timeout | null = null;
  let heldStatsTimer: NodeJS.Timeout | null = null;

  function leaveFlight(ids: number[]) {
    for (const id of ids) {
      inFlight.delete(id);
      leaseEnds.delete(id);
    }
    metrics.inFlight.set(label, inFlight.size);
  }

  function logSummary() {
    summaryTimer = null;
    const { counts, since } = summary;
    summary = { counts: zeroCounts(), since: 0 };
    const rows = Object.values(counts).reduce((a, b) => a + b, 0);
    if (rows === 0) return;
    log.info(
      { rows, ...counts, seconds: Number(((Date.now() - since) / 1000).toFixed(1)) },
      `processed ${rows} rows`,
    );
  }

  const finalizer = makeFinalizer({
    queue: workload.queue,
    owner,
    leaseMs: () => options.leaseSeconds() * 1000,
    logger: log,
    onRecorded(outcomes) {
      leaveFlight(outcomes.map((o) => o.id));
      state.lastProgressAt = new Date();
      if (summary.since === 0) summary.since = Date.now();
      const counts = zeroCounts();
      for (const o of outcomes) {
        counts[o.kind]++;
        // A retry or a hand-back is due again at `at`: be awake for it.
        if (o.kind === "retry" || o.kind === "defer") {
          armTimer(o.at.getTime());
          // Only the earliest timer is kept; the stats query at the end of the drain
          // finds the next due row after it.
          futureWork = true;
        }
      }
      // One metric update per kind and batch, not per row.
      for (const [kind, n] of Object.entries(counts) as Array<[Outcome["kind"], number]>) {
        if (n === 0) continue;
        summary.counts[kind] += n;
        if (kind === "defer") metrics.deferred.inc(label, n);
        else
          metrics.completed.inc({ ...label, outcome: kind === "cancel" ? "cancelled" : kind }, n);
      }
      if (!summaryTimer) {
        summaryTimer = setTimeout(logSummary, SUMMARY_EVERY_MS);
        summaryTimer.unref?.();
      }
      options.onEvent?.({ type: "finalized", workload: workload.name, outcomes });
    },
    onDropped: leaveFlight,
  });

  // Leases of rows in flight are extended every third of a lease (as lease_seconds is
  // now: a lowered setting takes effect at the next claim), also while shutting down
  // until they are released, so a call that takes longer than lease_seconds keeps its
  // rows. A row an app holds locked cannot be renewed: it is tried again within a
  // second. A process that hangs stops renewing and its rows become claimable again
  // when the lease runs out.
  let renewTimer: NodeJS.Timeout | null = null;
  let renewAt = 0;
  let renewing = false;
  function scheduleRenewal(delayMs = Math.max(500, (options.leaseSeconds() * 1000) / 3)) {
    if (inFlight.size === 0 || renewing) return;
    const at = Date.now() + delayMs;
    if (renewTimer && renewAt <= at) return;
    if (renewTimer) clearTimeout(renewTimer);
    renewAt = at;
    renewTimer = setTimeout(renewNow, delayMs);
    renewTimer.unref?.();
  }
  async function renewNow() {
    renewTimer = null;
    if (inFlight.size === 0) return;
    renewing = true;
    let next: number | undefined;
    try {
      const ids = [...inFlight];
      const sentAt = Date.now();
      const renewed = await workload.queue.renew(owner, ids, options.leaseSeconds());
      const until = sentAt + options.leaseSeconds() * 1000;
      for (const id of renewed) if (leaseEnds.has(id)) leaseEnds.set(id, until);
      if (renewed.length < ids.filter((id) => inFlight.has(id)).length) next = RENEW_RETRY_MS;
    } catch (err) {
      next = RENEW_RETRY_MS;
      log.warn({ err: (err as Error).message }, "could not renew leases of rows in flight");
    } finally {
      renewing = false;
    }
    scheduleRenewal(next);
  }

  function wake(reason: WakeReason) {
    if (stopping) return;
    metrics.wakeups.inc({ ...label, reason });
    options.onEvent?.({ type: "woken", workload: workload.name, reason });
    state.lastWakeAt = new Date();
    // A timer drain takes only what is due by now; later rows need the next timer,
    // which the stats query at the end of the drain arms.
    if (reason === "timer") futureWork = true;
    state.lastWakeReason = reason;
    if (reason === "notify") state.lastNotifyAt = state.lastWakeAt;
    if (loop) {
      again = true;
      signal();
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
    metrics.oldestPendingAge.set(label, stats.oldestPendingAgeSeconds);
    if (!workload.enabled() || !stats.nextDueAt) return;
    const paused = workload.pausedUntil();
    const dueAt = Math.max(stats.nextDueAt.getTime(), paused);
    if (dueAt <= Date.now()) wake(reason);
    else armTimer(dueAt);
  }

  /** Runs one unit; a handler that throws sends every row through the retry schedule. */
  function startUnit(rows: Row[]) {
    const unit = (async () => {
      const end = metrics.processing.startTimer(label);
      let outcomes: Outcome[];
      try {
        outcomes = await workload.process(rows);
      } catch (err) {
        log.error({ err }, "handler threw; its rows go through the retry schedule");
        const error = `internal error: ${(err as Error).message}`.slice(0, 1000);
        const schedule = workload.retryScheduleSeconds();
        outcomes = rows.map((r) => retryOrFail(r, schedule, error));
      }
      end();
      // A handler that forgot a row would leave it leased until expiry: give it back.
      const answered = new Set(outcomes.map((o) => o.id));
      for (const r of rows) {
        if (!answered.has(r.id)) {
          const error = "internal error: the handler returned no outcome for this row";
          outcomes.push(retryOrFail(r, workload.retryScheduleSeconds(), error));
        }
      }
      record(outcomes);
    })().finally(() => {
      units.delete(unit);
      // Claimed rows start as slots free, also while the loop waits on a claim.
      if (!stopping) startWaiting();
      signal();
    });
    units.add(unit);
  }

  /**
   * Hands a unit's outcomes to the finalizer. The unit's slot is free at once: holding it
   * until the batched UPDATE commits would leave slots idle for a finalize round trip
   * after every request. The rows stay leased (and renewed) until recorded, and at most
   * MAX_RECORDING_UNITS units' worth of rows wait to be recorded before units start again.
   */
  function record(outcomes: Outcome[]) {
    recordingRows += outcomes.length;
    const done = finalizer.submit(outcomes).finally(() => {
      recording.delete(done);
      recordingRows -= outcomes.length;
      signal();
    });
    recording.add(done);
  }

  /** Units that may start now: free slots, unless too many results wait to be recorded. */
  function freeSlots(): number {
    const limit = MAX_RECORDING_UNITS * workload.concurrency() * workload.unitSize();
    if (recordingRows >= limit) return 0;
    return workload.concurrency() - units.size;
  }

  /**
   * Resolves at the next unit finished, results recorded or wake-up. One waiter, resolved
   * by whoever comes first (a race over every unit would cost a callback per unit per wait).
   * The loop checks its conditions and calls this without an await in between, so no
   * event falls in the gap.
   */
  function nextEvent(): Promise<void> {
    return new Promise<void>((resolve) => {
      wakeWaiter = resolve;
    });
  }

  function signal() {
    const waiter = wakeWaiter;
    wakeWaiter = null;
    waiter?.();
  }

  /**
   * Starts units from the claimed rows while units are free, in claim order, skipping
   * rows the workload does not admit yet (they wait; later rows may start).
   */
  function startWaiting() {
    dropExpiredWaiting();
    const size = workload.unitSize();
    while (waiting.length > 0 && freeSlots() > 0) {
      const unit: Row[] = [];
      for (let i = 0; i < waiting.length && unit.length < size; ) {
        const row = waiting[i] as Row;
        if (workload.admit && !workload.admit(row, waiting)) i++;
        else unit.push(...waiting.splice(i, 1));
      }
      if (unit.length === 0) return;
      startUnit(unit);
    }
  }

  /** Forgets waiting rows whose lease may have ended: never sent by two replicas. */
  function dropExpiredWaiting() {
    const now = Date.now() + LEASE_MARGIN_MS;
    // Runs as every unit starts: nothing is allocated unless a lease has run out.
    if (!waiting.some((r) => (leaseEnds.get(r.id) ?? Number.POSITIVE_INFINITY) < now)) return;
    const expired = waiting.filter((r) => (leaseEnds.get(r.id) ?? Number.POSITIVE_INFINITY) < now);
    const ids = new Set(expired.map((r) => r.id));
    waiting.splice(0, waiting.length, ...waiting.filter((r) => !ids.has(r.id)));
    workload.queue.forget([...ids]);
    leaveFlight([...ids]);
    log.warn(
      { rows: ids.size },
      "claimed rows waited past their lease without a renewal; left to whoever claims them next",
    );
  }

  /** Gives the claimed rows not yet started back, due at `at`, without using an attempt. */
  async function handBackWaiting(at: Date) {
    if (waiting.length === 0) return;
    const rows = waiting.splice(0);
    await finalizer.submit(rows.map((r) => ({ id: r.id, kind: "defer" as const, at })));
  }

  async function drain() {
    let held = false;
    // Set when a claim came back short: nothing more is claimable until a wake-up (or,
    // when endpoints were excluded, until a unit finishes and frees one).
    let exhausted = false;
    let retryAfterUnit = false;
    try {
      while (!stopping) {
        // New rows were announced: claim even with every unit busy (below), so another
        // key's rows are seen at once rather than after the rows held here run out.
        const announced = again;
        if (again) exhausted = false;
        again = false;
        if (!workload.enabled()) {
          await handBackWaiting(new Date());
          held = true;
          break;
        }
        const paused = workload.pausedUntil();
        if (paused > Date.now()) {
          await handBackWaiting(new Date(paused));
          armTimer(paused);
          held = true;
          break;
        }
        startWaiting();
        const free = freeSlots();
        const ahead = workload.claimAhead?.() ?? 0;
        let want = 0;
        // With units free after startWaiting, every row still waiting is held back by
        // the workload: claim for the free units (other keys) plus the rows held ahead.
        // With none free, top the rows held ahead up once they are half used.
        // Announced rows with the units busy and enough held: a claim for one round of
        // units, of keys that hold nothing ahead here (the workload's excludedKeys).
        let aheadAllowed = ahead;
        if (!exhausted) {
          if (free > 0) want = free * workload.unitSize() + ahead;
          else if (waiting.length * 2 <= ahead) want = ahead - waiting.length;
          else if (announced && workload.excludedKeys) {
            want = workload.concurrency() * workload.unitSize();
            aheadAllowed = 0;
          }
        }
        if (want > 0) {
          const excluded = workload.excludedKeys?.(waiting, aheadAllowed) ?? [];
          options.onEvent?.({ type: "claiming", workload: workload.name });
          const claimed = await workload.queue.claim(owner, {
            limit: want,
            leaseSeconds: options.leaseSeconds(),
            maxAttempts: workload.retryScheduleSeconds().length + 1,
            exclude: excluded,
          });
          errorStreak = 0;
          state.lastClaimAt = new Date();
          state.lastError = null;
          state.failingSince = null;
          const rows = claimed.filter((r) => !r.abandoned);
          const abandoned = claimed.filter((r) => r.abandoned);
          if (abandoned.length > 0) {
            // The claim already marked them failed: a row that crashes or hangs its process
            // every time must end, not be leased forever.
            metrics.completed.inc({ ...label, outcome: "failed" }, abandoned.length);
            log.error(
              { ids: abandoned.map((r) => r.id).slice(0, 20), rows: abandoned.length },
              "rows failed: their leases expired on every attempt (the process crashed or hung)",
            );
          }
          if (claimed.length > 0) state.lastProgressAt = new Date();
          if (rows.length > 0) {
            options.onEvent?.({
              type: "claimed",
              workload: workload.name,
              ids: rows.map((r) => r.id),
            });
            metrics.claimed.inc(label, rows.length);
            const claimedAt = Date.now();
            const leaseEnd = claimedAt + options.leaseSeconds() * 1000;
            for (const row of rows) {
              inFlight.add(row.id);
              row.claimedAt = claimedAt;
              leaseEnds.set(row.id, leaseEnd);
              metrics.pickupLatency.observe(label, row.pickup_lag);
            }
            metrics.inFlight.set(label, inFlight.size);
            scheduleRenewal();
            waiting.push(...rows);
          }
          if (claimed.length < want) {
            // Nothing more is claimable: new rows announce themselves (NOTIFY sets
            // `again`, also for rows a finalize hands back as due now). Rows held back
            // because their endpoint was full are the exception: a finishing unit frees
            // a slot, so look again then.
            exhausted = true;
            retryAfterUnit = excluded.length > 0;
            // Only the earliest retry timer is armed; before waiting on units that may
            // run long, find the next due row so later retries are not left for the end.
            if (futureWork) {
              futureWork = false;
              await refreshStats();
            }
          }
          if (rows.length > 0 || again) continue;
        }
        if (units.size === 0 && (waiting.length === 0 || recording.size === 0)) {
          if (waiting.length > 0) {
            // Nothing runs, yet the workload admits none of the waiting rows: never
            // hold them here; they come back in a second.
            log.warn({ rows: waiting.length }, "claimed rows not admitted with nothing running");
            await handBackWaiting(new Date(Date.now() + 1_000));
            armTimer(Date.now() + 1_000);
            break;
          }
          if (want === 0 && !exhausted) {
            // No claim this pass: results waiting to be recorded hold new units back
            // (a finalize retrying through a database outage, say). Wait for them; a
            // `continue` here would spin without ever letting them finish.
            if (recording.size === 0) break;
            await nextEvent();
            continue;
          }
          // Units that held endpoints back may have finished during the claim: look again.
          if (!exhausted || retryAfterUnit) {
            exhausted = false;
            retryAfterUnit = false;
            continue;
          }
          if (!again) break;
          continue;
        }
        if (again) continue;
        await nextEvent();
        if (retryAfterUnit) exhausted = false;
      }
    } catch (err) {
      metrics.drainErrors.inc(label);
      state.lastError = (err as Error).message;
      state.failingSince ??= new Date();
      const delay = exponentialBackoff(errorStreak++, 500, 30_000);
      log.warn({ err: state.lastError, retryInMs: delay }, "drain failed; backing off");
      armTimer(Date.now() + delay);
      return;
    }
    if (stopping) return;
    // The stats query (next due row, gauges, leases of crashed replicas) runs when rows
    // were scheduled for later during this drain, else at most every STATS_EVERY_MS
    // here; the safety poll runs it too.
    const sinceStats = Date.now() - lastStatsAt;
    if (futureWork || sinceStats >= STATS_EVERY_MS || (held && sinceStats >= HELD_STATS_EVERY_MS)) {
      futureWork = false;
      await refreshStats();
    } else if (held && !heldStatsTimer) {
      // A burst of wake-ups while held costs one stats query a second, the last one included.
      heldStatsTimer = setTimeout(() => {
        heldStatsTimer = null;
        if (!stopping) void refreshStats();
      }, HELD_STATS_EVERY_MS - sinceStats);
      heldStatsTimer.unref?.();
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
    state: () => ({
      ...state,
      running: loop !== null,
      inFlightRows: inFlight.size,
      waitingOnLocks: finalizer.waiting(),
    }),
    async stop(graceMs) {
      stopping = true;
      if (timer) clearTimeout(timer);
      const settled = (async () => {
        await Promise.all([loop, ...units]);
        while (recording.size > 0) await Promise.all([...recording]);
      })();
      const graceOver = new AbortController();
      const timedOut = await Promise.race([
        settled.then(() => false),
        sleep(graceMs, graceOver.signal).then(() => true),
      ]);
      graceOver.abort();
      // Claimed rows that never started go back without using an attempt.
      const handBackOver = new AbortController();
      await Promise.race([handBackWaiting(new Date()), sleep(2_000, handBackOver.signal)]);
      handBackOver.abort();
      if (timedOut)
        log.warn({ inFlightRows: inFlight.size }, "shutdown grace ran out with work in flight");
      finalizer.stop();
      inFlight.clear();
      if (renewTimer) clearTimeout(renewTimer);
      if (heldStatsTimer) clearTimeout(heldStatsTimer);
      if (summaryTimer) {
        clearTimeout(summaryTimer);
        logSummary();
      }
      try {
        const released = await workload.queue.release(owner);
        if (released > 0) log.info({ released }, "released unfinished leases");
      } catch (err) {
        log.warn({ err: (err as Error).message }, "could not release leases; they will expire");
      }
    },
  };
}
