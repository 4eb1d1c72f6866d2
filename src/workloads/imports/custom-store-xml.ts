// Reads ShipStation's Custom Store order XML (`<Orders><Order>…`) into the rows the
// uploads workload sends: order_key (OrderID), order_number, status, and the payload
// (addresses, items, amounts, dates in ISO 8601 UTC). Pure, no I/O: a document is either
// read whole or refused with where it went wrong (a line and column for XML that is not
// well-formed, the order and the field for one that does not fit), never half-read.
import { isUtf8 } from "node:buffer";
import { XMLParser, XMLValidator } from "fast-xml-parser";

/** More orders than this in one document is refused (a runaway export, not a day's orders). */
export const MAX_ORDERS_PER_DOCUMENT = 50_000;

/** One order as it goes into orders_inbox. */
export interface ImportedOrder {
  /** OrderID; null when the document has none (the row's id becomes its orderKey). */
  orderKey: string | null;
  orderNumber: string;
  /** A ShipStation order status. */
  status: string;
  payload: Record<string, unknown>;
}

export type ParseResult =
  | { ok: true; orders: ImportedOrder[] }
  | { ok: false; error: string; line?: number; column?: number };

/**
 * Custom Store OrderStatus values as stores send them, and ShipStation's own names, to
 * the status the reactor uploads. 'shipped' is not here: ShipStation marks orders
 * shipped itself, and an import cannot.
 */
const STATUS_MAP: Readonly<Record<string, string>> = {
  unpaid: "awaiting_payment",
  awaiting_payment: "awaiting_payment",
  paid: "awaiting_shipment",
  awaiting_shipment: "awaiting_shipment",
  pending_fulfillment: "pending_fulfillment",
  on_hold: "on_hold",
  "on-hold": "on_hold",
  onhold: "on_hold",
  cancelled: "cancelled",
  canceled: "cancelled",
};

const WEIGHT_UNITS: Readonly<Record<string, string>> = {
  ounces: "ounces",
  ounce: "ounces",
  oz: "ounces",
  pounds: "pounds",
  pound: "pounds",
  lb: "pounds",
  lbs: "pounds",
  grams: "grams",
  gram: "grams",
  g: "grams",
};

/** OrderID is ShipStation's orderKey and a unique index key: longer is an export gone wrong. */
export const MAX_ORDER_ID_CHARS = 200;

const DECIMAL = /^-?\d{1,12}(?:\.\d{1,6})?$/;
/** A JavaScript number holds 15 significant digits exactly; more would be rounded silently. */
const MAX_SIGNIFICANT_DIGITS = 15;
/** `MM/dd/yyyy HH:mm` (one-digit month and day, seconds and AM/PM tolerated), in UTC. */
const ORDER_DATE = /^(\d{1,2})\/(\d{1,2})\/(\d{4}) (\d{1,2}):(\d{2})(?::(\d{2}))?(?: ?([AP]M))?$/i;

/** The five entities XML predefines; any other name is refused before the parse (scanReferences). */
const PREDEFINED: Readonly<Record<string, string>> = {
  amp: "&",
  lt: "<",
  gt: ">",
  quot: '"',
  apos: "'",
};

/** A code point XML 1.0 allows in a document (§2.2 Char): no NUL, no lone surrogate. */
function isXmlChar(cp: number): boolean {
  return (
    cp === 0x9 ||
    cp === 0xa ||
    cp === 0xd ||
    (cp >= 0x20 && cp <= 0xd7ff) ||
    (cp >= 0xe000 && cp <= 0xfffd) ||
    (cp >= 0x10000 && cp <= 0x10ffff)
  );
}

