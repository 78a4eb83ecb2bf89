/*
 * biper bit kernels: sign-bit packing, bit im2col and XNOR-popcount GEMM.
 *
 * Compiled lazily by biper/deploy/kernels.py with the system C compiler (-O3 -fopenmp
 * -ffp-contract=off, never -march=native) and called through ctypes on tensor data pointers.
 * One binary carries three variants of the GEMM; the best one the running CPU supports is
 * chosen at run time with __builtin_cpu_supports:
 *
 *   2  AVX-512F + VPOPCNTDQ   vpopcntq on 8 channels per vector, 4 rows x 32 channels in registers
 *   1  AVX2                   nibble-LUT popcount (vpshufb, byte counters), 2 rows x 16 channels
 *   0  portable C             __builtin_popcountll (the POPCNT instruction on x86 that has it)
 *
 * Conventions shared with the Python side (biper/deploy/bitpack.py):
 *   bit = (x < 0), i.e. +1 -> 0 and -1 -> 1 (so 0.0 and -0.0 are +1);
 *   bit j of 64-bit word w holds element 64*w + j; unused high bits of the last word are 0;
 *   a dot product of K packed +-1 values is K - 2 * popcount(a XOR w).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if (defined(__x86_64__) || defined(__i386__)) && !defined(BIPER_PORTABLE_ONLY)
#define BIPER_X86 1
#include <immintrin.h>
#define T256 __attribute__((target("avx2")))
#define AI inline __attribute__((always_inline))
#endif

#define BIPER_ABI 5
#define MIN(a, b) ((a) < (b) ? (a) : (b))
/* Work below which a call stays on the calling thread: a parallel region costs microseconds
 * when the machine is idle and up to a scheduler time slice when another process holds a core,
 * so only work worth ~100 us or more is split (floats packed / words copied / word pairs). */
#define PAR_PACK (1 << 20)
#define PAR_GEMM (1 << 20)
#define MAX(a, b) ((a) > (b) ? (a) : (b))

int biper_abi(void) { return BIPER_ABI; }

int biper_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Highest ISA level of this CPU that this binary was built with. */
int biper_cpu_isa(void) {
#ifdef BIPER_X86
    __builtin_cpu_init();
#ifndef BIPER_NO_AVX512
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq")) return 2;
#endif
    if (__builtin_cpu_supports("avx2")) return 1;
#endif
    return 0;
}

static int g_isa = -1;

/* Cap the ISA used (for tests and benchmarks); returns the level now in use. */
int biper_set_isa(int cap) {
    int best = biper_cpu_isa();
    g_isa = cap < 0 ? best : MIN(cap, best);
    return g_isa;
}

int biper_get_isa(void) {
    if (g_isa < 0) g_isa = biper_cpu_isa();
    return g_isa;
}

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

/* ----------------------------------------------------------------------------------------
 * Bit im2col: x (B, H, W, CW) words -> out (B*OH*OW, KH*KW*CW), tap-major (i, j) then word.
 * Taps outside the input take the CW words of `fill` (the padding value's bits).
 * ---------------------------------------------------------------------------------------- */
void biper_im2col(const uint64_t *x, int64_t B, int64_t H, int64_t W, int64_t CW,
                  int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW,
                  int64_t DH, int64_t DW, int64_t OH, int64_t OW, const uint64_t *fill,
                  uint64_t *out, int nthreads) {
    const int64_t rowlen = KH * KW * CW, nrow = B * OH;
    (void)nthreads;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nrow * OW * rowlen > PAR_PACK)
    for (int64_t bo = 0; bo < nrow; ++bo) { /* one output row (b, oh) */
        const int64_t b = bo / OH, oh = bo % OH;
        uint64_t *dst = out + bo * OW * rowlen;
        for (int64_t ow = 0; ow < OW; ++ow) {
            for (int64_t i = 0; i < KH; ++i) {
                const int64_t ih = oh * SH - PH + i * DH;
                const int row_in = ih >= 0 && ih < H;
                for (int64_t j = 0; j < KW; ++j) {
                    const int64_t iw = ow * SW - PW + j * DW;
                    const uint64_t *src = (row_in && iw >= 0 && iw < W)
                                              ? x + ((b * H + ih) * W + iw) * CW : fill;
                    for (int64_t w = 0; w < CW; ++w) dst[w] = src[w];
                    dst += CW;
                }
            }
        }
    }
}

