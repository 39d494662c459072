/* chatsmith's decode kernels for bf16 models on CPU: the small-batch linear layer and the one-query attention.
 *
 * y = x @ w.T for bf16 x (B, K), w (N, K), y (B, N): the decode-step linear layer at small batch.
 *
 * Why not torch: at a handful of rows, torch's CPU bf16 kernels (oneDNN, at::mv) stream the weights at about half
 * the memory bandwidth (they convert, pack or tile for large GEMMs), and a decode step is nothing but weight
 * streaming. This kernel reads the weight rows in order, one row at a time, from memory straight into AVX512-BF16
 * dot products (vdpbf16ps, fp32 accumulators), and applies each row to every row of x while it is in L1.
 *
 * Why one weight row at a time: each thread then reads one sequential stream. Measured on an AMD EPYC (Zen 4), 2
 * threads, the embedded model's 30 layers and head: 29-30 GB/s at batch 1 (the machine's streaming read rate)
 * against 21 GB/s when blocks of 4 rows were read side by side (4 streams per thread), which made a batch-1 step
 * 1.4x slower. Past 4 rows of x the step is compute-bound, so x rows go in passes of 8 (then 4, then 1) over the
 * row, each pass's accumulators in registers, with a software prefetch 8 rows ahead; at 1-4 rows every pass is a
 * single row (a lone 4-row pass measured 1.5x slower there). Whole greedy decodes of the embedded model on that
 * machine, alternating with the 4-row blocks: 97 against 53 tok/s at batch 1, 340 against 279 at 8 rows, the same
 * at 16 (368 against 374, within its noise); the tokens identical, as every output's sum is the same.
 *
 * Determinism: every output element is one fixed-order dot product (16 fp32 lanes over k, then the fixed
 * reduction tree of _mm512_reduce_add_ps, then round-to-nearest-even to bf16), whatever B, how rows are grouped,
 * the thread count or which thread computes it. So a row's result does not depend on its batch mates: batched
 * greedy decoding equals batch-1 decoding exactly.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define PREFETCH_ROWS 8   /* how far ahead, in weight rows, a batch of 8 rows or more prefetches */

static inline uint16_t to_bf16(float f) {
    union { float f; uint32_t u; } v = { f };
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);   /* NaN stays NaN */
    v.u += 0x7fffu + ((v.u >> 16) & 1u);                                                /* round to nearest even */
    return (uint16_t)(v.u >> 16);
}

static inline float bf16_to_f(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}

/* NX rows of x (a compile-time constant at each use, so the accumulators live in registers) against weight row n */
#define PASS(NX)                                                                                                  \
    do {                                                                                                          \
        __m512 acc[NX];                                                                                           \
        for (int j = 0; j < NX; j++) acc[j] = _mm512_setzero_ps();                                                \
        for (int64_t i = 0; i < full; i++) {                                                                      \
            if (prefetch) _mm_prefetch((const char *)(wr + PREFETCH_ROWS * K + i * 32), _MM_HINT_T0);            \
            const __m512bh wv = (__m512bh)_mm512_loadu_si512(wr + i * 32);                                        \
            for (int j = 0; j < NX; j++)                                                                          \
                acc[j] = _mm512_dpbf16_ps(acc[j], wv, (__m512bh)_mm512_loadu_si512(x + (b + j) * K + i * 32));    \
        }                                                                                                         \
        if (rest) {                                                                                               \
            const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(tail, wr + full * 32);                         \
            for (int j = 0; j < NX; j++)                                                                          \
                acc[j] = _mm512_dpbf16_ps(acc[j], wv,                                                             \
                                          (__m512bh)_mm512_maskz_loadu_epi16(tail, x + (b + j) * K + full * 32)); \
        }                                                                                                         \
        for (int j = 0; j < NX; j++) {                                                                            \
            const int64_t at = (b + j) * N + n;                                                                   \
            const uint16_t out = to_bf16(_mm512_reduce_add_ps(acc[j]));                                           \
            y[at] = residual ? to_bf16(bf16_to_f(residual[at]) + bf16_to_f(out)) : out;                          \
        }                                                                                                         \
        prefetch = 0;                                                                                             \
    } while (0)

/* y = x @ w.T (+ residual, rounded as torch rounds `residual + linear(x)` in bf16). threads: torch.get_num_threads()
 * of the caller (OpenMP's own default is per calling thread, torch's is global). */
