/* test_kv_dtype.c - the fp8 (e4m3) KV cache's conversions and the memory plan's arithmetic.
 *
 *   decode      all 256 codes against the OCP FP8 E4M3 definition written out here in double:
 *               (-1)^s 2^(e-7) (1 + m/8) for e in 1..15, (-1)^s 2^-6 (m/8) for e = 0, NaN for
 *               S.1111.111 (no infinities)
 *   encode      against a brute-force reference (the nearest of the 253 finite magnitudes in
 *               double, ties to the even code, |x| >= 448 saturating, NaN -> NaN): every code's
 *               value (round trip), every midpoint between neighbours and the floats one ulp
 *               either side (the rounding boundaries), the subnormal / normal edge, +-0,
 *               +-inf, NaN, powers of two from 2^-30 to 2^30 and 200k random floats over
 *               [2^-14, 2^10]
 *   plan        kv bytes per token by dtype: LLaMA-2-7B (32 layers, 32 KV heads, head_dim 128)
 *               at 131,072 tokens holds 64 GiB of bf16 KV and 32 GiB of fp8; and the
 *               --kv-cache-dtype spellings */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../common/common.h"
#include "../kernels/backend.h"
#include "../models/model.h"
#include "test.h"

/* the definition, in double */
static double ref_decode(int code)
{
    const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
    if (e == 15 && m == 7) return NAN;
    double v = e == 0 ? ldexp(m / 8.0, -6) : ldexp(1.0 + m / 8.0, e - 7);
    return s ? -v : v;
}

/* nearest finite e4m3 magnitude (codes 0..126), ties to the even code; the sign copied */
static int ref_encode(float xf)
{
    const double x = xf;
    const int sign = signbit(xf) ? 0x80 : 0;
    if (isnan(x)) return sign | 0x7f;
    const double a = fabs(x);
    if (a >= 448.0) return sign | 0x7e;
    int best = 0;
    double best_d = INFINITY;
    for (int c = 0; c <= 0x7e; c++) {
        const double d = fabs(ref_decode(c) - a);
        if (d < best_d || (d == best_d && (c & 1) == 0)) {
            best = c;
            best_d = d;
        }
    }
    return sign | best;
}

static int n_mismatch;
static void check_encode(float x)
{
    const int got = bk_fp8_e4m3_from_f32(x), want = ref_encode(x);
    if (got != want && n_mismatch++ < 10)
        printf("  encode %.9g (bits %08x): got 0x%02x, want 0x%02x\n", (double)x,
               (unsigned)({ uint32_t b; memcpy(&b, &x, 4); b; }), got, want);
}

static void test_decode(void)
{
    int bad = 0, n_nan = 0;
    for (int c = 0; c < 256; c++) {
        const double want = ref_decode(c);
        const float got = bk_fp8_e4m3_to_f32((uint8_t)c);
        if (isnan(want)) {
            n_nan++;
            if (!isnan(got)) bad++;
        } else if ((double)got != want || !signbit(got) != !signbit(want)) {
            if (bad++ < 5) printf("  decode 0x%02x: got %.9g, want %.9g\n", c, (double)got, want);
        }
    }
    TEST_CONDF(bad == 0, "all 256 codes decode to the E4M3 definition (%d wrong)", bad);
    TEST_COND("two NaN codes (0x7f, 0xff), no infinities", n_nan == 2);
    TEST_COND("largest finite 448, smallest subnormal 2^-9",
              bk_fp8_e4m3_to_f32(0x7e) == 448.0f && bk_fp8_e4m3_to_f32(0x01) == 0x1p-9f &&
                  bk_fp8_e4m3_to_f32(0x08) == 0x1p-6f && bk_fp8_e4m3_to_f32(0x07) == 7 * 0x1p-9f);
}

