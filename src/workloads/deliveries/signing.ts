// Builds the exact bytes and Standard Webhooks headers of one delivery attempt. The
// body is serialised once and those bytes are both signed and sent.
import { Webhook } from "standardwebhooks";
import { USER_AGENT } from "../../version.js";

export interface EventForDelivery {
  eventId: string;
  eventType: string;
  createdAt: Date;
  /** The event's payload as the JSON text PostgreSQL stored. */
  payloadJson: string;
}

/**
 * `{"type","timestamp","data"}`: the body every subscriber receives. The payload's stored
 * JSON text is spliced in as is: numbers keep every digit, and no payload, however deeply
 * nested, has to be walked to be sent.
 */
export function deliveryBody(event: EventForDelivery): string {
  const head = JSON.stringify({
    type: event.eventType,
    timestamp: new Date(event.createdAt).toISOString(),
  });
  return `${head.slice(0, -1)},"data":${event.payloadJson}}`;
}

/**
 * Headers for one attempt: webhook-id is the event id (stable across retries, so
 * receivers can de-duplicate); the timestamp is fresh; while a previous secret is set,
 * a second v1 signature lets receivers that still hold it verify during rotation.
 */
export function signedHeaders(
  event: EventForDelivery,
  body: string,
  secrets: { secret: string; previousSecret: string | null },
  now = new Date(),
): Record<string, string> {
  const signatures = [new Webhook(secrets.secret).sign(event.eventId, now, body)];
  if (secrets.previousSecret) {
    signatures.push(new Webhook(secrets.previousSecret).sign(event.eventId, now, body));
  }
  return {
    "content-type": "application/json",
    "user-agent": USER_AGENT,
    "webhook-id": event.eventId,
    "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
    "webhook-signature": signatures.join(" "),
  };
}