/* ----------------------------------------------------------------------------------------
 * XNOR-popcount GEMM with implicit im2col.
 *
 * Output row m is pixel (b, oh, ow) of a convolution over the packed input X (B, H, W, CW);
 * its K = KH*KW*C bits are the CW words of each tap (i, j), read in place through a table of
 * tap pointers (taps outside the input point at `fill`, the padding value's bits).  A plain
 * GEMM of rows A (M, KWD) is the 1x1 case with H = W = 1, CW = KWD.
 *
 * The weights come as panels of 32 output channels, Wp[(nb * KWD + k) * 32 + j] = Wt[32 nb + j, k]
 * (zero past N): one SIMD vector holds the same word of 8 (AVX-512) or 4 (AVX2) channels, so
 * each lane accumulates one output and no horizontal reduction is needed.  For each (m, n):
 *     acc = K - 2 * popcount(row_m ^ Wt[n]) - corr[m % P, n]        (corr may be NULL)
 * Outputs, both row-major (M, N) (NHWC for convolutions), either may be NULL:
 *     acc_out int32;   y float = (float)acc * scale[n] + shift[n]  (a multiply then an add),
 * then optionally (the fused tail of a residual block) y = y + res[m, n] and
 * y = min(max(y, lo), hi) (NaN propagates, as in torch.clamp).
 * ---------------------------------------------------------------------------------------- */
#define PANEL 32
#define TMAX 64 /* taps handled in place; larger kernels go through an explicit im2col */

typedef struct {
    const uint64_t *X, *fill, *Wp;
    int64_t H, W, CW, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW;
    int64_t M, N, K, P;
    const int32_t *corr;
    int32_t *acc;
    float *y;
    const float *scale, *shift;
    const float *res; /* (M, N) residual added to y, or NULL */
    int clamp;        /* clamp y to [lo, hi] */
    float lo, hi;
    int corr_border;  /* corr rows of pixels whose window lies inside the input are zero: skip */
} gemm_t;

/* Tap pointers and correction rows of rows m .. m+nrows-1: tap[r * TMAX + t] -> CW words,
 * crow[r] -> the N correction ints of row r (NULL without a correction).  Divisions happen
 * once per call; pixels whose window lies inside the input take precomputed tap offsets. */
static void build_rows(const gemm_t *g, int64_t m, int64_t nrows, const uint64_t **tap,
                       const int32_t **crow) {
    const int64_t npix = g->OH * g->OW, T = g->KH * g->KW;
    int64_t b = m / npix, pix = m - b * npix, oh = pix / g->OW, ow = pix - oh * g->OW;
    int64_t p = g->corr ? m % g->P : 0;
    int64_t off[TMAX];
    for (int64_t i = 0; i < g->KH; ++i)
        for (int64_t j = 0; j < g->KW; ++j) off[i * g->KW + j] = (i * g->DH * g->W + j * g->DW) * g->CW;
    for (int64_t r = 0; r < nrows; ++r) {
        const uint64_t **row = tap + r * TMAX;
        const int64_t ih0 = oh * g->SH - g->PH, iw0 = ow * g->SW - g->PW;
        if (ih0 >= 0 && ih0 + (g->KH - 1) * g->DH < g->H && iw0 >= 0 && iw0 + (g->KW - 1) * g->DW < g->W) {
            const uint64_t *base = g->X + ((b * g->H + ih0) * g->W + iw0) * g->CW;
            for (int64_t t = 0; t < T; ++t) row[t] = base + off[t];
            crow[r] = g->corr && !g->corr_border ? g->corr + p * g->N : 0;
        } else {
            for (int64_t i = 0; i < g->KH; ++i) {
                const int64_t ih = ih0 + i * g->DH;
                for (int64_t j = 0; j < g->KW; ++j) {
                    const int64_t iw = iw0 + j * g->DW;
                    row[i * g->KW + j] = (ih >= 0 && ih < g->H && iw >= 0 && iw < g->W)
                                             ? g->X + ((b * g->H + ih) * g->W + iw) * g->CW : g->fill;
                }
            }
            crow[r] = g->corr ? g->corr + p * g->N : 0;
        }
        if (++ow == g->OW) {
            ow = 0;
            if (++oh == g->OH) {
                oh = 0;
                ++b;
            }
        }
        if (g->corr && ++p == g->P) p = 0;
    }
}

