// Deadlines for outbound requests, shared by the requests that start close together.
// AbortSignal.timeout costs a signal, a timer and a weak reference per request (about
// 5 µs, and garbage for the collector): at thousands of webhooks a second that was a
// visible part of a replica's CPU. Here the requests that start within the same
// GRAIN_MS with the same timeout share one signal and one timer. undici accepts an
// EventEmitter as a request's signal; a request stops listening when it ends.
import { EventEmitter } from "node:events";

/** Requests starting within this window share a deadline. */
const GRAIN_MS = 100;

/**
 * What undici reads of a signal: `aborted`, `reason`, and its 'abort' event. The reason
 * is a TimeoutError, as AbortSignal.timeout's would be.
 */
export class DeadlineSignal extends EventEmitter {
  aborted = false;
  reason: Error | undefined = undefined;

  constructor() {
    super();
    // One listener per request in flight: any number is expected.
    this.setMaxListeners(0);
  }

  fire(timeoutMs: number): void {
    this.aborted = true;
    this.reason = new DOMException(
      `The operation was aborted due to timeout (${timeoutMs} ms)`,
      "TimeoutError",
    );
    this.emit("abort");
    this.removeAllListeners();
  }
}

/**
 * Signals that abort at least `timeoutMs` after the request that asks for them, and at
 * most GRAIN_MS later than that.
 */
export class SharedDeadlines {
  private readonly open = new Map<number, { until: number; signal: DeadlineSignal }>();

  signal(timeoutMs: number): DeadlineSignal {
    // The window is measured on the monotonic clock, the one the timer runs on: with
    // Date.now, a wall clock stepped back (NTP, a resumed VM) kept a window open for as
    // long as the step, so requests joined a signal about to fire, or already fired, and
    // failed as timed out without their time. `aborted` is checked as well, so a signal
    // that has fired is never handed out whatever the clocks do.
    const now = performance.now();
    const current = this.open.get(timeoutMs);
    if (current && now < current.until && !current.signal.aborted) return current.signal;
    const signal = new DeadlineSignal();
    const until = now + GRAIN_MS;
    this.open.set(timeoutMs, { until, signal });
    // Counted from the end of the window: no request gets less than its timeout.
    setTimeout(() => signal.fire(timeoutMs), timeoutMs + GRAIN_MS).unref();
    return signal;
  }
}
