// The one LISTEN connection (docs/architecture.md §4): pg-listen, with its dangerous defaults fixed.
// It retries forever with capped backoff, proves the connection works (the safety poll
// notifies a private ping channel, which must arrive; without pings, pg_listening_channels()
// on a timer), reports every (re)connect so the reactor can catch up, and stops for good
// on close().
import { randomBytes } from "node:crypto";
import pg from "pg";
import pgListen from "pg-listen";
import { CONNECT_TIMEOUT_MS } from "../db/connect.js";
import { LISTENER_APPLICATION_NAME } from "../db/pool.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import { exponentialBackoff, withTimeout } from "./backoff.js";

/** NOTIFY payloads are at most 8000 bytes; ours are a few dozen. */
const MAX_PAYLOAD_BYTES = 8000;
/** Reconnect delays: 250 ms doubling to at most 10 s, jittered, forever. */
const RECONNECT_BASE_MS = 250;
const RECONNECT_CAP_MS = 10_000;
/** A channel check that takes longer than this means the connection is dead. */
const CHECK_TIMEOUT_MS = 10_000;
/** Server- and client-side limit of each statement on the LISTEN connection. */
const QUERY_TIMEOUT_MS = 10_000;

// pg-listen is CommonJS with `exports.default`; Node's ESM import hands us the exports object.
type CreateSubscriber = typeof import("pg-listen").default;
const createSubscriber: CreateSubscriber =
  (pgListen as unknown as { default?: CreateSubscriber }).default ??
  (pgListen as unknown as CreateSubscriber);

export interface ListenerOptions {
  url: string;
  channels: string[];
  logger: Logger;
  metrics: Metrics;
  /**
   * The connection is proven at least this often: by a ping (see expectPing) or, when
   * none arrived within the interval, by a pg_listening_channels() query on it.
   */
  checkIntervalMs?: number;
  onNotification(channel: string, payload: NotificationPayload | null): void;
  /** Called after the first connect and after every reconnect, once LISTEN is in place. */
  onConnected(reconnect: boolean): void;
}

/** What our triggers send. Anything else is counted, logged and still treated as a hint. */
export interface NotificationPayload {
  v: number;
  table?: string;
  op?: string;
}

export interface ListenerState {
  connected: boolean;
  /** When the current state (connected or not) began. */
  since: Date;
  lastNotificationAt: Date | null;
  reconnects: number;
}

export interface Listener {
  start(): Promise<void>;
  close(): Promise<void>;
  state(): ListenerState;
  /** Test and ops hook: the backend pid of the LISTEN session, if connected. */
  backendPid(): number | null;
  /**
   * This listener's private channel while it is connected, else null. A commit that
   * notifies it proves that notifications reach this process, the whole way.
   */
  pingChannel(): string | null;
  /**
   * A ping committed (sent no earlier than `sentAt`, epoch ms): unless it arrives within
   * the check timeout, the connection is treated as dead and made again.
   */
  expectPing(sentAt: number): void;
}

/** Parses a payload; returns null (and the caller counts it) unless it is our tiny JSON. */
export function parsePayload(raw: string | undefined): NotificationPayload | null {
  if (raw === undefined || raw === "" || Buffer.byteLength(raw) > MAX_PAYLOAD_BYTES) return null;
  try {
    const value: unknown = JSON.parse(raw);
    if (value && typeof value === "object" && !Array.isArray(value) && "v" in value) {
      return value as NotificationPayload;
    }
  } catch {
    // not JSON: fall through
  }
  return null;
}

/**
 * Makes `client.query` wait for the previous query to settle before it is sent. pg-listen
 * re-LISTENs all channels at once after a reconnect (Promise.all), and our channel check
 * can overlap them: pg 8 prints a DeprecationWarning for every overlapping query (a
 * non-JSON line in the log stream) and pg 9 refuses them. Promise-style calls only, which
 * is all pg-listen and this module make; callback and Submittable calls pass straight on.
 */
function serializeQueries(issue: (...args: unknown[]) => unknown): pg.Client["query"] {
  let last: Promise<unknown> = Promise.resolve();
  const serialized = (...args: unknown[]): unknown => {
    const first = args[0] as { submit?: unknown } | undefined;
    if (typeof args.at(-1) === "function" || typeof first?.submit === "function") {
      return issue(...args);
    }
    const run = () => issue(...args);
    const result = last.then(run, run);
    last = result.catch(() => undefined);
    return result;
  };
  return serialized as pg.Client["query"];
}

