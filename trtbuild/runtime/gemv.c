/* Small-batch linear kernels for the reference runtime on x86-64 with AVX-512 (F, BW, VL):
 *   y[m, o] = sum_k x[m, k] * w[o, k]  (+ bias[o])  (+ add[m, o])
 * for float32 and bfloat16 (x, y, bias, add in the weight's dtype), w prepacked in blocks of NR
 * output rows, k-major: packed[b, k, r] = w[NR * b + r, k], [ceil(O / NR), I, NR], the last block
 * zero-padded (kernels.pack). A decode step (M = 1) then reads its weights as one sequential stream
 * per thread, which is what the memory system here streams fastest; larger M reuse each block of
 * weights for NR/16 * MB accumulators while it is in cache.
 *
 * Numerics: every output is one float32 fused multiply-add chain over k = 0, 1, ..., I - 1 (x
 * broadcast, bfloat16 values widened exactly), then + bias, then + add, rounded once to the output
 * dtype (bfloat16: to nearest even). That order depends on nothing but the output's own row, so a
 * row's result is the same in any batch, at any M, with any thread count (row-invariant).
 *
 * An optional prologue makes x from the caller's input first (float32, per row, before any sum):
 *   PRO_NONE    x = in                                      in [M, I]
 *   PRO_RMSNORM x = in * g / sqrt(mean_k(in^2) + eps)       in [M, I], g [I] (the norm's weight)
 *   PRO_SWIGLU  x = silu(in[:, :I]) * in[:, I:]             in [M, 2I] (a fused fc|gate output)
 * so the norm before a linear and the SwiGLU between two run inside the call.
 *
 * Work splits over the weight blocks (OpenMP, static, torch's own libgomp when torch is loaded
 * first). Built and loaded by trtbuild/runtime/kernels.py; tested by tests/test_kernels.py.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define INLINE static inline __attribute__((always_inline))
#define NR 32   /* output rows per weight block: two 16-lane vectors */
#define MB 8    /* rows of x per tile: 2 * MB accumulators in registers */

enum { PRO_NONE = 0, PRO_RMSNORM = 1, PRO_SWIGLU = 2 };

int trtbuild_block_rows(void) { return NR; }

INLINE float widen(const void *p, long i, int bf) {
    if (!bf) return ((const float *)p)[i];
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}

/* xf [M, I] (float32) from `in` by the prologue `pro` (see the top of the file). */
static void prologue(const void *in, float *xf, long M, long I, int pro, const void *g, float eps, int bf) {
    for (long m = 0; m < M; m++) {
        float *row = xf + m * I;
        if (pro == PRO_SWIGLU) {
            for (long k = 0; k < I; k++) {
                float a = widen(in, m * 2 * I + k, bf), b = widen(in, m * 2 * I + I + k, bf);
                row[k] = a / (1.0f + expf(-a)) * b;
            }
            continue;
        }
        for (long k = 0; k < I; k++) row[k] = widen(in, m * I + k, bf);
        if (pro == PRO_RMSNORM) {
            double ss = 0.0;  /* the mean square in double: no order of summation to agree on */
            for (long k = 0; k < I; k++) ss += (double)row[k] * row[k];
            const float r = (float)(1.0 / sqrt(ss / (double)I + (double)eps));
            for (long k = 0; k < I; k++) row[k] = row[k] * r * widen(g, k, bf);
        }
    }
}

INLINE __m512 load_w(const void *p, int bf) {  /* 16 packed weights, aligned to their size */
    if (bf) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_load_si256(p)), 16));
    return _mm512_load_ps(p);
}

INLINE __m512 load_v(const void *p, int bf, __mmask16 k) {  /* up to 16 values of a row */
    if (bf) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p)), 16));
    return _mm512_maskz_loadu_ps(k, p);
}

INLINE void store_v(void *p, __m512 v, int bf, __mmask16 k) {
    if (bf) {  /* round to nearest even; a NaN stays a quiet NaN */
        __m512i u = _mm512_castps_si512(v);
        __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
        __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
        _mm256_mask_storeu_epi16(p, k, _mm512_cvtepi32_epi16(r));
    } else {
        _mm512_mask_storeu_ps(p, k, v);
    }
}

