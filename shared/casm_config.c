/*  casm_config: environment variables with defaults. See casm_config.h.   */

#include "casm_config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

const char *
casm_config_str (const char *name, const char *fallback)
{
    const char *value = getenv (name);
    return value && *value ? value : fallback;
}

int64_t
casm_config_int (const char *name, int64_t fallback, int64_t min,
                 int64_t max)
{
    const char *value = getenv (name);
    if (!value || !*value)
        return fallback;

    char *end = NULL;
    errno = 0;
    long long number = strtoll (value, &end, 10);
    if (errno || *end || number < min || number > max) {
        fprintf (stderr, "casm: invalid %s=\"%s\": expected an integer "
                 "from %lld to %lld\n", name, value, (long long) min,
                 (long long) max);
        exit (2);
    }
    return number;
}

int
casm_config_bool (const char *name, int fallback)
{
    const char *value = getenv (name);
    if (!value || !*value)
        return fallback;

    const char *yes [] = { "1", "true", "yes", "on" };
    const char *no [] = { "0", "false", "no", "off" };
    for (int i = 0; i < 4; i++) {
        if (strcasecmp (value, yes [i]) == 0)
            return 1;
        if (strcasecmp (value, no [i]) == 0)
            return 0;
    }
    fprintf (stderr, "casm: invalid %s=\"%s\": expected true or false\n",
             name, value);
    exit (2);
}

char *
casm_config_endpoint (char *buffer, size_t size, int queue, int side,
                      int bind)
{
    int64_t base = casm_config_int ("BROKER_PORT", 5550, 1, 65535 - 6);
    const char *host = bind ? casm_config_str ("BROKER_BIND", "127.0.0.1")
                            : casm_config_str ("BROKER_HOST", "127.0.0.1");
    snprintf (buffer, size, "tcp://%s:%lld", host,
              (long long) (base + 2 * (queue - 1) + side));
    return buffer;
}
