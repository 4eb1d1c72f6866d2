// The contract between the generic reactor (listener, drainer, poll) and one kind of
// work. A third workload is a new folder implementing this, not edits everywhere.
import type { ClaimedRow, LeaseQueue, Outcome } from "./lease-queue.js";

export type WakeReason = "notify" | "poll" | "reconnect" | "timer" | "config" | "start" | "retry";

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
  /** Keys (the queue's excludeColumn) not to claim right now: endpoints at their cap. */
  excludedKeys?(): number[];
  /** Epoch ms before which nothing should be claimed (a target's rate limit), or 0. */
  pausedUntil(): number;
  /**
   * Does the work for a unit of claimed rows and says what became of each. Must not
   * throw for a row's own fault; a throw is treated as a transient failure of the unit.
   */
  process(rows: Row[]): Promise<Outcome[]>;
  /** Periodic housekeeping run by the safety poll (retention), if any. */
  maintain?(): Promise<void>;
}
