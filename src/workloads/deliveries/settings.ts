// The deliveries workload's runtime settings (configuration_params, category reactor).
import { boolean, integer, integerList, type SettingsOf } from "../../reactor/settings-spec.js";

/** The Standard Webhooks retry schedule, in seconds (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h). */
export const STANDARD_WEBHOOKS_SCHEDULE = [5, 300, 1800, 7200, 18000, 36000, 36000] as const;

export const DELIVERIES_SETTINGS = {
  deliveries_enabled: boolean(true, "Deliver outbox events as webhooks."),
  delivery_concurrency: integer(1, 256, 16, "Webhook requests in flight per replica."),
  delivery_timeout_seconds: integer(1, 60, 15, "Timeout of one webhook attempt."),
  delivery_retry_schedule_seconds: integerList(
    { minItems: 1, maxItems: 30, min: 1, max: 86400 },
    [...STANDARD_WEBHOOKS_SCHEDULE],
    "Delays between webhook attempts (±20 % jitter); exhausted means failed.",
  ),
  retention_days: integer(1, 365, 7, "Age after which final deliveries and events are deleted."),
} as const;

export type DeliveriesSettings = SettingsOf<typeof DELIVERIES_SETTINGS>;
