/* test.h - the tiny test harness every tests/test_*.c uses (after redis testhelp.h).
 *
 *   TEST_COND("name", cond)            one check; prints "ok" or "FAIL" with file:line
 *   TEST_CONDF(cond, "fmt", ...)       the same with a formatted name
 *   return test_report("suite");       prints "suite: N passed, N failed", exit status
 *
 * tests/run.sh adds up the last "N passed, N failed" line of every test program. */
#ifndef ROPESERVE_TEST_H
#define ROPESERVE_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int test_n_passed, test_n_failed;

#define TEST_CONDF(cond, ...)                                                        \
    do {                                                                             \
        if (cond) {                                                                  \
            test_n_passed++;                                                         \
        } else {                                                                     \
            test_n_failed++;                                                         \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                              \
            printf(__VA_ARGS__);                                                     \
            printf("\n");                                                            \
        }                                                                            \
    } while (0)
#define TEST_COND(name, cond) TEST_CONDF(cond, "%s", name)

/* |a - b| <= atol + rtol * |b| (b = reference); non-finite references must match exactly. */
static inline int test_close(float a, float b, float atol, float rtol)
{
    if (!isfinite(b)) return (isnan(b) && isnan(a)) || a == b;
    return fabsf(a - b) <= atol + rtol * fabsf(b);
}

/* Compare n values; prints the first mismatches; returns the number of mismatches. */
static inline int test_compare(const char *what, const float *got, const float *ref, size_t n,
                               float atol, float rtol)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (!test_close(got[i], ref[i], atol, rtol)) {
            if (bad < 10) printf("  %s[%zu]: got %.8g, ref %.8g\n", what, i, got[i], ref[i]);
            bad++;
        }
    }
    return bad;
}

static inline int test_report(const char *suite)
{
    printf("%s: %d passed, %d failed\n", suite, test_n_passed, test_n_failed);
    return test_n_failed ? 1 : 0;
}

#endif
