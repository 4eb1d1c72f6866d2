// The settings in force, read from configuration_params (category 'reactor', sku null).
// Loaded at start and reloaded on every reactor_config notification and reconnect;
// a value that does not parse is refused and the last good value stays.
import type { Pool } from "../db/pool.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import { sleep } from "./backoff.js";
import {
  type CORE_SETTINGS,
  type CoreSettings,
  defaultSettings,
  formatSetting,
  parseSettingRows,
  type SettingRow,
  type SettingsOf,
  type SettingsSpec,
} from "./settings-spec.js";

export type { SettingRow };

/** Reloads in a burst of config notifications are at least this far apart. */
export const MIN_RELOAD_GAP_MS = 20;

export interface SettingChange {
  name: string;
  from: unknown;
  to: unknown;
}

/** The rows the settings are made of; the safety poll selects them in its own query. */
export const SETTINGS_ROWS_SQL = `SELECT parameter_name, value FROM configuration_params
  WHERE category = 'reactor' AND sku IS NULL`;

/** The settings in force; the generic machinery sees the core ones, each workload its own. */
export interface LiveSettings<T extends CoreSettings = CoreSettings> {
  /** The settings in force. Read it at the point of use so changes apply at once. */
  readonly current: Readonly<T>;
  /** Re-reads the table; concurrent calls coalesce into at most one more read. */
  reload(): Promise<SettingChange[]>;
  /** Applies rows read elsewhere (the safety poll's combined query). */
  apply(rows: SettingRow[]): SettingChange[];
  onChange(listener: (changes: SettingChange[]) => void): void;
  lastReloadAt(): Date | null;
}

export function makeLiveSettings<S extends SettingsSpec & typeof CORE_SETTINGS>(
  pool: Pool,
  spec: S,
  logger: Logger,
  metrics: Metrics,
): LiveSettings<SettingsOf<S>> {
  const log = logger.child({ component: "settings" });
  const current = defaultSettings(spec);
  // The last good value per key, so a bad write keeps it rather than falling to the default.
  const lastGood = new Map<string, unknown>();
  // Bad values already reported, so each is logged and counted once, not on every poll.
  const rejected = new Map<string, string | null>();
  const listeners: Array<(changes: SettingChange[]) => void> = [];
  let lastReadStart = 0;

  function reject(row: SettingRow, message: string) {
    if (rejected.has(row.parameter_name) && rejected.get(row.parameter_name) === row.value) return;
    rejected.set(row.parameter_name, row.value);
    metrics.configRejected.inc();
    log.error({ key: row.parameter_name }, message);
  }
  let running: Promise<SettingChange[]> | null = null;
  let rerun = false;
  let lastReloadAt: Date | null = null;

  async function readOnce(): Promise<SettingChange[]> {
    const { rows } = await pool.query<SettingRow>(SETTINGS_ROWS_SQL);
    return apply(rows);
  }

  function apply(rows: SettingRow[]): SettingChange[] {
    metrics.configReloads.inc();
    lastReloadAt = new Date();
    const { values, problems } = parseSettingRows(spec, rows);
    const next: Record<string, unknown> = { ...defaultSettings(spec), ...values };
    for (const [name, value] of Object.entries(values)) {
      lastGood.set(name, value);
      rejected.delete(name);
    }
    for (const problem of problems) {
      if (!Object.hasOwn(spec, problem.parameter_name)) {
        reject(problem, `${problem.message} ignored`);
        continue;
      }
      const keep = lastGood.get(problem.parameter_name) ?? next[problem.parameter_name];
      next[problem.parameter_name] = keep;
      reject(problem, `${problem.message}; keeping ${formatSetting(keep)}`);
    }
    // A deleted row forgets its last good value (back to the default) and its report.
    const present = new Set(rows.map((r) => r.parameter_name));
    for (const name of lastGood.keys()) if (!present.has(name)) lastGood.delete(name);
    for (const name of rejected.keys()) if (!present.has(name)) rejected.delete(name);
    const changes: SettingChange[] = [];
    const mutable = current as Record<string, unknown>;
    for (const name of Object.keys(next)) {
      const from = mutable[name];
      const to = next[name];
      if (formatSetting(from) !== formatSetting(to)) {
        changes.push({ name, from, to });
        mutable[name] = to;
        log.info(
          { key: name, from: formatSetting(from), to: formatSetting(to) },
          `setting ${name}: ${formatSetting(from)} → ${formatSetting(to)}`,
        );
      }
    }
    if (changes.length > 0) for (const l of listeners) l(changes);
    return changes;
  }

  async function reload(): Promise<SettingChange[]> {
    if (running) {
      rerun = true;
      return running;
    }
    running = (async () => {
      const all: SettingChange[] = [];
      try {
        do {
          rerun = false;
          // The first change of a burst is read at once; the rest collapse into at most
          // one read per MIN_RELOAD_GAP_MS.
          const wait = lastReadStart + MIN_RELOAD_GAP_MS - Date.now();
          if (wait > 0) await sleep(wait);
          lastReadStart = Date.now();
          all.push(...(await readOnce()));
        } while (rerun);
      } finally {
        running = null;
      }
      return all;
    })();
    return running;
  }

  return {
    current,
    reload,
    apply,
    onChange: (l) => void listeners.push(l),
    lastReloadAt: () => lastReloadAt,
  };
}
