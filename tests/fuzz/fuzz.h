/* fuzz.h - what the libFuzzer targets of tests/fuzz/ share (built by `make fuzz`, run by
 * tests/test_fuzz.sh and `make fuzz FUZZ_SECONDS=N`). Each target takes arbitrary bytes; a crash,
 * a sanitizer report (ASan, UBSan, LSan) or an abort() is a finding. */
#ifndef ROPESERVE_FUZZ_H
#define ROPESERVE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/common.h"

/* The repository root (the targets read fixtures): $ROPESERVE_ROOT, else the working directory. */
static inline const char *fuzz_root(void)
{
    const char *r = getenv("ROPESERVE_ROOT");
    return r && *r ? r : ".";
}

/* A private scratch directory for targets that parse files (one per process; tmpfs when there
 * is one). tests/test_fuzz.sh removes them. */
static inline const char *fuzz_dir(void)
{
    static char dir[256];
    if (!dir[0]) {
        struct stat sb;
        const char *base = stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) ? "/dev/shm" : "/tmp";
        snprintf(dir, sizeof dir, "%s/ropeserve-fuzz-%d", base, (int)getpid());
        mkdir(dir, 0700);
    }
    return dir;
}

static inline void fuzz_write(const char *name, const uint8_t *d, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(d, 1, n, f) != n) abort();
    fclose(f);
}

/* A finding of the target's own (a broken invariant): report and abort. */
#define FUZZ_ASSERT(c)                                                                             \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz invariant failed: %s (%s:%d)\n", #c, __FILE__, __LINE__);      \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