const REFERENCE = /&(?:#x([0-9A-Fa-f]{1,6})|#([0-9]{1,7})|([A-Za-z_][\w.-]*));/g;

/**
 * Decodes the predefined entities and numeric character references (XML 1.0 §4.1), which
 * the parser's own decoder leaves as text unless told to decode HTML's entities too.
 * scanReferences has refused every other reference before the parse.
 */
const xmlEntities = {
  setExternalEntities() {},
  addInputEntities() {},
  reset() {},
  setXmlVersion() {},
  decode(text: string): string {
    if (!text.includes("&")) return text;
    return text.replace(REFERENCE, (whole, hex?: string, dec?: string, name?: string) => {
      if (name !== undefined) return PREDEFINED[name] ?? whole;
      return String.fromCodePoint(hex !== undefined ? Number.parseInt(hex, 16) : Number(dec));
    });
  },
};

const parser = new XMLParser({
  ignoreAttributes: true,
  // Every value stays text: "00123" is an OrderID, not the number 123.
  parseTagValue: false,
  // Trimmed in text(), once for the element's whole text: trimming each piece would eat
  // the spaces around a CDATA section ("Leave at <![CDATA[<door>]]> please").
  trimValues: false,
  processEntities: true,
  entityDecoder: xmlEntities,
  isArray: (_name, path) =>
    path === "Orders.Order" ||
    path === "Orders.Order.Items.Item" ||
    path === "Orders.Order.Items.Item.Options.Option",
});

/** Thrown inside the reader; becomes the document's one error. */
class FieldError extends Error {}

type Node = Record<string, unknown>;

function asNode(value: unknown): Node {
  return value !== null && typeof value === "object" && !Array.isArray(value)
    ? (value as Node)
    : {};
}

/**
 * The one child element `name` (a node, or {} when it is absent or holds only text). The
 * parser makes an array of an element that appears twice: refused, never half-read.
 */
function child(node: Node, name: string, where = name): Node {
  const value = node[name];
  if (Array.isArray(value)) {
    throw new FieldError(`${where} appears ${value.length} times; it may appear once`);
  }
  return asNode(value);
}

/** The repeated child elements `name` (the parser's isArray makes them a list). */
function children(node: Node, name: string): unknown[] {
  const value = node[name];
  return Array.isArray(value) ? value : [];
}

/** The text of a child element, or undefined when it is absent or empty. */
function text(node: Node, name: string, where = name): string | undefined {
  const value = node[name];
  if (value === undefined || value === null) return undefined;
  if (Array.isArray(value)) {
    throw new FieldError(`${where} appears ${value.length} times; it may appear once`);
  }
  if (typeof value === "object") {
    throw new FieldError(`${where} must be text, not nested elements`);
  }
  const s = String(value).trim();
  // PostgreSQL text and jsonb cannot hold U+0000: refused here, with the field named.
  if (s.includes("\u0000")) throw new FieldError(`${where} contains a NUL character`);
  return s === "" ? undefined : s;
}

function required(node: Node, name: string, where = name): string {
  const value = text(node, name, where);
  if (value === undefined) throw new FieldError(`${where} is required`);
  return value;
}

function decimal(node: Node, name: string, where = name): number | undefined {
  const value = text(node, name, where);
  if (value === undefined) return undefined;
  if (!DECIMAL.test(value))
    throw new FieldError(`${where} must be a decimal number, got "${value.slice(0, 40)}"`);
  const significant = value.replace(/[-.]/g, "").replace(/^0+/, "").length;
  if (significant > MAX_SIGNIFICANT_DIGITS) {
    throw new FieldError(
      `${where} has ${significant} significant digits; at most ${MAX_SIGNIFICANT_DIGITS} are kept exactly, got "${value}"`,
    );
  }
  return Number(value);
}

function bool(node: Node, name: string): boolean | undefined {
  const value = text(node, name)?.toLowerCase();
  if (value === undefined) return undefined;
  if (value === "true" || value === "1") return true;
  if (value === "false" || value === "0") return false;
  throw new FieldError(`${name} must be true or false, got "${value.slice(0, 40)}"`);
}

/** OrderDate (`MM/dd/yyyy HH:mm`, UTC) as ISO 8601 UTC. */
export function customStoreDate(value: string, where: string): string {
  const m = ORDER_DATE.exec(value);
  if (!m)
    throw new FieldError(`${where} must be MM/dd/yyyy HH:mm (UTC), got "${value.slice(0, 40)}"`);
  const [, mo, d, y, h, mi, s, ampm] = m;
  let hour = Number(h);
  if (ampm && hour <= 12) {
    if (ampm.toUpperCase() === "PM" && hour < 12) hour += 12;
    if (ampm.toUpperCase() === "AM" && hour === 12) hour = 0;
  }
  const [year, month, day, minute, second] = [y, mo, d, mi, s ?? "0"].map(Number) as [
    number,
    number,
    number,
    number,
    number,
  ];
  const at = new Date(Date.UTC(year, month - 1, day, hour, minute, second));
  if (
    at.getUTCFullYear() !== year ||
    at.getUTCMonth() !== month - 1 ||
    at.getUTCDate() !== day ||
    hour > 23 ||
    minute > 59 ||
    second > 59 ||
    year < 1900
  ) {
    throw new FieldError(`${where} is not a real date-time, got "${value.slice(0, 40)}"`);
  }
  return at.toISOString().replace(".000Z", "Z");
}

/** Drops undefined values, so the payload holds only what the document said. */
function defined(entries: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(entries).filter(([, v]) => v !== undefined));
}

