-- casm.json_text and casm.rfc3339 were declared IMMUTABLE, but they call
-- to_json and to_char, which PostgreSQL declares STABLE; PostgreSQL then
-- never inlines them, and every customer JSON ran thirteen SQL functions
-- of their own (each a small plan to start, run and end), most of the
-- cost of a change statement. Declared STABLE, which is what they are,
-- they are inlined into casm.customer_json. The text they make does not
-- change. Neither is used in an index or a constraint, where IMMUTABLE
-- would matter.

ALTER FUNCTION casm.json_text (text) STABLE;
ALTER FUNCTION casm.rfc3339 (timestamptz) STABLE;
