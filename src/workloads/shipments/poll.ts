// The watermark poll, the safety net under SHIP_NOTIFY (as the safety poll is under
// NOTIFY): every shipment_sync_interval_seconds, one replica (an advisory lock, not a
// leader) lists GET /shipments created since the watermark minus an overlap, oldest
// first, every page, applies them, and moves the watermark forward.
//
// The watermark is the newest createDate seen, read in ShipStation's own clock (its
// offset-less US Pacific local time) and written back in the same form, so a skew
// between ShipStation's clock and ours, or a wrong guess of its zone, cancels out.
// What remains is covered by the overlap and by shipment-id de-duplication (apply.ts).

import { withDirectLock } from "../../db/direct-lock.js";
import type { Pool } from "../../db/pool.js";
import type { Logger } from "../../logger.js";
import type { ShipStationAccount } from "../../outbound/shipstation-account.js";
import { SHIPMENTS_MAX_PAGE_SIZE, toShipStationTime } from "../../outbound/shipstation-client.js";
import type { WorkloadCheck } from "../../reactor/workload.js";
import type { Walker } from "./fetch.js";
import type { ShipmentsSettings } from "./settings.js";

/** The poll's row in reactor_sync_state. */
export const SYNC_NAME = "shipstation_shipments";
/**
 * Each poll starts this far before the watermark. One hour, because ShipStation's clock
 * is local US Pacific time without an offset: when summer time ends, 01:00-01:59 comes
 * twice, and a shipment of the second pass reads as earlier than one of the first.
 */
export const OVERLAP_MS = 60 * 60 * 1000;
/** With no watermark yet (the first poll ever), look back this far. */
export const INITIAL_LOOKBACK_MS = 24 * 60 * 60 * 1000;
/** Advisory lock key of the poll ("shipmpoll" in ASCII, a constant no one else uses). */
const POLL_LOCK_KEY = 0x736869706d706f6cn;
/** The last successful poll older than this many intervals makes /health warn. */
export const STALE_INTERVALS = 3;

export interface SyncState {
  watermark: Date | null;
  /** When a poll last finished (any replica), on this process's clock. */
  polledAt: Date | null;
}

export interface ShipmentPoll {
  run(): Promise<void>;
  /** The state as last read by this replica. */
  state(): SyncState;
  /** Reads the state now (for /status). */
  read(): Promise<SyncState>;
  check(): WorkloadCheck;
}

export function makeShipmentPoll(options: {
  pool: Pool;
  directUrl: string;
  settings: Readonly<ShipmentsSettings>;
  account: ShipStationAccount;
  walker: Walker;
  logger: Logger;
  startedAt: Date;
}): ShipmentPoll {
  const { pool, settings, account, walker } = options;
  const log = options.logger.child({ workload: "shipments", component: "shipment-poll" });
  let known: SyncState = { watermark: null, polledAt: null };
  const intervalMs = () => settings.shipment_sync_interval_seconds * 1000;

  // The age is computed by the database, whose clock wrote updated_at, and turned into
  // this process's time: a skew between the two clocks cannot make a poll look recent
  // forever (and skip every turn) or stale.
  const STATE_COLUMNS =
    "watermark, (extract(epoch FROM now() - updated_at) * 1000)::float8 AS age_ms";

  async function read(): Promise<SyncState> {
    const { rows } = await pool.query<{ watermark: Date | null; age_ms: number }>(
      `SELECT ${STATE_COLUMNS} FROM reactor_sync_state WHERE name = $1`,
      [SYNC_NAME],
    );
    return remember(rows[0]);
  }

  function remember(row: { watermark: Date | null; age_ms: number } | undefined): SyncState {
    known = {
      watermark: row?.watermark ?? null,
      polledAt: row ? new Date(Date.now() - Math.max(0, Number(row.age_ms))) : null,
    };
    return known;
  }

  /** Records a finished poll and returns the state as stored (one round trip, not two). */
  async function save(watermark: Date | null): Promise<SyncState> {
    // The watermark never moves back (greatest ignores NULL).
    const { rows } = await pool.query<{ watermark: Date | null; age_ms: number }>(
      `INSERT INTO reactor_sync_state (name, watermark, updated_at) VALUES ($1, $2, now())
       ON CONFLICT (name) DO UPDATE
         SET watermark = greatest(reactor_sync_state.watermark, excluded.watermark),
             updated_at = now()
       RETURNING ${STATE_COLUMNS}`,
      [SYNC_NAME, watermark],
    );
    return remember(rows[0]);
  }

  async function pollLocked() {
    const before = await read();
    // Another replica polled less than an interval ago: nothing to do until the next one.
    if (before.polledAt && Date.now() - before.polledAt.getTime() < intervalMs() * 0.8) return;
    const client = account.client;
    if (!client) return;
    const start = before.watermark
      ? new Date(before.watermark.getTime() - OVERLAP_MS)
      : new Date(Date.now() - INITIAL_LOOKBACK_MS);
    const createDateStart = toShipStationTime(start);
    const result = await walker.walk(
      (page) =>
        client.shipmentsListUrl({ createDateStart, page, pageSize: SHIPMENTS_MAX_PAGE_SIZE }),
      "poll",
    );
    if (result.kind === "done") {
      await save(result.newest);
      log.debug(
        { shipments: result.shipments, applied: result.applied, createDateStart },
        "shipment poll done",
      );
      // A walk cut short at its page limit was logged by the walker.
      return;
    }
    // Keep what was applied: pages come oldest first, so the newest seen is safe to keep.
    if (result.newest) {
      await pool.query(
        `UPDATE reactor_sync_state SET watermark = greatest(watermark, $2) WHERE name = $1`,
        [SYNC_NAME, result.newest],
      );
    }
    if (result.kind === "paused") {
      log.info(
        { until: new Date(result.at).toISOString() },
        "shipment poll paused with ShipStation calls",
      );
    } else {
      log.warn({ err: result.error }, "shipment poll failed; the next interval tries again");
    }
  }

  return {
    async run() {
      if (!settings.shipments_enabled || account.unavailable()) return;
      if (account.pausedUntil() > Date.now()) return;
      const outcome = await withDirectLock(
        options.directUrl,
        POLL_LOCK_KEY,
        { name: "shipment poll" },
        pollLocked,
      );
      // Another replica is polling: learn its progress for /health, nothing more.
      if (!outcome.locked) await read();
    },
    state: () => known,
    read,
    check(): WorkloadCheck {
      if (!settings.shipments_enabled || account.unavailable()) {
        return {
          name: "watermark",
          status: "pass",
          output: "not polling (shipments disabled or no credentials)",
        };
      }
      const since = (known.polledAt ?? options.startedAt).getTime();
      const age = (Date.now() - since) / 1000;
      const limit = STALE_INTERVALS * settings.shipment_sync_interval_seconds;
      return age > limit
        ? {
            name: "watermark",
            status: "warn",
            observedValue: Math.round(age),
            output: `no shipment poll has finished for ${Math.round(age)} s (over ${STALE_INTERVALS} intervals of ${settings.shipment_sync_interval_seconds} s)`,
          }
        : { name: "watermark", status: "pass", observedValue: Math.round(age) };
    },
  };
}
