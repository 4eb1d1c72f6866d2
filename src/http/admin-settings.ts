// The reactor's runtime settings over the admin API (the console's Settings view): each
// with its value in force on this replica, what is stored, the default and what it means.
// A write goes to configuration_params like any operator's UPDATE, so the database's
// validation trigger decides, and its message is the answer when it refuses; the other
// replicas follow through the config NOTIFY.
import type { FastifyInstance } from "fastify";
import type { App } from "../app.js";
import { SETTINGS_ROWS_SQL, type SettingRow } from "../reactor/settings.js";
import {
  describeExpected,
  formatSetting,
  parseSetting,
  SettingValueError,
  type WakeSource,
} from "../reactor/settings-spec.js";
import { switchWakeSource, WakeSourceRefused } from "../reactor/wake-source.js";
import { SETTINGS } from "../workloads/index.js";
import { badRequest, NO_NUL, notFound } from "./validation.js";

const nameParams = {
  type: "object",
  required: ["name"],
  properties: { name: { type: "string", minLength: 1, maxLength: 100, pattern: "^[a-z0-9_]+$" } },
} as const;

const valueBody = {
  type: "object",
  required: ["value"],
  additionalProperties: false,
  properties: { value: { type: "string", maxLength: 1000, pattern: NO_NUL } },
} as const;

const spec = SETTINGS as Readonly<
  Record<string, { kind: Parameters<typeof describeExpected>[0]; default: unknown; doc: string }>
>;

export function registerSettingsRoutes(admin: FastifyInstance, app: App): void {
  async function stored(): Promise<Map<string, string | null>> {
    const { rows } = await app.pool.query<SettingRow>(SETTINGS_ROWS_SQL);
    return new Map(rows.map((r) => [r.parameter_name, r.value]));
  }

  function item(name: string, rows: Map<string, string | null>) {
    const setting = spec[name];
    if (!setting) throw new Error(`unknown setting ${name}`);
    return {
      name,
      value: formatSetting((app.settings.current as Record<string, unknown>)[name]),
      stored: rows.has(name) ? (rows.get(name) ?? null) : null,
      default: formatSetting(setting.default),
      expected: describeExpected(setting.kind),
      kind: setting.kind,
      doc: setting.doc,
    };
  }

  const known = (name: string) => Object.hasOwn(spec, name);
  const unknown = (name: string) =>
    `no setting reactor.${name}; the settings are ${Object.keys(spec).join(", ")}`;

  admin.get("/settings", async () => {
    const rows = await stored();
    return {
      instanceId: app.env.instanceId,
      reloadedAt: app.settings.lastReloadAt(),
      items: Object.keys(spec).map((name) => item(name, rows)),
    };
  });

  admin.put(
    "/settings/:name",
    { schema: { params: nameParams, body: valueBody } },
    async (req, reply) => {
      const { name } = req.params as { name: string };
      const { value } = req.body as { value: string };
      if (!known(name)) return notFound(reply, unknown(name));
      if (name === "wake_source") {
        // The switch checks the server first and moves the triggers with the setting. The
        // value is refused with the trigger's own words (the switch bypasses the trigger).
        let mode: WakeSource;
        try {
          mode = parseSetting(SETTINGS, name, value) as WakeSource;
        } catch (err) {
          if (err instanceof SettingValueError) throw badRequest(err.message);
          throw err;
        }
        try {
          await switchWakeSource(app.pool, mode);
        } catch (err) {
          if (err instanceof WakeSourceRefused) throw badRequest(err.message);
          throw err;
        }
      } else {
        // The validation trigger refuses a bad value with its own message (a 400 here).
        await app.pool.query(
          `INSERT INTO configuration_params (category, parameter_name, value, description)
         VALUES ('reactor', $1, $2, $3)
         ON CONFLICT (category, parameter_name, sku)
         DO UPDATE SET value = EXCLUDED.value, updated_at = now()`,
          [name, value, spec[name]?.doc ?? null],
        );
      }
      await app.settings.reload();
      return item(name, await stored());
    },
  );

  admin.delete("/settings/:name", { schema: { params: nameParams } }, async (req, reply) => {
    const { name } = req.params as { name: string };
    if (!known(name)) return notFound(reply, unknown(name));
    if (name === "wake_source")
      throw badRequest("reactor.wake_source is switched, not reset: set it to notify or wal");
    await app.pool.query(
      `DELETE FROM configuration_params WHERE category = 'reactor' AND sku IS NULL AND parameter_name = $1`,
      [name],
    );
    await app.settings.reload();
    return item(name, await stored());
  });
}