/* Finish `cnt` outputs of row m starting at column n from their popcounts. */
static inline void store_row(const gemm_t *g, int64_t m, const int32_t *crow, int64_t n,
                             int64_t cnt, const int64_t *pc) {
    const int32_t *corr = crow ? crow + n : 0;
    for (int64_t j = 0; j < cnt; ++j) {
        int32_t a = (int32_t)(g->K - 2 * pc[j]);
        if (corr) a -= corr[j];
        if (g->acc) g->acc[m * g->N + n + j] = a;
        if (g->y) {
            const float prod = (float)a * g->scale[n + j];
            float v = prod + g->shift[n + j];
            if (g->res) v = v + g->res[m * g->N + n + j];
            if (g->clamp) {
                v = g->lo > v ? g->lo : v; /* NaN stays NaN */
                v = g->hi < v ? g->hi : v;
            }
            g->y[m * g->N + n + j] = v;
        }
    }
}

/* -- portable: rows m.. (tap table `tap`), one panel nb ---------------------------------- */
static inline __attribute__((always_inline)) void
body_portable(const gemm_t *g, int64_t m, int mr, const uint64_t **tap, const int32_t **crow,
              int64_t nb) {
    const int64_t T = g->KH * g->KW, CW = g->CW, KWD = T * CW;
    {
        const int64_t n0 = nb * PANEL, cnt = MIN(PANEL, g->N - n0);
        for (int r = 0; r < mr; ++r) {
            int64_t pc[PANEL] = {0};
            const uint64_t *wk = g->Wp + nb * KWD * PANEL;
            for (int64_t t = 0; t < T; ++t) {
                const uint64_t *a = tap[r * TMAX + t];
                for (int64_t w = 0; w < CW; ++w, wk += PANEL)
                    for (int j = 0; j < PANEL; ++j) pc[j] += __builtin_popcountll(a[w] ^ wk[j]);
            }
            store_row(g, m + r, crow[r], n0, cnt, pc);
        }
    }
}

static void rows_portable(const gemm_t *g, int64_t m, int mr, const uint64_t **tap,
                          const int32_t **crow, int64_t nb) {
    body_portable(g, m, mr, tap, crow, nb);
}

#ifdef BIPER_X86
/* x86 CPUs without AVX2 still have the POPCNT instruction (the generic build calls libgcc) */
__attribute__((target("popcnt"))) static void
rows_popcnt(const gemm_t *g, int64_t m, int mr, const uint64_t **tap, const int32_t **crow,
            int64_t nb) {
    body_portable(g, m, mr, tap, crow, nb);
}
#endif

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

typedef void (*rows_fn)(const gemm_t *, int64_t, const uint64_t **, const int32_t **, int64_t);

#define MGROUP 8 /* row blocks of 4 per task: one weight panel is reused from L1 across them */

#ifdef BIPER_X86
/* -- AVX2 -------------------------------------------------------------------------------
 * No vector popcount: a byte's count is two 16-entry table lookups (vpshufb) of its nibbles.
 * Byte counts accumulate over up to BYTE_WORDS words (31 * 8 = 248 fits a byte) before one
 * vpsadbw per accumulator folds them into 64-bit lane sums.  With enough rows the packed
 * activations and each weight panel are first split into nibbles, lo = v & 0x0f.. and
 * hi = (v >> 4) & 0x0f.. (two words each), since (a ^ w) & 0x0f.. = (a & 0x0f..) ^ (w & 0x0f..):
 * an XOR'ed vector then costs 2 vpxor + 2 vpshufb + 2 vpaddb (4 more without the split).
 * Register tiles (16 ymm): split, TILE_ROWS rows x 4*NV_SPLIT channels (8 byte accumulators),
 * or 1 row x 4*ONEWORD_NV channels when each tap is one word (C <= 64); few rows (batch-1
 * linear layers), 1 row x 32 channels on the unsplit words, reading each panel once, in order.  The epilogue works on 8 channels per vector.  Packing: 8 floats
 * -> 8 bits per compare + vmovmskps (channels-first through an 8x8 bit transpose).
 * ---------------------------------------------------------------------------------------- */
