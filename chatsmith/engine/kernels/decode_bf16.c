/* chatsmith's decode kernels for bf16 models on CPU: the small-batch linear layer and the one-query attention.
 *
 * y = x @ w.T for bf16 x (B, K), w (N, K), y (B, N): the decode-step linear layer at small batch.
 *
 * Why not torch: at a handful of rows, torch's CPU bf16 kernels (oneDNN, at::mv) stream the weights at about half
 * the memory bandwidth (they convert, pack or tile for large GEMMs), and a decode step is nothing but weight
 * streaming. This kernel reads the weight rows in order from memory straight into AVX512-BF16 dot products
 * (vdpbf16ps, fp32 accumulators), and applies each row to every row of x while it is in L1.
 *
 * How: at batch 1 the step is memory-bound, and each thread reads one sequential stream: it walks the weight rows
 * in order, one row at a time (measured on an AMD EPYC (Zen 4), 2 threads, the embedded model's 30 layers and head:
 * 29-30 GB/s, the machine's streaming read rate, against 21 GB/s for blocks of 4 rows read side by side without
 * prefetch, which made a batch-1 step 1.4x slower). From 4 rows of x the step is compute-bound, so rows of w and x
 * go in blocks of 4 x 4: 16 dot products in registers, 8 loads per 16 vdpbf16ps, and their 16 sums reduced together
 * (reduce16: 15 vector adds and 30 shuffles, where 16 separate _mm512_reduce_add_ps took about 8 uops each: with
 * K = 576 that reduction and the scalar rounding cost as much as the products), rounded to bf16 as one vector.
 * The 4 weight rows of the block 4 blocks ahead are prefetched into L2 (_MM_HINT_T1) while the first 4 x rows
 * pass. Measured on that machine, every linear layer of a decode step of the embedded model (2 threads, medians
 * of 7): 16 rows 17.0 ms against 25.9 ms for the previous passes of 8 x rows over one weight row (1.52x; the
 * blocks prefetching 2 blocks ahead into L1 (T0) instead: 23.8 ms, perhaps evicting the x rows; no prefetch:
 * 28.6 ms), 12 rows 14.2 against 22.3, 8 rows 12.2 against 17.8, 4 rows 10.9 against 12.5; in L2 (one 768 x 576
 * weight) 305 against 187 GFLOP/s at 16 rows.
 *
 * Determinism: every output element is one fixed-order dot product (16 fp32 lanes over k, then the fixed
 * reduction tree of _mm512_reduce_add_ps, which reduce16 reproduces, then round-to-nearest-even to bf16), whatever
 * B, how rows are grouped, the thread count or which thread computes it. So a row's result does not depend on its
 * batch mates: batched greedy decoding equals batch-1 decoding exactly.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define PREFETCH_BLOCKS 4   /* how far ahead, in 4-row blocks of w, a 4 x 4 block prefetches into L2 */

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

/* to_bf16 of 16 floats at once, the same integer steps (vcvtneps2bf16 would flush denormals): bf16 in the low half
 * of each 32-bit lane */
static inline __m512i to_bf16_x16(__m512 f) {
    const __m512i u = _mm512_castps_si512(f);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
}

