// The `wal` wake source (docs/architecture.md, "Wake source"): instead of NOTIFY, each
// replica reads the reactor's tables' commits from the write-ahead log, through a
// temporary logical replication slot of its own (pgoutput, publication pg_reactor). A
// commit that made a row claimable wakes that row's workload, exactly like a NOTIFY would.
// The slot lives as long as the replication connection: a stopped or killed replica
// retains no WAL. Every (re)start of the stream is followed by a full catch-up (the
// caller's onStarted), since commits made while it was down were never seen.
import { randomBytes } from "node:crypto";
import type pg from "pg";
import { LogicalReplicationService, type Pgoutput, PgoutputPlugin } from "pg-logical-replication";
import { CONNECT_TIMEOUT_MS } from "../db/connect.js";
import type { Pool } from "../db/pool.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import { exponentialBackoff } from "./backoff.js";
import type { QueueTableSpec } from "./lease-queue.js";

export const PUBLICATION = "pg_reactor";
export const WAL_APPLICATION_NAME = "pg-reactor wal";
/** Reconnect delays: 500 ms doubling to at most 30 s, jittered, until stopped. */
const RETRY_BASE_MS = 500;
const RETRY_CAP_MS = 30_000;
/** Slot creation slower than this is reported (it waits for older transactions to end). */
const SLOW_SLOT_MS = 2_000;
/** The stream acknowledges at least this often, so the slot never holds WAL back. */
const ACK_INTERVAL_SECONDS = 5;
/**
 * Commits are acknowledged at most this often: a status message per commit would cost the
 * reactor and the WAL sender a write and a wake-up each, thousands a second under load.
 */
const ACK_MIN_GAP_MS = 200;
/**
 * The stream asks the server for a reply this often; with nothing heard for DEAD_AFTER_MS
 * the link is taken for dead (a network path that drops packets sends no reset) and the
 * stream restarts.
 */
const PING_INTERVAL_MS = 10_000;
const DEAD_AFTER_MS = 35_000;
/** While the stream runs, the publication is checked this often (someone may drop or alter it). */
const PUBLICATION_CHECK_MS = 5 * 60_000;
/** Closing politely waits this long before the socket is destroyed. */
const END_TIMEOUT_MS = 1_000;
/**
 * A commit reaches the stream once its WAL record is flushed, a moment before the
 * committing backend leaves the proc array: a claim sent at once can miss its rows.
 * So the last commit of a burst wakes its workload again after each of these delays
 * (a claim that finds nothing costs one short query; under load the next commit's wake
 * finds the rows anyway).
 */
export const FOLLOW_UP_MS: readonly number[] = [2, 20, 200, 1_000];
/** A row due within this much of the reactor's clock counts as due (clocks differ a little). */
const DUE_SLACK_MS = 1_000;

export interface WalTable {
  workload: string;
  spec: Pick<QueueTableSpec, "table" | "stateColumn" | "states">;
}

export interface WalWakerOptions {
  /** A direct URL (replication cannot pass through PgBouncer). */
  url: string;
  pool: Pool;
  tables: readonly WalTable[];
  /** Slot names start with this (lower-case letters, digits and _ only). */
  slotPrefix?: string;
  logger: Logger;
  metrics: Metrics;
  wake(workload: string): void;
  /** After every start of the stream: catch up on what was committed before it. */
  onStarted(restart: boolean): void;
}

export interface WalState {
  connected: boolean;
  since: Date;
  slot: string | null;
  /** Why the stream is not running (or is slow to start), or null. */
  problem: string | null;
  lastCommitAt: Date | null;
  restarts: number;
}

export interface WalWaker {
  start(): void;
  stop(): Promise<void>;
  state(): WalState;
  /** The walsender's pid while connected (tests and operators terminate it). */
  backendPid(): number | null;
}

type Row = Record<string, unknown>;

interface FollowUp {
  lastCommitAt: number;
  /** The FOLLOW_UP_MS step the armed timer is for. */
  step: number;
  timer: NodeJS.Timeout | null;
}

/** The service's socket (the library keeps it private). */
function socketOf(service: LogicalReplicationService): { destroy(): void } | undefined {
  return (service as unknown as { _connection?: { stream?: { destroy(): void } } })._connection
    ?.stream;
}