static void test_encode(void)
{
    n_mismatch = 0;
    /* round trip: every finite code's value (and its negative) encodes to itself */
    int rt_bad = 0;
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7f) == 0x7f) continue;
        if (bk_fp8_e4m3_from_f32(bk_fp8_e4m3_to_f32((uint8_t)c)) != c) rt_bad++;
    }
    TEST_CONDF(rt_bad == 0, "every finite code round-trips (%d do not)", rt_bad);

    /* the rounding boundaries: midpoints between neighbouring magnitudes (exact in fp32: they
     * need at most 5 significant bits), and one ulp either side */
    int n_checked = 0;
    for (int c = 0; c < 0x7e; c++) {
        const float lo = bk_fp8_e4m3_to_f32((uint8_t)c), hi = bk_fp8_e4m3_to_f32((uint8_t)(c + 1));
        const float mid = (float)(((double)lo + (double)hi) / 2);
        TEST_CONDF((double)mid == ((double)lo + (double)hi) / 2, "midpoint of 0x%02x exact in fp32", c);
        const float xs[] = {mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY)};
        for (int i = 0; i < 3; i++) {
            check_encode(xs[i]);
            check_encode(-xs[i]);
            n_checked += 2;
        }
        /* a tie goes to the even code */
        const int even = (c & 1) == 0 ? c : c + 1;
        if (bk_fp8_e4m3_from_f32(mid) != even && n_mismatch++ < 10) printf("  tie at 0x%02x not even\n", c);
    }
    /* saturation and the specials */
    const float specials[] = {0.0f, -0.0f, 448.0f, 449.0f, 463.99f, 464.0f, 480.0f, 1e6f, 3.4e38f, INFINITY,
                              -INFINITY, -448.0f, -500.0f, 0x1p-6f, 0x1p-7f, 0x1p-9f, 0x1p-10f, 0x1.8p-10f,
                              0x1.0000002p-10f, 0x1p-11f, 1e-30f, 1e-45f, 0x1.ep-7f, 0x1.fp-7f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) {
        check_encode(specials[i]);
        n_checked++;
    }
    TEST_COND("NaN -> 0x7f / 0xff", bk_fp8_e4m3_from_f32(NAN) == 0x7f && bk_fp8_e4m3_from_f32(-NAN) == 0xff);
    TEST_COND("+-inf and 1e6 saturate to +-448",
              bk_fp8_e4m3_from_f32(INFINITY) == 0x7e && bk_fp8_e4m3_from_f32(-INFINITY) == 0xfe &&
                  bk_fp8_e4m3_from_f32(1e6f) == 0x7e);
    TEST_COND("-0 keeps its sign", bk_fp8_e4m3_from_f32(-0.0f) == 0x80);
    for (int e = -30; e <= 30; e++) {
        check_encode(ldexpf(1.0f, e));
        check_encode(ldexpf(-1.5f, e));
        n_checked += 2;
    }
    /* random floats over [2^-14, 2^10]: log-uniform magnitude, random mantissa bits and sign */
    uint64_t st = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < 200000; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        const uint32_t r = (uint32_t)(st >> 32);
        const int e = -14 + (int)(r % 25);
        const float m = 1.0f + (float)((r >> 8) & 0x7fffff) / 8388608.0f;
        const float x = ldexpf((r & 0x80) ? -m : m, e);
        check_encode(x);
        n_checked++;
    }
    printf("encode: %d values checked against the brute-force reference, %d mismatches\n", n_checked, n_mismatch);
    TEST_CONDF(n_mismatch == 0, "every encode matches the reference (%d mismatches)", n_mismatch);
}

static void test_plan(void)
{
    struct model_config c;
    memset(&c, 0, sizeof c);
    c.n_layers = 32;
    c.n_kv_heads = 32;
    c.head_dim = 128;
    const double gib = 1073741824.0, tokens = 131072;
    const size_t bf16 = model_config_kv_bytes_per_token(&c, BK_BF16);
    const size_t fp8 = model_config_kv_bytes_per_token(&c, BK_FP8_E4M3);
    const size_t f32 = model_config_kv_bytes_per_token(&c, BK_F32);
    printf("plan: 7B shape, 128k tokens: KV %.1f GiB (bf16), %.1f GiB (fp8), %.1f GiB (f32)\n", bf16 * tokens / gib,
           fp8 * tokens / gib, f32 * tokens / gib);
    TEST_COND("7B bf16 KV: 512 KiB per token, 64 GiB at 131072 tokens", bf16 == 524288 && bf16 * tokens == 64 * gib);
    TEST_COND("7B fp8 KV: 256 KiB per token, 32 GiB at 131072 tokens", fp8 == 262144 && fp8 * tokens == 32 * gib);
    TEST_COND("f32 KV: twice bf16", f32 == 2 * bf16);
    /* two 128k sequences of fp8 KV beside 12.55 GiB of weights fit an 80 GB card (~79 GiB) */
    TEST_COND("two 128k fp8 sequences + 7B weights < 79 GiB", 2 * fp8 * tokens / gib + 12.55 < 79.0);
    TEST_COND("one 128k bf16 sequence + 7B weights < 79 GiB, two do not",
              bf16 * tokens / gib + 12.55 < 79.0 && 2 * bf16 * tokens / gib + 12.55 > 79.0);

    int dt = 99;
    TEST_COND("parse fp8", model_kv_dtype_parse("fp8", &dt) == 0 && dt == BK_FP8_E4M3);
    TEST_COND("parse fp8_e4m3", model_kv_dtype_parse("fp8_e4m3", &dt) == 0 && dt == BK_FP8_E4M3);
    TEST_COND("parse auto", model_kv_dtype_parse("auto", &dt) == 0 && dt == MODEL_KV_DTYPE_AUTO);
    TEST_COND("parse bf16", model_kv_dtype_parse("bf16", &dt) == 0 && dt == BK_BF16);
    TEST_COND("parse f16", model_kv_dtype_parse("f16", &dt) == 0 && dt == BK_F16);
    TEST_COND("refuse fp8_e5m2 (not implemented)", model_kv_dtype_parse("fp8_e5m2", &dt) < 0);
    TEST_COND("refuse FP8 (case)", model_kv_dtype_parse("FP8", &dt) < 0);
    TEST_COND("dtype names", !strcmp(bk_dtype_name(BK_FP8_E4M3), "fp8_e4m3") && bk_dtype_bytes(BK_FP8_E4M3) == 1);
}

int main(void)
{
    test_decode();
    test_encode();
    test_plan();
    return test_report("test_kv_dtype");
}