static void gemv_avx512(const uint16_t *x, const uint16_t *w, const uint16_t *residual, uint16_t *y, int64_t B,
                        int64_t N, int64_t K, int threads) {
    const int64_t full = K / 32, rest = K % 32;
    const __mmask32 tail = rest ? (__mmask32)((1ull << rest) - 1) : 0;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const uint16_t *wr = w + n * K;
        int prefetch = B >= 8 && n + PREFETCH_ROWS < N;   /* only the first pass over a row (a hint: never faults) */
        int64_t b = 0;
        if (B > 4) {
            for (; b + 8 <= B; b += 8) PASS(8);
            for (; b + 4 <= B; b += 4) PASS(4);
        }
        for (; b < B; b++) PASS(1);
    }
}

/* The same product on AMX tiles, for a CPU with AMX-BF16 (asked for with chatsmith_amx_init) and a weight packed
 * by the caller into 1 KiB tiles, wv[N/16][K/32][16][16][2] = w[16 nb + n][32 kb + 2 r + p] (the VNNI layout
 * TDPBF16PS reads). One tile instruction does 16 rows x 16 outputs x 32 products, so a 16-row batch costs about what
 * one row does (the weights stream once, from memory, either way): 3x the AVX512-BF16 kernel at 16 rows, measured.
 * Every output is the same sequence of tile products whatever B and the thread count: rows stay independent. */
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

int chatsmith_amx_init(void) {     /* Linux hands out AMX tile state per process on request: 0 when granted */
    return (int)syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */);
}

#define AMX_MAX_ROWS 64   /* four 16-row accumulator tiles share each weight tile */

/* accumulate x rows [16c, 16c + 16) (tile 4) against the weight tile (tile 5) into accumulator tile c */
#define AMX_CHUNK(c)                                                                                              \
    if (chunks > c) {                                                                                             \
        _tile_loadd(4, xs + (int64_t)c * 16 * K + kb * 32, K * 2);                                                \
        _tile_dpbf16ps(c, 4, 5);                                                                                  \
    }
#define AMX_STORE(c)                                                                                              \
    if (chunks > c) _tile_stored(c, acc + c * 256, 64);

__attribute__((target("amx-tile,amx-bf16")))
static void gemv_amx(const uint16_t *x, const uint16_t *wv, const uint16_t *residual, uint16_t *y, int64_t B,
                     int64_t N, int64_t K, int threads) {
    const int64_t kblocks = K / 32, nblocks = N / 16;
    const int chunks = (int)((B + 15) / 16);
    /* past 16 rows every chunk is a full 16 rows: x is copied with zero rows below (they are computed, not
     * stored; a row's products never involve another row, so results match the unpadded call exactly) */
    uint16_t *padded = NULL;
    if (B > 16) {
        padded = calloc((size_t)(chunks * 16 * K), sizeof(uint16_t));
        memcpy(padded, x, (size_t)(B * K) * sizeof(uint16_t));
    }
    const uint16_t *xs = padded ? padded : x;
    const int tile_rows = B > 16 ? 16 : (int)B;
    #pragma omp parallel num_threads(threads)
    {
        tile_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette = 1;
        for (int c = 0; c < 4; c++) { cfg.rows[c] = (uint8_t)tile_rows; cfg.colsb[c] = 64; }  /* C: 16 fp32 */
        cfg.rows[4] = (uint8_t)tile_rows; cfg.colsb[4] = 64;   /* A: rows x 32 bf16 of x */
        cfg.rows[5] = 16; cfg.colsb[5] = 64;                   /* B: 16 x (16 outputs x 2) bf16 of w */
        _tile_loadconfig(&cfg);
        float acc[4 * 256];
        #pragma omp for schedule(static)
        for (int64_t nb = 0; nb < nblocks; nb++) {
            const uint16_t *t = wv + nb * kblocks * 512;
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            for (int64_t kb = 0; kb < kblocks; kb++) {
                const char *ahead = (const char *)(t + (kb + kblocks) * 512);   /* the next block's tile */
                for (int line = 0; line < 16; line++) _mm_prefetch(ahead + 64 * line, _MM_HINT_T0);
                _tile_loadd(5, t + kb * 512, 64);
                AMX_CHUNK(0) AMX_CHUNK(1) AMX_CHUNK(2) AMX_CHUNK(3)
            }
            AMX_STORE(0) AMX_STORE(1) AMX_STORE(2) AMX_STORE(3)
            for (int64_t b = 0; b < B; b++)
                for (int n = 0; n < 16; n++) {
                    const int64_t at = b * N + nb * 16 + n;
                    const uint16_t out = to_bf16(acc[b * 16 + n]);
                    y[at] = residual ? to_bf16(bf16_to_f(residual[at]) + bf16_to_f(out)) : out;
                }
        }
        _tile_release();
    }
    free(padded);
}

