// The drain loop's state machine with fake timers: coalesced wake-ups, retry timers,
// pauses, lease renewal, rows an app holds locked, and stop. The queue is an in-memory
// stand-in for the LeaseQueue interface (the SQL behind it is tested against PostgreSQL
// in uploads-field, deliveries-field and pgbouncer tests).
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { makeLogger } from "../src/logger.js";
import { makeMetrics } from "../src/metrics.js";
import { type Drainer, type DrainerEvent, makeDrainer } from "../src/reactor/drainer.js";
import type {
  ClaimedRow,
  FinalizeResult,
  LeaseQueue,
  Outcome,
  QueueStats,
} from "../src/reactor/lease-queue.js";
import type { Workload } from "../src/reactor/workload.js";

interface Row {
  id: number;
  dueAt: number;
  lockedUntil: number;
  owner: string | null;
  state: "pending" | "done" | "failed";
  attempts: number;
}

function memoryQueue() {
  const rows = new Map<number, Row>();
  const calls = { claim: 0, renew: 0, finalize: 0, release: 0 };
  /** Ids whose next finalize reports them locked by another transaction. */
  const lockedOnce = new Set<number>();
  const claimable = (r: Row, now: number) =>
    r.state === "pending" && r.dueAt <= now && r.lockedUntil <= now;
  const queue: LeaseQueue<ClaimedRow> = {
    spec: {} as never,
    async claim(owner, o) {
      calls.claim++;
      const now = Date.now();
      const out: ClaimedRow[] = [];
      for (const r of rows.values()) {
        if (out.length >= o.limit || !claimable(r, now)) continue;
        r.owner = owner;
        r.lockedUntil = now + o.leaseSeconds * 1000;
        r.attempts++;
        out.push({
          id: r.id,
          attempts: r.attempts,
          pickup_lag: 0,
          claim_version: null,
          payload_bytes: 0,
          abandoned: false,
        });
      }
      return out;
    },
    async finalize(owner, outcomes): Promise<FinalizeResult> {
      calls.finalize++;
      const result: FinalizeResult = { done: [], locked: [], lost: [] };
      for (const o of outcomes) {
        const r = rows.get(o.id);
        if (!r || r.owner !== owner) {
          result.lost.push(o.id);
          continue;
        }
        if (lockedOnce.delete(o.id)) {
          result.locked.push(o.id);
          continue;
        }
        r.owner = null;
        r.lockedUntil = 0;
        if (o.kind === "retry" || o.kind === "defer") {
          r.dueAt = o.at.getTime();
          if (o.kind === "defer") r.attempts--;
        } else r.state = o.kind === "success" ? "done" : "failed";
        result.done.push(o.id);
      }
      return result;
    },
    async renew(owner, ids, leaseSeconds) {
      calls.renew++;
      const renewed: number[] = [];
      for (const id of ids) {
        const r = rows.get(id);
        if (r?.owner === owner) {
          r.lockedUntil = Date.now() + leaseSeconds * 1000;
          renewed.push(id);
        }
      }
      return renewed;
    },
    forget() {},
    async release(owner) {
      calls.release++;
      let n = 0;
      for (const r of rows.values()) {
        if (r.owner === owner && r.state === "pending") {
          r.owner = null;
          r.lockedUntil = 0;
          n++;
        }
      }
      return n;
    },
    async stats(): Promise<QueueStats> {
      const now = Date.now();
      const pending = [...rows.values()].filter((r) => r.state === "pending");
      const next = Math.min(...pending.map((r) => Math.max(r.dueAt, r.lockedUntil)));
      return {
        backlog: pending.length,
        due: pending.filter((r) => r.dueAt <= now).length,
        claimable: pending.filter((r) => claimable(r, now)).length,
        oldestPendingAgeSeconds: 0,
        nextDueAt: pending.length ? new Date(next) : null,
      };
    },
    async countsByState() {
      return {};
    },
    statsSql: () => "",
  };
  let nextId = 1;
  return {
    queue,
    rows,
    calls,
    lockedOnce,
    add(count: number, dueAt = Date.now()) {
      for (let i = 0; i < count; i++) {
        const id = nextId++;
        rows.set(id, { id, dueAt, lockedUntil: 0, owner: null, state: "pending", attempts: 0 });
      }
    },
  };
}

