/* Part of bitkernels.c (one translation unit: included at this point, sees everything above). */
#ifdef BIPER_X86
/* -- AVX-512 VPOPCNTDQ: MR rows x 32 channels (4 vectors of 8) in 4*MR accumulators ----- */
#ifndef BIPER_NO_AVX512
#define T512 __attribute__((target("avx512f,avx512vl,avx512vpopcntdq")))

static inline __attribute__((always_inline)) T512 void
body512(const gemm_t *g, int64_t m, const uint64_t **tap, const int32_t **crow, int64_t nb,
        const int MR, const int ONEWORD) {
    const int64_t T = g->KH * g->KW, CW = ONEWORD ? 1 : g->CW, KWD = T * CW;
    const __m512i kk = _mm512_set1_epi32((int)g->K);
    /* even dwords = the low halves of 16 int64 lanes (popcount sums < 2^31) */
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    {
        const int64_t n0 = nb * PANEL;
        const uint64_t *wk = g->Wp + nb * KWD * PANEL;
        __m512i acc[4][4];
        for (int r = 0; r < MR; ++r)
            for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_si512();
        for (int64_t t = 0; t < T; ++t) {
            const uint64_t *ap[4];
            for (int r = 0; r < MR; ++r) ap[r] = tap[r * TMAX + t];
            for (int64_t w = 0; w < CW; ++w, wk += PANEL) {
                const __m512i w0 = _mm512_loadu_si512((const void *)wk);
                const __m512i w1 = _mm512_loadu_si512((const void *)(wk + 8));
                const __m512i w2 = _mm512_loadu_si512((const void *)(wk + 16));
                const __m512i w3 = _mm512_loadu_si512((const void *)(wk + 24));
                for (int r = 0; r < MR; ++r) {
                    const __m512i a = _mm512_set1_epi64((long long)ap[r][w]);
                    acc[r][0] = _mm512_add_epi64(acc[r][0], _mm512_popcnt_epi64(_mm512_xor_si512(a, w0)));
                    acc[r][1] = _mm512_add_epi64(acc[r][1], _mm512_popcnt_epi64(_mm512_xor_si512(a, w1)));
                    acc[r][2] = _mm512_add_epi64(acc[r][2], _mm512_popcnt_epi64(_mm512_xor_si512(a, w2)));
                    acc[r][3] = _mm512_add_epi64(acc[r][3], _mm512_popcnt_epi64(_mm512_xor_si512(a, w3)));
                }
            }
        }
        for (int r = 0; r < MR; ++r) {
            const int64_t row = (m + r) * g->N;
            const int32_t *corr = crow[r];
            for (int h = 0; h < 2; ++h) { /* 16 channels at a time: two int64 vectors -> int32 */
                const int64_t n = n0 + 16 * h;
                if (n >= g->N) break;
                const __mmask16 mk = g->N - n >= 16 ? 0xffff : (__mmask16)((1u << (g->N - n)) - 1u);
                const __m512i pc = _mm512_permutex2var_epi32(acc[r][2 * h], even, acc[r][2 * h + 1]);
                __m512i a = _mm512_sub_epi32(kk, _mm512_slli_epi32(pc, 1));
                if (corr) a = _mm512_sub_epi32(a, _mm512_maskz_loadu_epi32(mk, corr + n));
                if (g->acc) _mm512_mask_storeu_epi32(g->acc + row + n, mk, a);
                if (g->y) {
                    const __m512 prod = _mm512_mul_ps(_mm512_cvtepi32_ps(a), _mm512_maskz_loadu_ps(mk, g->scale + n));
                    __m512 y = _mm512_add_ps(prod, _mm512_maskz_loadu_ps(mk, g->shift + n));
                    if (g->res) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mk, g->res + row + n));
                    if (g->clamp) { /* max/min return the second operand when one is NaN */
                        y = _mm512_max_ps(_mm512_set1_ps(g->lo), y);
                        y = _mm512_min_ps(_mm512_set1_ps(g->hi), y);
                    }
                    _mm512_mask_storeu_ps(g->y + row + n, mk, y);
                }
            }
        }
    }
}

/* One entry per row count R, so that body512 is inlined with R and the one-word case constant. */
#define BIPER_ROWS512(R)                                                                          \
    static T512 void rows512_##R(const gemm_t *g, int64_t m, const uint64_t **t, const int32_t **c, \
                                 int64_t nb) {                                                    \
        if (g->CW == 1) body512(g, m, t, c, nb, R, 1); /* one word per tap (C <= 64) */           \
        else body512(g, m, t, c, nb, R, 0);                                                       \
    }
BIPER_ROWS512(4)
BIPER_ROWS512(3)
BIPER_ROWS512(2)
BIPER_ROWS512(1)
#endif /* BIPER_NO_AVX512 */

#endif /* BIPER_X86 */
