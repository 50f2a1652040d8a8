/*  casm_migrate: versioned schema migrations, applied at start.

    The files migrations/NNNN_name.sql are embedded in the library at build
    time. casm_migrate applies, in name order, each one not yet recorded in
    casm.schema_migrations, each in its own transaction, under an advisory
    lock so that instances starting together apply each file once.         */

#ifndef CASM_MIGRATE_H
#define CASM_MIGRATE_H

#include <libpq-fe.h>

typedef struct {
    const char *name;           // file name, e.g. "0001_init.sql"
    const char *sql;
} casm_migration_t;

//  The embedded migrations, ending with { NULL, NULL }.
extern const casm_migration_t casm_migrations [];

//  Applies what is missing. Returns the number applied, or -1 on error
//  (logged).
int casm_migrate (PGconn *connection);

#endif
