/*  casm_migrate: apply embedded migrations once. See casm_migrate.h.      */

#include "casm_migrate.h"
#include "casm_log.h"

#include <stdlib.h>

//  An arbitrary constant that names casm's migration lock.
#define MIGRATION_LOCK "7243551"

static int
s_exec (PGconn *connection, const char *sql)
{
    PGresult *result = PQexec (connection, sql);
    ExecStatusType status = PQresultStatus (result);
    int ok = status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
    if (!ok)
        casm_error (NULL, json_pack ("{ss}", "sql", sql),
                    "migration statement failed: %s",
                    PQerrorMessage (connection));
    PQclear (result);
    return ok ? 0 : -1;
}

static int
s_applied (PGconn *connection, const char *name)
{
    const char *params [1] = { name };
    PGresult *result = PQexecParams (
        connection, "SELECT 1 FROM casm.schema_migrations WHERE name = $1",
        1, NULL, params, NULL, NULL, 0);
    int applied = PQresultStatus (result) == PGRES_TUPLES_OK
                  ? PQntuples (result) > 0 : -1;
    PQclear (result);
    return applied;
}

static int
s_apply (PGconn *connection, const casm_migration_t *migration)
{
    if (s_exec (connection, "BEGIN") != 0)
        return -1;
    if (s_exec (connection, migration->sql) != 0) {
        s_exec (connection, "ROLLBACK");
        return -1;
    }
    const char *params [1] = { migration->name };
    PGresult *result = PQexecParams (
        connection, "INSERT INTO casm.schema_migrations (name) VALUES ($1)",
        1, NULL, params, NULL, NULL, 0);
    int ok = PQresultStatus (result) == PGRES_COMMAND_OK;
    PQclear (result);
    if (!ok) {
        s_exec (connection, "ROLLBACK");
        return -1;
    }
    return s_exec (connection, "COMMIT");
}

int
casm_migrate (PGconn *connection)
{
    if (s_exec (connection, "SELECT pg_advisory_lock (" MIGRATION_LOCK ")"))
        return -1;

    int applied = 0;
    if (s_exec (connection,
                "CREATE SCHEMA IF NOT EXISTS casm; "
                "CREATE TABLE IF NOT EXISTS casm.schema_migrations ("
                " name text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now ())") != 0)
        applied = -1;

    for (int i = 0; applied >= 0 && casm_migrations [i].name; i++) {
        int done = s_applied (connection, casm_migrations [i].name);
        if (done < 0) {
            applied = -1;
            break;
        }
        if (done)
            continue;
        if (s_apply (connection, &casm_migrations [i]) != 0) {
            applied = -1;
            break;
        }
        casm_info (NULL, json_pack ("{ss}", "migration",
                                    casm_migrations [i].name),
                   "applied migration");
        applied++;
    }

    s_exec (connection, "SELECT pg_advisory_unlock (" MIGRATION_LOCK ")");
    return applied;
}