#define NIBBLES 0x0f0f0f0f0f0f0f0fULL
#define BYTE_WORDS 31  /* words whose byte counts (<= 8 each) fit an unsigned byte */
#define SPLIT_ROWS 8   /* fewer rows: the weight split would cost as much as the product */
#ifndef NV_SPLIT
#define NV_SPLIT 4     /* vectors of 4 channels per row in a split tile */
#endif
#ifndef MGROUP256
#define MGROUP256 16   /* row blocks of 4 per task with split panels */
#endif
#ifndef ONEWORD_NV
#define ONEWORD_NV 4   /* vectors per 1-row tile when taps are one word */
#endif
#ifndef TILE_ROWS
#define TILE_ROWS 2    /* rows per split tile (measured best on Zen 2: 2 x 16 channels) */
#endif
#ifdef _OPENMP
#define THREAD_ID omp_get_thread_num()
#else
#define THREAD_ID 0
#endif

static AI T256 __m256i lut256(void) {
    return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
}

/* Lane sums of channels c..c+3 and c+4..c+7 (64-bit, < 2^31) -> 8 int32 in channel order. */
static AI T256 __m256i narrow8(__m256i lo4, __m256i hi4) {
    const __m256i both = _mm256_or_si256(lo4, _mm256_slli_epi64(hi4, 32)); /* c0 c4 c1 c5 .. */
    return _mm256_permutevar8x32_epi32(both, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}

/* store_row for 8 channels n.. of row m, same float operations.  Full groups use plain loads
 * and stores (masked stores are slow on AMD CPUs); a tail of cnt < 8 channels is masked. */
static AI T256 void store8_body(const gemm_t *g, int64_t m, const int32_t *crow, int64_t n,
                                __m256i pc, const int FULL, __m256i mk) {
    const int64_t at = m * g->N + n;
#define LOAD_I(p) (FULL ? _mm256_loadu_si256((const __m256i *)(p)) : _mm256_maskload_epi32((p), mk))
#define LOAD_F(p) (FULL ? _mm256_loadu_ps(p) : _mm256_maskload_ps((p), mk))
    __m256i a = _mm256_sub_epi32(_mm256_set1_epi32((int)g->K), _mm256_slli_epi32(pc, 1));
    if (crow) a = _mm256_sub_epi32(a, LOAD_I(crow + n));
    if (g->acc) {
        if (FULL) _mm256_storeu_si256((__m256i *)(g->acc + at), a);
        else _mm256_maskstore_epi32(g->acc + at, mk, a);
    }
    if (g->y) {
        const __m256 prod = _mm256_mul_ps(_mm256_cvtepi32_ps(a), LOAD_F(g->scale + n));
        __m256 y = _mm256_add_ps(prod, LOAD_F(g->shift + n));
        if (g->res) y = _mm256_add_ps(y, LOAD_F(g->res + at));
        if (g->clamp) { /* max/min return the second operand when one is NaN */
            y = _mm256_max_ps(_mm256_set1_ps(g->lo), y);
            y = _mm256_min_ps(_mm256_set1_ps(g->hi), y);
        }
        if (FULL) _mm256_storeu_ps(g->y + at, y);
        else _mm256_maskstore_ps(g->y + at, mk, y);
    }
#undef LOAD_I
#undef LOAD_F
}

static AI T256 void store8(const gemm_t *g, int64_t m, const int32_t *crow, int64_t n,
                           int64_t cnt, __m256i pc) {
    if (cnt >= 8) store8_body(g, m, crow, n, pc, 1, pc);
    else store8_body(g, m, crow, n, pc, 0, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)cnt),
                                                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

/* words v -> pairs (v & 0x0f.., (v >> 4) & 0x0f..) */
static T256 void split_words(const uint64_t *src, int64_t n, uint64_t *dst) {
    for (int64_t i = 0; i < n; ++i) {
        dst[2 * i] = src[i] & NIBBLES;
        dst[2 * i + 1] = (src[i] >> 4) & NIBBLES;
    }
}

/* a panel (KWD, 32) -> (KWD, [32 lo, 32 hi]) */
static T256 void split_panel(const uint64_t *wp, int64_t kwd, uint64_t *ws) {
    const __m256i nib = _mm256_set1_epi8(0x0f);
    for (int64_t k = 0; k < kwd; ++k, wp += PANEL, ws += 2 * PANEL)
        for (int v = 0; v < PANEL; v += 4) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)(wp + v));
            _mm256_storeu_si256((__m256i *)(ws + v), _mm256_and_si256(w, nib));
            _mm256_storeu_si256((__m256i *)(ws + PANEL + v), _mm256_and_si256(_mm256_srli_epi16(w, 4), nib));
        }
}

