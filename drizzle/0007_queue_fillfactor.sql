-- Room on each page for a row's next version (issue 15). A claim changes only columns no
-- index holds (locked_by, locked_until, attempts); with free space on the row's own page
-- PostgreSQL makes that update HOT: no new entry in any of the table's indexes, and the
-- old version is pruned on the page. At the default fillfactor of 100 a freshly written
-- page is full, so every claim wrote a new entry in every index: measured on a drain of
-- 20,000 orders, 0 of 40,000 updates were HOT at 100, 4,657 at 80, 12,000 at 60 and
-- 20,000 (every claim) at 50, where the no-op drain ran 23,300 -> 30,200 rows/s. The
-- finalize moves a row out of the pending state, which the partial indexes name, so it
-- can never be HOT. A claim lengthens a row (locked_by and locked_until go from NULL to
-- values) and a batch claims every row of a page at once, so the narrow rows of deliveries
-- and notifications need more room than half a page: at 50, 265 and 280 of 300 claims were
-- HOT there; at 40, all. Applies to pages written from now on; taking the table's
-- SHARE UPDATE EXCLUSIVE lock does not block reads or writes.
ALTER TABLE "orders_inbox" SET (fillfactor = 50);--> statement-breakpoint
ALTER TABLE "webhook_deliveries" SET (fillfactor = 40);--> statement-breakpoint
ALTER TABLE "shipstation_notifications" SET (fillfactor = 40);