/* Rows m .. m + mb of x (float32, xf [M, I]) against weight block wb [I][NR] (outputs o .. o + NR). */
INLINE void tile(const char *wb, const float *xf, char *y, const char *bias, const char *add,
                 long I, long O, long o, long m, int mb, int bf) {
    const long es = bf ? 2 : 4;
    __m512 acc[MB][2];
#pragma GCC unroll 8
    for (int j = 0; j < mb; j++) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    for (long k = 0; k < I; k++) {
        const char *p = wb + k * NR * es;
        __m512 w0 = load_w(p, bf), w1 = load_w(p + 16 * es, bf);
#pragma GCC unroll 8
        for (int j = 0; j < mb; j++) {
            __m512 xb = _mm512_set1_ps(xf[(m + j) * I + k]);
            acc[j][0] = _mm512_fmadd_ps(w0, xb, acc[j][0]);
            acc[j][1] = _mm512_fmadd_ps(w1, xb, acc[j][1]);
        }
    }
    const long left = O - o;  /* the last block may hold fewer than NR real rows */
    const __mmask16 k0 = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1u);
    const __mmask16 k1 = left >= 32 ? 0xffff : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1u);
    __m512 b0 = _mm512_setzero_ps(), b1 = b0;
    if (bias) b0 = load_v(bias + o * es, bf, k0), b1 = load_v(bias + (o + 16) * es, bf, k1);
#pragma GCC unroll 8
    for (int j = 0; j < mb; j++) {
        __m512 s0 = acc[j][0], s1 = acc[j][1];
        if (bias) s0 = _mm512_add_ps(s0, b0), s1 = _mm512_add_ps(s1, b1);
        if (add) {
            const char *a = add + ((m + j) * O + o) * es;
            s0 = _mm512_add_ps(s0, load_v(a, bf, k0));
            s1 = _mm512_add_ps(s1, load_v(a + 16 * es, bf, k1));
        }
        char *out = y + ((m + j) * O + o) * es;
        store_v(out, s0, bf, k0);
        store_v(out + 16 * es, s1, bf, k1);
    }
}

/* Every row of x against weight block b, MB rows at a time (the block stays in cache meanwhile). */
INLINE void block(const char *w, const float *xf, char *y, const char *bias, const char *add,
                  long M, long I, long O, long b, int bf) {
    const char *wb = w + b * I * NR * (bf ? 2 : 4);
    const long o = NR * b;
    long m = 0;
    for (; m + MB <= M; m += MB) tile(wb, xf, y, bias, add, I, O, o, m, MB, bf);
    switch (M - m) {  /* constant row counts, so each tile's accumulators stay in registers */
        case 7: tile(wb, xf, y, bias, add, I, O, o, m, 7, bf); break;
        case 6: tile(wb, xf, y, bias, add, I, O, o, m, 6, bf); break;
        case 5: tile(wb, xf, y, bias, add, I, O, o, m, 5, bf); break;
        case 4: tile(wb, xf, y, bias, add, I, O, o, m, 4, bf); break;
        case 3: tile(wb, xf, y, bias, add, I, O, o, m, 3, bf); break;
        case 2: tile(wb, xf, y, bias, add, I, O, o, m, 2, bf); break;
        case 1: tile(wb, xf, y, bias, add, I, O, o, m, 1, bf); break;
        default: break;
    }
}

/* in (see the prologues), packed w, y [M, O], bias [O] or NULL, add [M, O] or NULL: all
 * contiguous, all of the weight's dtype; xf: float32 scratch [M, I] (unused for float32 PRO_NONE);
 * g: the norm weight [I] for PRO_RMSNORM. Each dtype has its own parallel loop (OpenMP outlines a
 * loop before inlining: a shared one would test the dtype in the innermost loop). */
void trtbuild_linear_f32(const float *w, const float *in, float *y, const float *bias, const float *add,
                         long M, long I, long O, int threads, float *xf, int pro, const float *g, float eps) {
    const float *x = in;
    if (pro != PRO_NONE) {
        prologue(in, xf, M, I, pro, g, eps, 0);
        x = xf;
    }
    const long blocks = (O + NR - 1) / NR;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long b = 0; b < blocks; b++)
        block((const char *)w, x, (char *)y, (const char *)bias, (const char *)add, M, I, O, b, 0);
}

void trtbuild_linear_bf16(const uint16_t *w, const uint16_t *in, uint16_t *y, const uint16_t *bias,
                          const uint16_t *add, long M, long I, long O, int threads, float *xf, int pro,
                          const uint16_t *g, float eps) {
    prologue(in, xf, M, I, pro, g, eps, 1);
    const long blocks = (O + NR - 1) / NR;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long b = 0; b < blocks; b++)
        block((const char *)w, xf, (char *)y, (const char *)bias, (const char *)add, M, I, O, b, 1);
}