describe("drainer state machine", () => {
  let mem: ReturnType<typeof memoryQueue>;
  let drainer: Drainer | null;
  let events: DrainerEvent[];
  let processImpl: (rows: ClaimedRow[]) => Promise<Outcome[]>;
  let paused = 0;
  let lease = 6;

  const start = (overrides: Partial<Workload> = {}) => {
    const workload: Workload = {
      name: "uploads",
      channel: "reactor_orders",
      queue: mem.queue,
      enabled: () => true,
      disabledReason: () => null,
      unitSize: () => 2,
      concurrency: () => 2,
      retryScheduleSeconds: () => [1, 1],
      pausedUntil: () => (paused > Date.now() ? paused : 0),
      process: (rows) => processImpl(rows),
      ...overrides,
    };
    drainer = makeDrainer({
      workload,
      owner: "me/1",
      leaseSeconds: () => lease,
      logger: makeLogger("silent"),
      metrics: makeMetrics(),
      onEvent: (e) => events.push(e),
    });
    return drainer;
  };
  const settle = () => vi.advanceTimersByTimeAsync(0);
  /** A handler whose calls succeed after `ms` (of fake time). */
  const succeedAfter =
    (ms: number) =>
    (rows: ClaimedRow[]): Promise<Outcome[]> =>
      new Promise((resolve) =>
        setTimeout(() => resolve(rows.map((r) => ({ id: r.id, kind: "success" as const }))), ms),
      );
  const done = () => [...mem.rows.values()].filter((r) => r.state === "done").length;

  beforeEach(() => {
    vi.useFakeTimers();
    mem = memoryQueue();
    events = [];
    paused = 0;
    lease = 6;
    processImpl = async (rows) => rows.map((r) => ({ id: r.id, kind: "success" }));
  });
  afterEach(async () => {
    const stopping = drainer?.stop(0);
    await vi.advanceTimersByTimeAsync(10);
    await stopping;
    drainer = null;
    vi.useRealTimers();
  });

  it("drains everything due in one wake-up, in units of unitSize", async () => {
    mem.add(7);
    start().wake("notify");
    await settle();
    expect(done()).toBe(7);
    const claimed = events.filter((e) => e.type === "claimed").map((e) => e.ids.length);
    expect(claimed.reduce((a, b) => a + b, 0)).toBe(7);
  });

  it("wake-ups during a drain coalesce into one more pass", async () => {
    const waiting: Array<() => void> = [];
    const release = () => {
      for (const r of waiting.splice(0)) r();
    };
    processImpl = (rows) =>
      new Promise((resolve) => {
        waiting.push(() => resolve(rows.map((r) => ({ id: r.id, kind: "success" as const }))));
      });
    mem.add(1);
    const d = start();
    d.wake("notify");
    await settle();
    const claimsBefore = mem.calls.claim;
    mem.add(1);
    for (let i = 0; i < 5; i++) d.wake("notify");
    await settle();
    release();
    await settle();
    release();
    await settle();
    expect(done()).toBe(2);
    // One claim for the coalesced wake-ups, plus at most the one that finds nothing.
    expect(mem.calls.claim - claimsBefore).toBeLessThanOrEqual(2);
  });

  it("a retry arms a timer: nothing is claimed before it, the row runs after it", async () => {
    let first = true;
    processImpl = async (rows) =>
      rows.map((r) => {
        if (first) {
          first = false;
          return { id: r.id, kind: "retry" as const, at: new Date(Date.now() + 1_000), error: "x" };
        }
        return { id: r.id, kind: "success" as const };
      });
    mem.add(1);
    start().wake("notify");
    await settle();
    expect(done()).toBe(0);
    await vi.advanceTimersByTimeAsync(900);
    expect(done()).toBe(0);
    await vi.advanceTimersByTimeAsync(200);
    expect(done()).toBe(1);
  });

  it("a pause holds claims until it ends, then drains by itself", async () => {
    paused = Date.now() + 5_000;
    mem.add(3);
    start().wake("notify");
    await settle();
    expect(mem.calls.claim).toBe(0);
    await vi.advanceTimersByTimeAsync(5_100);
    expect(done()).toBe(3);
  });

  it("renews the leases of rows in flight longer than a lease", async () => {
    processImpl = succeedAfter(20_000);
    mem.add(1);
    start().wake("notify");
    await settle();
    await vi.advanceTimersByTimeAsync(19_000);
    // Lease 6 s, renewed every 2 s: still ours, never claimable by anyone else.
    expect(mem.calls.renew).toBeGreaterThanOrEqual(8);
    expect(mem.rows.get(1)?.lockedUntil ?? 0).toBeGreaterThan(Date.now());
    await vi.advanceTimersByTimeAsync(2_000);
    expect(done()).toBe(1);
    expect(mem.rows.get(1)?.attempts).toBe(1);
  });

  it("a lowered lease_seconds takes effect for rows claimed after it", async () => {
    lease = 120;
    processImpl = succeedAfter(30_000);
    mem.add(1);
    const d = start();
    d.wake("notify");
    await settle();
    lease = 6;
    mem.add(1);
    d.wake("notify");
    await settle();
    const renewsBefore = mem.calls.renew;
    await vi.advanceTimersByTimeAsync(2_500);
    // Renewed at a third of the new lease, not of the 120 s one (40 s away).
    expect(mem.calls.renew).toBeGreaterThan(renewsBefore);
    expect(mem.rows.get(2)?.lockedUntil ?? 0).toBeGreaterThan(Date.now());
  });

  it("keeps renewing while a graceful stop waits for work in flight", async () => {
    processImpl = succeedAfter(15_000);
    mem.add(1);
    const d = start();
    d.wake("notify");
    await settle();
    const stopping = d.stop(20_000);
    drainer = null;
    await vi.advanceTimersByTimeAsync(12_000);
    expect(mem.rows.get(1)?.lockedUntil ?? 0).toBeGreaterThan(Date.now());
    await vi.advanceTimersByTimeAsync(4_000);
    await stopping;
    expect(done()).toBe(1);
  });

  it("a row an app holds locked is recorded later while the rest go on", async () => {
    mem.add(4);
    mem.lockedOnce.add(2);
    const d = start();
    d.wake("notify");
    await settle();
    expect(done()).toBe(3);
    expect(d.state().waitingOnLocks.rows).toBe(1);
    expect(d.state().inFlightRows).toBe(1);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(done()).toBe(4);
    expect(d.state().waitingOnLocks.rows).toBe(0);
    expect(d.state().inFlightRows).toBe(0);
  });

  it("a handler that throws retries its rows on the schedule, then fails them", async () => {
    processImpl = async () => {
      throw new Error("boom");
    };
    mem.add(2);
    start().wake("notify");
    await vi.advanceTimersByTimeAsync(5_000);
    const rows = [...mem.rows.values()];
    expect(rows.map((r) => [r.state, r.attempts])).toEqual([
      ["failed", 3],
      ["failed", 3],
    ]);
  });

  it("stop waits for the unit in flight, then releases what it still holds", async () => {
    processImpl = succeedAfter(1_000);
    mem.add(2);
    const d = start();
    d.wake("notify");
    await settle();
    const stopping = d.stop(5_000);
    drainer = null;
    d.wake("notify"); // ignored once stopping
    await vi.advanceTimersByTimeAsync(1_100);
    await stopping;
    expect(done()).toBe(2);
    expect(mem.calls.release).toBe(1);
  });

  it("results that cannot be recorded (a database outage) hold new units back without spinning", async () => {
    mem.add(40);
    let down = true;
    const finalize = mem.queue.finalize.bind(mem.queue);
    mem.queue.finalize = async (owner, outcomes) => {
      if (down) throw new Error("connection refused");
      return finalize(owner, outcomes);
    };
    // The loop reads concurrency() once per pass: a pass that never awaits would call it
    // without end (and block the event loop); this turns that into a drain error instead.
    let passes = 0;
    start({
      concurrency: () => {
        if (++passes > 10_000) throw new Error("the drain loop is spinning");
        return 2;
      },
    }).wake("notify");
    await vi.advanceTimersByTimeAsync(2_000);
    // At most 4 units' worth (4 x 2 x 2 rows) of results wait; no unit starts beyond that.
    const handled = events
      .filter((e) => e.type === "claimed")
      .reduce((n, e) => n + (e.type === "claimed" ? e.ids.length : 0), 0);
    expect(handled).toBeLessThanOrEqual(16 + 4);
    expect(done()).toBe(0);
    down = false;
    await vi.advanceTimersByTimeAsync(20_000);
    expect(done()).toBe(40);
    expect(passes).toBeLessThan(10_000);
  });
});
