/*  fuzz.h: what every casm fuzz target shares.

    Each target defines LLVMFuzzerTestOneInput (and may define
    LLVMFuzzerInitialize). Built with CASM_FUZZ=ON, clang's libFuzzer
    drives it; in every other build replay.c does, running the target once
    per file of its seed corpus, so that the corpus and every crash saved
    into it stay regression tests of `make test`.

    FUZZ_CHECK states a property the code under test promises; it aborts
    whatever NDEBUG says, so libFuzzer records the input as a crash.      */

#ifndef CASM_FUZZ_H
#define CASM_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(condition) \
    do { \
        if (!(condition)) { \
            fprintf (stderr, "%s:%d: property failed: %s\n", __FILE__, \
                     __LINE__, #condition); \
            abort (); \
        } \
    } while (0)

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

#endif
