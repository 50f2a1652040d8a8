-- casm DWH schema, version 1: what casm-dwh builds from the Business
-- Transactions on Kafka (DESIGN.md 3 and 4). Written by casm-dwh only;
-- applied by casm-dwh at start and recorded in dwh.schema_migrations.
--
-- Nothing here may refuse a valid event: casm-dwh checks every event before
-- it reaches these tables, and the columns take what the event contract
-- allows (no CHECK on states, no NOT NULL on optional fields).

CREATE SCHEMA IF NOT EXISTS dwh;

-- The current customer: one row per refId, replaced only by an event with a
-- higher version, so that duplicates and reordering never move it back.
CREATE TABLE dwh.customers (
    ref_id            uuid PRIMARY KEY,
    external_id       text,
    custom_name       text,
    customer_segment  text,
    state             text,
    state_reason      text,
    state_valid_from  timestamptz,
    test_customer     boolean,
    custom_attributes jsonb NOT NULL DEFAULT '{}'::jsonb,
    version           bigint NOT NULL,
    created_at        timestamptz,
    modified_at       timestamptz,
    transaction_id    uuid NOT NULL,
    ingested_at       timestamptz NOT NULL DEFAULT now ()
) WITH (fillfactor = 80);  -- room for in-page (HOT) updates
CREATE INDEX customers_external_id ON dwh.customers (external_id);

-- The business-transaction history: one row per transaction id; a second
-- delivery of the same transaction is ignored. event is the Kafka value.
CREATE TABLE dwh.business_transactions (
    transaction_id  uuid PRIMARY KEY,
    operation       text NOT NULL,
    request_id      text NOT NULL,
    ref_id          uuid NOT NULL,
    version         bigint NOT NULL,
    event_time      timestamptz,
    event           jsonb NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now ()
);
CREATE INDEX business_transactions_customer
    ON dwh.business_transactions (ref_id, version);

-- The custom attributes of the current customers, one row per pair, for
-- "which customers have attribute X = Y". A btree entry is limited to about
-- 2.7 kB and a value may be 4096 bytes, so the index holds the first 512
-- characters of the value; dwh.customers_with_attribute () asks in the way
-- that uses it. Keys and values compare byte by byte (COLLATE "C"): the
-- index answers equality, and bytes are cheaper to compare than words.
CREATE TABLE dwh.custom_attributes (
    ref_id uuid NOT NULL,
    key    text COLLATE "C" NOT NULL,
    value  text COLLATE "C",
    PRIMARY KEY (ref_id, key)
);
CREATE INDEX custom_attributes_key_value
    ON dwh.custom_attributes (key, left (value, 512));

CREATE FUNCTION dwh.customers_with_attribute (attribute_key text,
                                              attribute_value text)
    RETURNS TABLE (ref_id uuid)
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT a.ref_id FROM dwh.custom_attributes a
          WHERE a.key = attribute_key
            AND left (a.value, 512) = left (attribute_value, 512)
            AND a.value = attribute_value $$;

-- Transactions per operation per day (UTC day of the event's modifiedAt),
-- counted once per transaction id. The counters are kept per Kafka
-- partition, so that the writers of different partitions (connections of
-- one casm-dwh, or several instances) never wait for each other's row
-- locks; dwh.metrics_daily adds them up.
CREATE TABLE dwh.metrics_daily_partition (
    day             date NOT NULL,
    operation       text NOT NULL,
    kafka_partition integer NOT NULL,
    count           bigint NOT NULL,
    PRIMARY KEY (day, operation, kafka_partition)
);

CREATE VIEW dwh.metrics_daily AS
    SELECT day, operation, sum (count)::bigint AS count
    FROM dwh.metrics_daily_partition
    GROUP BY day, operation;

-- Ingestion progress per partition: the last offset stored, the
-- modifiedAt of the event there and when it was stored. The last batch
-- wins, so that a topic that starts again from offset 0 (the local mock
-- broker keeps nothing across restarts) shows its real position.
CREATE TABLE dwh.ingest_status (
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    last_offset     bigint NOT NULL,
    last_event_time timestamptz,
    ingested_at     timestamptz NOT NULL,
    PRIMARY KEY (topic, kafka_partition)
);

-- Ingestion lag: how old the newest event was when it was stored, and how
-- long ago that was (a growing value means the feed has stopped).
CREATE VIEW dwh.ingest_lag AS
    SELECT topic, kafka_partition, last_offset, last_event_time,
           ingested_at,
           ingested_at - last_event_time AS lag_at_ingest,
           now () - last_event_time AS lag_now
    FROM dwh.ingest_status;

-- Messages that are not valid Business Transactions, with their raw bytes
-- and the reason. One row per Kafka offset: a redelivery adds nothing.
CREATE TABLE dwh.dead_letters (
    id              bigserial PRIMARY KEY,
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    key             bytea,
    value           bytea,
    headers         text NOT NULL,
    reason          text NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now (),
    UNIQUE (topic, kafka_partition, kafka_offset)
);