/* wv: the AMX-packed weight, or NULL for the AVX512-BF16 kernel */
static void gemv(const uint16_t *x, const uint16_t *w, const uint16_t *wv, const uint16_t *residual, uint16_t *y,
                 int64_t B, int64_t N, int64_t K, int threads) {
    if (wv && N % 16 == 0 && K % 32 == 0) {
        /* any number of rows (a prefill's tokens): AMX_MAX_ROWS at a time, each chunk streaming the weights */
        for (int64_t b0 = 0; b0 < B; b0 += AMX_MAX_ROWS)
            gemv_amx(x + b0 * K, wv, residual ? residual + b0 * N : NULL, y + b0 * N,
                     B - b0 < AMX_MAX_ROWS ? B - b0 : AMX_MAX_ROWS, N, K, threads);
    } else
        gemv_avx512(x, w, residual, y, B, N, K, threads);
}

void chatsmith_gemv_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *wv, uint16_t *y, int64_t B, int64_t N,
                         int64_t K, int threads) {
    gemv(x, w, wv, NULL, y, B, N, K, threads);
}

/* SiLU of every bf16 value, rounded to bf16 as F.silu rounds it: the gate is a bf16, so its activation is one of
 * 65536 values. Filled once when the library loads (about 1 ms), then a 128 KiB lookup replaces an expf per
 * element, which took 10% of a 16-row decode step; results are the expf's, bit for bit. */
static uint16_t silu_bf16[65536];

__attribute__((constructor)) static void fill_silu(void) {
    for (uint32_t h = 0; h < 65536; h++) {
        const float g = bf16_to_f((uint16_t)h);
        silu_bf16[h] = to_bf16(g / (1.0f + expf(-g)));
    }
}

/* A decode-step linear layer with what surrounds it fused in, each rounded where torch rounds in bf16, so one call
 * replaces the ~10 small torch ops whose per-op overhead otherwise costs as much as the matmul at batch 1:
 *   prologue 1 (RMSNorm): x <- norm_w * bf16(x * rsqrt(mean(x^2) + eps)), as LlamaRMSNorm (float32 inside);
 *   prologue 2 (SwiGLU):  x (B, 2K) = [gate | up] <- bf16(bf16(silu(gate)) * up), as F.silu(gate) * up;
 *   residual (or NULL):   y <- bf16(residual + y), as `h + linear(...)`.
 */
void chatsmith_linear_bf16(const uint16_t *x, int prologue, const uint16_t *norm_w, float eps, const uint16_t *w,
                           const uint16_t *wv, const uint16_t *residual, uint16_t *y, int64_t B, int64_t N, int64_t K,
                           int threads) {
    if (prologue == 0) {
        gemv(x, w, wv, residual, y, B, N, K, threads);
        return;
    }
    uint16_t stack[32768];   /* 64 KiB: a 16-row batch of a small model; larger ones allocate */
    uint16_t *xin = B * K <= 32768 ? stack : (uint16_t *)malloc((size_t)(B * K) * sizeof(uint16_t));
    /* Shared between the threads, each element computed as it would be alone (the same result whatever the thread
     * count): done by the calling thread alone, the prologue left the other thread spinning for 10-15% of a 16-row
     * step. A lone row's (576 products; 1536 lookups) is not worth a fork. */
    if (prologue == 1) {
        #pragma omp parallel for schedule(static) num_threads(threads) if (B > 1)
        for (int64_t b = 0; b < B; b++) {
            const uint16_t *xb = x + b * K;
            uint16_t *o = xin + b * K;
            float ss = 0.0f;
            for (int64_t k = 0; k < K; k++) ss += bf16_to_f(xb[k]) * bf16_to_f(xb[k]);
            const float inv = 1.0f / sqrtf(ss / (float)K + eps);
            for (int64_t k = 0; k < K; k++)
                o[k] = to_bf16(bf16_to_f(norm_w[k]) * bf16_to_f(to_bf16(bf16_to_f(xb[k]) * inv)));
        }
    } else {
        #pragma omp parallel for schedule(static) num_threads(threads) if (B > 1)
        for (int64_t i = 0; i < B * K; i++) {
            const int64_t b = i / K, k = i % K;
            xin[i] = to_bf16(bf16_to_f(silu_bf16[x[b * 2 * K + k]]) * bf16_to_f(x[b * 2 * K + K + k]));
        }
    }
    gemv(xin, w, wv, residual, y, B, N, K, threads);
    if (xin != stack) free(xin);
}

/* Decode attention for one new query per row, bf16 in and out, fp32 inside.
 *
 * q, out: (B, nh, hd) contiguous. k, v: the KV cache, (B, nkv, columns, hd) with element strides sb, sh, st and a
 * contiguous last dimension. Row b attends to columns [starts[b], len): only its real keys, never left padding,
 * so a row's result does not depend on its batch mates (the same reason as the GEMV's fixed order). Query head h
 * reads KV head h / (nh / nkv) (grouped-query attention, as torch's enable_gqa). One (row, head) pair per task:
 * scores q.k * scale, an exact softmax (max subtracted), then the probability-weighted sum of values.
 */

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

