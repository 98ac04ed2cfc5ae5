/* model_internal.h - shared between the files of models/ only (never included from another
 * module): safetensors access. */
#ifndef ROPESERVE_MODEL_INTERNAL_H
#define ROPESERVE_MODEL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

#define ST_MAX_DIMS 4

struct st_tensor {
    const char *name;
    enum bk_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    const void *data;      /* inside the mmap of its file; valid until st_close */
    size_t nbytes;
    const char *file;      /* path of the file it lives in (for messages) */
};

typedef struct safetensors safetensors_t;

/* Open DIR/model.safetensors, or DIR/model.safetensors.index.json and every shard it names,
 * by mmap. Every header is checked strictly: valid JSON, known dtypes (F32, F16, BF16; anything
 * else is an error naming the tensor and dtype), data_offsets inside the file, size equal to
 * dtype size x product(shape), no two tensors overlapping, no duplicate names across shards,
 * and every tensor of the index's weight_map present in the shard it names. Errors name the
 * file and the tensor/field. */
int st_open_dir(safetensors_t **out, const char *dir, char *err);
void st_close(safetensors_t *st); /* NULL-safe; unmaps everything */

/* NULL when absent. */
const struct st_tensor *st_find(const safetensors_t *st, const char *name);
/* The tensor `name` with exactly the shape given (n_dims dims). Errors:
 * "<file>: tensor 'model.norm.weight': expected shape [64], found [32]" or
 * "<dir>: required tensor 'lm_head.weight' not found". */
int st_get(const safetensors_t *st, const char *name, int n_dims, const int64_t *shape,
           const struct st_tensor **out, char *err);
int st_count(const safetensors_t *st);
const struct st_tensor *st_at(const safetensors_t *st, int i);

size_t bk_dtype_size(enum bk_dtype t);

/* rope.c: the CLEX frequency ODE (REFERENCES-rope.md §6.2-§6.3), integrated the way
 * torchdiffeq 0.2.3 "rk4" does (fp32 3/8-rule steps of time_dt on its fp32 grid from t=1 to
 * t=max_t, linear interpolation at each integer t). d = rotary dim (even, >= 4), hidden =
 * param_factor * d; w_up (d/2, hidden) and w_down (hidden, d/2) row-major fp32; y(1) =
 * log(inv_freq) (d/2). Writes out (max_t, d/2): row k = exp(y(k + 1)). act_tanh: 0 = SiLU,
 * 1 = tanh. Separate from rope_init so that it can be tested without a checkpoint. Returns 0,
 * or <0 with err. Pure; thread-safe. */
int rope_clex_integrate(int d, int hidden, const float *w_up, const float *w_down,
                        const float *inv_freq, int max_t, float time_dt, int act_tanh,
                        float *out, char *err);

#endif
