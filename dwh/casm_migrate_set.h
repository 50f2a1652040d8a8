/*  casm_migrate_set: versioned migrations for a schema other than casm's.

    The same rules as casm_migrate (shared/): files applied in name order,
    each once, each in its own transaction, under an advisory lock so that
    instances starting together apply each file once; but the list of
    migrations, the schema that holds the bookkeeping table and the lock are
    the caller's. casm-dwh uses it for the warehouse schema, which may live
    in another database than casm's and must not share casm's bookkeeping.   */

#ifndef CASM_MIGRATE_SET_H
#define CASM_MIGRATE_SET_H

#include "casm_migrate.h"

#include <libpq-fe.h>
#include <stdint.h>

//  Applies what is missing of migrations (ending with { NULL, NULL }) and
//  records each in schema.schema_migrations, creating both when absent.
//  schema is an identifier chosen by the program, never by input; it is
//  quoted all the same. lock_key names the advisory lock. Returns the
//  number applied, or -1 on error (logged).
int casm_migrate_set (PGconn *connection, const casm_migration_t *migrations,
                      const char *schema, int64_t lock_key);

#endif
