// The Custom Store XML reader: a document becomes every order the uploads workload can
// send, or one error that says where (line and column, or order and field). Pure; the
// import workload that writes the rows builds on it.
import { describe, expect, it } from "vitest";
import {
  MAX_ORDERS_PER_DOCUMENT,
  parseCustomStoreXml,
} from "../src/workloads/imports/custom-store-xml.js";
import { buildOrder } from "../src/workloads/uploads/order.js";

function order(fields: Record<string, string> = {}, extra = ""): string {
  const f = {
    OrderID: "store-1001",
    OrderNumber: "1001",
    OrderDate: "11/23/2026 14:05",
    OrderStatus: "paid",
    OrderTotal: "31.48",
    TaxAmount: "1.50",
    ShippingAmount: "4.50",
    ...fields,
  };
  const tags = Object.entries(f)
    .map(([k, v]) => `<${k}><![CDATA[${v}]]></${k}>`)
    .join("\n    ");
  return `<Order>
    ${tags}
    <Customer>
      <CustomerCode>ada@example.com</CustomerCode>
      <BillTo><Name>Ada Lovelace</Name><Email>ada@example.com</Email></BillTo>
      <ShipTo>
        <Name>Ada Lovelace</Name><Company>Analytical &amp; Co</Company>
        <Address1>12 St James's Square</Address1><City>London</City>
        <State>LND</State><PostalCode>SW1Y 4JH</PostalCode><Country>GB</Country>
      </ShipTo>
    </Customer>
    <Items>
      <Item>
        <SKU>ENG-1</SKU><Name>Difference engine</Name><Quantity>2</Quantity>
        <UnitPrice>12.74</UnitPrice><Weight>8</Weight><WeightUnits>Ounces</WeightUnits>
        <Options><Option><Name>Colour</Name><Value>Brass</Value></Option></Options>
      </Item>
    </Items>
    ${extra}
  </Order>`;
}

const doc = (...orders: string[]) =>
  `<?xml version="1.0" encoding="utf-8"?>\n<Orders>\n${orders.join("\n")}\n</Orders>`;