/* One whole decode step of a llama-architecture model, every layer, in one call: what the Python loop over layers
 * did with ~15 torch ops per layer, each rounded where torch rounds in bf16, so that at batch 1 the time goes to
 * streaming the weights rather than to per-op overhead.
 *
 * h (B, H): in, the token embeddings; out, the last hidden state before the final norm. Per layer l the six
 * weights are w[6l .. 6l+5] = input norm (H), q|k|v (nh+2nkv)*hd x H, o H x nh*hd, post-attention norm (H),
 * gate|up 2I x H, down H x I; wv (or NULL) holds their AMX-packed copies at the same places (NULL for norms). Cache buffers kc[l], vc[l]: (B, nkv, capacity, hd) with element strides sb, sh, st;
 * this step writes column `col` (the new token's key and value) and row b attends to columns starts[b]..col.
 * cos, sin (B, hd): the rotary embedding of each row's position, as the model's rotary module returns them.
 * logits (B, V) = lm_head @ norm(h).
 */
void chatsmith_llama_step_bf16(uint16_t *h, int64_t B, int64_t H, int64_t nh, int64_t nkv, int64_t hd, int64_t I,
                               int64_t layers, float eps, const uint16_t *const *w, const uint16_t *const *wv,
                               uint16_t *const *kc,
                               uint16_t *const *vc, int64_t sb, int64_t sh, int64_t st, int64_t col,
                               const int64_t *starts, const uint16_t *cos, const uint16_t *sin,
                               const uint16_t *norm_w, const uint16_t *lm_head, const uint16_t *lm_head_v, int64_t V,
                               uint16_t *logits, int threads) {
    const int64_t nqk = nh + nkv, width = (nh + 2 * nkv) * hd, half = hd / 2;
    uint16_t *qkv = malloc((size_t)(B * width) * 2), *att = malloc((size_t)(B * nh * hd) * 2),
             *gu = malloc((size_t)(B * 2 * I) * 2), *q = malloc((size_t)(B * nh * hd) * 2);
    for (int64_t l = 0; l < layers; l++) {
        const uint16_t *const *lw = w + 6 * l;
        const uint16_t *lv[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
        if (wv)
            for (int i = 0; i < 6; i++) lv[i] = wv[6 * l + i];
        chatsmith_linear_bf16(h, 1, lw[0], eps, lw[1], lv[1], NULL, qkv, B, width, H, threads);
        for (int64_t b = 0; b < B; b++) {
            const uint16_t *cb = cos + b * hd, *sn = sin + b * hd;
            for (int64_t head = 0; head < nqk; head++) {         /* rotate q and k: x*cos + rotate_half(x)*sin */
                const uint16_t *x = qkv + b * width + head * hd;
                uint16_t *dst = head < nh ? q + (b * nh + head) * hd
                                          : kc[l] + b * sb + (head - nh) * sh + col * st;
                for (int64_t d = 0; d < hd; d++) {
                    const float r = d < half ? -bf16_to_f(x[d + half]) : bf16_to_f(x[d - half]);
                    dst[d] = to_bf16(bf16_to_f(to_bf16(bf16_to_f(x[d]) * bf16_to_f(cb[d]))) +
                                     bf16_to_f(to_bf16(r * bf16_to_f(sn[d]))));
                }
            }
            for (int64_t g = 0; g < nkv; g++) {                  /* values go to the cache as they are */
                const uint16_t *x = qkv + b * width + (nqk + g) * hd;
                uint16_t *dst = vc[l] + b * sb + g * sh + col * st;
                for (int64_t d = 0; d < hd; d++) dst[d] = x[d];
            }
        }
        chatsmith_attend_bf16(q, kc[l], vc[l], sb, sh, st, starts, col + 1, att, B, nh, nkv, hd,
                              1.0f / sqrtf((float)hd), threads);
        chatsmith_linear_bf16(att, 0, NULL, 0.0f, lw[2], lv[2], h, h, B, H, nh * hd, threads);
        chatsmith_linear_bf16(h, 1, lw[3], eps, lw[4], lv[4], NULL, gu, B, 2 * I, H, threads);
        chatsmith_linear_bf16(gu, 2, NULL, 0.0f, lw[5], lv[5], h, h, B, H, I, threads);
    }
    chatsmith_linear_bf16(h, 1, norm_w, eps, lm_head, lm_head_v, NULL, logits, B, V, H, threads);
    free(qkv);
    free(att);
    free(gu);
    free(q);
}
