-- The outbox's UNIQUE (transaction_id) was an index that nothing reads:
-- the publisher finds rows by id, and consumers deduplicate by
-- transaction id on their side. Its keys are random UUIDs, so every
-- insert landed on a random leaf page, usually one not yet written since
-- the last checkpoint: a page read and an 8 kB full-page image in the WAL
-- per event. `make bench`'s batch of 64 updates ran about 15 % faster
-- without it (docs/benchmarks.md). Each transaction id is still made once,
-- by gen_random_uuid (), in the statement that writes the row.

ALTER TABLE casm.outbox DROP CONSTRAINT IF EXISTS outbox_transaction_id_key;