/* MR rows x 4*NV channels from n on; tap tables point at split words, ws at the split panel
 * shifted to channel n's column. */
static AI T256 void tile_split(const gemm_t *g, int64_t m, const uint64_t **tap,
                               const int32_t **crow, const uint64_t *ws, int64_t n,
                               const int MR, const int NV, const int ONEWORD) {
    const int64_t T = g->KH * g->KW, CW = ONEWORD ? 1 : g->CW / 2; /* g: the split problem */
    const __m256i lut = lut256(), zero = _mm256_setzero_si256();
    __m256i acc[4][8], wide[4][8];
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = wide[r][v] = zero;
    int left = BYTE_WORDS;
    for (int64_t t = 0; t < T; ++t) {
        const uint64_t *ap[4];
        for (int r = 0; r < MR; ++r) ap[r] = tap[r * TMAX + t];
        for (int64_t w = 0; w < CW; ++w, ws += 2 * PANEL) {
            for (int r = 0; r < MR; ++r) {
                const __m256i lo = _mm256_set1_epi64x((long long)ap[r][2 * w]);
                const __m256i hi = _mm256_set1_epi64x((long long)ap[r][2 * w + 1]);
                for (int v = 0; v < NV; ++v) {
                    const __m256i xl = _mm256_xor_si256(lo, _mm256_loadu_si256((const __m256i *)(ws + 4 * v)));
                    const __m256i xh = _mm256_xor_si256(hi, _mm256_loadu_si256((const __m256i *)(ws + PANEL + 4 * v)));
                    acc[r][v] = _mm256_add_epi8(acc[r][v], _mm256_add_epi8(_mm256_shuffle_epi8(lut, xl),
                                                                           _mm256_shuffle_epi8(lut, xh)));
                }
            }
            if (--left == 0) {
                for (int r = 0; r < MR; ++r)
                    for (int v = 0; v < NV; ++v) {
                        wide[r][v] = _mm256_add_epi64(wide[r][v], _mm256_sad_epu8(acc[r][v], zero));
                        acc[r][v] = zero;
                    }
                left = BYTE_WORDS;
            }
        }
    }
    for (int r = 0; r < MR; ++r) {
        for (int v = 0; v < NV; ++v) wide[r][v] = _mm256_add_epi64(wide[r][v], _mm256_sad_epu8(acc[r][v], zero));
        for (int v = 0; v < NV; v += 2)
            if (n + 4 * v < g->N)
                store8(g, m + r, crow[r], n + 4 * v, g->N - n - 4 * v, narrow8(wide[r][v], wide[r][v + 1]));
    }
}

