/* chatsmith's decode kernels for bf16 models on CPU: the small-batch linear layer and the one-query attention.
 *
 * y = x @ w.T for bf16 x (B, K), w (N, K), y (B, N): the decode-step linear layer at small batch.
 *
 * Why not torch: at a handful of rows, torch's CPU bf16 kernels (oneDNN, at::mv) stream the weights at about half
 * the memory bandwidth (they convert, pack or tile for large GEMMs), and a decode step is nothing but weight
 * streaming. This kernel reads each block of weight rows once, from memory straight into AVX512-BF16 dot products
 * (vdpbf16ps, fp32 accumulators), with a software prefetch one block ahead, and applies it to every row of x while
 * it is in L1.
 *
 * Determinism: every output element is one fixed-order dot product (16 fp32 lanes over k, then the fixed
 * reduction tree of _mm512_reduce_add_ps, then round-to-nearest-even to bf16), whatever B, how rows are grouped,
 * the thread count or which thread computes it. So a row's result does not depend on its batch mates: batched
 * greedy decoding equals batch-1 decoding exactly.
 */
#include <immintrin.h>
#include <stdint.h>

#define WROWS 4   /* weight rows per block */
#define XROWS 4   /* x rows per pass over a block: WROWS * XROWS = 16 independent accumulator chains */

static inline uint16_t to_bf16(float f) {
    union { float f; uint32_t u; } v = { f };
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);   /* NaN stays NaN */
    v.u += 0x7fffu + ((v.u >> 16) & 1u);                                                /* round to nearest even */
    return (uint16_t)(v.u >> 16);
}

/* NX rows of x (compile-time constant at each call, so the accumulators live in registers) against one block */
#define PASS(NX)                                                                                                  \
    do {                                                                                                          \
        __m512 acc[NX][WROWS];                                                                                    \
        for (int j = 0; j < NX; j++)                                                                              \
            for (int r = 0; r < WROWS; r++) acc[j][r] = _mm512_setzero_ps();                                      \
        for (int64_t i = 0; i < full; i++) {                                                                      \
            if (prefetch)                                                                                         \
                for (int r = 0; r < WROWS; r++)                                                                   \
                    _mm_prefetch((const char *)(wr[r] + WROWS * K + i * 32), _MM_HINT_T0);                        \
            __m512bh wv[WROWS];                                                                                   \
            for (int r = 0; r < WROWS; r++) wv[r] = (__m512bh)_mm512_loadu_si512(wr[r] + i * 32);                \
            for (int j = 0; j < NX; j++) {                                                                        \
                __m512bh xv = (__m512bh)_mm512_loadu_si512(x + (b + j) * K + i * 32);                             \
                for (int r = 0; r < WROWS; r++) acc[j][r] = _mm512_dpbf16_ps(acc[j][r], wv[r], xv);              \
            }                                                                                                     \
        }                                                                                                         \
        if (rest) {                                                                                               \
            __m512bh wv[WROWS];                                                                                   \
            for (int r = 0; r < WROWS; r++) wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(tail, wr[r] + full * 32); \
            for (int j = 0; j < NX; j++) {                                                                        \
                __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(tail, x + (b + j) * K + full * 32);              \
                for (int r = 0; r < WROWS; r++) acc[j][r] = _mm512_dpbf16_ps(acc[j][r], wv[r], xv);              \
            }                                                                                                     \
        }                                                                                                         \
        for (int j = 0; j < NX; j++)                                                                              \
            for (int r = 0; r < rows; r++) y[(b + j) * N + n0 + r] = to_bf16(_mm512_reduce_add_ps(acc[j][r]));    \
        prefetch = 0;                                                                                             \
    } while (0)

/* threads: torch.get_num_threads() of the caller (OpenMP's own default is per calling thread, torch's is global) */
void chatsmith_gemv_bf16(const uint16_t *x, const uint16_t *w, uint16_t *y, int64_t B, int64_t N, int64_t K,
                         int threads) {
    const int64_t full = K / 32, rest = K % 32;
    const __mmask32 tail = rest ? (__mmask32)((1ull << rest) - 1) : 0;
    const int64_t blocks = (N + WROWS - 1) / WROWS;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t n0 = blk * WROWS;
        const int rows = N - n0 < WROWS ? (int)(N - n0) : WROWS;
        const uint16_t *wr[WROWS];
        /* a short last block repeats its last row (computed, not stored) rather than reading past w */
        for (int r = 0; r < WROWS; r++) wr[r] = w + (n0 + (r < rows ? r : rows - 1)) * K;
        int prefetch = 1;   /* only the first pass over a block prefetches the next one (a hint: never faults) */
        int64_t b = 0;
        for (; b + XROWS <= B; b += XROWS) PASS(XROWS);
        for (; b < B; b++) PASS(1);
    }
}

/* Decode attention for one new query per row, bf16 in and out, fp32 inside.
 *
 * q, out: (B, nh, hd) contiguous. k, v: the KV cache, (B, nkv, columns, hd) with element strides sb, sh, st and a
 * contiguous last dimension. Row b attends to columns [starts[b], len): only its real keys, never left padding,
 * so a row's result does not depend on its batch mates (the same reason as the GEMV's fixed order). Query head h
 * reads KV head h / (nh / nkv) (grouped-query attention, as torch's enable_gqa). One (row, head) pair per task:
 * scores q.k * scale, an exact softmax (max subtracted), then the probability-weighted sum of values.
 */
#include <math.h>
#include <stdlib.h>

static inline float bf16_to_f(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}

void chatsmith_attend_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v, int64_t sb, int64_t sh,
                           int64_t st, const int64_t *starts, int64_t len, uint16_t *out, int64_t B, int64_t nh,
                           int64_t nkv, int64_t hd, float scale, int threads) {
    const int64_t group = nh / nkv;
    #pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < nh; h++) {
            const int64_t n = len - starts[b];
            const uint16_t *kb = k + b * sb + (h / group) * sh + starts[b] * st;
            const uint16_t *vb = v + b * sb + (h / group) * sh + starts[b] * st;
            float qf[hd], acc[hd];
            float stack_scores[1024];
            float *s = n <= 1024 ? stack_scores : (float *)malloc((size_t)n * sizeof(float));
            for (int64_t d = 0; d < hd; d++) {
                qf[d] = bf16_to_f(q[(b * nh + h) * hd + d]) * scale;
                acc[d] = 0.0f;
            }
            float top = -INFINITY;
            for (int64_t t = 0; t < n; t++) {
                const uint16_t *kt = kb + t * st;
                float lane[16] = {0};       /* 16 independent partial sums: one vector register, fixed order */
                int64_t d = 0;
                for (; d + 16 <= hd; d += 16)
                    for (int j = 0; j < 16; j++) lane[j] += qf[d + j] * bf16_to_f(kt[d + j]);
                float dot = 0.0f;
                for (int j = 0; j < 16; j++) dot += lane[j];
                for (; d < hd; d++) dot += qf[d] * bf16_to_f(kt[d]);
                s[t] = dot;
                if (dot > top) top = dot;
            }
            float total = 0.0f;
            for (int64_t t = 0; t < n; t++) {
                const float p = expf(s[t] - top);
                total += p;
                const uint16_t *vt = vb + t * st;
                for (int64_t d = 0; d < hd; d++) acc[d] += p * bf16_to_f(vt[d]);
            }
            for (int64_t d = 0; d < hd; d++) out[(b * nh + h) * hd + d] = to_bf16(acc[d] / total);
            if (s != stack_scores) free(s);
        }
    }
}
