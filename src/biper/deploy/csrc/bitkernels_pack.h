/* Part of bitkernels.c (one translation unit: included at this point, sees everything above). */
/* ----------------------------------------------------------------------------------------
 * Packing, channels-first: x (B, C, HW) float -> out (B, HW, CW) words, CW = ceil(C / 64),
 * bit = (x[b, c, p] - thr[c]) < 0   (thr may be NULL: threshold 0).
 * ---------------------------------------------------------------------------------------- */
#define PACK_CHUNK 64

static void pack_chunk_portable(const float *x, int64_t b, int64_t C, int64_t HW, const float *thr,
                                int64_t p0, int64_t np, uint64_t *out) {
    const int64_t CW = (C + 63) / 64;
    uint64_t tmp[PACK_CHUNK];
    for (int64_t w = 0; w < CW; ++w) {
        memset(tmp, 0, sizeof(tmp));
        const int64_t nc = MIN(64, C - 64 * w);
        for (int64_t j = 0; j < nc; ++j) {
            const int64_t c = 64 * w + j;
            const float t = thr ? thr[c] : 0.0f;
            const float *xc = x + (b * C + c) * HW + p0;
            for (int64_t q = 0; q < np; ++q)
                tmp[q] |= (uint64_t)((xc[q] - t) < 0.0f) << j;
        }
        for (int64_t q = 0; q < np; ++q) out[(b * HW + p0 + q) * CW + w] = tmp[q];
    }
}

/* Channels-last rows: x (R, C) float -> out (R, CW) words, bit = (x[r, c] - thr[c]) < 0. */
static void pack_rows_portable(const float *x, int64_t r0, int64_t r1, int64_t C,
                               const float *thr, uint64_t *out) {
    const int64_t CW = (C + 63) / 64;
    for (int64_t r = r0; r < r1; ++r)
        for (int64_t w = 0; w < CW; ++w) {
            uint64_t word = 0;
            const int64_t nc = MIN(64, C - 64 * w);
            for (int64_t j = 0; j < nc; ++j) {
                const int64_t c = 64 * w + j;
                word |= (uint64_t)((x[r * C + c] - (thr ? thr[c] : 0.0f)) < 0.0f) << j;
            }
            out[r * CW + w] = word;
        }
}

#if defined(BIPER_X86) && !defined(BIPER_NO_AVX512)
__attribute__((target("avx512f"))) static void
pack_rows_avx512(const float *x, int64_t r0, int64_t r1, int64_t C, const float *thr,
                 uint64_t *out) {
    const int64_t CW = (C + 63) / 64;
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t r = r0; r < r1; ++r)
        for (int64_t w = 0; w < CW; ++w) {
            uint64_t word = 0;
            for (int q = 0; q < 4; ++q) {
                const int64_t c = 64 * w + 16 * q, left = C - c;
                if (left <= 0) break;
                const __mmask16 mk = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1u);
                const __m512 t = thr ? _mm512_maskz_loadu_ps(mk, thr + c) : zero;
                const __m512 v = _mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + r * C + c), t);
                word |= (uint64_t)_mm512_mask_cmp_ps_mask(mk, v, zero, _CMP_LT_OQ) << (16 * q);
            }
            out[r * CW + w] = word;
        }
}
#endif

#ifdef BIPER_X86
/* AVX2 packers: 8 floats -> 8 bits with vcmpltps + vmovmskps, masked loads at the tails.
 * (x - 0) < 0 equals x < 0 for every float (NaN included), so no threshold means no subtraction. */
static AI T256 __m256i first_lanes(int64_t cnt) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)MIN(cnt, 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* bits of (x[i] - t[i]) < 0 for i < MIN(cnt, 8); t: 8 thresholds, or broadcast when tstep is 0 */
static AI T256 uint64_t signs8(const float *x, const float *t, int tstep, int64_t cnt) {
    __m256 v;
    if (cnt >= 8) {
        v = _mm256_loadu_ps(x);
        if (t) v = _mm256_sub_ps(v, tstep ? _mm256_loadu_ps(t) : _mm256_set1_ps(*t));
    } else {
        const __m256i mk = first_lanes(cnt);
        v = _mm256_maskload_ps(x, mk);
        if (t) v = _mm256_sub_ps(v, tstep ? _mm256_maskload_ps(t, mk) : _mm256_set1_ps(*t));
    }
    return (uint64_t)_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ));
}

