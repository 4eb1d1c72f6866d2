// A valid ShipStation order payload for orders_inbox.payload, used by the demo, the
// benchmark and the tests.
export function sampleOrderPayload(overrides: Record<string, unknown> = {}) {
  return {
    orderDate: "2026-11-20T10:00:00Z",
    billTo: { name: "Ada Lovelace" },
    shipTo: {
      name: "Ada Lovelace",
      street1: "12 St James's Square",
      city: "London",
      postalCode: "SW1Y 4JH",
      country: "GB",
    },
    items: [{ sku: "BOOK-1", name: "Notes", quantity: 1, unitPrice: 12.5 }],
    amountPaid: 12.5,
    ...overrides,
  };
}