/* One row x one whole panel (32 channels, 8 vectors) on unsplit words. */
static T256 void row_direct(const gemm_t *g, int64_t m, const uint64_t **tap, const int32_t **crow,
                            const uint64_t *wk, int64_t n) {
    const int64_t T = g->KH * g->KW, CW = g->CW;
    const __m256i lut = lut256(), zero = _mm256_setzero_si256(), nib = _mm256_set1_epi8(0x0f);
    __m256i acc[8], wide[8];
    for (int v = 0; v < 8; ++v) acc[v] = wide[v] = zero;
    int left = BYTE_WORDS;
    for (int64_t t = 0; t < T; ++t) {
        const uint64_t *ap = tap[t];
        for (int64_t w = 0; w < CW; ++w, wk += PANEL) {
            const __m256i a = _mm256_set1_epi64x((long long)ap[w]);
            for (int v = 0; v < 8; ++v) {
                const __m256i x = _mm256_xor_si256(a, _mm256_loadu_si256((const __m256i *)(wk + 4 * v)));
                const __m256i lo = _mm256_and_si256(x, nib), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), nib);
                acc[v] = _mm256_add_epi8(acc[v], _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo),
                                                                 _mm256_shuffle_epi8(lut, hi)));
            }
            if (--left == 0) {
                for (int v = 0; v < 8; ++v) {
                    wide[v] = _mm256_add_epi64(wide[v], _mm256_sad_epu8(acc[v], zero));
                    acc[v] = zero;
                }
                left = BYTE_WORDS;
            }
        }
    }
    for (int v = 0; v < 8; ++v) wide[v] = _mm256_add_epi64(wide[v], _mm256_sad_epu8(acc[v], zero));
    for (int v = 0; v < 8; v += 2)
        if (n + 4 * v < g->N) store8(g, m, crow[0], n + 4 * v, g->N - n - 4 * v, narrow8(wide[v], wide[v + 1]));
}

#define BIPER_TILE256(R)                                                                          \
    static T256 void tile256_##R(const gemm_t *g, int64_t m, const uint64_t **t, const int32_t **c, \
                                 const uint64_t *ws, int64_t n) {                                 \
        tile_split(g, m, t, c, ws, n, R, NV_SPLIT, 0);                                            \
    }
BIPER_TILE256(4)
BIPER_TILE256(3)
BIPER_TILE256(2)
BIPER_TILE256(1)
typedef char tile_rows_check[TILE_ROWS >= 1 && TILE_ROWS <= 4 && NV_SPLIT % 2 == 0 && NV_SPLIT <= 4 ? 1 : -1];

/* one word per tap (C <= 64): 1 row x the whole panel */
static T256 void tile256_1w(const gemm_t *g, int64_t m, const uint64_t **t, const int32_t **c,
                            const uint64_t *ws, int64_t n) { tile_split(g, m, t, c, ws, n, 1, ONEWORD_NV, 1); }

typedef void (*tile_fn)(const gemm_t *, int64_t, const uint64_t **, const int32_t **, const uint64_t *, int64_t);

/* The AVX2 GEMM: the task split of run_gemm (row groups x panel ranges); with SPLIT_ROWS rows or
 * more, the activations are split once per call and each task splits a panel before its rows. */