static T256 void pack_rows_avx2(const float *x, int64_t r0, int64_t r1, int64_t C, const float *thr,
                                uint64_t *out) {
    const int64_t CW = (C + 63) / 64;
    for (int64_t r = r0; r < r1; ++r)
        for (int64_t w = 0; w < CW; ++w) {
            uint64_t word = 0;
            for (int q = 0; q < 8; ++q) {
                const int64_t c = 64 * w + 8 * q;
                if (c >= C) break;
                word |= signs8(x + r * C + c, thr ? thr + c : 0, 1, C - c) << (8 * q);
            }
            out[r * CW + w] = word;
        }
}

/* bit (8i + j) <-> bit (8j + i) */
static inline uint64_t transpose8x8(uint64_t v) {
    uint64_t t = (v ^ (v >> 7)) & 0x00AA00AA00AA00AAULL;
    v ^= t ^ (t << 7);
    t = (v ^ (v >> 14)) & 0x0000CCCC0000CCCCULL;
    v ^= t ^ (t << 14);
    t = (v ^ (v >> 28)) & 0x00000000F0F0F0F0ULL;
    return v ^ t ^ (t << 28);
}

/* Channels-first, pixels p0 .. p0+np-1 of sample b: blocks of 8 channels x 8 pixels, each
 * channel's 8 pixel bits from one compare, then an 8x8 bit transpose. */
static T256 void pack_chunk_avx2(const float *x, int64_t b, int64_t C, int64_t HW, const float *thr,
                                 int64_t p0, int64_t np, uint64_t *out) {
    const int64_t CW = (C + 63) / 64;
    for (int64_t w = 0; w < CW; ++w) {
        uint64_t tmp[PACK_CHUNK] = {0};
        const int64_t nc = MIN(64, C - 64 * w);
        for (int64_t j0 = 0; j0 < nc; j0 += 8)
            for (int64_t q0 = 0; q0 < np; q0 += 8) {
                uint64_t m = 0;
                for (int64_t j = j0; j < MIN(nc, j0 + 8); ++j) {
                    const int64_t c = 64 * w + j;
                    m |= signs8(x + (b * C + c) * HW + p0 + q0, thr ? thr + c : 0, 0, np - q0) << (8 * (j - j0));
                }
                m = transpose8x8(m); /* byte i: channels j0.. of pixel q0 + i */
                for (int64_t i = 0; i < MIN(8, np - q0); ++i) tmp[q0 + i] |= ((m >> (8 * i)) & 0xff) << j0;
            }
        for (int64_t q = 0; q < np; ++q) out[(b * HW + p0 + q) * CW + w] = tmp[q];
    }
}
#endif

void biper_pack(const float *x, int64_t B, int64_t C, int64_t HW, const float *thr,
                uint64_t *out, int nthreads) {
    const int64_t nchunk = (HW + PACK_CHUNK - 1) / PACK_CHUNK;
    const int64_t ntask = B * nchunk;
    const int isa = biper_get_isa();
    (void)nthreads;
    (void)isa;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (B * C * HW > PAR_PACK)
    for (int64_t task = 0; task < ntask; ++task) {
        const int64_t b = task / nchunk, p0 = (task % nchunk) * PACK_CHUNK;
        const int64_t np = MIN(PACK_CHUNK, HW - p0);
#ifdef BIPER_X86
        if (isa == 1) { pack_chunk_avx2(x, b, C, HW, thr, p0, np, out); continue; }
#endif
        pack_chunk_portable(x, b, C, HW, thr, p0, np, out);
    }
}

void biper_pack_rows(const float *x, int64_t R, int64_t C, const float *thr, uint64_t *out,
                     int nthreads) {
    const int64_t nchunk = (R + 63) / 64;
    const int isa = biper_get_isa();
    (void)nthreads;
    (void)isa;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (R * C > PAR_PACK)
    for (int64_t t = 0; t < nchunk; ++t) {
        const int64_t r0 = t * 64, r1 = MIN(R, r0 + 64);
#if defined(BIPER_X86) && !defined(BIPER_NO_AVX512)
        if (isa == 2) { pack_rows_avx512(x, r0, r1, C, thr, out); continue; }
#endif
#ifdef BIPER_X86
        if (isa == 1) { pack_rows_avx2(x, r0, r1, C, thr, out); continue; }
#endif
        pack_rows_portable(x, r0, r1, C, thr, out);
    }
}