function readAddress(node: Node, kind: "BillTo" | "ShipTo"): Record<string, unknown> {
  if (node[kind] === undefined) throw new FieldError(`Customer/${kind} is required`);
  const a = child(node, kind, `Customer/${kind}`);
  return defined({
    name: required(a, "Name", `Customer/${kind}/Name`),
    company: text(a, "Company", `Customer/${kind}/Company`),
    street1: text(a, "Address1", `Customer/${kind}/Address1`),
    street2: text(a, "Address2", `Customer/${kind}/Address2`),
    city: text(a, "City", `Customer/${kind}/City`),
    state: text(a, "State", `Customer/${kind}/State`),
    postalCode: text(a, "PostalCode", `Customer/${kind}/PostalCode`),
    country: text(a, "Country", `Customer/${kind}/Country`),
    phone: text(a, "Phone", `Customer/${kind}/Phone`),
    email: text(a, "Email", `Customer/${kind}/Email`),
  });
}

function readItem(node: Node, index: number): Record<string, unknown> {
  const where = (field: string) => `Items/Item[${index + 1}]/${field}`;
  const quantity = text(node, "Quantity", where("Quantity"));
  if (quantity === undefined) throw new FieldError(`${where("Quantity")} is required`);
  if (!/^\d{1,9}$/.test(quantity) || Number(quantity) < 1) {
    throw new FieldError(
      `${where("Quantity")} must be a whole number of at least 1, got "${quantity.slice(0, 40)}"`,
    );
  }
  const weight = decimal(node, "Weight", where("Weight"));
  const unitsText = text(node, "WeightUnits", where("WeightUnits"));
  const units = unitsText === undefined ? undefined : WEIGHT_UNITS[unitsText.toLowerCase()];
  if (unitsText !== undefined && units === undefined) {
    throw new FieldError(
      `${where("WeightUnits")} must be Ounces, Pounds or Grams, got "${unitsText.slice(0, 40)}"`,
    );
  }
  const options = children(child(node, "Options", where("Options")), "Option");
  return defined({
    lineItemKey: text(node, "LineItemID", where("LineItemID")),
    sku: text(node, "SKU", where("SKU")),
    name: required(node, "Name", where("Name")),
    imageUrl: text(node, "ImageUrl", where("ImageUrl")),
    weight: weight === undefined ? undefined : { value: weight, units: units ?? "ounces" },
    quantity: Number(quantity),
    unitPrice: decimal(node, "UnitPrice", where("UnitPrice")),
    warehouseLocation: text(node, "Location", where("Location")),
    options: options.length
      ? options.map((o, i) => {
          const option = asNode(o);
          return {
            name: required(option, "Name", `${where("Options/Option")}[${i + 1}]/Name`),
            value: text(option, "Value", `${where("Options/Option")}[${i + 1}]/Value`) ?? "",
          };
        })
      : undefined,
  });
}

