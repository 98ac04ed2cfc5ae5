/* batch.h - building struct bk_batch for the kernel checkers: owns the arrays a batch points at.
 *
 *   ck_batch b;
 *   b.add_seq(ctx_before, n_new, block_table);   one sequence: rows at positions
 *                                                ctx_before .. ctx_before + n_new - 1
 *   b.finish(block_size, rotary_dim, ...);       fills slot_mapping from the block tables,
 *                                                out_rows (last row of each sequence), RoPE
 *   b.set_string(S, W);  b.set_q_scale(qs);      optional, after finish: STRING per sequence
 *                                                (S 0 = off), q_scale per row
 *   ops->batch_begin(ctx, &b.b, err);
 */
#ifndef ROPESERVE_CHECK_BATCH_H
#define ROPESERVE_CHECK_BATCH_H

#include <vector>

#include "check.h"

struct ck_batch {
    std::vector<int32_t> tokens, positions, query_start, seq_lens, block_tables, out_rows;
    std::vector<int64_t> slot_mapping;
    std::vector<float> inv_freq, attn_factor, q_scale;
    std::vector<int32_t> string_shift, string_local;
    std::vector<std::vector<int32_t>> tables; /* per sequence */
    struct bk_batch b;

    ck_batch() { query_start.push_back(0); memset(&b, 0, sizeof b); }

    void add_seq(int ctx_before, int n_new, const std::vector<int32_t> &table)
    {
        for (int i = 0; i < n_new; i++) {
            positions.push_back(ctx_before + i);
            tokens.push_back(0);
        }
        query_start.push_back((int32_t)positions.size());
        seq_lens.push_back(ctx_before + n_new);
        tables.push_back(table);
    }

    /* Rows whose slot is given explicitly (cache fill / poison batches): one sequence, every row
     * at position 0, seq_len 1, block table {block}. */
    void add_rows_at_slots(const int64_t *slots, int n, int32_t block)
    {
        for (int i = 0; i < n; i++) {
            positions.push_back(0);
            tokens.push_back(0);
            slot_mapping.push_back(slots[i]);
        }
        query_start.push_back((int32_t)positions.size());
        seq_lens.push_back(1);
        tables.push_back(std::vector<int32_t>(1, block));
    }

    /* inv_freq per sequence: HF default frequencies for base (base_s) scaled by 1/scale_s */
    void finish(int block_size, int rotary_dim, const std::vector<double> &base_s = {},
                const std::vector<float> &scale_s = {}, const std::vector<float> &af_s = {}, int explicit_slots = 0)
    {
        const int ns = (int)seq_lens.size();
        size_t stride = 1;
        for (auto &t : tables) stride = std::max(stride, t.size());
        block_tables.assign((size_t)ns * stride, 0);
        for (int s = 0; s < ns; s++)
            for (size_t i = 0; i < tables[s].size(); i++) block_tables[(size_t)s * stride + i] = tables[s][i];
        if (!explicit_slots) {
            slot_mapping.clear();
            for (int s = 0; s < ns; s++)
                for (int r = query_start[s]; r < query_start[s + 1]; r++) {
                    const int p = positions[r];
                    slot_mapping.push_back((int64_t)tables[s][p / block_size] * block_size + p % block_size);
                }
        }
        out_rows.clear();
        for (int s = 0; s < ns; s++)
            if (query_start[s + 1] > query_start[s]) out_rows.push_back(query_start[s + 1] - 1);
        const int half = rotary_dim / 2;
        inv_freq.assign((size_t)std::max(ns, 1) * std::max(half, 1), 0.f);
        attn_factor.assign((size_t)std::max(ns, 1), 1.f);
        for (int s = 0; s < ns; s++) {
            const double base = s < (int)base_s.size() ? base_s[s] : 10000.0;
            const float sc = s < (int)scale_s.size() ? scale_s[s] : 1.f;
            for (int i = 0; i < half; i++) {
                /* HF: 1 / base ** (arange(0, d, 2).float() / d), in fp32 */
                const float e = (float)(2 * i) / (float)rotary_dim;
                inv_freq[(size_t)s * half + i] = (1.0f / powf((float)base, e)) / sc;
            }
            attn_factor[s] = s < (int)af_s.size() ? af_s[s] : 1.f;
        }
        b.n_tokens = (int)positions.size();
        b.tokens = tokens.data();
        b.positions = positions.data();
        b.slot_mapping = slot_mapping.data();
        b.n_seqs = ns;
        b.query_start = query_start.data();
        b.seq_lens = seq_lens.data();
        b.block_tables = block_tables.data();
        b.block_table_stride = (int)stride;
        b.n_out = (int)out_rows.size();
        b.out_rows = out_rows.data();
        b.rotary_dim = rotary_dim;
        b.inv_freq = inv_freq.data();
        b.attn_factor = attn_factor.data();
    }

    /* STRING shift S and local window W per sequence (S 0 = off); empty S = no STRING arrays */
    void set_string(const std::vector<int32_t> &S, const std::vector<int32_t> &W)
    {
        string_shift = S;
        string_local = W;
        b.string_shift = string_shift.empty() ? NULL : string_shift.data();
        b.string_local = string_local.empty() ? NULL : string_local.data();
    }

    /* q_scale per row (n_tokens values); empty = none */
    void set_q_scale(const std::vector<float> &qs)
    {
        q_scale = qs;
        b.q_scale = q_scale.empty() ? NULL : q_scale.data();
    }

    /* the sequence of row r */
    int seq_of(int r) const
    {
        int s = 0;
        while (query_start[s + 1] <= r) s++;
        return s;
    }
};

#endif