/** Stops a service, destroying its socket when the server does not answer the goodbye. */
async function close(service: LogicalReplicationService): Promise<void> {
  const socket = socketOf(service);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), END_TIMEOUT_MS);
  });
  const stopped = service.stop().then(
    () => true,
    () => false,
  );
  if (!(await Promise.race([stopped, late]))) socket?.destroy();
  clearTimeout(timer);
}

/** pgoutput with a temporary slot created on the replication connection itself. */
class TemporarySlotPlugin extends PgoutputPlugin {
  constructor(private readonly creating: (done: Promise<unknown>) => void) {
    super({ protoVersion: 1, publicationNames: [PUBLICATION] });
  }

  override async start(client: pg.Client, slotName: string, _lastLsn: string): Promise<unknown> {
    const created = client.query(
      `CREATE_REPLICATION_SLOT ${slotName} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing')`,
    );
    this.creating(created);
    await created;
    return super.start(client, slotName, "0/0");
  }
}

/** Says what a replication failure means for an operator. */
export function describeWalError(err: unknown): string {
  const e = err as { code?: string; message?: string };
  const message = e.message ?? String(err);
  if (/unsupported startup parameter.*replication/i.test(message)) {
    return `${message}: replication cannot pass through PgBouncer; set LISTEN_DATABASE_URL to a direct connection to PostgreSQL`;
  }
  switch (e.code) {
    case "55000":
      return `${message}: set wal_level = logical and restart PostgreSQL`;
    case "42501":
      return `${message}: the role needs the REPLICATION attribute (ALTER ROLE … REPLICATION; on RDS, GRANT rds_replication)`;
    case "53400":
      return `${message}: raise max_replication_slots (one per replica) and restart PostgreSQL`;
    case "53300":
      return `${message}: raise max_wal_senders (one per replica) and restart PostgreSQL`;
    case "42704":
      return `${message}: run npx pg-reactor wake-source wal (it creates the publication)`;
    default:
      return message;
  }
}