function readOrder(node: Node): ImportedOrder {
  const statusText = required(node, "OrderStatus");
  const status = STATUS_MAP[statusText.toLowerCase()];
  if (!status) {
    throw new FieldError(
      statusText.toLowerCase() === "shipped"
        ? "OrderStatus 'shipped' cannot be imported: ShipStation marks orders shipped itself"
        : `OrderStatus must be one of unpaid, paid, on_hold, cancelled (or a ShipStation status), got "${statusText.slice(0, 40)}"`,
    );
  }
  const orderNumber = required(node, "OrderNumber");
  if ([...orderNumber].length > 50) {
    throw new FieldError(
      `OrderNumber is ${[...orderNumber].length} characters; ShipStation allows at most 50`,
    );
  }
  if (node.Customer === undefined) throw new FieldError("Customer is required");
  const customer = child(node, "Customer");
  const items = children(child(node, "Items"), "Item");
  const orderKey = text(node, "OrderID") ?? null;
  if (orderKey !== null && [...orderKey].length > MAX_ORDER_ID_CHARS) {
    throw new FieldError(
      `OrderID is ${[...orderKey].length} characters; at most ${MAX_ORDER_ID_CHARS} are accepted`,
    );
  }
  const billTo = readAddress(customer, "BillTo");
  const customFields = defined({
    customField1: text(node, "CustomField1"),
    customField2: text(node, "CustomField2"),
    customField3: text(node, "CustomField3"),
  });
  return {
    orderKey,
    orderNumber,
    status,
    payload: defined({
      orderDate: customStoreDate(required(node, "OrderDate"), "OrderDate"),
      customerUsername: text(customer, "CustomerCode"),
      customerEmail: billTo.email,
      billTo,
      shipTo: readAddress(customer, "ShipTo"),
      items: items.map((item, i) => readItem(asNode(item), i)),
      amountPaid: decimal(node, "OrderTotal"),
      taxAmount: decimal(node, "TaxAmount"),
      shippingAmount: decimal(node, "ShippingAmount"),
      customerNotes: text(node, "CustomerNotes"),
      internalNotes: text(node, "InternalNotes"),
      gift: bool(node, "Gift"),
      giftMessage: text(node, "GiftMessage"),
      paymentMethod: text(node, "PaymentMethod"),
      requestedShippingService: text(node, "ShippingMethod"),
      advancedOptions: Object.keys(customFields).length ? customFields : undefined,
    }),
  };
}

/** The line and column (1-based) of a character offset. */
function position(xml: string, index: number): { line: number; column: number } {
  let line = 1;
  let start = 0;
  for (let i = xml.indexOf("\n"); i !== -1 && i < index; i = xml.indexOf("\n", i + 1)) {
    line++;
    start = i + 1;
  }
  return { line, column: index - start + 1 };
}

/** A refusal at a place in the text. */
function refusedAt(xml: string, index: number, what: string, detail?: string): ParseResult {
  const { line, column } = position(xml, index);
  const error = `${what} at line ${line}, column ${column}${detail ? `: ${detail}` : ""}`;
  return { ok: false, error, line, column };
}

/** Comments, CDATA sections and processing instructions (skipped), or an `&` (checked). */
const MARKUP_OR_AMPERSAND = /<!--[\s\S]*?-->|<!\[CDATA\[[\s\S]*?\]\]>|<\?[\s\S]*?\?>|&/g;

/**
 * Every `&` outside comments and CDATA must start one of the five predefined entities or
 * a character reference to a character XML allows (XML 1.0 §4.1). The validator lets an
 * undeclared `&foo;` and `&#0;` through and the parser would keep them as text: refused
 * here with where they are.
 */
function scanReferences(xml: string): ParseResult | null {
  if (!xml.includes("&")) return null;
  MARKUP_OR_AMPERSAND.lastIndex = 0;
  for (let m = MARKUP_OR_AMPERSAND.exec(xml); m !== null; m = MARKUP_OR_AMPERSAND.exec(xml)) {
    if (m[0] !== "&") continue;
    REFERENCE.lastIndex = m.index;
    const ref = REFERENCE.exec(xml);
    if (ref === null || ref.index !== m.index) {
      return refusedAt(
        xml,
        m.index,
        "an & that starts no entity or character reference (write &amp;)",
      );
    }
    const [whole, hex, dec, name] = ref;
    if (name !== undefined && PREDEFINED[name] === undefined) {
      return refusedAt(
        xml,
        m.index,
        `the undefined entity ${whole} (only &amp; &lt; &gt; &quot; &apos; and character references are accepted)`,
      );
    }
    if (
      name === undefined &&
      !isXmlChar(hex !== undefined ? Number.parseInt(hex, 16) : Number(dec))
    ) {
      return refusedAt(xml, m.index, `the character reference ${whole} names no XML character`);
    }
    MARKUP_OR_AMPERSAND.lastIndex = m.index + whole.length;
  }
  return null;
}

