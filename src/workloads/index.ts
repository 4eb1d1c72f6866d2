// The one list of workloads (docs/architecture.md §6). The app, the status server, the
// admin API, the CLI and the settings generator read it; none of them names a workload.
// A new workload is a folder under src/workloads/ and one entry in each list below (a
// source, one in SOURCES).
import { SHIPSTATION_SETTINGS } from "../outbound/shipstation-account.js";
import { CORE_SETTINGS, type SettingsOf } from "../reactor/settings-spec.js";
import { deliveriesModule } from "./deliveries/index.js";
import { importsModule } from "./imports/index.js";
import type { SourceModule, WorkloadModule } from "./module.js";
import { shipmentsModule } from "./shipments/index.js";
import { uploadsModule } from "./uploads/index.js";

export const WORKLOADS: readonly WorkloadModule[] = [
  uploadsModule,
  deliveriesModule,
  shipmentsModule,
];

/** Inbound sources without a queue of their own: they write rows the workloads take. */
export const SOURCES: readonly SourceModule[] = [importsModule];

/**
 * Every runtime setting: the core's, the ShipStation account's, then each workload's, in
 * the order the README table shows them.
 */
export const SETTINGS = {
  ...CORE_SETTINGS,
  ...SHIPSTATION_SETTINGS,
  ...uploadsModule.settings,
  ...deliveriesModule.settings,
  ...shipmentsModule.settings,
} as const;

export type Settings = SettingsOf<typeof SETTINGS>;
export type SettingName = keyof Settings;
