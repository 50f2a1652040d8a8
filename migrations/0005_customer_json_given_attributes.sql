-- casm.attributes_json cannot be inlined (it reads a set), so a statement
-- that calls it parses and plans its body again at every execution: about
-- a quarter of the worker's batch statement at the batch sizes it runs
-- (docs/benchmarks.md). casm.customer_json (c, attributes) takes the
-- attribute object already rendered, so that a hot statement can render
-- it with a subquery of its own (CASM_ATTRIBUTES_JSON_SQL in
-- shared/casm_customer.h, the same text as below), planned once with the
-- statement. casm.customer_json (c) stays the one-argument form for the
-- others.
--
-- The keys are now ordered by their bytes (COLLATE "C"), not by the
-- database's collation: the same object renders alike on every server,
-- and in the order the validator's canonical form uses. On a database
-- whose collation is C or C.UTF-8, as scripts/pg.sh makes it, nothing
-- changes.

CREATE OR REPLACE FUNCTION casm.attributes_json (attributes jsonb)
    RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
        SELECT '{' || coalesce (string_agg (to_json (key)::text || ':'
                                            || to_json (value)::text, ','
                                            ORDER BY key COLLATE "C"), '')
               || '}'
        FROM jsonb_each_text (attributes)
    $$;

CREATE OR REPLACE FUNCTION casm.customer_json (c casm.customers,
                                               attributes text)
    RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
        SELECT '{"refId":' || casm.json_text (c.ref_id::text)
            || ',"externalId":' || casm.json_text (c.external_id)
            || ',"customName":' || casm.json_text (c.custom_name)
            || ',"customerSegment":' || casm.json_text (c.customer_segment)
            || ',"state":{"state":' || casm.json_text (c.state)
            || ',"stateReason":' || casm.json_text (c.state_reason)
            || ',"stateValidFrom":'
            || casm.json_text (casm.rfc3339 (c.state_valid_from))
            || '},"testCustomer":' || CASE WHEN c.test_customer
                                           THEN 'true' ELSE 'false' END
            || ',"customAttributes":' || attributes
            || ',"version":' || c.version::text
            || ',"createdAt":' || casm.json_text (casm.rfc3339 (c.created_at))
            || ',"modifiedAt":'
            || casm.json_text (casm.rfc3339 (c.modified_at))
            || '}'
    $$;

CREATE OR REPLACE FUNCTION casm.customer_json (c casm.customers)
    RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
        SELECT casm.customer_json (c, casm.attributes_json (c.custom_attributes))
    $$;
