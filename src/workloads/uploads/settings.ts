// The uploads workload's runtime settings (configuration_params, category reactor).
import { boolean, integer, type SettingsOf } from "../../reactor/settings-spec.js";

export const UPLOADS_SETTINGS = {
  uploads_enabled: boolean(true, "Upload orders to ShipStation."),
  upload_batch_size: integer(1, 100, 100, "Orders per createorders call."),
  upload_concurrency: integer(1, 16, 2, "createorders calls in flight per replica."),
} as const;

export type UploadsSettings = SettingsOf<typeof UPLOADS_SETTINGS>;
