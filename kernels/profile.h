/* profile.h - where a backend's time goes, per step kind and op class (issue 10 item 1):
 * `bench --profile`. bk_profile_attach() puts a wrapper in front of a backend: every op of the
 * vtable is forwarded, bracketed by two marks of the backend's timing hook (backend.h
 * prof_reserve/prof_mark/prof_elapsed_ms: CUDA events on the GPU, clock_gettime on the CPU).
 *
 * A step is batch_begin .. the act_read that returns its logits (or the next batch_begin); its
 * kind is "prefill" (every sequence brings several tokens), "decode" (one each) or "mixed". Per
 * kind the report lists each op class's device time: every GEMM shape separately (named with
 * bk_profile_name_gemm, e.g. "wq/wo"), attention, norms, RoPE, KV write, SwiGLU, residual adds,
 * embedding, batch upload, logits copy; then "host overhead" (the step's wall time not covered
 * by any op: launch and scheduling gaps on a GPU, the model's own host work on the CPU) and
 * "sampling + scheduling + idle" (host time from the end of one step to the start of the next:
 * the engine samples, streams and schedules there, or waits for work). The shares of one kind
 * sum to 100% of its wall time. Marks are resolved after the next act_read (which waits for the
 * device anyway), so profiling adds no synchronization, not even between prompt chunks. */
#ifndef ROPESERVE_PROFILE_H
#define ROPESERVE_PROFILE_H

#include <stdio.h>

#include "backend.h"

/* Wrap b (in place). Returns <0 with a message when the backend has no timing hook. */
int bk_profile_attach(struct backend *b, char *err);
/* Call the GEMM of weight shape (n_in -> n_out) `name` in the report (several names for one
 * shape are joined with '/'). No-op on an unwrapped backend. */
void bk_profile_name_gemm(struct backend *b, int n_in, int n_out, const char *name);
/* Forget what was measured so far (e.g. after a warm-up). */
void bk_profile_reset(struct backend *b);
/* Print the table (and one line "PROFILE_JSON {...}"). */
void bk_profile_report(struct backend *b, FILE *f);

#endif
