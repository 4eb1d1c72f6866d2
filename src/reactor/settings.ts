// The settings in force, read from configuration_params (category 'reactor', sku null).
// Loaded at start and reloaded on every reactor_config notification and reconnect;
// a value that does not parse is refused and the last good value stays.
import type { Pool } from "../db/pool.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import {
  defaultSettings,
  formatSetting,
  isSettingName,
  parseSetting,
  type SettingName,
  type Settings,
} from "./settings-spec.js";

export const SETTINGS_CATEGORY = "reactor";

export interface SettingChange {
  name: SettingName;
  from: unknown;
  to: unknown;
}

export interface LiveSettings {
  /** The settings in force. Read it at the point of use so changes apply at once. */
  readonly current: Readonly<Settings>;
  /** Re-reads the table; concurrent calls coalesce into at most one more read. */
  reload(): Promise<SettingChange[]>;
  onChange(listener: (changes: SettingChange[]) => void): void;
  lastReloadAt(): Date | null;
}

export function makeLiveSettings(pool: Pool, logger: Logger, metrics: Metrics): LiveSettings {
  const log = logger.child({ component: "settings" });
  const current = defaultSettings();
  // The last good value per key, so a bad write keeps it rather than falling to the default.
  const lastGood = new Map<SettingName, unknown>();
  const listeners: Array<(changes: SettingChange[]) => void> = [];
  let running: Promise<SettingChange[]> | null = null;
  let rerun = false;
  let lastReloadAt: Date | null = null;

  async function readOnce(): Promise<SettingChange[]> {
    const { rows } = await pool.query<{ parameter_name: string; value: string | null }>(
      `SELECT parameter_name, value FROM configuration_params
       WHERE category = $1 AND sku IS NULL`,
      [SETTINGS_CATEGORY],
    );
    metrics.configReloads.inc();
    lastReloadAt = new Date();
    const next = defaultSettings() as Record<SettingName, unknown>;
    const seen = new Set<SettingName>();
    for (const row of rows) {
      if (!isSettingName(row.parameter_name)) {
        metrics.configRejected.inc();
        log.error(
          { key: row.parameter_name },
          `unknown setting reactor.${row.parameter_name} ignored`,
        );
        continue;
      }
      const name = row.parameter_name;
      seen.add(name);
      try {
        next[name] = parseSetting(name, row.value);
        lastGood.set(name, next[name]);
      } catch (err) {
        metrics.configRejected.inc();
        const keep = lastGood.get(name) ?? next[name];
        next[name] = keep;
        log.error({ key: name }, `${(err as Error).message}; keeping ${formatSetting(keep)}`);
      }
    }
    for (const name of lastGood.keys()) if (!seen.has(name)) lastGood.delete(name);
    const changes: SettingChange[] = [];
    const mutable = current as Record<SettingName, unknown>;
    for (const name of Object.keys(next) as SettingName[]) {
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
    onChange: (l) => void listeners.push(l),
    lastReloadAt: () => lastReloadAt,
  };
}
