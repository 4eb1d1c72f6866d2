// Wires the generic parts together (docs/architecture.md §1): listener → wake(workload) → drainer,
// safety poll → wake(all), (re)connect → wake(all) + settings reload. Knows nothing
// about orders or webhooks; workloads are handed in.
import type { Pool } from "../db/pool.js";
import type { Logger } from "../logger.js";
import { type Metrics, primeMetrics } from "../metrics.js";
import { exponentialBackoff, sleep } from "./backoff.js";
import { type Drainer, type DrainerEvent, makeDrainer } from "./drainer.js";
import { type Listener, makeListener } from "./listener.js";
import { makeSafetyPoll, type SafetyPoll } from "./safety-poll.js";
import type { LiveSettings } from "./settings.js";
import type { WakeSource } from "./settings-spec.js";
import { makeWalWaker, type WalWaker } from "./wal-waker.js";
import type { Workload } from "./workload.js";

export const CONFIG_CHANNEL = "reactor_config";

export interface ReactorOptions {
  pool: Pool;
  listenUrl: string;
  /** Lease owner: the instance id plus a per-process suffix, unique among replicas. */
  owner: string;
  settings: LiveSettings;
  workloads: Workload[];
  logger: Logger;
  metrics: Metrics;
  listenerCheckIntervalMs?: number;
  onDrainerEvent?: (event: DrainerEvent) => void;
}

export interface Reactor {
  start(): Promise<void>;
  /** Stops listening and claiming, lets in-flight work finish within graceMs, releases leases. */
  stop(graceMs: number): Promise<void>;
  listener(): Listener;
  /** The wake source in force on this replica (it follows the wake_source setting). */
  wakeSource(): WakeSource;
  /** The write-ahead log reader (running in `wal` mode only). */
  wal: WalWaker;
  poll: SafetyPoll;
  drainers: ReadonlyMap<string, Drainer>;
  workloads: readonly Workload[];
}

export function makeReactor(options: ReactorOptions): Reactor {
  const { settings, logger, metrics } = options;
  const log = logger.child({ component: "reactor" });
  const drainers = new Map<string, Drainer>();
  for (const workload of options.workloads) {
    drainers.set(
      workload.name,
      makeDrainer({
        workload,
        owner: options.owner,
        leaseSeconds: () => settings.current.lease_seconds,
        logger,
        metrics,
        onEvent: options.onDrainerEvent,
      }),
    );
  }
  const byChannel = new Map(options.workloads.map((w) => [w.channel, w.name]));
  // Every labelled series exists at 0 from the start, so increase() sees the first event.
  primeMetrics(metrics, {
    workloads: options.workloads.map((w) => w.name),
    channels: [...byChannel.keys(), CONFIG_CHANNEL],
  });
  const wakeAll = (reason: "reconnect" | "start" | "config") => {
    for (const d of drainers.values()) d.wake(reason);
  };
  const poll = makeSafetyPoll({
    pool: options.pool,
    workloads: options.workloads.map((workload) => ({
      workload,
      drainer: drainers.get(workload.name) as Drainer,
    })),
    intervalSeconds: () => settings.current.poll_interval_seconds,
    settings,
    logger,
    metrics,
    listener: () => listener,
  });

  async function reloadSettings() {
    try {
      await settings.reload();
    } catch (err) {
      log.warn({ err: (err as Error).message }, "settings reload failed; keeping current values");
    }
  }

  const wal = makeWalWaker({
    url: options.listenUrl,
    pool: options.pool,
    tables: options.workloads.map((w) => ({ workload: w.name, spec: w.queue.spec })),
    slotPrefix: `pg_reactor_${process.pid}`,
    logger,
    metrics,
    wake: (name) => drainers.get(name)?.wake("wal"),
    // Commits made before the stream started were never seen: catch up on everything.
    onStarted: (restart) => wakeAll(restart ? "reconnect" : "start"),
  });
  let wakeSource: WakeSource = "notify";

  /** Switches in the order the settings changed, one at a time. */
  let switching: Promise<void> = Promise.resolve();

  /** Follows the setting: starts or stops the WAL reader. NOTIFY stays for the config channel. */
  function applyWakeSource(next: WakeSource): Promise<void> {
    switching = switching.then(async () => {
      metrics.wakeSource.set({ source: "notify" }, next === "notify" ? 1 : 0);
      metrics.wakeSource.set({ source: "wal" }, next === "wal" ? 1 : 0);
      if (next === wakeSource || stopping) return;
      wakeSource = next;
      log.info({ wakeSource: next }, "wake source switched");
      if (next === "wal") wal.start();
      else await wal.stop();
    });
    return switching;
  }

  settings.onChange((changes) => {
    const names = new Set(changes.map((c) => c.name));
    if (names.has("poll_interval_seconds")) poll.reschedule();
    if (names.has("wake_source")) void applyWakeSource(settings.current.wake_source);
    // A re-enabled workload, or more capacity, drains at once.
    wakeAll("config");
  });

  function newListener(): Listener {
    return makeListener({
      url: options.listenUrl,
      channels: [...byChannel.keys(), CONFIG_CHANNEL],
      logger,
      metrics,
      checkIntervalMs: options.listenerCheckIntervalMs,
      onNotification(channel) {
        if (channel === CONFIG_CHANNEL) {
          void reloadSettings();
          return;
        }
        const name = byChannel.get(channel);
        if (name) drainers.get(name)?.wake("notify");
      },
      onConnected(reconnect) {
        // Notifications sent while we were away are gone: catch up on everything. At the
        // first connect the settings were just read by start().
        if (reconnect) void reloadSettings().then(() => wakeAll("reconnect"));
        else wakeAll("start");
      },
    });
  }

  let listener = newListener();
  let stopping = false;

  return {
    async start() {
      await settings.reload();
      await applyWakeSource(settings.current.wake_source);
      // The safety poll runs whatever LISTEN does: work flows (slowly) even when the LISTEN
      // connection cannot be made, and /health says the listener is down.
      poll.start();
      try {
        await listener.start();
      } catch (first) {
        let err = first;
        // Keep trying in the background (a pooler that refuses LISTEN, a server still
        // starting); the reactor runs meanwhile.
        void (async () => {
          for (let attempt = 0; !stopping; attempt++) {
            await listener.close();
            const delay = exponentialBackoff(attempt, 250, 10_000);
            log.warn({ err: (err as Error).message, retryInMs: delay }, "LISTEN connection failed");
            await sleep(delay);
            if (stopping) return;
            listener = newListener();
            try {
              await listener.start();
              return;
            } catch (next) {
              err = next;
            }
          }
        })();
        void poll.pollNow().catch(() => undefined);
      }
    },
    async stop(graceMs) {
      stopping = true;
      poll.stop();
      await Promise.all([listener.close(), wal.stop()]);
      await Promise.all([...drainers.values()].map((d) => d.stop(graceMs)));
    },
    listener: () => listener,
    wakeSource: () => wakeSource,
    wal,
    poll,
    drainers,
    workloads: options.workloads,
  };
}