static void gemm256(const gemm_t *g, int nthreads) {
    const tile_fn tiles[5] = {0, tile256_1, tile256_2, tile256_3, tile256_4};
    const int64_t KWD = g->KH * g->KW * g->CW, npanel = (g->N + PANEL - 1) / PANEL;
    const int nthr = nthreads > 0 ? nthreads : 1;
    gemm_t gs = *g;
    uint64_t *xs = 0, *wsall = 0;
    if (g->M >= SPLIT_ROWS) {
        const int64_t nx = g->M / (g->OH * g->OW) * g->H * g->W * g->CW;
        xs = (uint64_t *)malloc((size_t)(2 * (nx + g->CW) + 2 * PANEL * KWD * nthr) * sizeof(uint64_t) + 64);
        if (xs) {
            wsall = xs + 2 * (nx + g->CW);
            split_words(g->X, nx, xs);
            split_words(g->fill, g->CW, xs + 2 * nx);
            gs.X = xs;
            gs.fill = xs + 2 * nx;
            gs.CW = 2 * g->CW; /* tap tables address the split words */
        }
    }
    const int64_t nmb = (g->M + 3) / 4;
    const int64_t want = (xs ? 2 : 8) * (int64_t)nthr; /* split: few, tall row groups */
    int64_t mg = xs ? MGROUP256 : MGROUP, nmg = (nmb + mg - 1) / mg;
    if (nmg < want) {
        mg = MAX(1, nmb / want);
        nmg = (nmb + mg - 1) / mg;
    }
    const int64_t ngroup = nmg >= want ? 1 : MIN(npanel, (want + nmg - 1) / nmg);
    const int64_t per = (npanel + ngroup - 1) / ngroup, ntask = nmg * ngroup;
    const int64_t work = g->M * g->N * KWD;
    const int oneword = g->CW == 1; /* one word per tap: 1-row tiles measured best */
    (void)nthreads;
    (void)work;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (work > PAR_GEMM)
    for (int64_t task = 0; task < ntask; ++task) {
        const uint64_t *tap[4 * MGROUP256 * TMAX];
        const int32_t *crow[4 * MGROUP256];
        const int64_t grp = task / nmg, mb0 = (task % nmg) * mg, mb1 = MIN(nmb, mb0 + mg);
        const int64_t nb0 = grp * per, nb1 = MIN(npanel, nb0 + per);
        if (nb0 >= nb1) continue;
        uint64_t *ws = xs ? wsall + (int64_t)THREAD_ID * 2 * PANEL * KWD : 0;
        build_rows(xs ? &gs : g, mb0 * 4, MIN(g->M, mb1 * 4) - mb0 * 4, tap, crow);
        for (int64_t nb = nb0; nb < nb1; ++nb) {
            const uint64_t *wp = g->Wp + nb * KWD * PANEL;
            if (ws) split_panel(wp, KWD, ws);
            for (int64_t mb = mb0; mb < mb1; ++mb) {
                const int64_t m = mb * 4, mr = MIN(4, g->M - m), r0 = (mb - mb0) * 4;
                for (int64_t s = 0; s < PANEL; s += 4 * (oneword ? ONEWORD_NV : NV_SPLIT)) {
                    if (nb * PANEL + s >= g->N) break;
                    if (ws && oneword)
                        for (int64_t q = 0; q < mr; ++q)
                            tile256_1w(&gs, m + q, tap + (r0 + q) * TMAX, crow + r0 + q, ws + s, nb * PANEL + s);
                    else if (ws)
                        for (int64_t q = 0; q < mr; q += TILE_ROWS)
                            tiles[MIN(TILE_ROWS, mr - q)](&gs, m + q, tap + (r0 + q) * TMAX, crow + r0 + q, ws + s, nb * PANEL + s);
                    else if (s == 0)
                        for (int64_t r = 0; r < mr; ++r)
                            row_direct(g, m + r, tap + (r0 + r) * TMAX, crow + r0 + r, wp, nb * PANEL);
                }
            }
        }
    }
    free(xs);
}
#endif /* BIPER_X86 */

/* A task is (up to MGROUP row blocks of 4 rows, a range of panels).  It builds the tap tables
 * of its rows once, then for each panel runs every row block, so that the panel (KWD * 256
 * bytes) stays in L1.  Panels are split into ranges only as far as needed to feed every thread. */
static void run_gemm(const gemm_t *g, int nthreads) {
    if (g->M <= 0 || g->N <= 0) return; /* empty batch or no outputs */
    const int isa = biper_get_isa();
    rows_fn fns[5] = {0, 0, 0, 0, 0};
#ifdef BIPER_X86
#ifndef BIPER_NO_AVX512
    if (isa == 2) { fns[1] = rows512_1; fns[2] = rows512_2; fns[3] = rows512_3; fns[4] = rows512_4; }
#endif
    if (isa == 1) { gemm256(g, nthreads); return; }
#endif
    void (*portable)(const gemm_t *, int64_t, int, const uint64_t **, const int32_t **, int64_t) = rows_portable;
#ifdef BIPER_X86
    if (__builtin_cpu_supports("popcnt")) portable = rows_popcnt;
#endif
    const int64_t nmb = (g->M + 3) / 4, npanel = (g->N + PANEL - 1) / PANEL;
    const int64_t want = 8 * (int64_t)(nthreads > 0 ? nthreads : 1);
    int64_t mg = MGROUP, nmg = (nmb + mg - 1) / mg;
    if (nmg < want) { /* few rows: smaller row groups, then split the panels too */
        mg = MAX(1, nmb / want);
        nmg = (nmb + mg - 1) / mg;
    }
    const int64_t ngroup = nmg >= want ? 1 : MIN(npanel, (want + nmg - 1) / nmg);
    const int64_t per = (npanel + ngroup - 1) / ngroup, ntask = nmg * ngroup;
    const int64_t work = g->M * g->N * g->KH * g->KW * g->CW;
    (void)nthreads;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (work > PAR_GEMM)
    for (int64_t task = 0; task < ntask; ++task) {
        const uint64_t *tap[4 * MGROUP * TMAX];
        const int32_t *crow[4 * MGROUP];
        const int64_t grp = task / nmg, mb0 = (task % nmg) * mg, mb1 = MIN(nmb, mb0 + mg);
        const int64_t nb0 = grp * per, nb1 = MIN(npanel, nb0 + per);
        if (nb0 >= nb1) continue;
        build_rows(g, mb0 * 4, MIN(g->M, mb1 * 4) - mb0 * 4, tap, crow);
        for (int64_t nb = nb0; nb < nb1; ++nb)
            for (int64_t mb = mb0; mb < mb1; ++mb) {
                const int64_t m = mb * 4, mr = MIN(4, g->M - m), r0 = (mb - mb0) * 4;
                if (fns[mr])
                    fns[mr](g, m, tap + r0 * TMAX, crow + r0, nb);
                else
                    portable(g, m, (int)mr, tap + r0 * TMAX, crow + r0, nb);
            }
    }
}