export function makeWalWaker(options: WalWakerOptions): WalWaker {
  const log = options.logger.child({ component: "wal" });
  const byTable = new Map(options.tables.map((t) => [t.spec.table, t]));
  const prefix = options.slotPrefix ?? "pg_reactor";
  const state: WalState = {
    connected: false,
    since: new Date(),
    slot: null,
    problem: null,
    lastCommitAt: null,
    restarts: 0,
  };
  let stopped = true;
  let service: LogicalReplicationService | null = null;
  let loop: Promise<void> | null = null;
  let wakeSleep: (() => void) | null = null;
  /** The stream ran at least once: a later start is a restart (catch-up, counted). */
  let everStarted = false;
  /** Workloads touched by the transaction being read; woken at its commit. */
  const touched = new Set<string>();
  /** What is wrong with the publication (checked while the stream runs), or null. */
  let publicationProblem: string | null = null;
  /** Per workload, the follow-up wakes of its last commit. */
  const followUps = new Map<string, FollowUp>();

  function setConnected(connected: boolean) {
    if (state.connected === connected) return;
    state.connected = connected;
    state.since = new Date();
    options.metrics.walConnected.set(connected ? 1 : 0);
  }

  function setProblem(problem: string | null) {
    if (problem !== null && problem !== state.problem) log.warn(problem);
    state.problem = problem;
  }

  /**
   * Would this row, as committed, be claimed now? The notify triggers' conditions on the new
   * row; the old row is not decoded (the publication sends no old values), so any update
   * that leaves a row pending, unleased and due wakes here, where notify wakes only on the
   * change that made it so. A wake too many costs one claim that finds nothing.
   */
  function claimable(table: WalTable, row: Row, inserted: boolean): boolean {
    if (row[table.spec.stateColumn] !== table.spec.states.pending) return false;
    if (inserted) return true;
    if (row.locked_by !== null && row.locked_by !== undefined) return false;
    const due = row.next_attempt_at;
    return !(due instanceof Date) || due.getTime() <= Date.now() + DUE_SLACK_MS;
  }

  function onMessage(message: Pgoutput.Message) {
    switch (message.tag) {
      case "insert":
      case "update": {
        const table = byTable.get(message.relation.name);
        if (table && claimable(table, message.new, message.tag === "insert")) {
          touched.add(table.workload);
        }
        return;
      }
      case "commit": {
        state.lastCommitAt = new Date();
        for (const workload of touched) {
          options.wake(workload);
          followUp(workload);
        }
        touched.clear();
        return;
      }
      case "begin":
        touched.clear();
        return;
      default:
        return;
    }
  }

  /**
   * Wakes `workload` again FOLLOW_UP_MS after its last commit (each step measured from that
   * commit). A commit only records its time: under load the one armed timer moves on
   * with the commits instead of being cleared and set again for each.
   */
  function followUp(workload: string) {
    const entry = followUps.get(workload);
    if (entry) {
      entry.lastCommitAt = Date.now();
      entry.step = 0;
      return;
    }
    const next = { lastCommitAt: Date.now(), step: 0, timer: null as NodeJS.Timeout | null };
    followUps.set(workload, next);
    arm(workload, next);
  }

  function arm(workload: string, entry: FollowUp) {
    const delay = FOLLOW_UP_MS[entry.step];
    if (delay === undefined || stopped) {
      followUps.delete(workload);
      return;
    }
    entry.timer = setTimeout(
      () => {
        const since = Date.now() - entry.lastCommitAt;
        const due = FOLLOW_UP_MS[entry.step] ?? 0;
        if (since >= due) {
          options.wake(workload);
          entry.step++;
        }
        arm(workload, entry);
      },
      Math.max(0, entry.lastCommitAt + delay - Date.now()),
    );
    entry.timer.unref();
  }

  /**
   * The publication must publish every work table: on PostgreSQL 18 a dropped one leaves
   * the stream running and silent, so it is looked at when the stream starts and now and
   * then while it runs.
   */
  async function checkPublication() {
    const wanted = options.tables.map((t) => t.spec.table).sort();
    const { rows } = await options.pool
      .query<{ tablename: string }>(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = $1",
        [PUBLICATION],
      )
      .catch(() => ({ rows: null }));
    if (rows === null) return; // the database is away: the stream will say so
    const have = new Set(rows.map((r) => r.tablename));
    const missing = wanted.filter((t) => !have.has(t));
    const problem =
      missing.length === 0
        ? null
        : rows.length === 0
          ? `publication ${PUBLICATION} is missing or publishes nothing, so no commit wakes this replica: run npx pg-reactor wake-source wal to put it back`
          : `publication ${PUBLICATION} does not publish ${missing.join(", ")}, so their commits wake no one: run npx pg-reactor wake-source wal to put it back`;
    if (problem !== null && problem !== publicationProblem) log.warn(problem);
    publicationProblem = problem;
  }

  /** Reports a slot creation that waits (for transactions older than it to end). */
  function watchCreation(created: Promise<unknown>) {
    let done = false;
    void created.then(
      () => {
        done = true;
      },
      () => {
        done = true;
      },
    );
    setTimeout(async () => {
      if (done || stopped) return;
      const { rows } = await options.pool
        .query<{ pid: number; seconds: number }>(
          `SELECT pid, extract(epoch FROM now() - xact_start)::int AS seconds
           FROM pg_stat_activity
           WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
           ORDER BY xact_start LIMIT 1`,
        )
        .catch(() => ({ rows: [] as Array<{ pid: number; seconds: number }> }));
      if (done || stopped) return;
      const oldest = rows[0];
      setProblem(
        `creating the replication slot waits for transactions that started before it to end${
          oldest ? ` (the oldest: pid ${oldest.pid}, open ${oldest.seconds} s)` : ""
        }; work is picked up by retry timers and the safety poll meanwhile`,
      );
    }, SLOW_SLOT_MS).unref();
  }

  async function runOnce(restart: boolean): Promise<void> {
    const slot = `${prefix}_${randomBytes(6).toString("hex")}`;
    const current = new LogicalReplicationService(
      {
        connectionString: options.url,
        application_name: WAL_APPLICATION_NAME,
        connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
        keepAlive: true,
      } as pg.ClientConfig,
      { acknowledge: { auto: false, timeoutSeconds: ACK_INTERVAL_SECONDS } },
    );
    service = current;
    let failure: unknown = null;
    let heardAt = Date.now();
    let ackedAt = 0;
    /** The last position heard; the server ignores a confirmation that goes backwards. */
    let lastLsn = "0/0";
    current.on("error", (err: Error) => {
      failure ??= err;
    });
    current.on("start", () => {
      state.slot = slot;
      if (restart) state.restarts++;
      everStarted = true;
      heardAt = Date.now();
      setConnected(true);
      setProblem(null);
      log.info({ slot, restart }, "reading the write-ahead log");
      options.onStarted(restart);
      void checkPublication();
      // PostgreSQL 18 skips a dropped publication with a WARNING (a notice on this
      // connection) and keeps the stream running: look at it at once.
      const client = (current as unknown as { _client?: pg.Client })._client;
      client?.on("notice", (notice) => {
        if (/publication/i.test(notice.message ?? "")) void checkPublication();
      });
    });
    const publicationTimer = setInterval(() => {
      if (state.connected) void checkPublication();
    }, PUBLICATION_CHECK_MS);
    publicationTimer.unref();
    // Asks for a reply now and then; silence for DEAD_AFTER_MS means the link is gone.
    const watchdog = setInterval(() => {
      if (!state.connected) return;
      if (Date.now() - heardAt > DEAD_AFTER_MS) {
        failure ??= new Error(
          `no message from the server for ${Math.round(DEAD_AFTER_MS / 1000)} s (the connection is taken for dead)`,
        );
        socketOf(current)?.destroy();
        return;
      }
      void current.acknowledge(lastLsn, true).catch(() => undefined);
    }, PING_INTERVAL_MS);
    watchdog.unref();
    current.on("data", (lsn: string, message: Pgoutput.Message) => {
      heardAt = Date.now();
      lastLsn = lsn;
      onMessage(message);
      // Acknowledged promptly (at most every ACK_MIN_GAP_MS): the slot never holds WAL back.
      if (message.tag === "commit" && Date.now() - ackedAt >= ACK_MIN_GAP_MS) {
        ackedAt = Date.now();
        void current.acknowledge(lsn).catch(() => undefined);
      }
    });
    current.on("heartbeat", (lsn: string, _time: number, shouldRespond: boolean) => {
      heardAt = Date.now();
      lastLsn = lsn;
      if (shouldRespond) void current.acknowledge(lsn).catch(() => undefined);
    });
    try {
      await current.subscribe(new TemporarySlotPlugin((created) => watchCreation(created)), slot);
    } catch (err) {
      failure ??= err;
    } finally {
      touched.clear();
      setConnected(false);
      state.slot = null;
      service = null;
      clearInterval(watchdog);
      clearInterval(publicationTimer);
      await close(current);
    }
    if (failure && !stopped) throw failure;
    if (!stopped) throw new Error("the replication stream ended");
  }

  async function run() {
    for (let attempt = 0; !stopped; ) {
      const restartsBefore = state.restarts;
      try {
        await runOnce(everStarted);
      } catch (err) {
        if (stopped) return;
        // A stream that ran before it failed starts the backoff over.
        if (state.restarts !== restartsBefore) attempt = 0;
        const delay = exponentialBackoff(attempt++, RETRY_BASE_MS, RETRY_CAP_MS);
        setProblem(
          `the replication stream is down: ${describeWalError(err)}; retrying in ${Math.round(delay / 100) / 10} s`,
        );
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, delay);
          wakeSleep = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wakeSleep = null;
      }
    }
  }

  return {
    start() {
      if (!stopped) return;
      stopped = false;
      // A stop still under way finishes first: never two streams for one replica.
      const previous = loop;
      loop = (async () => {
        await previous;
        if (!stopped) await run();
      })();
    },
    async stop() {
      stopped = true;
      wakeSleep?.();
      for (const entry of followUps.values()) if (entry.timer) clearTimeout(entry.timer);
      followUps.clear();
      if (service) await close(service);
      const current = loop;
      await current;
      if (loop !== current) return; // started again meanwhile: that loop owns the state now
      loop = null;
      setConnected(false);
      state.problem = null;
      publicationProblem = null;
    },
    state: () => ({
      ...state,
      problem: state.problem ?? (state.connected ? publicationProblem : null),
    }),
    backendPid() {
      const client = (service as unknown as { _client?: { processID?: number } } | null)?._client;
      return state.connected ? (client?.processID ?? null) : null;
    },
  };
}