static inline __m512 bf16_x16_to_f(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* The sums of 16 accumulators in one vector: lane 4a + c holds the sum of v[4c + a], added in the pairing that
 * _mm512_reduce_add_ps uses (lanes i and i+8, then i and i+4, then i and i+2, then i and i+1; an addition's two
 * operands can swap without changing a bit), so the result equals 16 calls of it to the bit. */
static inline __attribute__((always_inline)) __m512 reduce16(const __m512 *v) {
    __m512 u[8], p[4], q[2];
    for (int m = 0; m < 8; m++)
        u[m] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0xEE));
    for (int m = 0; m < 4; m++)
        p[m] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * m], u[2 * m + 1], 0x88),
                             _mm512_shuffle_f32x4(u[2 * m], u[2 * m + 1], 0xDD));
    for (int m = 0; m < 2; m++)
        q[m] = _mm512_add_ps(_mm512_shuffle_ps(p[2 * m], p[2 * m + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(p[2 * m], p[2 * m + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_ps(q[0], q[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(q[0], q[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* y[b, n] for one row of x against one row of w: batch 1, and the rows that do not fill a 4 x 4 block */
static inline void dot_row(const uint16_t *xr, const uint16_t *wr, const uint16_t *residual, uint16_t *y,
                           int64_t at, int64_t full, int64_t rest, __mmask32 tail) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < full; i++)
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(wr + i * 32),
                               (__m512bh)_mm512_loadu_si512(xr + i * 32));
    if (rest)
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(tail, wr + full * 32),
                               (__m512bh)_mm512_maskz_loadu_epi16(tail, xr + full * 32));
    const uint16_t out = to_bf16(_mm512_reduce_add_ps(acc));
    y[at] = residual ? to_bf16(bf16_to_f(residual[at]) + bf16_to_f(out)) : out;
}

/* y[b..b+3, n..n+3] from x rows b..b+3 and w rows n..n+3 (w0); ahead (or NULL): 4 rows of w to prefetch.
 * Always inlined, as reduce16: as a call, its accumulators went through the stack and its entry zeroed 1 KiB with
 * rep stos, which cost a quarter of the gain at 16 rows. */
static inline __attribute__((always_inline)) void block_4x4(
        const uint16_t *x, const uint16_t *w0, const uint16_t *residual, uint16_t *y, int64_t b, int64_t n, int64_t N,
        int64_t K, int64_t full, int64_t rest, __mmask32 tail, const uint16_t *ahead) {
    __m512 acc[16];   /* acc[4r + j]: w row n + r against x row b + j; after reduce16 at lane 4j + r */
    for (int a = 0; a < 16; a++) acc[a] = _mm512_setzero_ps();
    for (int64_t i = 0; i < full; i++) {
        if (ahead)
            for (int r = 0; r < 4; r++) _mm_prefetch((const char *)(ahead + r * K + i * 32), _MM_HINT_T1);
        __m512bh xv[4];
        for (int j = 0; j < 4; j++) xv[j] = (__m512bh)_mm512_loadu_si512(x + (b + j) * K + i * 32);
        for (int r = 0; r < 4; r++) {
            const __m512bh wv = (__m512bh)_mm512_loadu_si512(w0 + r * K + i * 32);
            for (int j = 0; j < 4; j++) acc[4 * r + j] = _mm512_dpbf16_ps(acc[4 * r + j], wv, xv[j]);
        }
    }
    if (rest) {
        __m512bh xv[4];
        for (int j = 0; j < 4; j++) xv[j] = (__m512bh)_mm512_maskz_loadu_epi16(tail, x + (b + j) * K + full * 32);
        for (int r = 0; r < 4; r++) {
            const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(tail, w0 + r * K + full * 32);
            for (int j = 0; j < 4; j++) acc[4 * r + j] = _mm512_dpbf16_ps(acc[4 * r + j], wv, xv[j]);
        }
    }
    __m512i out = to_bf16_x16(reduce16(acc));   /* lanes 4j .. 4j+3: y[b + j, n .. n+3] */
    if (residual) {
        __m128i rr[4];
        for (int j = 0; j < 4; j++) rr[j] = _mm_loadl_epi64((const __m128i *)(residual + (b + j) * N + n));
        const __m256i r16 = _mm256_set_m128i(_mm_unpacklo_epi64(rr[2], rr[3]), _mm_unpacklo_epi64(rr[0], rr[1]));
        out = to_bf16_x16(_mm512_add_ps(bf16_x16_to_f(r16), _mm512_castsi512_ps(_mm512_slli_epi32(out, 16))));
    }
    const __m256i o16 = _mm512_cvtepi32_epi16(out);
    const __m128i lo = _mm256_castsi256_si128(o16), hi = _mm256_extracti128_si256(o16, 1);
    _mm_storel_epi64((__m128i *)(y + b * N + n), lo);
    _mm_storeh_pd((double *)(y + (b + 1) * N + n), _mm_castsi128_pd(lo));
    _mm_storel_epi64((__m128i *)(y + (b + 2) * N + n), hi);
    _mm_storeh_pd((double *)(y + (b + 3) * N + n), _mm_castsi128_pd(hi));
}

/* y = x @ w.T (+ residual, rounded as torch rounds `residual + linear(x)` in bf16). threads: torch.get_num_threads()
 * of the caller (OpenMP's own default is per calling thread, torch's is global). Residual may be y itself: each
 * element is read, then written, by the one block that owns it. */
static void gemv_avx512(const uint16_t *x, const uint16_t *w, const uint16_t *residual, uint16_t *y, int64_t B,
                        int64_t N, int64_t K, int threads) {
    const int64_t full = K / 32, rest = K % 32;
    const __mmask32 tail = rest ? (__mmask32)((1ull << rest) - 1) : 0;
    const int64_t blocks = (N + 3) / 4;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t nb = 0; nb < blocks; nb++) {
        const int64_t n = 4 * nb, rows = N - n < 4 ? N - n : 4;
        const uint16_t *w0 = w + n * K;
        int64_t b = 0;
        if (rows == 4)
            for (; b + 4 <= B; b += 4) {
                const int ahead = b == 0 && n + 4 * (PREFETCH_BLOCKS + 1) <= N;   /* a hint: never faults */
                block_4x4(x, w0, residual, y, b, n, N, K, full, rest, tail,
                          ahead ? w0 + 4 * PREFETCH_BLOCKS * K : NULL);
            }
        for (int64_t r = 0; r < rows; r++)        /* one weight row at a time: one sequential stream at batch 1 */
            for (int64_t bb = b; bb < B; bb++)
                dot_row(x + bb * K, w0 + r * K, residual, y, bb * N + n + r, full, rest, tail);
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

/* One query row and one head over n keys and values (st elements apart, contiguous last dimension), bf16 in and
 * out, fp32 inside: scores q.k * scale, an exact softmax (max subtracted), then the probability-weighted sum of
 * values, every sum in one fixed order. The result depends on the query and those n keys and values alone: not on
 * the batch, the other rows or how long the rest of the sequence is. */
static void attend_one(const uint16_t *q, const uint16_t *kb, const uint16_t *vb, int64_t st, int64_t n,
                       uint16_t *out, int64_t hd, float scale) {
    float qf[hd], acc[hd];
    float stack_scores[1024];
    float *s = n <= 1024 ? stack_scores : (float *)malloc((size_t)n * sizeof(float));
    for (int64_t d = 0; d < hd; d++) {
        qf[d] = bf16_to_f(q[d]) * scale;
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
    for (int64_t d = 0; d < hd; d++) out[d] = to_bf16(acc[d] / total);
    if (s != stack_scores) free(s);
}

/* Decode attention for one new query per row.
 *
 * q, out: (B, nh, hd) contiguous. k, v: the KV cache, (B, nkv, columns, hd) with element strides sb, sh, st and a
 * contiguous last dimension. Row b attends to columns [starts[b], len): only its real keys, never left padding,
 * so a row's result does not depend on its batch mates (the same reason as the GEMV's fixed order). Query head h
 * reads KV head h / (nh / nkv) (grouped-query attention, as torch's enable_gqa). One (row, head) pair per task.
 */

void chatsmith_attend_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v, int64_t sb, int64_t sh,
                           int64_t st, const int64_t *starts, int64_t len, uint16_t *out, int64_t B, int64_t nh,
                           int64_t nkv, int64_t hd, float scale, int threads) {
    const int64_t group = nh / nkv;
    #pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < nh; h++) {
            const int64_t off = b * sb + (h / group) * sh + starts[b] * st;
            attend_one(q + (b * nh + h) * hd, k + off, v + off, st, len - starts[b], out + (b * nh + h) * hd, hd,
                       scale);
        }
    }
}

/* Prefill attention: query row r (of R, any prompts' positions packed together) attends to the key columns
 * [starts[r], ends[r]) of one shared K/V, (nkv, columns, hd) with element strides sh, st. A prompt's row at
 * position p gets [its first column, its column p], so each position is computed exactly as a decode step at p
 * computes it (attend_one): its keys and values then do not depend on the prompt's length or its neighbours,
 * and a cached prefix's keys and values are those a prefill of any longer prompt computes for it. */
void chatsmith_attend_ranges_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v, int64_t sh, int64_t st,
                                  const int64_t *starts, const int64_t *ends, uint16_t *out, int64_t R, int64_t nh,
                                  int64_t nkv, int64_t hd, float scale, int threads) {
    const int64_t group = nh / nkv;
    #pragma omp parallel for collapse(2) schedule(dynamic, 8) num_threads(threads)
    for (int64_t r = 0; r < R; r++) {
        for (int64_t h = 0; h < nh; h++) {
            const int64_t off = (h / group) * sh + starts[r] * st;
            attend_one(q + (r * nh + h) * hd, k + off, v + off, st, ends[r] - starts[r], out + (r * nh + h) * hd,
                       hd, scale);
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
