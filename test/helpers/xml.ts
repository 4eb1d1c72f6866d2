// Custom Store order XML for import tests: one order (OrderID `id`, OrderNumber `N-id`)
// and a document around some orders.

export function order(id: string, extra: { total?: string; status?: string } = {}): string {
  return `<Order>
    <OrderID>${id}</OrderID><OrderNumber>N-${id}</OrderNumber>
    <OrderDate>11/23/2026 14:05</OrderDate><OrderStatus>${extra.status ?? "paid"}</OrderStatus>
    <OrderTotal>${extra.total ?? "10.00"}</OrderTotal>
    <Customer>
      <BillTo><Name>Ada</Name></BillTo>
      <ShipTo><Name>Ada</Name><Address1>1 Main St</Address1><City>Austin</City>
        <State>TX</State><PostalCode>78701</PostalCode><Country>US</Country></ShipTo>
    </Customer>
    <Items><Item><SKU>S1</SKU><Name>Thing</Name><Quantity>1</Quantity><UnitPrice>10.00</UnitPrice></Item></Items>
  </Order>`;
}

export const doc = (...orders: string[]) =>
  `<?xml version="1.0"?><Orders>${orders.join("")}</Orders>\n`;
