/* cpu_pool.c - the CPU backend's persistent worker pool.
 *
 * n_threads - 1 threads are created once and sleep on a condition variable. cpu_pool_run()
 * publishes a task (fn, arg), bumps a generation counter and wakes them; the calling thread
 * runs its share too (ith 0), then waits until every worker has reported back. Each worker
 * remembers the last generation it ran, so a spurious wake-up or a broadcast it missed while
 * busy cannot make it run a task twice or skip one. The mutex orders everything: the caller's
 * writes before cpu_pool_run are visible to the workers, and their writes are visible to the
 * caller when cpu_pool_run returns.
 *
 * One task at a time, one caller at a time (the backend is used by one thread: backend.h).
 *
 * Rejected: spinning workers (lower latency per op, but they burn the cores OpenBLAS needs
 * between our ops); a barrier-based pool (pthread_barrier cannot be woken for shutdown
 * cleanly); OpenMP (a second runtime next to OpenBLAS's threads, and no say over its idling). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

struct cpu_worker {
    struct cpu_pool *pool;
    int ith;
};

static void *worker_main(void *p_)
{
    struct cpu_worker *w = p_;
    struct cpu_pool *p = w->pool;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->start_cv, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        cpu_task_fn fn = p->fn;
        void *arg = p->arg;
        pthread_mutex_unlock(&p->mu);
        fn(arg, w->ith, p->n_threads);
        pthread_mutex_lock(&p->mu);
        if (--p->n_pending == 0) pthread_cond_signal(&p->done_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

struct cpu_pool *cpu_pool_new(int n_threads, char *err)
{
    CHECK(n_threads >= 1, "n_threads %d", n_threads);
    struct cpu_pool *p = xcalloc(1, sizeof *p);
    p->n_threads = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    p->threads = xcalloc((size_t)n_threads, sizeof *p->threads);
    p->workers = xcalloc((size_t)n_threads, sizeof *p->workers);
    for (int i = 1; i < n_threads; i++) {
        p->workers[i - 1] = (struct cpu_worker){p, i};
        int rc = pthread_create(&p->threads[i - 1], NULL, worker_main, &p->workers[i - 1]);
        if (rc != 0) {
            set_err(err, -1, "cpu backend: cannot create worker thread %d of %d: %s", i, n_threads - 1,
                    strerror(rc));
            cpu_pool_free(p);
            return NULL;
        }
        p->n_threads = i + 1; /* threads that exist, so cpu_pool_free joins exactly those */
    }
    return p;
}

void cpu_pool_free(struct cpu_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_threads - 1; i++) pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->start_cv);
    pthread_cond_destroy(&p->done_cv);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p->workers);
    free(p);
}

void cpu_pool_run(struct cpu_pool *p, cpu_task_fn fn, void *arg)
{
    if (p->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n_pending = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);

    fn(arg, 0, p->n_threads);

    pthread_mutex_lock(&p->mu);
    while (p->n_pending > 0) pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

/* --------------------------------------------------------------------------------------------- */

struct parallel_for {
    atomic_int next;
    int n_items;
    cpu_item_fn fn;
    void *arg;
};

static void parallel_for_task(void *arg, int ith, int nth)
{
    struct parallel_for *pf = arg;
    for (;;) {
        int i = atomic_fetch_add_explicit(&pf->next, 1, memory_order_relaxed);
        if (i >= pf->n_items) break;
        pf->fn(pf->arg, i, ith);
    }
}

void cpu_parallel_for(struct cpu_pool *p, int n_items, cpu_item_fn fn, void *arg)
{
    if (n_items <= 0) return;
    if (n_items == 1 || p->n_threads == 1) {
        for (int i = 0; i < n_items; i++) fn(arg, i, 0);
        return;
    }
    struct parallel_for pf = {.n_items = n_items, .fn = fn, .arg = arg};
    atomic_init(&pf.next, 0);
    cpu_pool_run(p, parallel_for_task, &pf);
}