/* Plain GEMM of packed rows A (M, KWD); pixels P index the correction rows. */
void biper_gemm(const uint64_t *A, const uint64_t *Wp, int64_t M, int64_t N, int64_t KWD,
                int64_t K, int64_t P, const int32_t *corr, int32_t *acc, float *y,
                const float *scale, const float *shift, const float *res, int clamp, float lo,
                float hi, int nthreads) {
    gemm_t g = {A, A, Wp, 1, 1, KWD, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1,
                M, N, K, P, corr, acc, y, scale, shift, res, clamp, lo, hi, 0};
    run_gemm(&g, nthreads);
}

/* ----------------------------------------------------------------------------------------
 * A whole W1A1 convolution in one call: pack the float input (channels-first or channels-last)
 * and run the implicit-im2col GEMM with the padding correction and the per-channel affine
 * (kernels with more than TMAX taps go through an explicit im2col).  `corr` is the zero-padding
 * correction: its rows for pixels whose window lies inside the input are zero and never read.
 * Outputs are row-major (B*OH*OW, N).  Returns 0, or -1 when the workspace cannot be allocated.
 * ---------------------------------------------------------------------------------------- */
int biper_conv2d(const float *x, int channels_last, int64_t B, int64_t C, int64_t H, int64_t W,
                 const float *thr, const uint64_t *Wp, int64_t N, int64_t KH, int64_t KW,
                 int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t DH, int64_t DW,
                 const uint64_t *fill, const int32_t *corr, int32_t *acc, float *y,
                 const float *scale, const float *shift, const float *res, int clamp, float lo,
                 float hi, int nthreads) {
    const int64_t CW = (C + 63) / 64;
    const int64_t OH = (H + 2 * PH - DH * (KH - 1) - 1) / SH + 1;
    const int64_t OW = (W + 2 * PW - DW * (KW - 1) - 1) / SW + 1;
    uint64_t *words = (uint64_t *)malloc((size_t)(B * H * W * CW) * sizeof(uint64_t) + 64);
    uint64_t *cols = 0;
    if (!words) return -1;
    if (channels_last)
        biper_pack_rows(x, B * H * W, C, thr, words, nthreads);
    else
        biper_pack(x, B, C, H * W, thr, words, nthreads);
    gemm_t g = {words, fill, Wp, H, W, CW, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW,
                B * OH * OW, N, C * KH * KW, OH * OW, corr, acc, y, scale, shift, res, clamp, lo, hi, 1};
    if (KH * KW > TMAX) {
        cols = (uint64_t *)malloc((size_t)(B * OH * OW * KH * KW * CW) * sizeof(uint64_t) + 64);
        if (!cols) {
            free(words);
            return -1;
        }
        biper_im2col(words, B, H, W, CW, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, fill, cols, nthreads);
        gemm_t e = {cols, cols, Wp, 1, 1, KH * KW * CW, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1,
                    B * OH * OW, N, C * KH * KW, OH * OW, corr, acc, y, scale, shift, res, clamp, lo, hi, 0};
        g = e;
    }
    run_gemm(&g, nthreads);
    free(words);
    free(cols);
    return 0;
}
