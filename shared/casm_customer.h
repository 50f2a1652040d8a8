/*  casm_customer: the customer as the API shows it, built by PostgreSQL.

    Both the validator (readCustomer) and the worker (after a change) need
    the customer JSON of DESIGN.md 2.2. It is made in SQL from a row of
    casm.customers aliased "c" (function casm.customer_json, migration
    0002), so the text stored in the outbox, returned to the client and
    published to Kafka is one and the same.               */

#ifndef CASM_CUSTOMER_H
#define CASM_CUSTOMER_H

//  A SQL expression of type text: the customer JSON of row alias c.
#define CASM_CUSTOMER_JSON_SQL "casm.customer_json (c)"

//  A SQL expression of type text: the JSON object of the jsonb attribute
//  set that the SQL expression attributes gives, keys in byte order. The
//  same text as the body of casm.attributes_json (migration 0005), as a
//  subquery that a statement plans once rather than a function call whose
//  body is parsed and planned again at each execution of the statement.
//  For hot statements, with casm.customer_json (row, attributes).
#define CASM_ATTRIBUTES_JSON_SQL(attributes) \
    "(SELECT '{' || coalesce (string_agg (to_json (key)::text || ':'" \
    " || to_json (value)::text, ',' ORDER BY key COLLATE \"C\"), '')" \
    " || '}' FROM jsonb_each_text (" attributes "))"

//  Limits of DESIGN.md 2.1.
#define CASM_ATTRIBUTES_MAX 256
#define CASM_KEY_BYTES_MAX 128
#define CASM_VALUE_BYTES_MAX 4096
#define CASM_JSON_DEPTH_MAX 32

#endif
