/* common.h - the few helpers every module uses: allocation that aborts on OOM, invariant checks
 * that abort with file:line, leveled logging to stderr, a monotonic clock, fp16/bf16 conversion.
 *
 * Policy (STYLE rules 14-16): library code returns int status and writes its message into a
 * caller buffer of ERR_LEN bytes; only main() exits. Running out of memory is not an error a
 * caller can handle, so xmalloc aborts instead of returning NULL. CHECK() is for broken
 * invariants (bugs), never for bad input. */
#ifndef ROPESERVE_COMMON_H
#define ROPESERVE_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define ROPESERVE_VERSION "0.1.0"
#define ERR_LEN 512

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

/* Write a printf-style message into err (ERR_LEN bytes; err may be NULL). Returns rc, so that
 * `return set_err(err, -1, "...")` is one line. */
int set_err(char *err, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

void check_failed(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));
#define CHECK(cond, ...) \
    do { if (!(cond)) check_failed(__FILE__, __LINE__, #cond, __VA_ARGS__); } while (0)

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };
extern int log_min_level; /* default LOG_INFO; main sets it from --log-level */
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define LOG_D(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define LOG_I(...) log_msg(LOG_INFO, __VA_ARGS__)
#define LOG_W(...) log_msg(LOG_WARN, __VA_ARGS__)
#define LOG_E(...) log_msg(LOG_ERROR, __VA_ARGS__)

double now_s(void); /* CLOCK_MONOTONIC seconds */

float f16_to_f32(uint16_t h);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);  /* round to nearest even */
uint16_t f32_to_bf16(float f); /* round to nearest even */

#endif
