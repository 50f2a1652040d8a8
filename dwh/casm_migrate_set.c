/*  casm_migrate_set: apply a list of migrations once, into a schema of the
    caller's choice. See casm_migrate_set.h.                                */

#include "casm_migrate_set.h"
#include "casm_log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Runs a statement with no parameters; logs and returns -1 on failure.
static int
s_exec (PGconn *connection, const char *sql, const char *migration)
{
    PGresult *result = PQexec (connection, sql);
    ExecStatusType status = PQresultStatus (result);
    int ok = status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
    if (!ok)
        casm_error (NULL, json_pack ("{ss}", "migration",
                                     migration ? migration : "-"),
                    "migration statement failed: %s",
                    PQerrorMessage (connection));
    PQclear (result);
    return ok ? 0 : -1;
}

//  Runs a statement with text parameters; returns the result or NULL (the
//  error is logged).
static PGresult *
s_query (PGconn *connection, const char *sql, int count,
         const char *const *params, ExecStatusType expected)
{
    PGresult *result = PQexecParams (connection, sql, count, NULL, params,
                                     NULL, NULL, 0);
    if (PQresultStatus (result) == expected)
        return result;
    casm_error (NULL, NULL, "migration bookkeeping failed: %s",
                PQerrorMessage (connection));
    PQclear (result);
    return NULL;
}

//  1 when the migration is recorded, 0 when not, -1 on error.
static int
s_applied (PGconn *connection, const char *table, const char *name)
{
    char sql [256];
    snprintf (sql, sizeof sql, "SELECT 1 FROM %s WHERE name = $1", table);
    const char *params [1] = { name };
    PGresult *result = s_query (connection, sql, 1, params,
                                PGRES_TUPLES_OK);
    if (!result)
        return -1;
    int applied = PQntuples (result) > 0;
    PQclear (result);
    return applied;
}

//  Applies one migration and records it, in one transaction.
static int
s_apply (PGconn *connection, const char *table,
         const casm_migration_t *migration)
{
    if (s_exec (connection, "BEGIN", migration->name) != 0)
        return -1;

    if (s_exec (connection, migration->sql, migration->name) != 0) {
        s_exec (connection, "ROLLBACK", migration->name);
        return -1;
    }

    char sql [256];
    snprintf (sql, sizeof sql, "INSERT INTO %s (name) VALUES ($1)", table);
    const char *params [1] = { migration->name };
    PGresult *result = s_query (connection, sql, 1, params,
                                PGRES_COMMAND_OK);
    if (!result) {
        s_exec (connection, "ROLLBACK", migration->name);
        return -1;
    }
    PQclear (result);

    return s_exec (connection, "COMMIT", migration->name);
}

//  Applies, in order, every migration not yet recorded in table.
static int
s_apply_missing (PGconn *connection, const char *table,
                 const casm_migration_t *migrations)
{
    int applied = 0;
    for (int i = 0; migrations [i].name; i++) {
        int done = s_applied (connection, table, migrations [i].name);
        if (done < 0)
            return -1;
        if (done)
            continue;

        if (s_apply (connection, table, &migrations [i]) != 0)
            return -1;
        casm_info (NULL, json_pack ("{ss}", "migration",
                                    migrations [i].name),
                   "applied migration");
        applied++;
    }
    return applied;
}

int
casm_migrate_set (PGconn *connection, const casm_migration_t *migrations,
                  const char *schema, int64_t lock_key)
{
    char *quoted = PQescapeIdentifier (connection, schema, strlen (schema));
    if (!quoted) {
        casm_error (NULL, NULL, "cannot quote schema name: %s",
                    PQerrorMessage (connection));
        return -1;
    }
    char table [192];
    char setup [512];
    int fits = snprintf (table, sizeof table, "%s.schema_migrations",
                         quoted) < (int) sizeof table;
    snprintf (setup, sizeof setup,
              "CREATE SCHEMA IF NOT EXISTS %s; "
              "CREATE TABLE IF NOT EXISTS %s ("
              " name text PRIMARY KEY,"
              " applied_at timestamptz NOT NULL DEFAULT now ())",
              quoted, table);
    PQfreemem (quoted);
    if (!fits) {
        casm_error (NULL, NULL, "schema name too long");
        return -1;
    }

    char lock [96];
    snprintf (lock, sizeof lock, "SELECT pg_advisory_lock (%" PRId64 ")",
              lock_key);
    if (s_exec (connection, lock, NULL) != 0)
        return -1;

    int applied = s_exec (connection, setup, NULL);
    if (applied == 0)
        applied = s_apply_missing (connection, table, migrations);

    snprintf (lock, sizeof lock, "SELECT pg_advisory_unlock (%" PRId64 ")",
              lock_key);
    s_exec (connection, lock, NULL);
    return applied;
}
