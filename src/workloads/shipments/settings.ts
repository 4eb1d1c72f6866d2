// The shipments workload's runtime settings (configuration_params, category reactor).
import { boolean, integer, type SettingsOf } from "../../reactor/settings-spec.js";

export const SHIPMENTS_SETTINGS = {
  shipments_enabled: boolean(
    true,
    "Apply ShipStation shipments (SHIP_NOTIFY and the watermark poll) to orders_inbox.",
  ),
  shipment_sync_interval_seconds: integer(
    10,
    86400,
    120,
    "Period of the watermark poll of GET /shipments, the safety net under SHIP_NOTIFY.",
  ),
} as const;

export type ShipmentsSettings = SettingsOf<typeof SHIPMENTS_SETTINGS>;
