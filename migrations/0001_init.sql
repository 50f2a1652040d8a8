-- casm schema, version 1: customers, idempotency records, outbox.

CREATE SCHEMA IF NOT EXISTS casm;

-- RFC 3339 UTC with milliseconds, the API's timestamp format.
CREATE OR REPLACE FUNCTION casm.rfc3339 (ts timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT to_char (ts AT TIME ZONE 'UTC',
                          'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;

CREATE TABLE casm.customers (
    ref_id            uuid PRIMARY KEY DEFAULT gen_random_uuid (),
    external_id       text NOT NULL UNIQUE,
    custom_name       text,
    customer_segment  text,
    state             text NOT NULL DEFAULT 'ACTIVE'
                      CHECK (state IN ('INACTIVE', 'ACTIVE', 'SUSPENDED',
                                       'DEACTIVATED')),
    state_reason      text,
    state_valid_from  timestamptz NOT NULL DEFAULT now (),
    test_customer     boolean NOT NULL DEFAULT false,
    custom_attributes jsonb NOT NULL DEFAULT '{}'::jsonb
                      CHECK (jsonb_typeof (custom_attributes) = 'object'),
    version           bigint NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now (),
    modified_at       timestamptz NOT NULL DEFAULT now ()
);

-- One row per successful request: the idempotency record (DESIGN.md 2.4).
-- request_hash is the SHA-256 of the canonical request; status and body
-- are the answer that a replay returns.
CREATE TABLE casm.requests (
    request_id   text PRIMARY KEY,
    request_hash bytea NOT NULL,
    operation    text NOT NULL,
    status       integer NOT NULL,
    body         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now ()
);
CREATE INDEX requests_created_at ON casm.requests (created_at);

-- Events committed with their change and not yet confirmed by Kafka.
CREATE TABLE casm.outbox (
    id             bigserial PRIMARY KEY,
    transaction_id uuid NOT NULL UNIQUE,
    request_id     text NOT NULL,
    operation      text NOT NULL,
    customer_ref   uuid NOT NULL,
    version        bigint NOT NULL,
    payload        text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now (),
    sent_at        timestamptz
);
CREATE INDEX outbox_unsent ON casm.outbox (id) WHERE sent_at IS NULL;
