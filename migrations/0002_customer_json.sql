-- The customer as the API shows it (DESIGN.md 2.2), as compact JSON text
-- with the fields in the documented order. One function, so that the
-- answer, the outbox row and the Kafka event are the same bytes.

CREATE OR REPLACE FUNCTION casm.json_text (value text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT coalesce (to_json (value)::text, 'null') $$;

CREATE OR REPLACE FUNCTION casm.attributes_json (attributes jsonb)
    RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
        SELECT '{' || coalesce (string_agg (to_json (key)::text || ':'
                                            || to_json (value)::text, ','
                                            ORDER BY key), '')
               || '}'
        FROM jsonb_each_text (attributes)
    $$;

CREATE OR REPLACE FUNCTION casm.customer_json (c casm.customers)
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
            || ',"customAttributes":'
            || casm.attributes_json (c.custom_attributes)
            || ',"version":' || c.version::text
            || ',"createdAt":' || casm.json_text (casm.rfc3339 (c.created_at))
            || ',"modifiedAt":'
            || casm.json_text (casm.rfc3339 (c.modified_at))
            || '}'
    $$;