const XML_DECLARATION = /^\s*<\?xml\s[^>]*?encoding\s*=\s*["']([A-Za-z][\w.:-]*)["']/;

export type DecodeResult = { ok: true; text: string } | { ok: false; error: string };

/**
 * The document's bytes as text: UTF-8 (the default), or the encoding its XML declaration
 * names (ISO-8859-1, windows-1252, …). Bytes that are not valid in that encoding are
 * refused, never replaced with U+FFFD: a name with a lost letter is a wrong order.
 */
export function decodeXml(bytes: Buffer): DecodeResult {
  const head = bytes.subarray(0, 256).toString("latin1");
  const declared = XML_DECLARATION.exec(head)?.[1];
  const label = declared?.toLowerCase();
  if (label === undefined || label === "utf-8" || label === "utf8") {
    if (isUtf8(bytes)) return { ok: true, text: bytes.toString("utf8") };
    const text = bytes.toString("utf8");
    const { line, column } = position(text, text.indexOf("\uFFFD"));
    return {
      ok: false,
      error: `the document is not valid UTF-8 (first bad byte at line ${line}, column ${column}): save it as UTF-8, or name its encoding in <?xml version="1.0" encoding="…"?>`,
    };
  }
  let decoder: TextDecoder;
  try {
    decoder = new TextDecoder(label, { fatal: true });
  } catch {
    return {
      ok: false,
      error: `the document's encoding "${declared}" is not supported; save it as UTF-8`,
    };
  }
  try {
    return { ok: true, text: decoder.decode(bytes) };
  } catch {
    return { ok: false, error: `the document is not valid ${declared}: save it as UTF-8` };
  }
}

/** Reads a whole document: every order, or the first error and where it is. */
export function parseCustomStoreXml(xml: string, limits: { maxOrders?: number } = {}): ParseResult {
  const maxOrders = limits.maxOrders ?? MAX_ORDERS_PER_DOCUMENT;
  if (xml.trim() === "") return { ok: false, error: "the document is empty" };
  // A DTD is where entity bombs and external entities live; Custom Store XML has none.
  const doctype = /<!DOCTYPE/i.exec(xml);
  if (doctype) {
    return refusedAt(
      xml,
      doctype.index,
      "a DOCTYPE declaration",
      "DTDs and entities are not accepted (Custom Store order XML has none)",
    );
  }
  // Counted in the text before anything is built: a runaway export is refused without
  // its tree (about ten times the text) ever being held. A rough count (an <Order> in a
  // comment counts too); the exact one follows the parse.
  const ORDER_TAG = /<Order[\s>/]/g;
  let tags = 0;
  while (ORDER_TAG.exec(xml) !== null) {
    if (++tags > maxOrders) {
      return {
        ok: false,
        error: `the document holds more than ${maxOrders} <Order> elements; at most ${maxOrders} orders are imported from one document (split it)`,
      };
    }
  }
  const valid = XMLValidator.validate(xml);
  if (valid !== true) {
    const { msg, line, col } = valid.err;
    const where = col === undefined ? `line ${line}` : `line ${line}, column ${col}`;
    return {
      ok: false,
      error: `not well-formed XML at ${where}: ${msg}`,
      line,
      ...(col === undefined ? {} : { column: col }),
    };
  }
  const reference = scanReferences(xml);
  if (reference) return reference;
  let doc: Node;
  try {
    doc = asNode(parser.parse(xml));
  } catch (err) {
    return { ok: false, error: `XML could not be read: ${(err as Error).message}` };
  }
  if (doc.Orders === undefined) {
    return {
      ok: false,
      error: "the document's root element must be <Orders> (Custom Store order XML)",
    };
  }
  const list = children(asNode(doc.Orders), "Order");
  if (list.length === 0) return { ok: false, error: "the document holds no <Order>" };
  if (list.length > maxOrders) {
    return {
      ok: false,
      error: `the document holds ${list.length} orders; at most ${maxOrders} are imported from one document`,
    };
  }
  const orders: ImportedOrder[] = [];
  const keys = new Map<string, number>();
  for (const [index, item] of list.entries()) {
    const node = asNode(item);
    const label = () => {
      let number: string | undefined;
      try {
        number = text(node, "OrderNumber");
      } catch {
        number = undefined;
      }
      return `Order ${index + 1}${number ? ` (OrderNumber ${number.slice(0, 50)})` : ""}`;
    };
    try {
      const order = readOrder(node);
      if (order.orderKey !== null) {
        const seen = keys.get(order.orderKey);
        if (seen !== undefined) {
          throw new FieldError(
            `OrderID "${order.orderKey.slice(0, 50)}" is also Order ${seen + 1}'s`,
          );
        }
        keys.set(order.orderKey, index);
      }
      orders.push(order);
    } catch (err) {
      if (err instanceof FieldError) return { ok: false, error: `${label()}: ${err.message}` };
      throw err;
    }
  }
  return { ok: true, orders };
}
