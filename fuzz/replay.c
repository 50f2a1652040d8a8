/*  replay: runs a fuzz target over files, without libFuzzer.

        fuzz_validate FILE|DIRECTORY...

    Every file given, and every file in every directory given, is one
    input. Exits 0 when all ran (a failed property aborts first), 2 when
    an argument cannot be read, or names nothing to run.                   */

#include "fuzz.h"

#include <dirent.h>
#include <string.h>
#include <sys/stat.h>

static int
s_run_file (const char *path)
{
    FILE *file = fopen (path, "rb");
    if (!file) {
        perror (path);
        return -1;
    }
    size_t capacity = 4096, size = 0;
    uint8_t *data = malloc (capacity);
    size_t got;
    while (data && (got = fread (data + size, 1, capacity - size, file))) {
        size += got;
        if (size == capacity) {
            uint8_t *grown = realloc (data, capacity *= 2);
            if (!grown)
                free (data);
            data = grown;
        }
    }
    fclose (file);
    if (!data)
        return -1;

    LLVMFuzzerTestOneInput (data, size);
    free (data);
    return 0;
}

int
main (int argc, char *argv [])
{
    LLVMFuzzerInitialize (&argc, &argv);
    int inputs = 0;
    for (int i = 1; i < argc; i++) {
        struct stat info;
        if (stat (argv [i], &info) != 0) {
            perror (argv [i]);
            return 2;
        }
        if (!S_ISDIR (info.st_mode)) {
            if (s_run_file (argv [i]) != 0)
                return 2;
            inputs++;
            continue;
        }

        DIR *directory = opendir (argv [i]);
        if (!directory) {
            perror (argv [i]);
            return 2;
        }
        struct dirent *entry;
        while ((entry = readdir (directory))) {
            if (entry->d_name [0] == '.')
                continue;
            char path [4096];
            snprintf (path, sizeof path, "%s/%s", argv [i], entry->d_name);
            if (s_run_file (path) != 0) {
                closedir (directory);
                return 2;
            }
            inputs++;
        }
        closedir (directory);
    }
    printf ("replayed %d inputs\n", inputs);
    return inputs > 0 ? 0 : 2;
}
