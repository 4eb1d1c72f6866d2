// The contract between the generic reactor (listener, drainer, poll) and one kind of
// work. A third workload is a new folder implementing this, not edits everywhere.
import type { ClaimedRow, LeaseQueue, Outcome } from "./lease-queue.js";

export type WakeReason =
  | "notify"
  | "wal"
  | "poll"
  | "reconnect"
  | "timer"
  | "config"
  | "start"
  | "retry";
export const WAKE_REASONS: readonly WakeReason[] = [
  "notify",
  "wal",
  "poll",
  "reconnect",
  "timer",
  "config",
  "start",
  "retry",
];

/** One entry of /health's checks, contributed by a workload (credentials, a pause…). */
export interface WorkloadCheck {
  /** Key suffix: `uploads:credentials`. */
  name: string;
  status: "pass" | "warn" | "fail";
  observedValue?: unknown;
  output?: string;
}

export interface Workload<Row extends ClaimedRow = ClaimedRow> {
  /** Metric label and log name: 'uploads' or 'deliveries'. */
  name: string;
  /** NOTIFY channel whose messages wake this workload. */
  channel: string;
  queue: LeaseQueue<Row>;
  /** False stops new claims (settings flag, missing credentials); in-flight work finishes. */
  enabled(): boolean;
  /** Why enabled() is false, for /status and /health. */
  disabledReason(): string | null;
  /** Rows handed to one process() call. */
  unitSize(): number;
  /** process() calls in flight at once. */
  concurrency(): number;
  /**
   * Waits after failed attempt 1, 2, …; once exhausted the row ends failed. A row whose
   * process crashes or hangs every time ends failed after this many attempts plus one.
   */
  retryScheduleSeconds(): readonly number[];
  /**
   * Rows to hold claimed beyond what the free units take at once, so a unit that finishes
   * starts its successor without waiting on a claim, and claims come in batches even when
   * a unit is one row (deliveries). They are leased like rows in flight. 0 when absent.
   */
  claimAhead?(): number;
  /**
   * Whether a claimed row may start now; one that may not (its endpoint is at its fair
   * share) waits among the claimed rows while others start. `waiting` are the rows
   * claimed and not started, this one included. Every row is admitted when absent.
   */
  admit?(row: Row, waiting: readonly Row[]): boolean;
  /**
   * Keys (the queue's excludeColumn) not to claim right now, given the rows claimed and
   * waiting: endpoints that already hold their share here. `ahead` is how many rows this
   * claim may hold beyond the free units (0 for a claim that looks for other keys).
   */
  excludedKeys?(waiting: readonly Row[], ahead: number): number[];
  /** Epoch ms before which nothing should be claimed (a rate limit, a credentials back-off), or 0. */
  pausedUntil(): number;
  /** Why the workload is paused, while pausedUntil() is in the future. */
  pauseReason?(): string | null;
  /**
   * Does the work for a unit of claimed rows and says what became of each. Must not
   * throw for a row's own fault; a throw goes through the retry schedule for every row
   * of the unit.
   */
  process(rows: Row[]): Promise<Outcome[]>;
  /** Extra /health checks (credentials, pauses), if any. */
  checks?(): WorkloadCheck[];
  /** Periodic housekeeping run by the safety poll (retention), if any. */
  maintain?(): Promise<void>;
}