export function makeListener(options: ListenerOptions): Listener {
  const { logger, metrics } = options;
  const log = logger.child({ component: "listener" });
  let closed = false;
  let started = false;
  let current: pg.Client | null = null;
  let checkTimer: NodeJS.Timeout | null = null;
  // Random, so replicas never hear each other's pings; not a metric label (unbounded).
  const pingChannel = `reactor_ping_${randomBytes(6).toString("hex")}`;
  const channels = [...options.channels, pingChannel];
  let lastPingAt = 0;
  let pingTimer: NodeJS.Timeout | null = null;
  const state: ListenerState = {
    connected: false,
    since: new Date(),
    lastNotificationAt: null,
    reconnects: 0,
  };

  function setConnected(connected: boolean) {
    if (state.connected === connected) return;
    state.connected = connected;
    state.since = new Date();
    metrics.listenerConnected.set(connected ? 1 : 0);
  }

  // pg-listen does not expose its client, and we need it to run pg_listening_channels().
  // It captures pg.Client once, synchronously, when the subscriber is created, so we swap
  // in a subclass that remembers the last client to connect, for that one call only.
  class TrackedClient extends pg.Client {
    constructor(config: pg.ClientConfig) {
      super(config);
      this.once("connect", () => {
        current = this;
      });
      this.query = serializeQueries(super.query.bind(this));
    }
  }
  const originalClient = pg.Client;
  let subscriber: ReturnType<CreateSubscriber>;
  (pg as { Client: typeof pg.Client }).Client = TrackedClient;
  try {
    subscriber = createSubscriber(
      {
        connectionString: options.url,
        application_name: LISTENER_APPLICATION_NAME,
        // A server that accepts TCP and never answers is an error in seconds, not a hang.
        connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
        // LISTEN, UNLISTEN and the channel check are instant; anything slower is a dead link.
        // Client-side only: PgBouncer (session mode) refuses a statement_timeout startup
        // parameter.
        query_timeout: QUERY_TIMEOUT_MS,
      },
      {
        // pg-listen's default retryTimeout (3 s) gives up forever after a short outage.
        retryLimit: Number.POSITIVE_INFINITY,
        retryTimeout: Number.POSITIVE_INFINITY,
        retryInterval: (attempt: number) => {
          // Throwing here is the only way to end pg-listen's reconnect loop.
          if (closed) throw new Error("listener closed");
          return exponentialBackoff(attempt, RECONNECT_BASE_MS, RECONNECT_CAP_MS);
        },
        // Its check only runs SELECT pg_backend_pid(); ours also verifies the channels.
        paranoidChecking: false,
        parse: (raw: string) => raw,
      },
    );
  } finally {
    (pg as { Client: typeof pg.Client }).Client = originalClient;
  }

  subscriber.events.on("notification", ({ channel, payload }) => {
    if (channel === pingChannel) {
      lastPingAt = Date.now();
      return;
    }
    state.lastNotificationAt = new Date();
    metrics.notifications.inc({ channel });
    const parsed = parsePayload(payload as string | undefined);
    if (!parsed) {
      metrics.notificationsRejected.inc({ channel });
      log.warn(
        { channel, payload: String(payload ?? "").slice(0, 200) },
        "unexpected NOTIFY payload (expected our tiny JSON); waking the workload anyway",
      );
    }
    options.onNotification(channel, parsed);
  });
  subscriber.events.on("reconnect", (attempt: number) => {
    setConnected(false);
    if (attempt === 1) log.warn("LISTEN connection lost; reconnecting");
  });
  subscriber.events.on("connected", () => {
    if (!started) return; // the initial connect is reported by start()
    if (closed) {
      // A reconnect attempt that was already under way when we closed: end it.
      void subscriber.close().catch(() => undefined);
      return;
    }
    state.reconnects++;
    metrics.listenerReconnects.inc();
    setConnected(true);
    log.info({ reconnects: state.reconnects }, "LISTEN connection re-established");
    options.onConnected(true);
  });
  subscriber.events.on("error", (err: Error) => {
    if (closed) return;
    setConnected(false);
    log.error({ err: err.message }, "LISTEN connection error");
    // pg-listen stops retrying if re-LISTEN fails after a reconnect; ending the client
    // makes it start over.
    current?.end().catch(() => undefined);
  });

  async function check() {
    const client = current;
    if (closed || !client) return;
    try {
      const result = await withTimeout(
        client.query<{ channel: string }>("SELECT pg_listening_channels() AS channel"),
        CHECK_TIMEOUT_MS,
        "channel check timed out",
      );
      const listening = new Set(result.rows.map((r) => r.channel));
      const missing = channels.filter((c) => !listening.has(c));
      if (missing.length > 0) throw new Error(`not listening on ${missing.join(", ")}`);
    } catch (err) {
      restart(client, (err as Error).message);
    }
  }

  /** Drops a connection that failed a check; pg-listen reconnects (and re-LISTENs). */
  function restart(client: pg.Client, why: string) {
    if (closed || client !== current) return;
    log.warn({ err: why }, "LISTEN check failed; reconnecting");
    setConnected(false);
    const conn = (client as unknown as { connection?: { stream?: { destroy(): void } } })
      .connection;
    conn?.stream?.destroy();
    client.end().catch(() => undefined);
  }

  return {
    async start() {
      await subscriber.connect();
      for (const channel of channels) await subscriber.listenTo(channel);
      started = true;
      setConnected(true);
      const interval = options.checkIntervalMs ?? 60_000;
      // A ping heard within the interval already proved the connection: no query.
      checkTimer = setInterval(() => {
        if (Date.now() - lastPingAt >= interval) void check();
      }, interval);
      checkTimer.unref();
      options.onConnected(false);
    },
    async close() {
      closed = true;
      if (checkTimer) clearInterval(checkTimer);
      if (pingTimer) clearTimeout(pingTimer);
      setConnected(false);
      await subscriber.close().catch(() => undefined);
    },
    state: () => ({ ...state }),
    pingChannel: () => (state.connected && !closed ? pingChannel : null),
    expectPing(sentAt) {
      const client = current;
      if (pingTimer || !client || closed) return;
      pingTimer = setTimeout(() => {
        pingTimer = null;
        if (lastPingAt >= sentAt || closed || !state.connected) return;
        restart(client, `no ping within ${CHECK_TIMEOUT_MS / 1000} s of its commit`);
      }, CHECK_TIMEOUT_MS);
      pingTimer.unref();
    },
    backendPid: () => {
      const pid = (current as unknown as { processID?: number } | null)?.processID;
      return state.connected && pid ? pid : null;
    },
  };
}
