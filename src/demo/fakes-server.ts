// The compose `demo` profile's targets: a fake ShipStation on :9001 and a webhook
// receiver on :9002, logging one line per request so `docker compose logs` shows traffic.
import { startFakeShipStation } from "./fake-shipstation.js";
import { startReceiver } from "./receiver.js";

const host = process.env.FAKES_HOST ?? "0.0.0.0";
const shipstation = await startFakeShipStation({
  host,
  port: Number(process.env.FAKE_SHIPSTATION_PORT ?? 9001),
  // SHIP_NOTIFY's resource_url must be on the reactor's SHIPSTATION_BASE_URL origin.
  publicUrl: process.env.FAKE_SHIPSTATION_PUBLIC_URL ?? "http://fakes:9001",
});
const receiver = await startReceiver({
  host,
  port: Number(process.env.FAKE_RECEIVER_PORT ?? 9002),
});
process.stdout.write(
  `fake ShipStation on ${host}:${process.env.FAKE_SHIPSTATION_PORT ?? 9001}, webhook receiver on ${host}:${process.env.FAKE_RECEIVER_PORT ?? 9002}\n`,
);

let seenCalls = 0;
let seenHooks = 0;
setInterval(() => {
  for (const call of shipstation.calls.slice(seenCalls)) {
    process.stdout.write(`shipstation: createorders with ${call.orders.length} order(s)\n`);
  }
  for (const req of receiver.requests.slice(seenHooks)) {
    process.stdout.write(`receiver: ${req.path} webhook-id=${String(req.headers["webhook-id"])}\n`);
  }
  seenCalls = shipstation.calls.length;
  seenHooks = receiver.requests.length;
  // Keep memory flat in a long demo.
  if (seenCalls > 10_000) {
    shipstation.calls.length = 0;
    seenCalls = 0;
  }
  if (seenHooks > 10_000) {
    receiver.requests.length = 0;
    seenHooks = 0;
  }
}, 500);

const stop = async () => {
  await Promise.all([shipstation.close(), receiver.close()]);
  process.exit(0);
};
process.on("SIGTERM", () => void stop());
process.on("SIGINT", () => void stop());