describe("Custom Store order XML", () => {
  it("three orders become three rows the uploads workload can send", () => {
    const result = parseCustomStoreXml(
      doc(
        order(),
        order({ OrderID: "store-1002", OrderNumber: "1002", OrderStatus: "unpaid" }),
        order({ OrderID: "store-1003", OrderNumber: "1003", OrderStatus: "on_hold" }),
      ),
    );
    if (!result.ok) throw new Error(result.error);
    expect(result.orders.map((o) => [o.orderKey, o.orderNumber, o.status])).toEqual([
      ["store-1001", "1001", "awaiting_shipment"],
      ["store-1002", "1002", "awaiting_payment"],
      ["store-1003", "1003", "on_hold"],
    ]);
    const [first] = result.orders;
    expect(first?.payload).toMatchObject({
      orderDate: "2026-11-23T14:05:00Z",
      customerEmail: "ada@example.com",
      amountPaid: 31.48,
      shipTo: { name: "Ada Lovelace", company: "Analytical & Co", country: "GB" },
      items: [
        {
          sku: "ENG-1",
          quantity: 2,
          unitPrice: 12.74,
          weight: { value: 8, units: "ounces" },
          options: [{ name: "Colour", value: "Brass" }],
        },
      ],
    });
    // What the upload would send: the date converted to ShipStation's Pacific form.
    const built = buildOrder({
      id: 1,
      order_number: first?.orderNumber as string,
      order_key: first?.orderKey ?? null,
      upload_key: first?.orderKey as string,
      status: first?.status as string,
      payload: JSON.stringify(first?.payload),
      payload_bytes: 0,
      created_at: new Date(),
    });
    if (!built.ok) throw new Error(built.error);
    expect(built.order.orderDate).toBe("2026-11-23T06:05:00.0000000");
  });

  it("keeps an OrderID's digits as text, and an order without OrderID gets null", () => {
    const result = parseCustomStoreXml(
      doc(order({ OrderID: "000123" }), order({ OrderID: "", OrderNumber: "x" })),
    );
    if (!result.ok) throw new Error(result.error);
    expect(result.orders.map((o) => o.orderKey)).toEqual(["000123", null]);
  });

  it.each([
    ["<Orders><Order></Orders>", /line 1, column \d+/],
    ["not xml at all", /not well-formed XML/],
    ["<Root><Order/></Root>", /root element must be <Orders>/],
    ["<Orders></Orders>", /holds no <Order>/],
  ])("refuses %j saying where", (xml, message) => {
    const result = parseCustomStoreXml(xml);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.error).toMatch(message);
  });

  it.each([
    [
      { OrderDate: "2026-11-23 14:05" },
      /Order 2 \(OrderNumber 1001\): OrderDate must be MM\/dd\/yyyy HH:mm \(UTC\)/,
    ],
    [{ OrderDate: "02/30/2026 10:00" }, /OrderDate is not a real date-time/],
    [{ OrderNumber: "" }, /Order 2: OrderNumber is required/],
    [{ OrderStatus: "shipped" }, /OrderStatus 'shipped' cannot be imported/],
    [{ OrderStatus: "lost" }, /OrderStatus must be one of/],
    [{ OrderTotal: "12,50" }, /OrderTotal must be a decimal number/],
    [{ OrderID: "store-0" }, /OrderID "store-0" is also Order 1's/],
  ])(
    "one invalid order refuses the whole document, naming the order and the field: %j",
    (fields, message) => {
      const result = parseCustomStoreXml(doc(order({ OrderID: "store-0" }), order(fields)));
      expect(result.ok).toBe(false);
      if (!result.ok) expect(result.error).toMatch(message);
    },
  );

  it("a missing ShipTo name or item quantity is named with its path", () => {
    const noName = order().replace(
      "<ShipTo>\n        <Name>Ada Lovelace</Name>",
      "<ShipTo>\n        ",
    );
    const a = parseCustomStoreXml(doc(noName));
    expect(!a.ok && a.error).toMatch(
      /Order 1 \(OrderNumber 1001\): Customer\/ShipTo\/Name is required/,
    );
    const b = parseCustomStoreXml(
      doc(order().replace("<Quantity>2</Quantity>", "<Quantity>0</Quantity>")),
    );
    expect(!b.ok && b.error).toMatch(
      /Items\/Item\[1\]\/Quantity must be a whole number of at least 1/,
    );
  });

  it("refuses a NUL character (PostgreSQL cannot store one) naming the order and the field", () => {
    const result = parseCustomStoreXml(
      doc(order(), order({ OrderNumber: "N-2" }).replace("<City>", "<City>Aus\u0000")),
    );
    expect(result).toMatchObject({
      ok: false,
      error: "Order 2 (OrderNumber N-2): Customer/ShipTo/City contains a NUL character",
    });
  });

  it("refuses a DTD (entity expansion, external entities) before reading anything", () => {
    const bomb = `<?xml version="1.0"?>\n<!DOCTYPE Orders [<!ENTITY a "${"x".repeat(9000)}"><!ENTITY e SYSTEM "file:///etc/passwd">]>\n${doc(order({ OrderID: "&a;&a;&a;&e;" }))}`;
    const result = parseCustomStoreXml(bomb);
    expect(result).toEqual({
      ok: false,
      error:
        "a DOCTYPE declaration at line 2, column 1: DTDs and entities are not accepted (Custom Store order XML has none)",
      line: 2,
      column: 1,
    });
  });

  it(`refuses more orders than the limit (${MAX_ORDERS_PER_DOCUMENT} by default) in one document`, () => {
    const one = order({ OrderID: "" });
    const result = parseCustomStoreXml(doc(one, one, one), { maxOrders: 2 });
    expect(!result.ok && result.error).toMatch(
      /holds more than 2 <Order> elements; at most 2 orders are imported from one document/,
    );
  });
});
