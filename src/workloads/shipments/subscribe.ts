// With PUBLIC_URL and SHIPSTATION_WEBHOOK_TOKEN set, the reactor subscribes SHIP_NOTIFY to
// its own hook at start, unless ShipStation already lists that subscription. Replicas
// starting together take an advisory lock first and look again inside it, so the
// subscription is made once. The target URL holds the token: it is never logged.

import { withDirectLock } from "../../db/direct-lock.js";
import type { Logger } from "../../logger.js";
import type { ShipStationAccount } from "../../outbound/shipstation-account.js";
import type { WorkloadCheck } from "../../reactor/workload.js";

/** Advisory lock key of the subscription step ("shipsubs" in ASCII). */
const SUBSCRIBE_LOCK_KEY = 0x7368697073756273n;
/** Another replica subscribing holds the lock for one or two ShipStation calls. */
const LOCK_WAIT_MS = 30_000;

export type SubscriptionState =
  | { state: "off"; reason: string }
  | { state: "pending" }
  | { state: "exists" | "created"; id: number | null; at: Date }
  | { state: "failed"; error: string; at: Date };

export function makeSubscriber(options: {
  account: ShipStationAccount;
  publicUrl: string | undefined;
  token: string | undefined;
  directUrl: string;
  logger: Logger;
}) {
  const log = options.logger.child({ workload: "shipments", component: "ship-notify" });
  let state: SubscriptionState = !options.publicUrl
    ? { state: "off", reason: "PUBLIC_URL is not set" }
    : !options.token
      ? { state: "off", reason: "SHIPSTATION_WEBHOOK_TOKEN is not set" }
      : { state: "pending" };
  const shown = `${options.publicUrl}/hooks/shipstation/…`;
  /**
   * An error as it may be shown (/status, /health, logs): ShipStation may echo the
   * target URL it refused, token and all, in its error text.
   */
  const hideToken = (text: string) => {
    const token = options.token;
    if (!token) return text;
    return [token, encodeURIComponent(token)].reduce((t, form) => t.split(form).join("…"), text);
  };

  async function subscribeLocked(target: string): Promise<SubscriptionState> {
    const client = options.account.client;
    if (!client) return { state: "off", reason: "no ShipStation credentials" };
    const listed = await client.listWebhooks();
    await options.account.observe("shipments", listed);
    if (listed.kind !== "ok")
      return {
        state: "failed",
        error: "error" in listed ? listed.error : "ShipStation rate limit (429)",
        at: new Date(),
      };
    const found = listed.webhooks.find((w) => w.url === target && w.event === "SHIP_NOTIFY");
    if (found) {
      if (!found.active)
        log.warn(
          { url: shown },
          "the SHIP_NOTIFY subscription exists but ShipStation shows it inactive",
        );
      return { state: "exists", id: found.id, at: new Date() };
    }
    const made = await client.subscribeWebhook({
      targetUrl: target,
      event: "SHIP_NOTIFY",
      friendlyName: "pg-reactor",
    });
    await options.account.observe("shipments", made);
    if (made.kind !== "ok")
      return {
        state: "failed",
        error: "error" in made ? made.error : "ShipStation rate limit (429)",
        at: new Date(),
      };
    return { state: "created", id: made.id, at: new Date() };
  }

  return {
    state: () => state,
    /** Makes sure the subscription exists; never throws (a failure is logged and shown). */
    async ensure(): Promise<void> {
      if (state.state === "off") return;
      if (!options.account.client) {
        state = { state: "off", reason: "no ShipStation credentials" };
        return;
      }
      const target = `${options.publicUrl}/hooks/shipstation/${options.token}`;
      try {
        const outcome = await withDirectLock(
          options.directUrl,
          SUBSCRIBE_LOCK_KEY,
          { name: "ship-notify subscribe", waitMs: LOCK_WAIT_MS },
          () => subscribeLocked(target),
        );
        state = outcome.locked
          ? outcome.value
          : {
              state: "failed",
              error: "another replica held the subscription lock too long",
              at: new Date(),
            };
      } catch (err) {
        state = { state: "failed", error: (err as Error).message, at: new Date() };
      }
      if (state.state === "failed") state = { ...state, error: hideToken(state.error) };
      if (state.state === "created")
        log.info({ url: shown, id: state.id }, "subscribed SHIP_NOTIFY");
      else if (state.state === "exists")
        log.info({ url: shown, id: state.id }, "SHIP_NOTIFY already subscribed");
      else if (state.state === "failed")
        log.error(
          { url: shown, err: state.error },
          "could not subscribe SHIP_NOTIFY; the watermark poll still finds shipments",
        );
    },
    check(): WorkloadCheck | null {
      if (state.state !== "failed") return null;
      return {
        name: "subscription",
        status: "warn",
        observedValue: false,
        output: `SHIP_NOTIFY subscription failed: ${state.error}`,
      };
    },
  };
}
