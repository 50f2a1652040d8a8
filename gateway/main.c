/*  casm-gateway: the HTTP front door of casm.

    Reads its configuration, starts the gateway (HTTP on HTTP_BIND:HTTP_PORT,
    a DEALER to queue Q1), serves until SIGINT or SIGTERM has drained it,
    and exits 0; 2 when it cannot start.                                   */

#include "casm_gateway.h"
#include "casm_config.h"
#include "casm_log.h"

#include <czmq.h>

int
main (void)
{
    casm_log_init ("casm-gateway", casm_config_str ("INSTANCE", NULL));

    //  Our own signal handling (a drain, not czmq's interrupt flag).
    zsys_handler_set (NULL);
    zsys_init ();

    casm_gateway_config_t config;
    casm_gateway_config_load (&config);
    casm_gateway_t *gateway = casm_gateway_new (&config);
    if (!gateway)
        return 2;

    int rc = casm_gateway_run (gateway);
    casm_gateway_destroy (&gateway);
    zsys_shutdown ();
    return rc;
}
